"""BERT's text preparation before WordPiece: BertNormalizer (clean-up, CJK spacing, accent
stripping, lower-casing) and BertPreTokenizer (split on whitespace and punctuation), as
Hugging Face `tokenizers` does them (bert.rs), down to the character classes.

Deviation: `tokenizers` classifies punctuation, non-spacing marks and format characters
with Unicode 8 tables; we use the `regex` module's current ones. They disagree only on the
few hundred characters encoded since (historic-script punctuation such as U+2E43..U+2E5D,
newer Arabic marks U+0898..U+08E2), which tests/parity/test_wordpiece_parity.py lists.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

import regex

# Rust's `char::is_whitespace` (Unicode White_Space), the class `tokenizers` cleans and
# splits on. Not Python's `str.isspace`, which also counts U+001C..U+001F: BERT drops those
# as control characters instead.
WHITESPACE = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
# BERT's punctuation: every Unicode P* character and every ASCII symbol that is not a
# letter, digit or space ("$", "+", "<", "^", "`" are S*, not P*, but split all the same).
PUNCTUATION = r"\p{P}!-/:-@\[-`{-~"
# The CJK ideograph blocks BERT isolates (bert.rs `is_chinese_char`). Hangul and kana are
# not among them: Korean and Japanese kana stay whole words.
CJK = (
    "\u4e00-\u9fff\u3400-\u4dbf\uf900-\ufaff\U00020000-\U0002a6df\U0002a700-\U0002b73f"
    "\U0002b740-\U0002b81f\U0002b920-\U0002ceaf\U0002f800-\U0002fa1f"
)
# clean_text drops U+FFFD and control, format and private-use characters (Cc, Cf, Co; lone
# surrogates too, which only a Python str can hold), except the three that are whitespace.
# Unassigned code points (Cn) stay, as in `tokenizers`: tomorrow's emoji are not noise.
_CONTROL = regex.compile(r"[\p{Cc}\p{Cf}\p{Co}\p{Cs}\ufffd--[\t\n\r]]", regex.V1)
_SPACES = regex.compile(f"[{WHITESPACE}]")
_CJK_CHAR = regex.compile(f"[{CJK}]")
_NONSPACING_MARK = regex.compile(r"\p{Mn}")
_WORD = regex.compile(f"[^{WHITESPACE}{PUNCTUATION}]+|[{PUNCTUATION}]")


@dataclass(frozen=True)
class BertNormalizer:
    """BERT's text clean-up, in the order `tokenizers` applies it.

    strip_accents: None means "when lower-casing", as in BERT.

    >>> BertNormalizer().normalize("Héllo\\x00 中文\\u3000WORLD")
    'hello  中  文  world'
    """

    clean_text: bool = True
    handle_chinese_chars: bool = True
    strip_accents: bool | None = None
    lowercase: bool = True

    def normalize(self, text: str) -> str:
        if self.clean_text:
            text = _SPACES.sub(" ", _CONTROL.sub("", text))
        ascii_only = text.isascii()  # then no ideographs and no marks: two passes skipped
        if self.handle_chinese_chars and not ascii_only:
            text = _CJK_CHAR.sub(r" \g<0> ", text)
        strip = self.lowercase if self.strip_accents is None else self.strip_accents
        if strip and not ascii_only:
            text = _NONSPACING_MARK.sub("", unicodedata.normalize("NFD", text))
        if self.lowercase:
            # `tokenizers` lower-cases char by char: Greek final sigma stays σ, where
            # Python's str.lower() would write ς.
            text = text.lower() if "Σ" not in text else "".join(c.lower() for c in text)
        return text


def pre_tokenize(text: str) -> list[str]:
    """Split on whitespace (dropped) and punctuation (each mark its own word).

    >>> pre_tokenize("Hello, world!! a+b")
    ['Hello', ',', 'world', '!', '!', 'a', '+', 'b']
    """
    return _WORD.findall(text)
