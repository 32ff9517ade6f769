"""PPO and GRPO pieces against values computed by hand (each derivation in the comment)."""

import math

import pytest
import torch

from ember.train.rl import (
    gae,
    group_advantages,
    grpo_loss,
    kl_penalty,
    masked_mean,
    masked_whiten,
    ppo_policy_loss,
    ppo_value_loss,
    token_rewards,
)


def t(*rows):
    return torch.tensor(rows, dtype=torch.float32)


def close(a, b, tol=1e-5):
    return abs(float(torch.as_tensor(a).detach()) - b) < tol


# --- masked statistics -----------------------------------------------------------------


def test_masked_mean_ignores_padding():
    x, m = t([1.0, 2.0, 99.0], [4.0, 99.0, 99.0]), t([1, 1, 0], [1, 0, 0])
    assert close(masked_mean(x, m), 7 / 3)
    torch.testing.assert_close(masked_mean(x, m, dim=-1), torch.tensor([1.5, 4.0]))
    assert close(masked_mean(x, torch.zeros_like(m)), 0.0)  # empty mask: 0, not NaN


def test_masked_whiten_mean0_std1_over_masked():
    torch.manual_seed(0)
    x = torch.randn(3, 6) * 5 + 2
    m = torch.ones(3, 6)
    m[0, 4:] = 0
    m[2, 1:] = 0
    w = masked_whiten(x, m)
    sel = w[m.bool()]
    assert close(sel.mean(), 0.0) and close(sel.std(), 1.0, tol=1e-4)
    assert (w[~m.bool()] == 0).all()
    # shift_mean=False keeps the original mean
    assert close(masked_whiten(x, m, shift_mean=False)[m.bool()].mean(), x[m.bool()].mean().item(), 1e-4)
    with pytest.raises(ValueError, match="2 masked"):
        masked_whiten(x, torch.zeros_like(m))


# --- KL estimators and rewards ---------------------------------------------------------


def test_kl_estimators_by_hand():
    # logp = −1, ref = −2: log r = ref − logp = −1
    # k1 = 1, k2 = ½, k3 = e^−1 − 1 + 1 = e^−1
    lp, ref = t(-1.0), t(-2.0)
    assert close(kl_penalty(lp, ref, "k1"), 1.0)
    assert close(kl_penalty(lp, ref, "k2"), 0.5)
    assert close(kl_penalty(lp, ref, "k3"), math.exp(-1))
    with pytest.raises(ValueError, match="k1, k2, k3"):
        kl_penalty(lp, ref, "k4")


def test_k3_nonnegative_and_zero_when_equal():
    torch.manual_seed(0)
    lp, ref = torch.randn(1000) * 3, torch.randn(1000) * 3
    assert (kl_penalty(lp, ref, "k3") >= 0).all()
    assert (kl_penalty(lp, lp, "k3") == 0).all()


def test_token_rewards_kl_and_score_at_last_token():
    # β = 0.5, k1 per token = logp − ref = [1, 2, 3, 4]; row 0 ends at t = 1, row 1 at t = 3
    logp = t([0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0])
    ref = t([-1.0, -2.0, -3.0, -4.0], [-1.0, -2.0, -3.0, -4.0])
    mask = t([1, 1, 0, 0], [1, 1, 1, 1])
    r = token_rewards(t(10.0, 20.0), logp, ref, mask, beta=0.5)
    want = t([-0.5, -1.0 + 10.0, 0.0, 0.0], [-0.5, -1.0, -1.5, -2.0 + 20.0])
    torch.testing.assert_close(r, want)
    with pytest.raises(ValueError, match="at least one real token"):
        token_rewards(t(1.0, 1.0), logp, ref, t([1, 0, 0, 0], [0, 0, 0, 0]), beta=0.1)


# --- GAE -------------------------------------------------------------------------------

R3, V3 = t([1.0, 2.0, 3.0]), t([0.5, 1.0, 1.5])


def test_gae_lambda1_is_reward_to_go():
    # γ = λ = 1: R_t = Σ_{k≥t} r_k = [6, 5, 3]; A = R − V = [5.5, 4, 1.5]
    adv, ret = gae(R3, V3, torch.ones(1, 3), gamma=1.0, lam=1.0)
    torch.testing.assert_close(ret, t([6.0, 5.0, 3.0]))
    torch.testing.assert_close(adv, t([5.5, 4.0, 1.5]))


