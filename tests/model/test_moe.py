import json
import math

import pytest
import torch

from ember.model import ModelConfig, Transformer
from ember.model.config import MoEConfig
from ember.model.load import build_model
from ember.model.moe import (
    MoEFeedForward,
    capacity_keep,
    router_losses,
    router_stats,
    with_router_losses,
)


def _moe(**moe) -> ModelConfig:
    return ModelConfig.tiny(moe={"n_experts": 4, "top_k": 2, **moe})


def test_forward_shapes_and_every_expert_gets_gradients():
    torch.manual_seed(0)
    model = Transformer(_moe())
    ids = torch.randint(0, 256, (2, 16))
    logits = model(ids)
    assert logits.shape == (2, 16, 256)
    loss, metrics = router_losses(model)
    (logits.logsumexp(-1).mean() + loss).backward()
    ff = model.layers[0].feed_forward
    assert isinstance(ff, MoEFeedForward) and len(ff.experts) == 4
    assert ff.router.weight.grad.abs().sum() > 0
    assert all(e.w1.weight.grad is not None for e in ff.experts)
    assert set(metrics) == {"moe_aux", "moe_z", "moe_dropped", "moe_max_load"}


def test_aux_and_z_loss_on_a_hand_built_router():
    """Tokens 0-2 put 0.8 on expert 0, token 3 puts 0.6 on expert 1 (top-1): f = (3/4, 1/4),
    P = (0.7, 0.3), aux = 2·(0.75·0.7 + 0.25·0.3) = 1.2. Logits log p + 1 have logsumexp 1: z = 1."""
    probs = torch.tensor([[0.8, 0.2]] * 3 + [[0.4, 0.6]])
    logits = probs.log() + 1.0
    chosen = torch.tensor([[0], [0], [0], [1]])
    s = router_stats(logits, chosen, torch.ones(4, 1, dtype=torch.bool), 2)
    assert s["aux"].item() == pytest.approx(1.2)
    assert s["z"].item() == pytest.approx(1.0)
    assert s["load"].tolist() == [0.75, 0.25] and s["dropped"].item() == 0.0


def test_aux_loss_matches_transformers_mixtral():
    transformers = pytest.importorskip("transformers")
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

    torch.manual_seed(0)
    moe = MoEFeedForward(_moe())
    x = torch.randn(3, 7, 64)
    moe(x)
    logits = moe.router(x.reshape(-1, 64))
    ref = load_balancing_loss_func((logits,), num_experts=4, top_k=2)
    assert transformers is not None and moe.last["aux"].item() == pytest.approx(ref.item(), rel=1e-6)


def test_capacity_drops_are_counted_and_zeroed():
    """Every token prefers expert 0 (top-1); capacity ceil(1.0·8·1/4) = 2 keeps the first two."""
    torch.manual_seed(0)
    moe = MoEFeedForward(_moe(top_k=1, capacity_factor=1.0))
    with torch.no_grad():
        moe.router.weight.zero_()
        moe.router.weight[0] = 1.0
    x = torch.rand(1, 8, 64) + 0.1  # positive: expert 0's logit is the largest for every token
    y = moe(x)
    assert moe.last["dropped"].item() == pytest.approx(6 / 8)
    assert moe.last["load"].tolist() == [1.0, 0.0, 0.0, 0.0]
    assert torch.equal(y[0, 2:], torch.zeros(6, 64)) and (y[0, :2].abs().sum(-1) > 0).all()
    model = torch.nn.Sequential(moe)
    model(x)
    assert router_losses(model)[1]["moe_dropped"] == pytest.approx(0.75)


def test_capacity_serves_first_choices_first():
    # expert 1 is token 0's second choice and tokens 1, 2's first: with capacity 2 the second choice is dropped
    keep = capacity_keep(torch.tensor([[0, 1], [1, 2], [1, 3]]), 4, 2)
    assert keep.tolist() == [[True, False], [True, True], [True, True]]


@pytest.mark.parametrize("renormalize", [True, False])
def test_dropless_equals_a_dense_loop_over_experts(renormalize):
    torch.manual_seed(0)
    moe = MoEFeedForward(_moe(renormalize=renormalize))
    x = torch.randn(2, 5, 64)
    with torch.no_grad():
        y = moe(x)
        probs = moe.router(x).float().softmax(-1)  # (2, 5, 4)
        top = probs.topk(2, dim=-1)
        want = torch.zeros_like(x)
        for b in range(2):
            for t in range(5):
                w = top.values[b, t] / (top.values[b, t].sum() if renormalize else 1.0)
                for j, e in enumerate(top.indices[b, t].tolist()):
                    want[b, t] += w[j] * moe.experts[e](x[b, t])
    torch.testing.assert_close(y, want, atol=1e-6, rtol=1e-5)
    assert moe.last["dropped"].item() == 0.0


