"""`ember sft`: supervised fine-tuning on chat JSONL, full or parameter-efficient, on the
one training loop.

Loss: next-token cross-entropy on assistant tokens only (the chat template's mask), with
several conversations packed per row (positions restart, attention never crosses them).
PEFT: LoRA (default), QLoRA (LoRA over an NF4 base), prompt tuning, prefix tuning, or a
full fine-tune (`--peft none`). `--preset tool-use` generates calculator conversations and
LoRA-tunes SmolLM2 on them (see ember/data/tool_use.py for the tool-call format).
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F

from ember.core.io import atomic_write_json
from ember.data.sft import IGNORE, RowLoader, encode_conversations, pack, read_chat_jsonl
from ember.parallel import init_distributed
from ember.train.loop import TrainConfig, Trainer, prepare_run_dir
from ember.train.optim import OptimConfig


@dataclass
class LoraArgs:
    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: ["wq", "wk", "wv", "wo", "w1", "w2", "w3"])


@dataclass
class SFTConfig:
    """Fine-tune a chat model on JSONL conversations."""

    model: str = "smollm2"  # known name, GGUF, HF folder
    data: str | None = None  # JSONL, one {"messages": [...]} per line
    preset: Literal["none", "tool-use"] = "none"  # tool-use: generated calculator chats
    peft: Literal["lora", "prompt", "prefix", "none"] = "lora"  # none: full fine-tune
    lora: LoraArgs = field(default_factory=LoraArgs)
    n_virtual: int = 20  # prompt / prefix tuning length
    quant: Literal["none", "nf4"] = "none"  # nf4: QLoRA (frozen 4-bit base, float adapters)
    max_len: int = 512  # tokens per conversation (and per packed row)
    overlong: Literal["truncate", "drop"] = "truncate"
    on_error: Literal["skip", "fail"] = "skip"  # malformed JSONL lines
    packing: bool = True  # several conversations per row (else one, padded)
    val_fraction: float = 0.05
    n_samples: int = 2  # held-out chats shown at intervals
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        steps=200, batch_size=8, eval_every=50, sample_every=100, save_every=100, out="runs/sft",
        keep_checkpoints=1))  # fmt: skip
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-3, warmup_steps=10, weight_decay=0.0))


def sft_loss(model, batch) -> tuple[torch.Tensor, dict]:
    """Mean cross-entropy over the labelled (assistant) tokens; the head runs only there."""
    sel = batch["labels"] != IGNORE  # (B, T)
    logits = model(batch["ids"], segment_ids=batch.get("segment_ids"), logits_index=sel)  # (N, V)
    return F.cross_entropy(logits.float(), batch["labels"][sel]), {}


def apply_peft(model, cfg: SFTConfig):
    """The chosen PEFT transform (or none: every weight trains)."""
    from ember.peft import (
        LoraConfig,
        apply_lora,
        apply_nf4,
        apply_prefix_tuning,
        apply_prompt_tuning,
    )

    if cfg.quant == "nf4":
        if cfg.peft != "lora":
            raise ValueError("--quant nf4 (QLoRA) trains LoRA adapters: use it with --peft lora")
        model = apply_nf4(model)
    if cfg.peft == "lora":
        return apply_lora(model, LoraConfig(**dataclasses.asdict(cfg.lora)))
    if cfg.peft == "prompt":
        return apply_prompt_tuning(model, cfg.n_virtual)
    if cfg.peft == "prefix":
        return apply_prefix_tuning(model, cfg.n_virtual)
    return model


def load_conversations(cfg: SFTConfig) -> list[list[dict]]:
    if cfg.preset == "tool-use" and cfg.data is None:
        from ember.data.tool_use import write_tool_use_jsonl

        path = Path(cfg.train.out) / "tool_use_train.jsonl"
        write_tool_use_jsonl(path, n=TOOL_USE_CONVERSATIONS, seed=cfg.train.seed, phrasing_set="train")
        print(f"generated {TOOL_USE_CONVERSATIONS} tool-use conversations → {path}", file=sys.stderr)
        return read_chat_jsonl(path, "fail")
    if cfg.data is None:
        raise ValueError("give --data FILE.jsonl (one {\"messages\": [...]} per line) or --preset tool-use")
    return read_chat_jsonl(cfg.data, cfg.on_error)


TOOL_USE_CONVERSATIONS = 2000

# --preset tool-use: what the calculator demo needs on 2 cores (≤ 20 min). Conversations are
# ~130 tokens, so rows of 448 hold three; 6 rows ≈ 18 conversations per step.
TOOL_USE_PRESET = {
    "max_len": 448,
    "train.steps": 110, "train.batch_size": 6, "train.eval_every": 55, "train.sample_every": 55,
    "train.save_every": 55, "train.out": "runs/sft-tool-use",
    "optim.lr": 1e-3, "optim.warmup_steps": 10,
}  # fmt: skip


def apply_preset(cfg: SFTConfig) -> SFTConfig:
    """Fill in the preset's values wherever the config still holds the generic default, so
    explicit flags (`--train.steps 50`) win over the preset."""
    if cfg.preset != "tool-use":
        return cfg
    default = SFTConfig()
    for key, value in TOOL_USE_PRESET.items():
        *parents, leaf = key.split(".")
        obj, ref = cfg, default
        for name in parents:
            obj, ref = getattr(obj, name), getattr(ref, name)
        if getattr(obj, leaf) == getattr(ref, leaf):
            setattr(obj, leaf, value)
    return cfg


def build_sft(cfg: SFTConfig) -> Trainer:
    import ember

    cfg = apply_preset(cfg)
    torch.manual_seed(cfg.train.seed)  # adapter init (LoRA A, heads): the same run every time
    info = init_distributed(cfg.train.device)
    prepare_run_dir(cfg.train, info)  # before the tool-use preset writes its data into out
    conversations = load_conversations(cfg)
    model, tok = ember.load(cfg.model)
    pad = tok.bos_token_id if tok.bos_token_id is not None else min(tok.eos_token_ids, default=0)
    max_len = min(cfg.max_len, model.config.max_seq_len)
    if not 0 <= cfg.val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {cfg.val_fraction}")
    # 0 holds nothing out (no val_loss, no samples); any other fraction holds out at least one
    n_val = max(1, round(len(conversations) * cfg.val_fraction)) if cfg.val_fraction and len(conversations) > 1 else 0
    val_convs, train_convs = conversations[:n_val], conversations[n_val:]
    if not train_convs:
        raise ValueError("need at least 2 conversations (one is held out for validation)")
    train_rows = pack(encode_conversations(tok, train_convs, max_len, cfg.overlong), max_len, pad, cfg.packing)
    val_rows = pack(encode_conversations(tok, val_convs, max_len, cfg.overlong), max_len, pad, cfg.packing) if n_val else None
    loader = RowLoader(train_rows, cfg.train.batch_size, cfg.train.seed, info.rank, info.world_size)
    model = apply_peft(model, cfg)
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_all = sum(p.numel() for p in model.parameters())
    print(f"sft: {len(train_convs)} conversations in {len(train_rows['ids'])} rows of {max_len}; "
          f"training {n_train:,} of {n_all:,} parameters ({cfg.peft}{'+nf4' if cfg.quant == 'nf4' else ''})",
          file=sys.stderr)  # fmt: skip
    device = info.device

    def batches(step):
        return {k: v.to(device) for k, v in loader.batch(step).items()}

    def evaluate(m) -> dict:
        if val_rows is None:
            return {}
        total, n = 0.0, 0
        for i in range(0, len(val_rows["ids"]), 8):
            b = {k: v[i : i + 8].to(device) for k, v in val_rows.items()}
            k = int((b["labels"] != IGNORE).sum())
            total += sft_loss(m, b)[0].item() * k
            n += k
        return {"val_loss": total / max(n, 1)}

    prompts = [c[: _last_assistant(c)] for c in val_convs[: cfg.n_samples]]
    run_config = {"sft": _jsonable(cfg), "model": model_config_dict(model)}
    trainer = Trainer(
        model, cfg.train, cfg.optim, sft_loss, batches, run_config, eval_fn=evaluate,
        sample_fn=(lambda m: sample_chats(m, tok, prompts)) if prompts and cfg.peft != "prompt" else None,
        tokens_per_step=cfg.train.batch_size * max_len, info=info, save_trainable_only=cfg.peft != "none",
    )  # fmt: skip
    trainer.tokenizer = tok
    return trainer


def model_config_dict(model) -> dict:
    from ember.peft.lora import base_model

    return base_model(model).config.to_dict()


def _last_assistant(messages: list[dict]) -> int:
    return max(i for i, m in enumerate(messages) if m["role"] == "assistant")


def sample_chats(model, tok, prompts: list[list[dict]], max_tokens: int = 64) -> str:
    """Greedy replies to held-out conversations cut before their last assistant turn."""
    from ember.infer.engine import Engine
    from ember.infer.sampling import SamplingParams

    ids = [tok.render_chat(p, add_generation_prompt=True)[0] for p in prompts]
    engine = Engine(model, tok, max_batch_size=len(ids), max_seq_len=min(model_ctx(model), max(map(len, ids)) + max_tokens))
    outs = engine.generate(ids, SamplingParams(temperature=0, max_tokens=max_tokens))
    return "\n".join(f"[{p[-1]['role']}] {p[-1]['content'][:120]!r}\n  → {o.text!r}" for p, o in zip(prompts, outs))


def model_ctx(model) -> int:
    from ember.peft.lora import base_model

    return base_model(model).config.max_seq_len


def main(cfg: SFTConfig) -> dict:
    from ember.peft import save_adapter

    cfg = apply_preset(cfg)
    trainer = build_sft(cfg)
    summary = trainer.fit()
    out = Path(cfg.train.out)
    if trainer.info.is_main:
        if cfg.peft == "none":
            from ember.model.convert.hf import save_hf

            summary["model"] = str(save_hf(trainer.plain, out / "model"))
            trainer.tokenizer.save(out / "model")
        else:
            lora = None
            if cfg.peft == "lora":
                from ember.peft import LoraConfig

                lora = LoraConfig(**dataclasses.asdict(cfg.lora))
            summary["adapter"] = str(save_adapter(trainer.plain, out / "adapter", lora))
            atomic_write_json(out / "adapter" / "base_model.json", {"model": cfg.model})
    return summary


def _jsonable(cfg) -> dict:
    return dataclasses.asdict(cfg)
