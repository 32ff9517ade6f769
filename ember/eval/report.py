"""`ember report RUN_DIR... --out report.html`: one self-contained HTML page about runs.

The page holds, for one run or several side by side: a comparison table, the loss curves
(training, validation, learning rate; runs overlaid), RL reward curves with their ScaleRL
sigmoid fits, the evaluation tables of every results.json found in or given with a run
(`ember eval run --out RUN/eval/...`), a scaling sweep's L(N, D) fit, and the configs (the
keys that differ first). Figures are base64 PNGs and the CSS is inline: the page loads
nothing from anywhere. Every text from the runs is HTML-escaped, so a run name or a config
value holding markup shows as text. An existing page is never replaced without --overwrite.

    >>> report(ReportConfig(runs=["runs/a", "runs/b"], out="report.html"))  # doctest: +SKIP
    {'out': 'report.html', 'runs': 2, 'figures': 1, 'evals': 0, 'bytes': 61234}
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from html import escape
from pathlib import Path

from ember.core.io import atomic_write_text

from . import report_figures as F
from .report_data import Run, finite, load_run

MAX_ITEMS = 20  # evaluation items shown per results.json
MAX_CELL = 400  # characters of one prompt or response shown

CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1280px;padding:0 16px;color:#1d1d1f}
h1{font-size:22px}h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ddd}h3{font-size:15px}
table{border-collapse:collapse;margin:8px 0 16px;font-size:13px}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f4f4f6}td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.diff td{background:#fff8e1}img{max-width:100%;height:auto}figure{margin:8px 0}
pre{white-space:pre-wrap;margin:0;max-width:560px}.muted{color:#777}.note{color:#9a6700}
"""


@dataclass
class ReportConfig:
    """One self-contained HTML page (no network) about one or more runs, side by side."""

    runs: list[str] = field(default_factory=list)
    """run folders (training runs, scaling sweeps, eval outputs) or results.json files (also the bare words)"""
    out: Path = Path("report.html")  # a Path: the CLI checks str `out` fields as folders, this is a file
    """the HTML file to write (a file path; its folder is made if needed)"""
    overwrite: bool = False
    """replace an existing --out (else it is an error)"""
    title: str = "ember report"
    """the page's heading"""


def report(cfg: ReportConfig) -> dict:
    """Read the runs, write the page atomically; a summary of what it holds."""
    if not cfg.runs:
        raise ValueError("give at least one run folder: ember report RUN_DIR... [--out report.html]")
    out = Path(cfg.out)
    if out.is_dir():
        raise ValueError(f"--out {str(out)!r} is a folder; give the HTML file's path, e.g. {out / 'report.html'}")
    if out.exists() and not cfg.overwrite:
        raise FileExistsError(17, "a report is already there; pass --overwrite to replace it", str(out))
    runs = [load_run(p) for p in cfg.runs]
    _unique_names(runs)
    page, counts = build_html(runs, cfg.title)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, page)
    summary = {"out": str(out), "runs": len(runs), **counts, "bytes": len(page.encode("utf-8"))}
    print(json.dumps(summary))
    return summary


def _unique_names(runs: list[Run]) -> None:
    """Two folders with one name (a/run, b/run) are told apart by their paths."""
    seen: dict[str, int] = {}
    for r in runs:
        seen[r.name] = seen.get(r.name, 0) + 1
    for r in runs:
        if seen[r.name] > 1:
            r.name = str(r.path)


def build_html(runs: list[Run], title: str = "ember report") -> tuple[str, dict]:
    """(the page, {"figures": n, "evals": n}) for `runs`."""
    figures = []
    loss = F.loss_figure([(r.name, r.records) for r in runs])
    if loss:
        figures.append(("Loss curves", _figure(loss, "training loss, validation loss and learning rate per step")))
    fits = _rl_fits(runs)
    rl = F.rl_figure([(r.name, r.records) for r in runs], {k: v["fit"] for k, v in fits.items()})
    if rl:
        figures.append(("RL reward", _figure(rl, "mean reward per step; reward against compute with the "
                                             "ScaleRL sigmoid R(C) = R0 + (A - R0) / (1 + (C_mid / C)^B)")
                        + _rl_table(fits)))
    for r in runs:
        if r.scaling:
            figures.append((f"Scaling law: {r.name}", _scaling_section(r)))
    body = [f"<h1>{escape(title)}</h1>",
            f"<p class=muted>{len(runs)} run(s), made {escape(dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC'))}"
            "</p>", _run_list(runs), "<h2>Comparison</h2>", _comparison(runs)]
    for heading, html in figures:
        body += [f"<h2>{escape(heading)}</h2>", html]
    n_evals = sum(len(r.evals) for r in runs)
    if n_evals:
        body += ["<h2>Evaluations</h2>", _evals(runs)]
    if any(r.config for r in runs):
        body += ["<h2>Configuration</h2>", _configs(runs)]
    page = ("<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
            "<meta name=viewport content='width=device-width, initial-scale=1'>"
            f"<title>{escape(title)}</title><style>{CSS}</style></head><body>\n"
            + "\n".join(body) + "\n</body></html>\n")
    n_fig = sum(h.count("<img ") for _, h in figures)
    return page, {"figures": n_fig, "evals": n_evals}


