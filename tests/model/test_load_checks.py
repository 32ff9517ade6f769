"""Loading checks sizes before it allocates, and refuses paths that are not regular files.

Every case here once read, allocated or blocked without bound: a config.json claiming a
million layers grew the meta model for a minute, /dev/zero was read until MemoryError.
"""

import json
import os

import pytest
import torch

import ember.model.load as load_mod
from ember.core.gguf import GGUFError, open_gguf
from ember.model import ModelConfig, Transformer, load_model
from ember.model.convert import fill, split_layer
from ember.model.convert.gguf import LLAMA_KEYS as GGUF_LLAMA_KEYS
from ember.model.convert.gguf import load_gguf
from ember.model.convert.hf import config_from_hf, load_hf, save_hf
from ember.model.load import build_model
from ember.model.shapes import check_config_fits, expected_shapes


@pytest.fixture
def no_model_built(monkeypatch):
    """Fail the test if loading builds the configured model (even on meta) before the check
    fails: only the one-layer template that gives the expected shapes may be built."""
    real = load_mod.Transformer

    def guarded(cfg):
        assert cfg.n_layers == 1, f"built a {cfg.n_layers}-layer model before checking the weights"
        return real(cfg)

    monkeypatch.setattr(load_mod, "Transformer", guarded)


@pytest.fixture
def hf_folder(tmp_path):
    torch.manual_seed(0)
    return save_hf(Transformer(ModelConfig.tiny()), tmp_path / "hf")


def _edit_config(folder, **changes):
    path = folder / "config.json"
    d = json.loads(path.read_text())
    for k, v in changes.items():
        if v is None:
            d.pop(k)
        else:
            d[k] = v
    path.write_text(json.dumps(d))


# ---- the config against the weights -----------------------------------------------------------


def test_config_claiming_a_million_layers_fails_before_building(hf_folder, no_model_built):
    _edit_config(hf_folder, num_hidden_layers=1_000_000)
    with pytest.raises(ValueError, match=r"config.json says n_layers=1000000 but there are 2 layers in model.safetensors"):
        load_model(hf_folder)


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"hidden_size": 128, "head_dim": 32}, r"vocab_size=256, d_model=128 .* token embedding .* shape \(256, 64\)"),
        ({"vocab_size": 10**9}, r"vocab_size=1000000000.*\(256, 64\)"),
        ({"intermediate_size": 10**9}, r"feed_forward.w1.weight: \(176, 64\) \(expected \(1000000000, 64\)\)"),
        ({"num_key_value_heads": 4}, r"attention.wk.weight: \(32, 64\) \(expected \(64, 64\)\)"),
    ],
)
def test_config_sizes_the_weights_do_not_hold(hf_folder, no_model_built, changes, match):
    _edit_config(hf_folder, **changes)
    with pytest.raises(ValueError, match=match):
        load_model(hf_folder)


def test_state_dict_with_fewer_layers_than_the_config(no_model_built):
    sd = Transformer(ModelConfig.tiny()).state_dict()
    with pytest.raises(ValueError, match="says n_layers=100000 but there are 2 layers"):
        build_model(ModelConfig.tiny(n_layers=100_000), sd)
    sd["layers.7.ffn_norm.weight"] = torch.ones(64)
    with pytest.raises(ValueError, match=r"3 layers \(numbered 0, 1, 7\)"):
        build_model(ModelConfig.tiny(n_layers=3), sd)


def test_expected_shapes_match_the_built_model():
    for cfg in (ModelConfig.tiny(), ModelConfig.from_preset("tiny-gpt2"), ModelConfig.tiny(bias=True)):
        model_shapes = {k: tuple(v.shape) for k, v in Transformer(cfg).state_dict().items()}
        if cfg.tie_embeddings:
            model_shapes.pop("output.weight")  # the embedding itself: weights need not repeat it
        assert expected_shapes(cfg) == model_shapes
        check_config_fits(cfg, model_shapes)  # a model's own shapes always fit its config


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"num_hidden_layers": "2"}, r"config.json: num_hidden_layers must be a positive int, got '2'"),
        ({"hidden_size": -64}, r"config.json: hidden_size must be a positive int, got -64"),
        ({"vocab_size": None}, r"config.json: missing 'vocab_size'"),
        ({"intermediate_size": 2.5}, r"intermediate_size must be a positive int, got 2.5"),
        ({"tie_word_embeddings": "false"}, r"tie_word_embeddings must be a bool, got 'false'"),
        ({"rms_norm_eps": "tiny"}, r"rms_norm_eps must be a positive number, got 'tiny'"),
        ({"rope_parameters": [10000]}, r"rope_parameters must be a JSON object"),
        ({"rope_parameters": {"rope_type": "linear", "factor": "2"}}, r"config.json: rope_scaling factor must be a positive number"),
        ({"hidden_act": 3}, r"hidden_act must be a string, got 3"),
        ({"model_type": ["llama"]}, r"config.json: unsupported HF model_type \['llama'\]"),
        ({"hidden_size": 66, "head_dim": None}, r"config.json: d_model 66 is not divisible by n_heads 4"),
        ({"num_hidden_layers": 2**40}, r"config.json: ModelConfig.n_layers must be a positive int \(at most"),
    ],
)
def test_bad_config_json_fields_are_named(hf_folder, changes, match):
    _edit_config(hf_folder, **changes)
    with pytest.raises(ValueError, match=match):
        load_hf(hf_folder)


