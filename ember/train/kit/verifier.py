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

from pathlib import Path

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


def auroc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """P(a random label-1 score > a random label-0 score), ties counted half; NaN without both.

    >>> auroc(torch.tensor([0.9, 0.2, 0.5, 0.5]), torch.tensor([1, 0, 1, 0]))
    0.875
    """
    y = labels.bool()
    pos, neg = scores[y].float(), scores[~y].float()
    if not len(pos) or not len(neg):
        return float("nan")
    diff = pos[:, None] - neg[None, :]
    return ((diff > 0).float().mean() + 0.5 * (diff == 0).float().mean()).item()


def figures(scores: torch.Tensor, targets: torch.Tensor, index: torch.Tensor) -> dict:
    """Held-out figures from the logits at every labelled position (P,), their targets (P,)
    and the row each belongs to (P,): rm_accuracy (score > 0 ⇔ label 1), rm_margin (mean logit
    on label-1 positions minus on label-0 ones), rm_auroc (the positions ranked),
    solution_accuracy (a row counts as right when its lowest score is > 0, against all its
    labels being 1) and solution_auroc (rows ranked by that lowest score: how well the
    verifier picks among candidates, whatever its threshold).

    >>> f = figures(torch.tensor([2.0, -1.0, 3.0]), torch.tensor([1.0, 0.0, 1.0]), torch.tensor([0, 0, 1]))
    >>> f["rm_accuracy"], f["solution_accuracy"], f["solution_auroc"]
    (1.0, 1.0, 1.0)
    """
    y = targets > 0.5
    rows = int(index.max()) + 1 if len(index) else 0
    low = torch.full((rows,), float("inf")).scatter_reduce(0, index, scores.float(), "amin")
    right = torch.ones(rows, dtype=torch.bool).scatter_reduce(0, index, y, "amin")
    margin = (scores[y].mean() if y.any() else 0.0) - (scores[~y].mean() if (~y).any() else 0.0)
    return {"rm_accuracy": ((scores > 0) == y).float().mean().item(), "rm_margin": float(margin),
            "rm_auroc": auroc(scores, y), "solution_accuracy": ((low > 0) == right).float().mean().item(),
            "solution_auroc": auroc(low, right)}


@torch.no_grad()
def verifier_accuracy(rm: RewardModel, rows: dict[str, torch.Tensor], batch: int = 16) -> dict:
    """`figures` of the verifier on padded held-out rows."""
    scores, targets, index = [], [], []
    for i in range(0, rows["ids"].shape[0], batch):
        b = {k: v[i : i + batch] for k, v in rows.items()}
        valid = b["positions"] >= 0
        scores.append(position_scores(rm, b["ids"], b["positions"])[valid])
        targets.append(b["targets"][valid])
        index.append((torch.arange(len(valid), device=valid.device)[:, None] + i).expand_as(valid)[valid])
    return figures(torch.cat(scores).cpu(), torch.cat(targets).cpu(), torch.cat(index).cpu())


def verifier_tensors(tok, cfg, split: str) -> dict[str, torch.Tensor]:
    """Generated verifier rows of cfg (n_train or n_eval of them, cfg.objective's labels), padded."""
    from ember.data.reasoning import encode_verifier_rows, verifier_rows

    n = cfg.n_train if split == "train" else cfg.n_eval
    rows = verifier_rows(n, cfg.train.seed, split)
    return pad_verifier_rows(encode_verifier_rows(tok, rows, cfg.max_len, cfg.objective), pad_id(tok))


