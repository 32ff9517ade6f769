"""Shape checks: does a config describe these weights? Run on shapes alone (file headers or
a state dict) by the loader and by the converters, before any model is built, and naming
every missing, unexpected or mis-shaped tensor."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence

import torch

from ember.model.config import ModelConfig
from ember.model.transformer import Transformer

_LAYER_KEY = re.compile(r"layers\.(\d+)\.")


def expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """ember key → shape that Transformer(cfg) holds, found without building all its layers.

    One layer is built on the meta device and its keys repeated, so the cost does not grow
    with n_layers (a config claiming a million layers is answered at once).

    >>> expected_shapes(ModelConfig.tiny())["layers.1.attention.wk.weight"]
    (32, 64)
    """
    with torch.device("meta"):
        one = Transformer(dataclasses.replace(cfg, n_layers=1))
    out = {}
    for key, t in one.state_dict().items():
        if key.startswith("layers.0."):
            rest = key.removeprefix("layers.0.")
            out.update({f"layers.{i}.{rest}": tuple(t.shape) for i in range(cfg.n_layers)})
        else:
            out[key] = tuple(t.shape)
    if cfg.tie_embeddings:
        out.pop("output.weight")  # the head is the embedding; weights need not repeat it
    return out


def check_config_fits(
    cfg: ModelConfig,
    shapes: Mapping[str, Sequence[int]],
    config_name: str = "the config",
    weights_name: str = "the weights",
) -> None:
    """Raise a ValueError when `cfg` does not describe `shapes` (ember key → shape).

    Runs on shapes alone (file headers, or a state dict), before any model is built, so a
    config whose sizes the weights do not hold fails at once instead of allocating them.

    >>> check_config_fits(ModelConfig.tiny(n_layers=9), {"layers.0.ffn_norm.weight": (64,)})
    Traceback (most recent call last):
    ...
    ValueError: the config says n_layers=9 but there are 1 layers in the weights
    """
    layers = sorted({int(m.group(1)) for k in shapes if (m := _LAYER_KEY.match(k))})
    if layers != list(range(cfg.n_layers)):
        held = f"{len(layers)} layers"
        if layers != list(range(len(layers))):
            shown = layers if len(layers) <= 8 else [*layers[:6], "...", layers[-1]]
            held += f" (numbered {', '.join(map(str, shown))})"
        raise ValueError(f"{config_name} says n_layers={cfg.n_layers} but there are {held} in {weights_name}")
    emb = shapes.get("tok_embeddings.weight")
    if emb is not None and tuple(emb) != (cfg.vocab_size, cfg.d_model):
        raise ValueError(
            f"{config_name} says vocab_size={cfg.vocab_size}, d_model={cfg.d_model} but the token "
            f"embedding in {weights_name} has shape {tuple(emb)}"
        )
    got = {k: tuple(v) for k, v in shapes.items() if not (cfg.tie_embeddings and k == "output.weight")}
    problems = _differences(expected_shapes(cfg), got)
    if problems:
        raise ValueError(f"the tensors in {weights_name} do not fit {config_name}: {problems}")


def check_state_dict(model: Transformer, sd: dict[str, torch.Tensor]) -> None:
    """Raise a ValueError naming every missing, unexpected or mis-shaped tensor."""
    tied = model.config.tie_embeddings
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if tied:
        expected.pop("output.weight")  # the head is the embedding; a state dict need not repeat it
    problems = _differences(expected, {k: tuple(v.shape) for k, v in sd.items() if not (tied and k == "output.weight")})
    if problems:
        raise ValueError("weights do not fit the model config: " + problems)


def _differences(expected: dict[str, tuple], got: dict[str, tuple]) -> str:
    """Missing, unexpected and mis-shaped keys, in words ("" when none)."""
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    shapes = [f"{k}: {got[k]} (expected {expected[k]})" for k in sorted(set(got) & set(expected)) if got[k] != expected[k]]
    problems = [f"missing {_few(missing)}"] * bool(missing) + [f"unexpected {_few(unexpected)}"] * bool(unexpected)
    problems += [f"wrong shapes: {'; '.join(_few(shapes))}"] * bool(shapes)
    return ", ".join(problems)


def _few(items: list[str], limit: int = 20) -> list[str]:
    """At most `limit` items (a header may list thousands of keys), then how many more."""
    return items[:limit] + [f"... {len(items) - limit} more"] * (len(items) > limit)
