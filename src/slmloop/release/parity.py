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
from slmloop.models import llamacpp
from slmloop.tasks import answer_json, parse_prediction, prompt_messages

__all__ = ["gguf_parity"]


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

    if not llamacpp.llama_cpp_available():
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
    llama = llamacpp.LlamaCpp(str(gguf_path), stop_ids=eos)
    with progress_bar(console, f"parity: llama.cpp {gguf_path.name}") as bar:
        job = bar.add_task("llama.cpp", total=len(rows))
        gg = []
        for prompt in prompts:
            gg.append(llama.complete(prompt, max_new_tokens)[0])
            bar.advance(job, 1)
    llama.close()
    del model
    # an inline extraction answer is compared as the JSON object it marks
    hf = [answer_json(task, r, t) for r, t in zip(rows, hf, strict=True)]
    gg = [answer_json(task, r, t) for r, t in zip(rows, gg, strict=True)]
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
