"""Batch-1 matvec speed: fp32/bf16 F.linear vs Int8Linear vs Int4Linear vs the native Q4/Q8
block kernels (ember.kernels), µs per call and GB/s.

GB/s counts the weight bytes (plus scales) read per call. "hot" repeats one weight (it can
sit in cache); "cold" cycles through enough copies to exceed ~1 GB, as a decode step
streams every matrix once. Modules include the bf16 casts in and out (what a model pays);
"raw" rows call the kernel on bf16 input directly.

    OMP_NUM_THREADS=2 python bench/quant_matmul.py            # SmolLM2's two shapes
    OMP_NUM_THREADS=2 python bench/quant_matmul.py 576x1536   # K x N
    OMP_NUM_THREADS=1 python bench/quant_matmul.py --cpu      # CPU time: robust on a busy box

--cpu times with the process's CPU clock instead of the wall clock, so time spent
descheduled by other processes does not count (meaningful with one thread only: idle
OpenMP threads spin and bill CPU time).
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


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--cpu"] or ["576x1536", "576x49152"]
    clock = time.process_time if "--cpu" in sys.argv[1:] else time.perf_counter
    main([tuple(int(v) for v in a.split("x")) for a in args], clock)
