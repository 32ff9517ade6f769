"""GGUF export: ember → GGUF → ember (and transformers) gives the same logits."""

from __future__ import annotations

import os

import pytest
import torch

from ember.core.gguf import open_gguf
from ember.model.config import ModelConfig
from ember.model.convert.to_gguf import save_gguf
from ember.model.load import load_model
from ember.model.transformer import Transformer
from ember.tokenizer import Tokenizer, load_tokenizer

TEXT_DIGITS = "Hello 123 world,  x=[1, 22]\n\tüñí"
# Max |logit difference| vs the original, measured on these tiny models (seed 0, llama/gpt2):
# f32 1.2e-7/0 (llama: interleaved RoPE rounds differently), f16 2.0e-4/2.0e-4,
# q8_0 5.8e-3/5.3e-3, q4_0 3.4e-2/6.2e-2, q4_1 4.4e-2/4.9e-2 (logits up to ~0.6); asserted
# with ~2.5x headroom.
TOLERANCE = {"f32": 1e-6, "f16": 5e-4, "q8_0": 1.5e-2, "q4_0": 0.15, "q4_1": 0.15}


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
@pytest.mark.parametrize("dtype", ["f32", "f16", "q8_0", "q4_0", "q4_1"])
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
    padded = save_gguf(Transformer(ModelConfig.tiny(vocab_size=300)), tmp_path / "p.gguf", "f32", tok, "gpt2")
    fields = open_gguf(padded).fields
    assert len(fields["tokenizer.ggml.tokens"]) == 300 and fields["tokenizer.ggml.token_type"][299] == 5
    assert load_tokenizer(padded).encode(text) == tok.encode(text)
    with pytest.raises(ValueError, match="258 ids, more than the model's 200"):
        save_gguf(Transformer(ModelConfig.tiny(vocab_size=200)), tmp_path / "s.gguf", "f32", tok, "gpt2")


def test_smollm2_first_layers_reexport_is_exact(tmp_path, smollm2_tokenizer):
    """SmolLM2's real weights (Q4_1, dequantized), cut to 2 blocks to stay fast: f32 (and
    q4_1) out and back in gives bit-identical logits."""
    import dataclasses

    from ember.core.registry import resolve_model
    from ember.model.convert.gguf import config_from_gguf, dequantize, gguf_raw_tensors
    from ember.model.load import build_model

    reader = open_gguf(resolve_model("smollm2"))
    cfg = dataclasses.replace(config_from_gguf(reader), n_layers=2)
    raw = gguf_raw_tensors(reader, "llama")
    keep = [k for k in raw if not k.startswith("layers.") or int(k.split(".")[1]) < 2]
    model = build_model(cfg, {k: dequantize(raw[k]) for k in keep})
    path = save_gguf(model, tmp_path / "smollm2-2.gguf", "f32", smollm2_tokenizer, "smollm")
    ids = torch.tensor([smollm2_tokenizer.encode("The capital of France is")])
    assert torch.equal(_logits(load_model(path), ids), _logits(model, ids))
    assert load_tokenizer(path).encode(TEXT_DIGITS) == smollm2_tokenizer.encode(TEXT_DIGITS)
    # Q4_1 blocks (and the Q8_0 embedding) requantize to themselves: q4_1 is lossless here
    path = save_gguf(model, tmp_path / "smollm2-2-q4_1.gguf", "q4_1", smollm2_tokenizer, "smollm")
    assert torch.equal(_logits(load_model(path), ids), _logits(model, ids))


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
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path, gguf_file="m.gguf")
    assert hf_tok("hello lol ünï", add_special_tokens=False)["input_ids"] == _tok().encode("hello lol ünï")


