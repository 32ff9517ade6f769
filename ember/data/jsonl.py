"""Reading JSONL files line by line, the one way every reader in `ember.data` does it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

BOM = b"\xef\xbb\xbf"


def jsonl_lines(path: str | Path) -> Iterator[tuple[int, bytes]]:
    """(line number, raw bytes) of each non-blank line, a leading UTF-8 BOM removed.

    Editors on Windows (and `Out-File` in PowerShell) start UTF-8 files with a BOM; left
    in, it makes the first line invalid JSON and its record is lost.

    >>> next(jsonl_lines("chats.jsonl"))  # doctest: +SKIP
    (1, b'{"messages": [...]}\\n')
    """
    with open(path, "rb") as f:
        for n, raw in enumerate(f, start=1):
            if n == 1:
                raw = raw.removeprefix(BOM)
            if raw.strip():
                yield n, raw
