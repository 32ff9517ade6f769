"""The kit's on-policy helpers: the batch size a rollout fixes, and forwards that see a batch
exactly as the loss does."""

from dataclasses import dataclass, field

import pytest
import torch

from ember.parallel import DistInfo
from ember.train.kit.onpolicy import rollout_batch_size, rollout_forward
from ember.train.loop import TrainConfig


@dataclass
class _Cfg:
    prompts_per_step: int = 4
    train: TrainConfig = field(default_factory=lambda: TrainConfig(batch_size=32))


def _info(world_size: int) -> DistInfo:
    return DistInfo(rank=0, local_rank=0, world_size=world_size, device=torch.device("cpu"), backend=None)


def test_rollout_fixes_the_batch_size_and_says_so(capsys):
    cfg = _Cfg()
    rollout_batch_size(cfg, 8, "prompts_per_step × group_size", _info(2))
    assert cfg.train.batch_size == 8
    assert "train.batch_size = prompts_per_step × group_size = 8" in capsys.readouterr().err
    rollout_batch_size(cfg, 8, "prompts_per_step × group_size", _info(1))
    assert capsys.readouterr().err == ""  # already right: nothing to say


def test_prompts_must_split_evenly_over_processes():
    with pytest.raises(ValueError, match="prompts_per_step 4 is not divisible by 3 processes"):
        rollout_batch_size(_Cfg(), 4, "prompts_per_step", _info(3))


def test_rollout_forward_runs_on_the_loss_micro_batches():
    class _Trainer:
        micro = 2

        def autocast(self):
            return torch.autocast("cpu", enabled=False)

    batch = {"x": torch.arange(5.0, requires_grad=True)}
    parts = rollout_forward(_Trainer(), lambda mb: mb["x"] * 2, batch)
    assert [p.tolist() for p in parts] == [[0.0, 2.0], [4.0, 6.0], [8.0]]
    assert not any(p.requires_grad for p in parts)  # rollout quantities are constants
