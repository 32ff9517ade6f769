"""load_model: a GGUF file, an HF safetensors folder, or a known name → a ready Transformer.

The config is checked against the weights' shapes (read from the file headers) before
anything is built; then the model is built on the meta device (no memory, no init) and the
converted tensors are assigned into it, so a load never holds two copies of the weights.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping, Sequence

import torch

from ember.core.registry import regular_file, resolve_model
from ember.model.config import ModelConfig
from ember.model.transformer import Transformer

_LAYER_KEY = re.compile(r"layers\.(\d+)\.")


def load_model(name_or_path: str | os.PathLike, dtype: torch.dtype = torch.float32, device="cpu") -> Transformer:
    """Load weights from a GGUF file or an HF folder (config.json + *.safetensors).

    >>> model = load_model("smollm2")  # doctest: +SKIP
    >>> model.config.n_layers, model.config.rope_interleaved  # doctest: +SKIP
    (30, True)
    """
    from ember.model.convert.gguf import load_gguf
    from ember.model.convert.hf import load_hf

    path = resolve_model(name_or_path)  # a regular file or a folder, never a device or FIFO
    if path.is_dir():
        if path.suffix.lower() in (".gguf", ".safetensors"):
            raise ValueError(f"{path} is a directory, not a {path.suffix[1:].upper()} file")
        if not (path / "config.json").exists():
            raise ValueError(f"{path} is a folder without config.json: not an HF model folder")
        cfg, sd = load_hf(path, dtype)
    elif path.suffix.lower() == ".gguf" or _starts_with(path, b"GGUF"):
        cfg, sd = load_gguf(path, dtype)
    else:
        raise ValueError(f"{path}: neither a GGUF file nor an HF folder with config.json")
    return build_model(cfg, sd, device)


def build_model(cfg: ModelConfig, sd: dict[str, torch.Tensor], device="cpu") -> Transformer:
    """Transformer(cfg) on the meta device, then assign `sd` after checking every key and shape.

    >>> model = build_model(ModelConfig.tiny(), Transformer(ModelConfig.tiny()).state_dict())
    """
    # Before building, even on meta: a config claiming 10**6 layers would create 10**6 modules.
    check_config_fits(cfg, {k: v.shape for k, v in sd.items()})
    with torch.device("meta"):
        model = Transformer(cfg)
    check_state_dict(model, sd)
    model.load_state_dict(sd, strict=False, assign=True)  # strict check done above (tied head aside)
    model.tie_weights()  # assign replaced the shared Parameter; share it again
    return model.to(device).eval()


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


def _starts_with(path, magic: bytes) -> bool:
    with open(regular_file(path, "model file"), "rb") as f:
        return f.read(len(magic)) == magic
