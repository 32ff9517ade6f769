"""`ember serve`: an OpenAI-compatible HTTP API over the engine (FastAPI + uvicorn).

One background thread owns the engine (it is not thread-safe) and loops: take new
requests and aborts from an inbox, `engine.step()`, hand each request's new text, token
ids and log-probs to the asyncio side with `loop.call_soon_threadsafe`. It sleeps on a
condition when there is nothing to do. Handlers only validate, tokenize, submit and
format; the wire shapes (`chat.completion`, `text_completion`, SSE chunks, `{"error": ...}`)
are built in protocol.py.

    >>> app = create_app(Engine(model, tok), "smollm2")        # doctest: +SKIP
    >>> uvicorn.run(app, host="127.0.0.1", port=8000)           # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections import Counter
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, StreamingResponse
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import protocol as P
from .engine import Engine, GenerationResult
from .protocol import (
    APIError,
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    TokenizeRequest,
    chat_logprobs,
    error_body,
    legacy_logprobs,
)
from .sampling import SamplingParams

log = logging.getLogger("ember.serve")
STATIC = Path(__file__).parent / "static"


# ---- the engine thread ----------------------------------------------------------------


@dataclass
class Event:
    """What one engine request produced since the last event (token ids, their log-probs,
    the text they completed); the last event also carries the result or an error."""

    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list = field(default_factory=list)  # TokenLogprob per new token (if asked)
    result: GenerationResult | None = None
    prompt_logprobs: list | None = None
    error: str | None = None
    status: int = 400  # of the error: 400 the engine refused the request, 500 it failed

    @property
    def last(self) -> bool:
        return self.result is not None or self.error is not None


@dataclass(eq=False)
class Job:
    index: int  # which choice of the HTTP request this is
    prompt_ids: list[int]
    params: object  # SamplingParams
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue  # shared by the jobs of one HTTP request
    req: object = None  # the engine's Request, once added
    sent: int = 0  # tokens already handed over


class EngineWorker:
    """The thread that owns the engine. `submit` and `abort` may be called from any thread;
    everything else runs on the worker thread."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self._cond = threading.Condition()
        self._inbox: list[tuple[str, Job]] = []
        self._jobs: list[Job] = []  # added to the engine, not finished (worker thread only)
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.running = self.waiting = 0  # snapshots for /metrics and /health

    def start(self) -> None:
        with self._cond:
            if self._thread is None or not self._thread.is_alive():
                self._stopping = False
                self._thread = threading.Thread(target=self._loop, name="ember-engine", daemon=True)
                self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Fail what is still running (clients get an error), then end the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def submit(self, job: Job) -> None:
        self.start()
        self._post("add", job)

    def abort(self, job: Job) -> None:
        self._post("abort", job)

    def _post(self, kind: str, job: Job) -> None:
        with self._cond:
            self._inbox.append((kind, job))
            self._cond.notify()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._inbox and not self._jobs and not self._stopping:
                    self._cond.wait()
                inbox, self._inbox = self._inbox, []
                stopping = self._stopping
            for kind, job in inbox:
                self._add(job) if kind == "add" else self._abort(job)
            self._snapshot()
            if stopping:
                for job in list(self._jobs):
                    self._abort(job, error="the server is shutting down", status=503)
                return
            if self.engine.has_unfinished():
                try:
                    self.engine.step()
                except Exception as e:  # an engine bug: fail its requests, keep serving
                    log.exception("engine step failed")
                    for job in list(self._jobs):
                        self._abort(job, error=f"internal error in the engine: {type(e).__name__}", status=500)
            self._publish()

    def _add(self, job: Job) -> None:
        try:
            job.req = self.engine.add_request(job.prompt_ids, job.params)
        except ValueError as e:  # handlers check first; this is the engine's last word
            return self._send(job, Event(job.index, error=str(e)))
        self._jobs.append(job)

    def _abort(self, job: Job, error: str | None = None, status: int = 400) -> None:
        if job in self._jobs:
            self._jobs.remove(job)
            self.engine.abort(job.req)
            if error:
                self._send(job, Event(job.index, error=error, status=status))

    def _publish(self) -> None:
        for job in list(self._jobs):
            req = job.req
            text, new = req.take_delta(), req.token_ids[job.sent :]
            if not (text or new or req.finished):
                continue
            ev = Event(job.index, text, list(new), req.logprobs[job.sent : len(req.token_ids)])
            job.sent = len(req.token_ids)
            if req.finished:
                ev.result = req.result()
                ev.prompt_logprobs = req.prompt_logprobs
                self._jobs.remove(job)
            self._send(job, ev)
        self._snapshot()

    def _snapshot(self) -> None:
        self.waiting, self.running = self.engine.num_waiting, self.engine.num_running

    @staticmethod
    def _send(job: Job, ev: Event) -> None:
        try:
            job.loop.call_soon_threadsafe(job.queue.put_nowait, ev)
        except RuntimeError:  # the event loop is gone (shutdown): nobody is listening
            pass


