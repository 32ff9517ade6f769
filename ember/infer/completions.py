"""The two generation endpoints of `ember serve`: `/v1/chat/completions` and
`/v1/completions`.

A request's body becomes a `Plan` (parsed, prompt ids checked against the context, one
SamplingParams per choice: n per prompt, choice i seeded with seed + i), then a
`Generation` (its engine requests submitted together), then either one JSON response or a
stream of SSE chunks in OpenAI's shapes. Parsing, planning and the final JSON run in a
worker thread: their cost grows with the body, and the event loop must keep answering.
max_tokens 0 (how `lm_eval` scores a prompt with `echo`) runs the engine for one token
that nobody sees, since the engine always makes at least one.

    >>> await handle_chat(state, request)  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from . import chat_tools as T
from . import protocol as P
from .engine import GenerationResult
from .protocol import (
    APIError,
    ChatCompletionRequest,
    CompletionRequest,
    chat_logprobs,
    error_body,
    legacy_logprobs,
)
from .rag_chat import with_sources
from .sampling import SamplingParams
from .state import ServerState
from .tool_calls import to_message
from .worker import Event, Job

DISCONNECT_POLL_S = 0.25  # how often a plain (non-streaming) request checks for a hang-up


def model_not_found(name: str, state: ServerState) -> APIError:
    what = "does not exist"
    if state.embeddings is not None and name == state.embeddings.name:
        what = "is an embedding model (POST /v1/embeddings)"
    return APIError(404, f"The model '{name}' {what}; this server generates with '{state.model_id}'",
                    param="model", code="model_not_found")


def check_model(state: ServerState, name: str | None) -> None:
    if name is not None and name != state.model_id:
        raise model_not_found(name, state)


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
    constraint: object = None  # makes each choice's decoding constraint (chat_tools), or None
    stops: tuple = ()  # stop strings, and the ids that end a reply (include_stop_str_in_output)
    end_ids: frozenset = frozenset()
    extra: dict = field(default_factory=dict)  # top-level response fields (rag_chat: "sources")

    @property
    def prompt_tokens(self) -> int:
        return sum(len(p) for p in self.prompts)


def check_fits_queue(state: ServerState, n_prompts: int, n: int) -> None:
    """A request with more sequences than the queue ever holds can never run: that is the
    client's mistake (400), not a busy server (503, which clients retry by themselves)."""
    seqs = n_prompts * n
    if seqs > state.max_queue:
        what = f"{n_prompts} prompts x n={n}" if n_prompts > 1 else f"n={n}"
        raise APIError(400, f"this request needs {seqs} sequences ({what}), but the server holds at most "
                            f"{state.max_queue} at once (--max_queue); send fewer prompts or a smaller n",
                       param="prompt" if n_prompts > 1 else "n")


def _plan(state: ServerState, body, prompts: list[list[int]], n_logprobs: int | None,
          prompt_logprobs: bool = False, grammar=None) -> Plan:
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
                                f"has {len(ids)} tokens.",
                           param=where, code="context_length_exceeded")
        m = ctx - len(ids) if asked is None else asked  # omitted: whatever the context leaves
        if len(ids) + m > ctx:
            raise APIError(400, f"This model's maximum context length is {ctx} tokens. However, you "
                                f"requested {len(ids) + m} tokens ({len(ids)} in the {where}, {m} for "
                                f"max_tokens). Please reduce the {where} or max_tokens.",
                           param="max_tokens", code="context_length_exceeded")
        T.check_sampling_extras(body, V, m)
        for j in range(body.n):
            specs.append((p * body.n + j, ids, _params(body, j, m, n_logprobs, prompt_logprobs)))
    return Plan(prompts, specs, zero=asked == 0, **T.decoding(state.tokenizer, body, grammar))


