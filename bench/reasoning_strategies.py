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
import time
from pathlib import Path

import torch

SEED = 12345


def setup(batch: int):
    from ember.agents.tool_eval import load_for_eval
    from ember.infer.engine import Engine
    from ember.prompting.generate import EngineGenerator

    torch.set_num_threads(1)
    net, tok = load_for_eval("smollm2", None)
    return EngineGenerator(Engine(net, tok, max_batch_size=batch, batch_invariant=False), chat=True), tok


def problems_at(difficulty: int, n: int):
    from ember.data.reasoning_tasks import make_problems, prompt_text
    from ember.prompting.prompts import Problem

    ps = make_problems(n, difficulty, SEED)
    return [Problem(p["question"], str(p["answer"])) for p in ps], [[{"role": "user", "content": prompt_text(p)}]
                                                                     for p in ps]


def extract(text: str) -> str | None:
    from ember.data.reasoning_tasks import extract_answer

    a = extract_answer(text)
    return None if a is None else str(a)


def levels(args) -> dict:
    from ember.prompting.outcome import StrategyConfig
    from ember.prompting.run import evaluate_strategy

    gen, _ = setup(args.batch)
    out = {}
    for d in args.difficulties:
        problems, prompts = problems_at(d, args.n)
        t = time.time()
        r = evaluate_strategy(gen, problems, problems, extract, "cot", StrategyConfig(max_tokens=args.max_tokens,
                              chat=True), prompts=prompts, chunk=args.batch, extraction="extract_answer")
        out[d] = {k: r[k] for k in ("accuracy", "ci", "n", "tokens", "unparseable")} | {"seconds": time.time() - t}
        Path(args.out).mkdir(parents=True, exist_ok=True)
        Path(args.out, f"cot-d{d}.json").write_text(json.dumps({**r, "difficulty": d}))
        lo, hi = r["ci"]
        print(f"difficulty {d}: {r['accuracy']:.3f} [{lo:.3f}, {hi:.3f}] n={r['n']} tokens/q={r['tokens'] / r['n']:.0f}"
              f"  {out[d]['seconds']:.0f}s", flush=True)
    return out