# ---- the app ---------------------------------------------------------------------------


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
            raise _model_not_found(model, state)
        return _model_card(state)

    @app.get("/health")
    async def health():
        w = state.worker
        return {"status": "ok", "model": state.model_id, "running": w.running, "waiting": w.waiting}

    @app.post("/tokenize")
    async def tokenize(body: TokenizeRequest):
        _check_model(state, body.model)
        if body.messages is not None:
            msgs = [{"role": m.role, "content": m.text()} for m in body.messages]
            ids, _ = state.tokenizer.render_chat(msgs, add_generation_prompt=body.add_generation_prompt)
        else:
            ids = encode_prompt(state.tokenizer, body.prompt)
        return {"tokens": ids, "count": len(ids), "max_model_len": state.ctx}

    @app.post("/detokenize")
    async def detokenize(body: DetokenizeRequest):
        _check_model(state, body.model)
        V = state.tokenizer.vocab_size
        bad = [t for t in body.tokens if t >= V]
        if bad:
            raise APIError(400, f"token id {bad[0]} is outside the vocabulary 0..{V - 1}", param="tokens")
        return {"prompt": state.tokenizer.decode(body.tokens)}

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


def encode_prompt(tok, text: str) -> list[int]:
    """A raw prompt's ids, as `ember generate` encodes them (BOS first if the model wants it;
    special-token strings stay plain text)."""
    ids = tok.encode(text)
    if tok.add_bos and tok.bos_token_id is not None:
        ids = [tok.bos_token_id, *ids]
    return ids


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


def _model_not_found(name: str, state: ServerState) -> APIError:
    return APIError(404, f"The model '{name}' does not exist; this server serves '{state.model_id}'",
                    param="model", code="model_not_found")  # fmt: skip


def _check_model(state: ServerState, name: str | None) -> None:
    if name is not None and name != state.model_id:
        raise _model_not_found(name, state)


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


# ---- the two generation endpoints ---------------------------------------------------------


@dataclass
class Choice:
    """One choice gathered from its events."""

    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list = field(default_factory=list)
    result: GenerationResult | None = None
    prompt_logprobs: list | None = None

    def take(self, ev: Event) -> None:
        self.text += ev.text
        self.token_ids += ev.token_ids
        self.logprobs += ev.logprobs
        self.result = ev.result or self.result
        self.prompt_logprobs = ev.prompt_logprobs or self.prompt_logprobs


@dataclass
class Plan:
    """What one HTTP request asks of the engine: one spec (index, prompt ids, params) per
    choice, n per prompt, index = prompt * n + choice."""

    prompts: list[list[int]]
    specs: list[tuple[int, list[int], SamplingParams]]
    zero: bool  # max_tokens 0: the engine makes one token that nobody sees

    @property
    def prompt_tokens(self) -> int:
        return sum(len(p) for p in self.prompts)


def _plan(state: ServerState, body, prompts: list[list[int]], n_logprobs: int | None,
          prompt_logprobs: bool = False) -> Plan:  # fmt: skip
    _check_model(state, body.model)
    where = "messages" if isinstance(body, ChatCompletionRequest) else "prompt"
    ctx, asked = state.ctx, body.max_new_tokens
    V = min(state.engine.config.vocab_size, state.tokenizer.vocab_size)  # ids both know
    specs = []
    for p, ids in enumerate(prompts):
        if not ids:
            raise APIError(400, "the prompt is empty: at least one token is needed", param=where)
        if max(ids) >= V:
            raise APIError(400, f"prompt token id {max(ids)} is outside the vocabulary 0..{V - 1}", param=where)
        if len(ids) >= ctx:
            raise APIError(400, f"This model's maximum context length is {ctx} tokens, but the prompt "
                                f"has {len(ids)} tokens.", param=where, code="context_length_exceeded")  # fmt: skip
        m = ctx - len(ids) if asked is None else asked  # omitted: whatever the context leaves
        if len(ids) + m > ctx:
            raise APIError(400, f"This model's maximum context length is {ctx} tokens. However, you "
                                f"requested {len(ids) + m} tokens ({len(ids)} in the {where}, {m} for "
                                f"max_tokens). Please reduce the {where} or max_tokens.",
                           param="max_tokens", code="context_length_exceeded")  # fmt: skip
        for j in range(body.n):
            params = SamplingParams(
                # As vLLM does, a temperature too small to divide by safely means greedy; a
                # top_p below 1e-6 keeps only the top token either way (its probability is
                # >= 1/V), but a float32 zero would keep none.
                temperature=0.0 if body.temperature < 1e-5 else body.temperature,
                top_p=max(body.top_p, 1e-6), top_k=max(body.top_k, 0),
                min_p=body.min_p, frequency_penalty=body.frequency_penalty,
                presence_penalty=body.presence_penalty, repetition_penalty=body.repetition_penalty,
                seed=None if body.seed is None else (body.seed + j) % (P.MAX_SEED + 1),
                max_tokens=max(m, 1), stop=tuple(body.stop_list()), logprobs=n_logprobs,
                prompt_logprobs=prompt_logprobs,
            )  # fmt: skip
            specs.append((p * body.n + j, ids, params))
    if state.in_flight + len(specs) > state.max_queue:
        raise APIError(503, f"the server is busy ({state.in_flight} requests in flight, at most "
                            f"{state.max_queue}); retry later", type="server_error", code="server_overloaded")  # fmt: skip
    return Plan(prompts, specs, zero=asked == 0)


