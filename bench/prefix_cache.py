"""Prefix cache and shared prefill, on vs off in one run (SmolLM2-135M fp32, CPU).

  chat TTFT   a 10-turn greedy chat (system prompt, 48-token replies); each turn's prompt
              repeats the whole conversation. Time to first token at turns 2 and 10, with
              the engine's prefix cache (turn k+1 reuses turn k's K/V) and without.
  N samples   N=8 seeded samples (32 tokens) of one ~400-token prompt: one shared prefill
              (`generate(..., n=8)`) against 8 requests that each prefill the prompt.

Each figure is the median of --repeats runs; the replies of both sides are compared too.

    python -P bench/prefix_cache.py [--threads 1] [--repeats 3]

Measured (`--threads 1 --repeats 1`, a 2-core machine shared with other jobs, so absolute
times are slow and noisy; the ratios are what to read):

    chat TTFT turn 2: 3699.7 ms without the prefix cache, 493.0 ms with it (7.51x)
    chat TTFT turn 10: 12472.0 ms without the prefix cache, 622.7 ms with it (20.03x)
      replies identical with and without the cache: 10/10 turns
    N=8 samples of a 400-token prompt: 35.75 s each prefilling, 22.40 s sharing one prefill (1.60x); samples identical: True
"""

from __future__ import annotations

import argparse
import statistics
import time

SYSTEM = ("You are a careful assistant for a small software team. Answer in plain sentences, "
          "keep answers short, and say so when you are not sure.")
QUESTIONS = [
    "What is a hash table?", "How does it handle collisions?", "What is a good load factor?",
    "When should I use a tree instead?", "What is a B-tree?", "Why do databases like them?",
    "What is an index in SQL?", "Can an index slow writes down?", "What is a covering index?",
    "Summarise what we discussed.",
]


def chat_ttfts(engine, tok, max_tokens: int) -> tuple[list[float], list[list[int]]]:
    from ember.infer.sampling import SamplingParams

    sp = SamplingParams(temperature=0.0, max_tokens=max_tokens)
    history, ttft, replies = [{"role": "system", "content": SYSTEM}], [], []
    for q in QUESTIONS:
        history.append({"role": "user", "content": q})
        ids, _ = tok.render_chat(history, add_generation_prompt=True)
        r = engine.generate([ids], sp)[0]
        ttft.append(r.ttft_ms)
        replies.append(r.token_ids)
        history.append({"role": "assistant", "content": r.text})
    return ttft, replies


def n_samples(engine, ids: list[int], n: int, shared: bool) -> tuple[float, list[list[int]]]:
    import ember.infer.engine as engine_mod
    from ember.infer.fork import joins
    from ember.infer.sampling import SamplingParams

    sp = SamplingParams(temperature=0.8, seed=0, max_tokens=32, ignore_eos=True)
    engine_mod.joins = joins if shared else (lambda *a: False)
    try:
        t0 = time.perf_counter()
        out = engine.generate([ids], sp, n=n)  # unshared: n requests, each prefilling the prompt
        return time.perf_counter() - t0, [r.token_ids for r in out]
    finally:
        engine_mod.joins = joins


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--n", type=int, default=8)
    args = ap.parse_args()
    import torch

    import ember
    from ember.data.corpus import pydoc_topics_text
    from ember.infer.engine import Engine

    torch.set_num_threads(args.threads)
    model, tok = ember.load("smollm2")
    model.eval()
    print(f"SmolLM2-135M fp32, {args.threads} thread(s), median of {args.repeats}")
    runs = {}
    for cache in (0.0, 256.0):
        per_turn = []
        for _ in range(args.repeats):
            engine = Engine(model, tok, max_batch_size=1, prefix_cache_mb=cache)
            t, replies = chat_ttfts(engine, tok, 48)
            per_turn.append(t)
        runs[cache] = ([statistics.median(x) for x in zip(*per_turn)], replies)
    (off, r_off), (on, r_on) = runs[0.0], runs[256.0]
    for t in (1, 9):
        print(f"chat TTFT turn {t + 1}: {off[t]:.1f} ms without the prefix cache, {on[t]:.1f} ms with it "
              f"({off[t] / on[t]:.2f}x)")
    same = sum(a == b for a, b in zip(r_off, r_on))
    print(f"  replies identical with and without the cache: {same}/{len(r_off)} turns")
    ids = tok.encode(pydoc_topics_text())[:400]
    engine = Engine(model, tok, max_batch_size=args.n)
    n_samples(engine, ids[:50], 2, True)  # warm up
    times, outs = {False: [], True: []}, {}
    for _ in range(args.repeats):
        for shared in (False, True):
            t, outs[shared] = n_samples(engine, ids, args.n, shared)
            times[shared].append(t)
    t_off, t_on = statistics.median(times[False]), statistics.median(times[True])
    print(f"N={args.n} samples of a {len(ids)}-token prompt: {t_off:.2f} s each prefilling, "
          f"{t_on:.2f} s sharing one prefill ({t_off / t_on:.2f}x); samples identical: {outs[False] == outs[True]}")


if __name__ == "__main__":
    main()
