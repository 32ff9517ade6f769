"""The engine's constrained-decoding step: mask each constrained row's logits.

A request may carry a `TokenConstraint` (ember.infer.constrained). Before sampling, the
logits of every token its constraint forbids are set to -inf, so greedy, temperature,
top-k/top-p/min-p and penalties all choose among allowed tokens only. The log-probs the
engine reports for such a request are those of this masked distribution (forbidden
tokens have -inf). A constraint that is `budget_aware` also gets the tokens the request may
still generate (max_tokens - generated) and keeps a complete output reachable within them
(ember.infer.constrained.budget). After sampling, `Request.append` advances the constraint, and a
constraint that is done finishes the request with finish_reason "stop".

Rows without a constraint are untouched: when no request in the batch has one, the
logits tensor is returned as it came (same object), so unconstrained decoding is bitwise
what it was.

>>> import torch
>>> class R: constraint = None
>>> x = torch.zeros(2, 3); constrain_logits([R(), R()], x) is x
True
"""

from __future__ import annotations

import torch
from torch import Tensor


def _fit(mask: Tensor, V: int) -> Tensor:
    """A tokenizer-sized mask to the model's vocabulary width V (extra ids forbidden)."""
    if len(mask) >= V:
        return mask[:V]
    return torch.cat([mask, torch.zeros(V - len(mask), dtype=torch.bool)])


def _allowed(req) -> Tensor:
    """The constraint's mask; one that takes a budget (`budget_aware`) is told how many
    tokens the request may still generate, so it can close its output in time."""
    c = req.constraint
    if getattr(c, "budget_aware", False):
        return c.allowed(req.params.max_tokens - len(req.token_ids))
    return c.allowed()


def constrain_logits(reqs, logits: Tensor) -> Tensor:
    """logits [N, V], row j for reqs[j] → the same with forbidden tokens at -inf in the rows
    whose request has a constraint (a new tensor; the input is not changed)."""
    rows = [j for j, r in enumerate(reqs) if r.constraint is not None]
    if not rows:
        return logits
    V = logits.shape[-1]
    masks = []
    for j in rows:
        m = _fit(_allowed(reqs[j]), V)
        if not m.any():  # an invariant of the grammars: never a dead end before the end
            raise RuntimeError(f"constraint allows no token after {reqs[j].constraint.text()!r}")
        masks.append(m)
    allowed = torch.stack(masks).to(logits.device)  # [n, V]
    idx = torch.tensor(rows, dtype=torch.long, device=logits.device)
    out = logits.clone()
    out[idx] = out[idx].masked_fill(~allowed, float("-inf"))
    return out
