"""The speculative-decoding options of `ember generate` and `ember serve`, and the drafter
they name (ember/infer/speculative.py, draft.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ember.cli.errors import at_least


@dataclass
class SpeculativeOptions:
    """Speculative decoding, for a lone request (off while others run or wait)."""

    speculative: Literal["auto", "ngram", "draft", "early-exit", "off"] = "auto"
    """draft tokens and verify them in one forward: ngram (prompt lookup, free), draft (--draft-model),
    early-exit (the model's first --draft-layers blocks), off, auto (ngram, but off on the native Q4
    decode step, which a verify forward does not beat); greedy tokens as without it up to float
    ties, sampled tokens from the same distribution (other draws for a seed)"""
    draft_model: str | None = None
    """the draft model of --speculative draft, with the model's tokenizer: a known name, GGUF file,
    HF folder or ember checkpoint; loaded with quant auto whatever --quant says (a 4-bit GGUF on
    the native kernels: `--exact --speculative draft --draft-model smollm2` drafts with SmolLM2's
    own Q4 file), since drafts need only be likely, the model's verification is exact"""
    draft_layers: int = 8
    """blocks of the model that draft for --speculative early-exit"""
    draft_k: int = 4
    """tokens a draft model or early exit proposes per step (prompt lookup: up to 8)"""

    def __post_init__(self):
        at_least("--draft-layers", self.draft_layers, 1)
        at_least("--draft-k", self.draft_k, 1)
        if self.speculative == "draft" and not self.draft_model:
            raise ValueError("--speculative draft needs --draft-model NAME|DIR")
        if self.draft_model and self.speculative != "draft":
            raise ValueError(f"--draft-model {self.draft_model} is used only with --speculative draft, "
                             f"got --speculative {self.speculative}")
        parent = getattr(super(), "__post_init__", None)
        if parent is not None:
            parent()


def build_speculative(model, tok, opts):
    """The engine's `speculative` argument for these options: "off", "ngram", "auto" or a ModelDrafter
    (a draft model in the model's float dtype with quant auto; or early exit).
    Options without speculative fields (ember chat) get "off"."""
    mode = getattr(opts, "speculative", "off")
    if mode in ("off", "ngram", "auto"):
        return mode
    from ember.infer.draft import ModelDrafter, early_exit

    name = getattr(opts, "model", "the model")
    if mode == "early-exit":
        drafter = ModelDrafter(early_exit(model, opts.draft_layers), name=f"{name}'s first {opts.draft_layers} blocks",
                               k=opts.draft_k)
    else:
        import torch

        import ember

        dtype = torch.float32 if getattr(opts, "exact", False) else getattr(torch, opts.dtype)
        draft, draft_tok = ember.load(opts.draft_model, dtype=dtype, quant="auto", fuse=True)
        drafter = ModelDrafter(draft.eval(), draft_tok, name=opts.draft_model, k=opts.draft_k)
    return drafter.bind(model, tok, target_name=name)
