"""A run folder holds one run: a new run never writes over an earlier one, a resume never
silently starts from scratch, and two processes never train into one folder at once.

Every training command goes through `check_run_dir` before it writes a byte into its folder
(the Trainer does, under the folder's lock; a recipe that writes inputs there first calls
`prepare_run_dir`). The rules:

- the folder holds an earlier run and neither flag is given → refused, naming both flags;
- `--train.overwrite true` → the earlier run's files are removed first, so runs never mix;
- `--train.resume true` with nothing to resume → refused (a typo in the folder name, or a
  deleted checkpoints/, must not restart from step 0 and then prune what is left).
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from ember.core.lock import dir_lock
from ember.parallel import DistInfo, broadcast_object
from ember.train.checkpoint import (
    LATEST,
    checkpoint_folders,
    load_checkpoint,
    load_resume_checkpoint,
)
from ember.train.config import TrainConfig

# Everything a training run writes into its folder (the loop, the metrics logger and every
# recipe's outputs). Only these are removed by --train.overwrite: the folder may be one the
# user keeps other files in, so it is never deleted as a whole.
RUN_FILES = (
    "checkpoints", "config.json", "metrics.jsonl", "metrics.csv", "tb", "summary.json", "loss.png",
    "reward_curve.png", "rl_curve.png", "adapter", "model", "hf", "head.safetensors",
)


def run_files(out: str | os.PathLike) -> list[Path]:
    """The files and folders of an earlier run in `out` (empty: a fresh folder)."""
    folder = Path(out)
    return [folder / name for name in RUN_FILES if (folder / name).exists()]


def clear_run(out: str | os.PathLike) -> None:
    """Remove an earlier run's files from `out`, leaving anything else there alone."""
    for path in run_files(out):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def check_run_dir(out: str | os.PathLike, resume: bool, overwrite: bool, resume_from: str | None = None) -> None:
    """Refuse or clear `out` by the rules above; call it holding the folder's lock."""
    folder = Path(out)
    if resume_from is not None:
        source = Path(resume_from)
        if not (source / "state.json").is_file():
            raise ValueError(f"--train.resume_from {resume_from}: not a checkpoint folder (no state.json in it)")
        if source.resolve().is_relative_to((folder / "checkpoints").resolve()):
            if overwrite:
                raise ValueError(f"--train.overwrite true would delete {resume_from}, the checkpoint to resume from")
            return  # continuing this run from one of its own checkpoints
        resume = False  # branching from another run's checkpoint: `out` must be free, as for a new run
    if resume:
        root = folder / "checkpoints"
        if not checkpoint_folders(folder) and not (root / LATEST).is_file():
            raise ValueError(
                f"--train.resume true: nothing to resume in {folder} (no checkpoint under {root}); "
                "check --train.out, or drop --train.resume to start a new run"
            )
        return
    found = run_files(folder)
    if not found:
        return
    if not overwrite:
        names = ", ".join(p.name for p in found)
        raise ValueError(
            f"{folder} already holds a run ({names}): pass --train.resume true to continue it, "
            "or --train.overwrite true to delete it and start again (or choose another --train.out)"
        )
    clear_run(folder)


@contextmanager
def open_run_dir(
    out: str | os.PathLike, resume: bool, overwrite: bool, resume_from: str | None = None
) -> Iterator[Path]:
    """Hold `out`'s lock for the `with` block, after `check_run_dir` has passed under it."""
    if resume and resume_from is None and not Path(out).is_dir():
        check_run_dir(out, resume, overwrite)  # refuse before the lock makes a misspelt folder
    with dir_lock(out, "run folder") as folder:
        check_run_dir(folder, resume, overwrite, resume_from)
        yield folder


def prepare_run_dir(train: TrainConfig, info: DistInfo | None = None) -> Path:
    """`check_run_dir` on `train.out` under its lock, for a recipe that writes into the folder
    before its Trainer starts (the Trainer checks again, a no-op by then, and holds the lock
    for the run). Under torchrun rank 0 decides and every rank gets its answer.

    >>> prepare_run_dir(cfg.train, info)  # doctest: +SKIP
    """
    args = (train.out, train.resume, train.overwrite, train.resume_from)
    error = None
    if info is None or info.is_main:
        try:
            with open_run_dir(*args):
                pass
        except ValueError as e:
            if info is None or not info.distributed:
                raise
            error = str(e)
    if info is not None:
        error = broadcast_object(error, info)  # a collective: every rank reaches it
    if error is not None:
        raise ValueError(error)
    return Path(train.out)


def claim_run_dir(stack: ExitStack, train: TrainConfig, info: DistInfo) -> dict | None:
    """Lock train.out for the run (held until `stack` closes), refuse or clear an earlier run
    there, and load the checkpoint to resume from (None: a new run). Rank 0 decides and
    every rank learns its answer, so a refusal stops them all instead of leaving the others
    waiting in a collective; every rank then loads the checkpoint rank 0 chose."""
    error, ckpt, path = None, None, None
    if info.is_main:
        try:
            stack.enter_context(open_run_dir(train.out, train.resume, train.overwrite, train.resume_from))
            if train.resume_from is not None:
                ckpt = load_checkpoint(train.resume_from)
            elif train.resume:
                ckpt, note = load_resume_checkpoint(Path(train.out))
                if note:
                    print(note, file=sys.stderr)
            path = None if ckpt is None else str(ckpt["path"])
        except ValueError as e:
            if not info.distributed:
                raise
            error = str(e)
    error, path = broadcast_object((error, path), info)
    if error is not None:
        raise ValueError(error)
    if path is None:
        return None
    return ckpt if ckpt is not None else load_checkpoint(path)


def interrupted_message(out: str | os.PathLike, last_saved: int, saved: bool) -> str:
    """What Ctrl-C tells the user: where the run's last checkpoint is and how to go on.

    >>> interrupted_message("runs/x", 0, False)
    'interrupted before the first checkpoint: start again with --train.overwrite true'
    """
    if last_saved == 0:
        return "interrupted before the first checkpoint: start again with --train.overwrite true"
    what = "saved" if saved else "the last checkpoint is"
    return (f"interrupted: {what} step {last_saved} in {Path(out) / 'checkpoints'}; "
            "continue with --train.resume true")
