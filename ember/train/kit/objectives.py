"""Pre-training objectives as parts for the one loop: `OBJECTIVES` maps `--objective` to a
builder that returns the model to train, its loss_fn, how token windows become a batch, and
its training FLOPs per token. `build_pretrain` looks the objective up here and nothing else
changes: the loader, the Trainer, checkpoints and metrics are the same for every objective.

- clm: next-token prediction on a decoder (the default; `(x, y)` windows, `lm_loss`);
- mlm, electra, plm: the encoder objectives of ember.train.objectives on a bidirectional
  model (an arch with causal=False, e.g. mini-bert); they read the windows' first T tokens;
- span, denoise: T5's span corruption and BART's denoising (ember.train.seq2seq) on an
  EncoderDecoder of the arch's shape (a causal arch, e.g. mini-t5), over the clm shards.

>>> sorted(OBJECTIVES)
['clm', 'denoise', 'electra', 'mlm', 'plm', 'span']
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from ember.model.config import ModelConfig
from ember.model.moe import with_router_losses
from ember.model.transformer import Transformer
from ember.train.losses import lm_loss
from ember.train.metrics import flops_per_token


@dataclass
class ObjectiveConfig:
    """Options of the encoder objectives (mlm, electra, plm); clm ignores them."""

    mask_rate: float = 0.15
    """mlm/electra: share of tokens chosen for prediction (BERT: 0.15)"""
    whole_word: bool = False
    """mlm/electra: choose whole words (a token that starts with whitespace begins one)"""
    disc_weight: float = 50.0
    """electra: λ, the discriminator loss weight (Clark et al. 2020 use 50)"""
    generator_layers: int = 1
    """electra: generator depth (at most the discriminator's n_layers)"""
    tie_generator: bool = True
    """electra: share token and position embeddings between generator and discriminator"""
    plm_k: float = 6.0
    """plm: predict the last 1/K of each factorisation order (XLNet: 6 or 7)"""


@dataclass
class ObjectiveParts:
    """What the loop needs from an objective. collate(x, y, step) → this rank's batch for the
    step (pure: a seeded generator per step); model is what the Trainer optimises, and
    `encoder_body(model)` the network kept."""

    model: nn.Module
    loss_fn: Callable[[nn.Module, Any], tuple[torch.Tensor, dict]]
    collate: Callable[[torch.Tensor, torch.Tensor, int], Any]
    flops_per_token: float


def step_generator(seed: int, step: int, rank: int) -> torch.Generator:
    """A torch.Generator seeded by (seed, step, rank): the batch of a step is a pure function.
    Each rank masks its own rows, so the masks of a run depend on its world size.

    >>> torch.equal(torch.rand(2, generator=step_generator(0, 5, 0)), torch.rand(2, generator=step_generator(0, 5, 0)))
    True
    """
    state = np.random.SeedSequence([seed, step, rank]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def encoder_flops(cfg: ModelConfig, T: int, head_share: float, extra: int = 0) -> float:
    """Training FLOPs per window token of an encoder whose LM head runs at `head_share` of
    the positions (MLM: the masked 15%) and whose forward holds `extra` more rows than the
    window's T (XLNet's query stream): 6·N·R + 12·L·R²·D/T + 6·V·D·head_share, R = T + extra
    rows (flops_per_token's count, with the head and the rows as computed).

    >>> cfg = ModelConfig.tiny(causal=False)
    >>> encoder_flops(cfg, 64, 1.0) == flops_per_token(cfg, 64) > encoder_flops(cfg, 64, 0.15)
    True
    """
    from ember.train.metrics import non_embedding_params

    rows = (T + extra) / T
    return (6 * non_embedding_params(cfg) * rows + 12 * cfg.n_layers * (T + extra) * cfg.d_model * rows
            + 6 * cfg.vocab_size * cfg.d_model * head_share)


def _needs_encoder(name: str, cfg: ModelConfig) -> None:
    if cfg.causal:
        raise ValueError(f"objective {name!r} trains an encoder, but the model is causal: pass --arch mini-bert "
                         f"(or another arch with causal=False, or --model.causal false)")


def _masked(tok, ocfg: ObjectiveConfig, **kw):
    from ember.data.objectives import MaskedLM, mask_token_id, special_ids, word_start_table

    return MaskedLM(mask_id=mask_token_id(tok), vocab_size=tok.vocab_size, rate=ocfg.mask_rate,
                    special_ids=special_ids(tok), whole_word=ocfg.whole_word,
                    word_start=word_start_table(tok) if ocfg.whole_word else None, **kw)


def _encoder_collate(collator, seed: int, rank: int):
    def collate(x, y, step):
        return collator(x.cpu(), step_generator(seed, step, rank))

    return collate


def _clm(mcfg, tok, ocfg, seed, rank, T) -> ObjectiveParts:
    loss_fn = lm_loss if mcfg.moe is None else with_router_losses(lm_loss)  # MoE: + router losses
    return ObjectiveParts(Transformer(mcfg), loss_fn, lambda x, y, step: (x, y), flops_per_token(mcfg, T))


def _mlm(mcfg, tok, ocfg, seed, rank, T) -> ObjectiveParts:
    from ember.train.objectives import mlm_loss

    _needs_encoder("mlm", mcfg)
    collator = _masked(tok, ocfg)
    return ObjectiveParts(Transformer(mcfg), mlm_loss, _encoder_collate(collator, seed, rank),
                          encoder_flops(mcfg, T, ocfg.mask_rate))


def _electra(mcfg, tok, ocfg, seed, rank, T) -> ObjectiveParts:
    from ember.train.objectives import Electra, electra_loss

    _needs_encoder("electra", mcfg)
    # ELECTRA's released code masks 85% of the chosen tokens and keeps 15%, with no random ones
    collator = _masked(tok, ocfg, mask_frac=0.85, random_frac=0.0)
    model = Electra(mcfg, ocfg.generator_layers, ocfg.tie_generator)
    gen_cfg = model.generator.config
    # the generator with its head at the masked positions, the discriminator with a scalar head
    flops = encoder_flops(gen_cfg, T, ocfg.mask_rate) + encoder_flops(mcfg, T, 1 / mcfg.vocab_size)

    def loss_fn(m, batch):
        return electra_loss(m, batch, ocfg.disc_weight)

    return ObjectiveParts(model, loss_fn, _encoder_collate(collator, seed, rank), flops)


def _plm(mcfg, tok, ocfg, seed, rank, T) -> ObjectiveParts:
    from ember.data.objectives import PermutationLM
    from ember.train.objectives import TwoStream, plm_loss

    _needs_encoder("plm", mcfg)
    collator = PermutationLM(k=ocfg.plm_k)
    n = collator.n_targets(T)
    # T content rows and n query rows; the head runs on the n query rows
    flops = encoder_flops(mcfg, T, n / T, extra=n)
    return ObjectiveParts(TwoStream(Transformer(mcfg)), plm_loss, _encoder_collate(collator, seed, rank), flops)


def _seq2seq(objective: str) -> Callable[..., ObjectiveParts]:
    def build(mcfg, tok, ocfg, seed, rank, T) -> ObjectiveParts:
        from ember.train.seq2seq import build_seq2seq, seq2seq_loss

        # the model's vocabulary is the tokenizer's + the objective's extra ids (sentinels, mask)
        model, collator, flops = build_seq2seq(objective, mcfg, tok, T)
        return ObjectiveParts(model, seq2seq_loss, _encoder_collate(collator, seed, rank), flops)

    return build


# --objective → builder(model config, tokenizer, ObjectiveConfig, seed, rank, T) → ObjectiveParts.
OBJECTIVES: dict[str, Callable[..., ObjectiveParts]] = {
    "clm": _clm, "mlm": _mlm, "electra": _electra, "plm": _plm,
    "span": _seq2seq("span"), "denoise": _seq2seq("denoise"),
}
# The special tokens of the BPE that `ember pretrain` trains for each objective (default: clm's).
OBJECTIVE_SPECIALS: dict[str, list[str]] = {
    "mlm": ["<|endoftext|>", "[MASK]"], "electra": ["<|endoftext|>", "[MASK]"], "plm": ["<|endoftext|>", "[MASK]"],
}


def extra_rows(objective: str, ocfg: ObjectiveConfig, T: int) -> int:
    """Attention rows beyond the window that the objective's forward holds (the model's
    max_seq_len must cover T + this)."""
    if objective == "plm":
        from ember.data.objectives import PermutationLM

        return PermutationLM(k=ocfg.plm_k).n_targets(T)
    if objective in ("span", "denoise"):  # EOS, and the masks BART's 0-length spans insert
        from ember.train.seq2seq import extra_positions

        return extra_positions(objective, T)
    return 0


def build_objective(objective: str, mcfg: ModelConfig, tok, ocfg: ObjectiveConfig, seed: int, rank: int,
                    T: int) -> ObjectiveParts:
    """The parts of `objective`; an unknown name lists the valid ones."""
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; valid objectives: {sorted(OBJECTIVES)}")
    return OBJECTIVES[objective](mcfg, tok, ocfg, seed, rank, T)


def evaluate_objective(parts: ObjectiveParts, model: nn.Module, windows, device) -> dict:
    """Mean loss (and metrics) over validation windows (x, y), as val_loss, val_<metric>.
    Window i is masked as step 10⁹ + i (a step no run reaches) and the global RNG is fixed
    inside (ELECTRA samples from it): the same model always scores the same."""
    sums: dict[str, float] = {}
    n = 0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        for i, (x, y) in enumerate(windows):
            loss, metrics = parts.loss_fn(model, to_device(parts.collate(x, y, 10**9 + i), device))
            for k, v in {"loss": loss, **metrics}.items():
                sums[k] = sums.get(k, 0.0) + float(v) * len(x)
            n += len(x)
    return {f"val_{k}": v / n for k, v in sums.items()}


def to_device(batch, device):
    """A batch (a dict or tuple of tensors) on `device`."""
    if isinstance(batch, dict):
        return {k: v.to(device) for k, v in batch.items()}
    return tuple(t.to(device) for t in batch)


def body_state_dict(sd: dict) -> dict:
    """The kept encoder's tensors from a training state dict: ELECTRA's discriminator and
    XLNet's content stream are `body.*` (the generator, heads and w are dropped); a plain
    model's state dict comes back as it is.

    >>> sorted(body_state_dict({"body.norm.weight": 1, "generator.norm.weight": 2}))
    ['norm.weight']
    """
    if not any(k.startswith("body.") for k in sd):
        return sd
    return {k.removeprefix("body."): v for k, v in sd.items() if k.startswith("body.")}
