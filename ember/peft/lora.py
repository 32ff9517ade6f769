"""LoRA (Hu et al. 2021): train a low-rank update B·A beside frozen linear weights.

y = W x + (α / r) · B A x (eq. 3), A (r, in) Kaiming-uniform, B (out, r) zeros, so the
adapted model starts equal to the base. The model stays plain: `apply_lora` swaps the
chosen linears for `LoraLinear` wrappers afterwards and freezes everything else.

Also here, for every kind of adapter (LoRA, prefix, prompt; see prompt.py): the `Adapter`
base class, `adapters_disabled` (the base model, e.g. DPO's reference), `peft_state_dict`
and the adapter folder (`adapter.safetensors` + `adapter_config.json`).

>>> from ember.model import ModelConfig, Transformer
>>> model = apply_lora(Transformer(ModelConfig.tiny()), LoraConfig(rank=4, targets=["wq", "wv"]))
>>> sorted(lora_state_dict(model))[:2]
['layers.0.attention.wq.lora_A', 'layers.0.attention.wq.lora_B']
"""

from __future__ import annotations

import json
import math
from collections import Counter
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ember.core.io import atomic_write_bytes, atomic_write_json
from ember.peft.nf4 import DEFAULT_TARGETS, NF4Linear, select_linears

CONFIG_FILE, TENSORS_FILE = "adapter_config.json", "adapter.safetensors"
FORMAT = "ember-peft"
KINDS = ("lora", "prefix", "prompt")  # the order load_adapter applies them in


class Adapter(nn.Module):
    """Base of every PEFT module. Its own (non-recursive) parameters are the adapter's
    tensors; `disabled = True` makes it act as if it were not there."""

    kind = ""
    disabled = False


@dataclass
class LoraConfig:
    """What apply_lora wraps and how.

    rank r and alpha α: the update is scaled by α / r. dropout: on the adapter's input only.
    targets: leaf names of linear layers ("wq") or dotted suffixes ("layers.0.attention.wq").

    >>> LoraConfig(rank=8).alpha / LoraConfig(rank=8).rank
    4.0
    """

    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))

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
                             "replaces it by a float nn.Linear")  # fmt: skip
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


# ---- every kind of adapter ------------------------------------------------------------------


def base_model(model: nn.Module) -> nn.Module:
    """The Transformer inside a prompt-tuning wrapper (PromptTuned), or `model` itself."""
    return model.model if getattr(model, "kind", "") == "prompt" else model


def freeze_base(model: nn.Module) -> None:
    """requires_grad False for every parameter that is not an adapter's."""
    keep = {id(p) for p in peft_parameters(model)}
    for p in model.parameters():
        p.requires_grad_(id(p) in keep)


def _adapter_params(model: nn.Module, kind: str | None = None) -> dict[str, nn.Parameter]:
    """name → parameter of every adapter (of `kind`), named relative to the base Transformer
    (so an adapter file does not depend on whether the model is wrapped); the prompt-tuning
    wrapper's own tensors are "prompt.<name>"."""
    out = {}
    if getattr(model, "kind", "") == "prompt" and kind in (None, "prompt"):
        out.update({f"prompt.{n}": p for n, p in model.named_parameters(recurse=False)})
    for mname, m in base_model(model).named_modules():
        if isinstance(m, Adapter) and kind in (None, m.kind):
            out.update({f"{mname}.{n}": p for n, p in m.named_parameters(recurse=False)})
    return out


def peft_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Every adapter parameter (LoRA, prefix, prompt): what to hand the optimizer."""
    return list(_adapter_params(model).values())


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    return list(_adapter_params(model, "lora").values())


def peft_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Adapter tensors only, detached: e.g. {"layers.0.attention.wq.lora_A": ..., ...}."""
    return {k: p.detach() for k, p in _adapter_params(model).items()}


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: p.detach() for k, p in _adapter_params(model, "lora").items()}


@contextmanager
def adapters_disabled(model: nn.Module):
    """Inside, the model computes the base model's outputs (every adapter switched off).

    The reference model of DPO is the policy with its adapters disabled, with no second copy.

    >>> from ember.model import ModelConfig, Transformer
    >>> m = apply_lora(Transformer(ModelConfig.tiny()), LoraConfig(rank=2))
    >>> with adapters_disabled(m):
    ...     ref = m(torch.zeros(1, 3, dtype=torch.long))
    """
    mods = [m for m in model.modules() if isinstance(m, Adapter)]
    before = [m.disabled for m in mods]
    for m in mods:
        m.disabled = True
    try:
        yield model
    finally:
        for m, b in zip(mods, before, strict=True):
            m.disabled = b


