"""Model merging: several fine-tunes of one base → one model, with no training.

Methods, tensor by tensor (θ_i the models, θ_0 the base, τ_i = θ_i − θ_0 task vectors):
- linear: Σ w_i θ_i, the weights summing to 1 (model soups, Wortsman et al. 2022);
- task_arithmetic: θ_0 + Σ λ_i τ_i (Ilharco et al. 2023);
- ties: θ_0 + λ · disjoint mean of the trimmed task vectors (Yadav et al. 2023, Algorithm 1):
  keep each τ_i's top `density` share of entries by magnitude, elect each entry's sign as the
  sign of Σ_i w_i τ̂_i, and average (weighted) only the entries that agree with it;
- slerp: spherical interpolation of two models, per tensor (Shoemake 1985; as mergekit):
  sin((1−t)Ω)/sin Ω · a + sin(tΩ)/sin Ω · b, Ω the angle between a and b; linear when they
  are nearly parallel.

LoRA adapters of one base merge as their updates ΔW = (α / r) B A (τ_i = ΔW_i, θ_0 = 0);
the result is a full model folder, or an adapter again (`--output adapter`: the merged ΔW
factored by SVD at --rank, exact for linear and task arithmetic at the summed ranks).

>>> a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
>>> merge_tensors("slerp", [a, b], t=0.5).tolist()
[0.7071067690849304, 0.7071067690849304]
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

METHODS = ("linear", "task_arithmetic", "ties", "slerp")
NEEDS_BASE = ("task_arithmetic", "ties")


def check_weights(method: str, n: int, weights: list[float] | None) -> list[float]:
    """The weights to use (default: 1/n for linear, 1 otherwise), checked against the method.

    >>> check_weights("linear", 2, None)
    [0.5, 0.5]
    """
    if method not in METHODS:
        raise ValueError(f"unknown merge method {method!r}; valid methods: {list(METHODS)}")
    if method == "slerp":
        if n != 2:
            raise ValueError(f"slerp interpolates exactly 2 models, got {n}")
        return [1.0, 1.0]
    if n < 1:
        raise ValueError("nothing to merge: give at least one model")
    if weights is None or len(weights) == 0:
        return [1.0 / n] * n if method == "linear" else [1.0] * n
    try:
        weights = [float(w) for w in weights]
    except (TypeError, ValueError):
        raise ValueError(f"weights must be numbers, got {weights}") from None
    if len(weights) != n:
        raise ValueError(f"{len(weights)} weights for {n} models: give one weight per model")
    if not all(math.isfinite(w) for w in weights):
        raise ValueError(f"weights must be finite numbers, got {weights}")
    if method == "linear" and abs(sum(weights) - 1.0) > 1e-6:
        raise ValueError(f"linear merge weights must sum to 1, got {weights} (sum {sum(weights):g}): "
                         f"an average of models; for scaled task vectors use --method task_arithmetic")
    if method == "ties" and any(w <= 0 for w in weights):
        raise ValueError(f"ties weights must be > 0 (they weigh the sign election and the mean), got {weights}")
    return [float(w) for w in weights]


def trim(tau: torch.Tensor, density: float) -> torch.Tensor:
    """τ with all but its top `density` share of entries (by magnitude) set to 0 (TIES' trim;
    ties at the threshold are kept).

    >>> trim(torch.tensor([0.1, -3.0, 2.0, 0.5]), 0.5).tolist()
    [0.0, -3.0, 2.0, 0.0]
    """
    if not 0 < density <= 1:
        raise ValueError(f"density must be in (0, 1], got {density}")
    k = max(1, math.ceil(density * tau.numel()))
    if k >= tau.numel():
        return tau.clone()
    threshold = tau.abs().flatten().kthvalue(tau.numel() - k + 1).values
    return torch.where(tau.abs() >= threshold, tau, torch.zeros_like(tau))


def ties_delta(taus: list[torch.Tensor], weights: list[float], density: float) -> torch.Tensor:
    """TIES' merged task vector: trim, elect the sign of the weighted sum, disjoint weighted mean.

    >>> ties_delta([torch.tensor([1.0, -2.0]), torch.tensor([3.0, 1.0])], [1.0, 1.0], 1.0).tolist()
    [2.0, -2.0]
    """
    trimmed = torch.stack([w * trim(t.float(), density) for t, w in zip(taus, weights)])  # (n, ...)
    sign = torch.sign(trimmed.sum(0))  # elected sign per entry (the total mass's)
    agree = (torch.sign(trimmed) == sign) & (trimmed != 0)
    w = torch.tensor(weights).view(-1, *[1] * (trimmed.dim() - 1))
    total = (agree * trimmed).sum(0)
    count = (agree * w).sum(0)
    return torch.where(count > 0, total / count.clamp_min(1e-12), torch.zeros_like(total))


def slerp(a: torch.Tensor, b: torch.Tensor, t: float, eps: float = 1e-8) -> torch.Tensor:
    """Spherical interpolation between two tensors, seen as vectors; t = 0 gives a, t = 1 b.

    >>> slerp(torch.tensor([2.0, 0.0]), torch.tensor([4.0, 0.0]), 0.5).tolist()  # parallel: linear
    [3.0, 0.0]
    """
    if not 0 <= t <= 1:
        raise ValueError(f"slerp t must be in [0, 1], got {t}")
    a32, b32 = a.float().flatten(), b.float().flatten()
    na, nb = a32.norm(), b32.norm()
    if na < eps or nb < eps:
        return ((1 - t) * a32 + t * b32).view_as(a)
    dot = torch.clamp((a32 / na) @ (b32 / nb), -1.0, 1.0)
    if dot.abs() > 1 - 1e-6:  # (anti)parallel: sin Ω ≈ 0
        out = (1 - t) * a32 + t * b32
    else:
        omega = torch.arccos(dot)
        so = torch.sin(omega)
        out = torch.sin((1 - t) * omega) / so * a32 + torch.sin(t * omega) / so * b32
    return out.view_as(a)


def merge_tensors(method: str, tensors: list[torch.Tensor], base: torch.Tensor | None = None,
                  weights: list[float] | None = None, density: float = 1.0, t: float = 0.5,
                  scale: float = 1.0) -> torch.Tensor:
    """One tensor merged from the models' copies of it (fp32 math, the first one's dtype).

    >>> base = torch.zeros(2)
    >>> merge_tensors("task_arithmetic", [torch.ones(2), 2 * torch.ones(2)], base, [0.5, 0.25]).tolist()
    [1.0, 1.0]
    """
    weights = check_weights(method, len(tensors), weights)
    dtype = tensors[0].dtype
    if method == "slerp":
        return slerp(tensors[0], tensors[1], t).to(dtype)
    if method == "linear":
        return sum(w * x.float() for w, x in zip(weights, tensors)).to(dtype)
    if base is None:
        raise ValueError(f"{method} merges task vectors θ_i − θ_base: give the base model")
    taus = [x.float() - base.float() for x in tensors]
    if method == "task_arithmetic":
        return (base.float() + sum(w * tau for w, tau in zip(weights, taus))).to(dtype)
    return (base.float() + scale * ties_delta(taus, weights, density)).to(dtype)


def check_same_shapes(named: dict[str, dict[str, torch.Tensor]]) -> list[str]:
    """The keys every state dict shares (sorted); differing keys or shapes are a ValueError
    naming the tensor, the models and the shapes."""
    (first, sd0), *rest = named.items()
    for name, sd in rest:
        if set(sd) != set(sd0):
            only0, only = sorted(set(sd0) - set(sd)), sorted(set(sd) - set(sd0))
            raise ValueError(f"{first} and {name} hold different tensors: only in {first}: {only0[:5]}, "
                             f"only in {name}: {only[:5]}")
        for k, v in sd.items():
            if v.shape != sd0[k].shape:
                raise ValueError(f"tensor {k}: shape {tuple(sd0[k].shape)} in {first}, {tuple(v.shape)} in {name}: "
                                 f"models of different shapes cannot be merged")
    return sorted(sd0)


def merge_state_dicts(method: str, named: dict[str, dict[str, torch.Tensor]],
                      base: dict[str, torch.Tensor] | None = None, weights: list[float] | None = None,
                      density: float = 1.0, t: float = 0.5, scale: float = 1.0) -> dict[str, torch.Tensor]:
    """Every tensor merged; named: {model name: state dict}, base (task vectors) beside them.

    >>> sds = {"a": {"w": torch.ones(2)}, "b": {"w": torch.zeros(2)}}
    >>> merge_state_dicts("linear", sds)["w"].tolist()
    [0.5, 0.5]
    """
    weights = check_weights(method, len(named), weights)
    keys = check_same_shapes({**named, **({"the base": base} if base is not None else {})})
    if method in NEEDS_BASE and base is None:
        raise ValueError(f"{method} merges task vectors θ_i − θ_base: give the base model")
    return {k: merge_tensors(method, [sd[k] for sd in named.values()], None if base is None else base[k],
                             weights, density, t, scale) for k in keys}


# ---- files: LoRA adapters and model folders ---------------------------------------------------

def read_lora_deltas(folder) -> tuple[dict[str, torch.Tensor], dict]:
    """An adapter folder's updates {linear layer name: ΔW = (α / r) B A (out, in)}, and
    {"base": base_model.json's model or None, "rank": r}. Adapters other than LoRA are refused."""
    import json

    from safetensors import SafetensorError
    from safetensors.torch import load

    from ember.peft.io import CONFIG_FILE, TENSORS_FILE

    folder = Path(folder)
    try:
        kinds = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))["adapters"]
        tensors = load((folder / TENSORS_FILE).read_bytes())
    except (OSError, ValueError, KeyError, TypeError, SafetensorError) as e:
        raise ValueError(f"{folder}: not a readable adapter folder ({e})") from None
    if not isinstance(kinds, dict) or set(kinds) != {"lora"}:
        raise ValueError(f"{folder}: merge takes LoRA adapters only, this one holds {sorted(kinds)}")
    scaling = float(kinds["lora"]["alpha"]) / int(kinds["lora"]["rank"])
    names = sorted({k.rsplit(".", 1)[0] for k in tensors})
    deltas = {}
    for n in names:
        A, B = tensors.get(f"{n}.lora_A"), tensors.get(f"{n}.lora_B")
        if A is None or B is None:
            raise ValueError(f"{folder}: {n} lacks lora_A or lora_B")
        deltas[n] = scaling * (B.float() @ A.float())
    base = None
    if (folder / "base_model.json").is_file():
        base = json.loads((folder / "base_model.json").read_text(encoding="utf-8")).get("model")
    return deltas, {"base": base, "rank": int(kinds["lora"]["rank"])}


