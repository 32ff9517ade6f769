"""Training commands: `ember data prepare`, `ember pretrain`, `ember scaling sweep|fit`,
`ember export`. Each parses into the recipe's own Config dataclass and calls its `main`."""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from jsonargparse import ActionConfigFile, ArgumentParser

from ember.cli.errors import at_least, in_range, out_folder


@dataclass
class DataPrepareConfig:
    """Tokenize text files into memmap shards + a manifest (resumable)."""

    input: list[str] = field(default_factory=list)  # files or folders; empty: the bundled corpus
    out: str = "runs/data/prepared"
    tokenizer: str | None = None  # name or path; default: train a BPE of vocab_size on the input
    vocab_size: int = 4096
    val_fraction: float = 0.05
    shard_tokens: int = 1 << 22
    workers: int = 2
    progress: bool = True

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
                        eos_tokens=["<|endoftext|>"], progress=cfg.progress)  # fmt: skip
    m = prepare_shards(cfg.out, tok, inputs=cfg.input or None, texts=texts, val_fraction=cfg.val_fraction,
                       shard_tokens=cfg.shard_tokens, workers=cfg.workers, progress=cfg.progress)  # fmt: skip
    out = {"out": cfg.out, "documents": m.n_documents,
           "train_tokens": m.splits["train"].n_tokens, "val_tokens": m.splits["val"].n_tokens}  # fmt: skip
    print(json.dumps(out))
    return out


@dataclass
class ExportConfig:
    """Write a run's latest checkpoint as an HF safetensors folder (transformers loads it)."""

    run: str = "runs/pretrain"  # a training run folder (holds checkpoints/latest)
    out: str | None = None  # default: RUN/hf


def export(cfg: ExportConfig) -> Path:
    from ember.train.pretrain import load_run

    out = out_folder(cfg.out or Path(cfg.run) / "hf")
    model, tok = load_run(cfg.run)
    from ember.train.pretrain import export_hf

    export_hf(model, tok, out)
    print(f"wrote {out}", file=sys.stderr)
    return out


def _build(cls, d: dict):
    """A dataclass from jsonargparse's nested dict, building nested dataclass fields too."""
    import typing

    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in d:
            continue
        v = d[f.name]
        sub = hints.get(f.name)
        if isinstance(sub, type) and dataclasses.is_dataclass(sub) and isinstance(v, dict):
            v = _build(sub, v)
        kwargs[f.name] = v
    return cls(**kwargs)


def command(cfg_cls, many: tuple[str, ...] = ()) -> ArgumentParser:
    p = ArgumentParser(description=cfg_cls.__doc__)
    p.add_argument("--config", action=ActionConfigFile, help="YAML file of options")
    p.add_class_arguments(cfg_cls, nested_key=None, fail_untyped=False, skip=set(many))
    for name in many:
        p.add_argument(f"--{name}", nargs="+", type=str, default=[], help=f"one or more {name} values")
    return p


def add_commands(sub) -> None:
    from ember.train.pretrain import PretrainConfig
    from ember.train.scaling import ScalingFitConfig, ScalingSweepConfig

    data = ArgumentParser(description="data preparation")
    sub.add_subcommand("data", data, help="prepare token shards")
    data.add_subcommands(dest="action").add_subcommand("prepare", command(DataPrepareConfig, many=("input",)),
                                                      help="tokenize files into shards")  # fmt: skip
    sub.add_subcommand("pretrain", command(PretrainConfig), help="train a decoder from scratch")
    scaling = ArgumentParser(description="scaling laws")
    sub.add_subcommand("scaling", scaling, help="scaling-law sweep and fit")
    ssub = scaling.add_subcommands(dest="action")
    ssub.add_subcommand("sweep", command(ScalingSweepConfig), help="train a grid of tiny models")
    ssub.add_subcommand("fit", command(ScalingFitConfig), help="fit L(N, D) and predict")
    sub.add_subcommand("export", command(ExportConfig), help="a run's checkpoint → HF folder")
    from ember.train.sft import SFTConfig

    sub.add_subcommand("sft", command(SFTConfig), help="supervised fine-tuning (LoRA, QLoRA, full)")
    from ember.train.dpo import DPOConfig

    sub.add_subcommand("dpo", command(DPOConfig), help="preference optimisation (DPO, cDPO, IPO, SimPO, ORPO)")
    from ember.train.grpo import GRPOConfig

    sub.add_subcommand("grpo", command(GRPOConfig), help="GRPO with verifiable rewards")
    from ember.train.reward import RewardConfig

    sub.add_subcommand("reward", command(RewardConfig), help="Bradley-Terry reward model on preference pairs")
    from ember.train.ppo import PPOConfig

    sub.add_subcommand("ppo", command(PPOConfig), help="RLHF: PPO against an `ember reward` model, KL to the reference")
    from ember.cli import evaluate

    evaluate.add_commands(sub, command)


