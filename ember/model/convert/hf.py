"""Hugging Face safetensors folders (config.json + *.safetensors) ↔ ember, for Llama, GPT-2
and BERT (its table is in `bert.py`).

`from_hf`/`to_hf` rename by the tables below and fix layouts: GPT-2's Conv1D stores weights
as (in, out), the transpose of nn.Linear, and fuses q, k, v into one c_attn matrix.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from pathlib import Path

import torch

from ember.core.io import atomic_write_bytes, atomic_write_json, read_text_utf8
from ember.core.registry import regular_file
from ember.model.config import ModelConfig
from ember.model.convert import (
    fill,
    rope_rows_interleaved_to_half,
    split_layer,
    unknown_keys_error,
    with_bias,
)
from ember.model.convert.bert import (
    BERT_IGNORED,
    BERT_KEYS,
    BERT_PREFIX,
    bert_config,
    bert_config_to_hf,
    is_bert,
)
from ember.model.convert.mixtral import mixtral_config, mixtral_config_to_hf, moe_from_hf, moe_to_hf
from ember.model.shapes import check_config_fits

LLAMA_KEYS: dict[str, str] = {
    "model.embed_tokens.weight": "tok_embeddings.weight",
    "model.layers.{}.input_layernorm.weight": "layers.{}.attention_norm.weight",
    "model.layers.{}.post_attention_layernorm.weight": "layers.{}.ffn_norm.weight",
    **with_bias({
        "model.layers.{}.self_attn.q_proj": "layers.{}.attention.wq",
        "model.layers.{}.self_attn.k_proj": "layers.{}.attention.wk",
        "model.layers.{}.self_attn.v_proj": "layers.{}.attention.wv",
        "model.layers.{}.self_attn.o_proj": "layers.{}.attention.wo",
        "model.layers.{}.mlp.gate_proj": "layers.{}.feed_forward.w1",
        "model.layers.{}.mlp.down_proj": "layers.{}.feed_forward.w2",
        "model.layers.{}.mlp.up_proj": "layers.{}.feed_forward.w3",
    }),
    "model.norm.weight": "norm.weight",
    "lm_head.weight": "output.weight",
}

GPT2_KEYS: dict[str, str | tuple[str, ...]] = {
    "transformer.wte.weight": "tok_embeddings.weight",
    "transformer.wpe.weight": "pos_embeddings.weight",
    **with_bias({
        "transformer.h.{}.ln_1": "layers.{}.attention_norm",
        "transformer.h.{}.attn.c_proj": "layers.{}.attention.wo",
        "transformer.h.{}.ln_2": "layers.{}.ffn_norm",
        "transformer.h.{}.mlp.c_fc": "layers.{}.feed_forward.w1",
        "transformer.h.{}.mlp.c_proj": "layers.{}.feed_forward.w2",
        "transformer.ln_f": "norm",
    }),
    # one fused (D, 3D) matrix → wq, wk, wv
    "transformer.h.{}.attn.c_attn.weight": tuple(f"layers.{{}}.attention.{w}.weight" for w in ("wq", "wk", "wv")),
    "transformer.h.{}.attn.c_attn.bias": tuple(f"layers.{{}}.attention.{w}.bias" for w in ("wq", "wk", "wv")),
    "lm_head.weight": "output.weight",
}
GPT2_CONV1D = {f"transformer.h.{{}}.{m}.weight" for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")}
# Old GPT-2 checkpoints carry the causal mask as a tensor; it is not a weight.
GPT2_IGNORED = {"transformer.h.{}.attn.bias", "transformer.h.{}.attn.masked_bias"}

# A config.json is a few KB; a far larger one is not a config and is refused before reading.
MAX_CONFIG_BYTES = 16 << 20
# arch → (key table, transposed weights, ignored keys, prefix a bare checkpoint lacks)
TABLES = {
    "llama": (LLAMA_KEYS, set(), set(), "model."),
    "gpt2": (GPT2_KEYS, GPT2_CONV1D, GPT2_IGNORED, "transformer."),
    "bert": (BERT_KEYS, set(), BERT_IGNORED, ""),
    "mixtral": (LLAMA_KEYS, set(), set(), "model."),  # + the MoE keys of mixtral.py
}
# arch → prefix of a task model's body that the table leaves out (BertForMaskedLM's "bert.")
STRIPPED = {"bert": BERT_PREFIX}


# ---- config ---------------------------------------------------------------------------------

_REQUIRED = object()
_KINDS = {
    "positive int": lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0,
    "positive number": lambda v: isinstance(v, int | float) and not isinstance(v, bool) and 0 < v < float("inf"),
    "bool": lambda v: isinstance(v, bool),
    "string": lambda v: isinstance(v, str),
    "JSON object": lambda v: isinstance(v, dict),
}


def _get(d: dict, key: str, kind: str, where: str, default=_REQUIRED):
    """d[key] checked to be of `kind`; absent or null → `default`; else a ValueError naming file and key.

    >>> _get({"n_layer": "4"}, "n_layer", "positive int", "config.json")
    Traceback (most recent call last):
    ...
    ValueError: config.json: n_layer must be a positive int, got '4'
    """
    v = d.get(key)
    if v is None:
        if default is _REQUIRED:
            raise ValueError(f"{where}: missing {key!r}")
        return default
    if not _KINDS[kind](v):
        raise ValueError(f"{where}: {key} must be a {kind}, got {_show(v)}")
    return v


def _show(v) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def config_from_hf(d: dict, where: str = "config.json") -> ModelConfig:
    """config.json (as a dict) → ModelConfig; an unknown model_type or a bad field is a ValueError
    naming `where` and the field."""
    if not isinstance(d, dict):
        raise ValueError(f"{where}: must hold a JSON object, got {type(d).__name__}")
    arch = d.get("model_type")
    builders = {"llama": _llama_config, "gpt2": _gpt2_config, "bert": lambda d, get: bert_config(get),
                "mixtral": lambda d, get: mixtral_config(_llama_config(d, get), get)}
    if not isinstance(arch, str) or arch not in builders:
        raise ValueError(f"{where}: unsupported HF model_type {_show(arch)}; supported: {sorted(TABLES)}")

    def get(key, kind, default=_REQUIRED):
        return _get(d, key, kind, where, default)

    try:
        return builders[arch](d, get)
    except ValueError as e:  # ModelConfig's own checks (e.g. d_model % n_heads) name ember fields
        raise ValueError(e.args[0] if str(e).startswith(where) else f"{where}: {e}") from None


def _llama_config(d: dict, get) -> ModelConfig:
    n_heads, d_model = get("num_attention_heads", "positive int"), get("hidden_size", "positive int")
    if get("head_dim", "positive int", None) not in (None, d_model // n_heads):
        raise ValueError(f"head_dim {d['head_dim']} != hidden_size / num_attention_heads is not supported")
    if get("hidden_act", "string", "silu") != "silu":
        raise ValueError(f"Llama hidden_act {d['hidden_act']!r} is not supported (only 'silu')")
    bias = get("attention_bias", "bool", False)
    if get("mlp_bias", "bool", False) != bias:
        raise ValueError("attention_bias != mlp_bias is not supported (ember has one `bias` switch)")
    # transformers ≥ 5 writes rope_parameters; older versions rope_theta + rope_scaling.
    rope = dict(get("rope_parameters", "JSON object", {}))
    theta = _get(rope, "rope_theta", "positive number", "rope_parameters", None)
    theta = get("rope_theta", "positive number", 10000.0) if theta is None else theta
    rope.pop("rope_theta", None)
    scaling = get("rope_scaling", "JSON object", None) or (rope if rope.get("rope_type", "default") != "default" else None)
    if scaling is not None:
        scaling = {k: v for k, v in scaling.items() if k not in ("rope_type", "type", "rope_theta")} | {
            "type": scaling.get("rope_type", scaling.get("type"))
        }
    return ModelConfig(
        vocab_size=get("vocab_size", "positive int"), n_layers=get("num_hidden_layers", "positive int"),
        d_model=d_model, n_heads=n_heads, n_kv_heads=get("num_key_value_heads", "positive int", n_heads),
        d_ff=get("intermediate_size", "positive int"), max_seq_len=get("max_position_embeddings", "positive int", 2048),
        norm="rmsnorm", norm_eps=get("rms_norm_eps", "positive number", 1e-6), pos_emb="rope",
        rope_theta=float(theta), rope_scaling=scaling, mlp="swiglu", bias=bias,
        tie_embeddings=get("tie_word_embeddings", "bool", False),
    )


def _gpt2_config(d: dict, get) -> ModelConfig:
    act = get("activation_function", "string", "gelu_new")
    if act not in ("gelu_new", "gelu_pytorch_tanh"):
        raise ValueError(f"GPT-2 activation_function {act!r} is not supported (only the tanh GELU)")
    if get("scale_attn_by_inverse_layer_idx", "bool", False) or not get("scale_attn_weights", "bool", True):
        raise ValueError("GPT-2 attention scaling other than 1/sqrt(head_dim) is not supported")
    d_model = get("n_embd", "positive int")
    return ModelConfig(
        vocab_size=get("vocab_size", "positive int"), n_layers=get("n_layer", "positive int"), d_model=d_model,
        n_heads=get("n_head", "positive int"), d_ff=get("n_inner", "positive int", 4 * d_model),
        max_seq_len=get("n_positions", "positive int"), norm="layernorm",
        norm_eps=get("layer_norm_epsilon", "positive number", 1e-5), pos_emb="learned", mlp="gelu", bias=True,
        tie_embeddings=get("tie_word_embeddings", "bool", True),
    )


def hf_arch(cfg: ModelConfig) -> str:
    """Which HF family `cfg` can be written as: "llama", "gpt2" or "bert" (else ValueError)."""
    switches = (cfg.norm, cfg.pos_emb, cfg.mlp)
    decoder = cfg.causal and cfg.norm_position == "pre" and not cfg.n_token_types and not cfg.embed_norm
    if switches == ("rmsnorm", "rope", "swiglu") and decoder:
        return "llama" if cfg.moe is None else "mixtral"
    if switches == ("layernorm", "learned", "gelu") and cfg.bias and cfg.n_kv_heads == cfg.n_heads and decoder:
        return "gpt2"
    if is_bert(cfg):
        return "bert"
    raise ValueError(f"no HF architecture has the switches norm/pos_emb/mlp = {switches} (with bias={cfg.bias})")


def config_to_hf(cfg: ModelConfig, dtype: torch.dtype = torch.float32) -> dict:
    """ModelConfig → config.json dict that transformers' Auto classes read."""
    arch, dtype_name = hf_arch(cfg), str(dtype).removeprefix("torch.")
    if arch == "bert":
        return bert_config_to_hf(cfg, dtype_name)
    if arch == "mixtral":
        return mixtral_config_to_hf(config_to_hf(dataclasses.replace(cfg, moe=None, sliding_window=None,
                                                                    n_sink_tokens=0), dtype), cfg)
    if arch == "gpt2":
        return {
            "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": cfg.vocab_size,
            "n_layer": cfg.n_layers, "n_embd": cfg.d_model, "n_head": cfg.n_heads, "n_inner": cfg.d_ff,
            "n_positions": cfg.max_seq_len, "layer_norm_epsilon": cfg.norm_eps, "activation_function": "gelu_new",
            "tie_word_embeddings": cfg.tie_embeddings, "bos_token_id": None, "eos_token_id": None,
            "dtype": dtype_name,
        }
    rope = {"rope_type": "default", "rope_theta": cfg.rope_theta}
    if cfg.rope_scaling:
        rs = dict(cfg.rope_scaling)
        rope = {"rope_type": rs.pop("type", rs.pop("rope_type", None)), **rs, "rope_theta": cfg.rope_theta}
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": cfg.vocab_size,
        "num_hidden_layers": cfg.n_layers, "hidden_size": cfg.d_model, "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads, "head_dim": cfg.head_dim, "intermediate_size": cfg.d_ff,
        "max_position_embeddings": cfg.max_seq_len, "rms_norm_eps": cfg.norm_eps, "hidden_act": "silu",
        "rope_parameters": rope, "attention_bias": cfg.bias, "mlp_bias": cfg.bias,
        "tie_word_embeddings": cfg.tie_embeddings, "bos_token_id": None, "eos_token_id": None,
        "dtype": dtype_name,
    }


