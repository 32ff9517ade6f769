"""apply_quant: swap a built model's nn.Linear modules for weight-only int4/int8 ones (gpt-fast style).

The model knows nothing of this: any nn.Module works, modules are found by type and named
by their qualified name (`layers.3.attention.wq`). The output head of a tied model loses
its tie (the embedding keeps its float weight for lookups; the head gets its own
quantized copy), which is what we want: the head is read every token, the embedding not.

The LM head defaults to int8 per channel even in int4 mode (`head_mode="int8"`). Measured
on SmolLM2-135M (384 tokens of pydoc text, Q4_1 blocks kept exact, vs the fp32 model on
the dequantized GGUF): head int4 g32 → NLL +0.083 (perplexity +8.7 %), mean KL 0.064,
top-1 agreement 83.9 %; head int8 → NLL +0.002, KL 0.0024, top-1 97.4 %; head left
float → NLL +0.002, KL 0.0003, top-1 99.5 %. On the weights alone (the tied Q8_0
token_embd) int4 g32 is 9.0 % relative RMS error, int8 per channel 1.2 %. The price: the
49152×576 head takes 3.3 ms as int8 vs 1.5 ms as int4 per token with cold weights (2.0 vs
1.5 ms hot; 2 threads, bench/quant_matmul.py) — ~20 % of a 134 tok/s step, paid for
llama.cpp-level quality (it keeps the head Q8_0 too). So a GGUF Q8_0 head is dequantized and re-quantized to int8 per
channel; `head_mode="int4"` gives the fastest, lossier head.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn as nn

from ember.quant.int4 import Int4Linear, dequantize_q4_0, dequantize_q4_1, int4_unsupported
from ember.quant.int8 import Int8Embedding, Int8Linear, dequantize_q8_0, int8_unsupported

MODES = ("int4", "int8")
OUTPUT_NAME = "output"  # Meta naming: the LM head


@dataclass
class QuantConfig:
    """What apply_quant does.

    mode: "int4" (group-wise, asymmetric) or "int8" (per channel, symmetric).
    group_size: int4 group along the input dim (32, 64, 128 or 256).
    include_output: quantize the LM head `output` too (the biggest single matrix).
    head_mode: mode for `output` alone (int8 by default: int4 costs SmolLM2 +8.7 % perplexity,
        see the module docstring); None = `mode`.
    skip: fnmatch patterns of module names left in float, e.g. ("layers.0.*",).
    compute_dtype: the matmul input dtype (bf16 is fast; fp32 is exact but 15–50× slower).
    tie_embedding: with tied embeddings and an int8 head, look tokens up in the head's int8
        table (Int8Embedding) rather than keep a float copy.

    >>> QuantConfig(mode="int4", group_size=32).mode
    'int4'
    """

    mode: str = "int4"
    group_size: int = 32
    include_output: bool = True
    head_mode: str | None = "int8"
    skip: tuple[str, ...] = ()
    compute_dtype: torch.dtype = torch.bfloat16
    tie_embedding: bool = True

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"quant mode {self.mode!r} is not one of {MODES}")
        if self.head_mode is not None and self.head_mode not in MODES:
            raise ValueError(f"quant head_mode {self.head_mode!r} is not one of {MODES} or None")
        if self.group_size not in (32, 64, 128, 256):
            raise ValueError(f"quant group_size {self.group_size} is not one of (32, 64, 128, 256)")
        if isinstance(self.skip, str):
            self.skip = (self.skip,)
        self.skip = tuple(self.skip)


def _targets(model: nn.Module, cfg: QuantConfig):
    """(qualified name, nn.Linear, mode) for every Linear the config selects.

    Names are listed first and each module fetched only when its turn comes, so a caller
    that replaces modules as it goes lets each float weight go before the next is made
    (the load's peak memory holds one float matrix, not all of them)."""
    picked = []
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.Linear):
            continue
        if any(fnmatch.fnmatchcase(name, p) for p in cfg.skip):
            continue
        is_head = name == OUTPUT_NAME
        if is_head and not cfg.include_output:
            continue
        picked.append((name, (cfg.head_mode or cfg.mode) if is_head else cfg.mode))
    for name, mode in picked:
        yield name, model.get_submodule(name), mode


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)


def _quantize_weight(weight, bias, mode: str, cfg: QuantConfig) -> nn.Module | None:
    """Int4/Int8 module for a float weight; int4 falls back to int8 for shapes its kernel
    refuses (e.g. GPT-2's 50257-row head); None when neither kernel takes the shape."""
    N, K = weight.shape
    if mode == "int4" and int4_unsupported(N, K, cfg.group_size) is None:
        mod = Int4Linear.from_float(weight, cfg.group_size, cfg.compute_dtype)
    elif int8_unsupported(N, K) is None:
        mod = Int8Linear.from_float(weight, compute_dtype=cfg.compute_dtype)
    else:
        return None
    if bias is not None:
        mod.bias = nn.Parameter(bias.detach().float().clone())
    return mod


