"""`ember embed` on the real all-MiniLM-L6-v2 (skipped when its package is missing)."""

import json

import pytest

from ember.cli import main
from ember.core.registry import ModelNotFoundError, resolve_model


@pytest.fixture(scope="module", autouse=True)
def minilm():
    try:
        resolve_model("minilm")
    except ModelNotFoundError as e:
        pytest.skip(str(e))


def test_json_for_bare_words_and_for_a_file(tmp_path, capsys):
    assert main(["embed", "The cat sat on the mat.", "", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model"] == "minilm" and out["dim"] == 384 and len(out["embeddings"]) == 2
    assert out["embeddings"][0][:2] == pytest.approx([0.1302372, -0.0157728], abs=1e-5)
    assert out["n_tokens"] == [9, 2]
    f = tmp_path / "s.txt"
    f.write_text("The cat sat on the mat.\n\n" + "word " * 300 + "\n")
    assert main(["embed", "--file", str(f), "--json"]) == 0
    captured = capsys.readouterr()
    lines = json.loads(captured.out)
    assert lines["embeddings"][0] == pytest.approx(out["embeddings"][0], abs=1e-6)
    assert lines["n_truncated"] == [0, 0, 302 - 256]
    assert "1 of 3 texts were cut to 256 tokens" in captured.err


def test_bfloat16_stays_close_to_float32(capsys):
    texts = ["The cat sat on the mat.", "Stock markets fell sharply today."]
    vectors = []
    for dtype in ("float32", "bfloat16"):
        assert main(["embed", *texts, "--dtype", dtype, "--json"]) == 0
        vectors.append(json.loads(capsys.readouterr().out)["embeddings"])
    for a, b in zip(*vectors):
        assert sum(x * y for x, y in zip(a, b)) >= 0.9999


def test_plain_output_and_bad_models(tmp_path, capsys):
    assert main(["embed", "a cat", "a dog"]) == 0
    out = capsys.readouterr().out
    assert "384 values" in out and "cosine similarity" in out
    assert main(["embed", "--model", str(tmp_path), "hi"]) == 2
    assert "lacks config.json" in capsys.readouterr().err
    assert main(["embed"]) == 2
    assert "give texts or --file" in capsys.readouterr().err
