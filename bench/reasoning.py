"""Prompting and test-time compute on SmolLM2-135M-Instruct: zero-shot, few-shot, chain of
thought and self-consistency@8 on the bundled arithmetic (generation) and commonsense
(multiple choice, answered by letter) tasks, with 95% Wilson intervals; then the
self-consistency curve (exact maj@k and pass@k for k = 1..8 from the same samples) and the
prompt sensitivity of 3-shot greedy (3 templates x 2 demonstration orders).

    OMP_NUM_THREADS=1 .venv/bin/python -P bench/reasoning.py --limit 50 --batch 64 --fast
    OMP_NUM_THREADS=1 .venv/bin/python -P bench/reasoning.py --prefix-timing --tasks commonsense --limit 8 \
        --batch 64 --fast --quant none

Writes runs/reason/bench/<task>-<strategy>-<shots>.json (every sample), curve-<task>.png/.json
(with maj@k / pass@k for every k and the paired tests) and sensitivity-<task>.json.
The model is `ember.load("smollm2", quant=--quant)`; the default "auto" is the native
kernels on the GGUF's own Q4_1 blocks (int8 activations), "none" the exact fp32 model.

Measured 2026-12-06 23:13-23:39 UTC, n = 50 (the first 50 questions of each task; every row
answers the same ones), quant auto, one thread of the 2-core CPU under load average 10-17
(other jobs), 64 engine slots, --fast (batch_invariant off), SC at temperature 0.7 (the 8
samples of a question share one prefill), CoT and SC replies cut at 64 tokens; seconds are
wall time under that load:

    OMP_NUM_THREADS=1 .venv/bin/python -P bench/reasoning.py --limit 50 --batch 64 --fast --cot-tokens 64

    task         run            accuracy  95% CI (Wilson)   n  samples/q  tokens/q  unparseable  seconds
    arithmetic   zero-shot      0.160     [0.083, 0.285]   50       1          9        0          9
    arithmetic   few-shot (5)   0.180     [0.098, 0.308]   50       1          4        0         35
    arithmetic   CoT            0.160     [0.083, 0.285]   50       1         27        0         25
    arithmetic   SC@8           0.100     [0.043, 0.214]   50       8        362        5/400    186
    commonsense  zero-shot      0.040     [0.011, 0.135]   50       1          1       47          21
    commonsense  few-shot (5)   0.200     [0.112, 0.330]   50       1          2        0         71
    commonsense  CoT            0.220     [0.128, 0.352]   50       1         57        8         49
    commonsense  SC@8           0.200     [0.112, 0.330]   50       8        446       69/400    309

    maj@k (exact over all k-subsets of the 8 samples; ties split) and pass@k, k = 1..8:
    arithmetic   maj  .072 .073 .080 .084 .088 .092 .100 .102   pass .072 .121 .157 .187 .214 .238 .260 .280
    commonsense  maj  .177 .214 .210 .205 .200 .201 .194 .193   pass .177 .310 .413 .496 .564 .620 .665 .700
    (maj@8 [0.045, 0.217] and [0.107, 0.323]; one sampled reply is 45 and 56 tokens on average)

Accuracy against generated tokens per question: greedy CoT is 0.160 at 27 tokens
(arithmetic) and 0.220 at 57 (commonsense); SC@k never reaches it, from 0.072 / 0.177 at
k = 1 (45 / 56 tokens) to 0.102 / 0.193 at k = 8 (362 / 446 tokens, 13x and 8x greedy CoT).
The sampled replies are longer than the greedy ones and each is less often right.

Paired on the same questions (questions only the first right / only the second, exact
McNemar p): arithmetic few-shot vs zero-shot 6/5 (p 1.0), CoT vs zero-shot 2/2 (p 1.0), SC@8 vs
CoT 2/5 (p 0.45); commonsense few-shot vs zero-shot 10/2 (p 0.039), CoT vs zero-shot 9/0
(p 0.004), CoT vs few-shot 11/10 (p 1.0), SC@8 vs CoT 4/5 (p 1.0).

Which claims hold at n = 50:
- few-shot beats zero-shot: not on arithmetic (+0.02). On commonsense yes, +0.16 (p 0.039),
  but as format, not knowledge: 47 of the 50 zero-shot replies are empty (the model ends the
  text at once, end-of-sequence as its first token), and 5-shot answers "C" to 47 of the 50
  questions (12 of the 50 golds are C; C is the last demonstration's answer in 13 prompts), so
  its 0.20 is no better than always answering C (0.24).
- CoT beats direct answers: not on arithmetic (0.160 both; 2/2 discordant). On commonsense it
  beats zero-shot (+0.18, p 0.004: its replies end in a letter) but not 5-shot (+0.02, p 1.0).
- SC@8 beats greedy CoT: not shown on either task (-0.06 and -0.02 here; the reruns below
  give -0.04 and +0.06, none significant). Sampling at 0.7 costs accuracy per reply (maj@1
  0.072 vs greedy 0.160 on arithmetic) and the vote wins little back; pass@8 (0.28, 0.70) shows right answers among the samples that the vote misses.
  SC@8 (majority, ties to the answer seen first) and maj@8 (ties split) differ by the tie
  rule: 10 commonsense and 22 arithmetic questions tie at the top.

CoT and SC cut at 128 tokens (38 of 50 greedy commonsense CoT replies hit 64; 2 arithmetic):
`--cot-tokens 128 --runs CoT SC@8 --skip-sensitivity`, 23:38-23:57 UTC, load 17-19, the rest as above:

    arithmetic   CoT   0.140 [0.070, 0.262]  29 tokens/q    SC@8  0.080 [0.032, 0.188]  496 tokens/q  (maj@8 0.107)
    commonsense  CoT   0.240 [0.143, 0.374]  95 tokens/q    SC@8  0.180 [0.098, 0.308]  729 tokens/q  (maj@8 0.247)
    maj@k arithmetic   .080 .080 .087 .091 .094 .098 .100 .107   pass@8 .320
    maj@k commonsense  .220 .247 .247 .245 .240 .240 .243 .247   pass@8 .800

Longer CoT adds 0.02 on commonsense (11 of 50 unparseable at 128); SC@8 still trails
greedy CoT (-0.06 on both, p 0.38 and 0.58).
With --fast the greedy replies are not reproducible run to run: the arithmetic CoT row rerun
with the same command differed in 19 of 50 replies (0.160, then 0.140), while two runs with
batch_invariant on (no --fast, side by side) gave identical replies (0.140 both, 99 s each);
the arithmetic CoT difference between the 64 and 128 token runs is this, not the cut.
The greedy rows again with batch_invariant on (reproducible), 23:57-00:01 UTC, load 13-17:
`--runs zero-shot "few-shot (5)" CoT --skip-sensitivity --batch 64` (no --fast):

    arithmetic   zero-shot 0.180 [0.098, 0.308]   few-shot (5) 0.180 [0.098, 0.308]   CoT 0.140 [0.070, 0.262]
    commonsense  zero-shot 0.040 [0.011, 0.135]   few-shot (5) 0.200 [0.112, 0.330]   CoT 0.200 [0.112, 0.330]
    paired: arithmetic few-shot vs zero-shot 5/5, CoT vs zero-shot 2/4 (p 0.69); commonsense few-shot
    vs zero-shot 10/2 (p 0.039), CoT vs zero-shot 8/0 (p 0.008), CoT vs few-shot 10/10

The same verdicts: on arithmetic no prompt beats another (CoT is 0.04 below direct here, 0.00
with --fast); on commonsense the letter-answering prompts beat zero-shot by 0.16.
SC@8 with batch_invariant on (`--runs CoT SC@8 --skip-sensitivity --batch 64`, 00:01-00:12
UTC, load 10-13; CoT replies identical to the run before on both tasks):

    arithmetic   SC@8 0.100 [0.043, 0.214]  3/400 unparseable   maj@k .075 .075 .082 .085 .085 .086 .090 .092  pass@8 .300
    commonsense  SC@8 0.260 [0.159, 0.396] 87/400 unparseable   maj@k .207 .250 .253 .247 .243 .244 .247 .253  pass@8 .820
    paired SC@8 vs CoT: arithmetic 2/4 (-0.04, p 0.69), commonsense 8/5 (+0.06, p 0.58)

So on commonsense the sign of SC@8 - CoT changes from run to run (-0.02 with --fast, +0.06
here, -0.06 at 128 tokens): none of the three differs from zero. On arithmetic SC@8 is below
greedy CoT in all three (-0.06, -0.04, -0.06), also not significantly.
The fp32 model (quant none, --fast, earlier the same day) gave 0.160 / 0.180 / 0.160 (arithmetic)
and 0.040 / 0.200 / 0.200 (commonsense) for zero-shot / few-shot (5) / CoT on these questions.

Prompt sensitivity, 3-shot greedy, the same 50 questions, templates qa / qa-terse /
instruct x demonstration order as drawn / reshuffled, --fast (so not reproducible to the
last reply; arithmetic in the run above;
commonsense rerun with `--tasks commonsense --runs --batch 8 --fast` at 23:35, load 16-17,
after the first run reached 4.2 GB RSS at 64 slots and was stopped):

    task         qa     qa/1   terse  terse/1  instruct  instruct/1   min    max    mean   std
    arithmetic   0.200  0.160  0.160  0.200    0.180     0.160        0.160  0.200  0.177  0.018
    commonsense  0.220  0.300  0.280  0.300    0.240     0.240        0.220  0.300  0.263  0.031

Each variant's 95% interval is 0.20-0.25 wide ([0.083, 0.285] at 0.16, [0.191, 0.438] at
0.30): the spread between prompts (0.04 and 0.08) lies well within it.

Prefix sharing (--prefix-timing, measured earlier with the fp32 model: 8 five-shot commonsense
prompts of 218 tokens on average, 8 samples each at temperature 0.7, 64 engine slots; CPU
seconds of the process, best of 2, since wall time on the shared CPU was 10-20x the CPU
time). The independent requests are queued round-robin over the prompts: the engine forks
any request whose prompt repeats the one queued just before, so 8 copies queued back to
back share one prefill as well.

    new tokens  generate(ids, n=8)   64 independent requests   CPU ratio
    1           6.2 s                46.2 s                    7.5x
    16          19.1 s               51.5 s                    2.7x

With one new token nearly all the work is prefill (64 x 218 prompt tokens, or 8 x 218 when
shared); with 16 the shared decode steps dilute the saving.
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
    ap.add_argument("--runs", nargs="*", default=[r[0] for r in RUNS], help="which rows of RUNS (none: only "
                    "the prompt sensitivity)")
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
        if results:
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
