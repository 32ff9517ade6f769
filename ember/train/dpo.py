"""`ember dpo`: preference optimisation (DPO, cDPO, IPO, SimPO, ORPO, KTO) on the one loop.

Each pair is (prompt, chosen, rejected). The policy scores both replies in one forward;
the reference log-probs come from the same model before training — with LoRA that *is*
the model with its adapters disabled, so they are computed once, up front, under
`adapters_disabled` (no second copy of the weights, no second forward per step). At step
0 a LoRA policy equals its reference exactly, so the DPO loss starts at log 2.

`--dataset style` generates the project's style pairs (ember/data/style.py: chosen answers
in one short sentence ending with a full stop; rejected rambles, deflects, trails off or
repeats) and reports held-out preference accuracy and implicit reward margin before and
after, plus how often greedy replies to held-out prompts keep the style.

`--loss_type kto` trains on unpaired rows ({"prompt", "completion", "label"}); pairs are
split into a desirable and an undesirable row. Its reference point z0 is estimated each step
from mismatched (prompt, another row's reply) sequences, whose reference log-probs are also
computed up front. Its held-out "pref_accuracy" is the share of (desirable, undesirable)
row combinations whose implicit rewards are ordered right (an AUC; for split pairs it
covers the pairs themselves and every cross combination). Deviation from TRL: z0 is the
micro-batch's own estimate, not all-reduced across processes.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F

from ember.core.io import atomic_write_json
from ember.data.preference import encode_pairs, encode_unpaired, unpair
from ember.data.sft import RowLoader
from ember.data.style import style_violation
from ember.parallel import init_distributed
from ember.train.kit import (
    PreferenceConfig,
    greedy_replies,
    load_for_training,
    load_preference_rows,
    pad_id,
    pad_rows,
    run_config,
    save_adapter_folder,
    sequence_logprobs,
    split_rows,
)
from ember.train.loop import TrainConfig, Trainer
from ember.train.losses import IGNORE
from ember.train.optim import OptimConfig
from ember.train.preference import preference_loss

REFERENCE_FREE = ("simpo", "orpo")
PAIR, UNPAIRED = ("chosen_", "rejected_"), ("", "kl_")


@dataclass
class DPOConfig(PreferenceConfig):
    """Align a chat model to preference pairs."""

    peft: Literal["lora", "none"] = "lora"
    """lora: train adapters, the reference is the model with them off; none: every weight."""
    loss_type: Literal["dpo", "cdpo", "ipo", "simpo", "orpo", "kto"] = "dpo"
    """The preference loss (ember/train/preference.py cites each paper)."""
    beta: float = 0.1
    """DPO/cDPO/IPO/KTO temperature (SimPO: use ~2)."""
    label_smoothing: float = 0.0
    """cDPO's ε, the assumed share of flipped labels."""
    simpo_gamma: float = 0.5
    """SimPO's target reward margin γ."""
    orpo_lambda: float = 0.1
    """ORPO's weight λ of the odds-ratio term."""
    kto_lambda_d: float = 1.0
    """KTO's weight of desirable rows."""
    kto_lambda_u: float = 1.0
    """KTO's weight of undesirable rows."""
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        steps=32, batch_size=8, eval_every=16, sample_every=0, save_every=16, out="runs/dpo",
        keep_checkpoints=1))
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=5e-4, warmup_steps=4, weight_decay=0.0))


