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

    >>> main(GRPOConfig(train=TrainConfig(steps=20, out="runs/grpo")))  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F

from ember.core.io import atomic_write_json
from ember.data.tool_use import safe_eval
from ember.parallel import init_distributed
from ember.train.loop import TrainConfig, Trainer, split_micro
from ember.train.metrics import plot_curves
from ember.train.optim import OptimConfig
from ember.train.rl import group_advantages, grpo_loss
from ember.train.sft import LoraArgs, model_config_dict, model_ctx

Reward = Callable[[dict, str], float]

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


# ---- rewards ------------------------------------------------------------------------------
def exact_match_reward(row: dict, completion: str) -> float:
    """1.0 when the last number in the completion equals row["answer"], else 0.0.

    >>> exact_match_reward({"answer": 81}, "23 + 58 = 81.")
    1.0
    """
    numbers = _NUMBER.findall(completion)
    if not numbers:
        return 0.0
    return 1.0 if float(numbers[-1].replace(",", "")) == float(row["answer"]) else 0.0


def format_reward(row: dict, completion: str, max_chars: int = 12) -> float:
    """0.2 when the completion is just a number (the prompt asks for exactly that), else 0.
    Deviation: the text does not show whether the answer ended with EOS or was cut at
    max_new_tokens; a cut answer is long, so max_chars stands in for "ends properly".

    >>> format_reward({"answer": 81}, " 81"), format_reward({"answer": 81}, "It is 81")
    (0.2, 0.0)
    """
    text = completion.strip()
    return 0.2 if len(text) <= max_chars and re.fullmatch(r"-?\d+", text) else 0.0


REWARDS: dict[str, Reward] = {"exact_match": exact_match_reward, "format": format_reward}


def score(rewards: list[Reward], row: dict, completion: str) -> tuple[float, int]:
    """(sum of the rewards, number of them that raised or gave NaN/inf — each scored 0)."""
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


# ---- config -------------------------------------------------------------------------------
@dataclass
class GRPOConfig:
    """GRPO on arithmetic questions with verifiable rewards, LoRA adapters on the policy.
    train.batch_size is derived: prompts_per_step × group_size completions per step."""

    model: str = "smollm2"  # known name, GGUF, HF folder (needs a chat template)
    task: Literal["arithmetic"] = "arithmetic"  # "What is 23 + 58? Answer with just the number."
    ops: list[str] = field(default_factory=lambda: ["+", "-"])
    digits: int = 2  # operand digits; SmolLM2-135M greedy: 12% at 2 digits, 0% at 3
    rewards: list[str] = field(default_factory=lambda: ["exact_match", "format"])
    group_size: int = 8  # completions per prompt (G)
    prompts_per_step: int = 4
    max_new_tokens: int = 16
    temperature: float = 1.0
    top_k: int = 0
    beta: float = 0.0  # k3 KL to the reference (adapters disabled); DAPO/Dr. GRPO use 0
    clip_low: float = 0.2
    clip_high: float = 0.28  # DAPO clip-higher
    token_norm: Literal["dapo", "sequence"] = "dapo"
    scale_advantages: bool = True  # False: Dr. GRPO (no division by the group std)
    lora: LoraArgs = field(default_factory=LoraArgs)
    n_eval: int = 50  # held-out prompts, disjoint from training ones, scored greedily
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        steps=30, batch_size=32, eval_every=10, sample_every=0, save_every=0, log_every=1,
        out="runs/grpo", keep_checkpoints=1))  # fmt: skip
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(lr=2e-4, warmup_steps=0, weight_decay=0.0)
    )

    def __post_init__(self):
        if self.group_size < 2:
            raise ValueError(
                f"group_size must be >= 2 (advantages compare answers within a group), got {self.group_size}"
            )
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


# ---- prompts ------------------------------------------------------------------------------
def arithmetic_row(rng: random.Random, ops: list[str], digits: int = 2) -> dict:
    """One question on two `digits`-digit operands, answered without tools.

    >>> arithmetic_row(random.Random(0), ["+"], digits=3)["question"]
    'What is 876 + 530? Answer with just the number.'
    """
    op = rng.choice(ops)
    lo, hi = (1 if digits == 1 else 10 ** (digits - 1)), 10**digits - 1
    a, b = rng.randint(lo, hi), rng.randint(lo, hi)
    expression = f"{a} {op} {b}"
    question = f"What is {expression}? Answer with just the number."
    return {"question": question, "expression": expression, "answer": safe_eval(expression)}