# ---- weights --------------------------------------------------------------------------------


def from_hf(items: Iterable[tuple[str, torch.Tensor]], cfg: ModelConfig, arch: str) -> dict[str, torch.Tensor]:
    """HF (key, tensor) pairs → ember state dict. Takes pairs so a loader can stream them.

    >>> cfg = ModelConfig.tiny(n_layers=1)
    >>> list(from_hf([("model.norm.weight", torch.ones(64))], cfg, "llama"))
    ['norm.weight']
    """
    if arch == "mixtral":
        moe, rest = moe_from_hf(items)
        return {**from_hf(rest, cfg, "llama"), **moe}
    table, transposed, ignored, prefix = TABLES[arch]
    out, unknown = {}, []
    for key, t in items:
        if arch in STRIPPED:
            key = key.removeprefix(STRIPPED[arch])
        elif not key.startswith((prefix, "lm_head.")):
            key = prefix + key  # bare-model checkpoints (GPT-2 on the Hub has "h.0...", no prefix)
        tmpl, layer = split_layer(key)
        if tmpl in ignored:
            continue
        if tmpl not in table:
            unknown.append(key)
            continue
        if tmpl in transposed:
            t = t.t()
        dst = table[tmpl]
        if isinstance(dst, tuple):
            for name, part in zip(dst, t.chunk(len(dst), dim=0)):
                out[fill(name, layer)] = part.contiguous()
        else:
            out[fill(dst, layer)] = t.contiguous()
    if unknown:
        raise unknown_keys_error(f"HF {arch} checkpoint", unknown, table)
    if cfg.tie_embeddings:
        out.pop("output.weight", None)  # tied checkpoints may still store the head; it is the embedding
    return out


