"""Int8Linear: per-channel symmetric int8 on _weight_int8pack_mm, and GGUF Q8_0 import.

Tolerances: codes are round-to-nearest, so |W_hat - W| ≤ scale/2 per weight; outputs with
bf16 inputs agree with F.linear on the dequantized weight to ≤ 1 % relative RMS.
"""

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from gguf import GGMLQuantizationType as GT
from gguf.quants import dequantize, quantize
from quant_helpers import rel

from ember.quant.int8 import Int8Linear, dequantize_q8_0, quantize_int8


def test_rtn_within_half_a_step():
    W = torch.randn(40, 64, generator=torch.Generator().manual_seed(0))
    q, s = quantize_int8(W, torch.float32)
    assert ((q.float() * s[:, None] - W).abs() <= s[:, None] / 2 + 1e-7).all()
    assert q.abs().max() == 127


def test_linear_matches_float_reference():
    g = torch.Generator().manual_seed(1)
    lin = nn.Linear(128, 40, bias=True)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(40, 128, generator=g) * 0.05)
    q = Int8Linear.from_float(lin)
    x = torch.randn(2, 5, 128, generator=g)
    y = q(x)
    assert y.shape == (2, 5, 40) and y.dtype == torch.float32
    assert rel(y, F.linear(x.bfloat16().float(), q.dequantize(), lin.bias)) < 1e-2
    assert rel(y, lin(x)) < 2e-2


def test_fp32_compute_is_exact_on_its_weight():
    q = Int8Linear.from_float(torch.randn(16, 32), compute_dtype=torch.float32)
    x = torch.randn(3, 32)
    torch.testing.assert_close(q(x), x @ q.dequantize().t(), rtol=1e-5, atol=1e-5)


def test_k_not_multiple_of_16_is_a_value_error_not_a_segfault():
    # torch 2.13's kernel crashes the process for such K; the constructor must refuse first.
    with pytest.raises(ValueError, match="multiple of 16"):
        Int8Linear.from_float(torch.randn(8, 24))


def test_q8_0_dequantize_matches_gguf_and_maps_approximately():
    rng = np.random.default_rng(2)
    W = (rng.standard_normal((32, 128)) * rng.uniform(0.01, 1.0, (32, 128))).astype(np.float32)
    raw = quantize(W, GT.Q8_0)
    ref = torch.from_numpy(dequantize(raw, GT.Q8_0).reshape(32, 128).copy())
    assert torch.equal(dequantize_q8_0(raw, (32, 128)), ref)
    lin = Int8Linear.from_q8_0(raw, (32, 128))
    # Q8_0 has a scale per 32 inputs, this one per row: approximate (measured ≈ 1.2 % on
    # SmolLM2's head; this heavy-tailed toy is worse), well within int8 RTN's bound.
    assert rel(lin.dequantize(), ref) < 0.03


def test_tied_int8_embedding_shares_the_head():
    from ember.model import ModelConfig, Transformer
    from ember.quant import Int8Embedding, QuantConfig, apply_quant

    torch.manual_seed(0)
    ref = Transformer(ModelConfig.tiny(tie_embeddings=True)).eval()
    ids = torch.randint(0, 256, (1, 7))
    with torch.no_grad():
        expect = ref(ids)
    q = apply_quant(ref, QuantConfig(mode="int8", head_mode="int8"))
    emb, head = q.tok_embeddings, q.output
    assert isinstance(emb, Int8Embedding)
    assert emb.weight_int8.data_ptr() == head.weight_int8.data_ptr()  # one table, not two
    torch.testing.assert_close(emb(ids), head.dequantize()[ids])
    with torch.no_grad():
        got = q(ids)
    assert ((got - expect).norm() / expect.norm()) < 0.05
    untied = apply_quant(Transformer(ModelConfig.tiny(tie_embeddings=False)), QuantConfig(mode="int8"))
    assert not isinstance(untied.tok_embeddings, Int8Embedding)
