"""The LoRA SFT recipe, readable top to bottom: setup → build → preflight → fit → fit_priors → save.

    setup()       resolve the config, load the dataset version, run the leakage gate, index the
                  training split for the companion (shortlists, label prior)
    build()       tokenizer, encoded examples, model (bf16 where fast) + LoRA, optimizer, schedule
    preflight()   parameters, truncation, calibrated time and memory; refuse what will not fit
    fit()         length-grouped batches, loss on answer tokens, checkpoints, validation, early stop
    fit_priors()  on the validation split: the label prior's weight, the span prior's judge
    save()        adapter (best or last) with its companion, metadata, trace, loss curve; the run row

Loss is computed on the answer tokens only, the LM head runs only at those
positions, and a prompt prefix the whole batch shares (system prompt,
instruction) is run once with its keys/values reused by every row.

Data-parallel runs (``slmloop train --num-processes N``) go through accelerate
(torchrun underneath): each process takes its share of every optimizer step's
batches, gradients are averaged, and the step is the same as one process with
the same global batch.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

import torch
from pydantic import ValidationError
from rich.console import Console
from typing_extensions import Unpack

from slmloop import versions
from slmloop.data.leakage import leakage_gate
from slmloop.data.versions import DatasetSplits, current_gold, load_dataset
from slmloop.errors import ConfigError, ConflictError, ModelError, NotFoundError, PreflightError
from slmloop.manifest import TaskConfig, TrainConfig
from slmloop.models.catalog import ResolvedModel, resolve_model
from slmloop.models.loading import (
    EncodedExample,
    count_parameters,
    load_causal_lm,
    load_tokenizer,
    pick_dtype,
)
from slmloop.models.quiet import quiet_transformers
from slmloop.predict.answers import resolve_mode
from slmloop.predict.companion import Companion, shortlist_size
from slmloop.predict.tasks import Hints, resolve_answer
from slmloop.progress import progress
from slmloop.project import Project
from slmloop.store import Run, atomic_dir, atomic_write_json, atomic_write_text, utcnow
from slmloop.train.batching import (
    Batch,
    collate,
    encode_rows,
    length_grouped_batches,
    rebalanced_rows,
    split_by_tokens,
)
from slmloop.train.checkpoint import (
    HOLDER,
    LoopState,
    claim_run,
    latest_checkpoint,
    release_run,
    restore_checkpoint,
    run_holder,
    save_checkpoint,
)
from slmloop.train.companion import (
    PRIOR_VALIDATION_ROWS,
    build_companion,
    choose_abstention,
    choose_prior,
    choose_spans,
    companion_summary,
    own_label_probs,
)
from slmloop.train.frozen import MEMORY_SHARE, frozen_layers_for
from slmloop.train.loss import AnswerLoss, validation_loss
from slmloop.train.preflight import (
    Forecast,
    available_memory_bytes,
    calibrate,
    current_rss_bytes,
    forecast_eval,
    peak_rss_bytes,
    render_forecast,
    reset_peak_rss,
)
from slmloop.train.report import plot_loss_curve
from slmloop.train.tracking import open_trackers, read_trace

__all__ = [
    "SetupOptions",
    "StepResult",
    "TrainSetup",
    "adapted_layers",
    "build",
    "fit",
    "fit_priors",
    "plan",
    "preflight",
    "resolve_train_config",
    "save",
    "setup",
    "train",
    "train_step",
]

LOWER_IS_BETTER = {"val_loss"}


def resolve_train_config(base: TrainConfig, overrides: dict[str, Any] | None) -> TrainConfig:
    """The manifest's train section with CLI overrides applied (and validated)."""
    data = base.model_dump()
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"train.{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"bad training option: {problems}", hint="See `slmloop train --help`.") from None


# ---------------------------------------------------------------------------------------------
# setup
# ---------------------------------------------------------------------------------------------
@dataclass
class TrainSetup:
    project: Project
    config: TrainConfig
    splits: DatasetSplits
    gold_id: str
    model_ref: ResolvedModel
    leakage: dict[str, Any]
    max_length: int
    task: TaskConfig  # labels / fields resolved for this dataset version
    prompt: str  # the prompt style every row is encoded in (recorded, shipped with a release)
    init_from: Path | None = None
    resume: Run | None = None
    origin: dict[str, Any] | None = None
    #: the companion index of the training split (the shortlist's neighbours, the label prior, the span prior)
    companion: Companion | None = None
    #: what each split's rows are asked with (their shortlists, once the index is built), by split name
    hints: dict[str, list[Hints]] = field(default_factory=dict)
    #: the label prior's weight, chosen on the validation split after training (see fit_priors)
    prior_choice: dict[str, Any] | None = None
    #: the span prior's judge, fit on the validation split after training (see fit_priors)
    span_choice: dict[str, Any] | None = None
    #: the abstention threshold and calibration, chosen on the validation split after training (see fit_priors)
    abstain_choice: dict[str, Any] | None = None
    #: why an extractor answers inline or as JSON (task.answer: auto, see slmloop.predict.tasks.resolve_answer)
    answer_note: str = ""


def _adapter_of(project: Project, ref: str) -> Path:
    from slmloop.predict.targets import resolve_target

    target = resolve_target(project, ref)
    if target.adapter is None:
        raise ConfigError(f"{ref!r} has no adapter to start from", hint="Pass a run (run-N) or a release (vN).")
    return target.adapter


class SetupOptions(TypedDict, total=False):
    """What a run starts from, besides the train: overrides (shared by setup, plan and train)."""

    dataset_id: str | None  # a dataset version; default: the newest
    allow_leakage: bool  # train even if train/validation rows copy gold rows (audited)
    init_from: str | None  # an earlier adapter to warm-start from: run-N or a release
    resume: str | None  # an interrupted (or paused) run to continue from its last checkpoint
    origin: dict[str, Any] | None  # what started the run (e.g. a bake-off trial), recorded in its config