def test_moe_trains_loss_decreases():
    from ember.train.losses import lm_loss

    torch.manual_seed(0)
    model = Transformer(_moe())
    loss_fn = with_router_losses(lm_loss)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    x = torch.randint(0, 256, (4, 32))
    batch = (x, torch.roll(x, -1, dims=1))
    losses = []
    for _ in range(25):
        loss, metrics = loss_fn(model, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 1.0
    assert 2.0 <= metrics["moe_aux"] < 4.0  # top-2 of 4: 2 at perfect balance, 8 at collapse


def test_checkpoint_round_trip(tmp_path):
    from safetensors.torch import load_file, save_file

    torch.manual_seed(0)
    cfg = _moe(capacity_factor=1.25, aux_loss_coef=0.02)
    model = Transformer(cfg).eval()
    (tmp_path / "config.json").write_text(json.dumps(cfg.to_dict()))
    save_file(model.state_dict(), tmp_path / "model.safetensors")
    back_cfg = ModelConfig.from_dict(json.loads((tmp_path / "config.json").read_text()))
    assert back_cfg == cfg and isinstance(back_cfg.moe, MoEConfig)
    back = build_model(back_cfg, load_file(tmp_path / "model.safetensors"))
    ids = torch.randint(0, 256, (2, 9))
    with torch.no_grad():
        assert torch.equal(back(ids), model(ids))


@pytest.mark.parametrize("moe, message", [
    ({"n_experts": 2, "top_k": 3}, "top_k 3 exceeds n_experts 2"),
    ({"n_experts": 0}, "n_experts must be a positive int, got 0"),
    ({"capacity_factor": 0.0}, "capacity_factor must be None \\(dropless\\) or > 0, got 0.0"),
    ({"aux_loss_coef": -1}, "aux_loss_coef must be a number >= 0, got -1"),
    ({"experts": 4}, "unknown ModelConfig.moe keys \\['experts'\\]"),
])
def test_bad_moe_configs_name_the_value(moe, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig.tiny(moe=moe)


def test_mixtral_checkpoint_matches_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    from ember.model.convert.hf import save_hf
    from ember.model.load import load_model

    torch.manual_seed(0)
    hf_cfg = transformers.MixtralConfig(
        vocab_size=96, hidden_size=64, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2, max_position_embeddings=128,
    )
    ref = transformers.MixtralForCausalLM(hf_cfg).eval()
    ref.save_pretrained(tmp_path / "hf")
    model = load_model(tmp_path / "hf")
    assert model.config.moe.n_experts == 4 and model.config.moe.top_k == 2
    ids = torch.randint(0, 96, (2, 11))
    with torch.no_grad():
        want = ref(ids).logits
        torch.testing.assert_close(model(ids), want, atol=1e-5, rtol=1e-5)
        back = transformers.MixtralForCausalLM.from_pretrained(save_hf(model, tmp_path / "ember")).eval()
        torch.testing.assert_close(back(ids).logits, want, atol=1e-6, rtol=1e-6)
    assert math.isfinite(float(want.sum()))


def test_top1_router_learns_from_the_task_loss():
    """Top-1 keeps the softmax weight (Switch): renormalized it would be 1 and the router
    would get no gradient from the task loss, only from the auxiliary losses."""
    torch.manual_seed(0)
    switch = MoEFeedForward(_moe(top_k=1, aux_loss_coef=0.0, z_loss_coef=0.0))
    assert switch.moe.renormalize is False and MoEConfig(top_k=2).renormalize is True
    renormalized = MoEFeedForward(_moe(top_k=1, renormalize=True, aux_loss_coef=0.0, z_loss_coef=0.0))
    renormalized.load_state_dict(switch.state_dict())
    x = torch.randn(2, 6, 64)
    switch(x).pow(2).sum().backward()
    renormalized(x).pow(2).sum().backward()
    g_switch, g_renorm = switch.router.weight.grad.abs().sum(), renormalized.router.weight.grad.abs().sum()
    assert g_renorm < 1e-3 * g_switch  # p / p = 1: only rounding reaches the router