def to_hf(sd: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """ember state dict → HF state dict (the inverse of `from_hf`; RoPE rows in HF order)."""
    arch = hf_arch(cfg)
    if arch == "mixtral":
        moe, rest = moe_to_hf(sd)
        return {**to_hf(rest, dataclasses.replace(cfg, moe=None, sliding_window=None, n_sink_tokens=0)), **moe}
    table, transposed, _, _ = TABLES[arch]
    out, used = {}, set()
    for tmpl, dst in table.items():
        for layer in range(cfg.n_layers) if "{}" in tmpl else [None]:
            names = [fill(d, layer) for d in (dst if isinstance(dst, tuple) else (dst,))]
            if not all(n in sd for n in names):
                continue  # e.g. biases of a bias-free model
            used.update(names)
            t = torch.cat([_rope_rows_for_hf(sd[n], n, cfg) for n in names], dim=0)
            if tmpl in transposed:
                t = t.t()
            out[fill(tmpl, layer)] = t.contiguous()
    if cfg.tie_embeddings:
        used.add("output.weight")
        out.pop("lm_head.weight", None)
    left = sorted(set(sd) - used)
    if left:
        raise ValueError(f"to_hf({arch}): ember tensors with no HF name: {left}")
    return out


def _rope_rows_for_hf(t: torch.Tensor, name: str, cfg: ModelConfig) -> torch.Tensor:
    kind = name.split(".")[-2]  # "layers.0.attention.wq.weight" → "wq"
    if not cfg.rope_interleaved or kind not in ("wq", "wk"):
        return t
    n_heads = cfg.n_heads if kind == "wq" else cfg.n_kv_heads
    return rope_rows_interleaved_to_half(t, n_heads)


# ---- folders --------------------------------------------------------------------------------


def load_hf(folder: str | Path, dtype: torch.dtype = torch.float32) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """Read config.json and every *.safetensors in `folder` → (ModelConfig, ember state dict).

    The config is checked against the tensor shapes in the safetensors headers before any
    tensor is read, so a config that claims more than the files hold fails at once.
    """
    folder = Path(folder)
    config_path = regular_file(folder / "config.json", "config.json file")
    if config_path.stat().st_size > MAX_CONFIG_BYTES:
        raise ValueError(f"{config_path} is {config_path.stat().st_size} bytes, more than a model config needs")
    try:
        d = json.loads(read_text_utf8(config_path))
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{config_path}: unreadable ({e})") from None
    cfg = config_from_hf(d, str(config_path))
    files = [regular_file(f, "safetensors file") for f in sorted(folder.glob("*.safetensors"))]
    if not files:
        raise ValueError(f"{folder}: no *.safetensors files beside config.json")
    weights_name = files[0].name if len(files) == 1 else f"the {len(files)} safetensors files"
    shapes = {k: t.shape for k, t in from_hf(_read_safetensors(files, None), cfg, d["model_type"]).items()}
    check_config_fits(cfg, shapes, config_name=str(config_path), weights_name=weights_name)
    return cfg, from_hf(_read_safetensors(files, dtype), cfg, d["model_type"])


def _read_safetensors(files: list[Path], dtype: torch.dtype | None):
    """(key, tensor) pairs, one tensor at a time (no second copy). dtype None: shapes only, as
    meta tensors built from the headers, with no tensor data read."""
    from safetensors import SafetensorError, safe_open

    for f in files:
        try:
            with safe_open(f, framework="pt") as h:
                for k in h.keys():
                    if dtype is None:
                        yield k, torch.empty(h.get_slice(k).get_shape(), device="meta")
                    else:
                        yield k, h.get_tensor(k).to(dtype)
        except SafetensorError as e:
            raise ValueError(f"{f}: corrupt safetensors file ({e})") from None


def save_hf(model, folder: str | Path) -> Path:
    """Write `model` as an HF folder (config.json + model.safetensors) transformers can load.

    >>> save_hf(Transformer(ModelConfig.tiny()), "out/tiny-hf")  # doctest: +SKIP
    """
    from safetensors.torch import save

    cfg, folder = model.config, Path(folder)
    dtype = next(model.parameters()).dtype
    hf_cfg = config_to_hf(cfg, dtype)  # first: an inexpressible config fails before any write
    sd = to_hf({k: v.detach().cpu() for k, v in model.state_dict().items()}, cfg)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(folder / "model.safetensors", save(sd, metadata={"format": "pt"}))
    atomic_write_json(folder / "config.json", hf_cfg)
    return folder
