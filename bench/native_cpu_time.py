"""CPU time per decoded token and per 512-token prefill, 1 thread: the native default path vs
torch's int4 kernel (fused, eager) vs the exact fp32 path, in one run.

CPU time (not wall time) stays meaningful on a shared, loaded machine: time spent waiting
for a core does not count. SmolLM2 Q4_1 GGUF, 64 greedy tokens after a short chat prompt.

    OMP_NUM_THREADS=1 python -P bench/native_cpu_time.py
"""

from __future__ import annotations

import time

import torch

import ember
from ember.data.corpus import pydoc_topics_text
from ember.infer.engine import Engine
from ember.infer.sampling import SamplingParams

N_TOKENS = 64


def measure(quant):
    model, tok = ember.load("smollm2", quant=quant, fuse=True)
    engine = Engine(model, tok, max_batch_size=1, max_seq_len=1024)
    ids, _ = tok.render_chat([{"role": "user", "content": "Write a short story about a lighthouse keeper."}])
    long_ids = tok.encode(pydoc_topics_text())[:512]
    with torch.inference_mode():
        engine.generate([ids], SamplingParams(temperature=0.0, max_tokens=4))  # warm up
        c = time.process_time()
        engine.generate([ids], SamplingParams(temperature=0.0, max_tokens=N_TOKENS, ignore_eos=True))
        decode = (time.process_time() - c) / N_TOKENS
        c = time.process_time()
        engine.generate([long_ids], SamplingParams(temperature=0.0, max_tokens=1))
        prefill = time.process_time() - c
    return type(model).__name__, decode, prefill


def main() -> None:
    torch.set_num_threads(1)
    rows = {name: measure(q) for name, q in (("default (auto)", "auto"), ("int4 torch", "int4"), ("exact fp32", None))}
    base = rows["exact fp32"]
    print(f"{'path':16s} {'model':18s} {'decode ms CPU/token':>20s} {'vs exact':>9s} {'prefill 512 CPU-s':>18s} {'vs exact':>9s}")
    for name, (kind, dec, pre) in rows.items():
        print(f"{name:16s} {kind:18s} {dec * 1e3:20.2f} {base[1] / dec:8.2f}x {pre:18.2f} {base[2] / pre:8.2f}x")


if __name__ == "__main__":
    main()
