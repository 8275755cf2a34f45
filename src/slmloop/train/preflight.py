"""Preflight: what a run will cost, measured before it starts — and a refusal if it will not fit.

Parameter counts and truncation come from the built model and the encoded
examples. Time and memory are *calibrated*: a few real forward+backward passes
(no optimizer step, RNG re-seeded afterwards) on this machine, one of them on
the largest micro-batch of the run, which bounds the activation memory.
"""

from __future__ import annotations

import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.table import Table

__all__ = [
    "Forecast",
    "InferenceCost",
    "available_memory_bytes",
    "calibrate",
    "calibrate_inference",
    "current_rss_bytes",
    "forecast_eval",
    "peak_rss_bytes",
    "release_free_memory",
    "render_forecast",
    "reset_peak_rss",
]

GIB = 1024**3


@dataclass
class Forecast:
    device: str
    dtype: str
    world_size: int
    total_params: int
    trainable_params: int
    train_examples: int
    validation_examples: int
    truncated: int
    max_tokens: int
    mean_tokens: float
    steps: int
    steps_per_epoch: int
    tokens_per_epoch: int
    calibrated_tokens_per_s: float
    seconds_per_epoch: float
    seconds_total: float
    peak_memory_gib: float
    available_memory_gib: float
    fits: bool
    leakage: str
    #: rows whose answer would lose tokens to model.max_length (the run is refused), and the length that fits all
    answer_cut: int = 0
    needed_length: int = 0
    cut_examples: list[str] = field(default_factory=list)
    #: the gold evaluation after training: rows, mode and forecast seconds
    eval_rows: int = 0
    eval_mode: str = ""
    eval_seconds: float = 0.0
    #: bottom layers whose states are kept after the first epoch (0: none), and the speed from the second epoch
    frozen_layers: int = 0
    later_tokens_per_s: float = 0.0
    #: train.shortlist: labels per row, index rows, and the share of rows whose label is on their shortlist
    shortlist: dict[str, Any] | None = None
    #: train.span_prior: an extractor's CRF tagger is fit and weighed after training
    span_prior: bool = False
    #: an extractor's answer format and why (task.answer)
    answer: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset the kernel's high-water mark of this process's RSS (Linux)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    kib = _status_kib("VmHWM")
    if kib is None:
        import resource

        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib * 1024


def release_free_memory() -> None:
    """Hand memory that was freed (a model deleted, say) back to the OS; glibc's malloc keeps it otherwise."""
    import contextlib
    import ctypes
    import gc

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to do
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def current_rss_bytes() -> int:
    return (_status_kib("VmRSS") or 0) * 1024


def available_memory_bytes(device: str) -> int:
    """Memory this run may use: free device memory (CUDA), or MemAvailable + what we already hold."""
    if device == "cuda":
        import torch

        free, _ = torch.cuda.mem_get_info()
        return int(free + torch.cuda.memory_allocated())
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024 + current_rss_bytes()
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def calibrate(
    loss_fn: Any, make_batch: Any, chunks: list[list[int]], heaviest: list[list[int]], device: Any
) -> tuple[float, int]:
    """(real tokens/s, peak memory in bytes) from real passes: building the batch, forward, backward.

    The heaviest micro-batches go first — the most padded tokens, the most answer tokens (the LM
    head's logits), the longest rows (attention) — they set a memory peak and warm the kernels up.
    Speed is measured on ``chunks``, a sample of the run's batch sizes. Then the heaviest run once
    more: a run meets its heaviest batch on a heap that other shapes have already cut up, and glibc
    keeps what it cannot reuse, so the peak can still be forecast low (docs/training.md, "Preflight").
    The peak is the highest over all these passes.
    """
    import torch

    is_cuda = getattr(device, "type", str(device)) == "cuda"

    def heavy_passes() -> None:
        for probe in heaviest:
            loss, _ = loss_fn(make_batch(probe))
            loss.backward()
            loss_fn.zero_grad(set_to_none=True)
            del loss

    if is_cuda:
        torch.cuda.reset_peak_memory_stats()
    else:
        reset_peak_rss()
    heavy_passes()
    tokens, seconds = 0, 0.0
    for chunk in chunks:
        t0 = time.perf_counter()
        batch = make_batch(chunk)
        loss, _ = loss_fn(batch)
        loss.backward()
        if is_cuda:
            torch.cuda.synchronize()
        seconds += time.perf_counter() - t0
        tokens += batch.real_tokens
        loss_fn.zero_grad(set_to_none=True)
    heavy_passes()
    peak = int(torch.cuda.max_memory_allocated()) if is_cuda else peak_rss_bytes()
    return (tokens / seconds if seconds else 0.0), peak


