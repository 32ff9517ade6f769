"""`ember classify`: fine-tune a pre-trained encoder on a labelled task, on the one loop.

The recipe of BERT (Devlin et al. 2019 §4): adapt the foundation model by adding one small
task-specific layer, a Linear(D, n_classes) on the pooled output ([CLS], here the document
separator that starts every row, or the mean over real tokens), and train everything (or,
with --freeze, the layer alone: a linear probe). The task is ember.data.probe's word-swap
probe; the encoder comes from an `ember pretrain --objective mlm|electra|plm` run, or the
same shape freshly initialised (--init random), the no-pre-training baseline.

    ember pretrain --arch mini-bert --objective electra --train.out runs/electra
    ember classify --run runs/electra
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ember.data.probe import ProbeRow
from ember.model.heads import POOLINGS, hidden_states
from ember.model.transformer import Transformer
from ember.train.config import TrainConfig
from ember.train.optim import OptimConfig

__all__ = ["Classifier", "Config", "classification_loss", "encode_rows", "fine_tune", "main"]


@dataclass
class Config:
    """Fine-tune an encoder with a classification head on the word-swap probe."""

    run: str = "runs/pretrain"
    """the pre-training run folder whose encoder (and tokenizer) to fine-tune"""
    init: Literal["pretrained", "random"] = "pretrained"
    """pretrained: the run's weights; random: the same shape freshly initialised (a baseline)"""
    pooling: Literal["cls", "mean"] = "mean"
    """what the head reads: the first token's state, or the mean over real tokens"""
    freeze: bool = False
    """train the head alone (a linear probe) instead of the whole encoder"""
    n_test: int = 1000
    """probe rows held out for the accuracy"""
    max_tokens: int = 48
    """longest row in tokens (longer sentences are cut)"""
    probe_seed: int = 0
    """seed of the probe's coin flips and swaps"""
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        steps=300, batch_size=32, eval_every=100, sample_every=0, save_every=0, out="runs/classify"))
    """how long and how to train"""
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-4, warmup_steps=30))
    """optimizer and learning-rate schedule"""


