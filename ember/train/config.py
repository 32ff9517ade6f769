"""TrainConfig: how long and how a run trains; every recipe nests one as `train`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class TrainConfig:
    """How long and how a run trains. Sizes count sequences; `batch_size` is global.

    >>> TrainConfig(batch_size=16, micro_batch_size=4).micro_batches(world_size=2)
    (4, 2)
    """

    steps: int = 600
    """optimizer steps of the run"""
    batch_size: int = 16
    """sequences per optimizer step, summed over processes"""
    micro_batch_size: int | None = None
    """sequences per forward per process (None: all at once); gradients accumulate over the rest"""
    eval_every: int = 100
    """steps between evaluations; 0: only at the end"""
    eval_windows: int = 64
    """validation windows per evaluation"""
    sample_every: int = 200
    """steps between samples shown; 0: never during the run"""
    save_every: int = 200
    """steps between checkpoints; 0: only at the end"""
    keep_checkpoints: int = 2
    """checkpoints kept in out/checkpoints (older ones are pruned)"""
    log_every: int = 10
    """steps between metric lines"""
    seed: int = 1337
    """seed of the model init, the data order and sampling"""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """bf16 is autocast (weights stay fp32); auto: bf16 on GPUs, on CPUs whichever matmul is
    faster here (CPUs with AMX/fast bf16 gain ~2.8x; some AVX-512 parts run bf16 at half speed)"""
    compile: bool = False
    """torch.compile the model (a one-off compile cost)"""
    device: str = "auto"
    """auto, cpu, cuda or cuda:N"""
    parallel: Literal["ddp", "fsdp", "tp", "fsdp+tp", "pp"] = "ddp"
    """under torchrun: DDP or FSDP2 fully_shard (each process its own rows); tp: every block's
    attention and FFN split over all processes; pp: the blocks cut into one pipeline stage per
    process (micro_batch_size sets the pipeline's micro-batches; clm only); fsdp+tp: tp_size
    processes split each block, FSDP2 shards over the groups of them (a 2-D mesh)"""
    tp_size: int | None = None
    """fsdp+tp: processes per tensor-parallel group (must divide the process count)"""
    activation_checkpointing: bool = False
    """recompute each block's activations in the backward instead of keeping them (less memory, ~1/3 more compute)"""
    out: str = "runs/pretrain"
    """run folder: checkpoints, metrics, config and summary"""
    resume: bool = False
    """continue from out/checkpoints/latest"""
    resume_from: str | None = None
    """continue from this checkpoint folder (e.g. an older step_*)"""
    overwrite: bool = False
    """delete the earlier run in out (checkpoints, metrics) and start again"""
    progress: bool = True
    """show a progress bar"""

    def __post_init__(self):
        for name in ("steps", "batch_size", "eval_windows", "log_every"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"train.{name} must be a positive int, got {v!r}")
        for name in ("eval_every", "sample_every", "save_every", "keep_checkpoints"):
            if getattr(self, name) < 0:
                raise ValueError(f"train.{name} must be >= 0, got {getattr(self, name)!r}")
        if self.micro_batch_size is not None and self.micro_batch_size < 1:
            raise ValueError(f"train.micro_batch_size must be >= 1, got {self.micro_batch_size!r}")
        if self.tp_size is not None and self.parallel != "fsdp+tp":
            raise ValueError(f"train.tp_size is for --train.parallel fsdp+tp (tp splits over every process); "
                             f"got parallel {self.parallel!r}")
        if self.overwrite and self.resume:
            raise ValueError("train.resume and train.overwrite contradict each other: pass one of them")

    def micro_batches(self, world_size: int) -> tuple[int, int]:
        """(micro-batch size, accumulation steps) for this many processes."""
        if self.batch_size % world_size:
            raise ValueError(f"batch_size {self.batch_size} is not divisible by {world_size} processes")
        per_rank = self.batch_size // world_size
        micro = min(self.micro_batch_size or per_rank, per_rank)
        if per_rank % micro:
            raise ValueError(f"per-process batch {per_rank} is not divisible by micro_batch_size {micro}")
        return micro, per_rank // micro
