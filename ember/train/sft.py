"""`ember sft`: supervised fine-tuning on chat JSONL, full or parameter-efficient, on the
one training loop.

Loss: next-token cross-entropy on assistant tokens only (the chat template's mask), with
several conversations packed per row (positions restart, attention never crosses them).
PEFT: LoRA (default), QLoRA (LoRA over an NF4 base), prompt tuning, prefix tuning, or a
full fine-tune (`--peft none`). `--dataset tool-use` generates calculator conversations;
`--preset tool-use` also sizes the run to LoRA-tune SmolLM2 on them (see
ember/data/tool_use.py for the tool-call format).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F

from ember.data.sft import IGNORE, RowLoader, encode_conversations, pack, read_chat_jsonl
from ember.parallel import init_distributed
from ember.train.kit import (
    PostTrainConfig,
    context_len,
    greedy_replies,
    load_for_training,
    pad_id,
    run_config,
    save_adapter_folder,
    split_rows,
)
from ember.train.loop import TrainConfig, Trainer, prepare_run_dir
from ember.train.optim import OptimConfig

TOOL_USE_CONVERSATIONS = 2000
"""Conversations that `--dataset tool-use` generates."""
TRACE_CONVERSATIONS = 2000
"""Conversations that `--dataset reasoning` generates."""


@dataclass
class SFTConfig(PostTrainConfig):
    """Fine-tune a chat model on JSONL conversations."""

    data: str | None = None
    """JSONL, one {"messages": [...]} per line."""
    dataset: Literal["none", "tool-use", "reasoning", "reasoning-puzzle"] = "none"
    """Built-in generated conversations used when no --data is given; tool-use: calculator chats;
    reasoning: word problems answered with a <think> trace (ember.data.reasoning); reasoning-puzzle:
    list puzzles answered the same way (ember.data.puzzle_tasks)."""
    max_len: int = 512
    """Tokens per conversation (and per packed row)."""
    overlong: Literal["truncate", "drop"] = "truncate"
    """A conversation longer than max_len: cut it, or leave it out."""
    on_error: Literal["skip", "fail"] = "skip"
    """Malformed JSONL lines: skip them (counted) or stop."""
    packing: bool = True
    """Several conversations per row (else one per row, padded)."""
    val_fraction: float = 0.05
    """Share of conversations held out for val_loss and samples; 0 holds none out."""
    n_samples: int = 2
    """Held-out chats whose greedy replies are shown at intervals."""
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        steps=200, batch_size=8, eval_every=50, sample_every=100, save_every=100, out="runs/sft",
        keep_checkpoints=1))
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-3, warmup_steps=10, weight_decay=0.0))


# tool-use: what the calculator demo needs on 2 cores (≤ 20 min). Conversations are ~130
# tokens, so rows of 448 hold three; 6 rows ≈ 18 conversations per step.
PRESETS: dict[str, dict[str, Any]] = {
    "tool-use": {
        "dataset": "tool-use", "max_len": 448,
        "train.steps": 110, "train.batch_size": 6, "train.eval_every": 55, "train.sample_every": 55,
        "train.save_every": 55, "train.out": "runs/sft-tool-use",
        "optim.lr": 1e-3, "optim.warmup_steps": 10,
    },
    # reasoning: traces are ~117 tokens, so rows of 256 hold two; 2 rows ≈ 4 traces per step.
    # 16 steps took 20 min on the shared 2-core CPU under load (40-100 s/step); val_loss 0.16.
    "reasoning": {
        "dataset": "reasoning", "max_len": 256, "val_fraction": 0.01,
        "train.steps": 16, "train.batch_size": 2, "train.eval_every": 16, "train.sample_every": 0,
        "train.save_every": 16, "train.out": "runs/sft-reasoning",
        "optim.lr": 2e-3, "optim.warmup_steps": 2,
    },
}


def sft_loss(model, batch) -> tuple[torch.Tensor, dict]:
    """Mean cross-entropy over the labelled (assistant) tokens; the head runs only there."""
    sel = batch["labels"] != IGNORE  # (B, T)
    logits = model(batch["ids"], segment_ids=batch.get("segment_ids"), logits_mask=sel)  # (N, V)
    return F.cross_entropy(logits.float(), batch["labels"][sel]), {}


def load_conversations(cfg: SFTConfig) -> list[list[dict]]:
    if cfg.dataset == "tool-use" and cfg.data is None:
        from ember.data.tool_use import write_tool_use_jsonl

        path = Path(cfg.train.out) / "tool_use_train.jsonl"
        write_tool_use_jsonl(path, n=TOOL_USE_CONVERSATIONS, seed=cfg.train.seed, phrasing_set="train")
        print(f"generated {TOOL_USE_CONVERSATIONS} tool-use conversations → {path}", file=sys.stderr)
        return read_chat_jsonl(path, "fail")
    if cfg.dataset in ("reasoning", "reasoning-puzzle") and cfg.data is None:
        from ember.data.reasoning import write_trace_jsonl

        family = "puzzle" if cfg.dataset == "reasoning-puzzle" else "arithmetic"
        path = write_trace_jsonl(Path(cfg.train.out) / f"{cfg.dataset}_train.jsonl", TRACE_CONVERSATIONS,
                                 cfg.train.seed, family)
        return read_chat_jsonl(path, "fail")
    if cfg.data is None:
        raise ValueError("give --data FILE.jsonl (one {\"messages\": [...]} per line) or --dataset tool-use|reasoning")
    return read_chat_jsonl(cfg.data, cfg.on_error)


def held_out(conversations: list, val_fraction: float) -> int:
    """How many conversations to hold out: 0 for fraction 0, else at least one.

    >>> held_out([[]] * 100, 0.05), held_out([[]] * 10, 0.01), held_out([[]] * 10, 0.0)
    (5, 1, 0)
    """
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if not val_fraction or len(conversations) < 2:
        return 0
    return max(1, round(len(conversations) * val_fraction))


def build_sft(cfg: SFTConfig) -> Trainer:
    info = init_distributed(cfg.train.device)
    prepare_run_dir(cfg.train, info)  # before --dataset tool-use writes its data into out
    conversations = load_conversations(cfg)
    model, tok = load_for_training(cfg)
    pad, max_len = pad_id(tok), min(cfg.max_len, context_len(model))
    n_val = held_out(conversations, cfg.val_fraction)
    val_convs, train_convs = conversations[:n_val], conversations[n_val:]
    if not train_convs:
        raise ValueError("need at least 2 conversations (one is held out for validation)")

    def rows(convs):
        return pack(encode_conversations(tok, convs, max_len, cfg.overlong), max_len, pad, cfg.packing)

    train_rows, val_rows = rows(train_convs), rows(val_convs) if n_val else None
    loader = RowLoader(train_rows, cfg.train.batch_size, cfg.train.seed, info.rank, info.world_size)
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_all = sum(p.numel() for p in model.parameters())
    print(f"sft: {len(train_convs)} conversations in {len(train_rows['ids'])} rows of {max_len}; "
          f"training {n_train:,} of {n_all:,} parameters ({cfg.peft}{'+nf4' if cfg.quant == 'nf4' else ''})",
          file=sys.stderr)
    device = info.device

    def evaluate(m) -> dict:
        if val_rows is None:
            return {}
        total, n = 0.0, 0
        for b in split_rows(val_rows, 8, device):
            k = int((b["labels"] != IGNORE).sum())
            total += sft_loss(m, b)[0].item() * k
            n += k
        return {"val_loss": total / max(n, 1)}

    prompts = [c[: _last_assistant(c)] for c in val_convs[: cfg.n_samples]]
    trainer = Trainer(
        model, cfg.train, cfg.optim, sft_loss, lambda step: {k: v.to(device) for k, v in loader.batch(step).items()},
        run_config("sft", cfg, model), eval_fn=evaluate,
        sample_fn=(lambda m: sample_chats(m, tok, prompts)) if prompts and cfg.peft != "prompt" else None,
        tokens_per_step=cfg.train.batch_size * max_len, info=info, save_trainable_only=cfg.peft != "none",
    )
    trainer.tokenizer = tok
    return trainer


def _last_assistant(messages: list[dict]) -> int:
    return max(i for i, m in enumerate(messages) if m["role"] == "assistant")


def sample_chats(model, tok, prompts: list[list[dict]], max_tokens: int = 64) -> str:
    """Greedy replies to held-out conversations cut before their last assistant turn."""
    outs = greedy_replies(model, tok, prompts, max_tokens)
    return "\n".join(f"[{p[-1]['role']}] {p[-1]['content'][:120]!r}\n  → {o.text!r}" for p, o in zip(prompts, outs))


def main(cfg: SFTConfig) -> dict:
    """Train; write out/adapter (PEFT) or out/model (a full fine-tune, as an HF folder that
    transformers loads, tokenizer included)."""
    trainer = build_sft(cfg)
    summary = trainer.fit()
    out = Path(cfg.train.out)
    if trainer.info.is_main:
        if cfg.peft == "none":
            from ember.model.convert.hf import save_hf
            from ember.tokenizer.hf_export import save_hf_tokenizer

            summary["model"] = str(save_hf(trainer.plain, out / "model"))
            trainer.tokenizer.save(out / "model")
            save_hf_tokenizer(trainer.tokenizer, out / "model")
        else:
            summary["adapter"] = str(save_adapter_folder(trainer.plain, out / "adapter", cfg))
    return summary
