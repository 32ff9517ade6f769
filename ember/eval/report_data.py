"""What `ember report` reads from a run folder, checked: nothing here writes.

A folder may hold a training run (config.json, metrics.jsonl, summary.json), evaluation
results anywhere below it (`ember eval run --out RUN/eval/...` writes results.json), and a
scaling sweep (points.jsonl, holdout.jsonl, fit.json). A results.json file may also be given
alone. A metrics.jsonl line cut short by a crash is skipped and counted, as the training
metrics logger does on resume; any other malformed file is an error naming it.

    >>> run = load_run("runs/pretrain")  # doctest: +SKIP
    >>> run.records[-1]["loss"], [e["task"] for e in run.evals]  # doctest: +SKIP
    (3.91, ['commonsense'])
"""

from __future__ import annotations

import errno
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from ember.core.io import read_text_utf8

RESULTS = "results.json"
SKIP_DIRS = {"checkpoints", "tb", "hf", "model", "adapter", ".git"}
MAX_RESULTS = 200  # results.json files read below one folder


@dataclass
class Run:
    """One folder's data. name: its folder name (made unique by the caller)."""

    name: str
    path: Path
    config: dict | None = None
    summary: dict | None = None
    records: list[dict] = field(default_factory=list)
    skipped_lines: int = 0
    evals: list[dict] = field(default_factory=list)
    scaling: dict | None = None  # {"points", "holdout", "fit"}

    @property
    def is_empty(self) -> bool:
        return not (self.config or self.summary or self.records or self.evals or self.scaling)


def load_run(path: str | Path) -> Run:
    """A run folder (or one results.json) → Run; FileNotFoundError if it is not there,
    ValueError if nothing in it is a run's, or a file in it is malformed."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(errno.ENOENT, "no such run folder or results.json", str(p))
    if p.is_file():
        if p.name != RESULTS:
            raise ValueError(f"{p}: give a run folder or an evaluation's {RESULTS}, not another file")
        return Run(name=p.parent.name or p.name, path=p, evals=[_results(p)])
    run = Run(name=p.resolve().name, path=p)
    run.config = _json_dict(p / "config.json")
    run.summary = _json_dict(p / "summary.json")
    if (p / "metrics.jsonl").is_file():
        run.records, run.skipped_lines = read_metrics(p / "metrics.jsonl")
    run.evals = [_results(f) for f in find_results(p)]
    if (p / "points.jsonl").is_file():
        run.scaling = {"points": _points(p / "points.jsonl"), "fit": _json_dict(p / "fit.json"),
                       "holdout": _points(p / "holdout.jsonl") if (p / "holdout.jsonl").is_file() else []}
    if run.is_empty:
        raise ValueError(f"{p}: nothing to report: no config.json, metrics.jsonl, summary.json, points.jsonl "
                         f"(a scaling sweep) or {RESULTS} (an evaluation) in it")
    return run


def read_metrics(path: Path) -> tuple[list[dict], int]:
    """(the records with a step, how many lines were skipped: cut short or without a step)."""
    records, skipped = [], 0
    for line in read_text_utf8(path).splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            skipped += 1
            continue
        if isinstance(rec, dict) and isinstance(rec.get("step"), int | float):
            records.append(rec)
        else:
            skipped += 1
    return records, skipped


def find_results(folder: Path) -> list[Path]:
    """Every results.json below `folder` (checkpoints and exports skipped), in path order."""
    found: list[Path] = []
    stack = [folder]
    while stack and len(found) < MAX_RESULTS:
        d = stack.pop()
        try:
            entries = sorted(d.iterdir())
        except OSError:
            continue
        for e in entries:
            if e.is_dir() and not e.is_symlink() and e.name not in SKIP_DIRS:
                stack.append(e)
            elif e.name == RESULTS and e.is_file():
                found.append(e)
    return sorted(found)[:MAX_RESULTS]


def _json(path: Path):
    try:
        return json.loads(read_text_utf8(path))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from None


def _json_dict(path: Path) -> dict | None:
    if not path.is_file():
        return None
    obj = _json(path)
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(obj).__name__}")
    return obj


def _results(path: Path) -> dict:
    """One evaluation's results.json, checked: task (text), metrics and stderr ({name: number})."""
    res = _json_dict(path)
    if not isinstance(res.get("task"), str) or not isinstance(res.get("metrics"), dict):
        raise ValueError(f"{path}: not an evaluation's results (needs \"task\" and \"metrics\")")
    for key in ("metrics", "stderr"):
        for name, v in (res.get(key) or {}).items():
            if v is not None and not isinstance(v, int | float):
                raise ValueError(f"{path}: {key}[{name!r}] is {v!r}, not a number")
    if not isinstance(res.get("items", []), list):
        raise ValueError(f"{path}: items is not a list")
    return {**res, "_path": str(path)}


def _points(path: Path) -> list[dict]:
    """A scaling sweep's points (ember.eval.scaling's checks), as dicts."""
    from dataclasses import asdict

    from ember.eval.scaling import load_points

    return [asdict(p) for p in load_points(path)]


def finite(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
