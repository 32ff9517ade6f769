"""Advisory folder locks, so two processes never write into one run or data folder at once.

The lock is `fcntl.flock` on `<folder>/.lock`: the kernel drops it when the holder exits,
however it exits (an error, Ctrl-C, `kill -9`), so a stale lock never needs cleaning up.
The file keeps the holder's PID for the error message of whoever is refused.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import inspect
import os
from collections.abc import Callable, Iterator
from pathlib import Path

LOCK_NAME = ".lock"


@contextlib.contextmanager
def dir_lock(path: str | os.PathLike, what: str = "run folder") -> Iterator[Path]:
    """Hold an exclusive lock on folder `path` (made if missing) for the `with` block; if
    another process holds it, fail at once with a ValueError naming the folder and its PID.
    A folder the lock made and nothing else wrote into is removed again on the way out.

    >>> with dir_lock("runs/x"):  # doctest: +SKIP
    ...     train()
    """
    folder = Path(path)
    made = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / LOCK_NAME
    fd = _acquire(lock, what)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield folder
    finally:
        if made and [p.name for p in folder.iterdir()] == [LOCK_NAME]:
            # unlinked while still locked: a process that opened the old file finds it gone
            # (see _acquire) instead of sharing a lock nobody else sees
            lock.unlink()
            with contextlib.suppress(OSError):  # something appeared meanwhile: keep the folder
                folder.rmdir()
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _acquire(lock: Path, what: str) -> int:
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise ValueError(
                f"{what} {lock.parent} is in use by {holder} (lock {lock}); "
                "wait for it to finish or choose another folder"
            ) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # the holder removed the file as we opened it: lock the current one


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
