"""`ember dpo`: preference optimisation (DPO, cDPO, IPO, SimPO, ORPO, KTO) on the one loop.

Each pair is (prompt, chosen, rejected). The policy scores both replies in one forward;
the reference log-probs come from the same model before training — with LoRA that *is*
the model with its adapters disabled, so they are computed once, up front, under
`adapters_disabled` (no second copy of the weights, no second forward per step). At step
0 a LoRA policy equals its reference exactly, so the DPO loss starts at log 2.

`--preset style` generates the project's style pairs (ember/data/preference.py: chosen
answers in one short sentence ending with a full stop; rejected rambles, deflects, trails
off or repeats) and reports held-out preference accuracy and implicit reward margin
before and after, plus how often greedy replies to held-out prompts keep the style.

`--loss_type kto` trains on unpaired rows ({"prompt", "completion", "label"}); pairs are
split into a desirable and an undesirable row. Its reference point z0 is estimated each step
from mismatched (prompt, another row's reply) sequences, whose reference log-probs are also
computed up front. Its held-out "pref_accuracy" is the share of (desirable, undesirable)
row combinations whose implicit rewards are ordered right (an AUC; for split pairs it
covers the pairs themselves and every cross combination). Deviation from TRL: z0 is the
micro-batch's own estimate, not all-reduced across processes.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F

from ember.core.io import atomic_write_json
from ember.data.preference import (
    encode_pairs,
    encode_unpaired,
    file_kind,
    read_preference_jsonl,
    unpair,
)
from ember.data.sft import RowLoader
from ember.data.style import make_style_pairs, style_violation
from ember.parallel import init_distributed
from ember.train.loop import TrainConfig, Trainer
from ember.train.losses import IGNORE
from ember.train.optim import OptimConfig
from ember.train.preference import preference_loss
from ember.train.sft import LoraArgs

REFERENCE_FREE = ("simpo", "orpo")


@dataclass
class DPOConfig:
    """Align a chat model to preference pairs."""

    model: str = "smollm2"
    data: str | None = None  # JSONL pairs {"prompt", "chosen", "rejected"}
    preset: Literal["none", "style"] = "none"  # style: the generated style pairs
    loss_type: Literal["dpo", "cdpo", "ipo", "simpo", "orpo", "kto"] = "dpo"
    beta: float = 0.1  # DPO/cDPO/IPO temperature (SimPO: use ~2)
    label_smoothing: float = 0.0  # cDPO's ε
    simpo_gamma: float = 0.5
    orpo_lambda: float = 0.1
    kto_lambda_d: float = 1.0  # KTO weights of desirable / undesirable rows
    kto_lambda_u: float = 1.0
    peft: Literal["lora", "none"] = "lora"
    lora: LoraArgs = field(default_factory=LoraArgs)
    max_len: int = 160
    on_error: Literal["skip", "fail"] = "skip"
    n_train: int = 256  # --preset style: generated training pairs
    n_eval: int = 64  # held-out pairs
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        steps=32, batch_size=8, eval_every=16, sample_every=0, save_every=16, out="runs/dpo",
        keep_checkpoints=1))  # fmt: skip
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=5e-4, warmup_steps=4, weight_decay=0.0))


def _pad(rows: list[dict], sides: tuple[str, ...], pad_id: int) -> dict[str, torch.Tensor]:
    """For each prefix in sides, rows' f"{side}ids" / f"{side}labels" lists → (N, T) tensors,
    every side padded to one T (pad_id / IGNORE), so the loop may slice rows freely."""
    T = max(len(r[f"{side}ids"]) for r in rows for side in sides)
    out = {}
    for side in sides:
        ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
        labels = torch.full((len(rows), T), IGNORE, dtype=torch.long)
        for i, r in enumerate(rows):
            n = len(r[f"{side}ids"])
            ids[i, :n], labels[i, :n] = torch.tensor(r[f"{side}ids"]), torch.tensor(r[f"{side}labels"])
        out[f"{side}ids"], out[f"{side}labels"] = ids, labels
    return out


def pad_pairs(pairs: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Encoded pairs → per-pair rows {"chosen_ids", "chosen_labels", "rejected_ids",
    "rejected_labels"} (N, T)."""
    return _pad(pairs, ("chosen_", "rejected_"), pad_id)


