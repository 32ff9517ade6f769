"""Estimators over n samples per problem: unbiased pass@k, exact maj@k, confidence intervals.

- pass@k (Chen et al. 2021): the chance that at least one of k samples drawn without
  replacement from the n is correct, 1 - C(n-c, k) / C(n, k), computed as the product
  Π_{i=n-c+1..n} (1 - k / i), which never forms the large binomials.
- maj@k: the expected correctness of a majority vote over k samples, averaged exactly over
  all C(n, k) subsets of the n. Unparseable samples (None) cast no vote; a subset with no
  vote scores 0; a tie between answers is broken uniformly at random, so a subset whose
  top answers tie t ways counts 1/t when the correct answer is among them. For every
  answer a with m_a votes in the n, the number of subsets where a gets j votes and every
  other answer fewer (or as many, sharing the tie) is counted by a polynomial product over
  the other answers; the whole sum is exact (fractions), with no enumeration.
- Wilson score interval of a proportion (95 %), and a percentile bootstrap of a mean.

    >>> round(pass_at_k(10, 3, 1), 4), round(pass_at_k(10, 3, 5), 4)
    (0.3, 0.9167)
    >>> maj_at_k(["7", "7", "8"], "7", 1), maj_at_k(["7", "7", "8"], "7", 3)
    (0.6666666666666666, 1.0)
"""

from __future__ import annotations

import math
import random
from collections import Counter
from fractions import Fraction
from itertools import combinations

Z95 = 1.959963984540054


def _check(n: int, k: int) -> None:
    if n < 1:
        raise ValueError(f"n must be >= 1 sample, got {n}")
    if not 1 <= k <= n:
        raise ValueError(f"k must be in 1..n={n}, got {k}")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of c correct among n samples (stable product form)."""
    _check(n, k)
    if not 0 <= c <= n:
        raise ValueError(f"c must be in 0..n={n}, got {c}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def _poly_mul(a: list[int], b: list[int], cap: int) -> list[int]:
    out = [0] * min(len(a) + len(b) - 1, cap + 1)
    for i, x in enumerate(a):
        if x:
            for j, y in enumerate(b):
                if i + j > cap:
                    break
                out[i + j] += x * y
    return out


def _win_share(counts: list[int], target: int, none: int, k: int) -> Fraction:
    """Σ over k-subsets of the share of the vote `counts[target]` wins (ties split evenly)."""
    m = counts[target]
    others = [c for i, c in enumerate(counts) if i != target]
    total = Fraction(0)
    for j in range(1, min(m, k) + 1):
        # polynomials in x (samples taken) and, for ties, by number of others tied at j
        # poly[t][s]: ways to take s samples from the others with exactly t of them at j votes
        poly = [[1]]
        for c in others:
            below = [math.comb(c, s) for s in range(min(c, j - 1) + 1)]
            at = [0] * j + [math.comb(c, j)] if c >= j else None
            new = [[0] for _ in range(len(poly) + 1)]
            for t, p in enumerate(poly):
                new[t] = _add(new[t], _poly_mul(p, below, k))
                if at is not None:
                    new[t + 1] = _add(new[t + 1], _poly_mul(p, at, k))
            poly = new
        ways_target = math.comb(m, j)
        for t, p in enumerate(poly):
            for s, w in enumerate(p):
                rest = k - j - s  # drawn from the unparseable samples
                if w and 0 <= rest <= none:
                    total += Fraction(ways_target * w * math.comb(none, rest), t + 1)
    return total


def _add(a: list[int], b: list[int]) -> list[int]:
    out = [0] * max(len(a), len(b))
    for i, x in enumerate(a):
        out[i] += x
    for i, x in enumerate(b):
        out[i] += x
    return out


def maj_at_k(answers: list[str | None], correct: str, k: int) -> float:
    """Exact expected majority-vote accuracy of k of the n answers (None: unparseable)."""
    _check(len(answers), k)
    votes = Counter(a for a in answers if a is not None)
    if correct not in votes:
        return 0.0
    keys = list(votes)
    share = _win_share([votes[a] for a in keys], keys.index(correct), answers.count(None), k)
    return float(share / math.comb(len(answers), k))


def maj_at_k_brute(answers: list[str | None], correct: str, k: int) -> float:
    """maj@k by enumerating the C(n, k) subsets (for checking `maj_at_k` on small n)."""
    _check(len(answers), k)
    total = Fraction(0)
    for sub in combinations(answers, k):
        votes = Counter(a for a in sub if a is not None)
        if votes:
            top = max(votes.values())
            winners = [a for a, v in votes.items() if v == top]
            total += Fraction(int(correct in winners), len(winners))
    return float(total / math.comb(len(answers), k))


def majority(answers: list[str | None]) -> str | None:
    """The most frequent parseable answer; a tie goes to the one seen first (None: no vote).

    >>> majority([None, "3", "4", "4", "3"])
    '3'
    """
    votes = Counter(a for a in answers if a is not None)
    if not votes:
        return None
    top = max(votes.values())
    return next(a for a in answers if a is not None and votes[a] == top)


def wilson(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of successes/n (successes may be fractional, e.g. maj@k means).

    >>> tuple(round(x, 3) for x in wilson(5, 10))
    (0.237, 0.763)
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def bootstrap_ci(values: list[float], reps: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values`.

    >>> bootstrap_ci([1.0] * 5)
    (1.0, 1.0)
    """
    if not values:
        raise ValueError("bootstrap_ci needs at least one value")
    rnd = random.Random(seed)
    n = len(values)
    means = sorted(sum(rnd.choices(values, k=n)) / n for _ in range(reps))
    lo = int((1 - level) / 2 * reps)
    return means[lo], means[min(reps - 1, reps - 1 - lo)]
