"""apply_fused_projections: one matmul for q/k/v and one for gate/up, without editing the model.

At batch-1 decode every matmul call has a fixed cost of ~10–20 µs, so SmolLM2's 211
calls per token (7 per layer + head) cost more than their bytes; fusing wq/wk/wv and
w1/w3 leaves 121 (ANCHORS.md). The model calls `self.wq(x)`, `self.wk(x)`, `self.wv(x)`
(and `self.w1(x)`, `self.w3(x)`) on the same x, so each of those modules is replaced by a
`_Slice` of a shared `FusedLinear`: the first slice called computes the fused product for
that x and keeps it until every slice has taken its columns.

Correct for any call order or input: a slice given another tensor than the one kept
recomputes. It is an eager-mode prototype: it keeps per-call state on a module (which
torch.compile would have to guard on) and relies on tensor identity. The integration we
recommend instead is a seam in the model (see `FusedLinear`'s docstring).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
import torch.nn as nn

from ember.quant.apply import QuantConfig, _check_matches, _quantize_weight
from ember.quant.int4 import Int4Linear, raw_bytes

GROUPS = (("attention", ("wq", "wk", "wv")), ("feed_forward", ("w1", "w3")))


class FusedLinear(nn.Module):
    """The rows of several linears stacked into one module; `parts` are their widths.

    The clean seam for the model (4 lines each in Attention and FeedForward):
        if self.wqkv is not None:  # set by a transform; None in the plain model
            q, k, v = self.wqkv(x).split([D, Dkv, Dkv], dim=-1)
    and likewise `g, u = self.w13(x).chunk(2, -1)`, so state dicts keep wq/wk/wv and w1/w3
    and fusion stays a transform that also compiles cleanly.
    """

    def __init__(self, inner: nn.Module, parts: tuple[int, ...]):
        super().__init__()
        self.inner, self.parts = inner, tuple(parts)
        self._x = self._y = None
        self._taken = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)

    def part(self, x: torch.Tensor, i: int) -> torch.Tensor:
        """Columns of part i of inner(x); computed once per x for all parts."""
        if self._x is not x:
            self._x, self._y, self._taken = x, self.inner(x), 0
        lo = sum(self.parts[:i])
        y = self._y[..., lo : lo + self.parts[i]]
        self._taken += 1
        if self._taken == len(self.parts):  # every part served: drop the references
            self._x = self._y = None
        return y


class _Slice(nn.Module):
    """Stands in for one of the fused linears: returns its columns of the shared product."""

    def __init__(self, fused: FusedLinear, index: int):
        super().__init__()
        self.index = index
        object.__setattr__(self, "fused", fused)  # not a submodule: the parent owns it once

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fused.part(x, self.index)


@torch.no_grad()
def apply_fused_projections(
    model: nn.Module, cfg: QuantConfig | None = None, raw_tensors: Mapping[str, tuple] | None = None
) -> nn.Module:
    """Fuse attention.{wq,wk,wv} and feed_forward.{w1,w3} of every block, quantizing the
    fused weight with `cfg` (None keeps it float). Apply to a float model, before apply_quant.
    With `raw_tensors` (as for apply_quant_from_gguf) and int4, groups whose parts are all
    Q4_1 stack the file's blocks row-wise (blocks run along rows), keeping the codes exact.

    >>> from ember.model import ModelConfig, Transformer  # doctest: +SKIP
    >>> m = apply_fused_projections(Transformer(ModelConfig.tiny()))  # doctest: +SKIP
    """
    from gguf import GGMLQuantizationType as GT

    for pname, parent in list(model.named_modules()):
        for attr, names in GROUPS:
            owner = getattr(parent, attr, None) if attr in parent._modules else None
            if owner is None or not all(
                isinstance(getattr(owner, n, None), nn.Linear) for n in names
            ):
                continue
            lins = [getattr(owner, n) for n in names]
            weight = torch.cat([lin.weight for lin in lins], dim=0)  # (sum N, K)
            bias = None
            if any(lin.bias is not None for lin in lins):
                bias = torch.cat(
                    [
                        lin.bias if lin.bias is not None else lin.weight.new_zeros(lin.out_features)
                        for lin in lins
                    ]
                )
            keys = [f"{pname}.{attr}.{n}.weight".lstrip(".") for n in names]
            entries = [raw_tensors.get(k) for k in keys] if raw_tensors is not None else [None]
            if (
                cfg is not None
                and cfg.mode == "int4"
                and all(e is not None and GT(int(e[0])) == GT.Q4_1 for e in entries)
            ):
                for k, e, lin in zip(keys, entries, lins):
                    _check_matches(k, e[1], e[2], GT.Q4_1, lin.weight)
                blocks = np.concatenate([raw_bytes(e[1]) for e in entries])
                inner = Int4Linear.from_q4_1(blocks, weight.shape, bias, cfg.compute_dtype)
            elif cfg is None:
                inner = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
                inner.weight.copy_(weight)
                if bias is not None:
                    inner.bias.copy_(bias)
            else:
                inner = _quantize_weight(weight, bias, cfg.mode, cfg)
                if inner is None:
                    continue
            fused = FusedLinear(inner, tuple(lin.out_features for lin in lins))
            owner.add_module("fused_" + "".join(names), fused)
            for i, n in enumerate(names):
                setattr(owner, n, _Slice(fused, i))
    return model