def _logps(model, ids: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return sequence_logprobs(model, ids, labels != IGNORE)


def pair_scores(model, b: dict) -> dict[str, torch.Tensor]:
    """Chosen and rejected in one forward → summed and averaged log-probs of each."""
    B = b["chosen_ids"].shape[0]
    T = max(b["chosen_ids"].shape[1], b["rejected_ids"].shape[1])
    ids = torch.cat([F.pad(b[f"{s}_ids"], (0, T - b[f"{s}_ids"].shape[1])) for s in ("chosen", "rejected")])
    labels = torch.cat([F.pad(b[f"{s}_labels"], (0, T - b[f"{s}_labels"].shape[1]), value=IGNORE)
                        for s in ("chosen", "rejected")])
    total, count = _logps(model, ids, labels)
    return {"chosen": total[:B], "rejected": total[B:], "chosen_avg": total[:B] / count[:B],
            "rejected_avg": total[B:] / count[B:]}


def make_loss(cfg: DPOConfig):
    def loss_fn(model, b):
        kind = cfg.loss_type
        if kind == "kto":
            pol, _ = _logps(model, b["ids"], b["labels"])
            with torch.no_grad():  # z0 carries no gradient (KTO §4.1)
                kl_pol, _ = _logps(model, b["kl_ids"], b["kl_labels"])
            return preference_loss("kto", pol_logps=pol, ref_logps=b["ref_logp"], is_desirable=b["desirable"],
                                   kl_ref=kl_pol - b["ref_kl"], beta=cfg.beta, lambda_d=cfg.kto_lambda_d,
                                   lambda_u=cfg.kto_lambda_u)
        s = pair_scores(model, b)
        if kind in ("dpo", "cdpo"):
            return preference_loss(kind, pol_chosen=s["chosen"], pol_rejected=s["rejected"], ref_chosen=b["ref_chosen"],
                                   ref_rejected=b["ref_rejected"], beta=cfg.beta, label_smoothing=cfg.label_smoothing)
        if kind == "ipo":  # per-token averages, as TRL (the paper's h uses sums; see ipo_loss)
            return preference_loss("ipo", pol_chosen=s["chosen_avg"], pol_rejected=s["rejected_avg"],
                                   ref_chosen=b["ref_chosen_avg"], ref_rejected=b["ref_rejected_avg"], beta=cfg.beta)
        if kind == "simpo":
            return preference_loss("simpo", pol_chosen_avg=s["chosen_avg"], pol_rejected_avg=s["rejected_avg"],
                                   beta=cfg.beta, gamma=cfg.simpo_gamma)
        return preference_loss("orpo", pol_chosen_avg=s["chosen_avg"], pol_rejected_avg=s["rejected_avg"],
                               nll_chosen=-s["chosen_avg"], lam=cfg.orpo_lambda)

    return loss_fn


@torch.no_grad()
def add_reference(model, rows: dict[str, torch.Tensor], batch: int = 16) -> None:
    """ref_chosen / ref_rejected (and their averages) for every pair, from the model as it is
    now — called before training, with LoRA adapters disabled."""
    from ember.peft import adapters_disabled

    out: dict[str, list] = {}
    model.eval()
    with adapters_disabled(model):
        for b in split_rows(rows, batch, next(model.parameters()).device):
            if "chosen_ids" in rows:
                s = pair_scores(model, b)
            else:  # unpaired (KTO): the row and its mismatched sequence
                s = {"logp": _logps(model, b["ids"], b["labels"])[0], "kl": _logps(model, b["kl_ids"], b["kl_labels"])[0]}
            for k, v in s.items():
                out.setdefault(f"ref_{k}", []).append(v.float().cpu())
    model.train()
    rows.update({k: torch.cat(v) for k, v in out.items()})


@torch.no_grad()
def preference_metrics(model, rows: dict[str, torch.Tensor], cfg: DPOConfig, batch: int = 16) -> dict:
    """Held-out preference accuracy (implicit reward of chosen > rejected) and mean margin.
    The implicit reward is β·(log π − log π_ref); SimPO/ORPO have no reference and use the
    average log-prob margin. KTO's accuracy is over (desirable, undesirable) combinations."""
    if cfg.loss_type == "kto":
        r = torch.cat([cfg.beta * (_logps(model, b["ids"], b["labels"])[0] - b["ref_logp"])
                       for b in split_rows(rows, batch)])
        good = rows["desirable"].to(r.device)
        if good.all() or not good.any():
            return {"reward_mean": r.mean().item()}
        d, u = r[good], r[~good]
        return {"pref_accuracy": (d[:, None] > u[None, :]).float().mean().item(),
                "reward_margin": (d.mean() - u.mean()).item()}
    margins = []
    for b in split_rows(rows, batch):
        s = pair_scores(model, b)
        if cfg.loss_type in REFERENCE_FREE:
            margins.append(s["chosen_avg"] - s["rejected_avg"])
        else:
            margins.append(cfg.beta * ((s["chosen"] - b["ref_chosen"]) - (s["rejected"] - b["ref_rejected"])))
    m = torch.cat(margins)
    return {"pref_accuracy": (m > 0).float().mean().item(), "reward_margin": m.mean().item()}


def build_dpo(cfg: DPOConfig) -> Trainer:
    info = init_distributed(cfg.train.device)
    kto = cfg.loss_type == "kto"
    train_rows, eval_rows = load_preference_rows(cfg, unpaired_ok=kto)
    model, tok = load_for_training(cfg)
    max_len = min(cfg.max_len, model.config.max_seq_len)
    train, held = (_padded(tok, r, max_len, kto) for r in (train_rows, eval_rows))
    loader = RowLoader(train, cfg.train.batch_size, cfg.train.seed, info.rank, info.world_size)
    device = info.device
    model.to(device)
    trainer = Trainer(model, cfg.train, cfg.optim, make_loss(cfg),
                      lambda step: {k: v.to(device) for k, v in loader.batch(step).items()}, run_config("dpo", cfg, model),
                      eval_fn=(lambda m: preference_metrics(m, {k: v.to(device) for k, v in held.items()}, cfg))
                      if held else None,
                      tokens_per_step=cfg.train.batch_size * 2 * next(iter(train.values())).shape[1], info=info,
                      save_trainable_only=cfg.peft != "none")
    if cfg.loss_type not in REFERENCE_FREE:
        # the model before training is the reference; under the loss's autocast, so that at
        # step 0 policy and reference agree bit for bit (the DPO loss is exactly log 2)
        with trainer.autocast():
            for rows in (train, held) if held else (train,):
                add_reference(trainer.plain, rows)
    trainer.tokenizer, trainer.eval_rows, trainer.held = tok, eval_rows, held
    return trainer


def _padded(tok, rows: list[dict], max_len: int, kto: bool) -> dict[str, torch.Tensor] | None:
    if not rows:
        return None
    pad = pad_id(tok)
    if kto:
        return pad_rows(encode_unpaired(tok, unpair(rows), max_len), UNPAIRED, pad)
    return pad_rows(encode_pairs(tok, rows, max_len), PAIR, pad)


def style_rate(model, tok, rows: list[dict], max_tokens: int = 40) -> float:
    """Fraction of greedy replies to held-out prompts that keep the style (style_violation None)."""
    outs = greedy_replies(model, tok, [r["prompt"] for r in rows], max_tokens, max_batch_size=8)
    return sum(style_violation(o.text, r["answer"]) is None for o, r in zip(outs, rows)) / len(rows)


def main(cfg: DPOConfig) -> dict:
    """Train; write out/adapter and out/summary.json with the held-out metrics before and after."""
    trainer = build_dpo(cfg)
    before = trainer.evaluate()
    style = cfg.dataset == "style" and trainer.info.is_main and trainer.eval_rows
    if style:
        before["style_rate"] = style_rate(trainer.plain, trainer.tokenizer, trainer.eval_rows[:32])
    print(f"before: {before}", file=sys.stderr)
    summary = trainer.fit()
    after = {k: summary[k] for k in ("pref_accuracy", "reward_margin") if k in summary}
    if style:
        after["style_rate"] = style_rate(trainer.plain, trainer.tokenizer, trainer.eval_rows[:32])
    summary.update({"before": before, "after": after})
    out = Path(cfg.train.out)
    if trainer.info.is_main:
        if cfg.peft == "lora":
            summary["adapter"] = str(save_adapter_folder(trainer.plain, out / "adapter", cfg))
        atomic_write_json(out / "summary.json", summary)
    return summary