def _params(body, j: int, max_tokens: int, n_logprobs: int | None, prompt_logprobs: bool) -> SamplingParams:
    try:
        return SamplingParams(
            # As vLLM does, a temperature too small to divide by safely means greedy; a
            # top_p below 1e-6 keeps only the top token either way (its probability is
            # >= 1/V), but a float32 zero would keep none.
            temperature=0.0 if body.temperature < 1e-5 else body.temperature,
            top_p=max(body.top_p, 1e-6), top_k=max(body.top_k, 0),
            min_p=body.min_p, frequency_penalty=body.frequency_penalty,
            presence_penalty=body.presence_penalty, repetition_penalty=body.repetition_penalty,
            seed=None if body.seed is None else (body.seed + j) % (P.MAX_SEED + 1),
            max_tokens=max(max_tokens, 1), stop=tuple(body.stop_list()), logprobs=n_logprobs,
            prompt_logprobs=prompt_logprobs, ignore_eos=body.ignore_eos, stop_token_ids=tuple(body.stop_token_ids or ()),
        )
    except ValueError as e:  # the protocol's bounds should have caught it: still the client's value
        raise APIError(400, str(e)) from None


class Generation:
    """The engine requests of one HTTP request: submitted at once (so the 503 check and the
    submission happen with no await between them), their events read from one queue, and
    `close()` aborting whatever has not finished (a closed stream, a client gone away)."""

    def __init__(self, state: ServerState, plan: Plan):
        if state.in_flight + len(plan.specs) > state.max_queue:  # it fits an empty queue (checked first)
            raise APIError(503, f"the server is busy ({state.in_flight} sequences in flight, at most "
                                f"{state.max_queue}); retry later", type="server_error", code="server_overloaded")
        self.state, self.plan, self.queue = state, plan, asyncio.Queue()
        loop = asyncio.get_running_loop()
        jobs = [Job(i, ids, params, loop, self.queue, constraint=plan.constraint and plan.constraint())
                for i, ids, params in plan.specs]
        self.pending = {j.index: j for j in jobs}
        self.closed = False
        state.in_flight += len(jobs)
        for j in jobs:
            state.worker.submit(j)

    async def events(self, watch: Request | None = None):
        """Yield events until every choice has its last one. `watch`: poll it for a client
        disconnect (plain responses; a StreamingResponse notices one itself)."""
        loop = asyncio.get_running_loop()
        next_check = loop.time() + DISCONNECT_POLL_S
        while self.pending:
            if watch is None:
                ev = await self.queue.get()
            else:  # tokens may arrive faster than the poll: check by the clock, not on idle
                try:
                    ev = await asyncio.wait_for(self.queue.get(), max(0.0, next_check - loop.time()))
                except TimeoutError:
                    ev = None
                if loop.time() >= next_check:
                    next_check = loop.time() + DISCONNECT_POLL_S
                    if await watch.is_disconnected():
                        raise APIError(499, "the client closed the request")
                if ev is None:
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


def _finish(state: ServerState, c: Choice, plan: Plan) -> tuple[str, str]:
    if plan.zero:
        return "length", ""
    return c.result.finish_reason, c.text + T.stop_suffix(state.tokenizer, c.result, plan.stops, plan.end_ids)


def _head(kind: str, state: ServerState) -> dict:
    prefix = "chatcmpl" if kind.startswith("chat") else "cmpl"
    return {"id": f"{prefix}-{uuid.uuid4().hex}", "object": kind, "created": int(time.time()),
            "model": state.model_id}


async def handle_chat(state: ServerState, request: Request):
    # Parsing, the chat template and tokenizing cost CPU in proportion to the body (up to
    # --max_body_bytes): a worker thread does them, so the event loop keeps answering.
    body, plan, setup = await run_in_threadpool(_prepare_chat, state, await request.body())
    k, tok = body.top_logprobs or 0, state.tokenizer

    def lps(entries):
        return {"content": chat_logprobs(tok, entries, k), "refusal": None} if body.logprobs else None

    if body.stream:
        gen = Generation(state, plan)
        return _stream(_chat_chunks(state, body, gen, lps, setup), gen)
    choices = await _gather(state, plan, request)
    return await run_in_threadpool(_chat_response, state, plan, choices, lps, setup)


