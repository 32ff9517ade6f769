"""The report's figures: matplotlib, drawn without pyplot (no global state), returned as
base64 PNG `data:` URIs so the page needs no other file and no network. Every function
takes the runs' data and returns None when there is nothing to draw.

    >>> uri = loss_figure([("run", [{"step": 1, "loss": 3.0}, {"step": 2, "loss": 2.5}])])
    >>> uri.startswith("data:image/png;base64,")
    True
"""

from __future__ import annotations

import base64
import io
import math

import numpy as np

RunRecords = list[tuple[str, list[dict]]]  # (run name, its metrics.jsonl records)


def _figure(n_axes: int, width: float = 4.2, height: float = 3.2):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * n_axes, height), layout="constrained")
    axes = fig.subplots(1, n_axes, squeeze=False)[0]
    return fig, list(axes)


def _data_uri(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _series(records: list[dict], key: str, x: str = "step") -> tuple[list[float], list[float]]:
    """(xs, ys) of the records that carry a finite number under both keys."""
    pts = [(r[x], r[key]) for r in records if _num(r.get(x)) and _num(r.get(key))]
    return [p[0] for p in pts], [p[1] for p in pts]


def _num(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _short(name: str, n: int = 40) -> str:
    return name if len(name) <= n else name[: n - 1] + "…"


def loss_figure(runs: RunRecords) -> str | None:
    """Training loss, validation loss and learning rate against step, every run overlaid."""
    panels = [(k, t) for k, t in (("loss", "training loss"), ("val_loss", "validation loss"),
                                  ("lr", "learning rate"))
              if any(_series(recs, k)[0] for _, recs in runs)]
    if not panels:
        return None
    fig, axes = _figure(len(panels))
    for ax, (key, title) in zip(axes, panels):
        for i, (name, recs) in enumerate(runs):
            xs, ys = _series(recs, key)
            if xs:
                style = {"marker": "o", "markersize": 3} if key == "val_loss" else {"linewidth": 1.2}
                ax.plot(xs, ys, color=f"C{i % 10}", label=_short(name), **style)
        ax.set(title=title, xlabel="step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    return _data_uri(fig)


def rl_figure(runs: RunRecords, fits: dict[str, object]) -> str | None:
    """Mean reward (and accuracy, dashed) per step; reward against cumulative tokens with
    each run's ScaleRL sigmoid (fits: run name → RLCurveFit)."""
    runs = [(n, r) for n, r in runs if _series(r, "reward")[0]]
    if not runs:
        return None
    fig, (a1, a2) = _figure(2)
    for i, (name, recs) in enumerate(runs):
        color = f"C{i % 10}"
        a1.plot(*_series(recs, "reward"), color=color, label=f"{_short(name)} reward")
        if _series(recs, "accuracy")[0]:
            a1.plot(*_series(recs, "accuracy"), color=color, linestyle="--", label=f"{_short(name)} accuracy")
        rows = [r for r in recs if _num(r.get("reward")) and _num(r.get("step_tokens"))]
        if rows:
            compute = np.cumsum([r["step_tokens"] for r in rows])
            a2.scatter(compute, [r["reward"] for r in rows], s=8, color=color, label=_short(name))
            if name in fits:
                grid = np.geomspace(compute[0], compute[-1] * 2, 100)
                a2.plot(grid, fits[name].predict(grid), color=color, linewidth=1.5)
    a1.set(title="reward per step", xlabel="step")
    a2.set(title="reward vs compute (ScaleRL fit)", xlabel="cumulative tokens", xscale="log")
    for ax in (a1, a2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _data_uri(fig)


def scaling_figure(points: list[dict], holdout: list[dict], law) -> str | None:
    """Validation loss against training tokens D, one colour per model size N; the fitted
    L(N, D) as lines (law: a ScalingFit, or None), held-out runs as stars."""
    if not points:
        return None
    fig, (ax,) = _figure(1, width=6.0, height=3.8)
    sizes = sorted({p["n_params"] for p in points + holdout})
    for i, n in enumerate(sizes):
        color = f"C{i % 10}"
        mine = sorted((p for p in points if p["n_params"] == n), key=lambda p: p["n_tokens"])
        held = [p for p in holdout if p["n_params"] == n]
        if mine:
            ax.scatter([p["n_tokens"] for p in mine], [p["loss"] for p in mine], color=color, label=f"N={n:,}")
        if held:
            ax.scatter([p["n_tokens"] for p in held], [p["loss"] for p in held], color=color, marker="*", s=120,
                       label=f"N={n:,} held out")
        if law is not None:
            ds = [p["n_tokens"] for p in points + holdout]
            grid = np.geomspace(min(ds) / 1.5, max(ds) * 1.5, 60)
            ax.plot(grid, [float(law.predict(n, d)) for d in grid], color=color, linewidth=1)
    ax.set(title="scaling law L(N, D)", xlabel="training tokens D", ylabel="validation loss", xscale="log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _data_uri(fig)
