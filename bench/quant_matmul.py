"""Batch-1 matvec speed: fp32/bf16 F.linear vs Int8Linear vs Int4Linear vs the native Q4/Q8
block kernels (ember.kernels), µs per call and GB/s.

GB/s counts the weight bytes (plus scales) read per call. "hot" repeats one weight (it can
sit in cache); "cold" cycles through enough copies to exceed ~1 GB, as a decode step
streams every matrix once. Modules include the bf16 casts in and out (what a model pays);
"raw" rows call the kernel on bf16 input directly.

    OMP_NUM_THREADS=2 python bench/quant_matmul.py            # SmolLM2's two shapes
    OMP_NUM_THREADS=2 python bench/quant_matmul.py 576x1536   # K x N
    OMP_NUM_THREADS=1 python bench/quant_matmul.py --cpu      # CPU time: robust on a busy box
    OMP_NUM_THREADS=2 python bench/quant_matmul.py --gemm     # many rows (prefill), below

--cpu times with the process's CPU clock instead of the wall clock, so time spent
descheduled by other processes does not count (meaningful with one thread only: idle
OpenMP threads spin and bill CPU time).

--gemm times many-row matmuls (prefill) at SmolLM2's shapes, M = 64, 256, 512 rows: the native
int8 GEMM (Q4Linear / Q8Linear, fp32 in and out) against the bf16 path it replaced (dequantize
the weight to bf16 for the call, ember_dequant_q4_bf16 for Q4 and torch for the Q8 head, then
F.linear in bf16) and against F.linear on a bf16 weight kept in memory (no dequantize: a floor
for any bf16 path, at twice the Q8 memory). Ratios above 1: the GEMM is faster.
"""

from __future__ import annotations

import statistics
import sys
import time

import torch
import torch.nn.functional as F

from ember.kernels.build import load_kernels
from ember.kernels.linear import Q4Linear, Q8Linear
from ember.quant import Int4Linear, Int8Linear


def per_call(fns, seconds=0.4, repeats=5, clock=time.perf_counter) -> float:
    """Median seconds per call, cycling over `fns` (one per weight copy)."""
    for f in fns[: min(len(fns), 20)]:
        f()
    n, t0 = 0, clock()
    while clock() - t0 < seconds / repeats:
        fns[n % len(fns)]()
        n += 1
    n = max(n, len(fns))
    runs = []
    for _ in range(repeats):
        t0 = clock()
        for i in range(n):
            fns[i % len(fns)]()
        runs.append((clock() - t0) / n)
    return statistics.median(runs)


