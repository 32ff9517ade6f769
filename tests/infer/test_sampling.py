"""Sampling functions against hand-computed tables, plus params validation and RNG rules.

The table (the seed's softmax/temperature/top-k/top-p worked example, redone on our own
logits) for logits z = [2.0, 1.0, 0.5, 0.1], computed by hand from p_i = e^(z_i/T) / Σ e^(z_j/T):
  T=1:   e^z = [7.389, 2.718, 1.649, 1.105], Σ = 12.861 → [0.5745, 0.2114, 0.1282, 0.0859]
  T=0.5: e^2z = [54.598, 7.389, 2.718, 1.221], Σ = 65.927 → [0.8282, 0.1121, 0.0412, 0.0185]
  T=2:   e^z/2 = [2.718, 1.649, 1.284, 1.051], Σ = 6.702 → [0.4056, 0.2460, 0.1916, 0.1569]
  top-k=2 (T=1): 7.389 / 10.107, 2.718 / 10.107 → [0.7311, 0.2689, 0, 0]
  top-p=0.9 (T=1): cumulative 0.5745, 0.7859, 0.9141 ≥ 0.9 → keep 3; renormalised by 0.9141
                   → [0.6285, 0.2312, 0.1402, 0]
  min-p=0.2 (T=1): threshold 0.2 × 0.5745 = 0.1149 → drop 0.0859 → same as top-p=0.9
"""

import pytest
import torch

from ember.infer.sampling import (
    Sampler,
    SamplingParams,
    apply_frequency_presence_penalties,
    apply_min_p,
    apply_repetition_penalty,
    apply_temperature,
    apply_top_k,
    apply_top_p,
    greedy,
    sample,
)

Z = torch.tensor([2.0, 1.0, 0.5, 0.1])


def probs(logits):
    return torch.softmax(logits, dim=-1)


def close(actual, expected, tol=6e-4):
    assert torch.allclose(actual, torch.tensor(expected), atol=tol), (actual, expected)


@pytest.mark.parametrize(
    "T, expected",
    [
        (1.0, [0.5745, 0.2114, 0.1282, 0.0859]),
        (0.5, [0.8282, 0.1121, 0.0412, 0.0185]),
        (2.0, [0.4056, 0.2460, 0.1916, 0.1569]),
    ],
)
def test_temperature_table(T, expected):
    close(probs(apply_temperature(Z, T)), expected)


def test_top_k_table():
    close(probs(apply_top_k(Z, 2)), [0.7311, 0.2689, 0.0, 0.0])
    close(probs(apply_top_k(Z, 0)), [0.5745, 0.2114, 0.1282, 0.0859])  # 0 = off
    close(probs(apply_top_k(Z, 99)), [0.5745, 0.2114, 0.1282, 0.0859])  # k > V keeps all


def test_top_p_table():
    close(probs(apply_top_p(Z, 0.9)), [0.6285, 0.2312, 0.1402, 0.0])
    close(probs(apply_top_p(Z, 0.5)), [1.0, 0.0, 0.0, 0.0])  # the top token always survives
    close(probs(apply_top_p(Z, 0.78)), [0.7311, 0.2689, 0.0, 0.0])  # 0.5745 < 0.78 ≤ 0.7859
    close(probs(apply_top_p(Z, 1.0)), [0.5745, 0.2114, 0.1282, 0.0859])


def test_min_p_table():
    close(probs(apply_min_p(Z, 0.2)), [0.6285, 0.2312, 0.1402, 0.0])
    close(probs(apply_min_p(Z, 0.0)), [0.5745, 0.2114, 0.1282, 0.0859])


def test_per_row_knobs_are_independent():
    z = Z.expand(3, 4)
    out = probs(
        apply_top_k(apply_temperature(z, torch.tensor([1.0, 0.5, 2.0])), torch.tensor([2, 0, 1]))
    )
    close(out[0], [0.7311, 0.2689, 0.0, 0.0])
    close(out[1], [0.8282, 0.1121, 0.0412, 0.0185])
    close(out[2], [1.0, 0.0, 0.0, 0.0])
    close(probs(apply_top_p(z, torch.tensor([0.9, 1.0, 0.5])))[0], [0.6285, 0.2312, 0.1402, 0.0])


def test_repetition_penalty_divides_positive_multiplies_negative():
    z = torch.tensor([2.0, -1.0, 0.5, 3.0])
    seen = torch.tensor([True, True, False, False])
    assert apply_repetition_penalty(z, seen, 2.0).tolist() == [1.0, -2.0, 0.5, 3.0]


def test_frequency_and_presence_penalties():
    z = torch.tensor([2.0, 1.0, 0.5, 0.1])
    counts = torch.tensor([3, 1, 0, 0])
    # logit - count*freq - (count>0)*presence: 2 - 1.5 - 1, 1 - 0.5 - 1, unchanged, unchanged
    out = apply_frequency_presence_penalties(z, counts, 0.5, 1.0)
    close(out, [-0.5, -0.5, 0.5, 0.1], tol=1e-6)


