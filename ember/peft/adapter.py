"""What every kind of adapter (LoRA, prefix, prompt) shares: the `Adapter` base class, the
frozen base, the adapter tensors by name, and `adapters_disabled`.

Adapters are named relative to the plain Transformer, whatever wraps what: a wrapper
holds the module it wraps as `base`, and that hop is left out of names, so
"layers.0.attention.wq.lora_A" names the same tensor with or without a prefix-tuning
wrapper around the attention (and adapter files do not depend on the order of transforms).

>>> from ember.model import ModelConfig, Transformer
>>> peft_parameters(Transformer(ModelConfig.tiny()))
[]
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn as nn


class Adapter(nn.Module):
    """Base of every PEFT module. Its own (non-recursive) parameters are the adapter's
    tensors; `disabled = True` makes it act as if it were not there. A wrapper holds the
    module it wraps as `base` (a hop that adapter names leave out)."""

    kind = ""
    disabled = False


def named_plain_modules(model: nn.Module, prefix: str = "") -> Iterator[tuple[str, nn.Module]]:
    """(name, module) like named_modules(), but the `base` hop of each Adapter wrapper is
    left out of the names: "layers.0.attention.wq", not "layers.0.attention.base.wq"."""
    for _, plain, module in _walk(model, prefix):
        yield plain, module


def plain_names(model: nn.Module) -> dict[str, str]:
    """Qualified name (as named_modules gives it) → the name without wrappers' `base` hops."""
    return {real: plain for real, plain, _ in _walk(model, "")}


def _walk(model: nn.Module, prefix: str):
    """(real name, plain name, module) for every module once, parents first."""
    seen: set[int] = set()

    def walk(module: nn.Module, real: str, plain: str):
        if id(module) in seen:
            return
        seen.add(id(module))
        yield real, plain, module
        for name, child in module.named_children():
            hop = isinstance(module, Adapter) and name == "base"
            yield from walk(child, f"{real}.{name}" if real else name,
                            plain if hop else f"{plain}.{name}" if plain else name)

    yield from walk(model, prefix, prefix)


def base_model(model: nn.Module) -> nn.Module:
    """The Transformer inside a prompt-tuning wrapper (PromptTuned), or `model` itself."""
    return model.model if getattr(model, "kind", "") == "prompt" else model


def freeze_base(model: nn.Module) -> None:
    """requires_grad False for every parameter that is not an adapter's."""
    keep = {id(p) for p in peft_parameters(model)}
    for p in model.parameters():
        p.requires_grad_(id(p) in keep)


def adapter_params(model: nn.Module, kind: str | None = None) -> dict[str, nn.Parameter]:
    """name → parameter of every adapter (of `kind`), named relative to the base Transformer
    (so an adapter file does not depend on whether the model is wrapped); the prompt-tuning
    wrapper's own tensors are "prompt.<name>"."""
    out = {}
    if getattr(model, "kind", "") == "prompt" and kind in (None, "prompt"):
        out.update({f"prompt.{n}": p for n, p in model.named_parameters(recurse=False)})
    for mname, m in named_plain_modules(base_model(model)):
        if isinstance(m, Adapter) and kind in (None, m.kind):
            out.update({f"{mname}.{n}": p for n, p in m.named_parameters(recurse=False)})
    return out


def peft_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Every adapter parameter (LoRA, prefix, prompt): what to hand the optimizer."""
    return list(adapter_params(model).values())


def peft_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Adapter tensors only, detached: e.g. {"layers.0.attention.wq.lora_A": ..., ...}."""
    return {k: p.detach() for k, p in adapter_params(model).items()}


@contextmanager
def adapters_disabled(model: nn.Module):
    """Inside, the model computes the base model's outputs (every adapter switched off).

    The reference model of DPO is the policy with its adapters disabled, with no second copy.

    >>> from ember.model import ModelConfig, Transformer
    >>> from ember.peft import LoraConfig, apply_lora
    >>> m = apply_lora(Transformer(ModelConfig.tiny()), LoraConfig(rank=2))
    >>> with adapters_disabled(m):
    ...     ref = m(torch.zeros(1, 3, dtype=torch.long))
    """
    mods = [m for m in model.modules() if isinstance(m, Adapter)]
    before = [m.disabled for m in mods]
    for m in mods:
        m.disabled = True
    try:
        yield model
    finally:
        for m, b in zip(mods, before, strict=True):
            m.disabled = b
