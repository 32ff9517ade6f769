"""Process groups, and DDP / FSDP2 as transforms of a plain model (torchtitan style).

The model never knows it is distributed: `init_distributed` reads what torchrun put in the
environment, `apply_ddp` / `apply_fsdp` wrap a built model, and the helpers below (means,
barriers; the full state dicts of state_dict.py) are identities in a single process, so one training loop runs
unchanged under `python -m ...` and `torchrun --nproc_per_node N -m ...`.

Every collective (all_reduce_mean, barrier, broadcast_object, the state-dict helpers
under DDP/FSDP2) must be called by every rank, in the same order, or the job hangs.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.nn.parallel import DistributedDataParallel

DEVICES = ("auto", "cpu", "cuda", "cuda:N")
_TORCHRUN_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE")


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job, and the device it computes on.

    >>> DistInfo(0, 0, 1, torch.device("cpu"), backend=None).distributed
    False
    """

    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    backend: str | None  # None: no process group (a single process)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto", timeout_s: float = 600) -> DistInfo:
    """Join torchrun's process group (nccl on CUDA, gloo on CPU), or run as one process.

    device: "auto" (cuda:LOCAL_RANK if CUDA is available, else cpu), "cpu", "cuda"
    (cuda:LOCAL_RANK) or "cuda:N". Idempotent: with a group already up, describes it.

    >>> init_distributed("cpu").world_size  # no torchrun environment: one process
    1
    """
    if not isinstance(device, str) or not re.fullmatch(r"auto|cpu|cuda(:\d+)?", device):
        raise ValueError(f"device must be one of {list(DEVICES)}, got {device!r}")
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local_rank = _env_int("LOCAL_RANK", rank)
        dev = _resolve_device(device, local_rank)
        return DistInfo(rank, local_rank, world, dev, dist.get_backend())

    missing = [k for k in _TORCHRUN_ENV if k not in os.environ]
    if len(missing) == len(_TORCHRUN_ENV):  # not launched by torchrun
        return DistInfo(0, 0, 1, _resolve_device(device, 0), None)
    if missing:
        raise ValueError(
            f"incomplete torchrun environment: {missing} unset (need RANK, LOCAL_RANK, WORLD_SIZE)"
        )
    rank, local_rank, world = (_env_int(k) for k in _TORCHRUN_ENV)
    if world < 1 or not 0 <= rank < world or local_rank < 0:
        got = f"RANK={rank} LOCAL_RANK={local_rank} WORLD_SIZE={world}"
        raise ValueError(f"bad torchrun environment: {got}")
    dev = _resolve_device(device, local_rank)
    if world == 1:  # torchrun with one process: a group would only add overhead
        return DistInfo(rank, local_rank, world, dev, None)
    missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise ValueError(f"WORLD_SIZE={world} but {missing} unset; launch with torchrun")
    if not dist.is_available():
        raise ValueError("this torch build lacks torch.distributed; WORLD_SIZE > 1 needs it")

    backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        torch.cuda.set_device(dev)  # nccl and broadcast_object use the current device
    dist.init_process_group(
        backend,
        timeout=timedelta(seconds=timeout_s),
        device_id=dev if dev.type == "cuda" else None,  # binds the group to this GPU eagerly
    )
    return DistInfo(rank, local_rank, world, dev, backend)


def destroy_distributed(sync: bool = True) -> None:
    """Tear the process group down (no-op without one); call once, at the end of a run.

    sync: wait for every rank first (skip it on an error path, where a peer may never
    arrive). Exiting with a live gloo group lets its worker threads be destroyed while
    still joinable, which aborts the process ("terminate called without an active
    exception") even though the run itself finished.
    """
    if dist.is_available() and dist.is_initialized():
        if sync:
            dist.barrier()
        dist.destroy_process_group()


def _env_int(name: str, default: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None and default is not None:
        return default
    try:
        return int(raw)
    except (TypeError, ValueError):
        raise ValueError(f"environment variable {name} must be an integer, got {raw!r}") from None


def _resolve_device(device: str, local_rank: int) -> torch.device:
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asks for CUDA, but CUDA is not available here")
    dev = torch.device(f"cuda:{local_rank}") if device in ("auto", "cuda") else torch.device(device)
    if dev.index >= torch.cuda.device_count():
        raise ValueError(f"device {dev} does not exist: {torch.cuda.device_count()} CUDA device(s)")
    return dev


# ---------------------------------------------------------------------------------------------
# Transforms


def apply_ddp(model: nn.Module, info: DistInfo) -> nn.Module:
    """Wrap in DistributedDataParallel (gradients averaged over ranks in backward); identity
    in a single process. Moves the model to info.device; every rank must build it the same way
    (DDP broadcasts rank 0's weights at construction, so seeds need not match, shapes must).

    >>> apply_ddp(nn.Linear(2, 2), init_distributed("cpu")).__class__.__name__
    'Linear'
    """
    if not info.distributed:
        return model
    model.to(info.device)
    # find_unused_parameters=False: every parameter gets a gradient each step; True costs an
    # extra graph traversal per backward and only hides bugs here.
    device_ids = [info.device.index] if info.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=False)


