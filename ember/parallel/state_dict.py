"""Full (unsharded) state dicts, for checkpoints: the same keys and format whether the model
is plain, DDP or FSDP2, so a run saved under one can resume under another. Each function
is collective under DDP/FSDP2: every rank calls it, in the same order.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.tensor import DTensor

from ember.parallel.distributed import DistInfo, broadcast_object, unwrap

_GET = StateDictOptions(full_state_dict=True, cpu_offload=True)  # gathered to rank 0's host memory


def full_state_dict(model: nn.Module, info: DistInfo) -> dict[str, torch.Tensor] | None:
    """The plain model's state dict (no "module."/"_orig_mod." prefixes), unsharded, on CPU,
    on rank 0; None on the other ranks. Collective: every rank must call it. Tensors are
    copies that share no memory (a tied head is its own tensor), ready for safetensors.

    >>> from ember.parallel import init_distributed
    >>> sorted(full_state_dict(nn.Linear(2, 2), init_distributed("cpu")))
    ['bias', 'weight']
    """
    sd = get_model_state_dict(model, options=_GET)
    if not info.is_main:
        return None
    return _own_copies(sd, _live_storages(model.state_dict().values()))


def load_full_state_dict(
    model: nn.Module, sd: dict[str, torch.Tensor] | None, info: DistInfo, from_rank0: bool = False
) -> None:
    """Load a full state dict (as `full_state_dict` returns) into a plain, DDP or FSDP2 model,
    in place; every key and shape is checked. from_rank0=True: only rank 0 passes `sd` (the
    others pass None) and it is broadcast, so only one process reads the checkpoint.

    >>> from ember.parallel import init_distributed
    >>> m, info = nn.Linear(2, 2), init_distributed("cpu")
    >>> load_full_state_dict(m, full_state_dict(m, info), info)
    """
    from_rank0 = from_rank0 and info.distributed
    error = None
    if sd is None and (info.is_main or not from_rank0):
        error = "state dict is None (only ranks > 0 may pass None, and only with from_rank0=True)"
    elif sd is not None:
        error = _key_and_shape_error(sd, unwrap(model).state_dict())
    if from_rank0:  # the others have nothing to check: let rank 0's verdict reach every rank
        error = broadcast_object(error, info)
    if error:
        raise ValueError(error)
    opts = StateDictOptions(full_state_dict=True, broadcast_from_rank0=from_rank0, strict=True)
    # A copy (torch's loader writes the model's own tensors into the dict it is given), in the
    # model's key order: DTensors load one collective per key, so every rank must walk the keys
    # alike, and a dict from safetensors comes back in an order that differs between processes.
    ordered = {k: sd[k] for k in unwrap(model).state_dict()} if sd is not None else {}
    set_model_state_dict(model, ordered, options=opts)


def full_optim_state_dict(
    model: nn.Module, optimizer: torch.optim.Optimizer, info: DistInfo
) -> dict | None:
    """The optimizer's state, unsharded, on CPU, on rank 0 (None elsewhere); collective.
    Keyed by parameter names, not positions: {"state": {"layers.0.attention.wq.weight":
    {"step", "exp_avg", ...}}, "param_groups": [{"params": [names], "lr": ...}]}.
    A tied weight appears once, under its first name (tok_embeddings.weight).

    >>> from ember.parallel import init_distributed
    >>> m = nn.Linear(2, 2); opt = torch.optim.SGD(m.parameters(), lr=0.1)
    >>> full_optim_state_dict(m, opt, init_distributed("cpu"))["param_groups"][0]["params"]
    ['weight', 'bias']
    """
    osd = get_optimizer_state_dict(model, optimizer, options=_GET)
    if not info.is_main:
        return None
    live = [t for st in optimizer.state.values() for t in st.values() if torch.is_tensor(t)]
    return _own_copies(osd, _live_storages(live))


def load_full_optim_state_dict(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    osd: dict | None,
    info: DistInfo,
    from_rank0: bool = False,
) -> None:
    """Inverse of `full_optim_state_dict`, for an optimizer built over `model`'s (wrapped)
    parameters; from_rank0 as in `load_full_state_dict`. Call it before the first backward
    (or after `optimizer.zero_grad(set_to_none=True)`): torch builds the empty state it fills
    by a zero-lr step, which it skips when gradients exist.
    """
    from_rank0 = from_rank0 and info.distributed
    error = None
    if osd is None and (info.is_main or not from_rank0):
        error = "optimizer state dict is None (only ranks > 0 may pass None, with from_rank0=True)"
    elif osd is not None:
        error = _optim_key_error(osd, unwrap(model))
    if from_rank0:
        error = broadcast_object(error, info)
    if not error and not optimizer.state and any(
        p.grad is not None for g in optimizer.param_groups for p in g["params"]
    ):
        error = "load optimizer state before any backward, or after zero_grad(set_to_none=True)"
    if error:
        raise ValueError(error)
    opts = StateDictOptions(full_state_dict=True, broadcast_from_rank0=from_rank0)
    osd = _map_tensors(osd, lambda t: t) if osd is not None else {}  # containers of our own
    set_optimizer_state_dict(model, optimizer, osd, options=opts)


def _key_and_shape_error(sd: dict, expected: dict) -> str | None:
    missing, unexpected = sorted(set(expected) - set(sd)), sorted(set(sd) - set(expected))
    if missing or unexpected:
        return f"state dict does not fit the model: missing {missing}, unexpected {unexpected}"
    bad = [f"{k}: {tuple(sd[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
           if sd[k].shape != v.shape]
    return f"state dict shapes do not fit the model: {bad}" if bad else None


def _optim_key_error(osd: dict, model: nn.Module) -> str | None:
    if not isinstance(osd, dict) or set(osd) != {"state", "param_groups"}:
        got = sorted(osd) if isinstance(osd, dict) else type(osd).__name__
        return f"optimizer state dict needs exactly 'state' and 'param_groups', got {got}"
    names = {n for n, _ in model.named_parameters()}
    listed = set(osd["state"]) | {k for g in osd["param_groups"] for k in g["params"]}
    unknown = sorted(listed - names)
    return f"optimizer state names parameters the model lacks: {unknown}" if unknown else None


def _live_storages(tensors) -> set[int]:
    """Storage addresses of local tensors (DTensor shards are gathered into new ones anyway)."""
    return {t.untyped_storage().data_ptr() for t in tensors if not isinstance(t, DTensor)}


def _own_copies(tree: Any, live: set[int]) -> Any:
    """Clone every tensor that aliases the live model/optimizer or an earlier tensor in the tree.

    On CPU, `cpu_offload` hands back the live parameters themselves, and a tied head shares
    the embedding's storage: a caller saving the dict later, or handing it to safetensors
    (which refuses shared storage), needs copies of its own.
    """
    seen = set(live) - {0}

    def own(t: torch.Tensor) -> torch.Tensor:
        t = t.detach()
        if t.untyped_storage().data_ptr() in seen:
            t = t.clone()
        seen.add(t.untyped_storage().data_ptr())
        return t

    return _map_tensors(tree, own)


def _map_tensors(tree: Any, fn) -> Any:
    """`tree` rebuilt with new dicts and lists, and fn applied to every tensor in it."""
    if isinstance(tree, dict):
        return {k: _map_tensors(v, fn) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_map_tensors(v, fn) for v in tree]
    return fn(tree) if isinstance(tree, torch.Tensor) else tree
