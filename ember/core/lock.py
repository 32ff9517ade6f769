"""Advisory folder locks, so two processes never write into one run or data folder at once.

The lock is `fcntl.flock` on `<folder>/.lock`: the kernel drops it when the holder exits,
however it exits (an error, Ctrl-C, `kill -9`), so a stale lock never needs cleaning up.
The file keeps the holder's PID for the error message of whoever is refused.
"""

from __future__ import annotations

import fcntl
import functools
import inspect
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK_NAME = ".lock"


@contextmanager
def dir_lock(path: str | os.PathLike, what: str = "run") -> Iterator[Path]:
    """Hold an exclusive lock on folder `path` (made if missing) for the `with` block; if
    another process holds it, fail at once with a ValueError naming the folder and its PID.

    >>> with dir_lock("runs/x"):  # doctest: +SKIP
    ...     train()
    """
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(
                f"{what} folder {folder} is in use by {_holder(fd)} (lock {folder / LOCK_NAME}); "
                "wait for it to finish or choose another folder"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield folder
        finally:
            # The file stays: unlinking it would let a third process lock a fresh file while
            # a second one still holds the old, unlinked one.
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _holder(fd: int) -> str:
    text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    # the holder writes its PID just after locking; a refusal in between finds the file empty
    return f"process {text}" if text.isdigit() else "another process"


def locked_dir(arg: str, what: str) -> Callable:
    """Decorator: run the function holding `dir_lock` on its argument named `arg`.

    >>> @locked_dir("out", "data folder")  # doctest: +SKIP
    ... def prepare(out, ...): ...
    """

    def wrap(fn: Callable) -> Callable:
        sig = inspect.signature(fn)

        @functools.wraps(fn)
        def locked(*args, **kwargs):
            folder = sig.bind(*args, **kwargs).arguments[arg]
            with dir_lock(folder, what):
                return fn(*args, **kwargs)

        return locked

    return wrap
