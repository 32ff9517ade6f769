"""Prompting and test-time compute on SmolLM2-135M-Instruct: zero-shot, few-shot, chain of
thought and self-consistency@8 on the bundled arithmetic (generation) and commonsense
(multiple choice, answered by letter) tasks, with 95% Wilson intervals; then the
self-consistency curve (exact maj@k and pass@k for k = 1..8 from the same samples) and the
prompt sensitivity of 3-shot greedy (3 templates x 2 demonstration orders).

    OMP_NUM_THREADS=1 .venv/bin/python -P bench/reasoning.py --limit 20
    OMP_NUM_THREADS=1 .venv/bin/python -P bench/reasoning.py --prefix-timing --tasks commonsense --limit 8 \
        --batch 64 --fast

Writes runs/reason/bench/<task>-<run>.json (every sample) and curve-<task>.png/.json.

Measured 2026-12-06 at n = 50 (the first 50 questions), one thread of the 2-core CPU under
load 25, engine batch 50 with batch_invariant off (--fast), CoT cut at 64 tokens:

    OMP_NUM_THREADS=1 .venv/bin/python -P bench/reasoning.py --limit 50 --runs zero-shot "few-shot (5)" CoT \
        --skip-sensitivity --cot-tokens 64 --batch 50 --fast

    task         run            accuracy  95% CI (Wilson)   n  samples/q  tokens  unparseable
    arithmetic   zero-shot      0.160     [0.083, 0.285]   50       1        467       0
    arithmetic   few-shot (5)   0.180     [0.098, 0.308]   50       1        205       0
    arithmetic   CoT            0.160     [0.083, 0.285]   50       1       1294       0
    commonsense  zero-shot      0.040     [0.011, 0.135]   50       1         58      47
    commonsense  few-shot (5)   0.200     [0.112, 0.330]   50       1        100       0
    commonsense  CoT            0.200     [0.112, 0.330]   50       1       2790       9

Every interval overlaps every other on each task. Commonsense zero-shot is low because 47
of its 50 replies name the option's text, not a letter.
SC@8 was not rerun at n = 50 (400 replies per task did not fit the shared CPU's time);
its n = 20 figures are below. Multiple-choice replies are now read by `choice_answer` (the
last explicit "answer is X" / "Answer: X", else the last letter standing alone outside a
restated option line), not the first letter standing alone.

Prefix sharing (--prefix-timing: 8 five-shot commonsense prompts of 218 tokens on average,
8 samples each at temperature 0.7, 64 engine slots; CPU seconds of the process, best of 2,
since wall time on the shared CPU was 10-20x the CPU time). The independent requests are
queued round-robin over the prompts: the engine forks any request whose prompt repeats the
one queued just before, so 8 copies queued back to back share one prefill as well.

    new tokens  generate(ids, n=8)   64 independent requests   CPU ratio
    1           6.2 s                46.2 s                    7.5x
    16          19.1 s               51.5 s                    2.7x

With one new token nearly all the work is prefill (64 x 218 prompt tokens, or 8 x 218 when
shared); with 16 the shared decode steps dilute the saving.
Measured earlier on 2026-12-06 (n = 20), SmolLM2-135M-Instruct fp32, one thread on a heavily
shared 2-core CPU, plain prompts, the first 20 questions of each task, CoT and SC replies cut at 64 tokens, SC at
temperature 0.7 (this run did not record whether the 8 samples of a question shared one
prefill through the engine's generate(n=8), which landed during it, or ran as 8 requests);
seconds are wall time (two bench processes ran side by side):

    task         run            accuracy  95% CI (Wilson)   n  samples/q  tokens  unparseable  seconds
    arithmetic   zero-shot      0.250     [0.112, 0.469]   20       1        190       0          63
    arithmetic   few-shot (5)   0.150     [0.052, 0.360]   20       1         84       0          63
    arithmetic   CoT            0.200     [0.081, 0.416]   20       1        486       0         123
    arithmetic   SC@8           0.150     [0.052, 0.360]   20       8       7206       0        1683
    commonsense  zero-shot      0.050     [0.009, 0.236]   20       1         22      18          62
    commonsense  few-shot (5)   0.250     [0.112, 0.469]   20       1         40       0         189
    commonsense  CoT            0.150     [0.052, 0.360]   20       1       1260       3         349
    commonsense  SC@8           0.300     [0.145, 0.519]   20       8       9699      38        1094

    SC curve (exact over all k-subsets of the 8 samples):
    arithmetic   maj@1 0.087 maj@2 0.087 maj@4 0.106 maj@8 0.150 | pass@1 0.087 pass@2 0.148 pass@4 0.225 pass@8 0.300
    commonsense  maj@1 0.188 maj@2 0.240 maj@4 0.267 maj@8 0.300 | pass@1 0.188 pass@2 0.286 pass@4 0.407 pass@8 0.550
    arithmetic 3-shot greedy, 3 templates x 2 demonstration orders: min 0.150 max 0.200 std 0.024
    commonsense 3-shot greedy, the same 6 prompts:                  min 0.250 max 0.350 std 0.038

Every interval overlaps every other: at n=20 no difference here is significant. Zero-shot
commonsense replies name the option's text, not its letter (18 of 20 unparseable); few-shot
teaches the letter. Sampling at 0.7 costs accuracy per sample (maj@1 below greedy) and voting
over 8 wins it back on commonsense (0.19 → 0.30) but not beyond greedy on arithmetic.
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
    ap.add_argument("--limit", type=int, default=50)
    ap.add_argument("--tasks", nargs="+", default=["arithmetic", "commonsense"])
    ap.add_argument("--cot-tokens", type=int, default=64)
    ap.add_argument("--out", default="runs/reason/bench")
    ap.add_argument("--skip-sensitivity", action="store_true")
    ap.add_argument("--quant", default="auto", help="ember.load's quant: auto (the GGUF's Q4 blocks through the "
                    "native kernels), none (exact fp32), int8, int4, native")
    ap.add_argument("--batch", type=int, default=8, help="engine slots (requests decoded together)")
    ap.add_argument("--fast", action="store_true", help="batch_invariant=False (about 2x on CPU; greedy replies "
                    "may then depend on which requests share a batch)")
    ap.add_argument("--runs", nargs="+", default=[r[0] for r in RUNS], help="which rows of RUNS")
    ap.add_argument("--prefix-timing", action="store_true", help="only time N=8 samples with and without the "
                    "engine's shared prefill")
    ap.add_argument("--prefix-new-tokens", type=int, default=16, help="--prefix-timing: tokens per sample")
    args = ap.parse_args()
    unknown = set(args.runs) - {r[0] for r in RUNS}
    if unknown:
        raise ValueError(f"unknown runs {sorted(unknown)}; runs: {', '.join(r[0] for r in RUNS)}")

    import torch

    import ember
    from ember.cli.reason import load_problems
    from ember.infer.engine import Engine
    from ember.prompting.generate import EngineGenerator

    torch.set_num_threads(1)
    net, tok = ember.load("smollm2", quant=None if args.quant == "none" else args.quant)
    engine = Engine(net, tok, max_batch_size=args.batch, batch_invariant=not args.fast)
    gen = EngineGenerator(engine)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "quant": args.quant,
            "model": type(net).__name__, "batch": args.batch, "fast": args.fast, "cot_tokens": args.cot_tokens}
    print(f"{meta} load {_load()}", flush=True)
    if args.prefix_timing:
        problems, pool, *_ = load_problems(args.tasks[0])
        prefix_timing(engine, tok, problems[:args.limit], pool, max_tokens=args.prefix_new_tokens)
        return
    rows = []
    for task in args.tasks:
        problems, pool, extract, extraction, task_tokens = load_problems(task)
        problems = problems[:args.limit]
        results = run_task(gen, task, problems, pool, extract, extraction, task_tokens, args, meta, out)
        rows += results
        report_task(task, results, out, len(problems))
        if not args.skip_sensitivity:
            run_sensitivity(gen, task, problems, pool, extract, task_tokens, meta, out)
    print("\ntask         run            accuracy  95% CI          n   samples/q  tokens  unparseable  seconds")
    for r in rows:
        print(_row(r))


def run_task(gen, task, problems, pool, extract, extraction, task_tokens, args, meta, out) -> list[dict]:
    """Every asked row of RUNS on the same problems; each saved with its samples."""
    from ember.prompting.strategies import StrategyConfig

    results = []
    for label, strategy, shots, n in [r for r in RUNS if r[0] in args.runs]:
        cfg = StrategyConfig(n=n, temperature=0.7, max_tokens=task_tokens if strategy == "greedy" else
                             args.cot_tokens, seed=0)
        t0, load0 = time.perf_counter(), _load()
        r = evaluate(gen, problems, pool, extract, strategy, cfg, shots, extraction, max(1, args.batch // n))
        r.update(task=task, shots=shots, label=label, seconds=time.perf_counter() - t0,
                 shared_prefill=gen.shared_prefill, load=[load0, _load()], **meta)
        (out / f"{task}-{strategy}-{shots}.json").write_text(json.dumps(r))
        results.append(r)
        print(_row(r), flush=True)
    return results


def evaluate(gen, problems, pool, extract, strategy, cfg, shots, extraction, chunk) -> dict:
    """`evaluate_strategy`, except that a run whose every reply is unparseable is a row of
    the table (accuracy 0, all unparseable), not an error: zero-shot multiple choice, where
    the model names the option's text instead of its letter, may do that."""
    from ember.prompting.estimators import wilson
    from ember.prompting.run import evaluate_strategy

    seen = []

    class Recorder:
        shared_prefill = gen.shared_prefill

        def generate(self, *a, **kw):
            out = gen.generate(*a, **kw)
            seen.extend(out)
            return out

    try:
        return evaluate_strategy(Recorder(), problems, pool, extract, strategy, cfg, shots=shots,
                                 extraction=extraction, chunk=chunk)
    except ValueError as e:
        if not str(e).startswith("none of the"):
            raise
    n = len(problems)
    items = [{"question": p.question, "gold": p.answer, "answer": None, "correct": False,
              "answers": [None] * len(ss), "texts": [x.text for x in ss], "tokens": sum(x.tokens for x in ss),
              "scores": None} for p, ss in zip(problems, seen)]
    return {"accuracy": 0.0, "ci": list(wilson(0, n)), "n": n, "strategy": strategy,
            "samples": sum(len(ss) for ss in seen) / n, "tokens": sum(it["tokens"] for it in items),
            "unparseable": sum(len(ss) for ss in seen), "pass_at_n": 0.0, "items": items}


