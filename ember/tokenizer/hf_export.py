"""ember's tokenizer as Hugging Face files: `tokenizer.json` and `tokenizer_config.json`.

`transformers.AutoTokenizer.from_pretrained(folder)` then gives ember's ids: a byte-level
BPE model (vocab in GPT-2's byte→unicode spelling, merges in rank order), ember's split
regex as a Split pre-tokenizer followed by ByteLevel without its own regex, a ByteLevel
decoder, and ember's special tokens as added tokens. `load_tokenizer(folder)` reads the
same files back into an equal `Tokenizer` (`ember.tokenizer.loaders`).
"""

from __future__ import annotations

import os
from pathlib import Path

from ember.core.io import atomic_write_json

from .patterns import bytes_to_unicode
from .tokenizer import Tokenizer


def to_hf_tokenizer_json(tok: Tokenizer) -> dict:
    """The `tokenizer.json` object for `tok` (HF tokenizers' serialisation, BPE model).

    >>> to_hf_tokenizer_json(Tokenizer(merges=[(108, 111, 256)]))["model"]["merges"]
    [['l', 'o']]
    """
    unicode_of = bytes_to_unicode()

    def spell(i: int) -> str:
        return "".join(unicode_of[b] for b in tok.vocab[i])

    vocab: dict[str, int] = {}
    for i in sorted(tok.vocab):
        s = spell(i)
        if s in vocab:  # HF's vocab maps strings to ids: a second id for the same bytes has no place
            raise ValueError(f"tokens {vocab[s]} and {i} are the same bytes {tok.vocab[i]!r}; "
                             "tokenizer.json cannot hold both")
        vocab[s] = i
    added = [
        {"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": True}
        for s, i in sorted(tok.special_tokens.items(), key=lambda kv: kv[1])
    ]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        # ember splits with one regex, then merges bytes inside each piece
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": tok.pattern}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
        ]},
        "post_processor": _post_processor(tok),
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
        "model": {
            "type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
            "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
            "ignore_merges": False,  # ember always merges, even a word that is one token
            "vocab": vocab,
            "merges": [[spell(a), spell(b)] for a, b, _ in tok.merges],
        },
    }


def _post_processor(tok: Tokenizer) -> dict | None:
    """BOS before every text when ember's generation adds it (tok.add_bos), else nothing."""
    if not (tok.add_bos and tok.bos_token is not None):
        return None
    bos = {"SpecialToken": {"id": tok.bos_token, "type_id": 0}}
    return {
        "type": "TemplateProcessing",
        "single": [bos, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [bos, {"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {tok.bos_token: {"id": tok.bos_token, "ids": [tok.bos_token_id],
                                           "tokens": [tok.bos_token]}},
    }


def tokenizer_config(tok: Tokenizer) -> dict:
    """`tokenizer_config.json`: the fast tokenizer class, BOS/EOS, the chat template."""
    eos = min(tok.eos_tokens, key=tok.special_tokens.__getitem__) if tok.eos_tokens else None
    cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": tok.bos_token,
        "eos_token": eos,
        "add_bos_token": tok.add_bos,
        # transformers' default rewrites " ." as "." when decoding: ids would not round-trip
        "clean_up_tokenization_spaces": False,
        "model_max_length": 1 << 30,
        "added_tokens_decoder": {
            str(i): {"content": s, "lstrip": False, "normalized": False, "rstrip": False,
                     "single_word": False, "special": True}
            for s, i in sorted(tok.special_tokens.items(), key=lambda kv: kv[1])
        },
    }
    if tok.chat_template is not None:
        cfg["chat_template"] = tok.chat_template
    return cfg


def save_hf_tokenizer(tok: Tokenizer, folder: str | os.PathLike) -> Path:
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json (atomically).

    >>> save_hf_tokenizer(tok, "runs/pretrain/hf")  # doctest: +SKIP
    PosixPath('runs/pretrain/hf/tokenizer.json')
    """
    folder = Path(folder)
    cfg = tokenizer_config(tok)
    path = atomic_write_json(folder / "tokenizer.json", to_hf_tokenizer_json(tok), indent=None)
    atomic_write_json(folder / "tokenizer_config.json", cfg)
    special = {k: cfg[k] for k in ("bos_token", "eos_token") if cfg[k] is not None}
    atomic_write_json(folder / "special_tokens_map.json", special)
    return path
