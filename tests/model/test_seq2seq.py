import pytest
import torch

from ember.model import ModelConfig
from ember.model.seq2seq import EncoderDecoder, load_encoder_decoder

VARIANTS = {
    "llama-style": {},
    "gpt2-style": {"norm": "layernorm", "pos_emb": "learned", "mlp": "gelu", "bias": True, "tie_embeddings": True},
    "sinusoidal": {"pos_emb": "sinusoidal"},
}


def _model(**overrides):
    torch.manual_seed(0)
    return EncoderDecoder(ModelConfig.tiny(**overrides)).eval()


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@torch.no_grad()
def test_shapes_and_shared_embeddings(variant):
    model = _model(**VARIANTS[variant])
    src, tgt = torch.randint(0, 256, (3, 9)), torch.randint(0, 256, (3, 5))
    assert model(src, tgt).shape == (3, 5, 256)
    assert model.encode(src).shape == (3, 9, 64)
    names = [n for n, _ in model.named_parameters()]
    assert sum("tok_embeddings" in n for n in names) == 1  # one table for encoder and decoder
    assert all(layer.cross_attention.causal is False for layer in model.layers)
    assert all(block.attention.causal is False for block in model.encoder)


@torch.no_grad()
def test_decoder_position_t_never_sees_later_targets():
    model = _model()
    src, tgt = torch.randint(0, 256, (2, 8)), torch.randint(0, 256, (2, 10))
    full = model(src, tgt)
    for t in range(10):
        changed = tgt.clone()
        changed[:, t + 1 :] = torch.randint(0, 256, changed[:, t + 1 :].shape)
        torch.testing.assert_close(model(src, changed)[:, : t + 1], full[:, : t + 1])


def test_cross_attention_reads_every_source_position_but_no_padding():
    model = _model()
    src = torch.randint(1, 256, (1, 7))
    memory = model.encode(src).detach().requires_grad_(True)
    logits = model.decode(torch.randint(0, 256, (1, 4)), memory)
    # every decoder position depends on every encoder position
    for t in range(4):
        (grad,) = torch.autograd.grad(logits[0, t].sum(), memory, retain_graph=True)
        assert (grad[0].abs().sum(-1) > 0).all()
    # a padded row gives what the row gives alone, whatever its pads hold
    tgt = torch.randint(0, 256, (1, 4))
    with torch.no_grad():
        alone = model(src, tgt)
        for fill in (0, 17):
            padded = torch.cat([src, torch.full((1, 3), fill)], dim=1)
            mask = torch.tensor([[True] * 7 + [False] * 3])
            torch.testing.assert_close(model(padded, tgt, src_mask=mask), alone, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_padded_batch_equals_each_row_alone():
    model = _model()
    srcs = [torch.randint(0, 256, (n,)) for n in (5, 9)]
    tgts = [torch.randint(0, 256, (n,)) for n in (6, 3)]
    src = torch.zeros(2, 9, dtype=torch.long)
    tgt = torch.zeros(2, 6, dtype=torch.long)
    src_mask, tgt_mask = torch.zeros(2, 9, dtype=torch.bool), torch.zeros(2, 6, dtype=torch.bool)
    for b in range(2):
        src[b, : len(srcs[b])], src_mask[b, : len(srcs[b])] = srcs[b], True
        tgt[b, : len(tgts[b])], tgt_mask[b, : len(tgts[b])] = tgts[b], True
    batched = model(src, tgt, src_mask, tgt_mask)
    for b in range(2):
        alone = model(srcs[b][None], tgts[b][None])
        torch.testing.assert_close(batched[b, : len(tgts[b])], alone[0], atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_cached_greedy_decode_equals_full_reforward():
    model = _model()
    src = torch.randint(0, 256, (2, 6))
    mask = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    cached = model.generate(src, 12, start_id=0, src_mask=mask)
    full = model.generate(src, 12, start_id=0, src_mask=mask, use_cache=False)
    assert cached.shape == (2, 12)
    assert torch.equal(cached, full)


def test_overfits_one_pair_and_decodes_it_back():
    torch.manual_seed(0)
    model = EncoderDecoder(ModelConfig.tiny(n_layers=1, tie_embeddings=True))
    src = torch.tensor([[5, 9, 11, 3, 42, 7, 8]])
    target = torch.tensor([[9, 11, 200, 3, 1]])  # ends with eos = 1
    start = 0
    dec_in = torch.cat([torch.tensor([[start]]), target[:, :-1]], dim=1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(100):  # deterministic: the same step count every run
        loss = torch.nn.functional.cross_entropy(model(src, dec_in)[0], target[0])
        if loss.item() < 0.02:
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.02
    model.eval()
    out = model.generate(src, 10, start_id=start, eos_id=1)
    assert out[0].tolist() == target[0].tolist()


def test_bad_arguments_are_value_errors():
    with pytest.raises(ValueError, match="causal"):
        EncoderDecoder(ModelConfig.tiny(causal=False))
    model = _model(max_seq_len=16)
    with pytest.raises(ValueError, match="max_new_tokens"):
        model.generate(torch.ones(1, 3, dtype=torch.long), 16, start_id=0)
    with pytest.raises(ValueError, match="max_seq_len"):
        model.encode(torch.ones(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match="target of 17 tokens"):
        model(torch.ones(1, 3, dtype=torch.long), torch.ones(1, 17, dtype=torch.long))


def test_load_checks_every_key_and_shape():
    cfg = ModelConfig.tiny(tie_embeddings=True)
    model = _model(tie_embeddings=True)
    sd = {k: v for k, v in model.state_dict().items() if k != "output.weight"}  # a tied head need not repeat
    back = load_encoder_decoder(cfg, sd)
    assert back.output.weight is back.tok_embeddings.weight
    src, tgt = torch.randint(0, 256, (1, 5)), torch.randint(0, 256, (1, 3))
    with torch.no_grad():
        torch.testing.assert_close(back(src, tgt), model(src, tgt))
    del sd["layers.0.cross_attention.wk.weight"]
    with pytest.raises(ValueError, match="missing.*layers.0.cross_attention.wk.weight"):
        load_encoder_decoder(cfg, sd)
