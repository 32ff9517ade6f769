"""The bundled corpus: text every Python install already has (pydoc topics, stdlib code, docstrings).

Nothing downloads; the same bytes exist on every machine with the same Python version.
"""

from __future__ import annotations

import ast
import sysconfig
from pathlib import Path

# Scripts and symbols the parity and round-trip tests must see beyond English and code.
MULTILINGUAL_SAMPLE = "\n".join([
    "Emoji: 👋🏽 🇫🇷 👨‍👩‍👧‍👦 ❤️‍🔥 🧑🏻‍💻 😀😃😄",
    "CJK: 今日は良い天気ですね。你好，世界！한국어 텍스트입니다.",
    "RTL: مرحبا بالعالم — שלום עולם — سلام دنیا",
    "Combining: e\u0301 a\u0308 n\u0303 Z\u0351\u0306\u0311 ǅ ﬁ Å",
    "Whitespace:\t\ttabs   runs     \u00a0nbsp\u2003em\u3000ideographic  \n\n\n  trailing   ",
    "CRLF line\r\nnext\r\n\r\nblank\rcarriage",
    "Digits: 0 12 345 6789 3.14159 1e-10 ١٢٣ ٤٥٦ ²³ Ⅻ 1,000,000",
    "Code: def f(x: int) -> int:\n    return x**2 + 0x1F  # comment\n\tif a!=b: print(f'{a=}')",
    "Mixed: I'm you'RE they'll it'S we'VE — «quotes» “smart” ‘single’ … ¡Hola! ¿Qué?",
])


def pydoc_topics_text() -> str:
    """Python's own help topics, sorted by key: ~0.9 MB of English prose with code.

    >>> pydoc_topics_text()[:10]  # doctest: +SKIP
    'The "assert'
    """
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k] for k in sorted(topics))


def stdlib_source_text(max_chars: int) -> str:
    """Concatenated standard-library sources, in sorted path order, up to `max_chars`."""
    root = Path(sysconfig.get_paths()["stdlib"])
    parts, total = [], 0
    for path in sorted(root.rglob("*.py")):
        if "site-packages" in path.parts or "test" in path.parts:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        parts.append(text)
        total += len(text)
        if total >= max_chars:
            break
    return "\n".join(parts)[:max_chars]


def bundled_corpus(min_chars: int = 0) -> str:
    """pydoc topics, then stdlib sources until at least `min_chars` characters."""
    text = pydoc_topics_text()
    if len(text) < min_chars:
        text += "\n\n" + stdlib_source_text(min_chars - len(text))
    return text


# Folders of the stdlib whose docstrings are test fixtures, a GUI or a deprecated tool:
# noise for a pre-training corpus.
_SKIP_DIRS = {"site-packages", "test", "tests", "idlelib", "lib2to3"}
_MIN_DOC_CHARS = 200


def bundled_documents(max_chars: int = 4_000_000) -> list[str]:
    """The default pre-training corpus as documents: pydoc topics, then stdlib docstrings.

    Each pydoc topic (sorted by key) is one document; then each stdlib module (sorted path
    order) whose module/class/function docstrings total at least 200 characters is one
    document, its docstrings joined by blank lines. Documents are added until `max_chars`
    characters in all; the last one is cut to fit. Deterministic for a Python version
    (CPython 3.11 has ~2.1 MB in all, so the default takes everything).

    >>> docs = bundled_documents(max_chars=10_000)
    >>> sum(map(len, docs))
    10000
    """
    if max_chars < 1:
        raise ValueError(f"max_chars must be >= 1, got {max_chars}")
    from pydoc_data.topics import topics

    def all_docs():
        yield from (topics[k] for k in sorted(topics))
        yield from _stdlib_docstring_documents()

    docs, total = [], 0
    for doc in all_docs():
        docs.append(doc[: max_chars - total])
        total += len(docs[-1])
        if total >= max_chars:
            break
    return docs


def _stdlib_docstring_documents():
    root = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(root.rglob("*.py")):
        if _SKIP_DIRS.intersection(path.relative_to(root).parts[:-1]):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, SyntaxError, ValueError, OSError):
            continue  # a few stdlib files are deliberately broken or not UTF-8
        docstrings = [d for d in _docstrings(tree) if d]
        if sum(map(len, docstrings)) >= _MIN_DOC_CHARS:
            yield "\n\n".join(docstrings)


def _docstrings(tree: ast.Module) -> list[str | None]:
    """The module's docstring, then its classes' and functions' depth-first in source order."""
    out = [ast.get_docstring(tree)]

    def visit(node):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                out.append(ast.get_docstring(child))
            if not isinstance(child, ast.expr):  # definitions inside if/try blocks count too
                visit(child)

    visit(tree)
    return out
