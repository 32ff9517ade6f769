"""Heads on a Transformer body: sentence pooling (mean, CLS) for an encoder's embeddings, the
reward model (RLHF stage 2) and PPO's value model.

The body is an ordinary `Transformer`; its final hidden states (after the final norm, before
the LM head) go through `ScalarHead`, a Linear(D, 1). `RewardModel` reads that scalar at the
last real token of each (right-padded) row — the whole prompt + reply has been seen there —
as InstructGPT does (Ouyang et al. 2022 §3.5); `ValueHead` keeps it at every token, the
per-state values V(s_t) of PPO.

The hidden states come from the body's `hidden` (embeddings → blocks → norm), the same
method its LM head reads. The body's `output` (LM head) is not run: under DDP either
freeze it or use find_unused_parameters (tied embeddings are used). The pairwise loss that
trains a reward model is ember.train.losses.bradley_terry_loss.

>>> from ember.model import ModelConfig, Transformer
>>> rm = RewardModel(Transformer(ModelConfig.tiny()))
>>> rm(torch.zeros(2, 5, dtype=torch.long), lengths=torch.tensor([5, 3])).shape
torch.Size([2])
"""

from __future__ import annotations

import torch
import torch.nn as nn


def hidden_states(body: nn.Module, ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """`body.hidden` for ids (B, T), positions 0..T-1: final-normed states (B, T, D).

    A causal model needs no mask for right padding (real tokens never see the pads after
    them); a bidirectional one (config.causal False) gets attention_mask as a key mask."""
    if attention_mask is not None and not body.config.causal:
        return body.hidden(ids, attention_mask=attention_mask)
    return body.hidden(ids)


def mean_pool(h: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average of the real tokens' states: h (B, T, D), attention_mask (B, T) → (B, D).

    sentence-transformers' mean pooling: padding positions count for nothing, and the
    count is clamped at 1e-9 (a row with no real token gives zeros, not NaN).

    >>> mean_pool(torch.tensor([[[1.0], [3.0], [9.0]]]), torch.tensor([[1, 1, 0]]))
    tensor([[2.]])
    """
    m = attention_mask.to(h.dtype)[..., None]  # (B, T, 1)
    return (h * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)


def cls_pool(h: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """The first token's state ([CLS] in BERT): h (B, T, D) → (B, D).

    >>> cls_pool(torch.tensor([[[1.0], [3.0]]]))
    tensor([[1.]])
    """
    return h[:, 0]


POOLINGS = {"mean": mean_pool, "cls": cls_pool}


class ScalarHead(nn.Module):
    """Linear(D, 1): hidden states (..., D) → scalars (...), in fp32.

    Init N(0, 1/(D+1)) and zero bias, as OpenAI's lm-human-preferences reward head.

    >>> ScalarHead(8)(torch.zeros(2, 3, 8)).shape
    torch.Size([2, 3])
    """

    def __init__(self, d_model: int):
        super().__init__()
        self.linear = nn.Linear(d_model, 1)
        nn.init.normal_(self.linear.weight, std=1.0 / (d_model + 1) ** 0.5)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.to(self.linear.weight.dtype)).squeeze(-1).float()


class _ScalarModel(nn.Module):
    def __init__(self, body: nn.Module, head: ScalarHead | None = None):
        super().__init__()
        self.body = body
        self.head = ScalarHead(body.config.d_model) if head is None else head
        self.head.to(body.tok_embeddings.weight.device)

    @property
    def config(self):
        return self.body.config


class RewardModel(_ScalarModel):
    """Transformer body + ScalarHead: ids (B, T) → one reward per row (B,), read at the last
    real token. Rows are right-padded; give attention_mask (B, T) (True/1 = real token) or
    lengths (B,), or neither when no row is padded.

    >>> from ember.model import ModelConfig, Transformer
    >>> rm = RewardModel(Transformer(ModelConfig.tiny()))
    >>> rm(torch.zeros(1, 4, dtype=torch.long)).shape
    torch.Size([1])
    """

    def forward(self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                lengths: torch.Tensor | None = None) -> torch.Tensor:
        B, T = ids.shape
        if attention_mask is not None and lengths is not None:
            raise ValueError("give attention_mask or lengths, not both")
        if attention_mask is not None:
            if attention_mask.shape != ids.shape:
                raise ValueError(f"attention_mask {tuple(attention_mask.shape)} does not match ids {(B, T)}")
            lengths = attention_mask.long().sum(dim=1)  # (B,)
            right = torch.arange(T, device=ids.device) < lengths[:, None]  # (B, T)
            if not torch.equal(right, attention_mask.bool()):
                raise ValueError("attention_mask must be right padding (ones, then zeros) in every row")
        elif lengths is None:
            lengths = torch.full((B,), T, device=ids.device)
        lengths = lengths.to(ids.device)
        if bool(((lengths < 1) | (lengths > T)).any()):
            raise ValueError(f"every row needs 1..{T} real tokens, got lengths {lengths.tolist()}")
        x = hidden_states(self.body, ids, attention_mask)  # (B, T, D)
        last = x[torch.arange(B, device=ids.device), lengths - 1]  # (B, D)
        return self.head(last)  # (B,)


class ValueHead(_ScalarModel):
    """Transformer body + ScalarHead at every token: ids (B, T) → values (B, T) for PPO.
    Value at pad positions is meaningless; mask it in the loss. Start it from a trained
    reward model (InstructGPT §3.5): `ValueHead(copy.deepcopy(rm.body), copy.deepcopy(rm.head))`.

    >>> from ember.model import ModelConfig, Transformer
    >>> ValueHead(Transformer(ModelConfig.tiny()))(torch.zeros(2, 4, dtype=torch.long)).shape
    torch.Size([2, 4])
    """

    def forward(self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(hidden_states(self.body, ids, attention_mask))  # (B, T)
