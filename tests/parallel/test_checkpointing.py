"""Activation checkpointing: the same loss and gradients as without, the same state dict, and
fewer activations kept for the backward (so the transform is really on)."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from ember.model import ModelConfig, Transformer
from ember.parallel.checkpointing import (
    apply_activation_checkpointing,
    is_checkpointed,
    remove_activation_checkpointing,
)


def _model() -> Transformer:
    torch.manual_seed(0)
    return Transformer(ModelConfig.tiny(n_layers=3))


def _ids() -> torch.Tensor:
    return torch.randint(0, 256, (2, 17), generator=torch.Generator().manual_seed(1))


def _loss_and_grads(model):
    ids = _ids()
    loss = F.cross_entropy(model(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten())
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def _saved_bytes(model) -> int:
    """Bytes autograd keeps for the backward during one forward."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(_ids()[:, :-1])
    return total


def test_checkpointed_gradients_equal_plain_ones():
    """The recompute runs the same ops on the same inputs: bitwise equal on CPU."""
    loss, grads = _loss_and_grads(_model())
    model = apply_activation_checkpointing(_model())
    assert all(is_checkpointed(b) for b in model.layers)
    loss_ck, grads_ck = _loss_and_grads(model)
    assert torch.equal(loss, loss_ck)
    assert grads.keys() == grads_ck.keys()
    for name in grads:
        torch.testing.assert_close(grads_ck[name], grads[name], rtol=0, atol=0, msg=name)


def test_checkpointing_keeps_fewer_activations_and_the_state_dict():
    plain = _model()
    before = _saved_bytes(plain)
    keys = list(plain.state_dict())
    apply_activation_checkpointing(plain)
    after = _saved_bytes(plain)
    # each block keeps only its inputs instead of every intermediate (q, k, v, attention, FFN)
    assert after < 0.6 * before, (before, after)
    assert list(plain.state_dict()) == keys
    apply_activation_checkpointing(plain)  # idempotent: not wrapped twice
    assert _saved_bytes(plain) == after
    remove_activation_checkpointing(plain)
    assert not any(is_checkpointed(b) for b in plain.layers)
    assert _saved_bytes(plain) == before


def test_checkpointing_under_no_grad_and_with_a_cache():
    """Evaluation and sampling run through checkpointed blocks unchanged."""
    from ember.model.kv_cache import KVCache

    ref, model = _model(), apply_activation_checkpointing(_model())
    ids = _ids()[:1, :8]
    with torch.no_grad():
        torch.testing.assert_close(model(ids), ref(ids), rtol=0, atol=0)
    caches = [KVCache.for_model(m, 1, 16) for m in (ref, model)]
    pos = torch.arange(8)[None]
    with torch.no_grad():
        outs = [m(ids, cache=c, input_pos=pos) for m, c in zip((ref, model), caches)]
    torch.testing.assert_close(outs[1], outs[0], rtol=0, atol=0)


def test_a_model_without_blocks_is_refused():
    with pytest.raises(ValueError, match="Linear has none"):
        apply_activation_checkpointing(nn.Linear(2, 2))
