"""Stored evaluations found by name: eval-N, N, or latest (the newest evaluation of a fine-tuned model)."""

from __future__ import annotations

import pytest

from slmloop.cli import main
from slmloop.errors import NotFoundError
from slmloop.evaluate.results import find_evaluation


def test_an_evaluation_is_found_by_id_or_as_the_newest_of_a_fine_tuned_model(trained_copy) -> None:
    root = str(trained_copy.root)
    with pytest.raises(NotFoundError, match="no fine-tuned model has been evaluated"):
        find_evaluation(trained_copy, "latest")
    assert main(["eval", "--model", "base", "-p", root]) == 0
    assert main(["eval", "--model", "run-1", "-p", root]) in (0, 3)  # 3: a gate failed, the evaluation is stored
    base = find_evaluation(trained_copy, "eval-1")
    assert base.model_ref == "base" and find_evaluation(trained_copy, "1").id == base.id
    latest = find_evaluation(trained_copy, "latest")
    assert latest.model_ref == "run-1" and latest.id > base.id
    with pytest.raises(NotFoundError, match="is not an evaluation"):
        find_evaluation(trained_copy, "newest")
    with pytest.raises(NotFoundError):
        find_evaluation(trained_copy, "eval-99")
