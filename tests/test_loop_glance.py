"""The loop at a glance: `slmloop status`, `eval list`, the audit log reader, JSON output, progress in a log,
and baselines held to the data of the model they are compared with."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from rich.console import Console

from slmloop.cli import main
from slmloop.data.importer import import_source
from slmloop.data.prepare import prepare_dataset
from slmloop.evaluate.evaluate import evaluate
from slmloop.manifest import SourceConfig
from slmloop.progress import LineProgress, status
from slmloop.project import open_project
from slmloop.status import loop_status
from slmloop.store import Evaluation
from tests.conftest import write_project
from tests.tiny import toy_rows


def _json(capsys) -> object:
    return json.loads(capsys.readouterr().out)


def test_status_walks_the_loop_and_names_the_next_step(tmp_path: Path, tiny_model: Path, capsys) -> None:
    from slmloop.train.recipe import train

    root = write_project(tmp_path / "p", tiny_model, toy_rows(120), train={"epochs": 1})
    p = open_project(root)
    assert loop_status(p).next_step == "slmloop data import FILE"
    import_source(p, p.manifest.data.sources[0])
    assert loop_status(p).next_step == "slmloop data prepare"
    prepare_dataset(p)
    now = loop_status(p)
    assert now.next_step == "slmloop train" and now.stage("data").status == "ok"
    run = train(p)
    assert loop_status(p).next_step == f"slmloop eval --model {run.name}"
    ev = evaluate(p, run.name)
    now = loop_status(p)
    assert now.stage("evaluate").ref == ev.name and now.stage("evaluate").facts["ci"]
    assert now.next_step == f"slmloop export {run.name}"
    # new data arrives: the data stage warns that the imports changed, and prepare comes first again
    more = tmp_path / "more.jsonl"
    more.write_text("".join(json.dumps(r) + "\n" for r in toy_rows(20, seed=9)))
    import_source(p, SourceConfig(path=str(more)))
    now = loop_status(p)
    assert now.stage("data").status == "warn" and now.next_step == "slmloop data prepare"
    p.close()
    assert main(["status", "--json", "-p", str(root)]) == 0
    shown = _json(capsys)
    assert [s["name"] for s in shown["stages"]] == ["data", "train", "evaluate", "release", "monitor"]
    assert shown["next_step"] == "slmloop data prepare" and shown["stages"][2]["facts"]["evaluation"] == ev.name
    assert main(["status", "-p", str(root)]) == 0
    assert "next:" in capsys.readouterr().out


def test_eval_list_log_and_json(trained_copy, capsys) -> None:
    p = trained_copy
    root = str(p.root)
    evaluate(p, "run-1")
    evaluate(p, "baseline:tfidf-lr")
    assert main(["eval", "list", "--json", "-p", root]) == 0
    listed = _json(capsys)
    assert [e["model"] for e in listed] == ["baseline:tfidf-lr", "run-1"]
    run_eval = listed[1]
    assert run_eval["dataset"].startswith("ds-") and run_eval["headline"] == "accuracy"
    assert len(run_eval["ci"]["accuracy"]) == 2 and isinstance(run_eval["gates_failed"], list)
    assert main(["eval", "list", "--model", "run-1", "-p", root]) == 0
    assert "eval-1" in capsys.readouterr().out
    assert main(["eval", "--model", "baseline:knn", "--json", "-p", root]) != 0  # knn does not classify
    capsys.readouterr()
    assert main(["eval", "--model", "baseline:tfidf-lr", "--json", "-p", root]) == 0
    assert _json(capsys)["model"] == "baseline:tfidf-lr"
    assert main(["compare", "base", "run-1", "--json", "-p", root]) == 0
    compared = _json(capsys)
    assert compared["comparisons"][0]["model"] == "run-1" and "p_value" in compared["comparisons"][0]
    # the audit log: newest first, by kind (a prefix reads the family) and by subject
    assert main(["log", "--kind", "data", "--json", "-p", root]) == 0
    kinds = [e["kind"] for e in _json(capsys)]
    assert kinds[-1] == "data.import" and "data.prepare" in kinds
    assert main(["log", "--subject", "eval-1", "--json", "-p", root]) == 0
    (event,) = _json(capsys)
    assert event["kind"] == "eval" and event["payload"]["model"] == "run-1"
    assert main(["log", "-p", root]) == 0
    assert "audit log" in capsys.readouterr().out


def test_a_baseline_is_fit_on_the_data_of_the_run_it_is_compared_with(tmp_path: Path, tiny_model: Path) -> None:
    from slmloop.train.recipe import train

    root = write_project(tmp_path / "p", tiny_model, toy_rows(120), train={"epochs": 1})
    p = open_project(root)
    import_source(p, p.manifest.data.sources[0])
    first = prepare_dataset(p).splits.version.id
    run = train(p)
    more = tmp_path / "more.jsonl"
    more.write_text("".join(json.dumps(r) + "\n" for r in toy_rows(60, seed=11)))
    import_source(p, SourceConfig(path=str(more)))
    second = prepare_dataset(p).splits.version.id
    assert second != first
    newer = evaluate(p, "baseline:tfidf-lr")  # the current data
    assert newer.dataset_id == second and newer.metrics["runtime"]["fitted_on"] == second
    cfg = p.manifest.eval.model_copy(
        update={"compare": p.manifest.eval.compare.model_copy(update={"baseline": "tfidf-lr"})}
    )
    ev = evaluate(p, run.name, pack=cfg)
    against = p.store.get(Evaluation, int(ev.metrics["vs_baseline"]["evaluation"].removeprefix("eval-")), "", "")
    assert ev.dataset_id == first and against.dataset_id == first and against.id != newer.id
    again = evaluate(p, run.name, pack=cfg)  # the baseline fit on the run's data is stored and reused
    assert again.metrics["vs_baseline"]["evaluation"] == ev.metrics["vs_baseline"]["evaluation"]
    p.close()


def test_line_progress_prints_the_state_with_an_eta_and_a_last_line() -> None:
    buffer = io.StringIO()
    console = Console(file=buffer, width=200)
    assert not console.is_terminal
    with LineProgress(console, "train", [("loss", "loss {}")], every=0.01) as bar:
        task = bar.add_task("train", total=10, loss="…")
        bar.update(task, advance=4, loss="0.52")
        import time

        for _ in range(2000):  # until the printer thread has written its line (every 0.01 s)
            if "ETA" in buffer.getvalue():
                break
            time.sleep(0.005)
    lines = buffer.getvalue().splitlines()
    assert any(re.fullmatch(r"train: 4/10 \(40 %\) · loss 0\.52 · 0:00 elapsed · ETA 0:00", x) for x in lines)
    assert lines[-1].startswith("train: 4/10 (40 %) · loss 0.52") and lines[-1].endswith("done")
    buffer.truncate(0)
    with status(console, "fitting"):
        pass
    assert buffer.getvalue().splitlines()[-1].startswith("fitting done in")


def test_training_prints_progress_lines_when_stderr_is_a_log(tmp_path: Path, tiny_model: Path) -> None:
    root = write_project(tmp_path / "p", tiny_model, toy_rows(120), train={"epochs": 3})
    env = {**os.environ, "SLMLOOP_PROGRESS_INTERVAL": "0.05", "COLUMNS": "200"}
    for args in (["data", "import"], ["data", "prepare"]):
        assert (
            subprocess.run([sys.executable, "-m", "slmloop", *args], cwd=root, capture_output=True, env=env).returncode
            == 0
        )
    log = tmp_path / "train.log"
    with open(log, "w") as f:
        res = subprocess.run(
            [sys.executable, "-m", "slmloop", "train"], cwd=root, stderr=f, stdout=subprocess.PIPE, env=env
        )
    assert res.returncode == 0
    lines = log.read_text().splitlines()
    steps = [x for x in lines if re.match(r"train: \d+/\d+ \(\d+ %\) .*elapsed · (ETA|done)", x)]
    assert len(steps) >= 2 and steps[-1].endswith("done"), lines
