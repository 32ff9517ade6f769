"""Encoder-decoder pre-training (T5 span corruption, BART denoising) on the one loop through
`ember pretrain --objective span|denoise`, at tiny scale on the test shards: the loss drops,
batches are pure in the step and use the extra ids."""

import json

import pytest
import torch

from ember.cli import main
from ember.model import ModelConfig
from ember.model.seq2seq import EncoderDecoder
from ember.tokenizer import load_tokenizer
from ember.train.config import TrainConfig
from ember.train.kit.pretraining import (
    DataConfig,
    ModelOverrides,
    PretrainConfig,
    build_pretrain,
    load_run,
)
from ember.train.optim import OptimConfig
from ember.train.seq2seq import EXTRA_IDS, build_collator, build_seq2seq, seq2seq_loss

T = 32


def _trainer(shards, out, objective, steps):
    cfg = PretrainConfig(
        arch="tiny", objective=objective, model=ModelOverrides(n_layers=1, d_ff=128),
        data=DataConfig(dir=str(shards), seq_len=T),
        train=TrainConfig(steps=steps, batch_size=8, eval_every=0, eval_windows=4, sample_every=0, save_every=0,
                          log_every=1, out=str(out), progress=False, precision="fp32"),
        optim=OptimConfig(lr=3e-3, warmup_steps=2), sample_tokens=0, export_hf=False,
    )
    return build_pretrain(cfg)


def _metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("objective", ["span", "denoise"])
def test_loss_drops_on_a_tiny_run(shards, tmp_path, objective):
    trainer = _trainer(shards, tmp_path / objective, objective, steps=16)
    summary = trainer.fit()
    recs = _metrics(tmp_path / objective)
    losses = [r["loss"] for r in recs]
    assert len(losses) == 16
    assert sum(losses[-3:]) / 3 < losses[0] - 0.6, losses  # from ~log V = 6.2 down
    assert all(r["mfu"] > 0 for r in recs)
    assert summary["val_loss"] < losses[0] and 0 < summary["val_token_acc"] < 1
    assert isinstance(trainer.plain, EncoderDecoder)
    assert trainer.plain.config.vocab_size == trainer.tokenizer.vocab_size + EXTRA_IDS[objective]


def test_ember_pretrain_objective_span(shards, tmp_path):
    out = tmp_path / "run"
    args = ["pretrain", "--arch", "mini-t5", "--objective", "span", "--model.n_layers", "1", "--model.d_model", "64",
            "--model.d_ff", "128",
            "--data.dir", str(shards), "--data.seq_len", str(T), "--train.steps", "2", "--train.batch_size", "4",
            "--train.eval_windows", "4", "--train.out", str(out), "--train.progress", "false",
            "--train.precision", "fp32", "--sample_tokens", "0"]
    assert main(args) == 0
    assert "val_loss" in _metrics(out)[-1]
    assert not (out / "hf").exists()  # an encoder-decoder has no HF causal-LM export
    model, tok = load_run(out)
    assert isinstance(model, EncoderDecoder) and model.config.vocab_size == tok.vocab_size + EXTRA_IDS["span"]
    ids = torch.tensor([tok.encode("The assert statement")])
    assert model.generate(ids, 4, start_id=min(tok.eos_token_ids)).shape == (1, 4)


def test_span_batches_are_pure_and_use_the_extra_ids(shards, tmp_path):
    trainer = _trainer(shards, tmp_path / "run", "span", steps=1)
    a, b = trainer.batches(3), trainer.batches(3)
    assert all(torch.equal(a[k], b[k]) for k in a)
    v = trainer.tokenizer.vocab_size
    src = a["input_ids"][a["attention_mask"]]
    assert (src >= v).any() and src.max() < v + EXTRA_IDS["span"]  # sentinels sit above the tokenizer's ids
    loss, metrics = seq2seq_loss(trainer.plain, a)
    assert loss.item() > 0 and 0 <= metrics["token_acc"] <= 1


def test_bad_choices_are_value_errors(shards):
    tok = load_tokenizer(shards / "tokenizer")
    with pytest.raises(ValueError, match="objective 'mlm'"):
        build_collator("mlm", tok, tok.vocab_size + 100)
    with pytest.raises(ValueError, match="extra ids"):
        build_collator("span", tok, tok.vocab_size)
    with pytest.raises(ValueError, match="max_seq_len 32"):
        build_seq2seq("denoise", ModelConfig.tiny(max_seq_len=32), tok, T)
    with pytest.raises(ValueError, match="causal"):
        build_seq2seq("span", ModelConfig.tiny(causal=False), tok, T)
    denoise = build_collator("denoise", tok, tok.vocab_size + 1)
    assert denoise.mask_id == tok.vocab_size and denoise.sentence_end_ids
