"""Checkpoints: tensors in safetensors, everything else in JSON, written atomically.

Layout of a run folder:

    out/checkpoints/step_000100/{model.safetensors, optimizer.safetensors, state.json}
    out/checkpoints/latest          ← the name of the newest complete checkpoint

A checkpoint is written into a temp folder, every file fsynced, then the folder renamed
into place and `latest` replaced (atomically) — a crash, even `kill -9`, at any moment
leaves the previous checkpoint complete and `latest` pointing at one that is.
No pickle anywhere: `state.json` records each file's size and SHA-256, and loading checks
them before reading a byte of tensor data.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ember.core.io import atomic_write_json, atomic_write_text, fsync_dir

FORMAT = "ember-checkpoint"
VERSION = 1
LATEST = "latest"


# ---- nested state ↔ (flat tensors, JSON skeleton) -------------------------------------------
def flatten_state(obj: Any, prefix: str = "") -> tuple[Any, dict[str, torch.Tensor]]:
    """Split a nested dict/list of tensors and plain values into a JSON-able skeleton and a
    flat {key: tensor} dict; each tensor in the skeleton becomes {"__tensor__": key}.

    >>> flatten_state({"a": torch.zeros(1), "b": [1, 2]})[0]
    {'a': {'__tensor__': 'a'}, 'b': [1, 2]}
    """
    tensors: dict[str, torch.Tensor] = {}

    def walk(x, path):
        if isinstance(x, torch.Tensor):
            tensors[path] = x.detach().cpu().contiguous()
            return {"__tensor__": path}
        if isinstance(x, dict):
            if not all(isinstance(k, (str, int)) for k in x):
                raise TypeError(f"state keys under {path!r} must be str or int")
            # int keys (optimizer state is keyed by param index) survive as "#<int>"
            return {(f"#{k}" if isinstance(k, int) else k): walk(v, f"{path}.{k}" if path else str(k)) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [walk(v, f"{path}.{i}" if path else str(i)) for i, v in enumerate(x)]
        if x is None or isinstance(x, (bool, int, float, str)):
            return x
        raise TypeError(f"cannot store {type(x).__name__} at {path!r} in a checkpoint")

    return walk(obj, prefix), tensors


def unflatten_state(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    def walk(x):
        if isinstance(x, dict):
            if set(x) == {"__tensor__"}:
                key = x["__tensor__"]
                if key not in tensors:
                    raise ValueError(f"checkpoint is corrupt: tensor {key!r} is missing")
                return tensors[key]
            return {(int(k[1:]) if k.startswith("#") else k): walk(v) for k, v in x.items()}
        if isinstance(x, list):
            return [walk(v) for v in x]
        return x

    return walk(skeleton)


# ---- RNG --------------------------------------------------------------------------------------
def rng_state() -> dict:
    """Every generator a training step may draw from (dropout, sampling, shuffles)."""
    py = random.getstate()
    npy = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [npy[0], torch.from_numpy(npy[1].astype(np.int64)), int(npy[2]), int(npy[3]), float(npy[4])],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    v, internal, gauss = state["python"]
    random.setstate((v, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---- save / load --------------------------------------------------------------------------------
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _write_safetensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save

    # Tied weights share storage; safetensors refuses aliases, so store independent copies.
    data = save({k: v.clone() if _shares(v, tensors, k) else v for k, v in tensors.items()})
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _shares(t: torch.Tensor, tensors: dict, key: str) -> bool:
    ptr = t.untyped_storage().data_ptr()
    return any(k != key and v.untyped_storage().data_ptr() == ptr for k, v in tensors.items())


def save_checkpoint(
    run_dir: str | os.PathLike,
    step: int,
    model_state: dict[str, torch.Tensor],
    optimizer_state: dict | None,
    state: dict,
    keep: int = 2,
) -> Path:
    """Write checkpoints/step_{step:06d} atomically and point `latest` at it; keep the newest
    `keep` checkpoints. `state` is JSON-able plus tensors (RNG states), flattened here."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:06d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=root))
    try:
        files = {"model.safetensors": {k: v.detach().cpu().contiguous() for k, v in model_state.items()}}
        opt_skeleton = None
        if optimizer_state is not None:
            opt_skeleton, opt_tensors = flatten_state(optimizer_state)
            files["optimizer.safetensors"] = opt_tensors
        state_skeleton, state_tensors = flatten_state(state)
        files["state.safetensors"] = state_tensors
        meta = {}
        for fname, tensors in files.items():
            _write_safetensors(tmp / fname, tensors)
            meta[fname] = {"bytes": (tmp / fname).stat().st_size, "sha256": _sha256(tmp / fname)}
        doc = {"format": FORMAT, "version": VERSION, "step": step, "files": meta,
               "optimizer": opt_skeleton, "state": state_skeleton}
        atomic_write_json(tmp / "state.json", doc)
        fsync_dir(tmp)
        final = root / name
        if final.exists():  # re-saving the same step (e.g. after a resume): replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    atomic_write_text(root / LATEST, name + "\n")
    _prune(root, keep, protect=name)
    return final