@torch.no_grad()
def position_features(body, rows: dict[str, torch.Tensor], batch: int = 8) -> tuple[torch.Tensor, ...]:
    """The frozen body's final states at every labelled position: (features (P, D), targets
    (P,), row index (P,)) — what a verifier head reads, computed once."""
    feats, targets, index = [], [], []
    for i in range(0, rows["ids"].shape[0], batch):
        pos, tgt = rows["positions"][i : i + batch], rows["targets"][i : i + batch]
        h = hidden_states(body, rows["ids"][i : i + batch])  # (b, T, D)
        valid = pos >= 0
        feats.append(h.gather(1, pos.clamp(min=0)[..., None].expand(-1, -1, h.shape[-1]))[valid].float())
        targets.append(tgt[valid])
        index.append((torch.arange(len(pos))[:, None] + i).expand_as(pos)[valid])
    return torch.cat(feats), torch.cat(targets), torch.cat(index)


def fit_head(head: torch.nn.Module, feats: torch.Tensor, targets: torch.Tensor, l2: float = 1e-2,
             max_iter: int = 300) -> float:
    """Logistic regression of the ScalarHead (Linear(D, 1)) on fixed features by L-BFGS:
    standardized features, balanced class weights, an L2 penalty `l2` on the standardized
    weights; the standardization is folded back into the head. Returns the final loss.

    >>> from ember.model.heads import ScalarHead
    >>> g = torch.Generator().manual_seed(0)
    >>> x = torch.randn(64, 4, generator=g); y = (x[:, 0] > 0).float()
    >>> head = ScalarHead(4); _ = fit_head(head, 3 * x + 1, y)
    >>> bool(((head(3 * x + 1) > 0).float() == y).float().mean() > 0.95)
    True
    """
    mu, sd = feats.mean(0), feats.std(0).clamp(min=1e-5)
    x = (feats - mu) / sd
    pos = targets.mean().clamp(1e-3, 1 - 1e-3)
    weight = torch.where(targets > 0.5, 0.5 / pos, 0.5 / (1 - pos))
    w = torch.zeros(x.shape[1], requires_grad=True)
    b = torch.zeros((), requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(x @ w + b, targets, weight=weight) + l2 * w.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        loss = F.binary_cross_entropy_with_logits(x @ w + b, targets, weight=weight)
        head.linear.weight.copy_((w / sd)[None])
        head.linear.bias.fill_(float(b - (w * mu / sd).sum()))
    return loss.item()


def fit_verifier_head(cfg, run_config) -> dict:
    """`ember reward --peft head` for a verifier: the body stays frozen, its final states at
    the labelled positions are computed once, and the head is fitted on them (`fit_head`).
    Writes out/config.json, out/head.safetensors and out/summary.json (before: the head's
    random init; after: the fitted head; both on the held-out rows)."""
    import time

    from safetensors.torch import save

    from ember.core.io import atomic_write_bytes, atomic_write_json
    from ember.train.kit.model import load_for_training

    if cfg.objective not in ("outcome", "steps"):
        raise ValueError(f"--peft head fits a verifier head: give --objective outcome or steps, got {cfg.objective!r}")
    t0 = time.time()
    body, tok = load_for_training(cfg)
    body.requires_grad_(False).eval()
    rm = RewardModel(body)
    train, held = verifier_tensors(tok, cfg, "train"), verifier_tensors(tok, cfg, "heldout")
    held_feats, held_targets, held_index = position_features(body, held)
    with torch.no_grad():
        before = figures(rm.head(held_feats), held_targets, held_index)
    feats, targets, _ = position_features(body, train)
    loss = fit_head(rm.head, feats, targets, l2=cfg.head_l2)
    with torch.no_grad():
        after = figures(rm.head(held_feats), held_targets, held_index)
    out = Path(cfg.train.out)
    atomic_write_json(out / "config.json", run_config(body))
    atomic_write_bytes(out / "head.safetensors", save({k: v.contiguous() for k, v in rm.head.state_dict().items()}))
    summary = {"steps": 0, "train_positions": len(targets), "train_loss": loss, "n_eval": int(held["ids"].shape[0]),
               "before": before, "after": after, "seconds": round(time.time() - t0, 1)}
    atomic_write_json(out / "summary.json", summary)
    return summary
