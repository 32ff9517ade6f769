"""Process memory: return freed large buffers to the OS at once.

Loading a model makes many large temporaries (dequantized tensors, quantization scratch).
glibc's malloc raises its mmap threshold after such buffers are freed, so later ones land
on the heap and stay there as fragmentation: SmolLM2's int4 load peaked near 1 GB instead of
~750 MB. A fixed 1 MiB threshold keeps large buffers in their own mappings, which go back to
the OS when freed. This is a process-wide setting, so only entry points (the CLI, the
benchmarks) call it, never library code.
"""

from __future__ import annotations

import ctypes
import ctypes.util

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def release_freed_memory_eagerly(threshold: int = 1 << 20) -> bool:
    """Set glibc's mmap and trim thresholds; False where there is no glibc (macOS, musl)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        ok = libc.mallopt(_M_MMAP_THRESHOLD, threshold) == 1
        return ok and libc.mallopt(_M_TRIM_THRESHOLD, threshold) == 1
    except (OSError, AttributeError, TypeError):
        return False
