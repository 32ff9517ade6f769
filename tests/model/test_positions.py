import math

import pytest
import torch

from ember.model import ModelConfig, Transformer
from ember.model.kv_cache import KVCache
from ember.model.layers import rope_cos_sin
from ember.model.positions import rope_frequencies, window_mask

SCALINGS = {
    "linear": {"factor": 4.0},
    "dynamic": {"factor": 4.0},
    "yarn": {"factor": 4.0, "original_max_position_embeddings": 64},
    "yarn-betas": {"factor": 8.0, "original_max_position_embeddings": 32, "beta_fast": 16, "beta_slow": 2},
    "yarn-mscale": {"factor": 4.0, "original_max_position_embeddings": 64, "mscale": 1.0, "mscale_all_dim": 0.5},
    "llama3": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
}


def _cfg(kind: str | None, seq: int = 256, **extra) -> ModelConfig:
    rs = None if kind is None else {"type": kind.split("-")[0], **SCALINGS.get(kind, {}), **extra}
    return ModelConfig.tiny(d_model=128, n_heads=2, n_kv_heads=2, rope_theta=10000.0, max_seq_len=seq, rope_scaling=rs)


@pytest.mark.parametrize("kind", list(SCALINGS))
@pytest.mark.parametrize("seq_len", [None, 200])
def test_rope_scaling_matches_transformers(kind, seq_len):
    """inv_freq and the attention factor of each type equal transformers' ROPE_INIT_FUNCTIONS
    (for dynamic, also past the trained length, where the base grows with seq_len)."""
    transformers = pytest.importorskip("transformers")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    rs = {"rope_type": kind.split("-")[0], **SCALINGS[kind], "rope_theta": 10000.0}
    max_pos = 64
    hf_cfg = transformers.LlamaConfig(hidden_size=128, num_attention_heads=2, max_position_embeddings=max_pos,
                                      rope_parameters=rs)
    ref_inv, ref_af = ROPE_INIT_FUNCTIONS[rs["rope_type"]](hf_cfg, "cpu", seq_len=seq_len)
    inv, af = rope_frequencies(_cfg(kind, seq=max_pos), seq_len)
    torch.testing.assert_close(inv, ref_inv.float())
    assert af == pytest.approx(ref_af)


def test_scaling_types_by_hand():
    base, _ = rope_frequencies(_cfg(None))
    lin, _ = rope_frequencies(_cfg("linear"))
    torch.testing.assert_close(lin, base / 4)
    # NTK-aware: the highest frequency is kept and the lowest divided by exactly the factor
    ntk, _ = rope_frequencies(_cfg("ntk", factor=4.0))
    assert ntk[0] == base[0] and ntk[-1].item() == pytest.approx(base[-1].item() / 4, rel=1e-5)
    assert (ntk[1:-1] < base[1:-1]).all() and (ntk[1:-1] > base[1:-1] / 4).all()
    # dynamic: unchanged up to the trained length (max_seq_len here), NTK-scaled past it
    dyn = _cfg("dynamic", seq=64, factor=4.0)
    torch.testing.assert_close(rope_frequencies(dyn, 64)[0], base)
    assert rope_frequencies(dyn, 128)[0][-1] < base[-1]
    # YaRN: high frequencies kept, low ones / factor, cos/sin scaled by 0.1 ln(4) + 1
    yarn, af = rope_frequencies(_cfg("yarn"))
    assert yarn[0] == base[0] and yarn[-1].item() == pytest.approx(base[-1].item() / 4)
    assert af == pytest.approx(0.1 * math.log(4) + 1)


def test_yarn_attention_factor_scales_cos_sin():
    pos = torch.arange(5)[None]
    cos, sin = rope_cos_sin(_cfg("yarn"), pos)
    inv, af = rope_frequencies(_cfg("yarn"))
    torch.testing.assert_close(cos, (pos[..., None] * inv).cos() * af)
    torch.testing.assert_close(sin, (pos[..., None] * inv).sin() * af)


@pytest.mark.parametrize("overrides, message", [
    ({"rope_scaling": {"type": "su", "factor": 2.0}}, "'su' is not one of"),
    ({"rope_scaling": {"type": "yarn", "factor": 0}}, "factor must be a positive number, got 0"),
    ({"rope_scaling": {"type": "ntk", "factor": -2.0}}, "factor must be a positive number, got -2.0"),
    ({"rope_scaling": {"type": "dynamic"}}, "lacks \\['factor'\\]"),
    ({"rope_scaling": {"type": "yarn", "factor": 2.0, "beta": 3}}, "unknown keys \\['beta'\\]"),
    ({"rope_scaling": {"type": "yarn", "factor": 2.0, "truncate": 1}}, "truncate must be true or false"),
    ({"sliding_window": 0}, "sliding_window must be None or a positive int, got 0"),
    ({"n_sink_tokens": 4}, "n_sink_tokens 4 needs a sliding_window"),
    ({"sliding_window": 8, "n_sink_tokens": -1}, "n_sink_tokens must be an int >= 0, got -1"),
])
def test_bad_position_configs_name_the_value(overrides, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig.tiny(**overrides)


@pytest.mark.parametrize("pos_emb", ["rope", "learned", "sinusoidal"])
def test_each_position_method_runs_and_depends_on_order(pos_emb):
    torch.manual_seed(0)
    model = Transformer(ModelConfig.tiny(pos_emb=pos_emb)).eval()
    ids = torch.randint(0, 256, (1, 12))
    with torch.no_grad():
        logits = model(ids)
        swapped = model(ids[:, [1, 0, *range(2, 12)]])
    assert logits.shape == (1, 12, 256) and torch.isfinite(logits).all()
    assert (logits[:, -1] - swapped[:, -1]).abs().max() > 1e-6  # order matters at the last position


def test_sinusoidal_positions_are_the_paper_formula():
    from ember.model.layers import sinusoidal_embedding

    pe = sinusoidal_embedding(torch.arange(50)[None], 16)[0]  # (50, 16)
    p, i = 37, 3
    assert pe[p, 2 * i].item() == pytest.approx(math.sin(p / 10000 ** (2 * i / 16)), abs=1e-6)
    assert pe[p, 2 * i + 1].item() == pytest.approx(math.cos(p / 10000 ** (2 * i / 16)), abs=1e-6)


def test_window_mask_by_hand():
    m = window_mask(torch.arange(6)[None], torch.arange(6), window=3, n_sinks=2)[0, 0]
    want = torch.tensor([
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 0, 0],
        [1, 1, 1, 1, 1, 0],
        [1, 1, 0, 1, 1, 1],
    ], dtype=torch.bool)  # row q: sinks 0 and 1, and q-2..q
    assert torch.equal(m, want)


