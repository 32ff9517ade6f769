"""Drafters for speculative decoding (speculative.py verifies what they propose).

- prompt lookup (`ngram_draft`): the tokens that followed the latest earlier occurrence of
  the last few tokens. Free to compute, deterministic (its draft distribution q is one-hot).
- a draft model (`ModelDrafter`): any ember model with the target's tokenizer proposes k
  tokens, one forward each, from its own KV cache; sampled requests draw them from its
  distribution q under the request's temperature/top-k/top-p/min-p, so that the rejection
  rule can compare q with the target's p.
- early exit (`early_exit`): the target's own first N blocks, its final norm and its head,
  sharing its weights, as the draft model (no second checkpoint, no extra memory but a
  cache of N layers).

A drafter runs for one request at a time (speculative decoding runs only for a lone one).
The draft cache holds the K/V of the first `pos` tokens of that request's sequence; after
verification it rolls back to what was accepted (positions past it are overwritten before
any query sees them), and a new request, or one that decoded without drafts for a while,
catches up with one forward over the tokens it lacks.

>>> ngram_draft([5, 6, 7, 8, 1, 5, 6], k=2)
[7, 8]
"""

from __future__ import annotations

import copy
import dataclasses

import torch
from torch import Tensor, nn

from ember.model.kv_cache import KVCache

from .prefill import eval_mode
from .sampling import SamplingParams, apply_min_p, apply_temperature, apply_top_k, apply_top_p, draw

__all__ = ["ModelDrafter", "check_same_tokenizer", "early_exit", "ngram_draft", "target_probs"]

KV_STEP = 64  # the draft cache grows in multiples of this many positions


def ngram_draft(tokens: list[int], k: int = 8, max_ngram: int = 3) -> list[int]:
    """Up to k tokens that followed the most recent earlier occurrence of the last n tokens
    (the longest n <= max_ngram that occurs), or [] when none does."""
    L = len(tokens)
    for n in range(min(max_ngram, L - 1), 0, -1):
        tail = tokens[L - n :]
        for s in range(L - n - 1, -1, -1):  # most recent first
            if tokens[s : s + n] == tail:
                return tokens[s + n : s + n + k]
    return []


def target_probs(logits: Tensor, params: SamplingParams) -> Tensor:
    """The distribution a sampled request draws from: logits [N, V] → probs [N, V] (fp32)
    after temperature, top-k, top-p and min-p, in the order `Sampler` applies them. Target
    and draft rows both go through it, so the rejection rule compares like with like.

    >>> target_probs(torch.tensor([[0.0, 1.0, 9.0]]), SamplingParams(top_k=1)).tolist()
    [[0.0, 0.0, 1.0]]
    """
    x = apply_temperature(logits.float(), params.temperature)
    if params.top_k > 0:
        x = apply_top_k(x, params.top_k)
    if params.top_p < 1.0:
        x = apply_top_p(x, params.top_p)
    if params.min_p > 0.0:
        x = apply_min_p(x, params.min_p)
    return torch.softmax(x, dim=-1)


def check_same_tokenizer(target_tok, draft_tok, target_name: str = "the model", draft_name: str = "the draft model") -> None:
    """Refuse a draft model whose tokenizer maps ids to other strings: its tokens would mean
    something else to the target. Compares the vocabularies and the special tokens."""
    if draft_tok is None or draft_tok is target_tok:
        return
    if draft_tok.vocab_size != target_tok.vocab_size:
        raise ValueError(f"the draft model {draft_name} has a vocabulary of {draft_tok.vocab_size} tokens, "
                         f"{target_name} {target_tok.vocab_size}: a draft model must share the tokenizer")
    if draft_tok.vocab != target_tok.vocab or draft_tok.special_tokens != target_tok.special_tokens:
        raise ValueError(f"the draft model {draft_name} has another tokenizer than {target_name} (same size, "
                         "other tokens): a draft model must share the tokenizer")


def early_exit(model: nn.Module, n_layers: int) -> nn.Module:
    """The model's first n_layers blocks, then its final norm and LM head, as a model of its
    own that shares the weights (a shallow copy with a shorter `layers` list).

    >>> from ember.model.config import ModelConfig
    >>> from ember.model.transformer import Transformer
    >>> early_exit(Transformer(ModelConfig.tiny(n_layers=3)), 1).config.n_layers
    1
    """
    total = len(model.layers)
    if isinstance(n_layers, bool) or not isinstance(n_layers, int) or not 1 <= n_layers < total:
        raise ValueError(f"draft layers must be in 1..{total - 1} (the model has {total} blocks), got {n_layers!r}")
    short = copy.copy(model)  # shares every module and parameter
    short._modules = dict(model._modules)
    short._parameters, short._buffers = dict(model._parameters), dict(model._buffers)
    short._modules["layers"] = nn.ModuleList(list(model.layers)[:n_layers])
    short.config = dataclasses.replace(model.config, n_layers=n_layers)
    return short


