"""Encoder objectives against their published formulas, computed by hand on tiny models."""

import math
import re

import pytest
import torch
import torch.nn.functional as F

from ember.data.objectives import IGNORE, MaskedLM, PermutationLM
from ember.model import ModelConfig, Transformer
from ember.train.objectives import (
    Electra,
    TwoStream,
    electra_loss,
    encoder_body,
    mlm_loss,
    plm_loss,
)

V = 256


def encoder_cfg(**kw) -> ModelConfig:
    return ModelConfig.tiny(causal=False, pos_emb="learned", norm="layernorm", mlp="gelu", **kw)


def mlm_batch(seed=0, B=3, T=20, **kw):
    ids = torch.randint(3, V, (B, T), generator=torch.Generator().manual_seed(seed))
    return MaskedLM(mask_id=1, vocab_size=V, special_ids=(2,), **kw)(ids, torch.Generator().manual_seed(seed + 1))


def test_mlm_loss_is_cross_entropy_at_the_masked_positions():
    torch.manual_seed(0)
    model = Transformer(encoder_cfg())
    b = mlm_batch()
    loss, metrics = mlm_loss(model, b)
    logits = model(b["input_ids"])  # (B, T, V): a full bidirectional forward
    at = b["labels"] != IGNORE
    logp = logits.float().log_softmax(-1)[at]  # (N, V)
    expected = -logp.gather(1, b["labels"][at][:, None]).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)
    assert 0 <= float(metrics["mlm_acc"]) <= 1


def test_padding_is_masked_out_of_attention():
    torch.manual_seed(0)
    model = Transformer(encoder_cfg())
    ids = torch.randint(3, V, (1, 10))
    padded = torch.cat([ids, torch.zeros(1, 6, dtype=torch.long)], 1)
    mlm = MaskedLM(mask_id=1, vocab_size=V, pad_id=0)
    b = mlm(padded, torch.Generator().manual_seed(3))
    short = {k: v[:, :10] for k, v in b.items()}
    torch.testing.assert_close(mlm_loss(model, b)[0], mlm_loss(model, short)[0], rtol=1e-5, atol=1e-5)


