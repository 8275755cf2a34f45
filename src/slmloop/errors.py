"""One exception tree for everything a user can cause.

Every error carries a stable ``code`` (for scripts and the HTTP server), a
message that says what is wrong, and a ``hint`` that says how to fix it.
The CLI catches :class:`SlmloopError` and prints ``Error: message`` plus the
hint with a non-zero exit; the server maps ``http_status`` to a JSON body.

    SlmloopError
    ├── ConfigError          bad or missing slmloop.yaml, bad CLI option   (exit 2)
    ├── DataError            a source file that cannot be read or mapped
    ├── ModelError           a model that cannot be found or loaded
    ├── StoreError           the project store is missing or inconsistent
    │   └── NotFoundError    a run, release, evaluation … that does not exist
    ├── LeakageError         train/validation rows overlap the gold set
    ├── PreflightError       a training run that will not fit or cannot start
    ├── GateError            a required evaluation gate failed                 (exit 3)
    ├── ConflictError        what an action expected changed meanwhile (another operator moved it)
    └── ServeError           the server cannot start or answer
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "ConflictError",
    "DataError",
    "GateError",
    "LeakageError",
    "ModelError",
    "NotFoundError",
    "PreflightError",
    "ServeError",
    "SlmloopError",
    "StoreError",
]


class SlmloopError(Exception):
    """Base class: an error the user can fix. ``str(err)`` is the message."""

    code = "error"
    exit_code = 1
    http_status = 500

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def to_dict(self) -> dict[str, str | None]:
        return {"code": self.code, "message": self.message, "hint": self.hint}


class ConfigError(SlmloopError):
    """The manifest or a command-line option is wrong.

    ``problems`` lists every problem found as ``(key_path, message)`` so that
    one run of ``slmloop validate`` reports all of them at once.
    """

    code = "config_error"
    exit_code = 2
    http_status = 400

    def __init__(
        self,
        message: str,
        hint: str | None = None,
        problems: list[tuple[str, str]] | None = None,
    ) -> None:
        super().__init__(message, hint)
        self.problems = problems or []


class DataError(SlmloopError):
    code = "data_error"
    http_status = 400


class ModelError(SlmloopError):
    code = "model_error"
    http_status = 503


class StoreError(SlmloopError):
    code = "store_error"


class NotFoundError(StoreError):
    code = "not_found"
    http_status = 404


class LeakageError(SlmloopError):
    code = "leakage"
    http_status = 409


class PreflightError(SlmloopError):
    code = "preflight_failed"


class GateError(SlmloopError):
    code = "gate_failed"
    exit_code = 3


class ConflictError(SlmloopError):
    code = "conflict"
    exit_code = 4
    http_status = 409


class ServeError(SlmloopError):
    code = "serve_error"
    http_status = 503
