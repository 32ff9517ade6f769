"""The learning-rate schedule: a warmup that outlasts the run is announced, once."""

import pytest
import torch

from ember.model import ModelConfig, Transformer
from ember.train.loop import TrainConfig, Trainer
from ember.train.losses import lm_loss
from ember.train.optim import OptimConfig, lr_at, warn_long_warmup


@pytest.mark.parametrize("warmup, steps, warns", [(50, 20, True), (20, 20, True), (19, 20, False), (0, 1, False)])
def test_warmup_as_long_as_the_run_warns(warmup, steps, warns, capsys):
    cfg = OptimConfig(lr=1.0, warmup_steps=warmup)
    msg = warn_long_warmup(cfg, steps)
    assert (msg is not None) == warns
    assert capsys.readouterr().err == (msg + "\n" if warns else "")
    if warns:
        peak = lr_at(steps - 1, steps, cfg)
        assert f"optim.warmup_steps {warmup} >= the run's {steps} steps" in msg and f"peaks at {peak:.4g}" in msg


def test_trainer_warns_once_when_warmup_outlasts_the_run(tmp_path, capsys):
    mcfg = ModelConfig.tiny(vocab_size=32, max_seq_len=8)
    torch.manual_seed(0)
    ids = torch.randint(0, 32, (2, 9))
    cfg = TrainConfig(steps=3, batch_size=2, eval_every=0, sample_every=0, save_every=0, log_every=1,
                      out=str(tmp_path), progress=False, precision="fp32")
    Trainer(Transformer(mcfg), cfg, OptimConfig(warmup_steps=5), lm_loss, lambda step: (ids[:, :-1], ids[:, 1:]),
            {}).fit()
    assert capsys.readouterr().err.count("optim.warmup_steps 5 >= the run's 3 steps") == 1
