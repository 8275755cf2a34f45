from __future__ import annotations

import json
import shutil
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from slmloop.monitor.signals import (
    Signal,
    embedding_signal,
    invalid_signal,
    judge,
    label_mix_signal,
    length_signal,
    mmd2_unbiased,
    oov_signal,
    overall,
)


def test_unbiased_mmd2_by_hand() -> None:
    # two points per sample; within-sample off-diagonal kernel 1, across 0 -> (2/2) + (2/2) - 0 = 2
    k = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]], dtype=float)
    assert mmd2_unbiased(k, 2) == pytest.approx(2.0)
    assert mmd2_unbiased(np.ones((4, 4)), 2) == pytest.approx(0.0)


def test_embedding_signal_separates_shift_from_noise() -> None:
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(150, 8))
    same = rng.normal(size=(60, 8))
    shifted = rng.normal(loc=0.8, size=(60, 8))
    noise = embedding_signal(ref, same, warn=0.02, drift=0.05, permutations=200)
    shift = embedding_signal(ref, shifted, warn=0.02, drift=0.05, permutations=200)
    assert noise.p_value > 0.05 and abs(noise.effect) < 0.02
    assert shift.p_value < 0.01 and shift.effect > 0.05 and shift.detail["centroid_cosine_distance"] > 0


def test_a_verdict_needs_both_significance_and_size() -> None:
    def verdict(effect: float, p: float) -> str:
        return judge(Signal("x", effect, p, warn=0.1, drift=0.2), alpha=0.01).verdict

    assert verdict(0.05, 1e-9) == "ok"  # significant but tiny: a large window of harmless traffic
    assert verdict(0.50, 0.20) == "ok"  # large but could be noise: a tiny window
    assert verdict(0.15, 1e-3) == "warn"
    assert verdict(0.25, 1e-3) == "drift"
    assert overall([Signal("a", 0, 1, 0, 0, "ok"), Signal("b", 0, 1, 0, 0, "warn")]) == "warn"


def test_oov_and_label_mix_effects_by_hand() -> None:
    oov = oov_signal({"a", "b"}, (1, 10), ["a c d", "b"], warn=0.05, drift=0.1)
    assert oov.detail["live_rate"] == pytest.approx(0.5) and oov.effect == pytest.approx(0.4)
    assert oov.detail["top_unseen"] == [("c", 1), ("d", 1)]
    mix = label_mix_signal({"ham": 2, "spam": 2}, ["ham", "ham", "ham", "spam"], warn=0.1, drift=0.3)
    assert mix.detail["total_variation"] == pytest.approx(0.25)
    # 2x2 table [[2, 2], [3, 1]]: chi² = 8/15 over n = 8; phi² corrected = max(0, 1/15 - 1/7) = 0
    assert mix.effect == pytest.approx(0.0)
    same = label_mix_signal({"a": 500, "b": 500}, ["a"] * 500 + ["b"] * 500, warn=0.1, drift=0.3)
    assert same.effect == pytest.approx(0.0) and same.p_value == pytest.approx(1.0)
    moved = label_mix_signal({"a": 500, "b": 500}, ["a"] * 500, warn=0.1, drift=0.3)
    # table [[500, 500], [500, 0]]: chi² = 375 over n = 1500, phi² = 1/4, corrected 1/4 - 1/1499;
    # V = sqrt(that / (1 - 1/1499))
    assert moved.effect == pytest.approx(((1 / 4 - 1 / 1499) / (1 - 1 / 1499)) ** 0.5)
    assert moved.p_value == pytest.approx(1 / 1001)  # no permutation reaches it: the floor of 1,000


def test_invalid_signal_is_exact_on_small_counts() -> None:
    # reference 0 bad of 538; one bad answer in a window of 10: hypergeometric P(X >= 1) = 10/548
    one = judge(invalid_signal((0, 538), 1, 10, warn=0.02, drift=0.05), alpha=0.01)
    assert one.effect == pytest.approx(0.1) and one.p_value == pytest.approx(10 / 548)
    assert one.verdict == "ok"  # large, but one answer proves nothing (a z-test gave p ~ 1e-13)
    # two bad in 10: P(X >= 2) = C(10,2) / C(548,2) = 90 / (548 * 547)
    two = judge(invalid_signal((0, 538), 2, 10, warn=0.02, drift=0.05), alpha=0.01)
    assert two.p_value == pytest.approx(90 / (548 * 547)) and two.verdict == "drift"
    assert invalid_signal((3, 100), 0, 50, warn=0.02, drift=0.05).p_value == pytest.approx(1.0)


def test_length_signal_agrees_with_scipy() -> None:
    from scipy.stats import ks_2samp

    res = length_signal([2, 3, 1] * 10, [8] * 20, warn=0.1, drift=0.2)
    assert res.p_value == pytest.approx(ks_2samp([2, 3, 1] * 10, [8] * 20).pvalue)
    assert res.effect == pytest.approx(1.0) and res.detail["live_mean_words"] == 8


