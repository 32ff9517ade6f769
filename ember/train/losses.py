"""Losses as pure functions: tensors in, a scalar (and metrics) out.

Pre-training and SFT use next-token cross-entropy; the preference and RL losses of later
recipes live beside it, each citing its paper's equation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ember.data.sft import IGNORE

__all__ = ["IGNORE", "bradley_terry_loss", "cross_entropy", "lm_loss"]



def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = IGNORE) -> torch.Tensor:
    """Mean next-token negative log-likelihood over targets ≠ ignore_index, in fp32.

    logits (B, T, V), targets (B, T) → scalar. A uniform model over V scores log V:
    >>> round(cross_entropy(torch.zeros(1, 3, 8), torch.tensor([[1, 2, 3]])).item(), 4)
    2.0794
    """
    B, T, V = logits.shape
    if targets.shape != (B, T):
        raise ValueError(f"targets {tuple(targets.shape)} do not match logits {tuple(logits.shape)}")
    # fp32: under bf16 autocast the logits are bf16, whose 8-bit mantissa makes log-softmax
    # over 50k entries visibly wrong.
    return F.cross_entropy(logits.float().view(B * T, V), targets.reshape(B * T), ignore_index=ignore_index)


def lm_loss(model, batch) -> tuple[torch.Tensor, dict]:
    """The pre-training loss_fn of the loop: batch = (x, y) token windows."""
    x, y = batch
    loss = cross_entropy(model(x), y)
    return loss, {}


def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor,
                       margin: torch.Tensor | float = 0.0) -> tuple[torch.Tensor, dict]:
    """Mean −log σ(r_c − r_r − margin) over pairs: the Bradley–Terry (1952) likelihood of the
    human choice, InstructGPT (Ouyang et al. 2022) eq. 1; `margin` (scalar or (B,)) is Llama 2
    (Touvron et al. 2023) §3.2.2's margin for pairs rated clearly better. In fp32.

    Metrics: accuracy (share of pairs with r_c > r_r), margin (mean r_c − r_r), detached.

    >>> round(bradley_terry_loss(torch.tensor([1.0]), torch.tensor([0.0]))[0].item(), 6)
    0.313262
    """
    if r_chosen.shape != r_rejected.shape:
        raise ValueError(f"r_chosen {tuple(r_chosen.shape)} and r_rejected {tuple(r_rejected.shape)} differ")
    diff = r_chosen.float() - r_rejected.float()  # (B,)
    loss = -F.logsigmoid(diff - margin).mean()
    with torch.no_grad():
        metrics = {"accuracy": (diff > 0).float().mean(), "margin": diff.mean()}
    return loss, metrics