def heldout_rows(cfg: GRPOConfig) -> list[dict]:
    rng = random.Random(f"grpo-eval-{cfg.train.seed}")
    rows, seen = [], set()
    while len(rows) < cfg.n_eval:
        row = arithmetic_row(rng, cfg.ops, cfg.digits)
        if row["expression"] not in seen:
            seen.add(row["expression"])
            rows.append(row)
    return rows


def step_rows(cfg: GRPOConfig, step: int, exclude: set[str]) -> list[dict]:
    """The step's prompts (a pure function of seed and step), never a held-out question."""
    rng = random.Random(f"grpo-train-{cfg.train.seed}-{step}")
    rows = []
    while len(rows) < cfg.prompts_per_step:
        row = arithmetic_row(rng, cfg.ops, cfg.digits)
        if row["expression"] not in exclude:
            rows.append(row)
    return rows


def prompt_ids(tok, row: dict) -> list[int]:
    return tok.render_chat(
        [{"role": "user", "content": row["question"]}], add_generation_prompt=True
    )[0]


# ---- log-probs ----------------------------------------------------------------------------
def completion_logprobs(model, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log π(ids[t+1] | ids[≤t]) at every position t where mask[t] = 1, else 0; (N, T).
    mask[t] marks the positions that *predict* a completion token; the head runs only there."""
    logits = model(ids, logits_index=mask)  # (K, V)
    targets = ids[:, 1:][mask[:, :-1]]  # (K,): the token each selected position predicts
    out = torch.zeros(ids.shape, dtype=torch.float32, device=ids.device)
    out[mask] = -F.cross_entropy(logits.float(), targets, reduction="none")
    return out


def grpo_step_loss(cfg: GRPOConfig):
    def loss_fn(model, batch) -> tuple[torch.Tensor, dict]:
        logp = completion_logprobs(model, batch["ids"], batch["mask"])
        loss, m = grpo_loss(
            logp, batch["old_logp"], batch["advantages"], batch["mask"], cfg.clip_low, cfg.clip_high,
            batch.get("ref_logp"), cfg.beta, cfg.token_norm,
        )  # fmt: skip
        # per-step constants are stored on every row, so the mean over micro-batches is exact
        for k in ("reward", "accuracy", "reward_std", "reward_errors", "zero_std_groups", "completion_len",
                  "step_tokens"):
            m[k] = batch[k].float().mean()
        return loss, m

    return loss_fn


# ---- the recipe -----------------------------------------------------------------------------
def generate(model, tok, ids: list[list[int]], params) -> list:
    from ember.infer.engine import Engine

    was_training = model.training
    engine = Engine(
        model,
        tok,
        max_batch_size=len(ids),
        max_seq_len=min(model_ctx(model), max(map(len, ids)) + params[0].max_tokens),
    )
    try:
        return engine.generate(ids, params)
    finally:
        model.train(was_training)  # the engine switches the model to eval mode


def build_grpo(cfg: GRPOConfig, reward_fns: list[Reward] | None = None) -> Trainer:
    import ember
    from ember.infer.sampling import SamplingParams
    from ember.peft import LoraConfig, adapters_disabled, apply_lora

    info = init_distributed(cfg.train.device)
    n = cfg.prompts_per_step * cfg.group_size
    if cfg.train.batch_size != n:
        print(f"grpo: train.batch_size = prompts_per_step × group_size = {n}", file=sys.stderr)
        cfg.train = dataclasses.replace(cfg.train, batch_size=n)
    if cfg.prompts_per_step % info.world_size:
        raise ValueError(
            f"prompts_per_step {cfg.prompts_per_step} is not divisible by {info.world_size} processes"
        )
    fns = reward_fns if reward_fns is not None else [REWARDS[name] for name in cfg.rewards]
    model, tok = ember.load(cfg.model)
    if tok.chat_template is None:
        raise ValueError(f"model {cfg.model!r} has no chat template; GRPO prompts are chat turns")
    model = apply_lora(model, LoraConfig(**dataclasses.asdict(cfg.lora)))
    pad = tok.bos_token_id if tok.bos_token_id is not None else min(tok.eos_token_ids, default=0)
    eval_rows = heldout_rows(cfg)
    exclude = {r["expression"] for r in eval_rows}
    run: dict = {}  # the Trainer, once built: its micro-batch size and autocast

    @torch.no_grad()
    def per_micro(fn, batch) -> torch.Tensor:
        # the loss's own micro-batches and autocast, so old_logp is bit-identical to its logp
        with run["trainer"].autocast():
            return torch.cat([fn(mb) for mb in split_micro(batch, run["trainer"].micro)])

    def batches(step: int) -> dict:
        rows = step_rows(cfg, step, exclude)[info.rank :: info.world_size]
        prompts = [prompt_ids(tok, r) for r in rows for _ in range(cfg.group_size)]  # (B·G) ids
        seed = (cfg.train.seed * 1_000_003 + step) * 4096
        params = [SamplingParams(temperature=cfg.temperature, top_k=cfg.top_k, max_tokens=cfg.max_new_tokens,
                                 seed=seed + i) for i in range(len(prompts))]  # fmt: skip
        outs = generate(model, tok, prompts, params)
        scored = [score(fns, rows[i // cfg.group_size], o.text) for i, o in enumerate(outs)]
        rewards = torch.tensor([s for s, _ in scored])  # (B·G,)
        hits = torch.tensor([score([exact_match_reward], rows[i // cfg.group_size], o.text)[0] for i, o in enumerate(outs)])
        adv = group_advantages(rewards, cfg.group_size, scale=cfg.scale_advantages)
        T = max(len(p) + len(o.token_ids) for p, o in zip(prompts, outs))
        ids = torch.full((len(prompts), T), pad, dtype=torch.long)
        mask = torch.zeros(
            (len(prompts), T), dtype=torch.bool
        )  # position t predicts a completion token
        for i, (p, o) in enumerate(zip(prompts, outs)):
            ids[i, : len(p) + len(o.token_ids)] = torch.tensor(p + o.token_ids)
            mask[i, len(p) - 1 : len(p) + len(o.token_ids) - 1] = True
        N, dev = len(prompts), info.device
        groups = rewards.view(-1, cfg.group_size)
        batch = {
            "ids": ids.to(dev), "mask": mask.to(dev), "advantages": adv.to(dev), "reward": rewards.to(dev),
            "reward_std": torch.full((N,), rewards.std().item() if N > 1 else 0.0, device=dev),
            "reward_errors": torch.full((N,), float(sum(e for _, e in scored)), device=dev),
            "zero_std_groups": torch.full((N,), (groups.max(-1).values == groups.min(-1).values).float().mean().item(), device=dev),
            "completion_len": mask.sum(-1).float().to(dev), "accuracy": hits.to(dev),
            # every token the step's forwards touch (the compute axis of the RL curve)
            "step_tokens": torch.full((N,), float(sum(len(p) + len(o.token_ids) for p, o in zip(prompts, outs))), device=dev),
        }  # fmt: skip
        batch["old_logp"] = per_micro(
            lambda mb: completion_logprobs(model, mb["ids"], mb["mask"]), batch
        )
        if cfg.beta > 0:
            with adapters_disabled(model):
                batch["ref_logp"] = per_micro(
                    lambda mb: completion_logprobs(model, mb["ids"], mb["mask"]), batch
                )
        return batch

    def evaluate(m) -> dict:
        if not eval_rows:
            return {}
        params = SamplingParams(temperature=0, max_tokens=cfg.max_new_tokens)
        outs = generate(m, tok, [prompt_ids(tok, r) for r in eval_rows], [params] * len(eval_rows))
        hits = [score([exact_match_reward], r, o.text)[0] for r, o in zip(eval_rows, outs)]
        return {"eval_accuracy": sum(hits) / len(hits)}

    run_config = {"grpo": dataclasses.asdict(cfg), "model": model_config_dict(model)}
    trainer = Trainer(model, cfg.train, cfg.optim, grpo_step_loss(cfg), batches, run_config, eval_fn=evaluate,
                      info=info, save_trainable_only=True)  # fmt: skip
    run["trainer"] = trainer
    trainer.tokenizer, trainer.eval_rows = tok, eval_rows
    return trainer


def plot_reward_curve(records: list[dict], path: str | Path) -> Path | None:
    """Mean reward per step (and held-out accuracy where evaluated) → PNG."""
    series = [("reward", "mean reward (train samples)"), ("accuracy", "accuracy (train samples)"),
              ("eval_accuracy", "held-out accuracy (greedy)")]
    return plot_curves(records, path, series, "reward / accuracy", "GRPO")


def rl_curve_report(records: list[dict], path: str | Path, frac: float = 0.5, window: int = 5,
                    key: str = "reward") -> dict | None:  # fmt: skip
    """The ScaleRL check on this run: fit R(C) to the first `frac` of the steps' mean `key`
    ("reward", the objective, or "accuracy", exact match alone) against cumulative tokens
    (compute ∝ tokens for a fixed model), extrapolate to the last step, and compare with the
    value reached (both as means over the last `window` steps: one step's mean over a few
    dozen samples is noisy). The fit assumes values in [0, 1]. Writes the points and both
    curves to a PNG. None with fewer than 8 steps (too few to fit 4 parameters)."""
    import numpy as np

    from ember.eval.rl_curve import fit_rl_curve

    rows = [r for r in records if key in r and "step_tokens" in r]
    if len(rows) < 8:
        return None
    compute = np.cumsum([r["step_tokens"] for r in rows])
    acc = np.array([r[key] for r in rows])
    n = max(int(round(frac * len(rows))), 4)
    fit = fit_rl_curve(compute[:n], acc[:n])
    w = min(window, len(rows) - n)
    predicted = float(np.mean(fit.predict(compute[-w:])))
    reached = float(np.mean(acc[-w:]))
    report = {"key": key, "fit": fit.to_dict(), "n_fit": n, "n_steps": len(rows), "predicted_final": predicted,
              "reached_final": reached, "abs_error": abs(predicted - reached)}  # fmt: skip
    full = fit_rl_curve(compute, acc)  # on every step: the run's own A and B
    report["fit_all"] = full.to_dict()
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return report
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.scatter(compute[:n], acc[:n], s=14, color="C0", label=f"steps fitted ({n})")
    ax.scatter(compute[n:], acc[n:], s=14, color="C0", alpha=0.35, label="later steps (held out)")
    grid = np.geomspace(compute[0], compute[-1], 200)
    ax.plot(grid, fit.predict(grid), color="C1", label=f"fit on the first {n}: A={fit.A:.2f}, B={fit.B:.2f}")
    ax.plot(grid, full.predict(grid), color="C2", ls="--", label=f"fit on all: A={full.A:.2f}, B={full.B:.2f}")
    ax.set_xscale("log")
    ax.set(xlabel="compute (cumulative tokens)", ylabel=f"mean {key} (training samples)", title="GRPO: ScaleRL sigmoid fit")
    ax.legend(fontsize=8)
    fig.tight_layout()
    import io

    from ember.core.io import atomic_write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    report["plot"] = str(path)
    return report


def main(cfg: GRPOConfig, reward_fns: list[Reward] | None = None) -> dict:
    """Train; write out/adapter, out/reward_curve.png and out/summary.json with the held-out
    accuracy before and after."""
    from ember.peft import LoraConfig, save_adapter

    trainer = build_grpo(cfg, reward_fns)
    before = trainer.evaluate().get("eval_accuracy")
    summary = trainer.fit()
    out = Path(cfg.train.out)
    if trainer.info.is_main:
        lines = (out / "metrics.jsonl").read_text().splitlines()
        records = [json.loads(line) for line in lines if line.strip()]
        summary["eval_accuracy_before"] = before
        summary["eval_accuracy_after"] = summary.get("eval_accuracy")
        summary["reward_first"] = records[0].get("reward") if records else None
        summary["reward_last"] = records[-1].get("reward") if records else None
        plot = plot_reward_curve([{"step": 0, "eval_accuracy": before}, *records], out / "reward_curve.png")
        summary["reward_curve"] = str(plot) if plot else None
        summary["rl_curve"] = rl_curve_report(records, out / "rl_curve.png")
        lora = LoraConfig(**dataclasses.asdict(cfg.lora))
        summary["adapter"] = str(save_adapter(trainer.plain, out / "adapter", lora))
        atomic_write_json(out / "adapter" / "base_model.json", {"model": cfg.model})
        atomic_write_json(out / "summary.json", summary)
    return summary
