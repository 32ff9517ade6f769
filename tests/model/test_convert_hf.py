"""litgpt-style converter parity: a randomly initialised tiny HF model, saved, loaded by ember."""

import json

import pytest
import torch

from ember.model import ModelConfig, Transformer, load_model
from ember.model.convert.hf import from_hf, save_hf, to_hf
from ember.model.load import build_model

transformers = pytest.importorskip("transformers")


def _tiny_llama(tie: bool, **kw):
    cfg = transformers.LlamaConfig(
        vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=96, max_position_embeddings=64, tie_word_embeddings=tie, rms_norm_eps=1e-5, **kw,
    )
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(cfg).eval()


def _tiny_gpt2():
    cfg = transformers.GPT2Config(vocab_size=128, n_embd=64, n_layer=2, n_head=4, n_positions=64,
                                  bos_token_id=None, eos_token_id=None)
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(cfg).eval()


HF_MODELS = {
    "llama": lambda: _tiny_llama(tie=False),
    "llama-tied": lambda: _tiny_llama(tie=True),
    "llama-bias-rope-scaled": lambda: _tiny_llama(
        tie=False, attention_bias=True, mlp_bias=True,
        rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 5000.0},
    ),
    "gpt2": _tiny_gpt2,
}


@pytest.mark.parametrize("name", sorted(HF_MODELS))
@torch.no_grad()
def test_hf_checkpoint_loads_with_identical_logits(name, tmp_path):
    hf = HF_MODELS[name]()
    hf.save_pretrained(tmp_path)
    model = load_model(tmp_path)
    ids = torch.randint(0, 128, (2, 17))
    torch.testing.assert_close(model(ids), hf(ids).logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", sorted(HF_MODELS))
@torch.no_grad()
def test_save_to_hf_round_trip(name, tmp_path):
    """ember → HF folder → transformers loads it (same logits) → ember loads it back."""
    hf = HF_MODELS[name]()
    hf.save_pretrained(tmp_path / "src")
    model = load_model(tmp_path / "src")
    save_hf(model, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["config.json", "model.safetensors"]
    again_hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    again = load_model(tmp_path / "out")
    ids = torch.randint(0, 128, (1, 11))
    torch.testing.assert_close(again_hf(ids).logits, hf(ids).logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(again(ids), model(ids))


@torch.no_grad()
def test_interleaved_model_saves_in_hf_row_order(tmp_path):
    """A model with GGUF-style RoPE rows is un-permuted on the way out."""
    torch.manual_seed(0)
    model = Transformer(ModelConfig.tiny(rope_interleaved=True, tie_embeddings=True)).eval()
    save_hf(model, tmp_path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, 256, (1, 9))
    torch.testing.assert_close(hf(ids).logits, model(ids), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch, overrides", [("llama", {}), ("gpt2", None)])
def test_to_hf_inverts_from_hf(arch, overrides):
    cfg = ModelConfig.tiny() if arch == "llama" else ModelConfig.from_preset("tiny-gpt2", tie_embeddings=False)
    sd = Transformer(cfg).state_dict()
    back = from_hf(to_hf(sd, cfg).items(), cfg, arch)
    assert back.keys() == sd.keys()
    for k in sd:
        torch.testing.assert_close(back[k], sd[k], atol=0, rtol=0)


def test_gpt2_hub_names_without_prefix_and_mask_buffers():
    cfg = ModelConfig.from_preset("tiny-gpt2")
    hf = to_hf(Transformer(cfg).state_dict(), cfg)
    bare = {k.removeprefix("transformer."): v for k, v in hf.items()}
    bare["h.0.attn.bias"] = torch.ones(1, 1, 4, 4)  # old checkpoints carry the causal mask
    build_model(cfg, from_hf(bare.items(), cfg, "gpt2"))


def test_unknown_model_type_and_keys_are_value_errors(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mamba"}))
    with pytest.raises(ValueError, match="unsupported HF model_type 'mamba'.*gpt2.*llama"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**_tiny_gpt2().config.to_dict(), "activation_function": "relu"}))
    with pytest.raises(ValueError, match="activation_function 'relu'"):
        load_model(tmp_path)
    cfg = ModelConfig.tiny()
    with pytest.raises(ValueError, match="no ember name: model.layers.0.self_attn.rotary_emb.inv_freq"):
        from_hf([("model.layers.0.self_attn.rotary_emb.inv_freq", torch.ones(8))], cfg, "llama")


def test_missing_unexpected_and_misshaped_weights_are_named():
    cfg = ModelConfig.tiny()
    sd = Transformer(cfg).state_dict()
    del sd["layers.1.feed_forward.w3.weight"]
    sd["layers.0.attention.wq.bias"] = torch.zeros(64)
    sd["norm.weight"] = torch.ones(65)
    with pytest.raises(ValueError) as e:
        build_model(cfg, sd)
    msg = str(e.value)
    assert "missing ['layers.1.feed_forward.w3.weight']" in msg
    assert "unexpected ['layers.0.attention.wq.bias']" in msg
    assert "norm.weight: (65,) (expected (64,))" in msg


def test_load_assigns_without_copies_and_ties(tmp_path):
    cfg = ModelConfig.tiny(tie_embeddings=True)
    sd = Transformer(cfg).state_dict()
    sd.pop("output.weight")
    model = build_model(cfg, sd)
    assert model.tok_embeddings.weight.data_ptr() == sd["tok_embeddings.weight"].data_ptr()  # assigned, not copied
    assert model.output.weight is model.tok_embeddings.weight
    assert not any(p.is_meta for p in model.parameters())


def test_inexpressible_config_cannot_be_saved(tmp_path):
    model = Transformer(ModelConfig.tiny(pos_emb="sinusoidal"))
    with pytest.raises(ValueError, match="no HF architecture"):
        save_hf(model, tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_load_in_bf16(tmp_path):
    _tiny_llama(tie=True).save_pretrained(tmp_path)
    model = load_model(tmp_path, dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model(torch.zeros(1, 4, dtype=torch.long)).dtype == torch.bfloat16
