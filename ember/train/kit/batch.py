"""Rows into padded tensors, and the log-probs a model gives them.

Two padders: `pad_rows` for encoded rows that carry their own labels (preference pairs,
KTO's unpaired rows), `batch_completions` for sampled prompt + completion ids (RL). One
log-prob implementation, `token_logprobs`, with `sequence_logprobs` summing it per row.
Both run the LM head only at the scored positions (`logits_mask`), so a (B, T, V) logits
tensor never exists.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F

from ember.train.losses import IGNORE


def pad_rows(rows: list[dict], sides: tuple[str, ...], pad_id: int) -> dict[str, torch.Tensor]:
    """For each prefix in sides, rows' f"{side}ids" / f"{side}labels" lists → (N, T) tensors,
    every side right-padded to one T (pad_id / IGNORE), so rows can be sliced freely. Other
    keys are stacked as they are; no rows give (0, 1) tensors.

    >>> r = {"chosen_ids": [1, 2], "chosen_labels": [2, -100], "rejected_ids": [1], "rejected_labels": [-100]}
    >>> pad_rows([r], ("chosen_", "rejected_"), pad_id=0)["rejected_ids"].tolist()
    [[1, 0]]
    """
    T = max((len(r[f"{side}ids"]) for r in rows for side in sides), default=1)
    out = {}
    for side in sides:
        ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
        labels = torch.full((len(rows), T), IGNORE, dtype=torch.long)
        for i, r in enumerate(rows):
            n = len(r[f"{side}ids"])
            ids[i, :n], labels[i, :n] = torch.tensor(r[f"{side}ids"]), torch.tensor(r[f"{side}labels"])
        out[f"{side}ids"], out[f"{side}labels"] = ids, labels
    keys = {k for k in rows[0] if k not in {f"{s}{x}" for s in sides for x in ("ids", "labels")}} if rows else set()
    out.update({k: torch.tensor([r[k] for r in rows]) for k in sorted(keys)})
    return out


def batch_completions(prompts: list[list[int]], completions: list[list[int]],
                      pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt + completion ids, right-padded → (ids (N, T), mask (N, T) bool), mask[t] True
    where position t predicts a completion token (ids[t + 1] is one).

    >>> ids, mask = batch_completions([[1, 2]], [[3, 4]], pad_id=0)
    >>> ids.tolist(), mask.int().tolist()
    ([[1, 2, 3, 4]], [[0, 1, 1, 0]])
    """
    T = max(len(p) + len(c) for p, c in zip(prompts, completions))
    ids = torch.full((len(prompts), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), T), dtype=torch.bool)
    for i, (p, c) in enumerate(zip(prompts, completions)):
        ids[i, : len(p) + len(c)] = torch.tensor(p + c)
        mask[i, len(p) - 1 : len(p) + len(c) - 1] = True
    return ids, mask


def token_logprobs(model, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log π(ids[t+1] | ids[≤t]) in fp32 at every position t where mask[t] is True, else 0;
    (B, T). mask[:, -1] must be False (nothing follows the last position). With labels
    (labels[t] = ids[t+1] or IGNORE), pass mask = labels != IGNORE.

    A model that is uniform over V = 4 gives log(1/4) at each masked position:
    >>> uniform = lambda ids, logits_mask: torch.zeros(int(logits_mask.sum()), 4)
    >>> token_logprobs(uniform, torch.tensor([[0, 1, 2]]), torch.tensor([[True, True, False]]))
    tensor([[-1.3863, -1.3863,  0.0000]])
    """
    logits = model(ids, logits_mask=mask)  # (K, V): the head at the masked positions only
    targets = ids[:, 1:][mask[:, :-1]]  # (K,): the token each masked position predicts
    out = torch.zeros(ids.shape, dtype=torch.float32, device=ids.device)
    # fp32: bf16 logits make log-softmax over a large vocabulary visibly wrong
    out[mask] = -F.cross_entropy(logits.float(), targets, reduction="none")
    return out


def sequence_logprobs(model, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum (B,), count (B,)) of `token_logprobs` over each row's masked positions; the count
    is at least 1, so sum / count is the per-token average (SimPO, ORPO, IPO as in TRL).

    >>> uniform = lambda ids, logits_mask: torch.zeros(int(logits_mask.sum()), 4)
    >>> sequence_logprobs(uniform, torch.tensor([[0, 1, 2]]), torch.tensor([[True, True, False]]))
    (tensor([-2.7726]), tensor([2.]))
    """
    tok = token_logprobs(model, ids, mask)[mask]  # (K,)
    rows = mask.nonzero()[:, 0]
    total = torch.zeros(ids.shape[0], device=ids.device).index_add(0, rows, tok)
    return total, mask.sum(1).clamp(min=1).float()


def split_rows(rows: dict[str, torch.Tensor], size: int, device=None) -> Iterator[dict[str, torch.Tensor]]:
    """Consecutive slices of `size` rows of every tensor (moved to device when given).

    >>> [b["x"].tolist() for b in split_rows({"x": torch.arange(5)}, 2)]
    [[0, 1], [2, 3], [4]]
    """
    n = len(next(iter(rows.values())))
    for i in range(0, n, size):
        yield {k: v[i : i + size] if device is None else v[i : i + size].to(device) for k, v in rows.items()}
