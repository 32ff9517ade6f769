"""Load real tokenizers: Hugging Face `tokenizer.json`, GGUF metadata, ember's own JSON.

All three become the same `Tokenizer`: 256 byte ids, an ordered merge list, special tokens.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ember.core.gguf import gguf_field, open_gguf
from ember.core.registry import resolve_model

from .patterns import bytes_to_unicode
from .tokenizer import FORMAT_NAME, Tokenizer

# GGUF `tokenizer.ggml.pre` → our split-pattern name.
GGUF_PRE_TOKENIZERS = {"gpt2": "gpt2", "default": "gpt2", "smollm": "smollm"}
# Tokens that end a turn or a document in the families we load; generation stops on them.
_END_TOKENS = ("<|endoftext|>", "<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "</s>")
_GGUF_CONTROL, _GGUF_USER_DEFINED = 3, 4


def load_tokenizer(name_or_path: str | os.PathLike, use_fast: bool = True) -> Tokenizer:
    """A tokenizer from a known model name, a GGUF file, an HF folder/`tokenizer.json`, or ember JSON.

    >>> load_tokenizer("smollm2").encode("Hello world")  # doctest: +SKIP
    [19556, 905]
    """
    path = resolve_model(name_or_path)
    if path.is_dir():
        for name in ("tokenizer.ember.json", "tokenizer.json"):
            if (path / name).is_file():
                return load_tokenizer(path / name, use_fast)
        raise ValueError(f"{path} holds no tokenizer.ember.json or tokenizer.json")
    if path.suffix == ".gguf":
        return from_gguf(path, use_fast)
    data = _read_json(path)
    if isinstance(data, dict) and data.get("format") == FORMAT_NAME:
        return Tokenizer.from_dict(data, use_fast)
    return from_tokenizer_json(path, use_fast, data=data)


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None


def _unbyte(token: str, table: dict[str, int], where: str) -> bytes:
    try:
        return bytes(table[ch] for ch in token)
    except KeyError:
        raise ValueError(f"{where}: token {token!r} is not byte-level encoded") from None


def _assemble(
    vocab: dict[str, int], merges: list[tuple[str, str]], specials: dict[str, int], where: str, **kw
) -> Tokenizer:
    """Byte-level vocab strings + string merges → Tokenizer (ids checked, named on error)."""
    unicode_of = bytes_to_unicode()
    byte_of = {c: b for b, c in unicode_of.items()}
    byte_ids = [vocab.get(unicode_of[b]) for b in range(256)]
    if sum(i is None for i in byte_ids) > 128:
        raise ValueError(f"{where}: the vocabulary lacks most single-byte tokens: not byte-level BPE")
    id_merges = []
    for k, (a, b) in enumerate(merges):
        try:
            id_merges.append((vocab[a], vocab[b], vocab[a + b]))
        except KeyError as e:
            raise ValueError(f"{where}: merge #{k} ({a!r} {b!r}) uses {e.args[0]!r}, not in the vocabulary") from None
    for tok_str in vocab:  # every ordinary token must be byte-level text
        if tok_str not in specials:
            _unbyte(tok_str, byte_of, where)
    return Tokenizer(merges=id_merges, byte_ids=byte_ids, special_tokens=specials, **kw)


def from_tokenizer_json(path: str | os.PathLike, use_fast: bool = True, data=None) -> Tokenizer:
    """Hugging Face `tokenizer.json` with a byte-level BPE model."""
    path = Path(path)
    data = _read_json(path) if data is None else data
    where = str(path)
    try:
        model = data["model"]
        if model.get("type") != "BPE":
            raise ValueError(f"{where}: model type {model.get('type')!r} is not supported (only byte-level BPE)")
        vocab = {str(k): int(v) for k, v in model["vocab"].items()}
        merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]
        added = {t["content"]: int(t["id"]) for t in data.get("added_tokens") or []}
    except (KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{where}: malformed tokenizer.json ({type(e).__name__}: {e})") from None
    if any(len(m) != 2 for m in merges):
        raise ValueError(f"{where}: every merge must be two tokens")
    pattern = _hf_pattern(data.get("pre_tokenizer"), where)
    for s in added:
        vocab.pop(s, None)
    cfg = _read_tokenizer_config(path.parent, where)
    eos = [s for s in dict.fromkeys([cfg.get("eos_token"), *_END_TOKENS]) if s in added]
    bos = cfg.get("bos_token") if cfg.get("bos_token") in added else None
    return _assemble(
        vocab, merges, added, where, pattern=pattern, chat_template=cfg.get("chat_template"),
        bos_token=bos, eos_tokens=eos, use_fast=use_fast,
    )


def _read_tokenizer_config(folder: Path, where: str) -> dict:
    f = folder / "tokenizer_config.json"
    if not f.is_file():
        return {}
    cfg = _read_json(f)
    out = {}
    for k in ("eos_token", "bos_token"):  # either "str" or {"content": "str"}
        v = cfg.get(k)
        out[k] = v.get("content") if isinstance(v, dict) else v
    tmpl = cfg.get("chat_template")
    if isinstance(tmpl, list):  # named templates: take "default"
        tmpl = next((t.get("template") for t in tmpl if t.get("name") == "default"), None)
    out["chat_template"] = tmpl
    return out


def _hf_pattern(pre, where: str) -> str:
    """The split regex equivalent to a tokenizer.json pre_tokenizer."""
    if not isinstance(pre, dict):
        raise ValueError(f"{where}: missing pre_tokenizer")
    kind = pre.get("type")
    if kind == "ByteLevel" and pre.get("use_regex", True):
        return "gpt2"
    if kind == "Sequence":
        steps = pre.get("pretokenizers") or []
        kinds = [s.get("type") for s in steps]
        if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and steps[1].get("use_regex", True):
            return "smollm"
        if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
            regex_src = (steps[0].get("pattern") or {}).get("Regex")
            if regex_src and steps[0].get("behavior") == "Isolated":
                return regex_src
    raise ValueError(f"{where}: unsupported pre_tokenizer {json.dumps(pre)[:200]}")


def from_gguf(path: str | os.PathLike, use_fast: bool = True) -> Tokenizer:
    """The vocabulary, merges and pre-tokenizer in a GGUF file's `tokenizer.ggml.*` metadata."""
    reader = open_gguf(path)
    where = str(path)
    model = gguf_field(reader, "tokenizer.ggml.model")
    if model != "gpt2":
        raise ValueError(f"{where}: tokenizer.ggml.model {model!r} is not supported (only 'gpt2', byte-level BPE)")
    pre = gguf_field(reader, "tokenizer.ggml.pre", "default")
    if pre not in GGUF_PRE_TOKENIZERS:
        raise ValueError(f"{where}: tokenizer.ggml.pre {pre!r} is not supported (supported: {sorted(GGUF_PRE_TOKENIZERS)})")
    tokens = gguf_field(reader, "tokenizer.ggml.tokens")
    merges = gguf_field(reader, "tokenizer.ggml.merges")
    if not tokens or merges is None:
        raise ValueError(f"{where}: GGUF lacks tokenizer.ggml.tokens or tokenizer.ggml.merges")
    types = gguf_field(reader, "tokenizer.ggml.token_type") or [1] * len(tokens)
    if len(types) != len(tokens):
        raise ValueError(f"{where}: {len(types)} token types for {len(tokens)} tokens")
    vocab, specials = {}, {}
    for i, (t, ty) in enumerate(zip(tokens, types)):
        (specials if ty in (_GGUF_CONTROL, _GGUF_USER_DEFINED) else vocab)[t] = i
    pairs = []
    for k, m in enumerate(merges):
        parts = m.split(" ")
        if len(parts) != 2:
            raise ValueError(f"{where}: merge #{k} {m!r} is not two tokens")
        pairs.append(tuple(parts))

    def special_name(key):
        i = gguf_field(reader, key)
        return tokens[i] if i is not None and 0 <= i < len(tokens) and tokens[i] in specials else None

    eos = [s for s in dict.fromkeys([special_name("tokenizer.ggml.eos_token_id"), *_END_TOKENS]) if s in specials]
    return _assemble(
        vocab, pairs, specials, where,
        pattern=GGUF_PRE_TOKENIZERS[pre],
        chat_template=gguf_field(reader, "tokenizer.chat_template"),
        bos_token=special_name("tokenizer.ggml.bos_token_id"),
        eos_tokens=eos,
        add_bos=bool(gguf_field(reader, "tokenizer.ggml.add_bos_token", False)),
        vocab_size=len(tokens),
        use_fast=use_fast,
    )
