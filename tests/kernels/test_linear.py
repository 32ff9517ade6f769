"""The native block matmuls against their plain-PyTorch references, and GGUF blocks kept exactly."""

import numpy as np
import pytest
import torch
from kernel_helpers import need_kernels, smollm2_path

import ember.kernels.linear as linear
from ember.kernels.linear import (
    Q4Linear,
    Q8Embedding,
    Q8Linear,
    pair_permute,
    pair_unpermute,
    q4_matmul_reference,
    q8_matmul_reference,
    quantize_q8_reference,
)


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("N,K,M", [(64, 128, 1), (960, 576, 3), (576, 1536, 5), (48, 64, 8)])
def test_q4_kernel_equals_reference(N, K, M):
    need_kernels()
    torch.manual_seed(N + K + M)
    lin = Q4Linear.from_float(torch.randn(N, K))
    x = torch.randn(M, K)
    # The reference sums in fp64; the kernel in fp32 lanes: agreement to fp32 rounding.
    assert rel(lin(x), q4_matmul_reference(x, lin.qs, lin.d, lin.m)) < 1e-6


@pytest.mark.parametrize("N,K,M", [(64, 128, 1), (1000, 576, 4), (130, 64, 7)])
def test_q8_kernel_equals_reference(N, K, M):
    need_kernels()
    torch.manual_seed(N + K + M)
    head = Q8Linear.from_float(torch.randn(N, K))
    x = torch.randn(M, K)
    assert rel(head(x), q8_matmul_reference(x, head.qs, head.d)) < 1e-6


def test_int8_activations_cost_little_against_the_exact_weight():
    need_kernels()
    torch.manual_seed(0)
    lin = Q4Linear.from_float(torch.randn(256, 576))
    x = torch.randn(4, 576)
    exact = x @ lin.dequantize().t()
    assert rel(lin(x), exact) < 0.01  # measured 0.005: int8 blocks of 32 activations
    many = torch.randn(64, 576)  # the GEMM path
    assert rel(lin(many), many @ lin.dequantize().t()) < 0.01


def test_batched_rows_equal_rows_alone():
    need_kernels()
    torch.manual_seed(1)
    lin = Q4Linear.from_float(torch.randn(96, 128))
    x = torch.randn(7, 128)
    alone = torch.cat([lin(x[i : i + 1]) for i in range(7)])
    assert torch.equal(lin(x), alone)  # bit for bit: batch invariance of the decode step


def test_activation_quantization_matches_reference():
    lib = need_kernels()
    torch.manual_seed(2)
    x = torch.randn(3, 128) * torch.tensor([0.01, 1.0, 100.0])[:, None]
    x[1, :32] = 0  # an all-zero block
    q = torch.empty(3, 128, dtype=torch.int8)
    d, s = torch.empty(3, 4), torch.empty(3, 4)
    lib.ember_quantize_q8(x.data_ptr(), 3, 128, q.data_ptr(), d.data_ptr(), s.data_ptr())
    rq, rd, rs = quantize_q8_reference(x)
    assert torch.equal(pair_unpermute(q), rq)
    torch.testing.assert_close(d, rd)
    torch.testing.assert_close(s, rs)


def test_pair_permute_round_trips():
    q = torch.arange(2 * 192).reshape(2, 192)
    assert torch.equal(pair_unpermute(pair_permute(q)), q)
    assert not torch.equal(pair_permute(q), q)


def test_reference_fallback_without_kernels(monkeypatch):
    torch.manual_seed(3)
    lin = Q4Linear.from_float(torch.randn(64, 128))
    head = Q8Linear.from_float(torch.randn(64, 128))
    x = torch.randn(2, 128)
    monkeypatch.setattr(linear, "load_kernels", lambda: None)
    assert rel(lin(x), x @ lin.dequantize().t()) < 0.01
    assert rel(head(x), x @ head.dequantize().t()) < 0.01


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="in_features 96 is not a multiple of 64"):
        Q4Linear(96, 64)
    with pytest.raises(ValueError, match="expected"):
        Q4Linear.from_q4_1(np.zeros(10, dtype=np.uint8), (64, 64))


def test_gguf_blocks_kept_exactly():
    from ember.core.gguf import open_gguf
    from ember.model.convert.gguf import dequantize, gguf_raw_tensors

    raw = gguf_raw_tensors(open_gguf(smollm2_path()), "llama")
    t = raw["layers.0.attention.wq.weight"]
    assert t.type.name == "Q4_1"
    lin = Q4Linear.from_q4_1(t.data, t.shape)
    assert torch.equal(lin.dequantize(), dequantize(t))
    e = raw["tok_embeddings.weight"]
    assert e.type.name == "Q8_0"
    table = Q8Linear.from_q8_0(e.data, e.shape)
    ids = torch.tensor([0, 1, 7042, 49151])
    assert torch.equal(Q8Embedding(table)(ids), dequantize(e)[ids])
