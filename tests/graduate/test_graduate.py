"""Graduating: the bake-off (trials, successive halving, resume, Ray Tune), paused runs, class rebalancing."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from slmloop.data.importer import import_source
from slmloop.data.prepare import prepare_dataset
from slmloop.errors import ConfigError
from slmloop.graduate import bakeoff as bakeoff_mod
from slmloop.graduate.bakeoff import draw_trials, list_bakeoffs, run_bakeoff, rungs, trial_run
from slmloop.manifest import BakeoffConfig, TrainConfig, parse_manifest
from slmloop.project import open_project
from slmloop.store import Run
from slmloop.train.batching import rebalanced_rows
from slmloop.train.recipe import train
from tests.conftest import write_project
from tests.tiny import toy_rows


# ---------------------------------------------------------------------------------------------
# the space, the rungs, the data recipe (no model)
# ---------------------------------------------------------------------------------------------
def test_a_small_space_is_tried_whole_with_the_manifest_settings_first() -> None:
    cfg = BakeoffConfig(trials=6, space={"learning_rate": [1e-3, 2e-3, 4e-3], "lora_r": [16, 32]})
    trials = draw_trials(cfg, TrainConfig(learning_rate=2e-3, lora_r=16))
    assert trials[0] == {}  # the manifest's own settings
    assert len(trials) == 6  # 3 × 2 combinations, the default one counted once
    assert {"learning_rate": 4e-3, "lora_r": 32} in trials
    assert len({json.dumps(t, sort_keys=True) for t in trials}) == 6


def test_a_large_space_is_sampled_with_a_seed_and_ranges_stay_in_bounds() -> None:
    space = {"learning_rate": {"low": 1e-4, "high": 1e-2, "log": True}, "lora_r": [4, 8, 16, 32, 64]}
    cfg = BakeoffConfig(trials=5, space=space, seed=3)
    a, b = draw_trials(cfg, TrainConfig()), draw_trials(cfg, TrainConfig())
    assert a == b and len(a) == 5 and a[0] == {}
    for t in a[1:]:
        assert 1e-4 <= t.get("learning_rate", 2e-3) <= 1e-2
    other = draw_trials(cfg.model_copy(update={"seed": 4}), TrainConfig())
    assert other != a


def test_rungs_grow_by_eta_up_to_the_longest_schedule() -> None:
    cfg = BakeoffConfig(halving={"eta": 3, "min_epochs": 0.5})
    assert rungs(cfg, 2.0) == [0.5, 1.5, 2.0]
    assert rungs(cfg, 0.5) == [0.5]
    assert rungs(BakeoffConfig(halving=None), 2.0) == [2.0]


def test_rebalancing_keeps_the_epoch_length_and_lifts_thin_classes() -> None:
    labels = ["a"] * 8 + ["b"] * 2
    assert rebalanced_rows(labels, "none", 0, 0) is None
    # sqrt: shares ∝ √8 : √2 = 2 : 1 → 6.67 and 3.33 rows; the larger remainder gets the 10th row
    rows = rebalanced_rows(labels, "sqrt", 0, 0)
    assert rows is not None and len(rows) == 10
    counts = Counter(labels[i] for i in rows)
    assert counts == {"a": 7, "b": 3}
    assert len(set(r for r in rows if labels[r] == "a")) == 7  # the big class is drawn without repeats
    equal = Counter(labels[i] for i in rebalanced_rows(labels, "equal", 0, 0) or [])
    assert equal == {"a": 5, "b": 5}  # b: both rows twice, plus one drawn
    draws = {tuple(sorted(rebalanced_rows(labels, "sqrt", 0, e) or [])) for e in range(6)}
    assert len(draws) > 1  # the big class is drawn anew each epoch


def test_the_manifest_rejects_a_bad_search_space() -> None:
    task = {"type": "classification", "labels": ["a", "b"]}
    with pytest.raises(ConfigError) as e:
        parse_manifest({"task": task, "bakeoff": {"space": {"lora_rank": [8], "learning_rate": [-1.0]}}})
    assert "bakeoff.space.lora_rank" in e.value.message and "bakeoff.space.learning_rate" in e.value.message
    with pytest.raises(ConfigError) as e:
        parse_manifest({"task": {"type": "extraction", "fields": ["x"]}, "train": {"rebalance": "sqrt"}})
    assert "train.rebalance" in e.value.message


# ---------------------------------------------------------------------------------------------
# pausing a run, and bake-offs on the tiny model
# ---------------------------------------------------------------------------------------------
def _prepared(root: Path, model: Path, rows: list[dict] | None = None, **sections: dict) -> Path:
    root = write_project(root, model, rows or toy_rows(200), **sections)
    p = open_project(root)
    import_source(p, p.manifest.data.sources[0])
    prepare_dataset(p)
    p.close()
    return root


def _adapter(root: Path, run: str) -> dict[str, torch.Tensor]:
    return load_file(root / ".slmloop" / "runs" / run / "adapter" / "adapter_model.safetensors")


@pytest.mark.integration
def test_a_paused_run_resumes_to_the_same_adapter(tmp_path: Path, tiny_model: Path) -> None:
    settings = {"train": {"epochs": 2, "batch_size": 8}}
    root = _prepared(tmp_path / "p", tiny_model, **settings)
    p = open_project(root)
    paused = train(p, pause_at=0.5)
    assert paused.status == "paused" and paused.metrics["epochs"] == pytest.approx(0.5, abs=0.05)
    assert paused.metrics["history"], "a paused run is validated where it stops"
    assert not (root / ".slmloop" / "runs" / paused.name / "adapter").exists()
    done = train(p, resume=paused.name)
    straight = train(p)
    assert done.status == "completed" and done.metrics["steps"] == straight.metrics["steps"]
    a, b = _adapter(root, done.name), _adapter(root, straight.name)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-5
    p.close()


def _bakeoff_project(root: Path, model: Path) -> Path:
    # one setting learns (lr 5e-3), one cannot move (lr 1e-7): halving must cut the second at the first rung
    return _prepared(
        root,
        model,
        train={"epochs": 4, "batch_size": 8},
        bakeoff={
            "trials": 2,
            "space": {"learning_rate": [5e-3, 1e-7]},
            "halving": {"eta": 2, "min_epochs": 2},
            "include_default": False,
        },
    )


@pytest.mark.integration
def test_bakeoff_halves_on_validation_and_judges_the_winner_on_gold(tmp_path: Path, tiny_model: Path) -> None:
    root = _bakeoff_project(tmp_path / "p", tiny_model)
    p = open_project(root)
    incumbent = train(p, {"epochs": 1, "learning_rate": 1e-7})  # a weak incumbent outside the bake-off
    bo = run_bakeoff(p)
    good, bad = sorted(bo.trials, key=lambda t: -t.params.get("learning_rate", 5e-3))
    assert good.status == "completed" and good.reached == 4.0 and [s["epochs"] for s in good.scores] == [2.0, 4.0]
    assert bad.status == "pruned" and bad.reached == 2.0  # cut at the first rung, never trained on
    assert good.score > bad.score
    assert p.store.get(Run, int(bad.run.removeprefix("run-")), "run", "").status == "pruned"
    assert bo.winner == good.n and bo.incumbent == incumbent.name
    g = bo.gold
    assert g["verdict"] in ("better", "not distinguishable", "worse") and 0 <= g["p_value"] <= 1
    assert g["winner_metrics"]["value"] > g["incumbent_metrics"]["value"]
    folder = root / ".slmloop" / "bakeoffs" / bo.id
    assert (folder / "trials.png").stat().st_size > 5000
    report = (folder / "report.md").read_text()
    assert "paired test" in report and "learning_rate=1e-07" in report
    # every trial is a normal run that says where it came from
    run = trial_run(p, bo.id, good.n)
    assert run is not None and run.config["origin"] == {"bakeoff": bo.id, "trial": good.n}
    assert run.config["train"]["learning_rate"] == 5e-3
    p.close()


@pytest.mark.integration
def test_a_killed_bakeoff_continues_where_it_stopped(tmp_path: Path, tiny_model: Path, monkeypatch) -> None:
    """Interrupted in its second rung, a bake-off continues there: no cut is made twice, nothing trains twice."""
    root = _prepared(
        tmp_path / "p",
        tiny_model,
        train={"epochs": 4, "batch_size": 8},
        bakeoff={
            "trials": 4,
            "space": {"learning_rate": [5e-3, 3e-3, 1e-6, 1e-7]},
            "halving": {"eta": 2, "min_epochs": 1},  # rungs at 1, 2 and 4 epochs: 4 → 2 → 1 trials
            "include_default": False,
        },
    )
    p = open_project(root)
    real = bakeoff_mod._run_in_process
    calls: list[tuple[int, float | None]] = []

    def interrupted(project, spec):
        calls.append((spec["trial"], spec["pause_at"]))
        if len(calls) == 6:  # the second trial of rung 2 (epoch 2): Ctrl-C
            raise KeyboardInterrupt
        return real(project, spec)

    monkeypatch.setattr(bakeoff_mod, "_run_in_process", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_bakeoff(p)
    first = list_bakeoffs(p)[-1]
    assert not first.finished and first.rungs_done == 1
    assert sorted(t.status for t in first.trials) == ["paused", "pruned", "pruned", "running"]
    monkeypatch.setattr(bakeoff_mod, "_run_in_process", real)
    bo = run_bakeoff(p)
    assert bo.id == first.id and bo.finished  # the same bake-off, continued
    reached = sorted(t.reached for t in bo.trials)
    assert reached == [1.0, 1.0, 2.0, 4.0]  # 4 trials at rung 1, 2 at rung 2, 1 to the end: no second cut
    assert len(p.store.list(Run, Run.id)) == 4  # one run per trial: nothing trained twice
    winner = next(t for t in bo.trials if t.n == bo.winner)
    assert [s["epochs"] for s in winner.scores] == [1.0, 2.0, 4.0]  # paused twice, resumed twice, one run
    p.close()


@pytest.mark.integration
def test_bakeoff_on_ray_tune_with_asha(tmp_path: Path, tiny_model: Path) -> None:
    from slmloop.graduate.tune import ray_available

    if not ray_available():
        pytest.skip("ray[tune] is not installed (pip install 'ray[tune]'): the Ray Tune path is not tested")
    root = _bakeoff_project(tmp_path / "p", tiny_model)
    p = open_project(root)
    bo = run_bakeoff(p, ray="local")
    assert bo.backend == "ray" and bo.finished
    good, bad = sorted(bo.trials, key=lambda t: -t.params.get("learning_rate", 5e-3))
    assert good.status == "completed" and good.scores[-1]["epochs"] == 4.0
    assert good.score > bad.score
    # ASHA with eta 2 on two trials: the weaker one is stopped at the first rung
    assert bad.status == "pruned" and bad.reached == 2.0
    assert bo.winner == good.n and bo.gold["winner_metrics"]["value"] is not None
    assert (root / ".slmloop" / "bakeoffs" / bo.id / "ray" / "tune").exists()
    p.close()


# ---------------------------------------------------------------------------------------------
# distillation
# ---------------------------------------------------------------------------------------------
def _unlabelled(p, path: Path) -> tuple[Path, int]:
    """New inputs (texts the project has never seen), one copy of a gold input and one repeat."""
    from slmloop.data.versions import current_gold_rows, load_dataset

    splits = load_dataset(p)
    known = {r["text"] for r in splits.train + splits.validation + splits.gold}
    fresh = [r["text"] for r in toy_rows(60, seed=11) if r["text"] not in known][:30]
    gold_text = current_gold_rows(p)[1][0]["text"]
    lines = [{"text": t} for t in [*fresh, gold_text, fresh[0]]]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path, len(fresh)


@pytest.mark.integration
def test_distill_from_a_local_fine_tuned_teacher(trained_copy, tmp_path: Path) -> None:
    from slmloop.data.versions import load_dataset
    from slmloop.evaluate.evaluate import answer_gold
    from slmloop.graduate.distill import distill

    p = trained_copy
    parent = load_dataset(p)
    file, fresh = _unlabelled(p, tmp_path / "unlabelled.jsonl")
    result = distill(p, "run-1", unlabelled=file)
    c = result.counts
    assert c["from_train"] == len(parent.train) and c["from_unlabelled"] == fresh
    assert c["unlabelled_dropped"] == {"copies gold or validation": 1, "repeated": 1, "already training": 0}
    v = result.version
    assert v.config["parent"] == parent.version.id and v.config["distill"]["teacher"] == "run-1"
    assert v.validation_object == parent.version.validation_object and v.gold_id == parent.version.gold_id
    rows = p.objects.read_jsonl(v.train_object)
    assert len(rows) == c["rows"] == c["from_train"] + fresh - c["invalid_answers"]
    # every target is the teacher's own answer, not the human label
    asked = answer_gold(p, "run-1", [{"text": r["text"]} for r in rows], p.manifest.eval, allow_leakage=True)
    assert [r["label"] for r in rows] == [a.prediction for a in asked.answers]
    human = {r["text"]: r["label"] for r in parent.train}
    agree = [r["label"] == human[r["text"]] for r in rows if r["text"] in human]
    assert v.config["distill"]["agreement_with_labels"] == pytest.approx(sum(agree) / len(agree))
    assert all("probs" in r["_teacher"] for r in rows)  # the teacher's label distribution is kept
    # the student learned from that version; student, teacher and base are scored on gold with a cost
    assert result.run is not None and result.run.dataset_id == v.id
    assert result.run.metrics["train_loss_last"] < result.run.metrics["train_loss_first"]
    assert result.run.config["origin"] == {"distill": "run-1"}
    # the teacher shares the student's tokenizer: its token distributions are matched too (KL)
    assert v.config["distill"]["level"] == "token (KL) + sequence"
    assert result.run.config["train"]["distill_from"] == "run-1"
    roles = {r["role"]: r for r in result.table}
    assert set(roles) == {"student", "teacher", "base"}
    assert all(0.0 <= r["value"] <= 1.0 and r["cost_per_1k_requests"] is not None for r in result.table)


@pytest.mark.integration
def test_distill_from_the_projects_own_server_over_http(trained_copy, trained_project: Path, tmp_path: Path) -> None:
    import shutil

    from slmloop.graduate.distill import distill
    from slmloop.manifest import EndpointConfig
    from slmloop.serve.server import ServerProcess

    served = tmp_path / "served"
    shutil.copytree(trained_project, served)
    p = trained_copy
    with ServerProcess(served) as server:
        # the OpenAI-compatible route, as for any external teacher (the release answers compact prompts)
        p.manifest.eval.endpoints["self"] = EndpointConfig(url=server.url + "/v1", model="self", prompt="compact")
        by_chat = distill(p, "endpoint:self", train_student=False)
        # the task-shaped route of a running slmloop serve
        by_predict = distill(p, f"live:{server.url}")
    rows_chat = p.objects.read_jsonl(by_chat.version.train_object)
    rows_predict = p.objects.read_jsonl(by_predict.version.train_object)
    c = by_chat.counts
    # free generation over HTTP: an answer that is not a label is left out and counted, never guessed
    assert c["rows"] + c["invalid_answers"] == c["from_train"] and c["rows"] > 0
    assert len(rows_chat) == c["rows"]
    # /v1/predict ranks the labels: every input gets one
    assert by_predict.counts["rows"] == by_predict.counts["from_train"] and by_predict.counts["invalid_answers"] == 0
    # both routes ask the same release: where the generated answer is a label, it is mostly the ranked one
    ranked = {r["text"]: r["label"] for r in rows_predict}
    agree = sum(ranked[r["text"]] == r["label"] for r in rows_chat) / len(rows_chat)
    print(f"chat vs predict agreement {agree:.3f} on {len(rows_chat)} rows")
    assert agree >= 0.8
    assert by_predict.run is not None and by_predict.run.status == "completed"
    assert by_predict.version.config["distill"]["level"] == "sequence"  # no token distributions over HTTP
    assert by_predict.run.config["train"]["distill_from"] is None
    assert {r["role"] for r in by_predict.table} == {"student", "teacher", "base"}


# ---------------------------------------------------------------------------------------------
# the forgetting guard
# ---------------------------------------------------------------------------------------------
def test_the_builtin_pack_is_well_formed() -> None:
    from slmloop.evaluate.forgetting import load_pack

    pack = load_pack("gsm8k-numeric")
    assert len(pack) == 250 and len(load_pack("gsm8k-numeric", rows=20)) == 20
    for r in pack:
        assert len(r["choices"]) == 4 and r["answer"] in r["choices"] and len(set(r["choices"])) == 4
        assert r["solution"].endswith(f"The answer is {r['answer']}.") and "<<" not in r["solution"]


def test_a_bad_pack_is_named(tmp_path: Path) -> None:
    from slmloop.evaluate.forgetting import load_pack

    bad = tmp_path / "pack.jsonl"
    bad.write_text('{"question": "1+1?", "answer": "2", "solution": "2", "choices": ["3", "4"]}\n')
    with pytest.raises(ConfigError) as e:
        load_pack(str(bad))
    assert "line 1" in e.value.message
    with pytest.raises(ConfigError):
        load_pack("no-such-pack")


@pytest.mark.integration
def test_continuation_logprobs_match_a_plain_forward_pass(tiny_model: Path) -> None:
    from slmloop.models.catalog import resolve_model
    from slmloop.models.inference import continuation_logprobs
    from slmloop.predict.targets import ModelTarget, load_target

    model, tok = load_target(ModelTarget("base", resolve_model(str(tiny_model))), torch.float32)
    prompts, conts = ["see you at the", "bring the book", "call me"], [" station", " to class tomorrow", " when"]
    got = continuation_logprobs(model, tok, prompts, conts, batch_size=2)  # padded batches
    for (lp, n), p, c in zip(got, prompts, conts, strict=True):
        head = tok(p, add_special_tokens=False)["input_ids"]
        ids = head + tok(c, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)
        expected = sum(float(logp[i - 1, ids[i]]) for i in range(len(head), len(ids)))
        assert n == len(ids) - len(head) and lp == pytest.approx(expected, abs=1e-4)


@pytest.mark.integration
def test_forgetting_gate_on_a_fine_tuned_model(trained_copy) -> None:
    from slmloop.evaluate.evaluate import evaluate, failed_gates
    from slmloop.manifest import ForgettingConfig

    p = trained_copy
    cfg = p.manifest.eval

    def judged(**limits: float | None) -> tuple[dict, list[str]]:
        pack = cfg.model_copy(update={"forgetting": ForgettingConfig(rows=12, **{"max_drop": None, **limits})})
        e = evaluate(p, "run-1", pack=pack)
        return e.metrics["forgetting"], [f for f in failed_gates(e) if f.startswith("forgetting")]

    first, _ = judged()
    assert first["rows"] == 12
    assert 0.0 <= first["base"]["choice_accuracy"] <= 1.0 and first["base"]["solution_nll"] > 0
    assert first["model"]["solution_nll"] != first["base"]["solution_nll"]  # the adapter moved the model
    assert list((p.home / "cache").glob("forgetting-*.json")), "the base model's scores are cached"
    rise = first["solution_nll_rise"]
    assert rise == pytest.approx(first["model"]["solution_nll"] - first["base"]["solution_nll"], abs=1e-9)
    lo, hi = first["solution_nll_rise_ci"]
    assert lo <= rise <= hi
    # a zero tolerance fails exactly when the NLL rose; a tolerance above the rise passes
    strict, failed = judged(max_nll_rise=0.0)
    assert strict["passed"] == (rise <= 0) and bool(failed) == (rise > 0)
    loose, failed = judged(max_nll_rise=abs(rise) + 1e-3)
    assert loose["passed"] and not failed
    drop = first["choice_accuracy_drop"]
    gated, failed = judged(max_drop=0.0)
    assert gated["passed"] == (drop <= 0) and bool(failed) == (drop > 0)
    with_pack = cfg.model_copy(update={"forgetting": ForgettingConfig(rows=12)})
    assert "forgetting" not in evaluate(p, "base", pack=with_pack).metrics  # the base is not compared with itself


# ---------------------------------------------------------------------------------------------
# synthetic data
# ---------------------------------------------------------------------------------------------
def test_teacher_lines_are_cleaned() -> None:
    from slmloop.graduate.synth import clean_lines

    text = '1. WIN a free prize now\n- "claim your cash bonus"\n\nHere are some:\n2) txt WIN to claim\nok'
    assert clean_lines(text) == ["WIN a free prize now", "claim your cash bonus", "txt WIN to claim"]


class _TeacherAPI:
    """An OpenAI-compatible HTTP server standing in for a remote LLM: it writes new inputs from the words of
    the examples it is shown, repeats one of them verbatim and slips in one gold input."""

    def __init__(self, gold_text: str) -> None:
        import http.server
        import random as rnd
        import threading

        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                prompt = body["messages"][-1]["content"]
                shown = [x[2:] for x in prompt.splitlines() if x.startswith("- ")]
                rng = rnd.Random(prompt)
                words = sorted({w for x in shown for w in x.split()})
                lines = [" ".join(rng.sample(words, min(7, len(words)))) for _ in range(8)]
                lines += [shown[0], owner.gold_text]
                reply = {"choices": [{"message": {"content": "\n".join(f"{i + 1}. {x}" for i, x in enumerate(lines))}}]}
                data = json.dumps({**reply, "usage": {"prompt_tokens": 50, "completion_tokens": 80}}).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.gold_text = gold_text
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


@pytest.mark.integration
def test_synthetic_rows_train_only_and_the_eval_slices_by_them(tmp_path: Path, tiny_model: Path) -> None:
    from slmloop.cli import main
    from slmloop.data.prepare import is_synthetic
    from slmloop.data.versions import current_gold_rows, load_dataset
    from slmloop.evaluate.evaluate import evaluate

    root = _prepared(tmp_path / "p", tiny_model, data={"leakage": {"semantic": "report"}})
    p = open_project(root)
    before = load_dataset(p)
    gold_text = current_gold_rows(p)[1][0]["text"]
    api = _TeacherAPI(gold_text)
    try:
        import yaml

        m = yaml.safe_load((root / "slmloop.yaml").read_text())
        m["eval"]["endpoints"] = {"teacher": {"url": api.url, "model": "big"}}
        (root / "slmloop.yaml").write_text(yaml.safe_dump(m))
        code = main(
            ["data", "synth", "--teacher", "endpoint:teacher", "--for-label", "spam", "--n", "12", "-p", str(root)]
        )
        assert code == 0
    finally:
        api.close()
    synth_files = list((root / ".slmloop" / "synth").glob("synth-*.jsonl"))
    written = [json.loads(x) for x in synth_files[0].read_text().splitlines()]
    assert len(written) == 12 and all(r["synthetic"] and r["label"] == "spam" for r in written)
    train_texts = {r["text"].casefold() for r in before.train}
    assert not any(r["text"].casefold() in train_texts for r in written)  # verbatim copies were not kept
    assert main(["data", "prepare", "-p", str(root)]) == 0
    p = open_project(root)
    after = load_dataset(p)
    synthetic = [r for r in after.train if is_synthetic(r)]
    ledger = p.objects.read_jsonl(after.version.rejects_object)
    rejected = [r for r in ledger if Path(str(r.get("file", ""))).name == synth_files[0].name]
    assert len(synthetic) + len(rejected) == 12  # every generated row is accounted for
    assert any(r["raw"] == gold_text for r in rejected)  # the gold copy never trains
    assert gold_text not in {r["text"] for r in synthetic} and len(synthetic) >= 6
    assert not any(is_synthetic(r) for r in after.validation + after.gold)
    assert sorted(map(json.dumps, after.validation)) == sorted(map(json.dumps, before.validation))
    run = train(p, {"epochs": 1})
    evaluation = evaluate(p, run.name)
    subsets = evaluation.metrics["subsets"]["nearest_synthetic"]
    from slmloop.graduate.synth import weakest_labels

    f1 = {lab: v["f1"] for lab, v in evaluation.metrics["per_class"].items()}
    assert weakest_labels(p, 1) == [min(sorted(f1), key=lambda lab: f1[lab])]  # the failing slice to write for
    real_n, synth_n = subsets["real_neighbour"]["n"], subsets["synthetic_neighbour"]["n"]
    assert real_n + synth_n == len(after.gold)
    assert subsets["share"] == pytest.approx(synth_n / len(after.gold))
    p.close()


def test_bakeoff_cli_errors_are_clear(tmp_path: Path, tiny_model: Path, capsys, monkeypatch) -> None:
    from slmloop.cli import main
    from slmloop.graduate import tune

    root = _prepared(tmp_path / "p", tiny_model, rows=toy_rows(60))
    assert main(["bakeoff", "--show", "bo-9", "-p", str(root)]) != 0
    assert "no bake-off 'bo-9'" in capsys.readouterr().err
    monkeypatch.setattr(tune, "ray_available", lambda: False)
    p = open_project(root)
    bo = bakeoff_mod._new(p, p.manifest.bakeoff, "accuracy", "ray")
    with pytest.raises(ConfigError) as e:
        tune.run_ray(p, bo, "local", None)  # type: ignore[arg-type]
    assert "pip install" in (e.value.hint or "")
    p.close()


def test_synthetic_rows_never_enter_gold_or_validation(tmp_path: Path, tiny_model: Path) -> None:
    from slmloop.data.prepare import is_synthetic

    rows = toy_rows(200)
    for r in rows[::2]:
        r["synthetic"] = True  # half the rows generated: the splits must still take real rows only
    root = _prepared(tmp_path / "p", tiny_model, rows=rows)
    from slmloop.data.versions import load_dataset

    p = open_project(root)
    splits = load_dataset(p)
    assert splits.gold and splits.validation
    assert not any(is_synthetic(r) for r in splits.gold + splits.validation)
    assert sum(is_synthetic(r) for r in splits.train) == 100  # every generated row trains
    p.close()


def test_unlabelled_inputs_are_checked(tmp_path: Path) -> None:
    from slmloop.errors import DataError
    from slmloop.graduate.distill import unlabelled_inputs
    from slmloop.manifest import TaskConfig

    task = TaskConfig(type="classification", labels=["ham", "spam"])
    good = tmp_path / "in.jsonl"
    good.write_text('{"text": "see you at noon", "monitor_run": 3}\n{"text": "WIN cash now"}\n')
    assert unlabelled_inputs(task, good) == [{"text": "see you at noon"}, {"text": "WIN cash now"}]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"message": "no text column"}\n{"text": "  "}\n')
    with pytest.raises(DataError) as e:
        unlabelled_inputs(task, bad)
    assert "2 row(s)" in e.value.message and "bad.jsonl:2" in e.value.message
    with pytest.raises(DataError):
        unlabelled_inputs(task, tmp_path / "missing.jsonl")


def test_a_trace_torn_by_a_kill_is_read_up_to_the_tear(tmp_path: Path) -> None:
    from slmloop.train.tracking import read_trace

    assert read_trace(tmp_path) == []
    (tmp_path / "trace.jsonl").write_text('{"step": 1, "loss": 2.0}\n\n{"step": 2, "loss": 1.5}\n{"step": 3, "lo')
    assert read_trace(tmp_path) == [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}]
