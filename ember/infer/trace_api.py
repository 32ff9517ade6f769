"""One forward, shown from inside: the residual stream after every block and each head's
attention, and `GET /v1/trace` serving them as JSON next to the chat.

`walk` runs the model's own modules one by one (embeddings, each block, the final norm,
the head) instead of calling `model(ids)`, so nothing is hooked into the shared model while
the server's engine thread decodes with it. Attention probabilities are recomputed from
each block's input: softmax(q kᵀ / √Dh) over the same queries and keys the block's fused
attention reads (the model itself never materialises them). The logits `walk` returns are
bit-identical to `model(ids)`.

`trace_json` is the trace's JSON (documented in `ember.inspect.trace`): the tokens, the logit
lens top-k of the last position after every block, where its attention goes, and the model's
own next-token distribution.

    >>> app = create_app(engine, "smollm2"); add_trace_routes(app, app.state.ember)  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from fastapi.responses import FileResponse

from ember.model.layers import rope_cos_sin

from .protocol import APIError

MAX_TRACE_TOKENS = 96  # a trace keeps every head's (T, T) map: bounded for the server
VENDOR = Path(__file__).parent / "static" / "vendor"
VENDOR_FILES = ("marked.umd.js", "purify.min.js", "marked.LICENSE", "dompurify.LICENSE", "VERSIONS.txt")


@dataclass
class Walk:
    """What one forward left behind. B rows, T positions, L blocks, H heads."""

    ids: torch.Tensor  # (B, T)
    embeds: torch.Tensor  # (B, T, D) token embeddings, before positions
    resid: list[torch.Tensor] = field(default_factory=list)  # L × (B, T, D) after block i
    attn: list[torch.Tensor] = field(default_factory=list)  # L × (B, H, T, T), rows sum to 1
    logits: torch.Tensor | None = None  # (B, T, V), the model's own


def attention_probs(attention, x: torch.Tensor, rope, causal: bool) -> torch.Tensor:
    """softmax(q kᵀ / √Dh) of one attention module on its input x (B, T, D): (B, H, T, T), fp32.
    GQA: each query head reads its group's key head, as SDPA's enable_gqa does."""
    q, k, _ = attention.project(x, rope)  # (B, H, T, Dh), (B, Hkv, T, Dh)
    q, k = q.float(), k.float()
    if k.shape[1] != q.shape[1]:
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)  # (B, H, T, Dh)
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # (B, H, T, T)
    if causal:
        T = x.shape[1]
        future = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1)
        scores = scores.masked_fill(future, float("-inf"))
    return scores.softmax(dim=-1)


@torch.no_grad()
def walk(model, ids: torch.Tensor, attention: bool = True, edit=None) -> Walk:
    """Run `model` (an ember Transformer, plain, quantized or fused) on ids (B, T) block by
    block. `edit(i, x) -> x`, when given, may change the residual stream after block i
    (i = -1: the embeddings, positions included) — causal tracing patches states this way.

    >>> from ember.model import ModelConfig, Transformer
    >>> m = Transformer(ModelConfig.tiny()).eval()
    >>> w = walk(m, torch.tensor([[1, 2, 3]]))
    >>> len(w.resid), tuple(w.attn[0].shape), torch.equal(w.logits, m(torch.tensor([[1, 2, 3]])))
    (2, (1, 4, 3, 3), True)
    """
    cfg = model.config
    B, T = ids.shape
    if T > cfg.max_seq_len:
        raise ValueError(f"sequence of {T} tokens is longer than max_seq_len {cfg.max_seq_len}")
    pos = torch.arange(T, device=ids.device).expand(B, T)  # (B, T)
    tok = model.tok_embeddings(ids)  # (B, T, D)
    x = model._add_embeddings(tok, pos, None)  # (B, T, D), positions and embedding norm
    out = Walk(ids=ids, embeds=tok)
    if edit is not None:
        x = edit(-1, x)
    rope = rope_cos_sin(cfg, pos) if cfg.pos_emb == "rope" else None
    for i, block in enumerate(model.layers):
        if attention:
            a_in = x if block.post_norm else block.attention_norm(x)
            out.attn.append(attention_probs(block.attention, a_in, rope, cfg.causal))
        x = block(x, rope, None, i, pos, None)  # (B, T, D)
        if edit is not None:
            x = edit(i, x)
        out.resid.append(x)
    out.logits = model.output(model.norm(x))  # (B, T, V)
    return out


def lens_logits(model, h: torch.Tensor) -> torch.Tensor:
    """The logit lens (nostalgebraist 2020): a residual state h (..., D) read as if it were the
    last block's output, through the final norm and the head. (..., V)."""
    return model.output(model.norm(h))