@dataclass
class InferenceCost:
    """Measured costs of answering: prompt tokens per second, and a decoding step as fixed + per row."""

    prompt_tokens_per_s: float
    step_fixed_s: float  # a forward pass that adds tokens to the rows, whatever their number
    step_per_row_s: float  # and the cost of each token it adds (one per row when decoding)


def calibrate_inference(model: Any, tok: Any, prompts: list[str], batch_size: int, width: int = 1) -> InferenceCost:
    """How fast ``model`` answers here: a batch's prompts run as evaluation runs them (the shared prefix
    once, the rest packed), then steps that add ``width`` tokens per row for the whole batch and for one
    row (a generated token is a step of width 1; a label-tree round scores several nodes per row)."""
    import torch
    from transformers import DynamicCache

    from slmloop.models.inference import left_pad, shared_prefix, start_batch

    batch = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts[:batch_size]]
    shared, prefix = shared_prefix(model, batch)
    suffixes = [b[shared:] for b in batch]
    ids, mask = left_pad(batch, tok.pad_token_id)
    ids, mask = ids.to(model.device), mask.to(model.device)

    def decode(rows: int, steps: int = 4) -> float:
        with torch.inference_mode():
            out = model(
                input_ids=ids[:rows], attention_mask=mask[:rows], cache=DynamicCache(), use_cache=True, logits_to_keep=1
            )
            m = mask[:rows]
            step = torch.full((rows, width), tok.pad_token_id, dtype=torch.long, device=model.device)
            t0 = time.perf_counter()
            for _ in range(steps):
                cache = out.cache if getattr(out, "cache", None) is not None else out.past_key_values
                m = torch.cat([m, torch.ones_like(step)], dim=1)
                # every added token gets its full-vocabulary log-softmax, as every node of a label round does
                out = model(input_ids=step, attention_mask=m, cache=cache, use_cache=True, logits_to_keep=width)
                torch.log_softmax(out.logits, dim=-1, dtype=torch.float32)
            return (time.perf_counter() - t0) / steps

    def prompt_pass() -> float:
        t0 = time.perf_counter()
        start_batch(model, suffixes, prefix, shared)
        return time.perf_counter() - t0

    # the first pass at a new shape also builds the CPU kernels for it (much slower): never time a first pass,
    # and keep the fastest of two timed ones (a one-off stall on a busy machine is not the model's cost)
    prompt_pass()
    prompt_s = min(prompt_pass(), prompt_pass())
    rows = ids.shape[0]
    decode(1)
    decode(rows)
    one, full = min(decode(1), decode(1)), min(decode(rows), decode(rows))
    per_token = max(full - one, 0.0) / max(rows - 1, 1) / width
    return InferenceCost(
        sum(len(s) for s in suffixes) / max(prompt_s, 1e-9), max(one - per_token * width, 0.0), per_token
    )


