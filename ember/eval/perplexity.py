r"""Perplexity of a causal LM over a token sequence, in fixed-length windows.

Windowing (the Hugging Face "perplexity of fixed-length models" recipe, which the
transformers reference figures in ANCHORS.md were measured with):

- non-overlapping (stride = ctx, the default): ids are cut into windows
  [0, ctx), [ctx, 2ctx), ...; the last one may be shorter. Each window is a fresh forward
  with no memory of the previous one, and it predicts its own tokens 1..T-1 from the tokens
  before them in the window. Token 0 of each window is never predicted, so a text of N
  tokens scores N - ceil(N / ctx) tokens.
- sliding (stride < ctx): windows of ctx tokens start every `stride` tokens, and each scores
  only its last `stride` tokens (those earlier windows did not reach), so every token but
  the very first is predicted exactly once, with ctx - stride to ctx - 1 tokens of context.
- bos_id: if given, each window is [bos] + ctx - 1 text tokens (default stride ctx - 1), and
  all of its new text tokens are predicted (the first from BOS alone).
  The ANCHORS SmolLM2 figure uses no BOS.

ppl = exp(sum of token NLLs / number of predicted tokens) — token-weighted, so a short
last window counts for its tokens only.

    >>> text = "\n\n".join(topics[k] for k in sorted(topics))[:20_000]  # doctest: +SKIP
    >>> perplexity(load_model("smollm2"), tok.encode(text), ctx=512)  # doctest: +SKIP
    (15.389..., 4706)                          # transformers fp32 (ANCHORS.md): 15.389
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm


def _windows(n: int, ctx: int, stride: int, with_bos: bool):
    """Yield (begin, end, n_scored): window ids[begin:end], of which the last n_scored
    tokens are predicted. With BOS the window holds ctx - 1 text tokens, all scored."""
    width = ctx - 1 if with_bos else ctx
    prev_end = 0
    for begin in range(0, n, stride):
        end = min(begin + width, n)
        scored = end - prev_end if with_bos else min(end - prev_end, end - begin - 1)
        if scored > 0:
            yield begin, end, scored
        prev_end = end
        if end == n:
            break


@torch.inference_mode()
def perplexity(
    model,
    ids: list[int],
    ctx: int = 512,
    stride: int | None = None,
    bos_id: int | None = None,
    progress: bool = True,
) -> tuple[float, int]:
    """Return (perplexity, number of predicted tokens) of `model` on `ids`.

    model: anything called as model(ids [1, T]) → logits [1, T, V] (the Transformer).

    >>> uniform = torch.nn.Embedding(10, 10).requires_grad_(False)  # zero logits: p = 1/10
    >>> _ = uniform.weight.zero_()
    >>> ppl, n = perplexity(uniform, [i % 10 for i in range(20)], ctx=8, progress=False)
    >>> round(ppl, 4), n  # windows of 8, 8 and 4 tokens predict 7 + 7 + 3
    (10.0, 17)
    """
    if ctx < 2:
        raise ValueError(f"ctx must be >= 2, got {ctx}")
    width = ctx - 1 if bos_id is not None else ctx  # text tokens per window
    stride = width if stride is None else stride
    if not 1 <= stride <= width:
        raise ValueError(f"stride must be in 1..{width} (text tokens per window), got {stride}")
    limit = getattr(getattr(model, "config", None), "max_seq_len", None)
    if limit is not None and ctx > limit:
        raise ValueError(f"ctx {ctx} is longer than the model's max_seq_len {limit}")
    n_min = 1 if bos_id is not None else 2
    if len(ids) < n_min:
        raise ValueError(f"need at least {n_min} tokens to score, got {len(ids)}")
    device = next(model.parameters()).device
    all_ids = torch.tensor(ids, dtype=torch.long)
    windows = list(_windows(len(ids), ctx, stride, bos_id is not None))

    nll_sum, n_tokens = 0.0, 0
    for begin, end, scored in tqdm(windows, desc="perplexity", unit="win", disable=not progress):
        x = all_ids[begin:end]
        if bos_id is not None:
            x = torch.cat([torch.tensor([bos_id]), x])
        x = x.to(device)[None]  # [1, T]
        logits = model(x)[0, -scored - 1 : -1].float()  # [scored, V], predicting the last `scored`
        targets = x[0, -scored:]
        nll_sum += F.cross_entropy(logits, targets, reduction="sum").item()
        n_tokens += scored
    return math.exp(nll_sum / n_tokens), n_tokens
