"""`ember grpo`: GRPO with verifiable rewards on the one training loop (LoRA on SmolLM2).

A step (`batches(step)`): draw `prompts_per_step` arithmetic questions (seeded by the step),
sample `group_size` answers to each from the current policy with the engine, score them
with plain Python reward functions, turn the rewards into group advantages (Shao et al.
2024, §4.1.2) and hand the loop one padded batch: prompt+completion ids, the completion
mask, the policy's log-probs at sampling time (`old_logp`) and, when beta > 0, the
reference's (the same model with its adapters disabled — no second copy). `grpo_loss` then
takes one optimizer step on it. Because the batch is used for exactly one step and
`old_logp` is computed by the same forward (same micro-batches, same autocast) that the
loss runs, the importance ratio is exactly 1 on every step: the clip only matters with
several updates per batch, which this recipe does not do (as TRL with num_iterations=1).

Rewards are `reward(prompt_row, completion_text) -> float`. One that raises or returns a
non-finite value scores 0 and is counted in the metric `reward_errors`; the run goes on.
The adapter init draws from the global RNG as the caller left it (no reseeding from
train.seed), so a caller that wants a repeatable run seeds torch first.

    >>> main(GRPOConfig(train=TrainConfig(steps=20, out="runs/grpo")))  # doctest: +SKIP
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from ember.core.io import atomic_write_json
from ember.data.arithmetic import exact_match_reward, format_reward, heldout_rows, step_rows
from ember.data.reasoning import problem_rows, think_format_reward
from ember.data.reasoning_tasks import MAX_DIFFICULTY
from ember.eval.rl_curve import rl_curve_report
from ember.parallel import init_distributed
from ember.peft import adapters_disabled
from ember.train.kit import (
    PostTrainConfig,
    batch_completions,
    greedy_replies,
    load_for_training,
    pad_id,
    read_metrics,
    run_config,
    save_adapter_folder,
    token_logprobs,
)
from ember.train.kit.onpolicy import rollout_batch_size, rollout_forward, sample_completions
from ember.train.loop import TrainConfig, Trainer
from ember.train.metrics import plot_curves
from ember.train.optim import OptimConfig
from ember.train.rl import group_advantages, grpo_loss

Reward = Callable[[dict, str], float]

REWARDS: dict[str, Reward] = {"exact_match": exact_match_reward, "format": format_reward,
                              "think_format": think_format_reward}

# reasoning: the generated word problems (ember.data.reasoning_tasks) answered with a <think>
# trace, from the `ember sft --preset reasoning` adapter, on three shapes in turn: one +/- event,
# one event of + - x2 x3, two events (levels 3-5; one level alone teaches its shape to every
# problem: ten steps on two-event problems made the policy write two equations whatever the
# question), groups without reward spread redrawn once, lr 1e-4. On the shared 2-core CPU under
# load a step took 2-4 min; bench/reasoning_model.py has what it did.
PRESETS = {
    "reasoning": {
        "task": "reasoning", "difficulty": [3, 4, 5], "adapter": "runs/sft-reasoning/adapter",
        "rewards": ["exact_match", "think_format"], "group_size": 4, "prompts_per_step": 2,
        "dynamic_sampling": 1, "max_new_tokens": 56, "n_eval": 15, "train.steps": 40, "train.eval_every": 0,
        "train.save_every": 10, "train.out": "runs/grpo-reasoning", "optim.lr": 1e-4,
    },
}

# the batch's per-step figures, stored on every row so the mean over micro-batches is exact
STEP_METRICS = ("reward", "accuracy", "reward_std", "reward_errors", "zero_std_groups", "completion_len",
                "step_tokens", "drawn_groups")
ROUND = 1_000_003  # a dynamic-sampling round's prompts come from split step + round·ROUND


def score(rewards: list[Reward], row: dict, completion: str) -> tuple[float, int]:
    """(sum of the rewards, number of them that raised or gave NaN/inf — each scored 0).

    >>> score([exact_match_reward, lambda row, text: 1 / 0], {"answer": 4}, "4")
    (1.0, 1)
    """
    total, errors = 0.0, 0
    for fn in rewards:
        try:
            r = float(fn(row, completion))
        except Exception:  # a user's reward must never end the run
            r = math.nan
        if math.isfinite(r):
            total += r
        else:
            errors += 1
    return total, errors


@dataclass
class GRPOConfig(PostTrainConfig):
    """GRPO on arithmetic questions with verifiable rewards, LoRA adapters on the policy.
    train.batch_size is derived: prompts_per_step × group_size completions per step."""

    peft: Literal["lora"] = "lora"
    """LoRA only: the reference policy is the model with its adapters disabled."""
    task: Literal["arithmetic", "reasoning"] = "arithmetic"
    """The prompts: "What is 23 + 58? Answer with just the number." (arithmetic) or generated
    multi-step word problems (reasoning, ember.data.reasoning_tasks)."""
    difficulty: int | list[int] = 3
    """The level of the generated word problems, 1..5 (task reasoning; ember.data.reasoning_tasks.LEVELS);
    a list such as [2,3,4] mixes levels: prompt i of step s has level list[(s·prompts_per_step + i) mod len]."""
    adapter: str | None = None
    """A LoRA adapter folder (same rank) the policy starts from, e.g. an `ember sft` run's."""
    ops: list[str] = field(default_factory=lambda: ["+", "-"])
    """Operators the questions use, a subset of + - *."""
    digits: int = 2
    """Operand digits (1..6); SmolLM2-135M greedy: 12% right at 2 digits, 0% at 3."""
    rewards: list[str] = field(default_factory=lambda: ["exact_match", "format"])
    """Reward functions, summed: exact_match (1 for the right number), format (0.2 for just a
    number), think_format (0.2 for a closed <think> trace then a stated answer)."""
    group_size: int = 8
    """Completions sampled per prompt (G); advantages compare the answers within a group."""
    prompts_per_step: int = 4
    """Questions per step; each gets group_size completions."""
    max_new_tokens: int = 16
    """Longest completion."""
    temperature: float = 1.0
    """Sampling temperature of the rollouts."""
    top_k: int = 0
    """Sample from the k likeliest tokens only; 0: all."""
    beta: float = 0.0
    """Weight of the k3 KL to the reference (adapters disabled); DAPO and Dr. GRPO use 0."""
    clip_low: float = 0.2
    """The ratio is clipped below at 1 - clip_low."""
    clip_high: float = 0.28
    """The ratio is clipped above at 1 + clip_high (DAPO's clip-higher when > clip_low)."""
    token_norm: Literal["dapo", "sequence"] = "dapo"
    """dapo: average over every token of the batch; sequence: over each answer, then answers."""
    scale_advantages: bool = True
    """Divide advantages by the group's std; False is Dr. GRPO."""
    dynamic_sampling: int = 0
    """Extra rounds of prompts drawn to replace groups whose rewards all agree (they teach nothing:
    DAPO's dynamic sampling); a step still short after them keeps zero-spread groups. 0: off."""
    n_eval: int = 50
    """Held-out questions, disjoint from training ones, answered greedily (split evenly over the levels)."""
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        steps=30, batch_size=32, eval_every=10, sample_every=0, save_every=0, log_every=1, out="runs/grpo",
        keep_checkpoints=1))
    """The training loop; batch_size is set to prompts_per_step × group_size."""
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=2e-4, warmup_steps=0, weight_decay=0.0))
    """The optimizer and its schedule."""

    def __post_init__(self):
        if self.group_size < 2:
            raise ValueError(
                f"group_size must be >= 2 (advantages compare answers within a group), got {self.group_size}"
            )
        levels = self.levels
        bad = [d for d in levels if isinstance(d, bool) or not isinstance(d, int) or not 1 <= d <= MAX_DIFFICULTY]
        if bad or not levels:
            raise ValueError(f"difficulty must be in 1..{MAX_DIFFICULTY} (the generated levels), got "
                             f"{bad[0] if bad else self.difficulty!r}")
        if self.dynamic_sampling < 0:
            raise ValueError(f"dynamic_sampling must be >= 0, got {self.dynamic_sampling}")
        if not 1 <= self.digits <= 6:
            raise ValueError(f"digits must be in 1..6, got {self.digits}")
        for name in ("prompts_per_step", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.n_eval < 0 or self.temperature < 0:
            raise ValueError("n_eval and temperature must be >= 0")
        bad = [r for r in self.rewards if r not in REWARDS]
        if bad:
            raise ValueError(f"unknown reward {bad[0]!r}; valid: {', '.join(REWARDS)}")
        bad = [o for o in self.ops if o not in ("+", "-", "*")]
        if bad or not self.ops:
            raise ValueError(f"ops must be a non-empty subset of + - *, got {self.ops}")


    @property
    def levels(self) -> list[int]:
        """The difficulty levels trained on, as a list."""
        return list(self.difficulty) if isinstance(self.difficulty, (list, tuple)) else [self.difficulty]


def question(row: dict) -> list[dict]:
    """The chat prompt of an arithmetic row.

    >>> question({"question": "What is 1 + 1?"})
    [{'role': 'user', 'content': 'What is 1 + 1?'}]
    """
    return [{"role": "user", "content": row["question"]}]


def grpo_step_loss(cfg: GRPOConfig):
    def loss_fn(model, batch) -> tuple[torch.Tensor, dict]:
        logp = token_logprobs(model, batch["ids"], batch["mask"])
        loss, m = grpo_loss(logp, batch["old_logp"], batch["advantages"], batch["mask"], cfg.clip_low,
                            cfg.clip_high, batch.get("ref_logp"), cfg.beta, cfg.token_norm)
        m.update({k: batch[k].float().mean() for k in STEP_METRICS})
        return loss, m

    return loss_fn


def trim_heap() -> None:
    """Collect garbage and hand the C heap's free pages back to the system (glibc malloc_trim).

    A step's rollout caches and activations change shape with every completion length, and glibc
    keeps the freed arenas: without this, the resident size creeps up step after step."""
    gc.collect()
    name = ctypes.util.find_library("c")
    if name:
        libc = ctypes.CDLL(name)
        if hasattr(libc, "malloc_trim"):
            libc.malloc_trim(0)


def reasoning_rows(cfg: GRPOConfig, n: int, split: int | str, offset: int = 0) -> list[dict]:
    """n word problems of `split` (a step, or "heldout"), row i at level levels[(offset + i) mod len].

    >>> cfg = GRPOConfig(task="reasoning", difficulty=[1, 3])
    >>> [r["difficulty"] for r in reasoning_rows(cfg, 5, 0, offset=1)]
    [3, 1, 3, 1, 3]
    """
    levels = cfg.levels
    order = [levels[(offset + i) % len(levels)] for i in range(n)]
    drawn = {d: iter(problem_rows(order.count(d), d, cfg.train.seed, split)) for d in set(order)}
    return [next(drawn[d]) for d in order]


def has_spread(fns: list[Reward], row: dict, outs) -> bool:
    """Whether a group's answers get different rewards (else its advantages are all 0)."""
    rewards = {score(fns, row, o.text)[0] for o in outs}
    return len(rewards) > 1


def scored_batch(cfg: GRPOConfig, fns: list[Reward], rows: list[dict], prompts, outs, pad: int) -> dict:
    """The sampled group answers as one padded batch (on the CPU), with their advantages and
    the step's figures; rows[i // group_size] is the question of completion i."""
    n = len(prompts)
    scored = [score(fns, rows[i // cfg.group_size], o.text) for i, o in enumerate(outs)]
    rewards = torch.tensor([s for s, _ in scored])  # (B·G,)
    hits = [score([exact_match_reward], rows[i // cfg.group_size], o.text)[0] for i, o in enumerate(outs)]
    groups = rewards.view(-1, cfg.group_size)
    ids, mask = batch_completions(prompts, [o.token_ids for o in outs], pad)
    step = {
        "reward_std": rewards.std().item() if n > 1 else 0.0,
        "reward_errors": float(sum(e for _, e in scored)),
        "zero_std_groups": (groups.max(-1).values == groups.min(-1).values).float().mean().item(),
        # every token the step's forwards touch (the compute axis of the RL curve)
        "step_tokens": float(sum(len(p) + len(o.token_ids) for p, o in zip(prompts, outs))),
    }
    return {"ids": ids, "mask": mask, "reward": rewards, "accuracy": torch.tensor(hits),
            "advantages": group_advantages(rewards, cfg.group_size, scale=cfg.scale_advantages),
            "completion_len": mask.sum(-1).float(), **{k: torch.full((n,), v) for k, v in step.items()}}


def build_grpo(cfg: GRPOConfig, reward_fns: list[Reward] | None = None) -> Trainer:
    info = init_distributed(cfg.train.device)
    rollout_batch_size(cfg, cfg.prompts_per_step * cfg.group_size, "prompts_per_step × group_size", info)
    fns = reward_fns if reward_fns is not None else [REWARDS[name] for name in cfg.rewards]
    model, tok = load_for_training(cfg, seed=False)  # see the module docstring
    if cfg.adapter:
        from ember.peft import load_adapter

        model = load_adapter(model, cfg.adapter)
    if tok.chat_template is None:
        raise ValueError(f"model {cfg.model!r} has no chat template; GRPO prompts are chat turns")
    pad = pad_id(tok)
    if cfg.task == "reasoning":
        eval_rows = reasoning_rows(cfg, cfg.n_eval, "heldout")
    else:
        eval_rows = heldout_rows(cfg.n_eval, cfg.ops, cfg.digits, cfg.train.seed)
    exclude = {r["expression"] for r in eval_rows}
    run: dict = {}  # the Trainer, once built: its micro-batch size and autocast

    def logprobs(mb) -> torch.Tensor:
        return token_logprobs(model, mb["ids"], mb["mask"])

    def draw(step: int, rnd: int, n: int) -> list[dict]:
        if cfg.task == "reasoning":
            rows = reasoning_rows(cfg, n * info.world_size, step + rnd * ROUND, step * cfg.prompts_per_step)
        else:
            rows = step_rows(n * info.world_size, cfg.ops, cfg.digits, cfg.train.seed, step + rnd * ROUND, exclude)
        return rows[info.rank :: info.world_size]

    def rollout(step: int) -> tuple[list[dict], list, list, int]:
        """(rows, prompts, outs, groups drawn): round 0's groups, those without reward spread
        replaced by later rounds' groups that have it, as far as cfg.dynamic_sampling allows."""
        need = cfg.prompts_per_step // info.world_size
        kept: list[tuple] = []
        flat: list[tuple] = []
        drawn = 0
        for rnd in range(1 + cfg.dynamic_sampling):
            rows = draw(step, rnd, need if rnd == 0 else need - len(kept))
            prompts = [tok.render_chat(question(r), add_generation_prompt=True)[0] for r in rows]
            prompts = [p for p in prompts for _ in range(cfg.group_size)]  # (B·G) ids
            seed = (cfg.train.seed * 1_000_003 + step + rnd * ROUND) * 4096
            outs = sample_completions(model, tok, prompts, cfg, seed)
            drawn += len(rows)
            if not cfg.dynamic_sampling:
                return rows, prompts, outs, drawn
            for i, row in enumerate(rows):
                group = (row, prompts[i * cfg.group_size], outs[i * cfg.group_size:(i + 1) * cfg.group_size])
                (kept if has_spread(fns, row, group[2]) else flat).append(group)
            if len(kept) >= need:
                break
        groups = (kept + flat)[:need]
        return ([g[0] for g in groups], [g[1] for g in groups for _ in range(cfg.group_size)],
                [o for g in groups for o in g[2]], drawn)

    def batches(step: int) -> dict:
        trim_heap()  # the previous step's activations and caches are garbage by now
        rows, prompts, outs, drawn = rollout(step)
        batch = scored_batch(cfg, fns, rows, prompts, outs, pad)
        batch["drawn_groups"] = torch.full((len(prompts),), float(drawn))
        batch = {k: v.to(info.device) for k, v in batch.items()}
        batch["old_logp"] = torch.cat(rollout_forward(run["trainer"], logprobs, batch))
        if cfg.beta > 0:
            with adapters_disabled(model):
                batch["ref_logp"] = torch.cat(rollout_forward(run["trainer"], logprobs, batch))
        return batch

    def evaluate(m) -> dict:
        if not eval_rows:
            return {}
        outs = greedy_replies(m, tok, [question(r) for r in eval_rows], cfg.max_new_tokens)
        hits = [exact_match_reward(r, o.text) for r, o in zip(eval_rows, outs)]
        return {"eval_accuracy": sum(hits) / len(hits)}

    trainer = Trainer(model, cfg.train, cfg.optim, grpo_step_loss(cfg), batches, run_config("grpo", cfg, model),
                      eval_fn=evaluate, info=info, save_trainable_only=True)
    run["trainer"] = trainer
    trainer.tokenizer, trainer.eval_rows = tok, eval_rows
    return trainer


def plot_reward_curve(records: list[dict], path: str | Path) -> Path | None:
    """Mean reward per step (and held-out accuracy where evaluated) → PNG."""
    series = [("reward", "mean reward (train samples)"), ("accuracy", "accuracy (train samples)"),
              ("eval_accuracy", "held-out accuracy (greedy)")]
    return plot_curves(records, path, series, "reward / accuracy", "GRPO")


def main(cfg: GRPOConfig, reward_fns: list[Reward] | None = None) -> dict:
    """Train; write out/adapter, out/reward_curve.png, out/rl_curve.png (8 steps or more) and
    out/summary.json with the held-out accuracy before and after."""
    trainer = build_grpo(cfg, reward_fns)
    before = trainer.evaluate().get("eval_accuracy")
    summary = trainer.fit()
    out = Path(cfg.train.out)
    if trainer.info.is_main:
        records = read_metrics(out)
        summary["eval_accuracy_before"] = before
        summary["eval_accuracy_after"] = summary.get("eval_accuracy")
        summary["reward_first"] = records[0].get("reward") if records else None
        summary["reward_last"] = records[-1].get("reward") if records else None
        plot = plot_reward_curve([{"step": 0, "eval_accuracy": before}, *records], out / "reward_curve.png")
        summary["reward_curve"] = str(plot) if plot else None
        summary["rl_curve"] = rl_curve_report(records, out / "rl_curve.png", title="GRPO: ScaleRL sigmoid fit")
        summary["adapter"] = str(save_adapter_folder(trainer.plain, out / "adapter", cfg))
        atomic_write_json(out / "summary.json", summary)
    return summary