def _prepare_chat(state: ServerState, raw: bytes) -> tuple[ChatCompletionRequest, Plan, T.ChatSetup]:
    body = P.parse_request(raw, ChatCompletionRequest)
    check_model(state, body.model)
    check_fits_queue(state, 1, body.n)
    body, extra = with_sources(state, body)  # "rag": retrieved sources into the prompt
    setup = T.setup_chat(state.tokenizer, body)  # tools, tool_choice, response_format (400s name them)
    k = body.top_logprobs or 0
    plan = _plan(state, body, [setup.ids], k if body.logprobs else None, grammar=setup.grammar)
    plan.extra = extra
    return body, plan, setup


def _chat_response(state: ServerState, plan: Plan, choices: list[Choice], lps, setup: T.ChatSetup) -> JSONResponse:
    out = []
    for i, c in enumerate(choices):
        reason, text = _finish(state, c, plan)
        msg, reason = to_message(text, reason, "none" if plan.zero else setup.choice)
        out.append({"index": i, "message": msg, "logprobs": lps([] if plan.zero else c.logprobs), "finish_reason": reason})
    completion = sum(len(c.token_ids) for c in choices) if not plan.zero else 0
    usage = P.usage(plan.prompt_tokens, completion)
    return JSONResponse({**_head("chat.completion", state), "choices": out, "usage": usage, **plan.extra})


async def _chat_chunks(state, body, gen: Generation, lps, setup: T.ChatSetup):
    head, completion, plan = _head("chat.completion.chunk", state), 0, gen.plan
    deltas = T.ChatDeltas(setup, plan, state.tokenizer)

    def chunk(i, delta, reason=None, logprobs=None, extra=None):
        choice = {"index": i, "delta": delta, "logprobs": logprobs, "finish_reason": reason}
        return P.sse({**head, "choices": [choice], **(extra or {})})

    try:
        for n, (i, _, _) in enumerate(plan.specs):
            yield chunk(i, {"role": "assistant", "content": ""}, extra=plan.extra if n == 0 else None)
        async for ev in gen.events():
            if ev.error:
                yield P.sse(error_body(ev.error, type="server_error"))
                break
            ds = deltas(ev)
            if body.logprobs and ev.logprobs and not plan.zero and not ds:
                ds = [{}]  # tokens whose text is held back still send their log-probs
            for j, d in enumerate(ds):
                yield chunk(ev.index, d, logprobs=lps(ev.logprobs) if j == 0 else None)
            if ev.result is not None:
                completion += 0 if plan.zero else ev.result.completion_tokens
                yield chunk(ev.index, {}, reason=deltas.reason(ev.index, ev.result.finish_reason))
    finally:
        gen.close()
    if body.include_usage:
        yield P.sse({**head, "choices": [], "usage": P.usage(plan.prompt_tokens, completion)})
    yield P.sse("[DONE]")


async def handle_completion(state: ServerState, request: Request):
    body, plan, echoes = await run_in_threadpool(_prepare_completion, state, await request.body())
    tok, k = state.tokenizer, body.logprobs or 0
    echo_lp = body.echo and body.logprobs is not None

    def lps(c: Choice, prompt_ids, echo: str, offset: int = 0):
        """Legacy log-probs of c's tokens, after the prompt's when echoing (offsets from
        `offset`, the characters before this piece of the text)."""
        if body.logprobs is None:
            return None
        ids, entries = ([] if plan.zero else c.token_ids), ([] if plan.zero else c.logprobs)
        if echo_lp and prompt_ids:
            ids, entries = prompt_ids + ids, list(c.prompt_logprobs or [None] * len(prompt_ids)) + entries
        return legacy_logprobs(tok, ids, entries, k, offset=offset if echo_lp else offset + len(echo))

    if body.stream:
        gen = Generation(state, plan)
        return _stream(_completion_chunks(state, body, gen, echoes, lps), gen)
    choices = await _gather(state, plan, request)
    return await run_in_threadpool(_completion_response, state, body, plan, choices, echoes, lps)


