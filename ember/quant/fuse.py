"""apply_fused_projections: one matmul for q/k/v and one for gate/up.

At batch-1 decode every matmul call has a fixed cost of ~10–20 µs, so SmolLM2's 211 calls
per token (7 per layer + head) cost more than their bytes; fusing wq/wk/wv and w1/w3 leaves
121 (ANCHORS.md). The model reserves nothing for it: the transform replaces each block's
`Attention` by a `FusedAttention` whose `qkv` step is one matmul (`wqkv`), and each swiglu
`FeedForward` by a `FusedFeedForward` whose `gate_up` is one (`w13`); everything else is
the model's own code. It is for inference: state dicts of a fused model name `wqkv`/`w13`,
so fuse after loading and do not save the result.

Fusing stacks rows, and every weight format here stacks exactly: nn.Linear weights, int8
rows with their per-row scales, and int4 codes with their (K/G, N, 2) scales, so Q4_1
codes stay exact.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from ember.model.layers import Attention, FeedForward
from ember.quant.int4 import Int4Linear
from ember.quant.int8 import Int8Linear

# The CPU int4 packing lays out rows in tiles of 64: packed parts concatenate exactly when
# every part but the last fills whole tiles (found by experiment; tested).
_INT4_ROW_TILE = 64


def _bias(mods: Sequence[nn.Module]) -> torch.Tensor | None:
    if all(m.bias is None for m in mods):
        return None
    return torch.cat([m.bias if m.bias is not None else torch.zeros(m.out_features) for m in mods])


@torch.no_grad()
def fuse_linears(mods: Sequence[nn.Module]) -> nn.Module:
    """Linears sharing an input → one linear whose output is their outputs side by side.

    >>> a, b = nn.Linear(8, 4), nn.Linear(8, 2)
    >>> x = torch.randn(3, 8)
    >>> torch.allclose(fuse_linears([a, b])(x), torch.cat([a(x), b(x)], -1))
    True
    """
    kinds = {type(m) for m in mods}
    if len(kinds) != 1:
        raise ValueError(f"cannot fuse linears of different kinds: {sorted(k.__name__ for k in kinds)}")
    kind = kinds.pop()
    bias = _bias(mods)
    N = sum(m.out_features for m in mods)
    K = mods[0].in_features
    if any(m.in_features != K for m in mods):
        raise ValueError("cannot fuse linears with different input widths")
    if kind is nn.Linear:
        w = mods[0].weight
        out = nn.Linear(K, N, bias=bias is not None, device=w.device, dtype=w.dtype)
        out.weight.copy_(torch.cat([m.weight for m in mods]))
    elif kind is Int4Linear:
        g = {m.group_size for m in mods}
        if len(g) != 1:
            raise ValueError(f"cannot fuse int4 linears with different group sizes {sorted(g)}")
        G, dtype = g.pop(), mods[0].compute_dtype
        sz = torch.cat([m.scales_and_zeros for m in mods], dim=1)  # (K/G, N, 2)
        if all(m.out_features % _INT4_ROW_TILE == 0 for m in mods[:-1]):
            out = Int4Linear(K, N, bias=bias is not None, group_size=G, compute_dtype=dtype)
            out.weight_packed = torch.cat([m.weight_packed for m in mods])  # (N, K/2)
            out.scales_and_zeros = sz
        else:  # a part ends inside a packing tile: repack from the exact codes
            codes = torch.cat([m.codes() for m in mods])  # (N, K)
            out = Int4Linear.from_codes(codes, sz[..., 0].t(), sz[..., 1].t(), G, None, dtype)
    elif kind is Int8Linear:
        out = Int8Linear(K, N, bias=bias is not None, compute_dtype=mods[0].compute_dtype)
        out.weight_int8 = torch.cat([m.weight_int8 for m in mods])
        out.scales = torch.cat([m.scales for m in mods])
    elif hasattr(kind, "cat") and bias is None:  # a module type that knows how to stack itself
        out = kind.cat(mods)
    else:
        raise ValueError(f"cannot fuse {kind.__name__} modules")
    if bias is not None:
        out.bias = nn.Parameter(bias.to(out.bias.dtype))
    return out


def _settings(module: nn.Module) -> dict:
    """A module's plain attributes (head counts, flags), without its parameters or children."""
    return {k: v for k, v in vars(module).items() if not k.startswith("_") and k != "training"}


class FusedAttention(Attention):
    """An Attention whose q, k, v come from one linear `wqkv` (their rows stacked).

    >>> from ember.model import ModelConfig, Transformer
    >>> att = FusedAttention(Transformer(ModelConfig.tiny()).layers[0].attention)
    >>> type(att.wqkv).__name__, hasattr(att, "wq")
    ('Linear', False)
    """

    def __init__(self, attn: Attention):
        nn.Module.__init__(self)  # not Attention.__init__: it would build wq/wk/wv again
        vars(self).update(_settings(attn))
        self.train(attn.training)
        self.wqkv = fuse_linears([attn.wq, attn.wk, attn.wv])
        self.wo = attn.wo

    def qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        kv_dim = self.n_kv_heads * self.head_dim
        return self.wqkv(x).split([self.n_heads * self.head_dim, kv_dim, kv_dim], dim=-1)


class FusedFeedForward(FeedForward):
    """A swiglu FeedForward whose gate and up projections are one linear `w13`."""

    def __init__(self, ffn: FeedForward):
        nn.Module.__init__(self)  # not FeedForward.__init__: it would build w1/w3 again
        if not ffn.swiglu:
            raise ValueError("only a swiglu feed-forward has two input projections to fuse")
        vars(self).update(_settings(ffn))
        self.train(ffn.training)
        self.w13 = fuse_linears([ffn.w1, ffn.w3])
        self.w2 = ffn.w2

    def gate_up(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.w13(x).chunk(2, dim=-1)


@torch.no_grad()
def apply_fused_projections(model: nn.Module) -> nn.Module:
    """Replace every plain `Attention` by a FusedAttention and every swiglu `FeedForward` by
    a FusedFeedForward, in place; works on float, int8 and int4 projections alike (apply it
    after apply_quant / apply_quant_from_gguf). Already fused modules are left alone.

    >>> from ember.model import ModelConfig, Transformer
    >>> m = apply_fused_projections(Transformer(ModelConfig.tiny()))
    >>> type(m.layers[0].attention.wqkv).__name__, hasattr(m.layers[0].attention, "wq")
    ('Linear', False)
    """
    for name, module in list(model.named_modules()):
        if type(module) is Attention:
            _set(model, name, FusedAttention(module))
        elif type(module) is FeedForward and module.swiglu:
            _set(model, name, FusedFeedForward(module))
    return model


def _set(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)