class Generation:
    """The engine requests of one HTTP request: submitted at once (so the 503 check and the
    submission happen with no await between them), their events read from one queue, and
    `close()` aborting whatever has not finished (a closed stream, a client gone away)."""

    def __init__(self, state: ServerState, plan: Plan):
        self.state, self.plan, self.queue = state, plan, asyncio.Queue()
        loop = asyncio.get_running_loop()
        jobs = [Job(i, ids, params, loop, self.queue) for i, ids, params in plan.specs]
        self.pending = {j.index: j for j in jobs}
        self.closed = False
        state.in_flight += len(jobs)
        for j in jobs:
            state.worker.submit(j)

    async def events(self, watch: Request | None = None):
        """Yield events until every choice has its last one. `watch`: poll it for a client
        disconnect (plain responses; a StreamingResponse notices one itself)."""
        while self.pending:
            if watch is None:
                ev = await self.queue.get()
            else:
                try:
                    ev = await asyncio.wait_for(self.queue.get(), 0.25)
                except TimeoutError:
                    if await watch.is_disconnected():
                        raise APIError(499, "the client closed the request") from None
                    continue
            if ev.last:
                self.pending.pop(ev.index, None)
            if ev.result is not None:
                done = 0 if self.plan.zero else ev.result.completion_tokens
                self.state.metrics.tokens(ev.result.prompt_tokens, done)
            yield ev

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for j in self.pending.values():
            self.state.worker.abort(j)
        self.state.in_flight -= len(self.plan.specs)


async def _gather(state: ServerState, plan: Plan, request: Request) -> list[Choice]:
    choices = [Choice() for _ in plan.specs]
    gen = Generation(state, plan)
    try:
        async for ev in gen.events(watch=request):
            if ev.error:
                raise APIError(ev.status, ev.error, type="invalid_request_error" if ev.status == 400 else "server_error")
            choices[ev.index].take(ev)
    finally:
        gen.close()
    return choices


def _finish(c: Choice, zero: bool) -> tuple[str, str]:
    return ("length" if zero else c.result.finish_reason), ("" if zero else c.text)


def _head(kind: str, state: ServerState) -> dict:
    prefix = "chatcmpl" if kind.startswith("chat") else "cmpl"
    return {"id": f"{prefix}-{uuid.uuid4().hex}", "object": kind, "created": int(time.time()),
            "model": state.model_id}  # fmt: skip


async def handle_chat(state: ServerState, body: ChatCompletionRequest, request: Request):
    msgs = [{"role": m.role, "content": m.text()} for m in body.messages]
    try:
        ids, _ = state.tokenizer.render_chat(msgs, add_generation_prompt=True)
    except ValueError as e:
        raise APIError(400, str(e), param="messages") from None
    k = body.top_logprobs or 0
    plan = _plan(state, body, [ids], k if body.logprobs else None)
    tok = state.tokenizer

    def lps(entries):
        return {"content": chat_logprobs(tok, entries, k), "refusal": None} if body.logprobs else None

    if body.stream:
        gen = Generation(state, plan)
        return _stream(_chat_chunks(state, body, gen, lps), gen)
    choices = await _gather(state, plan, request)
    out = []
    for i, c in enumerate(choices):
        reason, text = _finish(c, plan.zero)
        out.append({"index": i, "message": {"role": "assistant", "content": text},
                    "logprobs": lps([] if plan.zero else c.logprobs), "finish_reason": reason})  # fmt: skip
    completion = sum(len(c.token_ids) for c in choices) if not plan.zero else 0
    return {**_head("chat.completion", state), "choices": out, "usage": P.usage(plan.prompt_tokens, completion)}


