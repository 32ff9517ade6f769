"""Build (once) and load the native kernels: q4.cpp compiled by the system C++ compiler into a
shared library cached on disk, called through ctypes.

The library is plain C++ (no torch headers), so a cold build takes seconds, not the minute a
torch extension costs; its name carries a hash of the sources, the flags and the compiler,
so a changed source or compiler builds anew and an unchanged one is loaded at once.

Loading it does not import torch. The library and torch both need the OpenMP runtime
`libgomp.so.1` (torch ships its own copy; g++ links the system's); the dynamic loader
satisfies a soname already loaded with that object, so whichever of the two comes first
brings its libgomp and the other binds to it: one runtime, one thread pool, in either
order (tests/kernels/test_build.py checks both orders through /proc/self/maps).

When the CPU lacks an instruction set the kernels use, or no compiler works, `load_kernels`
returns None and `unavailable_reason` says why: callers fall back to the torch paths.

>>> lib = load_kernels()  # doctest: +SKIP
>>> lib is None or lib.ember_kernels_version() == 1  # doctest: +SKIP
True
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCES = ("q4.cpp", "decode_step.inc")
FLAGS = ("-O3", "-fPIC", "-shared", "-fopenmp", "-std=c++17", "-mavx512f", "-mavx512bw",
         "-mavx512vl", "-mavx512vnni", "-mf16c", "-mfma")
# /proc/cpuinfo names of the instruction sets FLAGS enables.
CPU_FLAGS = ("avx512f", "avx512bw", "avx512vl", "avx512_vnni", "f16c", "fma")
ENV_DIR = "EMBER_KERNELS_DIR"
ENV_CXX = "CXX"


def cache_dir() -> Path:
    """Where built libraries live: $EMBER_KERNELS_DIR, else ~/.cache/ember/kernels."""
    return Path(os.environ.get(ENV_DIR) or Path.home() / ".cache" / "ember" / "kernels")


def missing_cpu_flags(cpuinfo: str | None = None) -> list[str]:
    """The instruction sets the kernels need that this CPU does not list.

    >>> missing_cpu_flags("flags : fpu avx512f avx512bw")
    ['avx512vl', 'avx512_vnni', 'f16c', 'fma']
    """
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return list(CPU_FLAGS)  # not Linux/x86: no way to tell, so no native kernels
    have = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            have.update(line.split(":", 1)[1].split())
    return [f for f in CPU_FLAGS if f not in have]


def _compiler() -> str | None:
    cxx = os.environ.get(ENV_CXX) or "g++"
    return shutil.which(cxx)


def library_path(cxx: str) -> Path:
    """The cached library's path for these sources, flags and compiler."""
    h = hashlib.sha256()
    for name in SOURCES:
        h.update((HERE / name).read_bytes())
    h.update(" ".join(FLAGS).encode())
    h.update(cxx.encode())
    try:
        h.update(subprocess.run([cxx, "--version"], capture_output=True, timeout=30).stdout)
    except (OSError, subprocess.SubprocessError):
        pass
    return cache_dir() / f"ember_q4_{h.hexdigest()[:16]}.so"


def build(cxx: str, out: Path) -> None:
    """Compile q4.cpp into `out`, atomically (a temp file renamed): concurrent builds are safe."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
    os.close(fd)
    try:
        cmd = [cxx, *FLAGS, str(HERE / "q4.cpp"), "-o", tmp]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if p.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}): {p.stderr.strip()[-800:]}")
        os.replace(tmp, out)
        for stale in out.parent.glob("ember_q4_*.so"):  # builds of older sources (safe to unlink while loaded)
            if stale != out:
                stale.unlink(missing_ok=True)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    p, i, f = ctypes.c_void_p, ctypes.c_int, ctypes.c_float
    lib.ember_kernels_version.restype = i
    lib.ember_quantize_q8.argtypes = [p, i, i, p, p, p]
    lib.ember_matmul.argtypes = [i, p, p, p, i, i, p, i, p, i]
    lib.ember_dequant_q4_bf16.argtypes = [p, p, p, i, i, p, i]
    lib.ember_decode_step.argtypes = [p, f, p, p, p, i, p]
    lib.ember_forward.argtypes = [p, f, p, p, p, p, i, p, i, p]
    for fn in (lib.ember_quantize_q8, lib.ember_matmul, lib.ember_dequant_q4_bf16, lib.ember_decode_step,
               lib.ember_forward):
        fn.restype = None
    return lib


@functools.cache
def _load() -> tuple[ctypes.CDLL | None, str | None]:
    missing = missing_cpu_flags()
    if missing:
        return None, f"this CPU lacks {', '.join(missing)}"
    cxx = _compiler()
    if cxx is None:
        return None, f"no C++ compiler ({os.environ.get(ENV_CXX) or 'g++'}) on PATH"
    path = library_path(cxx)
    try:
        if not path.exists():
            build(cxx, path)
        return _declare(ctypes.CDLL(str(path))), None
    except (OSError, RuntimeError, subprocess.SubprocessError) as e:
        return None, f"the native kernels did not build: {e}"


def load_kernels() -> ctypes.CDLL | None:
    """The kernel library (built on first use, then loaded from the cache), or None."""
    return _load()[0]


def unavailable_reason() -> str | None:
    """Why load_kernels() is None (None when the kernels are there)."""
    return _load()[1]


def reset_for_tests() -> None:
    """Forget the loaded library, so the next load_kernels() looks again (env, cache dir)."""
    _load.cache_clear()
