"""The bundled corpus: text every Python install already has (pydoc topics, stdlib sources).

Nothing downloads; the same bytes exist on every machine with the same Python version.
"""

from __future__ import annotations

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