def _prune(root: Path, keep: int, protect: str) -> None:
    done = sorted(p for p in root.glob("step_*") if p.is_dir() and not p.name.endswith(".tmp"))
    for p in done[:-keep] if keep > 0 else []:
        if p.name != protect:
            shutil.rmtree(p, ignore_errors=True)
    for p in root.glob(".step_*.tmp"):  # leftovers of an interrupted save
        shutil.rmtree(p, ignore_errors=True)
    for p in root.glob(f".{LATEST}.*.tmp"):  # ... and of an interrupted write of `latest`
        p.unlink(missing_ok=True)


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The folder `latest` names, or None when the run has no checkpoint yet."""
    root = Path(run_dir) / "checkpoints"
    pointer = root / LATEST
    if not pointer.is_file():
        return None
    name = pointer.read_text(encoding="utf-8").strip()
    if not name.startswith("step_") or "/" in name:
        raise ValueError(f"{pointer} is corrupt: it names {name!r}")
    path = root / name
    if not path.is_dir():
        raise ValueError(f"{pointer} names {name}, which does not exist")
    return path


def checkpoint_folders(run_dir: str | os.PathLike) -> list[Path]:
    """The run's step_* folders, oldest first (temp folders of an interrupted save excluded)."""
    root = Path(run_dir) / "checkpoints"
    return sorted(p for p in root.glob("step_*") if p.is_dir() and not p.name.endswith(".tmp"))


def load_resume_checkpoint(run_dir: str | os.PathLike) -> tuple[dict | None, str | None]:
    """(the checkpoint a resume continues from, loaded and verified; a note for the user when
    it is not the one `latest` names), or (None, None) when the run has no checkpoint.

    `latest` missing with step folders intact: the newest intact one, with a note. `latest`
    naming a corrupt or missing checkpoint: a ValueError naming the previous intact one, since
    silently going back in time would hide the damage.
    """
    root = Path(run_dir) / "checkpoints"
    pointer, folders = root / LATEST, checkpoint_folders(run_dir)
    if pointer.is_file():
        try:
            return load_checkpoint(latest_checkpoint(run_dir)), None
        except ValueError as e:
            problem = str(e)
        name = pointer.read_text(encoding="utf-8", errors="replace").strip()
        older = [p for p in folders if p.name < name] if name.startswith("step_") else folders
        previous = _newest_intact(older)[0]
        if previous is None:
            raise ValueError(
                f"{problem}; no earlier intact checkpoint in {root}: start again with --train.overwrite true"
            ) from None
        where = previous["path"]
        raise ValueError(
            f"{problem}; the previous intact checkpoint is {where}: resume from it with "
            f"--train.resume_from {where} (or write {where.name} into {pointer})"
        ) from None
    if not folders:
        return None, None
    found, skipped = _newest_intact(folders)
    if found is None:
        raise ValueError(
            f"{pointer} is missing and no checkpoint in {root} is intact ({'; '.join(skipped)}): "
            "start again with --train.overwrite true"
        )
    note = f"{pointer} is missing: resuming from the newest intact checkpoint, {found['path']}"
    return found, note + (f" (skipped: {'; '.join(skipped)})" if skipped else "")


def _newest_intact(folders: list[Path]) -> tuple[dict | None, list[str]]:
    """(the newest of `folders` that loads and verifies, why each newer one did not)."""
    skipped = []
    for path in reversed(folders):
        try:
            return load_checkpoint(path), skipped
        except ValueError as e:
            skipped.append(str(e))
    return None, skipped


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read and verify a checkpoint folder → {"step", "model", "optimizer", "state"}.
    Any size or hash mismatch, missing file or malformed JSON is a ValueError naming it."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    path = Path(path)
    meta_path = path / "state.json"
    if not meta_path.is_file():
        raise ValueError(f"{path} is not a checkpoint: state.json is missing")
    try:
        doc = json.loads(meta_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{meta_path} is corrupt: {e}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get("version") != VERSION:
        raise ValueError(f"{meta_path}: not an {FORMAT} v{VERSION} file")
    files = doc.get("files")
    # a damaged or foreign state.json must not name files outside the folder or crash below
    if (not isinstance(files, dict) or "model.safetensors" not in files or not isinstance(doc.get("step"), int)
            or any("/" in k or "\\" in k or not isinstance(m, dict) or not isinstance(m.get("bytes"), int)
                   or not isinstance(m.get("sha256"), str) for k, m in files.items())):
        raise ValueError(f"{meta_path} is corrupt: its step or file table is malformed")
    loaded = {}
    for fname, m in files.items():
        f = path / fname
        if not f.is_file():
            raise ValueError(f"checkpoint {path} is corrupt: {fname} is missing")
        data = f.read_bytes()
        if len(data) != m["bytes"] or hashlib.sha256(data).hexdigest() != m["sha256"]:
            raise ValueError(f"checkpoint file {f} is corrupt: its size or SHA-256 differs from state.json")
        try:
            loaded[fname] = load(data)
        except SafetensorError as e:
            raise ValueError(f"checkpoint file {f} is corrupt: {e}") from None
    optimizer = None
    if doc.get("optimizer") is not None:
        optimizer = unflatten_state(doc["optimizer"], loaded.get("optimizer.safetensors", {}))
    return {
        "step": int(doc["step"]),
        "model": loaded["model.safetensors"],
        "optimizer": optimizer,
        "state": unflatten_state(doc["state"], loaded.get("state.safetensors", {})),
        "path": path,
    }


def config_mismatch(saved: dict, current: dict, prefix: str = "") -> list[str]:
    """Human-readable differences between two config dicts, e.g. ['model.n_layers: 4 vs 2']."""
    out = []
    for k in sorted(set(saved) | set(current)):
        a, b = saved.get(k, "<absent>"), current.get(k, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_mismatch(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {a!r} in the checkpoint vs {b!r} now")
    return out