def test_bad_inputs(tmp_path):
    model = Transformer(_llama())
    with pytest.raises(ValueError, match="'q5_k'"):
        save_gguf(model, tmp_path / "a.gguf", "q5_k")
    save_gguf(model, tmp_path / "a.gguf")
    with pytest.raises(FileExistsError, match="a.gguf exists"):
        save_gguf(model, tmp_path / "a.gguf")
    save_gguf(model, tmp_path / "a.gguf", overwrite=True)
    fifo = tmp_path / "fifo.gguf"  # a device or pipe is never renamed over, even with overwrite
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="not a regular file"):
        save_gguf(model, fifo, overwrite=True)
    with pytest.raises(ValueError, match="not a regular file"):
        save_gguf(model, tmp_path, overwrite=True)
    encoder = Transformer(ModelConfig.tiny(causal=False, norm="layernorm", pos_emb="learned", mlp="gelu_erf",
                                           norm_position="post", bias=True, n_kv_heads=4))
    with pytest.raises(ValueError, match="encoder"):
        save_gguf(encoder, tmp_path / "b.gguf")
    with pytest.raises(ValueError, match="'gpt3'"):
        save_gguf(model, tmp_path / "c.gguf", tokenizer=_tok(), pattern_name="gpt3")
    assert not (tmp_path / "b.gguf").exists() and not (tmp_path / "c.gguf").exists()


def _hf_folder(tmp_path, cfg, tok=None):
    from ember.model.convert.hf import save_hf

    torch.manual_seed(0)
    model = Transformer(cfg).eval()
    folder = save_hf(model, tmp_path / "hf")
    (tok or _tok()).save(folder)
    return model, folder


def test_cli_export_gguf_from_a_folder(tmp_path):
    from ember.cli import main

    tok = Tokenizer(merges=[(108, 111, 256)], pattern="gpt4", special_tokens={"<|endoftext|>": 257},
                    eos_tokens=["<|endoftext|>"])  # an ember-trained tokenizer's pattern: llama-bpe
    model, folder = _hf_folder(tmp_path, _llama(), tok)
    out = tmp_path / "m.gguf"
    assert main(["export", "--format", "gguf", "--run", str(folder), "--out", str(out), "--dtype", "q8_0"]) == 0
    ids = torch.randint(0, 258, (1, 9))
    assert (_logits(load_model(out), ids) - _logits(model, ids)).abs().max().item() <= TOLERANCE["q8_0"]
    assert open_gguf(out).fields["tokenizer.ggml.pre"] == "llama-bpe"
    text = "x = [1, 22, 333]\n\n\tlol's"
    assert load_tokenizer(out).encode(text) == tok.encode(text)
    args = ["export", "--format", "gguf", "--run", str(folder), "--out", str(out)]
    assert main(args) == 2  # exists
    assert main([*args, "--overwrite", "true"]) == 0


def test_cli_export_merges_a_lora_adapter(tmp_path):
    from ember.cli import main
    from ember.peft import LoraConfig, apply_lora, merge_lora, save_adapter

    model, folder = _hf_folder(tmp_path, _gpt2())
    lora = apply_lora(model, LoraConfig(rank=2, targets=["wq", "wv", "w1"]))
    with torch.no_grad():
        for n, p in lora.named_parameters():
            if "lora" in n:
                p.normal_(0, 0.2)
    save_adapter(lora, tmp_path / "adapter")
    merged = merge_lora(lora).eval()
    out = tmp_path / "ft.gguf"
    argv = ["export", "--format", "gguf", "--run", str(folder), "--adapter", str(tmp_path / "adapter"), "--out", str(out)]
    assert main(argv) == 0
    ids = torch.randint(0, 258, (1, 9))
    base = load_model(folder)
    assert (_logits(load_model(out), ids) - _logits(merged, ids)).abs().max().item() < 1e-5
    assert (_logits(merged, ids) - _logits(base, ids)).abs().max().item() > 1e-3  # the adapter mattered


def test_cli_bad_inputs(tmp_path, capsys):
    from ember.cli import main

    assert main(["export", "--format", "gguf", "--dtype", "q5_k"]) == 2
    assert "'q5_k'" in capsys.readouterr().err
    assert main(["export", "--format", "onnx"]) == 2
    assert "'onnx'" in capsys.readouterr().err
    encoder = ModelConfig.tiny(vocab_size=258, causal=False, norm="layernorm", pos_emb="learned", mlp="gelu_erf",
                               norm_position="post", bias=True, n_kv_heads=4, n_token_types=2, embed_norm=True,
                               tie_embeddings=True)
    _, folder = _hf_folder(tmp_path, encoder)
    assert main(["export", "--format", "gguf", "--run", str(folder), "--out", str(tmp_path / "e.gguf")]) == 2
    assert "encoder" in capsys.readouterr().err and not (tmp_path / "e.gguf").exists()
