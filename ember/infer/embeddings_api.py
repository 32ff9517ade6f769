"""`POST /v1/embeddings`: sentence vectors from an encoder served beside the chat model.

A request is parsed and tokenized off the event loop; every input's tokens are checked
against the vocabulary and the model's length; then its ids go to one `EmbeddingWorker`
thread that owns the encoder. Requests that arrive while it works are embedded together
(a burst of small requests shares forwards; the Embedder sorts them by length, so padding
stays small).

What the endpoint chose where OpenAI leaves room (README, Serve, says the same):
- token-id inputs are the text's tokens without the model's specials: the server adds
  [CLS] ... [SEP] as it does for text, so a text and its ids give the same vector;
- `usage.prompt_tokens` counts the tokens the model reads, specials included;
- an input longer than the model's limit is a 400 naming the limit, as OpenAI answers;
  nothing is truncated behind the client's back;
- `dimensions` is accepted only when it is the model's own size: MiniLM was not trained to
  be cut short (Matryoshka-style), so a shorter vector would be silently worse;
- an empty string is a 400, as at OpenAI (it would embed the specials alone).

`create_app(engine, "smollm2", embedder=embedder, embedding_model="minilm")` turns it on.
"""

from __future__ import annotations

import asyncio
import base64
import queue
import threading
from concurrent.futures import Future

from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from .protocol import APIError, EmbeddingRequest, parse_request
from .state import ServerState


class EmbeddingWorker:
    """The one thread that runs the encoder (any object whose `embed_ids(batch)` gives a
    (B, D) tensor). `submit(ids)` returns a Future of the (N, D) float32 vectors, in order.

    >>> import torch
    >>> class Length:
    ...     def embed_ids(self, batch):
    ...         return torch.tensor([[float(len(ids))] for ids in batch])
    >>> w = EmbeddingWorker(Length()); w.start()
    >>> w.submit([[1, 2, 3], [4]]).result().tolist()
    [[3.0], [1.0]]
    >>> w.stop()
    """

    def __init__(self, embedder, max_inputs: int = 2048):
        if max_inputs < 1:
            raise ValueError(f"max_inputs must be >= 1, got {max_inputs}")
        self.embedder, self.max_inputs = embedder, max_inputs
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="ember-embeddings", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._jobs.put(None)
            self._thread.join()
            self._thread = None

    def submit(self, ids: list[list[int]]) -> Future:
        fut: Future = Future()
        self._jobs.put((ids, fut))
        return fut

    def _run(self) -> None:
        stopping = False
        while not stopping:
            job = self._jobs.get()
            if job is None:
                break
            jobs, n = [job], len(job[0])
            while n < self.max_inputs:  # whatever else has arrived joins this round
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    stopping = True
                    break
                jobs.append(job)
                n += len(job[0])
            self._embed(jobs)

    def _embed(self, jobs: list) -> None:
        # A request whose client left was cancelled while it waited: skip it. The others are
        # marked running, so no cancel can land between here and their results.
        jobs = [(job, fut) for job, fut in jobs if fut.set_running_or_notify_cancel()]
        if not jobs:
            return
        ids = [x for job, _ in jobs for x in job]
        try:
            vecs = self.embedder.embed_ids(ids).float()  # (N, D); the embedder batches by length
        except Exception as e:  # the clients learn of it; the thread lives on
            for _, fut in jobs:
                fut.set_exception(e)
            return
        start = 0
        for job, fut in jobs:
            fut.set_result(vecs[start : start + len(job)])
            start += len(job)


class EmbeddingModel:
    """The encoder as the endpoint sees it: its name, its limits, its tokenizer, its worker."""

    def __init__(self, name: str, embedder):
        self.name, self.embedder = name, embedder
        self.worker = EmbeddingWorker(embedder)
        self.in_flight = 0  # requests submitted and not answered (event-loop side only)

    @property
    def dim(self) -> int:
        return self.embedder.dim

    @property
    def max_tokens(self) -> int:
        return self.embedder.max_tokens

    def card(self, created: int) -> dict:
        return {"id": self.name, "object": "model", "created": created, "owned_by": "ember",
                "max_model_len": self.max_tokens, "dimensions": self.dim}

    def token_ids(self, item: str | list[int], i: int, n: int) -> list[int]:
        """One input → the ids the model reads (specials included), or the 400 naming it."""
        where = "input" if n == 1 else f"input[{i}]"
        if isinstance(item, str):
            ids = self.embedder.tokenize(item)
        else:
            V = self.embedder.vocab_size
            if max(item) >= V:
                raise APIError(400, f"{where}: token id {max(item)} is outside the vocabulary 0..{V - 1}",
                               param=where)
            ids = self.embedder.wrap(item)
        if len(ids) > self.max_tokens:
            raise APIError(400, f"{where} has {len(ids)} tokens (with the model's special tokens), but "
                                f"'{self.name}' reads at most {self.max_tokens}; shorten or split it",
                           param=where, code="context_length_exceeded")
        return ids


def _embedding_model(state: ServerState, name: str) -> EmbeddingModel:
    emb = state.embeddings
    if emb is None:
        raise APIError(404, f"The model '{name}' does not serve embeddings; this server has no embedding "
                            "model (start it with --embedding-model)", param="model", code="model_not_found")
    if name != emb.name:
        raise APIError(404, f"The model '{name}' does not exist or does not serve embeddings; this server's "
                            f"embedding model is '{emb.name}'", param="model", code="model_not_found")
    return emb


def _prepare(state: ServerState, raw: bytes) -> tuple[EmbeddingRequest, list[list[int]]]:
    body = parse_request(raw, EmbeddingRequest)
    emb = _embedding_model(state, body.model)
    if body.dimensions is not None and body.dimensions != emb.dim:
        raise APIError(400, f"dimensions: '{emb.name}' makes {emb.dim}-dimensional vectors and cannot "
                            f"shorten them; got {body.dimensions} (omit it, or give {emb.dim})",
                       param="dimensions")
    items = body.inputs()
    return body, [emb.token_ids(x, i, len(items)) for i, x in enumerate(items)]


def _response(body: EmbeddingRequest, ids: list[list[int]], vecs) -> JSONResponse:
    if body.encoding_format == "base64":  # little-endian float32, as OpenAI's clients decode it
        rows = [base64.b64encode(v.numpy().astype("<f4").tobytes()).decode("ascii") for v in vecs]
    else:
        rows = vecs.tolist()
    n = sum(len(x) for x in ids)
    return JSONResponse({
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": row} for i, row in enumerate(rows)],
        "model": body.model,
        "usage": {"prompt_tokens": n, "total_tokens": n},
    })


async def handle_embeddings(state: ServerState, request: Request) -> JSONResponse:
    body, ids = await run_in_threadpool(_prepare, state, await request.body())
    emb = state.embeddings
    if emb.in_flight >= state.max_queue:  # a busy server: clients retry a 503 by themselves
        raise APIError(503, f"the server is busy ({emb.in_flight} embedding requests in flight, at most "
                            f"{state.max_queue}); retry later", type="server_error", code="server_overloaded")
    emb.in_flight += 1
    try:
        vecs = await asyncio.wrap_future(emb.worker.submit(ids))
    finally:
        emb.in_flight -= 1
    state.metrics.embedding_tokens += sum(len(x) for x in ids)
    return await run_in_threadpool(_response, body, ids, vecs)
