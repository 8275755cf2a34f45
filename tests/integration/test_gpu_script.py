"""benchmarks/gpu.py runs its whole path on a CPU (a tiny model): every number it reports is measured,
and what needs a GPU is listed as missing, not invented."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration


def test_the_gpu_script_measures_everything_a_cpu_can_and_names_the_rest(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    baseline = ROOT.parent / "shared" / "bench" / "baseline_hf_sft.py"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--shape", "tiny", "--steps", "2"]
    cmd += ["--batch-size", "4", "--serve-rows", "12", "--serve-tokens", "4", "--work", str(tmp_path / "w")]
    cmd += ["--json", str(out), "--baseline", str(baseline)]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(out.read_text())
    assert got["device"].startswith("cpu") and got["shape"] == "tiny"
    assert got["slmloop_tokens_per_s"] > 0 and got["peak_gib"] > 0 and got["forecast_peak_gib"] > 0
    assert got["eval_rows"] > 0 and got["eval_rows_per_s"] > 0
    assert got["serve_conversations"] == 12 and 0 < got["serve_tokens"] <= 12 * 4 and got["serve_tokens_per_s"] > 0
    missing = " ".join(got["missing"])
    assert "vLLM" in missing and "data parallelism" in missing and "vllm_tokens_per_s" not in got
    if baseline.exists():  # the reference ran on the same rows: the ratio is the two measured rates
        assert got["training_ratio"] == pytest.approx(
            got["slmloop_tokens_per_s"] / got["reference_tokens_per_s"], abs=0.01
        )
    else:
        assert "training reference" in missing