def report_task(task: str, results: list[dict], out: Path, n_problems: int) -> None:
    """The curve plot, the exact maj@k / pass@k for every k of the SC samples, accuracy
    against generated tokens, and paired comparisons of the runs."""
    from ember.prompting.curves import plot_curves, run_curve

    curves = [run_curve(r) for r in results]
    for c, r in zip(curves, results):
        c["label"] = r["label"]
    sc = next((r for r in results if r["strategy"] == "sc"), None)
    extra = {"all_k": all_k(sc) if sc else None, "paired": paired(results)}
    (out / f"curve-{task}.json").write_text(json.dumps({"curves": curves, **extra}, indent=1))
    plot_curves(curves, out / f"curve-{task}.png", f"SmolLM2-135M-Instruct, {task}, n={n_problems}")
    if sc:
        print(f"{task} SC curve (exact over all k-subsets of the {len(sc['items'][0]['answers'])} samples):")
        for p in extra["all_k"]:
            print(f"  k={p['k']}  maj@k {p['maj']:.3f} [{p['ci'][0]:.3f}, {p['ci'][1]:.3f}]  pass@k {p['pass']:.3f}"
                  f"  tokens/q {p['tokens']:.0f}")
    single = [r for r in results if r["strategy"] != "sc"]
    for r in single:
        print(f"  {r['label']:<14} tokens/q {r['tokens'] / r['n']:.0f}  accuracy {r['accuracy']:.3f}")
    for d in extra["paired"]:
        print(f"  {d['a']} vs {d['b']}: {d['a_only']} questions only {d['a']} right, {d['b_only']} only {d['b']} "
              f"right; difference {d['diff']:+.3f}, exact McNemar p = {d['p']:.3f}", flush=True)


