"""Loading a model for training, and writing what a post-training run leaves behind."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
import torch.nn as nn

from ember.core.io import atomic_write_json
from ember.peft.adapter import base_model


def pad_id(tok) -> int:
    """The id that fills padded positions: BOS, else the smallest EOS id, else 0. Padding is
    never attended to nor scored, so any id works; a fixed rule keeps runs reproducible."""
    return tok.bos_token_id if tok.bos_token_id is not None else min(tok.eos_token_ids, default=0)


def apply_peft(model: nn.Module, cfg) -> nn.Module:
    """cfg.peft's transform (LoRA, prompt, prefix; none: every weight trains), over an NF4 base
    when cfg.quant is "nf4" (QLoRA)."""
    from ember.peft import apply_lora, apply_nf4, apply_prefix_tuning, apply_prompt_tuning

    if cfg.quant == "nf4":
        if cfg.peft != "lora":
            raise ValueError("--quant nf4 (QLoRA) trains LoRA adapters: use it with --peft lora")
        model = apply_nf4(model)
    if cfg.peft == "lora":
        return apply_lora(model, cfg.lora)
    if cfg.peft == "prompt":
        return apply_prompt_tuning(model, cfg.n_virtual)
    if cfg.peft == "prefix":
        return apply_prefix_tuning(model, cfg.n_virtual)
    return model


def load_for_training(cfg, seed: bool = True):
    """(model, tokenizer): cfg.model loaded, with cfg's PEFT applied.

    seed: draw the adapter init (LoRA A, new heads made afterwards) from
    torch.manual_seed(cfg.train.seed), so the same config gives the same run. False leaves the
    global RNG alone, for a recipe whose caller seeds it.

    >>> model, tok = load_for_training(PostTrainConfig())  # doctest: +SKIP
    """
    import ember

    if seed:
        torch.manual_seed(cfg.train.seed)
    model, tok = ember.load(cfg.model)
    return apply_peft(model, cfg), tok


def base_config(model: nn.Module) -> dict:
    """The base Transformer's ModelConfig as a dict (through a prompt-tuning wrapper)."""
    return base_model(model).config.to_dict()


def context_len(model: nn.Module) -> int:
    """The base Transformer's max_seq_len."""
    return base_model(model).config.max_seq_len


def run_config(name: str, cfg, model: nn.Module) -> dict:
    """What the loop stores beside the run and in every checkpoint: {name: cfg, "model": ...}."""
    return {name: dataclasses.asdict(cfg), "model": base_config(model)}


def save_adapter_folder(model: nn.Module, folder: str | Path, cfg) -> Path:
    """folder/ with the adapter (adapter.safetensors, adapter_config.json) and base_model.json
    naming cfg.model, so `ember chat --adapter folder` finds the base."""
    from ember.peft import save_adapter

    folder = Path(folder)
    save_adapter(model, folder, cfg.lora if cfg.peft == "lora" else None)
    atomic_write_json(folder / "base_model.json", {"model": cfg.model})
    return folder


def load_reward_model(folder: str | Path, device: str | torch.device = "cpu"):
    """A trained reward model back from an `ember reward` output folder, frozen, in eval mode:
    the base model named in config.json, plus adapter/ (LoRA runs) or the latest checkpoint's
    full weights (peft none), plus head.safetensors.

    >>> rm = load_reward_model("runs/reward")  # doctest: +SKIP
    """
    import json

    from safetensors import SafetensorError
    from safetensors.torch import load

    import ember
    from ember.model.heads import RewardModel
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
    if peft in ("lora", "head"):  # head: a frozen body, only the head was fitted
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
