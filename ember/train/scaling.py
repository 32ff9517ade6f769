"""`ember scaling sweep` and `ember scaling fit`: train a grid of tiny models, fit the
Chinchilla law L(N, D) = E + A/N^α + B/D^β, and check it on a larger run left out of the fit.

Each run trains with a cosine schedule matched to its own length (Hoffmann et al. 2022 §3:
a schedule longer than the run overstates the loss), so every (N, D) point is a finished run.
`--resume true` continues a sweep (runs already in points.jsonl are kept, an unfinished run
resumes from its checkpoint); a folder holding a sweep is otherwise refused, unless
`--overwrite true` asks to delete it.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ember.core.io import atomic_write_json, atomic_write_text
from ember.core.lock import LOCK_NAME, dir_lock
from ember.eval.scaling import (
    ScalingPoint,
    fit_scaling_law,
    load_points,
    plot_scaling,
    save_points,
)
from ember.train.checkpoint import checkpoint_folders
from ember.train.run_dir import clear_run, run_files

RUN_NAME = re.compile(r"\d+x\d+-\d+")  # the sweep's own run folders: runs/<LAYERSxD_MODEL>-<TOKENS>


@dataclass
class ScalingSweepConfig:
    """Train every model × token budget of a small grid, plus one larger held-out run."""

    models: list[str] = field(default_factory=lambda: ["2x64", "2x96", "3x128", "4x160"])
    """model sizes of the grid, each LAYERSxD_MODEL"""
    # 128-512 steps of 8 × 128 tokens. Fewer steps leave the runs on the unigram plateau
    # (loss ≈ 6.8 at vocab 4096, bigger models no better), where no power law holds.
    tokens: list[int] = field(default_factory=lambda: [131_072, 262_144, 524_288])
    """training tokens D of each run of the grid"""
    holdout: list[str] = field(default_factory=lambda: ["4x192:1048576"])
    """larger runs left out of the fit to check its prediction, each MODEL:TOKENS"""
    seq_len: int = 128
    """tokens per training window"""
    batch_size: int = 8
    """sequences per step"""
    lr: float = 4e-3
    """peak learning rate of every run"""
    data: str | None = None
    """prepared shards (default: the bundled corpus, BPE 4096)"""
    out: str = "runs/scaling"
    """sweep folder: points.jsonl, holdout.jsonl and runs/"""
    seed: int = 0
    """seed of every run"""
    threads: int | None = None
    """torch threads (default: all cores)"""
    resume: bool = False
    """continue the sweep in out: finished runs are kept, unfinished ones resume"""
    overwrite: bool = False
    """delete the sweep in out (points, runs) and start again"""


@dataclass
class ScalingFitConfig:
    """Fit L(N, D) to a sweep's points and check the held-out runs."""

    out: str = "runs/scaling"
    """the sweep folder (points.jsonl, holdout.jsonl)"""
    compute: list[float] = field(default_factory=lambda: [1e15, 1e17])
    """compute budgets C (FLOPs) to give the compute-optimal N and D for"""
    bootstrap: int = 50
    """bootstrap resamples for the fit's confidence intervals"""


def parse_model(spec: str) -> tuple[int, int]:
    """'3x128' → (3 layers, d_model 128)."""
    try:
        layers, width = (int(v) for v in spec.lower().split("x"))
    except ValueError:
        raise ValueError(f"model {spec!r} is not LAYERSxD_MODEL, e.g. '3x128'") from None
    if layers < 1 or width < 32 or width % 32:
        raise ValueError(f"model {spec!r}: need ≥ 1 layer and a d_model that is a multiple of 32")
    return layers, width