@torch.no_grad()
def apply_quant(model: nn.Module, cfg: QuantConfig | None = None) -> nn.Module:
    """Replace the selected nn.Linear modules of `model` in place by Int4Linear/Int8Linear.

    >>> m = apply_quant(nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32)))  # no `output`
    >>> type(m[0]).__name__, type(m[2]).__name__
    ('Int4Linear', 'Int4Linear')
    """
    cfg = cfg or QuantConfig()
    for name, lin, mode in _targets(model, cfg):
        new = _quantize_weight(lin.weight, lin.bias, mode, cfg)
        if new is not None:
            _set_module(model, name, new)
    return _tie_int8_embedding(model, cfg)


@torch.no_grad()
def apply_quant_from_gguf(
    model: nn.Module, raw_tensors: Mapping[str, tuple], cfg: QuantConfig | None = None
) -> nn.Module:
    """apply_quant, but int4 targets whose GGUF tensor is Q4_1 (or Q4_0) take the file's
    codes exactly instead of re-quantizing; everything else is quantized from the model's
    float weight (Q8_0 included: see the module docstring).

    raw_tensors maps ember keys ("layers.0.attention.wq.weight") to (ggml type, raw block
    bytes, torch-order shape), as `ember.model.convert.gguf.gguf_raw_tensors` returns. A
    tied head with no "output.weight" uses "tok_embeddings.weight". Each raw tensor is
    checked against the model's current weight (it must be its dequantization): a model
    loaded from another file, or with permuted rows, is a ValueError.

    >>> from ember.model.convert.gguf import gguf_raw_tensors  # doctest: +SKIP
    >>> raw = gguf_raw_tensors(open_gguf(path), "llama")  # doctest: +SKIP
    >>> model = apply_quant_from_gguf(load_model(path), raw)  # doctest: +SKIP
    """
    from gguf import GGMLQuantizationType as GT

    cfg = cfg or QuantConfig()
    for name, lin, mode in _targets(model, cfg):
        key = f"{name}.weight"
        if key not in raw_tensors and name == OUTPUT_NAME:
            key = "tok_embeddings.weight"
        entry = raw_tensors.get(key)
        gtype = GT(int(entry[0])) if entry is not None else None
        exact = mode == "int4" and gtype in (GT.Q4_1, GT.Q4_0)
        if not exact:
            new = _quantize_weight(lin.weight, lin.bias, mode, cfg)
        else:
            _, data, shape = entry
            _check_matches(key, data, shape, gtype, lin.weight)
            build = Int4Linear.from_q4_1 if gtype == GT.Q4_1 else Int4Linear.from_q4_0
            new = build(data, lin.weight.shape, lin.bias, cfg.compute_dtype)
        if new is not None:
            _set_module(model, name, new)
    return _tie_int8_embedding(model, cfg)


def _tie_int8_embedding(model: nn.Module, cfg: QuantConfig) -> nn.Module:
    """A tied model whose head became int8 looks its tokens up in that same int8 table,
    instead of keeping a float copy of it (SmolLM2: 28 MB instead of 113 MB in fp32)."""
    head, emb = getattr(model, OUTPUT_NAME, None), getattr(model, "tok_embeddings", None)
    tied = getattr(getattr(model, "config", None), "tie_embeddings", False)
    if cfg.tie_embedding and tied and isinstance(head, Int8Linear) and isinstance(emb, nn.Embedding):
        model.tok_embeddings = Int8Embedding.tied_to(head, out_dtype=emb.weight.dtype)
    return model


def _check_matches(key, data, shape, gtype, weight: torch.Tensor) -> None:
    """The raw blocks must dequantize to the model's weight (up to the model's dtype)."""
    if tuple(int(s) for s in shape) != tuple(weight.shape):
        raise ValueError(
            f"GGUF tensor {key}: shape {tuple(shape)} but the model has {tuple(weight.shape)}"
        )
    ref = (dequantize_q4_1 if gtype.name == "Q4_1" else dequantize_q4_0)(data, weight.shape)
    # One pass, one scalar: the model may hold the weight in bf16/fp16, so allow a few ulps
    # of its dtype at the matrix's scale (a foreign or row-permuted weight is off by ~|w|).
    err = (weight.detach().float() - ref).abs_().max().item()
    if err > 4 * torch.finfo(weight.dtype).eps * ref.abs().max().item():
        raise ValueError(
            f"GGUF tensor {key} ({gtype.name}) does not match the model's weight (max |diff| {err:.3g}): "
            "was the model loaded from this file, with rows as stored (rope_interleaved=True)?"
        )


def quant_summary(model: nn.Module) -> dict[str, int]:
    """Count of modules per kind, e.g. {'Int4Linear': 211, 'Linear': 0} (for logs and tests)."""
    kinds = {"Int4Linear": 0, "Int8Linear": 0, "Linear": 0}
    for mod in model.modules():
        kind = type(mod).__name__
        if kind in kinds:
            kinds[kind] += 1
    return kinds


__all__ = [
    "QuantConfig",
    "apply_quant",
    "apply_quant_from_gguf",
    "dequantize_q8_0",
    "quant_summary",
]
