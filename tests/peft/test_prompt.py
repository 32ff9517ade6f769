"""Prompt tuning and prefix tuning: shapes, what trains, masks against a manual computation,
cached decode equals the full forward, packed rows, save/load, adapters_disabled."""

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from ember.model import KVCache, ModelConfig, Transformer
from ember.peft import (
    LoraConfig,
    PromptTuned,
    adapters_disabled,
    apply_lora,
    apply_prefix_tuning,
    apply_prompt_tuning,
    load_adapter,
    peft_parameters,
    peft_state_dict,
    save_adapter,
)


def tiny(seed=0, **kw):
    torch.manual_seed(seed)
    return Transformer(ModelConfig.tiny(**kw))


def trained_scale(seed=0):
    """A tiny model with weights of std 0.1. At GPT-2's init (0.02) attention is too weak for
    anything put before the sequence to move the logits much: 30 steps of prefix tuning
    gain 0.3 nats there, 3 here."""
    model = tiny(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.normal_(0, 0.1)
    return model


def ids(seed=1, B=2, T=12):
    return torch.randint(0, 256, (B, T), generator=torch.Generator().manual_seed(seed))


def lm_loss(model, x):
    logits = model(x[:, :-1])
    return F.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten())


def train(model, x, n, lr):
    opt = torch.optim.AdamW(peft_parameters(model), lr=lr)
    losses = []
    for _ in range(n):
        loss = lm_loss(model, x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def grads_only_on(model, x, is_tuned):
    model(x).logsumexp(-1).mean().backward()
    named = dict(model.named_parameters())
    tuned = [n for n in named if is_tuned(n)]
    assert tuned and all(named[n].grad is not None for n in tuned)
    assert all(p.grad is None and not p.requires_grad for n, p in named.items() if n not in tuned)


# ---- prompt tuning ------------------------------------------------------------------------------


def test_prompt_shapes_and_grads():
    model, x = apply_prompt_tuning(tiny(), n_virtual=5), ids()
    assert isinstance(model, PromptTuned) and model.config.vocab_size == 256
    assert model(x).shape == (2, 12, 256)
    assert model(x, logits_index=torch.tensor([3, 11])).shape == (2, 1, 256)
    grads_only_on(model, x, lambda n: n == "embeddings")
    assert model.embeddings.grad.shape == (5, 64)


def test_prompt_zero_virtual_equals_base_and_virtual_tokens_matter():
    base, x = tiny(), ids()
    ref = base(x)
    torch.testing.assert_close(apply_prompt_tuning(tiny(), 0)(x), ref)
    tuned = apply_prompt_tuning(tiny(), 3)
    assert not torch.allclose(tuned(x), ref)
    with adapters_disabled(tuned):
        torch.testing.assert_close(tuned(x), ref, rtol=0, atol=0)


def test_prompt_equals_base_on_the_longer_sequence():
    # Virtual tokens initialised from token ids behave exactly like those tokens put first.
    base, x = tiny(), ids()
    init = [7, 42, 3]
    tuned = apply_prompt_tuning(tiny(), 3, init_text_ids=init)
    full = base(torch.cat([torch.tensor(init).expand(2, 3), x], dim=1))
    torch.testing.assert_close(tuned(x), full[:, 3:])
    assert apply_prompt_tuning(tiny(), 5, init_text_ids=[9, 8]).embeddings.shape == (5, 64)
    with pytest.raises(ValueError, match="init_text_ids"):
        apply_prompt_tuning(tiny(), 2, init_text_ids=[300])
    with pytest.raises(ValueError, match="n_virtual"):
        apply_prompt_tuning(tiny(), -1)
    with pytest.raises(ValueError, match="KV cache"):
        tuned(x, cache=KVCache.for_model(base, 2, 32), input_pos=torch.arange(12).expand(2, 12))


def test_prompt_packed_rows_equal_separate_forwards():
    model, x = apply_prompt_tuning(tiny(), 3), ids(B=1, T=11)
    seg = torch.tensor([[0] * 4 + [1] * 7])
    sel = torch.zeros(1, 11, dtype=torch.bool)
    sel[0, [2, 5, 10]] = True
    with torch.no_grad():
        packed = model(x, segment_ids=seg)
        alone = torch.cat([model(x[:, :4]), model(x[:, 4:])], 1)
        picked = model(x, segment_ids=seg, logits_index=sel)  # (N, V), as SFT's loss asks
    torch.testing.assert_close(packed, alone, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(picked, alone[sel], rtol=1e-5, atol=1e-5)


def test_prompt_tuning_learns():
    model, x = apply_prompt_tuning(trained_scale(), 8), ids(B=2, T=16)
    losses = train(model, x, n=30, lr=3e-2)
    # Chance is ln 256 = 5.55; measured: 5.69 → 3.49 with only 8 virtual tokens trained.
    assert losses[-1] < 4.5, losses


# ---- prefix tuning ------------------------------------------------------------------------------


def test_prefix_grads_only_on_prefix():
    model, x = apply_prefix_tuning(tiny(), 4), ids()
    assert model(x).shape == (2, 12, 256)
    grads_only_on(model, x, lambda n: ".prefix." in n)
    assert model.layers[0].attention.prefix.keys.shape == (2, 4, 16)  # (Hkv, P, Dh)


def test_prefix_attention_matches_manual_computation():
    model = apply_prefix_tuning(tiny(), 3)
    attn = model.layers[0].attention
    with torch.no_grad():
        attn.prefix.keys.normal_()  # make the prefix matter
        attn.prefix.values.normal_()
    B, T, H, Hkv, Dh = 2, 5, 4, 2, 16
    x = torch.randn(B, T, 64)
    pos = torch.arange(T).expand(B, T)
    from ember.model.layers import apply_rope, rope_cos_sin

    cos, sin = rope_cos_sin(model.config, pos)
    with torch.no_grad():
        got = attn(x, (cos, sin))
        base = attn.base  # the wrapped attention
        q = apply_rope(base.wq(x).view(B, T, H, Dh).transpose(1, 2), cos, sin, False)
        k = apply_rope(base.wk(x).view(B, T, Hkv, Dh).transpose(1, 2), cos, sin, False)
        v = base.wv(x).view(B, T, Hkv, Dh).transpose(1, 2)
        k = torch.cat([attn.prefix.keys.expand(B, -1, -1, -1), k], 2).repeat_interleave(2, dim=1)
        v = torch.cat([attn.prefix.values.expand(B, -1, -1, -1), v], 2).repeat_interleave(2, dim=1)
        scores = q @ k.transpose(-1, -2) / math.sqrt(Dh)  # (B, H, T, 3 + T)
        allowed = torch.cat([torch.ones(T, 3, dtype=torch.bool), torch.ones(T, T).tril().bool()], 1)
        y = scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ v  # (B, H, T, Dh)
        want = base.wo(y.transpose(1, 2).reshape(B, T, H * Dh))
    torch.testing.assert_close(got, want)


def test_prefix_cached_decode_equals_full_forward():
    model, x = apply_prefix_tuning(tiny(), 4), ids(T=10)
    with torch.no_grad():
        full = model(x)
        cache = KVCache.for_model(model, 2, 16)
        pos = torch.arange(10).expand(2, 10)
        steps = [model(x[:, :6], cache, pos[:, :6])]  # prefill
        steps += [model(x[:, t : t + 1], cache, pos[:, t : t + 1]) for t in range(6, 10)]
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-5, atol=1e-5)


def test_prefix_packed_rows_equal_separate_forwards():
    model, x = apply_prefix_tuning(tiny(), 3), ids(B=1, T=11)
    seg = torch.tensor([[0] * 4 + [1] * 7])
    with torch.no_grad():
        packed = model(x, segment_ids=seg)
        alone = torch.cat([model(x[:, :4]), model(x[:, 4:])], 1)
    torch.testing.assert_close(packed, alone, rtol=1e-5, atol=1e-5)


def test_prefix_tuning_overfits_a_batch():
    model, x = apply_prefix_tuning(trained_scale(), 8), ids(B=2, T=16)
    losses = train(model, x, n=30, lr=1e-1)
    # Chance is ln 256 = 5.55; measured: 5.65 → 2.44 with only the prefixes trained.
    assert losses[-1] < 3.5, losses


def test_prefix_disabled_and_errors():
    base, x = tiny(), ids()
    model = apply_prefix_tuning(tiny(), 2)
    with adapters_disabled(model):
        torch.testing.assert_close(model(x), base(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match="already"):
        apply_prefix_tuning(model, 2)
    with pytest.raises(ValueError, match="n_prefix"):
        apply_prefix_tuning(tiny(), 0)


# ---- save / load, several kinds at once --------------------------------------------------------


def test_save_load_prompt_prefix_and_lora(tmp_path):
    x = ids()
    model = apply_prefix_tuning(apply_lora(tiny(), LoraConfig(rank=2, targets=["wq"])), 2)
    model = apply_prompt_tuning(model, 3)
    assert {n.split(".")[-1] for n in peft_state_dict(model)} == {"lora_A", "lora_B", "keys", "values", "embeddings"}
    train(model, x, n=3, lr=1e-2)
    save_adapter(model, tmp_path)
    fresh = load_adapter(tiny(), tmp_path)
    assert isinstance(fresh, PromptTuned)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), model(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match="prompt"):  # the model has a kind the folder lacks
        only_lora = tmp_path / "lora"
        save_adapter(apply_lora(tiny(), LoraConfig(rank=2, targets=["wq"])), only_lora)
        load_adapter(apply_prompt_tuning(tiny(), 3), only_lora)
    assert all(isinstance(p, nn.Parameter) and p.requires_grad for p in peft_parameters(fresh))


def test_adapter_names_do_not_depend_on_the_order_of_transforms():
    """Prefix tuning wraps the attention (`base`); adapter names leave that hop out, so LoRA
    applied before or after it saves under the plain model's names."""
    lora = LoraConfig(rank=2, targets=["wq", "wo"])
    first = apply_prefix_tuning(apply_lora(tiny(), lora), 2)
    after = apply_lora(apply_prefix_tuning(tiny(), 2), lora)
    assert type(first.layers[0].attention).__name__ == "PrefixAttention"
    assert sorted(peft_state_dict(first)) == sorted(peft_state_dict(after))
    assert "layers.1.attention.wo.lora_B" in peft_state_dict(after)
    assert "layers.1.attention.prefix.keys" in peft_state_dict(after)
    assert not any(".base." in k for k in peft_state_dict(after))


def test_lora_targets_name_the_plain_model_under_a_prefix_wrapper():
    model = apply_lora(apply_prefix_tuning(tiny(), 2), LoraConfig(rank=2, targets=["layers.1.attention.wq"]))
    assert sorted(k for k in peft_state_dict(model) if "lora" in k) == ["layers.1.attention.wq.lora_A", "layers.1.attention.wq.lora_B"]
