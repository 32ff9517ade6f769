"""How the command line reports a mistake: one line, `ember: error: ...`, exit code 2.

A user-caused error (a bad value, a missing or unwritable file, a port in use, memory
that ran out, Ctrl-C) is not a bug, so its traceback would only hide the one line that
says what to fix. Bugs (TypeError, AttributeError, ...) keep their traceback. Set
EMBER_DEBUG=1 to see the traceback of every error, for a bug report.

    >>> one_line(FileNotFoundError(2, "No such file or directory", "data/x.txt"))
    'data/x.txt: No such file or directory'
"""

from __future__ import annotations

import os
import select
import socket
import sys
from collections.abc import Callable
from pathlib import Path

DEBUG_ENV = "EMBER_DEBUG"
EXIT_ERROR = 2  # what argparse/jsonargparse use for a bad command line
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C

OOM_HINT = "out of memory; try a smaller batch size, context or model, --dtype bfloat16 or --quant int8"


def guarded(fn: Callable[[], int]) -> int:
    """Run `fn`, turning user-caused errors into one line on stderr and an exit code."""
    debug = os.environ.get(DEBUG_ENV, "") not in ("", "0")
    try:
        return fn()
    except KeyboardInterrupt:
        if debug:
            raise
        # after ^C the cursor may sit mid-line (a streamed reply): start a fresh one
        print(("\n" if sys.stderr.isatty() else "") + "ember: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:
        if isinstance(e, BrokenPipeError) and not debug and _stdout_is_gone():
            return 1  # the reader left (`ember ... | head`): nobody is listening, say nothing
        message = one_line(e)
        if message is None or debug:
            raise
        print(f"ember: error: {message}", file=sys.stderr)
        return EXIT_ERROR


def one_line(e: BaseException) -> str | None:
    """The message for a user-caused error, on one line; None for a bug."""
    if _is_out_of_memory(e):
        detail = _flatten(str(e)).split(". ")[0]
        return f"{OOM_HINT} ({detail})" if detail else OOM_HINT
    if isinstance(e, OSError):
        return _flatten(_os_message(e))
    if isinstance(e, ValueError):  # also json.JSONDecodeError and UnicodeDecodeError
        return _flatten(str(e)) or type(e).__name__
    return None


def _stdout_is_gone() -> bool:
    """True when stdout is a pipe whose reader has left (the write end then polls as an
    error); stdout then goes to /dev/null, so the interpreter's own flush at exit does not
    report the same broken pipe once more."""
    try:
        fd = sys.stdout.fileno()
        poll = select.poll()
        poll.register(fd, select.POLLOUT)
        gone = any(ev & select.POLLERR for _, ev in poll.poll(0))
        if gone:
            os.dup2(os.open(os.devnull, os.O_WRONLY), fd)
        return gone
    except (OSError, ValueError, AttributeError):  # no descriptor, or no poll() here
        return False


def _os_message(e: OSError) -> str:
    # str() of an OSError is "[Errno 13] Permission denied: '/proc/x'"; say it as a shell does
    if e.filename is None or not e.strerror:
        return str(e) or type(e).__name__
    where = f"{e.filename} -> {e.filename2}" if e.filename2 is not None else str(e.filename)
    return f"{where}: {e.strerror}"


def _is_out_of_memory(e: BaseException) -> bool:
    if isinstance(e, MemoryError):
        return True
    torch = sys.modules.get("torch")  # not imported: no tensor can have run out of memory
    if torch is not None and isinstance(e, torch.OutOfMemoryError):
        return True
    # the CPU allocator raises a plain RuntimeError
    return isinstance(e, RuntimeError) and "can't allocate memory" in str(e)


def _flatten(text: str) -> str:
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


# ---- checks for option values, used by the commands' config dataclasses -------------------
def at_least(flag: str, value, lo: int, optional: bool = False) -> None:
    """Raise ValueError naming `flag` unless value is an int >= lo (or None when optional).

    >>> at_least("--threads", -1, 1)
    Traceback (most recent call last):
    ValueError: --threads must be an integer >= 1, got -1
    """
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ValueError(f"{flag} must be an integer >= {lo}, got {value!r}")


def in_range(flag: str, value, lo: float, hi: float, hi_open: bool = False) -> None:
    """Raise ValueError naming `flag` unless lo <= value <= hi (< hi when hi_open)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = ok and lo <= value and (value < hi if hi_open else value <= hi)
    if not ok:
        raise ValueError(f"{flag} must be in [{lo}, {hi}{')' if hi_open else ']'}, got {value!r}")


def out_folder(path: str | os.PathLike, flag: str = "--out") -> Path:
    """Check, before any work, that an output folder can be made where asked.

    Training for minutes and then failing to save is the worst way to learn that --out
    names an existing file.
    """
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ValueError(f"{flag} {str(path)!r} is an existing file, not a folder")
    existing = next((q for q in (p, *p.parents) if q.exists()), None)
    if existing is not None and existing != p and not existing.is_dir():
        raise ValueError(f"{flag} {str(path)!r} is inside {str(existing)!r}, which is a file")
    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {str(path)!r}: {str(existing)!r} is not writable")
    return p


def check_port_free(host: str, port: int) -> None:
    """Bind and release (host, port) now, so a port in use is one line before a model loads
    rather than a server failing after it. Port 0 (any free port) always passes."""
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds it
        try:
            s.bind((host, port))
        except OSError as e:
            raise OSError(f"cannot listen on {host}:{port} (--host/--port): {e.strerror or e}") from None