def _prepare_completion(state: ServerState, raw: bytes) -> tuple[CompletionRequest, Plan, list[str]]:
    body = P.parse_request(raw, CompletionRequest)
    check_model(state, body.model)
    texts, tok = body.prompts(), state.tokenizer
    check_fits_queue(state, len(texts), body.n)  # before tokenizing what can never run
    # a raw prompt as `ember generate` encodes it: BOS first if the model wants it, and
    # special-token strings stay plain text
    prompts = [tok.encode(p, add_bos=None) if isinstance(p, str) else list(p) for p in texts]
    echo_lp = body.echo and body.logprobs is not None
    plan = _plan(state, body, prompts, body.logprobs, prompt_logprobs=echo_lp,
                 grammar=T.guided_grammar(state.tokenizer, body))
    echoes = [(p if isinstance(p, str) else tok.decode(p)) if body.echo else "" for p in texts]
    return body, plan, echoes


def _completion_response(state: ServerState, body, plan: Plan, choices: list[Choice], echoes, lps) -> JSONResponse:
    out = []
    for i, c in enumerate(choices):
        p = i // body.n
        reason, text = _finish(state, c, plan)
        logprobs = lps(c, plan.prompts[p], echoes[p])
        out.append({"index": i, "text": echoes[p] + text, "logprobs": logprobs, "finish_reason": reason})
    completion = sum(len(c.token_ids) for c in choices) if not plan.zero else 0
    usage = P.usage(plan.prompt_tokens, completion)
    return JSONResponse({**_head("text_completion", state), "choices": out, "usage": usage})


async def _completion_chunks(state, body, gen: Generation, echoes, lps):
    head, completion, plan = _head("text_completion", state), 0, gen.plan

    def chunk(i, text, reason=None, logprobs=None):
        return P.sse({**head, "choices": [{"index": i, "text": text, "logprobs": logprobs, "finish_reason": reason}]})

    try:
        sent = [None] * len(plan.specs)  # characters streamed per choice, echo included
        async for ev in gen.events():
            if ev.error:
                yield P.sse(error_body(ev.error, type="server_error"))
                break
            i, p = ev.index, ev.index // body.n
            first = sent[i] is None
            echo, offset = (echoes[p], 0) if first else ("", sent[i])
            part = Choice(prompt_logprobs=ev.prompt_logprobs)  # this event's tokens, as a choice
            if not plan.zero:
                part.take(ev)
            if first or part.text or (body.logprobs is not None and part.token_ids):
                if first and body.echo:  # may score a whole echoed prompt: off the event loop
                    logprobs = await run_in_threadpool(lps, part, plan.prompts[p], echo, offset)
                else:
                    logprobs = lps(part, plan.prompts[p] if first else [], echo, offset=offset)
                yield chunk(i, echo + part.text, logprobs=logprobs)
            sent[i] = offset + len(echo + part.text)
            if ev.result is not None:
                completion += 0 if plan.zero else ev.result.completion_tokens
                tail = "" if plan.zero else T.stop_suffix(state.tokenizer, ev.result, plan.stops, plan.end_ids)
                yield chunk(i, tail, reason="length" if plan.zero else ev.result.finish_reason)
    finally:
        gen.close()
    if body.include_usage:
        yield P.sse({**head, "choices": [], "usage": P.usage(plan.prompt_tokens, completion)})
    yield P.sse("[DONE]")


def _stream(chunks, gen: Generation) -> StreamingResponse:
    # The background task closes the generation even if the body never started (a client
    # that hung up at once); closing twice is harmless.
    return StreamingResponse(chunks, media_type="text/event-stream", headers={"Cache-Control": "no-cache"},
                             background=BackgroundTask(gen.close))
