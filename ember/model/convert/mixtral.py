"""Mixtral-style HF checkpoints (model_type "mixtral") ↔ ember: a Llama body whose MLPs are
MoE blocks. Only the MoE keys are translated here; `hf.py` converts the rest with its Llama
table. On disk (save_pretrained) each expert is stored apart, in Meta's names:

    model.layers.{L}.block_sparse_moe.gate.weight          → layers.{L}.feed_forward.router.weight
    model.layers.{L}.block_sparse_moe.experts.{E}.w{1,2,3}.weight
                                                          → layers.{L}.feed_forward.experts.{E}.w{1,2,3}.weight

Mixtral routes by softmax → top-k → renormalize (also at top_k 1), dropless.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable

import torch

from ember.model.config import ModelConfig, MoEConfig

_HF_MOE = re.compile(r"^model\.layers\.(\d+)\.block_sparse_moe\.(gate|experts\.(\d+)\.(w[123]))\.weight$")
_EMBER_MOE = re.compile(r"^layers\.(\d+)\.feed_forward\.(router|experts\.(\d+)\.(w[123]))\.weight$")


def mixtral_config(llama: ModelConfig, get) -> ModelConfig:
    """The Llama fields of a Mixtral config.json (already read) plus its MoE and window keys.
    `get(key, kind, default)` reads config.json checked (see hf._get)."""
    moe = MoEConfig(
        n_experts=get("num_local_experts", "positive int"), top_k=get("num_experts_per_tok", "positive int", 2),
        aux_loss_coef=float(get("router_aux_loss_coef", "positive number", 0.001)), z_loss_coef=0.0, renormalize=True,
    )
    return dataclasses.replace(llama, moe=moe, sliding_window=get("sliding_window", "positive int", None))


def mixtral_config_to_hf(llama: dict, cfg: ModelConfig) -> dict:
    """config_to_hf's Llama dict → Mixtral's (MoE fields, the window)."""
    m = cfg.moe
    if not m.renormalize:
        raise ValueError("HF Mixtral renormalizes the top-k router weights; moe.renormalize=False has no HF form")
    if cfg.n_sink_tokens:
        raise ValueError(f"HF Mixtral has no attention sinks (n_sink_tokens {cfg.n_sink_tokens})")
    drop = ("mlp_bias", "head_dim")
    return {
        **{k: v for k, v in llama.items() if k not in drop}, "architectures": ["MixtralForCausalLM"],
        "model_type": "mixtral", "num_local_experts": m.n_experts, "num_experts_per_tok": m.top_k,
        "router_aux_loss_coef": m.aux_loss_coef, "sliding_window": cfg.sliding_window,
        "output_router_logits": False,
    }


def moe_from_hf(items: Iterable[tuple[str, torch.Tensor]]) -> tuple[dict[str, torch.Tensor], list]:
    """HF (key, tensor) pairs → (ember MoE tensors, the other pairs, for the Llama table).

    >>> moe, rest = moe_from_hf([("model.layers.0.block_sparse_moe.experts.1.w2.weight", torch.ones(1)),
    ...                          ("model.norm.weight", torch.ones(1))])
    >>> list(moe), [k for k, _ in rest]
    (['layers.0.feed_forward.experts.1.w2.weight'], ['model.norm.weight'])
    """
    moe, rest = {}, []
    for key, t in items:
        m = _HF_MOE.match(key)
        if m is None:
            rest.append((key, t))
            continue
        layer, part = m.group(1), m.group(2)
        name = "router" if part == "gate" else f"experts.{m.group(3)}.{m.group(4)}"
        moe[f"layers.{layer}.feed_forward.{name}.weight"] = t.contiguous()
    return moe, rest


def moe_to_hf(sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """ember state dict → (HF MoE tensors, the other ember tensors, for the Llama table).

    >>> hf, rest = moe_to_hf({"layers.2.feed_forward.router.weight": torch.ones(1), "norm.weight": torch.ones(1)})
    >>> list(hf), list(rest)
    (['model.layers.2.block_sparse_moe.gate.weight'], ['norm.weight'])
    """
    hf, rest = {}, {}
    for key, t in sd.items():
        m = _EMBER_MOE.match(key)
        if m is None:
            rest[key] = t
            continue
        layer, part = m.group(1), m.group(2)
        name = "gate" if part == "router" else f"experts.{m.group(3)}.{m.group(4)}"
        hf[f"model.layers.{layer}.block_sparse_moe.{name}.weight"] = t.contiguous()
    return hf, rest
