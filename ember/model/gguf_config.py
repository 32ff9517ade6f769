"""GGUF metadata → ModelConfig (`config_from_gguf`), without torch: the torch-free native
path (ember.kernels.native_lm) reads its config here; ember.model.convert.gguf re-exports it.
"""

from __future__ import annotations

from ember.core.gguf import gguf_field
from ember.model.config import ModelConfig

# The architectures ember.model.convert.gguf maps (its TABLES).
ARCHITECTURES = ("gpt2", "llama")


# ---- config ---------------------------------------------------------------------------------


def config_from_gguf(reader) -> ModelConfig:
    """GGUF metadata → ModelConfig; an architecture other than llama/gpt2, or a missing or
    mistyped field, is a ValueError naming the file and the key."""
    where = str(reader.path)
    arch = gguf_field(reader, "general.architecture")
    if not isinstance(arch, str) or arch not in ARCHITECTURES:
        raise ValueError(f"{where}: unsupported GGUF general.architecture {arch!r}; supported: {sorted(ARCHITECTURES)}")

    def get(key, kind, default=_REQUIRED):
        return _meta(reader, f"{arch}.{key}", kind, default)

    names = {t.name for t in reader.tensors}
    if "token_embd.weight" not in names:
        raise ValueError(f"{where}: GGUF has no token_embd.weight tensor")
    vocab = int(next(t for t in reader.tensors if t.name == "token_embd.weight").shape[1])
    common = dict(
        vocab_size=vocab, n_layers=get("block_count", int), d_model=get("embedding_length", int),
        n_heads=get("attention.head_count", int), d_ff=get("feed_forward_length", int),
        max_seq_len=get("context_length", int), tie_embeddings="output.weight" not in names,
    )
    try:
        return _config(reader, arch, names, common, get)
    except ValueError as e:  # ModelConfig's own checks name ember fields: add the file
        raise ValueError(e.args[0] if str(e).startswith(where) else f"{where}: {e}") from None


def _config(reader, arch: str, names: set[str], common: dict, get) -> ModelConfig:
    if arch == "gpt2":
        eps = get("attention.layer_norm_epsilon", float, 1e-5)
        return ModelConfig(**common, norm="layernorm", norm_eps=eps, pos_emb="learned", mlp="gelu", bias=True)
    if "rope_freqs.weight" in names:
        raise ValueError("GGUF carries rope_freqs.weight (Llama 3.1-style RoPE factors): not supported yet")
    head_dim = common["d_model"] // common["n_heads"]
    if get("rope.dimension_count", int, head_dim) != head_dim:
        raise ValueError("partial RoPE (llama.rope.dimension_count < head dim) is not supported")
    return ModelConfig(
        **common, n_kv_heads=get("attention.head_count_kv", int, common["n_heads"]),
        norm="rmsnorm", norm_eps=get("attention.layer_norm_rms_epsilon", float), pos_emb="rope",
        rope_theta=get("rope.freq_base", float, 10000.0), rope_scaling=_rope_scaling(get),
        rope_interleaved=True, mlp="swiglu", bias="blk.0.attn_q.bias" in names,
    )


def _rope_scaling(get) -> dict | None:
    """llama.rope.scaling.{type, factor, original_context_length} → ModelConfig.rope_scaling
    (llama.cpp writes "linear" and "yarn"; its YaRN uses beta_fast 32, beta_slow 1, as ember)."""
    kind = get("rope.scaling.type", str, "none")
    if kind == "none":
        return None
    if kind not in ("linear", "yarn"):
        raise ValueError(f"GGUF llama.rope.scaling.type {kind!r} is not supported (only 'linear', 'yarn')")
    scaling = {"type": kind, "factor": get("rope.scaling.factor", float)}
    if kind == "yarn":
        if get("rope.scaling.attn_factor", float, 1.0) != 1.0:
            raise ValueError("GGUF llama.rope.scaling.attn_factor other than 1 is not supported")
        original = get("rope.scaling.original_context_length", int, None)
        if original is not None:
            scaling["original_max_position_embeddings"] = original
    return scaling


_REQUIRED = object()


def _meta(reader, key: str, kind: type, default=_REQUIRED):
    """Metadata `key` as a positive int, a positive finite float, or a str; else a ValueError
    naming the file and the key.

    GGUF stores numbers in any width, so an int is accepted where a float is expected.
    """
    v = gguf_field(reader, key)
    if v is None:
        if default is _REQUIRED:
            raise ValueError(f"{reader.path}: GGUF metadata lacks {key}")
        return default
    if kind is str:
        ok, text = isinstance(v, str), "a string"
    elif kind is int:
        ok, text = isinstance(v, int) and not isinstance(v, bool) and v > 0, "a positive int"
    else:
        ok, text = isinstance(v, int | float) and not isinstance(v, bool) and 0 < v < float("inf"), "a positive number"
    if not ok:
        raise ValueError(f"{reader.path}: GGUF metadata {key} must be {text}, got {repr(v)[:60]}")
    return kind(v)
