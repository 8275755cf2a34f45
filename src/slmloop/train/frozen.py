"""Frozen lower layers, run once per example instead of once per epoch.

When LoRA adapts only the top layers (``train.lora_layers``), the layers below the
lowest adapted one never change: the hidden state a training row carries into the
lowest adapted layer is the same in every epoch. :class:`FrozenLayers` keeps it,
captured for free while the first epoch runs the whole model, and later passes of
the same row start at the lowest adapted layer. With the default recipe (top 15 of
30 layers) a step from the second epoch on skips the forward pass of the bottom
half: about a third of its work (the backward pass already stopped there).

The maths is the model's own: the upper layers get the same inputs, positions and
causal mask (shared prompt prefixes too), so the loss and gradients equal the full
pass up to the rounding of the kernels (tested). Only decoders of the common shape
qualify (token embeddings, a stack of ``layers`` under one rotary embedding, a final
``norm``, full attention in every layer), and only while the cache fits its memory
budget; anything else trains the plain way.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch

__all__ = ["MEMORY_SHARE", "FrozenLayers", "frozen_layers_for"]

#: share of the memory available at the start that the cache may take
MEMORY_SHARE = 0.15


def _qualifies(decoder: Any, start: int) -> bool:
    cfg = getattr(decoder, "config", None)
    layers = getattr(decoder, "layers", None)
    if cfg is None or layers is None or not 0 < start < len(layers):
        return False
    if not all(hasattr(decoder, name) for name in ("embed_tokens", "rotary_emb", "norm")):
        return False
    if any(kind != "full_attention" for kind in getattr(cfg, "layer_types", None) or []):
        return False  # sliding windows and per-layer rotary need their own masks
    return not getattr(cfg, "attention_dropout", 0.0)  # the frozen layers must be deterministic


def frozen_layers_for(
    peft_model: Any, decoder: Any, lora: dict[str, Any], budget_bytes: int, lengths: Sequence[int]
) -> FrozenLayers | None:
    """A cache for the layers below the lowest adapted one, or None when it does not apply or fit.

    ``lengths``: the tokens of every training example (prefix included), in their order.
    """
    layers = lora.get("layers_to_transform")
    if not layers or decoder is None:
        return None
    start = min(layers)
    if not _qualifies(decoder, start):
        return None
    # nothing below ``start`` may train (an adapted embedding or lower layer would change the inputs)
    for name, p in peft_model.named_parameters():
        if p.requires_grad and ("embed_tokens" in name or any(f".layers.{i}." in name for i in range(start))):
            return None
    frozen = FrozenLayers(decoder, start, lengths)
    return frozen if frozen.capacity_bytes <= budget_bytes else None


class FrozenLayers:
    """Per training example, the hidden states entering layer ``start`` (in the dtype the model runs).

    They live in one buffer, allocated at the first capture, each example at a fixed offset: thousands
    of separately allocated rows fragment the heap, and the process holds far more memory than the
    states themselves take.
    """

    def __init__(self, decoder: Any, start: int, lengths: Sequence[int]) -> None:
        self.decoder = decoder
        self.start = start
        self.lengths = list(lengths)
        self.offsets = [0]
        for n in self.lengths:
            self.offsets.append(self.offsets[-1] + n)
        self.hidden = int(decoder.config.hidden_size)
        self.capacity_bytes = self.offsets[-1] * self.hidden * decoder.embed_tokens.weight.element_size()
        self.buffer: torch.Tensor | None = None
        self.kept = [False] * len(self.lengths)
        self.skipped = 0  # example passes that started at ``start`` (a count for the tests and the trace)

    @property
    def held_bytes(self) -> int:
        if self.buffer is None:
            return 0
        rows = sum(n for n, k in zip(self.lengths, self.kept, strict=True) if k)
        return rows * self.hidden * self.buffer.element_size()

    def covers(self, ids: Sequence[int]) -> bool:
        return all(self.kept[i] for i in ids)

    def forget(self, i: int) -> None:
        self.kept[i] = False

    def state(self, i: int) -> torch.Tensor:
        assert self.buffer is not None and self.kept[i]
        return self.buffer[self.offsets[i] : self.offsets[i + 1]]

    @contextlib.contextmanager
    def capture(self, ids: Sequence[int], prefix_len: int) -> Iterator[None]:
        """Record, for training examples ``ids``, what enters layer ``start`` during the block.

        The block runs the decoder once (no shared prefix) or twice (the prefix, then the suffixes).
        """
        seen: list[torch.Tensor] = []

        def hook(_module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            seen.append((args[0] if args else kwargs["hidden_states"]).detach())

        handle = self.decoder.layers[self.start].register_forward_pre_hook(hook, with_kwargs=True)
        try:
            yield
        finally:
            handle.remove()
        if len(seen) != (2 if prefix_len else 1):
            return  # not the pass this cache understands: keep nothing
        prefix, rows = (seen[0][0], seen[1]) if prefix_len else (None, seen[0])
        if self.buffer is None:
            self.buffer = torch.empty((self.offsets[-1], self.hidden), dtype=rows.dtype, device=rows.device)
        p = prefix_len
        for b, i in enumerate(ids):
            at, n = self.offsets[i], self.lengths[i]
            if prefix is not None:
                self.buffer[at : at + p] = prefix
            self.buffer[at + p : at + n] = rows[b, : n - p]
            self.kept[i] = True

    def last_hidden(self, ids: Sequence[int], attention_mask: torch.Tensor, prefix_len: int) -> torch.Tensor:
        """The last hidden states (after the final norm) of a batch whose examples are all cached.

        ``attention_mask`` (B, T): the suffix tokens of each row (right-padded), as the batch holds them.
        """
        states = [self.state(i) for i in ids]
        b, t = attention_mask.shape
        p = prefix_len
        rows = states[0].new_zeros((b, t, states[0].shape[-1]))
        for k, s in enumerate(states):
            rows[k, : s.shape[0] - p] = s[p:]
        self.skipped += b
        device = rows.device
        keys = attention_mask.bool()
        causal = torch.ones((t, t), dtype=torch.bool, device=device).tril()
        allowed = causal.unsqueeze(0) & keys.unsqueeze(1)  # (B, T, T)
        cache = None
        if p:
            from transformers import DynamicCache

            cache = DynamicCache(config=self.decoder.config)
            prefix_mask = torch.ones((p, p), dtype=torch.bool, device=device).tril()
            self._upper(
                states[0][:p].unsqueeze(0), torch.arange(p, device=device).unsqueeze(0), prefix_mask[None], cache
            )
            cache.batch_repeat_interleave(b)
            allowed = torch.cat([torch.ones((b, t, p), dtype=torch.bool, device=device), allowed], dim=2)
        positions = torch.arange(p, p + t, device=device).unsqueeze(0).expand(b, t)
        return self._upper(rows, positions, allowed, cache)

    def _upper(self, hidden: torch.Tensor, positions: torch.Tensor, allowed: torch.Tensor, cache: Any) -> torch.Tensor:
        """Layers ``start`` and above, then the final norm; ``allowed`` (B, Q, K) which keys each query sees."""
        mask = torch.zeros(allowed.shape, dtype=hidden.dtype, device=hidden.device)
        mask = mask.masked_fill(~allowed, torch.finfo(hidden.dtype).min).unsqueeze(1)  # additive, (B, 1, Q, K)
        rotary = self.decoder.rotary_emb(hidden, position_ids=positions)
        for layer in self.decoder.layers[self.start :]:
            hidden = layer(
                hidden,
                attention_mask=mask,
                position_embeddings=rotary,
                position_ids=positions,
                cache=cache,
                use_cache=cache is not None,
            )
        return self.decoder.norm(hidden)
