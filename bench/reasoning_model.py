"""The small reasoning model: accuracy by difficulty before → SFT → GRPO, the thinking-token
budget curve, and the ORM / PRM verifiers' held-out figures.

Runs it reads (train them first; each fits a few minutes of a shared CPU):

    ember sft --preset reasoning          # runs/sft-reasoning/adapter
    ember grpo --preset reasoning         # runs/grpo-reasoning/adapter (starts from the SFT adapter)
    ember reward --preset orm             # runs/orm
    ember reward --preset prm             # runs/prm

Then `.venv/bin/python -P bench/reasoning_model.py --n 10` prints the tables and writes
runs/reasoning_bench.json. Every model answers the same generated held-out problems
(ember.data.reasoning_tasks, seed 12345), greedily, with the chat prompt that asks for a
step-by-step solution; a reply is right when its final answer (the last number after
`</think>`, else the last number) is the problem's.

Measured (2026-12-06, the shared 2-core CPU under load 12-20, n = 10 per difficulty, so each
figure is ±0.15 or so; SFT: the preset's 16 steps, 8 k tokens, final val_loss 0.16; GRPO:
2 steps of the preset from the SFT adapter, its own 8 held-out problems 0.375 → 0.125):

    stage  d1    d2    d3    d4
    base   0.30  0.10  0.00  0.00
    sft    0.50  0.50  0.10  0.10
    grpo   0.20  0.10  0.20  0.00   (2 steps: noise, not a gain)

    budget forcing (sft, difficulty 2, n = 8): B=0: 0.00, B=8: 0.00, B=24: 0.50, B=64: 0.50
    (mean thought 21.9 tokens, none forced); B=64 with one "Wait": 0.125 (thought 34.8 tokens).

Verifiers on SmolLM2 (LoRA, held-out: 32 generated solutions, half corrupted), before → after:
`ember reward --preset orm` (12 steps) solution accuracy 0.53 → 0.53, margin 0.00 → 0.05
(chance: it has not learnt to check arithmetic); `--preset prm` (12 steps) step accuracy
0.36 → 0.55, margin 0.16 → 0.25; 60 steps on 512 rows: 0.36 → 0.52, margin 0.16 → 0.17.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from ember.core.io import atomic_write_json
from ember.data.reasoning_tasks import MAX_DIFFICULTY, is_correct, make_problems, prompt_text
from ember.prompting.budget import budget_force, engine_complete

SEED = 12345


def load_policy(adapter: str | None):
    import ember
    from ember.peft import load_adapter

    model, tok = ember.load("smollm2")
    if adapter:
        model = load_adapter(model, adapter)
    return model.eval(), tok


def accuracy_by_difficulty(model, tok, difficulties, n: int) -> dict[int, float]:
    from ember.train.kit.rollout import greedy_replies

    out = {}
    for d in difficulties:
        problems = make_problems(n, d, SEED)
        prompts = [[{"role": "user", "content": prompt_text(p)}] for p in problems]
        replies = greedy_replies(model, tok, prompts, max_tokens=32 + 16 * d)
        out[d] = sum(is_correct(p, r.text) for p, r in zip(problems, replies)) / n
        print(f"  difficulty {d}: {out[d]:.2f}   e.g. {replies[0].text[:100]!r}", file=sys.stderr)
    return out


def budget_curve(model, tok, budgets, n: int, difficulty: int, extend: int = 0) -> dict[int, dict]:
    complete = engine_complete(model, tok)
    problems = make_problems(n, difficulty, SEED)
    out = {}
    for b in budgets:
        results = [budget_force(complete, tok.render_chat([{"role": "user", "content": prompt_text(p)}])[0], tok,
                                budget=b, extend=extend, answer_tokens=12) for p in problems]
        out[b] = {"accuracy": sum(is_correct(p, r.text) for p, r in zip(problems, results)) / n,
                  "mean_thinking_tokens": sum(r.thinking_tokens for r in results) / n,
                  "forced": sum(r.forced_stop for r in results) / n}
        print(f"  budget {b} (extend {extend}): {out[b]}", file=sys.stderr)
    return out


def verifier_figures() -> dict:
    out = {}
    for name in ("orm", "prm"):
        path = Path("runs") / name / "summary.json"
        if path.is_file():
            s = json.loads(path.read_text())
            out[name] = {"before": s.get("before"), "after": s.get("after")}
    return out


def merge_report(path: Path, report: dict, done: dict) -> dict:
    """The report on disk (another stage may have written it meanwhile) with `done` added."""
    on_disk = json.loads(path.read_text()) if path.is_file() else {}
    if on_disk.get("n") == report["n"] and on_disk.get("levels") == report["levels"]:
        report = {**on_disk, "verifiers": report["verifiers"]}
    report["accuracy"] = {**report.get("accuracy", {}), **done.pop("accuracy")}
    report.update(done)
    atomic_write_json(path, report)
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10, help="problems per difficulty (and per budget)")
    ap.add_argument("--difficulties", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    ap.add_argument("--budgets", type=int, nargs="+", default=[0, 8, 24, 64])
    ap.add_argument("--budget_difficulty", type=int, default=3)
    ap.add_argument("--budget_stage", default="sft", help="the stage whose budget curve is measured")
    ap.add_argument("--budget_n", type=int, default=8, help="problems per budget")
    ap.add_argument("--stages", nargs="+", default=["base", "sft", "grpo"])
    args = ap.parse_args()
    torch.set_num_threads(1)
    adapters = {"base": None, "sft": "runs/sft-reasoning/adapter", "grpo": "runs/grpo-reasoning/adapter"}
    path = Path("runs/reasoning_bench.json")  # stages run separately add to one report
    report: dict = json.loads(path.read_text()) if path.is_file() else {}
    if report.get("n") != args.n or report.get("levels") != MAX_DIFFICULTY:
        report = {"n": args.n, "seed": SEED, "levels": MAX_DIFFICULTY, "accuracy": {}}
    report["verifiers"] = verifier_figures()
    for stage in args.stages:
        if adapters[stage] and not Path(adapters[stage]).is_dir():
            print(f"{stage}: no {adapters[stage]} (train it first); skipped", file=sys.stderr)
            continue
        t0 = time.time()
        print(f"{stage}:", file=sys.stderr)
        model, tok = load_policy(adapters[stage])
        done = {"accuracy": {stage: accuracy_by_difficulty(model, tok, args.difficulties, args.n)}}
        if stage == args.budget_stage:
            done["budget_stage"] = stage
            done["budget"] = budget_curve(model, tok, args.budgets, args.budget_n, args.budget_difficulty)
            done["budget_wait"] = budget_curve(model, tok, [max(args.budgets)], args.budget_n,
                                               args.budget_difficulty, extend=1)
        print(f"  ({time.time() - t0:.0f} s)", file=sys.stderr)
        report = merge_report(path, report, done)  # stages run in parallel processes share the file
    print("accuracy (pass@1, greedy) by difficulty:")
    print("stage  " + "  ".join(f"d{d:<4}" for d in args.difficulties))
    for stage, acc in report["accuracy"].items():
        print(f"{stage:<6} " + "  ".join(f"{acc.get(str(d), acc.get(d, float('nan'))):<5.2f}"
                                         for d in args.difficulties))
    if "budget" in report:
        print(f"budget forcing ({report['budget_stage']}, difficulty {args.budget_difficulty}): "
              + ", ".join(f"B={b}: {v['accuracy']:.2f}" for b, v in report["budget"].items())
              + f"; B={max(args.budgets)}+Wait: {next(iter(report['budget_wait'].values()))['accuracy']:.2f}")
    for name, v in report["verifiers"].items():
        print(f"{name}: held-out before {v['before']} after {v['after']}")


if __name__ == "__main__":
    main()