def merge_lora_deltas(method: str, named: dict[str, dict[str, torch.Tensor]], weights=None, density: float = 1.0,
                      t: float = 0.5, scale: float = 1.0) -> dict[str, torch.Tensor]:
    """Adapters' ΔW merged as task vectors over a zero base; a layer an adapter leaves alone
    counts as ΔW = 0 there. slerp interpolates the two updates.

    >>> d = merge_lora_deltas("task_arithmetic", {"a": {"x": torch.ones(1, 1)}, "b": {"y": torch.ones(1, 1)}})
    >>> sorted(d), d["x"].item()
    (['x', 'y'], 1.0)
    """
    keys = sorted(set().union(*named.values()))
    shapes = {}
    for model, sd in named.items():
        for k, v in sd.items():
            if shapes.setdefault(k, (model, v.shape))[1] != v.shape:
                raise ValueError(f"layer {k}: update of shape {tuple(shapes[k][1])} in {shapes[k][0]}, "
                                 f"{tuple(v.shape)} in {model}: adapters of different models cannot be merged")
    out = {}
    for k in keys:
        zero = torch.zeros(shapes[k][1])
        xs = [sd.get(k, zero) for sd in named.values()]
        out[k] = merge_tensors(method, xs, zero, weights, density, t, scale)
    return out


