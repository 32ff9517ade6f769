"""apply_quant / apply_quant_from_gguf on plain modules and the tiny Transformer."""

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn
from gguf import GGMLQuantizationType as GT
from gguf.quants import dequantize, quantize
from quant_helpers import rel

from ember.quant import (
    Int4Linear,
    Int8Embedding,
    Int8Linear,
    QuantConfig,
    apply_quant,
    apply_quant_from_gguf,
    quant_summary,
)


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 64), nn.GELU(), nn.Linear(64, 32)
    )


@pytest.mark.parametrize("mode, cls, tol", [("int4", Int4Linear, 0.12), ("int8", Int8Linear, 0.02)])
def test_sequential_all_linears_replaced_and_close(mode, cls, tol):
    ref = mlp()
    q = apply_quant(copy.deepcopy(ref), QuantConfig(mode=mode))
    assert all(isinstance(q[i], cls) for i in (0, 2, 4))
    x = torch.randn(4, 64)
    assert rel(q(x), ref(x)) < tol


def test_skip_patterns_leave_float():
    q = apply_quant(mlp(), QuantConfig(skip=("0", "4")))
    assert type(q[0]) is nn.Linear and isinstance(q[2], Int4Linear) and type(q[4]) is nn.Linear


def test_int4_falls_back_to_int8_where_its_kernel_cannot():
    m = nn.Sequential(nn.Linear(64, 40), nn.Linear(40, 8))  # 40 rows: not a multiple of 16
    apply_quant(m, QuantConfig(mode="int4"))
    assert isinstance(m[0], Int8Linear)
    assert type(m[1]) is nn.Linear  # K = 40 fits neither kernel


@pytest.mark.parametrize("bad", [dict(mode="int3"), dict(group_size=48), dict(head_mode="fp8")])
def test_bad_config_is_a_value_error(bad):
    with pytest.raises(ValueError, match=str(next(iter(bad.values())))):
        QuantConfig(**bad)


def tiny_model(**changes):
    """The tiny Llama with a tied head and d_ff 192 (tiny()'s 176 is not a multiple of 32)."""
    from dataclasses import replace

    from ember.model import ModelConfig, Transformer

    torch.manual_seed(0)
    cfg = replace(ModelConfig.tiny(), **({"d_ff": 192, "tie_embeddings": True} | changes))
    return Transformer(cfg).eval()


def test_tiny_transformer_head_int8_blocks_int4_embedding_shares_head():
    ref = tiny_model()
    q = apply_quant(copy.deepcopy(ref), QuantConfig(mode="int4"))
    n_linear = sum(isinstance(m, nn.Linear) for m in ref.modules())
    assert quant_summary(q) == {"Int4Linear": n_linear - 1, "Int8Linear": 1, "Linear": 0}
    assert isinstance(q.output, Int8Linear)
    assert isinstance(q.layers[0].attention.wk, Int4Linear)
    assert isinstance(q.tok_embeddings, Int8Embedding)  # the tied table, once, in int8
    assert q.tok_embeddings(torch.tensor([1])).dtype == torch.float32
    keep = apply_quant(copy.deepcopy(ref), QuantConfig(mode="int4", tie_embedding=False))
    assert keep.tok_embeddings.weight.dtype == torch.float32  # float table kept on request
    ids = torch.randint(0, ref.config.vocab_size, (2, 7))
    with torch.no_grad():
        assert rel(q(ids), ref(ids)) < 0.1


def test_tiny_transformer_d_ff_176_down_projection_falls_back_to_int8():
    q = apply_quant(tiny_model(d_ff=176), QuantConfig(mode="int4"))
    assert isinstance(q.layers[0].feed_forward.w2, Int8Linear)  # K = 176
    assert isinstance(q.layers[0].feed_forward.w1, Int4Linear)  # N = 176 = 11·16


def test_tiny_transformer_include_output_false():
    q = apply_quant(tiny_model(), QuantConfig(mode="int8", include_output=False))
    assert type(q.output) is nn.Linear and q.output.weight is q.tok_embeddings.weight


