"""Defensive GGUF opening: header, counts, and tensor extents are checked against the file.

GGUF is untrusted input. The `gguf` package parses it; we check first what would
otherwise surface as a numpy or struct error from deep inside, and name the problem.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

GGUF_MAGIC = b"GGUF"
# Smallest possible on-disk record: a KV is a u64 key length, a 1-byte key and a u32 type
# plus at least one byte of value; a tensor info is a u64 name length, 1-byte name, a u32
# n_dims, one u64 dim, a u32 type and a u64 offset.
_MIN_KV_BYTES = 8 + 1 + 4 + 1
_MIN_TENSOR_INFO_BYTES = 8 + 1 + 4 + 8 + 4 + 8


class GGUFError(ValueError):
    pass


def open_gguf(path: str | os.PathLike):
    """Open a GGUF file with `gguf.GGUFReader` after sanity checks; raise GGUFError on damage.

    >>> r = open_gguf(resolve_model("smollm2"))  # doctest: +SKIP
    >>> r.fields["general.architecture"].contents()  # doctest: +SKIP
    'llama'
    """
    path = Path(path)
    if not path.is_file():
        raise GGUFError(f"no such GGUF file: {path}")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(24)
    if len(head) < 24:
        raise GGUFError(f"{path} is not a GGUF file: only {size} bytes, shorter than a GGUF header")
    if head[:4] != GGUF_MAGIC:
        raise GGUFError(f"{path} is not a GGUF file: magic {head[:4]!r}, expected {GGUF_MAGIC!r}")
    version, n_tensors, n_kv = struct.unpack("<IQQ", head[4:24])
    if version not in (2, 3):
        raise GGUFError(f"{path}: unsupported GGUF version {version} (supported: 2, 3)")
    if n_kv * _MIN_KV_BYTES + n_tensors * _MIN_TENSOR_INFO_BYTES > size - 24:
        raise GGUFError(
            f"{path}: header claims {n_tensors} tensors and {n_kv} metadata entries, "
            f"more than a {size}-byte file can hold (truncated or corrupt)"
        )
    from gguf import GGUFReader

    try:
        reader = GGUFReader(path, "r")
    except Exception as e:  # the parser's own errors are numpy/struct/ValueError soup
        raise GGUFError(f"{path}: corrupt or truncated GGUF ({type(e).__name__}: {e})") from None
    for t in reader.tensors:
        end = int(t.data_offset) + int(t.n_bytes)
        if end > size:
            raise GGUFError(
                f"{path}: tensor {t.name!r} spans bytes {t.data_offset}..{end}, "
                f"past the end of the {size}-byte file (truncated)"
            )
    return reader


def gguf_field(reader, key: str, default=None):
    """The decoded value of metadata `key`, or `default` when absent."""
    field = reader.fields.get(key)
    if field is None:
        return default
    try:
        return field.contents()
    except Exception as e:
        raise GGUFError(f"GGUF metadata {key!r} is malformed ({type(e).__name__}: {e})") from None
