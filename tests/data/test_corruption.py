import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ember.data.corruption import (
    IGNORE,
    Denoising,
    SpanCorruption,
    delete_tokens,
    noise_span_counts,
    permute_sentences,
    random_spans_noise_mask,
    sentinel_ids,
    span_corrupt,
    text_infill,
)

SENTINELS = sentinel_ids(1000, 100)  # 999, 998, ...


def _spans(mask: list[bool]) -> list[int]:
    """Lengths of the runs of True."""
    runs, n = [], 0
    for m in [*mask, False]:
        if m:
            n += 1
        elif n:
            runs.append(n)
            n = 0
    return runs


def _reconstruct(inputs: list[int], targets: list[int], sentinels: list[int]) -> list[int]:
    """Put each target span back where its sentinel sits in the inputs."""
    spans, cur = {}, None
    for tok in targets:
        if tok in sentinels:
            cur = tok
            spans[cur] = []
        else:
            spans[cur].append(tok)
    return [t for tok in inputs for t in (spans[tok] if tok in sentinels else [tok])]


def test_the_seed_example_the_cat_sat_on_the_mat():
    words = "The cat sat on the mat".split()
    vocab = {w: i for i, w in enumerate(dict.fromkeys(words))}
    vocab.update({"<X>": 999, "<Y>": 998})
    inv = {i: w for w, i in vocab.items()}
    ids = [vocab[w] for w in words]
    noise = [w in ("cat", "mat") for w in words]  # the spans {cat} and {mat}, forced
    inputs, targets = span_corrupt(ids, noise, sentinel_ids(1000, 2))
    assert " ".join(inv[i] for i in inputs) == "The <X> sat on the <Y>"
    assert " ".join(inv[i] for i in targets) == "<X> cat <Y> mat"
    # a text that ends with kept tokens gets T5's final sentinel
    assert span_corrupt(ids[:5], noise[:5], sentinel_ids(1000, 2))[1] == [999, vocab["cat"], 998]


def test_counts_are_t5s():
    # 512 · 0.15 = 76.8 → 77 noise tokens; 77 / 3 = 25.7 → 26 spans (the T5 paper's setting)
    assert noise_span_counts(512) == (77, 26)
    assert noise_span_counts(10) == (2, 1)  # round(1.5) = 2 (half to even), round(2/3) = 1
    assert noise_span_counts(30) == (4, 1)  # round(4.5) = 4 (half to even), round(4/3) = 1
    assert noise_span_counts(50) == (8, 3)  # round(7.5) = 8 (half to even), round(8/3) = 3
    assert noise_span_counts(1) == (1, 1)  # counted as 2 tokens
    assert noise_span_counts(100, 0.5, 1) == (50, 50)


@settings(max_examples=150, deadline=None)
@given(length=st.integers(1, 600), seed=st.integers(0, 2**31 - 1))
def test_noise_mask_has_t5s_counts_and_is_never_degenerate(length, seed):
    mask = random_spans_noise_mask(length, torch.Generator().manual_seed(seed)).tolist()
    num_noise, num_spans = noise_span_counts(length)
    assert len(mask) == length
    if length == 1:  # T5 counts it as 2 tokens and keeps the first
        assert mask == [False]
        return
    assert sum(mask) == num_noise and len(_spans(mask)) == num_spans
    assert not mask[0] and 0 < sum(mask) < length  # starts with kept tokens; one kept, one noise
    assert mask[-1]  # kept and noise spans alternate in pairs: T5's masks end with noise


def test_lengths_match_t5s_published_figures():
    # T5's pre-training inputs: 568 raw tokens become 512 input ids and 114 target ids
    # (transformers' run_t5_mlm_flax.compute_input_and_target_lengths(512, 0.15, 3) = 568, 114)
    collate = SpanCorruption(tuple(SENTINELS), eos_id=900)
    batch = collate(torch.randint(0, 900, (3, 568)), torch.Generator().manual_seed(0))
    assert batch["input_ids"].shape == (3, 512) and bool(batch["attention_mask"].all())
    assert batch["labels"].shape == (3, 114) and bool((batch["labels"] != IGNORE).all())


def test_density_and_mean_span_length_over_many_draws():
    rng = torch.Generator().manual_seed(0)
    lengths = []
    noise = total = 0
    for _ in range(300):
        mask = random_spans_noise_mask(200, rng).tolist()
        noise, total = noise + sum(mask), total + len(mask)
        lengths += _spans(mask)
    assert noise / total == pytest.approx(0.15, abs=0.005)
    assert sum(lengths) / len(lengths) == pytest.approx(3.0, rel=0.05)
    assert len(set(lengths)) > 3  # the lengths vary: a random segmentation, not all 3s


@settings(max_examples=100, deadline=None)
@given(ids=st.lists(st.integers(0, 899), min_size=1, max_size=300), seed=st.integers(0, 2**31 - 1))
def test_span_corruption_sentinels_in_order_and_nothing_lost(ids, seed):
    mask = random_spans_noise_mask(len(ids), torch.Generator().manual_seed(seed))
    inputs, targets = span_corrupt(ids, mask.tolist(), SENTINELS)
    used_in = [t for t in inputs if t in SENTINELS]
    used_tgt = [t for t in targets if t in SENTINELS]
    assert used_in == SENTINELS[: len(used_in)]  # in order, each once
    assert used_tgt == SENTINELS[: len(used_tgt)]
    assert len(used_tgt) in (len(used_in), len(used_in) + 1)  # + T5's final sentinel
    assert _reconstruct(inputs, targets, SENTINELS) == ids
    kept = [t for t in inputs if t not in SENTINELS]
    assert len(kept) + len(targets) - len(used_tgt) == len(ids)  # each token on exactly one side