def adapter_config(model: nn.Module, lora: LoraConfig | None = None) -> dict:
    """The adapters of `model` as JSON: {kind: its settings}. LoRA targets are the wrapped
    layers' names unless `lora` (the config applied) is given."""
    kinds = {}
    loras = {n: m for n, m in base_model(model).named_modules() if isinstance(m, LoraLinear)}
    if loras:
        m = next(iter(loras.values()))
        if any((x.rank, x.alpha) != (m.rank, m.alpha) for x in loras.values()):
            raise ValueError("LoRA layers with different rank/alpha cannot be saved as one config")
        if lora is not None and (lora.rank, float(lora.alpha)) != (m.rank, m.alpha):
            raise ValueError(f"LoraConfig rank {lora.rank}, alpha {lora.alpha} does not match the "
                             f"model's LoRA (rank {m.rank}, alpha {m.alpha})")  # fmt: skip
        p = m.dropout.p if isinstance(m.dropout, nn.Dropout) else 0.0
        kinds["lora"] = asdict(lora) if lora is not None else asdict(LoraConfig(m.rank, m.alpha, p, list(loras)))
    prefix = _adapter_params(model, "prefix")
    if prefix:
        kinds["prefix"] = {"n_prefix": next(iter(prefix.values())).shape[1]}
    if getattr(model, "kind", "") == "prompt":
        kinds["prompt"] = {"n_virtual": model.n_virtual}
    return kinds


def save_adapter(model: nn.Module, folder, cfg: LoraConfig | None = None) -> Path:
    """Write folder/adapter.safetensors (adapter tensors only) and adapter_config.json,
    atomically. Every adapter kind on the model is saved; `cfg` records the LoRA targets
    as given (else the wrapped layers' names).

    >>> save_adapter(model, "out/adapter", cfg)  # doctest: +SKIP
    """
    from safetensors.torch import save

    kinds = adapter_config(model, cfg)
    if not kinds:
        raise ValueError("the model has no adapters to save (apply_lora / apply_prefix_tuning / ...)")
    folder = Path(folder)
    tensors = {k: t.contiguous() for k, t in peft_state_dict(model).items()}
    atomic_write_bytes(folder / TENSORS_FILE, save(tensors, metadata={"format": FORMAT}))
    atomic_write_json(folder / CONFIG_FILE, {"format": FORMAT, "version": 1, "adapters": kinds})
    return folder


def load_adapter(model: nn.Module, folder) -> nn.Module:
    """Apply the folder's adapters where the model lacks them, check every key and shape
    against the model, and copy the tensors in. Returns the model (a PromptTuned wrapper
    when the folder holds prompt tuning).

    >>> model = load_adapter(Transformer(cfg), "out/adapter")  # doctest: +SKIP
    """
    from safetensors import SafetensorError
    from safetensors.torch import load

    from ember.peft.prompt import apply_prefix_tuning, apply_prompt_tuning

    folder = Path(folder)
    for f in (CONFIG_FILE, TENSORS_FILE):
        if not (folder / f).is_file():
            raise ValueError(f"{folder}: no {f} (not an adapter folder)")
    try:
        meta = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        meta = None
    kinds = meta.get("adapters") if isinstance(meta, dict) and meta.get("format") == FORMAT else None
    if not isinstance(kinds, dict):
        raise ValueError(f"{folder / CONFIG_FILE}: not an {FORMAT} adapter config")
    if set(kinds) - set(KINDS):
        raise ValueError(f"{folder}: unknown adapter kinds {sorted(set(kinds) - set(KINDS))}; known {KINDS}")
    try:
        tensors = load((folder / TENSORS_FILE).read_bytes())
    except SafetensorError as e:
        raise ValueError(f"{folder / TENSORS_FILE}: corrupt safetensors file ({e})") from None

    if any(getattr(m, "merged", False) for m in model.modules()):
        raise ValueError("the model's LoRA is merged into its weights; unmerge() before loading")
    have = adapter_config(model)
    if set(have) - set(kinds):
        raise ValueError(f"the model has {sorted(set(have) - set(kinds))} adapters the folder lacks")
    if "lora" in kinds:
        try:
            cfg = LoraConfig(**kinds["lora"])
        except TypeError as e:
            raise ValueError(f"{folder / CONFIG_FILE}: bad lora settings ({e})") from None
        if "lora" not in have:
            model = apply_lora(model, cfg)
        elif (have["lora"]["rank"], have["lora"]["alpha"]) != (cfg.rank, float(cfg.alpha)):
            raise ValueError(f"the model's LoRA has rank {have['lora']['rank']}, alpha "
                             f"{have['lora']['alpha']}; the folder's rank {cfg.rank}, alpha {cfg.alpha}")  # fmt: skip
    if "prefix" in kinds and "prefix" not in have:
        model = apply_prefix_tuning(model, int(kinds["prefix"]["n_prefix"]))
    if "prompt" in kinds and "prompt" not in have:
        model = apply_prompt_tuning(model, int(kinds["prompt"]["n_virtual"]))

    params = _adapter_params(model)
    missing, unexpected = sorted(set(params) - set(tensors)), sorted(set(tensors) - set(params))
    if missing or unexpected:
        raise ValueError(f"{folder / TENSORS_FILE} does not fit the model: missing {missing[:5]}"
                         f"{' ...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
                         f"{' ...' if len(unexpected) > 5 else ''}")  # fmt: skip
    for k, p in params.items():
        if tensors[k].shape != p.shape:
            raise ValueError(f"{k}: shape {tuple(tensors[k].shape)} in the file, {tuple(p.shape)} in the model")
    with torch.no_grad():
        for k, p in params.items():
            p.copy_(tensors[k])
    return model
