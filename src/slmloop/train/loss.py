"""The training loss: cross-entropy on answer tokens only, the LM head only where it is needed.

:class:`AnswerLoss` wraps the PEFT model (a module, so DDP/FSDP can wrap it): a prompt prefix the
whole batch shares runs once with its keys/values reused by every row; the hidden states below the
lowest adapted layer are kept from the first epoch (:mod:`slmloop.train.frozen`); token-level
distillation adds a teacher's KL term (``train.distill_from``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from slmloop.models.loading import EncodedExample
from slmloop.train.batching import IGNORE, Batch, collate, split_by_tokens
from slmloop.train.frozen import FrozenLayers

__all__ = ["AnswerLoss", "validation_loss"]


class AnswerLoss(torch.nn.Module):
    """Cross-entropy summed over answer tokens; the LM head runs only where needed.

    A module (not a function) so that DDP/FSDP can wrap it: every forward of
    the model goes through this ``forward``.
    """

    teacher: AnswerLoss | None

    def __init__(
        self, peft_model: Any, teacher: AnswerLoss | None = None, kd_alpha: float = 0.5, kd_temperature: float = 2.0
    ) -> None:
        super().__init__()
        self.model = peft_model
        # the teacher of token-level distillation (train.distill_from): frozen, not a submodule of this one
        self.__dict__["teacher"] = teacher
        self.kd_alpha, self.kd_temperature = kd_alpha, kd_temperature
        base = peft_model.get_base_model() if hasattr(peft_model, "get_base_model") else peft_model
        cfg = base.config
        self.decoder: Any = base.get_decoder() if hasattr(base, "get_decoder") else None
        self.head: Any = base.get_output_embeddings()
        special = getattr(cfg, "final_logit_softcapping", None) or getattr(cfg, "logit_scale", None)
        self.fast = self.decoder is not None and self.head is not None and not special
        #: hidden states entering the lowest adapted layer, per training example (set by build())
        self.frozen: FrozenLayers | None = None

    def answer_logits(self, batch: Batch) -> torch.Tensor:
        """Logits (float32) at the positions that predict the answer tokens: one row per answer token."""
        frozen, ids = self.frozen, batch.example_ids
        if frozen is None or ids is None or not self.fast:
            return self._full_logits(batch)
        if frozen.covers(ids):  # every row's frozen layers ran in an earlier pass: start above them
            hidden = frozen.last_hidden(ids, batch.attention_mask, batch.prefix_len)
            return self.head(hidden[batch.rows, batch.positions]).float()
        with frozen.capture(ids, batch.prefix_len):
            return self._full_logits(batch)

    def _full_logits(self, batch: Batch) -> torch.Tensor:
        if batch.prefix_ids is not None and self.fast:
            # the shared prefix runs once; every row's suffix attends to its repeated cache, and
            # gradients flow back through the repeat into the prefix pass
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
            return self.head(hidden[batch.rows, batch.positions]).float()
        if self.fast:
            hidden = self.decoder(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
            return self.head(hidden[batch.rows, batch.positions]).float()
        ids, mask, p = batch.input_ids, batch.attention_mask, batch.prefix_len
        if batch.prefix_ids is not None:  # the whole model's logits (soft-capped): each row gets its prefix back
            b = ids.shape[0]
            ids = torch.cat([batch.prefix_ids.expand(b, -1), ids], dim=1)
            mask = torch.cat([torch.ones((b, p), dtype=mask.dtype, device=mask.device), mask], dim=1)
        out = self.model(input_ids=ids, attention_mask=mask)
        return out.logits[batch.rows, batch.positions + p].float()

    def forward(self, batch: Batch) -> tuple[torch.Tensor, int]:
        logits = self.answer_logits(batch)
        loss = F.cross_entropy(logits, batch.targets, reduction="sum")
        if self.teacher is not None and self.training:  # validation loss stays the plain cross-entropy
            loss = (1.0 - self.kd_alpha) * loss + self.kd_alpha * self._kd(logits, batch)
        return loss, batch.answer_tokens

    def _kd(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Token-level distillation: T² · KL(teacher ‖ student) at temperature T, summed over answer tokens."""
        assert self.teacher is not None
        t = self.kd_temperature
        real = batch.targets != IGNORE  # answer counts are rounded up with ignored positions
        with torch.no_grad():
            target = F.log_softmax(self.teacher.answer_logits(batch)[real] / t, dim=-1)
        mine = F.log_softmax(logits[real] / t, dim=-1)
        return F.kl_div(mine, target, log_target=True, reduction="sum") * t * t


def validation_loss(
    loss_fn: Any, examples: list[EncodedExample], pad_id: int, max_tokens: int, device: Any, share_prefix: bool = True
) -> float | None:
    """Mean cross-entropy per answer token over ``examples`` (no gradients)."""

    if not examples:
        return None
    lengths = [len(e.input_ids) for e in examples]
    total, tokens = 0.0, 0
    was_training = loss_fn.training
    loss_fn.eval()
    with torch.no_grad():
        for chunk in split_by_tokens(list(range(len(examples))), lengths, max_tokens):
            loss, n = loss_fn(collate([examples[j] for j in chunk], pad_id, share_prefix=share_prefix).to(device))
            total += float(loss)
            tokens += n
    loss_fn.train(was_training)
    return total / max(tokens, 1)