def setup(project: Project, overrides: dict[str, Any] | None = None, **options: Unpack[SetupOptions]) -> TrainSetup:
    """Resolve the config, load the dataset version, run the leakage gate."""
    dataset_id = options.get("dataset_id")
    allow_leakage = options.get("allow_leakage", False)
    init_from = options.get("init_from")
    resume = options.get("resume")
    resumed: Run | None = None
    if resume is not None:
        resumed = _resumable_run(project, resume)
        if overrides and any(v is not None for v in overrides.values()):
            raise ConfigError("--resume continues a run with its own settings", hint="Drop the other options.")
        cfg = TrainConfig.model_validate(resumed.config["train"])
        dataset_id = resumed.dataset_id
        allow_leakage = allow_leakage or bool(resumed.config.get("leakage", {}).get("overridden"))
        init_from = resumed.config.get("init_from")
    else:
        cfg = resolve_train_config(project.manifest.train, overrides)
    splits = load_dataset(project, dataset_id)
    # check against the gold set evaluations use *now* (it may have changed since data prepare)
    gold = current_gold(project)
    if gold is not None and gold.id != splits.version.gold_id:
        splits.gold = project.objects.read_jsonl(gold.object)
    gold_id = gold.id if gold is not None else splits.version.gold_id
    task = TaskConfig.model_validate(splits.version.config["task"]) if "task" in splits.version.config else None
    task = task or project.task
    if resumed is not None and "task" in resumed.config:
        task = TaskConfig.model_validate(resumed.config["task"])
    leakage = leakage_gate(
        project,
        task,
        splits.gold,
        allow=allow_leakage,
        context="train",
        train=splits.train,
        validation=splits.validation,
    )
    model_ref = resolve_model(resumed.base_model if resumed else project.manifest.model.base)
    warm = _adapter_of(project, init_from) if init_from else None
    max_length = int(resumed.config["max_length"]) if resumed else project.manifest.model.max_length
    style = resumed.config.get("prompt", "full") if resumed else cfg.prompt
    answer_note = ""
    if resumed is None:  # a resumed run keeps the answer format it recorded
        task, answer_note = resolve_answer(task, splits.train, style)
    k = shortlist_size(cfg.shortlist, task)
    cfg = cfg.model_copy(update={"shortlist": k})  # recorded resolved
    companion, hints = build_companion(
        task, splits, k, prior=cfg.label_prior != "off", cache_dir=project.home / "cache" / "embeddings"
    )
    return TrainSetup(
        project=project,
        config=cfg,
        splits=splits,
        gold_id=gold_id,
        model_ref=model_ref,
        leakage=leakage,
        max_length=max_length,
        task=task,
        prompt=style,
        init_from=warm,
        resume=resumed,
        origin=options.get("origin"),
        companion=companion,
        hints=hints,
        answer_note=answer_note,
    )


def fit_priors(st: TrainSetup, parts: Parts, console: Console) -> None:
    """After training, on the validation split: weigh the label prior and choose the abstention threshold (a
    classifier), or fit the span prior and its judge (an extractor)."""
    rows = st.splits.validation[:PRIOR_VALIDATION_ROWS]
    hints = st.hints["validation"][: len(rows)] if "validation" in st.hints else None
    ask = (parts.model, parts.tokenizer, st.task, st.prompt)
    cfg, cache = st.project.manifest.eval, st.project.home / "cache"
    prior = st.companion is not None and st.companion.prior is not None
    if st.task.type == "classification" and rows and (prior or st.task.abstain is not None):
        probs = own_label_probs(*ask, rows, hints, cfg, console=console)  # one pass for the prior and abstention
        st.prior_choice = choose_prior(st.companion, probs, st.task, rows, cache_dir=cache / "embeddings")
        st.companion, st.abstain_choice = choose_abstention(
            st.companion, probs, st.task, rows, cache_dir=cache / "embeddings", console=console
        )
    if st.task.type == "extraction" and st.config.span_prior != "off" and rows:
        st.companion, st.span_choice = choose_spans(
            st.companion, *ask, st.splits.train, rows, hints, cfg, cache_dir=cache, console=console
        )


def _resumable_run(project: Project, ref: str) -> Run:
    try:
        run_id = int(ref.removeprefix("run-"))
    except ValueError:
        raise NotFoundError(f"{ref!r} is not a run id", hint="Run ids look like run-3; `slmloop runs`.") from None
    run = project.store.get(Run, run_id, "run", "`slmloop runs` lists the runs.")
    if run.status == "completed":
        raise ConfigError(f"{run.name} already completed", hint="Start a new run, or warm-start with --init-from.")
    if latest_checkpoint(project.locate(run.path)) is None:
        raise NotFoundError(
            f"{run.name} has no checkpoint to resume from (it stopped before its first one)",
            hint="Start it again with `slmloop train` (checkpoints every train.checkpoint_every steps).",
        )
    holder = run_holder(project.locate(run.path))
    if holder is not None:
        raise ConflictError(
            f"{run.name} is being trained by process {holder.get('pid')} on {holder.get('host')}",
            hint=f"Wait for it, or stop that process; if it is gone, delete {project.locate(run.path) / HOLDER}.",
        )
    return run


