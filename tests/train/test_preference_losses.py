"""Preference losses against values computed by hand (each derivation in the comment)."""

import math

import pytest
import torch

from ember.train.preference import (
    dpo_loss,
    ipo_loss,
    kto_loss,
    orpo_loss,
    preference_loss,
    simpo_loss,
)

LOG2 = math.log(2)


def t(*xs, grad=False):
    return torch.tensor(xs, dtype=torch.float32, requires_grad=grad)


def close(a, b, tol=1e-5):
    return abs(float(torch.as_tensor(a).detach()) - b) < tol


# --- DPO / cDPO ----------------------------------------------------------------------


def test_dpo_is_log2_when_policy_equals_reference():
    torch.manual_seed(0)
    c, r = torch.randn(5) * 10, torch.randn(5) * 10
    loss, m = dpo_loss(c, r, c, r, beta=0.3)
    assert close(loss, LOG2)
    assert close(m["reward_margin"], 0.0) and close(m["reward_accuracy"], 0.0)


def test_dpo_hand_value():
    # h = (πc − rc) − (πr − rr) = (−10 − −11) − (−12 − −11) = 1 − (−1) = 2; β = 0.1
    # loss = −log σ(0.2) = log(1 + e^−0.2) = 0.5981388693815918
    loss, m = dpo_loss(t(-10.0), t(-12.0), t(-11.0), t(-11.0), beta=0.1)
    assert close(loss, 0.5981388693815918)
    assert close(m["rewards_chosen"], 0.1) and close(m["rewards_rejected"], -0.1)
    assert close(m["reward_margin"], 0.2) and m["reward_accuracy"] == 1.0


def test_cdpo_hand_value():
    # −(1−ε) log σ(x) − ε log σ(−x) = −log σ(x) + ε·x   (since log σ(x) − log σ(−x) = x)
    # x = βh = 0.2, ε = 0.25: 0.5981388693815918 + 0.05 = 0.6481388693815918
    loss, _ = dpo_loss(t(-10.0), t(-12.0), t(-11.0), t(-11.0), beta=0.1, label_smoothing=0.25)
    assert close(loss, 0.6481388693815918)
    # ε = 0.5: log(e^{x/2} + e^{−x/2}) = log 2 + log cosh(x/2) ≥ log 2, equal only at x = 0
    loss, _ = dpo_loss(t(-10.0), t(-12.0), t(-11.0), t(-11.0), beta=0.1, label_smoothing=0.5)
    assert close(loss, LOG2 + math.log(math.cosh(0.1)))
    via = preference_loss(
        "cdpo", pol_chosen=t(-10.0), pol_rejected=t(-12.0), ref_chosen=t(-11.0),
        ref_rejected=t(-11.0), beta=0.1, label_smoothing=0.25,
    )[0]
    assert close(via, 0.6481388693815918)


def test_dpo_gradient_sign():
    c, r = t(-10.0, grad=True), t(-12.0, grad=True)
    loss, _ = dpo_loss(c, r, t(-11.0), t(-11.0))
    loss.backward()
    # raising the chosen log-prob lowers the loss; raising the rejected one raises it;
    # d/dπc = −β·σ(−βh) = −0.1·σ(−0.2)
    assert c.grad.item() < 0 < r.grad.item()
    assert close(c.grad, -0.1 / (1 + math.exp(0.2)))


def test_dpo_bad_values():
    z = t(-1.0)
    with pytest.raises(ValueError, match="beta"):
        dpo_loss(z, z, z, z, beta=0.0)
    with pytest.raises(ValueError, match="label_smoothing"):
        dpo_loss(z, z, z, z, label_smoothing=0.7)
    with pytest.raises(ValueError, match="shape"):
        dpo_loss(t(-1.0, -2.0), z, z, z)


# --- IPO -----------------------------------------------------------------------------


def test_ipo_hand_values():
    z = t(-3.0, -4.0)
    assert close(ipo_loss(z, z, z, z, beta=0.1)[0], 25.0)  # h = 0: (0 − 1/0.2)² = 25
    # h = 2, β = 0.1: (2 − 5)² = 9; β = 0.25: (2 − 2)² = 0 (the target margin is reached)
    args = t(-10.0), t(-12.0), t(-11.0), t(-11.0)
    assert close(ipo_loss(*args, beta=0.1)[0], 9.0)
    assert close(ipo_loss(*args, beta=0.25)[0], 0.0)


def test_ipo_gradient_pushes_margin_to_target():
    # h = 2 below the target 5: the gradient raises the chosen log-prob (d/dπc = 2(h − 5) < 0)
    c = t(-10.0, grad=True)
    ipo_loss(c, t(-12.0), t(-11.0), t(-11.0), beta=0.1)[0].backward()
    assert close(c.grad, 2 * (2 - 5))