def all_k(run: dict) -> list[dict]:
    """maj@k (exact, Wilson interval over questions) and pass@k for k = 1..n, and the
    generated tokens per question at k (k times the mean tokens of one reply)."""
    from ember.prompting.curves import _canon
    from ember.prompting.estimators import maj_at_k, pass_at_k, wilson
    from ember.prompting.run import same_answer

    items = run["items"]
    n = min(len(it["answers"]) for it in items)
    one = sum(it["tokens"] / len(it["answers"]) for it in items) / len(items)
    points = []
    for k in range(1, n + 1):
        maj = sum(maj_at_k([_canon(a) for a in it["answers"][:n]], _canon(it["gold"]), k) for it in items)
        pss = sum(pass_at_k(n, sum(same_answer(a, it["gold"]) for a in it["answers"][:n]), k) for it in items)
        points.append({"k": k, "maj": maj / len(items), "ci": list(wilson(maj, len(items))),
                       "pass": pss / len(items), "tokens": k * one})
    return points


def paired(results: list[dict]) -> list[dict]:
    """The claims in question on the same questions: few-shot vs zero-shot, CoT vs zero-shot,
    SC@8 vs CoT; the discordant counts and the exact two-sided McNemar (sign test) p-value."""
    by = {r["label"]: r for r in results}
    out = []
    for a, b in (("few-shot (5)", "zero-shot"), ("CoT", "zero-shot"), ("CoT", "few-shot (5)"), ("SC@8", "CoT")):
        if a in by and b in by:
            ca = [it["correct"] for it in by[a]["items"]]
            cb = [it["correct"] for it in by[b]["items"]]
            a_only = sum(x and not y for x, y in zip(ca, cb))
            b_only = sum(y and not x for x, y in zip(ca, cb))
            out.append({"a": a, "b": b, "a_only": a_only, "b_only": b_only, "p": sign_test(a_only, b_only),
                        "diff": (sum(ca) - sum(cb)) / len(ca)})
    return out


