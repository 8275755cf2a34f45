"""The HTTP server: OpenAI-compatible chat completions plus a task-shaped endpoint.

    GET  /health                 liveness + which release answers
    GET  /v1/models              the served model (OpenAI format)
    POST /v1/chat/completions    OpenAI chat completions (non-streaming)
    POST /v1/predict             {"text": ...} → {"label": ...} / {"output": ...}

Every request — good or bad — is written to the project's request log, which
``slmloop monitor`` compares with the training data. Errors are JSON in the
OpenAI shape ``{"error": {"message", "type", "code"}}`` with a 4xx status for
anything the client can fix.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator

from slmloop.errors import SlmloopError
from slmloop.evaluate.answers import answer_rows
from slmloop.evaluate.metrics import parse_json_object
from slmloop.manifest import TaskConfig
from slmloop.models.inference import generate
from slmloop.models.loading import render_prompt
from slmloop.store import RequestLog, Store

__all__ = ["ChatRequest", "PredictRequest", "Predictor", "create_app"]

MAX_TOKENS_CEILING = 2048


class ContentPart(BaseModel):
    type: Literal["text"]
    text: str


class Message(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str | list[ContentPart]

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class ChatRequest(BaseModel):
    # OpenAI clients send many optional knobs; unknown ones are accepted and ignored
    model_config = ConfigDict(extra="allow")
    model: str | None = None
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, gt=0, le=MAX_TOKENS_CEILING)
    max_completion_tokens: int | None = Field(None, gt=0, le=MAX_TOKENS_CEILING)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    stream: bool = False


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str | None = Field(None, description="classification / extraction input")
    input: str | None = Field(None, description="generation input (alias of text)")

    @model_validator(mode="after")
    def _one_input(self) -> PredictRequest:
        value = self.text if self.text is not None else self.input
        if value is None or not value.strip():
            raise ValueError("send a non-empty 'text' (or 'input') field")
        return self

    @property
    def value(self) -> str:
        return self.text if self.text is not None else str(self.input)


@dataclass
class Predictor:
    """A loaded model plus the task it was trained for. One request at a time."""

    model: Any
    tokenizer: Any
    task: TaskConfig
    name: str
    mode: str = "rank"
    max_new_tokens: int = 128
    prompt: str = "full"  # the prompt style the model was trained with
    rank_margin: float | None = 6.0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    def predict(self, text: str) -> dict[str, Any]:
        task = self.task
        with self._lock:  # the same answering code as evaluation
            (a,) = answer_rows(
                task,
                self.prompt,
                self.mode,
                self.model,
                self.tokenizer,
                [{"text": text, "input": text}],
                batch_size=1,
                max_new_tokens=self.max_new_tokens,
                margin=self.rank_margin,
            )
        if task.type == "classification":
            if "probs" in a.scores:
                return {"label": a.prediction, "scores": a.scores["probs"]}
            return {"label": a.prediction or None, "raw": a.raw, "valid": bool(a.prediction)}
        if task.type == "extraction":
            obj = parse_json_object(a.raw)
            return {"output": obj, "raw": a.raw, "valid": obj is not None}
        return {"output": a.raw}

    def chat(
        self, messages: list[dict[str, str]], max_tokens: int, temperature: float = 0.0
    ) -> tuple[str, int, int, str]:
        """Greedy by default (task models should answer deterministically); samples if temperature > 0."""
        prompt = render_prompt(self.tokenizer, messages)
        n_prompt = len(self.tokenizer(prompt, add_special_tokens=False)["input_ids"])
        with self._lock:
            ((answer, n_new),) = generate(
                self.model, self.tokenizer, [prompt], max_new_tokens=max_tokens, temperature=temperature
            )
        finish = "length" if n_new >= max_tokens else "stop"
        return answer, n_prompt, n_new, finish


def _error(status: int, message: str, kind: str, code: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": {"message": message, "type": kind, "code": code}})


def create_app(predictor: Predictor, store: Store | None, release_version: int | None) -> FastAPI:
    app = FastAPI(title="slmloop", version="1", docs_url="/docs", redoc_url=None)

    def log(request: Request, status: int, started: float) -> None:
        if store is None:
            return
        entry = RequestLog(
            release_version=release_version,
            endpoint=request.url.path,
            status=status,
            input=getattr(request.state, "log_input", "")[:20000],
            output=getattr(request.state, "log_output", "")[:20000],
            latency_ms=(time.perf_counter() - started) * 1000,
        )
        with contextlib.suppress(Exception):  # logging must never take the server down
            store.add(entry)

    @app.middleware("http")
    async def request_log(request: Request, call_next: Any) -> Any:
        started = time.perf_counter()
        response = await call_next(request)
        if request.url.path.startswith("/v1/") and request.method == "POST":
            log(request, response.status_code, started)
        return response

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(x) for x in e['loc'] if x != 'body') or 'body'}: {e['msg']}" for e in exc.errors()
        )
        body = await request.body()
        request.state.log_input = body.decode("utf-8", errors="replace")
        return _error(422, f"invalid request: {problems}", "invalid_request_error", "invalid_request")

    @app.exception_handler(SlmloopError)
    async def known_error(request: Request, exc: SlmloopError) -> JSONResponse:
        msg = exc.message + (f" ({exc.hint})" if exc.hint else "")
        return _error(exc.http_status, msg, "slmloop_error", exc.code)

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "model": predictor.name,
            "release": release_version,
            "task": predictor.task.type,
        }

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": predictor.name, "object": "model", "owned_by": "slmloop"}]}

    @app.post("/v1/predict")
    def predict(body: PredictRequest, request: Request) -> dict[str, Any]:
        request.state.log_input = body.value
        result = predictor.predict(body.value)
        request.state.log_output = json.dumps(result, ensure_ascii=False)
        return {"model": predictor.name, **result}

    @app.post("/v1/chat/completions", response_model=None)
    def chat(body: ChatRequest, request: Request) -> dict[str, Any] | JSONResponse:
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        request.state.log_input = "\n".join(m["content"] for m in messages if m["role"] == "user")
        if body.stream:
            return _error(
                400,
                "stream=true is not supported yet; send stream=false",
                "invalid_request_error",
                "stream_unsupported",
            )
        max_tokens = body.max_completion_tokens or body.max_tokens or predictor.max_new_tokens
        answer, n_prompt, n_new, finish = predictor.chat(messages, max_tokens, body.temperature or 0.0)
        request.state.log_output = answer
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": predictor.name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": finish}],
            "usage": {
                "prompt_tokens": n_prompt,
                "completion_tokens": n_new,
                "total_tokens": n_prompt + n_new,
            },
        }

    return app
