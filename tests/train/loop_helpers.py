"""What the loop tests share: seeded random token batches and a loss that draws from the
global RNG every step (so a resume that lost the RNG state diverges)."""

import torch

from ember.model import ModelConfig
from ember.train.losses import cross_entropy

MCFG = ModelConfig.tiny(vocab_size=64, max_seq_len=32)


def random_batches(step, B=4, T=16):
    g = torch.Generator().manual_seed(1000 + step)
    ids = torch.randint(0, MCFG.vocab_size, (B, T + 1), generator=g)
    return ids[:, :-1], ids[:, 1:]


def noisy_loss(model, batch):
    x, y = batch
    keep = torch.rand(y.shape) < 0.9
    return cross_entropy(model(x), torch.where(keep, y, -100)), {"kept": keep.float().mean()}
