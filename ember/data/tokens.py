"""Reading token shards: the manifest (validated against the files) and `TokenSplit`, a
memmapped view of one split as one virtual token stream with document boundaries.

The folder layout is described in ember/data/shards.py, which writes it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

FORMAT, VERSION = "ember-shards", 1
SPLITS = ("train", "val")


@dataclass
class ShardInfo:
    file: str
    n_tokens: int
    n_documents: int


@dataclass
class SplitInfo:
    n_tokens: int = 0
    n_documents: int = 0
    shards: list[ShardInfo] = field(default_factory=list)


@dataclass
class Manifest:
    """manifest.json of a shards folder, checked against the files by `load_manifest`."""

    folder: Path
    tokenizer_fingerprint: str
    vocab_size: int
    dtype: str  # "uint16" | "uint32"
    separator_id: int
    n_documents: int  # source documents; a split counts its parts of them
    splits: dict[str, SplitInfo]

    @property
    def itemsize(self) -> int:
        return np.dtype(self.dtype).itemsize

    def to_dict(self) -> dict:
        return {
            "format": FORMAT, "version": VERSION, "tokenizer_fingerprint": self.tokenizer_fingerprint,
            "vocab_size": self.vocab_size, "dtype": self.dtype, "separator_id": self.separator_id,
            "n_documents": self.n_documents, "splits": {k: asdict(v) for k, v in self.splits.items()},
        }


def load_manifest(folder: str | Path) -> Manifest:
    """Read manifest.json and check every shard file against it (missing, truncated).

    >>> load_manifest("data/py").splits["val"].n_tokens  # doctest: +SKIP
    52114
    """
    folder = Path(folder)
    path = folder / "manifest.json"
    if not path.is_file():
        raise ValueError(f"{path} does not exist: not a finished shards folder "
                         "(rerun prepare_shards with the same arguments to finish it)")
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(d, dict) or d.get("format") != FORMAT or d.get("version") != VERSION:
        raise ValueError(f"{path} is not an {FORMAT} manifest of version {VERSION}")
    try:
        splits = {s: SplitInfo(int(v["n_tokens"]), int(v["n_documents"]),
                               [ShardInfo(**x) for x in v["shards"]])
                  for s, v in d["splits"].items()}
        m = Manifest(folder, d["tokenizer_fingerprint"], int(d["vocab_size"]), d["dtype"],
                     int(d["separator_id"]), int(d["n_documents"]), splits)
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path} is malformed: {type(e).__name__}: {e}") from None
    if m.dtype not in ("uint16", "uint32"):
        raise ValueError(f"{path}: dtype {m.dtype!r} is not uint16 or uint32")
    for name, split in m.splits.items():
        if (sum(s.n_tokens for s in split.shards), sum(s.n_documents for s in split.shards)) != (
                split.n_tokens, split.n_documents):
            raise ValueError(f"{path}: the {name} shards' token or document counts do not add up")
        for shard in split.shards:
            check_shard(folder, shard, m.itemsize)
    return m


def check_shard(folder: Path, shard: ShardInfo, itemsize: int) -> None:
    if Path(shard.file).name != shard.file or not shard.file.endswith(".bin"):
        raise ValueError(f"shard name {shard.file!r} is not a .bin file name in {folder}")
    for path, size in ((folder / shard.file, shard.n_tokens * itemsize),
                       (folder / shard.file.replace(".bin", ".idx"), shard.n_documents * 8)):
        if not path.is_file():
            raise ValueError(f"shard file {path} is missing")
        if path.stat().st_size != size:
            raise ValueError(f"shard file {path} is truncated or corrupt: "
                             f"{path.stat().st_size} bytes where the manifest implies {size}")


def open_split(folder: str | Path, split: str) -> TokenSplit:
    """Memory-map one split ("train" or "val") of a shards folder; empty splits are errors.

    >>> val = open_split("data/py", "val")  # doctest: +SKIP
    >>> val.tokens(0, 4)  # doctest: +SKIP
    array([ 464, 6913,  286, 4217], dtype=uint16)
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {list(SPLITS)}")
    manifest = load_manifest(folder)
    info = manifest.splits.get(split)
    if info is None or info.n_tokens == 0:
        raise ValueError(f"the {split} split of {folder} is empty (was val_fraction 0?); "
                         "prepare the shards again with documents for it")
    return TokenSplit(manifest, split)


class TokenSplit:
    """The shards of one split read as one virtual token array, with document boundaries.

    >>> train = open_split("data/py", "train")  # doctest: +SKIP
    >>> len(train), train.n_documents, train.document(0)[-1] == train.separator_id  # doctest: +SKIP
    (470312, 436, True)
    """

    def __init__(self, manifest: Manifest, split: str):
        info = manifest.splits[split]
        self.name, self.manifest, self.separator_id = split, manifest, manifest.separator_id
        dtype = np.dtype(manifest.dtype).newbyteorder("<")
        folder = manifest.folder
        self.shards = [np.memmap(folder / s.file, dtype=dtype, mode="r", shape=(s.n_tokens,))
                       for s in info.shards]
        self.shard_starts = np.cumsum([0] + [s.n_tokens for s in info.shards], dtype=np.int64)
        ends = []
        for k, s in enumerate(info.shards):
            e = np.fromfile(folder / s.file.replace(".bin", ".idx"), dtype="<u8").astype(np.int64)
            if len(e) and (e[-1] != s.n_tokens or np.any(np.diff(e) < 0) or e[0] < 0):
                raise ValueError(f"index of shard {folder / s.file} is corrupt")
            ends.append(e + self.shard_starts[k])
        self.doc_ends = np.concatenate(ends) if ends else np.zeros(0, np.int64)
        self.doc_starts = np.concatenate([[0], self.doc_ends[:-1]]).astype(np.int64)

    def __len__(self) -> int:
        return int(self.shard_starts[-1])

    @property
    def n_documents(self) -> int:
        return len(self.doc_ends)

    def tokens(self, start: int, length: int) -> np.ndarray:
        """A copy of tokens [start, start + length) of the split, across shard boundaries."""
        if start < 0 or length < 0 or start + length > len(self):
            raise ValueError(f"tokens({start}, {length}) is outside the split's {len(self)} tokens")
        out, pos, end = [], start, start + length
        k = int(np.searchsorted(self.shard_starts, start, side="right")) - 1
        while pos < end:
            base = int(self.shard_starts[k])
            stop = min(end, int(self.shard_starts[k + 1]))
            out.append(self.shards[k][pos - base: stop - base])
            pos, k = stop, k + 1
        return np.concatenate(out) if out else np.zeros(0, self.shards[0].dtype)

    def gather(self, positions: np.ndarray) -> np.ndarray:
        """Tokens at arbitrary positions of the split (any shape), one vectorised read per shard."""
        flat = np.asarray(positions, dtype=np.int64).ravel()
        if len(flat) and (flat.min() < 0 or flat.max() >= len(self)):
            raise ValueError(f"positions outside the split's {len(self)} tokens")
        shard = np.searchsorted(self.shard_starts, flat, side="right") - 1
        out = np.empty(flat.shape, dtype=self.shards[0].dtype)
        for k in np.unique(shard):
            m = shard == k
            out[m] = self.shards[k][flat[m] - self.shard_starts[k]]
        return out.reshape(np.shape(positions))

    def document(self, i: int) -> np.ndarray:
        """Tokens of document i, its separator included."""
        if not 0 <= i < self.n_documents:
            raise ValueError(f"document {i} is outside the split's {self.n_documents} documents")
        start = int(self.doc_starts[i])
        return self.tokens(start, int(self.doc_ends[i]) - start)