def test_span_corruption_collator_is_pure_and_padded():
    rows = torch.randint(0, 900, (4, 40), generator=torch.Generator().manual_seed(1))
    collate = SpanCorruption(tuple(SENTINELS), eos_id=900, pad_id=901, start_id=901)
    a = collate(rows, torch.Generator().manual_seed(5))
    b = collate(rows, torch.Generator().manual_seed(5))
    assert all(torch.equal(a[k], b[k]) for k in a)
    for r in range(4):
        src = a["input_ids"][r][a["attention_mask"][r]].tolist()
        tgt = a["labels"][r][a["labels"][r] != IGNORE].tolist()
        assert src[-1] == tgt[-1] == 900  # T5 appends EOS to both
        assert _reconstruct(src[:-1], tgt[:-1], SENTINELS) == rows[r].tolist()
        dec = a["decoder_input_ids"][r][a["decoder_attention_mask"][r]].tolist()
        assert dec == [901, *tgt[:-1]]  # teacher forcing: shifted right


@settings(max_examples=100, deadline=None)
@given(ids=st.lists(st.integers(1, 899), min_size=1, max_size=300), seed=st.integers(0, 2**31 - 1),
       ratio=st.sampled_from([0.0, 0.15, 0.3, 0.5]))
def test_text_infilling_masks_the_budget_and_keeps_everything_else(ids, seed, ratio):
    out, spans = text_infill(ids, 0, torch.Generator().manual_seed(seed), mask_ratio=ratio)
    assert sum(n for _, n in spans) == math.ceil(len(ids) * ratio)
    assert out.count(0) == len(spans)  # one mask per span, 0-length ones included
    # put each span back at its mask: the original, exactly
    rebuilt, left = [], iter(spans)
    for tok in out:
        if tok == 0:
            start, n = next(left)
            rebuilt += ids[start : start + n]
        else:
            rebuilt.append(tok)
    assert rebuilt == ids


def test_infilling_span_lengths_are_poisson_over_many_draws():
    rng = torch.Generator().manual_seed(0)
    lengths = []
    for _ in range(200):
        lengths += [n for _, n in text_infill(list(range(1, 501)), 0, rng, mask_ratio=0.3)[1]]
    mean = sum(lengths) / len(lengths)
    assert mean == pytest.approx(3.0, rel=0.05)
    assert lengths.count(0) / len(lengths) == pytest.approx(math.exp(-3), abs=0.015)  # P(0) of Poisson(3)


def test_sentence_permutation_moves_whole_sentences():
    ids = [1, 2, 9, 3, 9, 4, 5, 6, 9, 7]
    seen = set()
    for seed in range(20):
        out = permute_sentences(ids, [9], torch.Generator().manual_seed(seed))
        assert sorted(out) == sorted(ids)
        sentences = {(1, 2, 9), (3, 9), (4, 5, 6, 9), (7,)}
        i, got = 0, set()
        while i < len(out):  # the output is the sentences laid end to end
            match = [s for s in sentences if tuple(out[i : i + len(s)]) == s]
            assert match
            got.add(match[0])
            i += len(match[0])
        assert got == sentences
        seen.add(tuple(out))
    assert len(seen) > 5


def test_deletion_keeps_a_subsequence_and_one_token():
    rng = torch.Generator().manual_seed(0)
    ids = list(range(100))
    out = delete_tokens(ids, 0.3, rng)
    assert out == sorted(out) and 55 < len(out) < 85
    assert len(delete_tokens([5], 0.999, rng)) == 1


def test_denoising_target_is_the_original():
    rows = torch.randint(1, 900, (3, 60), generator=torch.Generator().manual_seed(2))
    rows[:, 10::12] = 7  # sentence ends
    collate = Denoising(mask_id=950, eos_id=951, pad_id=952, start_id=952, sentence_end_ids=(7,), delete_ratio=0.1)
    batch = collate(rows, torch.Generator().manual_seed(3))
    for r in range(3):
        tgt = batch["labels"][r][batch["labels"][r] != IGNORE].tolist()
        assert tgt == [*rows[r].tolist(), 951]
        src = batch["input_ids"][r][batch["attention_mask"][r]].tolist()
        assert 950 in src and src != rows[r].tolist()


def test_bad_parameters_are_value_errors():
    with pytest.raises(ValueError, match="noise_density"):
        SpanCorruption((999,), noise_density=1.5)
    with pytest.raises(ValueError, match="mean_noise_span_length"):
        noise_span_counts(10, 0.15, 0)
    with pytest.raises(ValueError, match="sentinels"):
        span_corrupt([1, 2, 3, 4], [False, True, False, True], [999])
    with pytest.raises(ValueError, match="mask_ratio"):
        Denoising(mask_id=3, mask_ratio=1.0)
    with pytest.raises(ValueError, match="poisson_lambda"):
        Denoising(mask_id=3, poisson_lambda=0)
    with pytest.raises(ValueError, match="too high"):
        random_spans_noise_mask(10, torch.Generator(), noise_density=0.9, mean_noise_span_length=1)
