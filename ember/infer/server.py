"""`ember serve`: an OpenAI-compatible HTTP API over the engine (FastAPI + uvicorn).

The app is thin: pydantic models validate (protocol.py), one thread owns the engine
(worker.py), the generation endpoints plan, submit and format (completions.py). Here:
the routes, OpenAI-shaped errors for everything (a client mistake is never a 500), the
OpenAPI schema, and Prometheus metrics.

    >>> app = create_app(Engine(model, tok), "smollm2")        # doctest: +SKIP
    >>> uvicorn.run(app, host="127.0.0.1", port=8000)           # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .completions import check_model, encode_prompt, handle_chat, handle_completion, model_not_found
from .engine import Engine
from .protocol import (
    APIError,
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    TokenizeRequest,
    error_body,
)
from .worker import EngineWorker

log = logging.getLogger("ember.serve")
STATIC = Path(__file__).parent / "static"


@dataclass
class ServerState:
    engine: Engine
    worker: EngineWorker
    model_id: str
    max_queue: int
    metrics: Metrics
    in_flight: int = 0  # engine requests submitted and not finished (event-loop side only)

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    @property
    def ctx(self) -> int:
        return self.engine.max_seq_len


def create_app(engine: Engine, model_id: str, max_queue: int = 64) -> FastAPI:
    """The FastAPI app serving `engine` under the name `model_id`.

    max_queue: engine requests (each of n choices counts) allowed to wait or run at
    once; past it, new requests get a 503 so clients can back off.
    """
    if max_queue < 1:
        raise ValueError(f"max_queue must be >= 1, got {max_queue}")
    state = ServerState(engine, EngineWorker(engine), model_id, max_queue, Metrics())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state.worker.start()
        yield
        await asyncio.to_thread(state.worker.stop)

    app = FastAPI(title="ember", summary="OpenAI-compatible API over the ember engine", lifespan=lifespan)
    app.state.ember = state
    app.openapi = lambda: _openapi(app, model_id)
    app.add_middleware(MetricsMiddleware, metrics=state.metrics)
    _install_error_handlers(app)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        return await handle_chat(state, body, request)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        return await handle_completion(state, body, request)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [_model_card(state)]}

    @app.get("/v1/models/{model:path}")
    async def model(model: str):
        if model != state.model_id:
            raise model_not_found(model, state)
        return _model_card(state)

    @app.get("/health")
    async def health():
        w = state.worker
        return {"status": "ok", "model": state.model_id, "running": w.running, "waiting": w.waiting}

    @app.post("/tokenize")
    async def tokenize(body: TokenizeRequest):
        check_model(state, body.model)
        if body.messages is not None:
            msgs = [{"role": m.role, "content": m.text()} for m in body.messages]
            try:
                ids, _ = state.tokenizer.render_chat(msgs, add_generation_prompt=body.add_generation_prompt)
            except ValueError as e:  # the model's template refused these messages
                raise APIError(400, str(e), param="messages") from None
        else:
            ids = encode_prompt(state.tokenizer, body.prompt)
        return {"tokens": ids, "count": len(ids), "max_model_len": state.ctx}

    @app.post("/detokenize")
    async def detokenize(body: DetokenizeRequest):
        check_model(state, body.model)
        try:
            return {"prompt": state.tokenizer.decode(body.tokens)}
        except ValueError as e:  # an id the vocabulary lacks
            raise APIError(400, str(e), param="tokens") from None

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics():
        return PlainTextResponse(state.metrics.render(state.worker), media_type="text/plain; version=0.0.4")

    @app.get("/", include_in_schema=False)
    async def index():
        page = STATIC / "index.html"
        if not page.is_file():
            raise APIError(404, "no web page is installed (ember/infer/static/index.html)", code="not_found")
        return FileResponse(page, media_type="text/html")

    return app


def _openapi(app: FastAPI, model_id: str) -> dict:
    """FastAPI's schema, with `model` narrowed to the one name this server answers to (so
    generated clients and schema-driven tests send requests that can succeed)."""
    if app.openapi_schema is None:
        from fastapi.openapi.utils import get_openapi

        spec = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
        for schema in spec.get("components", {}).get("schemas", {}).values():
            if "model" in schema.get("properties", {}):
                schema["properties"]["model"] = {"type": "string", "enum": [model_id], "title": "Model"}
        app.openapi_schema = spec
    return app.openapi_schema


def _model_card(state: ServerState) -> dict:
    return {"id": state.model_id, "object": "model", "created": state.metrics.started,
            "owned_by": "ember", "max_model_len": state.ctx}  # fmt: skip


# ---- errors: every failure in OpenAI's shape, client mistakes never a 500 -----------------

_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none", "function-after", "constrained-int"}


def _param(loc) -> str | None:
    """pydantic's error location → OpenAI's `param` ("messages[0].role"), without the
    union-member tags pydantic inserts ("prompt.list[str]")."""
    out = ""
    for part in loc:
        if part == "body" and not out:
            continue
        if isinstance(part, int):
            out += f"[{part}]"
        elif "[" in str(part) or str(part) in _TYPE_TAGS:
            break
        else:
            out += f".{part}" if out else str(part)
    return out or None


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(request, exc: APIError):
        return JSONResponse(error_body(exc.message, exc.type, exc.param, exc.code), exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request, exc: RequestValidationError):
        errors = exc.errors()
        err = errors[0] if errors else {"msg": "invalid request", "loc": ()}
        if err.get("type") == "json_invalid":
            detail = (err.get("ctx") or {}).get("error", "")
            return JSONResponse(error_body(f"malformed JSON in the request body: {detail}"), 400)
        param = _param(err.get("loc", ()))
        msg = err.get("msg", "invalid value")
        text = f"Invalid value for '{param}': {msg}" if param else msg
        return JSONResponse(error_body(text, param=param), 400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, exc: StarletteHTTPException):
        codes = {404: "not_found", 405: "method_not_allowed"}
        msg = exc.detail if isinstance(exc.detail, str) else "request failed"
        if exc.status_code == 404:
            msg = f"no route {request.method} {request.url.path}"
        elif exc.status_code == 405:
            msg = f"method {request.method} is not allowed on {request.url.path}"
        body = error_body(msg, code=codes.get(exc.status_code))
        return JSONResponse(body, exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def server_bug(request, exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(error_body(f"internal server error: {type(exc).__name__}",
                                       type="server_error", code="internal_error"), 500)  # fmt: skip


# ---- metrics (Prometheus text format) ---------------------------------------------------

ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/tokenize",
             "/detokenize", "/metrics", "/")  # fmt: skip


class Metrics:
    BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)

    def __init__(self):
        self.started = int(time.time())
        self.requests: Counter = Counter()  # (endpoint, status) → count
        self.latency: dict[str, list] = {}  # endpoint → [count per bucket..., sum, count]
        self.prompt_tokens = self.generation_tokens = 0

    def tokens(self, prompt: int, generated: int) -> None:
        self.prompt_tokens += prompt
        self.generation_tokens += generated

    def observe(self, path: str, status: int, seconds: float) -> None:
        endpoint = path if path in ENDPOINTS else "other"  # bounded label values
        self.requests[endpoint, status] += 1
        h = self.latency.setdefault(endpoint, [0] * (len(self.BUCKETS) + 2))
        for b, le in enumerate(self.BUCKETS):
            h[b] += seconds <= le
        h[-2] += seconds
        h[-1] += 1

    def render(self, worker: EngineWorker) -> str:
        lines = ["# HELP ember_requests_total HTTP requests by endpoint and status.",
                 "# TYPE ember_requests_total counter"]  # fmt: skip
        for (ep, status), n in sorted(self.requests.items()):
            lines.append(f'ember_requests_total{{endpoint="{ep}",status="{status}"}} {n}')
        for name, value, kind, doc in [
            ("ember_requests_running", worker.running, "gauge", "Engine requests in a batch slot."),
            ("ember_requests_waiting", worker.waiting, "gauge", "Engine requests queued for a slot."),
            ("ember_prompt_tokens_total", self.prompt_tokens, "counter", "Prompt tokens processed."),
            ("ember_generation_tokens_total", self.generation_tokens, "counter", "Tokens generated."),
        ]:
            lines += [f"# HELP {name} {doc}", f"# TYPE {name} {kind}", f"{name} {value}"]
        lines += ["# HELP ember_request_duration_seconds Time from request to last byte.",
                  "# TYPE ember_request_duration_seconds histogram"]  # fmt: skip
        for ep, h in sorted(self.latency.items()):
            for le, n in zip(self.BUCKETS, h):
                lines.append(f'ember_request_duration_seconds_bucket{{endpoint="{ep}",le="{le}"}} {n}')
            lines.append(f'ember_request_duration_seconds_bucket{{endpoint="{ep}",le="+Inf"}} {h[-1]}')
            lines.append(f'ember_request_duration_seconds_sum{{endpoint="{ep}"}} {h[-2]:.6f}')
            lines.append(f'ember_request_duration_seconds_count{{endpoint="{ep}"}} {h[-1]}')
        return "\n".join(lines) + "\n"


class MetricsMiddleware:
    """Counts every HTTP request by endpoint and status, and times it to its last byte."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0, status = time.perf_counter(), [500]  # an exception that escapes is a 500

        async def send_and_note(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            self.metrics.observe(scope["path"], status[0], time.perf_counter() - t0)
