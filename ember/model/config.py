"""ModelConfig: every switch of the one Transformer, validated at construction.

GPT-2 and Llama are the same decoder with different switches (norm, positions, MLP, bias,
KV heads). Presets name the real sizes; `tiny()` is what the tests build.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

NORMS = ("rmsnorm", "layernorm")
POS_EMBS = ("rope", "learned", "sinusoidal")
MLPS = ("swiglu", "gelu", "gelu_erf")
NORM_POSITIONS = ("pre", "post")
# Bound on every size field: far above any real model (vocabularies ~256k, contexts ~10M),
# and low enough that products such as vocab_size * d_model stay inside int64.
MAX_SIZE = 2**31 - 1
# rope_scaling "type" → (the keys it needs besides "type", the keys it may have); the
# formulas are in ember.model.positions. original_max_position_embeddings, where optional,
# defaults to max_seq_len (as transformers does).
ROPE_SCALINGS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "linear": (("factor",), ()),
    "ntk": (("factor",), ()),
    "dynamic": (("factor",), ("original_max_position_embeddings",)),
    "yarn": (("factor",), ("original_max_position_embeddings", "beta_fast", "beta_slow", "attention_factor",
                           "mscale", "mscale_all_dim", "truncate")),
    "llama3": (("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"), ()),
}
_ROPE_FLAGS = ("truncate",)  # booleans among the keys above; every other key is a positive number


@dataclass
class MoEConfig:
    """A mixture-of-experts feed-forward block (Shazeer et al. 2017; Switch, Fedus et al. 2021;
    Mixtral, Jiang et al. 2024): a router sends each token to top_k of n_experts SwiGLU/GELU
    MLPs of width d_ff and sums their outputs weighted by the router's probabilities.

    >>> MoEConfig(n_experts=4, top_k=1).top_k
    1
    """

    n_experts: int = 8
    """experts per MoE layer"""
    top_k: int = 2
    """experts each token is sent to (1: Switch; 2: Mixtral)"""
    capacity_factor: float | None = None
    """None: dropless (every routed token is computed); else each expert takes at most
    ceil(capacity_factor * tokens * top_k / n_experts) tokens per forward and the rest are
    dropped (the residual carries them), first choices before second choices"""
    aux_loss_coef: float = 0.01
    """weight of the load-balancing loss n_experts * sum_e f_e * P_e added to the training loss"""
    z_loss_coef: float = 0.001
    """weight of the router z-loss mean(logsumexp(router logits)^2) (ST-MoE, Zoph et al. 2022)"""
    renormalize: bool | None = None
    """renormalize the top_k probabilities to sum to 1 (Mixtral); false keeps the softmax values
    (Switch). None: true when top_k > 1; with top_k 1 renormalizing would make every weight 1
    and leave the router no gradient from the task loss"""

    def __post_init__(self):
        for name in ("n_experts", "top_k"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not 0 < v <= MAX_SIZE:
                raise ValueError(f"MoEConfig.{name} must be a positive int, got {v!r}")
        if self.renormalize is None:
            self.renormalize = self.top_k > 1
        if self.top_k > self.n_experts:
            raise ValueError(f"MoEConfig.top_k {self.top_k} exceeds n_experts {self.n_experts}")
        if self.capacity_factor is not None and not _positive_number(self.capacity_factor):
            raise ValueError(f"MoEConfig.capacity_factor must be None (dropless) or > 0, got {self.capacity_factor!r}")
        for name in ("aux_loss_coef", "z_loss_coef"):
            v = getattr(self, name)
            if not (v == 0 or _positive_number(v)):
                raise ValueError(f"MoEConfig.{name} must be a number >= 0, got {v!r}")


@dataclass
class ModelConfig:
    """Shape and switches of a decoder (or, with causal=False, an encoder).

    >>> ModelConfig.tiny().head_dim
    16
    """

    vocab_size: int = 256
    """number of token ids the embedding and the output head cover"""
    n_layers: int = 2
    """Transformer blocks"""
    d_model: int = 64
    """width of the residual stream"""
    n_heads: int = 4
    """query heads per attention layer"""
    n_kv_heads: int | None = None
    """key/value heads: None means n_heads (MHA), 1 is MQA, in between GQA"""
    d_ff: int = 256
    """hidden width of the feed-forward block"""
    max_seq_len: int = 256
    """longest context: position tables and KV caches are this long"""
    norm: str = "rmsnorm"
    """rmsnorm (Llama) or layernorm (GPT-2)"""
    norm_eps: float = 1e-5
    """epsilon added to the variance inside each norm"""
    pos_emb: str = "rope"
    """positions: rope (rotary), learned (GPT-2) or sinusoidal"""
    rope_theta: float = 10000.0
    """RoPE base frequency"""
    rope_scaling: dict[str, Any] | None = None
    """RoPE context extension: type linear (position interpolation), ntk (NTK-aware base),
    dynamic (NTK by current length), yarn or llama3, and its factor, e.g.
    --model.rope_scaling.type yarn --model.rope_scaling.factor 2; see ROPE_SCALINGS"""
    rope_interleaved: bool = False
    """true: RoPE rotates adjacent pairs (x[2i], x[2i+1]), the layout llama.cpp's GGUF
    converter leaves Q/K rows in; false: rotate-half (x[i], x[i + Dh/2]) as in HF Llama"""
    mlp: str = "swiglu"
    """feed-forward block: swiglu (Llama), gelu (GPT-2's tanh approximation) or gelu_erf
    (the exact erf GELU of BERT)"""
    bias: bool = False
    """biases on the linear layers (GPT-2 has them)"""
    tie_embeddings: bool = False
    """the output head reuses the token embedding matrix"""
    causal: bool = True
    """causal attention (a decoder); false: bidirectional (an encoder such as BERT)"""
    norm_position: str = "pre"
    """pre: x + f(norm(x)) and a final norm (GPT-2, Llama); post: norm(x + f(x)) and no
    final norm (the original Transformer and BERT)"""
    n_token_types: int = 0
    """token-type (segment A/B) embeddings added to the input, BERT's type_vocab_size; 0: none"""
    embed_norm: bool = False
    """a norm on the summed input embeddings, before the first block (BERT)"""
    moe: MoEConfig | None = None
    """mixture-of-experts feed-forward in every block (e.g. --model.moe.n_experts 8
    --model.moe.top_k 2); None: the dense MLP"""
    sliding_window: int | None = None
    """each query attends to the last sliding_window positions only (itself included), as
    Mistral; None: the whole causal prefix"""
    n_sink_tokens: int = 0
    """with sliding_window: the first n positions stay visible to every query (attention
    sinks, StreamingLLM, Xiao et al. 2023)"""

    def __post_init__(self):
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        for name in ("vocab_size", "n_layers", "d_model", "n_heads", "n_kv_heads", "d_ff", "max_seq_len"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not 0 < v <= MAX_SIZE:
                raise ValueError(f"ModelConfig.{name} must be a positive int (at most {MAX_SIZE}), got {v!r}")
        _check_choice("norm", self.norm, NORMS)
        _check_choice("pos_emb", self.pos_emb, POS_EMBS)
        _check_choice("mlp", self.mlp, MLPS)
        _check_choice("norm_position", self.norm_position, NORM_POSITIONS)
        if isinstance(self.n_token_types, bool) or not isinstance(self.n_token_types, int) or not (
            0 <= self.n_token_types <= MAX_SIZE
        ):
            raise ValueError(f"ModelConfig.n_token_types must be an int >= 0, got {self.n_token_types!r}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads {self.n_heads} is not divisible by n_kv_heads {self.n_kv_heads}")
        if self.pos_emb == "rope" and self.head_dim % 2:
            raise ValueError(f"RoPE needs an even head_dim, got {self.head_dim}")
        if self.pos_emb == "sinusoidal" and self.d_model % 2:
            raise ValueError(f"sinusoidal positions need an even d_model, got {self.d_model}")
        if not _positive_number(self.norm_eps):
            raise ValueError(f"norm_eps must be > 0, got {self.norm_eps!r}")
        if not _positive_number(self.rope_theta):
            raise ValueError(f"rope_theta must be > 0, got {self.rope_theta!r}")
        if self.rope_scaling is not None:
            self._check_rope_scaling()
        if isinstance(self.moe, dict):
            unknown = sorted(set(self.moe) - {f.name for f in dataclasses.fields(MoEConfig)})
            if unknown:
                raise ValueError(f"unknown ModelConfig.moe keys {unknown}; valid: {[f.name for f in dataclasses.fields(MoEConfig)]}")
            self.moe = MoEConfig(**self.moe)
        elif self.moe is not None and not isinstance(self.moe, MoEConfig):
            raise ValueError(f"ModelConfig.moe must be None, a MoEConfig or a dict, got {self.moe!r}")
        self._check_window()

    def _check_window(self):
        w, s = self.sliding_window, self.n_sink_tokens
        if w is not None and (isinstance(w, bool) or not isinstance(w, int) or not 0 < w <= MAX_SIZE):
            raise ValueError(f"ModelConfig.sliding_window must be None or a positive int, got {w!r}")
        if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s <= MAX_SIZE:
            raise ValueError(f"ModelConfig.n_sink_tokens must be an int >= 0, got {s!r}")
        if s and w is None:
            raise ValueError(f"n_sink_tokens {s} needs a sliding_window (without one every token is visible)")
        if w is not None and not self.causal:
            raise ValueError(f"sliding_window {w} needs a causal model (config.causal is False)")

    def _check_rope_scaling(self):
        rs = self.rope_scaling
        if not isinstance(rs, dict):
            raise ValueError(f"rope_scaling must be None or a dict, got {rs!r}")
        kind = rs.get("type", rs.get("rope_type"))
        if kind not in ROPE_SCALINGS:
            raise ValueError(f"rope_scaling type {kind!r} is not one of {sorted(ROPE_SCALINGS)}")
        required, optional = ROPE_SCALINGS[kind]
        missing = [k for k in required if k not in rs]
        if missing:
            raise ValueError(f"rope_scaling of type {kind!r} lacks {missing}")
        unknown = sorted(set(rs) - {"type", "rope_type", *required, *optional})
        if unknown:
            raise ValueError(f"rope_scaling of type {kind!r}: unknown keys {unknown}; valid: {[*required, *optional]}")
        for k in (*required, *optional):
            if k in rs and k in _ROPE_FLAGS and not isinstance(rs[k], bool):
                raise ValueError(f"rope_scaling {k} must be true or false, got {rs[k]!r}")
            if k in rs and k not in _ROPE_FLAGS and not _positive_number(rs[k]):
                raise ValueError(f"rope_scaling {k} must be a positive number, got {rs[k]!r}")
        if self.pos_emb != "rope":
            raise ValueError(f"rope_scaling is set but pos_emb is {self.pos_emb!r}, not 'rope'")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    # ---- construction helpers -------------------------------------------------------------

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """Build from a plain dict; unknown keys are an error that lists the valid ones.

        >>> ModelConfig.from_dict({"n_layers": 1}).n_layers
        1
        """
        valid = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - valid)
        if unknown:
            raise ValueError(f"unknown ModelConfig keys {unknown}; valid keys: {sorted(valid)}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def tiny(cls, **overrides) -> ModelConfig:
        """2 layers, d_model 64, 4 heads, 2 KV heads, Llama style: what tests build."""
        return cls.from_dict({**PRESETS["tiny"], **overrides})

    @classmethod
    def from_preset(cls, name: str, **overrides) -> ModelConfig:
        """A named real size, e.g. `ModelConfig.from_preset("gpt2")`.

        >>> ModelConfig.from_preset("smollm2-135m").n_kv_heads
        3
        """
        if name not in PRESETS:
            raise ValueError(f"unknown model preset {name!r}; valid presets: {sorted(PRESETS)}")
        return cls.from_dict({**PRESETS[name], **overrides})


def _positive_number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and 0 < v < float("inf")


def _check_choice(name: str, value, choices):
    if value not in choices:
        raise ValueError(f"ModelConfig.{name} must be one of {list(choices)}, got {value!r}")


def _gpt2(n_layers: int, d_model: int, n_heads: int) -> dict[str, Any]:
    return dict(
        vocab_size=50257, n_layers=n_layers, d_model=d_model, n_heads=n_heads,
        d_ff=4 * d_model, max_seq_len=1024, norm="layernorm", pos_emb="learned", mlp="gelu",
        bias=True, tie_embeddings=True,
    )


def _bert(n_layers: int, d_model: int, n_heads: int) -> dict[str, Any]:
    return dict(
        vocab_size=30522, n_layers=n_layers, d_model=d_model, n_heads=n_heads, d_ff=4 * d_model,
        max_seq_len=512, norm="layernorm", norm_eps=1e-12, pos_emb="learned", mlp="gelu_erf", bias=True,
        tie_embeddings=True, causal=False, norm_position="post", n_token_types=2, embed_norm=True,
    )


PRESETS: dict[str, dict[str, Any]] = {
    "gpt2": _gpt2(12, 768, 12),
    "gpt2-medium": _gpt2(24, 1024, 16),
    "gpt2-large": _gpt2(36, 1280, 20),
    "gpt2-xl": _gpt2(48, 1600, 25),
    "tiny-gpt2": {**_gpt2(2, 64, 4), "vocab_size": 256, "max_seq_len": 256, "d_ff": 256},
    "tiny": dict(
        vocab_size=256, n_layers=2, d_model=64, n_heads=4, n_kv_heads=2, d_ff=176,
        max_seq_len=256, norm="rmsnorm", pos_emb="rope", mlp="swiglu",
    ),
    # BERT-style encoders; tied so the MLM decoder (and `output`) reuse the word embeddings
    "tiny-bert": {**_bert(2, 64, 4), "vocab_size": 256, "max_seq_len": 128, "d_ff": 256},
    "minilm-l6": _bert(6, 384, 12),
    "smollm2-135m": dict(
        vocab_size=49152, n_layers=30, d_model=576, n_heads=9, n_kv_heads=3, d_ff=1536,
        max_seq_len=8192, norm="rmsnorm", norm_eps=1e-5, pos_emb="rope", rope_theta=100000.0,
        mlp="swiglu", tie_embeddings=True,
    ),
}
