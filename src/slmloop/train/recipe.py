"""The LoRA SFT recipe, readable top to bottom: setup → build → fit → save.

    setup()  resolve the config, load the dataset version, run the leakage gate
    build()  tokenizer, model (bf16 where fast), LoRA adapter, encoded examples
    fit()    length-grouped batches, loss on answer tokens only, AdamW, schedule
    save()   adapter + metadata + trace + loss curve, written atomically; the run row

Loss is computed on the answer tokens only, and the LM head runs only at those
positions: for a classification example that is 2–3 of ~60 tokens, so the
largest matrix in the model (hidden × vocabulary) costs almost nothing.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rich.console import Console

from slmloop import versions
from slmloop.data.leakage import leakage_gate
from slmloop.data.prepare import DatasetSplits, current_gold, load_dataset
from slmloop.errors import ConfigError
from slmloop.manifest import TrainConfig
from slmloop.models.catalog import ResolvedModel, resolve_model
from slmloop.models.loading import (
    EncodedExample,
    count_parameters,
    load_causal_lm,
    load_tokenizer,
    pick_dtype,
    quiet_transformers,
)
from slmloop.project import Project
from slmloop.store import Run, atomic_dir, atomic_write_json, utcnow
from slmloop.train.batching import Batch, collate, encode_rows, length_grouped_batches, split_by_tokens
from slmloop.train.report import plot_loss_curve

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

__all__ = ["TrainSetup", "resolve_train_config", "setup", "train"]

VALIDATION_ROWS = 256  # validation loss is measured on at most this many rows


def resolve_train_config(base: TrainConfig, overrides: dict[str, Any] | None) -> TrainConfig:
    """The manifest's train section with CLI overrides applied (and validated)."""
    data = base.model_dump()
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return TrainConfig.model_validate(data)
    except Exception as exc:  # pydantic.ValidationError
        raise ConfigError(f"bad training option: {exc}", hint="See `slmloop train --help`.") from None


@dataclass
class TrainSetup:
    project: Project
    config: TrainConfig
    splits: DatasetSplits
    gold_id: str
    model_ref: ResolvedModel
    leakage: dict[str, Any]
    max_length: int


@dataclass
class Trace:
    steps: list[dict[str, Any]] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)


def setup(
    project: Project,
    overrides: dict[str, Any] | None = None,
    dataset_id: str | None = None,
    allow_leakage: bool = False,
) -> TrainSetup:
    cfg = resolve_train_config(project.manifest.train, overrides)
    splits = load_dataset(project, dataset_id)
    # check against the gold set evaluations use *now* (it may have changed since data prepare)
    gold = current_gold(project)
    if gold is not None and gold.id != splits.version.gold_id:
        splits.gold = project.objects.read_jsonl(gold.object)
    gold_id = gold.id if gold is not None else splits.version.gold_id
    leakage = leakage_gate(
        project,
        project.manifest.task,
        splits.gold,
        allow=allow_leakage,
        context="train",
        train=splits.train,
        validation=splits.validation,
    )
    model_ref = resolve_model(project.manifest.model.base)
    return TrainSetup(project, cfg, splits, gold_id, model_ref, leakage, project.manifest.model.max_length)


def _target_modules(model: Any, choice: str | list[str]) -> str | list[str]:
    if isinstance(choice, list):
        return choice
    if choice == "all-linear":
        return "all-linear"
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    for group in (
        ["q_proj", "k_proj", "v_proj", "o_proj"],
        ["qkv_proj", "o_proj"],
        ["query_key_value", "dense"],
        ["c_attn", "c_proj"],
        ["query", "key", "value"],
    ):
        if set(group) <= names:
            return group
    return "all-linear"


