"""Weight-only quantization: int4 (group-wise) and int8 (per channel) linears, applied to a
built model as a transform, with exact import of GGUF Q4_0/Q4_1 blocks.

>>> import torch.nn as nn
>>> from ember.quant import QuantConfig, apply_quant
>>> model = apply_quant(nn.Sequential(nn.Linear(64, 64)), QuantConfig(mode="int8"))
>>> type(model[0]).__name__
'Int8Linear'
"""

from ember.quant.apply import QuantConfig, apply_quant, apply_quant_from_gguf, quant_summary
from ember.quant.fuse import FusedAttention, FusedFeedForward, apply_fused_projections, fuse_linears
from ember.quant.int4 import Int4Linear, dequantize_q4_0, dequantize_q4_1, quantize_int4
from ember.quant.int8 import Int8Embedding, Int8Linear, dequantize_q8_0, quantize_int8

__all__ = [
    "FusedAttention",
    "FusedFeedForward",
    "Int4Linear",
    "Int8Embedding",
    "Int8Linear",
    "QuantConfig",
    "apply_fused_projections",
    "fuse_linears",
    "apply_quant",
    "apply_quant_from_gguf",
    "dequantize_q4_0",
    "dequantize_q4_1",
    "dequantize_q8_0",
    "quant_summary",
    "quantize_int4",
    "quantize_int8",
]