def variants(K: int, N: int, copies: int):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, K, generator=g)
    xb = x.bfloat16()
    rows = {}
    Ws = [torch.randn(N, K, generator=g) * 0.02 for _ in range(copies)]
    rows["fp32 F.linear"] = ([lambda W=W: F.linear(x, W) for W in Ws], N * K * 4)
    Wts = [W.t().contiguous() for W in Ws]
    rows["fp32 x @ W_t"] = ([lambda Wt=Wt: x @ Wt for Wt in Wts], N * K * 4)
    del Wts
    Wbs = [W.bfloat16() for W in Ws]
    rows["bf16 F.linear"] = ([lambda Wb=Wb: F.linear(xb, Wb) for Wb in Wbs], N * K * 2)
    del Wbs
    q8 = [Int8Linear.from_float(W) for W in Ws]
    rows["int8 Int8Linear (fp32 io)"] = ([lambda m=m: m(x) for m in q8], N * K + N * 2)
    rows["int8 raw kernel (bf16)"] = (
        [lambda m=m: torch.ops.aten._weight_int8pack_mm(xb, m.weight_int8, m.scales) for m in q8],
        N * K + N * 2,
    )
    del q8
    q4 = [Int4Linear.from_float(W, 32) for W in Ws]
    nbytes4 = N * K // 2 + (K // 32) * N * 2 * 2
    rows["int4 g32 Int4Linear (fp32 io)"] = ([lambda m=m: m(x) for m in q4], nbytes4)
    rows["int4 g32 raw kernel (bf16)"] = (
        [
            lambda m=m: torch.ops.aten._weight_int4pack_mm_for_cpu(
                xb, m.weight_packed, 32, m.scales_and_zeros
            )
            for m in q4
        ],
        nbytes4,
    )
    del q4
    if load_kernels() is not None:  # GGUF-layout blocks × int8 block activations (AVX-512 VNNI)
        nq4 = [Q4Linear.from_float(W) for W in Ws]
        rows["native Q4_1 Q4Linear (fp32 io)"] = ([lambda m=m: m(x) for m in nq4], N * K // 2 + (K // 32) * N * 4)
        del nq4
        nq8 = [Q8Linear.from_float(W) for W in Ws]
        rows["native Q8_0 Q8Linear (fp32 io)"] = ([lambda m=m: m(x) for m in nq8], N * K + (K // 32) * N * 2)
    return rows


def main(shapes, clock=time.perf_counter):
    kind = "CPU" if clock is time.process_time else "wall"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {kind} clock")
    print("| shape [1,K]x[K,N] | variant | hot µs | hot GB/s | cold µs | cold GB/s |")
    print("|---|---|---|---|---|---|")
    for K, N in shapes:
        copies = max(1, min(24, int(1.2e9 // (N * K * 4))))  # fp32 copies > ~1 GB, capped
        for name, (fns, nbytes) in variants(K, N, copies).items():
            hot = per_call(fns[:1], clock=clock)
            cold = per_call(fns, clock=clock)
            print(
                f"| [1,{K}]x[{K},{N}] | {name} | {hot * 1e6:.1f} | {nbytes / hot / 1e9:.1f} "
                f"| {cold * 1e6:.1f} | {nbytes / cold / 1e9:.1f} |",
                flush=True,
            )


GEMM_SHAPES = {"wqkv": (960, 576), "wo": (576, 576), "w13": (3072, 576), "w2": (576, 1536), "head": (49152, 576)}


def dequant_matmul(lib, mod, x):
    """The replaced prefill path: the weight dequantized to bf16 for this call, then F.linear."""
    if isinstance(mod, Q8Linear):
        w = mod.dequantize().bfloat16()
    else:
        N, K = mod.out_features, mod.in_features
        w = torch.empty(N, K, dtype=torch.bfloat16)
        lib.ember_dequant_q4_bf16(mod.qs.data_ptr(), mod.d.data_ptr(), mod.m.data_ptr(), N, K, w.data_ptr(),
                                  torch.get_num_threads())
    return F.linear(x.bfloat16(), w).float()


def gemm_rows(clock=time.perf_counter):
    """The --gemm table: GEMM vs bf16-dequantize-per-call vs bf16 weight kept, ms per call."""
    lib = load_kernels()
    if lib is None:
        sys.exit("the native kernels are unavailable here")
    kind = "CPU" if clock is time.process_time else "wall"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {kind} clock, "
          f"GEMM from {lib.ember_gemm_rows()} rows")
    print("| weight (N x K) | M | GEMM ms | bf16 dequant+matmul ms | ratio | bf16 kept weight ms | ratio |")
    print("|---|---|---|---|---|---|---|")
    g = torch.Generator().manual_seed(0)
    for name, (N, K) in GEMM_SHAPES.items():
        W = torch.randn(N, K, generator=g) * 0.02
        mod = Q8Linear.from_float(W) if name == "head" else Q4Linear.from_float(W)
        wb = mod.dequantize().bfloat16()
        del W
        for M in (64, 256, 512):
            x = torch.randn(M, K, generator=g)
            t = [per_call([f], seconds=0.2, repeats=3, clock=clock) for f in (
                lambda mod=mod, x=x: mod(x),
                lambda mod=mod, x=x: dequant_matmul(lib, mod, x),
                lambda wb=wb, x=x: F.linear(x.bfloat16(), wb).float(),
            )]
            print(f"| {name} {N}x{K} | {M} | {t[0] * 1e3:.2f} | {t[1] * 1e3:.2f} | {t[1] / t[0]:.2f} "
                  f"| {t[2] * 1e3:.2f} | {t[2] / t[0]:.2f} |", flush=True)


if __name__ == "__main__":
    flags = {"--cpu", "--gemm"}
    args = [a for a in sys.argv[1:] if a not in flags] or ["576x1536", "576x49152"]
    clock = time.process_time if "--cpu" in sys.argv[1:] else time.perf_counter
    if "--gemm" in sys.argv[1:]:
        gemm_rows(clock)
    else:
        main([tuple(int(v) for v in a.split("x")) for a in args], clock)
