"""How faithful the fast default path is: perplexity and top-1 agreement with the exact fp32 path.

SmolLM2-135M-Instruct from its Q4_1 GGUF, first --chars characters of the sorted pydoc topics,
non-overlapping windows of --ctx tokens, no BOS (as ANCHORS.md: llama.cpp 15.438,
transformers fp32 15.389). Three paths over the same windows:
  exact    ember --exact: fp32 weights dequantized from the file, PyTorch forward
  prefill  the default model's whole-window forward (Q4 weights × int8 block activations on
           the tiled GEMM)
  decode   the default model fed one token at a time through the native decode step
           (Q4 weights × int8 block activations, one native call per token)
Top-1 agreement: how often a path's argmax equals the exact path's, over every scored token.

    python -P bench/native_faithfulness.py [--chars 20000] [--ctx 512] [--threads 2]
"""

from __future__ import annotations

import argparse
import math
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

import ember
from ember.data.corpus import pydoc_topics_text
from ember.model.kv_cache import KVCache


def stepwise_logits(model, x: torch.Tensor) -> torch.Tensor:
    """x (T,) → logits (T, V), one cached decode step per token."""
    cache = KVCache.for_model(model, 1, len(x))
    out = [model(x[t].view(1, 1), cache, torch.tensor([[t]]))[0, 0] for t in range(len(x))]
    return torch.stack(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--chars", type=int, default=20_000)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2, help="results do not depend on it; 1 is kinder to a busy machine")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    exact, tok = ember.load("smollm2")
    fast, _ = ember.load("smollm2", quant="auto")
    ids = torch.tensor(tok.encode(pydoc_topics_text()[: args.chars]))
    paths = {"exact": lambda x: exact(x[None])[0], "prefill": lambda x: fast(x[None])[0],
             "decode": lambda x: stepwise_logits(fast, x)}
    nll = dict.fromkeys(paths, 0.0)
    agree = dict.fromkeys(paths, 0)
    secs = dict.fromkeys(paths, 0.0)
    n = 0
    with torch.inference_mode():
        for begin in tqdm(range(0, len(ids) - 1, args.ctx), desc="windows"):
            x = ids[begin : begin + args.ctx]
            if len(x) < 2:
                break
            target = x[1:]
            ref_top = None
            for name, fn in paths.items():
                t = time.perf_counter()
                logits = fn(x)[:-1].float()
                secs[name] += time.perf_counter() - t
                nll[name] += F.cross_entropy(logits, target, reduction="sum").item()
                top = logits.argmax(-1)
                ref_top = top if name == "exact" else ref_top
                agree[name] += (top == ref_top).sum().item()
            n += len(target)
    print(f"\nSmolLM2 Q4_1 GGUF, {n} scored tokens, ctx {args.ctx}, {args.chars} chars of pydoc topics")
    print(f"{'path':8s} {'perplexity':>10s} {'top-1 = exact':>14s} {'seconds':>8s}  model")
    for name in paths:
        model = exact if name == "exact" else fast
        print(f"{name:8s} {math.exp(nll[name] / n):10.3f} {agree[name] / n:14.4f} {secs[name]:8.1f}  "
              f"{type(model).__name__}")


if __name__ == "__main__":
    main()