# ---- small HTML pieces: every text through escape() ------------------------------------

def _cell(v) -> str:
    if isinstance(v, bool) or v is None:
        return f"<td>{escape(str(v))}</td>" if v is not None else "<td class=muted>–</td>"
    if isinstance(v, int):
        return f"<td class=num>{v:,}</td>"
    if isinstance(v, float):
        return f"<td class=num>{_fmt(v)}</td>"
    return f"<td>{escape(str(v))}</td>"


def _fmt(v: float) -> str:
    if v != v or v in (float("inf"), float("-inf")):
        return str(v)
    return f"{v:.4g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.3e}"


def _table(headers: list[str], rows: list[list], row_class: list[str] | None = None) -> str:
    head = "".join(f"<th>{escape(str(h))}</th>" for h in headers)
    lines = []
    for k, row in enumerate(rows):
        cls = f" class={row_class[k]}" if row_class and row_class[k] else ""
        lines.append(f"<tr{cls}>" + "".join(c if isinstance(c, _Raw) else _cell(c) for c in row) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(lines)}</tbody></table>"


class _Raw(str):
    """A cell already rendered (escaped) by this module."""


def _figure(uri: str, caption: str) -> str:
    return (f"<figure><img src=\"{uri}\" alt=\"{escape(caption)}\">"
            f"<figcaption class=muted>{escape(caption)}</figcaption></figure>")


def _run_list(runs: list[Run]) -> str:
    rows = []
    for r in runs:
        notes = f"{r.skipped_lines} metrics line(s) skipped (cut short or without a step)" if r.skipped_lines else ""
        rows.append([r.name, str(r.path), len(r.records), len(r.evals), _Raw(f"<td class=note>{escape(notes)}</td>")])
    return _table(["run", "path", "metric rows", "evaluations", "notes"], rows)


# ---- sections -------------------------------------------------------------------------

def _last(records: list[dict], key: str):
    vals = [r[key] for r in records if finite(r.get(key))]
    return vals[-1] if vals else None


def _comparison(runs: list[Run]) -> str:
    """One row per run: how far it went, its final losses and reward, every eval metric."""
    metric_cols = sorted({(e["task"], m) for r in runs for e in r.evals for m in e["metrics"]})
    headers = ["run", "steps", "tokens", "train loss", "val loss", "best val loss", "val ppl", "reward",
               *[f"{t}: {m}" for t, m in metric_cols]]
    rows = []
    for r in runs:
        recs = r.records
        vals = [x["val_loss"] for x in recs if finite(x.get("val_loss"))]
        evals = {(e["task"], m): v for e in r.evals for m, v in e["metrics"].items()}
        rows.append([r.name, _last(recs, "step"), _last(recs, "tokens"), _last(recs, "loss"), _last(recs, "val_loss"),
                     min(vals) if vals else None, _last(recs, "val_ppl"), _last(recs, "reward"),
                     *[evals.get(c) for c in metric_cols]])
    return _table(headers, rows)


def _rl_fits(runs: list[Run]) -> dict[str, dict]:
    """run name → {"fit" (on every step), "prefix" (ember.eval.rl_curve.fit_prefix)} for
    runs with at least 8 steps of reward and step_tokens; a fit that fails is left out."""
    import numpy as np

    from .rl_curve import fit_prefix, fit_rl_curve

    fits = {}
    for r in runs:
        rows = [x for x in r.records if finite(x.get("reward")) and finite(x.get("step_tokens"))]
        if len(rows) < 8:
            continue
        compute = np.cumsum([x["step_tokens"] for x in rows])
        reward = np.array([x["reward"] for x in rows])
        try:
            fits[r.name] = {"fit": fit_rl_curve(compute, reward), "prefix": fit_prefix(compute, reward),
                            "steps": len(rows)}
        except (ValueError, RuntimeError, FloatingPointError):
            continue
    return fits


def _rl_table(fits: dict[str, dict]) -> str:
    if not fits:
        return "<p class=muted>No run has the 8 steps of reward and step_tokens a sigmoid fit needs.</p>"
    rows = [[name, f["steps"], f["fit"].R0, f["fit"].A, f["fit"].B, f["fit"].C_mid, f["fit"].rmse,
             f["prefix"]["predicted_final"], f["prefix"]["actual_final"]] for name, f in fits.items()]
    return _table(["run", "steps", "R0", "A (asymptote)", "B", "C_mid (tokens)", "rmse",
                   "final, predicted from the first half", "final, reached"], rows)


