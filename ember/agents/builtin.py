"""The built-in tools: the calculator, sandboxed Python, retrieval over an `ember rag` store,
and a read-only file reader confined to one folder. `build_tools` makes them by name.

>>> [t.name for t in build_tools(["calculator", "python"])]
['calculator', 'python']
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path

from ember.agents.calculator import calculator
from ember.agents.registry import Tool, tool
from ember.agents.sandbox import run_python

MAX_FILE_BYTES = 100_000


def python_tool(timeout: float = 5.0, memory_mb: int = 256) -> Tool:
    """Sandboxed Python (see `ember.agents.sandbox`): the program's stdout, or its error."""
    if not timeout > 0:
        raise ValueError(f"timeout must be > 0 seconds, got {timeout}")

    @tool(name="python")
    def python(code: str) -> str:
        """Run a Python program in a sandbox (no network, no files outside its folder) and
        return what it prints. Print the result you need.

        Args:
            code: a complete Python program.
        """
        r = run_python(code, timeout=timeout, memory_mb=memory_mb, max_output=4000)
        if r.ok:
            return r.stdout if r.stdout.strip() else "(the program printed nothing; print the result)"
        lines = r.stderr.strip().splitlines()[-3:]  # the end of a traceback says what went wrong
        if r.error not in lines:
            lines.append(r.error)
        return "error: " + "\n".join(lines)

    return python


def search_tool(db: str | os.PathLike, k: int = 3) -> Tool:
    """Retrieval over an `ember rag` store: the top k chunks with their documents and scores."""
    if not Path(db).exists():
        raise FileNotFoundError(f"no rag store at {db} (build one with `ember rag`)")
    index = None

    @tool(name="search")
    def search(query: str) -> str:
        """Search the document store and return the most relevant passages.

        Args:
            query: what to look for, in a few words.
        """
        nonlocal index
        if index is None:
            from ember.rag import Index  # heavy (an embedder): only when a search happens

            index = Index(str(db))
        hits = index.search(query, k)
        if not hits:
            return "no results"
        return "\n".join(f"[{i}] {h.chunk.doc} (score {h.score:.3f}): {h.chunk.text}"
                         for i, h in enumerate(hits, 1))

    return search


def read_file_tool(folder: str | os.PathLike, max_bytes: int = MAX_FILE_BYTES) -> Tool:
    """A read-only reader of text files under `folder`: relative paths only, no `..`, no
    symbolic link that leads outside, at most max_bytes per file."""
    base = Path(folder).resolve()
    if not base.is_dir():
        raise FileNotFoundError(f"read_file folder {folder}: no such folder")

    @tool(name="read_file")
    def read_file(path: str) -> str:
        """Read a text file from the shared folder.

        Args:
            path: the file's path relative to the folder, e.g. "notes/todo.txt".
        """
        return read_confined(base, path, max_bytes)

    return read_file


def read_confined(base: Path, path: str, max_bytes: int) -> str:
    """The text of base/path, refusing anything that is not a regular file inside base.

    >>> read_confined(Path("/tmp"), "../etc/passwd", 100)
    Traceback (most recent call last):
    ValueError: '../etc/passwd' leaves the folder ('..' is not allowed)
    """
    if not path or "\x00" in path:
        raise ValueError(f"not a valid path: {path!r}")
    rel = Path(path)
    if rel.is_absolute():
        raise ValueError(f"{path!r} is absolute; give a path relative to the folder")
    if ".." in rel.parts:
        raise ValueError(f"{path!r} leaves the folder ('..' is not allowed)")
    target = (base / rel).resolve()  # follows every symbolic link
    if target != base and base not in target.parents:
        raise ValueError(f"{path!r} leads outside the folder (a symbolic link)")
    if not target.is_file():
        raise ValueError(f"no such file: {path!r}")
    # O_NOFOLLOW: a link swapped in after the check above is refused, not followed
    fd = os.open(target, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(fd, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size > max_bytes:
            raise ValueError(f"{path!r} is {size} bytes, more than the limit of {max_bytes}")
        data = f.read(max_bytes + 1)[:max_bytes]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{path!r} is not a UTF-8 text file") from None


BUILTIN: dict[str, Callable[..., Tool]] = {
    "calculator": lambda **_: calculator,
    "python": lambda timeout=5.0, **_: python_tool(timeout),
    "search": lambda db=None, **_: search_tool(_needed(db, "search", "--db")),
    "read_file": lambda folder=None, **_: read_file_tool(_needed(folder, "read_file", "--folder")),
}


def _needed(value, name: str, flag: str):
    if value is None:
        raise ValueError(f"the {name} tool needs {flag}")
    return value


def build_tools(names: Iterable[str], **options) -> list[Tool]:
    """Built-in tools by name; options: timeout (python), db (search), folder (read_file)."""
    names = list(names)
    unknown = [n for n in names if n not in BUILTIN]
    if unknown:
        raise ValueError(f"unknown tool {unknown[0]!r} (known: {', '.join(BUILTIN)})")
    if len(set(names)) != len(names):
        raise ValueError(f"a tool is named twice in {names}")
    return [BUILTIN[n](**options) for n in names]
