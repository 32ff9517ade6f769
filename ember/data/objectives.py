"""Batches for the encoder pre-training objectives: one collator interface for all of them.

A collator turns token windows ids (B, T) and a seeded `torch.Generator` into a dict of
tensors. Every collator returns "input_ids" (B, T), what the model reads, and "labels"
(B, T), the token to predict at each position or IGNORE (−100) where there is no loss;
objectives add their own keys (documented on each class). Collators are pure: the same ids
and generator state give the same batch, so a pre-training step's batch depends on (seed,
step) alone and a resumed run repeats the uninterrupted one.

- `MaskedLM`: BERT (Devlin et al. 2019 §3.1): 15% of positions, of which 80% become
  [MASK], 10% a random token, 10% stay; whole-word masking as an option.
- `replace_tokens`: ELECTRA's corruption (Clark et al. 2020 §2): the generator's samples go
  in at the masked positions; the discriminator's labels are corrupted ≠ original.
- `PermutationLM`: XLNet (Yang et al. 2019 §2.3–2.4): a sampled factorisation order,
  two-stream attention masks, and partial prediction of the order's last 1/K.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

import torch

from ember.data.sft import IGNORE

__all__ = ["IGNORE", "Collator", "MaskedLM", "PermutationLM", "mask_token_id", "originals", "replace_tokens",
           "special_ids", "word_start_table"]


class Collator(Protocol):
    def __call__(self, ids: torch.Tensor, rng: torch.Generator) -> dict[str, torch.Tensor]: ...


def word_start_table(tok) -> torch.Tensor:
    """(V,) bool: which ids start a word. Byte-level BPE puts a word's leading space inside
    its first token (GPT-2's "Ġ"), so a token that starts with whitespace starts a word.

    >>> from ember.tokenizer import train_bpe
    >>> tok = train_bpe(["a cat, a cab"], 259, pattern="gpt2")
    >>> table = word_start_table(tok)
    >>> [(tok.decode([i]), bool(table[i])) for i in tok.encode("a cat")]
    [('a', False), (' ca', True), ('t', False)]
    """
    table = torch.zeros(tok.vocab_size, dtype=torch.bool)
    for i, b in tok.vocab.items():  # ordinary tokens only: special tokens are never masked
        table[i] = b[:1] in (b" ", b"\n", b"\t", b"\r")
    return table


def _check_fraction(name: str, v: float) -> None:
    if isinstance(v, bool) or not isinstance(v, int | float) or not 0.0 <= v <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1], got {v!r}")


def _word_starts(ids: torch.Tensor, eligible: torch.Tensor, table: torch.Tensor | None,
                 word_ids: torch.Tensor | None) -> torch.Tensor:
    """(B, T) bool: positions that begin a word. Position 0 and every token after one that
    may not be masked (a separator) begin one too, so a word never spans a special token."""
    after_special = torch.ones_like(eligible)
    after_special[:, 1:] = ~eligible[:, :-1]
    if word_ids is not None:
        if word_ids.shape != ids.shape:
            raise ValueError(f"word_ids {tuple(word_ids.shape)} do not match ids {tuple(ids.shape)}")
        changed = torch.ones_like(eligible)
        changed[:, 1:] = word_ids[:, 1:] != word_ids[:, :-1]
        return changed | after_special
    if table is None:
        raise ValueError("whole-word masking needs word_start (from word_start_table) or word_ids")
    return table.to(ids.device)[ids.clamp(max=len(table) - 1)] | after_special


@dataclass(frozen=True)
class MaskedLM:
    """BERT's masked LM (Devlin et al. 2019 §3.1, appendix A.1). Each eligible position (not
    a special token, not padding) is chosen with probability `rate`; a chosen one becomes
    mask_id with probability mask_frac, a uniformly random id with random_frac, and stays
    otherwise. labels hold the original at chosen positions. A row with eligible positions
    but no draw gets its lowest-scoring one, so no batch is without a loss (at T = 128 this
    happens with probability 0.85¹²⁸ ≈ 1e-9). whole_word: words are chosen, not tokens (all
    tokens of a chosen word are masked), word starts from `word_start` (word_start_table) or
    the word_ids passed to the call. ELECTRA's generator input: mask_frac 0.85, random_frac 0
    (its released code keeps 15% of the chosen tokens unchanged and draws no random ones).

    Keys: input_ids, labels, attention_mask (B, T) bool, True = a real token.

    >>> mlm = MaskedLM(mask_id=3, vocab_size=10, special_ids=(0,))
    >>> b = mlm(torch.tensor([[0, 5, 6, 7, 8, 9, 5, 6]]), torch.Generator().manual_seed(0))
    >>> sorted(b), int((b["labels"] != IGNORE).sum()) >= 1
    (['attention_mask', 'input_ids', 'labels'], True)
    """

    mask_id: int
    vocab_size: int
    rate: float = 0.15
    mask_frac: float = 0.8
    random_frac: float = 0.1
    special_ids: tuple[int, ...] = ()
    pad_id: int | None = None
    whole_word: bool = False
    word_start: torch.Tensor | None = None

    def __post_init__(self):
        for name in ("rate", "mask_frac", "random_frac"):
            _check_fraction(name, getattr(self, name))
        if self.mask_frac + self.random_frac > 1.0:
            raise ValueError(f"mask_frac + random_frac must be <= 1, got {self.mask_frac} + {self.random_frac}")
        if not 0 <= self.mask_id < self.vocab_size:
            raise ValueError(f"mask_id {self.mask_id} is outside the vocabulary 0..{self.vocab_size - 1}")

    def eligible(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, T) bool: positions that may be masked (not special, not padding)."""
        blocked = list(self.special_ids) + ([self.pad_id] if self.pad_id is not None else []) + [self.mask_id]
        return ~torch.isin(ids, torch.tensor(blocked, dtype=ids.dtype, device=ids.device))

    def __call__(self, ids: torch.Tensor, rng: torch.Generator,
                 word_ids: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        if ids.ndim != 2:
            raise ValueError(f"ids must be (B, T), got shape {tuple(ids.shape)}")
        B, T = ids.shape
        eligible = self.eligible(ids)
        score = torch.rand(B, T, generator=rng)  # (B, T) one draw per position
        if self.whole_word or word_ids is not None:
            starts = _word_starts(ids, eligible, self.word_start, word_ids)
            idx = torch.arange(T).expand(B, T)
            first = torch.where(starts, idx, torch.zeros_like(idx)).cummax(dim=1).values  # word's start
            score = score.gather(1, first)  # every token of a word shares its start's draw
        chosen = (score < self.rate) & eligible
        # rows with eligible tokens but none chosen: take the (word of the) lowest score
        empty = ~chosen.any(1) & eligible.any(1)
        if bool(empty.any()):
            low = torch.where(eligible, score, torch.full_like(score, 2.0)).min(1, keepdim=True).values
            chosen = chosen | (empty[:, None] & eligible & (score == low))
        action = torch.rand(B, T, generator=rng)
        random_ids = torch.randint(0, self.vocab_size, (B, T), generator=rng)
        to_mask = chosen & (action < self.mask_frac)
        to_random = chosen & (action >= self.mask_frac) & (action < self.mask_frac + self.random_frac)
        inputs = torch.where(to_mask, torch.full_like(ids, self.mask_id), ids)
        inputs = torch.where(to_random, random_ids.to(ids.dtype), inputs)
        labels = torch.where(chosen, ids, torch.full_like(ids, IGNORE))
        real = ids != self.pad_id if self.pad_id is not None else torch.ones_like(ids, dtype=torch.bool)
        return {"input_ids": inputs, "labels": labels, "attention_mask": real}


def originals(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The uncorrupted ids of an MLM batch: the label where there is one, else the input.

    >>> originals({"input_ids": torch.tensor([[4, 3]]), "labels": torch.tensor([[IGNORE, 9]])})
    tensor([[4, 9]])
    """
    return torch.where(batch["labels"] != IGNORE, batch["labels"], batch["input_ids"])


def replace_tokens(batch: dict[str, torch.Tensor], sampled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ELECTRA's corrupted input (Clark et al. 2020 §2): the generator's samples (B, T) at the
    masked positions, the original elsewhere → (corrupted ids, is_replaced) (B, T). A sample
    that equals the original counts as original (is_replaced False), as in the paper.

    >>> b = {"input_ids": torch.tensor([[5, 3, 3]]), "labels": torch.tensor([[IGNORE, 6, 7]])}
    >>> replace_tokens(b, torch.tensor([[0, 6, 8]]))
    (tensor([[5, 6, 8]]), tensor([[False, False,  True]]))
    """
    original = originals(batch)
    corrupted = torch.where(batch["labels"] != IGNORE, sampled.to(original.dtype), original)
    return corrupted, corrupted != original


@dataclass(frozen=True)
class PermutationLM:
    """XLNet's permutation LM (Yang et al. 2019). Each row draws a factorisation order z
    (rank[t] = where position t comes in z); the last n = max(1, round(T / K)) positions of
    the order are the targets (partial prediction, §2.3, K = 6 or 7 in the paper), never all
    T (a target needs context). Masks, True = may attend (§2.3, two-stream attention):

    - content_mask (B, T, T): position i sees j when rank[j] <= rank[i] (itself included);
    - query_mask (B, n, T): target i sees the *content* of j when rank[j] < rank[i], never
      itself (it must predict its own token knowing only its position).

    Deviation: XLNet's code lets the non-target context tokens see each other in both
    directions; here every position follows the sampled order, as in the paper's equations.

    Keys: input_ids (unchanged ids), labels (B, T) (ids at targets, else IGNORE), rank (B, T),
    target_pos (B, n) (the targets' positions, ascending), content_mask, query_mask.

    >>> b = PermutationLM(k=2)(torch.arange(4)[None], torch.Generator().manual_seed(0))
    >>> b["target_pos"].shape, b["content_mask"].shape, b["query_mask"].shape
    (torch.Size([1, 2]), torch.Size([1, 4, 4]), torch.Size([1, 2, 4]))
    """

    k: float = 6.0

    def __post_init__(self):
        if isinstance(self.k, bool) or not isinstance(self.k, int | float) or not self.k > 1:
            raise ValueError(f"k (predict the last 1/k of the order) must be > 1, got {self.k!r}")

    def n_targets(self, T: int) -> int:
        if T < 2:
            raise ValueError(f"permutation LM needs windows of at least 2 tokens, got {T}")
        return min(T - 1, max(1, round(T / self.k)))

    def __call__(self, ids: torch.Tensor, rng: torch.Generator) -> dict[str, torch.Tensor]:
        if ids.ndim != 2:
            raise ValueError(f"ids must be (B, T), got shape {tuple(ids.shape)}")
        B, T = ids.shape
        n = self.n_targets(T)
        order = torch.rand(B, T, generator=rng).argsort(dim=1)  # (B, T): z, positions in order
        rank = order.argsort(dim=1)  # (B, T): rank[t] = index of position t in z
        target_pos = order[:, T - n:].sort(dim=1).values  # (B, n)
        content_mask = rank[:, None, :] <= rank[:, :, None]  # (B, T query, T key)
        target_rank = rank.gather(1, target_pos)  # (B, n)
        query_mask = rank[:, None, :] < target_rank[:, :, None]  # (B, n, T)
        is_target = rank >= T - n
        labels = torch.where(is_target, ids, torch.full_like(ids, IGNORE))
        return {"input_ids": ids, "labels": labels, "rank": rank, "target_pos": target_pos,
                "content_mask": content_mask, "query_mask": query_mask}


def special_ids(tok) -> tuple[int, ...]:
    """Every special token id of a tokenizer, sorted: what masking never touches."""
    return tuple(sorted(tok.special_tokens.values()))


def mask_token_id(tok, names: Iterable[str] = ("[MASK]", "<mask>")) -> int:
    """The id of the tokenizer's mask token; a clear error when it has none."""
    for name in names:
        if name in tok.special_tokens:
            return tok.special_tokens[name]
    raise ValueError(f"the tokenizer has no mask token ({' or '.join(names)}) among its special tokens "
                     f"{sorted(tok.special_tokens)}; masked objectives need one (ember pretrain adds [MASK] "
                     f"to the BPE it trains for them)")