def render_forecast(f: Forecast, title: str = "preflight") -> Table:
    t = Table(title=title, title_justify="left", show_header=False)
    t.add_column("what")
    t.add_column("value")
    t.add_row(
        "parameters",
        f"{f.total_params:,} total · {f.trainable_params:,} trainable "
        f"({100 * f.trainable_params / max(f.total_params, 1):.2f} %)",
    )
    t.add_row("examples", f"{f.train_examples} train · {f.validation_examples} validation")
    t.add_row(
        "length (tokens)",
        f"mean {f.mean_tokens:.0f} · max {f.max_tokens}"
        + (f" · [yellow]{f.truncated} truncated[/yellow]" if f.truncated else " · none truncated")
        + (f" · [bold red]{f.answer_cut} answers cut[/bold red]" if f.answer_cut else ""),
    )
    t.add_row("device", f"{f.device} · {f.dtype} · {f.world_size} process(es)")
    t.add_row("steps", f"{f.steps} ({f.steps_per_epoch} per epoch, {f.tokens_per_epoch:,} tokens per epoch)")
    speed = f"{f.calibrated_tokens_per_s:,.0f} tokens/s"
    if f.frozen_layers:
        speed += f" · {f.later_tokens_per_s:,.0f} from epoch 2 (bottom {f.frozen_layers} layers' states kept)"
    t.add_row("speed (calibrated)", speed)
    epoch = f"~{f.seconds_per_epoch / 60:.1f} min per epoch"
    if f.frozen_layers and f.steps > f.steps_per_epoch:
        epoch = f"~{f.seconds_per_epoch / 60:.1f} min for epoch 1"
    t.add_row("time", f"{epoch} · ~{f.seconds_total / 60:.1f} min in all")
    if f.eval_rows:
        t.add_row("gold evaluation", f"~{f.eval_seconds / 60:.1f} min for {f.eval_rows} rows ({f.eval_mode})")
    fit = "[green]fits[/green]" if f.fits else "[bold red]does NOT fit[/bold red]"
    t.add_row("peak memory", f"~{f.peak_memory_gib:.2f} GiB of {f.available_memory_gib:.1f} GiB available: {fit}")
    if f.shortlist and f.shortlist.get("prior_classes"):
        t.add_row(
            "label prior",
            f"MiniLM + logistic regression over {f.shortlist['index_rows']:,} training rows "
            f"({f.shortlist['prior_classes']} labels); its weight is chosen on the validation split after training",
        )
    if f.answer:
        t.add_row("answer", f.answer)
    if f.span_prior:
        t.add_row(
            "span prior",
            "a CRF tagger over the fields whose values are spans of the input (the crf baseline's), fit after "
            "training; the judge that weighs it against the model's answers is fit on the validation split",
        )
    if f.shortlist and f.shortlist["k"]:
        sl = f.shortlist
        what = "examples (input and answer)" if sl.get("kind") == "examples" else "labels"
        line = f"{sl['k']} {what} a row from the nearest of {sl['index_rows']:,} training rows"
        if sl.get("validation_recall") is not None:
            line += f" · the true label on it: {100 * sl['validation_recall']:.1f} % of validation rows"
        if sl.get("validation_same_fields") is not None:
            line += (
                f" · the nearest example has the row's own fields: {100 * sl['validation_same_fields']:.1f} %"
                " of validation rows"
            )
        t.add_row("shortlist", line)
    t.add_row("leakage gate", f.leakage)
    return t


#: values the span prior's judge asks an inline extractor about, per value of an answer (the model's, the
#: tagger's, the ones both give once, and the tagger's other likely readings), counted on HWU64 slots' gold
#: answers
MARKS_PER_VALUE = 1.6


