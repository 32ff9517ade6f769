"""Int4Linear: the kernel's format as found by experiment, RTN quantization, exact GGUF Q4_0/Q4_1.

Tolerances, and why:
* fp32 compute: the kernel reproduces (q - 8)·scale + zero to float rounding (1e-5 rel).
* bf16 compute: x is rounded to bf16 (rel 2⁻⁹), scale and zero too, and the result is
  rounded to bf16: outputs agree with the fp32 reference to ≤ 1 % relative RMS (measured
  ≈ 0.25 %); per weight, |W_bf16 - W| ≤ 2⁻⁸·(8·scale + |zero|) for each group.
"""

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from gguf import GGMLQuantizationType as GT
from gguf.quants import dequantize, quantize
from quant_helpers import rel

from ember.quant.int4 import (
    Int4Linear,
    dequantize_q4_0,
    dequantize_q4_1,
    linear_int4_reference,
    quantize_int4,
)


def test_kernel_dequantizes_as_q_minus_8_times_scale_plus_zero():
    # Pins torch's format: codes int32 (N, K) 0..15, scales_and_zeros (K/G, N, 2) = [scale, zero].
    g = torch.Generator().manual_seed(0)
    N, K, G = 48, 128, 32
    codes = torch.randint(0, 16, (N, K), dtype=torch.int32, generator=g)
    scale = torch.rand(N, K // G, generator=g) + 0.5
    zero = torch.randn(N, K // G, generator=g)
    lin = Int4Linear.from_codes(codes, scale, zero, G, compute_dtype=torch.float32)
    assert torch.equal(lin.codes(), codes)
    x = torch.randn(5, K, generator=g)
    torch.testing.assert_close(
        lin(x), linear_int4_reference(x, codes, scale, zero, G), rtol=1e-5, atol=1e-4
    )


def test_from_float_is_round_to_nearest_within_half_a_step():
    g = torch.Generator().manual_seed(1)
    W = torch.randn(64, 256, generator=g) * 0.05
    q, s, z = quantize_int4(W, 32, torch.float32)
    W_hat = (q.float() - 8) * s.repeat_interleave(32, 1) + z.repeat_interleave(32, 1)
    step = s.repeat_interleave(32, 1)
    assert ((W_hat - W).abs() <= step / 2 + 1e-6).all()
    assert q.min() == 0 and q.max() == 15  # the full range is used


@pytest.mark.parametrize("group_size", [32, 64, 128])
def test_linear_matches_float_reference(group_size):
    g = torch.Generator().manual_seed(2)
    lin = nn.Linear(256, 96, bias=True)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(96, 256, generator=g) * 0.05)
        lin.bias.copy_(torch.randn(96, generator=g))
    q = Int4Linear.from_float(lin, group_size)
    x = torch.randn(2, 3, 256, generator=g)
    y = q(x)
    assert y.shape == (2, 3, 96) and y.dtype == torch.float32
    # against the weight it really holds: only bf16 rounding of x, output
    ref_deq = F.linear(x.bfloat16().float(), q.dequantize(), lin.bias)
    assert rel(y, ref_deq) < 1e-2
    # against the float layer: int4 RTN error (≈ 8-10 % of the weight → a few % of the output)
    assert rel(y, lin(x)) < 0.12


def test_bf16_input_gives_bf16_output_and_fp32_stays_fp32():
    q = Int4Linear.from_float(torch.randn(32, 64))
    assert q(torch.randn(1, 64)).dtype == torch.float32
    assert q(torch.randn(1, 64, dtype=torch.bfloat16)).dtype == torch.bfloat16


def _q4_1_case(N=64, K=128, seed=3):
    rng = np.random.default_rng(seed)
    W = (rng.standard_normal((N, K)) * 0.05 + rng.standard_normal((N, 1)) * 0.02).astype(np.float32)
    raw = quantize(W, GT.Q4_1)  # (N, K/32 * 20) uint8
    return raw, torch.from_numpy(dequantize(raw, GT.Q4_1).reshape(N, K).copy())


def test_q4_1_unpacking_matches_gguf_dequantize_bitwise():
    raw, ref = _q4_1_case()
    assert torch.equal(dequantize_q4_1(raw, ref.shape), ref)


def test_q4_1_is_exact_with_fp32_compute():
    raw, ref = _q4_1_case()
    lin = Int4Linear.from_q4_1(raw, ref.shape, compute_dtype=torch.float32)
    torch.testing.assert_close(lin.dequantize(), ref, rtol=1e-6, atol=1e-7)
    x = torch.randn(4, ref.shape[1])
    torch.testing.assert_close(lin(x), x @ ref.t(), rtol=1e-5, atol=1e-4)


def test_q4_1_with_bf16_compute_within_bf16_rounding():
    raw, ref = _q4_1_case()
    lin = Int4Linear.from_q4_1(raw, ref.shape)  # bf16: scale d and zero m + 8d rounded to bf16
    x = torch.randn(4, ref.shape[1]).bfloat16().float()
    assert rel(lin(x), x @ ref.t()) < 1e-2
    # per weight: the rounding of scale and zero bounds the error (2⁻⁸ covers bf16's half-ulp 2⁻⁹)
    d = torch.from_numpy(
        raw.reshape(64, 4, 20)[..., :2].copy().view(np.float16)[..., 0].astype(np.float32)
    )
    m = torch.from_numpy(
        raw.reshape(64, 4, 20)[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32)
    )
    bound = (2**-8 * (8 * d + (m + 8 * d).abs())).repeat_interleave(32, 1) + 1e-6
    assert ((lin.dequantize() - ref).abs() <= bound).all()


def test_q4_0_is_exact_with_fp32_compute():
    rng = np.random.default_rng(4)
    W = (rng.standard_normal((32, 96)) * 0.1).astype(np.float32)
    raw = quantize(W, GT.Q4_0)
    ref = torch.from_numpy(dequantize(raw, GT.Q4_0).reshape(32, 96).copy())
    assert torch.equal(dequantize_q4_0(raw, (32, 96)), ref)
    lin = Int4Linear.from_q4_0(raw, (32, 96), compute_dtype=torch.float32)
    torch.testing.assert_close(lin.dequantize(), ref, rtol=1e-6, atol=1e-7)


def test_requantizing_a_dequantized_q4_1_weight_recovers_it():
    # Q4_1 blocks use their own min and max, so RTN on the dequantized values finds the same
    # grid: from_float is a near-exact fallback when the raw blocks are not at hand.
    raw, ref = _q4_1_case()
    a = Int4Linear.from_q4_1(raw, ref.shape, compute_dtype=torch.float32).dequantize()
    b = Int4Linear.from_float(ref, 32, compute_dtype=torch.float32).dequantize()
    assert rel(b, a) < 1e-5


def test_state_dict_round_trip():
    a = Int4Linear.from_float(nn.Linear(64, 32))
    b = Int4Linear(64, 32, bias=True)
    b.load_state_dict(a.state_dict())
    x = torch.randn(3, 64)
    assert torch.equal(a(x), b(x))


@pytest.mark.parametrize(
    "shape, group_size, match",
    [
        ((8, 64), 32, "multiple of 16"),
        ((32, 48), 32, "multiple of group_size"),
        ((32, 64), 16, "group_size 16"),
    ],
)
def test_unsupported_shapes_are_value_errors(shape, group_size, match):
    with pytest.raises(ValueError, match=match):
        Int4Linear.from_float(torch.randn(*shape), group_size)


def test_bad_block_data_is_a_value_error():
    raw, ref = _q4_1_case()
    with pytest.raises(ValueError, match="expected"):
        Int4Linear.from_q4_1(raw[:-1], ref.shape)
