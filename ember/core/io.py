"""Atomic file writes: a crash mid-write never leaves a half-written file behind."""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` through a temp file in the same folder, fsync, then rename.

    >>> atomic_write_bytes(Path(tempfile.mkdtemp()) / "x.bin", b"hi").read_bytes()
    b'hi'
    """
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
    return Path(path)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temp path beside `path` for a writer that wants a file name (GGUFWriter, torch's
    extension builder): on a clean exit it is fsynced and renamed onto `path`; on an error it
    is removed and `path` is left as it was. A device or FIFO target is yielded as is, to be
    written into (renaming over /dev/null as root would replace the device).

    >>> with atomic_path(Path(tempfile.mkdtemp()) / "y.txt") as tmp:
    ...     _ = tmp.write_text("ok")
    >>> tmp.exists(), (tmp.parent / "y.txt").read_text()
    (False, 'ok')
    """
    path = Path(path)
    if _is_special(path):
        yield path
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def _is_special(path: Path) -> bool:
    """True for an existing target that is not a regular file or a folder (a device, a FIFO,
    a socket): renaming a temp file onto /dev/null as root would replace the device itself.

    >>> _is_special(Path("/dev/null")), _is_special(Path(tempfile.mkdtemp()) / "new.txt")
    (True, False)
    """
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj, indent: int | None = 1) -> Path:
    return atomic_write_text(path, json.dumps(obj, ensure_ascii=False, indent=indent) + "\n")


def fsync_dir(folder: Path) -> None:
    # The rename is durable only once the directory entry itself is on disk.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_text_utf8(path: str | os.PathLike) -> str:
    """Read a text file, with a clear error naming the file when it is not UTF-8."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no such file: {path}")
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(
            f"{path} is not UTF-8 text (bad byte 0x{data[e.start]:02x} at offset {e.start})"
        ) from None
