"""Shortlists: the neighbour vote by hand, leave-one-out, the prompt, and one model read the same way everywhere."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from slmloop.errors import ModelError
from slmloop.manifest import TaskConfig
from slmloop.predict.companion import PRIOR_WEIGHTS, SHORTLIST_FILE, Companion, load_companion, shortlist_size
from slmloop.predict.tasks import Hints, prompt_messages

TASK = TaskConfig(type="classification", instruction="Classify.", labels=["x", "y", "z"])

#: the index: four training rows in a 2-d embedding space (unit vectors)
VECTORS = {
    "a1": [1.0, 0.0],
    "a2": [0.8, 0.6],
    "a3": [0.6, 0.8],
    "a4": [0.0, 1.0],
}
LABELS = {"a1": "x", "a2": "y", "a3": "y", "a4": "z"}


@pytest.fixture
def fake_embed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Embeddings looked up in VECTORS, so the vote can be computed by hand."""

    def embed(texts: list[str], spec: str = "", cache_dir: Path | None = None) -> np.ndarray:
        return np.array([VECTORS[t] for t in texts], dtype=np.float32)

    monkeypatch.setattr("slmloop.predict.companion.embed", embed)


def _index(k: int) -> Companion:
    rows = [{"text": t, "label": lab} for t, lab in LABELS.items()]
    return Companion.build(TASK, rows, k)


def test_the_vote_weighs_each_neighbour_by_its_similarity_to_the_fourth(fake_embed: None) -> None:
    index = _index(3)
    # query a1 = (1, 0): cosines 1.0 (x), 0.8 and 0.6 (y), 0.0 (z)
    # votes x 1.0^4 = 1.0 > y 0.8^4 + 0.6^4 = 0.5392 > z 0
    assert index.candidates(["a1"]) == [["x", "y", "z"]]
    # query a3 = (0.6, 0.8): cosines 0.6 (x), 0.96 and 1.0 (y), 0.8 (z)
    # votes y 0.96^4 + 1 = 1.849 > z 0.8^4 = 0.41 > x 0.6^4 = 0.13
    assert index.candidates(["a3"]) == [["y", "z", "x"]]
    assert _index(2).candidates(["a1", "a3"]) == [["x", "y"], ["y", "z"]]


def test_a_training_row_does_not_vote_for_itself(fake_embed: None) -> None:
    index = _index(2)
    # without a1 itself: y 0.5392 > z 0; x has no other row, so it drops off the shortlist
    assert index.candidates(["a1"], leave_out_self=True) == [["y", "z"]]
    assert index.candidates(["a1"]) == [["x", "y"]]
    (hints,) = index.hints(TASK, [{"text": "a1", "label": "x"}], leave_out_self=True)
    assert hints == Hints(shortlist=("y", "z"))


def test_the_prompt_shows_the_shortlist_after_the_request() -> None:
    task = TASK.model_copy(update={"labels": ["alarm_set", "alarm_query"]})
    plain = prompt_messages(task, {"text": "wake me at 7", "label": "alarm_set"}, "compact")
    row = {"text": "wake me at 7", "label": "alarm_set"}
    listed = prompt_messages(task, row, "compact", Hints(shortlist=("alarm_set", "alarm_query")))
    assert plain[-1] == {"role": "user", "content": "wake me at 7"}
    assert listed[-1] == {"role": "user", "content": "wake me at 7\n(similar requests: alarm_set, alarm_query)"}
    assert listed[:-1] == plain[:-1]


def test_auto_turns_the_shortlist_on_for_many_labels_only() -> None:
    many = TASK.model_copy(update={"labels": [f"l{i}" for i in range(12)]})
    assert shortlist_size("auto", many) == 5
    assert shortlist_size("auto", TASK) == 0  # 3 labels: a shortlist would name most of them
    assert shortlist_size(2, TASK) == 2
    assert shortlist_size("auto", EXTRACT) == 0  # examples cost more than they gave on HWU64 slots
    assert shortlist_size(3, EXTRACT) == 3
    assert shortlist_size("auto", TaskConfig(type="generation", instruction="Write.")) == 0


EXTRACT = TaskConfig(type="extraction", instruction="Extract.", fields=["time", "date"])
OUTPUTS = {"a1": {"time": "six"}, "a2": {"date": "today"}, "a3": {}, "a4": {"time": "noon", "date": "monday"}}


def _examples(k: int) -> Companion:
    return Companion.build(EXTRACT, [{"text": t, "output": o} for t, o in OUTPUTS.items()], k)


