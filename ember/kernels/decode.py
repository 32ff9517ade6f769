"""NativeTransformer: a Llama-family Transformer on Q4/Q8 blocks whose one-token cached
forward — the engine's decode step — is one native call for the whole stack.

At batch-1 decode a PyTorch forward costs ~10–20 µs of fixed overhead per op, ~10 ops per
layer; the native step (decode_step.inc) runs every layer in one OpenMP region: RMSNorm,
the fused q/k/v matmul, RoPE, the cache write, attention, o, RMSNorm, gate/up, SiLU·up,
down, then the final norm and the Q8_0 head. Every other forward (prefill, speculative
verification, perplexity) runs the model's own PyTorch code over the same Q4Linear/Q8Linear
modules, so the two paths share weights and differ only by float rounding.

>>> model = build_native_gguf(resolve_model("smollm2"))  # doctest: +SKIP
>>> type(model.layers[0].attention.wqkv).__name__  # doctest: +SKIP
'Q4Linear'
"""

from __future__ import annotations

import ctypes
import os
import time

import numpy as np
import torch
import torch.nn as nn

from ember.kernels.build import load_kernels
from ember.kernels.layout import native_unsupported
from ember.kernels.linear import Q4Linear, Q8Embedding, Q8Linear, q4_parts
from ember.model.config import ModelConfig
from ember.model.convert.gguf import config_from_gguf, dequantize, gguf_raw_tensors
from ember.model.layers import RMSNorm, rope_inv_freq
from ember.model.transformer import Block, Transformer
from ember.quant.fuse import FusedAttention, FusedFeedForward

_LINEARS = ("attention.wq", "attention.wk", "attention.wv", "attention.wo",
            "feed_forward.w1", "feed_forward.w2", "feed_forward.w3")


