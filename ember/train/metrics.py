"""Training metrics: JSONL + CSV (+ TensorBoard when installed), a loss-curve PNG, and MFU.

Every record is one dict with a "step"; train and eval records share the files (eval rows
carry "val_loss"). On resume the files are cut back to the checkpoint's step, so a resumed
run's metrics read exactly like an uninterrupted run's.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from functools import lru_cache
from pathlib import Path

import torch

from ember.core.io import atomic_write_bytes, atomic_write_text
from ember.model.config import ModelConfig

CSV_FIELDS = ["step", "loss", "val_loss", "val_ppl", "lr", "grad_norm", "tokens", "tok_s", "mfu", "time_s"]


class MetricsLogger:
    """Append-only metrics.jsonl and metrics.csv under `run_dir`; only rank 0 makes one."""

    def __init__(self, run_dir: str | Path, resume_step: int | None = None, tensorboard: bool = True):
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.jsonl = self.dir / "metrics.jsonl"
        self.csv = self.dir / "metrics.csv"
        self.records: list[dict] = []
        if resume_step is not None and self.jsonl.is_file():
            # keep what the checkpoint had seen; later rows belong to the lost run
            for line in self.jsonl.read_text(encoding="utf-8").splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by the crash
                if isinstance(rec, dict) and rec.get("step", math.inf) <= resume_step:
                    self.records.append(rec)
        self._rewrite()
        self._tb = _tensorboard(self.dir / "tb") if tensorboard else None

    def _rewrite(self) -> None:
        atomic_write_text(self.jsonl, "".join(json.dumps(r) + "\n" for r in self.records))
        buf = io.StringIO()
        w = csv.DictWriter(buf, CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(self.records)
        atomic_write_text(self.csv, buf.getvalue())

    def log(self, record: dict) -> None:
        self.records.append(record)
        with open(self.jsonl, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        with open(self.csv, "a", encoding="utf-8", newline="") as f:
            csv.DictWriter(f, CSV_FIELDS, extrasaction="ignore").writerow(record)
        if self._tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)):
                    self._tb.add_scalar(k, v, record["step"])

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def _tensorboard(folder: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(str(folder))


def plot_curves(records: list[dict], path: str | Path, series: list[tuple[str, str]], ylabel: str,
                title: str = "training") -> Path | None:
    """Each (key, label) of `series` against step → one PNG; the first series as a line, the
    rest (evaluations, logged now and then) with markers. None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for k, (key, label) in enumerate(series):
        points = [(r["step"], r[key]) for r in records if key in r]
        if points:
            ax.plot(*zip(*points), *(["o-"] if k else []), lw=1, ms=4, alpha=0.85, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def plot_loss_curve(records: list[dict], path: str | Path, title: str = "training") -> Path | None:
    """Train loss (and val loss where recorded) against step → PNG."""
    return plot_curves(records, path, [("loss", "train loss"), ("val_loss", "val loss")],
                       "loss (nats/token)", title)


# ---- MFU ------------------------------------------------------------------------------------
def non_embedding_params(cfg: ModelConfig) -> int:
    """N of the scaling-law papers (Kaplan et al. 2020): every weight except the token and
    position embeddings and the output head, counted once.

    >>> non_embedding_params(ModelConfig.tiny()) > 0
    True
    """
    from ember.model.transformer import Transformer

    with torch.device("meta"):
        model = Transformer(cfg)
    return sum(p.numel() for p in model.layers.parameters()) + sum(p.numel() for p in model.norm.parameters())


def flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Training FLOPs per token: 6·(N + V·D) for the matmuls incl. the head (forward 2,
    backward 4 per weight) plus attention's 6·2·L·T·D for QKᵀ and AV (PaLM appendix B)."""
    n = non_embedding_params(cfg) + cfg.vocab_size * cfg.d_model
    return 6 * n + 12 * cfg.n_layers * seq_len * cfg.d_model


GPU_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0, "A10": 125.0, "4090": 165.0}


@lru_cache(maxsize=4)
def peak_flops(device_type: str, dtype: torch.dtype) -> float:
    """FLOP/s to measure MFU against. GPUs: the dense bf16 peak from the datasheet.
    CPUs have no such table: we time a large matmul once (≈0.3 s), so CPU MFU reads as the
    fraction of *achievable* matmul speed — it can exceed what a datasheet ratio would say."""
    if device_type == "cuda":
        name = torch.cuda.get_device_name()
        for key, tflops in GPU_PEAK_TFLOPS.items():
            if key in name:
                return tflops * 1e12 * (1.0 if dtype != torch.float32 else 0.5)
        return 100e12
    n = 1024
    a = torch.randn(n, n, dtype=dtype)
    b = torch.randn(n, n, dtype=dtype)
    a @ b  # warm up
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < 0.3:
        a @ b
        reps += 1
    return 2 * n**3 * reps / (time.perf_counter() - t0)
