"""Weight conversion at the edge: foreign names and layouts ↔ ember's, by explicit key tables.

Tables map a foreign key template to an ember template, `{}` standing for the layer index
(e.g. "model.layers.{}.mlp.up_proj.weight" → "layers.{}.feed_forward.w3.weight"). Only this
package knows Hugging Face and GGUF names.
"""

from __future__ import annotations

import re

import torch

_LAYER_INDEX = re.compile(r"\.(\d+)\.")


def split_layer(key: str) -> tuple[str, int | None]:
    """("model.layers.3.mlp.up_proj.weight") → ("model.layers.{}.mlp.up_proj.weight", 3).

    >>> split_layer("blk.12.attn_q.weight")
    ('blk.{}.attn_q.weight', 12)
    """
    m = _LAYER_INDEX.search(key)
    if m is None:
        return key, None
    return f"{key[: m.start()]}.{{}}.{key[m.end():]}", int(m.group(1))


def fill(template: str, layer: int | None) -> str:
    return template if layer is None else template.replace("{}", str(layer))


def with_bias(linears: dict[str, str]) -> dict[str, str]:
    """A table of linear/norm modules → the table of their weights and biases.

    >>> with_bias({"ln": "norm"})
    {'ln.weight': 'norm.weight', 'ln.bias': 'norm.bias'}
    """
    return {f"{h}.{s}": f"{e}.{s}" for h, e in linears.items() for s in ("weight", "bias")}


def unknown_keys_error(source: str, keys: list[str], known) -> ValueError:
    shown = ", ".join(sorted(keys)[:10]) + (" ..." if len(keys) > 10 else "")
    return ValueError(f"{source}: {len(keys)} tensor(s) with no ember name: {shown} (known: {sorted(known)})")


# llama.cpp's GGUF converter reorders the rows of attn_q/attn_k within each head so that RoPE
# rotates adjacent pairs (x[2i], x[2i+1]); HF checkpoints rotate halves (x[i], x[i + Dh/2]).
# Head h's rows [a0..a_{n-1}, b0..b_{n-1}] (halves) become [a0, b0, a1, b1, ...] (pairs).


def rope_rows_half_to_interleaved(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """HF (rotate-half) row order → GGUF (interleaved) row order, for wq/wk weights or biases.

    >>> rope_rows_half_to_interleaved(torch.arange(4), 1)
    tensor([0, 2, 1, 3])
    """
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def rope_rows_interleaved_to_half(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """The inverse of `rope_rows_half_to_interleaved`.

    >>> rope_rows_interleaved_to_half(torch.tensor([0, 2, 1, 3]), 1)
    tensor([0, 1, 2, 3])
    """
    return w.reshape(n_heads, w.shape[0] // n_heads // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)