class NativeTransformer(Transformer):
    """A Transformer whose cached one-token forward runs the native decode step.

    Built by `build_native_gguf` or `apply_native`; everything else is Transformer's."""

    def forward(self, ids, cache=None, input_pos=None, logits_index=None, kv_len=None, segment_ids=None,
                logits_mask=None, *, attention_mask=None, token_type_ids=None):
        one_step = (cache is not None and ids is not None and ids.dim() == 2 and ids.shape[1] == 1
                    and input_pos is not None and input_pos.shape == ids.shape and logits_mask is None
                    and segment_ids is None and attention_mask is None and token_type_ids is None
                    and not torch.is_grad_enabled())
        lib = load_kernels() if one_step else None
        if lib is None:
            return super().forward(ids, cache, input_pos, logits_index, kv_len, segment_ids, logits_mask,
                                   attention_mask=attention_mask, token_type_ids=token_type_ids)
        return self.decode_step(lib, ids[:, 0], input_pos[:, 0], cache)[:, None]  # (B, 1, V)

    def decode_step(self, lib, tokens: torch.Tensor, pos: torch.Tensor, cache) -> torch.Tensor:
        """tokens, pos (B,) → logits (B, V); writes each row's K/V at its position."""
        cfg = self.config
        B = tokens.shape[0]
        toks, where = tokens.tolist(), pos.tolist()
        limit = min(cache.max_seq_len, cfg.max_seq_len)
        if B != cache.k[0].shape[0]:
            raise ValueError(f"batch of {B} rows for a cache of {cache.k[0].shape[0]} rows")
        if min(where) < 0 or max(where) >= limit:
            raise ValueError(f"input_pos spans {min(where)}..{max(where)}, outside 0..{limit - 1} (cache and model limit)")
        if min(toks) < 0 or max(toks) >= cfg.vocab_size:
            raise ValueError(f"token ids {min(toks)}..{max(toks)} outside the vocabulary 0..{cfg.vocab_size - 1}")
        ptrs, settings = self._pointers(cache)
        logits = torch.empty(B, cfg.vocab_size)
        t = torch.tensor(toks, dtype=torch.int64)
        p = torch.tensor(where, dtype=torch.int64)
        settings[10] = threads = self._choose_threads()
        start = time.perf_counter()
        lib.ember_decode_step(settings, ctypes.c_float(cfg.norm_eps), ptrs, t.data_ptr(), p.data_ptr(), B,
                              logits.data_ptr())
        self._record_threads(threads, time.perf_counter() - start)
        return logits

    # A step syncs its threads ~5 times per layer. On a machine with more runnable processes
    # than cores, each sync can wait a scheduler slice for a descheduled partner (measured:
    # 2 threads 0.4 tok/s where 1 thread ran 11.6 on a 2-core box at load 25), so the step
    # times both counts and keeps the faster, re-trying the other every PROBE_EVERY steps.
    # Results do not depend on the thread count.
    PROBE_EVERY = 32

    def _choose_threads(self) -> int:
        n = torch.get_num_threads()
        st = self.__dict__.setdefault("_thread_times", {"ema": {}, "steps": 0, "n": n})
        if n <= 1:
            return 1
        if st["n"] != n:  # torch.set_num_threads changed: start over
            st.update(ema={}, n=n)
        st["steps"] += 1
        ema = st["ema"]
        for c in (n, 1):
            if c not in ema:
                return c
        best = min(ema, key=ema.get)
        st["probe"] = st["steps"] % self.PROBE_EVERY == 0
        if st["probe"]:
            return 1 if best == n else n
        return best

    def _record_threads(self, threads: int, seconds: float) -> None:
        st = self.__dict__["_thread_times"]
        ema = st["ema"]
        fresh = threads not in ema or st.get("probe")  # a probe replaces its count's stale figure
        ema[threads] = seconds if fresh else 0.7 * ema[threads] + 0.3 * seconds

    def _pointers(self, cache):
        """(void* array, int64 settings) for this cache; rebuilt only when its buffers change."""
        bufs = [*cache.k, *cache.v]
        key = (tuple(b.data_ptr() for b in bufs), self.output.qs.data_ptr())
        memo = self.__dict__.get("_native_memo")
        if memo is not None and memo[0] == key:
            return memo[1], memo[2]
        cfg = self.config
        B, Hkv, Tmax, Dh = cache.k[0].shape
        for b in bufs:
            if b.dtype != torch.float32 or b.shape != cache.k[0].shape or b.stride() != cache.k[0].stride():
                raise ValueError("the native decode step needs float32 K/V buffers of one shape and layout")
            if b.stride()[1:] != (Tmax * Dh, Dh, 1) or (Hkv, Dh) != (cfg.n_kv_heads, cfg.head_dim):
                raise ValueError(f"K/V buffers of shape {tuple(b.shape)} do not fit this model's heads")
        out, emb = self.output, self.tok_embeddings
        ptrs = [emb.qs, emb.d, self.norm.weight, out.qs, out.d, self._inv_freq]
        for i, layer in enumerate(self.layers):
            a, f = layer.attention, layer.feed_forward
            ptrs += [layer.attention_norm.weight, a.wqkv.qs, a.wqkv.d, a.wqkv.m, a.wo.qs, a.wo.d, a.wo.m,
                     layer.ffn_norm.weight, f.w13.qs, f.w13.d, f.w13.m, f.w2.qs, f.w2.d, f.w2.m,
                     cache.k[i], cache.v[i]]
        for tensor in ptrs:
            if not tensor.is_contiguous():
                raise ValueError("native decode: a weight is not contiguous")
        arr = (ctypes.c_void_p * len(ptrs))(*(x.data_ptr() for x in ptrs))
        settings = (ctypes.c_int64 * 11)(cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim,
                                        cfg.d_ff, cfg.vocab_size, cache.k[0].stride(0), Tmax,
                                        int(cfg.rope_interleaved), torch.get_num_threads())
        self.__dict__["_native_memo"] = (key, arr, settings, ptrs)  # ptrs: keep the tensors alive
        return arr, settings