def train_point(spec: str, tokens: int, cfg: ScalingSweepConfig, info) -> ScalingPoint:
    """One finished run of `spec` on `tokens` tokens → (N, D, final validation loss)."""
    from ember.train.config import TrainConfig
    from ember.train.kit.pretraining import (
        DataConfig,
        ModelOverrides,
        PretrainConfig,
        build_pretrain,
    )
    from ember.train.metrics import non_embedding_params
    from ember.train.optim import OptimConfig

    layers, width = parse_model(spec)
    steps = max(1, tokens // (cfg.batch_size * cfg.seq_len))
    heads = width // 32
    run_dir = Path(cfg.out) / "runs" / f"{spec}-{tokens}"
    # The sweep owns its run folders (its own claim was checked): a run it did not finish
    # resumes from its checkpoint (one saved on Ctrl-C), or else starts again.
    resume = bool(checkpoint_folders(run_dir))
    overwrite = not resume and bool(run_files(run_dir))
    if resume or overwrite:
        print(f"{run_dir}: unfinished, {'resuming' if resume else 'starting it again'}", file=sys.stderr)
    pcfg = PretrainConfig(
        arch="mini-llama",
        model=ModelOverrides(n_layers=layers, d_model=width, n_heads=heads, n_kv_heads=heads,
                             d_ff=_swiglu_width(width), max_seq_len=cfg.seq_len),
        data=DataConfig(dir=cfg.data, seq_len=cfg.seq_len),
        train=TrainConfig(steps=steps, batch_size=cfg.batch_size, eval_every=0, eval_windows=128,
                          sample_every=0, save_every=0, keep_checkpoints=1, log_every=max(1, steps // 20),
                          seed=cfg.seed, out=str(run_dir), resume=resume, overwrite=overwrite, progress=False),
        optim=OptimConfig(lr=cfg.lr, warmup_steps=max(1, steps // 20), min_lr_ratio=0.1),
        export_hf=False,
        sample_tokens=0,
    )
    trainer = build_pretrain(pcfg, info)
    summary = trainer.fit()
    n = non_embedding_params(trainer.plain.config)
    return ScalingPoint(n_params=n, n_tokens=steps * cfg.batch_size * cfg.seq_len,
                        loss=float(summary["val_loss"]), name=f"{spec}:{tokens}")


def _swiglu_width(d: int) -> int:
    """≈ 8/3·d rounded up to a multiple of 16 (Llama's rule, so params grow like 12·d²)."""
    return -(-8 * d // 3 // 16) * 16


def sweep(cfg: ScalingSweepConfig) -> dict:
    import torch

    from ember.parallel import init_distributed

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    info = init_distributed("cpu")
    out = Path(cfg.out)
    grid = [(m, int(t)) for m in cfg.models for t in cfg.tokens]
    held = []
    for h in cfg.holdout:
        spec, _, tok = h.partition(":")
        if not tok.isdigit():
            raise ValueError(f"holdout {h!r} is not MODEL:TOKENS, e.g. '4x192:1048576'")
        held.append((spec, int(tok)))
    for spec, _ in grid + held:
        parse_model(spec)  # fail on a bad spec before hours of training
    if cfg.resume and not out.is_dir():
        _claim_sweep(cfg)  # refuses before the lock would make a misspelt folder
    with dir_lock(out, "scaling sweep folder"):
        _claim_sweep(cfg)
        return _run_sweep(cfg, grid, held, info)


def _run_sweep(cfg: ScalingSweepConfig, grid: list, held: list, info) -> dict:
    from tqdm import tqdm

    out = Path(cfg.out)
    results = {}
    for name, jobs in (("points", grid), ("holdout", held)):
        path = out / f"{name}.jsonl"
        done = {p.name: p for p in load_points(path)} if path.is_file() else {}
        for spec, tokens in tqdm(jobs, desc=f"scaling {name}", unit="run", file=sys.stderr):
            key = f"{spec}:{tokens}"
            if key not in done:
                done[key] = train_point(spec, tokens, cfg, info)
                save_points(path, list(done.values()))  # after every run: a crash loses one run
            p = done[key]
            print(f"{key:>16}  N={p.n_params:>9,}  D={p.n_tokens:>9,}  loss={p.loss:.4f}", file=sys.stderr)
        results[name] = [done[f"{s}:{t}"] for s, t in jobs]
    return results


# What makes two sweeps' points comparable: a resumed sweep must train its runs alike.
SWEEP_SETTINGS = ("seq_len", "batch_size", "lr", "data", "seed")
SWEEP_FILES = ("points.jsonl", "holdout.jsonl", "sweep.json", "fit.json", "fit.txt", "scaling.png")


def _claim_sweep(cfg: ScalingSweepConfig) -> None:
    """Refuse a folder holding another sweep unless --resume (same settings) or --overwrite,
    the rules of a training run folder (ember.train.run_dir) applied to the whole sweep."""
    out = Path(cfg.out)
    runs = sorted(p for p in (out / "runs").glob("*") if p.is_dir() and RUN_NAME.fullmatch(p.name))
    found = [out / n for n in SWEEP_FILES if (out / n).exists()] + runs
    settings = {k: getattr(cfg, k) for k in SWEEP_SETTINGS}
    if cfg.resume and cfg.overwrite:
        raise ValueError("--resume and --overwrite contradict each other: pass one of them")
    if cfg.resume and not found:
        raise ValueError(f"--resume true: nothing to resume in {out} (no points.jsonl, no runs/); check --out")
    if found and not (cfg.resume or cfg.overwrite):
        raise ValueError(
            f"{out} already holds a scaling sweep ({', '.join(p.name for p in found[:4])}): pass --resume true "
            "to continue it (finished runs are kept) or --overwrite true to delete it and start again"
        )
    if cfg.overwrite:
        for path in found:
            if path.is_dir():  # a run folder: its run's files, then the folder if nothing else is left
                clear_run(path)
                if {p.name for p in path.iterdir()} <= {LOCK_NAME}:
                    shutil.rmtree(path)
            else:
                path.unlink()
    elif cfg.resume and (out / "sweep.json").is_file():
        saved = json.loads((out / "sweep.json").read_text(encoding="utf-8"))
        diff = [f"{k}: {saved.get(k)!r} in the sweep vs {v!r} now" for k, v in settings.items() if saved.get(k) != v]
        if diff:
            raise ValueError(f"--resume true: {out} holds a sweep with other settings ({'; '.join(diff)})")
    atomic_write_json(out / "sweep.json", settings)


def fit(cfg: ScalingFitConfig) -> dict:
    out = Path(cfg.out)
    points_path = out / "points.jsonl"
    if not points_path.is_file():
        raise ValueError(f"{points_path} does not exist: run `ember scaling sweep --out {cfg.out}` first")
    points = load_points(points_path)
    holdout = load_points(out / "holdout.jsonl") if (out / "holdout.jsonl").is_file() else []
    law = fit_scaling_law(points, n_bootstrap=cfg.bootstrap)
    lines = [law.summary()]
    report = {"fit": law.to_dict(), "holdout": [], "compute_optimal": []}
    for p in holdout:
        pred = float(law.predict(p.n_params, p.n_tokens))
        err = (pred - p.loss) / p.loss
        report["holdout"].append({"name": p.name, "N": p.n_params, "D": p.n_tokens, "measured": p.loss,
                                  "predicted": pred, "rel_error": err})
        lines.append(f"held-out {p.name}: predicted {pred:.4f}, measured {p.loss:.4f} ({100 * err:+.2f}%)")
    for c in cfg.compute:
        n_opt, d_opt = law.compute_optimal(c)
        report["compute_optimal"].append({"C": c, "N": n_opt, "D": d_opt, "loss": float(law.predict(n_opt, d_opt))})
        lines.append(f"C={c:.1e} FLOPs → N_opt={n_opt:,.0f}, D_opt={d_opt:,.0f} (D/N={d_opt / n_opt:.1f})")
    report["plot"] = str(plot_scaling(law, points, out / "scaling.png", holdout=holdout))
    atomic_write_json(out / "fit.json", report)
    atomic_write_text(out / "fit.txt", "\n".join(lines) + "\n")
    print("\n".join(lines))
    print(json.dumps({"holdout": report["holdout"], "plot": report["plot"]}))
    return report
