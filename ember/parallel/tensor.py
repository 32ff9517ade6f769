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
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Replicate, distribute_module
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

from ember.model.config import ModelConfig


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
    own tensor). Fused projections (ember.quant.fuse) are refused.
    """
    tp = mesh.size()
    check_tp(model.config, tp)
    for i, block in enumerate(model.layers):
        att, ffn = block.attention, block.feed_forward
        if not all(hasattr(att, n) for n in ("wq", "wk", "wv", "wo")) or not hasattr(ffn, "w2"):
            raise ValueError(f"layers.{i}: tensor parallelism needs unfused wq/wk/wv/wo and w1/w2(/w3) projections")
        plan = {
            "attention.wq": ColwiseParallel(), "attention.wk": ColwiseParallel(),
            "attention.wv": ColwiseParallel(), "attention.wo": RowwiseParallel(),
            "feed_forward.w1": ColwiseParallel(), "feed_forward.w2": RowwiseParallel(),
        }
        if hasattr(ffn, "w3"):
            plan["feed_forward.w3"] = ColwiseParallel()
        parallelize_module(block, mesh, plan)
        # the projections now give this rank's heads only: reshape by the local head counts
        att.n_heads, att.n_kv_heads = att.n_heads // tp, att.n_kv_heads // tp
    _replicate_rest(model, mesh)
    return model


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
