"""Constrained decoding: a generated extraction answer can only be what the task's schema allows.

With ``eval.constrain: json_schema`` an extraction answered as a JSON object is decoded under a
grammar (llguidance, MIT): at every step only the tokens that keep the answer inside the schema
may be chosen, so the object opens at once, holds only ``task.fields`` (those in
``task.required`` always), and ends where it closes. ``eval.checks.json_schema``, where given,
is the schema instead (its types and enums hold too). An extractor that answers inline is
decoded under its request's own grammar (:func:`inline_grammar`): the request copied as it is,
marks only around its words and only with the task's fields.

- transformers: :func:`slmloop.models.inference.generate` masks each row's next-token scores with
  its :class:`Matcher`;
- llama.cpp: the same :class:`Matcher` masks llama.cpp's next-token scores (one grammar engine, so the
  two engines allow exactly the same answers);
- an upstream server (vLLM): ``response_format: json_schema`` (guided decoding), or the inline
  grammar as ``guided_grammar`` for vLLM's llguidance backend.

An answer that runs out of its token budget (``eval.max_new_tokens``) before its object closes
ends at its last complete field instead (:func:`close_answer`), whichever engine wrote it: a
constrained answer is always a JSON object the schema accepts.
"""

from __future__ import annotations

import collections
import importlib.util
from collections.abc import Sequence
from typing import Any

import numpy as np

from slmloop.errors import ModelError
from slmloop.manifest import EvalConfig, TaskConfig

__all__ = [
    "Grammar",
    "Matcher",
    "Spec",
    "answer_schema",
    "close_answer",
    "compiled",
    "decoding_schema",
    "inline_grammar",
]

#: how the JSON is spaced: as training targets are written (json.dumps' defaults)
SPACING: Any = {"item_separator": ", ", "key_separator": ": ", "whitespace_flexible": False}


