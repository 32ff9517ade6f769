"""LoRA (Hu et al. 2021): train a low-rank update B·A beside frozen linear weights.

y = W x + (α / r) · B A x (eq. 3), A (r, in) Kaiming-uniform, B (out, r) zeros, so the
adapted model starts equal to the base. The model stays plain: `apply_lora` swaps the
chosen linears for `LoraLinear` wrappers afterwards and freezes everything else.

What every kind of adapter shares (the `Adapter` base class, `adapters_disabled`,
`peft_state_dict`) is in adapter.py; the adapter folder (`adapter.safetensors` +
`adapter_config.json`) in io.py.

>>> from ember.model import ModelConfig, Transformer
>>> model = apply_lora(Transformer(ModelConfig.tiny()), LoraConfig(rank=4, targets=["wq", "wv"]))
>>> sorted(lora_state_dict(model))[:2]
['layers.0.attention.wq.lora_A', 'layers.0.attention.wq.lora_B']
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from ember.peft.adapter import Adapter, adapter_params, base_model, freeze_base
from ember.peft.nf4 import DEFAULT_TARGETS, NF4Linear, select_linears


@dataclass
class LoraConfig:
    """What apply_lora wraps and how; a recipe's config holds it as its `lora` field.

    >>> LoraConfig(rank=8).alpha / LoraConfig(rank=8).rank
    4.0
    """

    rank: int = 16
    """r, the inner dimension of B A: trainable parameters grow linearly with it."""
    alpha: float = 32.0
    """α: the update is scaled by α / r, so a new rank needs no new learning rate."""
    dropout: float = 0.0
    """Dropout on the adapter's input only (the frozen path sees the input unchanged)."""
    targets: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))
    """Linear layers to wrap: leaf names ("wq") or dotted suffixes ("layers.0.attention.wq")."""

    def __post_init__(self):
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"LoraConfig.rank must be a positive int, got {self.rank!r}")
        if not self.alpha > 0:
            raise ValueError(f"LoraConfig.alpha must be > 0, got {self.alpha!r}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"LoraConfig.dropout must be in [0, 1), got {self.dropout!r}")
        self.targets = [self.targets] if isinstance(self.targets, str) else list(self.targets)
        if not self.targets:
            raise ValueError("LoraConfig.targets is empty")


class LoraLinear(Adapter):
    """base(x) + (α / r) · B A dropout(x), base an nn.Linear or an NF4Linear (QLoRA).

    A and B are fp32 (or the base's dtype if wider) whatever the base dtype, as PEFT does:
    bf16 adapters lose small updates. merge() folds the update into a float base weight in
    place; an NF4 base cannot take it (re-quantizing would add NF4 error on top), so use
    `merge_lora(model)`, which gives a float nn.Linear.

    >>> lin = LoraLinear(nn.Linear(8, 4), rank=2, alpha=4.0)
    >>> lin.lora_A.shape, lin.lora_B.shape, lin.scaling
    (torch.Size([2, 8]), torch.Size([4, 2]), 2.0)
    """

    kind = "lora"

    def __init__(self, base: nn.Module, rank: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        if not isinstance(base, (nn.Linear, NF4Linear)):
            raise ValueError(f"LoRA wraps nn.Linear or NF4Linear, got {type(base).__name__}")
        self.base = base
        self.rank, self.alpha, self.scaling = rank, float(alpha), alpha / rank
        w = base.weight if isinstance(base, nn.Linear) else base.codes
        dtype = torch.promote_types(base.dtype if isinstance(base, NF4Linear) else w.dtype, torch.float32)
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, dtype=dtype, device=w.device))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, dtype=dtype, device=w.device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # nn.Linear's init, as loralib
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False

    def delta_weight(self) -> torch.Tensor:
        """(α / r) · B A: the update to the base weight, (out, in)."""
        return (self.lora_B @ self.lora_A) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self.disabled and self.merged:
            raise ValueError("adapters are disabled but merged into the base weight; unmerge() first")
        if self.disabled or self.merged:
            return y
        h = F.linear(F.linear(self.dropout(x).to(self.lora_A.dtype), self.lora_A), self.lora_B)
        return y + (h * self.scaling).to(y.dtype)

    def merge(self) -> None:
        """W ← W + (α / r) B A in place; forward then skips the adapter branch."""
        self._fold(+1)

    def unmerge(self) -> None:
        """W ← W - (α / r) B A: the base back, up to the rounding of the weight's dtype."""
        self._fold(-1)

    def _fold(self, sign: int) -> None:
        if not isinstance(self.base, nn.Linear):
            raise ValueError("cannot merge LoRA into an NF4 weight in place; merge_lora(model) "
                             "replaces it by a float nn.Linear")
        if self.merged == (sign > 0):
            raise ValueError(f"LoRA is already {'merged' if self.merged else 'unmerged'}")
        with torch.no_grad():
            w = self.base.weight
            w.copy_((w.float() + sign * self.delta_weight().float()).to(w.dtype))
        self.merged = sign > 0


