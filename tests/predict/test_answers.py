"""The one answering path: how a task is answered (resolve_mode), what every engine is asked, and that no
stage asks a model a task row any other way."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import slmloop
from slmloop.errors import ConfigError, ModelError
from slmloop.manifest import TaskConfig
from slmloop.predict.answers import answer_rows, resolve_mode, unsupported, within_margin
from slmloop.predict.companion import Companion, LabelPrior
from slmloop.predict.tasks import Hints

CLS = TaskConfig(type="classification", instruction="Classify.", labels=["ham", "spam"])
EXT = TaskConfig(type="extraction", instruction="Extract.", fields=["city"])
GEN = TaskConfig(type="generation", instruction="Describe.")


def test_resolve_mode_ranks_a_classifiers_labels_and_generates_everything_else() -> None:
    assert resolve_mode(CLS) == "rank" and resolve_mode(EXT) == "generate" and resolve_mode(GEN) == "generate"
    assert resolve_mode(CLS, "generate") == "generate"  # eval.mode: generate parses a classifier's label
    with pytest.raises(ConfigError, match="rank needs a classification task"):
        resolve_mode(EXT, "rank")
    with pytest.raises(ConfigError, match=r"unknown eval\.mode"):
        resolve_mode(CLS, "vote")


class Scripted:
    """An engine that cannot rank and answers from a script; it records what it was asked."""

    tokenizer = None
    can_rank = False

    def __init__(self, said: list[str]) -> None:
        self.said, self.asked, self.json_object = said, [], None

    def rank(self, prompts: list[str], labels: list[str], **kw: Any) -> list[list[float | None]]:
        raise AssertionError("an engine that cannot rank is not asked to")

    def complete(self, conversations: list[list[dict[str, str]]], max_new_tokens: int, **kw: Any) -> list:
        self.asked.extend(conversations)
        self.json_object = kw.get("json_object")
        return [(text, 3, "stop") for text in self.said]

    def mark_scorer(self, prompts: list[str], batch_size: int) -> None:
        return None


def test_an_engine_that_cannot_rank_is_refused_where_answers_are_ranked_labels() -> None:
    # a generated label is not what evaluation measured (no probabilities, no label prior): refused, never swapped
    rows = [{"text": "free prize"}]
    with pytest.raises(ModelError, match="cannot rank labels"):
        answer_rows(CLS, "compact", "rank", Scripted(["spam"]), rows, batch_size=1, max_new_tokens=4)
    prior = Companion.empty()
    prior.prior = LabelPrior(["ham", "spam"], np.zeros((1, 1)), np.zeros(2), weight=1.0)
    said = unsupported(CLS, "rank", prior, ranks=False, scores_marks=False)
    assert len(said) == 1 and "rank the labels" in said[0] and "label prior" in said[0]
    assert unsupported(CLS, "rank", prior, ranks=True, scores_marks=False) == []
    assert unsupported(CLS, "generate", None, ranks=False, scores_marks=False) == []


def test_every_engine_ranks_the_same_labels_whatever_it_happened_to_score() -> None:
    # transformers prunes a label best-first (it may or may not have scored a hopeless one); llama.cpp scores all
    assert within_margin([-1.0, -6.5, -8.0, None], 6.0) == [-1.0, -6.5, None, None]
    assert within_margin([-1.0, -9.0], None) == [-1.0, -9.0]


def test_a_generated_label_is_parsed_and_every_engine_sees_the_same_prompt() -> None:
    rows = [{"text": "free prize"}, {"text": "see you at lunch"}]
    hints = [Hints(shortlist=("spam", "ham")), Hints()]
    engine = Scripted(["spam", "Label: ham"])
    answers = answer_rows(CLS, "compact", "generate", engine, rows, hints, batch_size=2, max_new_tokens=4)
    assert [a.prediction for a in answers] == ["spam", "ham"]  # parsed, as evaluation parses generated labels
    assert engine.asked[0][-1] == {"role": "user", "content": "free prize\n(similar requests: spam, ham)"}
    assert engine.asked[1][-1] == {"role": "user", "content": "see you at lunch"}
    assert engine.json_object is False


def test_an_extraction_answer_is_asked_for_as_a_json_object_whatever_the_engine() -> None:
    engine = Scripted(['{"city": "rome"}'])
    (answer,) = answer_rows(
        EXT, "compact", "generate", engine, [{"text": "fly to rome"}], batch_size=1, max_new_tokens=9
    )
    assert engine.json_object is True and answer.raw == '{"city": "rome"}'


#: modules that run a model on something other than a task row, each for its own reason
OTHER_USES = {
    "slmloop.predict.engines",  # the engines themselves
    "slmloop.evaluate.forgetting",  # scores a general-capability pack's choices, not task rows
    "slmloop.graduate.synth",  # a teacher writes new inputs; they are answered later like any row
    "slmloop.train.preflight",  # times passes of the model to forecast the evaluation
}


def test_no_stage_asks_a_model_a_task_row_outside_the_answering_path() -> None:
    """Evaluation, serving, the GGUF parity check, label issues and training's validation metric all answer
    through predict.answers.answer_rows: only the engines call the inference functions."""
    src = Path(slmloop.__file__).parent
    inference = {"generate", "rank_labels", "continuation_logprobs"}
    callers = set()
    for path in src.rglob("*.py"):
        module = ".".join(path.relative_to(src.parent).with_suffix("").parts)
        if module.startswith("slmloop.models."):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            imported = {a.name for a in node.names} if isinstance(node, ast.ImportFrom) else set()
            if isinstance(node, ast.ImportFrom) and node.module == "slmloop.models.inference" and inference & imported:
                callers.add(module)
    assert callers == OTHER_USES
    askers = {"slmloop.evaluate.evaluate", "slmloop.serve.engine", "slmloop.release.parity", "slmloop.train.companion"}
    for module in askers:
        text = (src.parent / (module.replace(".", "/") + ".py")).read_text(encoding="utf-8")
        assert "answer_rows(" in text, f"{module} does not answer through answer_rows"