def bool_fields() -> set[str]:
    from ember.train.loop import TrainConfig
    from ember.train.pretrain import DataConfig, PretrainConfig
    from ember.train.scaling import ScalingFitConfig, ScalingSweepConfig

    names = set()
    from ember.train.dpo import DPOConfig
    from ember.train.grpo import GRPOConfig
    from ember.train.ppo import PPOConfig
    from ember.train.reward import RewardConfig
    from ember.train.sft import SFTConfig

    for c in (DataPrepareConfig, PretrainConfig, TrainConfig, DataConfig, ScalingSweepConfig, ScalingFitConfig, SFTConfig,
              DPOConfig, GRPOConfig, RewardConfig, PPOConfig):
        names |= {f.name for f in dataclasses.fields(c) if f.type in (bool, "bool")}
    names |= {f"train.{f.name}" for f in dataclasses.fields(TrainConfig) if f.type in (bool, "bool")}
    from ember.cli import evaluate

    return names | evaluate.bool_fields()


def run(args) -> bool:
    """Dispatch a parsed training command; False when `args.command` is not one of ours.

    A torchrun process group that a command opened is closed here, after every rank is done.
    """
    from ember.parallel import destroy_distributed

    ok = False
    try:
        handled = _dispatch(args)
        ok = True
        return handled
    finally:
        try:
            destroy_distributed(sync=ok)
        except Exception:
            if ok:
                raise
            # an error or Ctrl-C is already on its way out: a broken group must not hide it


def _dispatch(args) -> bool:
    from ember.cli import evaluate

    if evaluate.run(args, _build):
        return True
    if args.command == "data" and args.data.action == "prepare":
        data_prepare(_build(DataPrepareConfig, args.data.prepare.as_dict()))
    elif args.command == "pretrain":
        from ember.train.pretrain import PretrainConfig, main

        summary = main(_checked(_build(PretrainConfig, _drop_config(args.pretrain.as_dict()))))
        if summary is not None:
            print(json.dumps({k: v for k, v in summary.items() if k != "sample"}))
    elif args.command == "scaling":
        from ember.train import scaling

        if args.scaling.action == "sweep":
            scaling.sweep(_checked(_build(scaling.ScalingSweepConfig, _drop_config(args.scaling.sweep.as_dict()))))
        else:
            scaling.fit(_build(scaling.ScalingFitConfig, _drop_config(args.scaling.fit.as_dict())))
    elif args.command == "sft":
        from ember.train.sft import SFTConfig, main

        summary = main(_checked(_build(SFTConfig, _drop_config(args.sft.as_dict()))))
        print(json.dumps({k: v for k, v in summary.items() if k != "sample"}))
    elif args.command == "dpo":
        from ember.train.dpo import DPOConfig, main

        summary = main(_checked(_build(DPOConfig, _drop_config(args.dpo.as_dict()))))
        print(json.dumps({k: summary[k] for k in ("before", "after") if k in summary}))
    elif args.command == "grpo":
        from ember.train.grpo import GRPOConfig, main

        summary = main(_checked(_build(GRPOConfig, _drop_config(args.grpo.as_dict()))))
        print(json.dumps({k: v for k, v in summary.items() if isinstance(v, (int, float, str, dict))}))
    elif args.command == "reward":
        from ember.train.reward import RewardConfig, main

        summary = main(_checked(_build(RewardConfig, _drop_config(args.reward.as_dict()))))
        print(json.dumps({k: summary[k] for k in ("before", "after") if k in summary}))
    elif args.command == "ppo":
        from ember.train.ppo import PPOConfig, main

        summary = main(_checked(_build(PPOConfig, _drop_config(args.ppo.as_dict()))))
        keys = ("before", "after", "score_first", "score_last", "kl_first", "kl_last")
        print(json.dumps({k: summary[k] for k in keys if k in summary}))
    elif args.command == "export":
        export(_build(ExportConfig, args.export.as_dict()))
    else:
        return False
    return True


def _drop_config(d: dict) -> dict:
    d.pop("config", None)
    return d


def _checked(cfg):
    """`cfg` after checking, before minutes of training, that its output folder can be made."""
    train = getattr(cfg, "train", None)
    if isinstance(getattr(train, "out", None), str):
        out_folder(train.out, "--train.out")
    elif isinstance(getattr(cfg, "out", None), str):
        out_folder(cfg.out)
    return cfg
