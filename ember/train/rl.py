"""RL losses as pure functions: PPO for RLHF, and GRPO with the DAPO refinements.

PPO (Schulman et al. 2017) in the RLHF recipe of Ouyang et al. 2022: per-token rewards are
−β·KL(π‖ref) plus the reward-model score at the last response token; GAE (Schulman et al.
2016) turns them into advantages; a clipped policy loss and a clipped value loss train actor
and critic. GRPO (Shao et al. 2024, DeepSeekMath) drops the critic: the advantage of each
sampled answer is its reward standardised within its group of answers to the same prompt.

All per-token tensors are (B, T) over response positions, with mask (B, T) 1 on real tokens
and 0 on padding; masked positions never contribute. Rollout quantities (old_logp, ref_logp,
rewards, advantages, returns) are constants: the functions that produce them detach.
"""

from __future__ import annotations

import torch


def _check_same_shape(**tensors: torch.Tensor) -> None:
    shapes = {k: tuple(v.shape) for k, v in tensors.items()}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"inputs must have one shape, got {shapes}")


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of x over entries where mask is 1 (over all entries, or along dim).

    An empty mask gives 0 rather than NaN.
    >>> masked_mean(torch.tensor([1.0, 2.0, 9.0]), torch.tensor([1, 1, 0]))
    tensor(1.5000)
    """
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1e-8)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1e-8)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """(x − mean) / std over the masked entries, as TRL's masked_whiten (unbiased variance).

    shift_mean=False adds the mean back (TRL whitens rewards this way: rescaled, not
    centred). Deviation from TRL: padding positions come out 0 instead of arbitrary values.
    >>> masked_whiten(torch.tensor([1.0, 3.0, 100.0]), torch.tensor([1, 1, 0]))
    tensor([-0.7071,  0.7071,  0.0000])
    """
    m = mask.to(x.dtype)
    n = m.sum()
    if n < 2:
        raise ValueError(f"masked_whiten needs at least 2 masked entries, got {int(n)}")
    mean = masked_mean(x, m)
    var = masked_mean((x - mean) ** 2, m) * n / (n - 1)  # Bessel's correction, as TRL
    out = (x - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        out = out + mean
    return out * m


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, kind: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL(π‖ref) from samples of π (Schulman, "Approximating KL
    divergence", 2020), with log r = ref_logp − logp:

        k1 = −log r = logp − ref          unbiased, high variance, can be negative
        k2 = ½ (log r)²                    biased, low variance, ≥ 0
        k3 = (r − 1) − log r               unbiased, low variance, ≥ 0 (GRPO eq. 4)

    >>> kl_penalty(torch.tensor([-1.0]), torch.tensor([-2.0]), "k2")
    tensor([0.5000])
    """
    _check_same_shape(logp=logp, ref_logp=ref_logp)
    log_r = ref_logp - logp
    if kind == "k1":
        return -log_r
    if kind == "k2":
        return 0.5 * log_r**2
    if kind == "k3":
        return torch.expm1(log_r) - log_r  # expm1: exact near r = 1, where the terms cancel
    raise ValueError(f"unknown KL estimator kind {kind!r}; valid: k1, k2, k3")


def _last_index(mask: torch.Tensor) -> torch.Tensor:
    if not mask.any(-1).all():
        raise ValueError("every row of mask needs at least one real token")
    T = mask.shape[-1]
    return T - 1 - mask.flip(-1).float().argmax(-1)  # (B,) first 1 from the right


def token_rewards(
    score: torch.Tensor,
    logp: torch.Tensor,
    ref_logp: torch.Tensor,
    mask: torch.Tensor,
    beta: float,
    kind: str = "k1",
) -> torch.Tensor:
    """RLHF per-token reward (Ouyang et al. 2022, eq. 2; Ziegler et al. 2019):
    −β·KL_t(π‖ref) at every response token, plus the reward-model score (B,) at the last
    real token of each row. Returns (B, T), detached, 0 on padding.
    >>> r = token_rewards(torch.tensor([1.0]), torch.zeros(1, 3), torch.zeros(1, 3),
    ...                   torch.tensor([[1, 1, 0]]), beta=0.1)
    >>> r
    tensor([[0., 1., 0.]])
    """
    _check_same_shape(logp=logp, ref_logp=ref_logp, mask=mask)
    if score.shape != logp.shape[:1]:
        raise ValueError(f"score {tuple(score.shape)} must be (B,) for logp {tuple(logp.shape)}")
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    m = mask.float()
    rewards = -beta * kl_penalty(logp.detach().float(), ref_logp.detach().float(), kind) * m
    rows = torch.arange(len(score), device=score.device)
    rewards[rows, _last_index(mask)] += score.detach().float()
    return rewards


