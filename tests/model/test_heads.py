"""Reward and value heads: the reward sits at the last real token, gradients flow, BT loss values."""

import math

import pytest
import torch

from ember.model import ModelConfig, Transformer
from ember.model.heads import RewardModel, ScalarHead, ValueHead, hidden_states
from ember.train.losses import bradley_terry_loss


def _body(**kw):
    torch.manual_seed(0)
    return Transformer(ModelConfig.tiny(**kw) if kw else ModelConfig.tiny())


def test_hidden_states_are_what_the_lm_head_reads():
    body = _body()
    ids = torch.randint(0, 256, (2, 7))
    torch.testing.assert_close(body.output(hidden_states(body, ids)), body(ids))


def test_reward_at_last_real_token_matches_unpadded_rows():
    rm = RewardModel(_body()).eval()
    rows = [torch.randint(1, 256, (n,)) for n in (7, 3, 5)]
    T = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), T, dtype=torch.long)
    mask = torch.zeros(len(rows), T, dtype=torch.bool)
    for b, r in enumerate(rows):
        ids[b, : len(r)], mask[b, : len(r)] = r, True
    with torch.no_grad():
        alone = torch.stack([rm(r[None])[0] for r in rows])
        by_mask = rm(ids, attention_mask=mask)
        by_len = rm(ids, lengths=mask.sum(1))
    assert by_mask.shape == (3,)
    torch.testing.assert_close(by_mask, alone, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(by_len, alone, rtol=1e-5, atol=1e-5)
    # the pads really are ignored: other pad ids change nothing
    with torch.no_grad():
        torch.testing.assert_close(rm(ids.masked_fill(~mask, 17), attention_mask=mask), by_mask)


def test_reward_model_rejects_bad_masks():
    rm = RewardModel(_body())
    ids = torch.zeros(2, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="right padding"):
        rm(ids, attention_mask=torch.tensor([[0, 1, 1, 1], [1, 1, 0, 0]]))
    with pytest.raises(ValueError, match="real tokens"):
        rm(ids, lengths=torch.tensor([0, 4]))
    with pytest.raises(ValueError, match="not both"):
        rm(ids, attention_mask=torch.ones(2, 4), lengths=torch.tensor([4, 4]))


def test_gradients_reach_head_and_body():
    rm = RewardModel(_body())
    r = rm(torch.randint(0, 256, (2, 6)), lengths=torch.tensor([6, 4]))
    loss, _ = bradley_terry_loss(r[:1], r[1:])
    loss.backward()
    assert rm.head.linear.weight.grad.abs().sum() > 0
    assert rm.body.layers[0].attention.wq.weight.grad.abs().sum() > 0
    assert rm.body.tok_embeddings.weight.grad.abs().sum() > 0


def test_value_head_per_token_and_causal():
    vh = ValueHead(_body()).eval()
    ids = torch.randint(0, 256, (2, 6))
    with torch.no_grad():
        v = vh(ids)
        assert v.shape == (2, 6)
        torch.testing.assert_close(vh(ids[:, :4]), v[:, :4], rtol=1e-5, atol=1e-5)  # values see only the past
    rm = RewardModel(vh.body, vh.head)  # the reward is the value at the last token
    with torch.no_grad():
        torch.testing.assert_close(rm(ids), v[:, -1])


def test_scalar_head_is_fp32_on_bf16_states():
    head = ScalarHead(8)
    assert head(torch.ones(3, 8, dtype=torch.bfloat16)).dtype == torch.float32


def test_bradley_terry_values():
    zero = torch.zeros(4)
    loss, metrics = bradley_terry_loss(zero, zero)
    assert loss.item() == pytest.approx(math.log(2))
    assert metrics["accuracy"].item() == 0.0 and metrics["margin"].item() == 0.0
    loss, metrics = bradley_terry_loss(torch.tensor([1.0, 3.0]), torch.tensor([0.0, 2.0]))
    assert loss.item() == pytest.approx(0.313262, abs=1e-6)  # −log σ(1)
    assert metrics["accuracy"].item() == 1.0 and metrics["margin"].item() == pytest.approx(1.0)
    shifted, _ = bradley_terry_loss(torch.tensor([1.0]), torch.tensor([0.0]), margin=1.0)
    assert shifted.item() == pytest.approx(math.log(2))  # the margin eats the whole gap
    per_pair, _ = bradley_terry_loss(torch.tensor([1.0, 1.0]), torch.tensor([0.0, 0.0]), margin=torch.tensor([0.0, 1.0]))
    assert per_pair.item() == pytest.approx((0.313262 + math.log(2)) / 2, abs=1e-6)
    with pytest.raises(ValueError, match="differ"):
        bradley_terry_loss(torch.zeros(2), torch.zeros(3))
