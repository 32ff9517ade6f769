"""ember vs transformers on the real SmolLM2-135M-Instruct GGUF (dequantized, fp32).

Both models read the same GGUF and score the same token ids. The ids come from HF
`tokenizers` built as ANCHORS.md describes (digits split one by one, then byte-level BPE),
because transformers' own GGUF tokenizer lacks the digit split.
"""

import math

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("accelerate")
tokenizers = pytest.importorskip("tokenizers")

from ember.core.gguf import gguf_field, open_gguf  # noqa: E402
from ember.core.registry import ModelNotFoundError, resolve_model  # noqa: E402
from ember.model import load_model  # noqa: E402

CTX = 512
CHAT = (
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    "<|im_start|>user\nWhat is the capital of France, and what is it famous for? Answer in two "
    "sentences.<|im_end|>\n<|im_start|>assistant\nThe capital of France is Paris. It is famous for "
    "the Eiffel Tower, the Louvre museum, its cafés and its long history of art and fashion.<|im_end|>\n"
)


@pytest.fixture(scope="module")
def path():
    try:  # the package is installed --no-deps: find its file, do not import it
        return resolve_model("smollm2")
    except ModelNotFoundError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def tok(path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    reader = open_gguf(path)
    vocab = gguf_field(reader, "tokenizer.ggml.tokens")
    merges = [tuple(m.split(" ")) for m in gguf_field(reader, "tokenizer.ggml.merges")]
    kinds = gguf_field(reader, "tokenizer.ggml.token_type")
    t = Tokenizer(models.BPE(vocab={s: i for i, s in enumerate(vocab)}, merges=merges))
    t.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
    )
    t.decoder = decoders.ByteLevel()
    t.add_special_tokens([s for s, k in zip(vocab, kinds) if k == 3])  # control tokens: <|im_start|> ...
    return t


@pytest.fixture(scope="module")
def ember_fp32(path):
    return load_model(path)


@pytest.fixture(scope="module")
def hf_fp32(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def topic_ids(tok):
    import pydoc_data.topics

    topics = pydoc_data.topics.topics
    text = "\n\n".join(topics[k] for k in sorted(topics))[:20000]
    return tok.encode(text).ids


@torch.no_grad()
def _window_stats(logits_fn, ids, n_windows=None):
    """Non-overlapping CTX-token windows, no BOS: (summed NLL, predicted tokens, top-1 ids)."""
    nll, n, top1 = 0.0, 0, []
    starts = list(range(0, len(ids), CTX))[:n_windows]
    for s in starts:
        x = torch.tensor(ids[s : s + CTX])[None]
        logp = torch.log_softmax(logits_fn(x).float(), -1)[0, :-1]  # (T-1, V)
        nll -= logp.gather(-1, x[0, 1:, None]).sum().item()
        n += x.shape[1] - 1
        top1.append(logp.argmax(-1))
    return nll, n, torch.cat(top1)


@pytest.fixture(scope="module")
def first_windows_fp32(ember_fp32, topic_ids):
    return _window_stats(ember_fp32, topic_ids, n_windows=3)


@torch.no_grad()
def test_chat_logprobs_match_transformers(tok, ember_fp32, hf_fp32):
    ids = tok.encode(CHAT).ids
    assert len(ids) >= 64 and ids[0] == 1  # <|im_start|> recognised as one special token
    x = torch.tensor(ids[:64])[None]
    ours = torch.log_softmax(ember_fp32(x), -1)
    ref = torch.log_softmax(hf_fp32(x).logits, -1)
    diff = (ours - ref).abs().max().item()
    print(f"max |Δ log-prob| over 64 tokens × 49,152 ids: {diff:.2e}")
    assert diff <= 1e-3
    assert torch.equal(ours.argmax(-1), ref.argmax(-1))


def test_perplexity_first_windows_match_transformers(hf_fp32, topic_ids, first_windows_fp32):
    nll, n, _ = first_windows_fp32
    ref_nll, ref_n, _ = _window_stats(lambda x: hf_fp32(x).logits, topic_ids, n_windows=3)
    assert n == ref_n == 3 * (CTX - 1)
    ours, ref = math.exp(nll / n), math.exp(ref_nll / ref_n)
    print(f"perplexity, first 3 windows: ember {ours:.4f}, transformers {ref:.4f}")
    assert abs(ours / ref - 1) <= 1e-3


@pytest.mark.slow
def test_perplexity_pydoc_topics(ember_fp32, hf_fp32, topic_ids):
    """The ANCHORS figure: first 20,000 chars of the sorted pydoc topics, ctx 512, no BOS."""
    nll, n, _ = _window_stats(ember_fp32, topic_ids)
    ref_nll, ref_n, _ = _window_stats(lambda x: hf_fp32(x).logits, topic_ids)
    ours, ref = math.exp(nll / n), math.exp(ref_nll / ref_n)
    print(f"perplexity: ember {ours:.4f}, transformers {ref:.4f} (ANCHORS: 15.389)")
    assert abs(ours / ref - 1) <= 1e-3
    assert abs(ours - 15.389) < 0.05


def test_bf16_top1_agrees_with_fp32(path, topic_ids, first_windows_fp32):
    model = load_model(path, dtype=torch.bfloat16)
    assert next(model.parameters()).dtype == torch.bfloat16
    _, _, top1_bf16 = _window_stats(model, topic_ids, n_windows=3)
    agree = (top1_bf16 == first_windows_fp32[2]).float().mean().item()
    print(f"bf16 top-1 agreement with fp32: {agree:.2%}")
    assert agree >= 0.97