def apply_lora(model: nn.Module, cfg: LoraConfig | None = None) -> nn.Module:
    """Freeze every base parameter and wrap the target linears in LoraLinear, in place.

    Only lora_A / lora_B (and other adapters already there) then require grad. A head
    `output` tied to the embeddings gets its own copy of the matrix when targeted, so that
    merging never edits the embedding. A model whose projections were fused
    (apply_fused_projections) is refused: its wq/wk/wv/w1/w3 are no longer called.

    >>> from ember.model import ModelConfig, Transformer
    >>> m = apply_lora(Transformer(ModelConfig.tiny()), LoraConfig(rank=2))
    >>> sum(p.numel() for p in m.parameters() if p.requires_grad)
    4672
    """
    cfg = cfg or LoraConfig()
    root = base_model(model)
    if any(isinstance(m, LoraLinear) for m in root.modules()):
        raise ValueError("the model already has LoRA adapters")
    if any(getattr(m, "wqkv", None) is not None or getattr(m, "w13", None) is not None for m in root.modules()):
        raise ValueError("LoRA needs unfused projections: apply it before apply_fused_projections")
    names = select_linears(root, cfg.targets)
    freeze_base(model)
    uses = Counter(id(p) for _, p in root.named_parameters(remove_duplicate=False))  # tied: 2
    for name in names:
        parent_name, _, leaf = name.rpartition(".")
        parent = root.get_submodule(parent_name)
        lin = getattr(parent, leaf)
        if isinstance(lin, nn.Linear) and uses[id(lin.weight)] > 1:
            lin.weight = nn.Parameter(lin.weight.detach().clone(), requires_grad=False)
        setattr(parent, leaf, LoraLinear(lin, cfg.rank, cfg.alpha, cfg.dropout))
    return model


def merge_lora(model: nn.Module) -> nn.Module:
    """Replace every LoraLinear by a plain nn.Linear holding W + (α / r) B A (for export and
    serving). An NF4 base is dequantized: the merged layer is float, in the base's dtype.

    >>> from ember.model import ModelConfig, Transformer
    >>> m = merge_lora(apply_lora(Transformer(ModelConfig.tiny()), LoraConfig(rank=2)))
    >>> type(m.layers[0].attention.wq).__name__
    'Linear'
    """
    root = base_model(model)
    for name, m in list(root.named_modules()):
        if not isinstance(m, LoraLinear):
            continue
        base = m.base
        with torch.no_grad():
            w = base.weight if isinstance(base, nn.Linear) else base.dequantize()
            if not m.merged:
                w = (w.float() + m.delta_weight().float()).to(w.dtype)
            lin = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None, device="meta")
            lin.weight = nn.Parameter(w.detach().clone(), requires_grad=False)
            if base.bias is not None:
                lin.bias = nn.Parameter(base.bias.detach().clone(), requires_grad=False)
        parent_name, _, leaf = name.rpartition(".")
        setattr(root.get_submodule(parent_name), leaf, lin)
    return model


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    return list(adapter_params(model, "lora").values())


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """LoRA tensors only, detached: e.g. {"layers.0.attention.wq.lora_A": ..., ...}."""
    return {k: p.detach() for k, p in adapter_params(model, "lora").items()}
