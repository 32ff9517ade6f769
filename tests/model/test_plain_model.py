"""The model is plain: no slots reserved for transforms, one body (`hidden`) under every head,
and one rule per argument for which logits the head computes."""

import pytest
import torch

from ember.model import ModelConfig, Transformer
from ember.model.heads import RewardModel, ValueHead
from ember.model.layers import Attention, FeedForward

# Every key of the tiny Llama-style model: checkpoints and converters rely on these names.
BLOCK_KEYS = [
    "attention_norm.weight", "attention.wq.weight", "attention.wk.weight", "attention.wv.weight",
    "attention.wo.weight", "ffn_norm.weight", "feed_forward.w1.weight", "feed_forward.w2.weight",
    "feed_forward.w3.weight",
]


def tiny(**kw):
    torch.manual_seed(0)
    return Transformer(ModelConfig.tiny(**kw))


def test_state_dict_keys_are_the_plain_names():
    keys = list(tiny().state_dict())
    want = ["tok_embeddings.weight"] + [f"layers.{i}.{k}" for i in range(2) for k in BLOCK_KEYS]
    assert keys == want + ["norm.weight", "output.weight"]


def test_attention_and_mlp_reserve_no_slots_for_transforms():
    model = tiny()
    for layer in model.layers:
        assert type(layer.attention) is Attention and type(layer.feed_forward) is FeedForward
        for name in ("wqkv", "prefix", "w13"):
            assert name not in vars(layer.attention) and name not in vars(layer.feed_forward)
            assert not hasattr(layer.attention, name) and not hasattr(layer.feed_forward, name)


@pytest.mark.parametrize("kw", [{}, {"norm": "layernorm", "pos_emb": "learned", "mlp": "gelu", "bias": True}])
def test_every_head_reads_hidden(kw):
    model, ids = tiny(**kw), torch.randint(256, (2, 7))
    h = model.hidden(ids)  # (B, T, D)
    assert h.shape == (2, 7, 64)
    assert torch.equal(model.output(h), model(ids))
    assert torch.equal(model.hidden(inputs_embeds=model.tok_embeddings(ids)), h)
    vh = ValueHead(model)
    assert torch.equal(vh(ids), vh.head(h))
    rm = RewardModel(model, vh.head)
    assert torch.equal(rm(ids, lengths=torch.tensor([7, 4])), vh.head(h[[0, 1], [6, 3]]))


def test_hidden_takes_ids_or_embeddings_not_both():
    model, ids = tiny(), torch.zeros(1, 3, dtype=torch.long)
    with pytest.raises(ValueError, match="ids or inputs_embeds"):
        model.hidden(ids, inputs_embeds=model.tok_embeddings(ids))
    with pytest.raises(ValueError, match="ids or inputs_embeds"):
        model.hidden()


def test_logits_index_keeps_t_and_logits_mask_flattens():
    model, ids = tiny(), torch.randint(256, (2, 6))
    full = model(ids)
    at = model(ids, logits_index=torch.tensor([5, 2]))
    # close, not equal: the head's matmul rounds by its number of rows
    assert at.shape == (2, 1, 256)
    torch.testing.assert_close(at[:, 0], full[[0, 1], [5, 2]])
    sel = torch.tensor([[True, False, True, False, False, True], [False] * 5 + [True]])
    picked = model(ids, logits_mask=sel)
    assert picked.shape == (4, 256)
    torch.testing.assert_close(picked, full[sel])
    assert torch.equal(model(ids, logits_index=sel), picked)  # older callers' bool index
    with pytest.raises(ValueError, match="not both"):
        model(ids, logits_index=torch.tensor([0, 0]), logits_mask=sel)
