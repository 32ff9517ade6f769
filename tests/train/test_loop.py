"""The training loop: overfits one batch, resumes bit for bit, refuses a foreign checkpoint."""

import json

import pytest
import torch
from loop_helpers import MCFG
from loop_helpers import noisy_loss as _noisy_loss
from loop_helpers import random_batches as _batches

from ember.model import ModelConfig, Transformer
from ember.train.checkpoint import latest_checkpoint
from ember.train.loop import TrainConfig, Trainer, split_micro
from ember.train.losses import cross_entropy, lm_loss
from ember.train.optim import OptimConfig


def _trainer(tmp_path, steps=12, interrupt_at=None, resume=False, mcfg=MCFG, **kw):
    def batches(step):
        if interrupt_at is not None and step == interrupt_at:
            raise RuntimeError("crash")  # the run dies mid-way, after its last checkpoint
        return _batches(step)

    torch.manual_seed(0)
    cfg = TrainConfig(steps=steps, batch_size=4, micro_batch_size=2, eval_every=0, sample_every=0,
                      save_every=4, log_every=1, out=str(tmp_path), resume=resume, progress=False,
                      precision="fp32", **kw)
    return Trainer(Transformer(mcfg), cfg, OptimConfig(lr=1e-2, warmup_steps=3), _noisy_loss, batches,
                   run_config={"model": mcfg.to_dict()}, tokens_per_step=64)


def _losses(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [(r["step"], r["loss"], r["grad_norm"]) for r in map(json.loads, lines)]


def test_resumed_run_matches_uninterrupted_bit_for_bit(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    full = _trainer(a)
    full.fit()
    with pytest.raises(RuntimeError, match="crash"):
        _trainer(b, interrupt_at=6).fit()
    assert latest_checkpoint(b).name == "step_000004"
    resumed = _trainer(b, resume=True)
    resumed.fit()
    assert resumed.start_step == 4
    assert _losses(a) == _losses(b)  # the same floats, step by step, incl. the lost steps 5-6
    for (k, va), vb in zip(full.plain.state_dict().items(), resumed.plain.state_dict().values()):
        assert torch.equal(va, vb), k
    assert (b / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (b / "metrics.csv").read_text().splitlines()[0].startswith("step,loss")


def test_resume_with_another_model_config_is_a_clear_error(tmp_path):
    _trainer(tmp_path, steps=4).fit()
    other = ModelConfig.tiny(vocab_size=64, max_seq_len=32, n_layers=3)
    with pytest.raises(ValueError, match="n_layers: 2 in the checkpoint vs 3"):
        _trainer(tmp_path, steps=8, resume=True, mcfg=other).fit()


def test_tiny_model_overfits_one_batch(tmp_path):
    batch = _batches(0)
    torch.manual_seed(0)
    cfg = TrainConfig(steps=150, batch_size=4, eval_every=0, sample_every=0, save_every=0,
                      out=str(tmp_path), progress=False, precision="fp32")
    trainer = Trainer(Transformer(MCFG), cfg, OptimConfig(lr=1e-2, warmup_steps=10, weight_decay=0.0),
                      lm_loss, lambda step: batch, run_config={})
    first = cross_entropy(trainer.plain(batch[0]), batch[1]).item()
    trainer.fit()
    last = cross_entropy(trainer.plain(batch[0]), batch[1]).item()
    assert first > 3.5 and last < 0.05, (first, last)


def test_gradient_accumulation_equals_one_big_batch(tmp_path):
    runs = []
    for micro in (4, 1):
        torch.manual_seed(0)
        cfg = TrainConfig(steps=3, batch_size=4, micro_batch_size=micro, eval_every=0, save_every=0,
                          sample_every=0, out=str(tmp_path / str(micro)), progress=False, precision="fp32")
        t = Trainer(Transformer(MCFG), cfg, OptimConfig(warmup_steps=0), lm_loss, _batches, run_config={})
        t.fit()
        runs.append(t.plain.state_dict())
    for k in runs[0]:
        # AdamW divides by sqrt(v): near-zero gradients turn summation-order noise into ~1e-5
        torch.testing.assert_close(runs[0][k], runs[1][k], rtol=1e-4, atol=2e-5)


def test_split_micro_shapes_and_bad_config():
    x = torch.arange(12).view(6, 2)
    parts = split_micro((x, x + 1), 2)
    assert len(parts) == 3 and torch.equal(parts[1][0], x[2:4])
    assert [p["a"].shape[0] for p in split_micro({"a": x}, 4)] == [4, 2]
    with pytest.raises(ValueError, match="not divisible by 2 processes"):
        TrainConfig(batch_size=3).micro_batches(2)
    with pytest.raises(ValueError, match="steps"):
        TrainConfig(steps=0)