def pad_unpaired(rows: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Encoded unpaired rows → {"ids", "labels", "kl_ids", "kl_labels"} (N, T) and
    "desirable" (N,) bool."""
    return {**_pad(rows, ("", "kl_"), pad_id), "desirable": torch.tensor([r["desirable"] for r in rows])}


def reply_logprobs(model, ids: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum, count) of log p(label) over each row's labelled tokens; the head runs only there."""
    sel = labels != IGNORE  # (B, T)
    logits = model(ids, logits_index=sel)  # (N, V)
    tok = torch.log_softmax(logits.float(), dim=-1).gather(1, labels[sel][:, None])[:, 0]  # (N,)
    rows = sel.nonzero()[:, 0]
    total = torch.zeros(ids.shape[0], device=ids.device).index_add(0, rows, tok)
    return total, sel.sum(1).clamp(min=1).float()


def pair_scores(model, b: dict) -> dict[str, torch.Tensor]:
    """Chosen and rejected in one forward → summed and averaged log-probs of each."""
    B = b["chosen_ids"].shape[0]
    T = max(b["chosen_ids"].shape[1], b["rejected_ids"].shape[1])
    ids = torch.cat([F.pad(b[f"{s}_ids"], (0, T - b[f"{s}_ids"].shape[1])) for s in ("chosen", "rejected")])
    labels = torch.cat([F.pad(b[f"{s}_labels"], (0, T - b[f"{s}_labels"].shape[1]), value=IGNORE)
                        for s in ("chosen", "rejected")])  # fmt: skip
    total, count = reply_logprobs(model, ids, labels)
    return {"chosen": total[:B], "rejected": total[B:], "chosen_avg": total[:B] / count[:B],
            "rejected_avg": total[B:] / count[B:]}  # fmt: skip


def make_loss(cfg: DPOConfig):
    def loss_fn(model, b):
        kind = cfg.loss_type
        if kind == "kto":
            pol, _ = reply_logprobs(model, b["ids"], b["labels"])
            with torch.no_grad():  # z0 carries no gradient (KTO §4.1)
                kl_pol, _ = reply_logprobs(model, b["kl_ids"], b["kl_labels"])
            return preference_loss("kto", pol_logps=pol, ref_logps=b["ref_logp"], is_desirable=b["desirable"],
                                   kl_ref=kl_pol - b["ref_kl"], beta=cfg.beta, lambda_d=cfg.kto_lambda_d,
                                   lambda_u=cfg.kto_lambda_u)  # fmt: skip
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
                               nll_chosen=-s["chosen_avg"], lam=cfg.orpo_lambda)  # fmt: skip

    return loss_fn


@torch.no_grad()
def add_reference(model, rows: dict[str, torch.Tensor], batch: int = 16) -> None:
    """ref_chosen / ref_rejected (and their averages) for every pair, from the model as it is
    now — called before training, with LoRA adapters disabled."""
    from ember.peft import adapters_disabled

    out: dict[str, list] = {}
    device = next(model.parameters()).device
    model.eval()
    with adapters_disabled(model):
        for i in range(0, len(next(iter(rows.values()))), batch):
            b = {k: v[i : i + batch].to(device) for k, v in rows.items()}
            if "chosen_ids" in rows:
                s = pair_scores(model, b)
            else:  # unpaired (KTO): the row and its mismatched sequence
                s = {"logp": reply_logprobs(model, b["ids"], b["labels"])[0],
                     "kl": reply_logprobs(model, b["kl_ids"], b["kl_labels"])[0]}  # fmt: skip
            for k, v in s.items():
                out.setdefault(f"ref_{k}", []).append(v.float().cpu())
    model.train()
    rows.update({k: torch.cat(v) for k, v in out.items()})


@torch.no_grad()
def preference_metrics(model, rows: dict[str, torch.Tensor], cfg: DPOConfig, batch: int = 16) -> dict:
    """Held-out preference accuracy (implicit reward of chosen > rejected) and mean margin.
    The implicit reward is β·(log π − log π_ref); SimPO/ORPO have no reference and use the
    average log-prob margin."""
    if cfg.loss_type == "kto":
        return _unpaired_metrics(model, rows, cfg.beta, batch)
    margins = []
    for i in range(0, len(rows["chosen_ids"]), batch):
        b = {k: v[i : i + batch] for k, v in rows.items()}
        s = pair_scores(model, b)
        if cfg.loss_type in REFERENCE_FREE:
            margins.append(s["chosen_avg"] - s["rejected_avg"])
        else:
            margins.append(cfg.beta * ((s["chosen"] - b["ref_chosen"]) - (s["rejected"] - b["ref_rejected"])))
    m = torch.cat(margins)
    return {"pref_accuracy": (m > 0).float().mean().item(), "reward_margin": m.mean().item()}


@torch.no_grad()
def _unpaired_metrics(model, rows: dict[str, torch.Tensor], beta: float, batch: int) -> dict:
    rewards = []
    for i in range(0, len(rows["ids"]), batch):
        b = {k: v[i : i + batch] for k, v in rows.items()}
        rewards.append(beta * (reply_logprobs(model, b["ids"], b["labels"])[0] - b["ref_logp"]))
    r, good = torch.cat(rewards), rows["desirable"].to(rewards[0].device)
    if good.all() or not good.any():
        return {"reward_mean": r.mean().item()}
    d, u = r[good], r[~good]
    return {"pref_accuracy": (d[:, None] > u[None, :]).float().mean().item(), "reward_margin": (d.mean() - u.mean()).item()}


