"""The engine's prefill: each admitted prompt runs alone into its own cache row.

One forward per prompt, not one padded batch: padding changes the shapes and so the float
rounding. A request that shares a fork group's prefill (fork.py) copies the K/V instead;
with a prefix cache (prefix_cache.py), the cached blocks of the prompt are copied and only
the rest is prefilled. `PrefillMixin` holds these methods of `Engine` (engine.py), which
supplies `model`, `cache`, `device`, `prefix_cache` and `_eval_mode`.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager

import torch
from torch import Tensor

from .prefix_cache import write_blocks
from .request import Request
from .sampling import token_logprobs

__all__ = ["PrefillMixin", "eval_mode"]


@contextmanager
def eval_mode(model):
    """Eval mode for the engine's own forward passes; the modules that were training
    (a recipe's model mid-run, LoRA dropout) get it back afterwards. A model whose root
    is in eval mode (model.eval(), as loaders return it) is taken as in eval mode
    throughout: that check is O(1), a walk over the modules is not (~1 ms for SmolLM2)."""
    if not model.training:
        yield
        return
    training = [m for m in model.modules() if m.training]
    for m in training:
        m.training = False
    try:
        yield
    finally:
        for m in training:
            m.training = True


class PrefillMixin:
    """Prefill methods of `Engine`."""

    @torch.inference_mode()
    def prefill(self, prompts: list[list[int]], rows: Sequence[int] | None = None) -> Tensor:
        """Run each prompt alone into its cache row (rows[b], default b) at positions
        0..len-1; returns the logits [B, V] of each prompt's last token."""
        rows = range(len(prompts)) if rows is None else rows
        with self._eval_mode():
            return torch.cat([self._prefill_row(p, i) for p, i in zip(prompts, rows)])  # [B, V]

    def _prefill_row(self, prompt: list[int], row: int, every_position: bool = False, start: int = 0) -> Tensor:
        """prompt[start:] into cache row `row` at positions start..T-1 (positions below start
        already hold the prompt's K/V): logits [T - start, V] (every_position) or [1, V] (last)."""
        T = len(prompt)
        ids = torch.tensor([prompt[start:]], dtype=torch.long, device=self.device)  # [1, T - start]
        input_pos = torch.arange(start, T, device=self.device)[None]  # [1, T - start]
        last = None if every_position else torch.tensor([T - 1 - start], device=self.device)
        return self.model(ids, self.cache.rows(row, row + 1), input_pos, logits_index=last)[0]

    def _prefill_request(self, req: Request) -> Tensor:
        """Prefill an admitted request, or copy its fork group's prefill; fill its prompt
        log-probs if asked. → [1, V]."""
        g = req.fork
        if g is not None and g.take():  # another member's prefill of this very prompt
            self.cache.write(req.slot, 0, g.kv)
            req.prompt_logprobs, logits = list(g.prompt_logprobs), g.logits
            g.release()
            return logits
        pc = self.prefix_cache
        if not req.params.prompt_logprobs:
            if pc is not None:  # the cached blocks of the prompt (all but its last token)
                req.cached_tokens, blocks = pc.match(req.prompt_ids[:-1])
                write_blocks(self.cache, req.slot, blocks)
            logits = self._prefill_row(req.prompt_ids, req.slot, start=req.cached_tokens)
        else:
            every = self._prefill_row(req.prompt_ids, req.slot, every_position=True)  # [T, V]
            # Nothing predicts the first prompt token; logits at t predict token t + 1.
            lps = token_logprobs(every[:-1], req.prompt_ids[1:], req.params.logprobs or 0)
            req.prompt_logprobs, logits = [None, *lps], every[-1:]
        if g is not None:
            g.keep(self.cache.read(req.slot, 0, len(req.prompt_ids)), logits, req.prompt_logprobs)
        if pc is not None:  # now, so that requests running beside this one can share it
            pc.insert(req.prompt_ids, lambda s, e: self.cache.read(req.slot, s, e))
        return logits
