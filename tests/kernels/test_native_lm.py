"""NativeLM (numpy weights and cache, no torch) against NativeTransformer on the same GGUF."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from kernel_helpers import need_kernels, smollm2_path

import ember.kernels.native_lm as native_lm
from ember.kernels.decode import build_native_gguf
from ember.kernels.native_lm import NativeLM
from ember.model import ModelConfig, Transformer
from ember.model.convert.to_gguf import save_gguf
from ember.model.kv_cache import KVCache

TINY = {"q4_0": {"d_ff": 256}, "q4_1": {"d_ff": 256, "n_kv_heads": 4, "tie_embeddings": True},
        "f16": {"d_ff": 256}}  # f16: every matrix re-quantized (Q4_1 blocks, Q8_0 embedding and head)


@pytest.fixture(scope="module", params=sorted(TINY))
def tiny_gguf(request, tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("native_lm") / f"tiny_{request.param}.gguf"
    save_gguf(Transformer(ModelConfig.tiny(**TINY[request.param])), path, dtype=request.param)
    return path


def _lm(path, **kw) -> NativeLM:
    """One thread unless asked: results do not depend on it, and the test cores are shared."""
    return NativeLM.from_gguf(path, **{"threads": 1, "max_seq_len": 64, **kw})


def _steps(model, tokens) -> torch.Tensor:
    """NativeTransformer's decode steps, one token at a time on one cache row → (T, V)."""
    cache = KVCache.for_model(model, 1, 64)
    lib = need_kernels()
    with torch.inference_mode():
        return torch.cat([model.decode_step(lib, torch.tensor([t]), torch.tensor([i]), cache)
                          for i, t in enumerate(tokens)])


def test_import_leaves_torch_out():
    code = "import sys, ember.kernels.native_lm; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_decode_steps_equal_native_transformer_bit_for_bit(tiny_gguf):
    need_kernels()
    lm, model = _lm(tiny_gguf), build_native_gguf(tiny_gguf)
    assert np.array_equal(lm._keep[5], model._inv_freq.numpy())  # the same RoPE frequencies
    tokens = [5, 77, 3, 200, 9, 14, 255, 0]
    ours = np.stack([lm.step([t], [0])[0] for t in tokens])
    assert np.array_equal(ours, _steps(model, tokens).numpy())
    assert lm.n_past() == len(tokens)


