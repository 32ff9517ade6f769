"""AdamW with decoupled weight decay on matrices only, and the learning-rate schedule.

The schedule is a pure function of the step, so a resumed run needs no scheduler state:
`lr_at(step)` is recomputed from the config (and the config is stored in every checkpoint).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn


@dataclass
class OptimConfig:
    """AdamW + warmup + decay. Defaults suit the small models trained on a laptop."""

    lr: float = 3e-3
    """peak learning rate, reached after warmup"""
    min_lr_ratio: float = 0.1
    """the decay ends at lr * min_lr_ratio"""
    warmup_steps: int = 50
    """steps of linear warmup from lr / warmup_steps to lr"""
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    """decay after warmup"""
    weight_decay: float = 0.1
    """decoupled weight decay (Loshchilov & Hutter 2019), on matrices only"""
    beta1: float = 0.9
    """AdamW's first-moment decay"""
    beta2: float = 0.95
    """AdamW's second-moment decay"""
    eps: float = 1e-8
    """AdamW's denominator epsilon"""
    grad_clip: float = 1.0
    """max global gradient norm; 0 disables clipping"""

    def __post_init__(self):
        for name in ("lr", "eps"):
            if not getattr(self, name) > 0:
                raise ValueError(f"optim.{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("min_lr_ratio", "beta1", "beta2"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"optim.{name} must be in [0, 1], got {getattr(self, name)!r}")
        if self.weight_decay < 0 or self.grad_clip < 0 or self.warmup_steps < 0:
            raise ValueError("optim.weight_decay, grad_clip and warmup_steps must be >= 0")
        if self.schedule not in ("cosine", "linear", "constant"):
            raise ValueError(f"optim.schedule must be cosine, linear or constant, got {self.schedule!r}")


def lr_at(step: int, total_steps: int, cfg: OptimConfig) -> float:
    """Linear warmup over `warmup_steps`, then cosine/linear decay to lr·min_lr_ratio.

    >>> lr_at(0, 100, OptimConfig(lr=1.0, warmup_steps=10))
    0.1
    """
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant" or total_steps <= cfg.warmup_steps:
        return cfg.lr
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
    if cfg.schedule == "cosine":
        frac = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        frac = 1.0 - progress
    return cfg.lr * (cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * frac)


def warn_long_warmup(cfg: OptimConfig, total_steps: int) -> str | None:
    """One stderr warning (also returned) when warmup lasts the whole run: the learning rate
    then never reaches optim.lr and never decays, which a loss curve alone does not show.

    >>> "peaks at 0.4" in warn_long_warmup(OptimConfig(lr=1.0, warmup_steps=50), 20)
    True
    """
    if total_steps < 1 or cfg.warmup_steps < total_steps:
        return None
    peak = lr_at(total_steps - 1, total_steps, cfg)
    msg = (
        f"warning: optim.warmup_steps {cfg.warmup_steps} >= the run's {total_steps} steps: the whole run is "
        f"warmup, the learning rate peaks at {peak:.4g} (optim.lr {cfg.lr:.4g}) on the last step and never "
        f"decays; pass --optim.warmup_steps {max(0, total_steps // 10)} or more --train.steps"
    )
    print(msg, file=sys.stderr)
    return msg


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: decayed (2-D weights of Linear layers) and not decayed (norms, biases,
    embeddings — decaying them shrinks scales and rare tokens' vectors for no benefit).
    Tied weights appear once (named_parameters deduplicates)."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 and id(p) not in embeddings else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters (frozen ones — e.g. a LoRA base — are left out).

    >>> opt = build_optimizer(nn.Linear(2, 2), OptimConfig())
    """
    groups = [g for g in param_groups(model, cfg.weight_decay) if g["params"]]
    if not groups:
        raise ValueError("the model has no trainable parameters")
    # foreach=False: the single-tensor kernel is the one whose arithmetic order is fixed,
    # which the bit-exact resume test relies on across torch builds.
    return torch.optim.AdamW(
        groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, foreach=False
    )


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
