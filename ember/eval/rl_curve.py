r"""The ScaleRL compute–performance curve: a sigmoid in log-compute fitted to RL reward.

Khatri et al. 2025, "The Art of Scaling Reinforcement Learning Compute for LLMs", eq. 1:

    R(C) = R0 + (A − R0) / (1 + (C_mid / C)^B)

R0 is the reward before RL, A the asymptote the recipe saturates at, B the efficiency
exponent (steepness in log C) and C_mid the compute at which half the gain A − R0 is had.
The paper fits on the run so far and extrapolates: a recipe is judged by A (its ceiling) and
B (how fast it gets there), not by where two runs happen to cross.

Fitting, by `scipy.optimize.least_squares` (soft-L1 loss, robust to a noisy eval) from a
few starting points for C_mid, keeping the lowest cost. To keep A ≥ R0 with box bounds we
fit the fraction g of the gap, A = R0 + g·(1 − R0), g ∈ [0, 1]; C_mid is fitted in log
space. Rewards are assumed to lie in [0, 1] (pass-rates, accuracies).
R0: fixed when given (`r0=0.12`, e.g. the pre-RL evaluation); fitted in [0, 1] when None —
the default, since C starts at the first step, not at 0. Deviation: the paper also drops the
first ~1.5k GPU-hours of a run from the fit; `fit_prefix` fits whatever it is given.

`rl_curve_report` runs the paper's check on a training run's logged steps (fit the first
half, extrapolate to the end) and draws it.

    >>> c = np.geomspace(1, 1000, 40)
    >>> fit = fit_rl_curve(c, RLCurveFit(0.1, 0.8, 30.0, 1.2).predict(c))
    >>> round(float(fit.predict(2000.0)), 3)
    0.795
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy.optimize import least_squares


@dataclass(frozen=True)
class RLCurveFit:
    R0: float
    A: float
    C_mid: float
    B: float
    rmse: float = 0.0
    """Root-mean-square error on the points it was fitted to."""

    def predict(self, compute) -> np.ndarray:
        """R(C) at each compute C > 0 (array in, array out; a scalar gives a scalar).

        >>> float(RLCurveFit(R0=0.1, A=0.9, C_mid=10.0, B=1.0).predict(10.0))
        0.5
        """
        c = np.asarray(compute, dtype=float)
        if np.any(c <= 0):
            raise ValueError("compute must be > 0 to predict")
        return self.R0 + (self.A - self.R0) / (1.0 + (self.C_mid / c) ** self.B)

    def to_dict(self) -> dict:
        return asdict(self)


def _curve(c: np.ndarray, r0: float, a: float, log_cmid: float, b: float) -> np.ndarray:
    # (C_mid / C)^B = exp(B · (log C_mid − log C)); clipped so a steep B cannot overflow
    return r0 + (a - r0) / (1.0 + np.exp(np.clip(b * (log_cmid - np.log(c)), -50, 50)))


def fit_rl_curve(compute, reward, r0: float | None = None) -> RLCurveFit:
    """Fit R(C) = R0 + (A − R0)/(1 + (C_mid/C)^B) to (compute, reward) points.

    >>> c = np.geomspace(1, 1000, 40)
    >>> fit = fit_rl_curve(c, RLCurveFit(0.1, 0.8, 30.0, 1.2).predict(c))
    >>> round(fit.A, 3), round(fit.C_mid, 1), round(fit.B, 2)
    (0.8, 30.0, 1.2)
    """
    c = np.asarray(compute, dtype=float).ravel()
    r = np.asarray(reward, dtype=float).ravel()
    if c.shape != r.shape:
        raise ValueError(f"compute {c.shape} and reward {r.shape} differ in length")
    if not (np.all(np.isfinite(c)) and np.all(np.isfinite(r))):
        raise ValueError("compute and reward must be finite")
    if np.any(c <= 0):
        raise ValueError("compute must be > 0 (the curve is in log C)")
    n_free = 3 if r0 is not None else 4
    if len(c) < n_free + 1:
        raise ValueError(
            f"need at least {n_free + 1} points to fit {n_free} parameters, got {len(c)}"
        )
    if r0 is not None and not 0.0 <= r0 <= 1.0:
        raise ValueError(f"r0 must be in [0, 1], got {r0}")

    lo_c, hi_c = np.log(c.min()), np.log(c.max())
    # C_mid may lie beyond the data (a run still far from its midpoint): allow 3 e-folds out
    lb_lc, ub_lc = lo_c - 3.0, hi_c + 3.0

    def unpack(p):
        if r0 is None:
            r0_, g, lc, b = p
        else:
            r0_, (g, lc, b) = r0, p
        return r0_, r0_ + g * (1.0 - r0_), lc, b

    def residuals(p):
        return _curve(c, *unpack(p)) - r

    start_r0 = float(np.clip(r[np.argmin(c)], 0.0, 1.0))
    start_a = float(np.clip(r.max(), start_r0, 1.0))
    g0 = (start_a - start_r0) / max(1.0 - start_r0, 1e-9)
    best = None
    for lc0 in np.linspace(lo_c, hi_c, 5):
        for b0 in (0.5, 1.0, 2.0):
            x0 = [g0, lc0, b0] if r0 is not None else [start_r0, g0, lc0, b0]
            lb = [0.0, lb_lc, 1e-3] if r0 is not None else [0.0, 0.0, lb_lc, 1e-3]
            ub = [1.0, ub_lc, 20.0] if r0 is not None else [1.0, 1.0, ub_lc, 20.0]
            x0 = np.clip(x0, lb, ub)
            sol = least_squares(residuals, x0, bounds=(lb, ub), loss="soft_l1", f_scale=0.05)
            if best is None or sol.cost < best.cost:
                best = sol
    r0_, a, lc, b = unpack(best.x)
    rmse = float(np.sqrt(np.mean(residuals(best.x) ** 2)))
    return RLCurveFit(R0=float(r0_), A=float(a), C_mid=float(np.exp(lc)), B=float(b), rmse=rmse)


def fit_prefix(compute, reward, frac: float = 0.5, r0: float | None = None) -> dict:
    """Fit on the first `frac` of the points (in order of compute) and extrapolate to the
    last one: the paper's test of whether an early fit predicts where a run ends.

    Returns {"fit", "n_fit", "predicted_final", "actual_final", "abs_error", "rel_error"}.
    """
    if not 0.0 < frac <= 1.0:
        raise ValueError(f"frac must be in (0, 1], got {frac}")
    c = np.asarray(compute, dtype=float).ravel()
    r = np.asarray(reward, dtype=float).ravel()
    order = np.argsort(c)
    c, r = c[order], r[order]
    n = max(int(round(frac * len(c))), 1)
    fit = fit_rl_curve(c[:n], r[:n], r0=r0)
    pred = float(fit.predict(c[-1]))
    actual = float(r[-1])
    return {
        "fit": fit.to_dict(),
        "n_fit": n,
        "predicted_final": pred,
        "actual_final": actual,
        "abs_error": abs(pred - actual),
        "rel_error": abs(pred - actual) / max(abs(actual), 1e-12),
    }


def rl_curve_report(
    records: list[dict],
    path: str | Path,
    frac: float = 0.5,
    window: int = 5,
    key: str = "reward",
    title: str = "ScaleRL sigmoid fit",
) -> dict | None:
    """The ScaleRL check on a run's logged steps: fit R(C) to the first `frac` of the steps'
    mean `key` (e.g. "reward", the objective, or "accuracy", exact match alone) against
    cumulative tokens (`step_tokens`; compute ∝ tokens for a fixed model), extrapolate to the
    last step, and compare with the value reached (both as means over the last `window` steps:
    one step's mean over a few dozen samples is noisy). The fit assumes values in [0, 1].
    Writes the points and both curves to a PNG at `path`. None with fewer than 8 steps (too
    few to fit 4 parameters).

    >>> rl_curve_report([{"reward": 0.5, "step_tokens": 10}] * 7, "unused.png") is None
    True
    """
    rows = [r for r in records if key in r and "step_tokens" in r]
    if len(rows) < 8:
        return None
    compute = np.cumsum([r["step_tokens"] for r in rows])
    value = np.array([r[key] for r in rows])
    n = max(int(round(frac * len(rows))), 4)
    fit = fit_rl_curve(compute[:n], value[:n])
    w = min(window, len(rows) - n)
    predicted = float(np.mean(fit.predict(compute[-w:])))
    reached = float(np.mean(value[-w:]))
    report = {
        "key": key,
        "fit": fit.to_dict(),
        "n_fit": n,
        "n_steps": len(rows),
        "predicted_final": predicted,
        "reached_final": reached,
        "abs_error": abs(predicted - reached),
    }
    full = fit_rl_curve(compute, value)  # on every step: the run's own A and B
    report["fit_all"] = full.to_dict()
    if _plot_fit(compute, value, n, fit, full, key, title, path):
        report["plot"] = str(path)
    return report


def _plot_fit(compute, value, n, fit, full, key: str, title: str, path: str | Path) -> bool:
    """The points (the first n fitted, the rest held out) and both fits → PNG; False without
    matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    from ember.core.io import atomic_write_bytes

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.scatter(compute[:n], value[:n], s=14, color="C0", label=f"steps fitted ({n})")
    ax.scatter(compute[n:], value[n:], s=14, color="C0", alpha=0.35, label="later steps (held out)")
    grid = np.geomspace(compute[0], compute[-1], 200)
    lines = ((fit, "C1", "-", f"fit on the first {n}"), (full, "C2", "--", "fit on all"))
    for curve, color, style, label in lines:
        label = f"{label}: A={curve.A:.2f}, B={curve.B:.2f}"
        ax.plot(grid, curve.predict(grid), color=color, ls=style, label=label)
    ax.set_xscale("log")
    ylabel = f"mean {key} (training samples)"
    ax.set(xlabel="compute (cumulative tokens)", ylabel=ylabel, title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return True
