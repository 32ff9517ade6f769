"""`ember generate / chat / perplexity` end to end on a tiny model saved as an HF folder."""

import json

import pytest

from ember.cli import main


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent / "infer"))
    from infer_helpers import make_model, make_tokenizer

    from ember.model.convert.hf import save_hf

    folder = tmp_path_factory.mktemp("tiny")
    save_hf(make_model(0), folder)
    make_tokenizer().save(folder)
    return str(folder)


def test_generate_json_line(tiny_dir, capsys):
    args = ["generate", "--model", tiny_dir, "--prompt", "hello", "--max-tokens", "6", "--ignore-eos", "--json"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(out) >= {"text", "ids", "prompt_tokens", "ttft_ms", "decode_tok_s"}
    assert len(out["ids"]) == 6 and out["prompt_tokens"] == 5 and out["finish_reason"] == "length"
    # greedy is deterministic: a second run gives the same ids
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["ids"] == out["ids"]


def test_generate_chat_and_prompt_file(tiny_dir, tmp_path, capsys):
    f = tmp_path / "p.txt"
    f.write_text("what is 2+2?")
    assert main(["generate", "--model", tiny_dir, "--prompt-file", str(f), "--chat", "--max-tokens", "4", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["prompt_tokens"] > len("what is 2+2?")  # the chat template wrapped it


def test_generate_errors_are_one_line(tiny_dir, capsys):
    assert main(["generate", "--model", tiny_dir, "--prompt", "x" * 300, "--max-tokens", "4"]) == 2
    err = capsys.readouterr().err
    assert "300" in err and "256" in err and "Traceback" not in err
    assert main(["generate", "--model", tiny_dir, "--prompt", "hi", "--temperature", "-1"]) == 2
    assert "temperature" in capsys.readouterr().err
    assert main(["generate", "--model", tiny_dir]) == 2
    assert "--prompt" in capsys.readouterr().err


def test_chat_demo_answers_one_question(tiny_dir, capsys):
    assert main(["chat", "--model", tiny_dir, "--demo", "--max-tokens", "5"]) == 0
    out = capsys.readouterr().out
    assert "> In two sentences" in out and "tok/s" in out


def test_perplexity_prints_json(tiny_dir, tmp_path, capsys):
    f = tmp_path / "t.txt"
    f.write_text("the quick brown fox jumps over the lazy dog " * 20)
    assert main(["perplexity", "--model", tiny_dir, "--file", str(f), "--ctx", "64"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["tokens"] > 0 and 1.0 < out["perplexity"] < 1e4
