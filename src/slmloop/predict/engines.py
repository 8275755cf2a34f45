"""The engines that turn prompts into answers, for :func:`slmloop.predict.answers.answer_rows`.

- :class:`LocalEngine`: a transformers model in this process (a base model, a run's adapter, a
  merged release); it ranks labels and generates.
- :class:`LlamaCppEngine`: a GGUF file answered by llama.cpp; it ranks labels and generates.
- :class:`UpstreamEngine`: another OpenAI-compatible server (vLLM on a GPU host); it generates only
  (a release that ranks labels or weighs a span prior is refused for it, see
  :func:`slmloop.predict.answers.unsupported`).

Every engine renders prompts with the model's own tokenizer and chat template, so each sees
exactly the prompt the others see.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from slmloop.models.inference import continuation_logprobs, generate, rank_labels, token_texts
from slmloop.models.loading import render_prompt
from slmloop.predict.constrain import Spec, compiled

if TYPE_CHECKING:
    from slmloop.predict.spans import MarkScorer

__all__ = ["LlamaCppEngine", "LocalEngine", "UpstreamEngine"]

Progress = Callable[[int], None]
#: one generated answer: (text, new tokens, finish reason: "stop" or "length")
Completion = tuple[str, int, str]


@dataclass
class LocalEngine:
    """A transformers model in this process (a base model, a run's adapter, a merged release)."""

    model: Any
    tokenizer: Any

    @property
    def can_rank(self) -> bool:
        return True

    def rank(
        self, prompts: list[str], labels: list[str], *, batch_size: int, margin: float | None, progress: Progress | None
    ) -> list[list[float | None]]:
        return rank_labels(
            self.model, self.tokenizer, prompts, labels, batch_size=batch_size, margin=margin, progress=progress
        )

    def complete(
        self,
        conversations: list[list[dict[str, str]]],
        max_new_tokens: int | list[int],
        *,
        batch_size: int,
        json_object: bool = False,
        temperature: float | list[float] = 0.0,
        on_token: Callable[[int, int], None] | None = None,
        stop: Callable[[int], bool] | None = None,
        grammars: Sequence[Spec] | None = None,
        progress: Progress | None = None,
    ) -> list[Completion]:
        prompts = [render_prompt(self.tokenizer, m) for m in conversations]
        gens = generate(
            self.model,
            self.tokenizer,
            prompts,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            temperature=temperature,
            progress=progress,
            on_token=on_token,
            json_object=json_object,
            stop=stop,
            constraints=[compiled(self.tokenizer, g).matcher() for g in grammars] if grammars is not None else None,
        )
        limits = _per_row(max_new_tokens, len(conversations))
        return [(text, n, "length" if n >= limit else "stop") for (text, n), limit in zip(gens, limits, strict=True)]

    def close(self) -> None:
        """Nothing to free: the model goes with the engine."""

    def mark_scorer(self, prompts: list[str], batch_size: int) -> MarkScorer:
        def score(rows: list[int], prefixes: list[str], marks: list[str]) -> list[float]:
            heads = [prompts[i] + prefix for i, prefix in zip(rows, prefixes, strict=True)]
            return [
                lp for lp, _ in continuation_logprobs(self.model, self.tokenizer, heads, marks, batch_size=batch_size)
            ]

        return score


class LlamaCppEngine:
    """A GGUF file answered by llama.cpp (CPU hosts without torch speed-ups, or Ollama-like footprints).

    Prompts are rendered with the release's own tokenizer and chat template, so llama.cpp
    sees exactly what the transformers engine sees. It ranks a classifier's labels (the same
    scores as the transformers engine, so the label prior applies alike), generates, keeps an
    extraction's answer a JSON object and scores the span prior's marks.
    """

    can_rank = True

    def __init__(
        self, gguf_path: str, tokenizer: Any, threads: int | None = None, stop_ids: set[int] | None = None
    ) -> None:
        from slmloop.models.llamacpp import LlamaCpp

        self.tokenizer = tokenizer
        eos = tokenizer.eos_token_id
        stops = stop_ids if stop_ids is not None else ({eos} if isinstance(eos, int) else set())
        self.llama = LlamaCpp(gguf_path, stop_ids=stops, threads=threads)

    def close(self) -> None:
        self.llama.close()

    def rank(
        self, prompts: list[str], labels: list[str], *, batch_size: int, margin: float | None, progress: Any
    ) -> list[list[float | None]]:
        """Every label scored as the transformers engine scores it: the label's tokens and the stop token
        after the prompt, tokenised by the release's tokenizer (``margin`` is applied by the caller)."""
        tok = self.tokenizer
        label_ids = [tok(lab, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for lab in labels]
        out: list[list[float | None]] = []
        for p in prompts:
            (scores,) = self.llama.rank([tok(p, add_special_tokens=False)["input_ids"]], label_ids)
            out.append(list[float | None](scores))
            if progress is not None:
                progress(1)
        return out

    def mark_scorer(self, prompts: list[str], batch_size: int) -> MarkScorer | None:
        def score(rows: list[int], prefixes: list[str], marks: list[str]) -> list[float]:
            heads = [prompts[i] + prefix for i, prefix in zip(rows, prefixes, strict=True)]
            return self.llama.continuation_logprobs(heads, marks)

        return score

    def complete(
        self,
        conversations: list[list[dict[str, str]]],
        max_new_tokens: int | list[int],
        *,
        batch_size: int,
        json_object: bool = False,
        temperature: float | list[float] = 0.0,
        on_token: Callable[[int, int], None] | None = None,
        stop: Callable[[int], bool] | None = None,
        grammars: Sequence[Spec] | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> list[tuple[str, int, str]]:
        texts = token_texts(self.tokenizer) if json_object else None
        limits = _per_row(max_new_tokens, len(conversations))
        temps = _per_row(temperature, len(conversations))
        out = []
        for i, messages in enumerate(conversations):
            if stop is not None and stop(i):  # its client left before its turn
                out.append(("", 0, "stop"))
                continue
            emit = (lambda t, i=i: on_token(i, t)) if on_token is not None else None
            left = (lambda i=i: stop(i)) if stop is not None else None
            prompt = render_prompt(self.tokenizer, messages)
            text, n = self.llama.complete(
                prompt,
                limits[i],
                temps[i],
                emit,
                json_texts=None if grammars is not None else texts,
                stop=left,
                rule=compiled(self.tokenizer, grammars[i]).matcher() if grammars is not None else None,
            )
            out.append((text, n, "length" if n >= limits[i] else "stop"))
            if progress is not None:
                progress(1)
        return out


class UpstreamEngine:
    """Answers through another OpenAI-compatible server (vLLM on a GPU host), with slmloop's front in place.

    The upstream does the batching (vLLM batches continuously); this side keeps the
    API keys, limits, metrics and the request log, sends the same conversations as the
    other engines (the release's prompt style) and parses answers the same way.
    Streaming passes the upstream's text deltas on as token ids of the release's tokenizer.
    """

    can_rank = False

    def __init__(
        self,
        base_url: str,
        upstream_model: str,
        tokenizer: Any,
        api_key: str | None = None,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        """``on_close``: what :meth:`close` also does (stop the upstream server where this side started it)."""
        import httpx

        self.tokenizer = tokenizer
        self.upstream_model = upstream_model
        self.on_close = on_close
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=600)

    def rank(
        self, prompts: list[str], labels: list[str], *, batch_size: int, margin: float | None, progress: Any
    ) -> list[list[float | None]]:
        raise NotImplementedError("an upstream server generates labels; answer_rows does not ask it to rank")

    def close(self) -> None:
        """Stop talking to the upstream, and stop its server where this side started it."""
        self.http.close()
        if self.on_close is not None:
            self.on_close()

    def mark_scorer(self, prompts: list[str], batch_size: int) -> MarkScorer | None:
        return None  # the upstream gives no prompt log-probabilities here (a release that needs them is refused)

    def _ask(
        self,
        messages: list[dict[str, str]],
        max_tokens: int,
        temperature: float,
        emit: Callable[[int], None] | None,
        json_object: bool = False,
        grammar: Spec | None = None,
    ) -> tuple[str, int, str]:
        body: dict[str, Any] = {
            "model": self.upstream_model,
            "messages": messages,
            "max_tokens": max_tokens,
            "temperature": temperature,
            "stream": emit is not None,
        }
        if isinstance(grammar, dict):  # guided decoding (vLLM), OpenAI's structured outputs
            body["response_format"] = {"type": "json_schema", "json_schema": {"name": "answer", "schema": grammar}}
        elif isinstance(grammar, str):  # an inline answer's grammar (Lark), for vLLM's llguidance backend
            body["guided_grammar"], body["guided_decoding_backend"] = grammar, "guidance"
        elif json_object:
            body["response_format"] = {"type": "json_object"}
        if emit is None:
            r = self.http.post("/chat/completions", json=body)
            r.raise_for_status()
            data = r.json()
            choice = data["choices"][0]
            n = int((data.get("usage") or {}).get("completion_tokens") or 0)
            return str(choice["message"]["content"] or "").strip(), n, str(choice.get("finish_reason") or "stop")
        parts: list[str] = []
        finish, n = "stop", 0
        with self.http.stream("POST", "/chat/completions", json=body) as r:
            r.raise_for_status()
            for line in r.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                choice = json.loads(line[6:])["choices"][0]
                delta = (choice.get("delta") or {}).get("content") or ""
                if delta:
                    parts.append(delta)
                    for t in self.tokenizer(delta, add_special_tokens=False)["input_ids"]:
                        n += 1
                        emit(t)
                finish = choice.get("finish_reason") or finish
        return "".join(parts).strip(), n, finish

    def complete(
        self,
        conversations: list[list[dict[str, str]]],
        max_new_tokens: int | list[int],
        *,
        batch_size: int,
        json_object: bool = False,
        temperature: float | list[float] = 0.0,
        on_token: Callable[[int, int], None] | None = None,
        stop: Callable[[int], bool] | None = None,
        grammars: Sequence[Spec] | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> list[tuple[str, int, str]]:
        """All requests in flight at once: the upstream batches them.

        ``json_object`` asks the upstream for ``response_format: {"type": "json_object"}`` (OpenAI's
        JSON mode, which vLLM and llama.cpp's server implement).
        """
        from concurrent.futures import ThreadPoolExecutor

        limits = _per_row(max_new_tokens, len(conversations))
        temps = _per_row(temperature, len(conversations))

        def one(i: int) -> tuple[str, int, str]:
            if stop is not None and stop(i):
                return ("", 0, "stop")
            emit = (lambda t: on_token(i, t)) if on_token is not None else None
            grammar = grammars[i] if grammars is not None else None
            return self._ask(conversations[i], limits[i], temps[i], emit, json_object, grammar)

        with ThreadPoolExecutor(max_workers=max(1, min(32, len(conversations)))) as pool:
            return list(pool.map(one, range(len(conversations))))


def _per_row(value: Any, n: int) -> list[Any]:
    """A setting given once for all rows, or one per row, as one per row."""
    return list(value) if isinstance(value, list | tuple) else [value] * n