def answer_schema(task: TaskConfig, json_schema: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON schema of an extraction answer: ``json_schema`` where given, else an object of the task's fields
    (any JSON value each; those in ``task.required`` required) and no other key."""
    if json_schema is not None:
        return json_schema
    return {
        "type": "object",
        "properties": {f: {} for f in task.field_list},
        "required": [f for f in task.required if f in task.field_list],
        "additionalProperties": False,
    }


def decoding_schema(task: TaskConfig, cfg: EvalConfig) -> dict[str, Any] | None:
    """The schema answers to ``task`` are decoded under (``eval.constrain``), or None: unconstrained."""
    if cfg.constrain == "off" or task.type != "extraction":
        return None
    return answer_schema(task, cfg.checks.json_schema)


_TOKENIZERS: dict[int, Any] = {}


def _ll_tokenizer(tok: Any) -> Any:
    """llguidance's view of a Hugging Face tokenizer (built once per tokenizer; about 0.3 s)."""
    if importlib.util.find_spec("llguidance") is None:
        raise ModelError(
            "constrained decoding needs llguidance, which is not installed",
            hint="pip install llguidance (the README set-up installs it), or set eval.constrain: off.",
        )
    key = id(tok)
    if key not in _TOKENIZERS:
        import llguidance.hf

        _TOKENIZERS[key] = llguidance.hf.from_tokenizer(tok)
    return _TOKENIZERS[key]


#: what an answer is decoded under: a JSON schema (a dict) or a Lark grammar (a str, :func:`inline_grammar`)
Spec = dict[str, Any] | str


class Grammar:
    """A JSON schema or a Lark grammar compiled for one tokenizer; :meth:`matcher` follows one answer through it."""

    def __init__(self, tok: Any, spec: Spec) -> None:
        import llguidance

        self.tokenizer = _ll_tokenizer(tok)
        if isinstance(spec, str):
            self.grammar = llguidance.LLMatcher.grammar_from_lark(spec)
        else:
            self.grammar = llguidance.LLMatcher.grammar_from_json_schema(spec, defaults=SPACING)
        error = llguidance.LLMatcher.validate_grammar(self.grammar, self.tokenizer)
        if error:
            raise ModelError(
                f"the answer schema cannot be decoded under: {error}", hint="Check eval.checks.json_schema."
            )

    def matcher(self) -> Matcher:
        return Matcher(self)


class Matcher:
    """Where one answer stands in its grammar: which next tokens it allows, and whether it is done."""

    def __init__(self, grammar: Grammar) -> None:
        import llguidance
        import llguidance.numpy

        self.vocab = grammar.tokenizer.vocab_size
        self.state = llguidance.LLMatcher(grammar.tokenizer, grammar.grammar)
        self.bits = llguidance.numpy.allocate_token_bitmask(1, self.vocab)
        self._fill = llguidance.numpy.fill_next_token_bitmask

    def allowed(self) -> np.ndarray:
        """One bool per token id of the tokenizer's vocabulary: may it come next?"""
        self._fill(self.state, self.bits, 0)
        return np.unpackbits(self.bits.view(np.uint8), bitorder="little")[: self.vocab].astype(bool)

    def feed(self, token: int) -> bool:
        """Take the chosen ``token``; True once the answer is complete (or the grammar cannot go on)."""
        self.state.consume_token(int(token))
        return bool(self.state.is_stopped() or self.state.is_error())


#: compiled grammars kept (the least recently used go first: an inline grammar is one per request)
KEEP = 256
_GRAMMARS: collections.OrderedDict[tuple[int, str], Grammar] = collections.OrderedDict()


def compiled(tok: Any, spec: Spec) -> Grammar:
    """``spec`` compiled for ``tok``, kept for the next answers under it."""
    import json

    key = (id(tok), spec if isinstance(spec, str) else json.dumps(spec, sort_keys=True))
    if key in _GRAMMARS:
        _GRAMMARS.move_to_end(key)
    else:
        _GRAMMARS[key] = Grammar(tok, spec)
        while len(_GRAMMARS) > KEEP:
            _GRAMMARS.popitem(last=False)
    return _GRAMMARS[key]


def close_answer(tok: Any, schema: dict[str, Any], text: str) -> str | None:
    """``text``, an answer cut off by its token budget inside ``schema``'s object, ended at its last complete
    field: the longest prefix that ends before a ``, `` (or just after the opening ``{``) and closes into an
    object the schema accepts; where a required field is the one cut off, its value is ended where it stands.
    ``text`` itself if it is complete; None if nothing closes it (the text is not in the schema)."""
    state = compiled(tok, schema).matcher().state

    def accepted(candidate: str) -> bool:
        return inside(candidate) and bool(state.is_accepting())

    def inside(candidate: str) -> bool:
        state.reset()
        ids = list(tok.encode(candidate, add_special_tokens=False))
        return bool(state.try_consume_tokens(ids) == len(ids))

    if accepted(text):
        return text
    start = text.find("{")
    if start < 0:
        return None
    cuts = [i for i in range(len(text) - 1, start, -1) if text.startswith(SPACING["item_separator"], i)]
    for cut in [*cuts, start + 1]:
        if accepted(text[:cut] + "}"):
            return text[:cut] + "}"
    # a required field is the one cut off: end it where it stands with the fewest pieces the schema allows
    queue, tried = collections.deque([text]), 0
    while queue and tried < MAX_TRIES:
        head = queue.popleft()
        inside(head)
        forced = bytes(state.compute_ff_bytes()).decode("utf-8", errors="ignore")  # what the schema allows alone
        for piece in (forced, *PIECES) if forced else PIECES:
            tried += 1
            if inside(head + piece):
                if state.is_accepting():
                    return head + piece
                queue.append(head + piece)
    return None


#: what ends a value cut off inside the object, fewest pieces first (at most MAX_TRIES candidates are tried)
PIECES = ('"', "}", "]", ": ", "null", '""', "0")
MAX_TRIES = 400


def inline_grammar(fields: Sequence[str], request: str) -> str:
    """The Lark grammar of an inline answer to ``request`` (:mod:`slmloop.predict.inline`): the request copied
    as it is, where any run of its words may be marked ``[field: words]`` with a field of ``fields``, then
    marks of values that are no span of it (``[field: value]``, as :func:`~slmloop.predict.inline.mark`
    writes them after the request). A marked word may differ in case from the request's."""
    import json

    from slmloop.predict.inline import tokens

    words = tokens(request)
    field = " | ".join(json.dumps(f, ensure_ascii=False) for f in sorted(set(fields))) or '""'

    def lit(text: str) -> str:
        return json.dumps(text, ensure_ascii=False)

    def ci(word: str) -> str:  # the word, any case
        return lit(word) + ("i" if word.lower() != word.upper() else "")

    # s{i}: the answer from word i on, outside a mark; m{i}: from word i on, inside a mark opened before it
    rules = ["start: s0", f"field: {field}", 'tail: "" | " [" field ": " VALUE "]" tail', "VALUE: /[^\\[\\]]+/"]
    for i, (word, a, _) in enumerate(words):
        gap = lit(request[words[i - 1][2] if i else a : a])  # the request's own space before the word
        rules.append(f's{i}: {gap} {lit(word)} s{i + 1} | {gap} "[" field ": " {ci(word)} m{i + 1}')
        if i:
            rules.append(f'm{i}: "]" s{i} | {gap} {ci(word)} m{i + 1}')
    n = len(words)
    rules += [f"s{n}: tail", f'm{n}: "]" tail'] if n else [f"s{n}: tail"]
    return "\n".join(rules) + "\n"