def _scaling_section(r: Run) -> str:
    from .scaling import ScalingFit

    fit = (r.scaling.get("fit") or {}).get("fit")
    law = ScalingFit.from_dict(fit) if isinstance(fit, dict) else None
    html = []
    uri = F.scaling_figure(r.scaling["points"], r.scaling["holdout"], law)
    if uri:
        html.append(_figure(uri, "validation loss against training tokens, one colour per model size; "
                                 "lines: the fitted L(N, D) = E + A/N^alpha + B/D^beta"))
    if law is not None:
        html.append(_table(["E", "A", "B", "alpha", "beta", "points"],
                           [[law.E, law.A, law.B, law.alpha, law.beta, law.n_points]]))
    held = (r.scaling.get("fit") or {}).get("holdout") or []
    if held:
        html.append(_table(["held-out run", "N", "D", "measured", "predicted", "relative error"],
                           [[h.get("name"), h.get("N"), h.get("D"), h.get("measured"), h.get("predicted"),
                             h.get("rel_error")] for h in held]))
    pts = r.scaling["points"]
    html.append(_table(["point", "N", "D", "loss"], [[p["name"], p["n_params"], p["n_tokens"], p["loss"]] for p in pts]))
    return "\n".join(html)


def _evals(runs: list[Run]) -> str:
    """Per task: one row per (run, results.json) with every metric ± its stderr; then each
    result's first items in a <details>."""
    html = []
    for task in sorted({e["task"] for r in runs for e in r.evals}):
        found = [(r, e) for r in runs for e in r.evals if e["task"] == task]
        metrics = sorted({m for _, e in found for m in e["metrics"]})
        rows = []
        for r, e in found:
            cells = []
            for m in metrics:
                v, s = e["metrics"].get(m), (e.get("stderr") or {}).get(m)
                text = "–" if v is None else _fmt(v) + (f" ± {_fmt(s)}" if finite(s) else "")
                cells.append(_Raw(f"<td class=num>{escape(text)}</td>"))
            rows.append([r.name, e.get("model"), e.get("backend"), e.get("shots"), e.get("n"), e.get("seconds"), *cells])
        html += [f"<h3>{escape(task)}</h3>",
                 _table(["run", "model", "backend", "shots", "n", "seconds", *metrics], rows)]
        html += [_items(r, e) for r, e in found if e.get("items")]
    return "\n".join(html)


def _clip(v) -> str:
    s = v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)
    return s if len(s) <= MAX_CELL else s[:MAX_CELL] + f"… ({len(s)} characters)"


def _items(r: Run, e: dict) -> str:
    items = e["items"][:MAX_ITEMS]
    rows = []
    for it in items:
        it = it if isinstance(it, dict) else {"doc": it}
        answer = it.get("response", it.get("loglikelihoods"))
        if isinstance(it.get("choices"), list) and isinstance(answer, list) and len(answer) == len(it["choices"]):
            answer = "\n".join(f"{_fmt(ll) if finite(ll) else ll}  {c}" for ll, c in zip(answer, it["choices"]))
        rows.append([_Raw(f"<td><pre>{escape(_clip(it.get(k)))}</pre></td>") for k in ("prompt", "target")]
                    + [_Raw(f"<td><pre>{escape(_clip(answer))}</pre></td>"),
                       _Raw(f"<td><pre>{escape(_clip(it.get('metrics')))}</pre></td>")])
    more = f" (first {MAX_ITEMS} of {len(e['items'])})" if len(e["items"]) > MAX_ITEMS else ""
    return (f"<details><summary>{escape(r.name)}: items{escape(more)} — {escape(e['_path'])}</summary>"
            + _table(["prompt", "target", "response / log-likelihoods", "metrics"], rows) + "</details>")


def _flatten(d, prefix: str = "") -> dict[str, str]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v if isinstance(v, str) else json.dumps(v)
    return out


def _configs(runs: list[Run]) -> str:
    """One row per config key, one column per run; rows that differ come first, marked."""
    runs = [r for r in runs if r.config]
    flat = [_flatten(r.config) for r in runs]
    keys = sorted({k for f in flat for k in f})
    differ = [k for k in keys if len({f.get(k) for f in flat}) > 1] if len(runs) > 1 else []
    ordered = differ + [k for k in keys if k not in differ]
    rows = [[k, *[f.get(k) for f in flat]] for k in ordered]
    note = (f"<p>{len(differ)} key(s) differ between the runs (highlighted, first).</p>" if len(runs) > 1 else "")
    return note + _table(["key", *[r.name for r in runs]], rows, ["diff" if k in differ else "" for k in ordered])
