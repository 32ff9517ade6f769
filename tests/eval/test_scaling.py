"""Scaling-law fits recover known constants from synthetic sweeps; IO and plot round trips."""

import json

import numpy as np
import pytest

from ember.eval.scaling import (
    CONSTANTS,
    ScalingFit,
    ScalingPoint,
    fit_scaling_law,
    load_points,
    plot_scaling,
    save_points,
)

TRUE = ScalingFit(E=1.7, A=400.0, B=410.0, alpha=0.34, beta=0.28)
# Held out: every one lies outside the fitted grid N in [1e5, 1e7], D in [1e6, 1e9].
HELDOUT = [(3e7, 3e9), (1e8, 1e10), (3e4, 3e5), (2e6, 5e9), (5e5, 3e6), (1e9, 2e10)]


def sweep(seed=0, noise=1e-3):
    """5 model sizes x 4 token counts, loss with multiplicative log-normal noise."""
    rng = np.random.default_rng(seed)
    return [ScalingPoint(int(N), int(D), TRUE.predict(N, D) * float(np.exp(noise * rng.standard_normal())),
                         name=f"n{N:.0e}-d{D:.0e}")
            for N in np.geomspace(1e5, 1e7, 5) for D in np.geomspace(1e6, 1e9, 4)]


def with_outliers(points, idx=(2, 9, 17), factor=1.25):
    points = list(points)
    for i in idx:  # a diverged or mis-logged run: 25% worse loss than the law says
        p = points[i]
        points[i] = ScalingPoint(p.n_params, p.n_tokens, p.loss * factor, p.name)
    return points


def max_rel_err(fit):
    return max(abs(fit.predict(N, D) / TRUE.predict(N, D) - 1) for N, D in HELDOUT)


@pytest.fixture(scope="module")
def fit():
    return fit_scaling_law(sweep())  # default 50 bootstrap resamples


def test_recovers_predictions_and_constants(fit):
    assert max_rel_err(fit) < 0.01
    assert fit.E == pytest.approx(TRUE.E, rel=0.05)
    assert fit.alpha == pytest.approx(TRUE.alpha, rel=0.05)
    assert fit.beta == pytest.approx(TRUE.beta, rel=0.05)
    assert fit.A == pytest.approx(TRUE.A, rel=0.2)
    assert fit.B == pytest.approx(TRUE.B, rel=0.2)
    assert fit.n_points == 20 and fit.objective >= 0
    assert set(fit.stderr) == set(CONSTANTS)
    assert all(np.isfinite(v) and v >= 0 for v in fit.stderr.values())
    text = fit.summary()
    assert "alpha" in text and "±" in text and "20 points" in text


def test_compute_optimal_is_the_minimum_on_the_iso_flop_line(fit):
    for C in (1e15, 1e18, 1e21):
        N, D = fit.compute_optimal(C)
        assert 6 * N * D == pytest.approx(C, rel=1e-9)
        best = fit.predict(N, D)
        for k in (0.5, 0.8, 0.95, 1.05, 1.25, 2.0):  # trade parameters for tokens at fixed C
            assert fit.predict(N * k, D / k) > best
        Ns = np.geomspace(N / 100, N * 100, 4001)  # brute force agrees with the closed form
        assert Ns[np.argmin(fit.predict(Ns, C / (6 * Ns)))] == pytest.approx(N, rel=0.01)


def test_huber_fit_shrugs_off_outliers():
    points = with_outliers(sweep(seed=1))
    assert max_rel_err(fit_scaling_law(points, n_bootstrap=0)) < 0.01
    # The same fit with squared error (delta large enough that no residual is "outlying")
    # is pulled off by several percent, so the outliers are real and Huber is what helps.
    assert max_rel_err(fit_scaling_law(points, n_bootstrap=0, delta=10.0)) > 0.03


def test_predict_and_compute_optimal_broadcast():
    N = np.array([1e6, 1e7, 1e8])
    D = np.array([[1e9], [1e10]])
    L = TRUE.predict(N, D)
    assert L.shape == (2, 3)
    assert L[1, 2] == pytest.approx(TRUE.predict(1e8, 1e10))
    assert isinstance(TRUE.predict(1e6, 1e9), float)
    Ns, Ds = TRUE.compute_optimal(np.array([1e18, 1e20]))
    assert Ns.shape == Ds.shape == (2,)
    assert Ns[1] == pytest.approx(TRUE.compute_optimal(1e20)[0])
    with pytest.raises(ValueError, match="positive"):
        TRUE.compute_optimal(0.0)


def test_fit_dict_round_trip(fit):
    again = ScalingFit.from_dict(json.loads(json.dumps(fit.to_dict())))
    assert again == fit
    with pytest.raises(ValueError, match="gamma"):
        ScalingFit.from_dict({**fit.to_dict(), "gamma": 1.0})


def test_points_round_trip(tmp_path):
    points = sweep()[:7]
    path = save_points(tmp_path / "sweep.jsonl", points)
    assert load_points(path) == points
    assert points[0].compute == 6.0 * points[0].n_params * points[0].n_tokens


@pytest.mark.parametrize("line, why", [
    ("{not json", "line 3"),
    ('{"n_params": 0, "n_tokens": 10, "loss": 3.0}', "n_params"),
    ('{"n_params": 10, "n_tokens": -5, "loss": 3.0}', "n_tokens"),
    ('{"n_params": 10, "n_tokens": 10, "loss": NaN}', "loss"),
    ('{"n_params": 10, "n_tokens": 10}', "missing"),
    ('{"n_params": 10, "n_tokens": 10, "loss": 3.0, "lr": 1}', "lr"),
    ("[1, 2, 3]", "JSON object"),
])
def test_bad_jsonl_line_names_its_number(tmp_path, line, why):
    good = '{"n_params": 1000, "n_tokens": 20000, "loss": 4.0}'
    path = tmp_path / "sweep.jsonl"
    path.write_text(f"{good}\n\n{line}\n{good}\n")  # the blank line 2 still counts
    with pytest.raises(ValueError, match="line 3") as err:
        load_points(path)
    assert why in str(err.value)


def test_too_few_points_is_an_error():
    with pytest.raises(ValueError, match="at least 5 points"):
        fit_scaling_law(sweep()[:4])
    one_size = [p for p in sweep() if p.n_params == 100_000]  # 4 points, but more below
    one_size += [ScalingPoint(100_000, 5 * 10**9, 2.0)]
    with pytest.raises(ValueError, match="1 sizes"):
        fit_scaling_law(one_size)


def test_plot_writes_png(tmp_path):
    points = sweep()
    holdout = [ScalingPoint(int(N), int(D), TRUE.predict(N, D)) for N, D in HELDOUT[:3]]
    path = plot_scaling(TRUE, points, tmp_path / "plots" / "scaling.png", holdout=holdout)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