def test_an_extractor_reads_its_nearest_training_rows_with_their_answers(fake_embed: None) -> None:
    index = _examples(2)
    # query a2 = (0.8, 0.6): cosines a1 0.8, a2 1.0, a3 0.96, a4 0.6
    assert index.candidates(["a2"]) == [[["a2", '{"date": "today"}'], ["a3", "{}"]]]
    # without itself: a3 0.96, then a1 0.8
    assert index.candidates(["a2"], leave_out_self=True) == [[["a3", "{}"], ["a1", '{"time": "six"}']]]
    (hints,) = _examples(1).hints(EXTRACT, [{"text": "a4", "output": {}}], leave_out_self=True)
    assert hints == Hints(examples=(("a3", "{}"),))
    shown = prompt_messages(
        EXTRACT, {"text": "wake me at 7"}, hints=Hints(examples=(("wake me at six", '{"time": "six"}'),))
    )
    plain = prompt_messages(EXTRACT, {"text": "wake me at 7"})
    assert shown[-1]["content"] == 'wake me at 7\n(similar request: wake me at six -> {"time": "six"})'
    assert shown[:-1] == plain[:-1]


def test_an_extractors_index_keeps_its_texts_when_saved(fake_embed: None, tmp_path: Path) -> None:
    index = _examples(1)
    index.save(tmp_path)
    loaded = load_companion(tmp_path)
    assert loaded is not None and loaded.examples and loaded.texts == list(OUTPUTS)
    assert (
        loaded.candidates(["a1", "a4"])
        == index.candidates(["a1", "a4"])
        == [
            [["a1", '{"time": "six"}']],
            [["a4", '{"time": "noon", "date": "monday"}']],
        ]
    )


