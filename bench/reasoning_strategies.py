"""The generated word problems (ember.data.reasoning_tasks) on SmolLM2-135M-Instruct: greedy
chain-of-thought accuracy by difficulty (the calibration), then test-time-compute strategies
at equal generated tokens on the middle difficulty: self-consistency (maj@k), best-of-k and
weighted best-of-k with an outcome (ORM) and a process (PRM) verifier, PRM-guided step beam
search, against greedy CoT.

    OMP_NUM_THREADS=1 .venv/bin/python -P bench/reasoning_strategies.py levels --n 40
    OMP_NUM_THREADS=1 .venv/bin/python -P bench/reasoning_strategies.py strategies --n 40 \\
        --orm runs/orm --prm runs/prm

Every question is the chat prompt `prompt_text` (the family's own: "Think step by step, one
equation per line, then give the answer."); a reply's answer is `extract_answer` (the last
"answer is N", else the last number after `</think>`, else the last number). `strategies` samples k replies per question
once (temperature 0.7), scores each with both verifiers, and writes one `ember reason --out`
style file per strategy under --out; the curves (exact maj@k and best-of-k over all
k-subsets of the samples, weighted best-of-k over 200 random subsets) come from
`ember.prompting.curves.run_curve`, as in `ember reason curve --runs OUT/*.json`.
The engine runs with batch_invariant=False (about twice as fast on CPU; greedy replies may
then depend on which requests share a batch).

Measured 2026-12-06, one thread of the 2-core CPU under load 15-25; the calibration table is
in ember/data/reasoning_tasks.py. Strategies at difficulty 3 (n = 40, seed 12345), k = 4
samples at temperature 0.7 cut at 80 tokens, the verifiers `ember reward --preset orm|prm`
trained on the earlier task scale (runs/orm, runs/prm of 19:5x: held-out solution accuracy
0.53 and 0.38); prm-beam: 4 candidates per step, beam 2, 3 steps of at most 24 tokens:

    strategies --n 40 --k 4 --max-tokens 80 --orm runs/orm --prm runs/prm (--parts samples / beam);
    table; ember reason curve --runs runs/reason/strategies/final/*.json

    strategy        k=1 (77 tok)  k=2 (153 tok)  k=4 (306 tok)   n
    greedy CoT      0.150 (73 tok), 95% CI [0.071, 0.291]           40
    sc (maj@k)      0.144         0.144          0.181           40
    bon, ORM        0.144         0.175          0.250           40
    bon, PRM        0.144         0.175          0.250           40
    wbon, ORM       0.150         0.156          0.165           40
    wbon, PRM       0.150         0.156          0.165           40
    prm-beam        0.125 (130 tok), 95% CI [0.055, 0.261]           40
(maj@k and bon@k exact over all k-subsets, ties split evenly for maj and to the earlier
sample for bon; wbon@k over 200 random subsets. The run's own pick at k = 4 is 0.250 for
every sampled strategy, 95% CI [0.142, 0.402].)

What holds: none of the three claims is shown at this n. Self-consistency against greedy
CoT: 0.181 at 4x the tokens against 0.150, +0.03, far inside the intervals; PRM beam search
(which does use the PRM: it scores raw lines) 0.125 at 1.8x the tokens. PRM against ORM
and weighted against plain best-of-k are not tested at all: both verifiers read only lines
that start with an equation (`split_steps`), and 158 of the 160 sampled replies have none,
so they score 0; best-of-k then keeps the earliest sample (its 0.250 at k = 4 is the first
sample's accuracy, not a verifier's choice) and weighted best-of-k, every weight 0, keeps
the earliest parseable answer.
The ORM/PRM comparison needs replies in the trained format (the SFT reasoning adapter) or
a verifier that reads free-form steps.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

from ember.core.io import atomic_write_json

sys.path.insert(0, str(Path(__file__).resolve().parent))
from verifiers import EquationPRM, reply_features, step_scores  # noqa: E402  (bench/verifiers.py)

SEED = 12345


def setup(batch: int, quant: str | None = None):
    from ember.agents.tool_eval import load_for_eval
    from ember.infer.engine import Engine
    from ember.prompting.generate import EngineGenerator

    torch.set_num_threads(1)
    net, tok = load_for_eval("smollm2", None, quant)
    return EngineGenerator(Engine(net, tok, max_batch_size=batch, batch_invariant=False), chat=True), tok


def problems_at(difficulty: int, n: int, family: str = "arithmetic"):
    from ember.data.reasoning import family_module
    from ember.prompting.prompts import Problem

    mod = family_module(family)
    ps = mod.make_problems(n, difficulty, SEED)
    return [Problem(p["question"], str(p["answer"])) for p in ps], [[{"role": "user", "content": mod.prompt_text(p)}]
                                                                     for p in ps]


def extract(text: str) -> str | None:
    from ember.data.reasoning_tasks import extract_answer

    a = extract_answer(text)
    return None if a is None else str(a)


def levels(args) -> dict:
    """Greedy CoT accuracy of --family at each of --difficulties (the family's own prompt and
    extract_answer), one `cot-dD.json` per level under --out."""
    from ember.data.reasoning import family_module
    from ember.prompting.outcome import StrategyConfig
    from ember.prompting.run import evaluate_strategy

    gen, _ = setup(args.batch, None if args.quant == "none" else args.quant)
    family = family_module(args.family)

    def extract_family(text: str) -> str | None:
        a = family.extract_answer(text)
        return None if a is None else str(a)

    out = {}
    for d in args.difficulties:
        problems, prompts = problems_at(d, args.n, args.family)
        t = time.time()
        r = evaluate_strategy(gen, problems, problems, extract_family, "cot", StrategyConfig(
            max_tokens=args.max_tokens, chat=True), prompts=prompts, chunk=args.batch, extraction="extract_answer")
        out[d] = {k: r[k] for k in ("accuracy", "ci", "n", "tokens", "unparseable")} | {"seconds": time.time() - t}
        Path(args.out).mkdir(parents=True, exist_ok=True)
        Path(args.out, f"cot-d{d}.json").write_text(json.dumps({**r, "difficulty": d}))
        lo, hi = r["ci"]
        print(f"difficulty {d}: {r['accuracy']:.3f} [{lo:.3f}, {hi:.3f}] n={r['n']} tokens/q={r['tokens'] / r['n']:.0f}"
              f"  {out[d]['seconds']:.0f}s", flush=True)
    return out


def sft_generator(batch: int, adapter: str):
    """SmolLM2 with a LoRA adapter merged into its fp32 weights, batched by the engine."""
    from ember.agents.tool_eval import load_for_eval
    from ember.infer.engine import Engine
    from ember.peft import merge_lora
    from ember.prompting.generate import EngineGenerator

    torch.set_num_threads(1)
    net, tok = load_for_eval("smollm2", adapter)
    return EngineGenerator(Engine(merge_lora(net).eval(), tok, max_batch_size=batch, batch_invariant=False), chat=True)


def _chunks(problems, prompts, size: int):
    for s in range(0, len(problems), size):
        yield s, problems[s:s + size], prompts[s:s + size]


def strategies(args) -> dict:
    """Greedy CoT, k samples per question and PRM beam search on --n problems at
    --difficulty, --save-every questions at a time; the files are rewritten after each chunk
    (a cut run keeps what it finished). Samples are scored later, by `table`."""
    from ember.prompting.outcome import StrategyConfig
    from ember.prompting.strategies import run_strategy
    from ember.train.verifiers import load_verifier

    gen = sft_generator(args.batch, args.adapter) if args.adapter else setup(args.batch)[0]
    problems, prompts = problems_at(args.difficulty, args.n)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t, runs = time.time(), {}

    def save(label: str, strategy: str, items: list[dict], **extra) -> None:
        runs[label] = rescore({"strategy": strategy, "label": label, "n": len(items), "difficulty": args.difficulty,
                               "tokens": sum(it["tokens"] for it in items), "items": items, **extra})
        atomic_write_json(out / f"{label}.json", runs[label])
        print(f"  {label}: {len(items)}/{len(problems)} questions, {time.time() - t:.0f}s, "
              f"accuracy {runs[label]['accuracy']:.3f}", flush=True)

    if "greedy" in args.parts:
        items = []
        for _, part, part_prompts in _chunks(problems, prompts, args.batch):  # one reply each: a full batch
            outs = run_strategy("cot", gen, part_prompts, [p.question for p in part], extract,
                                StrategyConfig(max_tokens=args.max_tokens, chat=True))
            items += [{"question": p.question, "gold": p.answer, "texts": o.texts, "tokens": o.tokens}
                      for p, o in zip(part, outs)]
            save("cot", "cot", items, samples=1)
    if "samples" in args.parts:
        items = []
        for _, part, part_prompts in _chunks(problems, prompts, args.save_every):
            for p, samples in zip(part, gen.generate(part_prompts, args.k, args.temperature, args.max_tokens, (),
                                                     args.seed)):
                items.append({"question": p.question, "gold": p.answer, "texts": [x.text for x in samples],
                              "tokens": sum(x.tokens for x in samples)})
            save("samples", "sc", items, samples=args.k)
    if "beam" in args.parts:
        prm = EquationPRM(load_verifier(args.prm, policy_tokenizer=gen.tokenizer))
        bcfg = StrategyConfig(n=args.beam_n, beam=2, max_steps=args.beam_steps, max_tokens=args.step_tokens,
                              chat=True, temperature=args.temperature, seed=args.seed)
        items = []
        for _, part, part_prompts in _chunks(problems, prompts, max(1, args.batch // args.beam_n)):
            outs = run_strategy("prm-beam", gen, part_prompts, [p.question for p in part], extract, bcfg, prm)
            items += [{"question": p.question, "gold": p.answer, "texts": o.texts, "scores": o.scores,
                       "tokens": o.tokens} for p, o in zip(part, outs)]
            save(args.beam_label, "prm-beam", items, samples=1, beam=2, beam_n=args.beam_n, prm=args.prm)
    return {k: {x: r[x] for x in ("accuracy", "ci", "n", "tokens")} for k, r in runs.items()}


def rescore(run: dict) -> dict:
    """A saved run's answers extracted again from its texts (the current `extract_answer`),
    its picks and accuracy recomputed."""
    from ember.prompting.estimators import majority, wilson
    from ember.prompting.run import same_answer
    from ember.prompting.strategies import best_of, weighted_best_of

    items = []
    for it in run["items"]:
        answers = [extract(t) for t in it["texts"]]
        if run["strategy"] == "sc":
            pick = majority(answers)
        elif run["strategy"] == "bon":
            pick = best_of(answers, it["scores"])
        elif run["strategy"] == "wbon":
            pick = weighted_best_of(answers, it["scores"])
        else:  # greedy, cot: the one reply; prm-beam: the best-scored kept solution
            pick = answers[0]
        items.append({**it, "answers": answers, "answer": pick, "correct": same_answer(pick, it["gold"])})
    right = sum(it["correct"] for it in items)
    return {**run, "items": items, "accuracy": right / len(items), "ci": list(wilson(right, len(items))),
            "unparseable": sum(a is None for it in items for a in it["answers"])}


def verifier_runs(out: Path, verifiers: list[str], samples: dict) -> tuple[dict, dict]:
    """The sc / bon / wbon runs over the saved samples (a PRM's reply score: the lowest or the
    product of its step scores; no equation line: 0) and each score's AUROC against the
    replies' correctness."""
    from ember.prompting.run import same_answer
    from ember.train.kit.verifier import auroc

    items = samples["items"]
    correct = torch.tensor([same_answer(a, it["gold"]) for it in items for a in it["answers"]])
    runs, aurocs = {"sc": rescore({**samples, "strategy": "sc", "label": "sc"})}, {}
    feats = reply_features(out, items) if verifiers else []
    for spec in verifiers:
        name, _, folder = spec.partition("=")
        flat, objective = step_scores(name, folder, feats)
        per, at = [], 0
        for it in items:
            per.append(flat[at:at + len(it["texts"])])
            at += len(it["texts"])
        aggs = {"min": min, "prod": math.prod} if objective == "steps" else {"min": min}
        for agg, f in aggs.items():
            label = name if len(aggs) == 1 else f"{name}-{agg}"
            scores = [[f(s) if s else 0.0 for s in q] for q in per]
            flat = torch.tensor([x for q in scores for x in q])
            aurocs[label] = {"all": round(auroc(flat, correct), 4), "with_equations": round(auroc(
                flat[torch.tensor([bool(s) for q in per for s in q])], correct[[bool(s) for q in per for s in q]]), 4)}
            for strategy in ("bon", "wbon"):
                its = [{**it, "scores": sc} for it, sc in zip(items, scores)]
                runs[f"{strategy}-{label}"] = rescore({**samples, "strategy": strategy, "label": f"{strategy}-{label}",
                                                        "items": its})
    return runs, aurocs