def lora_factors(delta: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(A (r, in), B (out, r)) with B A the best rank-r approximation of ΔW (SVD), α = r.

    >>> A, B = lora_factors(torch.outer(torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0])), 1)
    >>> (B @ A).round().tolist()
    [[3.0, 4.0], [6.0, 8.0]]
    """
    U, S, Vh = torch.linalg.svd(delta.float(), full_matrices=False)
    r = min(rank, len(S))
    root = S[:r].sqrt()
    A, B = root[:, None] * Vh[:r], U[:, :r] * root
    if r < rank:  # keep every layer at one rank: pad with zero directions
        A = torch.cat([A, torch.zeros(rank - r, A.shape[1])])
        B = torch.cat([B, torch.zeros(B.shape[0], rank - r)], 1)
    return A.contiguous(), B.contiguous()


@dataclass
class MergeConfig:
    """Merge fine-tunes of one base, or LoRA adapters of one base, into one model."""

    models: list[str] = field(default_factory=list)
    """The models (known names, GGUF files, HF folders) or LoRA adapter folders to merge."""
    method: Literal["linear", "task_arithmetic", "ties", "slerp"] = "linear"
    """linear (weights sum to 1), task_arithmetic (base + Σ λ τ), ties (trim, elect sign, disjoint mean), slerp (2 models)."""
    weights: list[float] | None = None
    """One per model: linear's mixing weights (default equal), task arithmetic's λ, ties' weights (default 1)."""
    base: str | None = None
    """The base model: task vectors θ − base (task_arithmetic, ties); adapters: default their base_model.json."""
    density: float = 0.2
    """ties: the share of each task vector's entries kept (by magnitude)."""
    t: float = 0.5
    """slerp: 0 gives the first model, 1 the second."""
    scale: float = 1.0
    """ties: λ, the merged task vector's scale."""
    output: Literal["auto", "model", "adapter"] = "auto"
    """model: an HF folder (`ember generate --model`); adapter: a LoRA folder (`--adapter`); auto: the inputs' kind."""
    rank: int | None = None
    """Adapter output: the LoRA rank (default the sum of the inputs' ranks, exact for linear and task arithmetic)."""
    out: str | None = None
    """The output folder."""
    overwrite: bool = False
    """Replace an existing output folder."""