class _Hook(BaseHTTPRequestHandler):
    received: ClassVar[list[dict]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        _Hook.received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


HOTEL = [
    "Do you have a free parking space for guests staying over the weekend at the hotel?",
    "I would like to book a double room with breakfast for three nights in May please",
    "Is the swimming pool open in the evening and can I bring towels from my room?",
    "Can we get a late check out on Sunday, our flight leaves at nine in the evening",
]


@pytest.mark.integration
def test_monitor_windows_webhook_exit_code_and_the_way_back_to_data(
    trained_project: Path, tmp_path: Path, capsys
) -> None:
    from slmloop.cli import main
    from slmloop.data.importer import import_source
    from slmloop.data.prepare import prepare_dataset
    from slmloop.evaluate.evaluate import evaluate
    from slmloop.manifest import SourceConfig
    from slmloop.monitor.drift import monitor
    from slmloop.project import open_project
    from slmloop.store import DatasetVersion, Release, RequestLog
    from tests.tiny import toy_rows

    root = tmp_path / "copy"
    shutil.copytree(trained_project, root)
    p = open_project(root)
    assert (p.locate(p.store.get(Release, 1, "release", "").path) / "reference" / "embeddings.npy").exists()
    evaluate(p, "run-1")  # the release was exported before its evaluation: confidence comes from this one

    def log(text: str, label: str, top: float) -> None:
        out = {"label": label, "scores": {label: top, "spam" if label == "ham" else "ham": 1 - top}}
        p.store.add(
            RequestLog(release_version=1, endpoint="/v1/predict", status=200, input=text, output=json.dumps(out))
        )

    p.store.add(RequestLog(release_version=1, endpoint="/v1/predict", status=200, input="hi"))
    _, few = monitor(p, 1)
    assert few.verdict == "insufficient" and few.windows == []

    for row in toy_rows(80, seed=99):  # the training distribution, unseen rows
        log(row["text"], row["label"], 0.97)
    _, same = monitor(p, 1, last=80, window=40)
    assert [w.n for w in same.windows] == [40, 40]
    assert same.verdict in ("ok", "warn"), same.as_dict()
    assert all(s["verdict"] != "drift" for w in same.windows for s in w.signals)

    server = HTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    p.manifest.monitor.webhook = f"http://127.0.0.1:{server.server_port}/hook"
    for text in HOTEL * 10:
        log(text, "ham", 0.55)
    report, shifted = monitor(p, 1, last=40, window=40)
    server.shutdown()
    (w,) = shifted.windows
    by = {s["name"]: s for s in w.signals}
    assert shifted.verdict == "drift" and by["embedding"]["verdict"] == "drift" and by["oov"]["verdict"] == "drift"
    assert by["confidence"]["effect"] > 0.3
    assert _Hook.received and _Hook.received[-1]["verdict"] == "drift" and _Hook.received[-1]["report"] == report.id
    folder = p.locate(report.path)
    assert (folder / "drift.png").stat().st_size > 1000 and "drift" in (folder / "index.html").read_text()

    p.close()
    assert main(["monitor", "--last", "40", "--window", "40", "-p", str(root)]) == 1
    # every request is from the last day: the same 40 calm + 40 hotel requests, so drift again
    assert main(["monitor", "--last", "80", "--since", "1d", "--window", "40", "-p", str(root)]) == 1
    # none since tomorrow: nothing to judge, no alarm
    assert main(["monitor", "--since", "2999-01-01", "-p", str(root)]) == 0

    labelled = tmp_path / "to_label.jsonl"
    assert main(["monitor", "export", str(labelled), "--most-drifted", "3", "-p", str(root)]) == 0
    rows = [json.loads(line) for line in labelled.read_text().splitlines()]
    assert {r["text"] for r in rows[:3]} <= set(HOTEL) and all(r["monitor_run"] for r in rows)
    assert rows[0]["label"] == "ham" and rows[0]["why"] == "far from training data"
    for r in rows:  # the labeller corrects the suggestion
        r["label"] = "spam" if r["text"] in HOTEL else r["label"]
    labelled.write_text("".join(json.dumps(r) + "\n" for r in rows))

    p = open_project(root)
    imported = import_source(p, SourceConfig(path=str(labelled)))
    assert imported.record.accepted == len(rows) and imported.record.mapping["monitor_runs"] == [rows[0]["monitor_run"]]
    prepare_dataset(p)
    newest = p.store.list(DatasetVersion, DatasetVersion.created_at)[-1]
    assert any(s["mapping"].get("monitor_runs") for s in newest.config["sources"])
    p.close()
    capsys.readouterr()
    assert main(["data", "list", "-p", str(root)]) == 0
    assert f"drift-{rows[0]['monitor_run']}" in capsys.readouterr().out
