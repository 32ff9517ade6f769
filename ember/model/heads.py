"""Scalar heads on a Transformer body: the reward model (RLHF stage 2) and PPO's value model.

The body is an ordinary `Transformer`; its final hidden states (after the final norm, before
the LM head) go through `ScalarHead`, a Linear(D, 1). `RewardModel` reads that scalar at the
last real token of each (right-padded) row — the whole prompt + reply has been seen there —
as InstructGPT does (Ouyang et al. 2022 §3.5); `ValueHead` keeps it at every token, the
per-state values V(s_t) of PPO.

The hidden states come from the body's own parts (embeddings → blocks → norm), the way
ember.peft.prompt runs them, so the model needs no seam. The body's `output` (LM head) is not
run: under DDP either freeze it or use find_unused_parameters (tied embeddings are used).

>>> from ember.model import ModelConfig, Transformer
>>> rm = RewardModel(Transformer(ModelConfig.tiny()))
>>> rm(torch.zeros(2, 5, dtype=torch.long), lengths=torch.tensor([5, 3])).shape
torch.Size([2])
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ember.model.layers import rope_cos_sin, sinusoidal_embedding


def hidden_states(body: nn.Module, ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Final-normed hidden states (B, T, D) of a Transformer for ids (B, T), positions 0..T-1.

    A causal model needs no mask for right padding (real tokens never see the pads after
    them); a bidirectional one (config.causal False) gets attention_mask as a key mask."""
    cfg = body.config
    B, T = ids.shape
    if T > cfg.max_seq_len:
        raise ValueError(f"sequence of {T} tokens is longer than max_seq_len {cfg.max_seq_len}")
    pos = torch.arange(T, device=ids.device).expand(B, T)  # (B, T)
    mask = None
    if attention_mask is not None and not cfg.causal:
        mask = attention_mask.bool()[:, None, None, :].expand(B, 1, T, T)  # (B, 1, T, T) keys
    x = body.tok_embeddings(ids)  # (B, T, D)
    if cfg.pos_emb == "learned":
        x = x + body.pos_embeddings(pos)
    elif cfg.pos_emb == "sinusoidal":
        x = x + sinusoidal_embedding(pos, cfg.d_model).to(x.dtype)
    rope = rope_cos_sin(cfg, pos) if cfg.pos_emb == "rope" else None  # 2 × (B, T, Dh/2)
    for i, layer in enumerate(body.layers):
        x = layer(x, rope, None, i, pos, mask)  # (B, T, D)
    return body.norm(x)


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
        self.head.to(body.norm.weight.device)

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
                lengths: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
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


def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor,
                       margin: torch.Tensor | float = 0.0) -> tuple[torch.Tensor, dict]:  # fmt: skip
    """Mean −log σ(r_c − r_r − margin) over pairs: the Bradley–Terry (1952) likelihood of the
    human choice, InstructGPT (Ouyang et al. 2022) eq. 1; `margin` (scalar or (B,)) is Llama 2
    (Touvron et al. 2023) §3.2.2's margin for pairs rated clearly better. In fp32.

    Lives here, beside the reward model, because ember/model cannot import ember/train; the
    reward-model recipe re-exports it with the other losses.
    Metrics: accuracy (share of pairs with r_c > r_r), margin (mean r_c − r_r), detached.

    >>> round(bradley_terry_loss(torch.tensor([1.0]), torch.tensor([0.0]))[0].item(), 6)
    0.313262
    """
    if r_chosen.shape != r_rejected.shape:
        raise ValueError(f"r_chosen {tuple(r_chosen.shape)} and r_rejected {tuple(r_rejected.shape)} differ")
    diff = r_chosen.float() - r_rejected.float()  # (B,)
    loss = -F.logsigmoid(diff - margin).mean()
    with torch.no_grad():
        metrics = {"accuracy": (diff > 0).float().mean(), "margin": diff.mean()}
    return loss, metrics
