"""ember → GGUF (llama.cpp), for the `llama` and `gpt2` architectures: the exact inverse of
`convert.gguf` (same tensor names; Q/K rows in the interleaved RoPE order llama.cpp expects).

Weights are written as f32, f16, q8_0, q4_0 or q4_1 (2-D matrices whose rows are whole blocks
of 32; norms, biases and other 1-D tensors stay f32, as llama.cpp's converter leaves them; under
q4_* the embedding and output head stay q8_0). q4_1 re-exports SmolLM2's Q4_1 file losslessly. The
tokenizer goes in as `tokenizer.ggml.*` metadata (byte-level BPE, model "gpt2") with its chat
template, so one file is all llama.cpp, transformers or ember need.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ember.core.io import atomic_path
from ember.model.config import ModelConfig
from ember.model.convert import rope_rows_half_to_interleaved
from ember.model.convert.gguf import GPT2_KEYS, LLAMA_KEYS

DTYPES = ("f32", "f16", "q8_0", "q4_0", "q4_1")
# llama.cpp's general.file_type (LlamaFileType): ALL_F32, MOSTLY_F16, MOSTLY_Q8_0, MOSTLY_Q4_0/1
_FILE_TYPES = {"f32": 0, "f16": 1, "q8_0": 7, "q4_0": 2, "q4_1": 3}
# ember split-pattern name → llama.cpp's `tokenizer.ggml.pre` with the same splits. cl100k's
# regex ("gpt4") is Llama 3's ("llama-bpe") up to possessive quantifiers that change no split.
GGUF_PRE = {"gpt2": "gpt2", "smollm": "smollm", "gpt4": "llama-bpe"}
_NORMAL, _CONTROL, _UNUSED = 1, 3, 5
_HEADS = ("output.weight", "token_embd.weight")


def gguf_arch(cfg) -> str:
    """The GGUF architecture that can hold a model of config `cfg`: "llama" or "gpt2"; else a
    ValueError naming what the model is.

    >>> gguf_arch(ModelConfig.tiny()), gguf_arch(ModelConfig.tiny(norm="layernorm", pos_emb="learned",
    ...     mlp="gelu", bias=True, n_kv_heads=4))
    ('llama', 'gpt2')
    """
    if not isinstance(cfg, ModelConfig):
        raise ValueError(f"GGUF export needs a decoder Transformer, got {type(cfg).__name__}")
    switches = (cfg.norm, cfg.pos_emb, cfg.mlp)
    if not cfg.causal or cfg.n_token_types or cfg.embed_norm or cfg.norm_position != "pre":
        kind = "a BERT-style encoder" if not cfg.causal else "a post-norm or token-type model"
        raise ValueError(f"GGUF export supports llama and gpt2 decoders; this model is {kind} "
                         f"(causal={cfg.causal}, norm_position={cfg.norm_position!r})")
    if cfg.moe is not None or cfg.sliding_window is not None:
        raise ValueError(f"GGUF export: MoE (moe={cfg.moe}) and sliding-window (sliding_window={cfg.sliding_window}) "
                         "models are not supported")
    if switches == ("rmsnorm", "rope", "swiglu"):
        rs = cfg.rope_scaling or {}
        kind = rs.get("type", rs.get("rope_type"))
        extra = sorted(set(rs) - {"type", "rope_type", "factor", "original_max_position_embeddings"})
        if kind not in (None, "linear", "yarn") or extra:
            raise ValueError(f"GGUF export: rope_scaling {rs} is not supported (only 'linear', and 'yarn' with "
                             "its default betas and attention factor)")
        return "llama"
    if switches == ("layernorm", "learned", "gelu") and cfg.bias and cfg.n_kv_heads == cfg.n_heads:
        return "gpt2"
    raise ValueError(f"no GGUF architecture has the switches norm/pos_emb/mlp = {switches} "
                     f"(bias={cfg.bias}, n_kv_heads={cfg.n_kv_heads}); supported: llama, gpt2")


def _hparams(cfg: ModelConfig, arch: str) -> dict:
    """`{arch}.*` metadata: key suffix → value (ints as uint32, floats as float32)."""
    kv = {"context_length": cfg.max_seq_len, "embedding_length": cfg.d_model, "block_count": cfg.n_layers,
          "feed_forward_length": cfg.d_ff, "attention.head_count": cfg.n_heads, "vocab_size": cfg.vocab_size}
    if arch == "gpt2":
        kv["attention.layer_norm_epsilon"] = float(cfg.norm_eps)
        return kv
    kv.update({"attention.head_count_kv": cfg.n_kv_heads, "attention.layer_norm_rms_epsilon": float(cfg.norm_eps),
               "rope.freq_base": float(cfg.rope_theta), "rope.dimension_count": cfg.head_dim})
    rs = cfg.rope_scaling
    if rs:
        kind = rs.get("type", rs.get("rope_type"))
        kv.update({"rope.scaling.type": kind, "rope.scaling.factor": float(rs["factor"])})
        if kind == "yarn":
            kv["rope.scaling.original_context_length"] = int(rs.get("original_max_position_embeddings", cfg.max_seq_len))
    return kv


def gguf_tensors(sd: dict[str, torch.Tensor], cfg: ModelConfig, arch: str) -> dict[str, np.ndarray]:
    """ember state dict → GGUF name → float32 array (torch order); the inverse of
    `convert.gguf.gguf_raw_tensors`: GPT-2's wq/wk/wv fused into attn_qkv, Llama's Q/K rows
    put in interleaved RoPE order (unless the model already rotates pairs), a tied head left out.

    >>> sorted(gguf_tensors(Transformer(ModelConfig.tiny()).state_dict(), ModelConfig.tiny(), "llama"))[:2]  # doctest: +SKIP
    ['blk.0.attn_k.weight', 'blk.0.attn_norm.weight']
    """
    table = LLAMA_KEYS if arch == "llama" else GPT2_KEYS
    sd = {k: v.detach().float().cpu() for k, v in sd.items()}
    out = {}
    for layer in [None, *range(cfg.n_layers)]:
        for g_tmpl, e_tmpl in table.items():
            if ("{}" in g_tmpl) != (layer is not None):
                continue
            g = g_tmpl.replace("{}", str(layer))
            names = e_tmpl if isinstance(e_tmpl, tuple) else (e_tmpl,)
            names = [n.replace("{}", str(layer)) for n in names]
            if not all(n in sd for n in names):
                continue
            if g == "output.weight" and cfg.tie_embeddings:
                continue
            t = torch.cat([sd[n] for n in names]) if len(names) > 1 else sd[names[0]]
            if arch == "llama" and not cfg.rope_interleaved and g_tmpl.split(".")[-2] in ("attn_q", "attn_k"):
                heads = cfg.n_heads if "attn_q" in g else cfg.n_kv_heads
                t = rope_rows_half_to_interleaved(t, heads)
            out[g] = t.contiguous().numpy()
    missing = sorted(set(sd) - {n for e in table.values() for n in _expand(e, cfg.n_layers)})
    if missing:
        raise ValueError(f"GGUF {arch}: {len(missing)} ember tensor(s) with no GGUF name: {missing[:10]}")
    return out


def _expand(e_tmpl, n_layers: int):
    for n in e_tmpl if isinstance(e_tmpl, tuple) else (e_tmpl,):
        yield from ([n.replace("{}", str(i)) for i in range(n_layers)] if "{}" in n else [n])


def _encode(name: str, a: np.ndarray, dtype: str):
    """(data, raw ggml type or None) for one tensor: 1-D stays f32; a matrix whose rows are
    not whole blocks of 32 falls back to f16 under q8_0/q4_*; under q4_* the output head and
    the token embedding (the head too, when tied) stay q8_0, as llama.cpp's own quantizer
    keeps the head at higher precision."""
    from gguf import GGMLQuantizationType as T
    from gguf.quants import quantize

    if a.ndim < 2 or dtype == "f32":
        return a.astype(np.float32), None
    if dtype == "f16" or a.shape[-1] % 32:
        return a.astype(np.float16), None
    qtype = T.Q8_0 if dtype == "q8_0" or name in _HEADS else T.Q4_0 if dtype == "q4_0" else T.Q4_1
    return quantize(a.astype(np.float32), qtype), qtype


def _byte_unicode() -> dict[int, str]:
    """GPT-2's byte → printable character table (the spelling of byte-level vocabularies)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {b: chr(b) for b in keep}, 0
    for b in range(256):
        if b not in table:
            table[b], extra = chr(256 + extra), extra + 1
    return table


