"""Byte-level BPE: encode, decode, stream-decode, save and load ember's own format.

One source of truth: the byte tokens and the ordered merge list. The vocabulary (id → bytes)
is derived from them, so a tokenizer trained here, loaded from `tokenizer.json` or from a
GGUF file is the same object with the same algorithm.

Two encoders give identical ids: `encode_pure` is the readable reference (regex split, then
merge the lowest-ranked adjacent pair until none is left); `encode` uses a tiktoken
`Encoding` built from the same ranks when tiktoken is installed (a test checks they agree).
"""

from __future__ import annotations

import codecs
import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import regex

from ember.core.io import atomic_write_json

from .chat import render_chat
from .patterns import resolve_pattern

FORMAT_NAME = "ember-tokenizer"
FORMAT_VERSION = 1


class Tokenizer:
    """Byte-level BPE tokenizer.

    merges: ordered list of (left_id, right_id, new_id); rank = position in the list.
    byte_ids: 256 entries, the token of each single byte, or None where a loaded vocabulary
        lacks that byte (SmolLM2 has no token for 21 bytes, e.g. 0x04). Like Hugging Face
        `tokenizers`, such bytes are dropped before merging, so they do not round-trip.
    special_tokens: strings that are never merged and only recognised when allowed.

    >>> tok = Tokenizer(merges=[(108, 111, 256)], pattern="gpt2")   # "l" + "o" -> "lo"
    >>> tok.encode("lol")
    [256, 108]
    """

    def __init__(
        self,
        merges: Sequence[tuple[int, int, int]],
        pattern: str = "gpt4",
        byte_ids: Sequence[int] | None = None,
        special_tokens: dict[str, int] | None = None,
        chat_template: str | None = None,
        bos_token: str | None = None,
        eos_tokens: Sequence[str] = (),
        add_bos: bool = False,
        vocab_size: int | None = None,
        use_fast: bool = True,
    ):
        self.pattern = resolve_pattern(pattern)
        self.byte_ids = list(range(256)) if byte_ids is None else [None if i is None else int(i) for i in byte_ids]
        present = [i for i in self.byte_ids if i is not None]
        if len(self.byte_ids) != 256 or len(set(present)) != len(present):
            raise ValueError("byte_ids must hold 256 entries, distinct ids (or None), one per byte value")
        self.merges = [(int(a), int(b), int(c)) for a, b, c in merges]
        self.special_tokens = dict(special_tokens or {})
        self.chat_template = chat_template
        self.bos_token = bos_token
        self.eos_tokens = list(eos_tokens)
        self.add_bos = add_bos
        for name in [bos_token, *self.eos_tokens]:
            if name is not None and name not in self.special_tokens:
                raise ValueError(f"unknown special token {name!r}: not among {list(self.special_tokens)}")

        # Derived state: id -> bytes, pair -> (rank, new id).
        vocab: dict[int, bytes] = {i: bytes([b]) for b, i in enumerate(self.byte_ids) if i is not None}
        # Text holding a missing ASCII byte takes the reference path (see _build_fast).
        self._missing_ascii = tuple(chr(b) for b, i in enumerate(self.byte_ids) if i is None and b < 0x80)
        self._ranks: dict[tuple[int, int], tuple[int, int]] = {}
        for rank, (a, b, c) in enumerate(self.merges):
            if a not in vocab or b not in vocab:
                raise ValueError(f"merge #{rank} ({a}, {b}) uses an id defined by no earlier token")
            merged = vocab[a] + vocab[b]
            if vocab.setdefault(c, merged) != merged:
                raise ValueError(f"merge #{rank} makes id {c}, already a different token")
            self._ranks.setdefault((a, b), (rank, c))
        for s, i in self.special_tokens.items():
            if i in vocab:
                raise ValueError(f"special token {s!r} reuses id {i} of an ordinary token")
        self.vocab = vocab
        self._special_by_id = {i: s.encode("utf-8") for s, i in self.special_tokens.items()}
        all_ids = list(vocab) + list(self._special_by_id)
        self.vocab_size = max(vocab_size or 0, max(all_ids) + 1)
        self._split = regex.compile(self.pattern)
        self._special_split = (
            regex.compile("(" + "|".join(regex.escape(s) for s in sorted(self.special_tokens, key=len, reverse=True)) + ")")
            if self.special_tokens
            else None
        )
        self._cache: dict[bytes, list[int]] = {}
        self._fast = _build_fast(self) if use_fast else None

    # ---- properties -------------------------------------------------------------------
    @property
    def eos_token_ids(self) -> set[int]:
        return {self.special_tokens[s] for s in self.eos_tokens}

    @property
    def bos_token_id(self) -> int | None:
        return None if self.bos_token is None else self.special_tokens[self.bos_token]

    def id_to_bytes(self, i: int) -> bytes:
        if i in self.vocab:
            return self.vocab[i]
        if i in self._special_by_id:
            return self._special_by_id[i]
        raise ValueError(f"token id {i} is not in the vocabulary (size {self.vocab_size})")

    def fingerprint(self) -> str:
        """A short hash of everything that decides the ids (for data manifests)."""
        h = hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode())
        return h.hexdigest()[:16]

    # ---- encoding ---------------------------------------------------------------------
    def _allowed(self, allowed_special) -> set[str]:
        if allowed_special == "all":
            return set(self.special_tokens)
        if isinstance(allowed_special, str):
            allowed_special = {allowed_special}
        allowed = set(allowed_special or ())
        unknown = allowed - set(self.special_tokens)
        if unknown:
            raise ValueError(
                f"unknown special token(s) {sorted(unknown)}; this tokenizer has {sorted(self.special_tokens)}"
            )
        return allowed

    def split_special(self, text: str, allowed_special: Iterable[str] | str = ()):
        """Yield (is_special, piece): the text cut at the special-token strings that are
        allowed; the pieces between are ordinary text (chat rendering builds on this).

        >>> tok = Tokenizer([], pattern="gpt2", special_tokens={"<|im_end|>": 256})
        >>> list(tok.split_special("a<|im_end|>b", "all"))
        [(False, 'a'), (True, '<|im_end|>'), (False, 'b')]
        """
        return self._segments(text, self._allowed(allowed_special))

    def _segments(self, text: str, allowed: set[str]):
        """split_special for an already-checked set of allowed specials."""
        if not allowed or self._special_split is None:
            yield False, text
            return
        for k, piece in enumerate(self._special_split.split(text)):
            if k % 2 == 1 and piece in allowed:
                yield True, piece
            elif piece:
                yield False, piece

    def encode(self, text: str, allowed_special: Iterable[str] | str = (), add_bos: bool | None = False) -> list[int]:
        """Text → ids. Special-token strings are plain text unless listed in `allowed_special`.

        add_bos: True puts the BOS token first (an error if the tokenizer has none); None
        does what this tokenizer's `add_bos` setting says (the model's own convention, e.g.
        GGUF's tokenizer.ggml.add_bos_token); False, the default, never does, so plain
        `encode(text)` keeps giving just the text's ids (data shards, chat rendering and
        offsets rely on that).

        >>> tok = Tokenizer([], pattern="gpt2", special_tokens={"<|im_start|>": 256})
        >>> tok.encode("<|im_start|>hi", allowed_special={"<|im_start|>"})
        [256, 104, 105]
        """
        _check_text(text)
        bos = self._bos_prefix(add_bos)
        if self._fast is None or self._has_missing_byte(text):
            return bos + self.encode_pure(text, allowed_special)
        return bos + self._fast.encode(text, self._allowed(allowed_special))

    def _bos_prefix(self, add_bos: bool | None) -> list[int]:
        """[bos id] or [] for encode's add_bos (True, False, or None = this tokenizer's setting)."""
        if add_bos is None:
            add_bos = self.add_bos and self.bos_token is not None
        elif not isinstance(add_bos, bool):
            raise ValueError(f"add_bos must be True, False or None, got {add_bos!r}")
        if not add_bos:
            return []
        if self.bos_token is None:
            raise ValueError("add_bos=True, but this tokenizer has no BOS token")
        return [self.special_tokens[self.bos_token]]

    def _has_missing_byte(self, text: str) -> bool:
        return any(c in text for c in self._missing_ascii)  # `in` scans in C: ~4 ms per MB

    def encode_pure(self, text: str, allowed_special: Iterable[str] | str = ()) -> list[int]:
        """The reference algorithm in plain Python (per-chunk cache)."""
        _check_text(text)
        ids: list[int] = []
        for is_special, piece in self._segments(text, self._allowed(allowed_special)):
            if is_special:
                ids.append(self.special_tokens[piece])
            else:
                for chunk in self._split.findall(piece):
                    ids.extend(self._encode_chunk(chunk.encode("utf-8")))
        return ids

    def encode_batch(self, texts: Sequence[str], allowed_special=(), add_bos: bool | None = False) -> list[list[int]]:
        """`encode` for every text (in threads when tiktoken is there); add_bos as encode's."""
        bos = self._bos_prefix(add_bos)
        if self._fast is not None:
            for t in texts:
                _check_text(t)
                if self._has_missing_byte(t):
                    return [bos + self.encode(t, allowed_special) for t in texts]
            return [bos + ids for ids in self._fast.encode_batch(list(texts), self._allowed(allowed_special))]
        return [bos + self.encode_pure(t, allowed_special) for t in texts]

    def _encode_chunk(self, chunk: bytes) -> list[int]:
        cached = self._cache.get(chunk)
        if cached is not None:
            return cached
        ids = [i for i in map(self.byte_ids.__getitem__, chunk) if i is not None]
        ranks = self._ranks
        while len(ids) >= 2:
            # The adjacent pair with the lowest merge rank goes first, as in the merge list.
            best = min(zip(ids, ids[1:]), key=lambda p: ranks.get(p, _NO_MERGE))
            if best not in ranks:
                break
            new_id = ranks[best][1]
            a, b = best
            out, i, n = [], 0, len(ids)
            while i < n:
                if i + 1 < n and ids[i] == a and ids[i + 1] == b:
                    out.append(new_id)
                    i += 2
                else:
                    out.append(ids[i])
                    i += 1
            ids = out
        if len(self._cache) > 200_000:  # bound memory on huge corpora
            self._cache.clear()
        self._cache[chunk] = ids
        return ids

    # ---- decoding ---------------------------------------------------------------------
    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        return b"".join(self.id_to_bytes(int(i)) for i in ids)

    def decode(self, ids: Iterable[int]) -> str:
        """Ids → text. Bytes that are not valid UTF-8 on their own become U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def stream_decoder(self) -> StreamDecoder:
        return StreamDecoder(self)

    # ---- chat -------------------------------------------------------------------------
    def render_chat(self, messages, add_generation_prompt: bool = True, **template_vars):
        """Messages → (ids, assistant_mask) through this model's chat template (see chat.py,
        which uses only this class's public methods and imports nothing of this module)."""
        return render_chat(self, messages, add_generation_prompt=add_generation_prompt, **template_vars)

    # ---- persistence ------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "pattern": self.pattern,
            "byte_ids": self.byte_ids,
            "merges": [list(m) for m in self.merges],
            "special_tokens": self.special_tokens,
            "chat_template": self.chat_template,
            "bos_token": self.bos_token,
            "eos_tokens": self.eos_tokens,
            "add_bos": self.add_bos,
            "vocab_size": self.vocab_size,
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write ember's versioned JSON (atomically). A folder gets `tokenizer.ember.json`."""
        path = Path(path)
        if path.suffix != ".json":
            path = path / "tokenizer.ember.json"
        return atomic_write_json(path, self.to_dict(), indent=None)

    @classmethod
    def from_dict(cls, d: dict, use_fast: bool = True) -> Tokenizer:
        if not isinstance(d, dict) or d.get("format") != FORMAT_NAME:
            raise ValueError(f"not an {FORMAT_NAME} file (missing 'format': '{FORMAT_NAME}')")
        if d.get("version") != FORMAT_VERSION:
            raise ValueError(f"unsupported {FORMAT_NAME} version {d.get('version')!r} (supported: {FORMAT_VERSION})")
        try:
            return cls(
                merges=[tuple(m) for m in d["merges"]],
                pattern=d["pattern"],
                byte_ids=d["byte_ids"],
                special_tokens=d.get("special_tokens") or {},
                chat_template=d.get("chat_template"),
                bos_token=d.get("bos_token"),
                eos_tokens=d.get("eos_tokens") or (),
                add_bos=bool(d.get("add_bos", False)),
                vocab_size=d.get("vocab_size"),
                use_fast=use_fast,
            )
        except (KeyError, TypeError) as e:
            raise ValueError(f"malformed {FORMAT_NAME} file: {type(e).__name__}: {e}") from None


