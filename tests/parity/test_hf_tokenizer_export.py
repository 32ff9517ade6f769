"""An ember BPE written as tokenizer.json loads in `transformers` and `tokenizers` with the
same ids, and back into ember unchanged."""

import pytest

from ember.data.corpus import MULTILINGUAL_SAMPLE, pydoc_topics_text
from ember.tokenizer import Tokenizer, from_tokenizer_json, train_bpe
from ember.tokenizer.hf_export import save_hf_tokenizer

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TEXTS = [
    "Hello world! The assert statement, 3.14159 and 1234567 apples.",
    "  leading spaces,\ttabs\t\tand   runs     of spaces\n\n\nnewlines  \r\n",
    "def f(x: int) -> int:\n    return x**2  # it's they'LL we'VE\n",
    MULTILINGUAL_SAMPLE,
    "<|im_start|>user\nhi there<|im_end|>\n<|im_start|>assistant\n42<|im_end|><|endoftext|>",
    "ünïcödé ½ ¾ — emoji 🤖 at the end 🇫🇷",
]


@pytest.fixture(scope="module", params=["gpt4", "gpt2", "smollm"])
def exported(request, tmp_path_factory):
    tok = train_bpe([pydoc_topics_text()[:60_000], MULTILINGUAL_SAMPLE], 600, pattern=request.param,
                    special_tokens=SPECIALS, eos_tokens=["<|endoftext|>"], progress=False)
    folder = tmp_path_factory.mktemp(f"hf-tok-{request.param}")
    save_hf_tokenizer(tok, folder)
    return tok, folder


def test_transformers_loads_it_with_embers_ids(exported):
    transformers = pytest.importorskip("transformers")
    tok, folder = exported
    hf = transformers.AutoTokenizer.from_pretrained(folder)
    assert hf.eos_token == "<|endoftext|>" and hf.eos_token_id == tok.special_tokens["<|endoftext|>"]
    for text in TEXTS:
        ids = tok.encode(text, allowed_special="all")
        assert hf(text, add_special_tokens=False)["input_ids"] == ids, text
        assert hf.encode(text) == ids  # no BOS: this tokenizer's add_bos is off
        assert hf.decode(ids) == text


def test_tokenizers_loads_it_and_ember_reads_it_back(exported):
    tokenizers = pytest.importorskip("tokenizers")
    tok, folder = exported
    hf = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
    for text in TEXTS:
        assert hf.encode(text, add_special_tokens=False).ids == tok.encode(text, allowed_special="all")
    back = from_tokenizer_json(folder / "tokenizer.json")
    assert (back.merges, back.pattern, back.special_tokens) == (tok.merges, tok.pattern, tok.special_tokens)
    assert back.eos_tokens[0] == "<|endoftext|>"  # the loader also stops on the other known end tokens
    assert all(back.encode(t, allowed_special="all") == tok.encode(t, allowed_special="all") for t in TEXTS)


def test_bos_is_prepended_when_ember_adds_it(tmp_path):
    transformers = pytest.importorskip("transformers")
    tok = Tokenizer(merges=[(108, 111, 256)], special_tokens={"<s>": 257, "</s>": 258}, bos_token="<s>",
                    eos_tokens=["</s>"], add_bos=True)
    save_hf_tokenizer(tok, tmp_path)
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert hf.encode("lol") == [257, 256, 108]
    assert hf("lol", add_special_tokens=False)["input_ids"] == [256, 108]