def test_gae_lambda0_is_td_error():
    # λ = 0: A_t = δ_t = r_t + V_{t+1} − V_t, no bootstrap past the end:
    # δ0 = 1 + 1 − 0.5 = 1.5, δ1 = 2 + 1.5 − 1 = 2.5, δ2 = 3 + 0 − 1.5 = 1.5
    adv, _ = gae(R3, V3, torch.ones(1, 3), gamma=1.0, lam=0.0)
    torch.testing.assert_close(adv, t([1.5, 2.5, 1.5]))


def test_gae_general_gamma_lambda():
    # γ = λ = 0.5 (γλ = 0.25): δ = [1 + 0.5 − 0.5, 2 + 0.75 − 1, 3 − 1.5] = [1, 1.75, 1.5]
    # A2 = 1.5, A1 = 1.75 + 0.25·1.5 = 2.125, A0 = 1 + 0.25·2.125 = 1.53125
    adv, ret = gae(R3, V3, torch.ones(1, 3), gamma=0.5, lam=0.5)
    torch.testing.assert_close(adv, t([1.0 + 0.25 * 2.125, 2.125, 1.5]))
    torch.testing.assert_close(ret, adv + V3)


def test_gae_padding_changes_nothing():
    # the same episode padded with junk rewards/values: identical on real tokens, 0 on padding
    rewards = t([1.0, 2.0, 3.0, 7.0, 7.0], [1.0, 2.0, 3.0, 4.0, 5.0])
    values = t([0.5, 1.0, 1.5, 9.0, 9.0], [0.5, 1.0, 1.5, 2.0, 2.5])
    mask = t([1, 1, 1, 0, 0], [1, 1, 1, 1, 1])
    adv, ret = gae(rewards, values, mask, gamma=0.5, lam=0.5)
    ref_adv, ref_ret = gae(R3, V3, torch.ones(1, 3), gamma=0.5, lam=0.5)
    torch.testing.assert_close(adv[:1, :3], ref_adv)
    torch.testing.assert_close(ret[:1, :3], ref_ret)
    assert (adv[0, 3:] == 0).all() and (ret[0, 3:] == 0).all()


# --- PPO -------------------------------------------------------------------------------


def test_ppo_ratio_is_one_on_first_step():
    torch.manual_seed(0)
    logp = torch.randn(2, 4).requires_grad_()
    adv, mask = torch.randn(2, 4), t([1, 1, 1, 0], [1, 1, 1, 1])
    loss, m = ppo_policy_loss(logp, logp.detach().clone(), adv, mask)
    assert close(loss, -masked_mean(adv, mask).item())
    assert m["clipfrac"] == 0 and close(m["ratio"], 1.0) and m["approx_kl"] == 0
    loss.backward()  # ∂loss/∂logp = −A/N on real tokens (ρ = 1), 0 on padding
    torch.testing.assert_close(logp.grad, -adv * mask / 7)


def test_ppo_clipped_by_hand():
    # ε = 0.2, per token −min(ρA, clip(ρ, 0.8, 1.2)A):
    #   ρ 1.5, A +1: min(1.5, 1.2) = 1.2 → −1.2   (clipped)
    #   ρ 0.5, A −1: min(−0.5, −0.8) = −0.8 → +0.8 (clipped)
    #   ρ 0.5, A +1: min(0.5, 0.8) = 0.5 → −0.5   (not clipped)
    #   ρ 1.5, A −1: min(−1.5, −1.2) = −1.5 → +1.5 (not clipped)
    # mean = (−1.2 + 0.8 − 0.5 + 1.5)/4 = 0.15; clipfrac = 2/4; padding (junk) ignored
    ratio = t([1.5, 0.5, 0.5, 1.5, 3.0])
    adv = t([1.0, -1.0, 1.0, -1.0, 5.0])
    mask = t([1, 1, 1, 1, 0])
    loss, m = ppo_policy_loss(ratio.log(), torch.zeros(1, 5), adv, mask, clip=0.2)
    assert close(loss, 0.15)
    assert close(m["clipfrac"], 0.5)
    assert close(m["ratio"], 1.0)


