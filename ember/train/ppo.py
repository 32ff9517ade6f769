"""`ember ppo`: RLHF with PPO against a trained reward model, on the one training loop.

The recipe of InstructGPT (Ouyang et al. 2022 §3.5) and of the "Foundations of LLMs" RLHF
slides, with LoRA so nothing is copied twice:

- policy: the chat model with LoRA adapters; the *reference* is the same model with its
  adapters disabled (ember.peft.adapters_disabled).
- reward model: an `ember reward` output folder, frozen (ember.train.kit.load_reward_model).
- value model: a ValueHead started from the reward model (its body, its LoRA adapters and its
  head, copied), as InstructGPT initialises the critic; its adapters and head train.

One *rollout* (`batches(step)`, cached for `ppo_epochs` optimizer steps): sample a reply to
each of `prompts_per_step` prompts with the engine; score prompt + reply with the reward
model at the end-of-turn token (a reply cut at max_new_tokens is scored as if it ended
there, minus `missing_eos_penalty`, as TRL does); per-token rewards are −β·KL(π‖ref) at every
reply token plus the score at the last one (ember.train.rl.token_rewards); GAE gives
advantages (whitened over the batch) and returns; the loss is the clipped policy objective
plus vf_coef × the clipped value loss. old_logp and old_values come from the same forward the
loss runs (same micro-batches, same autocast), so on the first optimizer step of every
rollout the importance ratio is exactly 1; later epochs on the same rollout are where the
clip acts.

    >>> main(PPOConfig(reward_model="runs/reward"))  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn as nn

from ember.core.io import atomic_write_json
from ember.data.style import style_violation
from ember.model.heads import RewardModel, ValueHead
from ember.parallel import init_distributed
from ember.peft import adapters_disabled
from ember.train.kit import (
    PostTrainConfig,
    batch_completions,
    context_len,
    generate,
    load_for_training,
    load_preference_rows,
    load_reward_model,
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
from ember.train.rl import (
    gae,
    kl_penalty,
    masked_whiten,
    ppo_policy_loss,
    ppo_value_loss,
    token_rewards,
)

# a rollout's per-reply figures, stored on every row so the mean over micro-batches is exact
ROLLOUT_METRICS = ("score", "kl", "reward", "eos_rate", "reply_len")


@dataclass
class PPOConfig(PostTrainConfig):
    """PPO against a trained reward model (`ember reward`), LoRA adapters on the policy.
    Prompts come from the same preference data as the reward model (--data or --dataset).
    train.batch_size is derived: prompts_per_step replies per rollout."""

    peft: Literal["lora"] = "lora"
    """LoRA only: the reference policy is the model with its adapters disabled."""
    reward_model: str = "runs/reward"
    """An `ember reward` output folder; its tokenizer must be the policy's."""
    data: str | None = None
    """Preference JSONL (pairs or unpaired rows): only its prompts are used."""
    dataset: Literal["none", "style"] = "style"
    """Built-in generated prompts used when no --data is given (style: the style pairs' prompts)."""
    on_error: Literal["skip", "fail"] = "skip"
    """Malformed JSONL lines: skip them (counted) or stop."""
    n_train: int = 256
    """Generated prompts to draw rollouts from (--dataset style)."""
    n_eval: int = 32
    """Held-out prompts, answered greedily and scored before and after training."""
    prompts_per_step: int = 8
    """Prompts per rollout, one sampled reply each."""
    ppo_epochs: int = 2
    """Optimizer steps on each rollout."""
    max_new_tokens: int = 32
    """Longest reply."""
    temperature: float = 0.7
    """Sampling temperature; SmolLM2-135M at 1.0 rambles past max_new_tokens most of the time."""
    top_k: int = 0
    """Sample from the k likeliest tokens only; 0: all."""
    beta: float = 0.05
    """Weight of the per-token KL penalty to the reference."""
    kl_estimator: Literal["k1", "k2", "k3"] = "k1"
    """The per-token KL estimate in the rewards (Schulman's k1, k2, k3)."""
    gamma: float = 1.0
    """GAE discount."""
    lam: float = 0.95
    """GAE λ: 1 is the reward-to-go, 0 the one-step TD error."""
    clip: float = 0.2
    """The policy ratio is clipped to 1 ± clip."""
    vf_clip: float = 0.2
    """The value is kept within ± vf_clip of the rollout's value."""
    vf_coef: float = 0.1
    """Weight of the value loss in the total loss."""
    whiten_advantages: bool = True
    """Standardise advantages over the rollout's reply tokens."""
    missing_eos_penalty: float = 1.0
    """Subtracted from the score of a reply cut at max_new_tokens."""
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        steps=40, batch_size=8, eval_every=10, sample_every=0, save_every=0, log_every=1, out="runs/ppo",
        keep_checkpoints=1))
    """The training loop; batch_size is set to prompts_per_step."""
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=3e-4, warmup_steps=0, weight_decay=0.0))
    """The optimizer and its schedule."""

    def __post_init__(self):
        for name in ("prompts_per_step", "ppo_epochs", "max_new_tokens", "n_train"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("beta", "temperature", "vf_coef", "missing_eos_penalty", "n_eval"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.gamma <= 1 or not 0 <= self.lam <= 1:
            raise ValueError(f"gamma and lam must be in [0, 1], got {self.gamma}, {self.lam}")
        if self.clip <= 0 or self.vf_clip <= 0:
            raise ValueError(f"clip and vf_clip must be > 0, got {self.clip}, {self.vf_clip}")


class PolicyWithValue(nn.Module):
    """The two trained models under one module, so one optimizer, one checkpoint and one
    DDP wrapper hold both. forward(ids, mask) → (log-probs (N, T), values (N, T))."""

    def __init__(self, policy: nn.Module, value: ValueHead):
        super().__init__()
        self.policy, self.value = policy, value

    @property
    def config(self):
        return self.policy.config

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return token_logprobs(self.policy, ids, mask), self.value(ids)


def end_of_turn_id(tok) -> int:
    """The token that closes an assistant turn in this chat template (ChatML: <|im_end|>)."""
    turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]
    ids, mask = tok.render_chat(turns, add_generation_prompt=False)
    if 1 not in mask:
        raise ValueError("the chat template marks no assistant tokens; cannot find its end-of-turn token")
    return ids[len(mask) - 1 - mask[::-1].index(1)]


@torch.no_grad()
def score_replies(rm: RewardModel, prompts: list[list[int]], replies: list[list[int]], end_id: int, pad: int,
                  batch: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores (N,), ended (N,) bool): the reward model read at each reply's end-of-turn
    token; a reply without one (cut by max_new_tokens) gets it appended for the reading."""
    ended = [bool(r) and r[-1] == end_id for r in replies]
    seqs = [p + r + ([] if done else [end_id]) for p, r, done in zip(prompts, replies, ended)]
    device = next(rm.parameters()).device
    out = []
    for i in range(0, len(seqs), batch):  # each chunk padded to its own longest sequence
        chunk = seqs[i : i + batch]
        ids = torch.full((len(chunk), max(map(len, chunk))), pad, dtype=torch.long)
        for j, s in enumerate(chunk):
            ids[j, : len(s)] = torch.tensor(s)
        lengths = torch.tensor([len(s) for s in chunk], device=device)
        out.append(rm(ids.to(device), lengths=lengths).float().cpu())
    return torch.cat(out), torch.tensor(ended)


def load_models(cfg: PPOConfig, info):
    """(policy with LoRA, the PolicyWithValue that trains, frozen reward model, tokenizer)."""
    # one seed before both loads: the reward head is built, then the policy's adapters, in
    # this order, so the adapter init is the same on every run of a config
    torch.manual_seed(cfg.train.seed)
    rm = load_reward_model(cfg.reward_model, info.device)
    policy, tok = load_for_training(cfg, seed=False)
    if tok.chat_template is None:
        raise ValueError(f"model {cfg.model!r} has no chat template; PPO prompts are chat turns")
    if rm.config.vocab_size != policy.config.vocab_size:
        raise ValueError(f"reward model vocabulary {rm.config.vocab_size} != policy's {policy.config.vocab_size}: "
                         "they must share a tokenizer")
    value = ValueHead(copy.deepcopy(rm.body), copy.deepcopy(rm.head))
    adapters = any("lora" in name for name, _ in value.body.named_parameters())
    for name, p in value.named_parameters():  # the critic trains its adapters (or all) and head
        p.requires_grad_(name.startswith("head.") or "lora" in name or not adapters)
    return policy, PolicyWithValue(policy, value).to(info.device), rm, tok


class Rollouts:
    """The loop's batches(step): rollout step // ppo_epochs, made once and reused for its
    ppo_epochs steps. `trainer` is set once the Trainer exists (its micro-batches and
    autocast are the ones the loss runs)."""

    def __init__(self, cfg: PPOConfig, model: PolicyWithValue, rm, tok, prompts: list[list[int]], info):
        self.cfg, self.model, self.rm, self.tok, self.prompts, self.info = cfg, model, rm, tok, prompts, info
        self.pad, self.end_id = pad_id(tok), end_of_turn_id(tok)
        self.trainer: Trainer | None = None
        self.cached: tuple[int, dict] | None = None

    def __call__(self, step: int) -> dict:
        index = step // self.cfg.ppo_epochs
        if self.cached is None or self.cached[0] != index:
            self.cached = (index, self.rollout(index))
        return self.cached[1]

    @torch.no_grad()
    def rollout(self, index: int) -> dict:
        cfg, info, policy = self.cfg, self.info, self.model.policy
        g = torch.Generator().manual_seed(cfg.train.seed * 1_000_003 + index)
        pick = torch.randperm(len(self.prompts), generator=g)[: cfg.prompts_per_step].tolist()
        prompts = [self.prompts[i] for i in pick][info.rank :: info.world_size]
        seed = (cfg.train.seed * 1_000_003 + index) * 4096 + info.rank * 512
        outs = sample_completions(policy, self.tok, prompts, cfg, seed)
        # an empty reply cannot happen with max_tokens >= 1; if it did, score the end token
        replies = [o.token_ids or [self.end_id] for o in outs]
        scores, ended = score_replies(self.rm, prompts, replies, self.end_id, self.pad)
        scores = scores - cfg.missing_eos_penalty * (~ended).float()
        ids, m = (t.to(info.device) for t in batch_completions(prompts, replies, self.pad))
        batch = {"ids": ids, "mask": m}
        parts = rollout_forward(self.trainer, lambda mb: self.model(mb["ids"], mb["mask"]), batch)
        old_logp = torch.cat([lp for lp, _ in parts]).float()
        old_values = torch.cat([v for _, v in parts]).float() * m
        with adapters_disabled(policy):
            ref = rollout_forward(self.trainer, lambda mb: token_logprobs(policy, mb["ids"], mb["mask"]), batch)
        ref_logp = torch.cat(ref).float()
        # the value at t is V(state before the token at t+1): rewards and GAE live on `m`
        rewards = token_rewards(scores.to(m.device), old_logp, ref_logp, m, cfg.beta, cfg.kl_estimator)
        adv, returns = gae(rewards, old_values, m, cfg.gamma, cfg.lam)
        if cfg.whiten_advantages and m.sum() >= 2:
            adv = masked_whiten(adv, m)
        kl = (kl_penalty(old_logp, ref_logp, "k1") * m).sum(-1).cpu()  # (N,) per-reply KL estimate
        batch.update(old_logp=old_logp, old_values=old_values, ref_logp=ref_logp, advantages=adv, returns=returns)
        per_row = {"score": scores, "kl": kl, "reward": scores - cfg.beta * kl, "eos_rate": ended.float(),
                   "reply_len": m.sum(-1).float().cpu()}
        batch.update({k: v.to(m.device) for k, v in per_row.items()})
        return batch


def ppo_step_loss(cfg: PPOConfig):
    def loss_fn(model, b) -> tuple[torch.Tensor, dict]:
        logp, values = model(b["ids"], b["mask"])
        pg, pm = ppo_policy_loss(logp, b["old_logp"], b["advantages"], b["mask"], cfg.clip)
        vf, vm = ppo_value_loss(values, b["old_values"], b["returns"], b["mask"], cfg.vf_clip)
        metrics = {"pg_loss": pg.detach(), "vf_loss": vf.detach(), **pm, **vm}
        metrics.update({k: b[k].float().mean() for k in ROLLOUT_METRICS})
        kl_now = kl_penalty(logp.detach(), b["ref_logp"], "k1") * b["mask"]  # after the updates so far
        metrics["kl_now"] = kl_now.sum(-1).mean()
        return pg + cfg.vf_coef * vf, metrics

    return loss_fn


def build_ppo(cfg: PPOConfig) -> Trainer:
    info = init_distributed(cfg.train.device)
    rollout_batch_size(cfg, cfg.prompts_per_step, "prompts_per_step", info)
    train_rows, eval_rows = load_preference_rows(cfg, unpaired_ok=True)  # only the prompts are used
    policy, model, rm, tok = load_models(cfg, info)
    prompt_of = {id(r): tok.render_chat(r["prompt"], add_generation_prompt=True)[0] for r in train_rows + eval_rows}
    ctx = context_len(policy)
    too_long = [r for r in train_rows if len(prompt_of[id(r)]) + cfg.max_new_tokens > ctx]
    if too_long:
        print(f"ppo: dropped {len(too_long)} prompts longer than the context {ctx} - max_new_tokens",
              file=sys.stderr)
        train_rows = [r for r in train_rows if r not in too_long]
    if len(train_rows) < cfg.prompts_per_step:
        raise ValueError(f"{len(train_rows)} usable prompts, fewer than prompts_per_step {cfg.prompts_per_step}")
    rollouts = Rollouts(cfg, model, rm, tok, [prompt_of[id(r)] for r in train_rows], info)

    def evaluate(m) -> dict:
        if not eval_rows:
            return {}
        prompts = [prompt_of[id(r)] for r in eval_rows]
        return greedy_report(policy, rm, tok, prompts, eval_rows, cfg.max_new_tokens)

    trainer = Trainer(model, cfg.train, cfg.optim, ppo_step_loss(cfg), rollouts, run_config("ppo", cfg, policy),
                      eval_fn=evaluate, info=info, save_trainable_only=True)
    rollouts.trainer = trainer
    trainer.tokenizer, trainer.eval_rows = tok, eval_rows
    return trainer


@torch.no_grad()
def greedy_report(policy, rm, tok, prompts: list[list[int]], rows: list[dict], max_new_tokens: int) -> dict:
    """Greedy replies to held-out prompts: mean reward-model score (with the missing-EOS
    reading as in training, no penalty) and, for style rows, the share that keep the style."""
    from ember.infer.sampling import SamplingParams

    end_id = end_of_turn_id(tok)
    outs = generate(policy, tok, prompts, SamplingParams(temperature=0, max_tokens=max_new_tokens))
    scores, ended = score_replies(rm, prompts, [o.token_ids or [end_id] for o in outs], end_id, pad_id(tok))
    report = {"eval_score": scores.mean().item(), "eval_eos_rate": ended.float().mean().item()}
    if all("answer" in r for r in rows):
        kept = [style_violation(o.text, r["answer"]) is None for o, r in zip(outs, rows)]
        report["eval_style_rate"] = sum(kept) / len(rows)
    return report


def plot_ppo_curve(records: list[dict], before: dict, path: str | Path) -> str | None:
    """Rollout score, per-reply KL and the held-out greedy score (from step 0) → PNG."""
    series = [("score", "reward-model score (rollouts)"), ("kl", "KL(π‖ref) per reply"),
              ("eval_score", "held-out score (greedy)")]
    plot = plot_curves([{"step": 0, **before}, *records], path, series, "score / KL", "PPO")
    return str(plot) if plot else None


def main(cfg: PPOConfig) -> dict:
    """Train; write out/adapter (the policy's), out/reward_curve.png and out/summary.json with
    the held-out greedy score (and style rate) before and after."""
    trainer = build_ppo(cfg)
    before = trainer.evaluate()
    print(f"before: {before}", file=sys.stderr)
    summary = trainer.fit()
    out = Path(cfg.train.out)
    if trainer.info.is_main:
        records = read_metrics(out)
        summary["before"] = before
        summary["after"] = {k: summary[k] for k in before if k in summary}
        steps = [r for r in records if "score" in r]
        n = cfg.ppo_epochs * 3  # the steps of 3 rollouts at each end
        for name, rs in (("first", steps[:n]), ("last", steps[-n:])):
            for k in ("score", "kl"):
                summary[f"{k}_{name}"] = sum(r[k] for r in rs) / len(rs) if rs else None
        summary["reward_curve"] = plot_ppo_curve(records, before, out / "reward_curve.png")
        summary["adapter"] = str(save_adapter_folder(trainer.plain.policy, out / "adapter", cfg))
        atomic_write_json(out / "summary.json", summary)
    return summary
