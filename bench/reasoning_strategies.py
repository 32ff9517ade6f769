"""The generated word problems (ember.data.reasoning_tasks) on SmolLM2-135M-Instruct: greedy
chain-of-thought accuracy by difficulty (the calibration), then test-time-compute strategies
at equal generated tokens: self-consistency (maj@k), best-of-k and weighted best-of-k with an
outcome (ORM) and a process (PRM) verifier, PRM-guided step beam search, against greedy CoT.

    OMP_NUM_THREADS=1 .venv/bin/python -P bench/reasoning_strategies.py levels --n 40
    OMP_NUM_THREADS=1 .venv/bin/python -P bench/reasoning_strategies.py strategies --difficulty 3 --n 64 \\
        --k 8 --max-tokens 96 --adapter runs/sft-reasoning/adapter --parts greedy samples --out OUT
    ... strategies --parts beam --questions OUT/samples.json --prm DIR --beam-label prm-beam-NAME --out OUT
    ... table --out OUT --verifiers orm=runs/orm prm=runs/prm ormop=DIR prmop=DIR --pairs A:B ...

Every question is the chat prompt `prompt_text`; a reply's answer is `extract_answer` (the
last "answer is N", else the last number after `</think>`, else the last number).
`strategies` writes the greedy CoT run, k replies per question (temperature 0.7) and the beam
run; `table` scores every sampled reply with every `--peft head` verifier (their heads read
the frozen body's states, computed once: bench/verifiers.py), builds sc / bon / wbon per
verifier (a PRM's reply score: the lowest or the product of its step scores; no equation
line: 0) and writes OUT/final/*.json, OUT/curves.png and OUT/table.json. Curves (maj@k,
best-of-k exact over all k-subsets, weighted over 200 random subsets) and their 95%
intervals (bootstrap over questions; Wilson for one reply) come from
`ember.prompting.curves.run_curve`, as in `ember reason curve --runs OUT/final/*.json`.

Measured 2026-12-07 00:00 UTC, one thread of the 2-core CPU under load 13-18. Policy: the SFT
reasoning adapter merged into fp32 SmolLM2 (exact; Engine batch 32, batch_invariant=False).
Difficulty 3 as defined at c49bff5 (one event, +, -, x2, x3, start 3-20, operand 2-12; the
levels were re-spaced since: this is today's level 4's kind, another seeded draw), n = 64
(seed 12345), k = 8 replies of at most 96 tokens; 473 of the 512 replies write one equation,
39 two. Verifiers: runs/orm, runs/prm (trained on corrupted reference solutions) and the
on-policy heads runs/verifiers-onpolicy/{orm,prm} (bench/verifiers.py --onpolicy: 476 of
the policy's own replies, levels 3-5). prm-beam: 4 candidates per line, beam 2, <= 6 lines of
<= 24 tokens, the PRM reading the equation lines so far (lowest step score).

    accuracy [95% CI]   k=1 (26 tok)  k=2 (52)  k=4 (103)  k=8 (206 tok)        AUROC on the replies
    greedy CoT          0.688 [0.57, 0.79] (25 tok)
    sc (maj@k)          0.553         0.553     0.640      0.664 [0.55, 0.77]
    bon, ORM            0.553         0.557     0.503      0.453 [0.33, 0.58]   0.518
    bon, PRM min / prod 0.553         0.550     0.487      0.422 / 0.438        0.528 / 0.541
    wbon, ORM           0.552         0.557     0.611      0.656 [0.53, 0.77]
    wbon, PRM min       0.552         0.537     0.596      0.625 [0.50, 0.73]
    bon, ORM on-policy  0.553         0.594     0.566      0.516 [0.39, 0.62]   0.557
    bon, PRM on-policy  0.553         0.627     0.648      0.641 [0.52, 0.75]   0.739 (prod: same)
    wbon, ORM on-pol.   0.552         0.593     0.651      0.656 [0.53, 0.77]
    wbon, PRM on-pol.   0.552         0.628     0.672      0.688 [0.58, 0.80]
    prm-beam, PRM       0.562 [0.44, 0.68] (58 tok), n = 64
    prm-beam, on-policy 0.625 [0.50, 0.73] (58 tok), n = 64

Paired differences at k = 8 (each run's own pick over all 8 replies; bootstrap over the 64
questions): sc - greedy -0.031 [-0.109, +0.047]; bon PRM - bon ORM -0.031 [-0.109, +0.047]
(corrupted-trained), +0.125 [+0.047, +0.219] (on-policy); wbon - bon: ORM +0.203 [+0.109,
+0.312], PRM +0.203 [+0.109, +0.312], on-policy ORM +0.141 [+0.031, +0.266], on-policy PRM
+0.047 [-0.047, +0.141]; on-policy PRM - corrupted PRM (bon) +0.219 [+0.078, +0.359];
prm-beam - greedy: on-policy PRM -0.062 [-0.125, -0.016], corrupted PRM -0.125 [-0.203,
-0.047]; on-policy - corrupted beam +0.062 [-0.016, +0.141].

Replicated on the re-spaced scale (9745864: level 4 is the same kind of problem; this is
another draw, make_problems(64, 4, 12345), same settings, OUT runs/verifiers-strategies-new4):
greedy CoT 0.812 [0.70, 0.89]; one sample 0.623; at k = 8: sc 0.719, bon ORM 0.484 / PRM
0.500, wbon ORM 0.688 / PRM 0.641, on-policy bon ORM 0.719 / PRM 0.703, on-policy wbon ORM
0.750 / PRM 0.766 [0.66, 0.86]; on-policy prm-beam 0.750 [0.63, 0.84] (56 tok). AUROC on the
replies: corrupted ORM 0.401, PRM 0.408; on-policy ORM 0.701, PRM 0.788. Paired: sc - greedy
-0.109 [-0.188, -0.047]; on-policy bon PRM - ORM -0.016 [-0.109, +0.078]; wbon - bon: ORM
+0.203 [+0.094, +0.312], PRM +0.141 [+0.047, +0.250], on-policy ORM +0.031, PRM +0.062 (both
intervals hold 0); prm-beam - greedy -0.062 [-0.125, -0.016].

What holds here (both draws). Self-consistency beats greedy CoT: no. A reply sampled at 0.7
is right 0.553 (0.623) against greedy's 0.688 (0.812); voting 8 of them gives 0.664 (0.719),
8x the tokens for -0.03 (-0.11, interval below 0). PRM beats ORM: not with the verifiers
trained on corrupted reference solutions, which rank the policy's own replies at chance or
below (AUROC 0.52-0.54; 0.40-0.41), so best-of-8 with either falls below
one sample (0.42-0.50); with on-policy verifiers, not shown: +0.125 [+0.05, +0.22] at k = 8
on the first draw, -0.016 [-0.11, +0.08] on the second, though the PRM ranks the replies
better on both (AUROC 0.74 / 0.79 against 0.56 / 0.70). Training on the policy's own replies
is what helps: on-policy against corrupted-trained PRM, bon@8 +0.22 and +0.20 (intervals
above 0). At this level nearly every reply is one equation, so min and product
agree, and PRM against ORM compares where a head reads and what it is taught, not credit
over several steps. Weighted best-of-k beats plain: yes for
the corrupted-trained verifiers (+0.14 to +0.20), within the intervals for the on-policy
ones (+0.03 to +0.14): with a weak verifier the weights barely differ and weighted best-of-k
is majority voting. No strategy beats greedy CoT: the best, weighted best-of-8 with the
on-policy PRM, ties it (0.688) or falls short (0.766 against 0.812) at 8x the tokens;
PRM beam search (2.3x the tokens of one reply) is as good as best-of-2 with the same PRM
(0.625 against 0.627 at 52 tokens) and below greedy by 0.06 [0.02, 0.13] on both draws.
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


def saved_problems(path: str, n: int):
    """The first n questions (and golds) of a saved run, with their chat prompts."""
    from ember.data.reasoning_tasks import prompt_text
    from ember.prompting.prompts import Problem

    items = json.loads(Path(path).read_text())["items"][:n]
    return ([Problem(it["question"], it["gold"]) for it in items],
            [[{"role": "user", "content": prompt_text({"question": it["question"]})}] for it in items])


def strategies(args) -> dict:
    """Greedy CoT, k samples per question and PRM beam search on --n problems at
    --difficulty, --save-every questions at a time; the files are rewritten after each chunk
    (a cut run keeps what it finished). Samples are scored later, by `table`."""
    from ember.prompting.outcome import StrategyConfig
    from ember.prompting.strategies import run_strategy
    from ember.train.verifiers import load_verifier

    gen = sft_generator(args.batch, args.adapter) if args.adapter else setup(args.batch)[0]
    problems, prompts = problems_at(args.difficulty, args.n)
    if args.questions:  # the very questions of a saved run (the levels may have changed since)
        problems, prompts = saved_problems(args.questions, args.n)
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
    ap.add_argument("--questions", default=None, help="strategies: take the questions of this saved run")
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
