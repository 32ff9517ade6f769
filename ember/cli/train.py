"""`ember data prepare` and `ember export`; and how a training command's summary is printed.

The recipes themselves (`ember pretrain`, `ember sft`, ...) need nothing here: the command
table in `ember.cli` names their module, which exports `Config` and `main`.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ember.cli.errors import at_least, in_range, out_folder


@dataclass
class DataPrepareConfig:
    """Tokenize text files into memmap shards + a manifest (resumable)."""

    input: list[str] = field(default_factory=list)
    """text files or folders to tokenize; none: the bundled corpus"""
    out: str = "runs/data/prepared"
    """folder for the shards, the manifest and the tokenizer"""
    tokenizer: str | None = None
    """tokenizer name or path; default: train a BPE of --vocab-size on the input"""
    vocab_size: int = 4096
    """vocabulary of the BPE trained when no --tokenizer is given"""
    val_fraction: float = 0.05
    """share of documents held out for validation"""
    shard_tokens: int = 1 << 22
    """tokens per shard file"""
    workers: int = 2
    """tokenizing processes"""
    progress: bool = True
    """show a progress bar"""

    def __post_init__(self):
        at_least("--vocab-size", self.vocab_size, 256)
        in_range("--val-fraction", self.val_fraction, 0.0, 1.0, hi_open=True)
        at_least("--shard-tokens", self.shard_tokens, 1)
        at_least("--workers", self.workers, 1)


def data_prepare(cfg: DataPrepareConfig) -> dict:
    from ember.core.io import read_text_utf8
    from ember.data.corpus import bundled_documents
    from ember.data.shards import expand_inputs, prepare_shards
    from ember.tokenizer import load_tokenizer, train_bpe

    out_folder(cfg.out)
    texts = None if cfg.input else bundled_documents()
    if cfg.tokenizer:
        tok = load_tokenizer(cfg.tokenizer)
    else:
        sample = texts if texts is not None else [read_text_utf8(f) for f in expand_inputs(cfg.input)]
        print(f"training a {cfg.vocab_size}-token BPE on the input", file=sys.stderr)
        tok = train_bpe(sample, cfg.vocab_size, pattern="gpt4", special_tokens=["<|endoftext|>"],
                        eos_tokens=["<|endoftext|>"], progress=cfg.progress)
    m = prepare_shards(cfg.out, tok, inputs=cfg.input or None, texts=texts, val_fraction=cfg.val_fraction,
                       shard_tokens=cfg.shard_tokens, workers=cfg.workers, progress=cfg.progress)
    out = {"out": cfg.out, "documents": m.n_documents,
           "train_tokens": m.splits["train"].n_tokens, "val_tokens": m.splits["val"].n_tokens}
    print(json.dumps(out))
    return out


@dataclass
class ExportConfig:
    """Write a run's latest checkpoint as an HF safetensors folder (transformers loads it) or
    as one GGUF file (llama.cpp, transformers and ember load it)."""

    run: str = "runs/pretrain"
    """a training run folder (holds checkpoints/latest); with --format gguf also a model name or path"""
    out: str | None = None
    """folder (hf) or file (gguf) to write; default: RUN/hf, RUN/model-DTYPE.gguf (a folder) or ./NAME-DTYPE.gguf"""
    format: str = "hf"
    """hf (safetensors folder) or gguf (one llama.cpp file with the tokenizer and chat template)"""
    dtype: str = "f32"
    """GGUF weight type: f32, f16, q8_0, q4_0 or q4_1 (matrices; norms and biases stay f32)"""
    overwrite: bool = False
    """replace an existing GGUF file"""
    adapter: str | None = None
    """a LoRA adapter folder (from `ember sft --peft lora`) merged into the model before a GGUF export"""

    def __post_init__(self):
        if self.format not in ("hf", "gguf"):
            raise ValueError(f"--format must be hf or gguf, got {self.format!r}")
        from ember.model.convert.to_gguf import DTYPES

        if self.dtype not in DTYPES:
            raise ValueError(f"--dtype must be one of {list(DTYPES)}, got {self.dtype!r}")
        if self.adapter and self.format != "gguf":
            raise ValueError(f"--adapter {self.adapter!r} is merged only by --format gguf")


def export(cfg: ExportConfig) -> Path:
    from ember.train.pretrain import export_hf, load_run

    if cfg.format == "gguf":
        return export_gguf(cfg)
    out = out_folder(cfg.out or Path(cfg.run) / "hf")
    model, tok = load_run(cfg.run)
    export_hf(model, tok, out)
    print(f"wrote {out}", file=sys.stderr)
    return out


def export_gguf(cfg: ExportConfig) -> Path:
    from ember.model.convert.to_gguf import save_gguf
    from ember.tokenizer.patterns import PATTERNS

    run = Path(cfg.run)
    if (run / "checkpoints").is_dir():
        from ember.train.pretrain import load_run

        model, tok = load_run(run)
    else:
        from ember.model.load import load_model
        from ember.tokenizer import load_tokenizer

        model, tok = load_model(cfg.run), load_tokenizer(cfg.run)
    if cfg.adapter:
        from ember.peft import load_adapter, merge_lora

        model = merge_lora(load_adapter(model, cfg.adapter))
    out = Path(cfg.out) if cfg.out else run / f"model-{cfg.dtype}.gguf" if run.is_dir() else Path(f"{run.stem}-{cfg.dtype}.gguf")
    pattern = next((n for n, rx in PATTERNS.items() if rx == tok.pattern), tok.pattern)
    save_gguf(model, out, cfg.dtype, tok, pattern, name=run.name, overwrite=cfg.overwrite, progress=True)
    print(f"wrote {out}", file=sys.stderr)
    return out


def checked_out_folder(cfg):
    """`cfg` after checking, before minutes of training, that its output folder can be made."""
    if isinstance(cfg, ExportConfig) and cfg.format == "gguf":
        return cfg  # --out names a file, checked when it is written
    train = getattr(cfg, "train", None)
    if isinstance(getattr(train, "out", None), str):
        out_folder(train.out, "--train.out")
    elif isinstance(getattr(cfg, "out", None), str):
        out_folder(cfg.out)
    return cfg


def print_summary(summary: dict | None, keys: tuple[str, ...] | None = None) -> None:
    """One JSON line of a run's summary: the `keys` given, else every number, text and
    dict in it but the sample text (long, and already shown on stderr)."""
    if summary is None:  # a rank other than 0 under torchrun
        return
    if keys is None:
        shown = {k: v for k, v in summary.items() if k != "sample" and isinstance(v, (int, float, str, dict))}
    else:
        shown = {k: summary[k] for k in keys if k in summary}
    print(json.dumps(shown))
