"""The small reasoning model: accuracy by difficulty before → SFT → GRPO, the thinking-token
budget curve, and the ORM / PRM verifiers' held-out figures.

Runs it reads (train them first):

    ember sft --preset reasoning          # runs/sft-reasoning/adapter
    ember grpo --preset reasoning         # runs/grpo-reasoning/adapter (starts from the SFT adapter)
    ember reward --preset orm             # runs/orm (head fitted on the frozen body, --peft head)
    ember reward --preset prm             # runs/prm

Then `.venv/bin/python -P bench/reasoning_model.py --n 10` prints the tables and writes
runs/reasoning_bench.json (stages may run as parallel processes: `--stages base`, `--stages
sft`, ...; each merges its rows into the file). Every model answers the same generated
held-out problems (ember.data.reasoning_tasks levels 1-5, seed 12345), greedily, with the chat
prompt that asks for a step-by-step solution, max 32 + 16·level new tokens; a reply is right
when its final answer (the last number after `</think>`, else the last number) is the
problem's. bench/verifiers.py sweeps what makes the verifiers learn.

Measured 2026-12-06 21:11-22:30 UTC on the shared 2-core CPU under load 12-27 (n = 10 per
level, so each figure is ±0.15 or so). SFT: the preset's 16 steps (8 k tokens, val_loss 0.16),
trained before the levels were calibrated, on 1-4-event problems. GRPO: `--group_size 4
--prompts_per_step 2 --max_new_tokens 56 --optim.lr 3e-4` on two-event problems (level 4's
distribution) from the SFT adapter; the run was killed by the out-of-memory killer at step 17
(steps took 130-315 s), so the policy measured is its step-10 checkpoint. Its training groups'
accuracy (sampled, T = 1): steps 1-6 0.08, 7-12 0.04, 12-17 0.13; half the groups had no
reward spread (zero_std 0.5-0.58), so half the rollouts taught nothing.

    stage  L1    L2    L3    L4    L5
    base   0.10  0.10  0.10  0.10  0.20   (the base model answers in numbered lists and runs out of tokens)
    sft    0.70  0.70  0.80  0.10  0.10
    grpo   0.30  0.00  0.10  0.20  0.00   (step-10 checkpoint)

What GRPO bought, honestly: nothing measurable. After 10 steps on two-event problems the
policy writes two or three equations whatever the problem (a one-event level-3 problem gets an
invented second step: '17 - 3 = 15\n15 + 3 = 19'), so level 3 falls 0.80 → 0.10 while level 4
moves 0.10 → 0.20, within the noise of n = 10. Eighty sampled answers, half of them in groups
with no reward spread, are far too little signal; the earlier 2-step run (0.375 → 0.125 on
its own 8 problems) said the same.

    budget forcing (sft, level 3, n = 8): B=0: 0.25, B=8: 0.62, B=24: 0.88, B=64: 0.88
    (mean thought 0 / 8 / 12 / 12 tokens; forced 1.0 / 1.0 / 0 / 0); B=64 with one "Wait":
    0.25 (thought 22.5 tokens: the extension talks it out of right answers).

Verifiers on SmolLM2-135M, held-out: 64 generated solutions, half corrupted (one slipped
step, the rest carried on consistently). Before (the presets' 12 LoRA steps on 256 rows,
n_eval 32, the 1-4-event generator): ORM solution accuracy 0.53 → 0.53 (chance), PRM step
accuracy 0.36 → 0.55. Now the head is fitted by L-BFGS on the frozen body's final states
(`--peft head`, balanced classes, L2 0.01), the states computed once:

    run (held-out seed 1337)                    ORM solution AUROC   PRM step AUROC   PRM solution AUROC
    --preset, 320 solutions of levels 1-5       0.42 → 0.54          0.53 → 0.59      0.45 → 0.58
    runs/orm, runs/prm: 192 of levels 1-4       0.47 → 0.53          0.48 → 0.62      0.52 → 0.61
    (accuracy at the 0 threshold: ORM 0.52-0.53, PRM steps 0.57-0.58; before = the head's random
    init; each fit took ~17-30 min of a loaded CPU, nearly all of it the body's forward passes)

Two draws of 64 held-out solutions (seed 0 in the sweep below, 1337 here) differ by up to 0.15
in PRM AUROC, so read these as: the PRM ranks steps clearly above chance (0.59-0.74), the ORM
at the final layer barely (0.53-0.59).

What made them learn (bench/verifiers.py --n_train 256 --n_eval 64, 1055 s, held-out AUROC;
the same 64 solutions for every cell, levels 1-5):

    training solutions        64     128    256
    ORM, final layer          0.33   0.43   0.56      (L2 0.01; 0.59 at L2 0.001)
    ORM, layer 15             0.38   0.51   0.73
    PRM steps, final layer    0.48   0.60   0.74      (solution AUROC by lowest step: 0.68 at 256)
    PRM steps, layer 15       0.44   0.56   0.71

The number of solutions is what matters: below ~128 the head overfits (AUROC under 0.5), and
the curve is still rising at 256; L2 from 0.001 to 0.1 moves AUROC by ≤ 0.08 (1.0 hurts). The
ORM reads the outcome better at the middle layer (0.73 vs 0.56 at 256) but `load_verifier`
reads the final layer. The PRM beats the ORM as a selector at equal data (solution AUROC 0.68
vs 0.56): it is told where the slip is. Twelve LoRA steps saw 48 solutions, under the
threshold where any of these heads generalizes.
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
from ember.prompting.estimators import wilson

SEED = 12345


def load_policy(adapter: str | None):
    import ember
    from ember.peft import load_adapter

    model, tok = ember.load("smollm2")
    if adapter:
        model = load_adapter(model, adapter)
    return model.eval(), tok


def adapter_from_checkpoint(checkpoint: str, sft_adapter: str) -> str:
    """A GRPO run's checkpoint folder (its LoRA tensors) as an adapter folder inside it, the
    policy rebuilt as `ember grpo --adapter sft_adapter` builds it."""
    from ember.peft import load_adapter
    from ember.train.checkpoint import load_checkpoint
    from ember.train.grpo import GRPOConfig
    from ember.train.kit import load_for_training, save_adapter_folder

    cfg = GRPOConfig(task="reasoning", adapter=sft_adapter)
    model, _ = load_for_training(cfg, seed=False)
    model = load_adapter(model, sft_adapter)
    result = model.load_state_dict(load_checkpoint(checkpoint)["model"], strict=False)
    if result.unexpected_keys:
        raise ValueError(f"{checkpoint} holds tensors this policy lacks: {result.unexpected_keys[:3]}")
    return str(save_adapter_folder(model, Path(checkpoint) / "adapter", cfg))


def accuracy_by_difficulty(model, tok, difficulties, n: int) -> dict[int, float]:
    from ember.train.kit.rollout import greedy_replies

    out = {}
    for d in difficulties:
        problems = make_problems(n, d, SEED)
        prompts = [[{"role": "user", "content": prompt_text(p)}] for p in problems]
        replies = greedy_replies(model, tok, prompts, max_tokens=32 + 16 * d)
        out[d] = sum(is_correct(p, r.text) for p, r in zip(problems, replies)) / n
        lo, hi = wilson(out[d] * n, n)
        print(f"  difficulty {d}: {out[d]:.2f} [{lo:.2f}, {hi:.2f}]   e.g. {replies[0].text[:100]!r}",
              file=sys.stderr)
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
    accuracy = report.setdefault("accuracy", {})
    for stage, by_level in done.pop("accuracy").items():  # a stage's levels may come in several runs
        accuracy[stage] = {**accuracy.get(stage, {}), **{str(k): v for k, v in by_level.items()}}
    report["budget"] = {**report.get("budget", {}), **done.pop("budget", {})}
    report.update(done)
    atomic_write_json(path, report)
    return report


def with_interval(accuracy: float | None, n: int) -> str:
    """'0.70 [0.52,0.83]': the accuracy of n problems and its Wilson 95% interval."""
    if accuracy is None:
        return f"{'-':<17}"
    lo, hi = wilson(accuracy * n, n)
    return f"{accuracy:.2f} [{lo:.2f},{hi:.2f}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10, help="problems per difficulty (and per budget)")
    ap.add_argument("--difficulties", type=int, nargs="*", default=[1, 2, 3, 4, 5], help="none: budget curves only")
    ap.add_argument("--budgets", type=int, nargs="+", default=[0, 8, 24, 64])
    ap.add_argument("--budget_difficulty", type=int, default=3)
    ap.add_argument("--budget_stages", nargs="+", default=["sft"], help="the stages whose budget curve is measured")
    ap.add_argument("--budget_n", type=int, default=8, help="problems per budget")
    ap.add_argument("--stages", nargs="+", default=["base", "sft", "grpo"])
    ap.add_argument("--sft_adapter", default="runs/sft-reasoning/adapter")
    ap.add_argument("--grpo_adapter", default="runs/grpo-reasoning/adapter")
    ap.add_argument("--grpo_checkpoint", help="a GRPO checkpoint folder to measure instead of --grpo_adapter")
    ap.add_argument("--report", default="runs/reasoning_bench.json", help="the JSON report stages add to")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.grpo_checkpoint:
        args.grpo_adapter = adapter_from_checkpoint(args.grpo_checkpoint, args.sft_adapter)
    adapters = {"base": None, "sft": args.sft_adapter, "grpo": args.grpo_adapter}
    path = Path(args.report)  # stages run separately add to one report
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
        if stage in args.budget_stages:
            curve = budget_curve(model, tok, args.budgets, args.budget_n, args.budget_difficulty)
            curve["wait"] = budget_curve(model, tok, [max(args.budgets)], args.budget_n, args.budget_difficulty,
                                         extend=1)[max(args.budgets)]
            done["budget"] = {stage: {"difficulty": args.budget_difficulty, "n": args.budget_n, "curve": curve}}
        print(f"  ({time.time() - t0:.0f} s)", file=sys.stderr)
        report = merge_report(path, report, done)  # stages run in parallel processes share the file
    print("accuracy (pass@1, greedy) by difficulty:")
    print("stage  " + "  ".join(f"d{d:<16}" for d in args.difficulties))
    for stage, acc in report["accuracy"].items():
        print(f"{stage:<6} " + "  ".join(with_interval(acc.get(str(d), acc.get(d)), report["n"])
                                         for d in args.difficulties))
    for stage, b in report.get("budget", {}).items():
        print(f"budget forcing ({stage}, difficulty {b['difficulty']}, n {b['n']}): "
              + ", ".join(f"B={k}: {with_interval(v['accuracy'], b['n'])} ({v['mean_thinking_tokens']:.1f} tok)"
                          for k, v in b["curve"].items()))
    for name, v in report["verifiers"].items():
        print(f"{name}: held-out before {v['before']} after {v['after']}")


if __name__ == "__main__":
    main()
