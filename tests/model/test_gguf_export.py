"""GGUF export: ember → GGUF → ember (and transformers) gives the same logits."""

from __future__ import annotations

import pytest
import torch

from ember.core.gguf import open_gguf
from ember.model.config import ModelConfig
from ember.model.convert.to_gguf import save_gguf
from ember.model.load import load_model
from ember.model.transformer import Transformer
from ember.tokenizer import Tokenizer, load_tokenizer

# Max |logit difference| vs the original, measured on these tiny models (seed 0): f16 2.0e-4,
# q8_0 5.8e-3, q4_0 8.0e-2 (logits up to ~0.6); asserted with ~2.5x headroom.
TOLERANCE = {"f32": 1e-6, "f16": 5e-4, "q8_0": 1.5e-2, "q4_0": 0.2}


def _llama():
    return ModelConfig.tiny(vocab_size=258)


def _gpt2(**kw):
    return ModelConfig.tiny(vocab_size=258, norm="layernorm", pos_emb="learned", mlp="gelu", bias=True,
                            n_kv_heads=4, **kw)


def _tok():
    return Tokenizer(merges=[(108, 111, 256)], pattern="gpt2", special_tokens={"<|endoftext|>": 257},
                     eos_tokens=["<|endoftext|>"], chat_template="{{ messages[0]['content'] }}")


def _logits(model, ids):
    with torch.no_grad():
        out = model(ids)
    return out if torch.is_tensor(out) else out.logits


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("dtype", ["f32", "f16", "q8_0", "q4_0"])
def test_round_trip_logits(tmp_path, arch, dtype):
    torch.manual_seed(0)
    model = Transformer(_llama() if arch == "llama" else _gpt2()).eval()
    ids = torch.randint(0, 258, (2, 12))
    path = save_gguf(model, tmp_path / f"{arch}-{dtype}.gguf", dtype, _tok(), "gpt2")
    assert open_gguf(path).fields["general.architecture"] == arch
    back = load_model(path)
    diff = (_logits(back, ids) - _logits(model, ids)).abs().max().item()
    assert diff <= TOLERANCE[dtype], f"{arch} {dtype}: max logit difference {diff}"
    if dtype != "f32":  # the quantization really happened: not a lossless copy
        assert diff > 0


def test_sizes_shrink_with_dtype(tmp_path):
    model = Transformer(_llama())
    sizes = [save_gguf(model, tmp_path / f"{d}.gguf", d).stat().st_size for d in ("f32", "f16", "q8_0", "q4_0")]
    assert sizes == sorted(sizes, reverse=True) and sizes[0] > 3 * sizes[3]


def test_tokenizer_metadata_round_trips(tmp_path):
    tok = _tok()
    path = save_gguf(Transformer(_llama()), tmp_path / "m.gguf", "f32", tok, "gpt2")
    fields = open_gguf(path).fields
    assert fields["tokenizer.ggml.model"] == "gpt2" and fields["tokenizer.ggml.pre"] == "gpt2"
    assert fields["tokenizer.ggml.eos_token_id"] == 257 and fields["tokenizer.ggml.merges"] == ["l o"]
    back = load_tokenizer(path)
    text = "hello lol <|endoftext|> ünï"
    assert back.encode(text) == tok.encode(text)
    assert back.chat_template == tok.chat_template and back.eos_tokens == ["<|endoftext|>"]


@pytest.mark.slow
def test_smollm2_f32_reexport_is_exact(tmp_path):
    model = load_model("smollm2")
    tok = load_tokenizer("smollm2")
    path = save_gguf(model, tmp_path / "smollm2.gguf", "f32", tok, "smollm")
    ids = torch.tensor([tok.encode("The capital of France is")])
    back = load_model(path)
    assert torch.equal(_logits(back, ids), _logits(model, ids))
    fields = open_gguf(path).fields
    assert fields["tokenizer.ggml.pre"] == "smollm" and "im_start" in fields["tokenizer.chat_template"]
    assert load_tokenizer(path).encode("Hello 123 world") == tok.encode("Hello 123 world")


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_transformers_loads_the_export(tmp_path, arch):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    # transformers' GGUF reader maps no gpt2 context/FFN width: use its defaults (1024, 4*d)
    cfg = _llama() if arch == "llama" else _gpt2(d_ff=256, max_seq_len=1024)
    model = Transformer(cfg).eval()
    save_gguf(model, tmp_path / "m.gguf", "f32", _tok(), "gpt2")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="m.gguf").eval()
    ids = torch.randint(0, 258, (1, 10))
    assert (_logits(hf, ids) - _logits(model, ids)).abs().max().item() < 1e-5


def test_bad_inputs(tmp_path):
    model = Transformer(_llama())
    with pytest.raises(ValueError, match="'q5_k'"):
        save_gguf(model, tmp_path / "a.gguf", "q5_k")
    save_gguf(model, tmp_path / "a.gguf")
    with pytest.raises(FileExistsError, match="a.gguf exists"):
        save_gguf(model, tmp_path / "a.gguf")
    save_gguf(model, tmp_path / "a.gguf", overwrite=True)
    encoder = Transformer(ModelConfig.tiny(causal=False, norm="layernorm", pos_emb="learned", mlp="gelu_erf",
                                           norm_position="post", bias=True, n_kv_heads=4))
    with pytest.raises(ValueError, match="encoder"):
        save_gguf(encoder, tmp_path / "b.gguf")
    with pytest.raises(ValueError, match="'gpt3'"):
        save_gguf(model, tmp_path / "c.gguf", tokenizer=_tok(), pattern_name="gpt3")
    assert not (tmp_path / "b.gguf").exists() and not (tmp_path / "c.gguf").exists()
