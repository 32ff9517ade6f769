"""Run a test's `child(rank, port, out, *extra)` in `world` spawned processes (gloo on CPU),
with a deadline: a hung rank fails the test instead of blocking the suite. Each child writes
`error_<rank>.txt` into `out` when it fails; those texts become the assertion message."""

from __future__ import annotations

import multiprocessing
import socket
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(child, world: int, out: Path, *extra, timeout_s: float) -> list:
    port = free_port()
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=child, args=(r, port, str(out), *extra)) for r in range(world)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + timeout_s
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    hung = [p for p in procs if p.is_alive()]
    for p in hung:
        p.kill()
        p.join()
    errors = [f.read_text() for f in sorted(Path(out).glob("error_*.txt"))]
    assert not errors, "a rank failed:\n" + "\n".join(errors)
    assert not hung, f"{len(hung)} rank(s) still running after {timeout_s}s"
    return procs