def test_greedy_and_temperature_zero():
    assert greedy(Z).item() == 0
    assert sample(torch.tensor([0.1, 0.2, 5.0, 0.3]), SamplingParams(temperature=0)).item() == 2
    s = Sampler(2, 4)
    s.set_row(0, SamplingParams(temperature=0))
    s.set_row(1, SamplingParams(temperature=0, repetition_penalty=10.0), prompt_ids=[2])
    z = torch.tensor([[0.1, 0.2, 5.0, 0.6], [0.1, 0.2, 5.0, 0.6]])
    assert s(z).tolist() == [2, 3]  # the penalised row's 5.0 became 0.5


def test_empirical_distribution_matches_softmax():
    g = torch.Generator().manual_seed(0)
    draws = sample(Z.expand(40_000, 4), SamplingParams(temperature=0.5), generator=g)
    freq = torch.bincount(draws, minlength=4).float() / len(draws)
    close(freq, [0.8282, 0.1121, 0.0412, 0.0185], tol=0.01)
    draws = sample(Z.expand(40_000, 4), SamplingParams(top_p=0.9), generator=g)
    freq = torch.bincount(draws, minlength=4).float() / len(draws)
    close(freq, [0.6285, 0.2312, 0.1402, 0.0], tol=0.01)


def test_frequency_penalty_counts_generated_tokens():
    s = Sampler(1, 4)
    s.set_row(0, SamplingParams(temperature=0, frequency_penalty=2.0), prompt_ids=[0, 0, 0])
    z = torch.tensor([[2.0, 1.0, 0.5, 0.1]])
    assert s(z).tolist() == [0]  # the prompt doesn't count for frequency
    s.update(torch.tensor([0]))
    assert s(z).tolist() == [1]  # 2.0 - 2.0 = 0 < 1.0


def draws(sampler, logits, n):
    out = []
    for _ in range(n):
        ids = sampler(logits)
        sampler.update(ids)
        out.append(ids.tolist())
    return out


def test_seeded_sampling_is_reproducible_and_batch_independent():
    torch.manual_seed(1)
    logits = torch.randn(3, 50)
    params = [
        SamplingParams(seed=7, top_k=20),
        SamplingParams(seed=8, top_p=0.8),
        SamplingParams(seed=9),
    ]
    batch = Sampler(3, 50)
    for i, p in enumerate(params):
        batch.set_row(i, p)
    together = draws(batch, logits, 20)
    for i, p in enumerate(params):
        alone = Sampler(1, 50)
        alone.set_row(0, p)
        assert [row[0] for row in draws(alone, logits[i : i + 1], 20)] == [
            row[i] for row in together
        ]
    again = Sampler(3, 50)
    for i, p in enumerate(params):
        again.set_row(i, p)
    assert draws(again, logits, 20) == together
    other = Sampler(1, 50)
    other.set_row(0, SamplingParams(seed=12345, top_k=20))
    assert [r[0] for r in draws(other, logits[:1], 20)] != [r[0] for r in together]


@pytest.mark.parametrize(
    "field, value",
    [
        ("temperature", -0.5),
        ("temperature", float("nan")),
        ("top_k", -1),
        ("top_k", 2.5),
        ("top_p", 0.0),
        ("top_p", 1.5),
        ("min_p", -0.1),
        ("min_p", 1.1),
        ("repetition_penalty", 0.0),
        ("frequency_penalty", 2.5),
        ("presence_penalty", -3.0),
        ("seed", -1),
        ("max_tokens", 0),
        ("max_tokens", True),
        ("stop", ("",)),
        ("stop_token_ids", (-4,)),
        ("ignore_eos", "yes"),
    ],
)
def test_params_validation_names_field_and_value(field, value):
    with pytest.raises(ValueError) as e:
        SamplingParams(**{field: value})
    msg = str(e.value)
    assert (field in msg or field.rstrip("s") in msg) and repr(
        value if not isinstance(value, tuple) else value[0]
    ) in msg


def test_params_normalise_stop():
    assert SamplingParams(stop="END").stop == ("END",)
    assert SamplingParams(stop=["a", "b"], stop_token_ids=[3]).stop_token_ids == (3,)


def test_draw_follows_the_distribution_and_never_picks_a_zero():
    from ember.infer.sampling import draw

    g = torch.Generator().manual_seed(0)
    q = torch.tensor([0.1, 0.0, 0.6, 0.3, 0.0])
    n = 20_000
    counts = torch.bincount(torch.stack([draw(q, g) for _ in range(n)]), minlength=5).float()
    assert counts[1] == 0 and counts[4] == 0
    # each frequency within 4 standard errors of its probability
    se = (q * (1 - q) / n).sqrt()
    assert ((counts / n - q).abs() <= 4 * se + 1e-9).all(), counts / n
    a = [draw(q, torch.Generator().manual_seed(7)).item() for _ in range(3)]
    assert len(set(a)) == 1  # same seed, same draw
