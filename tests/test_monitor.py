from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from slmloop.monitor.drift import embedding_test, length_test, mmd2, monitor
from slmloop.project import open_project
from slmloop.store import RequestLog


def test_mmd2_by_hand() -> None:
    # two points per sample, kernel given directly: Kxx mean 1, Kyy mean 1, Kxy mean 0 -> MMD² = 2
    k = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]], dtype=float)
    assert mmd2(k, 2) == pytest.approx(2.0)
    assert mmd2(np.ones((4, 4)), 2) == pytest.approx(0.0)


def test_embedding_test_separates_shift_from_noise() -> None:
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(150, 8))
    same = rng.normal(size=(60, 8))
    shifted = rng.normal(loc=0.8, size=(60, 8))
    assert embedding_test(ref, same, permutations=200)["p_value"] > 0.05
    res = embedding_test(ref, shifted, permutations=200)
    assert res["p_value"] < 0.01 and res["centroid_cosine_distance"] > 0


def test_length_test_agrees_with_scipy() -> None:
    from scipy.stats import ks_2samp

    a = ["one two", "one two three", "x"] * 10
    b = ["a b c d e f g h"] * 20
    res = length_test(a, b)
    assert res["p_value"] == pytest.approx(ks_2samp([2, 3, 1] * 10, [8] * 20).pvalue)
    assert res["live_mean_words"] == 8


@pytest.mark.integration
def test_monitor_flags_shifted_traffic_and_not_similar_traffic(trained_project: Path, tmp_path: Path) -> None:
    root = tmp_path / "copy"
    shutil.copytree(trained_project, root)
    p = open_project(root)
    from tests.tiny import toy_rows

    few = [RequestLog(release_version=1, endpoint="/v1/predict", status=200, input="hi")] * 1
    for r in few:
        p.store.add(r)
    report, result = monitor(p, 1)
    assert result.verdict == "insufficient" and report.n_requests == 1

    for row in toy_rows(40, seed=99):  # same distribution as training
        p.store.add(
            RequestLog(
                release_version=1,
                endpoint="/v1/predict",
                status=200,
                input=row["text"],
                output=json.dumps({"label": row["label"]}),
            )
        )
    _, similar = monitor(p, 1, last=40)
    assert similar.verdict == "stable"
    assert similar.tests["predictions"]["live"] == {"ham": 26, "spam": 14}
    hotel = [
        "Do you have a free parking space for guests staying over the weekend at the hotel?",
        "I would like to book a double room with breakfast for three nights in May please",
    ] * 20
    for text in hotel:
        p.store.add(
            RequestLog(release_version=1, endpoint="/v1/predict", status=200, input=text, output='{"label": "ham"}')
        )
    report, shifted = monitor(p, 1, last=40)
    assert shifted.verdict == "drift" and "embedding" in shifted.tests["drifted"]
    folder = p.locate(report.path)
    assert (folder / "drift.png").stat().st_size > 1000 and (folder / "index.html").exists()
    p.close()
