"""One strategy over a list of problems: prompts, generation in chunks, scoring, a summary.

`evaluate_strategy` returns {"accuracy", "ci" (95% Wilson), "n", "strategy", "samples"
(replies per question), "tokens" (generated, all questions), "unparseable" (replies with no
answer), "pass_at_n" (sampled strategies: some reply right), "items"}. When every reply is
unparseable the run is an error naming the extraction: a broken prompt or extractor, not a
model that is always wrong.

    >>> out = evaluate_strategy(gen, problems, pool, extract, "sc", StrategyConfig(n=8))  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import replace

from tqdm.auto import tqdm

from .estimators import pass_at_k, wilson
from .prompts import TEMPLATES, Problem, build_prompt, reorder, sample_demos
from .strategies import StrategyConfig, run_strategy, wants_cot

PLAIN_STOPS = {False: ("\n", "Question:"), True: ("Question:", "\n\n\n")}


def same_answer(a: str | None, gold: str) -> bool:
    """Equal as numbers when both are numbers ("5.0" is "5"), else as stripped strings.

    >>> same_answer("5.0", "5"), same_answer(None, "5"), same_answer("B", "B")
    (True, False, True)
    """
    if a is None:
        return False
    try:
        return float(a) == float(gold)
    except ValueError:
        return a.strip() == gold.strip()


def build_prompts(problems: list[Problem], pool: list[Problem], shots: int, seed: int, cot: bool, chat: bool,
                  template: str = "qa", system: str = "", order_seed: int | None = None) -> list:
    """Each problem's prompt; its demonstrations drawn with seed + its index (and shuffled
    by order_seed + its index when given: the same demonstrations in another order)."""
    if template not in TEMPLATES:
        raise ValueError(f"unknown template {template!r}; templates: {', '.join(TEMPLATES)}")
    out = []
    for i, p in enumerate(problems):
        demos = sample_demos(pool, shots, seed + i, exclude=p)
        demos = demos if order_seed is None else reorder(demos, order_seed + i)
        out.append(build_prompt(p, demos, TEMPLATES[template], system, cot, chat))
    return out


def evaluate_strategy(gen, problems: list[Problem], pool: list[Problem], extract, strategy: str,
                      cfg: StrategyConfig, shots: int = 0, template: str = "qa", system: str = "",
                      verifier=None, extraction: str = "the extractor", chunk: int = 8,
                      progress: bool = True, prompts: list | None = None) -> dict:
    """Run `strategy` on every problem (`chunk` questions at a time) and summarise."""
    if not problems:
        raise ValueError("no problems to answer")
    cot = wants_cot(strategy)
    if prompts is None:
        prompts = build_prompts(problems, pool, shots, cfg.seed, cot, cfg.chat, template, system)
    if not cfg.chat and not cfg.stop:
        cfg = replace(cfg, stop=PLAIN_STOPS[cot])
    outcomes = []
    bar = tqdm(total=len(problems), desc=strategy, unit="q", disable=not progress)
    for s in range(0, len(problems), chunk):
        part = problems[s:s + chunk]
        outcomes += run_strategy(strategy, gen, prompts[s:s + chunk], [p.question for p in part], extract, cfg,
                                 verifier)
        bar.update(len(part))
    bar.close()
    return summarize(problems, outcomes, strategy, extraction)


def summarize(problems: list[Problem], outcomes: list, strategy: str, extraction: str) -> dict:
    items, right, unparseable, replies, passed = [], 0, 0, 0, 0
    for p, o in zip(problems, outcomes):
        ok = same_answer(o.answer, p.answer)
        right += ok
        unparseable += sum(a is None for a in o.answers)
        replies += len(o.answers)
        c = sum(same_answer(a, p.answer) for a in o.answers)
        passed += pass_at_k(len(o.answers), c, len(o.answers))
        items.append({"question": p.question, "gold": p.answer, "answer": o.answer, "correct": ok,
                      "answers": o.answers, "texts": o.texts, "tokens": o.tokens, "scores": o.scores})
    if unparseable == replies:
        raise ValueError(f"none of the {replies} replies had an answer the extraction could parse "
                         f"({extraction}); check the prompt format and the task's answers")
    n = len(problems)
    return {"accuracy": right / n, "ci": list(wilson(right, n)), "n": n, "strategy": strategy,
            "samples": replies / n, "tokens": sum(o.tokens for o in outcomes), "unparseable": unparseable,
            "pass_at_n": passed / n, "items": items}


def sensitivity(gen, problems: list[Problem], pool: list[Problem], extract, cfg: StrategyConfig, shots: int,
                templates: tuple[str, ...] = tuple(TEMPLATES), orders: tuple[int | None, ...] = (None, 1),
                strategy: str = "greedy", progress: bool = False) -> dict:
    """The same problems under every template × demonstration order: each variant's
    accuracy, and their spread {"min", "max", "std"} (population std over variants)."""
    variants = []
    for t in templates:
        for o in orders if shots > 1 else (None,):
            prompts = build_prompts(problems, pool, shots, cfg.seed, wants_cot(strategy), cfg.chat, t, "", o)
            r = evaluate_strategy(gen, problems, pool, extract, strategy, cfg,
                                  progress=progress, prompts=prompts)
            variants.append({"template": t, "order_seed": o, "accuracy": r["accuracy"], "n": r["n"]})
    accs = [v["accuracy"] for v in variants]
    mu = sum(accs) / len(accs)
    std = (sum((a - mu) ** 2 for a in accs) / len(accs)) ** 0.5
    return {"variants": variants, "min": min(accs), "max": max(accs), "std": std, "mean": mu}
