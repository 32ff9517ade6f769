"""load_model: a GGUF file, an HF safetensors folder (Llama, GPT-2, BERT), or a known name → a ready Transformer.

The config is checked against the weights' shapes (read from the file headers) before
anything is built; then the model is built on the meta device (no memory, no init) and the
converted tensors are assigned into it, so a load never holds two copies of the weights.
"""

from __future__ import annotations

import os

import torch

from ember.core.registry import regular_file, resolve_model
from ember.model.config import ModelConfig
from ember.model.shapes import check_config_fits, check_state_dict
from ember.model.transformer import Transformer


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


def _starts_with(path, magic: bytes) -> bool:
    with open(regular_file(path, "model file"), "rb") as f:
        return f.read(len(magic)) == magic
