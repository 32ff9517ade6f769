"""`ember <stage> ...`: every stage from the command line.

Each command's options come from a dataclass (jsonargparse turns fields into flags and
`--config file.yaml`); the command body calls the same functions Python users call.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from jsonargparse import ActionConfigFile, ArgumentParser


# ---- tokenizer ----------------------------------------------------------------------------
@dataclass
class TokenizerTrainConfig:
    """Train a byte-level BPE tokenizer."""

    input: list[str] = field(default_factory=list)  # text files or folders; empty = bundled corpus
    vocab_size: int = 4096  # bytes (256) + merges + special tokens
    out: str = "runs/tokenizer"  # folder for tokenizer.ember.json
    pattern: str = "gpt4"  # gpt2 | gpt4 | smollm | a regex
    special_tokens: list[str] = field(default_factory=lambda: ["<|endoftext|>"])
    progress: bool = True


def tokenizer_train(cfg: TokenizerTrainConfig) -> Path:
    from ember.core.io import read_text_utf8
    from ember.data.corpus import bundled_corpus
    from ember.tokenizer import train_bpe

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

    text: str | None = None  # the text (or use --file)
    model: str = "smollm2"  # known name, GGUF, tokenizer.json/folder, or ember tokenizer JSON
    file: str | None = None  # read the text from this file instead
    format: Literal["ids", "pieces", "json"] = "ids"
    allow_special: bool = False  # treat special-token strings in the text as special tokens


def tokenize(cfg: TokenizeConfig) -> str:
    from ember.core.io import read_text_utf8
    from ember.tokenizer import load_tokenizer

    if (cfg.text is None) == (cfg.file is None):
        raise ValueError("give either TEXT or --file, not both or neither")
    text = read_text_utf8(cfg.file) if cfg.file else cfg.text
    tok = load_tokenizer(cfg.model)
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


# ---- demo (`make run`) ---------------------------------------------------------------------
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


# ---- wiring ---------------------------------------------------------------------------------
def _command(cfg_cls, doc: str | None = None, many: tuple[str, ...] = ()) -> ArgumentParser:
    """A parser whose flags are `cfg_cls`'s fields; fields in `many` take several values."""
    p = ArgumentParser(description=doc or cfg_cls.__doc__)
    p.add_argument("--config", action=ActionConfigFile, help="YAML file of options")
    p.add_class_arguments(cfg_cls, nested_key=None, fail_untyped=False, skip=set(many))
    for name in many:
        p.add_argument(f"--{name}", nargs="+", type=str, default=[], help=f"one or more {name} values")
    return p


def _normalize_argv(argv: list[str], positional: dict[str, str]) -> list[str]:
    """`--vocab-size 3` → `--vocab_size 3`; a bare word after `ember CMD` becomes `--<positional>`."""
    out: list[str] = []
    takes_value = False
    for tok in argv:
        if tok.startswith("--") and len(tok) > 2:
            name, eq, value = tok[2:].partition("=")
            out.append("--" + name.replace("-", "_") + eq + value)
            takes_value = not eq
        elif out and out[0] in positional and not takes_value and not tok.startswith("-"):
            out.extend([f"--{positional[out[0]]}", tok])
        else:
            out.append(tok)
            takes_value = False
    return out


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="ember", description="ember: one codebase for the whole life of an LLM")
    sub = parser.add_subcommands(dest="command")

    tokenizer = ArgumentParser(description="tokenizer tools")
    sub.add_subcommand("tokenizer", tokenizer, help="train tokenizers")
    tsub = tokenizer.add_subcommands(dest="action")
    tsub.add_subcommand("train", _command(TokenizerTrainConfig, many=("input",)), help="train a byte-level BPE tokenizer")

    tok_parser = _command(TokenizeConfig)
    sub.add_subcommand("tokenize", tok_parser, help="show how text tokenizes")
    sub.add_subcommand("demo", ArgumentParser(description=demo.__doc__), help="the `make run` demo")
    return parser


def _dataclass_from(cls, ns):
    names = cls.__dataclass_fields__
    return cls(**{k: v for k, v in vars(ns).items() if k in names})


def main(argv: list[str] | None = None) -> int:
    argv = _normalize_argv(list(sys.argv[1:] if argv is None else argv), {"tokenize": "text"})
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "tokenizer" and args.tokenizer.action == "train":
            tokenizer_train(_dataclass_from(TokenizerTrainConfig, args.tokenizer.train))
        elif args.command == "tokenize":
            tokenize(_dataclass_from(TokenizeConfig, args.tokenize))
        elif args.command == "demo":
            demo()
        else:
            parser.print_help()
            return 2
    except ValueError as e:
        print(f"ember: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
