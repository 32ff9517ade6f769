"""GGUF → ember: tiny files written with gguf.GGUFWriter, checked against transformers' logits."""

import struct

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q
from gguf import GGUFWriter
from gguf.quants import dequantize as gguf_dequantize
from gguf.quants import quantize

from ember.core.gguf import open_gguf
from ember.model import load_model
from ember.model.convert import rope_rows_half_to_interleaved
from ember.model.convert.gguf import GGUFTensor, dequantize, gguf_raw_tensors, load_gguf

transformers = pytest.importorskip("transformers")

LLAMA_NAMES = {  # HF → GGUF, as llama.cpp's convert_hf_to_gguf.py writes them
    "model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def _gguf_name(hf_key: str) -> str:
    if hf_key in LLAMA_NAMES:
        return LLAMA_NAMES[hf_key]
    _, _, i, *rest = hf_key.split(".")  # model.layers.{i}.<module>.weight
    return f"blk.{i}.{LLAMA_NAMES['.'.join(rest[:-1])]}.{rest[-1]}"


def _write_llama_gguf(path, hf, qtype=Q.F32, arch="llama"):
    c = hf.config
    w = GGUFWriter(path, arch)
    w.add_block_count(c.num_hidden_layers)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_rope_freq_base(c.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    for key, t in hf.state_dict().items():
        if key == "lm_head.weight" and c.tie_word_embeddings:
            continue
        t = t.float().numpy()
        if "q_proj" in key or "k_proj" in key:  # llama.cpp's row permutation
            n = c.num_attention_heads if "q_proj" in key else c.num_key_value_heads
            t = rope_rows_half_to_interleaved(torch.from_numpy(t), n).numpy()
        if t.ndim == 2 and qtype != Q.F32:
            w.add_tensor(_gguf_name(key), quantize(t, qtype), raw_dtype=qtype)
        else:
            w.add_tensor(_gguf_name(key), t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _tiny_llama(tie=True):
    cfg = transformers.LlamaConfig(
        vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=96, max_position_embeddings=64, tie_word_embeddings=tie, rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    )
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(cfg).eval()


@pytest.mark.parametrize("tie", [True, False])
@torch.no_grad()
def test_llama_gguf_matches_transformers(tmp_path, tie):
    hf = _tiny_llama(tie)
    model = load_model(_write_llama_gguf(tmp_path / "tiny.gguf", hf))
    assert model.config.rope_interleaved and model.config.tie_embeddings == tie
    ids = torch.randint(0, 128, (2, 13))
    torch.testing.assert_close(model(ids), hf(ids).logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("qtype", [Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1])
def test_quantized_matrices_dequantize_exactly(tmp_path, qtype):
    hf = _tiny_llama()
    path = _write_llama_gguf(tmp_path / "q.gguf", hf, qtype)
    cfg, sd = load_gguf(path)
    raw = gguf_raw_tensors(open_gguf(path), "llama")
    w = raw["layers.1.feed_forward.w2.weight"]
    assert (w.type, w.shape) == (qtype, (64, 96))
    ref = hf.model.layers[1].mlp.down_proj.weight.detach().numpy()
    expect = gguf_dequantize(quantize(ref, qtype), qtype)
    np.testing.assert_array_equal(sd["layers.1.feed_forward.w2.weight"].numpy(), expect)
    assert raw["norm.weight"].type == Q.F32  # 1-D tensors stay F32
    load_model(path)(torch.zeros(1, 3, dtype=torch.long))


def test_q8_0_and_q4_1_blocks_by_hand():
    """The block formats, independent of gguf's code: Q8_0 = f16 d + 32 int8 q, x = d·q;
    Q4_1 = f16 d, f16 m + 16 bytes, low nibbles are x[0:16], high nibbles x[16:32], x = d·q + m."""
    q8 = np.arange(-16, 16, dtype=np.int8)
    block = np.frombuffer(np.float16(0.5).tobytes() + q8.tobytes(), dtype=np.uint8)[None]
    out = dequantize(GGUFTensor(Q.Q8_0, block, (1, 32)))
    torch.testing.assert_close(out[0], torch.arange(-16, 16).float() * 0.5)
    q4 = np.arange(32) % 16
    packed = (q4[:16] | (q4[16:] << 4)).astype(np.uint8)
    block = np.frombuffer(np.float16(0.25).tobytes() + np.float16(-1.0).tobytes() + packed.tobytes(), np.uint8)
    out = dequantize(GGUFTensor(Q.Q4_1, block[None], (1, 32)))
    torch.testing.assert_close(out[0], torch.tensor(q4).float() * 0.25 - 1.0)


@torch.no_grad()
def test_gpt2_gguf_matches_transformers(tmp_path):
    hf_cfg = transformers.GPT2Config(vocab_size=128, n_embd=64, n_layer=2, n_head=4, n_positions=64,
                                     bos_token_id=None, eos_token_id=None)
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(hf_cfg).eval()
    w = GGUFWriter(tmp_path / "g.gguf", "gpt2")
    w.add_block_count(2)
    w.add_context_length(64)
    w.add_embedding_length(64)
    w.add_feed_forward_length(256)
    w.add_head_count(4)
    w.add_layer_norm_eps(1e-5)
    names = {"ln_1": "attn_norm", "attn.c_attn": "attn_qkv", "attn.c_proj": "attn_output", "ln_2": "ffn_norm",
             "mlp.c_fc": "ffn_up", "mlp.c_proj": "ffn_down"}
    for key, t in hf.state_dict().items():
        parts = key.split(".")
        if key == "lm_head.weight":
            continue
        if parts[1] == "h":
            name = f"blk.{parts[2]}.{names['.'.join(parts[3:-1])]}.{parts[-1]}"
            if parts[-1] == "weight" and t.ndim == 2:
                t = t.t()  # Conv1D → nn.Linear layout, as llama.cpp's converter does
        else:
            name = {"wte": "token_embd", "wpe": "position_embd", "ln_f": "output_norm"}[parts[1]] + "." + parts[-1]
        w.add_tensor(name, np.ascontiguousarray(t.numpy()))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    model = load_model(tmp_path / "g.gguf")
    assert (model.config.pos_emb, model.config.norm, model.config.mlp) == ("learned", "layernorm", "gelu")
    ids = torch.randint(0, 128, (2, 9))
    torch.testing.assert_close(model(ids), hf(ids).logits, atol=1e-5, rtol=1e-5)


# ---- damaged and unsupported files ----------------------------------------------------------


@pytest.fixture
def valid_gguf(tmp_path):
    return _write_llama_gguf(tmp_path / "ok.gguf", _tiny_llama())


def test_truncated_file(valid_gguf):
    data = valid_gguf.read_bytes()
    valid_gguf.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated|corrupt"):
        load_model(valid_gguf)
    valid_gguf.write_bytes(data[:10])
    with pytest.raises(ValueError, match="shorter than a GGUF header"):
        load_model(valid_gguf)


def test_wrong_magic(valid_gguf):
    data = valid_gguf.read_bytes()
    valid_gguf.write_bytes(b"GGML" + data[4:])
    with pytest.raises(ValueError, match="magic b'GGML'"):
        load_gguf(valid_gguf)


def test_absurd_tensor_count(valid_gguf):
    data = bytearray(valid_gguf.read_bytes())
    data[8:16] = struct.pack("<Q", 2**40)
    valid_gguf.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="more than a .*-byte file can hold"):
        load_model(valid_gguf)


def test_tensor_data_past_end(valid_gguf):
    data = valid_gguf.read_bytes()
    valid_gguf.write_bytes(data[:-100])  # header intact, the last tensor's bytes cut short
    with pytest.raises(ValueError, match="past the end|truncated"):
        load_model(valid_gguf)


def test_unsupported_architecture(tmp_path):
    path = _write_llama_gguf(tmp_path / "m.gguf", _tiny_llama(), arch="mamba")
    with pytest.raises(ValueError, match="unsupported GGUF general.architecture 'mamba'.*gpt2.*llama"):
        load_model(path)


def test_not_a_model_path(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"\0" * 64)
    with pytest.raises(ValueError, match="neither a GGUF file nor an HF folder"):
        load_model(tmp_path / "weights.bin")
    with pytest.raises(ValueError, match="without config.json"):
        load_model(tmp_path)


def test_smollm2_raw_blocks_are_exposed_without_dequantizing():
    from ember.core.registry import ModelNotFoundError, resolve_model

    try:
        path = resolve_model("smollm2")
    except ModelNotFoundError as e:
        pytest.skip(str(e))
    raw = gguf_raw_tensors(open_gguf(path), "llama")
    wq = raw["layers.0.attention.wq.weight"]
    assert (wq.type, wq.shape, wq.data.shape, wq.data.dtype) == (Q.Q4_1, (576, 576), (576, 360), np.uint8)
    assert raw["tok_embeddings.weight"].type == Q.Q8_0
    assert "output.weight" not in raw  # tied: the head is tok_embeddings
    assert len(raw) == 272
