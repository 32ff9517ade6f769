"""Accuracy against samples and against generated tokens, from saved `ember reason` runs.

One run with n samples per question gives the whole curve for k = 1..n without sampling
again: self-consistency by the exact maj@k (and pass@k) over all k-subsets, best-of-k by
the exact chance that each sample is the best-scored of a random k-subset
(C(n-1-r, k-1) / C(n, k) for the sample ranked r), weighted best-of-k by the mean over
`draws` random k-subsets. Tokens at k are k times the mean tokens of one reply. Single-reply
strategies (greedy, cot, revise, prm-beam) are one point each. Every point carries a 95%
interval: a percentile bootstrap over questions for the sampled strategies (each question's
expected accuracy at k resampled), Wilson for a single reply per question.

    >>> bon_at_k([True, False, False], [0.1, 0.9, 0.5], 3)
    0.0
    >>> round(bon_at_k([True, False, False], [0.1, 0.9, 0.5], 1), 4)
    0.3333
"""

from __future__ import annotations

import math
import random
from pathlib import Path

from .estimators import bootstrap_ci, maj_at_k, pass_at_k, wilson
from .run import same_answer
from .strategies import weighted_best_of

SAMPLED = ("sc", "bon", "wbon")


def bon_at_k(correct: list[bool], scores: list[float], k: int) -> float:
    """Expected correctness of the best-scored of k samples drawn from the n (exact)."""
    n = len(correct)
    order = sorted(range(n), key=lambda i: (-scores[i], i))
    total = math.comb(n, k)
    return sum(math.comb(n - 1 - r, k - 1) for r, i in enumerate(order) if correct[i]) / total


def wbon_at_k(answers, scores, gold: str, k: int, draws: int = 200, seed: int = 0) -> float:
    rnd = random.Random(seed)
    idx = range(len(answers))
    hits = 0
    for _ in range(draws):
        sub = rnd.sample(idx, k)
        hits += same_answer(weighted_best_of([answers[i] for i in sub], [scores[i] for i in sub]), gold)
    return hits / draws


def default_ks(n: int) -> list[int]:
    """1, 2, 4, ... up to n, and n itself."""
    ks = [k for k in (2 ** i for i in range(n.bit_length())) if k <= n]
    return ks if ks[-1] == n else [*ks, n]


def run_curve(run: dict) -> dict:
    """{"strategy", "label", "points": [{"k", "accuracy", "ci", "tokens", ["pass"]}]} of one saved run."""
    items, strategy = run["items"], run["strategy"]
    label = run.get("label") or (f"{strategy} {run.get('shots', 0)}-shot" if strategy == "greedy" else strategy)
    per_q_tokens = sum(it["tokens"] for it in items) / len(items)
    if strategy not in SAMPLED:
        return {"strategy": strategy, "label": label,
                "points": [{"k": run.get("samples", 1), "accuracy": run["accuracy"], "tokens": per_q_tokens,
                            "ci": list(wilson(run["accuracy"] * len(items), len(items)))}]}
    n = min(len(it["answers"]) for it in items)
    one = sum(it["tokens"] / len(it["answers"]) for it in items) / len(items)
    points = []
    for k in default_ks(n):
        accs, pss = [], 0.0
        for it in items:
            answers, gold = it["answers"][:n], it["gold"]
            correct = [same_answer(a, gold) for a in answers]
            pss += pass_at_k(n, sum(correct), k)
            if strategy == "sc":
                accs.append(maj_at_k([_canon(a) for a in answers], _canon(gold), k))
            elif strategy == "bon":
                accs.append(bon_at_k(correct, it["scores"][:n], k))
            else:
                accs.append(wbon_at_k(answers, it["scores"][:n], gold, k))
        points.append({"k": k, "accuracy": sum(accs) / len(items), "ci": list(bootstrap_ci(accs)),
                       "pass": pss / len(items), "tokens": k * one})
    return {"strategy": strategy, "label": label, "points": points}


def _canon(a: str | None) -> str | None:
    """Answers that are equal as numbers vote together ("5.0" and "5")."""
    if a is None:
        return None
    try:
        return repr(float(a))
    except ValueError:
        return a.strip()


def plot_curves(curves: list[dict], path: str | Path, title: str = "") -> Path:
    """Two panels: accuracy against samples per question (log2) and against tokens per question."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ember.core.io import atomic_write_bytes

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for i, c in enumerate(curves):
        xs = [p["k"] for p in c["points"]]
        ts = [p["tokens"] for p in c["points"]]
        ys = [p["accuracy"] for p in c["points"]]
        style = "o" + ("-", "--", ":")[i // 10 % 3]  # the colour cycle repeats after 10 curves
        axes[0].plot(xs, ys, style, label=c["label"])
        axes[1].plot(ts, ys, style, label=c["label"])
    axes[0].set_xscale("log", base=2)
    axes[0].set_xlabel("samples per question")
    axes[1].set_xscale("log")
    axes[1].set_xlabel("generated tokens per question")
    for ax in axes:
        ax.set_ylabel("accuracy")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())
