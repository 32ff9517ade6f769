"""Training: ONE loop (`Trainer`), the optimizer and schedule, checkpoints, metrics, and
recipes on top of them (pre-training here; SFT, preference and RL recipes beside it)."""

from ember.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from ember.train.losses import cross_entropy
from ember.train.optim import OptimConfig, build_optimizer, lr_at

__all__ = [
    "OptimConfig", "build_optimizer", "cross_entropy", "latest_checkpoint", "load_checkpoint",
    "lr_at", "save_checkpoint",
]
