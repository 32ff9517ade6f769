"""load_model: a GGUF file, an HF safetensors folder, or a known name → a ready Transformer.

The model is built on the meta device (no memory, no init) and the converted tensors are
assigned into it, so a load never holds two copies of the weights.
"""

from __future__ import annotations

import os

import torch

from ember.core.registry import resolve_model
from ember.model.config import ModelConfig
from ember.model.transformer import Transformer


def load_model(name_or_path: str | os.PathLike, dtype: torch.dtype = torch.float32, device="cpu") -> Transformer:
    """Load weights from a GGUF file or an HF folder (config.json + *.safetensors).

    >>> model = load_model("smollm2")  # doctest: +SKIP
    >>> model.config.n_layers, model.config.rope_interleaved  # doctest: +SKIP
    (30, True)
    """
    from ember.model.convert.gguf import load_gguf
    from ember.model.convert.hf import load_hf

    path = resolve_model(name_or_path)
    if path.is_dir():
        if not (path / "config.json").is_file():
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
    with torch.device("meta"):
        model = Transformer(cfg)
    check_state_dict(model, sd)
    model.load_state_dict(sd, strict=False, assign=True)  # strict check done above (tied head aside)
    model.tie_weights()  # assign replaced the shared Parameter; share it again
    return model.to(device).eval()


def check_state_dict(model: Transformer, sd: dict[str, torch.Tensor]) -> None:
    """Raise a ValueError naming every missing, unexpected or mis-shaped tensor."""
    expected = {k: v.shape for k, v in model.state_dict().items()}
    if model.config.tie_embeddings:
        expected.pop("output.weight")  # the head is the embedding; a state dict need not repeat it
        sd = {k: v for k, v in sd.items() if k != "output.weight"}
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    shapes = [
        f"{k}: {tuple(sd[k].shape)} (expected {tuple(expected[k])})"
        for k in sorted(set(sd) & set(expected))
        if sd[k].shape != expected[k]
    ]
    problems = [f"missing {missing}"] * bool(missing) + [f"unexpected {unexpected}"] * bool(unexpected)
    problems += [f"wrong shapes: {'; '.join(shapes)}"] * bool(shapes)
    if problems:
        raise ValueError("weights do not fit the model config: " + ", ".join(problems))


def _starts_with(path, magic: bytes) -> bool:
    with open(path, "rb") as f:
        return f.read(len(magic)) == magic
