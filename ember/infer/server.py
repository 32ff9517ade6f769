"""`ember serve`: an OpenAI-compatible HTTP API over the engine (FastAPI + uvicorn).

The app is thin: pydantic models validate (protocol.py), one thread owns the engine
(worker.py), the generation endpoints plan, submit and format (completions.py), and an
optional encoder beside the chat model answers /v1/embeddings (embeddings_api.py), and
/tokenizer_info, /tokenize and /detokenize speak vLLM's shapes (tokenizer_api.py). Here:
the routes, OpenAI-shaped errors for everything (a client mistake is never a 500), the
OpenAPI schema, and Prometheus metrics.

    >>> app = create_app(Engine(model, tok), "smollm2")        # doctest: +SKIP
    >>> uvicorn.run(app, host="127.0.0.1", port=8000)           # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import tokenizer_api, trace_api
from .completions import handle_chat, handle_completion
from .embeddings_api import EmbeddingModel, handle_embeddings
from .engine import Engine
from .protocol import (
    APIError,
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    EmbeddingRequest,
    TokenizeRequest,
    describe_errors,
    error_body,
)
from .state import MAX_BODY_BYTES, Metrics, ServerState
from .worker import EngineWorker

log = logging.getLogger("ember.serve")
STATIC = Path(__file__).parent / "static"



def create_app(engine: Engine, model_id: str, max_queue: int = 64, max_body_bytes: int = MAX_BODY_BYTES,
               embedder=None, embedding_model: str | None = None, rag=None) -> FastAPI:
    """The FastAPI app serving `engine` under the name `model_id`.

    max_queue: engine requests (each of n choices counts) allowed to wait or run at
    once; past it, new requests get a 503 so clients can back off (a request that alone
    needs more gets a 400: it could never run). max_body_bytes: larger request bodies
    get a 413 before they are read. embedder (an ember.infer.embed.Embedder) answers
    /v1/embeddings under the name embedding_model, which must differ from model_id. rag
    (an ember.rag.answer.ChatRetriever) serves chat requests that ask for `rag` (rag_chat.py).
    """
    state = _server_state(engine, model_id, max_queue, max_body_bytes, embedder, embedding_model)
    state.rag = rag
    workers = [state.worker] + ([state.embeddings.worker] if embedder is not None else [])

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        for w in workers:
            w.start()
        yield
        for w in workers:
            await asyncio.to_thread(w.stop)

    app = FastAPI(title="ember", summary="OpenAI-compatible API over the ember engine", lifespan=lifespan)
    app.state.ember = state
    app.openapi = lambda: _openapi(app, model_id, embedding_model)
    app.add_middleware(BodyLimitMiddleware, max_bytes=max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=state.metrics)  # outermost: counts the 413s
    _install_error_handlers(app)

    # The bodies are parsed by the handlers in a worker thread, not by FastAPI on the event
    # loop; the schema still declares them (see _openapi).
    @app.post("/v1/chat/completions", openapi_extra=_body(ChatCompletionRequest))
    async def chat_completions(request: Request):
        return await handle_chat(state, request)

    @app.post("/v1/completions", openapi_extra=_body(CompletionRequest))
    async def completions(request: Request):
        return await handle_completion(state, request)

    @app.post("/v1/embeddings", openapi_extra=_body(EmbeddingRequest))
    async def embeddings(request: Request):
        return await handle_embeddings(state, request)

    _model_routes(app, state)
    trace_api.add_trace_routes(app, state)

    @app.get("/health")
    async def health():
        w = state.worker
        return {"status": "ok", "model": state.model_id, "running": w.running, "waiting": w.waiting}

    @app.get("/tokenizer_info")
    async def tokenizer_info():
        return tokenizer_api.tokenizer_info(state)

    @app.post("/tokenize", openapi_extra=_body(TokenizeRequest))
    async def tokenize(request: Request):
        return await run_in_threadpool(tokenizer_api.tokenize, state, await request.body())

    @app.post("/detokenize", openapi_extra=_body(DetokenizeRequest))
    async def detokenize(request: Request):
        return await run_in_threadpool(tokenizer_api.detokenize, state, await request.body())

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


def _server_state(engine: Engine, model_id: str, max_queue: int, max_body_bytes: int, embedder,
                  embedding_model: str | None) -> ServerState:
    if (embedder is None) != (embedding_model is None):
        raise ValueError("give both embedder and embedding_model, or neither")
    if embedding_model is not None and embedding_model == model_id:
        raise ValueError(f"the embedding model's name must differ from the chat model's, both are {model_id!r}")
    if max_queue < 1:
        raise ValueError(f"max_queue must be >= 1, got {max_queue}")
    if max_body_bytes < 1:
        raise ValueError(f"max_body_bytes must be >= 1, got {max_body_bytes}")
    state = ServerState(engine, EngineWorker(engine), model_id, max_queue, Metrics(), max_body_bytes)
    if embedder is not None:
        state.embeddings = EmbeddingModel(embedding_model, embedder)
    return state


def _model_routes(app: FastAPI, state: ServerState) -> None:
    """GET /v1/models (the chat model, then the embedding model if one is served) and
    GET /v1/models/{id}."""

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": _model_cards(state)}

    @app.get("/v1/models/{model:path}")
    async def model(model: str):
        cards = {card["id"]: card for card in _model_cards(state)}
        if model not in cards:
            names = " and ".join(f"'{name}'" for name in cards)
            raise APIError(404, f"The model '{model}' does not exist; this server serves {names}",
                           param="model", code="model_not_found")
        return cards[model]


BODIES = (ChatCompletionRequest, CompletionRequest, TokenizeRequest, DetokenizeRequest, EmbeddingRequest)


def _body(model) -> dict:
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}


def _openapi(app: FastAPI, model_id: str, embedding_model: str | None) -> dict:
    """FastAPI's schema plus the request bodies the handlers parse themselves, with `model`
    narrowed to the one name each endpoint answers to (so generated clients and
    schema-driven tests send requests that can succeed)."""
    if app.openapi_schema is None:
        from fastapi.openapi.utils import get_openapi

        spec = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
        schemas = spec.setdefault("components", {}).setdefault("schemas", {})
        for model in BODIES:
            schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas.update(schema.pop("$defs", {}))
            schemas[model.__name__] = schema
        for name, schema in spec.get("components", {}).get("schemas", {}).items():
            served = embedding_model if name == EmbeddingRequest.__name__ else model_id
            if "model" in schema.get("properties", {}) and served is not None:
                schema["properties"]["model"] = {"type": "string", "enum": [served], "title": "Model"}
        app.openapi_schema = spec
    return app.openapi_schema


def _model_cards(state: ServerState) -> list[dict]:
    """The chat model, then the embedding model if one is served."""
    cards = [{"id": state.model_id, "object": "model", "created": state.metrics.started,
              "owned_by": "ember", "max_model_len": state.ctx}]
    if state.embeddings is not None:
        cards.append(state.embeddings.card(state.metrics.started))
    return cards


# ---- errors: every failure in OpenAI's shape, client mistakes never a 500 -----------------

def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(request, exc: APIError):
        return JSONResponse(error_body(exc.message, exc.type, exc.param, exc.code), exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request, exc: RequestValidationError):
        text, param = describe_errors(list(exc.errors()) or [{"msg": "invalid request", "loc": ()}])
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
                                       type="server_error", code="internal_error"), 500)


# ---- metrics middleware ---------------------------------------------------------------

class MetricsMiddleware:
    """Counts every HTTP request by endpoint and status, and times it to its last byte."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0, status = time.perf_counter(), [None]

        async def send_and_note(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
            if status[0] is None:  # no answer and no error: the client left first
                status[0] = 499
        finally:  # an exception that escapes is a 500
            self.metrics.observe(scope["path"], status[0] or 500, time.perf_counter() - t0)


class BodyLimitMiddleware:
    """Refuses a request body over max_bytes with a 413: at once when its Content-Length
    says so, else as soon as a chunked upload passes the limit. The body is read here and
    replayed to the app, so nothing ever buffers more than max_bytes of it."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            return await self._refuse(scope, receive, send, f"is {declared} bytes")
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left mid-body: nobody to answer
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                return await self._refuse(scope, receive, send, f"passed {self.max_bytes} bytes")
            if not message.get("more_body", False):
                break
        pending = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

        async def replay():  # the body once, then the client's own messages (a disconnect)
            return pending.pop() if pending else await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope, receive, send, what: str) -> None:
        msg = f"the request body {what}; this server accepts at most {self.max_bytes} (--max_body_bytes)"
        # Connection: close, or the server would read the rest of the body to reuse the socket.
        response = JSONResponse(error_body(msg, code="request_too_large"), 413, headers={"Connection": "close"})
        await response(scope, receive, send)


def _content_length(scope) -> int | None:
    for key, value in scope.get("headers", ()):
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:  # the HTTP server rejects these before us
                return None
    return None
