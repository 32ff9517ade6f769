"""Encoder-decoder pre-training on the one loop: T5's span corruption ("span") and BART's
denoising ("denoise").

Token windows from the same shards and loaders as `ember pretrain` go through a collator of
ember.data.corruption (seeded by (seed, step, rank), so `batches(step)` stays pure and a
resumed run repeats the uninterrupted one) into an EncoderDecoder; the loss is the
cross-entropy of the target given the source (`seq2seq_loss`).

Ids: the model's vocabulary is the tokenizer's plus N_EXTRA ids on top. Span corruption's
sentinels are the top N_EXTRA ids counting down (T5's <extra_id_i> = V − 1 − i); BART's
mask is the top id. EOS is the tokenizer's end-of-text id and also starts the decoder
input (BART's decoder_start_token_id is its </s>; T5 starts from its pad). Pads are never
read: the encoder masks them and the labels ignore them.

>>> from ember.model import ModelConfig
>>> from ember.data.corruption import SpanCorruption
>>> model = EncoderDecoder(ModelConfig.tiny())
>>> batch = SpanCorruption((255, 254, 253), eos_id=1)(torch.randint(2, 250, (2, 20)), torch.Generator())
>>> seq2seq_loss(model, batch)[0].item() > 0
True
"""

from __future__ import annotations

import sys

import numpy as np
import torch
import torch.nn as nn

from ember.data.corruption import Denoising, SpanCorruption, sentinel_ids
from ember.data.sft import IGNORE
from ember.model.seq2seq import EncoderDecoder
from ember.parallel import DistInfo, init_distributed
from ember.train.kit.pretraining import PretrainConfig, model_config, prepare_data
from ember.train.loop import Trainer, broadcast_config
from ember.train.losses import cross_entropy
from ember.train.metrics import non_embedding_params

__all__ = ["N_EXTRA", "OBJECTIVES", "build_collator", "build_seq2seq", "seq2seq_batches", "seq2seq_loss",
           "train_seq2seq"]

OBJECTIVES = ("span", "denoise")
N_EXTRA = 100  # T5's extra_ids: sentinels for up to 100 spans (a window of ~2,000 tokens)


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
    """The collator of an objective for a model of `vocab_size` = tokenizer + N_EXTRA ids.

    Denoising permutes sentences at ids whose text ends with . ! or ? (a byte-level BPE has
    no sentence splitter; fairseq splits at its full-stop id the same way)."""
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown seq2seq objective {objective!r}; choose one of {list(OBJECTIVES)}")
    if not tok.eos_token_ids:
        raise ValueError("seq2seq objectives need a tokenizer with an end-of-text token")
    if vocab_size < tok.vocab_size + N_EXTRA:
        raise ValueError(f"vocab_size {vocab_size} leaves no room for {N_EXTRA} extra ids above the tokenizer's "
                         f"{tok.vocab_size}")
    eos = min(tok.eos_token_ids)
    ids = dict(eos_id=eos, pad_id=eos, start_id=eos)
    if objective == "span":
        return SpanCorruption(tuple(sentinel_ids(vocab_size, N_EXTRA)), **ids)
    ends = tuple(i for i, b in tok.vocab.items() if b.rstrip().endswith((b".", b"!", b"?")))
    return Denoising(mask_id=vocab_size - 1, sentence_end_ids=ends, **ids)


def seq2seq_batches(loader, collate, seed: int, rank: int, device):
    """batches(step) for the loop: the loader's windows for `step`, corrupted with a generator
    seeded by (seed, step, rank) alone, on `device`."""

    def batches(step: int) -> dict:
        x, _ = loader.batch(step)
        rng = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, step, rank]).generate_state(1)[0]))
        return {k: v.to(device) for k, v in collate(x, rng).items()}

    return batches


def build_seq2seq(cfg: PretrainConfig, objective: str, info: DistInfo | None = None) -> Trainer:
    """The Trainer of `ember pretrain --objective span|denoise`: shards, an EncoderDecoder of
    cfg.arch's shape (n_layers encoder + n_layers decoder blocks), collator, loss, eval."""
    from ember.data.loader import build_loader, eval_windows
    from ember.data.shards import open_split
    from ember.tokenizer import load_tokenizer

    info = info or init_distributed(cfg.train.device)
    folder = prepare_data(cfg.data, info, cfg.train.progress)
    tok = load_tokenizer(folder / "tokenizer")
    T = cfg.data.seq_len
    # BART's inputs grow by the masks its 0-length spans insert; T / 2 of room is ample
    mcfg = model_config(cfg.arch, cfg.model, tok.vocab_size + N_EXTRA, T + T // 2 + 2)
    collate = build_collator(objective, tok, mcfg.vocab_size)
    loader = build_loader(cfg.data.loader, open_split(folder, "train"), T, cfg.train.batch_size, cfg.train.seed,
                          info.rank, info.world_size)
    val_split = open_split(folder, "val")
    eval_windows(val_split, T, 1)  # a val split too short for one window fails now

    def evaluate(model) -> dict:  # the same windows, corrupted alike, every time
        rng, total, n = torch.Generator().manual_seed(cfg.train.seed), 0.0, 0
        for x, _ in eval_windows(val_split, T, cfg.train.eval_windows, batch_size=8):
            batch = {k: v.to(info.device) for k, v in collate(x, rng).items()}
            total += seq2seq_loss(model, batch)[0].item() * len(x)
            n += len(x)
        return {"val_loss": total / n}

    torch.manual_seed(cfg.train.seed)  # same init on every rank
    model = EncoderDecoder(mcfg)
    run_config = dict(_asdict(cfg), objective=objective, model=mcfg.to_dict())
    run_config["data"]["dir"] = str(folder)
    run_config = broadcast_config(run_config, info)
    if info.is_main:
        n = 2 * non_embedding_params(mcfg)  # about: the decoder's cross-attention adds more
        print(f"model: encoder-decoder {cfg.arch} ({objective}), ~{n / 1e6:.2f} M non-embedding parameters, "
              f"vocab {mcfg.vocab_size} ({N_EXTRA} extra ids)", file=sys.stderr)
    trainer = Trainer(model, cfg.train, cfg.optim, seq2seq_loss,
                      seq2seq_batches(loader, collate, cfg.train.seed, info.rank, info.device), run_config,
                      eval_fn=evaluate, tokens_per_step=cfg.train.batch_size * T, info=info)
    trainer.tokenizer = tok
    return trainer


def train_seq2seq(cfg: PretrainConfig, objective: str) -> dict:
    """Build and run: the summary of the run (losses, steps, where the checkpoints are)."""
    return build_seq2seq(cfg, objective).fit()


def _asdict(cfg) -> dict:
    import dataclasses

    return dataclasses.asdict(cfg)
