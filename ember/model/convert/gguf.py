"""GGUF files (llama.cpp) → ember, for the `llama` and `gpt2` architectures.

RoPE layout: llama.cpp's converter permutes the rows of attn_q/attn_k so that RoPE rotates
adjacent pairs. We keep the rows as stored and set `rope_interleaved=True`, so every ember
weight is exactly the GGUF tensor: a later quantization step can map the raw Q4_1/Q8_0
blocks (`gguf_raw_tensors`) one-to-one onto its kernels, with no permutation to redo.
Saving such a model to HF (`convert.hf.to_hf`) undoes the permutation.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np
import torch

from ember.core.gguf import gguf_field, open_gguf
from ember.model.config import ModelConfig
from ember.model.convert import fill, split_layer, unknown_keys_error
from ember.model.gguf_config import config_from_gguf
from ember.model.shapes import check_config_fits

LLAMA_KEYS: dict[str, str | tuple[str, ...]] = {
    "token_embd.weight": "tok_embeddings.weight",
    "blk.{}.attn_norm.weight": "layers.{}.attention_norm.weight",
    **{f"blk.{{}}.{g}.{s}": f"layers.{{}}.{e}.{s}" for g, e in (
        ("attn_q", "attention.wq"), ("attn_k", "attention.wk"), ("attn_v", "attention.wv"),
        ("attn_output", "attention.wo"), ("ffn_gate", "feed_forward.w1"),
        ("ffn_down", "feed_forward.w2"), ("ffn_up", "feed_forward.w3"),
    ) for s in ("weight", "bias")},
    "blk.{}.ffn_norm.weight": "layers.{}.ffn_norm.weight",
    "output_norm.weight": "norm.weight",
    "output.weight": "output.weight",
}

GPT2_KEYS: dict[str, str | tuple[str, ...]] = {
    "token_embd.weight": "tok_embeddings.weight",
    "position_embd.weight": "pos_embeddings.weight",
    **{f"blk.{{}}.{g}.{s}": f"layers.{{}}.{e}.{s}" for g, e in (
        ("attn_norm", "attention_norm"), ("attn_output", "attention.wo"), ("ffn_norm", "ffn_norm"),
        ("ffn_up", "feed_forward.w1"), ("ffn_down", "feed_forward.w2"),
    ) for s in ("weight", "bias")},
    # one fused (3D, D) matrix → wq, wk, wv (GGUF already stores GPT-2 in nn.Linear layout)
    **{f"blk.{{}}.attn_qkv.{s}": tuple(f"layers.{{}}.attention.{w}.{s}" for w in ("wq", "wk", "wv"))
       for s in ("weight", "bias")},
    "output_norm.weight": "norm.weight",
    "output_norm.bias": "norm.bias",
    "output.weight": "output.weight",
}

TABLES = {"llama": LLAMA_KEYS, "gpt2": GPT2_KEYS}


class GGUFTensor(NamedTuple):
    """One tensor as stored: `data` is the reader's memory-mapped array (uint8 blocks, shape
    (rows, bytes per row), for quantized types; float32/float16 values for float types)."""

    type: object  # gguf.GGMLQuantizationType, e.g. Q4_1
    data: np.ndarray
    shape: tuple[int, ...]  # logical shape in torch order, e.g. (out_features, in_features)


# ---- weights --------------------------------------------------------------------------------


def gguf_raw_tensors(reader, arch: str) -> dict[str, GGUFTensor]:
    """ember key → GGUFTensor, blocks untouched (no dequantization, no copy: memory-mapped).

    Fused GPT-2 attn_qkv is split by rows, which keeps quantized blocks whole (blocks run
    along a row). The output head of a tied model is absent: it is tok_embeddings.

    >>> raw = gguf_raw_tensors(open_gguf(resolve_model("smollm2")), "llama")  # doctest: +SKIP
    >>> raw["layers.0.attention.wq.weight"].type.name, raw["layers.0.attention.wq.weight"].shape  # doctest: +SKIP
    ('Q4_1', (576, 576))
    """
    table = TABLES[arch]
    out, unknown = {}, []
    for t in reader.tensors:
        tmpl, layer = split_layer(t.name)
        if tmpl not in table:
            unknown.append(t.name)
            continue
        shape = tuple(int(n) for n in reversed(t.shape))  # GGUF lists dims fastest-first
        data = t.data.reshape(shape[0], -1) if len(shape) == 2 else t.data
        dst = table[tmpl]
        if isinstance(dst, tuple):
            rows = shape[0] // len(dst)
            for i, name in enumerate(dst):
                out[fill(name, layer)] = GGUFTensor(t.tensor_type, data[i * rows : (i + 1) * rows], (rows, *shape[1:]))
        else:
            out[fill(dst, layer)] = GGUFTensor(t.tensor_type, data, shape)
    if unknown:
        raise unknown_keys_error(f"GGUF {arch}", unknown, table)
    return out


def dequantize(t: GGUFTensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """One GGUFTensor → a torch tensor of its logical shape, via `gguf.quants.dequantize`
    (every type it implements: F32, F16, BF16, Q4_0/1, Q5_0/1, Q8_0, K-quants, IQ types...)."""
    from gguf.quants import dequantize as gguf_dequantize

    try:
        values = gguf_dequantize(t.data, t.type)  # float32 numpy
    except NotImplementedError:
        raise ValueError(f"GGUF tensor type {t.type.name} cannot be dequantized") from None
    values = np.asarray(values, dtype=np.float32).reshape(t.shape)
    if not values.flags.writeable:  # F32 comes back as a view of the read-only file map: copy
        values = values.copy()
    return torch.from_numpy(values).to(dtype)


def load_gguf(path: str | os.PathLike, dtype: torch.dtype = torch.float32) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """A GGUF file → (ModelConfig, dequantized ember state dict in `dtype`).

    >>> cfg, sd = load_gguf(resolve_model("smollm2"))  # doctest: +SKIP
    >>> cfg.n_layers, sd["norm.weight"].shape  # doctest: +SKIP
    (30, torch.Size([576]))
    """
    reader = open_gguf(path)
    cfg = config_from_gguf(reader)
    raw = gguf_raw_tensors(reader, gguf_field(reader, "general.architecture"))
    # Shapes come from the header: a config claiming more than the file holds fails here,
    # before any tensor is dequantized or any model built.
    shapes = {name: t.shape for name, t in raw.items()}
    check_config_fits(cfg, shapes, config_name=f"the metadata of {path}", weights_name="its tensors")
    return cfg, {name: dequantize(t, dtype) for name, t in raw.items()}