def test_the_index_round_trips_without_its_texts(fake_embed: None, tmp_path: Path) -> None:
    index = _index(2)
    index.save(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [SHORTLIST_FILE]  # no temporary file left
    loaded = load_companion(tmp_path)
    assert loaded is not None and loaded.k == 2 and loaded.labels == index.labels
    np.testing.assert_array_equal(loaded.vectors, index.vectors)
    assert loaded.candidates(["a3"]) == index.candidates(["a3"])
    with pytest.raises(ModelError, match="without its texts"):
        loaded.candidates(["a1"], leave_out_self=True)
    assert load_companion(tmp_path / "elsewhere") is None
    (tmp_path / SHORTLIST_FILE).write_bytes(b"not an npz")
    with pytest.raises(ModelError, match="cannot be read"):
        load_companion(tmp_path)


def _trained(root: Path, k: int) -> tuple:
    """Import, prepare and train the project at ``root``; its run, adapter folder, index and splits."""
    from slmloop.data.importer import import_source
    from slmloop.data.prepare import prepare_dataset
    from slmloop.data.versions import load_dataset
    from slmloop.project import open_project
    from slmloop.train.recipe import train

    p = open_project(root)
    import_source(p, p.manifest.data.sources[0])
    prepare_dataset(p)
    run = train(p)
    assert run.config["train"]["shortlist"] == k
    adapter = p.locate(run.path) / "adapter"
    index = load_companion(adapter)
    assert index is not None
    return p, run, adapter, index, load_dataset(p)


@pytest.mark.integration
def test_a_run_with_a_shortlist_is_asked_the_same_way_by_eval_export_and_serve(
    tmp_path: Path, tiny_model: Path
) -> None:
    from slmloop.evaluate.evaluate import _prompt_tokens, evaluate
    from slmloop.models.catalog import ResolvedModel
    from slmloop.models.loading import load_tokenizer
    from slmloop.predict.targets import resolve_target
    from slmloop.release.export import export_release
    from slmloop.serve.server import load_predictor
    from tests.conftest import write_project
    from tests.tiny import toy_rows

    root = write_project(tmp_path / "p", tiny_model, toy_rows(120), train={"shortlist": 2, "epochs": 2})
    p, run, adapter, index, splits = _trained(root, 2)
    assert index.k == 2 and len(index.labels) == len(splits.train)
    assert set(index.labels) == {"ham", "spam"}
    summary = json.loads((p.locate(run.path) / "run.json").read_text())["shortlist"]
    assert summary["k"] == 2 and summary["index_rows"] == len(splits.train)
    assert 0.5 <= summary["train_recall"] <= 1.0
    # the label prior was weighed on the validation rows; a weight of 0 leaves it out of the release
    prior = summary["prior"]
    assert prior["rows"] == len(splits.validation) and set(prior["accuracy_by_weight"]) == {
        str(w) for w in PRIOR_WEIGHTS
    }
    assert prior["weight"] == max(PRIOR_WEIGHTS, key=lambda w: (prior["accuracy_by_weight"][str(w)], -w))
    assert (index.prior is not None) == (prior["weight"] > 0)
    ev = evaluate(p, run.name)
    assert ev.metrics["runtime"]["shortlist"] == 2
    # the prompt grew by the shortlist line: more tokens than the same gold rows without it
    tok = load_tokenizer(ResolvedModel("t", str(adapter), "local"))
    plain = _prompt_tokens(tok, p.task, "compact", splits.gold)
    assert ev.metrics["runtime"]["prompt_tokens_per_row"] > plain + 4

    release = export_release(p, run.name)
    folder = p.locate(release.path)
    assert (folder / "adapter" / SHORTLIST_FILE).exists()
    assert "similar requests" in (folder / "README.md").read_text()
    target = resolve_target(p, f"release-{release.version}")
    assert target.companion() is not None

    predictor = load_predictor(p, release.version)
    assert predictor.companion is not None
    preds = p.store.predictions(ev.id)
    served = predictor.predict_many([x.input for x in preds])
    # the served release (merged weights, shortlist added by the server) answers as evaluation did
    assert [s["label"] for s in served] == [x.prediction for x in preds]
    p.close()


@pytest.mark.integration
def test_an_extractor_with_examples_is_asked_the_same_way_by_eval_export_and_serve(
    tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import random

    from slmloop.evaluate.evaluate import _prompt_tokens, evaluate
    from slmloop.models.catalog import ResolvedModel
    from slmloop.models.loading import load_tokenizer, render_prompt
    from slmloop.predict import engines
    from slmloop.release.export import export_release
    from slmloop.serve.server import load_predictor
    from tests.conftest import write_extraction_project
    from tests.tiny import HAM_WORDS

    rng = random.Random(0)
    rows = []
    for i in range(90):
        words = rng.sample(HAM_WORDS, 5)
        rows.append({"text": " ".join(words) + f" {i}", "output": {"place": words[1]} if i % 2 else {}})
    root = write_extraction_project(tmp_path / "p", tiny_model, rows, 96, train={"epochs": 1, "shortlist": 1})
    p, run, adapter, index, splits = _trained(root, 1)
    assert index.examples and index.texts == [r["text"] for r in splits.train]
    summary = json.loads((p.locate(run.path) / "run.json").read_text())["shortlist"]
    assert summary["kind"] == "examples" and summary["index_rows"] == len(splits.train)
    # half the rows name a place and half do not: the nearest example agrees on the fields sometimes, not never
    assert 0.0 < summary["train_same_fields"] < 1.0
    ev = evaluate(p, run.name)
    assert ev.metrics["runtime"]["shortlist"] == 1
    tok = load_tokenizer(ResolvedModel("t", str(adapter), "local"))
    plain = _prompt_tokens(tok, p.task, "compact", splits.gold)
    assert ev.metrics["runtime"]["prompt_tokens_per_row"] > plain + 8  # the example's input and answer

    release = export_release(p, run.name)
    folder = p.locate(release.path)
    assert "similar request:" in (folder / "README.md").read_text()
    predictor = load_predictor(p, release.version)
    preds = p.store.predictions(ev.id)
    served = predictor.predict_many([x.input for x in preds])
    # the server builds the very prompts evaluation asked with: request, then the nearest example
    hints = index.hints(p.task, splits.gold)
    asked = zip(splits.gold, hints, strict=True)
    evaluated = [render_prompt(tok, prompt_messages(p.task, r, "compact", h)) for r, h in asked]
    assert all("\n(similar request: " in x for x in evaluated)
    seen: list[str] = []
    real = engines.generate

    def spy(model: object, tokenizer: object, prompts: list[str], **kw: object) -> object:
        seen.extend(prompts)
        return real(model, tokenizer, prompts, **kw)

    monkeypatch.setattr(engines, "generate", spy)
    served = predictor.predict_many([r["text"] for r in splits.gold])
    assert seen == evaluated and len(served) == len(splits.gold)
    assert {x.input for x in preds} == {r["text"] for r in splits.gold}
    p.close()


def test_the_label_prior_gives_what_scikit_learn_gives() -> None:
    from sklearn.linear_model import LogisticRegression

    from slmloop.predict.companion import LabelPrior

    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 4)).astype(np.float32)
    for labels in (["a", "b", "c"], ["a", "b"]):  # multinomial, and binary (one row of coefficients)
        y = [labels[i % len(labels)] for i in range(60)]
        prior = LabelPrior.fit(x, y)
        ref = LogisticRegression(C=20.0, max_iter=2000).fit(x, y)
        assert prior.classes == labels
        np.testing.assert_allclose(prior.log_probs(x), ref.predict_log_proba(x), atol=1e-4)
        rows = prior.row_priors(x[:1], 0.5)
        assert rows[0] == pytest.approx(dict(zip(labels, 0.5 * ref.predict_log_proba(x[:1])[0], strict=True)))


