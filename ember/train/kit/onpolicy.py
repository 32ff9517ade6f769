"""What the on-policy RL recipes (GRPO, PPO) share: a batch size fixed by the rollout, seeded
sampling through the engine, and forwards that see a batch exactly as the loss will.

Why the last one: the importance ratio exp(logp − old_logp) must be exactly 1 on the first
update of a rollout. The loss runs on the loop's micro-batches under its autocast; old_logp
computed on the whole batch, or in another precision, would round differently.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable

import torch

from ember.train.kit.rollout import generate
from ember.train.loop import split_micro


def rollout_batch_size(cfg, n: int, formula: str, info) -> None:
    """Set cfg.train.batch_size to the n rows a rollout makes (saying so when it changes), and
    refuse a prompts_per_step that the processes cannot share evenly."""
    if cfg.train.batch_size != n:
        print(f"train.batch_size = {formula} = {n}", file=sys.stderr)
        cfg.train = dataclasses.replace(cfg.train, batch_size=n)
    if cfg.prompts_per_step % info.world_size:
        raise ValueError(
            f"prompts_per_step {cfg.prompts_per_step} is not divisible by {info.world_size} processes"
        )


def sample_completions(model, tok, prompts: list[list[int]], cfg, seed: int) -> list:
    """One sampled completion per prompt (cfg's temperature, top_k, max_new_tokens), prompt i
    seeded with seed + i, so a rollout is a pure function of its seed.

    >>> outs = sample_completions(model, tok, [ids] * 8, cfg, seed=4096)  # doctest: +SKIP
    """
    from ember.infer.sampling import SamplingParams

    params = [
        SamplingParams(
            temperature=cfg.temperature,
            top_k=cfg.top_k,
            max_tokens=cfg.max_new_tokens,
            seed=seed + i,
        )
        for i in range(len(prompts))
    ]
    return generate(model, tok, prompts, params)


@torch.no_grad()
def rollout_forward(trainer, fn: Callable[[dict], object], batch: dict) -> list:
    """fn over the batch's micro-batches, under the trainer's autocast and without gradients:
    the split and precision the loss will see, one result per micro-batch.

    >>> old_logp = torch.cat(rollout_forward(trainer, logprobs, batch))  # doctest: +SKIP
    """
    with trainer.autocast():
        return [fn(mb) for mb in split_micro(batch, trainer.micro)]