def test_prefill_matches_full_forward_and_steps(tiny_gguf):
    need_kernels()
    model = build_native_gguf(tiny_gguf)
    tokens = torch.randint(0, 256, (40,), generator=torch.Generator().manual_seed(1)).tolist()
    steps = _steps(model, tokens).numpy()
    with torch.inference_mode():
        full = model(torch.tensor([tokens]))[0, -1].numpy()  # the PyTorch forward on the same blocks
    for chunk in (256, 7):
        lm = _lm(tiny_gguf, chunk=chunk)
        last = lm.forward(tokens)
        np.testing.assert_allclose(last, steps[-1], atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(last, full, atol=2e-2, rtol=0)
        assert last.argmax() == full.argmax()
        assert lm.n_past() == len(tokens)


def test_a_full_context_in_one_chunk_matches_steps(tiny_gguf):
    need_kernels()
    lm = _lm(tiny_gguf, max_seq_len=None, threads=2)  # the model's whole context, 256 positions
    tokens = np.random.default_rng(2).integers(0, 256, lm.max_seq_len).tolist()
    last = lm.forward(tokens)  # one call: 256 rows, attention over up to 256 positions
    steps = _lm(tiny_gguf, max_seq_len=None, chunk=8)  # below the GEMM's row count
    steps.forward(tokens[:-1])
    np.testing.assert_allclose(last, steps.step(tokens[-1:], [0])[0], atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="row 0 is full: 256 positions"):
        lm.step([1], [0])


def test_truncate_and_continue_equals_a_fresh_forward(tiny_gguf):
    need_kernels()
    lm = _lm(tiny_gguf, chunk=5)
    lm.forward([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11])
    lm.truncate(6)
    assert lm.n_past() == 6
    again = lm.forward([40, 41, 42])
    fresh = _lm(tiny_gguf, chunk=5)
    assert np.array_equal(again, fresh.forward([1, 2, 3, 4, 5, 6, 40, 41, 42]))
    lm.reset()
    assert lm.n_past() == 0
    assert np.array_equal(lm.forward([7]), _lm(tiny_gguf).forward([7]))


def test_batched_step_rows_equal_single_row_steps(tiny_gguf):
    need_kernels()
    lm = _lm(tiny_gguf, max_seq_len=32, n_rows=3, threads=2)  # the single rows run on 1
    prompts = [[1, 2, 3], [9, 8, 7, 6, 5], [42]]
    for r, p in enumerate(prompts):
        lm.forward(p, row=r)
    batched = lm.step([10, 11, 12], [2, 0, 1])
    for i, (r, t) in enumerate(zip([2, 0, 1], [10, 11, 12])):
        alone = _lm(tiny_gguf, max_seq_len=32)
        alone.forward(prompts[r])
        assert np.array_equal(batched[i], alone.step([t], [0])[0])
    assert [lm.n_past(r) for r in range(3)] == [4, 6, 2]


def test_bad_inputs_are_named(tiny_gguf, monkeypatch):
    need_kernels()
    lm = _lm(tiny_gguf, max_seq_len=8, n_rows=2)
    with pytest.raises(ValueError, match="token id 300 is outside the vocabulary 0..255"):
        lm.forward([1, 300])
    with pytest.raises(ValueError, match="token id -1"):
        lm.step([-1], [0])
    with pytest.raises(ValueError, match="row 2 is outside 0..1"):
        lm.forward([1], row=2)
    with pytest.raises(ValueError, match="holds 0 positions; 9 more exceed the cache length 8"):
        lm.forward(list(range(9)))
    lm.forward(list(range(8)))
    with pytest.raises(ValueError, match="row 0 is full: 8 positions"):
        lm.step([1], [0])
    with pytest.raises(ValueError, match="distinct"):
        lm.step([1, 2], [1, 1])
    with pytest.raises(ValueError, match="cannot truncate row 1 to 3 positions: it holds 0"):
        lm.truncate(3, row=1)
    with pytest.raises(ValueError, match="at least one token"):
        lm.forward([])
    with pytest.raises(ValueError, match="threads must be a positive int \\(got 0\\)"):
        _lm(tiny_gguf, threads=0)
    with pytest.raises(ValueError, match="max_seq_len 1000 exceeds the model's context of 256"):
        NativeLM.from_gguf(tiny_gguf, max_seq_len=1000)
    monkeypatch.setattr(native_lm, "load_kernels", lambda: None)
    monkeypatch.setattr(native_lm, "unavailable_reason", lambda: "this CPU lacks avx512f")
    with pytest.raises(ValueError, match="unavailable: this CPU lacks avx512f"):
        NativeLM.from_gguf(tiny_gguf)


def test_thread_chooser_keeps_the_faster_count_and_probes_the_other():
    def run(tc, seconds, calls):
        used = []
        for _ in range(calls):
            used.append(tc.choose())
            tc.record(used[-1], seconds[used[-1]] * 3, 3)  # 3 tokens per call
        return used

    used = run(native_lm.ThreadChooser(2, probe_every=32), {1: 0.2, 2: 0.1}, 70)
    assert [i for i, n in enumerate(used) if n == 1] == [1, 33, 65]  # both timed, then the faster; probes
    used = run(native_lm.ThreadChooser(2, probe_every=4), {1: 0.2, 2: 0.1}, 44)
    assert [i for i, n in enumerate(used) if n == 1] == [1, 21, 41]  # every 10 x the ratio 2 calls
    tc = native_lm.ThreadChooser(2, probe_every=4, busy=True)
    used = run(tc, {1: 0.1, 2: 1.0}, 120)  # 2 threads 10x slower: a probe after 100 calls
    assert used[:2] == [1, 2] and [i for i, n in enumerate(used) if n == 2] == [1, 101]
    assert tc.ema == pytest.approx({1: 0.1, 2: 1.0})
    assert native_lm.ThreadChooser(1).choose() == 1


def test_default_threads_time_both_counts(tiny_gguf):
    need_kernels()
    lm = _lm(tiny_gguf, threads=None)
    lm.forward([1, 2, 3])
    first = lm.step([4], [0])
    lm.step([5], [0])
    cores = len(os.sched_getaffinity(0))
    assert set(lm._choosers["few"].ema) == ({1, cores} if cores > 1 else set())
    assert np.array_equal(first[0], _lm(tiny_gguf, threads=1).forward([1, 2, 3, 4]))


def test_a_model_the_kernels_cannot_run_is_named(tmp_path):
    need_kernels()
    path = tmp_path / "gpt2.gguf"
    cfg = ModelConfig.tiny(norm="layernorm", pos_emb="learned", mlp="gelu", bias=True, n_kv_heads=4, d_ff=256)
    save_gguf(Transformer(cfg), path)
    with pytest.raises(ValueError, match="cannot run .*gpt2.gguf: needs norm=rmsnorm"):
        NativeLM.from_gguf(path)


@pytest.mark.slow
def test_smollm2_steps_and_prefill_match_native_transformer():
    need_kernels()
    path = smollm2_path()
    lm, model = _lm(path, threads=2), build_native_gguf(path)
    tokens = [1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365]
    steps = _steps(model, tokens).numpy()
    assert np.array_equal(np.stack([lm.step([t], [0])[0] for t in tokens]), steps)
    lm.reset()
    prefill = lm.forward(tokens)
    np.testing.assert_allclose(prefill, steps[-1], atol=1e-3, rtol=0)
    with torch.inference_mode():
        full = model(torch.tensor([tokens]))[0, -1].numpy()
    assert prefill.argmax() == full.argmax()


def test_layout_arrays_hold_the_blocks_and_round_to_nearest():
    """layout.py (which linear.py's modules are built on) against the block format read by hand."""
    from ember.kernels import layout
    from ember.kernels.linear import pair_unpermute

    g = torch.Generator().manual_seed(0)
    w = torch.randn(96, 128, generator=g)
    w[3, :32] = 0.0  # an all-zero block: d = 0
    qs, d, m = layout.quantize_q4_1(w.numpy())
    codes = np.concatenate([qs.reshape(96, 4, 16) & 15, qs.reshape(96, 4, 16) >> 4], -1)  # (N, blocks, 32)
    back = codes * d.astype(np.float32)[..., None] + m.astype(np.float32)[..., None]
    assert np.all(np.abs(back.reshape(96, 128) - w.numpy()) <= d.astype(np.float32).repeat(32, 1) * 0.51 + 1e-3)
    assert np.all(back[3, 0] == 0.0)
    q, d8 = layout.quantize_q8_0(w.numpy(), rows=40)
    assert np.all(np.abs(q * d8.astype(np.float32).repeat(32, 1) - w.numpy()) <= d8.astype(np.float32).repeat(32, 1) * 0.51 + 1e-3)
    assert np.array_equal(pair_unpermute(torch.from_numpy(layout.pair_permute(q))).numpy(), q)
    raw = np.random.default_rng(0).integers(0, 256, (96 * 4, 20), dtype=np.uint8)
    raw[:, :4] = np.array([[0.01, -0.1]], np.float16).view(np.uint8)  # finite d and m
    for kind, size in (("Q4_1", 20), ("Q4_0", 18)):
        blocks = np.ascontiguousarray(raw[:, :size])
        qs, d, m = layout.q4_arrays(blocks.reshape(-1), (96, 128), kind)
        assert np.array_equal(qs, blocks[:, size - 16:].reshape(96, 64))
        assert np.array_equal(d.reshape(-1), blocks[:, :2].copy().view(np.float16)[:, 0])
        want_m = blocks[:, 2:4].copy().view(np.float16)[:, 0] if kind == "Q4_1" else -8 * d.reshape(-1)
        assert np.array_equal(m.reshape(-1), want_m)
    q8_raw = np.random.default_rng(1).integers(0, 256, (96 * 4, 34), dtype=np.uint8)
    q8_raw[:, :2] = np.array([[0.02]], np.float16).view(np.uint8)
    qs8, d8 = layout.q8_arrays(q8_raw.reshape(-1), (96, 128))
    assert np.array_equal(pair_unpermute(torch.from_numpy(qs8)).numpy(), q8_raw[:, 2:].reshape(96, 128).view(np.int8))
    assert np.array_equal(d8.reshape(-1), q8_raw[:, :2].copy().view(np.float16)[:, 0])
    with pytest.raises(ValueError, match="Q4_1 data of 7680 bytes for shape \\(96, 64\\); expected 3840"):
        layout.q4_arrays(raw.reshape(-1), (96, 64))
