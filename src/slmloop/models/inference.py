"""Asking a loaded model: batched greedy generation, and label ranking by likelihood.

Both sort prompts by length so batches carry little padding, and return results
in the caller's order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["generate", "rank_labels"]

Progress = Callable[[int], None]


def _batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def _left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r) :] = 1
    return ids, mask


def _eos_ids(model: PreTrainedModel, tok: PreTrainedTokenizerBase) -> list[int]:
    ids = {tok.eos_token_id}
    gen = getattr(model, "generation_config", None)
    extra = getattr(gen, "eos_token_id", None) if gen is not None else None
    if isinstance(extra, int):
        ids.add(extra)
    elif isinstance(extra, list):
        ids.update(extra)
    return sorted(i for i in ids if i is not None)


def generate(
    model: PreTrainedModel,
    tok: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    batch_size: int = 16,
    temperature: float = 0.0,
    progress: Progress | None = None,
) -> list[tuple[str, int]]:
    """Continuation of each rendered prompt: ``[(text, new_token_count), …]``.

    Greedy unless ``temperature`` > 0, then sampled at that temperature.
    """
    import torch

    encoded = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    out: list[tuple[str, int]] = [("", 0)] * len(prompts)
    eos = _eos_ids(model, tok)
    for batch in _batches([len(e) for e in encoded], batch_size):
        ids, mask = _left_pad([encoded[i] for i in batch], tok.pad_token_id)
        with torch.inference_mode():
            gen = model.generate(
                input_ids=ids.to(model.device),
                attention_mask=mask.to(model.device),
                max_new_tokens=max_new_tokens,
                do_sample=temperature > 0,
                temperature=temperature if temperature > 0 else None,
                top_p=None,
                top_k=None,
                eos_token_id=eos,
                pad_token_id=tok.pad_token_id,
            )
        new = gen[:, ids.shape[1] :]
        for row, i in enumerate(batch):
            tokens = new[row].tolist()
            n = len(tokens)
            for j, t in enumerate(tokens):
                if t in eos:
                    n = j + 1
                    break
            out[i] = (tok.decode(tokens[:n], skip_special_tokens=True).strip(), n)
        if progress:
            progress(len(batch))
    return out


def rank_labels(
    model: PreTrainedModel,
    tok: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    labels: Sequence[str],
    *,
    batch_size: int = 16,
    progress: Progress | None = None,
) -> list[list[float]]:
    """log P(label + EOS | prompt) for every prompt and label.

    The prompt is run once; its KV cache is repeated for every label and the
    label tokens are scored in one more forward pass. Ranking can never give
    an unparseable answer.
    """
    import torch

    eos = tok.eos_token_id
    label_ids = [tok(lab, add_special_tokens=False)["input_ids"] + [eos] for lab in labels]
    k = len(labels)
    longest = max(len(x) for x in label_ids)
    # label continuations (all but the last token are inputs), right-padded
    cont = torch.full((k, longest - 1), tok.pad_token_id, dtype=torch.long)
    cont_mask = torch.zeros((k, longest - 1), dtype=torch.long)
    targets = torch.zeros((k, longest), dtype=torch.long)
    target_mask = torch.zeros((k, longest), dtype=torch.bool)
    for j, ids in enumerate(label_ids):
        cont[j, : len(ids) - 1] = torch.tensor(ids[:-1])
        cont_mask[j, : len(ids) - 1] = 1
        targets[j, : len(ids)] = torch.tensor(ids)
        target_mask[j, : len(ids)] = True

    encoded = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    scores: list[list[float]] = [[] for _ in prompts]
    device = model.device
    for batch in _batches([len(e) for e in encoded], batch_size):
        ids, mask = _left_pad([encoded[i] for i in batch], tok.pad_token_id)
        ids, mask = ids.to(device), mask.to(device)
        b = ids.shape[0]
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.inference_mode():
            out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1)
            first = torch.log_softmax(out.logits[:, -1, :].float(), dim=-1)  # (b, V)
            total = first[:, targets[:, 0].to(device)]  # (b, k)
            if longest > 1:
                cache = out.cache
                cache.batch_repeat_interleave(k)
                c_ids = cont.to(device).repeat(b, 1)  # (b*k, L-1)
                c_mask = cont_mask.to(device).repeat(b, 1)
                full_mask = torch.cat([mask.repeat_interleave(k, dim=0), c_mask], dim=1)
                start = mask.sum(-1).repeat_interleave(k).unsqueeze(1)
                c_pos = start + torch.arange(longest - 1, device=device).unsqueeze(0)
                logits = model(
                    input_ids=c_ids,
                    attention_mask=full_mask,
                    position_ids=c_pos,
                    cache=cache,
                    use_cache=False,
                ).logits.float()
                logp = torch.log_softmax(logits, dim=-1)  # (b*k, L-1, V)
                nxt = targets[:, 1:].to(device).repeat(b, 1)
                picked = logp.gather(-1, nxt.unsqueeze(-1)).squeeze(-1)
                picked = picked * target_mask[:, 1:].to(device).repeat(b, 1)
                total = total + picked.sum(-1).view(b, k)
        for row, i in enumerate(batch):
            scores[i] = total[row].tolist()
        if progress:
            progress(len(batch))
    return scores