class AnswerLoss:
    """Cross-entropy on answer tokens, with the LM head applied only where needed."""

    def __init__(self, peft_model: Any) -> None:
        base = peft_model.get_base_model()
        cfg = base.config
        self.model = peft_model
        self.decoder = base.get_decoder() if hasattr(base, "get_decoder") else None
        self.head = base.get_output_embeddings()
        special = getattr(cfg, "final_logit_softcapping", None) or getattr(cfg, "logit_scale", None)
        self.fast = self.decoder is not None and self.head is not None and not special

    def __call__(self, batch: Batch) -> tuple[torch.Tensor, int]:
        import torch
        import torch.nn.functional as F

        if batch.prefix_ids is not None and self.fast:
            # run the shared prefix once, then every row's suffix on top of its cache;
            # gradients flow back through the repeated cache into the prefix pass
            p = batch.prefix_len
            b, t = batch.input_ids.shape
            prefix = self.decoder(input_ids=batch.prefix_ids, use_cache=True)
            cache = prefix.cache if hasattr(prefix, "cache") else prefix.past_key_values
            cache.batch_repeat_interleave(b)
            ones = torch.ones((b, p), dtype=batch.attention_mask.dtype, device=batch.input_ids.device)
            pos = torch.arange(p, p + t, device=batch.input_ids.device).unsqueeze(0).expand(b, t)
            hidden = self.decoder(
                input_ids=batch.input_ids,
                attention_mask=torch.cat([ones, batch.attention_mask], dim=1),
                position_ids=pos,
                cache=cache,
                use_cache=True,
            ).last_hidden_state
            logits = self.head(hidden[batch.rows, batch.positions]).float()
        elif self.fast:
            hidden = self.decoder(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
            logits = self.head(hidden[batch.rows, batch.positions]).float()
        else:
            out = self.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
            logits = out.logits[batch.rows, batch.positions].float()
        loss = F.cross_entropy(logits, batch.targets, reduction="sum")
        return loss, batch.answer_tokens


def validation_loss(
    loss_fn: AnswerLoss, examples: list[EncodedExample], pad_id: int, max_tokens: int, device: Any
) -> float | None:
    """Mean cross-entropy per answer token over ``examples`` (no gradients)."""
    import torch

    if not examples:
        return None
    lengths = [len(e.input_ids) for e in examples]
    total, tokens = 0.0, 0
    loss_fn.model.eval()
    with torch.no_grad():
        for chunk in split_by_tokens(list(range(len(examples))), lengths, max_tokens):
            batch = collate([examples[j] for j in chunk], pad_id).to(device)
            loss, n = loss_fn(batch)
            total += float(loss)
            tokens += n
    loss_fn.model.train()
    return total / max(tokens, 1)


def _progress(console: Console) -> Any:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]train[/bold]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TextColumn("{task.fields[tps]} tok/s"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


def train(
    project: Project,
    overrides: dict[str, Any] | None = None,
    *,
    dataset_id: str | None = None,
    allow_leakage: bool = False,
    console: Console | None = None,
) -> Run:
    """Train a LoRA adapter on the current dataset version; returns the finished run."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import get_scheduler

    console = console or Console(stderr=True)
    # ---- setup ----------------------------------------------------------
    st = setup(project, overrides, dataset_id, allow_leakage)
    cfg = st.config
    task = project.manifest.task
    torch.manual_seed(cfg.seed)
    if torch.get_num_threads() < (os.cpu_count() or 1):
        torch.set_num_threads(os.cpu_count() or 1)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = pick_dtype(cfg.precision)

    # ---- build ----------------------------------------------------------
    tok: PreTrainedTokenizerBase = load_tokenizer(st.model_ref)
    train_ex = encode_rows(tok, task, st.splits.train, st.max_length)
    val_rows = st.splits.validation[:VALIDATION_ROWS]
    val_ex = encode_rows(tok, task, val_rows, st.max_length)
    truncated = sum(e.truncated for e in train_ex)
    # eager attention: on CPU its backward is faster than SDPA's for short sequences
    attn = "sdpa" if device.type == "cuda" else "eager"
    base = load_causal_lm(st.model_ref, dtype, attn_implementation=attn).to(device)
    lora = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=_target_modules(base, cfg.target_modules),
        task_type="CAUSAL_LM",
    )
    with quiet_transformers():
        model = get_peft_model(base, lora)
    model.train()
    total_params, trainable = count_parameters(model)
    loss_fn = AnswerLoss(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)

    batches_per_epoch = math.ceil(len(train_ex) / cfg.batch_size)
    steps_per_epoch = max(1, batches_per_epoch // cfg.grad_accum)
    total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))
    scheduler = get_scheduler(
        cfg.scheduler,
        optimizer,
        num_warmup_steps=int(cfg.warmup_ratio * total_steps),
        num_training_steps=total_steps,
    )
    eval_every = cfg.eval_every or max(1, total_steps // 4)

    run = project.store.add(
        Run(
            dataset_id=st.splits.version.id,
            gold_id=st.gold_id,
            base_model=st.model_ref.spec,
            config={
                "train": cfg.model_dump(),
                "max_length": st.max_length,
                "dtype": str(dtype).removeprefix("torch."),
                "device": device.type,
                "leakage": st.leakage,
            },
        ),
        "train.start",
        dataset=st.splits.version.id,
        leakage_overridden=st.leakage["overridden"],
    )
    run_dir = project.runs_dir / run.name
    console.print(
        f"[bold]{run.name}[/bold]: {st.model_ref.spec} · {len(train_ex)} train / {len(val_ex)} "
        f"validation examples · {trainable:,} of {total_params:,} parameters trainable · "
        f"{str(dtype).removeprefix('torch.')} on {device.type} · {total_steps} steps"
        + (f" · [yellow]{truncated} truncated to {st.max_length} tokens[/yellow]" if truncated else "")
    )

    # ---- fit ------------------------------------------------------------
    trace = Trace()
    lengths = [len(e.input_ids) for e in train_ex]
    step, epoch = 0, 0
    real_tokens = 0
    compute_s = 0.0  # training compute only; validation passes are timed apart
    status = "failed"
    try:
        with _progress(console) as progress:
            bar = progress.add_task("train", total=total_steps, loss="…", tps="…")
            while step < total_steps:
                order = length_grouped_batches(lengths, cfg.batch_size, cfg.seed, epoch)
                for g in range(0, len(order) - cfg.grad_accum + 1, cfg.grad_accum):
                    if step >= total_steps:
                        break
                    t0 = time.perf_counter()
                    micro = [
                        collate([train_ex[i] for i in chunk], tok.pad_token_id)
                        for b in order[g : g + cfg.grad_accum]
                        for chunk in split_by_tokens(b, lengths, cfg.max_batch_tokens)
                    ]
                    n_answer = sum(b.answer_tokens for b in micro)
                    step_loss = 0.0
                    for batch in micro:
                        loss, _ = loss_fn(batch.to(device))
                        (loss / n_answer).backward()
                        step_loss += float(loss.detach())
                        real_tokens += batch.real_tokens
                    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm))
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                    step += 1
                    compute_s += time.perf_counter() - t0
                    entry = {
                        "step": step,
                        "epoch": epoch,
                        "loss": step_loss / n_answer,
                        "lr": scheduler.get_last_lr()[0],
                        "grad_norm": grad_norm,
                        "tokens": real_tokens,
                        "tokens_per_s": real_tokens / compute_s,
                        "elapsed_s": compute_s,
                    }
                    if step % eval_every == 0 or step == total_steps:
                        entry["val_loss"] = validation_loss(
                            loss_fn, val_ex, tok.pad_token_id, cfg.max_batch_tokens, device
                        )
                        trace.evals.append({"step": step, "val_loss": entry["val_loss"]})
                    trace.steps.append(entry)
                    progress.update(bar, advance=1, loss=f"{entry['loss']:.3f}", tps=f"{entry['tokens_per_s']:.0f}")
                epoch += 1
        status = "completed"
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        if status != "completed":
            _finish(project, run, status, {"steps": step})

    # ---- save -----------------------------------------------------------
    first = [s["loss"] for s in trace.steps[: max(1, len(trace.steps) // 10)]]
    last = [s["loss"] for s in trace.steps[-max(1, len(trace.steps) // 10) :]]
    metrics = {
        "steps": step,
        "epochs": step / steps_per_epoch,
        "train_loss_first": sum(first) / len(first),
        "train_loss_last": sum(last) / len(last),
        "val_loss": trace.evals[-1]["val_loss"] if trace.evals else None,
        "val_loss_first": trace.evals[0]["val_loss"] if trace.evals else None,
        "train_seconds": compute_s,
        "tokens": real_tokens,
        "tokens_per_s": real_tokens / compute_s if compute_s else 0.0,
        "truncated": truncated,
        "trainable_params": trainable,
        "total_params": total_params,
    }
    meta = {
        "run": run.name,
        "created_at": run.created_at.isoformat(),
        "base_model": {"spec": st.model_ref.spec, "path": st.model_ref.path, "source": st.model_ref.source},
        "dataset": st.splits.version.id,
        "gold": st.gold_id,
        "task": task.model_dump(),
        "train": cfg.model_dump(),
        "max_length": st.max_length,
        "dtype": str(dtype).removeprefix("torch."),
        "leakage": st.leakage,
        "metrics": metrics,
        "versions": versions(),
    }
    if run_dir.exists():
        shutil.rmtree(run_dir)
    with atomic_dir(run_dir) as tmp:
        model.save_pretrained(tmp / "adapter")
        tok.save_pretrained(tmp / "adapter")
        atomic_write_json(tmp / "run.json", meta)
        with open(tmp / "trace.jsonl", "w", encoding="utf-8") as f:
            for s in trace.steps:
                f.write(json.dumps(s) + "\n")
        plot_loss_curve(trace.steps, tmp / "loss_curve.png", title=f"{run.name} · {st.model_ref.spec}")
    run.path = project.relative(run_dir)
    return _finish(project, run, "completed", metrics)


def _finish(project: Project, run: Run, status: str, metrics: dict[str, Any]) -> Run:
    with project.store.session() as s:
        row = s.get(Run, run.id)
        assert row is not None
        row.status = status
        row.finished_at = utcnow()
        row.metrics = metrics
        row.path = run.path or row.path
        project.store.log_event(
            s,
            f"train.{status}",
            run.name,
            **{k: v for k, v in metrics.items() if k in ("steps", "val_loss", "train_seconds")},
        )
    with project.store.session() as s:
        fresh = s.get(Run, run.id)
    return fresh
