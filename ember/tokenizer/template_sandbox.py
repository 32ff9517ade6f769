"""Chat templates render in a child process, bounded in time, memory and output size.

A model's chat template is untrusted code. The Jinja sandbox stops it from reaching Python
internals, but not from spending: `{{ 'A' * 300000000 }}` allocates gigabytes and two nested
`range(100000)` loops run for hours, and either would take a server down with it. A single
C-level operation (a string repeat, a big power) cannot be interrupted from Python, so the
template runs in a child process (template_worker.py) that the parent kills when time is
up, with its address space capped. This is the parent side: a small pool of such workers,
reused between renders, and `render_many`.

>>> render_many("{{ m }}!", [{"m": "hi"}])
[{'text': 'hi!'}]
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time

from .template_worker import MIN_OUTPUT_CHARS, build_environment, handle

WORKER_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "template_worker.py")
TIME_LIMIT_S = 5.0  # per request: a real chat renders in milliseconds
MAX_WORKERS = 4  # concurrent renders (server threads); more wait for a free worker


class _Worker:
    def __init__(self):
        import subprocess

        # -I: no user site, no PYTHONPATH, no current directory on sys.path; the worker needs
        # only jinja2 from this interpreter's own site-packages.
        self.proc = subprocess.Popen([sys.executable, "-I", WORKER_SCRIPT], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, close_fds=True)

    def ask(self, payload: bytes, deadline: float) -> dict | None:
        """The reply, or None when the deadline passed or the worker died."""
        import select

        try:
            self.proc.stdin.write(payload)
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            return None
        fd, buf = self.proc.stdout.fileno(), bytearray()
        while not buf.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                return None
            buf += chunk
        return json.loads(buf)

    def close(self, kill: bool = False) -> None:
        if kill:
            self.proc.kill()
        else:
            try:
                self.proc.stdin.close()  # the worker exits at end of input
            except OSError:
                pass
        try:
            self.proc.wait(timeout=1.0)
        except Exception:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()


class _Pool:
    def __init__(self):
        self.pid = os.getpid()
        self.lock = threading.Lock()
        self.slots = threading.BoundedSemaphore(MAX_WORKERS)
        self.idle: list[_Worker] = []

    def ask(self, payload: bytes, time_limit: float) -> dict:
        with self.slots:
            with self.lock:
                idle = self.idle.pop() if self.idle else None
            # An idle worker may have died since its last request: one retry with a fresh one.
            for candidate in ([idle] if idle else []) + [None]:
                worker = candidate or _Worker()
                deadline = time.monotonic() + time_limit
                reply = worker.ask(payload, deadline)
                if reply is not None:
                    with self.lock:
                        self.idle.append(worker)
                    return reply
                worker.close(kill=True)
                if time.monotonic() >= deadline:
                    raise ValueError(f"chat template rendering exceeded the time limit of {time_limit:g} s")
        raise ValueError("chat template rendering failed: the rendering process died")

    def close(self) -> None:
        with self.lock:
            idle, self.idle = self.idle, []
        for w in idle:
            w.close()


_pool: _Pool | None = None
_pool_lock = threading.Lock()


def _get_pool() -> _Pool:
    global _pool
    with _pool_lock:
        # A forked child (a DataLoader worker) must not share its parent's pipes.
        if _pool is None or _pool.pid != os.getpid():
            if _pool is None:
                import atexit

                atexit.register(lambda: _pool is not None and _pool.pid == os.getpid() and _pool.close())
            _pool = _Pool()
        return _pool


def render_many(template: str, renders: list[dict], time_limit: float | None = None) -> list[dict]:
    """Render `template` once per variables dict → [{"text": ...} or {"error": ...}, ...].

    Raises ValueError when the template does not parse, or the request runs past `time_limit`
    (default TIME_LIMIT_S), or a render passes the memory or output limit. The output limit
    is MIN_OUTPUT_CHARS plus 8x the size of one render's variables: generous for any real
    chat, far below what hurts a machine.
    """
    time_limit = TIME_LIMIT_S if time_limit is None else time_limit
    try:  # ASCII JSON: lone surrogates and all survive the pipe
        body = json.dumps(renders)
    except (TypeError, ValueError) as e:
        raise ValueError(f"chat template variables must be JSON data: {e}") from None
    max_chars = MIN_OUTPUT_CHARS + 8 * len(body) // max(len(renders), 1)
    request = f'{{"template": {json.dumps(template)}, "max_chars": {max_chars}, "renders": {body}}}\n'
    reply = None
    if os.name != "nt":  # Windows has no select() on pipes
        try:
            reply = _get_pool().ask(request.encode("ascii"), time_limit)
        except OSError:  # no child processes here (a locked-down sandbox)
            pass
    if reply is None:  # render here: bounded in size, not in time or memory
        with _LOCAL_LOCK:
            reply = handle(json.loads(request), _local_environment(), _LOCAL_CACHE)
    if "error" in reply:
        raise ValueError(reply["error"])
    for out in reply["outputs"]:
        if out.get("limit"):
            raise ValueError(out["error"])
    return reply["outputs"]


_LOCAL_CACHE: dict = {}
_LOCAL_LOCK = threading.Lock()  # the environment's max_chars is per render


def _local_environment():
    global _LOCAL_ENV
    if _LOCAL_ENV is None:
        _LOCAL_ENV = build_environment()
    return _LOCAL_ENV


_LOCAL_ENV = None

