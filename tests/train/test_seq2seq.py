"""Encoder-decoder pre-training (T5 span corruption, BART denoising) on the one loop, at tiny
scale on the test shards: the loss drops, batches are pure in the step."""

import json

import pytest
import torch

from ember.data.loader import build_loader
from ember.data.shards import open_split
from ember.model import ModelConfig
from ember.tokenizer import load_tokenizer
from ember.train.config import TrainConfig
from ember.train.loop import Trainer
from ember.train.optim import OptimConfig
from ember.train.seq2seq import EXTRA_IDS, build_collator, build_seq2seq, seq2seq_loss

T = 32


def _trainer(shards, out, objective, steps):
    tok = load_tokenizer(shards / "tokenizer")
    torch.manual_seed(0)
    mcfg = ModelConfig.tiny(n_layers=1, d_ff=128, vocab_size=tok.vocab_size, max_seq_len=64)
    model, collator, flops = build_seq2seq(objective, mcfg, tok, T)
    loader = build_loader("random", open_split(shards, "train"), T, 8, seed=0)

    def batches(step):  # pure in the step: the generator is seeded by it
        return collator(loader.batch(step)[0], torch.Generator().manual_seed(step))

    cfg = TrainConfig(steps=steps, batch_size=8, eval_every=0, sample_every=0, save_every=0, log_every=1,
                      out=str(out), progress=False, precision="fp32")
    trainer = Trainer(model, cfg, OptimConfig(lr=3e-3, warmup_steps=2), seq2seq_loss, batches, {"model": {}},
                      tokens_per_step=8 * T, flops_per_token=flops)
    return trainer, tok


@pytest.mark.parametrize("objective", ["span", "denoise"])
def test_loss_drops_on_a_tiny_run(shards, tmp_path, objective):
    trainer, tok = _trainer(shards, tmp_path / objective, objective, steps=16)
    trainer.fit()
    recs = [json.loads(line) for line in (tmp_path / objective / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in recs]
    assert len(losses) == 16
    assert sum(losses[-3:]) / 3 < losses[0] - 0.6, losses  # from ~log V = 6.2 down
    assert all(r["mfu"] > 0 for r in recs)
    assert trainer.plain.config.vocab_size == tok.vocab_size + EXTRA_IDS[objective]


def test_span_batches_use_the_extra_ids_and_the_loss_reads_them(shards, tmp_path):
    trainer, tok = _trainer(shards, tmp_path / "run", "span", steps=1)
    batch = trainer.batches(3)
    src = batch["input_ids"][batch["attention_mask"]]
    assert (src >= tok.vocab_size).any() and src.max() < tok.vocab_size + EXTRA_IDS["span"]
    loss, metrics = seq2seq_loss(trainer.plain, batch)
    assert loss.item() > 0 and 0 <= metrics["token_acc"] <= 1


def test_bad_choices_are_value_errors(shards):
    tok = load_tokenizer(shards / "tokenizer")
    with pytest.raises(ValueError, match="objective 'mlm'"):
        build_collator("mlm", tok, tok.vocab_size + 100)
    with pytest.raises(ValueError, match="extra ids"):
        build_collator("span", tok, tok.vocab_size)
    with pytest.raises(ValueError, match="max_seq_len 32"):
        build_seq2seq("denoise", ModelConfig.tiny(max_seq_len=32), tok, T)
    denoise = build_collator("denoise", tok, tok.vocab_size + 1)
    assert denoise.mask_id == tok.vocab_size and denoise.sentence_end_ids
