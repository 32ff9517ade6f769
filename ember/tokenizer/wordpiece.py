"""WordPiece, BERT's tokenizer: normalise, split on spaces and punctuation, then greedy
longest-match-first subwords with "##" continuations; `[CLS] A [SEP] B [SEP]` around them.

The specification is Hugging Face `tokenizers` on BERT's `tokenizer.json` (BertNormalizer,
BertPreTokenizer, WordPiece, TemplateProcessing, LongestFirst truncation, WordPiece
decoder): tests/parity/test_wordpiece_parity.py compares ids with it. Where the Rust code
and the Python BERT reference differ, we follow the Rust code (each place says so).

Text preparation (normaliser, pre-tokenizer) lives in bert_text.py.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import regex

from ember.core.io import atomic_write_json

from .bert_text import BertNormalizer, pre_tokenize

_CACHE_LIMIT = 200_000  # words; cleared when full, so memory stays bounded on big corpora


@dataclass
class Encoding:
    """One encoded text (or pair): ids, segment ids, and how many tokens truncation dropped."""

    ids: list[int]
    token_type_ids: list[int]
    n_truncated: int = 0


@dataclass
class BatchEncoding:
    """A right-padded batch; `enc["input_ids"]` works as well as `enc.input_ids`.

    n_truncated: per text, the tokens truncation dropped (0 where it fitted).
    """

    input_ids: list[list[int]]
    token_type_ids: list[list[int]]
    attention_mask: list[list[int]]
    n_truncated: list[int] = field(default_factory=list)

    def __getitem__(self, key: str):
        if key not in ("input_ids", "token_type_ids", "attention_mask", "n_truncated"):
            raise KeyError(key)
        return getattr(self, key)

    def keys(self) -> list[str]:
        return ["input_ids", "token_type_ids", "attention_mask", "n_truncated"]


def truncate_pair(a: list[int], b: list[int] | None, budget: int) -> tuple[list[int], list[int] | None, int]:
    """Cut `a` (and `b`) to `budget` tokens in all, `tokenizers`' LongestFirst: the shorter
    keeps everything up to half the budget, the longer gets the rest (and the odd token).
    Python BERT instead trims one token at a time, which differs on ties.

    >>> truncate_pair([1, 2, 3, 4, 5], [6, 7], 5)
    ([1, 2, 3], [6, 7], 2)
    """
    if b is None:
        return a[:budget], None, max(0, len(a) - budget)
    if len(a) + len(b) <= budget:
        return a, b, 0
    keep_short = min(len(a), len(b))
    keep_long = max(keep_short, budget - keep_short)
    if keep_short + keep_long > budget:
        keep_short, keep_long = budget // 2, budget // 2 + budget % 2
    n_a, n_b = (keep_long, keep_short) if len(a) > len(b) else (keep_short, keep_long)
    return a[:n_a], b[:n_b], len(a) + len(b) - n_a - n_b


def _id_to_token(vocab: dict[str, int]) -> dict[int, str]:
    """The inverse vocabulary; a ValueError names a bad entry or a shared id."""
    if not vocab:
        raise ValueError("the WordPiece vocabulary is empty")
    for t, i in vocab.items():
        if not isinstance(t, str) or not isinstance(i, int) or isinstance(i, bool) or i < 0:
            raise ValueError(f"WordPiece vocabulary entries must be str -> int >= 0, got {t!r} -> {i!r}")
    inverse = {i: t for t, i in vocab.items()}
    if len(inverse) != len(vocab):
        seen: set[int] = set()
        dup = next(i for i in vocab.values() if i in seen or seen.add(i))
        raise ValueError(f"two tokens share the id {dup} in the WordPiece vocabulary")
    return inverse


class WordPieceTokenizer:
    """BERT's tokenizer over a vocabulary (token → id).

    special_tokens: strings recognised in raw text before normalisation and kept whole, as
    `tokenizers` does for added tokens (default: the five named below, if in the vocab).

    >>> vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "un", "##aff", "##able", "!"]
    >>> tok = WordPieceTokenizer(vocab)
    >>> tok.tokenize("Unaffable!")
    ['un', '##aff', '##able', '!']
    >>> tok.encode("unaffable")
    [2, 5, 6, 7, 3]
    """

    def __init__(
        self,
        vocab: Mapping[str, int] | Sequence[str],
        normalizer: BertNormalizer | None = None,
        unk_token: str = "[UNK]",
        cls_token: str = "[CLS]",
        sep_token: str = "[SEP]",
        pad_token: str = "[PAD]",
        mask_token: str = "[MASK]",
        continuing_prefix: str = "##",
        max_input_chars_per_word: int = 100,
        model_max_length: int = 512,
        special_tokens: Iterable[str] | None = None,
    ):
        self.vocab = dict(vocab) if isinstance(vocab, Mapping) else {t: i for i, t in enumerate(vocab)}
        self._tokens = _id_to_token(self.vocab)
        names = {"unk_token": unk_token, "cls_token": cls_token, "sep_token": sep_token,
                 "pad_token": pad_token, "mask_token": mask_token}
        missing = {k: v for k, v in names.items() if v not in self.vocab}
        if missing:
            raise ValueError(f"special tokens missing from the WordPiece vocabulary: {missing}")
        if max_input_chars_per_word < 1 or model_max_length < 2:
            raise ValueError(
                f"max_input_chars_per_word must be >= 1 and model_max_length >= 2, "
                f"got {max_input_chars_per_word} and {model_max_length}"
            )
        self.normalizer = normalizer or BertNormalizer()
        self.unk_token, self.cls_token, self.sep_token = unk_token, cls_token, sep_token
        self.pad_token, self.mask_token = pad_token, mask_token
        self.unk_token_id, self.cls_token_id, self.sep_token_id = (self.vocab[t] for t in (unk_token, cls_token, sep_token))
        self.pad_token_id, self.mask_token_id = self.vocab[pad_token], self.vocab[mask_token]
        self.prefix = continuing_prefix
        self.max_input_chars_per_word = max_input_chars_per_word
        self.model_max_length = model_max_length
        specials = names.values() if special_tokens is None else special_tokens
        self.special_tokens = {s: self.vocab[s] for s in specials if s in self.vocab}
        # Longest first, so "[CLS]x" style overlaps resolve as `tokenizers`' leftmost-longest.
        alts = sorted(self.special_tokens, key=len, reverse=True)
        self._special_re = regex.compile("|".join(map(regex.escape, alts))) if alts else None
        # No vocabulary entry is longer than this, so the greedy search starts no further out.
        self._max_piece = max(len(t) for t in self.vocab)
        self._cache: dict[str, list[int]] = {}

    @property
    def vocab_size(self) -> int:
        return max(self._tokens) + 1

    def token_to_id(self, token: str) -> int | None:
        return self.vocab.get(token)

    def id_to_token(self, i: int) -> str:
        try:
            return self._tokens[int(i)]
        except KeyError:
            raise ValueError(f"token id {i!r} is not in the vocabulary (size {self.vocab_size})") from None

    # ---- encode -----------------------------------------------------------------------
    def _wordpiece(self, word: str) -> list[int]:
        """Greedy longest-match-first; a word with any unmatched rest is one [UNK]."""
        if len(word) > self.max_input_chars_per_word:
            return [self.unk_token_id]
        ids, start, n = [], 0, len(word)
        while start < n:
            prefix = self.prefix if start else ""
            for end in range(min(n, start + self._max_piece - len(prefix)), start, -1):
                i = self.vocab.get(prefix + word[start:end])
                if i is not None:
                    break
            else:
                return [self.unk_token_id]
            ids.append(i)
            start = end
        return ids

    def _word_ids(self, word: str) -> list[int]:
        ids = self._cache.get(word)
        if ids is None:
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            ids = self._cache[word] = self._wordpiece(word)
        return ids

    def _pieces(self, text: str) -> Iterable[tuple[str, int | None]]:
        """Raw text → (segment, None) for ordinary text and (token, id) for special tokens."""
        pos = 0
        if self._special_re is not None:
            for m in self._special_re.finditer(text):
                yield text[pos : m.start()], None
                yield m.group(), self.special_tokens[m.group()]
                pos = m.end()
        yield text[pos:], None

    def encode_ordinary(self, text: str) -> list[int]:
        """Ids of one text with no [CLS]/[SEP] and no truncation."""
        if not isinstance(text, str):
            raise ValueError(f"text must be a str, got {type(text).__name__}")
        ids: list[int] = []
        for piece, special in self._pieces(text):
            if special is not None:
                ids.append(special)
                continue
            cache = self._cache
            for word in pre_tokenize(self.normalizer.normalize(piece)):
                ids += cache.get(word) or self._word_ids(word)
        return ids

    def tokenize(self, text: str) -> list[str]:
        return [self._tokens[i] for i in self.encode_ordinary(text)]

    def encode_full(
        self, text: str, pair: str | None = None, add_special_tokens: bool = True, max_length: int | None = None
    ) -> Encoding:
        """Ids, token types (0 for A and its [CLS]/[SEP], 1 for B and its [SEP]) and the
        count truncation dropped. max_length counts the special tokens; None: no limit."""
        a = self.encode_ordinary(text)
        b = None if pair is None else self.encode_ordinary(pair)
        n_special = 0 if not add_special_tokens else 2 if pair is None else 3
        dropped = 0
        if max_length is not None:
            if not isinstance(max_length, int) or isinstance(max_length, bool):
                raise ValueError(f"max_length must be an int or None, got {max_length!r}")
            if max_length < max(n_special, 1):
                raise ValueError(f"max_length {max_length} leaves no room for text beside {n_special} special tokens")
            a, b, dropped = truncate_pair(a, b, max_length - n_special)
        cls, sep = ([self.cls_token_id], [self.sep_token_id]) if add_special_tokens else ([], [])
        ids = cls + a + sep
        types = [0] * len(ids)
        if b is not None:
            ids += b + sep
            types += [1] * (len(b) + len(sep))
        return Encoding(ids, types, dropped)

    def encode(
        self, text: str, pair: str | None = None, add_special_tokens: bool = True, max_length: int | None = None
    ) -> list[int]:
        """`[CLS] text [SEP]` (`[CLS] text [SEP] pair [SEP]`) as ids; see `encode_full`."""
        return self.encode_full(text, pair, add_special_tokens, max_length).ids

    def token_type_ids(self, text: str, pair: str | None = None, add_special_tokens: bool = True,
                       max_length: int | None = None) -> list[int]:
        return self.encode_full(text, pair, add_special_tokens, max_length).token_type_ids

    def encode_batch(
        self, texts: Sequence[str], pairs: Sequence[str] | None = None, max_length: int | None = None,
        add_special_tokens: bool = True,
    ) -> BatchEncoding:
        """Encode each text (with its pair), pad right to the longest with [PAD], mask 0 there.

        >>> tok = WordPieceTokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hi", "there"])
        >>> tok.encode_batch(["hi there", "hi"]).attention_mask
        [[1, 1, 1, 1], [1, 1, 1, 0]]
        """
        if isinstance(texts, str):
            raise ValueError("encode_batch takes a list of texts, got one str (use encode)")
        if pairs is not None and len(pairs) != len(texts):
            raise ValueError(f"{len(texts)} texts but {len(pairs)} pairs")
        encs = [self.encode_full(t, None if pairs is None else pairs[k], add_special_tokens, max_length)
                for k, t in enumerate(texts)]
        width = max((len(e.ids) for e in encs), default=0)
        return BatchEncoding(
            input_ids=[e.ids + [self.pad_token_id] * (width - len(e.ids)) for e in encs],
            token_type_ids=[e.token_type_ids + [0] * (width - len(e.ids)) for e in encs],
            attention_mask=[[1] * len(e.ids) + [0] * (width - len(e.ids)) for e in encs],
            n_truncated=[e.n_truncated for e in encs],
        )

    # ---- save -------------------------------------------------------------------------
    def to_hf_json(self) -> dict:
        """This tokenizer as a Hugging Face `tokenizer.json` (loads back here and in `tokenizers`)."""
        cls, sep = self.cls_token, self.sep_token

        def special(t: str, type_id: int) -> dict:
            return {"SpecialToken": {"id": t, "type_id": type_id}}

        def seq(name: str, type_id: int) -> dict:
            return {"Sequence": {"id": name, "type_id": type_id}}

        added = sorted(self.special_tokens.items(), key=lambda kv: kv[1])
        return {
            "version": "1.0", "truncation": None, "padding": None,
            "added_tokens": [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                              "normalized": False, "special": True} for t, i in added],
            "normalizer": {"type": "BertNormalizer", **asdict(self.normalizer)},
            "pre_tokenizer": {"type": "BertPreTokenizer"},
            "post_processor": {
                "type": "TemplateProcessing",
                "single": [special(cls, 0), seq("A", 0), special(sep, 0)],
                "pair": [special(cls, 0), seq("A", 0), special(sep, 0), seq("B", 1), special(sep, 1)],
                "special_tokens": {t: {"id": t, "ids": [self.vocab[t]], "tokens": [t]} for t in (cls, sep)},
            },
            "decoder": {"type": "WordPiece", "prefix": self.prefix, "cleanup": True},
            "model": {"type": "WordPiece", "unk_token": self.unk_token, "continuing_subword_prefix": self.prefix,
                      "max_input_chars_per_word": self.max_input_chars_per_word, "vocab": self.vocab},
        }

    def save(self, folder: str | os.PathLike) -> Path:
        """Write `tokenizer.json` + `tokenizer_config.json` (atomically); `load_tokenizer(folder)` reads them."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(folder / "tokenizer.json", self.to_hf_json())
        names = {k: getattr(self, k) for k in ("unk_token", "cls_token", "sep_token", "pad_token", "mask_token")}
        atomic_write_json(folder / "tokenizer_config.json", {
            "tokenizer_class": "BertTokenizer", "model_max_length": self.model_max_length,
            "do_lower_case": self.normalizer.lowercase, **names})
        return folder

    def fingerprint(self) -> str:
        """A short hash of everything that decides the ids (for data manifests)."""
        h = hashlib.sha256(json.dumps(self.to_hf_json(), sort_keys=True).encode())
        return h.hexdigest()[:16]

    # ---- decode -----------------------------------------------------------------------
    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        """Ids → text: "##" pieces join the word before them, others get a space; then
        `tokenizers`' clean-up (" ," → ","; " n't" → "n't" ...).

        >>> WordPieceTokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "un", "##able", ","]).decode([2, 5, 6, 7, 3], True)
        'unable,'
        """
        tokens = [self.id_to_token(i) for i in ids]
        if skip_special_tokens:
            tokens = [t for t in tokens if t not in self.special_tokens]
        out = []
        for k, t in enumerate(tokens):
            # Like `tokenizers`, only a non-first token loses its "##"; clean-up runs per token.
            if k:
                t = t[len(self.prefix) :] if t.startswith(self.prefix) else " " + t
            out.append(_cleanup(t))
        return "".join(out)


_CLEANUP = (
    (" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
    (" 'm", "'m"), (" do not", " don't"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"),
)


def _cleanup(s: str) -> str:
    for a, b in _CLEANUP:
        s = s.replace(a, b)
    return s