_NO_MERGE = (float("inf"), -1)


def _check_text(text) -> None:
    if not isinstance(text, str):
        raise ValueError(f"encode() takes a str, not {type(text).__name__}")


class StreamDecoder:
    """Incremental ids → text that never emits half a UTF-8 character.

    >>> tok = Tokenizer([], pattern="gpt2"); ids, d = tok.encode("é"), tok.stream_decoder()
    >>> d.push(ids[0]), d.push(ids[1]), d.flush()  # "é" is two byte tokens
    ('', 'é', '')
    """

    def __init__(self, tok: Tokenizer):
        self._tok = tok
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        return self._utf8.decode(self._tok.id_to_bytes(int(token_id)))

    def flush(self) -> str:
        return self._utf8.decode(b"", final=True)


class _FastEncoder:
    """tiktoken with ranks derived from our merges; ids mapped back when they differ."""

    def __init__(self, tok: Tokenizer, enc, rank_to_id):
        self.tok, self.enc, self.rank_to_id = tok, enc, rank_to_id

    def _map(self, ranks: list[int]) -> list[int]:
        if self.rank_to_id is None:
            return ranks
        return self.rank_to_id[ranks].tolist()

    def encode(self, text: str, allowed: set[str]) -> list[int]:
        if not allowed:
            return self._encode_ordinary(text)
        out: list[int] = []
        for is_special, piece in self.tok._segments(text, allowed):
            if is_special:
                out.append(self.tok.special_tokens[piece])
            else:
                out.extend(self._encode_ordinary(piece))
        return out

    def _encode_ordinary(self, text: str) -> list[int]:
        return self._map(self.enc.encode_ordinary(text))

    def encode_batch(self, texts: list[str], allowed: set[str]) -> list[list[int]]:
        if allowed:
            return [self.encode(t, allowed) for t in texts]
        return [self._map(r) for r in self.enc.encode_ordinary_batch(texts, num_threads=os.cpu_count() or 1)]