# --- SimPO ---------------------------------------------------------------------------


def test_simpo_hand_value():
    # β = 2, γ = 0.5, avg_c = −0.5, avg_r = −1.0: β·avg_c − β·avg_r − γ = −1 + 2 − 0.5 = 0.5
    # loss = −log σ(0.5) = log(1 + e^−0.5) = 0.47407698418010663
    loss, m = simpo_loss(t(-0.5), t(-1.0), beta=2.0, gamma=0.5)
    assert close(loss, 0.47407698418010663)
    assert close(m["reward_margin"], 1.0)
    # equal averages: −log σ(−γ) = log(1 + e^0.5)
    assert close(simpo_loss(t(-1.0), t(-1.0))[0], math.log(1 + math.exp(0.5)))


# --- ORPO ----------------------------------------------------------------------------


def test_orpo_equal_pair_is_nll_plus_lambda_log2():
    z = t(-0.7, -2.0)
    loss, m = orpo_loss(z, z, torch.tensor(1.5), lam=0.2)
    assert close(loss, 1.5 + 0.2 * LOG2)
    assert close(m["odds_ratio_loss"], LOG2)


def test_orpo_hand_value():
    # p_c = 1/2 → odds 1, log odds 0; p_r = 1/4 → odds 1/3, log odds −log 3
    # L_OR = −log σ(log 3) = log(1 + 1/3) = log(4/3); λ = 0.1, nll = 2
    loss, m = orpo_loss(t(math.log(0.5)), t(math.log(0.25)), torch.tensor(2.0), lam=0.1)
    assert close(m["log_odds_ratio"], math.log(3))
    assert close(loss, 2.0 + 0.1 * math.log(4 / 3))


def test_orpo_stable_near_zero_and_rejects_nonnegative():
    loss, _ = orpo_loss(t(-1e-7), t(-1.0), torch.tensor(0.0))
    assert torch.isfinite(loss)
    with pytest.raises(ValueError, match="< 0"):
        orpo_loss(t(0.0), t(-1.0), torch.tensor(0.0))


# --- KTO -----------------------------------------------------------------------------


def test_kto_at_reference_point_is_half_lambda():
    # r = π − ref = 2 = z0 → σ(0) = ½, each term λ·½; mean of (1.0·½, 3.0·½) = 1
    pol, ref = t(-8.0, -9.0), t(-10.0, -11.0)
    loss, m = kto_loss(pol, ref, torch.tensor([True, False]), torch.tensor(2.0), lambda_d=1.0, lambda_u=3.0)
    assert close(loss, 1.0)
    assert close(m["kl_ref"], 2.0)


def test_kto_hand_value_and_clamped_detached_z0():
    # desirable, r = 10, z0 = clamp(−5) = 0, β = 0.1: 1 − σ(1) = σ(−1) = 0.2689414213699951
    z0 = torch.tensor(-5.0, requires_grad=True)
    pol = t(-10.0, grad=True)
    loss, m = kto_loss(pol, t(-20.0), torch.tensor([True]), z0, beta=0.1)
    assert close(loss, 1 / (1 + math.e))
    assert m["kl_ref"] == 0.0
    loss.backward()
    assert z0.grad is None  # the reference point carries no gradient
    assert pol.grad.item() < 0  # a desirable example's log-prob is pushed up
    # undesirable, same r: 1 − σ(β(z0 − r)) = 1 − σ(−1) = σ(1)
    loss, _ = kto_loss(t(-10.0), t(-20.0), torch.tensor([False]), 0.0, beta=0.1)
    assert close(loss, 1 / (1 + math.exp(-1)))


def test_kto_rejects_non_bool_labels():
    with pytest.raises(ValueError, match="bool"):
        kto_loss(t(-1.0), t(-1.0), torch.tensor([1.0]), 0.0)


# --- dispatcher ----------------------------------------------------------------------


def test_preference_loss_dispatch_and_errors():
    z = t(-1.0)
    loss, _ = preference_loss("ipo", pol_chosen=z, pol_rejected=z, ref_chosen=z, ref_rejected=z)
    assert close(loss, 25.0)
    with pytest.raises(ValueError, match="dpo, cdpo, ipo, simpo, orpo, kto"):
        preference_loss("rlhf", pol_chosen=z)
    with pytest.raises(ValueError, match="label_smoothing"):
        preference_loss("cdpo", pol_chosen=z, pol_rejected=z, ref_chosen=z, ref_rejected=z)
    with pytest.raises(ValueError, match="ref_chosen"):
        preference_loss("simpo", pol_chosen_avg=z, pol_rejected_avg=z, ref_chosen=z)
