"""The HTTP server: OpenAI-compatible chat completions plus a task-shaped endpoint.

    GET  /health                 liveness + which release answers
    GET  /metrics                Prometheus metrics (requests, latency, tokens, errors, batch sizes)
    GET  /v1/models              the served model (OpenAI format)
    POST /v1/chat/completions    OpenAI chat completions, ``stream: true`` over server-sent events
    POST /v1/predict             {"text": ...} → {"label": ...} / {"output": ...}

Requests go through a :class:`~slmloop.serve.engine.Batcher`, so concurrent
requests share forward passes. Every request — good or bad — is written to the
project's request log (PII redacted if configured), which ``slmloop monitor``
compares with the training data. Errors are JSON in the OpenAI shape
``{"error": {"message", "type", "code"}}`` with a 4xx status for anything the
client can fix: a malformed or non-UTF-8 body, a lone surrogate, a body, input
or ``max_tokens`` over the limits (refused before the model sees them), a
missing or wrong API key.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from slmloop.data.pii import redact
from slmloop.errors import SlmloopError
from slmloop.manifest import ServeConfig
from slmloop.serve.engine import Batcher, ChatAnswer, Job, ModelSlot, Overloaded, Predictor
from slmloop.serve.metrics import ServerMetrics
from slmloop.serve.requestlog import RequestLogWriter
from slmloop.store import RequestLog, Store

__all__ = ["Admission", "ChatRequest", "PredictRequest", "ServerState", "api_keys", "create_app"]


def _utf8(value: str) -> str:
    """Refuse strings that are not valid Unicode text (a lone surrogate such as "\\ud800")."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"contains a character that is not valid Unicode text ({value[exc.start]!r} at position {exc.start}); "
            "send UTF-8 text"
        ) from None
    return value


Text = Annotated[str, AfterValidator(_utf8)]


class ContentPart(BaseModel):
    type: Literal["text"]
    text: Text


class Message(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: Text | list[ContentPart]

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class ChatRequest(BaseModel):
    # OpenAI clients send many optional knobs; unknown ones are accepted and ignored
    model_config = ConfigDict(extra="allow")
    model: str | None = None
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, gt=0)
    max_completion_tokens: int | None = Field(None, gt=0)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    stream: bool = False


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: Text | None = Field(None, description="classification / extraction input")
    input: Text | None = Field(None, description="generation input (alias of text)")

    @model_validator(mode="after")
    def _one_input(self) -> PredictRequest:
        value = self.text if self.text is not None else self.input
        if value is None or not value.strip():
            raise ValueError("send a non-empty 'text' (or 'input') field")
        return self

    @property
    def value(self) -> str:
        return self.text if self.text is not None else str(self.input)


