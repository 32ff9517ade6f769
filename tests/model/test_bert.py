"""The BERT encoder: the same Transformer with the encoder switches, checked against a randomly
initialised tiny `transformers.BertModel` converted through the production converter."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from ember.model import ModelConfig, Transformer
from ember.model.convert.hf import config_from_hf, config_to_hf, from_hf, hf_arch, to_hf
from ember.model.heads import cls_pool, mean_pool
from ember.model.load import build_model


def tiny_bert(**overrides) -> ModelConfig:
    return ModelConfig.from_preset("tiny-bert", **overrides)


def test_input_embedding_is_word_plus_position_plus_segment():
    # the seed's worked example: Final Input Embedding = Word + Positional + Segment
    torch.manual_seed(0)
    model = Transformer(tiny_bert(embed_norm=False)).eval()
    ids, types = torch.tensor([[5, 7, 9, 11]]), torch.tensor([[0, 0, 1, 1]])
    seen = {}
    model.layers[0].register_forward_pre_hook(lambda m, args: seen.setdefault("x", args[0]))
    model.hidden(ids, token_type_ids=types)
    want = model.tok_embeddings(ids) + model.pos_embeddings(torch.arange(4))[None] + model.type_embeddings(types)
    torch.testing.assert_close(seen["x"], want)


def test_post_norm_encoder_has_no_final_norm_and_decoders_keep_theirs():
    assert isinstance(Transformer(tiny_bert()).norm, torch.nn.Identity)
    assert "norm.weight" in Transformer(ModelConfig.tiny()).state_dict()
    assert "type_embeddings.weight" not in Transformer(ModelConfig.tiny()).state_dict()


def test_gelu_erf_is_exact_and_differs_from_tanh():
    cfg = tiny_bert(n_layers=1)
    model = Transformer(cfg)
    x = torch.linspace(-4, 4, 64)[None, None]
    ffn = model.layers[0].feed_forward
    torch.testing.assert_close(ffn(x), ffn.w2(F.gelu(ffn.w1(x))))
    tanh = dataclasses.replace(cfg, mlp="gelu")
    assert Transformer(tanh).layers[0].feed_forward.gelu_approximate == "tanh"


def test_padding_does_not_change_real_tokens():
    torch.manual_seed(0)
    model = Transformer(tiny_bert()).eval()
    ids = torch.tensor([[2, 40, 41, 42, 3]])
    alone = model.hidden(ids)
    padded = torch.cat([ids, torch.zeros(1, 3, dtype=torch.long)], dim=1)
    mask = torch.tensor([[1] * 5 + [0] * 3])
    together = model.hidden(padded, attention_mask=mask)
    torch.testing.assert_close(together[:, :5], alone)
    torch.testing.assert_close(mean_pool(together, mask), alone.mean(dim=1))
    torch.testing.assert_close(cls_pool(together), alone[:, 0])


def test_bad_masks_and_types_are_value_errors():
    model = Transformer(tiny_bert())
    ids = torch.zeros(1, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="attention_mask"):
        model.hidden(ids, attention_mask=torch.ones(1, 3))
    with pytest.raises(ValueError, match="token_type_ids"):
        model.hidden(ids, token_type_ids=torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="n_token_types"):
        Transformer(ModelConfig.tiny()).hidden(ids, token_type_ids=torch.zeros_like(ids))
    with pytest.raises(ValueError, match="norm_position"):
        tiny_bert(norm_position="middle")
    with pytest.raises(ValueError, match="n_token_types"):
        tiny_bert(n_token_types=-1)


def test_causal_attention_mask_left_padding_gives_no_nan():
    torch.manual_seed(0)
    model = Transformer(ModelConfig.tiny()).eval()
    ids = torch.tensor([[0, 0, 5, 6, 7]])
    h = model.hidden(ids, attention_mask=torch.tensor([[0, 0, 1, 1, 1]]))
    assert torch.isfinite(h).all()
    # the real tokens see only themselves: as if the pads were not there
    torch.testing.assert_close(h[:, 2:], model.hidden(ids[:, 2:]), atol=1e-5, rtol=1e-5)


# ---- against transformers ---------------------------------------------------------------------


def _hf_bert(**kw):
    transformers = pytest.importorskip("transformers")
    hf_cfg = transformers.BertConfig(
        vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=40, type_vocab_size=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        **kw,
    )
    torch.manual_seed(0)
    hf = transformers.BertModel(hf_cfg, add_pooling_layer=False).eval()
    with torch.no_grad():  # LayerNorms start at (1, 0): randomise them so a swapped norm shows
        for name, p in hf.named_parameters():
            if "LayerNorm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return hf


@pytest.mark.parametrize("act", ["gelu", "gelu_new"])
def test_hidden_states_match_transformers_bert(act):
    hf = _hf_bert(hidden_act=act)
    cfg = config_from_hf(hf.config.to_dict())
    model = build_model(cfg, from_hf(hf.state_dict().items(), cfg, "bert"))
    ids = torch.randint(1, 99, (3, 9))
    types = torch.randint(0, 2, (3, 9))
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[1, 6:] = 0
    mask[2, 2:] = 0
    with torch.no_grad():
        want = hf(input_ids=ids, token_type_ids=types, attention_mask=mask).last_hidden_state
        got = model.hidden(ids, attention_mask=mask, token_type_ids=types)
    real = mask.bool()
    torch.testing.assert_close(got[real], want[real], atol=1e-5, rtol=1e-5)


def test_bert_keys_round_trip_and_config_round_trip():
    hf = _hf_bert()
    sd = hf.state_dict()
    sd.pop("embeddings.position_ids", None)  # a buffer, not a weight (absent in recent transformers)
    sd.pop("embeddings.token_type_ids", None)
    cfg = config_from_hf(hf.config.to_dict())
    assert hf_arch(cfg) == "bert"
    back = to_hf(from_hf(sd.items(), cfg, "bert"), cfg)
    assert sorted(back) == sorted(sd)
    for k in sd:
        assert torch.equal(back[k], sd[k]), k
    assert config_from_hf(config_to_hf(cfg)) == cfg


def test_masked_lm_checkpoint_body_loads():
    # BertForMaskedLM nests the body under "bert." and adds a head the encoder does not hold
    hf = _hf_bert()
    cfg = config_from_hf(hf.config.to_dict())
    sd = {f"bert.{k}": v for k, v in hf.state_dict().items()}
    sd["cls.predictions.bias"] = torch.zeros(99)
    sd["cls.predictions.transform.dense.weight"] = torch.zeros(32, 32)
    assert set(from_hf(sd.items(), cfg, "bert")) == set(from_hf(hf.state_dict().items(), cfg, "bert"))


def test_decoders_are_not_written_as_bert_nor_bert_as_gpt2():
    assert hf_arch(ModelConfig.from_preset("tiny-gpt2")) == "gpt2"
    with pytest.raises(ValueError, match="no HF architecture"):
        hf_arch(ModelConfig.from_preset("tiny-gpt2", norm_position="post"))
    assert hf_arch(tiny_bert()) == "bert"


def test_minilm_preset_is_the_real_checkpoints_config():
    import json

    from ember.core.registry import ModelNotFoundError, resolve_model

    try:
        folder = resolve_model("minilm")
    except ModelNotFoundError as e:
        pytest.skip(str(e))
    cfg = config_from_hf(json.loads((folder / "config.json").read_text()))
    assert cfg == ModelConfig.from_preset("minilm-l6")
