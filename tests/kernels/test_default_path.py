"""The fast default path (quant auto) on SmolLM2 against the exact fp32 path, and what auto picks."""

import math

import pytest
import torch
import torch.nn.functional as F
from kernel_helpers import need_kernels, smollm2_path

import ember
from ember.kernels.auto import resolve_quant
from ember.kernels.decode import NativeTransformer
from ember.model.kv_cache import KVCache


@pytest.fixture(scope="module")
def models():
    smollm2_path()
    need_kernels()
    exact, tok = ember.load("smollm2")
    fast, _ = ember.load("smollm2", quant="auto")
    return exact, fast, tok


def test_auto_picks_native_for_a_q4_gguf_and_exact_otherwise(tmp_path):
    need_kernels()
    assert resolve_quant(smollm2_path(), "auto") == "native"
    from ember.model import ModelConfig, Transformer
    from ember.model.convert.hf import save_hf

    save_hf(Transformer(ModelConfig.tiny()), tmp_path)
    assert resolve_quant(tmp_path, "auto") is None  # a float model stays exact
    assert resolve_quant(tmp_path, None) is None
    with pytest.raises(ValueError, match="quant 'int3' is not one of"):
        resolve_quant(tmp_path, "int3")


def test_default_path_agrees_with_exact(models):
    """Teacher-forced over 160 tokens of pydoc text: the native decode step's next-token
    choice equals the exact fp32 path's on ≥ 95 % of positions, and its mean NLL is within
    0.05 nats (bench/native_faithfulness.py measures the whole 20,000-character text)."""
    from ember.data.corpus import pydoc_topics_text

    exact, fast, tok = models
    assert isinstance(fast, NativeTransformer)
    ids = torch.tensor(tok.encode(pydoc_topics_text()[:2000])[:161])
    with torch.inference_mode():
        ref = exact(ids[None])[0, :-1]
        cache = KVCache.for_model(fast, 1, len(ids))
        steps = torch.stack([fast(ids[t].view(1, 1), cache, torch.tensor([[t]]))[0, 0] for t in range(len(ids) - 1)])
        prefill = fast(ids[None])[0, :-1]
    target = ids[1:]
    nll_ref = F.cross_entropy(ref, target).item()
    for logits in (steps, prefill):
        agree = (logits.argmax(-1) == ref.argmax(-1)).float().mean().item()
        assert agree >= 0.95, agree
        assert abs(F.cross_entropy(logits, target).item() - nll_ref) < 0.05
    assert math.isfinite(nll_ref)
