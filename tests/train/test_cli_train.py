"""`ember data prepare`, `ember scaling sweep|fit`, and their bad input."""

import json

import pytest

from ember.cli import main


def test_data_prepare_from_a_folder(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        (src / f"doc{i}.txt").write_text(f"Document {i}: the quick brown fox jumps over the lazy dog. " * 30)
    out = tmp_path / "shards"
    code = main(["data", "prepare", "--input", str(src), "--out", str(out), "--vocab-size", "300", "--progress", "false"])
    assert code == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["documents"] == 3 and report["train_tokens"] > report["val_tokens"] > 0
    assert (out / "manifest.json").is_file() and (out / "tokenizer" / "tokenizer.ember.json").is_file()


@pytest.mark.parametrize("content,words", [(b"", "empty"), (b"abc\x00\x01\x02def", "binary"), (b"caf\xe9 au lait", "UTF-8")])
def test_data_prepare_rejects_bad_files_by_name(tmp_path, capsys, content, words):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(content)
    code = main(["data", "prepare", "--input", str(bad), "--out", str(tmp_path / "o"), "--tokenizer",
                 _tokenizer(tmp_path), "--progress", "false"])
    err = capsys.readouterr().err
    assert code == 2 and "bad.txt" in err and words in err, err
    assert not (tmp_path / "o" / "manifest.json").exists()


def _tokenizer(tmp_path) -> str:
    from ember.tokenizer import train_bpe

    tok = train_bpe(["hello world " * 50], 260, special_tokens=["<|endoftext|>"], eos_tokens=["<|endoftext|>"], progress=False)
    return str(tok.save(tmp_path / "tok"))


def test_unknown_arch_lists_the_valid_ones(shards, tmp_path, capsys):
    code = main(["pretrain", "--arch", "huge", "--data.dir", str(shards), "--train.out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "unknown arch 'huge'" in err and "gpt2-mini" in err and "mini-llama" in err


def test_scaling_fit_without_a_sweep_says_what_to_run(tmp_path, capsys):
    assert main(["scaling", "fit", "--out", str(tmp_path)]) == 2
    assert "ember scaling sweep" in capsys.readouterr().err


def test_scaling_sweep_then_fit(shards, tmp_path, capsys):
    out = tmp_path / "scaling"
    sweep = ["scaling", "sweep", "--data", str(shards), "--out", str(out), "--seq_len", "32", "--batch_size", "4",
             "--models", '["1x32", "1x64", "2x64"]', "--tokens", "[2048, 4096]", "--holdout", '["2x96:4096"]']
    assert main(sweep) == 0
    points = (out / "points.jsonl").read_text().splitlines()
    assert len(points) == 6 and len((out / "holdout.jsonl").read_text().splitlines()) == 1
    first = [json.loads(p) for p in points]
    assert {p["n_tokens"] for p in first} == {2048, 4096}
    assert main([*sweep, "--resume", "true"]) == 0  # resumable: every run is already done, nothing retrains
    assert (out / "points.jsonl").read_text().splitlines() == points
    capsys.readouterr()
    assert main(["scaling", "fit", "--out", str(out), "--bootstrap", "4"]) == 0
    report = json.loads((out / "fit.json").read_text())
    held = report["holdout"][0]
    assert held["name"] == "2x96:4096" and held["predicted"] > 0
    assert (out / "scaling.png").read_bytes()[:4] == b"\x89PNG"
    assert "held-out 2x96:4096: predicted" in capsys.readouterr().out


def test_training_commands_keep_mallocs_default_mmap_threshold(monkeypatch, tmp_path):
    """A 1 MiB mmap threshold (good for loading models) made every large activation of a
    training step an mmap + page faults: 4x the page faults, half the tokens/s."""
    import ember.core.memory as memory

    calls = []
    monkeypatch.setattr(memory, "release_freed_memory_eagerly", lambda *a: calls.append(a))
    main(["scaling", "fit", "--out", str(tmp_path)])  # fails fast (no sweep), after dispatch
    assert calls == []
    main(["perplexity", "--model", str(tmp_path / "missing.gguf")])
    assert len(calls) == 1
