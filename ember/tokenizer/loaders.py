"""Load real tokenizers: Hugging Face `tokenizer.json`, GGUF metadata, ember's own JSON.

All three become the same `Tokenizer`: 256 byte ids, an ordered merge list, special tokens.
BERT's WordPiece files become a `WordPieceTokenizer` (wordpiece_files.py).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ember.core.gguf import gguf_field, open_gguf
from ember.core.registry import regular_file, resolve_model

from .json_fields import MAX_TOKEN_ID, _check, _is, _list_of, _read_json, _token_id
from .patterns import bytes_to_unicode
from .tokenizer import FORMAT_NAME, Tokenizer
from .wordpiece import WordPieceTokenizer
from .wordpiece_files import from_vocab_txt, from_wordpiece_json, is_wordpiece_json

# GGUF `tokenizer.ggml.pre` → our split-pattern name.
GGUF_PRE_TOKENIZERS = {"gpt2": "gpt2", "default": "gpt2", "smollm": "smollm", "llama-bpe": "gpt4"}
# Tokens that end a turn or a document in the families we load; generation stops on them.
_END_TOKENS = ("<|endoftext|>", "<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "</s>")
_GGUF_CONTROL, _GGUF_USER_DEFINED = 3, 4


def load_tokenizer(name_or_path: str | os.PathLike, use_fast: bool = True) -> Tokenizer | WordPieceTokenizer:
    """A tokenizer from a known model name, a GGUF file, an HF folder/`tokenizer.json`, ember
    JSON, or BERT's `vocab.txt` (a WordPiece tokenizer.json or vocab.txt gives WordPiece).

    >>> load_tokenizer("smollm2").encode("Hello world")  # doctest: +SKIP
    [19556, 905]
    """
    path = resolve_model(name_or_path)  # a regular file or a folder, never a device or FIFO
    if path.is_dir():
        if path.suffix in (".json", ".gguf"):
            raise ValueError(f"{path} is a directory, not a {path.suffix[1:].upper()} file")
        for name in ("tokenizer.ember.json", "tokenizer.json", "vocab.txt"):
            if (path / name).exists():
                return load_tokenizer(regular_file(path / name, "tokenizer file"), use_fast)
        raise ValueError(f"{path} holds no tokenizer.ember.json, tokenizer.json or vocab.txt")
    if path.suffix == ".gguf":
        return from_gguf(path, use_fast)
    if path.suffix == ".txt":
        return from_vocab_txt(regular_file(path, "vocab file"))
    data = _read_json(path)
    if is_wordpiece_json(data):
        return from_wordpiece_json(path, data)
    if isinstance(data, dict) and data.get("format") == FORMAT_NAME:
        try:
            return Tokenizer.from_dict(data, use_fast)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
    return from_tokenizer_json(path, use_fast, data=data)


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
    try:
        return Tokenizer(merges=id_merges, byte_ids=byte_ids, special_tokens=specials, **kw)
    except ValueError as e:  # e.g. two tokens with one id: the message names ids, add the file
        raise ValueError(f"{where}: {e}") from None


def from_tokenizer_json(path: str | os.PathLike, use_fast: bool = True, data=None) -> Tokenizer:
    """Hugging Face `tokenizer.json` with a byte-level BPE model."""
    path = Path(path)
    data = _read_json(path) if data is None else data
    where = str(path)
    _check(isinstance(data, dict), where, "the top level", "a JSON object (malformed tokenizer.json)", type(data).__name__)
    model = data.get("model")
    _check(isinstance(model, dict), where, "model", "a JSON object (malformed tokenizer.json)", model)
    if model.get("type") != "BPE":
        raise ValueError(f"{where}: model type {model.get('type')!r} is not supported (only byte-level BPE)")
    _check(isinstance(model.get("vocab"), dict), where, "model.vocab", "a JSON object (malformed tokenizer.json)", model.get("vocab"))
    vocab = {k: _token_id(v, where, f"model.vocab[{k!r}]") for k, v in model["vocab"].items()}
    merges = [_merge(m, where, f"model.merges[{k}]") for k, m in enumerate(_list(model, "merges", where, "model."))]
    added = {}
    for k, t in enumerate(_list(data, "added_tokens", where, "", default=[])):
        _check(isinstance(t, dict), where, f"added_tokens[{k}]", "a JSON object", t)
        _check(isinstance(t.get("content"), str), where, f"added_tokens[{k}].content", "a string", t.get("content"))
        added[t["content"]] = _token_id(t.get("id"), where, f"added_tokens[{k}].id")
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


def _list(d: dict, key: str, where: str, prefix: str, default=None) -> list:
    v = d.get(key)
    if v is None and default is not None:
        return default
    _check(isinstance(v, list), where, prefix + key, "a list (malformed tokenizer.json)", v)
    return v


def _merge(m, where: str, field: str, maxsplit: int = 1) -> tuple[str, str]:
    """A merge as "a b" (older files) or ["a", "b"] (newer ones) → ("a", "b")."""
    parts = m.split(" ", maxsplit) if isinstance(m, str) else m
    ok = isinstance(parts, list | tuple) and len(parts) == 2 and all(isinstance(p, str) for p in parts)
    _check(ok, where, field, "two tokens ('a b' or ['a', 'b'])", m)
    return tuple(parts)


def _read_tokenizer_config(folder: Path, where: str) -> dict:
    f = folder / "tokenizer_config.json"
    if not f.exists():
        return {}
    cfg, where = _read_json(f), str(f)
    _check(isinstance(cfg, dict), where, "the top level", "a JSON object", type(cfg).__name__)
    out = {}
    for k in ("eos_token", "bos_token"):  # either "str" or {"content": "str"}
        v = cfg.get(k)
        v = v.get("content") if isinstance(v, dict) else v
        _check(v is None or isinstance(v, str), where, k, 'a string or {"content": string}', cfg.get(k))
        out[k] = v
    tmpl = cfg.get("chat_template")
    if isinstance(tmpl, list):  # named templates: take "default"
        ok = all(isinstance(t, dict) for t in tmpl)
        _check(ok, where, "chat_template", 'a string or a list of {"name", "template"} objects', tmpl)
        tmpl = next((t.get("template") for t in tmpl if t.get("name") == "default"), None)
    _check(tmpl is None or isinstance(tmpl, str), where, "chat_template", "a string", tmpl)
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
        steps = pre.get("pretokenizers")
        ok = isinstance(steps, list) and all(isinstance(s, dict) for s in steps)
        _check(ok, where, "pre_tokenizer.pretokenizers", "a list of JSON objects", steps)
        kinds = [s.get("type") for s in steps]
        if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and steps[1].get("use_regex", True):
            return "smollm"
        if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
            pattern = steps[0].get("pattern")
            regex_src = pattern.get("Regex") if isinstance(pattern, dict) else None
            if isinstance(regex_src, str) and regex_src and steps[0].get("behavior") == "Isolated":
                return regex_src
    raise ValueError(f"{where}: unsupported pre_tokenizer {json.dumps(pre)[:200]}")


def from_gguf(path: str | os.PathLike, use_fast: bool = True) -> Tokenizer:
    """The vocabulary, merges and pre-tokenizer in a GGUF file's `tokenizer.ggml.*` metadata."""
    reader = open_gguf(path)
    where = str(path)

    def get(key: str, ok, expected: str, default=None):
        v = gguf_field(reader, key, default)
        _check(ok(v), where, f"GGUF metadata {key}", expected, v)
        return v

    model = gguf_field(reader, "tokenizer.ggml.model")
    if model != "gpt2":
        raise ValueError(f"{where}: tokenizer.ggml.model {model!r} is not supported (only 'gpt2', byte-level BPE)")
    pre = get("tokenizer.ggml.pre", _is(str), "a string", "default")
    if pre not in GGUF_PRE_TOKENIZERS:
        raise ValueError(f"{where}: tokenizer.ggml.pre {pre!r} is not supported (supported: {sorted(GGUF_PRE_TOKENIZERS)})")
    tokens = gguf_field(reader, "tokenizer.ggml.tokens")
    merges = gguf_field(reader, "tokenizer.ggml.merges")
    if not tokens or merges is None:
        raise ValueError(f"{where}: GGUF lacks tokenizer.ggml.tokens or tokenizer.ggml.merges")
    get("tokenizer.ggml.tokens", _list_of(str), "a list of strings")
    get("tokenizer.ggml.merges", _list_of(str), "a list of strings")
    if len(tokens) > MAX_TOKEN_ID:
        raise ValueError(f"{where}: {len(tokens)} tokens, more than the {MAX_TOKEN_ID} supported")
    types = get("tokenizer.ggml.token_type", lambda v: v is None or _list_of(int)(v), "a list of ints")
    types = types or [1] * len(tokens)
    if len(types) != len(tokens):
        raise ValueError(f"{where}: {len(types)} token types for {len(tokens)} tokens")
    vocab, specials = {}, {}
    for i, (t, ty) in enumerate(zip(tokens, types)):
        (specials if ty in (_GGUF_CONTROL, _GGUF_USER_DEFINED) else vocab)[t] = i
    pairs = [_merge(m, where, f"GGUF tokenizer.ggml.merges[{k}]", maxsplit=-1) for k, m in enumerate(merges)]

    def special_name(key):
        i = get(key, lambda v: v is None or _is(int)(v), "an int")
        return tokens[i] if i is not None and 0 <= i < len(tokens) and tokens[i] in specials else None

    eos = [s for s in dict.fromkeys([special_name("tokenizer.ggml.eos_token_id"), *_END_TOKENS]) if s in specials]
    return _assemble(
        vocab, pairs, specials, where,
        pattern=GGUF_PRE_TOKENIZERS[pre],
        chat_template=get("tokenizer.chat_template", lambda v: v is None or _is(str)(v), "a string"),
        bos_token=special_name("tokenizer.ggml.bos_token_id"),
        eos_tokens=eos,
        add_bos=get("tokenizer.ggml.add_bos_token", _is(bool), "a bool", False),
        vocab_size=len(tokens),
        use_fast=use_fast,
    )
