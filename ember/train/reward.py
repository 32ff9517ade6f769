"""`ember reward`: a Bradley-Terry reward model on preference pairs, on the one loop.

The model is the chat model's body (LoRA adapters by default) plus a scalar head read at
the last real token (ember.model.heads.RewardModel). Loss: −log σ(r_chosen − r_rejected −
margin) (InstructGPT eq. 1). Reported: held-out pairwise accuracy before and after.
The trained model is saved as the body's adapter plus `head.safetensors`; the kit's
`load_reward_model` reads it back.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from ember.core.io import atomic_write_bytes, atomic_write_json
from ember.data.preference import encode_pairs
from ember.data.sft import RowLoader
from ember.model.heads import RewardModel
from ember.parallel import init_distributed
from ember.train import kit
from ember.train.kit.verifier import (
    fit_verifier_head,
    verifier_accuracy,
    verifier_loss,
    verifier_tensors,
)
from ember.train.loop import TrainConfig, Trainer
from ember.train.losses import IGNORE, bradley_terry_loss
from ember.train.optim import OptimConfig


@dataclass
class RewardConfig(kit.PreferenceConfig):
    """Train a reward model on preference pairs."""

    peft: Literal["lora", "none", "head"] = "lora"
    """lora: adapters on the body (the head always trains); none: every weight; head (verifiers
    only): the body stays frozen and the head is fitted on its states by L-BFGS."""
    head_l2: float = 1e-2
    """--peft head: L2 penalty on the head's weights (over standardized features)."""
    margin: float = 0.0
    """Llama 2's margin in the Bradley-Terry loss, the same for every pair."""
    objective: Literal["pairs", "outcome", "steps"] = "pairs"
    """pairs: Bradley-Terry on preference pairs; outcome (ORM) / steps (PRM): BCE on generated
    word-problem solutions, scored at the last token / at each step's last token."""
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        steps=32, batch_size=8, eval_every=16, sample_every=0, save_every=16, out="runs/reward",
        keep_checkpoints=1))
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=5e-4, warmup_steps=4, weight_decay=0.0))


# orm / prm: verifiers on generated solutions (ember.data.reasoning), half of them corrupted. The
# head is fitted on the frozen body's states (--peft head): 12 LoRA steps left the ORM at chance
# (held-out 0.53); bench/reasoning_model.py has the measured figures.
_VERIFIER = {"peft": "head", "n_train": 320, "n_eval": 64, "max_len": 160, "head_l2": 1e-2}
PRESETS: dict[str, dict[str, Any]] = {
    "orm": {"objective": "outcome", "train.out": "runs/orm", **_VERIFIER},
    "prm": {"objective": "steps", "train.out": "runs/prm", **_VERIFIER},
}


def pair_rows(tok, rows: list[dict], max_len: int) -> dict[str, torch.Tensor]:
    """Pairs → padded chosen_/rejected_ ids and labels, plus each reply's sequence length: it
    ends at the end-of-turn token, the last label's target (labels[t] is the token after
    ids[t], so the last labelled t plus 2)."""
    out = kit.pad_rows(encode_pairs(tok, rows, max_len), ("chosen_", "rejected_"), kit.pad_id(tok))
    T = out["chosen_ids"].shape[1]
    for side in ("chosen", "rejected"):
        labelled = out[f"{side}_labels"] != IGNORE
        out[f"{side}_len"] = T - 1 - labelled.flip(1).float().argmax(1) + 2
    return out


def scores(rm: RewardModel, b: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(r_chosen, r_rejected), both sides in one forward."""
    ids = torch.cat([b["chosen_ids"], b["rejected_ids"]])
    r = rm(ids, lengths=torch.cat([b["chosen_len"], b["rejected_len"]]))
    return r.chunk(2)


@torch.no_grad()
def pair_accuracy(rm: RewardModel, rows: dict[str, torch.Tensor], batch: int = 16) -> dict:
    correct, margins = [], []
    for b in kit.split_rows(rows, batch):
        rc, rr = scores(rm, b)
        correct.append(rc > rr)
        margins.append(rc - rr)
    return {"rm_accuracy": torch.cat(correct).float().mean().item(), "rm_margin": torch.cat(margins).mean().item()}


def build_reward(cfg: RewardConfig) -> Trainer:
    info = init_distributed(cfg.train.device)
    train_rows, eval_rows = kit.load_preference_rows(cfg) if cfg.objective == "pairs" else (None, None)
    body, tok = kit.load_for_training(cfg)
    max_len = min(cfg.max_len, body.config.max_seq_len)
    if cfg.objective == "pairs":
        train = pair_rows(tok, train_rows, max_len)
        held = pair_rows(tok, eval_rows, max_len) if eval_rows else None
    else:  # a verifier (ORM / PRM) on generated solutions
        train, held = verifier_tensors(tok, cfg, "train"), verifier_tensors(tok, cfg, "heldout") if cfg.n_eval else None
    rm = RewardModel(body)  # the head is new, always trains, and draws its init after the adapters'
    loader = RowLoader(train, cfg.train.batch_size, cfg.train.seed, info.rank, info.world_size)
    device = info.device

    def loss_fn(model, b):
        if cfg.objective != "pairs":
            return verifier_loss(model, b)
        rc, rr = scores(model, b)
        return bradley_terry_loss(rc, rr, cfg.margin)

    accuracy = pair_accuracy if cfg.objective == "pairs" else verifier_accuracy

    trainer = Trainer(rm, cfg.train, cfg.optim, loss_fn, lambda step: {k: v.to(device) for k, v in loader.batch(step).items()},
                      kit.run_config("reward", cfg, body),
                      eval_fn=(lambda m: accuracy(m, {k: v.to(device) for k, v in held.items()})) if held else None,
                      info=info, save_trainable_only=cfg.peft != "none")
    trainer.tokenizer = tok
    return trainer


def main(cfg: RewardConfig) -> dict:
    """Train; write out/adapter (LoRA), out/head.safetensors and out/summary.json."""
    from safetensors.torch import save

    if cfg.peft == "head":
        return fit_verifier_head(cfg, lambda body: kit.run_config("reward", cfg, body))
    trainer = build_reward(cfg)
    before = trainer.evaluate()
    print(f"before: {before}", file=sys.stderr)
    summary = trainer.fit()
    summary["before"] = before
    keys = ("rm_accuracy", "rm_margin", "rm_auroc", "solution_accuracy", "solution_auroc")
    summary["after"] = {k: summary[k] for k in keys if k in summary}
    out = Path(cfg.train.out)
    if trainer.info.is_main:
        rm = trainer.plain
        if cfg.peft == "lora":
            summary["adapter"] = str(kit.save_adapter_folder(rm.body, out / "adapter", cfg))
        head = {k: v.detach().cpu().contiguous() for k, v in rm.head.state_dict().items()}
        atomic_write_bytes(out / "head.safetensors", save(head))
        atomic_write_json(out / "summary.json", summary)
    return summary
