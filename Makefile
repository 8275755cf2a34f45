# Set-up, tests and the demo. `make setup` creates .venv unless a virtualenv is active.
PYTHON ?= $(if $(VIRTUAL_ENV),$(VIRTUAL_ENV)/bin/python,.venv/bin/python)

.PHONY: setup test test-fast lint demo bench

setup:
	./scripts/setup.sh

test:
	$(PYTHON) -m pytest -q

test-fast:
	$(PYTHON) -m pytest -q -m "not slow and not integration"

lint:
	$(PYTHON) -m ruff check src tests benchmarks
	$(PYTHON) -m ruff format --check src tests benchmarks
	$(PYTHON) -m mypy src

demo:
	$(PYTHON) -m slmloop demo