def _gguf_like(model, qtype=GT.Q4_1):
    """Quantize every Linear weight of `model` to `qtype` blocks, load the dequantized values
    back (as a GGUF load would), and return the raw tensors keyed by ember name."""
    raw = {}
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear) and name != "output":
            W = mod.weight.detach().numpy()
            blocks = quantize(W, qtype)
            raw[f"{name}.weight"] = (qtype, blocks, tuple(W.shape))
            with torch.no_grad():
                mod.weight.copy_(torch.from_numpy(dequantize(blocks, qtype).reshape(W.shape)))
    E = model.tok_embeddings.weight.detach().numpy()
    blocks = quantize(E, GT.Q8_0)
    raw["tok_embeddings.weight"] = (GT.Q8_0, blocks, tuple(E.shape))
    with torch.no_grad():
        model.tok_embeddings.weight.copy_(
            torch.from_numpy(dequantize(blocks, GT.Q8_0).reshape(E.shape))
        )
    return raw


def test_from_gguf_keeps_q4_1_codes_exactly():
    ref = tiny_model()
    raw = _gguf_like(ref)
    q = apply_quant_from_gguf(copy.deepcopy(ref), raw, QuantConfig(compute_dtype=torch.float32))
    wq = q.layers[1].attention.wq
    assert isinstance(wq, Int4Linear)
    torch.testing.assert_close(
        wq.dequantize(), ref.layers[1].attention.wq.weight, rtol=1e-6, atol=1e-7
    )
    assert isinstance(q.output, Int8Linear)  # the tied Q8_0 head → int8 per channel
    ids = torch.randint(0, ref.config.vocab_size, (1, 9))
    with torch.no_grad():
        assert rel(q(ids), ref(ids)) < 0.02  # only the int8 head differs


def test_from_gguf_bf16_default_close():
    ref = tiny_model()
    raw = _gguf_like(ref)
    q = apply_quant_from_gguf(copy.deepcopy(ref), raw)
    ids = torch.randint(0, ref.config.vocab_size, (1, 9))
    with torch.no_grad():
        assert rel(q(ids), ref(ids)) < 0.03


def test_from_gguf_rejects_blocks_of_another_weight():
    ref = tiny_model()
    raw = _gguf_like(ref)
    k = "layers.0.attention.wq.weight"
    other = quantize(np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32), GT.Q4_1)
    raw[k] = (GT.Q4_1, other, (64, 64))
    with pytest.raises(ValueError, match=k):
        apply_quant_from_gguf(copy.deepcopy(ref), raw)


def test_from_gguf_accepts_a_bf16_model():
    ref = tiny_model()
    raw = _gguf_like(ref)
    q = apply_quant_from_gguf(copy.deepcopy(ref).to(torch.bfloat16), raw)
    assert quant_summary(q)["Int4Linear"] == 14


@pytest.mark.slow
def test_smollm2_from_gguf_follows_the_float_model():
    from ember.core.gguf import open_gguf
    from ember.core.registry import ModelNotFoundError, resolve_model
    from ember.model import load_model
    from ember.model.convert.gguf import gguf_raw_tensors

    try:
        path = resolve_model("smollm2")
    except ModelNotFoundError as e:
        pytest.skip(str(e))
    ref = load_model(path)
    ids = torch.tensor([[1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 3511, 308]])
    with torch.no_grad():
        want = ref(ids)
        q = apply_quant_from_gguf(ref, gguf_raw_tensors(open_gguf(path), "llama"))
        got = q(ids)
    assert quant_summary(q) == {"Int4Linear": 210, "Int8Linear": 1, "Linear": 0}
    assert (got.argmax(-1) == want.argmax(-1)).float().mean() >= 0.9


def test_model_to_dtype_after_quantization_still_runs():
    q = apply_quant(mlp(), QuantConfig(mode="int4"))
    q2 = apply_quant(mlp(), QuantConfig(mode="int8"))
    x = torch.randn(2, 64)
    for m in (q, q2):
        y = m(x)
        assert m.to(torch.float16)(x.half()).dtype == torch.float16
        assert rel(m(x.half()).float(), y) < 0.02