@torch.no_grad()
def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized Advantage Estimation, Schulman et al. 2016, eqs. 11–16:

        δ_t = r_t + γ·V_{t+1} − V_t,    A_t = Σ_l (γλ)^l δ_{t+l},    R_t = A_t + V_t.

    The episode ends at the last real token: V and A past it are 0 (no bootstrap), so mask
    must be one contiguous run of 1s per row followed by padding. Returns (advantages,
    returns), (B, T), 0 on padding. λ = 1 makes R the reward-to-go; λ = 0 makes A the TD
    error:
    >>> a, R = gae(torch.tensor([[0.0, 0.0, 1.0]]), torch.zeros(1, 3), torch.ones(1, 3), lam=1.0)
    >>> R
    tensor([[1., 1., 1.]])
    """
    _check_same_shape(rewards=rewards, values=values, mask=mask)
    r, v, m = rewards.float(), values.float(), mask.float()
    B, T = r.shape
    adv = torch.zeros_like(r)
    next_value = torch.zeros(B, dtype=r.dtype, device=r.device)
    next_adv = torch.zeros_like(next_value)
    for t in reversed(range(T)):
        delta = r[:, t] + gamma * next_value - v[:, t]
        next_adv = (delta + gamma * lam * next_adv) * m[:, t]
        adv[:, t] = next_adv
        next_value = v[:, t] * m[:, t]  # 0 past the end: no bootstrap beyond the last token
    return adv, (adv + v) * m


def ppo_policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip: float = 0.2,
) -> tuple[torch.Tensor, dict]:
    """PPO clipped surrogate, Schulman et al. 2017, eq. 7, as a loss to minimise:

        −E_t[min(ρ_t·A_t, clip(ρ_t, 1 − ε, 1 + ε)·A_t)],   ρ_t = exp(logp − old_logp),

    the mean over real tokens of the batch. All inputs (B, T). metrics: clipfrac (share of
    tokens where the clipped term is the one taken), approx_kl (½·E[(logp − old)²], as TRL),
    ratio (mean ρ). On the first step ρ = 1 and the loss is −mean(A):
    >>> z = torch.zeros(1, 2)
    >>> ppo_policy_loss(z, z, torch.tensor([[1.0, 3.0]]), torch.ones(1, 2))[0]
    tensor(-2.)
    """
    _check_same_shape(logp=logp, old_logp=old_logp, advantages=advantages, mask=mask)
    if clip <= 0:
        raise ValueError(f"clip must be > 0, got {clip}")
    log_ratio = logp.float() - old_logp.float().detach()
    ratio = torch.exp(log_ratio)
    adv = advantages.float().detach()
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1 - clip, 1 + clip)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)  # max of negatives = −min
    metrics = {
        "clipfrac": masked_mean((clipped > unclipped).float(), mask).detach(),
        "approx_kl": masked_mean(0.5 * log_ratio.detach() ** 2, mask),
        "ratio": masked_mean(ratio.detach(), mask),
    }
    return loss, metrics


def ppo_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip: float = 0.2,
) -> tuple[torch.Tensor, dict]:
    """Clipped value loss of PPO's reference code (baselines ppo2; TRL's PPOTrainer):

        ½·E_t[max((V_t − R_t)², (clip(V_t, V_old ± ε) − R_t)²)].

    Not in the PPO paper, which uses the plain (V − R)²; the clip keeps the critic near
    the rollout's values. metrics: vf_clipfrac.
    >>> v = torch.tensor([[1.0]])
    >>> ppo_value_loss(v, v, torch.tensor([[3.0]]), torch.ones(1, 1))[0]
    tensor(2.)
    """
    _check_same_shape(values=values, old_values=old_values, returns=returns, mask=mask)
    if clip <= 0:
        raise ValueError(f"clip must be > 0, got {clip}")
    v, old, R = values.float(), old_values.float().detach(), returns.float().detach()
    v_clipped = old + torch.clamp(v - old, -clip, clip)
    loss1, loss2 = (v - R) ** 2, (v_clipped - R) ** 2
    loss = 0.5 * masked_mean(torch.maximum(loss1, loss2), mask)
    return loss, {"vf_clipfrac": masked_mean((loss2 > loss1).float(), mask).detach()}


def group_advantages(
    rewards: torch.Tensor, group_size: int, eps: float = 1e-4, scale: bool = True
) -> torch.Tensor:
    """GRPO outcome-supervision advantage, Shao et al. 2024, §4.1.2:
    Â_i = (r_i − mean(r_group)) / (std(r_group) + eps), for rewards (G·n,) laid out as
    consecutive groups of n = group_size answers to one prompt; std is unbiased, as TRL.
    scale=False gives r_i − mean only — Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-
    Like Training"), which drops the std because it up-weights near-uniform groups.
    >>> group_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0]), 4, scale=False)
    tensor([ 0.7500, -0.2500, -0.2500, -0.2500])
    """
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be (G*n,), got shape {tuple(rewards.shape)}")
    if group_size < 2 or rewards.numel() % group_size:
        raise ValueError(f"group_size must be >= 2 and divide {rewards.numel()} rewards, got {group_size}")
    r = rewards.detach().float().view(-1, group_size)  # (G, n)
    adv = r - r.mean(-1, keepdim=True)
    if scale:
        adv = adv / (r.std(-1, keepdim=True) + eps)
    return adv.view(-1)


def grpo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    ref_logp: torch.Tensor | None = None,
    beta: float = 0.0,
    token_norm: str = "dapo",
) -> tuple[torch.Tensor, dict]:
    """GRPO objective, Shao et al. 2024, eq. 3, as a loss to minimise, per token:

        −min(ρ_t·Â, clip(ρ_t, 1 − ε_low, 1 + ε_high)·Â) + β·k3_t(π‖ref),

    with the sequence advantage Â (B,) broadcast over its tokens and k3 the estimator of
    eq. 4 (`kl_penalty(kind="k3")`). clip_high > clip_low is DAPO's clip-higher (Yu et al.
    2025, §3.1). token_norm picks the average:
    - "sequence": mean over each sequence's tokens, then over sequences (GRPO eq. 3);
    - "dapo": sum over all tokens / number of tokens in the batch (DAPO §3.3, the 1/Σ|o_i| of
      the J_DAPO objective), so each token of a long answer weighs as much as a short one's.
    Deviation: β = 0 by default (DAPO and Dr. GRPO drop the KL term; GRPO used 0.04).
    On the first step ρ = 1 and, with beta = 0, the loss is −(token-weighted) mean of Â:
    >>> z = torch.zeros(2, 3)
    >>> grpo_loss(z, z, torch.tensor([1.0, -1.0]), torch.tensor([[1, 0, 0], [1, 1, 1]]))[0]
    tensor(0.5000)
    """
    _check_same_shape(logp=logp, old_logp=old_logp, mask=mask)
    if advantages.shape != logp.shape[:1]:
        raise ValueError(f"advantages {tuple(advantages.shape)} must be (B,) for logp {tuple(logp.shape)}")
    if clip_low <= 0 or clip_high <= 0:
        raise ValueError(f"clip_low and clip_high must be > 0, got {clip_low}, {clip_high}")
    if token_norm not in ("dapo", "sequence"):
        raise ValueError(f"unknown token_norm {token_norm!r}; valid: dapo, sequence")
    if beta < 0 or (beta > 0 and ref_logp is None):
        raise ValueError(f"beta must be >= 0 and needs ref_logp when > 0, got beta={beta}")
    m = mask.float()
    log_ratio = logp.float() - old_logp.float().detach()
    ratio = torch.exp(log_ratio)
    adv = advantages.float().detach()[:, None]  # (B, 1), broadcast over T
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1 - clip_low, 1 + clip_high)
    per_token = torch.maximum(unclipped, clipped)  # (B, T)
    metrics = {"clipfrac": masked_mean((clipped > unclipped).float(), m).detach()}
    if ref_logp is not None:
        kl = kl_penalty(logp.float(), ref_logp.float().detach(), "k3")
        metrics["kl"] = masked_mean(kl.detach(), m)
        if beta > 0:
            per_token = per_token + beta * kl
    if token_norm == "dapo":
        loss = masked_mean(per_token, m)
    else:
        if not m.any(-1).all():
            raise ValueError("token_norm='sequence' needs at least one real token per row")
        loss = masked_mean(per_token, m, dim=-1).mean()
    metrics["ratio"] = masked_mean(ratio.detach(), m)
    return loss, metrics
