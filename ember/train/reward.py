"""`ember reward`: a Bradley-Terry reward model on preference pairs, on the one loop.

The model is the chat model's body (LoRA adapters by default) plus a scalar head read at
the last real token (ember.model.heads.RewardModel). Loss: −log σ(r_chosen − r_rejected −
margin) (InstructGPT eq. 1). Reported: held-out pairwise accuracy before and after.
The trained model is saved as the body's adapter plus `head.safetensors`.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from ember.core.io import atomic_write_bytes, atomic_write_json
from ember.data.preference import encode_pairs
from ember.data.sft import RowLoader
from ember.model.heads import RewardModel
from ember.parallel import init_distributed
from ember.train.dpo import load_pairs, pad_pairs
from ember.train.loop import TrainConfig, Trainer
from ember.train.losses import IGNORE, bradley_terry_loss
from ember.train.optim import OptimConfig
from ember.train.sft import LoraArgs


@dataclass
class RewardConfig:
    """Train a reward model on preference pairs."""

    model: str = "smollm2"
    data: str | None = None  # JSONL pairs {"prompt", "chosen", "rejected"}
    preset: Literal["none", "style"] = "none"  # style: the generated style pairs
    margin: float = 0.0
    peft: Literal["lora", "none"] = "lora"
    lora: LoraArgs = field(default_factory=LoraArgs)
    max_len: int = 160
    on_error: Literal["skip", "fail"] = "skip"
    n_train: int = 256
    n_eval: int = 64
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        steps=32, batch_size=8, eval_every=16, sample_every=0, save_every=16, out="runs/reward",
        keep_checkpoints=1))  # fmt: skip
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=5e-4, warmup_steps=4, weight_decay=0.0))


def with_lengths(rows: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each reply's sequence length: it ends at the end-of-turn token, the last label's target
    (labels[t] is the token after ids[t], so the last labelled t plus 2)."""
    T = rows["chosen_ids"].shape[1]
    for side in ("chosen", "rejected"):
        labelled = rows[f"{side}_labels"] != IGNORE
        last = T - 1 - labelled.flip(1).float().argmax(1)
        rows[f"{side}_len"] = last + 2
    return rows


def scores(rm: RewardModel, b: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(r_chosen, r_rejected), both sides in one forward."""
    ids = torch.cat([b["chosen_ids"], b["rejected_ids"]])
    r = rm(ids, lengths=torch.cat([b["chosen_len"], b["rejected_len"]]))
    return r.chunk(2)


@torch.no_grad()
def pair_accuracy(rm: RewardModel, rows: dict[str, torch.Tensor], batch: int = 16) -> dict:
    correct, margins = [], []
    for i in range(0, len(rows["chosen_ids"]), batch):
        rc, rr = scores(rm, {k: v[i : i + batch] for k, v in rows.items()})
        correct.append(rc > rr)
        margins.append(rc - rr)
    return {"rm_accuracy": torch.cat(correct).float().mean().item(), "rm_margin": torch.cat(margins).mean().item()}


def build_reward(cfg: RewardConfig) -> Trainer:
    import ember
    from ember.peft import LoraConfig, apply_lora

    torch.manual_seed(cfg.train.seed)  # adapter init (LoRA A, heads): the same run every time
    info = init_distributed(cfg.train.device)
    train_rows, eval_rows = load_pairs(cfg)
    body, tok = ember.load(cfg.model)
    pad = tok.bos_token_id if tok.bos_token_id is not None else min(tok.eos_token_ids, default=0)
    max_len = min(cfg.max_len, body.config.max_seq_len)
    train = with_lengths(pad_pairs(encode_pairs(tok, train_rows, max_len), pad))
    held = with_lengths(pad_pairs(encode_pairs(tok, eval_rows, max_len), pad))
    if cfg.peft == "lora":
        body = apply_lora(body, LoraConfig(**dataclasses.asdict(cfg.lora)))
    rm = RewardModel(body)  # the head is new and always trains
    loader = RowLoader(train, cfg.train.batch_size, cfg.train.seed, info.rank, info.world_size)
    device = info.device

    def batches(step):
        return {k: v.to(device) for k, v in loader.batch(step).items()}

    def loss_fn(model, b):
        rc, rr = scores(model, b)
        return bradley_terry_loss(rc, rr, cfg.margin)

    run_config = {"reward": dataclasses.asdict(cfg), "model": body_config(body)}
    trainer = Trainer(rm, cfg.train, cfg.optim, loss_fn, batches, run_config,
                      eval_fn=lambda m: pair_accuracy(m, {k: v.to(device) for k, v in held.items()}),
                      info=info, save_trainable_only=cfg.peft != "none")  # fmt: skip
    trainer.tokenizer = tok
    return trainer


def body_config(body) -> dict:
    from ember.peft.lora import base_model

    return base_model(body).config.to_dict()


def load_reward_model(folder: str | Path, device: str | torch.device = "cpu") -> RewardModel:
    """A trained reward model back from an `ember reward` output folder, frozen, in eval mode:
    the base model named in config.json, plus adapter/ (LoRA runs) or the latest checkpoint's
    full weights (peft none), plus head.safetensors.

    >>> rm = load_reward_model("runs/reward")  # doctest: +SKIP
    """
    import json

    from safetensors import SafetensorError
    from safetensors.torch import load

    import ember
    from ember.peft import load_adapter
    from ember.train.checkpoint import latest_checkpoint, load_checkpoint

    folder = Path(folder)
    try:
        saved = json.loads((folder / "config.json").read_text(encoding="utf-8"))["reward"]
        name, peft = saved["model"], saved.get("peft", "lora")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{folder}: not an `ember reward` output folder (config.json: {e})") from None
    body, _ = ember.load(name)
    if peft == "lora":
        body = load_adapter(body, folder / "adapter")
    rm = RewardModel(body)
    if peft == "lora":
        try:
            head = load((folder / "head.safetensors").read_bytes())
        except (OSError, SafetensorError) as e:
            raise ValueError(f"{folder / 'head.safetensors'}: cannot read the reward head ({e})") from None
        rm.head.load_state_dict(head)
    else:  # a full fine-tune: body and head live in the checkpoint
        ckpt = latest_checkpoint(folder)
        if ckpt is None:
            raise ValueError(f"{folder}: a full fine-tuned reward model needs its checkpoints/, none found")
        rm.load_state_dict(load_checkpoint(ckpt)["model"])
    rm.requires_grad_(False)
    return rm.to(device).eval()


def main(cfg: RewardConfig) -> dict:
    from safetensors.torch import save

    from ember.peft import save_adapter

    trainer = build_reward(cfg)
    before = trainer.evaluate()
    print(f"before: {before}", file=sys.stderr)
    summary = trainer.fit()
    summary["before"] = before
    summary["after"] = {k: summary[k] for k in ("rm_accuracy", "rm_margin") if k in summary}
    out = Path(cfg.train.out)
    if trainer.info.is_main:
        rm = trainer.plain
        if cfg.peft == "lora":
            summary["adapter"] = str(save_adapter(rm.body, out / "adapter"))
        head = {k: v.detach().cpu().contiguous() for k, v in rm.head.state_dict().items()}
        atomic_write_bytes(out / "head.safetensors", save(head))
        atomic_write_json(out / "summary.json", summary)
    return summary