def load_pairs(cfg, unpaired_ok: bool = False) -> tuple[list[dict], list[dict]]:
    """(train rows, held-out rows) from cfg.data or cfg.preset; shared by dpo, reward and ppo.
    Unpaired (KTO) files are read when unpaired_ok, and refused otherwise."""
    if cfg.preset == "style" and cfg.data is None:
        return make_style_pairs(cfg.n_train, cfg.train.seed, "train"), make_style_pairs(cfg.n_eval, cfg.train.seed, "heldout")
    if cfg.data is None:
        raise ValueError("give --data FILE.jsonl (pairs {\"prompt\", \"chosen\", \"rejected\"}) or --preset style")
    kind = file_kind(cfg.data) if Path(cfg.data).is_file() else "pair"
    if kind == "unpaired" and not unpaired_ok:
        raise ValueError(f"{cfg.data} holds unpaired rows {{\"prompt\", \"completion\", \"label\"}}; this recipe "
                         "needs pairs (for `ember dpo`, use --loss_type kto)")  # fmt: skip
    rows, report = read_preference_jsonl(cfg.data, cfg.on_error, kind)
    if sum(report.values()):
        print(f"skipped lines by reason: {report}", file=sys.stderr)
    low = 2 if kind == "unpaired" else 1  # KTO's z0 pairs each row with another
    n_eval = min(cfg.n_eval, max(low, len(rows) // 10))
    if len(rows) < 2 * low:
        raise ValueError(f"{cfg.data}: need at least {2 * low} valid {kind} rows (some are held out), got {len(rows)}")
    return rows[n_eval:], rows[:n_eval]


def build_dpo(cfg: DPOConfig) -> Trainer:
    import ember
    from ember.peft import LoraConfig, apply_lora

    torch.manual_seed(cfg.train.seed)  # adapter init (LoRA A, heads): the same run every time
    info = init_distributed(cfg.train.device)
    train_rows, eval_rows = load_pairs(cfg, unpaired_ok=cfg.loss_type == "kto")
    model, tok = ember.load(cfg.model)
    pad = tok.bos_token_id if tok.bos_token_id is not None else min(tok.eos_token_ids, default=0)
    max_len = min(cfg.max_len, model.config.max_seq_len)
    if cfg.loss_type == "kto":
        train = pad_unpaired(encode_unpaired(tok, unpair(train_rows), max_len), pad)
        held = pad_unpaired(encode_unpaired(tok, unpair(eval_rows), max_len), pad)
    else:
        train = pad_pairs(encode_pairs(tok, train_rows, max_len), pad)
        held = pad_pairs(encode_pairs(tok, eval_rows, max_len), pad)
    if cfg.peft == "lora":
        model = apply_lora(model, LoraConfig(**dataclasses.asdict(cfg.lora)))
    loader = RowLoader(train, cfg.train.batch_size, cfg.train.seed, info.rank, info.world_size)
    device = info.device
    model.to(device)

    def batches(step):
        return {k: v.to(device) for k, v in loader.batch(step).items()}

    run_config = {"dpo": dataclasses.asdict(cfg), "model": _base(model).config.to_dict()}
    trainer = Trainer(model, cfg.train, cfg.optim, make_loss(cfg), batches, run_config,
                      eval_fn=lambda m: preference_metrics(m, {k: v.to(device) for k, v in held.items()}, cfg),
                      tokens_per_step=cfg.train.batch_size * 2 * next(iter(train.values())).shape[1], info=info,
                      save_trainable_only=cfg.peft != "none")  # fmt: skip
    if cfg.loss_type not in REFERENCE_FREE:
        # the model before training is the reference; under the loss's autocast, so that at
        # step 0 policy and reference agree bit for bit (the DPO loss is exactly log 2)
        with trainer.autocast():
            add_reference(trainer.plain, train)
            add_reference(trainer.plain, held)
    trainer.tokenizer, trainer.eval_rows, trainer.held = tok, eval_rows, held
    return trainer


def _base(model):
    from ember.peft.lora import base_model

    return base_model(model)


@torch.no_grad()
def style_rate(model, tok, rows: list[dict], max_tokens: int = 40) -> float:
    """Fraction of greedy replies to held-out prompts that keep the style (style_violation None)."""
    from ember.infer.engine import Engine
    from ember.infer.sampling import SamplingParams

    prompts = [tok.render_chat(r["prompt"], add_generation_prompt=True)[0] for r in rows]
    engine = Engine(model, tok, max_batch_size=8, max_seq_len=max(map(len, prompts)) + max_tokens)
    outs = engine.generate(prompts, SamplingParams(temperature=0, max_tokens=max_tokens))
    model.train()
    return sum(style_violation(o.text, r["answer"]) is None for o, r in zip(outs, rows)) / len(rows)


def main(cfg: DPOConfig) -> dict:
    from ember.peft import save_adapter

    trainer = build_dpo(cfg)
    before = trainer.evaluate()
    style = cfg.preset == "style" and trainer.info.is_main
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
            summary["adapter"] = str(save_adapter(trainer.plain, out / "adapter"))
        atomic_write_json(out / "summary.json", summary)
    return summary
