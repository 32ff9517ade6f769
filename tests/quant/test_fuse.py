"""apply_fused_projections: same outputs as the unfused model, with and without a cache."""

import copy
from dataclasses import replace

import torch

from ember.quant import QuantConfig, apply_quant
from ember.quant.fuse import FusedLinear, apply_fused_projections


def tiny_model():
    from ember.model import ModelConfig, Transformer

    torch.manual_seed(0)
    return Transformer(replace(ModelConfig.tiny(), d_ff=192)).eval()


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def test_float_fusion_is_exact():
    ref = tiny_model()
    fused = apply_fused_projections(copy.deepcopy(ref))
    assert isinstance(fused.layers[0].attention.fused_wqwkwv, FusedLinear)
    assert isinstance(fused.layers[1].feed_forward.fused_w1w3, FusedLinear)
    ids = torch.randint(0, 256, (2, 6))
    with torch.no_grad():
        torch.testing.assert_close(fused(ids), ref(ids), rtol=1e-5, atol=1e-5)


def test_fused_int4_matches_unfused_int4_under_cached_decode():
    from ember.model import KVCache

    ref = tiny_model()
    a = apply_quant(copy.deepcopy(ref), QuantConfig(mode="int4"))
    b = apply_quant(
        apply_fused_projections(copy.deepcopy(ref), QuantConfig(mode="int4")),
        QuantConfig(mode="int4"),
    )
    ids = torch.randint(0, 256, (1, 5))
    with torch.no_grad():
        for m in (a, b):
            cache = KVCache.for_model(m, 1, 16, dtype=torch.float32)
            m.out = [m(ids, cache, torch.arange(5)[None])[:, -1]]
            for t in range(5, 8):
                m.out.append(m(ids[:, t - 5 : t - 4], cache, torch.tensor([[t]]))[:, -1])
    # group-wise quantization of stacked rows is the same per row: identical weights
    for x, y in zip(a.out, b.out):
        assert rel(y, x) < 1e-2


def test_fused_from_q4_1_blocks_keeps_codes_exactly():
    from gguf import GGMLQuantizationType as GT
    from gguf.quants import dequantize, quantize

    from ember.quant import Int4Linear

    model = tiny_model()
    raw = {}
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and name.startswith("layers."):
            W = mod.weight.detach().numpy()
            blocks = quantize(W, GT.Q4_1)
            raw[f"{name}.weight"] = (GT.Q4_1, blocks, tuple(W.shape))
            with torch.no_grad():
                mod.weight.copy_(torch.from_numpy(dequantize(blocks, GT.Q4_1).reshape(W.shape)))
    ref = [
        model.layers[0].attention.wq.weight,
        model.layers[0].attention.wk.weight,
        model.layers[0].attention.wv.weight,
    ]
    cfg = QuantConfig(mode="int4", compute_dtype=torch.float32)
    apply_fused_projections(model, cfg, raw)
    inner = model.layers[0].attention.fused_wqwkwv.inner
    assert isinstance(inner, Int4Linear)
    torch.testing.assert_close(inner.dequantize(), torch.cat(ref), rtol=1e-6, atol=1e-7)
