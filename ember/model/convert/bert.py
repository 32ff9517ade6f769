"""Hugging Face BERT (BertModel, and the body of BertForMaskedLM) ↔ ember: the key table and
the config fields.

BERT is ember's Transformer with the encoder switches: bidirectional attention, learned
positions plus token-type embeddings, a LayerNorm on the embeddings, post-norm blocks and the
exact (erf) GELU. HF's names per layer: attention.self.{query,key,value}, attention.output.dense
(+ its LayerNorm, ember's attention_norm), intermediate.dense, output.dense (+ its LayerNorm,
ember's ffn_norm). `ember.model.convert.hf` drives the conversion with these tables.
"""

from __future__ import annotations

from collections.abc import Callable

from ember.model.config import ModelConfig
from ember.model.convert import with_bias

BERT_KEYS: dict[str, str] = {
    "embeddings.word_embeddings.weight": "tok_embeddings.weight",
    "embeddings.position_embeddings.weight": "pos_embeddings.weight",
    "embeddings.token_type_embeddings.weight": "type_embeddings.weight",
    **with_bias({
        "embeddings.LayerNorm": "embed_norm",
        "encoder.layer.{}.attention.self.query": "layers.{}.attention.wq",
        "encoder.layer.{}.attention.self.key": "layers.{}.attention.wk",
        "encoder.layer.{}.attention.self.value": "layers.{}.attention.wv",
        "encoder.layer.{}.attention.output.dense": "layers.{}.attention.wo",
        "encoder.layer.{}.attention.output.LayerNorm": "layers.{}.attention_norm",
        "encoder.layer.{}.intermediate.dense": "layers.{}.feed_forward.w1",
        "encoder.layer.{}.output.dense": "layers.{}.feed_forward.w2",
        "encoder.layer.{}.output.LayerNorm": "layers.{}.ffn_norm",
    }),
}
# Not the encoder body: the position-ids buffer older checkpoints save, the NSP pooler (which
# sentence-transformers does not use) and the pre-training heads of BertForPreTraining/MaskedLM.
_HEADS = ("pooler.dense", "cls.predictions.transform.dense", "cls.predictions.transform.LayerNorm",
          "cls.predictions.decoder", "cls.seq_relationship")
BERT_IGNORED = {
    "embeddings.position_ids", "cls.predictions.bias", *(f"{m}.{s}" for m in _HEADS for s in ("weight", "bias")),
}
# BertForMaskedLM & co. put the body under "bert."; BertModel saves it bare.
BERT_PREFIX = "bert."
# hidden_act → ember's mlp: "gelu" in HF BERT is the exact erf GELU
BERT_ACTS = {"gelu": "gelu_erf", "gelu_new": "gelu", "gelu_pytorch_tanh": "gelu"}


def bert_config(get: Callable) -> ModelConfig:
    """config.json fields → ModelConfig; `get(key, kind[, default])` reads one field, checked
    (it raises when a field without default is missing).

    >>> d = {"vocab_size": 99, "num_hidden_layers": 1, "hidden_size": 32, "num_attention_heads": 4,
    ...      "intermediate_size": 64, "max_position_embeddings": 40}
    >>> bert_config(lambda k, kind, *default: d.get(k, *default)).mlp
    'gelu_erf'
    """
    act = get("hidden_act", "string", "gelu")
    if act not in BERT_ACTS:
        raise ValueError(f"BERT hidden_act {act!r} is not supported; supported: {sorted(BERT_ACTS)}")
    if get("position_embedding_type", "string", "absolute") != "absolute":
        raise ValueError("BERT position_embedding_type other than 'absolute' is not supported")
    return ModelConfig(
        vocab_size=get("vocab_size", "positive int"), n_layers=get("num_hidden_layers", "positive int"),
        d_model=get("hidden_size", "positive int"), n_heads=get("num_attention_heads", "positive int"),
        d_ff=get("intermediate_size", "positive int"), max_seq_len=get("max_position_embeddings", "positive int", 512),
        norm="layernorm", norm_eps=get("layer_norm_eps", "positive number", 1e-12), pos_emb="learned",
        mlp=BERT_ACTS[act], bias=True, tie_embeddings=True, causal=False, norm_position="post",
        n_token_types=get("type_vocab_size", "positive int", 2), embed_norm=True,
    )


def is_bert(cfg: ModelConfig) -> bool:
    """Whether `cfg` has exactly BERT's switches (so it can be written as an HF BertModel)."""
    return (
        (cfg.norm, cfg.pos_emb, cfg.norm_position) == ("layernorm", "learned", "post")
        and cfg.mlp in ("gelu", "gelu_erf") and cfg.bias and not cfg.causal and cfg.embed_norm
        and cfg.n_token_types > 0 and cfg.n_kv_heads == cfg.n_heads and cfg.tie_embeddings
    )


def bert_config_to_hf(cfg: ModelConfig, dtype_name: str) -> dict:
    """ModelConfig (BERT switches) → the config.json of an HF BertModel."""
    act = next(hf for hf, ours in BERT_ACTS.items() if ours == cfg.mlp)
    return {
        "architectures": ["BertModel"], "model_type": "bert", "vocab_size": cfg.vocab_size,
        "num_hidden_layers": cfg.n_layers, "hidden_size": cfg.d_model, "num_attention_heads": cfg.n_heads,
        "intermediate_size": cfg.d_ff, "max_position_embeddings": cfg.max_seq_len, "layer_norm_eps": cfg.norm_eps,
        "hidden_act": act, "type_vocab_size": cfg.n_token_types, "position_embedding_type": "absolute",
        "pad_token_id": 0, "dtype": dtype_name,
    }