class ClientError(Exception):
    """A request the client must change; becomes a 4xx JSON error."""

    def __init__(self, status: int, message: str, code: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers


def _error(status: int, message: str, kind: str, code: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(
        status_code=status, content={"error": {"message": message, "type": kind, "code": code}}, headers=headers
    )


def api_keys(cfg: ServeConfig, environ: dict[str, str]) -> set[str]:
    """The accepted keys: the manifest's plus those in the ``api_keys_env`` variable (comma-separated)."""
    keys = {k.strip() for k in cfg.api_keys if k.strip()}
    keys |= {k.strip() for k in environ.get(cfg.api_keys_env, "").split(",") if k.strip()}
    return keys


def _presented_key(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return request.headers.get("x-api-key")


@dataclass
class ServerState:
    """What every route reads: the model slot, the batcher, the metrics, the request log and the limits."""

    slot: ModelSlot
    batcher: Batcher
    metrics: ServerMetrics
    store: Store | None
    cfg: ServeConfig
    keys: frozenset[str]
    log: RequestLogWriter | None = None

    @property
    def max_chars(self) -> int:
        """No tokenizer packs more characters than this into a token: longer inputs are refused untokenized."""
        return self.cfg.max_input_tokens * 16


#: the paths the server answers: metrics are labelled by these (any other path counts as "other")
ROUTES = frozenset(
    {"/health", "/metrics", "/v1/models", "/v1/predict", "/v1/chat/completions", "/docs", "/openapi.json"}
)


def _server(request: Request) -> ServerState:
    state: ServerState = request.app.state.server
    return state


def create_app(
    slot: ModelSlot | Predictor,
    store: Store | None,
    cfg: ServeConfig | None = None,
    *,
    keys: set[str] | frozenset[str] = frozenset(),
) -> FastAPI:
    """The server's app over ``slot`` (the release answering), logging requests to ``store``."""
    cfg = cfg or ServeConfig()
    slot = slot if isinstance(slot, ModelSlot) else ModelSlot(slot)
    metrics = ServerMetrics()
    metrics.release.set(slot.current.release or 0)
    # in flight at most: one full batch (serve.max_batch, batching or not) and serve.max_queue beyond it
    in_flight = cfg.max_queue + cfg.max_batch
    batcher = Batcher(
        slot,
        max_batch=cfg.max_batch if cfg.batching else 1,
        wait_ms=cfg.batch_wait_ms if cfg.batching else 0.0,
        observe=metrics.batch_size.observe,
        max_queue=in_flight,
    )
    log = RequestLogWriter(store, retention_days=cfg.log_retention_days) if store is not None else None
    server = ServerState(slot, batcher, metrics, store, cfg, frozenset(keys), log)
    app = FastAPI(title="slmloop", version="1", docs_url="/docs", redoc_url=None, lifespan=_lifespan)
    app.state.server = server
    app.add_middleware(Guard, server=server)
    app.add_middleware(BodyLimit, server=server)
    # outermost: past the requests the queue and a batch hold, refuse before anything else runs
    app.add_middleware(Admission, server=server, limit=in_flight)
    app.add_exception_handler(RequestValidationError, _bad_request)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(ClientError, _client_error)  # type: ignore[arg-type]
    app.add_exception_handler(SlmloopError, _known_error)  # type: ignore[arg-type]
    app.add_api_route("/health", _health, methods=["GET"])
    app.add_api_route("/metrics", _prometheus, methods=["GET"])
    app.add_api_route("/v1/models", _models, methods=["GET"])
    app.add_api_route("/v1/predict", _predict, methods=["POST"])
    app.add_api_route("/v1/chat/completions", _chat, methods=["POST"], response_model=None)
    return app


async def _refuse(
    send: Any,
    server: ServerState,
    path: str,
    status: int,
    message: str,
    code: str,
    headers: dict[str, str] | None = None,
) -> None:
    """A JSON error sent straight from an ASGI layer (before the app runs), counted like every other."""
    kind = "server_error" if status in (429, 503) else "invalid_request_error"
    body = json.dumps({"error": {"message": message, "type": kind, "code": code}}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
    server.metrics.errors.labels(code).inc()
    server.metrics.requests.labels(path if path in ROUTES else "other", str(status)).inc()


class BodyLimit:
    """Every request body is read here, whatever its framing (Content-Length or chunked), up to
    ``serve.max_request_bytes``: one over it gets a 413 without the rest being read, and a body that has not
    arrived within ``serve.request_timeout_s`` a 408. The app then reads the body from memory."""

    def __init__(self, app: Any, *, server: ServerState) -> None:
        self.app, self.server = app, server

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        cfg, path, started = self.server.cfg, scope["path"], time.perf_counter()
        limit = cfg.max_request_bytes
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            await self._too_large(send, path, int(declared), started)
            return
        chunks: list[bytes] = []
        size = 0
        deadline = started + cfg.request_timeout_s
        while True:
            try:
                message = await asyncio.wait_for(receive(), timeout=max(0.001, deadline - time.perf_counter()))
            except TimeoutError:
                await _refuse(
                    send,
                    self.server,
                    path,
                    408,
                    f"the request body did not arrive within {cfg.request_timeout_s:g} s (serve.request_timeout_s)",
                    "request_timeout",
                )
                _log_row(self.server, path, 408, started)
                return
            if message["type"] == "http.disconnect":
                return
            size += len(message.get("body", b""))
            if size > limit:
                await self._too_large(send, path, size, started, partial=True)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        whole = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

        async def replay() -> Any:
            return whole.pop() if whole else await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, send: Any, path: str, size: int, started: float, *, partial: bool = False) -> None:
        limit = self.server.cfg.max_request_bytes
        said = f"more than {limit:,}" if partial else f"{size:,}"
        await _refuse(
            send,
            self.server,
            path,
            413,
            f"request body is {said} bytes; this server accepts up to {limit:,} (serve.max_request_bytes)",
            "request_too_large",
        )
        _log_row(self.server, path, 413, started)


class Admission:
    """Requests to the model past ``limit`` in flight get a JSON 429 at once, before their body is read.

    Pure ASGI, in front of every other layer: under overload the refusal costs the server almost
    nothing, so it stays quick, and the requests admitted wait at most for the queue and one batch.
    """

    MODEL_PATHS = frozenset({"/v1/predict", "/v1/chat/completions"})

    def __init__(self, app: Any, *, server: ServerState, limit: int) -> None:
        self.app, self.server, self.limit, self.in_flight = app, server, limit, 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] not in self.MODEL_PATHS:
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.limit:
            retry = self.server.batcher.retry_after(self.in_flight)
            await _refuse(
                send,
                self.server,
                scope["path"],
                429,
                f"the server is at capacity ({self.in_flight} requests in flight); try again in {retry} s",
                "overloaded",
                {"Retry-After": str(retry)},
            )
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield
    server: ServerState = app.state.server
    server.slot.stop()
    server.batcher.close(server.cfg.drain_s)
    if server.log is not None:
        server.log.close()


# ---------------------------------------------------------------------------------------------
# every request: keys, size, the request log, metrics
# ---------------------------------------------------------------------------------------------
def _write_log(server: ServerState, request: Request, path: str, status: int, started: float) -> None:
    """Queue the request's log row (the writer thread stores it; a response never waits for the database)."""
    _log_row(
        server,
        path,
        status,
        started,
        getattr(request.state, "release", None),
        getattr(request.state, "log_input", ""),
        getattr(request.state, "log_output", ""),
    )


def _log_row(
    server: ServerState,
    path: str,
    status: int,
    started: float,
    release: int | None = None,
    text_in: str = "",
    text_out: str = "",
) -> None:
    if server.log is None or not path.startswith("/v1/"):
        return
    text_in, text_out = text_in[:20000], text_out[:20000]
    if server.cfg.redact_pii:
        text_in, text_out = redact(text_in)[0], redact(text_out)[0]
    server.log.write(
        RequestLog(
            release_version=release if release is not None else server.slot.current.release,
            endpoint=path,
            status=status,
            input=text_in,
            output=text_out,
            latency_ms=(time.perf_counter() - started) * 1000,
        )
    )


class Guard:
    """API keys checked, every answer logged and counted — pure ASGI, so a stream's disconnect reaches the
    route at once (a :class:`~starlette.middleware.base.BaseHTTPMiddleware` can defer it until the stream ends).

    A failure of ours becomes JSON like every other error (or, once a stream has started, is counted and the
    stream ends); metrics are labelled by route, so they stay bounded whatever paths clients send.
    """

    def __init__(self, app: Any, *, server: ServerState) -> None:
        self.app, self.server = app, server

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        server, metrics = self.server, self.server.metrics
        request = Request(scope, receive)
        started = request.state.started = time.perf_counter()
        path = scope["path"]
        label = path if path in ROUTES else "other"
        if server.keys and path.startswith("/v1/"):
            presented = _presented_key(request)
            # as bytes: a header may hold any byte, and compare_digest refuses non-ASCII text
            if presented is None or not any(hmac.compare_digest(presented.encode(), k.encode()) for k in server.keys):
                await _refuse(
                    send,
                    server,
                    path,
                    401,
                    "missing or wrong API key: send 'Authorization: Bearer KEY'",
                    "invalid_api_key",
                    {"WWW-Authenticate": "Bearer"},
                )
                return
        status = 500
        started_response = False

        async def watched(message: Any) -> None:
            nonlocal status, started_response
            if message["type"] == "http.response.start":
                status, started_response = message["status"], True
            await send(message)

        try:  # the body is read and bounded before (BodyLimit)
            await self.app(scope, receive, watched)
        except Exception as exc:  # a failure of ours
            metrics.errors.labels("internal_error").inc()
            status = 500
            if not started_response:
                response = _error(
                    500, f"the server failed to answer: {type(exc).__name__}: {exc}", "server_error", "internal_error"
                )
                await response(scope, receive, send)
        if path.startswith("/v1/") and scope["method"] == "POST" and not getattr(request.state, "streaming", False):
            _write_log(server, request, path, status, started)
        if path != "/metrics":
            metrics.requests.labels(label, str(status)).inc()
            metrics.latency.labels(label).observe(time.perf_counter() - started)


# ---------------------------------------------------------------------------------------------
# errors: JSON in the OpenAI shape
# ---------------------------------------------------------------------------------------------
async def _bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    problems = "; ".join(
        f"{'.'.join(str(x) for x in e['loc'] if x != 'body') or 'body'}: {e['msg']}" for e in exc.errors()
    )
    body = await request.body()
    request.state.log_input = body[:20000].decode("utf-8", errors="replace")
    _server(request).metrics.errors.labels("invalid_request").inc()
    return _error(422, f"invalid request: {problems}", "invalid_request_error", "invalid_request")


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    message = str(exc.detail)
    if exc.status_code == 400 and "parsing the body" in message:
        message = "the request body is not valid UTF-8 JSON; send UTF-8 encoded JSON"
    code = "invalid_body" if exc.status_code == 400 else f"http_{exc.status_code}"
    _server(request).metrics.errors.labels(code).inc()
    return _error(exc.status_code, message, "invalid_request_error", code)


async def _client_error(request: Request, exc: ClientError) -> JSONResponse:
    _server(request).metrics.errors.labels(exc.code).inc()
    kind = "invalid_request_error" if exc.status < 500 and exc.status != 429 else "server_error"
    return _error(exc.status, exc.message, kind, exc.code, exc.headers)


async def _known_error(request: Request, exc: SlmloopError) -> JSONResponse:
    _server(request).metrics.errors.labels(exc.code).inc()
    msg = exc.message + (f" ({exc.hint})" if exc.hint else "")
    return _error(exc.http_status, msg, "slmloop_error", exc.code)


def _check_input(server: ServerState, text: str) -> int:
    """The input's token count; too long is refused (413) before it reaches the model."""
    limit = server.cfg.max_input_tokens
    if len(text) > server.max_chars:
        raise ClientError(
            413,
            f"input is {len(text):,} characters; this server accepts up to {limit:,} tokens "
            "(serve.max_input_tokens). Shorten the input.",
            "input_too_long",
        )
    n = server.slot.current.count_tokens(text)
    if n > limit:
        raise ClientError(
            413,
            f"input is {n:,} tokens; this server accepts up to {limit:,} (serve.max_input_tokens). Shorten the input.",
            "input_too_long",
        )
    return n


@contextlib.contextmanager
def _admitted() -> Iterator[None]:
    """A full queue (:class:`Overloaded`) becomes a 429 with Retry-After."""
    try:
        yield
    except Overloaded as exc:
        raise ClientError(
            429,
            f"the server is at capacity ({exc.waiting} requests waiting, serve.max_queue); "
            f"try again in {exc.retry_after} s",
            "overloaded",
            {"Retry-After": str(exc.retry_after)},
        ) from None


def _admit(server: ServerState) -> None:
    """Refuse (429) before any work is spent on a request the full queue would refuse anyway."""
    with _admitted():
        server.batcher.admit()


def _submit(server: ServerState, job: Job) -> Future[Any]:
    """Queue ``job``, or refuse it (429 with Retry-After) when the queue is full."""
    with _admitted():
        return server.batcher.submit(job)


#: the status a request gets in the log and metrics when its client left before the answer (nginx's)
CLIENT_GONE = 499


def _abandon(server: ServerState, job: Job) -> None:
    server.metrics.abandoned.labels(job.abandon()).inc()


async def _client_left(request: Request) -> None:
    """Returns once the client has closed its connection (the body is read: the next message is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        await asyncio.sleep(0.05)


async def _answer(server: ServerState, job: Job, request: Request) -> Any:
    """``job``'s answer, within serve.request_timeout_s (else 503). Work nobody waits for any more — its client
    left, or its deadline passed — is dropped while queued and stopped at its next token while generating."""
    answer = asyncio.wrap_future(_submit(server, job))
    gone = asyncio.ensure_future(_client_left(request))
    try:
        done, _ = await asyncio.wait(
            {answer, gone}, timeout=server.cfg.request_timeout_s, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        gone.cancel()
    if answer in done:
        return answer.result()
    _abandon(server, job)
    if gone in done:
        raise ClientError(CLIENT_GONE, "the client closed the connection before the answer", "client_gone")
    raise ClientError(
        503,
        f"not answered within {server.cfg.request_timeout_s:g} s (serve.request_timeout_s); try again later",
        "timeout",
    )


# ---------------------------------------------------------------------------------------------
# routes
# ---------------------------------------------------------------------------------------------
def _health(request: Request) -> JSONResponse:
    """200 while the worker answers; 503 when it died or has been stuck on one group for too long."""
    server = _server(request)
    slot, worker = server.slot, server.batcher.health()
    p = slot.current
    out: dict[str, Any] = {"status": "ok", "model": p.name, "release": p.release, "task": p.task.type}
    out["queued"] = worker["queued"]
    if slot.reload_error is not None:  # still answering with the old release
        out["reload_error"] = slot.reload_error
    if not worker["alive"]:
        out["status"] = "dead"
    elif worker["busy_s"] > 2 * server.cfg.request_timeout_s:
        out["status"] = "stuck"
        out["busy_s"] = worker["busy_s"]
    return JSONResponse(out, status_code=200 if out["status"] == "ok" else 503)


def _prometheus(request: Request) -> Response:
    server = _server(request)
    server.metrics.release.set(server.slot.current.release or 0)
    server.metrics.reload_failures.set(server.slot.reload_failures)
    if server.log is not None:
        server.metrics.log_dropped.set(server.log.dropped + server.log.failed)
    return Response(server.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


def _models(request: Request) -> dict[str, Any]:
    name = _server(request).slot.current.name
    return {"object": "list", "data": [{"id": name, "object": "model", "owned_by": "slmloop"}]}


async def _predict(body: PredictRequest, request: Request) -> dict[str, Any]:
    server = _server(request)
    request.state.log_input = body.value
    _admit(server)  # a full queue refuses before the input is tokenized
    n_in = _check_input(server, body.value)
    predictor, result = await _answer(server, Job("predict", ("predict",), body.value), request)
    request.state.release = predictor.release
    server.metrics.tokens.labels("prompt").inc(n_in)
    request.state.log_output = json.dumps(result, ensure_ascii=False)
    return {"model": predictor.name, **result}


async def _chat(body: ChatRequest, request: Request) -> dict[str, Any] | StreamingResponse:
    server = _server(request)
    cfg = server.cfg
    messages = [{"role": m.role, "content": m.text()} for m in body.messages]
    request.state.log_input = "\n".join(m["content"] for m in messages if m["role"] == "user")
    _admit(server)  # a full queue refuses before the input is tokenized
    _check_input(server, "\n".join(m["content"] for m in messages))
    max_tokens = body.max_completion_tokens or body.max_tokens or server.slot.current.max_new_tokens
    if max_tokens > cfg.max_tokens_limit:
        raise ClientError(
            422,
            f"max_tokens {max_tokens:,} is over this server's limit of {cfg.max_tokens_limit:,} "
            "(serve.max_tokens_limit)",
            "max_tokens_too_large",
        )
    job = Job("chat", ("chat",), messages, max_tokens=max_tokens, temperature=float(body.temperature or 0.0))
    if body.stream:
        request.state.streaming = True  # logged when the stream ends
        return _stream(server, request, job)
    predictor, answer = await _answer(server, job, request)
    request.state.release = predictor.release
    request.state.log_output = answer.text
    _count(server, answer)
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": predictor.name,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": answer.text},
                "finish_reason": answer.finish_reason,
            }
        ],
        "usage": {
            "prompt_tokens": answer.prompt_tokens,
            "completion_tokens": answer.completion_tokens,
            "total_tokens": answer.prompt_tokens + answer.completion_tokens,
        },
    }


def _count(server: ServerState, answer: ChatAnswer) -> None:
    server.metrics.tokens.labels("prompt").inc(answer.prompt_tokens)
    server.metrics.tokens.labels("completion").inc(answer.completion_tokens)


def _stream(server: ServerState, request: Request, job: Job) -> StreamingResponse:
    """OpenAI-style server-sent events: a role chunk, content deltas as tokens come, a finish chunk, [DONE].
    A client that leaves mid-stream stops its generation (logged as 499)."""
    loop = asyncio.get_running_loop()
    tokens: asyncio.Queue[int] = asyncio.Queue()

    def on_token(token: int) -> None:  # called in the batcher's thread
        loop.call_soon_threadsafe(tokens.put_nowait, token)

    job.on_token = on_token
    future = asyncio.wrap_future(_submit(server, job))
    chunk_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
    created = int(time.time())
    name = server.slot.current.name
    tok = server.slot.current.tokenizer

    def event(delta: dict[str, str], finish: str | None = None) -> str:
        chunk = {
            "id": chunk_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": name,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        return f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"

    def ended() -> None:
        """The response is over: if the answer is not, the client left — stop its generation, log a 499."""
        if future.done() or job.abandoned:
            return
        _abandon(server, job)
        server.metrics.requests.labels(request.url.path, str(CLIENT_GONE)).inc()
        _write_log(server, request, request.url.path, CLIENT_GONE, request.state.started)

    async def events() -> AsyncIterator[str]:
        try:
            async for chunk in _events():
                yield chunk
        finally:
            ended()

    async def _events() -> AsyncIterator[str]:
        yield event({"role": "assistant"})
        ids: list[int] = []
        sent = ""
        finished = False
        while not finished:
            getter = asyncio.ensure_future(tokens.get())
            done, _ = await asyncio.wait({getter, future}, return_when=asyncio.FIRST_COMPLETED)
            if getter in done:
                ids.append(getter.result())
            else:  # every token was queued before the answer was set: drain them
                getter.cancel()
                while not tokens.empty():
                    ids.append(tokens.get_nowait())
                finished = True
            text = str(tok.decode(ids, skip_special_tokens=True)).lstrip()
            # hold back half of a multi-byte character until its other half comes (or the answer ends)
            if (finished or not text.endswith("\ufffd")) and len(text) > len(sent):
                yield event({"content": text[len(sent) :]})
                sent = text
        try:
            predictor, answer = await future
        except Exception as exc:  # the stream has started: report in-band, as OpenAI does
            yield f"data: {json.dumps({'error': {'message': str(exc), 'type': 'server_error'}})}\n\n"
            _write_log(server, request, request.url.path, 500, request.state.started)
            return
        request.state.release = predictor.release
        request.state.log_output = answer.text
        _count(server, answer)
        yield event({}, answer.finish_reason)
        yield "data: [DONE]\n\n"
        _write_log(server, request, request.url.path, 200, request.state.started)

    return _Stream(events(), ended, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


class _Stream(StreamingResponse):
    """A streaming response that calls ``ended`` as soon as it is over, however it ends: a disconnect cancels the
    send that is waiting, and the body generator's own ``finally`` would only run once it is collected."""

    def __init__(self, content: AsyncIterator[str], ended: Any, **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self.ended = ended

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.ended()