def _norm_param(t: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(t.detach().float().contiguous(), requires_grad=False)


def _assemble(model: Transformer, linear, norm, table: Q8Linear, head: Q8Linear | None) -> NativeTransformer:
    """Swap every block's projections for fused Q4Linears (linear(name) → Q4Linear), the norms
    for norm(name) → tensor, the embedding for a Q8 table and the head for `head` (None: tied)."""
    for i, block in enumerate(model.layers):
        for name in _LINEARS:
            parent, leaf = name.split(".")
            setattr(getattr(block, parent), leaf, linear(f"layers.{i}.{name}.weight"))
        block.attention = FusedAttention(block.attention)
        block.feed_forward = FusedFeedForward(block.feed_forward)
        block.attention_norm.weight = _norm_param(norm(f"layers.{i}.attention_norm.weight"))
        block.ffn_norm.weight = _norm_param(norm(f"layers.{i}.ffn_norm.weight"))
    model.norm.weight = _norm_param(norm("norm.weight"))
    model.output = head if head is not None else table
    model.tok_embeddings = Q8Embedding(table)
    model.__class__ = NativeTransformer
    model._inv_freq = rope_inv_freq(model.config).float().contiguous()
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if t.is_meta:
            raise ValueError(f"native model: {name} was not converted")
    return model.eval()


@torch.no_grad()
def apply_native(model: Transformer) -> NativeTransformer:
    """A float Llama-family Transformer → NativeTransformer, in place: block matrices
    round-to-nearest Q4_1, the embedding/head Q8_0 (lossy: prefer build_native_gguf on a
    Q4 GGUF, whose codes are kept exactly).

    >>> m = apply_native(Transformer(ModelConfig.tiny(d_ff=256)))
    >>> type(m).__name__, type(m.output).__name__
    ('NativeTransformer', 'Q8Linear')
    """
    why = native_unsupported(model.config)
    if why:
        raise ValueError(f"the native kernels cannot run this model: {why}")
    weights = dict(model.named_parameters())
    tied = model.config.tie_embeddings
    table = Q8Linear.from_float(weights["tok_embeddings.weight"])
    head = None if tied else Q8Linear.from_float(weights["output.weight"])
    return _assemble(model, lambda k: Q4Linear.from_float(weights[k]), lambda k: weights[k], table, head)


def _read(t) -> np.ndarray:
    """A GGUF tensor's raw bytes, read from the file (not through the memory map: mapped
    pages would count in the process's memory until the map goes)."""
    root = t.data
    while isinstance(root.base, np.ndarray):
        root = root.base
    offset = t.data.ctypes.data - root.ctypes.data
    with open(root.filename, "rb") as f:
        buf = os.pread(f.fileno(), t.data.nbytes, offset)
    if len(buf) != t.data.nbytes:
        raise ValueError(f"{root.filename}: short read of a tensor at offset {offset}")
    return np.frombuffer(buf, dtype=np.uint8)


def _q4(raw, keys) -> Q4Linear:
    """One Q4Linear from the row-stacked GGUF tensors `keys` (Q4_1/Q4_0 kept exactly)."""
    from gguf import GGMLQuantizationType as GT

    parts = []
    for key in keys:
        t = raw[key]
        if t.type in (GT.Q4_1, GT.Q4_0):
            parts.append(q4_parts(_read(t), t.shape, t.type.name))
        else:
            lin = Q4Linear.from_float(dequantize(t))
            parts.append((lin.qs, lin.d, lin.m))
    if len(parts) == 1:
        return Q4Linear.from_parts(*parts[0])
    return Q4Linear.from_parts(*(torch.cat(p) for p in zip(*parts)))


def _block(cfg: ModelConfig, raw, i: int) -> Block:
    """Block i with fused Q4 projections, built without the float modules it replaces
    (the attributes are those Attention/FeedForward.__init__ set)."""
    def key(name):
        return f"layers.{i}.{name}.weight"

    def norm(name):
        mod = RMSNorm(cfg.d_model, cfg.norm_eps)
        mod.weight = _norm_param(dequantize(raw[key(name)]))
        return mod

    attn = FusedAttention.__new__(FusedAttention)
    nn.Module.__init__(attn)
    attn.n_heads, attn.n_kv_heads, attn.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    attn.causal, attn.gqa, attn.rope_interleaved = True, cfg.n_kv_heads != cfg.n_heads, cfg.rope_interleaved
    attn.wqkv = _q4(raw, [key(f"attention.{w}") for w in ("wq", "wk", "wv")])
    attn.wo = _q4(raw, [key("attention.wo")])
    ffn = FusedFeedForward.__new__(FusedFeedForward)
    nn.Module.__init__(ffn)
    ffn.swiglu, ffn.gelu_approximate = True, "tanh"
    ffn.w13 = _q4(raw, [key("feed_forward.w1"), key("feed_forward.w3")])
    ffn.w2 = _q4(raw, [key("feed_forward.w2")])
    block = Block.__new__(Block)
    nn.Module.__init__(block)
    block.post_norm = False
    block.attention_norm, block.attention = norm("attention_norm"), attn
    block.ffn_norm, block.feed_forward = norm("ffn_norm"), ffn
    return block.eval()


@torch.no_grad()
def build_native_gguf(path) -> NativeTransformer:
    """A NativeTransformer straight from a GGUF file's blocks: Q4_1/Q4_0 matrices and a Q8_0
    embedding/head kept exactly (other types are dequantized and re-quantized), norms in
    fp32. No float copy of the weights is made, and no float model is built first."""
    from gguf import GGMLQuantizationType as GT

    from ember.core.gguf import gguf_field, open_gguf

    reader = open_gguf(path)
    cfg = config_from_gguf(reader)
    raw = gguf_raw_tensors(reader, gguf_field(reader, "general.architecture"))
    why = native_unsupported(cfg)
    if why:
        raise ValueError(f"the native kernels cannot run {path}: {why}")
    _check_shapes(cfg, raw)

    def q8(t):
        return Q8Linear.from_q8_0(_read(t), t.shape) if t.type == GT.Q8_0 else Q8Linear.from_float(dequantize(t))

    model = NativeTransformer.__new__(NativeTransformer)
    nn.Module.__init__(model)
    model.config = cfg
    table = q8(raw["tok_embeddings.weight"])
    model.tok_embeddings = Q8Embedding(table)
    model.layers = nn.ModuleList(_block(cfg, raw, i) for i in range(cfg.n_layers))
    model.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
    model.norm.weight = _norm_param(dequantize(raw["norm.weight"]))
    model.output = q8(raw["output.weight"]) if "output.weight" in raw else table
    model._inv_freq = rope_inv_freq(cfg).float().contiguous()
    return model.eval()


def _check_shapes(cfg: ModelConfig, raw) -> None:
    """Every tensor the native model reads, with the shape the config gives it."""
    D, F, Hd, KV = cfg.d_model, cfg.d_ff, cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
    want = {"tok_embeddings.weight": (cfg.vocab_size, D), "norm.weight": (D,)}
    if not cfg.tie_embeddings:
        want["output.weight"] = (cfg.vocab_size, D)
    per_layer = {"attention.wq": (Hd, D), "attention.wk": (KV, D), "attention.wv": (KV, D), "attention.wo": (D, Hd),
                 "feed_forward.w1": (F, D), "feed_forward.w3": (F, D), "feed_forward.w2": (D, F),
                 "attention_norm": (D,), "ffn_norm": (D,)}
    for i in range(cfg.n_layers):
        want.update({f"layers.{i}.{k}.weight": v for k, v in per_layer.items()})
    for k, shape in want.items():
        if k not in raw:
            raise ValueError(f"GGUF file has no tensor {k} (the config needs it)")
        if tuple(raw[k].shape) != shape:
            raise ValueError(f"GGUF tensor {k} has shape {tuple(raw[k].shape)}; the config says {shape}")


def gguf_is_q4(path) -> bool:
    """True when every block matrix of a GGUF file is Q4_1 or Q4_0 (a 4-bit file: running it
    on its own blocks is as faithful as the file allows)."""
    from gguf import GGMLQuantizationType as GT

    from ember.core.gguf import open_gguf

    types = [t.tensor_type for t in open_gguf(path).tensors if t.name.startswith("blk.") and len(t.shape) == 2]
    return bool(types) and all(t in (GT.Q4_1, GT.Q4_0) for t in types)
