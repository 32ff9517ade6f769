"""Encoder pre-training collators: MLM's rates and labels, ELECTRA's corruption, XLNet's masks."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ember.data.objectives import IGNORE, MaskedLM, PermutationLM, replace_tokens, word_start_table

V, MASK, SEP, PAD = 50, 1, 2, 0


def windows(seed: int, B: int = 64, T: int = 128) -> torch.Tensor:
    return torch.randint(3, V, (B, T), generator=torch.Generator().manual_seed(seed))


def test_mlm_rates_over_many_draws():
    mlm = MaskedLM(mask_id=MASK, vocab_size=V, special_ids=(SEP,), pad_id=PAD)
    ids = windows(0, B=256)
    b = mlm(ids, torch.Generator().manual_seed(1))
    chosen = b["labels"] != IGNORE
    n = int(chosen.sum())
    assert abs(n / ids.numel() - 0.15) < 0.005  # 32,768 draws: σ ≈ 0.002
    masked = int((chosen & (b["input_ids"] == MASK)).sum()) / n
    kept = int((chosen & (b["input_ids"] == ids)).sum()) / n
    # a random draw can land on the original token (1/V of the 10%)
    assert abs(masked - 0.8) < 0.02 and abs(kept - (0.1 + 0.1 / V)) < 0.015
    assert abs(1 - masked - kept - 0.1 * (1 - 1 / V)) < 0.015


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31), T=st.integers(1, 40), whole=st.booleans())
def test_mlm_no_leakage_and_labels_are_the_originals(seed, T, whole):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (3, T), generator=g)
    ids[ids == MASK] = 5  # the corpus holds no mask token
    table = torch.rand(V, generator=g) < 0.5
    mlm = MaskedLM(mask_id=MASK, vocab_size=V, special_ids=(SEP,), pad_id=PAD, whole_word=whole, word_start=table)
    b = mlm(ids, g)
    chosen = b["labels"] != IGNORE
    assert torch.equal(b["labels"][chosen], ids[chosen])  # labels: exactly the originals
    assert torch.equal(b["input_ids"][~chosen], ids[~chosen])  # nothing else changes
    assert not chosen[(ids == SEP) | (ids == PAD)].any()  # never special tokens or padding
    assert not (b["input_ids"][chosen] == ids[chosen])[b["input_ids"][chosen] == MASK].any()
    eligible = (ids != SEP) & (ids != PAD)
    assert torch.equal(chosen.any(1), eligible.any(1))  # every row with a candidate has a loss
    assert torch.equal(b["attention_mask"], ids != PAD)


def test_mlm_is_deterministic_in_the_generator():
    mlm = MaskedLM(mask_id=MASK, vocab_size=V)
    a, b = (mlm(windows(3), torch.Generator().manual_seed(9)) for _ in range(2))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_whole_word_masking_takes_whole_words():
    ids = windows(4, B=32, T=64)
    starts = torch.zeros(V, dtype=torch.bool)
    starts[3:20] = True  # ids 3..19 begin words, the rest continue them
    mlm = MaskedLM(mask_id=MASK, vocab_size=V, whole_word=True, word_start=starts, rate=0.3)
    chosen = mlm(ids, torch.Generator().manual_seed(0))["labels"] != IGNORE
    word = (starts[ids]).long().cumsum(1)  # word index of each position
    for r in range(len(ids)):
        for w in word[r].unique():
            in_word = chosen[r][word[r] == w]
            assert in_word.all() or not in_word.any()
    # word_ids given directly define the same words
    chosen2 = mlm(ids, torch.Generator().manual_seed(0), word_ids=word)["labels"] != IGNORE
    assert torch.equal(chosen, chosen2)


def test_word_start_table_marks_leading_spaces():
    from ember.tokenizer import train_bpe

    tok = train_bpe(["the cat sat on the mat"] * 3, 269, pattern="gpt2", special_tokens=["[MASK]"])
    table = word_start_table(tok)
    ids = tok.encode("the cat sat")
    assert [bool(table[i]) for i in ids] == [tok.decode([i]).startswith(" ") for i in ids]
    assert not table[tok.special_tokens["[MASK]"]]


def test_bad_options_name_the_value():
    with pytest.raises(ValueError, match="rate"):
        MaskedLM(mask_id=1, vocab_size=5, rate=1.5)
    with pytest.raises(ValueError, match="mask_id 9"):
        MaskedLM(mask_id=9, vocab_size=5)
    with pytest.raises(ValueError, match="got 1"):
        PermutationLM(k=1)
    with pytest.raises(ValueError, match="at least 2 tokens"):
        PermutationLM()(torch.zeros(2, 1, dtype=torch.long), torch.Generator())


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31))
def test_electra_labels_are_corrupted_differs_from_original(seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, V, (4, 24), generator=g)
    b = MaskedLM(mask_id=MASK, vocab_size=V, mask_frac=0.85, random_frac=0.0)(ids, g)
    sampled = torch.where(torch.rand(4, 24, generator=g) < 0.5, ids, torch.randint(3, V, (4, 24), generator=g))
    corrupted, replaced = replace_tokens(b, sampled)
    assert torch.equal(replaced, corrupted != ids)
    chosen = b["labels"] != IGNORE
    assert torch.equal(corrupted[chosen], sampled[chosen]) and torch.equal(corrupted[~chosen], ids[~chosen])
    assert not replaced[~chosen].any()  # only masked positions can be replaced


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31), T=st.integers(2, 48), k=st.sampled_from([2, 6, 7]))
def test_plm_two_stream_masks(seed, T, k):
    ids = torch.randint(0, V, (3, T), generator=torch.Generator().manual_seed(seed))
    plm = PermutationLM(k=k)
    b = plm(ids, torch.Generator().manual_seed(seed + 1))
    n = plm.n_targets(T)
    rank, content, query, tpos = b["rank"], b["content_mask"], b["query_mask"], b["target_pos"]
    assert torch.equal(rank.sort(1).values, torch.arange(T).expand(3, T))  # a permutation
    before = rank[:, None, :] < rank[:, :, None]  # (B, i, j): j comes before i in the order
    eye = torch.eye(T, dtype=torch.bool)
    assert torch.equal(content, before | eye)  # content: itself and earlier in the order
    assert torch.equal(query, before.gather(1, tpos[:, :, None].expand(-1, -1, T)))  # strictly earlier
    assert not query.gather(2, tpos[:, :, None]).any()  # a query never sees itself
    assert query.any(2).all()  # every target has context
    # partial prediction: exactly the last n of the order carry labels
    labelled = b["labels"] != IGNORE
    assert torch.equal(labelled, rank >= T - n) and int(labelled.sum(1).min()) == n
    assert torch.equal(b["labels"][labelled], ids[labelled])
    assert torch.equal(labelled.nonzero()[:, 1].view(3, n), tpos)
    assert 1 <= n <= T - 1 and n == min(T - 1, max(1, round(T / k)))
