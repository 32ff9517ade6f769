"""Pre-tokenization: the regex that cuts text into chunks BPE never merges across.

Byte-level BPE first splits text with a regex (so " dog" and "dog." never share a
token with their neighbours), then merges bytes inside each chunk.
"""

from __future__ import annotations

import regex

# GPT-2 (Radford et al. 2019), also Hugging Face's ByteLevel(use_regex=True).
GPT2_PATTERN = (
    r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
)
# GPT-4 (tiktoken cl100k_base): case-insensitive contractions, numbers in groups of 3.
GPT4_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*"""
    r"""|\s*[\r\n]|\s+(?!\S)|\s+"""
)
# SmolLM2 (GGUF pre-tokenizer "smollm"): every digit alone, then the GPT-2 regex. Hugging Face
# writes it as Sequence([Digits(individual_digits=True), ByteLevel(use_regex=True)]); folded into
# one regex, a digit is its own chunk and whitespace before a digit stays apart from it.
SMOLLM_PATTERN = (
    r"""\p{N}|'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?[^\s\p{L}\p{N}]+|\s+(?=\p{N})|\s+(?!\S)|\s+"""
)

PATTERNS: dict[str, str] = {
    "gpt2": GPT2_PATTERN,
    "gpt4": GPT4_PATTERN,
    "smollm": SMOLLM_PATTERN,
}


def resolve_pattern(name_or_regex: str) -> str:
    """A built-in pattern by name, or the string itself as a regex (checked to compile).

    >>> resolve_pattern("gpt2") == GPT2_PATTERN
    True
    """
    if name_or_regex in PATTERNS:
        return PATTERNS[name_or_regex]
    try:
        regex.compile(name_or_regex)
    except regex.error as e:
        raise ValueError(
            f"split pattern {name_or_regex!r} is neither a known name "
            f"({', '.join(PATTERNS)}) nor a valid regex: {e}"
        ) from None
    return name_or_regex


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte → printable-character table used in tokenizer.json vocabularies.

    Printable Latin-1 bytes map to themselves; the rest shift to U+0100 and up, so a space
    (0x20) becomes 'Ġ' (U+0120).

    >>> bytes_to_unicode()[ord(" ")]
    'Ġ'
    """
    keep = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    table, shift = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + shift)
            shift += 1
    return table


def safe_split_points(text: str, n_parts: int) -> list[int]:
    """Offsets that cut `text` into about `n_parts` pieces without changing how the regex splits it.

    A cut is placed just after a newline with a non-space character on both sides ("a\\nB"):
    every pattern above makes that newline a chunk of its own, in the whole text and at the
    end of a piece alike, so the chunks of the pieces equal the chunks of the whole.

    >>> safe_split_points("ab\\ncd\\nef", 2)
    [0, 6, 8]
    """
    n = len(text)
    points = [0]
    for k in range(1, n_parts):
        i = text.find("\n", max(points[-1], k * n // n_parts))
        while i != -1 and i + 1 < n and (text[i + 1].isspace() or i == 0 or text[i - 1].isspace()):
            i = text.find("\n", i + 1)
        if i == -1 or i + 1 >= n:
            break
        points.append(i + 1)
    points.append(n)
    return points
