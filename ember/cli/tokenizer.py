"""`ember tokenizer train`, `ember tokenize` and `ember demo`: tokenizers from the shell."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ember.cli.errors import out_folder


@dataclass
class TokenizerTrainConfig:
    """Train a byte-level BPE tokenizer."""

    input: list[str] = field(default_factory=list)
    """text files or folders to train on; none: the bundled corpus"""
    vocab_size: int = 4096
    """bytes (256) + merges + special tokens"""
    out: str = "runs/tokenizer"
    """folder to write tokenizer.ember.json into"""
    pattern: str = "gpt4"
    """pre-tokenizer split pattern: gpt2, gpt4, smollm, or a regex"""
    special_tokens: list[str] = field(default_factory=lambda: ["<|endoftext|>"])
    """special tokens added after the merges; the first one ends documents"""
    progress: bool = True
    """show a progress bar while merging"""


def tokenizer_train(cfg: TokenizerTrainConfig) -> Path:
    from ember.core.io import read_text_utf8
    from ember.data.corpus import bundled_corpus
    from ember.tokenizer import train_bpe

    out_folder(cfg.out)
    if cfg.input:
        files = _expand_inputs(cfg.input)
        texts = [read_text_utf8(f) for f in files]
        what = f"{len(files)} file(s)"
    else:
        texts, what = [bundled_corpus()], "the bundled corpus (pydoc topics)"
    n_chars = sum(len(t) for t in texts)
    print(f"training BPE on {what}, {n_chars:,} characters, vocab {cfg.vocab_size}", file=sys.stderr)
    tok = train_bpe(
        texts, cfg.vocab_size, pattern=cfg.pattern, special_tokens=cfg.special_tokens,
        progress=cfg.progress, eos_tokens=cfg.special_tokens[:1],
    )
    path = tok.save(cfg.out)
    print(f"saved {len(tok.merges)} merges, vocab {tok.vocab_size} -> {path}", file=sys.stderr)
    return path


def _expand_inputs(inputs: list[str]) -> list[Path]:
    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files.extend(sorted(f for f in p.rglob("*") if f.is_file()))
        elif p.is_file():
            files.append(p)
        else:
            raise ValueError(f"input {item!r} is neither a file nor a folder")
    if not files:
        raise ValueError(f"no input files found in {inputs}")
    return files


@dataclass
class TokenizeConfig:
    """Show how a model's tokenizer cuts text."""

    text: str | None = None
    """the text to tokenize (also the bare word after `ember tokenize`); or use --file"""
    model: str = "smollm2"
    """known name (smollm2, minilm), GGUF file, tokenizer.json or its folder, vocab.txt, or an ember tokenizer JSON"""
    file: str | None = None
    """read the text from this file instead"""
    format: Literal["ids", "pieces", "json"] = "ids"
    """print token ids, the pieces they stand for, or both with counts as JSON"""
    allow_special: bool = False
    """treat special-token strings in the text as special tokens"""


def tokenize(cfg: TokenizeConfig) -> str:
    from ember.core.io import read_text_utf8
    from ember.tokenizer import WordPieceTokenizer, load_tokenizer

    if (cfg.text is None) == (cfg.file is None):
        raise ValueError("give either TEXT or --file, not both or neither")
    text = read_text_utf8(cfg.file) if cfg.file else cfg.text
    tok = load_tokenizer(cfg.model)
    if isinstance(tok, WordPieceTokenizer):  # BERT: [CLS] text [SEP], as the encoder sees it
        ids = tok.encode(text)
        pieces = [tok.id_to_token(i) for i in ids]
    else:
        ids = tok.encode(text, allowed_special="all" if cfg.allow_special else ())
        pieces = [tok.id_to_bytes(i).decode("utf-8", errors="backslashreplace") for i in ids]
    if cfg.format == "ids":
        out = json.dumps(ids)
    elif cfg.format == "pieces":
        out = json.dumps(pieces, ensure_ascii=False)
    else:
        out = json.dumps({"ids": ids, "pieces": pieces, "n_tokens": len(ids), "n_chars": len(text)}, ensure_ascii=False)
    print(out)
    return out


DEMO_SENTENCE = "ember turns raw text into tokens: 12 apples, 3 naïve cafés and one 🚀!"


def demo() -> None:
    """Train a tokenizer on the bundled corpus, then show how a sentence tokenizes."""
    from ember.data.corpus import pydoc_topics_text
    from ember.tokenizer import train_bpe

    text = pydoc_topics_text()
    print(f"Training a 2,048-token byte-level BPE on Python's pydoc topics ({len(text):,} chars)...")
    tok = train_bpe([text], 2048, pattern="gpt4", special_tokens=["<|endoftext|>"], progress=True)
    ids = tok.encode(DEMO_SENTENCE)
    print(f"\n{DEMO_SENTENCE!r}\n-> {len(ids)} tokens:")
    print(" | ".join(tok.id_to_bytes(i).decode("utf-8", errors="backslashreplace") for i in ids))
    print(ids)
    assert tok.decode(ids) == DEMO_SENTENCE
    print("first merges:", [tok.vocab[c].decode("utf-8", "replace") for _, _, c in tok.merges[:12]])
