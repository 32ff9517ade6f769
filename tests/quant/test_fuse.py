"""apply_fused_projections: same outputs as the unfused model, float, int8 and int4."""

import copy
from dataclasses import replace

import pytest
import torch
import torch.nn as nn

from ember.quant import Int4Linear, Int8Linear, QuantConfig, apply_quant, apply_quant_from_gguf
from ember.quant.fuse import apply_fused_projections, fuse_linears


def tiny_model():
    from ember.model import ModelConfig, Transformer

    torch.manual_seed(0)
    return Transformer(replace(ModelConfig.tiny(), d_ff=192)).eval()


def decode_logits(model, ids):
    """Prefill 5 tokens, then 3 cached decode steps: the last-token logits of each call."""
    from ember.model import KVCache

    cache = KVCache.for_model(model, 1, 16, dtype=torch.float32)
    out = [model(ids[:, :5], cache, torch.arange(5)[None])[:, -1]]
    for t in range(5, 8):
        out.append(model(ids[:, t : t + 1], cache, torch.tensor([[t]]))[:, -1])
    return torch.stack(out)


def test_float_fusion_is_exact():
    ref = tiny_model()
    fused = apply_fused_projections(copy.deepcopy(ref))
    att, ffn = fused.layers[0].attention, fused.layers[1].feed_forward
    assert isinstance(att.wqkv, nn.Linear) and not hasattr(att, "wq")
    assert isinstance(ffn.w13, nn.Linear) and not hasattr(ffn, "w1")
    ids = torch.randint(0, 256, (2, 8))
    with torch.no_grad():
        torch.testing.assert_close(fused(ids), ref(ids), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(decode_logits(fused, ids[:1]), decode_logits(ref, ids[:1]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["int4", "int8"])
def test_fused_quantized_equals_unfused_quantized(mode):
    q = apply_quant(tiny_model(), QuantConfig(mode=mode, head_mode=None))
    fused = apply_fused_projections(copy.deepcopy(q))
    kind = Int4Linear if mode == "int4" else Int8Linear
    assert isinstance(fused.layers[0].attention.wqkv, kind)
    assert isinstance(fused.layers[0].feed_forward.w13, kind)
    ids = torch.randint(0, 256, (1, 8))
    with torch.no_grad():
        # Stacking rows keeps every row's codes and scales: the products are the same numbers.
        torch.testing.assert_close(decode_logits(fused, ids), decode_logits(q, ids), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("rows", [(64, 32), (64, 32, 32), (48, 16), (576, 192, 192), (1536, 1536)])
def test_fused_int4_equals_int4_of_stacked_rows(rows):
    torch.manual_seed(1)
    ws = [torch.randn(n, 128) for n in rows]
    fused = fuse_linears([Int4Linear.from_float(w) for w in ws])
    whole = Int4Linear.from_float(torch.cat(ws))
    assert torch.equal(fused.weight_packed, whole.weight_packed)
    assert torch.equal(fused.scales_and_zeros, whole.scales_and_zeros)


def test_fused_from_q4_1_blocks_keeps_codes_exactly():
    from gguf import GGMLQuantizationType as GT
    from gguf.quants import dequantize, quantize

    model = tiny_model()
    raw = {}
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear) and name.startswith("layers."):
            W = mod.weight.detach().numpy()
            blocks = quantize(W, GT.Q4_1)
            raw[f"{name}.weight"] = (GT.Q4_1, blocks, tuple(W.shape))
            with torch.no_grad():
                mod.weight.copy_(torch.from_numpy(dequantize(blocks, GT.Q4_1).reshape(W.shape)))
    att = model.layers[0].attention
    ref = torch.cat([att.wq.weight, att.wk.weight, att.wv.weight]).detach().clone()
    cfg = QuantConfig(mode="int4", compute_dtype=torch.float32)
    apply_fused_projections(apply_quant_from_gguf(model, raw, cfg))
    att = model.layers[0].attention  # the transform replaced the module
    assert isinstance(att.wqkv, Int4Linear)
    torch.testing.assert_close(att.wqkv.dequantize(), ref, rtol=1e-6, atol=1e-7)


def test_bad_fusions():
    with pytest.raises(ValueError, match="different kinds"):
        fuse_linears([nn.Linear(64, 32), Int8Linear.from_float(nn.Linear(64, 32))])
    with pytest.raises(ValueError, match="input widths"):
        fuse_linears([nn.Linear(64, 32), nn.Linear(32, 32)])