def _build_fast(tok: Tokenizer) -> _FastEncoder | None:
    """A tiktoken Encoding whose rank order is our merge order.

    tiktoken merges the adjacent pair whose concatenation has the lowest rank. Ranks that rise
    with the merge index (single bytes never compete: only pairs are ranked) reproduce the merge list
    exactly when, as for every BPE-trained vocabulary we load, no token can be reached by a
    pair that is not itself in the merge list (the parity tests check this on real text).
    Bytes the vocabulary lacks get a rank but no id: non-ASCII ones never occur in UTF-8
    text, and text with a missing ASCII byte is routed to the reference encoder.
    """
    try:
        import numpy as np
        import tiktoken
    except ImportError:
        return None
    # Merge results in merge order, each bytes string once (two merges may make one token).
    merged_ids: list[int] = []
    seen: set[bytes] = set()
    for _, _, c in tok.merges:
        if tok.vocab[c] not in seen:
            seen.add(tok.vocab[c])
            merged_ids.append(c)
    if all(x < y for x, y in zip(merged_ids, merged_ids[1:])):
        # Ids already rise with merge order (true of our own and of SmolLM2's vocabulary):
        # use them as ranks and skip mapping. Missing bytes get ranks past the vocabulary.
        spare = iter(range(tok.vocab_size, tok.vocab_size + 256))
        ranks = {bytes([b]): (next(spare) if i is None else i) for b, i in enumerate(tok.byte_ids)}
        ranks.update({tok.vocab[c]: c for c in merged_ids})
        rank_to_id = None
    else:
        ranks = {bytes([b]): b for b in range(256)}
        rank_ids = [-1 if i is None else i for i in tok.byte_ids] + merged_ids
        ranks.update({tok.vocab[c]: 256 + k for k, c in enumerate(merged_ids)})
        rank_to_id = np.asarray(rank_ids, dtype=np.int64)
    enc = tiktoken.Encoding(
        name=f"ember-{id(tok)}", pat_str=tok.pattern, mergeable_ranks=ranks, special_tokens={}
    )
    return _FastEncoder(tok, enc, rank_to_id)
