"""Python's own documentation as a corpus: `pydoc_data.topics` (it ships with every Python)
holds the language reference's topics ("break", "assignment", ...) as text, one string
each. `write_pydoc_topics` writes them as files for `ember rag index`.

    >>> import tempfile; paths = write_pydoc_topics(tempfile.mkdtemp())
    >>> len(paths) == len(topic_texts()), paths[0].suffix
    (True, '.txt')
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ember.core.io import atomic_write_text


def topic_texts() -> dict[str, str]:
    """topic name → its text, from the running Python's pydoc_data."""
    from pydoc_data.topics import topics

    return dict(topics)


def write_pydoc_topics(folder: str | os.PathLike) -> list[Path]:
    """One `<topic>.txt` per pydoc topic in `folder` (made if missing), each written
    atomically; returns the paths in topic order. Files already there with the same text
    are left alone, so re-indexing finds them unchanged; any other file of a topic's name is an
    error (it is never overwritten)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{folder} is a file, not a folder")
    out = []
    for name, text in topic_texts().items():
        path = folder / (re.sub(r"[^A-Za-z0-9_.-]", "_", name) + ".txt")
        if not path.exists():
            atomic_write_text(path, text)
        elif not _holds(path, text):  # a user's file of the same name: never overwritten
            raise FileExistsError(f"{path} exists and is not that pydoc topic; give an empty or new folder")
        out.append(path)
    return out


def _holds(path: Path, text: str) -> bool:
    try:
        return path.read_text(encoding="utf-8") == text
    except (OSError, UnicodeDecodeError):
        return False
