"""Encoder-decoder pre-training (T5 span corruption, BART denoising) on the one loop, at tiny
scale on the test shards: the loss drops, batches are pure in the step."""

import json

import pytest
import torch

from ember.train.config import TrainConfig
from ember.train.kit.pretraining import DataConfig, ModelOverrides, PretrainConfig
from ember.train.optim import OptimConfig
from ember.train.seq2seq import N_EXTRA, build_collator, build_seq2seq, seq2seq_loss


def _cfg(shards, out, steps):
    return PretrainConfig(
        arch="tiny", model=ModelOverrides(n_layers=1, d_ff=128),
        data=DataConfig(dir=str(shards), seq_len=32),
        train=TrainConfig(steps=steps, batch_size=8, eval_every=0, eval_windows=4, sample_every=0, save_every=0,
                          log_every=1, out=str(out), progress=False, precision="fp32"),
        optim=OptimConfig(lr=3e-3, warmup_steps=2),
        sample_tokens=0, export_hf=False,
    )


@pytest.mark.parametrize("objective", ["span", "denoise"])
def test_loss_drops_on_a_tiny_run(shards, tmp_path, objective):
    trainer = build_seq2seq(_cfg(shards, tmp_path / objective, steps=16), objective)
    summary = trainer.fit()
    losses = [json.loads(line)["loss"] for line in (tmp_path / objective / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 16
    assert sum(losses[-3:]) / 3 < losses[0] - 0.6, losses  # from ~log V = 6.4 down
    assert summary["val_loss"] < losses[0]
    assert trainer.plain.config.vocab_size == trainer.tokenizer.vocab_size + N_EXTRA


def test_batches_are_pure_in_the_step_and_use_extra_ids(shards, tmp_path):
    trainer = build_seq2seq(_cfg(shards, tmp_path / "run", steps=1), "span")
    a, b, c = trainer.batches(3), trainer.batches(3), trainer.batches(4)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["input_ids"][:, :8], c["input_ids"][:, :8])
    tok_v = trainer.tokenizer.vocab_size
    src = a["input_ids"][a["attention_mask"]]
    assert (src >= tok_v).any() and src.max() < tok_v + N_EXTRA  # sentinels sit above the tokenizer's ids
    loss, metrics = seq2seq_loss(trainer.plain, a)
    assert loss.item() > 0 and 0 <= metrics["token_acc"] <= 1


def test_collator_choices_are_checked(shards):
    from ember.tokenizer import load_tokenizer

    tok = load_tokenizer(shards / "tokenizer")
    with pytest.raises(ValueError, match="objective 'mlm'"):
        build_collator("mlm", tok, tok.vocab_size + N_EXTRA)
    with pytest.raises(ValueError, match="extra ids"):
        build_collator("span", tok, tok.vocab_size)
    denoise = build_collator("denoise", tok, tok.vocab_size + N_EXTRA)
    assert denoise.mask_id == tok.vocab_size + N_EXTRA - 1 and denoise.sentence_end_ids