def tokenizer_fields(tok, n_vocab: int, pattern_name: str) -> dict:
    """`tokenizer.*` metadata for an ember byte-level BPE tokenizer `tok` (any object with its
    `vocab`, `merges`, `special_tokens`, `bos_token_id`, `eos_tokens`, `add_bos`,
    `chat_template`), padded to the model's `n_vocab` rows with unused tokens.
    `pattern_name` is the tokenizer's split pattern ("gpt2", "smollm", "gpt4")."""
    if pattern_name not in GGUF_PRE:
        raise ValueError(f"tokenizer split pattern {pattern_name!r} has no llama.cpp pre-tokenizer; "
                         f"supported: {sorted(GGUF_PRE)}")
    if tok.vocab_size > n_vocab:
        raise ValueError(f"the tokenizer has {tok.vocab_size} ids, more than the model's {n_vocab} embedding rows")
    spell_byte = _byte_unicode()

    def spell(i: int) -> str:
        return "".join(spell_byte[b] for b in tok.vocab[i])

    specials = {i: s for s, i in tok.special_tokens.items()}
    tokens, types, seen = [], [], {}
    for i in range(n_vocab):
        if i in specials:
            s, ty = specials[i], _CONTROL
        elif i in tok.vocab:
            s, ty = spell(i), _NORMAL
        else:
            s, ty = f"[PAD{i}]", _UNUSED
        if s in seen:
            raise ValueError(f"tokens {seen[s]} and {i} are both {s!r}; a GGUF vocabulary cannot hold both")
        seen[s] = i
        tokens.append(s)
        types.append(ty)
    kv = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": GGUF_PRE[pattern_name],
          "tokenizer.ggml.tokens": tokens, "tokenizer.ggml.token_type": types,
          "tokenizer.ggml.merges": [f"{spell(a)} {spell(b)}" for a, b, _ in tok.merges],
          "tokenizer.ggml.add_bos_token": bool(tok.add_bos)}
    if tok.bos_token_id is not None:
        kv["tokenizer.ggml.bos_token_id"] = tok.bos_token_id
    if tok.eos_tokens:
        kv["tokenizer.ggml.eos_token_id"] = tok.special_tokens[tok.eos_tokens[0]]
    if tok.chat_template:
        kv["tokenizer.chat_template"] = tok.chat_template
    return kv