async def _chat_chunks(state, body, gen: Generation, lps):
    head, completion, plan = _head("chat.completion.chunk", state), 0, gen.plan

    def chunk(i, delta, reason=None, logprobs=None):
        return P.sse({**head, "choices": [{"index": i, "delta": delta, "logprobs": logprobs, "finish_reason": reason}]})

    try:
        for i, _, _ in plan.specs:
            yield chunk(i, {"role": "assistant", "content": ""})
        async for ev in gen.events():
            if ev.error:
                yield P.sse(error_body(ev.error, type="server_error"))
                break
            if not plan.zero and (ev.text or (body.logprobs and ev.logprobs)):
                yield chunk(ev.index, {"content": ev.text}, logprobs=lps(ev.logprobs))
            if ev.result is not None:
                completion += 0 if plan.zero else ev.result.completion_tokens
                yield chunk(ev.index, {}, reason="length" if plan.zero else ev.result.finish_reason)
    finally:
        gen.close()
    if body.include_usage:
        yield P.sse({**head, "choices": [], "usage": P.usage(plan.prompt_tokens, completion)})
    yield P.sse("[DONE]")


async def handle_completion(state: ServerState, body: CompletionRequest, request: Request):
    tok = state.tokenizer
    prompts = [encode_prompt(tok, p) if isinstance(p, str) else list(p) for p in body.prompts()]
    echo_lp = body.echo and body.logprobs is not None
    plan = _plan(state, body, prompts, body.logprobs, prompt_logprobs=echo_lp)
    k = body.logprobs or 0
    echoes = [(p if isinstance(p, str) else tok.decode(p)) if body.echo else "" for p in body.prompts()]

    def lps(c: Choice, prompt_ids, echo: str):
        if body.logprobs is None:
            return None
        ids, entries = ([] if plan.zero else c.token_ids), ([] if plan.zero else c.logprobs)
        if echo_lp:
            ids, entries = prompt_ids + ids, list(c.prompt_logprobs or [None] * len(prompt_ids)) + entries
        return legacy_logprobs(tok, ids, entries, k, offset=0 if echo_lp else len(echo))

    if body.stream:
        gen = Generation(state, plan)
        return _stream(_completion_chunks(state, body, gen, echoes, lps), gen)
    choices = await _gather(state, plan, request)
    out = []
    for i, c in enumerate(choices):
        p = i // body.n
        reason, text = _finish(c, plan.zero)
        out.append({"index": i, "text": echoes[p] + text, "logprobs": lps(c, plan.prompts[p], echoes[p]),
                    "finish_reason": reason})  # fmt: skip
    completion = sum(len(c.token_ids) for c in choices) if not plan.zero else 0
    return {**_head("text_completion", state), "choices": out, "usage": P.usage(plan.prompt_tokens, completion)}


async def _completion_chunks(state, body, gen: Generation, echoes, lps):
    head, completion, plan = _head("text_completion", state), 0, gen.plan

    def chunk(i, text, reason=None, logprobs=None):
        return P.sse({**head, "choices": [{"index": i, "text": text, "logprobs": logprobs, "finish_reason": reason}]})

    try:
        choices = [Choice() for _ in plan.specs]
        for i, _, _ in plan.specs:
            if echoes[i // body.n] and body.logprobs is None:
                yield chunk(i, echoes[i // body.n])
        async for ev in gen.events():
            if ev.error:
                yield P.sse(error_body(ev.error, type="server_error"))
                break
            c, p = choices[ev.index], ev.index // body.n
            c.take(ev)
            if body.logprobs is None and not plan.zero and ev.text:
                yield chunk(ev.index, ev.text)
            if ev.result is not None:
                completion += 0 if plan.zero else ev.result.completion_tokens
                reason, text = _finish(c, plan.zero)
                if body.logprobs is not None:  # log-probs come whole, with the choice's text
                    yield chunk(ev.index, echoes[p] + text, logprobs=lps(c, plan.prompts[p], echoes[p]))
                yield chunk(ev.index, "", reason=reason)
    finally:
        gen.close()
    if body.include_usage:
        yield P.sse({**head, "choices": [], "usage": P.usage(plan.prompt_tokens, completion)})
    yield P.sse("[DONE]")


def _stream(chunks, gen: Generation) -> StreamingResponse:
    # The background task closes the generation even if the body never started (a client
    # that hung up at once); closing twice is harmless.
    return StreamingResponse(chunks, media_type="text/event-stream", headers={"Cache-Control": "no-cache"},
                             background=BackgroundTask(gen.close))  # fmt: skip


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
