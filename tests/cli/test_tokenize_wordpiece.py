import json

from ember.cli.tokenizer import TokenizeConfig, tokenize


def test_tokenize_shows_wordpiece_pieces(tmp_path, capsys):
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "un", "##aff", "##able", "!"]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    out = json.loads(tokenize(TokenizeConfig(text="Unaffable!", model=str(tmp_path), format="json")))
    assert out["pieces"] == ["[CLS]", "un", "##aff", "##able", "!", "[SEP]"]
    assert out["ids"] == [2, 5, 6, 7, 8, 3]
