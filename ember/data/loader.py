"""Deterministic, rank-aware pre-training batches: `loader.batch(step)` is a pure function.

Each loader draws the GLOBAL batch of a step from (seed, step) and returns only this
rank's contiguous rows, so one process with batch B sees exactly the rows that
world_size processes with B / world_size rows each see together (rank 0 the first ones).
There is no iterator state: a run resumed at step s simply asks for batch(s).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from .shards import TokenSplit


class _Loader:
    def __init__(self, split: TokenSplit, seq_len: int, batch_size: int, seed: int = 0,
                 rank: int = 0, world_size: int = 1):
        for name, v, low in (("seq_len", seq_len, 1), ("batch_size", batch_size, 1),
                             ("world_size", world_size, 1), ("seed", seed, 0)):
            if not isinstance(v, int) or v < low:
                raise ValueError(f"{name} must be an int >= {low}, got {v!r}")
        if batch_size % world_size:
            raise ValueError(f"batch_size {batch_size} is not divisible by world_size {world_size}")
        if not isinstance(rank, int) or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank!r} is not in [0, world_size={world_size})")
        _check_length(split, seq_len)
        self.split, self.seq_len, self.batch_size, self.seed = split, seq_len, batch_size, seed
        self.rows = batch_size // world_size  # this rank's rows of the global batch
        self.row0 = rank * self.rows

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y) of this rank for `step`, both (B / world_size, T) int64; y is x shifted by one."""
        if not isinstance(step, int | np.integer) or step < 0:
            raise ValueError(f"step must be an int >= 0, got {step!r}")
        return _xy(self._windows(int(step)))

    def _windows(self, step: int) -> np.ndarray:  # (rows, T + 1) token ids
        raise NotImplementedError


class RandomWindows(_Loader):
    """nanoGPT-style: windows of T + 1 tokens at uniformly random offsets of the split.

    >>> x, y = RandomWindows(open_split("data/py", "train"), 256, 8).batch(0)  # doctest: +SKIP
    >>> x.shape, bool((x[:, 1:] == y[:, :-1]).all())  # doctest: +SKIP
    (torch.Size([8, 256]), True)
    """

    def _windows(self, step: int) -> np.ndarray:
        # A window starting at s needs s + T + 1 <= len(split). All B starts are drawn so
        # the global batch is the same whatever the world size; this rank keeps its rows.
        starts = np.random.default_rng([self.seed, step]).integers(
            0, len(self.split) - self.seq_len, size=self.batch_size)
        mine = starts[self.row0: self.row0 + self.rows]
        return np.stack([self.split.tokens(int(s), self.seq_len + 1) for s in mine])


class PackedDocuments(_Loader):
    """Documents shuffled per epoch, concatenated (with their separators), cut into windows.

    Epoch e orders the documents by a permutation seeded by (seed, e); its stream is cut
    into len(split) // (T + 1) consecutive windows of T + 1 tokens (the last < T + 1 tokens
    are dropped), and step s takes global windows [s*B, (s+1)*B), running on into the next
    epoch. Every document's tokens appear exactly once per epoch, bar that short tail.

    >>> loader = PackedDocuments(open_split("data/py", "train"), 256, 8, seed=1)  # doctest: +SKIP
    >>> loader.windows_per_epoch  # doctest: +SKIP
    4082
    """

    def __init__(self, split: TokenSplit, seq_len: int, batch_size: int, seed: int = 0,
                 rank: int = 0, world_size: int = 1):
        super().__init__(split, seq_len, batch_size, seed, rank, world_size)
        self.doc_lengths = split.doc_ends - split.doc_starts
        self.windows_per_epoch = len(split) // (seq_len + 1)
        # Epoch -> (order, stream end of each ordered document); a pure cache of the last
        # two epochs, since one batch can straddle an epoch boundary.
        self._epochs: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The document indices of the split in the order epoch `epoch` packs them."""
        return np.random.default_rng([self.seed, epoch]).permutation(self.split.n_documents)

    def _epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        if epoch not in self._epochs:
            order = self.epoch_order(epoch)
            self._epochs = {**dict(list(self._epochs.items())[-1:]),
                            epoch: (order, np.cumsum(self.doc_lengths[order]))}
        return self._epochs[epoch]

    def _windows(self, step: int) -> np.ndarray:
        T1 = self.seq_len + 1
        g = step * self.batch_size + self.row0 + np.arange(self.rows, dtype=np.int64)
        epochs, w = np.divmod(g, self.windows_per_epoch)
        out = np.empty((self.rows, T1), dtype=self.split.shards[0].dtype)
        for e in np.unique(epochs):
            m = epochs == e
            order, ends = self._epoch(int(e))
            pos = (w[m] * T1)[:, None] + np.arange(T1)  # (rows_e, T + 1) stream positions
            d = np.searchsorted(ends, pos, side="right")  # which ordered document holds each
            doc = order[d]
            offset = pos - (ends[d] - self.doc_lengths[doc])  # position within that document
            out[m] = self.split.gather(self.split.doc_starts[doc] + offset)
        return out


LOADERS = {"random": RandomWindows, "packed": PackedDocuments}


def build_loader(kind: str, split: TokenSplit, seq_len: int, batch_size: int, seed: int = 0,
                 rank: int = 0, world_size: int = 1) -> RandomWindows | PackedDocuments:
    """A loader by name: "random" (RandomWindows) or "packed" (PackedDocuments).

    >>> build_loader("packed", split, 128, 16, rank=1, world_size=2).batch(0)[0].shape  # doctest: +SKIP
    torch.Size([8, 128])
    """
    if kind not in LOADERS:
        raise ValueError(f"unknown loader kind {kind!r}; choose one of {sorted(LOADERS)}")
    return LOADERS[kind](split, seq_len, batch_size, seed, rank, world_size)


def eval_windows(split: TokenSplit, seq_len: int, max_windows: int,
                 batch_size: int = 1) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The split's first min(max_windows, len // (T + 1)) non-overlapping windows, in order,
    as (x, y) batches of up to `batch_size` rows: the same tokens every evaluation.

    >>> sum(x.numel() for x, _ in eval_windows(val, 64, max_windows=10, batch_size=4))  # doctest: +SKIP
    640
    """
    _check_length(split, seq_len)
    for name, v in (("max_windows", max_windows), ("batch_size", batch_size)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    T1 = seq_len + 1
    n = min(max_windows, len(split) // T1)

    def batches():
        for a in range(0, n, batch_size):
            ks = range(a, min(n, a + batch_size))
            yield _xy(np.stack([split.tokens(k * T1, T1) for k in ks]))

    return batches()


def _check_length(split: TokenSplit, seq_len: int) -> None:
    if len(split) < seq_len + 1:
        raise ValueError(f"the {split.name} split has {len(split)} tokens, fewer than "
                         f"seq_len + 1 = {seq_len + 1} needed for one window")


def _xy(windows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    t = torch.from_numpy(windows.astype(np.int64))  # (B, T + 1)
    return t[:, :-1].contiguous(), t[:, 1:].contiguous()
