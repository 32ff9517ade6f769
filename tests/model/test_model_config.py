import pytest

from ember.model import ModelConfig, Transformer
from ember.model.config import PRESETS


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"norm": "batchnorm"}, "norm"),
        ({"pos_emb": "alibi"}, "pos_emb"),
        ({"mlp": "relu"}, "mlp"),
        ({"n_heads": 3}, "not divisible by n_heads"),
        ({"n_kv_heads": 3}, "not divisible by n_kv_heads"),
        ({"n_layers": 0}, "n_layers"),
        ({"vocab_size": 2.5}, "vocab_size"),
        ({"norm_eps": 0.0}, "norm_eps"),
        ({"rope_scaling": {"type": "longrope", "factor": 2.0}}, "longrope"),
        ({"rope_scaling": {"type": "llama3", "factor": 8.0}}, "lacks"),
        ({"pos_emb": "learned", "rope_scaling": {"type": "linear", "factor": 2.0}}, "not 'rope'"),
        ({"d_model": 72, "n_heads": 8, "n_kv_heads": 8}, "even head_dim"),
    ],
)
def test_invalid_configs_name_the_bad_value(overrides, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig.tiny(**overrides)


def test_unknown_key_and_preset_list_the_valid_ones():
    with pytest.raises(ValueError, match="unknown ModelConfig keys.*n_layer'.*valid keys"):
        ModelConfig.from_dict({"n_layer": 2})
    with pytest.raises(ValueError, match="unknown model preset 'gpt3'.*gpt2-medium"):
        ModelConfig.from_preset("gpt3")


def test_presets():
    assert set(PRESETS) >= {"gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "tiny", "tiny-gpt2", "smollm2-135m"}
    tiny = ModelConfig.tiny()
    assert (tiny.n_layers, tiny.d_model, tiny.n_heads, tiny.n_kv_heads, tiny.head_dim) == (2, 64, 4, 2, 16)
    gpt2 = ModelConfig.from_preset("gpt2")
    assert (gpt2.norm, gpt2.pos_emb, gpt2.mlp, gpt2.bias, gpt2.tie_embeddings) == ("layernorm", "learned", "gelu", True, True)
    assert gpt2.n_kv_heads == gpt2.n_heads == 12
    assert ModelConfig.from_preset("gpt2-xl").d_model == 1600
    smol = ModelConfig.from_preset("smollm2-135m")
    assert (smol.n_layers, smol.d_model, smol.n_heads, smol.n_kv_heads, smol.d_ff) == (30, 576, 9, 3, 1536)


def test_gpt2_small_has_124m_parameters():
    import torch

    with torch.device("meta"):
        model = Transformer(ModelConfig.from_preset("gpt2"))
    n = sum(p.numel() for p in model.parameters())  # tied head counted once
    assert n == 124_439_808
