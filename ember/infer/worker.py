"""The engine thread of `ember serve`: the one thread that owns the engine.

The engine is not thread-safe, so one thread loops: take new requests and aborts from an
inbox, `engine.step()`, hand each request's new text, token ids and log-probs to the
asyncio side (an `asyncio.Queue` per HTTP request) with one `loop.call_soon_threadsafe`
per step for all of them: each such call wakes the event loop, which then holds the GIL
while the engine thread waits for it, so one wake-up per request per step cost a GIL
hand-over each. It sleeps on a condition when there is nothing to do. An abort (a client hung up, a stream
closed early) goes through the inbox too, so the engine frees the slot at its next step.

    >>> worker = EngineWorker(engine); worker.start()                      # doctest: +SKIP
    >>> worker.submit(Job(0, ids, SamplingParams(), loop, queue))         # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass, field

from .engine import Engine, GenerationResult

log = logging.getLogger("ember.serve")


@dataclass
class Event:
    """What one engine request produced since the last event (token ids, their log-probs,
    the text they completed); the last event also carries the result or an error."""

    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list = field(default_factory=list)  # TokenLogprob per new token (if asked)
    result: GenerationResult | None = None
    prompt_logprobs: list | None = None  # on the first event, if asked
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
    constraint: object = None  # a TokenConstraint-like mask for its logits (chat_tools), or None
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

    def run_here(self, then=None) -> None:
        """Run the engine loop on the calling thread until `stop()`, instead of on a thread of
        its own. `ember serve` runs it on the main thread, which loaded the model: libgomp
        keeps a thread pool per thread that starts parallel work, and once the pools hold more
        threads than there are cores it cuts its spin-waits short, so the native decode step
        ran 35-40% slower when called from a second thread (tests/infer/test_worker_here.py)."""
        with self._cond:
            if self._thread is not None and self._thread.is_alive():
                raise RuntimeError("the engine loop is already running")
            self._stopping = False
            self._thread = threading.current_thread()
        if then is not None:  # e.g. start the HTTP server: a stop() from now on is not lost
            then()
        self._loop()

    def stop(self, timeout: float = 10.0) -> None:
        """Fail what is still running (clients get an error), then end the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread() and thread is not threading.main_thread():
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
            job.req = self.engine.add_request(job.prompt_ids, job.params, constraint=job.constraint)
        except ValueError as e:  # handlers check first; this is the engine's last word
            return self._send(job, Event(job.index, error=str(e)))
        except Exception as e:  # an engine bug: fail this request, keep the thread serving
            log.exception("engine refused a request")
            return self._send(job, Event(job.index, error=f"internal error in the engine: {type(e).__name__}", status=500))
        self._jobs.append(job)

    def _abort(self, job: Job, error: str | None = None, status: int = 400) -> None:
        if job in self._jobs:
            self._jobs.remove(job)
            self.engine.abort(job.req)
            if error:
                self._send(job, Event(job.index, error=error, status=status))

    def _publish(self) -> None:
        out: list[tuple[Job, Event]] = []
        for job in list(self._jobs):
            req = job.req
            text, new = req.take_delta(), req.token_ids[job.sent :]
            if not (text or new or req.finished):
                continue
            ev = Event(job.index, text, list(new), req.logprobs[job.sent : len(req.token_ids)])
            if job.sent == 0 and req.params.prompt_logprobs:  # scored at prefill: send them first
                ev.prompt_logprobs = list(req.prompt_logprobs)
            job.sent = len(req.token_ids)
            if req.finished:
                ev.result = req.result()
                self._jobs.remove(job)
            out.append((job, ev))
        self._send_all(out)
        self._snapshot()

    def _snapshot(self) -> None:
        self.waiting, self.running = self.engine.num_waiting, self.engine.num_running

    @staticmethod
    def _send(job: Job, ev: Event) -> None:
        EngineWorker._send_all([(job, ev)])

    @staticmethod
    def _send_all(events: list[tuple[Job, Event]]) -> None:
        """Hand events to their event loops: one call per loop, the events in order."""
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue, Event]]] = {}
        for job, ev in events:
            by_loop.setdefault(job.loop, []).append((job.queue, ev))
        for loop, batch in by_loop.items():
            try:
                loop.call_soon_threadsafe(_deliver, batch)
            except RuntimeError:  # the event loop is gone (shutdown): nobody is listening
                pass


def _deliver(batch: list[tuple[asyncio.Queue, Event]]) -> None:
    for queue, ev in batch:
        queue.put_nowait(ev)