def sign_test(x: int, y: int) -> float:
    """Exact two-sided binomial p-value of x successes against y at p = 1/2.

    >>> sign_test(0, 0), round(sign_test(9, 1), 4)
    (1.0, 0.0215)
    """
    import math

    m = x + y
    if m == 0:
        return 1.0
    tail = sum(math.comb(m, i) for i in range(min(x, y) + 1)) / 2 ** m
    return min(1.0, 2 * tail)


def run_sensitivity(gen, task, problems, pool, extract, task_tokens, meta, out) -> None:
    from ember.prompting.estimators import wilson
    from ember.prompting.run import sensitivity
    from ember.prompting.strategies import StrategyConfig

    t0 = time.perf_counter()
    s = sensitivity(gen, problems, pool, extract, StrategyConfig(max_tokens=task_tokens), shots=3, progress=True)
    s.update(task=task, shots=3, seconds=time.perf_counter() - t0, **meta)
    (out / f"sensitivity-{task}.json").write_text(json.dumps(s, indent=1))
    print(f"{task} 3-shot greedy over {len(s['variants'])} prompts: min {s['min']:.3f} max {s['max']:.3f} "
          f"mean {s['mean']:.3f} std {s['std']:.3f} ({s['seconds']:.0f} s)")
    for v in s["variants"]:
        lo, hi = wilson(v["accuracy"] * v["n"], v["n"])
        print(f"  {v['template']:<10} order {v['order_seed']!s:<5} {v['accuracy']:.3f} [{lo:.3f}, {hi:.3f}]",
              flush=True)


def _load() -> float:
    import os

    return round(os.getloadavg()[0], 1)


def prefix_timing(engine, tok, problems, pool, n: int = 8, max_tokens: int = 16) -> None:
    """N samples of each 5-shot prompt: one request with generate(n=N) (one prefill, forked)
    against N independent requests (N prefills: queued round-robin over the prompts, since
    the engine forks a request whose prompt repeats the one queued just before); wall and
    CPU seconds of each, best of 2."""
    from ember.infer.sampling import SamplingParams
    from ember.prompting.run import build_prompts

    ids = [tok.encode(p, add_bos=None) for p in build_prompts(problems, pool, 5, 0, False, False)]
    sp = SamplingParams(temperature=0.7, max_tokens=max_tokens, seed=0, ignore_eos=True)
    independent = [SamplingParams(temperature=0.7, max_tokens=max_tokens, seed=i, ignore_eos=True) for i in range(n)]
    ways = {"shared prefill (generate n=8)": lambda: engine.generate(ids, sp, n=n),
            "8 independent requests": lambda: engine.generate([p for _ in range(n) for p in ids],
                                                              [q for q in independent for _ in ids])}
    print(f"prefix sharing: {len(ids)} prompts of {sum(map(len, ids)) / len(ids):.0f} tokens (5-shot), "
          f"{n} samples each, {max_tokens} new tokens, {engine.max_batch_size} slots")
    for name, run in ways.items():
        best = (float("inf"), float("inf"))
        for _ in range(2):
            w, c = time.perf_counter(), time.process_time()
            outs = run()
            best = min(best, (time.perf_counter() - w, time.process_time() - c))
        print(f"  {name:<32} wall {best[0]:6.1f} s  cpu {best[1]:6.1f} s  ({sum(o.completion_tokens for o in outs)} "
              "tokens)", flush=True)


def _row(r: dict) -> str:
    lo, hi = r["ci"]
    return (f"{r['task']:<12} {r['label']:<14} {r['accuracy']:.3f}     [{lo:.3f}, {hi:.3f}]  {r['n']:>3}   "
            f"{r['samples']:>5g}     {r['tokens']:>6}  {r['unparseable']:>6}       {r['seconds']:.0f}")


if __name__ == "__main__":
    main()
