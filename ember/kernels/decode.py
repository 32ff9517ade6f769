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

import torch
import torch.nn as nn

from ember.kernels.build import load_kernels
from ember.kernels.linear import Q4Linear, Q8Embedding, Q8Linear
from ember.model.config import ModelConfig
from ember.model.layers import rope_inv_freq
from ember.model.transformer import Transformer
from ember.quant.fuse import FusedAttention, FusedFeedForward

_LINEARS = ("attention.wq", "attention.wk", "attention.wv", "attention.wo",
            "feed_forward.w1", "feed_forward.w2", "feed_forward.w3")


def native_unsupported(cfg: ModelConfig) -> str | None:
    """Why the native decode step cannot run a model of this config, or None.

    >>> native_unsupported(ModelConfig.tiny())
    >>> native_unsupported(ModelConfig.tiny(mlp="gelu", norm="layernorm", pos_emb="learned"))
    'needs norm=rmsnorm (got layernorm)'
    """
    wants = {"norm": "rmsnorm", "pos_emb": "rope", "mlp": "swiglu", "norm_position": "pre"}
    for field, want in wants.items():
        if getattr(cfg, field) != want:
            return f"needs {field}={want} (got {getattr(cfg, field)})"
    if cfg.bias or not cfg.causal or cfg.embed_norm or cfg.n_token_types or cfg.moe is not None:
        return "needs a causal decoder without biases, embedding norm, token types or experts"
    if cfg.sliding_window is not None or cfg.n_sink_tokens:
        return "needs full attention (no sliding window or sink tokens)"
    for name, width in (("d_model", cfg.d_model), ("d_ff", cfg.d_ff), ("n_heads*head_dim", cfg.n_heads * cfg.head_dim)):
        if width % 64:
            return f"needs {name} to be a multiple of 64 (got {width})"
    if cfg.head_dim % 2 or cfg.n_heads % cfg.n_kv_heads:
        return f"needs an even head_dim and n_heads a multiple of n_kv_heads (got {cfg.head_dim}, {cfg.n_heads}/{cfg.n_kv_heads})"
    return None


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
        settings[10] = torch.get_num_threads()
        lib.ember_decode_step(settings, ctypes.c_float(cfg.norm_eps), ptrs, t.data_ptr(), p.data_ptr(), B,
                              logits.data_ptr())
        return logits

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

    >>> m = apply_native(Transformer(ModelConfig.tiny(vocab_size=256, d_model=64)))
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


@torch.no_grad()
def build_native_gguf(path) -> NativeTransformer:
    """A NativeTransformer straight from a GGUF file's blocks: Q4_1/Q4_0 matrices and a Q8_0
    embedding/head kept exactly (other types are dequantized and re-quantized), norms in
    fp32. No float copy of the weights is ever made."""
    from gguf import GGMLQuantizationType as GT

    from ember.core.gguf import gguf_field, open_gguf
    from ember.model.convert.gguf import config_from_gguf, dequantize, gguf_raw_tensors
    from ember.model.shapes import check_config_fits

    reader = open_gguf(path)
    cfg = config_from_gguf(reader)
    raw = gguf_raw_tensors(reader, gguf_field(reader, "general.architecture"))
    check_config_fits(cfg, {k: t.shape for k, t in raw.items()}, config_name=f"the metadata of {path}",
                      weights_name="its tensors")
    why = native_unsupported(cfg)
    if why:
        raise ValueError(f"the native kernels cannot run {path}: {why}")

    def linear(key):
        t = raw[key]
        if t.type == GT.Q4_1:
            return Q4Linear.from_q4_1(t.data, t.shape)
        if t.type == GT.Q4_0:
            return Q4Linear.from_q4_0(t.data, t.shape)
        return Q4Linear.from_float(dequantize(t))

    def q8(t):
        return Q8Linear.from_q8_0(t.data, t.shape) if t.type == GT.Q8_0 else Q8Linear.from_float(dequantize(t))

    with torch.device("meta"):
        model = Transformer(cfg)
    table = q8(raw["tok_embeddings.weight"])
    head = q8(raw["output.weight"]) if "output.weight" in raw else None
    return _assemble(model, linear, lambda k: dequantize(raw[k]), table, head)


def gguf_is_q4(path) -> bool:
    """True when every block matrix of a GGUF file is Q4_1 or Q4_0 (a 4-bit file: running it
    on its own blocks is as faithful as the file allows)."""
    from gguf import GGMLQuantizationType as GT

    from ember.core.gguf import open_gguf

    types = [t.tensor_type for t in open_gguf(path).tensors if t.name.startswith("blk.") and len(t.shape) == 2]
    return bool(types) and all(t in (GT.Q4_1, GT.Q4_0) for t in types)