def sample_items(args, gen, verifiers, problems, prompts) -> list[dict]:
    """k sampled replies per question, each scored by every verifier."""
    items = []
    for s in range(0, len(problems), max(1, args.batch // args.k)):
        part = slice(s, s + max(1, args.batch // args.k))
        for p, samples in zip(problems[part], gen.generate(prompts[part], args.k, args.temperature,
                                                           args.max_tokens, (), args.seed)):
            texts = [x.text for x in samples]
            items.append({"question": p.question, "gold": p.answer, "texts": texts, "scores": {
                v: [ver.score(p.question, t) for t in texts] for v, ver in verifiers.items()},
                "tokens": sum(x.tokens for x in samples)})
    return items


def sample_runs(items: list[dict], k: int, verifiers) -> dict[str, dict]:
    """The sc / bon / wbon runs (bon and wbon per verifier) over the same samples."""
    runs = {}
    for strategy in ("sc", "bon", "wbon"):
        for v in ([None] if strategy == "sc" else list(verifiers)):
            label = strategy if v is None else f"{strategy}-{v}"
            its = [{**it, "scores": it["scores"][v] if v else None} for it in items]
            runs[label] = rescore({"strategy": strategy, "label": label, "n": len(its), "samples": k,
                                   "tokens": sum(it["tokens"] for it in its), "items": its})
    return runs


def strategies(args) -> dict:
    """Sampled strategies and PRM beam on --n problems at --difficulty, --save-every
    questions at a time; every run file is rewritten after each chunk (a cut run keeps
    what it finished)."""
    from ember.prompting.outcome import StrategyConfig
    from ember.prompting.strategies import run_strategy
    from ember.train.verifiers import load_verifier

    gen, _ = setup(args.batch)
    problems, prompts = problems_at(args.difficulty, args.n)
    verifiers = {name: load_verifier(path, policy_tokenizer=gen.tokenizer) for name, path in
                 (("orm", args.orm), ("prm", args.prm)) if path}
    bcfg = StrategyConfig(n=args.beam_n, beam=2, max_steps=args.beam_steps, max_tokens=args.step_tokens, chat=True,
                          temperature=args.temperature, seed=args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t, items, beam_items, runs = time.time(), [], [], {}
    for s in range(0, len(problems), args.save_every):
        part, part_prompts = problems[s:s + args.save_every], prompts[s:s + args.save_every]
        if "samples" in args.parts:
            items += sample_items(args, gen, verifiers, part, part_prompts)
            runs.update(sample_runs(items, args.k, verifiers))
        if "beam" in args.parts and "prm" in verifiers and args.beam_n:
            outs = run_strategy("prm-beam", gen, part_prompts, [p.question for p in part], extract, bcfg,
                                verifiers["prm"])
            beam_items += [{"question": p.question, "gold": p.answer, "texts": o.texts, "scores": o.scores,
                            "tokens": o.tokens} for p, o in zip(part, outs)]
            runs["prm-beam"] = rescore({"strategy": "prm-beam", "label": "prm-beam", "n": len(beam_items),
                                        "samples": 1, "tokens": sum(it["tokens"] for it in beam_items),
                                        "items": beam_items, "beam": 2, "beam_n": args.beam_n})
        for label, run in runs.items():
            (out / f"{label}.json").write_text(json.dumps(run))
        print(f"  {s + len(part)}/{len(problems)} questions, {time.time() - t:.0f}s: " + ", ".join(
            f"{k} {r['accuracy']:.3f}" for k, r in runs.items()), flush=True)
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


def table(args) -> dict:
    """Every saved run of --out (and the levels' CoT at --difficulty) rescored; one row each
    and its curve; the rescored runs go to OUT/final/ for `ember reason curve`."""
    from ember.prompting.curves import run_curve

    files = sorted(Path(args.out).glob("*.json"))
    files += [f for f in [Path(args.levels, f"cot-d{args.difficulty}.json")] if f.is_file()]
    final = Path(args.out, "final")
    final.mkdir(parents=True, exist_ok=True)
    out = {}
    for f in files:
        run = json.loads(f.read_text())
        if not isinstance(run, dict) or "items" not in run:
            continue
        if args.first:  # compare every run on the same first questions
            run["items"] = run["items"][:args.first]
            run.update(n=len(run["items"]), tokens=sum(it["tokens"] for it in run["items"]))
        run = rescore(run)
        scored = [x for it in run["items"] for x in (it.get("scores") or [])]
        if run["strategy"] in ("bon", "wbon") and scored:
            print(f"  {run.get('label')}: {sum(x == 0 for x in scored)} of {len(scored)} replies scored 0 "
                  "(no equation line the verifier reads)")
        label = run.get("label") or run["strategy"]
        run["label"] = label
        (final / f"{label}.json").write_text(json.dumps(run))
        points = run_curve(run)["points"]
        lo, hi = run["ci"]
        out[label] = {"accuracy": run["accuracy"], "ci": run["ci"], "n": run["n"],
                      "tokens_per_q": run["tokens"] / run["n"], "curve": points}
        pts = "  ".join(f"k={p['k']:g}: {p['accuracy']:.3f} ({p['tokens']:.0f} tok)" for p in points)
        print(f"{label:10s} {run['accuracy']:.3f} [{lo:.3f}, {hi:.3f}] n={run['n']} "
              f"tok/q={run['tokens'] / run['n']:.0f} | {pts}", flush=True)
    return out


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
    ap.add_argument("--orm", default=None)
    ap.add_argument("--prm", default=None)
    ap.add_argument("--beam-n", type=int, default=4, help="prm-beam candidates per step (0: skip)")
    ap.add_argument("--beam-steps", type=int, default=4)
    ap.add_argument("--step-tokens", type=int, default=24, help="prm-beam: tokens per step at most")
    ap.add_argument("--parts", nargs="+", default=["samples", "beam"], choices=["samples", "beam"])
    ap.add_argument("--save-every", type=int, default=5, help="strategies: questions per saved chunk")
    ap.add_argument("--batch", type=int, default=40)
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
