"""The adapter folder: `adapter.safetensors` (adapter tensors only) and `adapter_config.json`
(which kinds, with their settings), for every kind of adapter on a model.

>>> save_adapter(model, "out/adapter", cfg)  # doctest: +SKIP
>>> model = load_adapter(Transformer(model_cfg), "out/adapter")  # doctest: +SKIP
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn as nn

from ember.core.io import atomic_write_bytes, atomic_write_json
from ember.peft.adapter import adapter_params, base_model, named_plain_modules, peft_state_dict
from ember.peft.lora import LoraConfig, LoraLinear, apply_lora
from ember.peft.prompt import apply_prefix_tuning, apply_prompt_tuning

CONFIG_FILE, TENSORS_FILE = "adapter_config.json", "adapter.safetensors"
FORMAT = "ember-peft"
KINDS = ("lora", "prefix", "prompt")  # the order load_adapter applies them in


def adapter_config(model: nn.Module, lora: LoraConfig | None = None) -> dict:
    """The adapters of `model` as JSON: {kind: its settings}. LoRA targets are the wrapped
    layers' names unless `lora` (the config applied) is given."""
    kinds = {}
    loras = {n: m for n, m in named_plain_modules(base_model(model)) if isinstance(m, LoraLinear)}
    if loras:
        m = next(iter(loras.values()))
        if any((x.rank, x.alpha) != (m.rank, m.alpha) for x in loras.values()):
            raise ValueError("LoRA layers with different rank/alpha cannot be saved as one config")
        if lora is not None and (lora.rank, float(lora.alpha)) != (m.rank, m.alpha):
            raise ValueError(f"LoraConfig rank {lora.rank}, alpha {lora.alpha} does not match the "
                             f"model's LoRA (rank {m.rank}, alpha {m.alpha})")
        p = m.dropout.p if isinstance(m.dropout, nn.Dropout) else 0.0
        kinds["lora"] = asdict(lora) if lora is not None else asdict(LoraConfig(m.rank, m.alpha, p, list(loras)))
    prefix = adapter_params(model, "prefix")
    if prefix:
        kinds["prefix"] = {"n_prefix": next(iter(prefix.values())).shape[1]}
    if getattr(model, "kind", "") == "prompt":
        kinds["prompt"] = {"n_virtual": model.n_virtual}
    return kinds


def save_adapter(model: nn.Module, folder, cfg: LoraConfig | None = None) -> Path:
    """Write folder/adapter.safetensors (adapter tensors only) and adapter_config.json,
    atomically. Every adapter kind on the model is saved; `cfg` records the LoRA targets
    as given (else the wrapped layers' names).

    >>> save_adapter(model, "out/adapter", cfg)  # doctest: +SKIP
    """
    from safetensors.torch import save

    kinds = adapter_config(model, cfg)
    if not kinds:
        raise ValueError("the model has no adapters to save (apply_lora / apply_prefix_tuning / ...)")
    folder = Path(folder)
    tensors = {k: t.contiguous() for k, t in peft_state_dict(model).items()}
    atomic_write_bytes(folder / TENSORS_FILE, save(tensors, metadata={"format": FORMAT}))
    atomic_write_json(folder / CONFIG_FILE, {"format": FORMAT, "version": 1, "adapters": kinds})
    return folder


def load_adapter(model: nn.Module, folder) -> nn.Module:
    """Apply the folder's adapters where the model lacks them, check every key and shape
    against the model, and copy the tensors in. Returns the model (a PromptTuned wrapper
    when the folder holds prompt tuning).

    >>> model = load_adapter(Transformer(cfg), "out/adapter")  # doctest: +SKIP
    """
    from safetensors import SafetensorError
    from safetensors.torch import load

    folder = Path(folder)
    for f in (CONFIG_FILE, TENSORS_FILE):
        if not (folder / f).is_file():
            raise ValueError(f"{folder}: no {f} (not an adapter folder)")
    try:
        meta = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        meta = None
    kinds = meta.get("adapters") if isinstance(meta, dict) and meta.get("format") == FORMAT else None
    if not isinstance(kinds, dict):
        raise ValueError(f"{folder / CONFIG_FILE}: not an {FORMAT} adapter config")
    if set(kinds) - set(KINDS):
        raise ValueError(f"{folder}: unknown adapter kinds {sorted(set(kinds) - set(KINDS))}; known {KINDS}")
    try:
        tensors = load((folder / TENSORS_FILE).read_bytes())
    except SafetensorError as e:
        raise ValueError(f"{folder / TENSORS_FILE}: corrupt safetensors file ({e})") from None

    if any(getattr(m, "merged", False) for m in model.modules()):
        raise ValueError("the model's LoRA is merged into its weights; unmerge() before loading")
    have = adapter_config(model)
    if set(have) - set(kinds):
        raise ValueError(f"the model has {sorted(set(have) - set(kinds))} adapters the folder lacks")
    if "lora" in kinds:
        try:
            cfg = LoraConfig(**kinds["lora"])
        except TypeError as e:
            raise ValueError(f"{folder / CONFIG_FILE}: bad lora settings ({e})") from None
        if "lora" not in have:
            model = apply_lora(model, cfg)
        elif (have["lora"]["rank"], have["lora"]["alpha"]) != (cfg.rank, float(cfg.alpha)):
            raise ValueError(f"the model's LoRA has rank {have['lora']['rank']}, alpha "
                             f"{have['lora']['alpha']}; the folder's rank {cfg.rank}, "
                             f"alpha {cfg.alpha}")
    if "prefix" in kinds and "prefix" not in have:
        model = apply_prefix_tuning(model, int(kinds["prefix"]["n_prefix"]))
    if "prompt" in kinds and "prompt" not in have:
        model = apply_prompt_tuning(model, int(kinds["prompt"]["n_virtual"]))

    params = adapter_params(model)
    missing, unexpected = sorted(set(params) - set(tensors)), sorted(set(tensors) - set(params))
    if missing or unexpected:
        raise ValueError(f"{folder / TENSORS_FILE} does not fit the model: missing {missing[:5]}"
                         f"{' ...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
                         f"{' ...' if len(unexpected) > 5 else ''}")
    for k, p in params.items():
        if tensors[k].shape != p.shape:
            raise ValueError(f"{k}: shape {tuple(tensors[k].shape)} in the file, {tuple(p.shape)} in the model")
    with torch.no_grad():
        for k, p in params.items():
            p.copy_(tensors[k])
    return model
