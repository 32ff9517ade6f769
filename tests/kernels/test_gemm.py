"""The native GEMM path (matmuls of `ember_gemm_rows()` rows or more, prefill) against the fp64
references, and its promise: a row's result depends neither on the other rows nor on threads."""

import numpy as np
import pytest
import torch
from kernel_helpers import need_kernels

from ember.kernels.linear import Q4Linear, Q8Linear, q4_matmul_reference, q8_matmul_reference

# Measured: at most 2.4e-7 (the reference sums in fp64, the GEMM in fp32 block by block).
TOL = 1e-6
SHAPES = [(960, 576), (100, 1536), (37, 64)]  # (N, K): SmolLM2's K, N not a multiple of 16


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def q4_0_linear(N: int, K: int, seed: int) -> Q4Linear:
    """A Q4Linear from random GGUF Q4_0 blocks (fp16 d, 16 bytes of nibbles)."""
    rng = np.random.default_rng(seed)
    blocks = np.zeros((N, K // 32, 18), dtype=np.uint8)
    d = (rng.random((N, K // 32)) * 0.05 + 0.001).astype(np.float16)
    blocks[..., :2] = d[..., None].view(np.uint8)
    blocks[..., 2:] = rng.integers(0, 256, (N, K // 32, 16), dtype=np.uint8)
    return Q4Linear.from_q4_0(blocks, (N, K))


def weight(kind: str, N: int, K: int, seed: int = 0):
    torch.manual_seed(seed)
    if kind == "Q4_0":
        return q4_0_linear(N, K, seed)
    return (Q4Linear if kind == "Q4_1" else Q8Linear).from_float(torch.randn(N, K))


def reference(mod, x):
    if isinstance(mod, Q8Linear):
        return q8_matmul_reference(x, mod.qs, mod.d)
    return q4_matmul_reference(x, mod.qs, mod.d, mod.m)


def matmul(lib, mod, x, threads: int) -> torch.Tensor:
    """y = x Wᵀ straight through `ember_matmul` with a chosen thread count."""
    N, K = mod.out_features, mod.in_features
    y = torch.empty(x.shape[0], N)
    q8 = isinstance(mod, Q8Linear)
    lib.ember_matmul(int(q8), mod.qs.data_ptr(), mod.d.data_ptr(), None if q8 else mod.m.data_ptr(), N, K,
                     x.data_ptr(), x.shape[0], y.data_ptr(), threads)
    return y


def activations(M: int, K: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(M, K, generator=g) * torch.logspace(-2, 2, M)[:, None]  # rows of any scale
    x[0, :32] = 0  # an all-zero block
    return x


@pytest.mark.parametrize("kind", ["Q4_1", "Q4_0", "Q8"])
@pytest.mark.parametrize("N,K", SHAPES)
def test_gemm_equals_reference(kind, N, K):
    lib = need_kernels()
    T = lib.ember_gemm_rows()
    mod = weight(kind, N, K)
    for M in (T - 1, T, 37, 300):  # the dot path just below, the GEMM from T on
        x = activations(M, K, seed=M)
        assert rel(mod(x), reference(mod, x)) < TOL, (kind, N, K, M)


@pytest.mark.parametrize("kind", ["Q4_1", "Q8"])
def test_a_row_does_not_depend_on_the_rows_beside_it(kind):
    lib = need_kernels()
    mod = weight(kind, 100, 576, seed=1)
    x = activations(300, 576, seed=2)
    many = mod(x)
    few = mod(x[3:43])  # 40 rows, each in another tile position than in the 300-row call
    assert lib.ember_gemm_rows() <= 40
    assert torch.equal(many[3:43], few)  # bit for bit
    assert torch.equal(mod(x[:40].flip(0)).flip(0), many[:40])


@pytest.mark.parametrize("kind", ["Q4_0", "Q8"])
def test_results_do_not_depend_on_the_thread_count(kind):
    lib = need_kernels()
    mod = weight(kind, 200, 1536, seed=3)
    x = activations(64, 1536, seed=4)
    one = matmul(lib, mod, x, 1)
    assert rel(one, reference(mod, x)) < TOL
    for threads in (2, 3):
        assert torch.equal(matmul(lib, mod, x, threads), one), threads
