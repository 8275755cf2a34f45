"""Asking a loaded model: batched greedy generation, and label ranking by likelihood.

Both sort prompts by length so batches carry little padding, and return results
in the caller's order.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "APART_MIN_PREFIX",
    "ROUND_WIDTH",
    "JsonObjectEnd",
    "common_prefix",
    "continuation_logprobs",
    "generate",
    "left_pad",
    "prefix_cache",
    "rank_labels",
    "shared_prefix",
    "start_batch",
    "token_texts",
]

Progress = Callable[[int], None]


def _batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
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
    max_new_tokens: int | Sequence[int],
    batch_size: int = 16,
    temperature: float | Sequence[float] = 0.0,
    seed: int = 0,
    progress: Progress | None = None,
    on_token: Callable[[int, int], None] | None = None,
    json_object: bool = False,
    stop: Callable[[int], bool] | None = None,
    constraints: Sequence[Any] | None = None,
) -> list[tuple[str, int]]:
    """Continuation of each rendered prompt: ``[(text, new_token_count), …]``.

    ``max_new_tokens`` and ``temperature`` are one for all prompts or one per prompt: rows that
    ask for different budgets or temperatures share a batch, and each leaves it at its own budget.
    ``on_token(i, token_id)`` is called for every new token of prompt ``i`` as it is
    chosen (streaming); the end-of-sequence token is not passed. ``stop(i)`` True: nobody waits
    for prompt ``i`` any more (its client left); it leaves the batch at the next step.
    ``constraints``: one per prompt, each with ``allowed()`` (a bool per token id: may it come next?)
    and ``feed(token)`` (True once the answer is complete): a grammar the answer must follow
    (:mod:`slmloop.predict.constrain`); it replaces ``json_object``'s rule.

    ``json_object``: the answer is a JSON object (extraction). Its first token must open
    one (``{``, ``{"``, ``{}``), and a row is done when that object closes. A fine-tuned
    extractor answers the same either way (it opens the object and stops after it); a
    zero-shot model answers in the shape the task asks instead of prose, and stops
    there instead of running to ``max_new_tokens``.

    A row is greedy unless its ``temperature`` > 0, then sampled at that temperature. The prompt
    prefix all prompts share runs once; a row that has produced its end-of-sequence
    token leaves the batch, so a batch costs what its rows need, not its longest row
    times its size.
    """
    import torch

    encoded = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    out: list[tuple[str, int]] = [("", 0)] * len(prompts)
    eos = set(_eos_ids(model, tok))
    shared, prefix_kv = shared_prefix(model, encoded)
    rng = torch.Generator().manual_seed(seed)
    texts = token_texts(tok) if json_object else None
    opens = JsonObjectEnd.opens(texts) if texts is not None else None
    if opens is not None and not any(opens):
        opens = None  # a vocabulary without "{": the first token stays free
    if constraints is not None:
        texts, opens = None, None  # the grammar opens and closes the object
    limits = [max_new_tokens] * len(prompts) if isinstance(max_new_tokens, int) else list(max_new_tokens)
    temps = [float(temperature)] * len(prompts) if isinstance(temperature, int | float) else list(temperature)
    for batch in _batches([len(e) for e in encoded], batch_size):
        emit = (lambda r, t, batch=batch: on_token(batch[r], t)) if on_token is not None else None
        left = (lambda r, batch=batch: stop(batch[r])) if stop is not None else None
        tokens = _decode_batch(
            model,
            [encoded[i][shared:] for i in batch],
            prefix_kv,
            shared,
            [limits[i] for i in batch],
            [temps[i] for i in batch],
            eos,
            rng,
            emit,
            [JsonObjectEnd(texts) for _ in batch] if texts is not None else None,
            opens,
            left,
            [constraints[i] for i in batch] if constraints is not None else None,
        )
        for i, new in zip(batch, tokens, strict=True):
            out[i] = (str(tok.decode(new, skip_special_tokens=True)).strip(), len(new))
        if progress:
            progress(len(batch))
    return out


_TOKEN_TEXTS: weakref.WeakKeyDictionary[Any, list[str]] = weakref.WeakKeyDictionary()


def token_texts(tok: PreTrainedTokenizerBase) -> list[str]:
    """The text of every token id on its own (decoded once per tokenizer and kept)."""
    texts = _TOKEN_TEXTS.get(tok)
    if texts is None:
        texts = [str(t) for t in tok.batch_decode([[i] for i in range(len(tok))])]
        _TOKEN_TEXTS[tok] = texts
    return texts


class JsonObjectEnd:
    """Follows one generated answer token by token and says when its first JSON object has closed.

    Braces are counted outside strings only (``{"a": "}"}`` closes at its last brace); text
    before the object (prose, a code fence) is skipped.
    """

    def __init__(self, texts: list[str]) -> None:
        self.texts = texts
        self.depth = 0
        self.in_string = self.escaped = False

    @staticmethod
    def opens(texts: list[str]) -> list[bool]:
        """Which tokens may start an answer that is a JSON object: ``{``, ``{"``, ``{}`` (spaces around allowed)."""
        return [t.strip() in ("{", "{}", '{"') for t in texts]

    def feed(self, token: int) -> bool:
        """Take the next token; True once the object is complete."""
        text = self.texts[token] if 0 <= token < len(self.texts) else ""
        for ch in text:
            if self.in_string:
                if self.escaped:
                    self.escaped = False
                elif ch == "\\":
                    self.escaped = True
                elif ch == '"':
                    self.in_string = False
            elif ch == '"':
                self.in_string = self.depth > 0
            elif ch == "{":
                self.depth += 1
            elif ch == "}" and self.depth:
                self.depth -= 1
                if not self.depth:
                    return True
        return False


def shared_prefix(
    model: PreTrainedModel, encoded: Sequence[Sequence[int]]
) -> tuple[int, list[tuple[torch.Tensor, torch.Tensor]] | None]:
    """(length, keys and values) of the prompt prefix all ``encoded`` prompts share, run once; (0, None) when
    there is none worth sharing or the model is on transformers' plain paths (which take no shared prefix)."""
    from slmloop.models.attention import plain_paths

    shared = 0 if plain_paths(model) else common_prefix(encoded)
    return shared, prefix_cache(model, list(encoded[0][:shared])) if shared else None


def prefix_cache(model: PreTrainedModel, prefix: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Keys and values of the prompt prefix every row shares, computed once."""
    import torch

    with torch.inference_mode():
        out = model(input_ids=torch.tensor([prefix], device=model.device), use_cache=True, logits_to_keep=1)
    return [(k, v) for k, v, *_ in _cache_of(out)]


#: shortest shared prefix that is kept apart from the rows' cache: a long prefix (a zero-shot prompt with
#: many JSON keys) decodes faster apart, while for a short one (a compact prompt) the extra matrix products
#: cost more than they save
APART_MIN_PREFIX = 128

#: most prompt tokens one packed forward pass carries (attention over a packed pass grows with its square)
PACK_TOKENS = 256


def start_batch(
    model: PreTrainedModel,
    suffixes: list[list[int]],
    prefix_kv: list[tuple[torch.Tensor, torch.Tensor]] | None,
    shared: int,
    keep_prefix_apart: bool = False,
) -> tuple[Any, Any, torch.Tensor]:
    """Run a batch of prompts after the shared prefix: (last hidden state per row, cache, attention mask).

    ``keep_prefix_apart``: the cache and the mask hold the rows' own tokens only; the caller passes
    ``prefix_kv`` as ``shared_prefix`` to later passes (see :mod:`slmloop.models.attention`).

    The prompts run packed, no padding: a few rows' tokens form one sequence in which each
    token attends to the prefix and to its own row only, with the positions it would have
    alone. Prompts of mixed lengths (a server's group of requests) cost their tokens, not
    their longest times their number. The keys and values are then laid out per row,
    left-padded, for the steps that follow (label rounds, decoding) and ``mask`` marks them.
    """
    import torch
    from transformers import DynamicCache

    from slmloop.models.attention import plain_paths

    device = model.device
    b = len(suffixes)
    lengths = [len(s) for s in suffixes]
    width = max(lengths)
    head = _Head(model)
    if plain_paths(model):  # one left-padded pass: the model builds its own masks (sliding windows)
        if prefix_kv is not None:
            raise ValueError("a model on transformers' plain paths takes no shared prefix (see plain_paths)")
        ids, mask = left_pad(suffixes, 0)
        ids, mask = ids.to(device), mask.to(device)
        with torch.inference_mode():
            hidden, cache = head.run(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(0))
        return hidden[:, -1], cache, mask
    layers: list[tuple[torch.Tensor, torch.Tensor]] = []
    last: list[torch.Tensor] = []
    for chunk in _pack(lengths, PACK_TOKENS):
        hidden, cache = _packed_pass(model, head, [suffixes[i] for i in chunk], prefix_kv, shared)
        sizes = [lengths[i] for i in chunk]
        ends = torch.tensor(sizes).cumsum(0) - 1
        last.append(hidden[0, ends.to(device)])
        # where each row's key/value sits in the packed pass (padding repeats the row's first: masked)
        source = torch.zeros((len(chunk), width), dtype=torch.long)
        offset = shared
        for j, n in enumerate(sizes):
            source[j, : width - n] = offset
            source[j, width - n :] = torch.arange(offset, offset + n)
            offset += n
        source = source.to(device)
        for layer, (k, v, *_) in enumerate(cache):
            rows_k, rows_v = (t[0][:, source].transpose(0, 1) for t in (k, v))
            if layer == len(layers):
                layers.append((rows_k.new_empty((b, *rows_k.shape[1:])), rows_v.new_empty((b, *rows_v.shape[1:]))))
            layers[layer][0][chunk[0] : chunk[-1] + 1] = rows_k
            layers[layer][1][chunk[0] : chunk[-1] + 1] = rows_v
    if keep_prefix_apart:
        shared = 0
    elif prefix_kv is not None:
        layers = [
            (torch.cat([pk.expand(b, -1, -1, -1), k], dim=2), torch.cat([pv.expand(b, -1, -1, -1), v], dim=2))
            for (pk, pv), (k, v) in zip(prefix_kv, layers, strict=True)
        ]
    mask = torch.zeros((b, shared + width), dtype=torch.long, device=device)
    mask[:, :shared] = 1
    for i, n in enumerate(lengths):
        mask[i, shared + width - n :] = 1
    return torch.cat(last), DynamicCache(ddp_cache_data=layers), mask


def _prefix_apart(model: PreTrainedModel, prefix_kv: Any, shared: int) -> bool:
    """Whether passes after :func:`start_batch` keep the shared prefix out of the rows' cache."""
    from slmloop.models.attention import shares_prefix

    return prefix_kv is not None and shared >= APART_MIN_PREFIX and shares_prefix(model)


def _pack(lengths: Sequence[int], budget: int) -> list[list[int]]:
    """Consecutive rows grouped into passes of at most ``budget`` tokens (a longer row runs alone)."""
    chunks: list[list[int]] = []
    used = budget
    for i, n in enumerate(lengths):
        if used + n > budget:
            chunks.append([])
            used = 0
        chunks[-1].append(i)
        used += n
    return chunks


def _packed_pass(
    model: PreTrainedModel,
    head: _Head,
    rows: list[list[int]],
    prefix_kv: list[tuple[torch.Tensor, torch.Tensor]] | None,
    shared: int,
) -> tuple[Any, Any]:
    """One forward pass over ``rows`` laid end to end after the prefix: (hidden states, cache)."""
    import torch
    from transformers import DynamicCache

    device = model.device
    total = sum(len(r) for r in rows)
    ids = torch.tensor([[t for r in rows for t in r]], dtype=torch.long, device=device)
    pos = torch.cat([torch.arange(shared, shared + len(r)) for r in rows])[None].to(device)
    cache = DynamicCache(ddp_cache_data=list(prefix_kv)) if prefix_kv is not None else DynamicCache()
    if len(rows) == 1:  # plain causal attention: the fast path
        with torch.inference_mode():
            return head.run(input_ids=ids, position_ids=pos, cache=cache)
    allowed = torch.zeros((total, shared + total), dtype=torch.bool)
    allowed[:, :shared] = True
    start = 0
    for r in rows:
        n = len(r)
        allowed[start : start + n, shared + start : shared + start + n] = torch.ones((n, n), dtype=torch.bool).tril()
        start += n
    dtype = model.dtype if model.dtype.is_floating_point else torch.float32
    bias = torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)
    with torch.inference_mode():
        return head.run(input_ids=ids, attention_mask=bias[None, None].to(device), position_ids=pos, cache=cache)


def _decode_batch(
    model: PreTrainedModel,
    suffixes: list[list[int]],
    prefix_kv: list[tuple[torch.Tensor, torch.Tensor]] | None,
    shared: int,
    limits: list[int],
    temperatures: list[float],
    eos: set[int],
    rng: torch.Generator,
    emit: Callable[[int, int], None] | None = None,
    ends: list[JsonObjectEnd] | None = None,
    opens: list[bool] | None = None,
    stop: Callable[[int], bool] | None = None,
    rules: list[Any] | None = None,
) -> list[list[int]]:
    """New tokens per row, each row at most its ``limits`` tokens, greedy or sampled at its temperature.
    ``ends``: a JSON tracker per row (a row is done when its object closes); ``opens``: per token id,
    whether a first token may be it; ``stop(row)``: the row is no longer wanted; ``rules``: a grammar per
    row (see :func:`generate`'s ``constraints``)."""
    import numpy as np
    import torch

    head = _Head(model)
    # the prefix's keys stay out of the rows' cache: no step copies or reads them once per row
    apart = _prefix_apart(model, prefix_kv, shared)
    last, cache, mask = start_batch(model, suffixes, prefix_kv, shared, keep_prefix_apart=apart)
    extra: dict[str, Any] = {"shared_prefix": prefix_kv} if apart else {}
    offset = shared if apart else 0
    new: list[list[int]] = [[] for _ in suffixes]
    active = [r for r in range(len(suffixes)) if limits[r] > 0 and not (stop is not None and stop(r))]
    longest = max((limits[r] for r in active), default=0)
    for step in range(longest):
        if not active:
            break
        with torch.inference_mode():
            logp = head.log_probs(last)
            if step == 0 and opens is not None:
                n = min(len(opens), logp.shape[-1])
                allowed = torch.zeros(logp.shape[-1], dtype=torch.bool, device=logp.device)
                allowed[:n] = torch.tensor(opens[:n], device=logp.device)
                logp = logp.masked_fill(~allowed, -math.inf)
            if rules is not None:  # each row's grammar: only what keeps its answer inside it
                fits = np.zeros(logp.shape, dtype=bool)
                for i, r in enumerate(active):
                    ok = rules[r].allowed()
                    fits[i, : min(len(ok), logp.shape[-1])] = ok[: logp.shape[-1]]
                logp = logp.masked_fill(~torch.from_numpy(fits).to(logp.device), -math.inf)
            picked = logp.argmax(dim=-1).tolist()
            hot = [i for i, r in enumerate(active) if temperatures[r] > 0]
            if hot:
                temps = torch.tensor([temperatures[active[i]] for i in hot], device=logp.device)[:, None]
                probs = torch.softmax(logp[hot] / temps, dim=-1).float().cpu()
                for i, t in zip(hot, torch.multinomial(probs, 1, generator=rng).squeeze(-1).tolist(), strict=True):
                    picked[i] = t
        keep = []
        for i, (r, t) in enumerate(zip(active, picked, strict=True)):
            new[r].append(t)
            if t not in eos:
                if emit is not None:
                    emit(r, t)
                done = (ends is not None and ends[r].feed(t)) or (rules is not None and rules[r].feed(t))
                if not done and len(new[r]) < limits[r] and not (stop is not None and stop(r)):
                    keep.append(i)
        if not keep:
            break
        if len(keep) < len(active):  # finished rows leave the batch
            index = torch.tensor(keep, device=model.device)
            cache.batch_select_indices(index)
            mask = mask[index]
        active = [active[i] for i in keep]
        step_ids = torch.tensor([[new[r][-1]] for r in active], device=model.device)
        mask = torch.cat([mask, torch.ones((len(active), 1), dtype=mask.dtype, device=model.device)], dim=1)
        pos = (mask.sum(-1, keepdim=True) - 1 + offset).to(torch.long)
        step_mask = mask.bool()[:, None, None, :] if apart else mask
        with torch.inference_mode():
            hidden, cache = head.run(
                input_ids=step_ids, attention_mask=step_mask, position_ids=pos, cache=cache, **extra
            )
        last = hidden[:, -1]
    return new


@dataclass
class _Trie:
    """Label token sequences (each ending in EOS) as a prefix tree; node 0 is the root."""

    token: list[int]
    parent: list[int]
    depth: list[int]
    children: list[list[int]]
    label_of: dict[int, int]  # leaf (an EOS node) -> label index

    @classmethod
    def build(cls, sequences: Sequence[Sequence[int]]) -> _Trie:
        t = cls([-1], [-1], [0], [[]], {})
        index: dict[tuple[int, int], int] = {}
        for j, seq in enumerate(sequences):
            node = 0
            for tok in seq:
                child = index.get((node, tok))
                if child is None:
                    child = len(t.token)
                    index[(node, tok)] = child
                    t.token.append(tok)
                    t.parent.append(node)
                    t.depth.append(t.depth[node] + 1)
                    t.children.append([])
                    t.children[node].append(child)
                node = child
            t.label_of[node] = j
        return t

    def path(self, node: int) -> list[int]:
        """Nodes from depth 1 down to ``node``."""
        out = []
        while node > 0:
            out.append(node)
            node = self.parent[node]
        return out[::-1]


#: label-tree nodes a prompt expands per forward pass at most (more wait a round: less padding); chosen by
#: timing gold evaluations of HWU64 intents, fine-tuned and base: wider rounds pad more than they save,
#: narrower ones save nothing
ROUND_WIDTH = 4


def _cache_of(out: Any) -> Any:
    return out.cache if getattr(out, "cache", None) is not None else out.past_key_values


class _Head:
    """Hidden states from the decoder, and full-vocabulary log-probabilities only where asked.

    The LM head runs on the gathered positions alone, in chunks (a (positions × vocabulary)
    float matrix for every padded position would cost more than the decoder itself).
    Models whose logits are post-processed (soft-capping, scaling) go through the whole model.
    """

    CHUNK = 256

    def __init__(self, model: Any) -> None:
        self.model = model
        cfg = model.config
        special = getattr(cfg, "final_logit_softcapping", None) or getattr(cfg, "logit_scale", None)
        self.decoder: Any = model.get_decoder() if hasattr(model, "get_decoder") else None
        self.out: Any = model.get_output_embeddings()
        self.split = self.decoder is not None and self.out is not None and not special

    def run(self, **kw: Any) -> tuple[Any, Any]:
        from slmloop.models.attention import answering

        with answering(self.model):
            if self.split:
                out = self.decoder(use_cache=True, **kw)
                return out.last_hidden_state, _cache_of(out)
            out = self.model(use_cache=True, **kw)
        return out.logits, _cache_of(out)  # logits stand in for hidden states: log_probs takes either

    def log_probs(self, hidden: Any) -> Any:
        import torch

        if not self.split:  # ``hidden`` already holds logits
            return torch.log_softmax(hidden, dim=-1, dtype=torch.float32)
        return torch.cat(
            [
                torch.log_softmax(self.out(hidden[i : i + self.CHUNK]), dim=-1, dtype=torch.float32)
                for i in range(0, hidden.shape[0], self.CHUNK)
            ]
        )


def common_prefix(encoded: Sequence[Sequence[int]]) -> int:
    """Longest token prefix all prompts share, kept strictly inside the shortest."""
    if len(encoded) < 2:
        return 0
    first = encoded[0]
    limit = min(len(e) for e in encoded) - 1
    n = 0
    while n < limit and all(e[n] == first[n] for e in encoded):
        n += 1
    return n if n >= 8 else 0


def rank_labels(
    model: PreTrainedModel,
    tok: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    labels: Sequence[str],
    *,
    batch_size: int = 16,
    margin: float | None = 12.0,
    progress: Progress | None = None,
) -> list[list[float | None]]:
    """log P(label + EOS | prompt) for every prompt and label, with the full-vocabulary softmax.

    - The prompt prefix all prompts share (system message, label list) runs once; each batch
      continues from a copy of its keys/values.
    - Labels are scored through a prefix tree of their tokens: a token sequence two labels share
      ("alarm_" in alarm_set / alarm_query) is run once per prompt, as one more position of the
      prompt's sequence whose attention mask lets it see the prompt and its own ancestors only.
    - Expansion is best first, a few tree levels per forward pass. A label whose prefix already
      scores ``margin`` nats below the best complete label can no longer come within ``margin``
      of it (log-probabilities only fall along a path), so it is not scored further: its score is
      None (probability below e^-margin of the top label's). ``margin=None`` scores every label.

    A model on transformers' plain paths (:func:`~slmloop.models.attention.plain_paths`) scores each
    prompt and label as one sequence instead, every label to the end.

    The ranking can never give an unparseable answer.
    """
    from slmloop.models.attention import plain_paths

    eos = tok.eos_token_id
    label_ids = [tok(lab, add_special_tokens=False)["input_ids"] + [eos] for lab in labels]
    encoded = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    if plain_paths(model):
        return _each_label_alone(model, tok, encoded, label_ids, batch_size, progress)
    trie = _Trie.build(label_ids)
    shared, prefix_kv = shared_prefix(model, encoded)
    limit = math.inf if margin is None else margin
    scores: list[list[float | None]] = [[None] * len(labels) for _ in prompts]
    for batch in _batches([len(e) for e in encoded], batch_size):
        rows = _score_batch(model, tok, [encoded[i][shared:] for i in batch], trie, prefix_kv, shared, limit)
        for i, row in zip(batch, rows, strict=True):
            scores[i] = row
        if progress:
            progress(len(batch))
    return scores


def _each_label_alone(
    model: PreTrainedModel,
    tok: PreTrainedTokenizerBase,
    encoded: list[list[int]],
    label_ids: list[list[int]],
    batch_size: int,
    progress: Progress | None,
) -> list[list[float | None]]:
    """log P(label + EOS | prompt) of every label, each prompt + label run as its own sequence."""
    scores: list[list[float | None]] = [[] for _ in encoded]
    n = len(label_ids)
    for batch in _batches([len(e) for e in encoded], batch_size):
        sequences = [(encoded[i] + lab, len(encoded[i])) for i in batch for lab in label_ids]
        got = _sequence_logprobs(model, tok, sequences, batch_size)
        for k, i in enumerate(batch):
            scores[i] = [lp for lp, _ in got[k * n : (k + 1) * n]]
        if progress:
            progress(len(batch))
    return scores


def _score_batch(
    model: PreTrainedModel,
    tok: PreTrainedTokenizerBase,
    suffixes: list[list[int]],
    trie: _Trie,
    prefix_kv: list[tuple[torch.Tensor, torch.Tensor]] | None,
    shared: int,
    margin: float,
) -> list[list[float | None]]:
    import torch

    device = model.device
    b = len(suffixes)
    head = _Head(model)
    # the prefix's keys stay out of the rows' cache (as in decoding): rounds attend to it once per head
    apart = _prefix_apart(model, prefix_kv, shared)
    last, cache, mask = start_batch(model, suffixes, prefix_kv, shared, keep_prefix_apart=apart)
    extra: dict[str, Any] = {"shared_prefix": prefix_kv} if apart else {}
    with torch.inference_mode():
        first = head.log_probs(last)
    seen = mask.bool().cpu()  # keys every label position may attend to: the prompt, without padding
    prompt_len = (mask.sum(-1) + (shared if apart else 0)).tolist()  # position of the first label token
    roots = trie.children[0]
    cum = [dict(zip(roots, first[r, [trie.token[c] for c in roots]].tolist(), strict=True)) for r in range(b)]
    frontier = [{n for n in trie.children[0] if n not in trie.label_of} for _ in range(b)]
    best = [max((cum[r][n] for n in trie.children[0] if n in trie.label_of), default=-math.inf) for r in range(b)]
    slot: list[dict[int, int]] = [{} for _ in range(b)]  # node -> its cache position, per row
    active = list(range(b))  # the prompt row behind each row of the cache
    while True:
        ranked: dict[int, list[int]] = {}
        for r in active:
            # prune for good what cannot reach within ``margin`` of the best complete label
            frontier[r] = {n for n in frontier[r] if cum[r][n] >= best[r] - margin}
            if not frontier[r]:
                continue
            top = max(cum[r][n] for n in frontier[r])
            bar = best[r] - margin if best[r] > -math.inf else top - margin
            scores = cum[r]
            ranked[r] = sorted((n for n in frontier[r] if scores[n] >= bar), key=scores.__getitem__, reverse=True)
        if not ranked:
            break
        # a round is as wide as most rows need (at least ROUND_WIDTH): rows with more candidates
        # expand their best ones now and the rest next round, so a few busy rows do not pad the batch
        counts = sorted(len(v) for v in ranked.values())
        cap = max(ROUND_WIDTH, counts[(3 * len(counts)) // 4])
        chosen = {r: sorted(v[:cap]) for r, v in ranked.items()}
        if len(chosen) < len(active):  # rows that are done leave the batch (and its padding)
            keep = [i for i, r in enumerate(active) if r in chosen]
            cache.batch_select_indices(torch.tensor(keep, device=device))
            seen = seen[keep]
            active = [active[i] for i in keep]
        width = max(len(chosen[r]) for r in active)
        rows = len(active)
        total = cache.get_seq_length()
        q_ids = torch.full((rows, width), tok.pad_token_id, dtype=torch.long)
        q_pos = torch.zeros((rows, width), dtype=torch.long)
        allowed = torch.zeros((rows, width, total + width), dtype=torch.bool)
        allowed[:, :, :total] = seen[:, None, :total]
        for i, r in enumerate(active):
            for q, n in enumerate(chosen[r]):
                q_ids[i, q] = trie.token[n]
                q_pos[i, q] = prompt_len[r] + trie.depth[n] - 1
                for a in trie.path(n)[:-1]:
                    allowed[i, q, slot[r][a]] = True
                slot[r][n] = total + q
            for q in range(width):
                allowed[i, q, total + q] = True
        seen = torch.cat([seen, torch.zeros((rows, width), dtype=torch.bool)], dim=1)
        dtype = model.dtype if model.dtype.is_floating_point else torch.float32
        bias = torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)
        where = [(i, q) for i, r in enumerate(active) for q in range(len(chosen[r]))]
        with torch.inference_mode():
            hidden, cache = head.run(
                input_ids=q_ids.to(device),
                attention_mask=bias[:, None].to(device),
                position_ids=q_pos.to(device),
                cache=cache,
                **extra,
            )
            rr, qq = zip(*where, strict=True)
            logp = head.log_probs(hidden[list(rr), list(qq)])
        k = 0
        for r in active:
            for n in chosen[r]:
                frontier[r].discard(n)
                kids = trie.children[n]
                values = logp[k, [trie.token[c] for c in kids]].tolist()
                k += 1
                for c, v in zip(kids, values, strict=True):
                    cum[r][c] = cum[r][n] + v
                    if c in trie.label_of:
                        best[r] = max(best[r], cum[r][c])
                    else:
                        frontier[r].add(c)
    results: list[list[float | None]] = []
    for r in range(b):
        row: list[float | None] = [None] * len(trie.label_of)
        for leaf, j in trie.label_of.items():
            if leaf in cum[r]:  # scored to the end: exact
                row[j] = cum[r][leaf]
        results.append(row)
    return results


def continuation_logprobs(
    model: PreTrainedModel,
    tok: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    continuations: Sequence[str],
    *,
    batch_size: int = 16,
    progress: Progress | None = None,
) -> list[tuple[float, int]]:
    """(summed log-probability, tokens) of each continuation after its prompt, in the caller's order.

    The LM head runs only at the positions that predict a continuation token (a full-vocabulary
    matrix for every padded position of a batch would cost more memory and time than the decoder).
    """
    encoded = []
    for p, c in zip(prompts, continuations, strict=True):
        head = tok(p, add_special_tokens=False)["input_ids"]
        tail = tok(c, add_special_tokens=False)["input_ids"]
        encoded.append((head + tail, len(head)))
    return _sequence_logprobs(model, tok, encoded, batch_size, progress)


def _sequence_logprobs(
    model: PreTrainedModel,
    tok: PreTrainedTokenizerBase,
    encoded: list[tuple[list[int], int]],
    batch_size: int,
    progress: Progress | None = None,
) -> list[tuple[float, int]]:
    """(summed log-probability, tokens) of each sequence from its ``start`` on: right-padded batches with a
    2-D mask, so every position and mask is the one an unpadded pass of the model builds itself."""
    import torch

    lm = _Head(model)
    out: list[tuple[float, int]] = [(0.0, 0)] * len(encoded)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    device = next(model.parameters()).device
    for batch in _batches([len(ids) for ids, _ in encoded], batch_size):
        width = max(len(encoded[i][0]) for i in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, i in enumerate(batch):  # right padding: positions stay those of an unpadded pass
            seq = encoded[i][0]
            ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
        rows, cols, targets, owners = [], [], [], []
        for row, i in enumerate(batch):  # the positions whose next token is a continuation token
            seq, start = encoded[i]
            for pos in range(max(start, 1) - 1, len(seq) - 1):
                rows.append(row)
                cols.append(pos)
                targets.append(seq[pos + 1])
                owners.append(i)
        with torch.inference_mode():
            if lm.split:
                hidden = lm.decoder(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state
            else:  # logits stand in for hidden states (see _Head)
                hidden = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            logp = lm.log_probs(hidden[rows, cols]) if rows else hidden.new_zeros((0, 1))
            picked = logp[torch.arange(len(targets)), torch.tensor(targets, dtype=torch.long)].tolist()
        sums: dict[int, float] = {}
        for i, lp in zip(owners, picked, strict=True):
            sums[i] = sums.get(i, 0.0) + lp
        for i in batch:
            seq, start = encoded[i]
            out[i] = (sums.get(i, 0.0), len(seq) - max(start, 1))
        if progress is not None:
            progress(len(batch))
    return out