def save_gguf(model, path: str | os.PathLike, dtype: str = "f32", tokenizer=None, pattern_name: str | None = None,
              name: str = "ember", overwrite: bool = False, progress: bool = False) -> Path:
    """Write `model` (and `tokenizer`, split pattern `pattern_name`) as one GGUF file, atomically.

    >>> save_gguf(load_model("smollm2"), "smollm2-f16.gguf", "f16", tok, "smollm")  # doctest: +SKIP
    PosixPath('smollm2-f16.gguf')
    """
    from gguf import GGUFWriter
    from tqdm import tqdm

    if dtype not in DTYPES:
        raise ValueError(f"unknown GGUF dtype {dtype!r}; choose one of {list(DTYPES)}")
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass --overwrite to replace it")
    if path.exists() and not path.is_file():  # renaming over /dev/null as root replaces the device
        raise ValueError(f"{path} is not a regular file (a directory or a device); give a GGUF file path")
    cfg = getattr(model, "config", None)
    arch = gguf_arch(cfg)
    kv_tok = tokenizer_fields(tokenizer, cfg.vocab_size, pattern_name) if tokenizer is not None else {}
    tensors = gguf_tensors(model.state_dict(), cfg, arch)
    with atomic_path(path) as tmp:
        w = GGUFWriter(str(tmp), arch)
        w.add_name(name)
        w.add_file_type(_FILE_TYPES[dtype])
        for key, v in {**{f"{arch}.{k}": v for k, v in _hparams(cfg, arch).items()}, **kv_tok}.items():
            _add(w, key, v)
        for g, a in tqdm(tensors.items(), desc=f"GGUF {dtype}", disable=not progress):
            data, raw = _encode(g, a, dtype)
            w.add_tensor(g, data, raw_dtype=raw)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    return path


def _add(w, key: str, v) -> None:
    """One metadata value, typed as llama.cpp reads it."""
    if isinstance(v, bool):
        w.add_bool(key, v)
    elif isinstance(v, int):
        w.add_uint32(key, v)
    elif isinstance(v, float):
        w.add_float32(key, v)
    elif isinstance(v, str):
        w.add_string(key, v)
    else:
        w.add_array(key, list(v))