def top_tokens(tok, logits: torch.Tensor, k: int) -> list[dict]:
    """[{"id", "token", "prob"}] of the k likeliest tokens of one logits row (V,)."""
    probs = logits.float().softmax(-1)
    p, idx = probs.topk(k)
    return [{"id": int(i), "token": tok.decode([int(i)]), "prob": round(float(q), 6)} for q, i in zip(p, idx)]


def attention_targets(w: Walk, tokens: list[dict], layer: int, k: int, heads: bool) -> list[dict]:
    """Where the last position's attention goes in one block: the k positions with the most
    weight, averaged over heads (and each head's own top k when `heads`)."""
    a = w.attn[layer][0, :, -1]  # (H, T): the last query's row in every head

    def top(row):
        v, j = row.topk(min(k, row.shape[0]))
        return [{"pos": int(p), "token": tokens[int(p)]["text"], "weight": round(float(x), 6)} for x, p in zip(v, j)]

    out = top(a.mean(0))
    if heads:
        return [{"head": "mean", "top": out}] + [{"head": h, "top": top(a[h])} for h in range(a.shape[0])]
    return out


@torch.no_grad()
def trace_json(model, tok, ids: list[int], top: int = 5, heads: bool = False, w: Walk | None = None) -> dict:
    """The trace of one token sequence as plain JSON data (schema: `ember.inspect.trace`);
    `w`: the walk of [ids] when the caller has it already."""
    if not ids:
        raise ValueError("nothing to trace: the text has no tokens")
    w = w or walk(model, torch.tensor([ids]))
    tokens = [{"id": i, "text": tok.decode([i])} for i in ids]
    layers = []
    for i, h in enumerate(w.resid):
        layers.append({"layer": i, "top": top_tokens(tok, lens_logits(model, h[0, -1]), top),
                       "attention": attention_targets(w, tokens, i, 3, heads)})
    return {"tokens": tokens, "layers": layers, "next": top_tokens(tok, w.logits[0, -1], top)}


def add_trace_routes(app, state) -> None:
    """`GET /v1/trace?text=...&chat=false&reply=&top=5`: the trace JSON of a short text (at most
    MAX_TRACE_TOKENS tokens; one trace at a time) on the served model. chat=true: `text` is a
    user message in the chat template and `reply` the assistant's text so far, so the trace
    ends where the reply's next token is predicted. And `GET /static/vendor/NAME`: the web
    chat's vendored scripts (marked, DOMPurify)."""
    lock = asyncio.Lock()

    @app.get("/v1/trace")
    async def trace(text: str = "", chat: bool = False, reply: str = "", top: int = 5):
        if not text:
            raise APIError(400, "give the text to trace: /v1/trace?text=...", param="text")
        if not 1 <= top <= 20:
            raise APIError(400, f"top must be between 1 and 20, got {top}", param="top")
        if reply and not chat:
            raise APIError(400, "reply is the assistant's text in a chat trace: give chat=true too", param="reply")
        ids = _trace_ids(state.tokenizer, text, chat, reply)
        async with lock:
            return await asyncio.to_thread(trace_json, state.engine.model, state.tokenizer, ids, top)

    @app.get("/static/vendor/{name}", include_in_schema=False)
    async def vendor(name: str):
        path = VENDOR / name
        if name not in VENDOR_FILES or not path.is_file():
            raise APIError(404, f"no static file {name!r}", code="not_found")
        return FileResponse(path, media_type="text/javascript" if name.endswith(".js") else "text/plain")


def _trace_ids(tok, text: str, chat: bool, reply: str) -> list[int]:
    if len(text) + len(reply) > 20 * MAX_TRACE_TOKENS:  # refuse before tokenizing a huge text
        raise APIError(400, f"text is {len(text) + len(reply)} characters; a trace takes at most "
                       f"{MAX_TRACE_TOKENS} tokens", param="text")
    if chat:
        ids, _ = tok.render_chat([{"role": "user", "content": text}], add_generation_prompt=True)
        ids = list(ids) + (tok.encode(reply) if reply else [])
    else:
        ids = tok.encode(text, add_bos=None)
    if len(ids) > MAX_TRACE_TOKENS:
        raise APIError(400, f"text is {len(ids)} tokens; a trace takes at most {MAX_TRACE_TOKENS}", param="text")
    return ids