def test_fusing_a_prior_multiplies_the_probabilities_and_renormalises() -> None:
    from math import log

    from slmloop.predict.answers import fuse_prior

    # 0.6 x 0.2 = 0.12 and 0.4 x 0.8 = 0.32: b now leads, 0.32 / 0.44
    fused = fuse_prior({"a": 0.6, "b": 0.4}, {"a": log(0.2), "b": log(0.8)})
    assert list(fused) == ["b", "a"]
    assert fused["b"] == pytest.approx(0.32 / 0.44) and fused["a"] == pytest.approx(0.12 / 0.44)
    # a label the prior does not know gets its lowest value; labels the model did not score do not compete
    fused = fuse_prior({"a": 0.5, "new": 0.5}, {"a": log(0.9), "b": log(0.1)})
    assert set(fused) == {"a", "new"} and fused["a"] == pytest.approx(0.9)
    assert fuse_prior({"a": 0.7, "b": 0.3}, {}) == pytest.approx({"a": 0.7, "b": 0.3})


def test_the_prior_weight_is_the_smallest_that_is_right_most_often() -> None:
    from slmloop.predict.companion import LabelPrior

    # one dimension: x > 0 means label b to the regression
    prior = LabelPrior(["a", "b"], np.array([[4.0]], np.float32), np.array([0.0], np.float32))
    x = np.array([[1.0], [1.0], [-1.0]], np.float32)  # P(b) = 0.982, 0.982, 0.018
    truth = ["b", "b", "a"]
    # the model is sure of a on row 1 (a weight below ~1 cannot overrule it), unsure on row 2, right on row 3
    model = [{"a": 0.99, "b": 0.01}, {"a": 0.55, "b": 0.45}, {"a": 0.9, "b": 0.1}]
    choice = prior.choose_weight(model, x, truth)
    by = {float(w): acc for w, acc in choice["accuracy_by_weight"].items()}
    assert by[0.0] == pytest.approx(1 / 3)
    assert by[0.25] == pytest.approx(2 / 3)  # row 2 turns: 0.45/0.55 x (0.982/0.018)^0.25 > 1
    # row 1 turns once 4 x weight > log(0.99 / 0.01) = 4.595, i.e. from 1.15: all three right first at 1.5
    assert by[1.0] == pytest.approx(2 / 3) and by[1.5] == pytest.approx(1.0)
    assert choice["weight"] == prior.weight == 1.5 and choice["rows"] == 3


def test_ranking_adds_the_rows_prior_and_keeps_the_models_own_choice(tiny_model: Path) -> None:
    import torch

    from slmloop.models.catalog import ResolvedModel
    from slmloop.models.loading import load_causal_lm, load_tokenizer
    from slmloop.predict.answers import answer_rows
    from slmloop.predict.engines import LocalEngine

    ref = ResolvedModel("t", str(tiny_model), "local")
    model, tok = load_causal_lm(ref, torch.float32), load_tokenizer(ref)
    task = TaskConfig(type="classification", instruction="Classify.", labels=["ham", "spam"])
    rows = [{"text": "see you at the station"}, {"text": "free prize claim"}]

    def ask(hints: list[Hints] | None = None) -> list:
        engine = LocalEngine(model, tok)
        return answer_rows(task, "compact", "rank", engine, rows, hints, batch_size=4, max_new_tokens=4, margin=None)

    own = ask()
    for favour in ("ham", "spam"):
        prior = {"ham": 0.0 if favour == "ham" else -200.0, "spam": 0.0 if favour == "spam" else -200.0}
        fused = ask([Hints(prior=prior) for _ in rows])
        assert [a.prediction for a in fused] == [favour, favour]
        assert [a.scores["model_label"] for a in fused] == [a.prediction for a in own]
        assert fused[0].scores["probs"][favour] == pytest.approx(1.0)
    assert all("model_label" not in a.scores for a in own)


def test_an_index_with_a_prior_in_use_annotates_and_round_trips_it(fake_embed: None, tmp_path: Path) -> None:
    from slmloop.predict.companion import LabelPrior

    index = _index(0)  # no shortlist: the prior alone (a task with few labels)
    index.prior = LabelPrior(["x", "y"], np.array([[2.0, -2.0]], np.float32), np.array([0.0], np.float32))
    assert index.hints(TASK, [{"text": "a1"}]) == [Hints()]  # weight 0: not in use
    index.prior.weight = 0.5
    (hints,) = index.hints(TASK, [{"text": "a1"}])
    assert not hints.shortlist and hints.prior["y"] == pytest.approx(0.5 * -np.log1p(np.exp(-2.0)))
    index.save(tmp_path)
    loaded = load_companion(tmp_path)
    assert loaded is not None and loaded.prior is not None and loaded.prior.weight == 0.5
    assert loaded.hints(TASK, [{"text": "a1"}]) == [hints]