def test_ppo_value_loss_by_hand():
    # V 1.5, V_old 1.0, R 2.0, ε 0.2: clip(V) = 1.2; max((−0.5)², (−0.8)²) = 0.64 → ½·0.64
    # V 1.1, V_old 1.0, R 2.0: inside the clip; (−0.9)² = 0.81 → ½·0.81. Mean = 0.3625
    loss, m = ppo_value_loss(t([1.5, 1.1, 0.0]), t([1.0, 1.0, 0.0]), t([2.0, 2.0, 50.0]), t([1, 1, 0]))
    assert close(loss, (0.32 + 0.405) / 2)
    assert close(m["vf_clipfrac"], 0.5)


# --- GRPO ------------------------------------------------------------------------------


def test_group_advantages_by_hand():
    # [1, 0, 1, 0]: mean ½, unbiased std = √(4·¼/3) = √(1/3) → ±½/(√(1/3) + 1e-4)
    a = group_advantages(torch.tensor([1.0, 0.0, 1.0, 0.0]), 4)
    s = 0.5 / (math.sqrt(1 / 3) + 1e-4)
    torch.testing.assert_close(a, torch.tensor([s, -s, s, -s]))
    # two groups of 2; an all-equal group gives 0, not NaN
    a = group_advantages(torch.tensor([3.0, 1.0, 5.0, 5.0]), 2)
    s = 1.0 / (math.sqrt(2) + 1e-4)  # [3, 1]: mean 2, std √2
    torch.testing.assert_close(a, torch.tensor([s, -s, 0.0, 0.0]))
    # Dr. GRPO: mean only
    torch.testing.assert_close(group_advantages(torch.tensor([3.0, 1.0]), 2, scale=False), torch.tensor([1.0, -1.0]))
    with pytest.raises(ValueError, match="divide"):
        group_advantages(torch.zeros(6), 4)


def test_grpo_first_step_and_normalisations_differ():
    # ratio 1, β 0: per-token loss = −Â. Row 0: 1 token, Â = +1; row 1: 3 tokens, Â = −1.
    # dapo: (−1 + 3·1)/4 = 0.5; sequence: (mean(−1) + mean(1, 1, 1))/2 = 0
    logp = torch.randn(2, 3)
    mask = t([1, 0, 0], [1, 1, 1])
    adv = torch.tensor([1.0, -1.0])
    loss, m = grpo_loss(logp, logp, adv, mask, token_norm="dapo")
    assert close(loss, 0.5) and m["clipfrac"] == 0 and close(m["ratio"], 1.0)
    loss, _ = grpo_loss(logp, logp, adv, mask, token_norm="sequence")
    assert close(loss, 0.0)


def test_grpo_clip_higher_and_kl():
    # ρ = 1.25, Â = +1: symmetric ε 0.2 clips to 1.2; clip_high 0.28 lets 1.25 through
    logp, old, mask, adv = t([math.log(1.25)]), torch.zeros(1, 1), torch.ones(1, 1), torch.tensor([1.0])
    assert close(grpo_loss(logp, old, adv, mask)[0], -1.2)
    assert close(grpo_loss(logp, old, adv, mask, clip_high=0.28)[0], -1.25)
    # k3 with ref = logp − 1 (log r = −1): e^−1; β = 0.04 adds 0.04·e^−1
    loss, m = grpo_loss(logp, old, adv, mask, ref_logp=logp - 1, beta=0.04)
    assert close(loss, -1.2 + 0.04 * math.exp(-1))
    assert close(m["kl"], math.exp(-1))
    with pytest.raises(ValueError, match="ref_logp"):
        grpo_loss(logp, old, adv, mask, beta=0.04)
    with pytest.raises(ValueError, match="dapo, sequence"):
        grpo_loss(logp, old, adv, mask, token_norm="token")


def test_grpo_gradient_sign_and_padding():
    # a positive advantage pushes the log-prob up; padded tokens get no gradient
    logp = torch.zeros(1, 3, requires_grad=True)
    loss, _ = grpo_loss(logp, torch.zeros(1, 3), torch.tensor([2.0]), t([1, 1, 0]))
    loss.backward()
    torch.testing.assert_close(logp.grad, t([-1.0, -1.0, 0.0]))
