"""The trace's walk is the model's own forward; its attention is the model's attention; the
logit lens after the last block is the model's output; `ember trace --json` keeps its schema."""

import json

import pytest
import torch

from ember.infer.trace_api import attention_probs, lens_logits, walk
from ember.inspect.trace import TraceConfig, build_trace, render_text, sampling_table
from ember.model import ModelConfig, Transformer
from ember.model.layers import rope_cos_sin


def _tiny(**kw):
    torch.manual_seed(0)
    return Transformer(ModelConfig.tiny(**kw)).eval()


@pytest.mark.parametrize("kw", [{}, {"pos_emb": "learned", "norm": "layernorm", "mlp": "gelu", "n_kv_heads": 4}])
def test_walk_is_the_forward_bit_for_bit(kw):
    model = _tiny(**kw)
    ids = torch.randint(0, 256, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = model(ids)
        w = walk(model, ids)
        after = model(ids)
    assert torch.equal(w.logits, before) and torch.equal(after, before)
    assert len(w.resid) == len(w.attn) == model.config.n_layers
    # the last residual state through the lens is the model's own output
    assert torch.equal(lens_logits(model, w.resid[-1]), before)


def test_attention_rows_sum_to_one_and_match_the_fused_attention():
    model = _tiny()
    ids = torch.randint(0, 256, (1, 7), generator=torch.Generator().manual_seed(2))
    w = walk(model, ids)
    for a in w.attn:
        assert torch.allclose(a.sum(-1), torch.ones(a.shape[:-1]), atol=1e-6)
        assert torch.all(a.triu(1) == 0)  # causal: nothing from the future
    # recompute block 0's attention output from our probabilities and compare with SDPA's
    cfg, block = model.config, model.layers[0]
    pos = torch.arange(7)[None]
    rope = rope_cos_sin(cfg, pos)
    with torch.no_grad():
        x = block.attention_norm(model.tok_embeddings(ids))
        q, k, v = block.attention.project(x, rope)
        v = v.repeat_interleave(cfg.n_heads // cfg.n_kv_heads, dim=1)  # (B, H, T, Dh)
        ours = block.attention.wo((attention_probs(block.attention, x, rope, True) @ v).transpose(1, 2).flatten(2))
        theirs = block.attention(x, rope)
    assert torch.allclose(ours, theirs, atol=1e-6)
    assert torch.allclose(attention_probs(block.attention, x, rope, True), w.attn[0], atol=0)


def test_edit_patches_the_stream():
    model = _tiny()
    ids = torch.tensor([[1, 2, 3]])
    w = walk(model, ids, edit=lambda i, x: x * 0 if i == model.config.n_layers - 1 else x)
    assert torch.equal(w.logits, lens_logits(model, torch.zeros_like(w.resid[-1])))


def test_sampling_table_is_the_seeds():
    t = sampling_table(torch.tensor([2.0, 1.0, 0.5, 0.0]), [0, 1, 2, 3])
    seed = {"0.5": [0.83, 0.11, 0.04, 0.02], "1.0": [0.58, 0.21, 0.13, 0.08], "2.0": [0.41, 0.25, 0.19, 0.15]}
    for T, ps in seed.items():  # the seed's table, to its two decimals
        assert t["temperature"][T] == pytest.approx(ps, abs=0.006)
    assert t["top_k"]["kept"] == pytest.approx([0.73, 0.27], abs=0.005)
    assert [(p["p"], p["n_kept"]) for p in t["top_p"]] == [(0.7, 2), (0.9, 3), (0.95, 4)]


def test_trace_json_schema(smollm2_tokenizer):
    tok = smollm2_tokenizer
    model = _tiny(vocab_size=tok.vocab_size)
    cfg = TraceConfig(text="The cat sat", top=4, seed=3)
    ids = tok.encode(cfg.text)
    tr, attn = build_trace(model, tok, ids, cfg)
    tr = json.loads(json.dumps(tr))  # plain JSON data
    assert tr["tokens"] == [{"id": i, "text": tok.decode([i])} for i in ids]
    assert [lay["layer"] for lay in tr["layers"]] == list(range(model.config.n_layers))
    for lay in tr["layers"]:
        assert [set(d) for d in lay["top"]] == [{"id", "token", "prob"}] * 4
        assert all(set(a) == {"pos", "token", "weight"} for a in lay["attention"])
    assert [set(d) for d in tr["next"]] == [{"id", "token", "prob"}] * 4
    assert tr["layers"][-1]["top"] == tr["next"]  # the lens after the last block is the output
    probs = model(torch.tensor([ids]))[0, -1].softmax(-1)
    assert [n["id"] for n in tr["next"]] == probs.topk(4).indices.tolist()
    assert tr["sampled"]["seed"] == 3 and tr["sampled"]["token"] == tok.decode([tr["sampled"]["id"]])
    assert tuple(attn.shape) == (2, 4, 3, 3)
    assert "1. tokens (3)" in render_text(tr)
    heads = build_trace(model, tok, ids, TraceConfig(text=cfg.text, heads=True))[0]["layers"][0]["attention"]
    assert [h["head"] for h in heads] == ["mean", 0, 1, 2, 3]


def test_bad_options_name_the_value(smollm2_tokenizer):
    with pytest.raises(ValueError, match="-1"):
        TraceConfig(top_k=-1)
    with pytest.raises(ValueError, match="1.5"):
        TraceConfig(top_p=1.5)
    model = _tiny(vocab_size=smollm2_tokenizer.vocab_size)
    with pytest.raises(ValueError, match="5 tokens"):
        build_trace(model, smollm2_tokenizer, [1, 2, 3, 4, 5], TraceConfig(max_tokens=4))


def test_html_page_escapes_model_text_and_needs_no_network(smollm2_tokenizer):
    from ember.inspect.attention import head_summaries
    from ember.inspect.report import trace_html

    tok = smollm2_tokenizer
    model = _tiny(vocab_size=tok.vocab_size)
    tr, attn = build_trace(model, tok, tok.encode("a b c"), TraceConfig(text="<script>alert(1)</script>"))
    tr["tokens"][0]["text"] = "<img src=x onerror=alert(1)>"
    tr["layers"][0]["top"][0]["token"] = "</td><script>"
    page = trace_html(tr, attn, head_summaries(attn))
    assert "<script" not in page and "<img src=x" not in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page and "&lt;/td&gt;&lt;script&gt;" in page
    assert "http://" not in page and "https://" not in page
    assert page.count("data:image/png;base64,") == 2  # the attention mosaic and the head summaries
