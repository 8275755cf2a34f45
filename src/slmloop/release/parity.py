"""Does the GGUF answer like the model it was made from? Both score the same gold rows.

The Hugging Face model (merged, fp32) and the GGUF run through llama.cpp (the
``llama-cpp-python`` package) each answer every gold row greedily through the one
answering path serving uses, from the same rendered prompt. The report: the share of rows where the two parsed answers
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
from slmloop.evaluate.scoring import score_answers
from slmloop.manifest import TaskConfig
from slmloop.metrics import HEADLINE
from slmloop.models import llamacpp
from slmloop.predict.answers import ModelAnswer, answer_rows
from slmloop.predict.engines import LlamaCppEngine, LocalEngine
from slmloop.predict.tasks import Hints

__all__ = ["gguf_parity"]


def gguf_parity(
    merged: Path,
    gguf_path: Path,
    task: TaskConfig,
    style: str,
    rows: list[dict[str, Any]],
    hints: list[Hints] | None = None,
    *,
    max_new_tokens: int,
    console: Console | None = None,
) -> dict[str, Any]:
    """Agreement of the GGUF (llama.cpp) with the merged model (transformers) on ``rows``.

    Both answer through the one answering path (:func:`slmloop.predict.answers.answer_rows`), each
    row asked with its ``hints`` (the release's companion index), and generate their answers.
    """
    import torch

    from slmloop.evaluate.evaluate import progress_bar
    from slmloop.models.catalog import ResolvedModel
    from slmloop.models.loading import load_causal_lm, load_tokenizer

    if not llamacpp.llama_cpp_available():
        raise ModelError(
            "the GGUF parity check needs llama.cpp's Python binding, which is not installed",
            hint="pip install llama-cpp-python (the README set-up installs it), then export again.",
        )
    console = console or Console(stderr=True)
    ref = ResolvedModel(str(merged), str(merged), "local")
    tok = load_tokenizer(ref)
    model = load_causal_lm(ref, torch.float32)
    eos = {i for i in (tok.eos_token_id, getattr(model.generation_config, "eos_token_id", None)) if isinstance(i, int)}
    started = time.perf_counter()

    def answer(engine: Any, name: str) -> list[ModelAnswer]:
        with progress_bar(console, f"parity: {name} on {len(rows)} gold rows") as bar:
            job = bar.add_task(name, total=len(rows))
            return answer_rows(
                task,
                style,
                "generate",
                engine,
                rows,
                hints,
                batch_size=16,
                max_new_tokens=max_new_tokens,
                progress=lambda n: bar.advance(job, n),
            )

    hf_answers = answer(LocalEngine(model, tok), "transformers")
    del model
    llama = LlamaCppEngine(str(gguf_path), tok, stop_ids=eos)
    try:
        gg_answers = answer(llama, f"llama.cpp {gguf_path.name}")
    finally:
        llama.close()
    # an inline extraction answer is compared as the JSON object it marks
    hf, gg = [a.raw for a in hf_answers], [a.raw for a in gg_answers]
    hf_pred, gg_pred = [a.prediction for a in hf_answers], [a.prediction for a in gg_answers]
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
