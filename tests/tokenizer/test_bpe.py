import pytest

from ember.tokenizer import train_bpe
from ember.tokenizer.bpe import count_chunks
from ember.tokenizer.patterns import GPT2_PATTERN, GPT4_PATTERN, SMOLLM_PATTERN, safe_split_points


def merged(tok):
    return [tok.vocab[c].decode() for _, _, c in tok.merges]


def test_seed_worked_example_low_lower_lowest_lowly():
    # "LLM Fundamentals": BPE on whitespace-split words. Ties go to the smallest merged bytes.
    tok = train_bpe(["low lower lowest lowly"], vocab_size=256 + 8, pattern=r"\S+|\s+")
    assert merged(tok) == ["lo", "low", "lowe", "lower", "lowes", "lowest", "lowl", "lowly"]
    assert tok.encode("lowest lowly") == [tok.merges[5][2], ord(" "), tok.merges[7][2]]


def test_tie_break_is_independent_of_corpus_order():
    a = train_bpe(["ab cd"], 256 + 2, pattern=r"\S+")
    b = train_bpe(["cd ab"], 256 + 2, pattern=r"\S+")
    assert merged(a) == merged(b) == ["ab", "cd"]


def test_frequent_pair_wins_and_counts_update_incrementally():
    # "aaab" x3: pairs aa(2/word) ab(1/word). After merging "aa": "aa a b" -> pairs (aa,a),(a,b).
    tok = train_bpe(["aaab aaab aaab"], 256 + 3, pattern=r"\S+")
    assert merged(tok) == ["aa", "aaa", "aaab"]


def test_incremental_equals_naive_recount():
    text = "the cat sat on the mat; the hat that sat. " * 5 + "thermometer theatre thesis"
    with pytest.warns(UserWarning, match="supports only"):
        tok = train_bpe([text], 256 + 40, pattern="gpt2")
    # Naive reference: recount all pairs from scratch at every step, same tie-break.
    words = {}
    for w, c in count_chunks([text], "gpt2").items():
        words[tuple(w.encode())] = c
    vocab = {i: bytes([i]) for i in range(256)}
    ref = []
    for k in range(40):
        stats = {}
        for w, c in words.items():
            for p in zip(w, w[1:]):
                stats[p] = stats.get(p, 0) + c
        if not stats:
            break
        best = min(stats, key=lambda p: (-stats[p], vocab[p[0]] + vocab[p[1]], len(vocab[p[0]])))
        new = 256 + k
        vocab[new] = vocab[best[0]] + vocab[best[1]]
        ref.append(vocab[new])
        nw = {}
        for w, c in words.items():
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == best:
                    out.append(new)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            nw[tuple(out)] = nw.get(tuple(out), 0) + c
        words = nw
    assert [tok.vocab[c] for _, _, c in tok.merges] == ref


def test_special_tokens_registered_apart_and_never_merged():
    text = "hello<|endoftext|>hello<|endoftext|>" * 20
    tok = train_bpe([text], 256 + 4 + 1, pattern="gpt2", special_tokens=["<|endoftext|>"])
    assert tok.special_tokens == {"<|endoftext|>": 256 + len(tok.merges)}
    assert not any(b"<|" in tok.vocab[c] for _, _, c in tok.merges)
    ids = tok.encode("hello<|endoftext|>", allowed_special="all")
    assert ids[-1] == tok.special_tokens["<|endoftext|>"]


@pytest.mark.parametrize("bad", [0, 255, 256])
def test_vocab_smaller_than_bytes_plus_specials_is_an_error(bad):
    with pytest.raises(ValueError, match="smaller than 256"):
        train_bpe(["some text"], bad, special_tokens=["<|endoftext|>"])


def test_empty_corpus_is_an_error():
    with pytest.raises(ValueError, match="empty"):
        train_bpe(["", "  \n"], 300)


def test_small_corpus_warns_and_stops():
    with pytest.warns(UserWarning, match="supports only"):
        tok = train_bpe(["ab"], 400, pattern="gpt2")
    assert merged(tok) == ["ab"]


@pytest.mark.parametrize("pattern", [GPT2_PATTERN, GPT4_PATTERN, SMOLLM_PATTERN])
def test_parallel_counting_equals_serial(pattern):
    from ember.data.corpus import MULTILINGUAL_SAMPLE, pydoc_topics_text

    text = pydoc_topics_text()[:300_000] + MULTILINGUAL_SAMPLE
    cuts = safe_split_points(text, 7)
    assert cuts[0] == 0 and cuts[-1] == len(text) and len(cuts) > 3
    serial = count_chunks([text], pattern, n_procs=1)
    pieces = sum((count_chunks([text[i:j]], pattern, n_procs=1) for i, j in zip(cuts, cuts[1:])), start=type(serial)())
    assert pieces == serial


def test_training_is_deterministic():
    from ember.data.corpus import pydoc_topics_text

    text = pydoc_topics_text()[:100_000]
    a = train_bpe([text], 600, pattern="gpt4")
    b = train_bpe([text], 600, pattern="gpt4")
    assert a.merges == b.merges
