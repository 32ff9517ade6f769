"""A preallocated key/value cache that the caller owns and passes to `Transformer.forward`.

Every row of the batch is a slot with its own positions: a token at absolute position p
writes its K/V at index p of its row, and a query at position p sees indices ≤ p of its
row. Right-padded prompts of different lengths therefore prefill exactly (pads sit past a
row's end, hidden by causality, and are overwritten by that row's later decode writes).
"""

from __future__ import annotations

import torch


class KVCache:
    """Per layer, k and v buffers of shape (B, Hkv, Tmax, Dh).

    >>> c = KVCache(n_layers=2, batch_size=1, max_seq_len=8, n_kv_heads=2, head_dim=4)
    >>> c.k[0].shape
    torch.Size([1, 2, 8, 4])
    """

    def __init__(
        self,
        n_layers: int,
        batch_size: int,
        max_seq_len: int,
        n_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ):
        # One buffer per layer: writing into views of one stacked buffer makes a compiled
        # decode step copy the whole buffer (measured: 10 ms/token became 28 ms).
        shape = (batch_size, n_kv_heads, max_seq_len, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.batch_size, self.max_seq_len = batch_size, max_seq_len

    @classmethod
    def for_model(cls, model, batch_size: int, max_seq_len: int, dtype: torch.dtype | None = None) -> KVCache:
        """A cache sized for `model`, on its device, in its parameter dtype unless given."""
        cfg = model.config
        p = next(model.parameters())
        return cls(
            cfg.n_layers, batch_size, max_seq_len, cfg.n_kv_heads, cfg.head_dim,
            dtype=dtype or p.dtype, device=p.device,
        )

    def rows(self, start: int, stop: int) -> KVCache:
        """Rows start..stop-1 as a cache over the same buffers: a forward on it writes into
        those rows and leaves the others alone (the engine prefills a new sequence into its
        own row while the other rows hold running ones).

        >>> c = KVCache(n_layers=1, batch_size=3, max_seq_len=8, n_kv_heads=2, head_dim=4)
        >>> c.rows(2, 3).k[0].shape, c.rows(2, 3).k[0].data_ptr() == c.k[0][2].data_ptr()
        (torch.Size([1, 2, 8, 4]), True)
        """
        view = object.__new__(KVCache)
        view.k = [k[start:stop] for k in self.k]
        view.v = [v[start:stop] for v in self.v]
        view.batch_size, view.max_seq_len = view.k[0].shape[0], self.max_seq_len
        return view

    def update(self, layer: int, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        """Write k, v (B, Hkv, T, Dh) at row b, index input_pos[b, t]; return the layer's buffers."""
        rows = torch.arange(k.shape[0], device=k.device)[:, None]  # (B, 1), broadcasts with (B, T)
        # Indexing (rows, :, input_pos) selects a (B, T, Hkv, Dh) view: advanced indices first.
        self.k[layer][rows, :, input_pos] = k.transpose(1, 2).to(self.k[layer].dtype)
        self.v[layer][rows, :, input_pos] = v.transpose(1, 2).to(self.v[layer].dtype)
        return self.k[layer], self.v[layer]

    def read(self, row: int, start: int, stop: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """A copy of row `row`'s K/V at positions start..stop-1: per layer (k, v), each
        (Hkv, stop - start, Dh). `write` puts it back, into any row.

        >>> c = KVCache(n_layers=1, batch_size=2, max_seq_len=8, n_kv_heads=2, head_dim=4)
        >>> _ = c.k[0][0].fill_(1.0)
        >>> c.write(1, 2, c.read(0, 0, 3))
        >>> c.k[0][1, 0, :, 0].tolist()
        [0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0]
        """
        return [(k[row, :, start:stop].clone(), v[row, :, start:stop].clone()) for k, v in zip(self.k, self.v)]

    def write(self, row: int, start: int, kv: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Copy K/V from `read` into row `row` at positions start.. (its other positions untouched)."""
        for k, v, (ks, vs) in zip(self.k, self.v, kv):
            n = ks.shape[1]
            k[row, :, start : start + n].copy_(ks)
            v[row, :, start : start + n].copy_(vs)
