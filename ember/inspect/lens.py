"""The logit lens and the tuned lens: what the model would predict if it stopped after block i.

Logit lens (nostalgebraist 2020): the residual state h_i through the final norm and the head.
Tuned lens (Belrose et al. 2023): first one affine translator per block, h_i ↦ A_i h_i + b_i
(initialised to the identity, so training starts from the logit lens), trained to minimise
KL(final distribution ‖ lens distribution) on text, with the model frozen. Each lens is judged
by that KL per block on held-out text; the tuned lens' is lower in the middle blocks, where the
residual basis has not yet turned into the head's.

`ember inspect lens` trains translators on the bundled corpus (ember.data.corpus), prints the
per-block KL of both lenses, and saves them as safetensors (`translators.{i}.weight/bias`,
metadata: the block indices and the model).

    >>> lens = TunedLens(d_model=8, layers=[0, 2])
    >>> torch.equal(lens.translate(0, torch.ones(3, 8)), torch.ones(3, 8))  # identity at init
    True
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from ember.core.io import atomic_write_bytes
from ember.infer.trace_api import lens_logits, walk


class TunedLens(nn.Module):
    """One affine translator (D → D) per block listed in `layers`."""

    def __init__(self, d_model: int, layers: list[int]):
        super().__init__()
        self.layers = list(layers)
        self.translators = nn.ModuleList(nn.Linear(d_model, d_model) for _ in self.layers)
        for t in self.translators:
            nn.init.eye_(t.weight)
            nn.init.zeros_(t.bias)

    def translate(self, layer: int, h: torch.Tensor) -> torch.Tensor:
        if layer not in self.layers:
            raise ValueError(f"no translator for block {layer}; this lens has blocks {self.layers}")
        return self.translators[self.layers.index(layer)](h.float())


def corpus_windows(tok, seq_len: int, n_train: int, n_eval: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Windows of seq_len tokens from the bundled corpus: n_train random ones from the first
    90%, n_eval evenly spaced in the last 10% (held out). Each (N, seq_len)."""
    from ember.data.corpus import bundled_corpus

    text = bundled_corpus()[:400_000]
    ids = torch.tensor(tok.encode(text), dtype=torch.long)
    cut = int(len(ids) * 0.9)
    if cut < seq_len + 1 or len(ids) - cut < seq_len * max(n_eval, 1):
        raise ValueError(f"the corpus is too short for {n_eval} held-out windows of {seq_len} tokens")
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, cut - seq_len, (n_train,), generator=g)
    train = torch.stack([ids[s: s + seq_len] for s in starts]) if n_train else ids.new_zeros(0, seq_len)
    ev = torch.stack([ids[cut + k * seq_len: cut + (k + 1) * seq_len] for k in range(n_eval)])
    return train, ev


