"""The kernel library's build cache and the fallback when it cannot build."""

import shutil

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