def apply_fsdp(
    model: nn.Module,
    info: DistInfo,
    param_dtype: torch.dtype | None = None,
    reduce_dtype: torch.dtype | None = None,
    mesh: DeviceMesh | None = None,
) -> nn.Module:
    """Shard with FSDP2: each block of `model.layers` is its own group (gathered just before
    it runs, freed after), the rest (embeddings, final norm, head) sits in the root group.
    Modifies the model in place (parameters become DTensor shards) and returns it; identity
    in a single process. param_dtype/reduce_dtype: mixed precision for compute and gradient
    reduction (None keeps the parameters' dtype; bf16 compute with fp32 reduction is the
    usual choice). A tied head must stay in the root group with the embedding — sharding
    `tok_embeddings` or `output` as groups of their own would give the one Parameter two owners.
    Unlike DDP, nothing is broadcast: each rank keeps its slice of the weights *it* built, so
    build them from the same seed on every rank, or load a checkpoint afterwards.

    >>> apply_fsdp(nn.Linear(2, 2), init_distributed("cpu")).__class__.__name__
    'Linear'
    """
    if not info.distributed:
        return model
    # mesh: the data-parallel dimension of a 2-D (dp, tp) mesh when composed with tensor parallelism
    mesh = mesh if mesh is not None else init_device_mesh(info.device.type, (info.world_size,))
    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype)
    for block in getattr(model, "layers", ()):
        fully_shard(block, mesh=mesh, mp_policy=mp)
    fully_shard(model, mesh=mesh, mp_policy=mp)
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DDP and torch.compile wrappers (FSDP2 shards in place: as is).

    >>> m = nn.Linear(2, 2); unwrap(m) is m
    True
    """
    while True:
        if isinstance(model, DistributedDataParallel):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):  # torch.compile's wrapper
            model = model._orig_mod
        else:
            return model


def is_fsdp(model: nn.Module) -> bool:
    """True when fully_shard was applied to the model or any submodule."""
    return any(isinstance(m, FSDPModule) for m in model.modules())


def no_sync(model: nn.Module):
    """Context for the micro-batches of gradient accumulation that must not communicate:
    gradients accumulate locally, and the backward after the context reduces them all.

    >>> with no_sync(nn.Linear(2, 2)):  # plain model: nothing to skip
    ...     pass
    """
    while isinstance(getattr(model, "_orig_mod", None), nn.Module):  # torch.compile(DDP(m))
        model = model._orig_mod
    if isinstance(model, DistributedDataParallel):
        return model.no_sync()
    if isinstance(model, FSDPModule):
        return _fsdp_no_sync(model)
    return nullcontext()


@contextmanager
def _fsdp_no_sync(model: FSDPModule) -> Iterator[None]:
    model.set_requires_gradient_sync(False)  # recurses into every sharded block
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


# ---------------------------------------------------------------------------------------------
# Collectives (identities in a single process)


def all_reduce_mean(value: float | torch.Tensor, info: DistInfo) -> float:
    """Mean of a scalar over ranks, for logging (each rank's loss is over its own rows).

    >>> all_reduce_mean(torch.tensor(2.0), init_distributed("cpu"))
    2.0
    """
    if not info.distributed:
        return float(value)
    t = torch.as_tensor(value, dtype=torch.float64).detach().to(info.device).reshape(())
    dist.all_reduce(t, op=dist.ReduceOp.SUM)  # SUM then divide: gloo has no ReduceOp.AVG
    return t.item() / info.world_size


def barrier(info: DistInfo) -> None:
    """Wait until every rank gets here (e.g. rank 0 finished writing a file the others read)."""
    if info.distributed:
        dist.barrier()


def broadcast_object(obj: Any, info: DistInfo, src: int = 0) -> Any:
    """`obj` from rank `src` on every rank (pickled in memory by torch, never to a file).

    >>> broadcast_object({"step": 3}, init_distributed("cpu"))
    {'step': 3}
    """
    if not info.distributed:
        return obj
    box = [obj if info.rank == src else None]
    dist.broadcast_object_list(box, src=src, device=info.device if info.backend == "nccl" else None)
    return box[0]