def _is_adapter(path: str) -> bool:
    from ember.peft.io import CONFIG_FILE

    return (Path(path) / CONFIG_FILE).is_file()


def _state_dict(name: str) -> tuple[dict[str, torch.Tensor], object]:
    from ember.model.load import load_model

    model = load_model(name)
    return {k: v.detach() for k, v in model.state_dict().items()}, model.config


def _merge_models(cfg: MergeConfig, tmp: Path) -> None:
    from ember.model.load import build_model

    named, configs = {}, {}
    for m in cfg.models:
        named[m], configs[m] = _state_dict(m)
    base = _state_dict(cfg.base)[0] if cfg.base is not None else None
    sd = merge_state_dicts(cfg.method, named, base, cfg.weights, cfg.density, cfg.t, cfg.scale)
    first = cfg.models[0]
    for m, c in configs.items():
        diff = {k: (v, c.to_dict()[k]) for k, v in configs[first].to_dict().items() if c.to_dict()[k] != v}
        if diff:
            raise ValueError(f"{first} and {m} have different configs: {diff}")
    _save_model(build_model(configs[first], sd), first, tmp)


def _save_model(model, tokenizer_from: str, folder: Path) -> None:
    from ember.model.convert.hf import save_hf
    from ember.tokenizer import load_tokenizer
    from ember.tokenizer.hf_export import save_hf_tokenizer

    tok = load_tokenizer(tokenizer_from)
    save_hf(model, folder)
    tok.save(folder)
    save_hf_tokenizer(tok, folder)


