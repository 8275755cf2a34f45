"""Does the GGUF answer like the model it was made from? Both score the same gold rows.

The Hugging Face model (merged, fp32) and the GGUF run through llama.cpp (the
``llama-cpp-python`` package) each answer every gold row greedily from the same
rendered prompt. The report: the share of rows where the two parsed answers
agree, each one's headline metric, and the first rows where they differ. A
broken conversion (wrong rotary layout, special tokens spelled out, a missing
EOS that never stops) shows up here as low agreement, before a user meets it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rich.console import Console

from slmloop.errors import ModelError
from slmloop.evaluate.metrics import HEADLINE, score_answers
from slmloop.manifest import TaskConfig
from slmloop.tasks import parse_prediction, prompt_messages

__all__ = ["gguf_parity", "llama_cpp_available"]


def llama_cpp_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


def _llama_answers(path: Path, prompts: list[str], max_new_tokens: int, eos: set[int], progress: Any) -> list[str]:
    from llama_cpp import Llama

    n_ctx = 4096
    llm = Llama(model_path=str(path), n_ctx=n_ctx, n_threads=None, verbose=False)
    stop = eos | {llm.token_eos()}
    answers = []
    for prompt in prompts:
        tokens = llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)
        out: list[int] = []
        for t in llm.generate(tokens, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0, reset=True):
            if t in stop or len(out) >= max_new_tokens:
                break
            out.append(t)
        answers.append(llm.detokenize(out).decode("utf-8", errors="replace").strip())
        progress()
    llm.close()
    return answers


def gguf_parity(
    merged: Path,
    gguf_path: Path,
    task: TaskConfig,
    style: str,
    rows: list[dict[str, Any]],
    *,
    max_new_tokens: int,
    console: Console | None = None,
) -> dict[str, Any]:
    """Agreement of the GGUF (llama.cpp) with the merged model (transformers) on ``rows``."""
    import torch

    from slmloop.evaluate.evaluate import progress_bar
    from slmloop.models.catalog import ResolvedModel
    from slmloop.models.inference import generate
    from slmloop.models.loading import load_causal_lm, load_tokenizer, render_prompt

    if not llama_cpp_available():
        raise ModelError(
            "the GGUF parity check needs llama.cpp's Python binding, which is not installed",
            hint="pip install llama-cpp-python (the README set-up installs it), then export again.",
        )
    console = console or Console(stderr=True)
    ref = ResolvedModel(str(merged), str(merged), "local")
    tok = load_tokenizer(ref)
    model = load_causal_lm(ref, torch.float32)
    prompts = [render_prompt(tok, prompt_messages(task, r, style)) for r in rows]
    eos = {i for i in (tok.eos_token_id, getattr(model.generation_config, "eos_token_id", None)) if isinstance(i, int)}
    started = time.perf_counter()
    with progress_bar(console, f"parity: transformers on {len(rows)} gold rows") as bar:
        job = bar.add_task("transformers", total=len(rows))
        hf = [
            t
            for t, _ in generate(
                model,
                tok,
                prompts,
                max_new_tokens=max_new_tokens,
                batch_size=16,
                progress=lambda n: bar.advance(job, n),
            )
        ]
    with progress_bar(console, f"parity: llama.cpp {gguf_path.name}") as bar:
        job = bar.add_task("llama.cpp", total=len(rows))
        gg = _llama_answers(gguf_path, prompts, max_new_tokens, eos, lambda: bar.advance(job, 1))
    del model
    hf_pred = [parse_prediction(task, t) for t in hf]
    gg_pred = [parse_prediction(task, t) for t in gg]
    same = [a == b for a, b in zip(hf_pred, gg_pred, strict=True)]
    head = HEADLINE[task.type][0]
    hf_score = score_answers(task, rows, hf_pred, hf).metric(head)
    gg_score = score_answers(task, rows, gg_pred, gg).metric(head)
    return {
        "file": gguf_path.name,
        "rows": len(rows),
        "agreement": sum(same) / max(1, len(rows)),
        "metric": head,
        "transformers": hf_score,
        "gguf": gg_score,
        "seconds": time.perf_counter() - started,
        "disagreements": [{"row": i, "transformers": hf[i], "gguf": gg[i]} for i, ok in enumerate(same) if not ok][:20],
    }