def paired_differences(runs: dict, pairs: list[str]) -> dict:
    """Accuracy of run A minus run B (A:B in pairs; runs of all k samples use their own pick
    over every sample) on the questions both answered, with a 95% bootstrap interval over
    questions."""
    from ember.prompting.estimators import bootstrap_ci

    out = {}
    for pair in pairs:
        a, _, b = pair.partition(":")
        if a not in runs or b not in runs:
            continue
        n = min(len(runs[a]["items"]), len(runs[b]["items"]))
        diffs = [float(x["correct"]) - float(y["correct"]) for x, y in zip(runs[a]["items"][:n], runs[b]["items"][:n])]
        lo, hi = bootstrap_ci(diffs)
        out[pair] = {"difference": sum(diffs) / n, "ci": [lo, hi], "n": n}
        print(f"{a} - {b}: {sum(diffs) / n:+.3f} [{lo:+.3f}, {hi:+.3f}] n={n}")
    return out


def table(args) -> dict:
    """The saved samples scored by every --verifiers NAME=DIR, the runs built on them (sc,
    bon and wbon per verifier), the greedy and beam runs of --out; one row each and its
    curve with 95% intervals; the runs go to OUT/final/ for `ember reason curve`, the
    curves to OUT/curves.png and OUT/table.json."""
    from ember.prompting.curves import plot_curves, run_curve

    out = Path(args.out)
    samples = json.loads((out / "samples.json").read_text())
    if args.first:  # compare every run on the same first questions
        samples["items"] = samples["items"][:args.first]
    runs, aurocs = verifier_runs(out, args.verifiers, rescore(samples))
    for f in sorted(out.glob("*.json")):
        run = json.loads(f.read_text())
        if (f.name == "cot.json" or f.name.startswith("prm-beam")) and "items" in run:
            run["items"] = run["items"][:args.first or None]
            runs[run["label"]] = rescore({**run, "n": len(run["items"])})
    final = out / "final"
    final.mkdir(parents=True, exist_ok=True)
    result, curves = {"aurocs": aurocs, "runs": {}}, []
    for label, run in runs.items():
        atomic_write_json(final / f"{label}.json", run)
        curves.append(run_curve(run))
        points = curves[-1]["points"]
        result["runs"][label] = {"n": len(run["items"]), "points": points}
        pts = "  ".join(f"k={p['k']:g} {p['accuracy']:.3f} [{p['ci'][0]:.2f},{p['ci'][1]:.2f}] {p['tokens']:.0f}t"
                        for p in points)
        print(f"{label:14s} n={len(run['items'])} | {pts}", flush=True)
    for label, a in aurocs.items():
        print(f"AUROC {label}: all replies {a['all']:.3f}, replies with an equation {a['with_equations']:.3f}")
    result["paired"] = paired_differences(runs, args.pairs)
    plot_curves(curves, out / "curves.png", f"SFT policy, difficulty {samples.get('difficulty')}")
    atomic_write_json(out / "table.json", result)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=["levels", "strategies", "table"])
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--difficulties", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    ap.add_argument("--difficulty", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=80)
    ap.add_argument("--k", type=int, default=8, help="samples per question")
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--prm", default=None, help="strategies: the PRM that guides beam search")
    ap.add_argument("--beam-n", type=int, default=4, help="prm-beam candidates per step (0: skip)")
    ap.add_argument("--beam-steps", type=int, default=4)
    ap.add_argument("--step-tokens", type=int, default=24, help="prm-beam: tokens per step at most")
    ap.add_argument("--parts", nargs="+", default=["greedy", "samples", "beam"], choices=["greedy", "samples", "beam"])
    ap.add_argument("--adapter", default=None, help="strategies: the policy's LoRA adapter (merged, fp32)")
    ap.add_argument("--beam-label", default="prm-beam", help="strategies: the beam run's file name")
    ap.add_argument("--verifiers", nargs="*", default=[], help="table: NAME=DIR verifiers that score the samples")
    ap.add_argument("--pairs", nargs="*", default=[], help="table: A:B runs whose paired accuracy difference to print")
    ap.add_argument("--save-every", type=int, default=5, help="strategies: questions per saved chunk")
    ap.add_argument("--batch", type=int, default=40)
    ap.add_argument("--family", default="arithmetic", help="levels: the task family (ember.data.reasoning.FAMILIES)")
    ap.add_argument("--quant", default="none", help="levels: none (fp32, exact) or a load quant, e.g. auto")
    ap.add_argument("--out", default="runs/reason/strategies")
    ap.add_argument("--levels", default="runs/reason/levels", help="table: where the levels' CoT runs are")
    ap.add_argument("--first", type=int, default=0, help="table: only the first N questions of every run")
    args = ap.parse_args()
    result = {"levels": levels, "strategies": strategies, "table": table}[args.what](args)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    Path(args.out, f"{args.what}-{'-'.join(getattr(args, 'parts', []))}.json".replace("-.", ".")).write_text(
        json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
