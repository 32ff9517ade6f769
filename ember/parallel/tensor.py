"""Tensor parallelism (Megatron-LM's split, Shoeybi et al. 2019) as a transform of the plain model.

Each block's attention and FFN are split over the processes of a 1-D device mesh:
wq, wk, wv and w1, w3 column-wise (each rank computes a slice of the heads / of d_ff, no
communication), wo and w2 row-wise (each rank multiplies its slice, one all-reduce sums
them). So a block costs two all-reduces forward and two backward. Attention keeps whole
heads on each rank: rank r holds query heads [r·H/tp, (r+1)·H/tp) and KV heads
[r·Hkv/tp, (r+1)·Hkv/tp), which are exactly the KV heads those query heads read under GQA
(query head h reads KV head h // (H/Hkv)), so the split changes no arithmetic.

Every other parameter (embeddings, norms, the head) becomes a replicated DTensor on the same
mesh, with its module's inputs and outputs converted at the boundary, so the whole model is
DTensors (AdamW and clip_grad_norm_ take no mix of DTensors and tensors) and the activations
between modules stay plain tensors. Every rank must feed the same batch.

>>> from ember.model import ModelConfig
>>> check_tp(ModelConfig.tiny(), 2)  # 4 heads, 2 KV heads, d_ff divisible by 2
>>> check_tp(ModelConfig.tiny(), 4)
Traceback (most recent call last):
ValueError: tensor parallel degree 4 must divide n_kv_heads 2 (and n_heads 4); use a tp dividing both
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.tensor import DTensor, Replicate, distribute_module
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

from ember.model.config import ModelConfig
from ember.parallel.checkpointing import apply_activation_checkpointing
from ember.parallel.distributed import DistInfo, apply_ddp, apply_fsdp

# How the processes of a run share the work (TrainConfig.parallel): ddp and fsdp read different
# rows on every process; tp splits each block over all processes and pp cuts the blocks into
# one stage per process (every process reads the same rows); fsdp+tp is a 2-D mesh: tp_size
# processes split each block, and the world_size / tp_size groups of them shard as FSDP2.
MODES = ("ddp", "fsdp", "tp", "fsdp+tp", "pp")


def check_tp(cfg: ModelConfig, tp: int) -> None:
    """Refuse a model that `tp` processes cannot split by whole heads, naming the sizes."""
    if isinstance(tp, bool) or not isinstance(tp, int) or tp < 1:
        raise ValueError(f"tensor parallel degree must be a positive int, got {tp!r}")
    if cfg.n_heads % tp or cfg.n_kv_heads % tp:
        raise ValueError(
            f"tensor parallel degree {tp} must divide n_kv_heads {cfg.n_kv_heads} (and n_heads {cfg.n_heads}); "
            "use a tp dividing both"
        )
    if cfg.d_ff % tp:
        raise ValueError(f"tensor parallel degree {tp} must divide d_ff {cfg.d_ff}")


def apply_tp(model: nn.Module, mesh: DeviceMesh) -> nn.Module:
    """Split `model.layers`' attention and FFN over `mesh` (1-D) in place; return the model.

    The model must be a plain Transformer on the mesh's device type, built from the same seed on
    every rank (a distributed parameter keeps the value each rank built: rank r's slice of its
    own tensor). Fused (ember.quant.fuse), quantized or adapter-wrapped projections are refused.
    """
    _check_splittable(model)
    tp = mesh.size()
    check_tp(model.config, tp)
    for block in model.layers:
        att = block.attention
        plan = {
            "attention.wq": ColwiseParallel(), "attention.wk": ColwiseParallel(),
            "attention.wv": ColwiseParallel(), "attention.wo": RowwiseParallel(),
            "feed_forward.w1": ColwiseParallel(), "feed_forward.w2": RowwiseParallel(),
        }
        if hasattr(block.feed_forward, "w3"):
            plan["feed_forward.w3"] = ColwiseParallel()
        parallelize_module(block, mesh, plan)
        # the projections now give this rank's heads only: reshape by the local head counts
        att.n_heads, att.n_kv_heads = att.n_heads // tp, att.n_kv_heads // tp
    _replicate_rest(model, mesh)
    return model


def _check_splittable(model: nn.Module) -> None:
    """A Transformer whose blocks hold plain nn.Linear projections (not fused, quantized,
    adapter-wrapped or mixture-of-experts ones)."""
    if not isinstance(getattr(model, "layers", None), nn.ModuleList) or not hasattr(model, "config"):
        raise ValueError(f"tensor parallelism splits a Transformer's blocks; {type(model).__name__} has no .layers")
    if getattr(model.config, "moe", None) is not None:
        raise ValueError("tensor parallelism splits dense FFNs; a mixture-of-experts model (moe set) is not supported")
    if getattr(model.config, "n_token_types", 0):  # the model reads type_embeddings.weight[0] directly
        raise ValueError("tensor parallelism does not support token-type embeddings (n_token_types > 0, BERT)")
    names = [f"attention.{n}" for n in ("wq", "wk", "wv", "wo")] + [f"feed_forward.{n}" for n in ("w1", "w2")]
    for i, block in enumerate(model.layers):
        bad = [n for n in names if type(block.get_submodule(n) if _has(block, n) else None) is not nn.Linear]
        if bad:
            raise ValueError(f"layers.{i}: tensor parallelism splits plain nn.Linear projections; {bad} are not")


def _has(module: nn.Module, name: str) -> bool:
    try:
        module.get_submodule(name)
    except AttributeError:
        return False
    return True


def _replicate_rest(model: nn.Module, mesh: DeviceMesh) -> None:
    """Every module that owns plain parameters (embeddings, norms, the head) → replicated
    DTensor parameters, plain tensors in and out. A tied head is re-tied to the replicated
    embedding first, so the one Parameter stays one."""
    tied = getattr(model, "output", None) is not None and model.output.weight is model.tok_embeddings.weight
    for name, module in model.named_modules():
        if name == "output" and tied:
            module.weight = model.tok_embeddings.weight  # already a DTensor: left as is below
        own = [p for p in module.parameters(recurse=False) if not isinstance(p, DTensor)]
        if own or (name == "output" and tied):
            distribute_module(module, mesh, _replicate_params, _to_replicated, _to_local)


def _replicate_params(name: str, module: nn.Module, mesh: DeviceMesh) -> None:
    for key, p in list(module.named_parameters(recurse=False)):
        if not isinstance(p, DTensor):
            dt = DTensor.from_local(p.data, mesh, [Replicate()], run_check=False)
            module.register_parameter(key, nn.Parameter(dt, requires_grad=p.requires_grad))


def _to_replicated(module, inputs, mesh):
    return tuple(
        DTensor.from_local(x, mesh, [Replicate()], run_check=False) if isinstance(x, torch.Tensor)
        and not isinstance(x, DTensor) else x
        for x in inputs
    )


def _to_local(module, output, mesh):
    return output.to_local() if isinstance(output, DTensor) else output


def tp_degree(info: DistInfo, mode: str, tp_size: int | None = None) -> int:
    """Processes that split each block: all of them under tp, tp_size under fsdp+tp, else 1.

    >>> tp_degree(DistInfo(0, 0, 4, torch.device("cpu"), "gloo"), "fsdp+tp", 2)
    2
    """
    if mode not in MODES:
        raise ValueError(f"unknown parallel mode {mode!r}; valid modes: {list(MODES)}")
    if mode == "tp":
        return info.world_size
    if mode != "fsdp+tp":
        return 1
    if isinstance(tp_size, bool) or not isinstance(tp_size, int) or tp_size < 1:
        raise ValueError(f"parallel mode fsdp+tp needs tp_size, a positive int; got {tp_size!r}")
    if info.world_size % tp_size:
        raise ValueError(f"tp_size {tp_size} does not divide the {info.world_size} processes")
    return tp_size


def data_parallel(info: DistInfo, mode: str, tp_size: int | None = None) -> tuple[int, int]:
    """(rank, size) of this process among the replicas that read different rows of the batch.

    >>> data_parallel(DistInfo(3, 3, 4, torch.device("cpu"), "gloo"), "fsdp+tp", 2)
    (1, 2)
    """
    if mode == "pp":
        return 0, 1
    tp = tp_degree(info, mode, tp_size)
    return info.rank // tp, info.world_size // tp


def parallelize(model: nn.Module, info: DistInfo, mode: str = "ddp", tp_size: int | None = None,
                activation_checkpointing: bool = False) -> nn.Module:
    """torchtitan's order on a plain model: tensor parallelism, activation checkpointing, then
    FSDP2 (on the dp dimension of the 2-D mesh under fsdp+tp) or DDP. pp is left to `Pipeline`
    (the model stays plain here). In a single process only checkpointing applies. Returns the
    model to train (DDP's wrapper; otherwise the model itself, changed in place).

    >>> from ember.model import Transformer
    >>> m = parallelize(Transformer(ModelConfig.tiny()), DistInfo(0, 0, 1, torch.device("cpu"), None), "tp")
    >>> type(m).__name__
    'Transformer'
    """
    tp = tp_degree(info, mode, tp_size)
    mesh = None
    if info.distributed and tp > 1:
        check_tp(model.config, tp)  # before any collective: every rank fails alike
        mesh = init_device_mesh(info.device.type, (info.world_size // tp, tp), mesh_dim_names=("dp", "tp"))
        apply_tp(model.to(info.device), mesh["tp"])
    if activation_checkpointing:
        apply_activation_checkpointing(model)
    if mode == "fsdp" or (mode == "fsdp+tp" and mesh is None):
        return apply_fsdp(model, info)
    if mode == "fsdp+tp":
        return apply_fsdp(model, info, mesh=mesh["dp"])
    if mode == "ddp":
        return apply_ddp(model, info)
    return model.to(info.device)


def check_same_batch(batch, info: DistInfo, mode: str) -> None:
    """Under tp and pp every process must feed the same rows (they compute one model together);
    refuse a batch that differs between processes, as a recipe splitting rows by rank gives."""
    if not info.distributed:
        return
    tensors = [batch] if isinstance(batch, torch.Tensor) else list(batch.values() if isinstance(batch, dict) else batch)
    sums = []
    for t in tensors:
        if isinstance(t, torch.Tensor):
            flat = t.detach().flatten().to(torch.float64)
            sums += [flat.sum(), (flat * torch.arange(1, flat.numel() + 1, device=flat.device)).sum()]
    local = torch.stack(sums).to(info.device) if sums else torch.zeros(1, dtype=torch.float64, device=info.device)
    hi, lo = local.clone(), local.clone()
    torch.distributed.all_reduce(hi, op=torch.distributed.ReduceOp.MAX)
    torch.distributed.all_reduce(lo, op=torch.distributed.ReduceOp.MIN)
    if not torch.equal(hi, lo):
        raise ValueError(f"parallel mode {mode}: the processes were given different batches; tp and pp need "
                         "every process to read the same rows (this recipe splits its rows by process)")
