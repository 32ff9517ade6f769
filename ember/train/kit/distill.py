"""Knowledge-distillation divergences between a teacher's and a student's next-token
distributions, as pure functions of logits.

- forward KL, KL(p_T ‖ p_S): mode-covering, the classic soft-target loss (Hinton et al.
  2015, eq. 2 with the τ² factor of §2.1, which keeps the gradient's size when τ changes);
- reverse KL, KL(p_S ‖ p_T): mode-seeking (MiniLLM, Gu et al. 2024);
- generalized JSD(β) = β KL(p_T ‖ M) + (1 − β) KL(p_S ‖ M), M = β p_T + (1 − β) p_S (GKD,
  Agarwal et al. 2024, eq. 3). JSD(β)/β → forward KL as β → 0 and JSD(β)/(1 − β) → reverse
  KL as β → 1; as TRL's `generalized_jsd_loss`, β = 0 and β = 1 give those KLs exactly.

Every divergence is computed in fp32 on logits divided by τ, summed over the vocabulary,
averaged over the positions, and multiplied by τ².

>>> s, t = torch.zeros(1, 4), torch.tensor([[2.0, 0.0, 0.0, 0.0]])
>>> round(float(divergence(s, t, "fkl")), 4), round(float(divergence(s, s, "jsd")), 4)
(0.468, 0.0)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

DIVERGENCES = ("fkl", "rkl", "jsd")


def _kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) per row, from log-probabilities (N, V) → (N,); 0·log 0 counts as 0."""
    return (log_p.exp() * (log_p - log_q)).nan_to_num(nan=0.0).sum(-1)


def generalized_jsd(log_s: torch.Tensor, log_t: torch.Tensor, beta: float) -> torch.Tensor:
    """GKD's JSD(β) per row (N,), from student and teacher log-probs (N, V); β = 0 is forward
    KL(p_T ‖ p_S), β = 1 reverse KL(p_S ‖ p_T).

    >>> p = torch.log(torch.tensor([[0.5, 0.5]])); q = torch.log(torch.tensor([[0.9, 0.1]]))
    >>> round(float(generalized_jsd(p, q, 0.5)), 4)
    0.1017
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"JSD beta must be in [0, 1], got {beta}")
    if beta == 0.0:
        return _kl(log_t, log_s)
    if beta == 1.0:
        return _kl(log_s, log_t)
    # log M = logsumexp(log β + log p_T, log(1 − β) + log p_S), stable for tiny probabilities
    log_m = torch.logaddexp(log_t + math.log(beta), log_s + math.log(1.0 - beta))
    return beta * _kl(log_t, log_m) + (1.0 - beta) * _kl(log_s, log_m)


def divergence(student_logits: torch.Tensor, teacher_logits: torch.Tensor, kind: str = "fkl",
               temperature: float = 1.0, beta: float = 0.5) -> torch.Tensor:
    """τ² · mean over positions of D(p_T^τ, p_S^τ), logits (N, V) of the same vocabulary,
    p^τ = softmax(logits / τ). kind: fkl, rkl or jsd (with β). The teacher carries no
    gradient.

    >>> s, t = torch.randn(3, 5), torch.randn(3, 5)
    >>> bool(torch.isclose(divergence(s, t, "jsd", beta=0.0), divergence(s, t, "fkl")))
    True
    """
    if kind not in DIVERGENCES:
        raise ValueError(f"unknown divergence {kind!r}; valid: {list(DIVERGENCES)}")
    if not temperature > 0:
        raise ValueError(f"distillation temperature must be > 0, got {temperature}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} differ: the vocabularies must match")
    log_s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_t = F.log_softmax(teacher_logits.detach().float() / temperature, dim=-1)
    if kind == "fkl":
        per_row = _kl(log_t, log_s)
    elif kind == "rkl":
        per_row = _kl(log_s, log_t)
    else:
        per_row = generalized_jsd(log_s, log_t, beta)
    return temperature**2 * per_row.mean()


def top1_agreement(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> float:
    """Share of positions where the student's argmax is the teacher's.

    >>> top1_agreement(torch.tensor([[0.0, 1.0], [1.0, 0.0]]), torch.tensor([[0.0, 2.0], [0.0, 2.0]]))
    0.5
    """
    return float((student_logits.argmax(-1) == teacher_logits.argmax(-1)).float().mean())