def forecast_eval(
    forecast: Forecast,
    *,
    model_ref: Any,
    tokenizer: Any,
    device: Any,
    task: Any,
    prompt: str,
    gold: list[dict[str, Any]],
    hints: list[Any] | None,
    eval_cfg: Any,
    span_prior: str,
    answer_lengths: list[int],
    train: list[dict[str, Any]],
    seed: int,
) -> None:
    """Seconds the gold evaluation of the trained model will take, from passes of this model on this machine
    (written into ``forecast``). ``answer_lengths``: the answer tokens of the encoded training (or
    validation) rows; ``hints``: what the gold rows are asked with.

    Cost model, per batch of gold rows: the prompts after their shared prefix, then decoding steps
    that each cost a fixed part plus a part per token they add. A fine-tuned model's answer is
    about as long as the training answers: generation runs a batch until its longest answer (rows
    that finished leave it), one token per row a step; label ranking runs rounds that each score up
    to ROUND_WIDTH tree nodes per row (the best label and the near ties; fewer with fewer labels).
    """
    import torch

    from slmloop.models.inference import ROUND_WIDTH, common_prefix, continuation_logprobs
    from slmloop.models.loading import load_causal_lm, pick_dtype, render_prompt
    from slmloop.predict.answers import resolve_mode
    from slmloop.predict.inline import span_values
    from slmloop.predict.tasks import answer_target, answers_inline, prompt_messages

    if not gold or task.type == "chat":
        return
    mode = resolve_mode(task, eval_cfg.mode)
    b = eval_cfg.batch_size
    sample = gold[: max(b, 8)]
    shown = hints[: len(sample)] if hints is not None else [None] * len(sample)
    prompts = [
        render_prompt(tokenizer, prompt_messages(task, r, prompt, h)) for r, h in zip(sample, shown, strict=True)
    ]
    labels = task.label_list or []
    width = min(ROUND_WIDTH, len(labels) or 1) if mode == "rank" else 1
    # evaluation runs the merged model, which costs what the base costs as eval loads it (its dtype,
    # SDPA attention); the training model, wrapped for LoRA, answers markedly slower on a CPU
    plain = load_causal_lm(model_ref, pick_dtype(eval_cfg.precision)).to(device)
    cost = calibrate_inference(plain, tokenizer, prompts, b, width)
    # the span prior's judge reads an inline extractor's probability of each value's mark: one
    # teacher-forced pass over the prompt and the answer up to the mark for every value it weighs
    marks_rate = 0.0  # tokens/s of those passes, timed on the sample's prompts and whole answers
    if mode == "generate" and answers_inline(task) and span_prior != "off":
        t0 = time.perf_counter()
        scored = continuation_logprobs(
            plain, tokenizer, prompts, [answer_target(task, r) for r in sample], batch_size=b
        )
        heads = sum(len(x) for x in tokenizer(prompts, add_special_tokens=False)["input_ids"])
        marks_rate = (heads + sum(n for _, n in scored)) / max(time.perf_counter() - t0, 1e-9)
    del plain
    release_free_memory()  # else training carries the deleted model's memory
    torch.manual_seed(seed)
    encoded = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    suffix = sum(len(x) for x in encoded) / len(encoded) - common_prefix(encoded)
    answers = answer_lengths
    rng = random.Random(0)
    batches = math.ceil(len(gold) / b)
    if mode == "rank":
        depth = sorted(answers)[len(answers) // 2]
        # a batch runs until its last near tie is scored: midway between the typical answer and the
        # longest label (checked against the rounds label ranking runs on HWU64 intents and SMS)
        deepest = max((len(tokenizer(x, add_special_tokens=False)["input_ids"]) + 1 for x in labels), default=depth)
        rounds = (depth + max(depth, deepest)) / 2
        decode = batches * rounds * cost.step_fixed_s + len(gold) * width * depth * cost.step_per_row_s
    else:
        longest = sum(max(rng.choices(answers, k=b)) for _ in range(batches))
        decode = longest * cost.step_fixed_s + len(gold) * (sum(answers) / len(answers)) * cost.step_per_row_s
    forecast.eval_rows = len(gold)
    forecast.eval_mode = mode
    marks = 0.0
    if marks_rate:
        values = sum(len(span_values(r["output"])) for r in train) / max(len(train), 1)
        whole = sum(len(x) for x in encoded) / len(encoded) + sum(answers) / len(answers)
        marks = len(gold) * values * MARKS_PER_VALUE * whole / marks_rate
    forecast.eval_seconds = len(gold) * suffix / cost.prompt_tokens_per_s + decode + marks
