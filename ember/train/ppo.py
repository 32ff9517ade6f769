"""`ember ppo`: RLHF with PPO against a trained reward model, on the one training loop.

The recipe of InstructGPT (Ouyang et al. 2022 §3.5) and of the "Foundations of LLMs" RLHF
slides, with LoRA so nothing is copied twice:

- policy: the chat model with LoRA adapters; the *reference* is the same model with its
  adapters disabled (ember.peft.adapters_disabled).
- reward model: an `ember reward` output folder, frozen (ember.train.reward.load_reward_model).
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
import dataclasses
import json
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
from ember.train.dpo import load_pairs
from ember.train.grpo import completion_logprobs, generate
from ember.train.loop import TrainConfig, Trainer, split_micro
from ember.train.metrics import plot_curves
from ember.train.optim import OptimConfig
from ember.train.reward import load_reward_model
from ember.train.rl import (
    gae,
    kl_penalty,
    masked_whiten,
    ppo_policy_loss,
    ppo_value_loss,
    token_rewards,
)
from ember.train.sft import LoraArgs, model_config_dict, model_ctx


@dataclass
class PPOConfig:
    """PPO against a trained reward model (`ember reward`), LoRA adapters on the policy.
    Prompts come from the same preference data as the reward model (--data or --preset).
    train.batch_size is derived: prompts_per_step replies per rollout."""

    model: str = "smollm2"  # the policy: known name, GGUF, HF folder (needs a chat template)
    reward_model: str = "runs/reward"  # an `ember reward` output folder
    data: str | None = None  # preference JSONL: its prompts are used
    preset: Literal["none", "style"] = "style"
    on_error: Literal["skip", "fail"] = "skip"
    n_train: int = 256  # preset prompts to draw rollouts from
    n_eval: int = 32  # held-out prompts, scored greedily before and after
    prompts_per_step: int = 8
    ppo_epochs: int = 2  # optimizer steps on each rollout
    max_new_tokens: int = 32
    temperature: float = 0.7  # SmolLM2-135M at 1.0 rambles past max_new_tokens most of the time
    top_k: int = 0
    beta: float = 0.05  # per-token KL penalty to the reference
    kl_estimator: Literal["k1", "k2", "k3"] = "k1"
    gamma: float = 1.0
    lam: float = 0.95
    clip: float = 0.2
    vf_clip: float = 0.2
    vf_coef: float = 0.1
    whiten_advantages: bool = True
    missing_eos_penalty: float = 1.0
    lora: LoraArgs = field(default_factory=LoraArgs)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        steps=40, batch_size=8, eval_every=10, sample_every=0, save_every=0, log_every=1,
        out="runs/ppo", keep_checkpoints=1))  # fmt: skip
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=3e-4, warmup_steps=0, weight_decay=0.0))

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
        return completion_logprobs(self.policy, ids, mask), self.value(ids)


def end_of_turn_id(tok) -> int:
    """The token that closes an assistant turn in this chat template (ChatML: <|im_end|>)."""
    ids, mask = tok.render_chat([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}],
                                add_generation_prompt=False)  # fmt: skip
    if 1 not in mask:
        raise ValueError("the chat template marks no assistant tokens; cannot find its end-of-turn token")
    return ids[len(mask) - 1 - mask[::-1].index(1)]


@torch.no_grad()
def score_replies(rm: RewardModel, prompts: list[list[int]], replies: list[list[int]], end_id: int,
                  pad: int, batch: int = 16) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """(scores (N,), ended (N,) bool): the reward model read at each reply's end-of-turn
    token; a reply without one (cut by max_new_tokens) gets it appended for the reading."""
    seqs, ended = [], []
    for p, r in zip(prompts, replies):
        done = bool(r) and r[-1] == end_id
        seqs.append(p + r + ([] if done else [end_id]))
        ended.append(done)
    device = next(rm.parameters()).device
    out = []
    for i in range(0, len(seqs), batch):
        chunk = seqs[i : i + batch]
        ids = torch.full((len(chunk), max(map(len, chunk))), pad, dtype=torch.long)
        for j, s in enumerate(chunk):
            ids[j, : len(s)] = torch.tensor(s)
        out.append(rm(ids.to(device), lengths=torch.tensor([len(s) for s in chunk], device=device)).float().cpu())
    return torch.cat(out), torch.tensor(ended)


def build_ppo(cfg: PPOConfig) -> Trainer:
    import ember
    from ember.infer.sampling import SamplingParams
    from ember.peft import LoraConfig, adapters_disabled, apply_lora

    torch.manual_seed(cfg.train.seed)  # adapter init: the same run every time
    info = init_distributed(cfg.train.device)
    if cfg.train.batch_size != cfg.prompts_per_step:
        print(f"ppo: train.batch_size = prompts_per_step = {cfg.prompts_per_step}", file=sys.stderr)
        cfg.train = dataclasses.replace(cfg.train, batch_size=cfg.prompts_per_step)
    if cfg.prompts_per_step % info.world_size:
        raise ValueError(f"prompts_per_step {cfg.prompts_per_step} is not divisible by {info.world_size} processes")
    train_rows, eval_rows = load_pairs(cfg, unpaired_ok=True)  # only the prompts are used
    rm = load_reward_model(cfg.reward_model, info.device)
    policy, tok = ember.load(cfg.model)
    if tok.chat_template is None:
        raise ValueError(f"model {cfg.model!r} has no chat template; PPO prompts are chat turns")
    if rm.config.vocab_size != policy.config.vocab_size:
        raise ValueError(f"reward model vocabulary {rm.config.vocab_size} != policy's {policy.config.vocab_size}: "
                         "they must share a tokenizer")  # fmt: skip
    policy = apply_lora(policy, LoraConfig(**dataclasses.asdict(cfg.lora)))
    value = ValueHead(copy.deepcopy(rm.body), copy.deepcopy(rm.head))
    for name, p in value.named_parameters():  # the critic trains its adapters (or all) and head
        p.requires_grad_(name.startswith("head.") or "lora" in name or not _has_adapters(value.body))
    model = PolicyWithValue(policy, value).to(info.device)
    pad = tok.bos_token_id if tok.bos_token_id is not None else min(tok.eos_token_ids, default=0)
    end_id = end_of_turn_id(tok)
    ctx = model_ctx(policy)
    prompt_of = {id(r): tok.render_chat(r["prompt"], add_generation_prompt=True)[0] for r in train_rows + eval_rows}
    too_long = [r for r in train_rows if len(prompt_of[id(r)]) + cfg.max_new_tokens > ctx]
    if too_long:
        print(f"ppo: dropped {len(too_long)} prompts longer than the context {ctx} - max_new_tokens", file=sys.stderr)
        train_rows = [r for r in train_rows if r not in too_long]
    if len(train_rows) < cfg.prompts_per_step:
        raise ValueError(f"{len(train_rows)} usable prompts, fewer than prompts_per_step {cfg.prompts_per_step}")
    run: dict = {"rollouts": {}}

    @torch.no_grad()
    def rollout(index: int) -> dict:
        g = torch.Generator().manual_seed(cfg.train.seed * 1_000_003 + index)
        pick = torch.randperm(len(train_rows), generator=g)[: cfg.prompts_per_step].tolist()
        rows = [train_rows[i] for i in pick][info.rank :: info.world_size]
        prompts = [prompt_of[id(r)] for r in rows]
        seed = (cfg.train.seed * 1_000_003 + index) * 4096 + info.rank * 512
        params = [SamplingParams(temperature=cfg.temperature, top_k=cfg.top_k, max_tokens=cfg.max_new_tokens,
                                 seed=seed + i) for i in range(len(prompts))]  # fmt: skip
        outs = generate(policy, tok, prompts, params)
        replies = [o.token_ids for o in outs]
        empty = [i for i, r in enumerate(replies) if not r]
        for i in empty:  # nothing sampled (cannot happen with max_tokens >= 1): score the end token
            replies[i] = [end_id]
        scores, ended = score_replies(rm, prompts, replies, end_id, pad)
        scores = scores - cfg.missing_eos_penalty * (~ended).float()
        T = max(len(p) + len(r) for p, r in zip(prompts, replies))
        N, dev = len(prompts), info.device
        ids = torch.full((N, T), pad, dtype=torch.long)
        mask = torch.zeros((N, T), dtype=torch.bool)  # position t predicts a reply token
        for i, (p, r) in enumerate(zip(prompts, replies)):
            ids[i, : len(p) + len(r)] = torch.tensor(p + r)
            mask[i, len(p) - 1 : len(p) + len(r) - 1] = True
        batch = {"ids": ids.to(dev), "mask": mask.to(dev)}
        micro = split_micro(batch, run["trainer"].micro)
        with run["trainer"].autocast():  # the loss's own micro-batches and autocast: ratio 1 on the first epoch
            parts = [model(mb["ids"], mb["mask"]) for mb in micro]
            old_logp = torch.cat([lp for lp, _ in parts]).float()
            old_values = torch.cat([v for _, v in parts]).float() * batch["mask"]
            with adapters_disabled(policy):
                ref_logp = torch.cat([completion_logprobs(policy, mb["ids"], mb["mask"]) for mb in micro]).float()
        m = batch["mask"]
        # the value at t is V(state before the token at t+1): rewards and GAE live on `m`
        rewards = token_rewards(scores.to(dev), old_logp, ref_logp, m, cfg.beta, cfg.kl_estimator)
        adv, returns = gae(rewards, old_values, m, cfg.gamma, cfg.lam)
        if cfg.whiten_advantages and m.sum() >= 2:
            adv = masked_whiten(adv, m)
        kl = (kl_penalty(old_logp, ref_logp, "k1") * m).sum(-1)  # (N,) per-reply KL estimate
        batch.update(old_logp=old_logp, old_values=old_values, ref_logp=ref_logp, advantages=adv, returns=returns)
        per_row = {
            "score": scores, "kl": kl.cpu(), "reward": scores - cfg.beta * kl.cpu(),
            "eos_rate": ended.float(), "reply_len": m.sum(-1).float().cpu(),
        }  # fmt: skip
        batch.update({k: v.to(dev) for k, v in per_row.items()})
        return batch

    def batches(step: int) -> dict:
        index = step // cfg.ppo_epochs
        cache = run["rollouts"]
        if index not in cache:
            cache.clear()
            cache[index] = rollout(index)
        return cache[index]

    def loss_fn(m, b) -> tuple[torch.Tensor, dict]:
        logp, values = m(b["ids"], b["mask"])
        pg, pm = ppo_policy_loss(logp, b["old_logp"], b["advantages"], b["mask"], cfg.clip)
        vf, vm = ppo_value_loss(values, b["old_values"], b["returns"], b["mask"], cfg.vf_clip)
        metrics = {"pg_loss": pg.detach(), "vf_loss": vf.detach(), **pm, **vm}
        # per-rollout figures are stored on every row, so the mean over micro-batches is exact
        for k in ("score", "kl", "reward", "eos_rate", "reply_len"):
            metrics[k] = b[k].float().mean()
        metrics["kl_now"] = (kl_penalty(logp.detach(), b["ref_logp"], "k1") * b["mask"]).sum(-1).mean()  # after updates
        return pg + cfg.vf_coef * vf, metrics

    def evaluate(m) -> dict:
        if not eval_rows:
            return {}
        return greedy_report(policy, rm, tok, eval_rows, cfg.max_new_tokens, end_id, pad)

    run_config = {"ppo": dataclasses.asdict(cfg), "model": model_config_dict(policy)}
    trainer = Trainer(model, cfg.train, cfg.optim, loss_fn, batches, run_config, eval_fn=evaluate, info=info,
                      save_trainable_only=True)  # fmt: skip
    run["trainer"] = trainer
    trainer.tokenizer, trainer.eval_rows = tok, eval_rows
    return trainer


def _has_adapters(body: nn.Module) -> bool:
    return any("lora" in name for name, _ in body.named_parameters())


@torch.no_grad()
def greedy_report(policy, rm, tok, rows: list[dict], max_new_tokens: int, end_id: int, pad: int) -> dict:
    """Greedy replies to held-out prompts: mean reward-model score (with the missing-EOS
    reading as in training, no penalty) and, for style rows, the share that keep the style."""
    from ember.infer.sampling import SamplingParams

    prompts = [tok.render_chat(r["prompt"], add_generation_prompt=True)[0] for r in rows]
    outs = generate(policy, tok, prompts, [SamplingParams(temperature=0, max_tokens=max_new_tokens)] * len(rows))
    scores, ended = score_replies(rm, prompts, [o.token_ids or [end_id] for o in outs], end_id, pad)
    report = {"eval_score": scores.mean().item(), "eval_eos_rate": ended.float().mean().item()}
    if all("answer" in r for r in rows):
        report["eval_style_rate"] = sum(style_violation(o.text, r["answer"]) is None for o, r in zip(outs, rows)) / len(rows)
    return report


def plot_ppo_curve(records: list[dict], before: dict, path: str | Path) -> str | None:
    """Rollout score, per-reply KL and the held-out greedy score (from step 0) → PNG."""
    series = [("score", "reward-model score (rollouts)"), ("kl", "KL(π‖ref) per reply"),
              ("eval_score", "held-out score (greedy)")]  # fmt: skip
    plot = plot_curves([{"step": 0, **before}, *records], path, series, "score / KL", "PPO")
    return str(plot) if plot else None


def main(cfg: PPOConfig) -> dict:
    """Train; write out/adapter (the policy's), out/reward_curve.png and out/summary.json with
    the held-out greedy score (and style rate) before and after."""
    from ember.peft import LoraConfig, save_adapter

    trainer = build_ppo(cfg)
    before = trainer.evaluate()
    print(f"before: {before}", file=sys.stderr)
    summary = trainer.fit()
    out = Path(cfg.train.out)
    if trainer.info.is_main:
        records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
        summary["before"] = before
        summary["after"] = {k: summary[k] for k in before if k in summary}
        first = [r for r in records if "score" in r][: cfg.ppo_epochs * 3]
        last = [r for r in records if "score" in r][-cfg.ppo_epochs * 3 :]
        for name, rs in (("first", first), ("last", last)):  # means over 3 rollouts each end
            for k in ("score", "kl"):
                summary[f"{k}_{name}"] = sum(r[k] for r in rs) / len(rs) if rs else None
        summary["reward_curve"] = plot_ppo_curve(records, before, out / "reward_curve.png")
        lora = LoraConfig(**dataclasses.asdict(cfg.lora))
        summary["adapter"] = str(save_adapter(trainer.plain.policy, out / "adapter", lora))
        atomic_write_json(out / "adapter" / "base_model.json", {"model": cfg.model})
        atomic_write_json(out / "summary.json", summary)
    return summary
