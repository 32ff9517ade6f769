"""Causal tracing's bookkeeping, and the head summaries on hand-made attention."""

import pytest
import torch

from ember.inspect.attention import head_summaries, induction_scores, mosaic
from ember.inspect.causal import causal_trace, subject_span
from ember.model import ModelConfig, Transformer


@pytest.fixture(scope="module")
def model(smollm2_tokenizer):
    torch.manual_seed(0)
    return Transformer(ModelConfig.tiny(vocab_size=smollm2_tokenizer.vocab_size, n_layers=3)).eval()


def test_subject_span_finds_the_tokens(smollm2_tokenizer):
    ids, span = subject_span(smollm2_tokenizer, "The capital of France is", "France")
    assert [smollm2_tokenizer.decode([ids[p]]) for p in span] == [" France"]
    with pytest.raises(ValueError, match="'Spain'"):
        subject_span(smollm2_tokenizer, "The capital of France is", "Spain")


def test_restoring_the_whole_corrupted_state_recovers_the_clean_run(model, smollm2_tokenizer):
    """The subject is the last token: restoring its state after any block restores every
    position (nothing earlier sees it), so p(target) is the clean one, block by block."""
    res = causal_trace(model, smollm2_tokenizer, "The capital of France", " Paris", "France", samples=3, window=2)
    assert res["kinds"]["state"] == pytest.approx([res["clean"]] * 3, rel=1e-4)
    assert res["corrupted"] != pytest.approx(res["clean"], rel=1e-2)  # the noise changed the prediction
    assert set(res["kinds"]) == {"state", "mlp", "attn"} and all(len(v) == 3 for v in res["kinds"].values())


def test_head_summaries_on_hand_made_maps():
    T = 4
    prev = torch.zeros(T, T)
    prev[0, 0] = 1
    prev[torch.arange(1, T), torch.arange(T - 1)] = 1  # every query on the token before it
    first = torch.zeros(T, T)
    first[:, 0] = 1  # every query on token 0
    s = head_summaries(torch.stack([prev, first])[None])  # (1, 2, T, T)
    assert s["prev"][0].tolist() == [1.0, pytest.approx(1 / 3)]
    assert s["distance"][0].tolist() == [1.0, 2.0]  # first: queries 1..3 look back 1, 2, 3
    assert s["entropy"][0].tolist() == [0.0, 0.0]


def test_induction_scores_shape_and_range(model):
    scores = induction_scores(model, repeat=8)
    assert scores.shape == (3, 4) and bool(((scores >= 0) & (scores <= 1)).all())
    with pytest.raises(ValueError, match="got 1"):
        induction_scores(model, repeat=1)
    assert mosaic(torch.ones(2, 3, 4, 4)).shape == (10, 15)