def test_sliding_window_equals_full_attention_when_it_covers_the_sequence():
    torch.manual_seed(0)
    full = Transformer(ModelConfig.tiny()).eval()
    windowed = Transformer(ModelConfig.tiny(sliding_window=16)).eval()
    windowed.load_state_dict(full.state_dict())
    ids = torch.randint(0, 256, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(windowed(ids), full(ids))


@pytest.mark.parametrize("sinks", [0, 2])
def test_sliding_window_masks_what_falls_outside(sinks):
    """A token outside every later query's window (and not a sink) changes nothing there;
    within the window it does. Cached decode gives the full forward's logits."""
    torch.manual_seed(0)
    cfg = ModelConfig.tiny(n_layers=1, sliding_window=4, n_sink_tokens=sinks)
    model = Transformer(cfg).eval()
    ids = torch.randint(0, 256, (1, 12))
    changed = ids.clone()
    changed[0, 5] = (ids[0, 5] + 1) % 256  # position 5: seen by queries 5..8 only (one layer)
    with torch.no_grad():
        a, b = model(ids), model(changed)
    assert torch.equal(a[0, 9:], b[0, 9:])
    assert not torch.allclose(a[0, 6], b[0, 6])
    sink = ids.clone()
    sink[0, 0] = (ids[0, 0] + 1) % 256
    with torch.no_grad():
        c = model(sink)
    assert torch.equal(a[0, 11], c[0, 11]) == (sinks == 0)  # a sink stays visible to the last query
    cache = KVCache.for_model(model, 1, 12)
    with torch.no_grad():
        pre = model(ids[:, :7], cache, torch.arange(7)[None])
        steps = [model(ids[:, t:t + 1], cache, torch.tensor([[t]])) for t in range(7, 12)]
    torch.testing.assert_close(torch.cat([pre, *steps], dim=1), a, atol=1e-5, rtol=1e-5)


def test_rope_scaling_round_trips_through_gguf(tmp_path):
    from ember.model.convert.gguf import load_gguf
    from ember.model.convert.to_gguf import save_gguf

    rs = {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64}
    model = Transformer(ModelConfig.tiny(rope_scaling=rs)).eval()
    cfg, _ = load_gguf(save_gguf(model, tmp_path / "yarn.gguf"))
    assert cfg.rope_scaling == rs


def test_rope_scaling_from_the_cli_flags():
    from ember.cli import COMMANDS
    from ember.cli.parser import parse_command

    _, cfg = parse_command("pretrain", COMMANDS["pretrain"], [
        "--model.rope_scaling.type", "yarn", "--model.rope_scaling.factor", "2", "--model.sliding_window", "64",
        "--model.moe.n_experts", "4", "--model.moe.top_k", "1"])
    from ember.train.kit.pretraining import model_config

    mcfg = model_config("tiny", cfg.model, 256, 128)
    assert mcfg.rope_scaling == {"type": "yarn", "factor": 2} and mcfg.sliding_window == 64
    assert (mcfg.moe.n_experts, mcfg.moe.top_k) == (4, 1)


@pytest.mark.parametrize("overrides", [{"sliding_window": 6, "n_sink_tokens": 2}, {"moe": {"n_experts": 4}}])
def test_engine_decodes_windowed_and_moe_models_as_the_full_forward(overrides):
    """The engine needs no switch of its own: its cached, batched greedy decode gives the
    tokens of a plain greedy loop over full forwards (window masks and MoE included)."""
    import sys
    from pathlib import Path

    from ember.infer import Engine
    from ember.infer.sampling import SamplingParams

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "infer"))
    from infer_helpers import make_model, make_tokenizer

    model, tok = make_model(seed=1, tie_embeddings=False, **overrides), make_tokenizer()
    prompts = [[72, 101, 108, 108, 111, 32, 119, 111, 114], [65, 66, 67]]
    results = Engine(model, tok, max_batch_size=2).generate(prompts, SamplingParams(temperature=0, max_tokens=10))
    for prompt, result in zip(prompts, results):
        ids = list(prompt)
        with torch.no_grad():
            for _ in range(len(result.token_ids)):
                ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
        assert result.token_ids == ids[len(prompt):]
