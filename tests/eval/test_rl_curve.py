import numpy as np
import pytest

from ember.eval.rl_curve import RLCurveFit, fit_prefix, fit_rl_curve, rl_curve_report

TRUE = RLCurveFit(R0=0.10, A=0.75, C_mid=40.0, B=1.3)


def _run(n=60, noise=0.01, seed=0):
    c = np.geomspace(1.0, 2000.0, n)
    r = TRUE.predict(c) + np.random.default_rng(seed).normal(0.0, noise, n)
    return c, r


def test_predict_midpoint_and_limits():
    assert float(TRUE.predict(TRUE.C_mid)) == pytest.approx((TRUE.R0 + TRUE.A) / 2)
    assert float(TRUE.predict(1e9)) == pytest.approx(TRUE.A, abs=1e-6)
    assert float(TRUE.predict(1e-9)) == pytest.approx(TRUE.R0, abs=1e-6)


@pytest.mark.parametrize("r0", [None, TRUE.R0])
def test_recovers_parameters_from_noisy_curve(r0):
    fit = fit_rl_curve(*_run(), r0=r0)
    assert fit.A == pytest.approx(TRUE.A, abs=0.02)
    assert fit.R0 == pytest.approx(TRUE.R0, abs=0.03)
    assert fit.C_mid == pytest.approx(TRUE.C_mid, rel=0.15)
    assert fit.B == pytest.approx(TRUE.B, rel=0.15)
    assert fit.R0 <= fit.A <= 1.0 and fit.B > 0 and fit.C_mid > 0
    assert fit.rmse < 0.02


def test_first_half_predicts_the_final_reward():
    # compute grows linearly with steps, as in a run; the first half passes the midpoint
    true = RLCurveFit(R0=0.05, A=0.7, C_mid=150.0, B=1.5)
    c = np.linspace(5.0, 1000.0, 80)
    r = true.predict(c) + np.random.default_rng(1).normal(0.0, 0.01, 80)
    out = fit_prefix(c, r, frac=0.5)
    assert out["n_fit"] == 40
    assert out["rel_error"] < 0.05, out
    assert out["actual_final"] == r[-1]


def test_asymptote_stays_in_bounds_on_a_rising_line():
    c = np.arange(1.0, 21.0)
    fit = fit_rl_curve(c, 0.05 * c)  # reaches 1.0: A is capped at 1
    assert fit.R0 <= fit.A <= 1.0


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="> 0"):
        fit_rl_curve([0.0, 1, 2, 3, 4], [0.1, 0.2, 0.3, 0.4, 0.5])
    with pytest.raises(ValueError, match="at least 5 points"):
        fit_rl_curve([1, 2, 3], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="differ"):
        fit_rl_curve([1, 2, 3, 4, 5], [0.1, 0.2])
    with pytest.raises(ValueError, match="frac"):
        fit_prefix([1, 2, 3, 4, 5], [0.1] * 5, frac=0)


def test_rl_curve_report_extrapolates_a_sigmoid_run(tmp_path):
    """Accuracy that follows a ScaleRL sigmoid in cumulative tokens: a fit on the first half
    predicts the last steps' mean accuracy."""
    true = RLCurveFit(R0=0.1, A=0.6, C_mid=20_000.0, B=1.5)
    rng = np.random.default_rng(0)
    records, c = [], 0.0
    for step in range(1, 41):
        c += 2000.0
        acc = float(true.predict(c)) + rng.uniform(-0.01, 0.01)
        records.append({"step": step, "accuracy": acc, "step_tokens": 2000.0})
    report = rl_curve_report(records, tmp_path / "rl.png", key="accuracy")
    assert report["n_fit"] == 20 and report["n_steps"] == 40
    assert report["abs_error"] < 0.03
    assert report["reached_final"] == pytest.approx(float(true.predict(40 * 2000.0)), abs=0.02)
    assert report["plot"] == str(tmp_path / "rl.png") and (tmp_path / "rl.png").stat().st_size > 0
    short = rl_curve_report(records[:5], tmp_path / "x.png", key="accuracy")
    assert short is None and not (tmp_path / "x.png").exists()  # too few steps to fit
