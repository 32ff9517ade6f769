"""Perplexity against hand-computed cross-entropy, and window bookkeeping."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ember.eval import perplexity
from ember.model.config import ModelConfig
from ember.model.transformer import Transformer


class FixedModel(nn.Module):
    """Predicts p = [1/2, 1/4, 1/8, 1/8] for every next token, whatever the context, so
    each token costs exactly 1, 2, 3 or 3 bits."""

    def __init__(self):
        super().__init__()
        self.logp = nn.Parameter(torch.tensor([0.5, 0.25, 0.125, 0.125]).log())

    def forward(self, ids):
        return self.logp.expand(*ids.shape, 4)


IDS = [0, 1, 2, 3, 0, 0, 1, 0, 3, 2]
BITS = {0: 1, 1: 2, 2: 3, 3: 3}


def test_non_overlapping_windows_by_hand():
    # ctx 4 → windows [0 1 2 3] [0 0 1 0] [3 2]; each predicts its tokens 1..T-1:
    # 1 2 3 | 0 1 0 | 2 → 2+3+3 + 1+2+1 + 3 = 15 bits over 7 tokens.
    ppl, n = perplexity(FixedModel(), IDS, ctx=4, progress=False)
    assert n == 7
    assert ppl == pytest.approx(2 ** (15 / 7), rel=1e-6)


def test_sliding_windows_predict_every_token_but_the_first_once():
    ppl, n = perplexity(FixedModel(), IDS, ctx=4, stride=2, progress=False)
    assert n == 9
    assert ppl == pytest.approx(2 ** (sum(BITS[t] for t in IDS[1:]) / 9), rel=1e-6)  # 19 bits


def test_bos_makes_every_token_predicted():
    ppl, n = perplexity(FixedModel(), IDS, ctx=4, bos_id=0, progress=False)
    assert n == 10
    assert ppl == pytest.approx(2 ** (sum(BITS[t] for t in IDS) / 10), rel=1e-6)  # 20 bits → 4


def test_tiny_transformer_matches_per_window_cross_entropy():
    torch.manual_seed(0)
    model = Transformer(ModelConfig.tiny()).eval()
    ids = torch.randint(0, 256, (100,)).tolist()
    ppl, n = perplexity(model, ids, ctx=32, progress=False)
    nll, count = 0.0, 0
    for b in range(0, 100, 32):  # windows of 32, 32, 32, 4: each a fresh context
        w = torch.tensor(ids[b : b + 32])
        with torch.no_grad():
            logits = model(w[None])[0]
        nll += F.cross_entropy(logits[:-1], w[1:], reduction="sum").item()
        count += len(w) - 1
    assert n == count == 31 * 3 + 3
    assert ppl == pytest.approx(math.exp(nll / count), rel=1e-5)
    # a random model is roughly uniform over 256 tokens
    assert 150 < ppl < 400


def test_bad_arguments():
    with pytest.raises(ValueError, match="stride"):
        perplexity(FixedModel(), IDS, ctx=4, stride=5)
    with pytest.raises(ValueError, match="ctx"):
        perplexity(FixedModel(), IDS, ctx=1)
    with pytest.raises(ValueError, match="at least 2"):
        perplexity(FixedModel(), [1], ctx=4)
    with pytest.raises(ValueError, match="max_seq_len 256"):
        perplexity(Transformer(ModelConfig.tiny()), IDS, ctx=512)


@pytest.mark.slow
def test_smollm2_matches_the_transformers_reference():
    """ANCHORS.md: transformers fp32 on the first 20,000 chars of the sorted pydoc topics
    (joined by blank lines), ctx 512, no BOS → 15.389."""
    from pydoc_data.topics import topics

    from ember.model import load_model
    from ember.tokenizer import load_tokenizer

    try:
        model, tok = load_model("smollm2"), load_tokenizer("smollm2")
    except (ValueError, FileNotFoundError) as e:
        pytest.skip(f"SmolLM2 not installed: {e}")
    text = "\n\n".join(topics[k] for k in sorted(topics))[:20_000]
    ppl, n = perplexity(model, tok.encode(text), ctx=512, progress=False)
    assert n == 4706
    assert ppl == pytest.approx(15.389, abs=0.01)