# ---------------------------------------------------------------------------------------------
# build
# ---------------------------------------------------------------------------------------------
@dataclass
class Parts:
    accelerator: Any
    tokenizer: Any
    train_ex: list[EncodedExample]
    val_rows: list[dict[str, Any]]
    val_ex: list[EncodedExample]
    model: Any  # the PEFT model
    loss_fn: Any  # AnswerLoss (wrapped by accelerate when distributed)
    optimizer: Any
    scheduler: Any
    params: list[Any]
    dtype: Any
    total_steps: int
    steps_per_epoch: int
    eval_every: int
    lora: dict[str, Any]

    #: the loss module itself, never wrapped: for passes that must not synchronise processes
    inner_loss: Any = None
    share_prefix: bool = True
    train_labels: list[str] = field(default_factory=list)  # classification labels (for rebalancing)

    @property
    def device(self) -> Any:
        return self.accelerator.device

    def epoch_batches(self, cfg: TrainConfig, epoch: int) -> list[list[int]]:
        """The epoch's batches of ``train_ex`` indices: length-grouped, classes rebalanced if asked."""
        rows = rebalanced_rows(self.train_labels, cfg.rebalance, cfg.seed, epoch)
        lengths = [len(e.input_ids) for e in self.train_ex]
        return length_grouped_batches(lengths, cfg.batch_size, cfg.seed, epoch, rows)

    def batch(self, indices: list[int], examples: list[EncodedExample] | None = None) -> Batch:
        rows = [(examples or self.train_ex)[i] for i in indices]
        batch = collate(rows, self.tokenizer.pad_token_id, share_prefix=self.share_prefix)
        if examples is None:  # training rows: the frozen-layer cache knows them by index
            batch.example_ids = tuple(indices)
        return batch.to(self.device)

    @property
    def main(self) -> bool:
        return bool(self.accelerator.is_main_process)

    @property
    def world(self) -> int:
        return int(self.accelerator.num_processes)


def _linear_layers(model: Any) -> list[str]:
    """Names of every linear layer inside the transformer blocks (the output head excluded)."""
    import torch

    head = model.get_output_embeddings()
    names = {
        n.rsplit(".", 1)[-1]
        for n, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and m is not head and (".layers." in f".{n}" or ".h." in f".{n}")
    }
    return sorted(n for n in names if not n.isdigit())


def _target_modules(model: Any, choice: str | list[str]) -> str | list[str]:
    if isinstance(choice, list):
        return choice
    if choice == "all-linear":
        return _linear_layers(model) or "all-linear"
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
    return _linear_layers(model) or "all-linear"


def adapted_layers(setting: int | float | None, layers: int) -> int:
    """How many of the model's top layers get adapters: every one, a count, or a share."""
    if setting is None or not layers:
        return layers
    if isinstance(setting, float) and setting <= 1.0:
        return max(1, round(setting * layers))
    return min(layers, int(setting))


def _lora_settings(st: TrainSetup, base: Any) -> dict[str, Any]:
    cfg = st.config
    lora: dict[str, Any] = {
        "r": cfg.lora_r,
        "lora_alpha": cfg.lora_alpha,
        "lora_dropout": cfg.lora_dropout,
        "target_modules": _target_modules(base, cfg.target_modules),
    }
    layers = int(getattr(base.config, "num_hidden_layers", 0) or 0)
    top = adapted_layers(cfg.lora_layers, layers)
    if top < layers:
        # only the top layers adapt: the backward pass stops at the lowest adapted layer
        lora["layers_to_transform"] = list(range(layers - top, layers))
        lora["layers_pattern"] = "layers"
    if st.init_from is not None:  # a warm start continues the earlier adapter's shape
        earlier = json.loads((st.init_from / "adapter_config.json").read_text())
        keys = ("r", "lora_alpha", "target_modules", "layers_to_transform", "layers_pattern")
        lora.update({k: earlier[k] for k in keys if earlier.get(k) is not None})
        if isinstance(lora["target_modules"], list):
            lora["target_modules"] = sorted(lora["target_modules"])
    return lora


