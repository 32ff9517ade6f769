"""Files → Documents: plain text, Markdown, HTML (its text), Python sources, JSONL records.

A folder is walked recursively (sorted, hidden entries skipped). A file that cannot become
text — binary, not UTF-8, unreadable, a JSONL line without text — is skipped with a reason,
never an error: one bad file must not stop the indexing of a thousand good ones.

HTML keeps its text only; its headings come out as Markdown `#` lines, so the Markdown
chunker sees the document's structure. A JSONL file holds one document per line: the
object's "text" (or "content") field is the text, its other scalar fields the metadata,
and its "id" field (else the line number) names it: `notes.jsonl#42`.

    >>> docs, skipped = load_documents(["docs/"])  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

KINDS = {".txt": "text", ".text": "text", ".rst": "text", ".md": "markdown", ".markdown": "markdown",
         ".html": "html", ".htm": "html", ".py": "python", ".jsonl": "jsonl"}
MAX_FILE_BYTES = 64 << 20  # a larger "document" is data, not text to retrieve from


@dataclass(frozen=True)
class Document:
    """One document: its path (the name chunks cite), its text, its kind (text, markdown,
    html, python, jsonl) and metadata (JSONL fields; {} for files)."""

    path: str
    text: str
    kind: str
    metadata: dict = field(default_factory=dict)

    @property
    def hash(self) -> str:
        """sha256 of what the index stores about the document: kind, metadata and text."""
        head = json.dumps([self.kind, self.metadata], sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(f"{head}\n{self.text}".encode()).hexdigest()


class Skip(Exception):
    """A file (or JSONL line) that yields no document; the message is the reason."""


def iter_files(paths) -> Iterator[Path]:
    """Every file named or under a folder named, each once, folders walked in sorted order;
    hidden files and folders (a leading dot) inside folders are left out.
    A path that does not exist is a FileNotFoundError naming it."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    seen: set[Path] = set()
    for p in map(Path, paths):
        if not p.exists():
            raise FileNotFoundError(f"no such file or folder: {p}")
        found = [p] if not p.is_dir() else sorted(
            q for q in p.rglob("*")
            if not any(part.startswith(".") for part in q.relative_to(p).parts) and q.is_file())
        for q in found:
            key = q.resolve()
            if key not in seen:
                seen.add(key)
                yield q


def kind_of(path: Path) -> str:
    """The loader a file gets by its suffix; unknown suffixes are read as plain text."""
    return KINDS.get(path.suffix.lower(), "text")


def decode(data: bytes) -> str:
    """Bytes → text, or Skip naming why they are not UTF-8 text."""
    if b"\x00" in data[:8192]:
        raise Skip("binary file (NUL bytes)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise Skip(f"not UTF-8 (bad byte 0x{data[e.start]:02x} at offset {e.start})") from None
    return text[1:] if text.startswith("\ufeff") else text


def read_bytes(path: Path) -> bytes:
    """The file's bytes, or Skip naming why they cannot be read."""
    try:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):
            raise Skip("not a regular file")
        size = st.st_size
        if size > MAX_FILE_BYTES:
            raise Skip(f"{size} bytes, over the limit of {MAX_FILE_BYTES}")
        return path.read_bytes()
    except OSError as e:
        raise Skip(f"unreadable ({e.strerror or e})") from None


def parse(name: str, data: bytes, kind: str) -> tuple[list[Document], list[tuple[str, str]]]:
    """One file's bytes → its documents and the JSONL lines skipped; Skip for the whole file.

    >>> parse("a.md", b"# Title\\n\\nHello.", "markdown")[0][0].text
    '# Title\\n\\nHello.'
    >>> parse("p.html", b"<h2>Use</h2><p>Run <b>it</b>.</p><script>x()</script>", "html")[0][0].text
    '## Use\\n\\nRun it.'
    """
    text = decode(data)
    if kind == "jsonl":
        return _jsonl(name, text)
    if kind == "html":
        text = html_text(text)
    if not text.strip():
        raise Skip("no text")
    return [Document(name, text, kind, {})], []


def load_documents(paths) -> tuple[list[Document], list[tuple[str, str]]]:
    """Documents from files and folders, and the (path, reason) of every file or line skipped.

    >>> import tempfile; d = Path(tempfile.mkdtemp())
    >>> _ = (d / "a.txt").write_text("hello"); _ = (d / "b.bin").write_bytes(b"\\x00\\x01")
    >>> docs, skipped = load_documents([d])
    >>> [Path(x.path).name for x in docs], [(Path(p).name, r) for p, r in skipped]
    (['a.txt'], [('b.bin', 'binary file (NUL bytes)')])
    """
    docs: list[Document] = []
    skipped: list[tuple[str, str]] = []
    for path in iter_files(paths):
        try:
            got, bad = parse(str(path), read_bytes(path), kind_of(path))
        except Skip as e:
            skipped.append((str(path), str(e)))
            continue
        docs += got
        skipped += bad
    return docs, skipped


def _jsonl(name: str, text: str) -> tuple[list[Document], list[tuple[str, str]]]:
    docs, skipped, ids = [], [], set()
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{name}:{n}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            skipped.append((where, f"not JSON ({e.msg})"))
            continue
        body = obj.get("text", obj.get("content")) if isinstance(obj, dict) else None
        if not isinstance(body, str) or not body.strip():
            skipped.append((where, 'no "text" or "content" string'))
            continue
        key = str(obj.get("id", n))
        if key in ids:
            skipped.append((where, f"duplicate id {key!r}"))
            continue
        ids.add(key)
        meta = {k: v for k, v in obj.items() if k not in ("text", "content")
                and isinstance(v, (str, int, float, bool))}
        docs.append(Document(f"{name}#{key}", body, "jsonl", meta))
    if not docs and not skipped:
        raise Skip("no records")
    return docs, skipped


BLOCK_TAGS = {"p", "div", "section", "article", "li", "ul", "ol", "pre", "table", "tr", "br",
              "blockquote", "header", "footer", "main", "nav", "aside", "dl", "dt", "dd", "hr"}
HIDDEN_TAGS = {"script", "style", "template", "noscript", "head"}


class _HTMLText(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.hidden = 0
        self.pre = 0

    def handle_starttag(self, tag, attrs):
        if tag in HIDDEN_TAGS:
            self.hidden += 1
        elif tag in {"h1", "h2", "h3", "h4", "h5", "h6"}:
            self.parts.append("\n\n" + "#" * int(tag[1]) + " ")
        elif tag in BLOCK_TAGS:
            self.parts.append("\n\n" if tag != "br" else "\n")
            self.pre += tag == "pre"

    def handle_endtag(self, tag):
        if tag in HIDDEN_TAGS:
            self.hidden = max(0, self.hidden - 1)
        elif tag in BLOCK_TAGS or tag[:1] == "h" and tag[1:].isdigit():
            self.parts.append("\n\n")
            self.pre -= tag == "pre" and self.pre > 0

    def handle_data(self, data):
        if not self.hidden:
            # outside <pre>, HTML collapses runs of white space to one space
            self.parts.append(data if self.pre else re.sub(r"\s+", " ", data))


def html_text(html: str) -> str:
    """The visible text of an HTML page: blocks separated by blank lines, headings as `#` lines."""
    p = _HTMLText()
    p.feed(html)
    p.close()
    blocks = ("".join(p.parts)).split("\n\n")
    return "\n\n".join(b.strip() for b in blocks if b.strip())
