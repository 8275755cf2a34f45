"""What answers requests: a loaded release, a batcher that groups concurrent requests, and hot swap.

- :class:`Predictor`: one loaded release. ``predict_many`` and ``chat_many``
  answer a whole group in one batched pass, with the same code evaluation uses.
- :class:`Batcher`: one worker thread owns the model. Requests queue up; the
  first of a group waits ``wait_ms`` for others with the same shape (endpoint,
  max_tokens, temperature) and the group runs as one batch of at most
  ``max_batch``. With ``max_batch=1`` it answers one request at a time.
- :class:`ModelSlot`: the predictor now in use. A watcher thread loads the
  release an alias moved to (promote / rollback) beside the old one and swaps
  the reference; the batch in flight finishes on the old model, the next batch
  runs on the new one, and no request fails.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from slmloop.evaluate.answers import ModelAnswer, answer_rows, generated_answer, mark_scorer
from slmloop.evaluate.metrics import parse_json_object
from slmloop.manifest import TaskConfig
from slmloop.models.inference import generate, token_texts
from slmloop.models.loading import render_prompt
from slmloop.shortlist import Shortlist
from slmloop.tasks import SPANS_KEY, answers_inline, prompt_messages

if TYPE_CHECKING:
    from slmloop.spans import MarkScorer

__all__ = ["Batcher", "ChatAnswer", "Job", "LlamaCppPredictor", "ModelSlot", "Predictor", "UpstreamPredictor"]


@dataclass(frozen=True)
class ChatAnswer:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str


@dataclass
class Predictor:
    """A loaded release plus the task and prompt style it was trained with."""

    model: Any
    tokenizer: Any
    task: TaskConfig
    name: str
    release: int | None = None
    mode: str = "rank"
    max_new_tokens: int = 128
    prompt: str = "full"  # the prompt style the model was trained with
    rank_margin: float | None = 6.0
    shortlist: Shortlist | None = None  # the index of the shortlist the model reads (train.shortlist)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _shape(self, a: ModelAnswer) -> dict[str, Any]:
        if self.task.type == "classification":
            if "probs" in a.scores:
                return {"label": a.prediction, "scores": a.scores["probs"]}
            return {"label": a.prediction or None, "raw": a.raw, "valid": bool(a.prediction)}
        if self.task.type == "extraction":
            obj = parse_json_object(a.raw)
            shaped = {"output": obj, "raw": a.raw, "valid": obj is not None}
            if "model_answer" in a.scores:  # weighed with the span prior: what the model itself said
                shaped["model_raw"] = a.scores["model_answer"]
            if "model_text" in a.scores:  # an inline answer: the request as the model marked it
                shaped["model_text"] = a.scores["model_text"]
            return shaped
        return {"output": a.raw}

    def predict_many(self, texts: list[str]) -> list[dict[str, Any]]:
        """Typed answers for ``texts``, one batched pass (the same answering code as evaluation)."""
        rows = [{"text": t, "input": t} for t in texts]
        if self.shortlist is not None:
            rows = self.shortlist.annotate(self.task, rows)
        if self.mode == "rank":
            answers = answer_rows(
                self.task,
                self.prompt,
                self.mode,
                self.model,
                self.tokenizer,
                rows,
                batch_size=max(1, len(texts)),
                max_new_tokens=self.max_new_tokens,
                margin=self.rank_margin,
            )
        else:
            messages = [prompt_messages(self.task, r, self.prompt) for r in rows]
            said = self._complete_many(
                messages,
                self.max_new_tokens,
                json_object=self.task.type == "extraction" and not answers_inline(self.task),
            )
            if self.task.type == "extraction" and any(r.get(SPANS_KEY) for r in rows):
                from slmloop.spans import mark_rows

                prompts = [render_prompt(self.tokenizer, m) for m in messages]
                rows = mark_rows(self.task, rows, [t for t, _, _ in said], self.mark_scorer(prompts))
            answers = [generated_answer(self.task, r, t, n) for r, (t, n, _) in zip(rows, said, strict=True)]
        return [self._shape(a) for a in answers]

    def mark_scorer(self, prompts: list[str]) -> MarkScorer | None:
        """How this engine scores an inline extractor's marks for rows asked with ``prompts`` (the span prior's
        judge reads them, see :func:`slmloop.spans.mark_scores`); None where it cannot."""
        return mark_scorer(self.model, self.tokenizer, prompts, max(1, len(prompts)))

    def predict(self, text: str) -> dict[str, Any]:
        return self.predict_many([text])[0]

    def chat_many(
        self,
        conversations: list[list[dict[str, str]]],
        max_tokens: int,
        temperature: float = 0.0,
        on_token: Callable[[int, int], None] | None = None,
    ) -> list[ChatAnswer]:
        """Greedy by default (task models should answer deterministically); samples if temperature > 0."""
        said = self._complete_many(conversations, max_tokens, temperature, on_token)
        return [
            ChatAnswer(text, self.count_tokens(render_prompt(self.tokenizer, m)), n, finish)
            for m, (text, n, finish) in zip(conversations, said, strict=True)
        ]

    def _complete_many(
        self,
        conversations: list[list[dict[str, str]]],
        max_tokens: int,
        temperature: float = 0.0,
        on_token: Callable[[int, int], None] | None = None,
        json_object: bool = False,
    ) -> list[tuple[str, int, str]]:
        """(answer, new tokens, finish reason) per conversation: what each engine does its own way.

        ``json_object``: the answer is an extraction's JSON object (see
        :func:`~slmloop.models.inference.generate`); this engine opens it and stops when it closes.
        """
        prompts = [render_prompt(self.tokenizer, m) for m in conversations]
        gens = generate(
            self.model,
            self.tokenizer,
            prompts,
            max_new_tokens=max_tokens,
            batch_size=max(1, len(prompts)),
            temperature=temperature,
            on_token=on_token,
            json_object=json_object,
        )
        return [(text, n, "length" if n >= max_tokens else "stop") for text, n in gens]


class LlamaCppPredictor(Predictor):
    """A GGUF release answered by llama.cpp (CPU hosts without torch speed-ups, or Ollama-like footprints).

    Prompts are rendered with the release's own tokenizer and chat template, so
    llama.cpp sees exactly what the transformers engine sees; answers are greedy
    generations parsed to the task's shape (labels are parsed, not ranked).
    """

    def __init__(self, gguf_path: str, threads: int | None = None, **kw: Any) -> None:
        from slmloop.models.llamacpp import LlamaCpp

        super().__init__(model=None, **kw)
        self.mode = "generate"
        eos = self.tokenizer.eos_token_id
        self.llama = LlamaCpp(gguf_path, stop_ids=[eos] if isinstance(eos, int) else [], threads=threads)

    def mark_scorer(self, prompts: list[str]) -> MarkScorer | None:
        def score(rows: list[int], prefixes: list[str], marks: list[str]) -> list[float]:
            heads = [prompts[i] + prefix for i, prefix in zip(rows, prefixes, strict=True)]
            return self.llama.continuation_logprobs(heads, marks)

        return score

    def _complete_many(
        self,
        conversations: list[list[dict[str, str]]],
        max_tokens: int,
        temperature: float = 0.0,
        on_token: Callable[[int, int], None] | None = None,
        json_object: bool = False,
    ) -> list[tuple[str, int, str]]:
        texts = token_texts(self.tokenizer) if json_object else None
        out = []
        for i, messages in enumerate(conversations):
            emit = (lambda t, i=i: on_token(i, t)) if on_token is not None else None
            prompt = render_prompt(self.tokenizer, messages)
            text, n = self.llama.complete(prompt, max_tokens, temperature, emit, json_texts=texts)
            out.append((text, n, "length" if n >= max_tokens else "stop"))
        return out


class UpstreamPredictor(Predictor):
    """Answers through another OpenAI-compatible server (vLLM on a GPU host), with slmloop's front in place.

    The upstream does the batching (vLLM batches continuously); this side keeps the
    API keys, limits, metrics and the request log, renders the same prompts as the
    other engines (the release's tokenizer and prompt style) and parses answers the
    same way. Streaming passes the upstream's text deltas on as token ids of the
    release's tokenizer.
    """

    def __init__(self, base_url: str, upstream_model: str, api_key: str | None = None, **kw: Any) -> None:
        import httpx

        super().__init__(model=None, **kw)
        self.mode = "generate"
        self.upstream_model = upstream_model
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=600)

    def mark_scorer(self, prompts: list[str]) -> MarkScorer | None:
        return None  # the upstream gives no prompt log-probabilities here: the judge reads marks as unknown

    def _ask(
        self,
        messages: list[dict[str, str]],
        max_tokens: int,
        temperature: float,
        emit: Callable[[int], None] | None,
        json_object: bool = False,
    ) -> tuple[str, int, str]:
        import json

        body: dict[str, Any] = {
            "model": self.upstream_model,
            "messages": messages,
            "max_tokens": max_tokens,
            "temperature": temperature,
            "stream": emit is not None,
        }
        if json_object:
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

    def _complete_many(
        self,
        conversations: list[list[dict[str, str]]],
        max_tokens: int,
        temperature: float = 0.0,
        on_token: Callable[[int, int], None] | None = None,
        json_object: bool = False,
    ) -> list[tuple[str, int, str]]:
        """All requests in flight at once: the upstream batches them.

        ``json_object`` asks the upstream for ``response_format: {"type": "json_object"}`` (OpenAI's
        JSON mode, which vLLM and llama.cpp's server implement).
        """
        from concurrent.futures import ThreadPoolExecutor

        def one(i: int) -> tuple[str, int, str]:
            emit = (lambda t: on_token(i, t)) if on_token is not None else None
            return self._ask(conversations[i], max_tokens, temperature, emit, json_object)

        with ThreadPoolExecutor(max_workers=max(1, min(32, len(conversations)))) as pool:
            return list(pool.map(one, range(len(conversations))))


class ModelSlot:
    """The predictor in use now; swapped whole, never changed in place."""

    def __init__(self, predictor: Predictor) -> None:
        self.current = predictor
        self._stop = threading.Event()

    def watch(
        self,
        target: Callable[[], int | None],
        load: Callable[[int], Predictor],
        interval: float,
    ) -> threading.Thread:
        """Poll ``target()`` (the version an alias points at) every ``interval`` s; load and swap on a move."""

        def loop() -> None:
            while not self._stop.wait(interval):
                try:
                    version = target()
                    if version is None or version == self.current.release:
                        continue
                    fresh = load(version)
                except Exception as exc:  # a failed reload keeps the old model answering
                    print(f"slmloop serve: reload failed, still serving {self.current.name}: {exc}", flush=True)
                    continue
                old = self.current
                self.current = fresh
                print(f"slmloop serve: now serving {fresh.name} (was {old.name})", flush=True)

        thread = threading.Thread(target=loop, name="slmloop-reload", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self._stop.set()


@dataclass
class Job:
    """One request waiting for the model. ``key`` decides which requests may share a batch."""

    kind: str  # predict | chat
    key: tuple[Any, ...]
    payload: Any
    on_token: Callable[[int], None] | None = None  # streaming: each new token id
    future: Future[Any] = field(default_factory=Future)
    queued_at: float = field(default_factory=time.perf_counter)


#: a forming group waits ``wait_ms`` for each next request, and at most this many times ``wait_ms`` in all
WAIT_CAP = 8


class Batcher:
    """One worker thread that owns the model and answers queued jobs in groups.

    Under load (the last group had company, or requests are queued) a forming group waits up to
    ``wait_ms`` for each next request: the clients a group answered come back a few ms apart, and
    waiting for them keeps groups full (32 clients on the demo: mean group 26 instead of 15, 21.9
    instead of 17.3 req/s). An idle server answers a lone request at once.
    """

    def __init__(
        self,
        slot: ModelSlot,
        *,
        max_batch: int = 32,
        wait_ms: float = 25.0,
        observe: Callable[[int], None] | None = None,
    ) -> None:
        self.slot = slot
        self.max_batch = max_batch
        self.wait = wait_ms / 1000.0
        self.observe = observe
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._held: deque[Job] = deque()
        self._busy = False  # the last group had more than one request, or others were waiting
        self._thread = threading.Thread(target=self._loop, name="slmloop-batcher", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> Future[Any]:
        self._queue.put(job)
        return job.future

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)

    def _next_group(self) -> list[Job] | None:
        first = self._held.popleft() if self._held else self._queue.get()
        if first is None:
            return None
        group = [first]
        start = time.perf_counter()
        wait = self.wait if self._busy else 0.0
        deadline = start + wait
        others: list[Job] = []
        while len(group) < self.max_batch:
            if self._held:
                job: Job | None = self._held.popleft()
            else:
                left = deadline - time.perf_counter()
                try:
                    job = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                # while requests keep coming the group keeps growing (up to WAIT_CAP waits in all): under a
                # steady load the clients answered by the last group come back a few ms apart
                deadline = min(start + WAIT_CAP * wait, time.perf_counter() + wait)
            if job is None:
                self._queue.put(None)  # stop after this group
                break
            (group if job.key == first.key else others).append(job)
        self._held.extendleft(reversed(others))
        self._busy = len(group) > 1 or bool(others) or not self._queue.empty()
        return group

    def _loop(self) -> None:
        while True:
            group = self._next_group()
            if group is None:
                return
            live = [j for j in group if j.future.set_running_or_notify_cancel()]
            if not live:
                continue
            if self.observe is not None:
                self.observe(len(live))
            predictor = self.slot.current  # one model for the whole group, even if a swap lands meanwhile
            try:
                results = self._run(predictor, live)
            except BaseException as exc:  # every waiting request hears about it; the worker lives on
                for j in live:
                    j.future.set_exception(exc)
                continue
            for j, r in zip(live, results, strict=True):
                j.future.set_result((predictor, r))

    @staticmethod
    def _run(predictor: Predictor, jobs: list[Job]) -> list[Any]:
        if jobs[0].kind == "predict":
            return predictor.predict_many([j.payload for j in jobs])
        _, max_tokens, temperature = jobs[0].key
        streams = [j.on_token for j in jobs]

        def on_token(i: int, token: int) -> None:
            cb = streams[i]
            if cb is not None:
                cb(token)

        return predictor.chat_many(
            [j.payload for j in jobs],
            max_tokens,
            temperature,
            on_token=on_token if any(streams) else None,
        )
