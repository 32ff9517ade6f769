"""The config blocks every post-training recipe shares, declared once.

A recipe subclasses `PostTrainConfig` (or `PreferenceConfig`) and adds its own fields; it may
redeclare `train` / `optim` with its own default_factory, or narrow `peft`:

>>> from dataclasses import dataclass, field
>>> @dataclass
... class MyConfig(PostTrainConfig):
...     beta: float = 0.1
...     train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=5, out="runs/my"))
>>> MyConfig().train.steps, MyConfig().lora.rank
(5, 16)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ember.peft.lora import LoraConfig
from ember.train.loop import TrainConfig
from ember.train.optim import OptimConfig


@dataclass
class PostTrainConfig:
    """A pretrained model, the adapters that train on it, the loop and the optimizer."""

    model: str = "smollm2"
    """Known name ("smollm2"), GGUF file, or HF folder."""
    peft: Literal["lora", "prompt", "prefix", "none"] = "lora"
    """What trains: LoRA adapters, a soft prompt, a prefix, or every weight (none)."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    """LoRA rank, alpha, dropout and target layers (with --peft lora)."""
    quant: Literal["none", "nf4"] = "none"
    """nf4: QLoRA, LoRA adapters in float over a frozen 4-bit base."""
    n_virtual: int = 20
    """Virtual tokens of prompt / prefix tuning."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """The training loop: steps, batch size, evaluation, checkpoints, device."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """The optimizer and its schedule."""


@dataclass
class PreferenceConfig(PostTrainConfig):
    """PostTrainConfig plus preference rows {"prompt", "chosen", "rejected"} from a file or a
    built-in generated data set."""

    data: str | None = None
    """JSONL pairs {"prompt", "chosen", "rejected"} (KTO: also unpaired {"prompt", "completion", "label"})."""
    dataset: Literal["none", "style"] = "none"
    """Built-in generated pairs used when no --data is given; style: one short sentence ending with a full stop."""
    max_len: int = 160
    """Tokens per prompt + reply (the prompt is cut from the left)."""
    on_error: Literal["skip", "fail"] = "skip"
    """Malformed JSONL lines: skip them (counted) or stop."""
    n_train: int = 256
    """Generated training pairs (--dataset style)."""
    n_eval: int = 64
    """Held-out pairs; 0: no held-out evaluation."""
