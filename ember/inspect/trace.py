"""`ember trace TEXT`: one text through the model, step by step — the tokens, their
embeddings, the logit lens at every block, where attention goes, the next-token
distribution and how temperature / top-k / top-p reshape it, and a seeded sample.

`--json` prints ONE line:

    {"model": str, "text": str,
     "tokens": [{"id": int, "text": str}, ...],             # the prompt's tokens, in order
     "embeddings": [{"pos", "norm", "first": [float x4]}],  # token embedding, before positions
     "layers": [{"layer": i,                                 # 0 = the first block ... L-1 = the last
                 "top": [{"id", "token", "prob"}, ...],      # logit lens of the last position
                 "attention": [{"pos", "token", "weight"}]}, # its attention, mean over heads, top 3
                ...],                                        # (--heads: [{"head", "top": [...]}])
     "next": [{"id", "token", "prob"}, ...],                 # the model's own distribution (top k)
     "sampling": {"temperature": {"0.5": [p...], ...},      # probs of the `next` tokens at each T
                  "top_k": {"k": 2, "kept": [...]},          # renormalised over the kept tokens
                  "top_p": [{"p", "n_kept", "kept": [...]}]},
     "sampled": {"id", "token", "seed", "temperature", "top_k", "top_p"}}

`layers[-1]["top"]` equals `next`: the logit lens after the last block is the model's
output. Everything model-made is plain text in JSON; the HTML page escapes it.

    >>> main_text = trace(TraceConfig(text="The cat sat"))  # doctest: +SKIP
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

import torch

from ember.core.io import atomic_write_bytes, atomic_write_text
from ember.infer.sampling import apply_temperature, apply_top_k, apply_top_p, draw, make_generator
from ember.infer.trace_api import MAX_TRACE_TOKENS, trace_json, walk

TEMPERATURES = (0.5, 1.0, 2.0)
TOP_PS = (0.7, 0.9, 0.95)


@dataclass
class TraceConfig:
    """Trace one text through the model: tokens, embeddings, logit lens, attention, sampling."""

    text: str = "The cat sat"
    """the text to trace (its last token is the one whose next token is predicted)"""
    model: str = "smollm2"
    """known name, GGUF file, HF folder or ember checkpoint"""
    quant: Literal["none", "int8", "int4"] = "none"
    """weight-only quantized matmuls (the lens then reads the quantized model)"""
    chat: bool = False
    """wrap the text as a user message in the chat template (the trace ends at the assistant's turn)"""
    top: int = 5
    """tokens listed per layer and for the next token"""
    heads: bool = False
    """list each head's attention targets, not only the mean over heads"""
    temperature: float = 1.0
    """temperature of the seeded sample"""
    top_k: int = 0
    """top-k of the seeded sample (0 keeps all)"""
    top_p: float = 0.9
    """top-p of the seeded sample"""
    seed: int = 0
    """seed of the sample"""
    json: bool = False
    """print one JSON line (schema in ember.inspect.trace) instead of text"""
    html: str | None = None
    """also write a self-contained HTML page here (attention maps, head summaries inline)"""
    png: str | None = None
    """also write PNGs here: the attention mosaic, one map per layer, the head summaries"""
    max_tokens: int = MAX_TRACE_TOKENS
    """refuse texts longer than this many tokens (every head's map is kept)"""

    def __post_init__(self):
        if not 1 <= self.top <= 50:
            raise ValueError(f"--top must be between 1 and 50, got {self.top}")
        if not self.temperature > 0:
            raise ValueError(f"--temperature must be > 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"--top-p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"--top-k must be >= 0, got {self.top_k}")


def prompt_ids(tok, text: str, chat: bool) -> list[int]:
    """The ids the trace runs on: the text (with BOS where the tokenizer asks), or a chat turn."""
    if chat:
        return tok.render_chat([{"role": "user", "content": text}], add_generation_prompt=True)[0]
    return tok.encode(text, add_bos=None)


def sampling_table(logits: torch.Tensor, ids: list[int], k: int = 2) -> dict:
    """How temperature, top-k and top-p reshape one logits row (V,), read at the token ids
    `ids` (the likeliest few), as the seed's tables show them.

    >>> t = sampling_table(torch.tensor([2.0, 1.0, 0.5, 0.0]), [0, 1, 2, 3])
    >>> t["temperature"]["0.5"], t["top_k"]["kept"]
    ([0.831, 0.1125, 0.0414, 0.0152], [0.7311, 0.2689])
    """
    logits = logits.float()
    out = {"temperature": {}, "top_k": {"k": k}, "top_p": []}
    for T in TEMPERATURES:
        p = apply_temperature(logits, T).softmax(-1)
        out["temperature"][str(T)] = [round(float(p[i]), 4) for i in ids]
    p = apply_top_k(logits, k).softmax(-1)
    out["top_k"]["kept"] = [round(float(p[i]), 4) for i in ids if p[i] > 0]
    for top_p in TOP_PS:
        p = apply_top_p(logits, top_p).softmax(-1)
        out["top_p"].append({"p": top_p, "n_kept": int((p > 0).sum()),
                             "kept": [round(float(p[i]), 4) for i in ids if p[i] > 0]})
    return out


def sample_next(logits: torch.Tensor, temperature: float, top_k: int, top_p: float, seed: int) -> int:
    """One seeded draw from logits (V,) after temperature, top-k and top-p (in that order)."""
    x = apply_top_p(apply_top_k(apply_temperature(logits.float(), temperature), top_k), top_p)
    return int(draw(x.softmax(-1), make_generator(seed)))


@torch.no_grad()
def build_trace(model, tok, ids: list[int], cfg: TraceConfig) -> tuple[dict, torch.Tensor]:
    """The trace dict (schema above) and every layer's attention (L, H, T, T)."""
    if len(ids) > cfg.max_tokens:
        raise ValueError(f"the text is {len(ids)} tokens; --max-tokens is {cfg.max_tokens}")
    w = walk(model, torch.tensor([ids]))
    out = {"model": cfg.model, "text": cfg.text}
    out.update(trace_json(model, tok, ids, cfg.top, cfg.heads, w))
    emb = w.embeds[0].float()  # (T, D)
    out["embeddings"] = [{"pos": t, "norm": round(float(e.norm()), 4), "first": [round(float(v), 4) for v in e[:4]]}
                         for t, e in enumerate(emb)]
    last = w.logits[0, -1]
    out["sampling"] = sampling_table(last, [n["id"] for n in out["next"]])
    sid = sample_next(last, cfg.temperature, cfg.top_k, cfg.top_p, cfg.seed)
    out["sampled"] = {"id": sid, "token": tok.decode([sid]), "seed": cfg.seed, "temperature": cfg.temperature,
                      "top_k": cfg.top_k, "top_p": cfg.top_p}
    return out, torch.stack([a[0] for a in w.attn])


def _tops(items: list[dict], key: str = "token", val: str = "prob") -> str:
    return "  ".join(f"{d[key]!r} {d[val]:.3f}" for d in items)


def render_text(tr: dict) -> str:
    """The trace for a terminal."""
    toks = tr["tokens"]
    lines = [f"1. tokens ({len(toks)}): " + " | ".join(f"{t['text']!r}={t['id']}" for t in toks), "",
             "2. embeddings (norm, first dims; positions enter as RoPE inside attention where the model uses it):"]
    for t, e in zip(toks, tr["embeddings"]):
        lines.append(f"   {t['text']!r:>14} norm {e['norm']:.3f}  [{', '.join(f'{v:+.3f}' for v in e['first'])}, ...]")
    lines += ["", f"3. logit lens at the last position ({toks[-1]['text']!r}), and where it attends (mean over heads):"]
    for lay in tr["layers"]:
        att = lay["attention"]
        att = att[0]["top"] if att and "head" in att[0] else att
        where = ", ".join(f"{a['token']!r}@{a['pos']} {a['weight']:.2f}" for a in att)
        lines.append(f"   block {lay['layer']:>2}: {_tops(lay['top'][:3])}   ← {where}")
    lines += ["", f"4. next token: {_tops(tr['next'])}"]
    s = tr["sampling"]
    names = ", ".join(repr(n["token"]) for n in tr["next"])
    lines.append(f"5. sampling over [{names}]:")
    for T, ps in s["temperature"].items():
        lines.append(f"   T = {T:<4} → {' '.join(f'{p:.3f}' for p in ps)}")
    lines.append(f"   top-k = {s['top_k']['k']} → {' '.join(f'{p:.3f}' for p in s['top_k']['kept'])}")
    for tp in s["top_p"]:
        lines.append(f"   top-p = {tp['p']} → {tp['n_kept']} tokens kept; these: {' '.join(f'{p:.3f}' for p in tp['kept'])}")
    sm = tr["sampled"]
    lines.append(f"6. sampled (seed {sm['seed']}, T={sm['temperature']}, top-k {sm['top_k']}, top-p {sm['top_p']}):"
                 f" {sm['token']!r} (id {sm['id']})")
    return "\n".join(lines)


def trace(cfg: TraceConfig) -> dict:
    """`ember trace`: load, trace, print (text or one JSON line), write HTML/PNGs if asked."""
    import ember

    model, tok = ember.load(cfg.model, quant=None if cfg.quant == "none" else cfg.quant)
    model.eval()
    ids = prompt_ids(tok, cfg.text, cfg.chat)
    tr, attn = build_trace(model, tok, ids, cfg)
    print(json.dumps(tr, ensure_ascii=False) if cfg.json else render_text(tr))
    if cfg.html or cfg.png:
        from ember.inspect.attention import head_summaries, induction_scores

        summ = head_summaries(attn) if attn.shape[-1] >= 2 else {}
        if summ:
            summ["induction"] = induction_scores(model)
        if cfg.html:
            from ember.inspect.report import trace_html

            atomic_write_text(cfg.html, trace_html(tr, attn, summ))
        if cfg.png:
            _write_pngs(cfg.png, tr, attn, summ)
    return tr


def _write_pngs(folder: str, tr: dict, attn: torch.Tensor, summ: dict) -> None:
    from pathlib import Path

    from ember.inspect.attention import layer_png, mosaic_png, summaries_png

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    labels = [t["text"] for t in tr["tokens"]]
    atomic_write_bytes(out / "attention.png", mosaic_png(attn))
    for i in range(attn.shape[0]):
        atomic_write_bytes(out / f"attention_layer{i:02d}.png", layer_png(attn[i], i, labels))
    if summ:
        atomic_write_bytes(out / "heads.png", summaries_png(summ))