def _merge_adapters(cfg: MergeConfig, tmp: Path) -> None:
    from ember.core.io import atomic_write_bytes, atomic_write_json
    from ember.peft.io import CONFIG_FILE, FORMAT, TENSORS_FILE

    named, info = {}, {}
    for m in cfg.models:
        named[m], info[m] = read_lora_deltas(m)
    bases = {i["base"] for i in info.values()}
    base = cfg.base or (bases.pop() if len(bases) == 1 else None)
    if base is None:
        raise ValueError(f"the adapters name different bases ({sorted(map(str, bases))}) or none: pass --base")
    deltas = merge_lora_deltas(cfg.method, named, cfg.weights, cfg.density, cfg.t, cfg.scale)
    if cfg.output == "model":
        from ember.model.load import load_model

        model = load_model(base)
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, d in deltas.items():
                if f"{name}.weight" not in params or params[f"{name}.weight"].shape != d.shape:
                    raise ValueError(f"layer {name}: the adapters' update {tuple(d.shape)} does not fit base {base}")
                params[f"{name}.weight"] += d.to(params[f"{name}.weight"].dtype)
        return _save_model(model, base, tmp)
    from safetensors.torch import save

    rank = cfg.rank or sum(i["rank"] for i in info.values())
    tensors = {}
    for name, d in deltas.items():
        tensors[f"{name}.lora_A"], tensors[f"{name}.lora_B"] = lora_factors(d, rank)
    lora = {"rank": rank, "alpha": float(rank), "dropout": 0.0, "targets": sorted(deltas)}
    atomic_write_bytes(tmp / TENSORS_FILE, save(tensors, metadata={"format": FORMAT}))
    atomic_write_json(tmp / CONFIG_FILE, {"format": FORMAT, "version": 1, "adapters": {"lora": lora}})
    atomic_write_json(tmp / "base_model.json", {"model": base})


def merge(cfg: MergeConfig) -> Path:
    """Merge cfg.models into cfg.out, written into a temporary sibling folder and renamed into
    place, so a failed merge leaves no half-written output."""
    if not cfg.models:
        raise ValueError("give the models or adapters to merge: ember merge A B --out DIR")
    if cfg.out is None:
        raise ValueError("give the output folder: --out DIR")
    check_weights(cfg.method, len(cfg.models), cfg.weights)
    if cfg.rank is not None and cfg.rank < 1:
        raise ValueError(f"rank must be >= 1, got {cfg.rank}")
    adapters = [_is_adapter(m) for m in cfg.models]
    if any(adapters) and not all(adapters):
        raise ValueError(f"mix of adapters and models: {cfg.models}; merge adapters with adapters (of one base)")
    if not any(adapters) and cfg.output == "adapter":
        raise ValueError("--output adapter needs LoRA adapter folders as inputs")
    if not any(adapters) and cfg.method in NEEDS_BASE and cfg.base is None:
        raise ValueError(f"{cfg.method} merges task vectors θ_i − θ_base: pass --base")
    out = Path(cfg.out)
    if out.exists() or out.is_symlink():
        if not cfg.overwrite:
            raise ValueError(f"{out} exists: pass --overwrite true to replace it")
        if not out.is_dir() or out.is_symlink():
            raise ValueError(f"{out} exists and is not a folder: refusing to replace it")
    output = cfg.output if cfg.output != "auto" else ("adapter" if all(adapters) else "model")
    tmp = out.parent / f".{out.name}.merge-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        if all(adapters):
            _merge_adapters(dataclasses.replace(cfg, output=output), tmp)
        else:
            _merge_models(cfg, tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"merged {len(cfg.models)} {'adapters' if all(adapters) else 'models'} ({cfg.method}) → {out} ({output})",
          file=sys.stderr)
    return out