class Classifier(nn.Module):
    """An encoder body and a Linear(D, n_classes) on its pooled states: ids (B, T) and
    attention_mask (B, T) → logits (B, n_classes).

    >>> from ember.model import ModelConfig, Transformer
    >>> clf = Classifier(Transformer(ModelConfig.tiny(causal=False)), 2)
    >>> clf(torch.zeros(3, 5, dtype=torch.long), torch.ones(3, 5)).shape
    torch.Size([3, 2])
    """

    def __init__(self, body: nn.Module, n_classes: int, pooling: str = "mean"):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; valid poolings: {sorted(POOLINGS)}")
        self.body, self.pooling = body, pooling
        self.head = nn.Linear(body.config.d_model, n_classes)
        nn.init.normal_(self.head.weight, std=0.02)  # BERT's initializer_range
        nn.init.zeros_(self.head.bias)

    @property
    def config(self):
        return self.body.config

    def forward(self, ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = hidden_states(self.body, ids, attention_mask)  # (B, T, D)
        return self.head(POOLINGS[self.pooling](h, attention_mask).to(self.head.weight.dtype))  # (B, C)


def classification_loss(model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
    """Mean cross-entropy of the labels (B,) under the classifier's logits, in fp32
    (Devlin et al. 2019 §4.1: log softmax of C·Wᵀ). Metrics: accuracy.

    >>> class Fixed(nn.Module):
    ...     def forward(self, ids, attention_mask): return torch.tensor([[2.0, 0.0]])
    >>> b = {"input_ids": torch.zeros(1, 2), "attention_mask": torch.ones(1, 2), "labels": torch.tensor([0])}
    >>> round(classification_loss(Fixed(), b)[0].item(), 4)
    0.1269
    """
    logits = model(batch["input_ids"], batch["attention_mask"]).float()  # (B, C)
    loss = F.cross_entropy(logits, batch["labels"])
    with torch.no_grad():
        acc = (logits.argmax(-1) == batch["labels"]).float().mean()
    return loss, {"accuracy": acc}


def encode_rows(tok, rows: list[ProbeRow], max_tokens: int) -> dict[str, torch.Tensor]:
    """Rows → input_ids and attention_mask (N, L) right-padded, labels (N,). Each row starts
    with the tokenizer's document separator, the token `--pooling cls` reads (BERT's [CLS]),
    and is cut to max_tokens.

    >>> from ember.tokenizer import train_bpe
    >>> tok = train_bpe(["a b"], 258, special_tokens=["<|endoftext|>"], eos_tokens=["<|endoftext|>"])
    >>> encode_rows(tok, [ProbeRow("a b", 1), ProbeRow("a", 0)], 8)["attention_mask"].tolist()
    [[True, True, True], [True, True, False]]
    """
    if not tok.eos_token_ids:
        raise ValueError("the tokenizer has no document separator (eos token) to start rows with")
    sep = min(tok.eos_token_ids)
    seqs = [([sep] + tok.encode(r.text))[:max_tokens] for r in rows]
    L = max(map(len, seqs))
    ids = torch.full((len(seqs), L), sep, dtype=torch.long)
    mask = torch.zeros(len(seqs), L, dtype=torch.bool)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = True
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([r.label for r in rows])}


def fine_tune(body: nn.Module, tok, train_rows: list[ProbeRow], test_rows: list[ProbeRow], cfg: Config) -> dict:
    """Train a Classifier on train_rows with the loop; its summary has the test rows' val_loss
    and val_accuracy. `body` is not modified (a copy is trained)."""
    from ember.train.loop import Trainer

    n_classes = 1 + max(r.label for r in [*train_rows, *test_rows])
    torch.manual_seed(cfg.train.seed)
    # random: the shape alone, with the Transformer's own init
    body = Transformer(body.config) if cfg.init == "random" else copy.deepcopy(body)
    model = Classifier(body, n_classes, cfg.pooling)
    if cfg.freeze:
        model.body.requires_grad_(False)
    data, test = encode_rows(tok, train_rows, cfg.max_tokens), encode_rows(tok, test_rows, cfg.max_tokens)

    def batches(step):
        rows = np.random.default_rng([cfg.train.seed, step]).integers(0, len(train_rows), cfg.train.batch_size)
        return {k: v[torch.from_numpy(rows)] for k, v in data.items()}

    def evaluate(m) -> dict:
        sums, n = {"val_loss": 0.0, "val_accuracy": 0.0}, len(test_rows)
        for i in range(0, n, 64):
            loss, metrics = classification_loss(m, {k: v[i : i + 64] for k, v in test.items()})
            k = len(test["labels"][i : i + 64])
            sums["val_loss"] += loss.item() * k / n
            sums["val_accuracy"] += float(metrics["accuracy"]) * k / n
        return sums

    run_config = {"classify": {k: str(v) for k, v in vars(cfg).items()}, "model": model.config.to_dict()}
    trainer = Trainer(model, cfg.train, cfg.optim, classification_loss, batches, run_config, eval_fn=evaluate,
                      tokens_per_step=cfg.train.batch_size * data["input_ids"].shape[1], save_trainable_only=cfg.freeze)
    return trainer.fit()


def main(cfg: Config) -> dict:
    from ember.data.corpus import bundled_documents
    from ember.data.probe import corpus_sentences, probe_split, word_swap_rows
    from ember.train.kit.pretraining import load_run

    body, tok = load_run(cfg.run)
    if body.config.causal:
        raise ValueError(f"{cfg.run} holds a causal model; classify fine-tunes an encoder "
                         f"(ember pretrain --arch mini-bert --objective mlm|electra|plm)")
    rows = word_swap_rows(corpus_sentences(bundled_documents()), cfg.probe_seed)
    train_rows, test_rows = probe_split(rows, cfg.n_test)
    return fine_tune(body, tok, train_rows, test_rows, cfg)
