"""Preference losses as pure functions: DPO and its family (cDPO, IPO, SimPO, ORPO, KTO).

Every loss takes per-sequence log-probabilities (B,) — one entry per pair (or per example for
KTO) — and returns (scalar loss, metrics). The model forward lives in the kit; here is only
the arithmetic, each function citing its paper's equation. Sums vs averages matter:

- DPO, cDPO, KTO take SUMMED log-probs, log π(y|x) = Σ_t log π(y_t|…) (`average=False`).
- SimPO and ORPO take AVERAGE log-probs per response token (`average=True`), as their papers
  define them.
- IPO is written for whatever you pass; TRL feeds it averages (see `ipo_loss`).

ember.train.kit.sequence_logprobs gives the sums and token counts (sum / count is the
average).
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F


def _check_same_shape(**tensors: torch.Tensor) -> None:
    shapes = {k: tuple(v.shape) for k, v in tensors.items()}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"inputs must have one shape, got {shapes}")


def _check_positive(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")


def _reward_metrics(chosen: torch.Tensor, rejected: torch.Tensor) -> dict:
    chosen, rejected = chosen.detach(), rejected.detach()
    margin = chosen - rejected
    return {
        "rewards_chosen": chosen.mean(),
        "rewards_rejected": rejected.mean(),
        "reward_margin": margin.mean(),
        "reward_accuracy": (margin > 0).float().mean(),
    }


def dpo_loss(
    pol_chosen: torch.Tensor,
    pol_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, dict]:
    """DPO, Rafailov et al. 2023, eq. 7: −log σ(β·h), h = (πc − rc) − (πr − rr).

    With label_smoothing ε > 0 this is conservative DPO (cDPO, Mitchell 2023, "A note on DPO
    with noisy preferences"): each label is flipped with probability ε, so the loss is the
    expected one, −(1−ε)·log σ(βh) − ε·log σ(−βh) (TRL's "sigmoid" loss with label_smoothing).
    All inputs (B,) summed log-probs; the loss is the mean over pairs. The implicit rewards
    β(π − ref) go in metrics. When policy equals reference h = 0 and the loss is log 2:
    >>> z = torch.tensor([-5.0, -7.0])
    >>> round(dpo_loss(z, z, z, z)[0].item(), 4)
    0.6931
    """
    _check_same_shape(
        pol_chosen=pol_chosen, pol_rejected=pol_rejected, ref_chosen=ref_chosen, ref_rejected=ref_rejected
    )
    _check_positive("beta", beta)
    if not 0.0 <= label_smoothing <= 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5], got {label_smoothing}")
    chosen = beta * (pol_chosen.float() - ref_chosen.float())  # (B,) implicit reward
    rejected = beta * (pol_rejected.float() - ref_rejected.float())
    logits = chosen - rejected  # β·h
    losses = -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)
    return losses.mean(), _reward_metrics(chosen, rejected)


def ipo_loss(
    pol_chosen: torch.Tensor,
    pol_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float = 0.1,
) -> tuple[torch.Tensor, dict]:
    """IPO, Azar et al. 2023 ("A general theoretical paradigm…"), eq. 17: (h − 1/(2β))².

    h = (πc − rc) − (πr − rr) as in DPO; β here is the paper's τ (regularisation). The square
    regresses the log-ratio margin to the fixed target 1/(2β) instead of pushing it to ∞.
    Deviation note: the paper writes h with sequence log-probs; TRL's `loss_type="ipo"` feeds
    AVERAGE per-token log-probs (length-normalised, else long pairs dominate the square). This
    function is agnostic — pass per-token averages to match TRL (our
    recipe's choice), or sums to match the paper. At h = 0 the loss is (1/(2β))²:
    >>> z = torch.tensor([-1.0])
    >>> round(ipo_loss(z, z, z, z, beta=0.1)[0].item(), 4)
    25.0
    """
    _check_same_shape(
        pol_chosen=pol_chosen, pol_rejected=pol_rejected, ref_chosen=ref_chosen, ref_rejected=ref_rejected
    )
    _check_positive("beta", beta)
    chosen = pol_chosen.float() - ref_chosen.float()
    rejected = pol_rejected.float() - ref_rejected.float()
    h = chosen - rejected
    losses = (h - 1 / (2 * beta)) ** 2
    return losses.mean(), _reward_metrics(beta * chosen, beta * rejected)


def simpo_loss(
    pol_chosen_avg: torch.Tensor, pol_rejected_avg: torch.Tensor, beta: float = 2.0, gamma: float = 0.5
) -> tuple[torch.Tensor, dict]:
    """SimPO, Meng et al. 2024, eq. 6: −log σ(β·avg_c − β·avg_r − γ).

    Reference-free and length-normalised: avg_* are AVERAGE per-token log-probs (B,) of the
    policy (sum / count from the kit's `sequence_logprobs`); γ is the target reward margin. Equal
    averages give −log σ(−γ) = log(1 + e^0.5) at γ = 0.5:
    >>> z = torch.tensor([-1.0])
    >>> round(simpo_loss(z, z)[0].item(), 4)
    0.9741
    """
    _check_same_shape(pol_chosen_avg=pol_chosen_avg, pol_rejected_avg=pol_rejected_avg)
    _check_positive("beta", beta)
    chosen = beta * pol_chosen_avg.float()
    rejected = beta * pol_rejected_avg.float()
    losses = -F.logsigmoid(chosen - rejected - gamma)
    return losses.mean(), _reward_metrics(chosen, rejected)


def _log_odds(avg_logp: torch.Tensor) -> torch.Tensor:
    # log(p / (1 − p)) with p = exp(avg): avg − log(1 − e^avg). log(−expm1(avg)) is the
    # accurate form of log1p(−exp(avg)) when avg is near 0 (p near 1).
    return avg_logp - torch.log(-torch.expm1(avg_logp))


def orpo_loss(
    pol_chosen_avg: torch.Tensor, pol_rejected_avg: torch.Tensor, nll_chosen: torch.Tensor, lam: float = 0.1
) -> tuple[torch.Tensor, dict]:
    """ORPO, Hong et al. 2024, eqs. 6–7: L_SFT + λ·(−log σ(log odds_c − log odds_r)).

    odds(y) = p/(1 − p) with p = exp(avg log-prob per token) — avg_* are AVERAGE per-token
    log-probs (B,), which must be < 0. nll_chosen is the SFT loss on the chosen responses
    (scalar, or (B,) averaged here). Reference-free, so no second model. Equal chosen and
    rejected make the odds term log 2, so the loss is nll + λ·log 2:
    >>> z = torch.tensor([-1.0])
    >>> round(orpo_loss(z, z, torch.tensor(2.0), lam=0.1)[0].item(), 4)
    2.0693
    """
    _check_same_shape(pol_chosen_avg=pol_chosen_avg, pol_rejected_avg=pol_rejected_avg)
    if lam < 0:
        raise ValueError(f"lam must be >= 0, got {lam}")
    if (pol_chosen_avg >= 0).any() or (pol_rejected_avg >= 0).any():
        raise ValueError("average log-probs must be < 0 (probability < 1) for the odds to be finite")
    log_odds = _log_odds(pol_chosen_avg.float()) - _log_odds(pol_rejected_avg.float())  # (B,)
    ratio_loss = -F.logsigmoid(log_odds)  # eq. 7, L_OR
    nll = nll_chosen.float().mean()
    loss = nll + lam * ratio_loss.mean()  # eq. 6
    metrics = {
        "nll_chosen": nll.detach(),
        "odds_ratio_loss": ratio_loss.detach().mean(),
        "log_odds_ratio": log_odds.detach().mean(),
        **_reward_metrics(lam * pol_chosen_avg.float(), lam * pol_rejected_avg.float()),
    }
    return loss, metrics


def kto_loss(
    pol_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    is_desirable: torch.Tensor,
    kl_ref: torch.Tensor | float,
    beta: float = 0.1,
    lambda_d: float = 1.0,
    lambda_u: float = 1.0,
) -> tuple[torch.Tensor, dict]:
    """KTO, Ethayarajh et al. 2024, eq. 8: E[λ_y − v(x, y)], with r = π − ref and

        v = λ_D·σ(β(r − z0))  if y is desirable,   λ_U·σ(β(z0 − r))  if undesirable.

    So each example costs λ_D(1 − σ(β(r − z0))) or λ_U(1 − σ(β(z0 − r))); the loss is the mean
    over the batch. pol_logps, ref_logps (B,) summed log-probs of unpaired examples;
    is_desirable (B,) bool. kl_ref is the reference point z0, an estimate of KL(π‖ref) (the
    paper uses mismatched (x, y') pairs); a (N,) tensor is averaged. As in the paper and TRL
    z0 is detached (no gradient flows through the reference point) and clamped at ≥ 0.
    When r = z0 every example costs λ·0.5:
    >>> z = torch.tensor([-3.0, -4.0])
    >>> kto_loss(z, z, torch.tensor([True, False]), 0.0)[0].item()
    0.5
    """
    _check_same_shape(pol_logps=pol_logps, ref_logps=ref_logps, is_desirable=is_desirable)
    _check_positive("beta", beta)
    if lambda_d < 0 or lambda_u < 0:
        raise ValueError(f"lambda_d and lambda_u must be >= 0, got {lambda_d}, {lambda_u}")
    if is_desirable.dtype != torch.bool:
        raise ValueError(f"is_desirable must be a bool tensor, got {is_desirable.dtype}")
    z0 = torch.as_tensor(kl_ref, dtype=torch.float32, device=pol_logps.device).detach().mean().clamp(min=0)
    r = pol_logps.float() - ref_logps.float()  # (B,) log-ratio, the implicit reward / β
    desirable = lambda_d * (1 - torch.sigmoid(beta * (r - z0)))
    undesirable = lambda_u * (1 - torch.sigmoid(beta * (z0 - r)))
    losses = torch.where(is_desirable, desirable, undesirable)
    rewards = beta * r.detach()
    nan = torch.tensor(float("nan"), device=r.device)
    metrics = {
        "kl_ref": z0,
        "rewards_desirable": rewards[is_desirable].mean() if is_desirable.any() else nan,
        "rewards_undesirable": rewards[~is_desirable].mean() if (~is_desirable).any() else nan,
    }
    return losses.mean(), metrics


LOSSES = {"dpo": dpo_loss, "cdpo": dpo_loss, "ipo": ipo_loss, "simpo": simpo_loss, "orpo": orpo_loss, "kto": kto_loss}


def preference_loss(loss_type: str, **tensors) -> tuple[torch.Tensor, dict]:
    """Dispatch to the loss named loss_type; keyword arguments pass through unchanged.

    "cdpo" is `dpo_loss` with label_smoothing, which must then be given and > 0.
    >>> z = torch.tensor([-2.0])
    >>> round(preference_loss("dpo", pol_chosen=z, pol_rejected=z, ref_chosen=z, ref_rejected=z)[0].item(), 4)
    0.6931
    """
    if loss_type not in LOSSES:
        raise ValueError(f"unknown loss_type {loss_type!r}; valid: {', '.join(LOSSES)}")
    if loss_type == "cdpo" and not tensors.get("label_smoothing", 0.0) > 0:
        raise ValueError(f"cdpo needs label_smoothing > 0, got {tensors.get('label_smoothing')}")
    fn = LOSSES[loss_type]
    params = inspect.signature(fn).parameters
    unknown = sorted(set(tensors) - set(params))
    if unknown:
        raise ValueError(f"{loss_type} does not take {', '.join(unknown)}; it takes {', '.join(params)}")
    return fn(**tensors)
