r"""Scaling-law fits: L(N, D) = E + A / N^alpha + B / D^beta from a sweep of training runs.

The fit is Approach 3 of Hoffmann et al. 2022, "Training Compute-Optimal Large Language
Models" (Chinchilla), appendix D.2: with a = log A, b = log B, e = log E,

    min_{a, b, e, alpha, beta}  sum_i  Huber_delta( LSE(a - alpha log N_i,
                                                        b - beta log D_i, e) - log L_i )

with delta = 1e-3, solved by L-BFGS from a grid of initialisations, keeping the best.
N counts non-embedding parameters, D training tokens, L is validation loss in nats/token.
Deviations from the paper, each for speed (the whole fit must take seconds):
- the paper runs L-BFGS from every one of its 4500 grid points; we evaluate the objective at
  all of them (vectorised, cheap) and run L-BFGS from the `n_starts` best only;
- the paper gives no error bars for Approach 3's constants; we bootstrap them, refitting
  each resample from the best solution and two jittered copies of it.

This module does only the maths, the JSONL points file and the plot; the training sweep
that produces the points lives elsewhere.

    >>> fit = fit_scaling_law(load_points("sweep.jsonl"))  # doctest: +SKIP
    >>> print(fit.summary()); fit.compute_optimal(1e21)    # doctest: +SKIP
"""

from __future__ import annotations

import io
import itertools
import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
from scipy.optimize import minimize

from ember.core.io import atomic_write_bytes, atomic_write_text, read_text_utf8

CONSTANTS = ("E", "A", "B", "alpha", "beta")
_EXP_BOUNDS = (1e-4, 3.0)  # alpha, beta in (0, 3]: the open end is a small positive floor


@dataclass
class ScalingPoint:
    """One finished training run.

    >>> ScalingPoint(n_params=10_000_000, n_tokens=200_000_000, loss=3.1).compute
    1.2e+16
    """

    n_params: int  # N: non-embedding parameters
    n_tokens: int  # D: training tokens
    loss: float  # final validation loss, nats/token
    name: str = ""

    def __post_init__(self):
        for key in ("n_params", "n_tokens"):
            v = getattr(self, key)
            integral = isinstance(v, int) or (isinstance(v, float) and v.is_integer())
            if isinstance(v, bool) or not integral or v <= 0:
                raise ValueError(f"{key} must be a positive integer, got {v!r}")
            setattr(self, key, int(v))
        if isinstance(self.loss, bool) or not isinstance(self.loss, int | float):
            raise ValueError(f"loss must be a number, got {self.loss!r}")
        if not math.isfinite(self.loss) or self.loss <= 0:
            raise ValueError(f"loss must be finite and positive (it is fitted in log space), got {self.loss!r}")
        self.loss = float(self.loss)
        if not isinstance(self.name, str):
            raise ValueError(f"name must be a string, got {self.name!r}")

    @property
    def compute(self) -> float:
        # Kaplan et al. 2020: ~6 FLOPs per parameter per token (forward 2, backward 4).
        return 6.0 * self.n_params * self.n_tokens


