"""What answers requests: a loaded release, a batcher that groups concurrent requests, and hot swap.

- :class:`Predictor`: one loaded release. ``predict_many`` and ``chat_many``
  answer a whole group in one batched pass, through the answering path evaluation uses
  (:func:`slmloop.predict.answers.answer_rows`), with the engine (:mod:`slmloop.predict.engines`)
  as a parameter: a local transformers model, llama.cpp, or an upstream server.
- :class:`Batcher`: one worker thread owns the model. Requests queue up; the
  first of a group waits ``wait_ms`` for others of the same endpoint (chats of any
  ``max_tokens`` and temperature share a batch) and the group runs as one batch of at
  most ``max_batch``. With ``max_batch=1`` it answers one request at a time. A request
  nobody waits for any more (:meth:`Job.abandon`) is dropped from the queue, or leaves
  its batch at its next token.
- :class:`ModelSlot`: the predictor now in use. A watcher thread loads the
  release an alias moved to (promote / rollback) beside the old one and swaps
  the reference; the batch in flight finishes on the old model, the next batch
  runs on the new one, and no request fails.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from slmloop.errors import ServeError
from slmloop.manifest import TaskConfig
from slmloop.models.loading import render_prompt
from slmloop.predict.answers import Engine, ModelAnswer, answer_rows
from slmloop.predict.companion import Companion
from slmloop.predict.parsing import parse_json_object

if TYPE_CHECKING:
    pass

__all__ = ["Batcher", "ChatAnswer", "Job", "ModelSlot", "Overloaded", "Predictor"]


@dataclass(frozen=True)
class ChatAnswer:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str


@dataclass
class Predictor:
    """A loaded release: the engine that answers, plus the task and prompt style it was trained with."""

    engine: Engine
    task: TaskConfig
    name: str
    release: int | None = None
    mode: str = "rank"
    max_new_tokens: int = 128
    prompt: str = "full"  # the prompt style the model was trained with
    rank_margin: float | None = 6.0
    companion: Companion | None = None  # the index saved with the model (shortlist, label prior, span prior)
    schema: dict[str, Any] | None = None  # the JSON schema answers are decoded under (eval.constrain)

    @property
    def tokenizer(self) -> Any:
        return self.engine.tokenizer

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _shape(self, a: ModelAnswer) -> dict[str, Any]:
        if self.task.type == "classification":
            if a.scores.get("abstained"):  # none of the labels: the request is out of scope
                return {
                    "label": None,
                    "abstained": True,
                    "out_of_scope": a.prediction,
                    "confidence": a.scores["confidence"],
                    "scores": a.scores["probs"],
                }
            if "probs" in a.scores:
                shaped = {"label": a.prediction, "scores": a.scores["probs"]}
                if "confidence" in a.scores:  # an abstaining classifier: the calibrated score it thresholds
                    shaped |= {"abstained": False, "confidence": a.scores["confidence"]}
                return shaped
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
        """Typed answers for ``texts``, one batched pass through the answering path evaluation uses."""
        rows = [{"text": t, "input": t} for t in texts]
        hints = self.companion.hints(self.task, rows) if self.companion is not None else None
        answers = answer_rows(
            self.task,
            self.prompt,
            self.mode,
            self.engine,
            rows,
            hints,
            batch_size=max(1, len(texts)),
            max_new_tokens=self.max_new_tokens,
            margin=self.rank_margin,
            schema=self.schema,
        )
        return [self._shape(a) for a in answers]

    def predict(self, text: str) -> dict[str, Any]:
        return self.predict_many([text])[0]

    def close(self) -> None:
        """Free what the engine holds (a llama.cpp context, an upstream server this side started)."""
        self.engine.close()

    def chat_many(
        self,
        conversations: list[list[dict[str, str]]],
        max_tokens: int | list[int],
        temperature: float | list[float] = 0.0,
        on_token: Callable[[int, int], None] | None = None,
        stop: Callable[[int], bool] | None = None,
    ) -> list[ChatAnswer]:
        """Greedy by default (task models should answer deterministically); samples if temperature > 0.
        ``max_tokens`` and ``temperature``: one for all, or one per conversation (they share one batch);
        ``stop(i)``: conversation ``i`` is no longer wanted."""
        said = self.engine.complete(
            conversations,
            max_tokens,
            batch_size=max(1, len(conversations)),
            temperature=temperature,
            on_token=on_token,
            stop=stop,
        )
        return [
            ChatAnswer(text, self.count_tokens(render_prompt(self.tokenizer, m)), n, finish)
            for m, (text, n, finish) in zip(conversations, said, strict=True)
        ]


class ModelSlot:
    """The predictor in use now; swapped whole, never changed in place.

    A release that fails to load (a tampered folder, a missing file, no memory) leaves the old one
    answering; the watcher tries it again after a back-off that doubles up to :data:`RELOAD_BACKOFF_MAX`
    seconds, and ``reload_error`` says what failed (``/health`` and ``/metrics`` report it).
    """

    def __init__(self, predictor: Predictor) -> None:
        self.current = predictor
        self.reload_error: dict[str, Any] | None = None
        self.reload_failures = 0
        self._stop = threading.Event()
        #: held by the batcher while a group is answered, and by an exclusive swap while it replaces the model
        self.lock = threading.Lock()

    def watch(
        self,
        target: Callable[[], int | None],
        load: Callable[[int], Predictor],
        interval: float,
        *,
        exclusive: bool = False,
    ) -> threading.Thread:
        """Poll ``target()`` (the version an alias points at) every ``interval`` s; load and swap on a move.

        ``exclusive``: the two releases cannot be loaded side by side (a vLLM server holds the GPU's memory):
        the batch in flight finishes, the old one is closed, the new one loads while requests wait in the
        queue, and a new one that fails to load is replaced by the old one loaded again."""

        def loop() -> None:
            delay = interval
            while not self._stop.wait(delay):
                delay = interval
                version = None
                previous = self.current
                try:
                    version = target()
                    if version is None or version == self.current.release:
                        self.reload_error = None  # the alias came back to what answers
                        continue
                    fresh = self._swap_exclusive(version, load) if exclusive else load(version)
                except Exception as exc:  # a failed reload keeps the old model answering, and backs off
                    self.reload_failures += 1
                    tries = self.reload_error["tries"] + 1 if self.reload_error else 1
                    delay = min(interval * 2**tries, RELOAD_BACKOFF_MAX)
                    self.reload_error = {"release": version, "error": str(exc), "tries": tries, "retry_in_s": delay}
                    print(f"slmloop serve: reload failed, still serving {self.current.name}: {exc}", flush=True)
                    continue
                old, self.current = previous, fresh
                self.reload_error = None
                if not exclusive:
                    with self.lock:  # the group that may still answer with the old one is done: free it
                        old.close()
                print(f"slmloop serve: now serving {fresh.name} (was {old.name})", flush=True)

        thread = threading.Thread(target=loop, name="slmloop-reload", daemon=True)
        thread.start()
        return thread

    def _swap_exclusive(self, version: int, load: Callable[[int], Predictor]) -> Predictor:
        """Close the model in use, then load ``version`` (see :meth:`watch`); on failure the old release is
        loaded again and the failure raised."""
        with self.lock:
            old = self.current
            old.close()
            try:
                fresh = load(version)
            except Exception:
                if old.release is not None:
                    self.current = load(old.release)
                raise
            self.current = fresh
            return fresh

    def stop(self) -> None:
        self._stop.set()


#: the longest wait before a release that failed to load is tried again (seconds)
RELOAD_BACKOFF_MAX = 60.0


class Overloaded(Exception):
    """The queue is full: the request is refused before it waits (HTTP 429 with Retry-After)."""

    def __init__(self, waiting: int, retry_after: int) -> None:
        super().__init__(f"{waiting} requests are waiting for the model")
        self.waiting, self.retry_after = waiting, retry_after


@dataclass
class Job:
    """One request waiting for the model. ``key`` decides which requests may share a batch: every chat shares
    one, whatever its ``max_tokens`` and ``temperature`` (each row leaves the batch at its own budget)."""

    kind: str  # predict | chat
    key: tuple[Any, ...]
    payload: Any
    on_token: Callable[[int], None] | None = None  # streaming: each new token id
    future: Future[Any] = field(default_factory=Future)
    queued_at: float = field(default_factory=time.perf_counter)
    streamed: bool = False  # a token has gone to the client: the answer cannot be started again
    max_tokens: int = 0  # chat: this request's generation budget
    temperature: float = 0.0  # chat: 0 greedy, else sampled
    abandoned: bool = False  # nobody waits for the answer any more (the client left, or its deadline passed)

    def abandon(self) -> str:
        """Nobody waits for this job any more: dropped if it is still queued ("queued"), else its generation
        ends at the next token ("running"; a ranking or a batch of predictions finishes)."""
        self.abandoned = True
        return "queued" if self.future.cancel() else "running"


#: a forming group waits ``wait_ms`` for each next request, and at most this many times ``wait_ms`` in all
WAIT_CAP = 8


class Batcher:
    """One worker thread that owns the model and answers queued jobs in groups.

    Under load (the last group had company, or requests are queued) a forming group waits up to
    ``wait_ms`` for each next request: the clients a group answered come back a few ms apart, and
    waiting for them keeps groups full (``benchmarks/serve_load.py``; measured: docs/results.md).
    An idle server answers a lone request at once.
    """

    def __init__(
        self,
        slot: ModelSlot,
        *,
        max_batch: int = 32,
        wait_ms: float = 25.0,
        observe: Callable[[int], None] | None = None,
        clock: Callable[[], float] = time.perf_counter,
        max_queue: int | None = None,
    ) -> None:
        """``clock``: seconds, for the waiting policy (the tests drive it by hand); ``max_queue``: requests
        waiting at most (more are refused with :class:`Overloaded`)."""
        self.slot = slot
        self.clock = clock
        self.max_queue = max_queue
        self.busy_since: float | None = None  # when the group being answered started (time.monotonic)
        self._answered: deque[tuple[float, int]] = deque(maxlen=64)  # (when, requests) of recent groups
        self.max_batch = max_batch
        self.wait = wait_ms / 1000.0
        self.observe = observe
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._held: deque[Job] = deque()
        self._busy = False  # the last group had more than one request, or others were waiting
        self._thread = threading.Thread(target=self._loop, name="slmloop-batcher", daemon=True)
        self._thread.start()

    def admit(self) -> None:
        """Refuse (:class:`Overloaded`) when ``max_queue`` requests already wait: callers ask before they spend
        work on a request (reading, tokenizing) that would be refused anyway."""
        waiting = self._queue.qsize()
        if self.max_queue is not None and waiting >= self.max_queue:
            raise Overloaded(waiting, self.retry_after(waiting))

    def submit(self, job: Job) -> Future[Any]:
        """Queue ``job``; refused with :class:`Overloaded` when ``max_queue`` requests already wait."""
        self.admit()
        self._queue.put(job)
        return job.future

    def rate(self) -> float:
        """Requests answered per second over the recent groups (0 before any)."""
        if len(self._answered) < 2:
            return 0.0
        span = self._answered[-1][0] - self._answered[0][0]
        return sum(n for _, n in list(self._answered)[1:]) / span if span > 0 else 0.0

    def retry_after(self, waiting: int) -> int:
        """Seconds until ``waiting`` requests are likely answered: when to try again (at least 1)."""
        rate = self.rate()
        return max(1, math.ceil(waiting / rate)) if rate > 0 else 1

    def health(self) -> dict[str, Any]:
        """Whether the worker lives, and for how long it has been answering its current group."""
        busy = time.monotonic() - self.busy_since if self.busy_since is not None else 0.0
        return {"alive": self._thread.is_alive(), "busy_s": round(busy, 3), "queued": self._queue.qsize()}

    def close(self, drain_s: float = 30.0) -> None:
        """Stop: answer what is queued for up to ``drain_s`` seconds; what is still waiting then is refused."""
        self._queue.put(None)
        self._thread.join(timeout=drain_s)
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None and job.future.set_running_or_notify_cancel():
                job.future.set_exception(ServeError("the server is shutting down", hint="Send the request again."))

    def _next_group(self) -> list[Job] | None:
        first = self._held.popleft() if self._held else self._queue.get()
        if first is None:
            return None
        group = [first]
        start = self.clock()
        wait = self.wait if self._busy else 0.0
        deadline = start + wait
        others: list[Job] = []
        while len(group) < self.max_batch:
            if self._held:
                job: Job | None = self._held.popleft()
            else:
                left = deadline - self.clock()
                try:
                    job = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if left > 0 and job is not None and self.clock() > deadline:  # it came after the group closed
                    self._held.append(job)
                    break
                # while requests keep coming the group keeps growing (up to WAIT_CAP waits in all): under a
                # steady load the clients answered by the last group come back a few ms apart
                deadline = min(start + WAIT_CAP * wait, self.clock() + wait)
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
            with self.slot.lock:  # an exclusive swap waits for this group, and this group for it
                predictor = self.slot.current  # one model for the whole group, even if a swap lands meanwhile
                self.busy_since = time.monotonic()
                try:
                    results = self._run(predictor, live)
                except BaseException as exc:  # the worker lives on; a request that fails, fails alone
                    self._one_by_one(predictor, live, exc)
                    continue
                finally:
                    self.busy_since = None
                    self._answered.append((time.monotonic(), len(live)))
            for j, r in zip(live, results, strict=True):
                j.future.set_result((predictor, r))

    def _one_by_one(self, predictor: Predictor, jobs: list[Job], exc: BaseException) -> None:
        """After a group failed: answer each of its requests alone, so only the one that fails hears of it
        (a stream that already sent tokens cannot start again: it hears the group's error)."""
        for j in jobs:
            if len(jobs) == 1 or j.streamed or j.abandoned:
                j.future.set_exception(exc)
                continue
            try:
                (result,) = self._run(predictor, [j])
            except BaseException as own:
                j.future.set_exception(own)
            else:
                j.future.set_result((predictor, result))

    @staticmethod
    def _run(predictor: Predictor, jobs: list[Job]) -> list[Any]:
        if jobs[0].kind == "predict":
            return predictor.predict_many([j.payload for j in jobs])
        streams = [j.on_token for j in jobs]

        def on_token(i: int, token: int) -> None:
            cb = streams[i]
            if cb is not None:
                jobs[i].streamed = True
                cb(token)

        return predictor.chat_many(
            [j.payload for j in jobs],
            [j.max_tokens for j in jobs],
            [j.temperature for j in jobs],
            on_token=on_token if any(streams) else None,
            stop=lambda i: jobs[i].abandoned,
        )