def _kl(final_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """KL(p_final ‖ p_lens) in nats, mean over positions; both (N, V)."""
    p_log = final_logits.float().log_softmax(-1)
    return F.kl_div(logits.float().log_softmax(-1), p_log, log_target=True, reduction="batchmean")


def train_tuned_lens(model, windows: torch.Tensor, layers: list[int], steps: int, batch: int = 1,
                     lr: float = 1e-3, seed: int = 0, progress: bool = True) -> TunedLens:
    """Train translators for `layers` on windows (N, T): each step one batch of windows, the
    sum over blocks of KL(final ‖ tuned lens). The model is frozen (its weights get no grad)."""
    from tqdm import tqdm

    torch.manual_seed(seed)
    lens = TunedLens(model.config.d_model, layers)
    opt = torch.optim.Adam(lens.parameters(), lr=lr)
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    g = torch.Generator().manual_seed(seed)
    head = _float_head(model.output)  # (V, D): gradients flow through it to the translators
    try:
        for _ in tqdm(range(steps), desc="tuned lens", disable=not progress):
            ids = windows[torch.randint(0, len(windows), (batch,), generator=g)]  # (B, T)
            w = walk(model, ids, attention=False)
            final = w.logits.flatten(0, 1)  # (B·T, V)
            loss = sum(_kl(final, F.linear(model.norm(lens.translate(i, w.resid[i].flatten(0, 1))), head))
                       for i in layers)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    finally:
        for p in frozen:
            p.requires_grad_(True)
    return lens


def _float_head(output) -> torch.Tensor:
    """The output head's weight in fp32; a quantized head (ember.quant) dequantized, since its
    integer matmul has no backward."""
    with torch.no_grad():
        if isinstance(output, nn.Linear):
            w = output.weight
        elif hasattr(output, "dequantize"):
            w = output.dequantize()
        else:
            raise ValueError(f"cannot train a tuned lens through a {type(output).__name__} head (no dequantize)")
    return w.detach().float()


@torch.no_grad()
def lens_kl(model, windows: torch.Tensor, layers: list[int], lens: TunedLens | None = None) -> dict[int, float]:
    """Per block: KL(final ‖ lens) in nats, mean over every position of the windows (N, T);
    the logit lens without `lens`, the tuned lens with it."""
    totals = dict.fromkeys(layers, 0.0)
    for ids in windows.split(1):
        w = walk(model, ids, attention=False)
        final = w.logits.flatten(0, 1)
        for i in layers:
            h = w.resid[i].flatten(0, 1)
            h = lens.translate(i, h).to(h.dtype) if lens is not None else h
            totals[i] += float(_kl(final, lens_logits(model, h)))
    return {i: totals[i] / len(windows) for i in layers}


def save_lens(lens: TunedLens, path, model_name: str = "") -> None:
    from safetensors.torch import save

    tensors = {k: v.detach().contiguous() for k, v in lens.state_dict().items()}
    meta = {"layers": json.dumps(lens.layers), "model": model_name}
    atomic_write_bytes(path, save(tensors, metadata=meta))


def load_lens(path) -> TunedLens:
    """A lens saved by `save_lens` (safetensors: no pickle); its keys and shapes are checked."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if "layers" not in meta:
            raise ValueError(f"{path}: not a tuned lens (no 'layers' in its metadata)")
        layers = json.loads(meta["layers"])
        sd = {k: f.get_tensor(k) for k in f.keys()}
    d = sd["translators.0.weight"].shape[0] if "translators.0.weight" in sd else 0
    lens = TunedLens(d, layers)
    want = {k: tuple(v.shape) for k, v in lens.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in sd.items()}
    if want != got:
        raise ValueError(f"{path}: tensors {sorted(got.items())} do not match a lens over blocks {layers}")
    lens.load_state_dict(sd)
    return lens


@dataclass
class TunedLensConfig:
    """Train a tuned lens on the bundled corpus; print the per-block KL of the logit and tuned lens."""

    model: str = "smollm2"
    """known name, GGUF file, HF folder or ember checkpoint"""
    quant: Literal["none", "int8", "int4"] = "none"
    """weight-only quantized matmuls (the lens is trained on the quantized model)"""
    every: int = 3
    """a translator for every n-th block (the last block needs none: its logit lens is the output)"""
    steps: int = 150
    """training steps"""
    seq_len: int = 64
    """tokens per training window"""
    batch: int = 1
    """windows per step"""
    lr: float = 1e-3
    """Adam learning rate"""
    eval_windows: int = 8
    """held-out windows the KL is measured on"""
    seed: int = 0
    """seed for the windows and the init"""
    out: str | None = None
    """save the translators here (.safetensors)"""
    load: str | None = None
    """evaluate translators saved earlier instead of training (steps are ignored)"""
    json: bool = False
    """print one JSON line: {"layers": [{"layer", "logit_kl", "tuned_kl"}]}"""

    def __post_init__(self):
        for name in ("every", "seq_len", "batch", "eval_windows"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.steps < 0:
            raise ValueError(f"--steps must be >= 0, got {self.steps}")


def tuned_lens(cfg: TunedLensConfig) -> dict:
    """`ember inspect lens`."""
    import ember

    model, tok = ember.load(cfg.model, quant=None if cfg.quant == "none" else cfg.quant)
    model.eval()
    L = model.config.n_layers
    layers = list(range(0, L - 1, cfg.every))
    if cfg.load:
        lens = load_lens(cfg.load)
        layers = lens.layers
        train, ev = corpus_windows(tok, cfg.seq_len, 0, cfg.eval_windows, cfg.seed)
    else:
        train, ev = corpus_windows(tok, cfg.seq_len, 2048, cfg.eval_windows, cfg.seed)
        lens = train_tuned_lens(model, train, layers, cfg.steps, cfg.batch, cfg.lr, cfg.seed)
        if cfg.out:
            save_lens(lens, cfg.out, cfg.model)
    logit, tuned = lens_kl(model, ev, layers), lens_kl(model, ev, layers, lens)
    rows = [{"layer": i, "logit_kl": round(logit[i], 4), "tuned_kl": round(tuned[i], 4)} for i in layers]
    if cfg.json:
        print(json.dumps({"model": cfg.model, "quant": cfg.quant, "layers": rows}))
    else:
        print("block  KL logit lens  KL tuned lens  (nats, held-out bundled corpus)")
        for r in rows:
            print(f"{r['layer']:>5}  {r['logit_kl']:>13.3f}  {r['tuned_kl']:>13.3f}")
    return {"layers": rows}
