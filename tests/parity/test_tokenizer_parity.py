"""SmolLM2's tokenizer from the GGUF vs Hugging Face `tokenizers` on the same vocabulary.

The reference is built as ../shared/ANCHORS.md prescribes: BPE from the GGUF vocab and
merges with Sequence([Digits(individual_digits=True), ByteLevel(use_regex=True)]), which
is what the GGUF pre-tokenizer name "smollm" means (transformers' own GGUF loader omits the
digit split and is wrong on code).
"""

import pytest

tokenizers = pytest.importorskip("tokenizers")


@pytest.fixture(scope="module")
def hf_smollm2():
    from ember.core.gguf import gguf_field, open_gguf
    from ember.core.registry import resolve_model

    r = open_gguf(resolve_model("smollm2"))
    tokens = gguf_field(r, "tokenizer.ggml.tokens")
    merges = [tuple(m.split(" ")) for m in gguf_field(r, "tokenizer.ggml.merges")]
    hf = tokenizers.Tokenizer(tokenizers.models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    pre = tokenizers.pre_tokenizers
    hf.pre_tokenizer = pre.Sequence([pre.Digits(individual_digits=True),
                                     pre.ByteLevel(add_prefix_space=False, use_regex=True)])
    hf.decoder = tokenizers.decoders.ByteLevel()
    return hf


@pytest.fixture(scope="module")
def corpus_docs():
    from ember.data.corpus import MULTILINGUAL_SAMPLE, bundled_corpus

    text = bundled_corpus(5_200_000)
    docs = text.split("\n\n")
    # Weave the hard scripts through the corpus, CRLF included, so they meet code and prose.
    docs = [d + ("\r\n" + MULTILINGUAL_SAMPLE if k % 50 == 0 else "") for k, d in enumerate(docs)]
    assert sum(len(d.encode()) for d in docs) >= 5_000_000
    return docs


def test_ids_identical_to_hf_tokenizers_on_5mb(smollm2_tokenizer, hf_smollm2, corpus_docs):
    ours = smollm2_tokenizer.encode_batch(corpus_docs)
    ref = [e.ids for e in hf_smollm2.encode_batch(corpus_docs, add_special_tokens=False)]
    bad = [k for k, (a, b) in enumerate(zip(ours, ref)) if a != b]
    assert not bad, f"{len(bad)} of {len(corpus_docs)} documents differ, first: {corpus_docs[bad[0]][:200]!r}"
    assert sum(map(len, ours)) > 1_000_000


def test_pure_reference_equals_fast_path_on_5mb(smollm2_tokenizer, corpus_docs):
    tok = smollm2_tokenizer
    fast = tok.encode_batch(corpus_docs)
    assert [tok.encode_pure(d) for d in corpus_docs] == fast


def test_hard_cases_vs_hf(smollm2_tokenizer, hf_smollm2):
    from ember.data.corpus import MULTILINGUAL_SAMPLE

    cases = MULTILINGUAL_SAMPLE.split("\n") + [
        "", " ", "   leading", "trailing   ", "\n\n\n", "\r\n", "x = [1,22,333,4444]", "ab\x04cd(\x06)",
        "<|im_start|>user\nhi<|im_end|>", "\u200d\u200c", "🏳️‍🌈" * 3, "Ⅻ ½ ① ⁴", "'S 'LL 'Re",
    ]
    for s in cases:
        assert smollm2_tokenizer.encode(s) == hf_smollm2.encode(s, add_special_tokens=False).ids, repr(s)
        assert smollm2_tokenizer.encode_pure(s) == hf_smollm2.encode(s, add_special_tokens=False).ids, repr(s)


def test_decode_matches_hf(smollm2_tokenizer, hf_smollm2, corpus_docs):
    for d in corpus_docs[:300]:
        ids = smollm2_tokenizer.encode(d)
        assert smollm2_tokenizer.decode(ids) == hf_smollm2.decode(ids, skip_special_tokens=False)
