"""Pipeline parallelism (GPipe, Huang et al. 2019) of the plain model, on torch.distributed.pipelining.

The blocks are cut into `pp` contiguous stages of (nearly) equal size; stage s runs on rank s
of the pipeline group: the first also holds the embeddings, the last the final norm and the
head. A step cuts the batch into micro-batches that flow forward through the stages and back
(ScheduleGPipe: all forwards, then all backwards), so stage s works on micro-batch m while
stage s+1 works on m-1.

What every rank keeps, and why: each rank holds the whole plain model but computes only its
stage. After the backward each parameter's gradient lives on the rank(s) that used it (a tied
embedding/head: on the first and the last stage); one all-reduce (SUM, zeros elsewhere)
gives every rank every gradient, and every rank then runs the same clip and AdamW step. So
the weights and optimizer state stay identical on all ranks, and checkpoints, evaluation and
samples work on the plain model as in a single process. The cost of that simplicity: no
memory is saved on weights or optimizer state (activations are what is split), and the
all-reduce moves the whole gradient once per step.

>>> from ember.model import ModelConfig
>>> stage_bounds(ModelConfig.tiny(n_layers=5).n_layers, 2)
[(0, 3), (3, 5)]
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn

from ember.model.layers import rope_cos_sin


def stage_bounds(n_layers: int, pp: int) -> list[tuple[int, int]]:
    """Blocks [lo, hi) of each of `pp` stages; the first stages take one more when uneven."""
    if isinstance(pp, bool) or not isinstance(pp, int) or pp < 1:
        raise ValueError(f"pipeline degree must be a positive int, got {pp!r}")
    if pp > n_layers:
        raise ValueError(f"pipeline degree {pp} exceeds n_layers {n_layers}: every stage needs a block")
    q, r = divmod(n_layers, pp)
    bounds, lo = [], 0
    for s in range(pp):
        hi = lo + q + (s < r)
        bounds.append((lo, hi))
        lo = hi
    return bounds


class StageModule(nn.Module):
    """Blocks [lo, hi) of a Transformer, with the embeddings when first and the final norm and
    head when last: ids (B, T) or hidden (B, T, D) in → hidden (B, T, D) or logits (B, T, V) out.
    The modules are the plain model's own (shared, not copied). Plain causal forwards only: no
    cache, packing or padding masks."""

    def __init__(self, model: nn.Module, lo: int, hi: int, first: bool, last: bool):
        super().__init__()
        self.config = model.config
        self.first, self.last = first, last
        self.layers = nn.ModuleList(model.layers[lo:hi])
        if first:
            self.tok_embeddings = model.tok_embeddings
            self._embed = model._add_embeddings  # positions (learned, sinusoidal) and embedding norm
        if last:
            self.norm, self.output = model.norm, model.output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T = x.shape[:2]
        pos = torch.arange(T, device=x.device).expand(B, T)  # (B, T)
        if self.first:
            x = self._embed(self.tok_embeddings(x), pos, None)  # (B, T, D)
        rope = rope_cos_sin(self.config, pos) if self.config.pos_emb == "rope" else None
        for layer in self.layers:
            x = layer(x, rope)  # (B, T, D)
        return self.output(self.norm(x)) if self.last else x


class Pipeline:
    """The plain `model` run as `pp` = the group's size stages, one per rank of `group`.

    step((x, y)) runs one GPipe forward/backward over `n_microbatches` micro-batches and leaves
    every parameter's gradient (that of the mean loss over the batch) on every rank; it returns
    that mean loss, on every rank. `loss_fn(model, (x, y))` is the loop's: it is called on the
    last stage with a stand-in model that returns the stage's logits, so it must call the model
    once, on x.
    """

    def __init__(self, model: nn.Module, loss_fn: Callable, n_microbatches: int, device: torch.device,
                 group: dist.ProcessGroup | None = None):
        if not isinstance(getattr(model, "layers", None), nn.ModuleList) or not hasattr(model, "config"):
            raise ValueError(f"pipeline parallelism cuts a Transformer's blocks; {type(model).__name__} has no .layers")
        cfg = model.config
        if getattr(cfg, "sliding_window", None) is not None or not cfg.causal:
            raise ValueError("pipeline stages run plain causal attention: a sliding window or an encoder "
                             "(causal False) is not supported")
        self.model, self.group = model, group
        self.pp, self.rank = dist.get_world_size(group), dist.get_rank(group)
        if isinstance(n_microbatches, bool) or not isinstance(n_microbatches, int) or n_microbatches < 1:
            raise ValueError(f"pipeline micro-batches must be a positive int, got {n_microbatches!r}")
        self.n_microbatches = n_microbatches
        lo, hi = stage_bounds(model.config.n_layers, self.pp)[self.rank]
        self.first, self.last = self.rank == 0, self.rank == self.pp - 1
        self.stage_module = StageModule(model, lo, hi, self.first, self.last)
        # imported here: torch.distributed.pipelining costs seconds at import, and every
        # training command imports this module
        from torch.distributed.pipelining import PipelineStage, ScheduleGPipe

        self.stage = PipelineStage(self.stage_module, self.rank, self.pp, device, group=group)

        def stage_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return loss_fn(lambda _x: logits, (None, y))[0]

        self.schedule = ScheduleGPipe(self.stage, n_microbatches, loss_fn=stage_loss)

    def step(self, batch: Any) -> float:
        if not (isinstance(batch, tuple | list) and len(batch) == 2):
            raise ValueError("pipeline parallelism trains on (x, y) batches (--objective clm)")
        x, y = batch
        if x.shape[0] % self.n_microbatches:
            raise ValueError(f"batch of {x.shape[0]} rows does not split into {self.n_microbatches} "
                             "pipeline micro-batches")
        losses: list[torch.Tensor] = []
        if self.first and self.last:
            self.schedule.step(x, target=y, losses=losses)
        elif self.first:
            self.schedule.step(x)
        elif self.last:
            self.schedule.step(target=y, losses=losses)
        else:
            self.schedule.step()
        self._all_reduce_grads()
        loss = torch.stack(losses).mean().detach() if self.last else torch.zeros(())
        dist.broadcast(loss, src=dist.get_global_rank(self.group, self.pp - 1) if self.group else self.pp - 1,
                       group=self.group)
        return loss.item()

    def _all_reduce_grads(self) -> None:
        """Every rank gets every gradient: the sum over stages, zero where a stage did not use
        the parameter (a tied embedding/head gets both stages' parts)."""
        params = [p for p in self.model.parameters() if p.requires_grad]
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
        dist.all_reduce(flat, group=self.group)
        offset = 0
        for p in params:
            n = p.numel()
            p.grad = flat[offset: offset + n].view_as(p).clone()
            offset += n