def _weight_bytes(model: nn.Module) -> int:
    """Bytes of parameters and buffers, each tensor once (a tied head, shared blocks): what a
    memory-bound decode step reads, so a 4-bit draft of a float32 model costs about 1/6."""
    seen = {}
    for t in [*model.parameters(), *model.buffers()]:
        seen[t.data_ptr()] = t.numel() * t.element_size()
    return sum(seen.values())


class ModelDrafter:
    """A draft model proposing k tokens per step from its own one-row KV cache.

    cost: a draft token's cost as a share of a target forward (the ratio of weight bytes); the
    request stops drafting when its acceptance rate falls below `min_acceptance`, cost + 0.1
    and at most 0.9 (each accepted token saves about one target forward, each drafted one
    costs `cost`). k: draft tokens per step (None: the engine's speculative_k).

    >>> engine = Engine(model, tok, speculative=ModelDrafter(student, student_tok, k=4))  # doctest: +SKIP
    """

    def __init__(self, model: nn.Module, tokenizer=None, name: str = "the draft model", k: int | None = None):
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
            raise ValueError(f"draft k must be >= 1 token, got {k!r}")
        self.model, self.tokenizer, self.name, self.k = model, tokenizer, name, k
        self.device = next(model.parameters()).device
        self.cost = 1.0
        self.min_acceptance = 0.2
        self.cache: KVCache | None = None
        self.owner = None  # the request whose tokens the cache holds
        self.pos = 0  # how many leading tokens of the owner's sequence it holds

    def bind(self, target: nn.Module, tokenizer, target_name: str = "the model") -> ModelDrafter:
        """Check the draft against the engine's model and tokenizer; set its cost."""
        if self.model.config.vocab_size != target.config.vocab_size:
            raise ValueError(f"the draft model {self.name} has vocab_size {self.model.config.vocab_size}, "
                             f"{target_name} {target.config.vocab_size}: a draft model must share the tokenizer")
        check_same_tokenizer(tokenizer, self.tokenizer, target_name, self.name)
        self.cost = min(1.0, _weight_bytes(self.model) / max(1, _weight_bytes(target)))
        self.min_acceptance = min(0.9, self.cost + 0.1)
        return self

    def _sync(self, req, n: int) -> None:
        need = -(-(len(req.prompt_ids) + req.params.max_tokens) // KV_STEP) * KV_STEP
        if self.cache is None or self.cache.max_seq_len < need:
            self.cache, self.pos = None, 0
            self.cache = KVCache.for_model(self.model, 1, need)
        if self.owner is not req:
            self.owner, self.pos = req, 0
        self.pos = min(self.pos, n - 1)  # at least the last token is fed: its logits draft the first

    def propose(self, req, seq: list[int], k: int, generator) -> tuple[list[int], Tensor | None]:
        """k draft tokens after seq, and for a sampled request their distributions q [k, V]
        (None when greedy: the draft's argmax); none past the draft model's context."""
        if len(req.prompt_ids) + req.params.max_tokens > self.model.config.max_seq_len:
            return [], None
        self._sync(req, len(seq))
        params, feed, start = req.params, seq[self.pos :], self.pos
        draft, qs = [], []
        with eval_mode(self.model):
            for _ in range(k):
                ids = torch.tensor([feed], dtype=torch.long, device=self.device)
                pos = torch.arange(start, start + len(feed), device=self.device)[None]
                last = torch.tensor([len(feed) - 1], device=self.device)
                logits = self.model(ids, self.cache, pos, logits_index=last)[:, 0]  # [1, V]
                if params.greedy:
                    t = int(logits[0].argmax())
                else:
                    q = target_probs(logits, params)[0]
                    t = int(draw(q, generator))
                    qs.append(q)
                draft.append(t)
                start, feed = start + len(feed), [t]
        self.pos = start  # seq + draft[:-1] are in the cache
        return draft, (torch.stack(qs) if qs else None)

    def accepted(self, n_seq: int, n_ok: int) -> None:
        """Verification kept n_ok draft tokens after a sequence of n_seq: roll back the rest."""
        self.pos = min(self.pos, n_seq + n_ok)
