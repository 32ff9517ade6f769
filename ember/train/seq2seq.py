"""Encoder-decoder pre-training: T5's span corruption ("span") and BART's denoising
("denoise"), as parts for the one loop.

`build_seq2seq` gives the model, the collator (ember.data.corruption: token windows + a
seeded generator → a batch) and the training FLOPs per token; `seq2seq_loss` is the loss.
`ember pretrain --objective span|denoise` runs them on the same shards, loaders, Trainer
and checkpoints as every other objective.

Ids: the model's vocabulary is the tokenizer's plus extra ids on top (`EXTRA_IDS`), as T5's
vocabulary adds its 100 <extra_id_i> to the 32,000 SentencePiece pieces. Span corruption's
sentinels are those ids counting down (<extra_id_i> = V − 1 − i); BART's mask is the top
id. EOS is the tokenizer's end-of-text id and also starts the decoder input (BART's
decoder_start_token_id is its </s>; T5 starts from its pad). Pads are never read: the
encoder masks them and the labels ignore them. The clm shards serve as they are.

>>> from ember.model import ModelConfig
>>> from ember.data.corruption import SpanCorruption
>>> model = EncoderDecoder(ModelConfig.tiny())
>>> batch = SpanCorruption((255, 254, 253), eos_id=1)(torch.randint(2, 250, (2, 20)), torch.Generator())
>>> seq2seq_loss(model, batch)[0].item() > 0
True
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn as nn

from ember.data.corruption import Denoising, SpanCorruption, noise_span_counts, sentinel_ids
from ember.data.sft import IGNORE
from ember.model.config import ModelConfig
from ember.model.seq2seq import EncoderDecoder
from ember.train.losses import cross_entropy
from ember.train.metrics import non_embedding_params

__all__ = ["EXTRA_IDS", "build_collator", "build_seq2seq", "extra_positions", "seq2seq_flops_per_token",
           "seq2seq_loss"]

# ids above the tokenizer's: T5's 100 sentinels (spans of a window up to ~2,000 tokens); BART's one mask
EXTRA_IDS = {"span": 100, "denoise": 1}


def seq2seq_loss(model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
    """Mean −log p(y_t | y_<t, x) over the target tokens, in fp32: the likelihood objective
    of T5 (Raffel et al. 2020 §3.1.4, on the dropped-out spans) and BART (Lewis et al. 2020
    §2.2, "the negative log likelihood of the original document"). Metrics: token_acc,
    the share of target tokens predicted exactly (argmax)."""
    src_mask = batch["attention_mask"]
    if bool(src_mask.all()):
        src_mask = None  # no padded row: SDPA's unmasked (faster) path
    # Targets are right-padded, so causality alone keeps every real position off the pads;
    # the pads' own rows are ignored by the labels. No decoder mask needed.
    logits = model(batch["input_ids"], batch["decoder_input_ids"], src_mask)  # (B, L, V)
    labels = batch["labels"]
    loss = cross_entropy(logits, labels)
    with torch.no_grad():
        real = labels != IGNORE
        acc = (logits.argmax(-1)[real] == labels[real]).float().mean()
    return loss, {"token_acc": acc}


def build_collator(objective: str, tok, vocab_size: int):
    """The collator of an objective for a model of `vocab_size` ≥ tokenizer + EXTRA_IDS ids.

    Denoising permutes sentences at ids whose text ends with . ! or ? (a byte-level BPE has
    no sentence splitter; fairseq splits at its full-stop id the same way)."""
    if objective not in EXTRA_IDS:
        raise ValueError(f"unknown seq2seq objective {objective!r}; choose one of {sorted(EXTRA_IDS)}")
    if not tok.eos_token_ids:
        raise ValueError("seq2seq objectives need a tokenizer with an end-of-text token")
    n = EXTRA_IDS[objective]
    if vocab_size < tok.vocab_size + n:
        raise ValueError(f"vocab_size {vocab_size} leaves no room for {n} extra ids above the tokenizer's "
                         f"{tok.vocab_size}")
    eos = min(tok.eos_token_ids)
    ids = dict(eos_id=eos, pad_id=eos, start_id=eos)
    if objective == "span":
        return SpanCorruption(tuple(sentinel_ids(vocab_size, n)), **ids)
    ends = tuple(i for i, b in tok.vocab.items() if b.rstrip().endswith((b".", b"!", b"?")))
    return Denoising(mask_id=vocab_size - 1, sentence_end_ids=ends, **ids)


def extra_positions(objective: str, T: int) -> int:
    """Positions beyond a T-token window that a source or target may need: EOS, and BART's
    inputs grow by the masks its 0-length spans insert (e^-3 ≈ 5% of its spans; T / 2 is ample)."""
    return T // 2 + 2 if objective == "denoise" else 1


def build_seq2seq(objective: str, mcfg: ModelConfig, tok, T: int):
    """(model, collator, training FLOPs per window token) of an objective; mcfg's vocab_size
    (the tokenizer's) grows by EXTRA_IDS[objective], its shape gives both stacks."""
    if objective not in EXTRA_IDS:
        raise ValueError(f"unknown seq2seq objective {objective!r}; choose one of {sorted(EXTRA_IDS)}")
    if mcfg.max_seq_len < T + extra_positions(objective, T):
        raise ValueError(f"max_seq_len {mcfg.max_seq_len} is too short for {objective} on {T}-token windows: "
                         f"it needs {T + extra_positions(objective, T)}")
    mcfg = dataclasses.replace(mcfg, vocab_size=tok.vocab_size + EXTRA_IDS[objective])
    model = EncoderDecoder(mcfg)
    collator = build_collator(objective, tok, mcfg.vocab_size)
    if objective == "span":
        noise, spans = noise_span_counts(T, collator.noise_density, collator.mean_noise_span_length)
        src, tgt = T - noise + spans + 1, noise + spans + 1
    else:
        masked = math.ceil(T * collator.mask_ratio)
        src, tgt = T - masked + round(masked / collator.poisson_lambda) + 1, T + 1
    return model, collator, seq2seq_flops_per_token(mcfg, src, tgt, T)


def seq2seq_flops_per_token(cfg: ModelConfig, src_len: int, tgt_len: int, T: int) -> float:
    """Training FLOPs per window token (6 per weight per token, PaLM appendix B's attention
    term) when a T-token window becomes src_len encoder and tgt_len decoder tokens: the
    encoder's blocks on the source; the decoder's blocks, cross-attention and head on the target."""
    blocks = non_embedding_params(cfg)  # one stack of n_layers blocks (+ a final norm)
    kv = cfg.n_kv_heads * cfg.head_dim
    cross = cfg.n_layers * 2 * (cfg.d_model * cfg.d_model + cfg.d_model * kv)  # wq, wo; wk, wv
    enc = src_len * (6 * blocks + 12 * cfg.n_layers * src_len * cfg.d_model)
    dec = tgt_len * (6 * (blocks + cross + cfg.vocab_size * cfg.d_model)
                     + 12 * cfg.n_layers * (tgt_len + src_len) * cfg.d_model)
    return (enc + dec) / T
