"""Fine-tuning memory and speed on SmolLM2-135M: full fine-tune, LoRA and QLoRA (NF4 base),
each on the same batch, each in its own child process (so peak RSS is its own), 2 threads.

  load peak    the child's high-water mark while loading (and quantizing) the model
  train peak   the high-water mark during training alone (reset after loading through
               /proc/self/clear_refs): weights + grads + optimizer state + activations
  s/step       forward + backward + AdamW on the batch, median of the timed steps

Memory is measured in a child whose glibc returns freed large buffers at once
(MALLOC_MMAP_THRESHOLD_=1 MiB): with glibc's default dynamic threshold, freed activations
stay in the heap and RSS shows the allocator's history, not live memory (LoRA then reads
*above* a full fine-tune). That setting costs page faults, so s/step comes from a second
child with glibc's defaults.
  trainable    parameters the optimizer holds

    python bench/sft_memory.py [--variants full,lora,qlora] [--batch 4] [--seq 256] [--steps 3]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

VARIANTS = ["full", "lora", "qlora"]


def run(variant: str, batch: int, seq: int, steps: int) -> dict:
    import torch

    import ember
    from ember.peft import LoraConfig, apply_lora, apply_nf4
    from ember.train.losses import cross_entropy
    from ember.train.optim import OptimConfig, build_optimizer

    torch.set_num_threads(2)
    model, tok = ember.load("smollm2")
    if variant == "qlora":
        model = apply_nf4(model)
    if variant in ("lora", "qlora"):
        model = apply_lora(model, LoraConfig(rank=16))
    model.train()
    load_peak = _hwm_mb()
    _reset_hwm()
    opt = build_optimizer(model, OptimConfig(lr=1e-4, weight_decay=0.0))
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, tok.vocab_size, (batch, seq + 1), generator=g)  # the same batch for all
    times, losses = [], []
    for _ in range(steps + 1):  # the first step allocates the optimizer state: not timed
        t0 = time.perf_counter()
        loss = cross_entropy(model(ids[:, :-1]), ids[:, 1:])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
        losses.append(loss.item())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"variant": variant, "load_peak_mb": load_peak, "peak_rss_mb": _hwm_mb(),
            "s_per_step": sorted(times[1:])[len(times[1:]) // 2],
            "trainable": trainable, "first_loss": losses[0]}


def _hwm_mb() -> float:
    """VmHWM: peak resident memory since start or the last reset."""
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_hwm() -> None:
    """Give freed load-time buffers back (malloc_trim), then restart the peak from the
    current RSS: writing 5 to clear_refs resets VmHWM (Linux ≥ 4.0)."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(run(a.child, a.batch, a.seq, a.steps)))
        return
    rows = []
    for v in a.variants.split(","):
        if v not in VARIANTS:
            raise SystemExit(f"unknown variant {v!r}; choose from {VARIANTS}")
        cmd = [sys.executable, __file__, "--child", v, "--batch", str(a.batch), "--seq", str(a.seq), "--steps", str(a.steps)]
        eager = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "1048576", "MALLOC_TRIM_THRESHOLD_": "1048576"}
        mem, speed = (subprocess.run(cmd, capture_output=True, text=True, env=env) for env in (eager, None))
        if mem.returncode or speed.returncode:
            print(f"{v}: failed\n{(mem.stderr + speed.stderr)[-2000:]}", file=sys.stderr)
            continue
        row = json.loads(mem.stdout.strip().splitlines()[-1])
        row["s_per_step"] = json.loads(speed.stdout.strip().splitlines()[-1])["s_per_step"]
        rows.append(row)
    full = next((r for r in rows if r["variant"] == "full"), None)
    print(f"SmolLM2-135M fine-tuning, batch {a.batch} × {a.seq} tokens, fp32 weights, 2 threads")
    print(f"{'variant':<8} {'load peak MB':>12} {'train peak MB':>14} {'vs full':>8} {'s/step':>8} "
          f"{'trainable':>12} {'loss@0':>8}")
    for r in rows:
        ratio = f"{r['peak_rss_mb'] / full['peak_rss_mb']:.2f}x" if full else "-"
        print(f"{r['variant']:<8} {r['load_peak_mb']:>12,.0f} {r['peak_rss_mb']:>14,.0f} {ratio:>8} "
              f"{r['s_per_step']:>8.2f} {r['trainable']:>12,} {r['first_loss']:>8.3f}")
    print("the same batch and init for every variant: loss@0 agrees up to NF4 rounding")


if __name__ == "__main__":
    main()