def load_points(path: str | os.PathLike) -> list[ScalingPoint]:
    """Read one JSON object per line ({"n_params", "n_tokens", "loss", "name"?}); blank lines
    are skipped; any bad line is a ValueError naming its line number.

    >>> load_points("sweep.jsonl")[0]  # doctest: +SKIP
    ScalingPoint(n_params=1000000, n_tokens=20000000, loss=4.2, name='n1m-d20m')
    """
    valid = {f.name for f in fields(ScalingPoint)}
    points = []
    for lineno, line in enumerate(read_text_utf8(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            if not isinstance(obj, dict):
                raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
            if unknown := sorted(set(obj) - valid):
                raise ValueError(f"unknown keys {unknown}; valid keys are {sorted(valid)}")
            if missing := sorted({"n_params", "n_tokens", "loss"} - set(obj)):
                raise ValueError(f"missing keys {missing}")
            points.append(ScalingPoint(**obj))
        except ValueError as err:  # json.JSONDecodeError is a ValueError too
            raise ValueError(f"{path}: line {lineno}: {err}") from None
    return points


def save_points(path: str | os.PathLike, points) -> Path:
    """Write points as JSONL, atomically. `save_points("sweep.jsonl", points)`."""
    return atomic_write_text(path, "".join(json.dumps(asdict(p)) + "\n" for p in points))


@dataclass
class ScalingFit:
    """Fitted constants of L(N, D) = E + A / N^alpha + B / D^beta.

    >>> fit = ScalingFit(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)
    >>> round(fit.predict(70e9, 1.4e12), 2)   # Chinchilla itself
    1.94
    """

    E: float
    A: float
    B: float
    alpha: float
    beta: float
    stderr: dict[str, float] = field(default_factory=dict)  # bootstrap std of each constant
    n_points: int = 0
    objective: float = 0.0  # the minimised Huber sum (appendix D.2), over n_points

    def predict(self, N, D):
        """Loss at N parameters and D tokens; scalars give a float, arrays broadcast."""
        N, D = np.asarray(N, dtype=np.float64), np.asarray(D, dtype=np.float64)
        L = self.E + self.A / N**self.alpha + self.B / D**self.beta
        return float(L) if L.ndim == 0 else L

    def compute_optimal(self, C):
        """(N_opt, D_opt) minimising L subject to 6 N D = C (Hoffmann et al. 2022, eq. 4):
        N_opt = G (C/6)^(beta/(alpha+beta)), G = (alpha A / (beta B))^(1/(alpha+beta))."""
        C = np.asarray(C, dtype=np.float64)
        if np.any(~(C > 0)):
            raise ValueError(f"compute must be positive, got {C}")
        s = self.alpha + self.beta
        G = (self.alpha * self.A / (self.beta * self.B)) ** (1.0 / s)
        N = G * (C / 6.0) ** (self.beta / s)
        D = (C / 6.0) / N
        return (float(N), float(D)) if N.ndim == 0 else (N, D)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ScalingFit:
        valid = {f.name for f in fields(cls)}
        if unknown := sorted(set(d) - valid):
            raise ValueError(f"unknown ScalingFit keys {unknown}; valid keys are {sorted(valid)}")
        if missing := sorted(set(CONSTANTS) - set(d)):
            raise ValueError(f"ScalingFit dict is missing {missing}")
        return cls(**{**d, "stderr": dict(d.get("stderr", {}))})

    def summary(self) -> str:
        s = self.alpha + self.beta
        lines = [f"L(N, D) = E + A/N^alpha + B/D^beta   ({self.n_points} points, "
                 f"Huber objective {self.objective:.3g})"]
        for k in CONSTANTS:
            err = f" ± {self.stderr[k]:.4g}" if k in self.stderr else ""
            lines.append(f"  {k:<5} = {getattr(self, k):.4g}{err}")
        lines.append(f"  compute-optimal: N_opt ∝ C^{self.beta / s:.3f}, D_opt ∝ C^{self.alpha / s:.3f}")
        return "\n".join(lines)


def _objective(x, logN, logD, logL, delta):
    """Huber sum of appendix D.2 and its gradient; x = (a, b, e, alpha, beta), x may carry
    a leading batch dim (K, 5) for the grid, in which case only the values are returned."""
    x = np.asarray(x, dtype=np.float64)
    a, b, e, al, be = (x[..., k, None] for k in range(5))  # each (K, 1) or (1,)
    t = np.stack(np.broadcast_arrays(a - al * logN, b - be * logD, e))  # (3, [K,] n)
    m = t.max(0)
    w = np.exp(t - m)
    s = w.sum(0)
    r = m + np.log(s) - logL  # predicted minus observed log-loss
    absr = np.abs(r)
    huber = np.where(absr <= delta, 0.5 * r * r, delta * (absr - 0.5 * delta)).sum(-1)
    if x.ndim == 2:
        return huber
    gw = np.clip(r, -delta, delta) * (w / s)  # dHuber/dr · dLSE/dt, (3, n)
    grad = np.array([gw[0].sum(), gw[1].sum(), gw[2].sum(),
                     -(gw[0] * logN).sum(), -(gw[1] * logD).sum()])
    return huber, grad


def _lbfgs(x0, args, scale):
    # L-BFGS-B stops when f improves by < ftol * max(|f|, 1); the Huber sum is ~1e-6 near
    # the optimum, so unscaled it would stop at once. 1/delta^2 makes a residual of delta
    # cost ~0.5, and the tight tolerances then let it converge.
    def f(x):
        v, g = _objective(x, *args)
        return v * scale, g * scale

    bounds = [(None, None)] * 3 + [_EXP_BOUNDS] * 2
    res = minimize(f, x0, jac=True, method="L-BFGS-B", bounds=bounds,
                   options={"maxiter": 1000, "ftol": 1e-14, "gtol": 1e-10})
    return res.x, res.fun / scale


def _grid() -> np.ndarray:
    """Hoffmann et al. 2022 appendix D.2's initialisations, as rows (a, b, e, alpha, beta)."""
    ab = np.arange(0.0, 25.1, 5.0)
    ex = np.arange(0.0, 2.01, 0.5)
    es = np.arange(-1.0, 1.01, 0.5)
    g = np.array(list(itertools.product(ab, ab, es, ex, ex)))
    g[:, 3:] = np.clip(g[:, 3:], *_EXP_BOUNDS)
    return g


def _best_of(starts, args, scale):
    return min((_lbfgs(x0, args, scale) for x0 in starts), key=lambda xr: xr[1])


def _check(points) -> None:
    if len(points) < 5:
        raise ValueError(f"need at least 5 points to fit the 5 constants (E, A, B, alpha, beta), "
                         f"got {len(points)}")
    n_N, n_D = len({p.n_params for p in points}), len({p.n_tokens for p in points})
    if n_N < 2 or n_D < 2:
        raise ValueError(f"need at least 2 distinct model sizes and 2 distinct token counts to "
                         f"separate the N and D terms, got {n_N} sizes and {n_D} token counts")


def fit_scaling_law(points, *, delta: float = 1e-3, n_bootstrap: int = 50, seed: int = 0,
                    n_starts: int = 24) -> ScalingFit:
    """Fit E, A, B, alpha, beta to points by Hoffmann et al. 2022 Approach 3 (appendix D.2),
    with bootstrap standard errors (none when n_bootstrap < 2).

    >>> fit = fit_scaling_law(points)        # doctest: +SKIP
    >>> fit.predict(1e8, 2e9)                # doctest: +SKIP
    """
    points = list(points)
    _check(points)
    if not delta > 0:
        raise ValueError(f"delta must be positive, got {delta}")
    if n_bootstrap < 0 or n_starts < 1:
        raise ValueError(f"need n_bootstrap >= 0 and n_starts >= 1, got {n_bootstrap}, {n_starts}")
    logN = np.log([p.n_params for p in points])
    logD = np.log([p.n_tokens for p in points])
    logL = np.log([p.loss for p in points])
    scale = 1.0 / delta**2
    grid = _grid()
    values = _objective(grid, logN, logD, logL, delta)
    starts = grid[np.argsort(values, kind="stable")[:n_starts]]
    x, obj = _best_of(starts, (logN, logD, logL, delta), scale)

    stderr = {}
    if n_bootstrap >= 2:
        rng = np.random.default_rng(seed)
        jitter = np.array([1.0, 1.0, 0.1, 0.05, 0.05])
        samples = []
        while len(samples) < n_bootstrap:
            idx = rng.integers(0, len(points), len(points))
            if len(set(logN[idx])) < 2 or len(set(logD[idx])) < 2:
                continue  # a degenerate resample cannot separate the N and D terms: redraw
            starts = [x, *(x + jitter * rng.standard_normal(5) for _ in range(2))]
            starts = [np.clip(s, [-np.inf] * 3 + [_EXP_BOUNDS[0]] * 2,
                              [np.inf] * 3 + [_EXP_BOUNDS[1]] * 2) for s in starts]
            xb, _ = _best_of(starts, (logN[idx], logD[idx], logL[idx], delta), scale)
            samples.append(_constants(xb))
        samples = np.array(samples)  # (n_bootstrap, 5) in CONSTANTS order
        stderr = {k: float(v) for k, v in zip(CONSTANTS, samples.std(0, ddof=1))}
    E, A, B, alpha, beta = _constants(x)
    return ScalingFit(E=E, A=A, B=B, alpha=alpha, beta=beta, stderr=stderr,
                      n_points=len(points), objective=float(obj))


def _constants(x) -> tuple[float, float, float, float, float]:
    a, b, e, alpha, beta = (float(v) for v in x)
    return math.exp(e), math.exp(a), math.exp(b), alpha, beta


def plot_scaling(fit: ScalingFit, points, path: str | os.PathLike, holdout=()) -> Path:
    """PNG of two panels: loss vs tokens per model size with the fitted curves (held-out
    points as black-edged stars), and loss vs compute with iso-N curves and the
    compute-optimal frontier. Written atomically.

    >>> plot_scaling(fit, points, "runs/scaling.png", holdout=test_points)  # doctest: +SKIP
    """
    # The Agg canvas on a bare Figure: headless, and no pyplot global state or backend switch
    # leaks into the caller's session (a Jupyter user keeps their own backend).
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FormatStrFormatter

    points, holdout = list(points), list(holdout)
    everything = points + holdout
    if not everything:
        raise ValueError("plot_scaling needs at least one point")
    sizes = sorted({p.n_params for p in everything})
    D_all = np.array([p.n_tokens for p in everything], dtype=np.float64)
    C_all = np.array([p.compute for p in everything])
    D_grid = np.geomspace(D_all.min() / 2, D_all.max() * 2, 200)
    C_grid = np.geomspace(C_all.min() / 4, C_all.max() * 4, 200)

    fig = Figure(figsize=(13, 5.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax_d, ax_c = fig.subplots(1, 2)
    colors = colormaps["viridis"](np.linspace(0.0, 0.9, len(sizes)))
    for color, N in zip(colors, sizes):
        label = f"N = {N:.3g}"
        ax_d.plot(D_grid, fit.predict(N, D_grid), color=color, lw=1.2, label=label)
        ax_c.plot(C_grid, fit.predict(N, C_grid / (6 * N)), color=color, lw=1.0, alpha=0.8)
        for ps, kw in ((points, dict(marker="o", s=28)),
                       (holdout, dict(marker="*", s=140, edgecolors="black", linewidths=1.0))):
            mine = [p for p in ps if p.n_params == N]
            if mine:
                ax_d.scatter([p.n_tokens for p in mine], [p.loss for p in mine], color=color,
                             zorder=3, **kw)
                ax_c.scatter([p.compute for p in mine], [p.loss for p in mine], color=color,
                             zorder=3, **kw)
    N_opt, D_opt = fit.compute_optimal(C_grid)
    ax_c.plot(C_grid, fit.predict(N_opt, D_opt), color="crimson", lw=2.2, ls="--",
              label="compute-optimal frontier")
    if holdout:
        ax_d.scatter([], [], marker="*", s=140, color="white", edgecolors="black",
                     label="held out")
    # Log-log, as scaling plots are read; y limits from the observed losses, since the
    # iso-N curves shoot up where a large model sees too few tokens.
    L_all = np.array([p.loss for p in everything])
    ylim = (L_all.min() / 1.1, L_all.max() * 1.3)
    ax_d.set(xscale="log", yscale="log", ylim=ylim, xlabel="training tokens D",
             ylabel="validation loss (nats/token)", title="loss vs tokens, per model size")
    ax_c.set(xscale="log", yscale="log", ylim=ylim, xlabel="compute C = 6ND (FLOPs)",
             ylabel="validation loss (nats/token)", title="loss vs compute: iso-N curves")
    for ax in (ax_d, ax_c):  # plain "3.5", not "3.5 x 10^0", on the short log loss axis
        ax.yaxis.set_major_formatter(FormatStrFormatter("%.3g"))
        ax.yaxis.set_minor_formatter(FormatStrFormatter("%.3g"))
    ax_d.legend(fontsize=8)
    ax_c.legend(fontsize=8)
    fig.suptitle(f"L = {fit.E:.3g} + {fit.A:.3g}/N^{fit.alpha:.3f} + {fit.B:.3g}/D^{fit.beta:.3f}")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return atomic_write_bytes(path, buf.getvalue())