def build(st: TrainSetup) -> Parts:
    from accelerate import Accelerator
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
    from transformers import get_scheduler

    cfg = st.config
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    if accelerator.num_processes == 1 and torch.get_num_threads() < (os.cpu_count() or 1):
        torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(cfg.seed)
    dtype = pick_dtype(cfg.precision)
    tok = load_tokenizer(st.model_ref)
    train_ex = encode_rows(tok, st.task, st.splits.train, st.max_length, st.prompt, st.hints.get("train"))
    val_rows = st.splits.validation[: cfg.validation_rows]
    val_hints = st.hints["validation"][: cfg.validation_rows] if "validation" in st.hints else None
    val_ex = encode_rows(tok, st.task, val_rows, st.max_length, st.prompt, val_hints)

    # eager attention: on CPU its backward beats SDPA's for short sequences
    attn = "sdpa" if accelerator.device.type == "cuda" else "eager"
    base = load_causal_lm(st.model_ref, dtype, attn_implementation=attn)
    if cfg.gradient_checkpointing:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        base.enable_input_require_grads()
    lora = _lora_settings(st, base)
    with quiet_transformers():
        model = get_peft_model(base, LoraConfig(task_type="CAUSAL_LM", **lora))
    if st.init_from is not None:
        from safetensors.torch import load_file

        weights = load_file(st.init_from / "adapter_model.safetensors")
        result = set_peft_model_state_dict(model, weights)
        if getattr(result, "unexpected_keys", None):
            raise ModelError(
                f"the adapter in {st.init_from} does not fit this base model",
                hint="Warm-start from a run of the same base model.",
            )
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)

    world = accelerator.num_processes
    per_step = cfg.grad_accum * world  # batches per optimizer step, across all processes
    batches_per_epoch = math.ceil(len(train_ex) / cfg.batch_size)
    if batches_per_epoch < per_step:
        raise ConfigError(
            f"{len(train_ex)} training examples make {batches_per_epoch} batches, fewer than one optimizer step "
            f"needs ({cfg.grad_accum} × {world} processes)",
            hint="Lower train.batch_size or train.grad_accum, or use fewer processes.",
        )
    steps_per_epoch = batches_per_epoch // per_step
    total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))
    scheduler = get_scheduler(
        cfg.scheduler,
        optimizer,
        num_warmup_steps=int(cfg.warmup_ratio * total_steps),
        num_training_steps=total_steps,
    )
    inner = AnswerLoss(model, _kd_teacher(st, tok, dtype), cfg.distill_alpha, cfg.distill_temperature)
    inner = inner.to(accelerator.device)
    if not cfg.gradient_checkpointing:
        budget = int(MEMORY_SHARE * available_memory_bytes(accelerator.device.type))
        lengths = [len(e.input_ids) for e in train_ex]
        inner.frozen = frozen_layers_for(model, inner.decoder if inner.fast else None, lora, budget, lengths)
    # distributed (DDP, or FSDP/DeepSpeed from an accelerate config): accelerate wraps the loss module
    # (every forward goes through it) and the optimizer; one process keeps the plain objects
    if accelerator.distributed_type != "NO":
        loss_fn, optimizer = accelerator.prepare(inner, optimizer)
    else:
        loss_fn = inner
    return Parts(
        accelerator=accelerator,
        tokenizer=tok,
        train_ex=train_ex,
        val_rows=val_rows,
        val_ex=val_ex,
        model=model,
        loss_fn=loss_fn,
        optimizer=optimizer,
        scheduler=scheduler,
        params=params,
        dtype=dtype,
        total_steps=total_steps,
        steps_per_epoch=steps_per_epoch,
        eval_every=cfg.eval_every or max(1, total_steps // 4),
        lora=lora,
        inner_loss=inner,
        share_prefix=not cfg.gradient_checkpointing,
        train_labels=[str(r["label"]) for r in st.splits.train] if st.task.type == "classification" else [],
    )


def _kd_teacher(st: TrainSetup, tok: Any, dtype: torch.dtype) -> AnswerLoss | None:
    """The frozen teacher of token-level distillation (train.distill_from), sharing the student's tokenizer."""
    ref = st.config.distill_from
    if ref is None:
        return None
    from slmloop.predict.targets import load_target, resolve_target

    model, teacher_tok = load_target(resolve_target(st.project, ref), dtype)
    if teacher_tok.get_vocab() != tok.get_vocab():
        raise ConfigError(
            f"train.distill_from {ref!r} has another tokenizer than the student: token-level distillation needs "
            "the same vocabulary",
            hint="Use a teacher of the same model family (a run or release of this project, a larger sibling), or "
            "distil its answers only: slmloop distill --teacher ... with train.distill_from unset.",
        )
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return AnswerLoss(model)


# ---------------------------------------------------------------------------------------------
# preflight
# ---------------------------------------------------------------------------------------------
def preflight(st: TrainSetup, parts: Parts) -> Forecast:
    """Forecast time and memory from real passes on this machine; the RNG is re-seeded afterwards."""

    cfg = st.config
    lengths = [len(e.input_ids) for e in parts.train_ex]
    order = parts.epoch_batches(cfg, 0)
    micro = [chunk for b in order for chunk in split_by_tokens(b, lengths, cfg.max_batch_tokens)]
    by_size = sorted(micro, key=lambda c: len(c) * max(lengths[i] for i in c))
    sample = [by_size[int(q * (len(by_size) - 1))] for q in (0.1, 0.3, 0.5, 0.7, 0.9)]

    def answer_tokens(c: list[int]) -> int:
        return sum(end - start for i in c for start, end in parts.train_ex[i].spans)

    heaviest = [
        by_size[-1],
        max(micro, key=answer_tokens),
        max(micro, key=lambda c: len(c) * max(lengths[i] for i in c) ** 2),
    ]
    unique = [list(c) for c in dict.fromkeys(tuple(c) for c in heaviest)]
    tps, peak = calibrate(parts.inner_loss, parts.batch, sample, unique, parts.device)
    frozen = parts.inner_loss.frozen
    # the same rows again start above the frozen layers (their states were kept by the passes above):
    # the speed of every epoch after the first
    later_tps = tps
    if frozen is not None:
        later_tps = calibrate(parts.inner_loss, parts.batch, sample, [], parts.device)[0]
        frozen.skipped = 0  # count the run's rows, not the calibration's
    torch.manual_seed(cfg.seed)
    total, trainable = count_parameters(parts.model)
    peak += 2 * 4 * trainable  # AdamW's two moments (fp32)
    if frozen is not None:
        peak += frozen.capacity_bytes - frozen.held_bytes  # full after the first epoch
    tokens_epoch = sum(lengths)
    world = parts.world
    per_epoch = tokens_epoch / max(tps * world, 1e-9)
    evals = max(1, parts.total_steps // parts.eval_every)
    val_tokens = sum(len(e.input_ids) for e in parts.val_ex)
    epochs = parts.total_steps / max(parts.steps_per_epoch, 1)
    total_s = (
        per_epoch * min(epochs, 1.0)
        + tokens_epoch / max(later_tps * world, 1e-9) * max(0.0, epochs - 1.0)
        + evals * val_tokens / max(3 * tps, 1e-9)
    )
    available = available_memory_bytes(parts.device.type)
    leak = st.leakage
    leakage = (
        "clean"
        if not leak["leaks"]
        else (f"{leak['leaks']} leak(s), overridden" if leak["overridden"] else f"{leak['leaks']} leak(s)")
    )
    every = parts.train_ex + parts.val_ex
    cut = [i for i, e in enumerate(every) if e.answer_cut]
    forecast = Forecast(
        device=parts.device.type,
        dtype=str(parts.dtype).removeprefix("torch."),
        world_size=world,
        total_params=total,
        trainable_params=trainable,
        train_examples=len(parts.train_ex),
        validation_examples=len(parts.val_ex),
        truncated=sum(e.truncated for e in parts.train_ex),
        max_tokens=max(lengths),
        mean_tokens=tokens_epoch / len(lengths),
        steps=parts.total_steps,
        steps_per_epoch=parts.steps_per_epoch,
        tokens_per_epoch=tokens_epoch,
        calibrated_tokens_per_s=tps,
        seconds_per_epoch=per_epoch,
        later_tokens_per_s=later_tps,
        frozen_layers=frozen.start if frozen else 0,
        seconds_total=total_s,
        peak_memory_gib=peak / 1024**3,
        available_memory_gib=available / 1024**3,
        fits=peak < 0.95 * available,
        leakage=leakage,
        answer_cut=len(cut),
        needed_length=max(e.full_length for e in every),
        cut_examples=[_cut_example(st, parts, i) for i in cut[:3]],
        shortlist=companion_summary(st.companion, st.task, st.splits, st.hints, st.prior_choice),
        span_prior=st.task.type == "extraction" and st.config.span_prior != "off" and bool(st.splits.validation),
        answer=f"{st.task.answer} ({st.answer_note})" if st.task.type == "extraction" and st.answer_note else "",
    )
    forecast_eval(
        forecast,
        model_ref=st.model_ref,
        tokenizer=parts.tokenizer,
        device=parts.device,
        task=st.task,
        prompt=st.prompt,
        gold=st.splits.gold,
        hints=st.hints.get("gold"),
        eval_cfg=st.project.manifest.eval,
        span_prior=st.config.span_prior,
        answer_lengths=[e.spans[-1][1] - e.spans[-1][0] for e in parts.val_ex or parts.train_ex],
        train=st.splits.train,
        seed=st.config.seed,
    )
    return forecast


def _cut_example(st: TrainSetup, parts: Parts, i: int) -> str:
    from slmloop.predict.tasks import input_text

    n = len(parts.train_ex)
    if i < n:
        split, k, row, ex = "train", i, st.splits.train[i], parts.train_ex[i]
    else:
        split, k, row, ex = "validation", i - n, parts.val_rows[i - n], parts.val_ex[i - n]
    text = input_text(st.task, row)[:60]
    return f"{split} row {k}: {ex.full_length} tokens, its answer loses {ex.answer_cut}: {text!r}"


def _refuse(f: Forecast) -> None:
    if f.answer_cut:
        examples = "\n".join(f"  {x}" for x in f.cut_examples)
        raise PreflightError(
            f"{f.answer_cut} example(s) do not fit model.max_length with their whole answer; training on them "
            f"would teach cut-off answers:\n{examples}",
            hint=f"Set model.max_length to at least {f.needed_length} (or --max-length {f.needed_length}), or drop "
            "long rows with data.max_tokens and run `slmloop data prepare`.",
        )
    raise PreflightError(
        f"this run needs ~{f.peak_memory_gib:.1f} GiB at its peak but only {f.available_memory_gib:.1f} GiB is "
        f"available ({f.device}, {f.dtype}, longest example {f.max_tokens} tokens)",
        hint="Lower train.max_batch_tokens or train.batch_size, lower model.max_length, or set "
        "train.gradient_checkpointing: true.",
    )


# ---------------------------------------------------------------------------------------------
# fit
# ---------------------------------------------------------------------------------------------
def _progress(console: Console, disable: bool) -> Any:
    from rich.progress import MofNCompleteColumn, TextColumn, TimeElapsedColumn

    columns = [
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TextColumn("{task.fields[tps]} tok/s"),
        TimeElapsedColumn(),
    ]
    fields = [("loss", "loss {}"), ("tps", "{} tok/s")]
    return progress(console, "train", fields, disable=disable, columns=columns)


def _evaluate(st: TrainSetup, parts: Parts, metric: str) -> dict[str, float]:
    """Validation loss, plus the early-stopping task metric when it is not the loss."""
    out: dict[str, float] = {}
    val = validation_loss(
        parts.inner_loss,
        parts.val_ex,
        parts.tokenizer.pad_token_id,
        st.config.max_batch_tokens,
        parts.device,
        share_prefix=parts.share_prefix,
    )
    if val is not None:
        out["val_loss"] = val
    if metric != "val_loss" and parts.val_rows:
        from slmloop.evaluate.scoring import score_answers
        from slmloop.predict.answers import answer_rows
        from slmloop.predict.constrain import decoding_schema
        from slmloop.predict.engines import LocalEngine

        m = st.project.manifest
        parts.model.eval()
        answers = answer_rows(
            st.task,
            st.prompt,
            resolve_mode(st.task, m.eval.mode),
            LocalEngine(parts.model, parts.tokenizer),
            parts.val_rows,
            st.hints["validation"][: len(parts.val_rows)] if "validation" in st.hints else None,
            batch_size=m.eval.batch_size,
            max_new_tokens=m.eval.max_new_tokens,
            margin=m.eval.rank_margin,
            schema=decoding_schema(st.task, m.eval),
        )
        parts.model.train()
        scores = score_answers(st.task, parts.val_rows, [a.prediction for a in answers], [a.raw for a in answers])
        out[metric] = scores.metric(metric)
    return out


def _trainable_copy(model: Any) -> dict[str, Any]:
    return {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}


@dataclass
class StepResult:
    loss_sum: float  # summed cross-entropy over the step's answer tokens (all processes)
    answer_tokens: int
    real_tokens: int
    grad_norm: float


def train_step(parts: Parts, group: list[list[int]], lengths: list[int], cfg: TrainConfig) -> StepResult:
    """One optimizer step over ``group`` (a batch per process and accumulation round): micro-batches
    within the token budget, gradients averaged per answer token of the *whole* step, clipping, update."""
    acc = parts.accelerator
    # the answer tokens of the whole step, so every process normalises alike
    n_answer = sum(end - start for b in group for i in b for start, end in parts.train_ex[i].spans)
    mine = group[acc.process_index :: parts.world]
    micro = [c for b in mine for c in split_by_tokens(b, lengths, cfg.max_batch_tokens)]
    loss_sum, tokens = 0.0, 0
    for k, chunk in enumerate(micro):
        batch = parts.batch(chunk)
        sync = k == len(micro) - 1
        ctx = acc.no_sync(parts.loss_fn) if (parts.world > 1 and not sync) else nullcontext()
        with ctx:
            loss, _ = parts.loss_fn(batch)
            # DDP averages gradients over processes: scale so the sum matches one process
            acc.backward(loss * parts.world / n_answer)
        loss_sum += float(loss.detach())
        tokens += batch.real_tokens
    if parts.world > 1:
        totals = acc.reduce(torch.tensor([loss_sum, float(tokens)]), reduction="sum")
        loss_sum, tokens = float(totals[0]), int(totals[1])
    norm = acc.clip_grad_norm_(parts.params, cfg.max_grad_norm)
    parts.optimizer.step()
    parts.scheduler.step()
    parts.optimizer.zero_grad(set_to_none=True)
    return StepResult(loss_sum, n_answer, tokens, float(norm) if norm is not None else float("nan"))


def _trace_entry(parts: Parts, state: LoopState, result: StepResult) -> dict[str, Any]:
    return {
        "step": state.step,
        "epoch": state.epoch,
        "loss": result.loss_sum / max(result.answer_tokens, 1),
        "lr": parts.scheduler.get_last_lr()[0],
        "grad_norm": result.grad_norm,
        "tokens": state.real_tokens,
        "tokens_per_s": state.real_tokens / state.compute_s,
        "elapsed_s": state.compute_s,
        "memory_gib": _memory_now(parts) / 1024**3,
    }


def _memory_now(parts: Parts) -> int:
    """Memory held now: the device's allocated bytes on CUDA, this process's resident set on CPU."""
    if parts.device.type == "cuda":
        return int(torch.cuda.memory_allocated())
    return current_rss_bytes()


def _validate_if_due(
    st: TrainSetup, parts: Parts, state: LoopState, metric: str, best_path: Path, last: int
) -> dict[str, float]:
    """Validation loss (and the early-stopping metric) every ``eval_every`` steps and at the end (``last``)."""
    if state.step % parts.eval_every and state.step not in (parts.total_steps, last):
        return {}
    scores = _broadcast(parts.accelerator, _evaluate(st, parts, metric) if parts.main else {})
    state.history.append({"step": state.step, **scores})
    _track_best(st, parts, state, scores.get(metric), best_path)
    return scores


def _checkpoint_if_due(st: TrainSetup, parts: Parts, state: LoopState, run_dir: Path) -> None:
    if state.step % st.config.checkpoint_every == 0 and state.step < parts.total_steps:
        if parts.main:
            save_checkpoint(run_dir, parts.model, parts.optimizer, parts.scheduler, state)
        parts.accelerator.wait_for_everyone()


def fit(
    st: TrainSetup,
    parts: Parts,
    run: Run,
    state: LoopState,
    console: Console,
    *,
    stop_at: int | None = None,
    on_validation: Callable[[dict[str, Any]], None] | None = None,
) -> LoopState:
    """The loop: epochs of length-grouped batch groups, one optimizer step each, from ``state`` on.

    ``stop_at``: pause after this step (validated there; the caller checkpoints). ``on_validation``: called
    with every validation entry (step, epochs, val_loss, metric): a bake-off's scheduler listens here.
    """
    cfg = st.config
    last = min(parts.total_steps, stop_at or parts.total_steps)
    run_dir = st.project.locate(run.path)
    lengths = [len(e.input_ids) for e in parts.train_ex]
    metric = cfg.early_stopping.metric if cfg.early_stopping else "val_loss"
    trace = open(run_dir / "trace.jsonl", "a", encoding="utf-8") if parts.main else None  # noqa: SIM115
    trackers = open_trackers(cfg.report_to, run_dir, run.name, cfg.model_dump()) if parts.main else []
    best_path = run_dir / "checkpoints" / "best.safetensors"
    per_step = cfg.grad_accum * parts.world
    if parts.device.type == "cuda":  # measure the training peak, not model loading's
        torch.cuda.reset_peak_memory_stats()
    else:
        reset_peak_rss()
    try:
        with _progress(console, disable=not parts.main) as progress:
            bar = progress.add_task("train", total=parts.total_steps, completed=state.step, loss="…", tps="…")
            while state.step < last and not state.stopped_early:
                order = parts.epoch_batches(cfg, state.epoch)
                starts = range(0, len(order) - per_step + 1, per_step)
                for g in starts[state.position :]:
                    if state.step >= last or state.stopped_early:
                        break
                    t0 = time.perf_counter()
                    result = train_step(parts, order[g : g + per_step], lengths, cfg)
                    state.step += 1
                    state.position = starts.index(g) + 1
                    state.real_tokens += result.real_tokens
                    state.compute_s += time.perf_counter() - t0
                    entry = _trace_entry(parts, state, result)
                    scores = _validate_if_due(st, parts, state, metric, best_path, last)
                    entry.update(scores)
                    if trace is not None:
                        trace.write(json.dumps(entry) + "\n")
                        trace.flush()
                    if scores and on_validation is not None:  # after the trace: a listener may end the process
                        on_validation({"step": state.step, "epochs": state.step / parts.steps_per_epoch, **scores})
                    for t in trackers:
                        t.log(state.step, {k: float(v) for k, v in entry.items() if isinstance(v, int | float)})
                    _checkpoint_if_due(st, parts, state, run_dir)
                    progress.update(
                        bar, completed=state.step, loss=f"{entry['loss']:.3f}", tps=f"{entry['tokens_per_s']:.0f}"
                    )
                else:
                    state.epoch += 1
                    state.position = 0
    finally:
        if trace is not None:
            trace.close()
        for t in trackers:
            t.close()
    return state


def _broadcast(acc: Any, value: dict[str, float]) -> dict[str, float]:
    if acc.num_processes == 1:
        return value
    from accelerate.utils import broadcast_object_list

    box = [value]
    broadcast_object_list(box, from_process=0)
    return box[0]


def _track_best(st: TrainSetup, parts: Parts, state: LoopState, value: float | None, best_path: Path) -> None:
    """Remember the best evaluation; with early stopping, count evaluations without improvement."""
    es = st.config.early_stopping
    if value is None:
        return
    from slmloop.metrics import METRICS

    metric = es.metric if es else "val_loss"
    lower = metric in LOWER_IS_BETTER or (metric in METRICS and not METRICS[metric].higher_is_better)
    delta = es.min_delta if es else 0.0
    improved = state.best_value is None or (
        value < state.best_value - delta if lower else value > state.best_value + delta
    )
    if improved:
        state.best_value, state.best_step, state.bad_evals = value, state.step, 0
        if es is not None and parts.main:
            from safetensors.torch import save_file

            best_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = best_path.with_suffix(".tmp")
            save_file({k: v.contiguous() for k, v in _trainable_copy(parts.model).items()}, tmp)
            os.replace(tmp, best_path)
    elif es is not None:
        state.bad_evals += 1
        if state.bad_evals >= es.patience:
            state.stopped_early = True


# ---------------------------------------------------------------------------------------------
# save
# ---------------------------------------------------------------------------------------------
def _finish(project: Project, run: Run, status: str, metrics: dict[str, Any]) -> Run:
    if run.path:
        release_run(project.locate(run.path))
    with project.store.session() as s:
        row = project.store.one(s, Run, run.id)
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
        return project.store.one(s, Run, run.id)


def restore_best(st: TrainSetup, parts: Parts, run: Run, state: LoopState) -> str:
    """Load the best checkpoint's weights where early stopping kept one: the weights the run ships
    (and the priors are weighed for). Returns which weights those are."""
    from safetensors.torch import load_file

    best_path = st.project.locate(run.path) / "checkpoints" / "best.safetensors"
    if st.config.early_stopping is None or not best_path.exists():
        return "last"
    params = dict(parts.model.named_parameters())
    with torch.no_grad():
        for k, v in load_file(best_path).items():
            params[k].copy_(v)
    return f"best (step {state.best_step})"


def save(st: TrainSetup, parts: Parts, run: Run, state: LoopState, forecast: Forecast, chosen: str) -> Run:
    project = st.project
    run_dir = project.locate(run.path)
    steps = read_trace(run_dir)
    first = [s["loss"] for s in steps[: max(1, len(steps) // 10)]]
    last = [s["loss"] for s in steps[-max(1, len(steps) // 10) :]]
    evals = [s for s in steps if "val_loss" in s]
    metrics = {
        "steps": state.step,
        "epochs": state.step / max(parts.steps_per_epoch, 1),
        "train_loss_first": sum(first) / len(first),
        "train_loss_last": sum(last) / len(last),
        "val_loss": evals[-1]["val_loss"] if evals else None,
        "val_loss_first": evals[0]["val_loss"] if evals else None,
        "best_step": state.best_step,
        "best_value": state.best_value,
        "selected": chosen,
        "stopped_early": state.stopped_early,
        "train_seconds": state.compute_s,
        "tokens": state.real_tokens,
        "tokens_per_s": state.real_tokens / state.compute_s if state.compute_s else 0.0,
        "truncated": forecast.truncated,
        "trainable_params": forecast.trainable_params,
        "total_params": forecast.total_params,
        "forecast_seconds": forecast.seconds_total,
        "forecast_peak_gib": forecast.peak_memory_gib,
        "world_size": parts.world,
        # rows that started above the frozen bottom layers (their states kept from an earlier pass)
        "frozen_layers": parts.inner_loss.frozen.start if parts.inner_loss.frozen else 0,
        "rows_from_kept_states": parts.inner_loss.frozen.skipped if parts.inner_loss.frozen else 0,
    }
    if parts.device.type == "cuda":
        metrics["peak_gib"] = torch.cuda.max_memory_allocated() / 1024**3
    else:
        metrics["peak_gib"] = peak_rss_bytes() / 1024**3
    meta = {
        "run": run.name,
        "created_at": run.created_at.isoformat(),
        "base_model": {"spec": st.model_ref.spec, "path": st.model_ref.path, "source": st.model_ref.source},
        "dataset": st.splits.version.id,
        "gold": st.gold_id,
        "task": st.task.model_dump(),
        "prompt": st.prompt,
        "shortlist": companion_summary(st.companion, st.task, st.splits, st.hints, st.prior_choice),
        "span_prior": st.span_choice,
        "abstain": st.abstain_choice,
        "train": st.config.model_dump(),
        "lora": parts.lora,
        "max_length": st.max_length,
        "dtype": str(parts.dtype).removeprefix("torch."),
        "leakage": st.leakage,
        "init_from": str(st.init_from) if st.init_from else None,
        "forecast": forecast.to_dict(),
        "metrics": metrics,
        "versions": versions(),
    }
    if (run_dir / "adapter").exists():
        shutil.rmtree(run_dir / "adapter")
    with atomic_dir(run_dir / "adapter") as tmp:
        parts.model.save_pretrained(tmp)
        parts.tokenizer.save_pretrained(tmp)
        if st.companion is not None and st.companion.in_use:
            st.companion.save(tmp)
    atomic_write_json(run_dir / "run.json", meta)
    plot_loss_curve(steps, run_dir / "loss_curve.png", title=f"{run.name} · {st.model_ref.spec}")
    return _finish(project, run, "completed", metrics)


# ---------------------------------------------------------------------------------------------
# the whole recipe
# ---------------------------------------------------------------------------------------------
def plan(project: Project, overrides: dict[str, Any] | None = None, **options: Unpack[SetupOptions]) -> Forecast:
    """What a run would cost (preflight), without training: ``slmloop train --dry-run``."""
    st = setup(project, overrides, **options)
    return preflight(st, build(st))


def train(
    project: Project,
    overrides: dict[str, Any] | None = None,
    *,
    console: Console | None = None,
    pause_at: float | None = None,
    validate_every: float | None = None,
    on_validation: Callable[[dict[str, Any]], None] | None = None,
    **options: Unpack[SetupOptions],
) -> Run:
    """Train (or, with ``resume``, continue) a LoRA adapter: setup → build → preflight → fit → save.

    ``pause_at`` (epochs): stop there with a checkpoint and status ``paused`` (``resume`` continues it) — a
    bake-off's rung. ``validate_every`` (epochs) replaces ``eval_every``; ``on_validation`` sees each result.
    """
    console = console or Console(stderr=True)
    st = setup(project, overrides, **options)
    parts = build(st)
    if validate_every is not None:
        parts.eval_every = max(1, round(validate_every * parts.steps_per_epoch))
    quiet = Console(quiet=True) if not parts.main else console
    forecast = preflight(st, parts)
    if parts.main:
        quiet.print(render_forecast(forecast, title=f"preflight · {st.model_ref.spec}"))
    if not forecast.fits or forecast.answer_cut:
        _refuse(forecast)

    run, state = _start_or_resume(st, parts, forecast)
    stop_at = None if pause_at is None else max(1, math.ceil(pause_at * parts.steps_per_epoch))
    quiet.print(
        f"[bold]{run.name}[/bold]: {parts.total_steps} steps"
        + (f", resuming at step {state.step}" if state.step else "")
        + (f", pausing at step {stop_at}" if stop_at is not None and stop_at < parts.total_steps else "")
    )
    status = "failed"
    try:
        state = fit(st, parts, run, state, quiet, stop_at=stop_at, on_validation=on_validation)
        status = "completed" if state.step >= parts.total_steps or state.stopped_early else "paused"
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        if status not in ("completed", "paused") and parts.main:
            _finish(project, run, status, {"steps": state.step})
    if status == "paused":
        if parts.main:
            save_checkpoint(project.locate(run.path), parts.model, parts.optimizer, parts.scheduler, state)
        parts.accelerator.wait_for_everyone()
        paused = {"steps": state.step, "epochs": state.step / parts.steps_per_epoch, "history": state.history}
        return _finish(project, run, "paused", paused) if parts.main else run
    if not parts.main:
        parts.accelerator.wait_for_everyone()
        return run
    chosen = restore_best(st, parts, run, state)
    fit_priors(st, parts, console)
    result = save(st, parts, run, state, forecast, chosen)
    parts.accelerator.wait_for_everyone()
    return result


def _start_or_resume(st: TrainSetup, parts: Parts, forecast: Forecast) -> tuple[Run, LoopState]:
    project = st.project
    if st.resume is not None:
        run = st.resume
        run_dir = project.locate(run.path)
        ckpt = latest_checkpoint(run_dir)
        assert ckpt is not None
        state = restore_checkpoint(ckpt, parts.model, parts.optimizer, parts.scheduler)
        if parts.main:
            claim_run(run_dir)
        if parts.main:  # the trace keeps what happened up to the checkpoint
            kept = [e for e in read_trace(run_dir) if e.get("step", 0) <= state.step]  # a torn last line is dropped
            atomic_write_text(run_dir / "trace.jsonl", "".join(json.dumps(e) + "\n" for e in kept))
            with project.store.session() as s:
                row = project.store.one(s, Run, run.id)
                row.status = "running"
                project.store.log_event(s, "train.resume", run.name, step=state.step, checkpoint=ckpt.name)
        parts.accelerator.wait_for_everyone()
        return run, state
    created: Run | None = None
    if parts.main:
        created = run = project.store.add(
            Run(
                dataset_id=st.splits.version.id,
                gold_id=st.gold_id,
                base_model=st.model_ref.spec,
                config={
                    "train": st.config.model_dump(),
                    "task": st.task.model_dump(),
                    "prompt": st.prompt,
                    "max_length": st.max_length,
                    "dtype": str(parts.dtype).removeprefix("torch."),
                    "device": parts.device.type,
                    "leakage": st.leakage,
                    "lora": parts.lora,
                    "world_size": parts.world,
                    "init_from": None if st.init_from is None else str(st.init_from),
                    "forecast": forecast.to_dict(),
                    **({"origin": st.origin} if st.origin else {}),
                },
            ),
            "train.start",
            dataset=st.splits.version.id,
            leakage_overridden=st.leakage["overridden"],
        )
        run_dir = project.runs_dir / run.name
        if run_dir.exists():
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True)
        claim_run(run_dir)
        atomic_write_json(run_dir / "forecast.json", forecast.to_dict())
        run.path = project.relative(run_dir)
        with project.store.session() as s:
            project.store.one(s, Run, run.id).path = run.path
    return _broadcast_run(parts, created, project), LoopState()


def _broadcast_run(parts: Parts, run: Run | None, project: Project) -> Run:
    if parts.world == 1:
        assert run is not None
        return run
    from accelerate.utils import broadcast_object_list

    box = [run.id if run is not None else None]
    broadcast_object_list(box, from_process=0)
    with project.store.session() as s:
        return project.store.one(s, Run, box[0])
