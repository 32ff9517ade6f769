"""pass@k and maj@k against brute force over every subset; the Wilson interval."""

import math
import random
from itertools import combinations

import pytest

from ember.prompting.estimators import (
    bootstrap_ci,
    maj_at_k,
    maj_at_k_brute,
    majority,
    pass_at_k,
    wilson,
)


def _pass_brute(n, c, k):
    items = [1] * c + [0] * (n - c)
    subs = list(combinations(items, k))
    return sum(any(s) for s in subs) / len(subs)


@pytest.mark.parametrize("n", [1, 2, 5, 9])
def test_pass_at_k_matches_subsets(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(_pass_brute(n, c, k), abs=1e-12)


def test_pass_at_k_is_stable_for_large_n():
    # C(2000, 100) overflows a float; the product form does not
    assert pass_at_k(2000, 3, 100) == pytest.approx(1 - math.comb(1997, 100) / math.comb(2000, 100), rel=1e-9)
    assert pass_at_k(2000, 0, 100) == 0.0 and pass_at_k(5, 5, 1) == 1.0


def test_maj_at_k_matches_enumeration_with_ties_and_unparseable():
    rnd = random.Random(0)
    for _ in range(400):
        n = rnd.randint(1, 9)
        answers = [rnd.choice(["1", "2", "3", None]) for _ in range(n)]
        k = rnd.randint(1, n)
        assert maj_at_k(answers, "1", k) == pytest.approx(maj_at_k_brute(answers, "1", k), abs=1e-12)


def test_maj_at_k_known_values():
    assert maj_at_k(["a", "b"], "a", 2) == 0.5  # a tie, broken uniformly
    assert maj_at_k(["a", "a", "b", "b", "b"], "a", 5) == 0.0
    assert maj_at_k([None, None], "a", 1) == 0.0
    assert maj_at_k(["a", "a", "b"], "a", 1) == pytest.approx(2 / 3)  # maj@1 is the mean accuracy


@pytest.mark.parametrize("bad", [(0, 1), (3, 0), (3, 4)])
def test_bad_n_or_k_is_named(bad):
    n, k = bad
    with pytest.raises(ValueError, match="n must be|k must be"):
        pass_at_k(n, 0, k)


def test_majority_tie_goes_to_first_seen():
    assert majority(["4", "3", "3", "4"]) == "4"
    assert majority([None, None]) is None


def test_wilson_and_bootstrap():
    lo, hi = wilson(0, 20)
    assert lo == 0.0 and 0.1 < hi < 0.2
    lo, hi = wilson(20, 20)
    assert hi == 1.0 and 0.8 < lo < 0.9
    lo, hi = bootstrap_ci([0.0, 1.0] * 50)
    assert lo < 0.5 < hi and hi - lo < 0.25
    with pytest.raises(ValueError, match="n must be"):
        wilson(0, 0)
