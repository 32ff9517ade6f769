"""Prompting and test-time compute on SmolLM2-135M-Instruct: zero-shot, few-shot, chain of
thought and self-consistency@8 on the bundled arithmetic (generation) and commonsense
(multiple choice, answered by letter) tasks, with 95% Wilson intervals; then the
self-consistency curve (exact maj@k and pass@k for k = 1..8 from the same samples) and the
prompt sensitivity of 3-shot greedy (3 templates x 2 demonstration orders).

    OMP_NUM_THREADS=1 .venv/bin/python -P bench/reasoning.py --limit 20

Writes runs/reason/bench/<task>-<run>.json (every sample) and curve-<task>.png/.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

RUNS = [  # (label, strategy, shots, n)
    ("zero-shot", "greedy", 0, 1),
    ("few-shot (5)", "greedy", 5, 1),
    ("CoT", "cot", 0, 1),
    ("SC@8", "sc", 0, 8),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--limit", type=int, default=20)
    ap.add_argument("--tasks", nargs="+", default=["arithmetic", "commonsense"])
    ap.add_argument("--cot-tokens", type=int, default=96)
    ap.add_argument("--out", default="runs/reason/bench")
    ap.add_argument("--skip-sensitivity", action="store_true")
    args = ap.parse_args()

    import torch

    import ember
    from ember.cli.reason import load_problems
    from ember.infer.engine import Engine
    from ember.prompting.curves import plot_curves, run_curve
    from ember.prompting.generate import EngineGenerator
    from ember.prompting.run import evaluate_strategy, sensitivity
    from ember.prompting.strategies import StrategyConfig

    torch.set_num_threads(1)
    net, tok = ember.load("smollm2")
    gen = EngineGenerator(Engine(net, tok, max_batch_size=8))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for task in args.tasks:
        problems, pool, extract, extraction, task_tokens = load_problems(task)
        problems = problems[:args.limit]
        results = []
        for label, strategy, shots, n in RUNS:
            cfg = StrategyConfig(n=n, temperature=0.7, max_tokens=task_tokens if strategy == "greedy" else
                                 args.cot_tokens, seed=0)
            t0 = time.perf_counter()
            r = evaluate_strategy(gen, problems, pool, extract, strategy, cfg, shots=shots, extraction=extraction,
                                  chunk=max(1, 8 // n))
            r.update(task=task, shots=shots, label=label, seconds=time.perf_counter() - t0)
            (out / f"{task}-{strategy}-{shots}.json").write_text(json.dumps(r))
            results.append(r)
            rows.append(r)
            print(_row(r), flush=True)
        curves = [run_curve(r) for r in results]
        for c, r in zip(curves, results):
            c["label"] = r["label"]
        (out / f"curve-{task}.json").write_text(json.dumps(curves, indent=1))
        plot_curves(curves, out / f"curve-{task}.png", f"SmolLM2-135M-Instruct, {task}, n={len(problems)}")
        sc = next(c for c in curves if c["strategy"] == "sc")
        print(f"{task} SC curve: " + ", ".join(f"maj@{p['k']} {p['accuracy']:.3f} pass@{p['k']} {p['pass']:.3f}"
                                                for p in sc["points"]), flush=True)
        if not args.skip_sensitivity:
            s = sensitivity(gen, problems, pool, extract, StrategyConfig(max_tokens=task_tokens), shots=3)
            each = ", ".join(f"{v['template']}/{v['order_seed']}: {v['accuracy']:.2f}" for v in s["variants"])
            print(f"{task} 3-shot greedy over {len(s['variants'])} prompts: min {s['min']:.3f} max {s['max']:.3f} "
                  f"std {s['std']:.3f} ({each})", flush=True)
    print("\ntask         run            accuracy  95% CI          n   samples/q  tokens  unparseable  seconds")
    for r in rows:
        print(_row(r))


def _row(r: dict) -> str:
    lo, hi = r["ci"]
    return (f"{r['task']:<12} {r['label']:<14} {r['accuracy']:.3f}     [{lo:.3f}, {hi:.3f}]  {r['n']:>3}   "
            f"{r['samples']:>5g}     {r['tokens']:>6}  {r['unparseable']:>6}       {r['seconds']:.0f}")


if __name__ == "__main__":
    main()
