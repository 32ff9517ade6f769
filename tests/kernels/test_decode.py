"""The native decode step against the same model's PyTorch forward, through the cache and the engine."""

import pytest
import torch
from kernel_helpers import need_kernels

import ember.kernels.decode as decode
from ember.kernels.decode import NativeTransformer, apply_native, native_unsupported
from ember.model import ModelConfig, Transformer
from ember.model.kv_cache import KVCache


def tiny_native(**kw):
    torch.manual_seed(0)
    return apply_native(Transformer(ModelConfig.tiny(d_ff=256, **kw)))


@pytest.mark.parametrize("kw", [{}, {"rope_interleaved": True, "tie_embeddings": True}, {"n_kv_heads": 4}])
def test_step_by_step_equals_full_forward(kw):
    need_kernels()
    model = tiny_native(**kw)
    ids = torch.randint(0, 256, (2, 12))
    with torch.inference_mode():
        # (2, 12, V): the PyTorch forward over the same Q4/Q8 modules, a prompt at a time: 12
        # rows stay below the GEMM's row count, so each matmul rounds as the decode step's does
        full = torch.cat([model(ids[b : b + 1]) for b in range(2)])
        cache = KVCache.for_model(model, 2, 32)
        steps = torch.cat([model(ids[:, t : t + 1], cache, torch.full((2, 1), t)) for t in range(12)], 1)
    # Same weights and activation quantization; only attention/norm float order differs.
    torch.testing.assert_close(steps, full, atol=1e-5, rtol=1e-5)


def test_rows_at_different_positions_equal_rows_alone():
    need_kernels()
    model = tiny_native()
    ids = torch.randint(0, 256, (2, 7))  # 14 prefill rows: below the GEMM's, as alone
    with torch.inference_mode():
        both = KVCache.for_model(model, 2, 16)
        model(ids, both, torch.arange(7).expand(2, 7))
        pos = torch.tensor([[6], [5]])  # row 1 rewinds: it sees only its first 5 entries
        tok = torch.tensor([[3], [4]])
        batched = model(tok, both, pos)
        alone = []
        for b in range(2):
            one = KVCache.for_model(model, 1, 16)
            model(ids[b : b + 1], one, torch.arange(7)[None])
            alone.append(model(tok[b : b + 1], one, pos[b : b + 1]))
    assert torch.equal(batched, torch.cat(alone))  # bit for bit


def test_engine_tokens_match_the_pytorch_path(monkeypatch):
    need_kernels()
    from ember.infer.engine import Engine
    from ember.infer.sampling import SamplingParams

    model = tiny_native(vocab_size=260)
    tok = _toy_tokenizer()
    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    native = Engine(model, tok, max_batch_size=2, max_seq_len=64).generate([[5, 6, 7], [9, 10]], params)
    monkeypatch.setattr(decode, "load_kernels", lambda: None)  # every forward through PyTorch
    plain = Engine(model, tok, max_batch_size=2, max_seq_len=64).generate([[5, 6, 7], [9, 10]], params)
    assert [r.token_ids for r in native] == [r.token_ids for r in plain]


def test_bad_positions_and_tokens_are_errors():
    need_kernels()
    model = tiny_native()
    cache = KVCache.for_model(model, 1, 8)
    with torch.inference_mode():
        with pytest.raises(ValueError, match="input_pos spans 8..8"):
            model(torch.tensor([[1]]), cache, torch.tensor([[8]]))
        with pytest.raises(ValueError, match="token ids 300..300"):
            model(torch.tensor([[300]]), cache, torch.tensor([[0]]))


def test_unsupported_configs_are_named():
    assert native_unsupported(ModelConfig.tiny(d_ff=256)) is None
    assert "norm=rmsnorm" in native_unsupported(ModelConfig.tiny(norm="layernorm"))
    with pytest.raises(ValueError, match="d_ff to be a multiple of 64"):
        apply_native(Transformer(ModelConfig.tiny(d_ff=176)))


def test_training_mode_forward_stays_pytorch():
    model = tiny_native()
    assert isinstance(model, NativeTransformer)
    ids = torch.randint(0, 256, (1, 4))
    with torch.inference_mode():
        cache = KVCache.for_model(model, 1, 8)
        native = model(ids[:, :1], cache, torch.zeros(1, 1, dtype=torch.long))
    with torch.enable_grad():  # grad mode: the step is not taken, the PyTorch path runs
        cache = KVCache.for_model(model, 1, 8)
        plain = model(ids[:, :1], cache, torch.zeros(1, 1, dtype=torch.long))
    torch.testing.assert_close(native, plain.detach(), atol=1e-5, rtol=1e-5)


def _toy_tokenizer():
    from ember.tokenizer import Tokenizer

    return Tokenizer(merges=[], pattern="gpt2", special_tokens={"<|endoftext|>": 256}, eos_tokens=["<|endoftext|>"])


def test_thread_count_follows_the_faster_measured_one(monkeypatch):
    model = tiny_native()
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    seconds = {2: 0.5, 1: 0.01}  # a busy machine: syncing two threads is slow
    picks = []
    for _ in range(70):
        n = model._choose_threads()
        picks.append(n)
        model._record_threads(n, seconds[n])
    assert picks[:2] == [2, 1]  # each count measured once
    assert picks.count(2) == 1 + 2  # then only the probes every PROBE_EVERY steps
    seconds = {2: 0.001, 1: 0.01}  # the machine went quiet: the probes find 2 faster
    for _ in range(70):
        n = model._choose_threads()
        picks.append(n)
        model._record_threads(n, seconds[n])
    assert picks[-20:].count(2) >= 19  # 2 again, but for a probe of 1
