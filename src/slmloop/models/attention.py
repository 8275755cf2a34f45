"""Grouped-query attention with an explicit mask, for answering (label rounds, packed prompt passes).

Transformers' SDPA path repeats every key/value head for the query heads that share it and
then calls one fused kernel per (row, head). With a few queries per row against a long,
padded cache (a label round of 16-32 rows) that kernel runs far below the CPU's matrix
speed. Here the query heads that share a key/value head are stacked into one matrix
product instead, with no copies of the keys, which runs closer to the CPU's matrix speed
for label rounds and, by less, for packed prompt passes.

Only calls with an explicit 4D mask outside training take this path; everything else
(no mask, training, soft-capping, per-head masks) goes through SDPA unchanged.
:func:`answering` switches a model to it for the duration of a call.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

__all__ = ["NAME", "answering", "grouped_attention", "inexact_features", "plain_paths", "shares_prefix"]

NAME = "slmloop_grouped"
_registered = False


def grouped_attention(
    module: Any,
    query: Any,
    key: Any,
    value: Any,
    attention_mask: Any,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[Any, None]:
    """Attention output as (batch, queries, heads, head size), like transformers' attention functions."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    prefix = kwargs.pop("shared_prefix", None)
    if prefix is not None:
        if kwargs.get("softcap") is not None or kwargs.get("sliding_window") is not None:
            raise RuntimeError("shared_prefix needs plain full attention (see shares_prefix)")
        pk, pv = prefix[module.layer_idx]
        return _with_shared_prefix(query, key, value, attention_mask, pk, pv, scaling), None
    mask = attention_mask
    plain = (
        mask is None
        or mask.dim() != 4
        or mask.shape[1] != 1
        or tuple(mask.shape[-2:]) != (query.shape[2], key.shape[2])
        or module.training
        or kwargs.get("softcap") is not None
        or kwargs.get("position_bias") is not None
    )
    if plain:
        return sdpa_attention_forward(module, query, key, value, mask, dropout=dropout, scaling=scaling, **kwargs)
    b, heads, t, d = query.shape
    kv_heads, s = key.shape[1], key.shape[2]
    groups = heads // kv_heads
    scale = scaling if scaling is not None else d**-0.5
    # query heads h*groups .. h*groups+groups-1 read key/value head h (transformers' repeat_kv order)
    scores = torch.matmul(query.reshape(b, kv_heads, groups * t, d), key.transpose(-1, -2)) * scale
    scores = scores.view(b, kv_heads, groups, t, s)
    m = mask[:, :, None]
    if m.dtype == torch.bool:
        scores = scores.masked_fill(~m, torch.finfo(scores.dtype).min)
    else:
        scores = scores + m.to(scores.dtype)
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(value.dtype)
    out = torch.matmul(probs.view(b, kv_heads, groups * t, s), value)
    return out.view(b, heads, t, d).transpose(1, 2).contiguous(), None


def _with_shared_prefix(query: Any, key: Any, value: Any, mask: Any, pk: Any, pv: Any, scaling: float | None) -> Any:
    """Attention over a prefix every row shares (held once) followed by each row's own keys.

    ``key``/``value`` hold the rows' own part only (``mask``, 4D bool or None, covers it); ``pk``/``pv``
    (1, key/value heads, prefix, head size) hold the shared prompt prefix. The prefix scores of all rows
    come from one matrix product per key/value head, and the softmax runs over prefix and own keys
    together: the same result as attention over the two laid end to end in every row, without copying
    the prefix into each row's cache at every decoding step.
    """
    import torch

    b, heads, t, d = query.shape
    kv, s, p = key.shape[1], key.shape[2], pk.shape[2]
    groups = heads // kv
    scale = scaling if scaling is not None else d**-0.5
    q = query.reshape(b, kv, groups * t, d)
    own = torch.matmul(q, key.transpose(-1, -2)) * scale  # (b, kv, groups*t, s)
    if mask is not None:
        m = mask[:, :, None]
        own = own.view(b, kv, groups, t, s)
        if m.dtype == torch.bool:
            own = own.masked_fill(~m, torch.finfo(own.dtype).min)
        else:
            own = own + m.to(own.dtype)
        own = own.view(b, kv, groups * t, s)
    rows_q = q.transpose(0, 1).reshape(kv, b * groups * t, d)
    shared = (torch.matmul(rows_q, pk[0].transpose(-1, -2)) * scale).view(kv, b, groups * t, p).transpose(0, 1)
    probs = torch.softmax(torch.cat([shared, own], dim=-1), dim=-1, dtype=torch.float32).to(value.dtype)
    out = torch.matmul(probs[..., p:], value)  # (b, kv, groups*t, d)
    from_prefix = torch.matmul(probs[..., :p].transpose(0, 1).reshape(kv, b * groups * t, p), pv[0])
    out = out + from_prefix.view(kv, b, groups * t, d).transpose(0, 1)
    return out.view(b, heads, t, d).transpose(1, 2).contiguous()


def _register() -> None:
    global _registered
    if _registered:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, grouped_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    _registered = True


def shares_prefix(model: Any) -> bool:
    """Whether :func:`answering` runs ``model``'s attention here, so a call may pass ``shared_prefix``
    (per layer, the keys and values of a prompt prefix all rows share, kept out of the rows' cache)."""
    config = getattr(model, "config", None)
    if getattr(config, "_attn_implementation", None) not in ("sdpa", NAME):
        return False
    if getattr(config, "attn_logit_softcapping", None) or getattr(config, "is_encoder_decoder", False):
        return False
    # sliding windows and per-layer kinds need their own masks over the prefix
    kinds = getattr(config, "layer_types", None)
    if kinds:
        return all(kind == "full_attention" for kind in kinds)
    return not getattr(config, "sliding_window", None)


def inexact_features(config: Any) -> list[str]:
    """What in ``config``'s architecture slmloop's own answering and training paths do not yet reproduce
    exactly (packed prompt passes and label rounds build their own masks; the answer head reads the LM
    head's logits directly): sliding-window attention and logit soft-capping. Empty: every path is exact."""
    found = []
    kinds = getattr(config, "layer_types", None)
    if kinds:
        if any(kind != "full_attention" for kind in kinds):
            found.append("sliding-window attention")
    elif getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
        found.append("sliding-window attention")
    if getattr(config, "attn_logit_softcapping", None) or getattr(config, "final_logit_softcapping", None):
        found.append("logit soft-capping")
    return found


def plain_paths(model: Any) -> bool:
    """Whether ``model`` is answered through transformers' own masks (a left-padded batch, a 2-D mask)
    instead of slmloop's packed passes, shared prompt prefix and label rounds, because those would not
    reproduce its attention exactly (:func:`inexact_features`)."""
    return bool(inexact_features(getattr(model, "config", None)))


@contextlib.contextmanager
def answering(model: Any) -> Iterator[None]:
    """Run ``model``'s SDPA attention through :func:`grouped_attention` inside the block."""
    config = getattr(model, "config", None)
    if config is None or getattr(config, "_attn_implementation", None) != "sdpa":
        yield
        return
    _register()
    config._attn_implementation = NAME
    try:
        yield
    finally:
        config._attn_implementation = "sdpa"
