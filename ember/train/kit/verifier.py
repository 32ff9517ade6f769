"""Verifiers as reward models: a scalar head read at chosen tokens, trained with binary
cross-entropy on right/wrong labels.

- outcome (ORM): one score per solution, at its last token, against "the final answer is
  right".
- steps (PRM): one score at each step's last token, against "this step and every one before
  it are right" (labelled up to the first wrong step, Lightman et al. 2023).

Rows come from ember.data.reasoning (generated, mechanically checked solutions). The model
is ember.model.heads.RewardModel (body + ScalarHead), so `load_reward_model` reads a
trained verifier back.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ember.model.heads import RewardModel, hidden_states
from ember.train.kit.model import pad_id


def pad_verifier_rows(rows: list[dict], pad: int) -> dict[str, torch.Tensor]:
    """{"ids", "positions", "targets"} rows → right-padded ids (N, T), positions (N, S) with
    -1 for no position, targets (N, S) float.

    >>> b = pad_verifier_rows([{"ids": [5, 6, 7], "positions": [2], "targets": [1.0]},
    ...                        {"ids": [5], "positions": [0, 0], "targets": [0.0, 1.0]}], pad=0)
    >>> b["ids"].tolist(), b["positions"].tolist()
    ([[5, 6, 7], [5, 0, 0]], [[2, -1], [0, 0]])
    """
    T = max(len(r["ids"]) for r in rows)
    S = max(max(len(r["positions"]) for r in rows), 1)
    ids = torch.full((len(rows), T), pad, dtype=torch.long)
    pos = torch.full((len(rows), S), -1, dtype=torch.long)
    tgt = torch.zeros(len(rows), S)
    for i, r in enumerate(rows):
        ids[i, : len(r["ids"])] = torch.tensor(r["ids"])
        pos[i, : len(r["positions"])] = torch.tensor(r["positions"], dtype=torch.long)
        tgt[i, : len(r["targets"])] = torch.tensor(r["targets"])
    return {"ids": ids, "positions": pos, "targets": tgt}


def position_scores(rm: RewardModel, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """The head's logit at each position: ids (B, T), positions (B, S) → (B, S); entries at
    position -1 are meaningless (mask them)."""
    h = hidden_states(rm.body, ids)  # (B, T, D)
    scores = rm.head(h)  # (B, T)
    return scores.gather(1, positions.clamp(min=0))


def verifier_loss(rm: RewardModel, b: dict) -> tuple[torch.Tensor, dict]:
    """Mean BCE-with-logits over the labelled positions."""
    valid = b["positions"] >= 0
    logits = position_scores(rm, b["ids"], b["positions"])
    return F.binary_cross_entropy_with_logits(logits[valid], b["targets"][valid]), {}


@torch.no_grad()
def verifier_accuracy(rm: RewardModel, rows: dict[str, torch.Tensor], batch: int = 16) -> dict:
    """Held-out figures: rm_accuracy (score > 0 ⇔ label 1, over every labelled position),
    rm_margin (mean logit on label-1 positions minus on label-0 ones) and solution_accuracy
    (a solution counts as right when its lowest score is > 0, against all labels being 1)."""
    hits, pos_scores, neg_scores, sol = [], [], [], []
    n = rows["ids"].shape[0]
    for i in range(0, n, batch):
        b = {k: v[i : i + batch] for k, v in rows.items()}
        valid = b["positions"] >= 0
        s = position_scores(rm, b["ids"], b["positions"])
        y = b["targets"] > 0.5
        hits.append(((s > 0) == y)[valid])
        pos_scores.append(s[valid & y])
        neg_scores.append(s[valid & ~y])
        low = s.masked_fill(~valid, float("inf")).min(1).values
        sol.append((low > 0) == (y | ~valid).all(1))
    pos, neg = torch.cat(pos_scores), torch.cat(neg_scores)
    margin = (pos.mean() if len(pos) else 0.0) - (neg.mean() if len(neg) else 0.0)
    return {"rm_accuracy": torch.cat(hits).float().mean().item(), "rm_margin": float(margin),
            "solution_accuracy": torch.cat(sol).float().mean().item()}


def verifier_tensors(tok, cfg, split: str) -> dict[str, torch.Tensor]:
    """Generated verifier rows of cfg (n_train or n_eval of them, cfg.objective's labels), padded."""
    from ember.data.reasoning import encode_verifier_rows, verifier_rows

    n = cfg.n_train if split == "train" else cfg.n_eval
    rows = verifier_rows(n, cfg.train.seed, split)
    return pad_verifier_rows(encode_verifier_rows(tok, rows, cfg.max_len, cfg.objective), pad_id(tok))
