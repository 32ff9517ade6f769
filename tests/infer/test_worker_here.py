"""EngineWorker.run_here: the engine loop on the calling thread (how `ember serve` runs it, so
the thread that loaded the model also runs its native steps), stopped from another thread."""

import asyncio
import threading

import pytest
import torch
from infer_helpers import make_model, make_tokenizer

from ember.cli.infer import _serve_on_main_thread
from ember.infer.engine import Engine
from ember.infer.sampling import SamplingParams
from ember.infer.worker import EngineWorker, Job

GREEDY = SamplingParams(temperature=0, max_tokens=5, ignore_eos=True)


def _engine() -> Engine:
    torch.manual_seed(0)
    return Engine(make_model(), make_tokenizer(), max_batch_size=2)


def _collect(worker: EngineWorker, prompt: list[int]) -> list[int]:
    """Submit from an event loop on another thread; the tokens of the finished job."""
    async def go():
        q = asyncio.Queue()
        worker.submit(Job(0, prompt, GREEDY, asyncio.get_running_loop(), q))
        tokens = []
        while True:
            ev = await q.get()
            assert ev.error is None, ev.error
            tokens += ev.token_ids
            if ev.result is not None:
                return tokens
    return asyncio.run(go())


def test_the_loop_runs_on_the_calling_thread_and_stop_ends_it():
    engine = _engine()
    want = engine.generate([[1, 2, 3]], GREEDY)[0].token_ids
    worker = EngineWorker(engine)
    got, where = {}, {}
    step = engine.step

    def spy():
        where[threading.get_ident()] = True
        return step()

    engine.step = spy

    def client():
        got["tokens"] = _collect(worker, [1, 2, 3])
        worker.stop()  # from this thread: must not wait for the loop's own thread

    t = threading.Thread(target=client)
    t.start()
    worker.run_here()  # returns once stop() is called
    t.join(timeout=30)
    assert got["tokens"] == want
    assert list(where) == [threading.get_ident()]  # every step ran here, none on a thread of the worker's


def test_a_second_loop_is_refused():
    worker = EngineWorker(_engine())
    worker.start()
    try:
        with pytest.raises(RuntimeError, match="already running"):
            worker.run_here()
    finally:
        worker.stop()


def test_serve_ends_the_engine_loop_when_the_http_server_ends():
    """A server that stops (here: at once, as a failed start would) ends run_here; nothing hangs."""
    class App:
        pass

    class Server:
        should_exit = False

        def run(self):
            return None

    app = App()
    app.state = App()
    app.state.ember = App()
    app.state.ember.worker = EngineWorker(_engine())
    done = threading.Event()
    t = threading.Thread(target=lambda: (_serve_on_main_thread(app, Server()), done.set()), daemon=True)
    t.start()
    assert done.wait(30)
