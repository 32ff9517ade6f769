"""Mixture-of-experts feed-forward: a router picks top_k of n_experts MLPs per token.

    probs = softmax(x W_r)                       (N, E)   N = B·T tokens, E experts
    w, e  = top_k(probs)                         (N, k)   (renormalized to sum 1: Mixtral)
    y     = sum_j w_j · expert_{e_j}(x)          (N, D)

Each token costs k expert MLPs, so a model with E experts holds ~E/k times the FFN weights
of a dense model at the same compute per token. Training adds two router losses (read
after each forward by `router_losses`, added to the task loss by `with_router_losses`):

- load balancing (Switch, Fedus et al. 2021 eq. 4; Mixtral's form for top_k > 1):
  E · sum_e f_e · P_e, f_e the fraction of tokens whose top_k holds e, P_e the mean router
  probability of e; k at perfect balance, up to E·k when every token picks the same experts;
- router z-loss (ST-MoE, Zoph et al. 2022 eq. 5): mean over tokens of logsumexp(logits)^2,
  which keeps router logits small.

With `capacity_factor` set, expert e computes at most C = ceil(capacity_factor·N·k/E)
tokens per forward; the rest are dropped (their output from e is 0, the residual carries
the token on), first choices served before second choices (GShard). None: dropless.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ember.model.config import ModelConfig
from ember.model.layers import FeedForward


class MoEFeedForward(nn.Module):
    """`router` (D → E, no bias) and `experts`, E FeedForward blocks of width d_ff.

    After each forward, `last` holds the router statistics of that forward: aux (load
    balancing), z (z-loss), load (E,) the share of routed assignments per expert, dropped
    (the share of assignments over capacity).

    >>> moe = MoEFeedForward(ModelConfig.tiny(moe={"n_experts": 4, "top_k": 2}))
    >>> moe(torch.randn(2, 3, 64)).shape, moe.last["load"].shape
    (torch.Size([2, 3, 64]), torch.Size([4]))
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        assert cfg.moe is not None, "MoEFeedForward needs cfg.moe"
        self.moe = cfg.moe
        self.router = nn.Linear(cfg.d_model, cfg.moe.n_experts, bias=False)
        self.experts = nn.ModuleList(FeedForward(cfg) for _ in range(cfg.moe.n_experts))
        self.last: dict[str, torch.Tensor] = {}

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Tokens x (N, D) → router logits (N, E) fp32, weights (N, k), chosen experts (N, k),
        and keep (N, k) bool: False where the assignment is dropped for capacity."""
        m = self.moe
        logits = self.router(x).float()  # (N, E); softmax in fp32, as Mixtral
        weights, chosen = logits.softmax(-1).topk(m.top_k, dim=-1)  # (N, k)
        if m.renormalize:
            weights = weights / weights.sum(-1, keepdim=True)
        if m.capacity_factor is None:
            keep = torch.ones_like(chosen, dtype=torch.bool)
        else:
            keep = capacity_keep(chosen, m.n_experts, expert_capacity(x.shape[0], m.top_k, m.n_experts,
                                                                      m.capacity_factor))
        return logits, weights, chosen, keep

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        flat = x.reshape(-1, D)  # (N, D)
        logits, weights, chosen, keep = self.route(flat)
        out = torch.zeros_like(flat)
        for e, expert in enumerate(self.experts):
            # every expert runs, on 0 tokens if none chose it, so all weights join the graph
            # (DDP expects a gradient for every parameter)
            tok, slot = torch.where((chosen == e) & keep)  # assignments to e: (n_e,), (n_e,)
            y = expert(flat[tok]) * weights[tok, slot, None].to(flat.dtype)  # (n_e, D)
            out.index_add_(0, tok, y)
        self.last = router_stats(logits, chosen, keep, self.moe.n_experts)
        return out.view(B, T, D)


def expert_capacity(n_tokens: int, top_k: int, n_experts: int, capacity_factor: float) -> int:
    """Tokens one expert may take: ceil(capacity_factor · N · k / E).

    >>> expert_capacity(10, 2, 4, 1.0)
    5
    """
    return math.ceil(capacity_factor * n_tokens * top_k / n_experts)


def capacity_keep(chosen: torch.Tensor, n_experts: int, capacity: int) -> torch.Tensor:
    """chosen (N, k) expert ids → keep (N, k): the first `capacity` assignments of each expert,
    counting all first choices (in token order) before any second choice.

    >>> capacity_keep(torch.tensor([[0, 1], [0, 1], [0, 2]]), 3, 2)
    tensor([[ True,  True],
            [ True,  True],
            [False,  True]])
    """
    N, k = chosen.shape
    onehot = F.one_hot(chosen.t().reshape(-1), n_experts)  # (k·N, E), slot-major
    rank = (onehot.cumsum(0) * onehot).sum(-1) - 1  # (k·N,) place of each assignment in its expert's queue
    return (rank < capacity).view(k, N).t()


def router_stats(logits: torch.Tensor, chosen: torch.Tensor, keep: torch.Tensor, n_experts: int) -> dict:
    """The router's losses and usage for one forward (see the module docstring).

    logits (N, E) fp32, chosen and keep (N, k) → aux, z (scalars with gradients), load (E,)
    the share of kept assignments per expert, dropped (the share over capacity).

    >>> s = router_stats(torch.zeros(4, 2), torch.tensor([[0], [1], [0], [1]]), torch.ones(4, 1, dtype=torch.bool), 2)
    >>> float(s["aux"]), float(s["dropped"])
    (1.0, 0.0)
    """
    probs = logits.softmax(-1)  # (N, E)
    picked = F.one_hot(chosen, n_experts).sum(1).float()  # (N, E) multi-hot of the top_k
    f = picked.mean(0)  # (E,) tokens choosing e / N
    aux = n_experts * (f * probs.mean(0)).sum()
    z = torch.logsumexp(logits, dim=-1).pow(2).mean()
    kept = F.one_hot(chosen, n_experts)[keep].sum(0).float()  # (E,) assignments each expert computed
    load = kept / kept.sum().clamp(min=1)
    return {"aux": aux, "z": z, "load": load.detach(), "dropped": 1 - keep.float().mean()}


def router_losses(model: nn.Module) -> tuple[torch.Tensor | None, dict[str, float]]:
    """The weighted router losses of the last forward, averaged over MoE layers, and metrics:
    moe_aux, moe_z (unweighted means), moe_dropped, moe_max_load (the busiest expert's share
    × E: 1.0 is perfect balance, E means one expert takes everything). (None, {}) without MoE.

    >>> model = nn.Sequential(MoEFeedForward(ModelConfig.tiny(moe={"n_experts": 2, "top_k": 1})))
    >>> _ = model(torch.randn(1, 8, 64))
    >>> sorted(router_losses(model)[1])
    ['moe_aux', 'moe_dropped', 'moe_max_load', 'moe_z']
    """
    layers = [m for m in model.modules() if isinstance(m, MoEFeedForward) and m.last]
    if not layers:
        return None, {}
    cfg = layers[0].moe
    aux = torch.stack([m.last["aux"] for m in layers]).mean()
    z = torch.stack([m.last["z"] for m in layers]).mean()
    loss = cfg.aux_loss_coef * aux + cfg.z_loss_coef * z
    metrics = {
        "moe_aux": float(aux.detach()), "moe_z": float(z.detach()),
        "moe_dropped": sum(float(m.last["dropped"]) for m in layers) / len(layers),
        "moe_max_load": sum(float(m.last["load"].max()) * cfg.n_experts for m in layers) / len(layers),
    }
    return loss, metrics


def with_router_losses(loss_fn: Callable) -> Callable:
    """loss_fn(model, batch) → (loss, metrics) made to add the MoE router losses of the
    forward it ran, and their metrics (a model without MoE layers is left as it was)."""

    def moe_loss_fn(model, batch):
        loss, metrics = loss_fn(model, batch)
        extra, moe_metrics = router_losses(model)
        if extra is None:
            return loss, metrics
        return loss + extra.to(loss.dtype), {**metrics, **moe_metrics}

    return moe_loss_fn
