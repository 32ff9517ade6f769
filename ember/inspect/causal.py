"""Causal tracing (Meng et al. 2022, ROME §2.1): where in the network is a fact recalled?

1. clean run on "The capital of France is": p(" Paris") and every block's states;
2. corrupted run: Gaussian noise (3 × the embedding matrix's std) added to the subject's
   token embeddings ("France"), several seeded draws at once: p(" Paris") collapses;
3. restored runs: corrupted, except one thing put back to its clean value at the subject's
   last token — the residual state after block i ("state"), or the MLP's output ("mlp") or
   the attention's output ("attn") in a window of blocks around i (ROME restores 10 of GPT-2
   XL's 48; `window`). The recovered p(" Paris") by block says where the fact flows.

Pre-norm decoders only (Llama/GPT-2 families).

    >>> causal_trace(model, tok, "The capital of France is", " Paris", "France")  # doctest: +SKIP
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass

import torch

from ember.core.io import atomic_write_bytes
from ember.model.layers import rope_cos_sin

KINDS = ("state", "mlp", "attn")


def subject_span(tok, prompt: str, subject: str) -> tuple[list[int], range]:
    """The prompt's ids and the positions of the subject's tokens (its first occurrence)."""
    start = prompt.find(subject)
    if start < 0:
        raise ValueError(f"subject {subject!r} is not in the prompt {prompt!r}")
    ids = tok.encode(prompt, add_bos=None)
    ends = [len(tok.decode(ids[: k + 1])) for k in range(len(ids))]  # char offset after token k
    starts = [0, *ends[:-1]]
    inside = [k for k in range(len(ids)) if starts[k] < start + len(subject) and ends[k] > start]
    lo, hi = inside[0], inside[-1] + 1
    return ids, range(lo, hi)


def _run(model, x, pos, rope, at: int, restore=None):
    """Blocks on x (B, T, D), pre-norm, written out so one part can be swapped.
    restore: {(kind, block): clean value (1, D)} put back at position `at`.
    Returns the last position's probabilities (B, V) and every block's
    (state, attn out, mlp out), each (B, T, D)."""
    restore = restore or {}
    states = []
    for i, block in enumerate(model.layers):
        a = block.attention(block.attention_norm(x), rope, None, i, pos, None)
        if ("attn", i) in restore:
            a = a.clone()
            a[:, at] = restore["attn", i]
        x = x + a
        m = block.feed_forward(block.ffn_norm(x))
        if ("mlp", i) in restore:
            m = m.clone()
            m[:, at] = restore["mlp", i]
        x = x + m
        if ("state", i) in restore:
            x = x.clone()
            x[:, at] = restore["state", i]
        states.append((x, a, m))
    probs = model.output(model.norm(x[:, -1])).float().softmax(-1)
    return probs, states


@torch.no_grad()
def causal_trace(model, tok, prompt: str, target: str, subject: str, noise: float = 3.0,
                 samples: int = 10, window: int = 5, seed: int = 0) -> dict:
    """{"clean", "corrupted": p(target's first token), "kinds": {kind: [p after restoring at
    block i, for each i]}, ...}; probabilities are means over `samples` noise draws."""
    if model.config.norm_position != "pre":
        raise ValueError("causal tracing here walks pre-norm blocks; this model is post-norm")
    ids, span = subject_span(tok, prompt, subject)
    target_ids = tok.encode(target, add_bos=None)
    if not target_ids:
        raise ValueError(f"target {target!r} has no tokens")
    tid, at = target_ids[0], span[-1]
    T, L = len(ids), model.config.n_layers
    pos = torch.arange(T)[None]
    rope = rope_cos_sin(model.config, pos) if model.config.pos_emb == "rope" else None
    x0 = model._add_embeddings(model.tok_embeddings(torch.tensor([ids])), pos, None)  # (1, T, D)
    clean_p, clean = _run(model, x0, pos, rope, at)
    sigma = float(model.tok_embeddings.weight.float().std())
    g = torch.Generator().manual_seed(seed)
    x = x0.repeat(samples, 1, 1)
    x[:, span] += noise * sigma * torch.randn(samples, len(span), x.shape[-1], generator=g).to(x.dtype)
    bad_p, _ = _run(model, x, pos, rope, at)
    kinds = {}
    for kind in KINDS:
        probs = []
        for i in range(L):
            blocks = [i] if kind == "state" else range(max(0, i - window // 2), min(L, i - window // 2 + window))
            part = KINDS.index(kind)
            restore = {(kind, j): clean[j][part][0, at] for j in blocks}
            probs.append(float(_run(model, x, pos, rope, at, restore)[0][:, tid].mean()))
        kinds[kind] = probs
    return {"prompt": prompt, "target": tok.decode([tid]), "subject": subject,
            "subject_tokens": [tok.decode([ids[p]]) for p in span], "top_clean": tok.decode([int(clean_p[0].argmax())]),
            "clean": float(clean_p[0, tid]), "corrupted": float(bad_p[:, tid].mean()),
            "noise_std": round(noise * sigma, 5), "samples": samples, "window": window, "kinds": kinds}


def trace_png(res: dict) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    labels = {"state": "residual state (block i)", "mlp": f"MLP output (window {res['window']})",
              "attn": f"attention output (window {res['window']})"}
    for kind, probs in res["kinds"].items():
        ax.plot(range(len(probs)), probs, marker="o", ms=3, label=labels[kind])
    ax.axhline(res["clean"], color="k", ls="--", lw=1, label="clean")
    ax.axhline(res["corrupted"], color="r", ls=":", lw=1, label="corrupted")
    ax.set_xlabel("block restored at the subject's last token")
    ax.set_ylabel(f"p({res['target']!r})")
    ax.set_title(f"causal trace: {res['prompt']!r} → {res['target']!r}")
    ax.legend(fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


@dataclass
class CausalConfig:
    """Causal tracing of a fact: corrupt the subject, restore one block at a time."""

    prompt: str = "The capital of France is"
    """a prompt the model completes with the fact"""
    target: str = " Paris"
    """the completion (its first token is scored)"""
    subject: str = "France"
    """the part of the prompt that is corrupted"""
    model: str = "smollm2"
    """known name, GGUF file, HF folder or ember checkpoint"""
    noise: float = 3.0
    """noise std, in multiples of the embedding matrix's std"""
    samples: int = 10
    """noise draws averaged"""
    window: int = 5
    """blocks restored together for the MLP and attention curves"""
    seed: int = 0
    """seed of the noise"""
    png: str | None = None
    """write the plot here"""
    json: bool = False
    """print one JSON line instead of text"""

    def __post_init__(self):
        if self.samples < 1 or self.window < 1:
            raise ValueError(f"--samples and --window must be >= 1, got {self.samples} and {self.window}")
        if not self.noise > 0:
            raise ValueError(f"--noise must be > 0, got {self.noise}")


def causal(cfg: CausalConfig) -> dict:
    """`ember inspect causal`."""
    import ember

    model, tok = ember.load(cfg.model)
    res = causal_trace(model.eval(), tok, cfg.prompt, cfg.target, cfg.subject, cfg.noise, cfg.samples,
                       cfg.window, cfg.seed)
    if cfg.png:
        atomic_write_bytes(cfg.png, trace_png(res))
    if cfg.json:
        print(json.dumps(res, ensure_ascii=False))
        return res
    print(f"{res['prompt']!r} → top {res['top_clean']!r}; p({res['target']!r}) clean {res['clean']:.3f}, "
          f"subject {res['subject_tokens']} corrupted {res['corrupted']:.3f}")
    print("block  " + "  ".join(f"{k:>6}" for k in KINDS))
    for i in range(len(res["kinds"]["state"])):
        print(f"{i:>5}  " + "  ".join(f"{res['kinds'][k][i]:6.3f}" for k in KINDS))
    return res
