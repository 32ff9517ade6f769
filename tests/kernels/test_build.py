"""The kernel library's build cache and the fallback when it cannot build."""

import shutil
import subprocess
import sys

import pytest
import torch
from kernel_helpers import need_kernels

import ember.kernels.build as build
from ember.kernels.linear import Q4Linear


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """An empty kernel cache dir, and no library loaded yet; restored afterwards."""
    monkeypatch.setenv(build.ENV_DIR, str(tmp_path))
    build.reset_for_tests()
    yield tmp_path
    build.reset_for_tests()


def test_second_load_reuses_the_cached_library(fresh, monkeypatch):
    cxx = build._compiler()
    if cxx is None or build.missing_cpu_flags():
        pytest.skip(f"native kernels unavailable here: {build.missing_cpu_flags() or 'no compiler'}")
    monkeypatch.delenv(build.ENV_DIR)
    build.reset_for_tests()
    built = build.library_path(cxx)
    if build.load_kernels() is None:
        pytest.skip(f"native kernels unavailable: {build.unavailable_reason()}")
    monkeypatch.setenv(build.ENV_DIR, str(fresh))
    shutil.copy(built, build.library_path(cxx))  # as if an earlier process had built it here
    build.reset_for_tests()

    def no_rebuild(*a):
        raise AssertionError("rebuilt although the cache holds the library")

    monkeypatch.setattr(build, "build", no_rebuild)
    lib = build.load_kernels()
    assert lib is not None and lib.ember_kernels_version() == 1
    assert [p.name for p in fresh.iterdir()] == [build.library_path(cxx).name]


def test_a_changed_compiler_gets_its_own_library(fresh):
    assert build.library_path("/usr/bin/g++") != build.library_path("/usr/bin/clang++")
    assert build.library_path("/usr/bin/g++").parent == fresh


def test_failed_build_falls_back_cleanly(fresh, monkeypatch):
    monkeypatch.setenv(build.ENV_CXX, "false")  # a "compiler" that always fails
    if build.missing_cpu_flags():
        pytest.skip("the CPU check already refuses the kernels here")
    assert build.load_kernels() is None
    assert "did not build" in build.unavailable_reason()
    assert list(fresh.glob("*.so")) == []  # no half-written library left behind
    torch.manual_seed(0)
    lin = Q4Linear.from_float(torch.randn(64, 128))
    x = torch.randn(2, 128)
    y = lin(x)  # the plain-PyTorch reference runs instead
    assert ((y - x @ lin.dequantize().t()).norm() / y.norm()).item() < 0.01


def test_missing_compiler_and_cpu_flags_are_named(fresh, monkeypatch):
    monkeypatch.setenv(build.ENV_CXX, "no-such-compiler-xyz")
    if not build.missing_cpu_flags():
        assert build.load_kernels() is None
        assert "no-such-compiler-xyz" in build.unavailable_reason()
    assert build.missing_cpu_flags("flags : avx2 fma f16c") == ["avx512f", "avx512bw", "avx512vl", "avx512_vnni"]


@pytest.mark.slow
def test_cold_build_from_an_empty_cache(fresh):
    lib = need_kernels()
    assert lib.ember_kernels_version() == 1
    assert len(list(fresh.glob("ember_q4_*.so"))) == 1


_ORDER = """
import sys
if sys.argv[1] == "torch-first":
    import torch
import ember.kernels.build as build
lib = build.load_kernels()
print(sys.argv[1] == "torch-first" or "torch" not in sys.modules)
import torch
from ember.kernels.linear import Q4Linear
torch.manual_seed(0)
lin, x = Q4Linear.from_float(torch.randn(64, 128)), torch.randn(40, 128)  # 40 rows: torch's bf16 matmul
err = ((lin(x) - x @ lin.dequantize().t()).norm() / (x @ lin.dequantize().t()).norm()).item()
print(lib is not None, err < 0.02, len({l.split()[-1] for l in open("/proc/self/maps") if "libgomp" in l}))
"""


@pytest.mark.parametrize("order", ["torch-first", "kernels-first"])
def test_one_openmp_runtime_whichever_loads_first(order):
    need_kernels()
    out = subprocess.run([sys.executable, "-c", _ORDER, order], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["True", "True", "True", "1"]  # build.py alone leaves torch out; one libgomp
