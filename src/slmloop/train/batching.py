"""Examples → tensors with no compute wasted on padding.

Batches are *length-grouped*: examples are shuffled, cut into pools of many
batches, sorted by length inside each pool, and the batches are shuffled again.
Every batch then holds examples of nearly the same length, so padding is close
to zero while the order stays random from batch to batch. The order is a pure
function of (seed, epoch), which makes resumed runs see the same batches.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from slmloop.manifest import TaskConfig
from slmloop.models.loading import EncodedExample, encode_conversation, encode_example
from slmloop.predict.tasks import Hints, answer_target, prompt_messages

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "IGNORE",
    "Batch",
    "collate",
    "encode_rows",
    "length_grouped_batches",
    "rebalanced_rows",
    "split_by_tokens",
]

POOL = 32  # batches per sorting pool


def encode_rows(
    tok: PreTrainedTokenizerBase,
    task: TaskConfig,
    rows: Sequence[dict[str, Any]],
    max_length: int,
    style: str,
    hints: Sequence[Hints] | None = None,
) -> list[EncodedExample]:
    """Every row as training tokens, its prompt in ``style`` with its ``hints`` (see slmloop.predict.tasks)."""
    if task.type == "chat":  # loss on every assistant turn
        return [encode_conversation(tok, r["messages"], max_length) for r in rows]
    shown = hints if hints is not None else [None] * len(rows)
    return [
        encode_example(tok, prompt_messages(task, r, style, h), answer_target(task, r), max_length)
        for r, h in zip(rows, shown, strict=True)
    ]


def rebalanced_rows(labels: Sequence[str], mode: str, seed: int, epoch: int) -> list[int] | None:
    """The rows one epoch trains on when classes are rebalanced: as many rows as there are, each class's share
    proportional to sqrt(its count) (``sqrt``) or equal (``equal``). A class below its share is repeated whole
    and topped up by a draw; one above it is drawn without repeats, anew each epoch. ``none``: None (every row once).
    """
    if mode == "none" or not labels:
        return None
    by_class: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(label, []).append(i)
    names = sorted(by_class)
    weight = {c: (math.sqrt(len(by_class[c])) if mode == "sqrt" else 1.0) for c in names}
    total = sum(weight.values())
    exact = {c: len(labels) * weight[c] / total for c in names}
    quota = {c: int(exact[c]) for c in names}
    # largest remainders get the rows the rounding left over, so the epoch keeps its length
    for c in sorted(names, key=lambda c: exact[c] - quota[c], reverse=True)[: len(labels) - sum(quota.values())]:
        quota[c] += 1
    rng = random.Random(f"rebalance:{seed}:{epoch}")
    rows: list[int] = []
    for c in names:
        members, want = by_class[c], quota[c]
        whole, rest = divmod(want, len(members))
        rows.extend(members * whole)
        rows.extend(rng.sample(members, rest))
    return rows


def length_grouped_batches(
    lengths: Sequence[int], batch_size: int, seed: int, epoch: int, rows: Sequence[int] | None = None
) -> list[list[int]]:
    """Batches of similar length in random order; ``rows``: the rows (repeats allowed) this epoch uses."""
    rng = random.Random(f"{seed}:{epoch}")
    order = list(range(len(lengths))) if rows is None else list(rows)
    rng.shuffle(order)
    batches: list[list[int]] = []
    pool = batch_size * POOL
    for start in range(0, len(order), pool):
        chunk = sorted(order[start : start + pool], key=lambda i: lengths[i])
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def split_by_tokens(batch: list[int], lengths: Sequence[int], budget: int) -> list[list[int]]:
    """Cut a batch into micro-batches of at most ``budget`` padded tokens each.

    The optimizer step still sees the whole batch (gradients accumulate), so
    this bounds peak memory without changing the maths.
    """
    ordered = sorted(batch, key=lambda i: lengths[i])
    chunks: list[list[int]] = []
    current: list[int] = []
    for i in ordered:
        if current and (len(current) + 1) * lengths[i] > budget:
            chunks.append(current)
            current = []
        current.append(i)
    if current:
        chunks.append(current)
    return chunks


@dataclass
class Batch:
    """A micro-batch. When its examples share a prompt prefix (system prompt,
    instruction), ``prefix_ids`` holds it once and ``input_ids`` only the rest:
    the prefix is run once and its keys/values are shared by every row."""

    input_ids: torch.Tensor  # (B, T - P) right-padded suffixes
    attention_mask: torch.Tensor  # (B, T - P)
    rows: torch.Tensor  # (N,) batch row of each answer token
    positions: torch.Tensor  # (N,) suffix position whose hidden state predicts the token
    targets: torch.Tensor  # (N,) the answer token ids
    real_tokens: int  # non-padding tokens the batch stands for (prefix counted per row)
    prefix_ids: torch.Tensor | None = None  # (1, P) shared prompt prefix
    example_ids: tuple[int, ...] | None = None  # the training examples the rows are (None: not training rows)

    @property
    def answer_tokens(self) -> int:
        return int((self.targets != IGNORE).sum())

    @property
    def prefix_len(self) -> int:
        return 0 if self.prefix_ids is None else int(self.prefix_ids.shape[1])

    def to(self, device: torch.device) -> Batch:
        return Batch(
            self.input_ids.to(device),
            self.attention_mask.to(device),
            self.rows.to(device),
            self.positions.to(device),
            self.targets.to(device),
            self.real_tokens,
            None if self.prefix_ids is None else self.prefix_ids.to(device),
            self.example_ids,
        )


MIN_SHARED_PREFIX = 8  # shorter common prefixes are not worth a second forward call

# Tensor shapes are rounded up. Each new (rows x width) or answer-token count makes the CPU kernels
# (oneDNN) build and cache primitives for it, and the memory that holds stays held, so with exact shapes
# the process keeps growing through an epoch (capping the primitive cache instead costs speed). Widths
# rounded to WIDTH_MULTIPLE and answer counts to ANSWER_MULTIPLE keep memory down at the same speed and
# validation loss; a coarser width multiple pads short rows more and is slower. Chosen with
# `slmloop train --epochs 1` on HWU64 slots (docs/training.md, "Few tensor shapes").
WIDTH_MULTIPLE = 4
ANSWER_MULTIPLE = 64
IGNORE = -100  # target of a padding answer position (F.cross_entropy's ignore_index)


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _round_width(n: int) -> int:
    """``n`` rounded up to a multiple of WIDTH_MULTIPLE, or of 1/8 of its power of two for long rows
    (at most 1/8 more, ~6 % on average): a few dozen widths whatever the length spread."""
    return _round_up(n, max(WIDTH_MULTIPLE, 2 ** (n.bit_length() - 4)))


def shared_prefix_len(examples: Sequence[EncodedExample]) -> int:
    """Longest common token prefix, kept strictly inside every prompt."""
    if len(examples) < 2:
        return 0
    first = examples[0].input_ids
    limit = min(e.prompt_len for e in examples) - 1
    n = 0
    while n < limit and all(e.input_ids[n] == first[n] for e in examples):
        n += 1
    return n if n >= MIN_SHARED_PREFIX else 0


def collate(examples: Sequence[EncodedExample], pad_id: int, share_prefix: bool = True) -> Batch:
    import torch

    p = shared_prefix_len(examples) if share_prefix else 0
    width = _round_width(max(len(e.input_ids) for e in examples) - p)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    rows: list[int] = []
    positions: list[int] = []
    targets: list[int] = []
    for b, e in enumerate(examples):
        n = len(e.input_ids)
        ids[b, : n - p] = torch.tensor(e.input_ids[p:], dtype=torch.long)
        mask[b, : n - p] = 1
        for start, end in e.spans:
            for t in range(max(start, 1), end):
                rows.append(b)
                positions.append(t - 1 - p)
                targets.append(e.input_ids[t])
    padding = _round_up(len(targets), ANSWER_MULTIPLE) - len(targets)
    rows += [0] * padding
    positions += [0] * padding
    targets += [IGNORE] * padding
    return Batch(
        input_ids=ids,
        attention_mask=mask,
        rows=torch.tensor(rows, dtype=torch.long),
        positions=torch.tensor(positions, dtype=torch.long),
        targets=torch.tensor(targets, dtype=torch.long),
        real_tokens=sum(len(e.input_ids) for e in examples),
        prefix_ids=torch.tensor([examples[0].input_ids[:p]], dtype=torch.long) if p else None,
    )
