import pytest
import torch

from ember.model import KVCache, ModelConfig, Transformer
from ember.model.convert import rope_rows_half_to_interleaved
from ember.model.layers import rope_inv_freq

VARIANTS = {
    "llama-gqa": {},
    "mqa": {"n_kv_heads": 1},
    "mha": {"n_kv_heads": 4},
    "gpt2-style": {"norm": "layernorm", "pos_emb": "learned", "mlp": "gelu", "bias": True, "tie_embeddings": True},
    "sinusoidal": {"pos_emb": "sinusoidal"},
    "rope-interleaved": {"rope_interleaved": True},
    "rope-llama3": {"rope_scaling": {"type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                     "high_freq_factor": 4.0, "original_max_position_embeddings": 32}},
}


def _model(**overrides):
    torch.manual_seed(0)
    return Transformer(ModelConfig.tiny(**overrides)).eval()


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@torch.no_grad()
def test_cached_decode_equals_full_forward(variant):
    model = _model(**VARIANTS[variant])
    ids = torch.randint(0, 256, (2, 12))
    full = model(ids)  # (B, T, V)
    cache = KVCache.for_model(model, batch_size=2, max_seq_len=16)
    prefill = model(ids[:, :5], cache, torch.arange(5).expand(2, 5))
    torch.testing.assert_close(prefill, full[:, :5], atol=1e-5, rtol=1e-5)
    for t in range(5, 12):
        step = model(ids[:, t : t + 1], cache, torch.full((2, 1), t))
        torch.testing.assert_close(step[:, 0], full[:, t], atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_right_padded_batched_prefill_equals_each_row_alone():
    model = _model()
    lengths = [7, 3, 5]
    prompts = [torch.randint(0, 256, (n,)) for n in lengths]
    B, T = len(prompts), max(lengths)
    ids = torch.zeros(B, T, dtype=torch.long)  # pad id 0 past each row's end
    for b, p in enumerate(prompts):
        ids[b, : len(p)] = p
    cache = KVCache.for_model(model, B, 16)
    last = torch.tensor(lengths) - 1
    batched = model(ids, cache, torch.arange(T).expand(B, T), logits_index=last)  # (B, 1, V)
    # Then three decode steps, each row at its own position (pads get overwritten).
    nxt = torch.randint(0, 256, (B, 3))
    steps = [model(nxt[:, i : i + 1], cache, (last + 1 + i)[:, None]) for i in range(3)]
    for b, p in enumerate(prompts):
        alone = model(torch.cat([p, nxt[b]])[None])  # (1, n + 3, V), no cache
        torch.testing.assert_close(batched[b, 0], alone[0, len(p) - 1], atol=1e-5, rtol=1e-5)
        for i in range(3):
            torch.testing.assert_close(steps[i][b, 0], alone[0, len(p) + i], atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_logits_index_selects_one_position_per_row():
    model = _model()
    ids = torch.randint(0, 256, (3, 6))
    full = model(ids)
    idx = torch.tensor([5, 0, 2])
    out = model(ids, logits_index=idx)
    assert out.shape == (3, 1, 256)
    torch.testing.assert_close(out[:, 0], full[torch.arange(3), idx])


@pytest.mark.parametrize("n_kv_heads", [4, 2, 1])
def test_gqa_mqa_shapes(n_kv_heads):
    model = _model(n_kv_heads=n_kv_heads)
    attn = model.layers[0].attention
    assert attn.wq.weight.shape == (64, 64)
    assert attn.wk.weight.shape == attn.wv.weight.shape == (n_kv_heads * 16, 64)
    cache = KVCache.for_model(model, 2, 8)
    assert cache.k[0].shape == (2, n_kv_heads, 8, 16)
    out = model(torch.zeros(2, 3, dtype=torch.long), cache, torch.arange(3).expand(2, 3))
    assert out.shape == (2, 3, 256)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_variant_runs_and_trains(variant):
    model = _model(**VARIANTS[variant]).train()
    ids = torch.randint(0, 256, (2, 10))
    logits = model(ids)
    assert logits.shape == (2, 10, 256) and torch.isfinite(logits).all()
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_tied_embeddings_share_one_parameter():
    model = _model(tie_embeddings=True)
    assert model.output.weight is model.tok_embeddings.weight


@torch.no_grad()
def test_bidirectional_sees_the_future():
    causal, bidir = _model(), _model(causal=False)
    ids = torch.randint(0, 256, (1, 6))
    changed = ids.clone()
    changed[0, -1] = (ids[0, -1] + 1) % 256
    torch.testing.assert_close(causal(ids)[0, 0], causal(changed)[0, 0])
    assert not torch.allclose(bidir(ids)[0, 0], bidir(changed)[0, 0])
    with pytest.raises(ValueError, match="causal"):
        bidir(ids, KVCache.for_model(bidir, 1, 8), torch.arange(6)[None])


@torch.no_grad()
def test_interleaved_rope_equals_rotate_half_on_permuted_rows():
    """GGUF keeps Q/K rows permuted and rotates pairs; HF rotates halves: same logits."""
    half = _model()
    inter = Transformer(ModelConfig.tiny(rope_interleaved=True)).eval()
    sd = half.state_dict()
    for name, t in list(sd.items()):
        if name.endswith(("wq.weight", "wk.weight")):
            n_heads = 4 if "wq" in name else 2
            sd[name] = rope_rows_half_to_interleaved(t, n_heads)
    inter.load_state_dict(sd)
    ids = torch.randint(0, 256, (2, 9))
    torch.testing.assert_close(inter(ids), half(ids), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "scaling",
    [
        {"rope_type": "linear", "factor": 4.0},
        {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
         "original_max_position_embeddings": 64},
    ],
)
def test_rope_scaling_matches_transformers(scaling):
    transformers = pytest.importorskip("transformers")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    hf_cfg = transformers.LlamaConfig(
        hidden_size=256, num_attention_heads=2, rope_parameters={**scaling, "rope_theta": 500000.0}
    )
    ref, _ = ROPE_INIT_FUNCTIONS[scaling["rope_type"]](hf_cfg, "cpu")
    cfg = ModelConfig.tiny(d_model=256, n_heads=2, n_kv_heads=2, rope_theta=500000.0,
                           rope_scaling={"type": scaling["rope_type"], **scaling})
    torch.testing.assert_close(rope_inv_freq(cfg), ref.float())


def test_bad_cache_inputs_are_value_errors():
    model = _model()
    ids = torch.zeros(2, 3, dtype=torch.long)
    cache = KVCache.for_model(model, 2, 8)
    with pytest.raises(ValueError, match="input_pos must have the shape"):
        model(ids, cache)
    with pytest.raises(ValueError, match="outside 0..7"):
        model(ids, cache, torch.arange(6, 9).expand(2, 3))
    with pytest.raises(ValueError, match="cache of 2 rows"):
        model(ids[:1], cache, torch.arange(3)[None])
    with pytest.raises(ValueError, match="longer than max_seq_len"):
        model(torch.zeros(1, 300, dtype=torch.long))
    with pytest.raises(ValueError, match="only used with a cache"):
        model(ids, input_pos=torch.arange(3).expand(2, 3))


@pytest.mark.parametrize("preset", ["tiny", "tiny-gpt2"])
def test_packed_segments_equal_separate_forwards(preset):
    """Two sequences packed in one row with segment ids give each one its own logits:
    positions restart and attention never crosses the boundary."""
    torch.manual_seed(0)
    model = Transformer(ModelConfig.from_preset(preset)).eval()
    a, b = torch.randint(0, 256, (1, 7)), torch.randint(0, 256, (1, 5))
    packed = torch.cat([a, b], dim=1)
    seg = torch.tensor([[0] * 7 + [1] * 5])
    with torch.no_grad():
        out = model(packed, segment_ids=seg)
        torch.testing.assert_close(out[:, :7], model(a), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out[:, 7:], model(b), rtol=1e-5, atol=1e-5)
        # without segment ids the second sequence sees the first: different logits
        assert not torch.allclose(model(packed)[:, 7:], model(b), atol=1e-3)


def test_bool_logits_index_selects_positions():
    torch.manual_seed(0)
    model = Transformer(ModelConfig.tiny()).eval()
    ids = torch.randint(0, 256, (2, 6))
    sel = torch.tensor([[0, 1, 1, 0, 0, 1], [1, 0, 0, 0, 0, 0]], dtype=torch.bool)
    with torch.no_grad():
        torch.testing.assert_close(model(ids, logits_index=sel), model(ids)[sel])