def test_gpt2_config_fields_are_named():
    base = {"model_type": "gpt2", "vocab_size": 256, "n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 64}
    assert config_from_hf(base).d_ff == 256  # n_inner absent (or null) → 4 * n_embd
    with pytest.raises(ValueError, match="x.json: missing 'n_positions'"):
        config_from_hf({k: v for k, v in base.items() if k != "n_positions"}, "x.json")
    with pytest.raises(ValueError, match="config.json: n_head must be a positive int, got True"):
        config_from_hf(base | {"n_head": True})
    with pytest.raises(ValueError, match="config.json: must hold a JSON object, got list"):
        config_from_hf([base])


# ---- GGUF: the metadata against the tensors ---------------------------------------------------


def _write_gguf(path, block_count=None, **meta):
    """A tiny Llama GGUF written from an ember model (interleaved RoPE rows, as GGUF stores them)."""
    from gguf import GGUFValueType, GGUFWriter

    cfg = ModelConfig.tiny(rope_interleaved=True, tie_embeddings=True)
    gguf_name = {v: k for k, v in GGUF_LLAMA_KEYS.items()}
    w = GGUFWriter(str(path), "llama")
    w.add_block_count(block_count or cfg.n_layers)
    w.add_context_length(cfg.max_seq_len)
    w.add_embedding_length(cfg.d_model)
    w.add_feed_forward_length(cfg.d_ff)
    w.add_head_count(cfg.n_heads)
    w.add_head_count_kv(cfg.n_kv_heads)
    w.add_layer_norm_rms_eps(cfg.norm_eps)
    for key, (value, vtype) in meta.items():
        w.add_key_value(key, value, getattr(GGUFValueType, vtype))
    torch.manual_seed(0)
    for key, t in Transformer(cfg).state_dict().items():
        if key == "output.weight":
            continue
        tmpl, layer = split_layer(key)
        w.add_tensor(fill(gguf_name[tmpl], layer), t.numpy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_gguf_block_count_beyond_its_tensors(tmp_path, no_model_built):
    pytest.importorskip("gguf")
    bad = _write_gguf(tmp_path / "bad.gguf", block_count=1_000_000)
    with pytest.raises(ValueError, match=r"metadata of .*bad.gguf says n_layers=1000000 but there are 2 layers"):
        load_gguf(bad)


@pytest.mark.parametrize(
    "meta, match",
    [
        ({"llama.attention.head_count_kv": ("x", "STRING")}, r"llama.attention.head_count_kv must be a positive int, got 'x'"),
        ({"llama.rope.freq_base": ("fast", "STRING")}, r"llama.rope.freq_base must be a positive number, got 'fast'"),
        ({"llama.rope.scaling.type": ("linear", "STRING")}, r"lacks llama.rope.scaling.factor"),
        ({"llama.rope.scaling.type": (7, "UINT32")}, r"llama.rope.scaling.type must be a string, got 7"),
    ],
)
def test_gguf_metadata_fields_are_named(tmp_path, meta, match):
    pytest.importorskip("gguf")
    assert load_model(_write_gguf(tmp_path / "ok.gguf")).config.n_layers == 2  # the writer is sound
    path = _write_gguf(tmp_path / "m.gguf", **meta)
    with pytest.raises(ValueError, match=match) as e:
        load_gguf(path)
    assert str(path) in str(e.value)


# ---- paths that are not regular files ---------------------------------------------------------


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero")
def test_dev_zero_is_refused_before_reading():
    import ember
    from ember.tokenizer import load_tokenizer

    for load in (load_model, load_tokenizer, ember.load, open_gguf):
        with pytest.raises(ValueError, match="/dev/zero is a character device, not a"):
            load("/dev/zero")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifos_are_refused_without_opening(tmp_path, hf_folder):
    # Opening a FIFO for reading blocks until a writer comes: a test that hangs here has regressed.
    fifo = tmp_path / "pipe.gguf"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="pipe.gguf is a FIFO, not a model file or folder"):
        load_model(fifo)
    with pytest.raises(GGUFError, match="is a FIFO, not a GGUF file"):
        open_gguf(fifo)
    os.mkfifo(hf_folder / "extra.safetensors")
    with pytest.raises(ValueError, match="extra.safetensors is a FIFO, not a safetensors file"):
        load_model(hf_folder)


def test_directories_where_a_file_is_expected(tmp_path, hf_folder):
    (hf_folder / "model.safetensors").unlink()
    (hf_folder / "model.safetensors").mkdir()
    with pytest.raises(ValueError, match="model.safetensors is a directory, not a safetensors file"):
        load_model(hf_folder)
    cfg_dir = tmp_path / "cfgdir"
    (cfg_dir / "config.json").mkdir(parents=True)
    with pytest.raises(ValueError, match="config.json is a directory, not a config.json file"):
        load_model(cfg_dir)
    with open(hf_folder / "config.json", "r+b") as f:
        f.truncate(1 << 30)  # sparse: 1 GiB on paper, nothing on disk
    with pytest.raises(ValueError, match="config.json is 1073741824 bytes, more than a model config needs"):
        load_model(hf_folder)
    (tmp_path / "weights.gguf").mkdir()
    with pytest.raises(ValueError, match="weights.gguf is a directory, not a GGUF file"):
        load_model(tmp_path / "weights.gguf")
    with pytest.raises(GGUFError, match="weights.gguf is a directory, not a GGUF file"):
        open_gguf(tmp_path / "weights.gguf")


# ---- ModelConfig bounds -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"vocab_size": 2**40}, r"ModelConfig.vocab_size must be a positive int \(at most 2147483647\), got 1099511627776"),
        ({"rope_scaling": {"type": "linear", "factor": "2"}}, r"rope_scaling factor must be a positive number, got '2'"),
        ({"norm_eps": "1e-5"}, r"norm_eps must be > 0, got '1e-5'"),
    ],
)
def test_model_config_bounds(overrides, match):
    with pytest.raises(ValueError, match=match):
        ModelConfig.tiny(**overrides)