def test_electra_loss_is_gen_mlm_plus_lambda_times_disc_bce():
    torch.manual_seed(0)
    model = Electra(encoder_cfg(n_layers=2), generator_layers=1)
    b = mlm_batch(mask_frac=0.85, random_frac=0.0)
    torch.manual_seed(5)
    loss, m = electra_loss(model, b, disc_weight=50.0)
    # by hand: the same generator samples (same RNG), then the discriminator's BCE
    gen_loss, _ = mlm_loss(model.generator, b)
    at = b["labels"] != IGNORE
    torch.manual_seed(5)
    gen_logits = model.generator(b["input_ids"])[at].float()
    sampled = torch.multinomial(gen_logits.softmax(-1), 1).squeeze(-1)
    corrupted = b["input_ids"].clone()
    corrupted[at] = sampled
    original = torch.where(at, b["labels"], b["input_ids"])
    target = (corrupted != original).float()
    p = torch.sigmoid(model.disc_head(model.body.hidden(corrupted)))
    bce = -(target * p.log() + (1 - target) * (1 - p).log()).mean()
    torch.testing.assert_close(m["gen_loss"], gen_loss.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(m["disc_loss"], bce.detach(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(loss, gen_loss + 50.0 * bce, rtol=1e-4, atol=1e-4)
    assert float(m["replaced"]) == float(target.mean())


def test_electra_generator_learns_from_its_mlm_loss_only():
    """Samples carry no gradient: the generator's own layers get exactly the MLM gradient."""
    torch.manual_seed(0)
    model = Electra(encoder_cfg(), generator_layers=1)
    b = mlm_batch()
    torch.manual_seed(1)
    electra_loss(model, b)[0].backward()
    joint = [p.grad.clone() for p in model.generator.layers.parameters()]
    model.zero_grad()
    mlm_loss(model.generator, b)[0].backward()
    for g, p in zip(joint, model.generator.layers.parameters()):
        torch.testing.assert_close(g, p.grad)
    assert model.generator.tok_embeddings is model.body.tok_embeddings
    assert encoder_body(model) is model.body


def test_two_stream_matches_the_streams_written_out():
    torch.manual_seed(0)
    body = Transformer(encoder_cfg())
    model = TwoStream(body)
    ids = torch.randint(0, V, (2, 12))
    b = PermutationLM(k=3)(ids, torch.Generator().manual_seed(0))
    tpos, B, T, n = b["target_pos"], 2, 12, b["target_pos"].shape[1]
    h = body.tok_embeddings(ids) + body.pos_embeddings(torch.arange(T))  # content stream (B, T, D)
    g = model.mask_emb.expand(B, n, -1) + body.pos_embeddings(tpos)  # query stream (B, n, D)
    Dh = body.config.head_dim

    def heads(x, w):  # (B, L, D) → (B, heads, L, Dh)
        return w(x).view(B, x.shape[1], -1, Dh).transpose(1, 2)

    for block in body.layers:
        a = block.attention
        nh, ng = block.attention_norm(h), block.attention_norm(g)
        k, v = heads(nh, a.wk), heads(nh, a.wv)
        g = g + a.attend(heads(ng, a.wq), k, v, b["query_mask"][:, None])
        h = h + a.attend(heads(nh, a.wq), k, v, b["content_mask"][:, None])
        g = g + block.feed_forward(block.ffn_norm(g))
        h = h + block.feed_forward(block.ffn_norm(h))
    expected = body.lm_head(body.norm(g))  # (B, n, V)
    torch.testing.assert_close(model(b), expected, rtol=1e-4, atol=1e-5)


def test_plm_prediction_never_sees_its_own_token_or_later_ones():
    torch.manual_seed(0)
    model = TwoStream(Transformer(encoder_cfg()))
    ids = torch.randint(0, V, (1, 12))
    b = PermutationLM(k=3)(ids, torch.Generator().manual_seed(1))
    first = int(b["target_pos"][0][b["rank"][0, b["target_pos"][0]].argmin()])  # earliest target in order
    ref = model(b)[0, (b["target_pos"][0] == first).nonzero()[0, 0]]
    changed = ids.clone()
    for t in b["target_pos"][0]:  # every target, itself included, comes at or after it
        changed[0, t] = (changed[0, t] + 7) % V
    out = model({**b, "input_ids": changed})[0, (b["target_pos"][0] == first).nonzero()[0, 0]]
    torch.testing.assert_close(out, ref)
    loss, m = plm_loss(model, b)
    loss.backward()
    assert model.mask_emb.grad is not None and model.mask_emb.grad.abs().sum() > 0
    expected = F.cross_entropy(model(b).flatten(0, 1), ids.gather(1, b["target_pos"]).flatten())
    torch.testing.assert_close(loss, expected)


def test_each_objective_overfits_one_batch():
    torch.manual_seed(0)
    cfg = encoder_cfg(max_seq_len=64)
    cases = [(Transformer(cfg), mlm_loss, mlm_batch(T=16)),
             (Electra(cfg, 1), electra_loss, mlm_batch(T=16)),
             (TwoStream(Transformer(cfg)), plm_loss,
              PermutationLM(k=4)(torch.randint(0, V, (3, 16), generator=torch.Generator().manual_seed(0)),
                                 torch.Generator().manual_seed(0)))]
    for model, loss_fn, b in cases:
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        first = None
        for _ in range(40):
            torch.manual_seed(1)  # ELECTRA: the same samples each step
            loss, _ = loss_fn(model, b)
            first = first if first is not None else loss.item()
            opt.zero_grad()
            loss.backward()
            opt.step()
        assert loss.item() < 0.5 * first, (loss_fn.__name__, first, loss.item())


# ---- `ember pretrain --objective` end to end ------------------------------------------------
TINY_BERT = ["--arch", "mini-bert", "--model.n_layers", "2", "--model.d_model", "32", "--model.n_heads", "2",
             "--model.d_ff", "64", "--data.seq_len", "24"]


def pretrain_args(shards, out, objective, *extra):
    return ["pretrain", *TINY_BERT, "--objective", objective, "--data.dir", str(shards), "--train.steps", "4",
            "--train.batch_size", "4", "--train.eval_every", "2", "--train.eval_windows", "4",
            "--train.sample_every", "0", "--train.log_every", "1", "--train.out", str(out),
            "--train.progress", "false", "--train.precision", "fp32", *extra]


@pytest.mark.parametrize("objective, metric", [("mlm", "mlm_acc"), ("electra", "disc_acc"), ("plm", "plm_acc")])
def test_pretrain_objective_end_to_end(mask_shards, tmp_path, objective, metric):
    import json

    from ember.cli import main
    from ember.train.pretrain import load_run

    out = tmp_path / objective
    assert main(pretrain_args(mask_shards, out, objective)) == 0
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [1, 2, 3, 4]
    assert all(math.isfinite(r["loss"]) and metric in r and r["tok_s"] > 0 for r in recs)
    assert "val_loss" in recs[1] and f"val_{metric}" in recs[3]
    body, tok = load_run(out)  # the encoder kept: a plain bidirectional Transformer
    assert type(body) is Transformer and not body.config.causal and "[MASK]" in tok.special_tokens


def test_pretrain_objective_resumes_bit_for_bit(mask_shards, tmp_path):
    import json

    from ember.cli import main

    full, cut = tmp_path / "full", tmp_path / "cut"
    assert main(pretrain_args(mask_shards, full, "electra", "--train.save_every", "2")) == 0
    assert main(pretrain_args(mask_shards, cut, "electra", "--train.steps", "2")) == 0
    assert main(pretrain_args(mask_shards, cut, "electra", "--train.resume", "true")) == 0
    losses = [[json.loads(r)["loss"] for r in (o / "metrics.jsonl").read_text().splitlines()] for o in (full, cut)]
    assert losses[0] == losses[1]


def test_pretrain_objective_errors_name_the_fix(mask_shards, shards, tmp_path, capsys):
    from ember.cli import main

    assert main(pretrain_args(mask_shards, tmp_path / "a", "mlm", "--model.causal", "true")) == 2
    assert "--arch mini-bert" in capsys.readouterr().err
    assert main(pretrain_args(shards, tmp_path / "b", "mlm")) == 2  # a BPE without [MASK]
    assert "no mask token" in capsys.readouterr().err
    from ember.train.kit.objectives import OBJECTIVES, ObjectiveConfig, build_objective

    with pytest.raises(ValueError, match=re.escape(f"unknown objective 'bert'; valid objectives: {sorted(OBJECTIVES)}")):
        build_objective("bert", encoder_cfg(), None, ObjectiveConfig(), 0, 0, 8)
