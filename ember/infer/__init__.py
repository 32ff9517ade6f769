"""Inference: sampling, the engine (prefill/decode, stop strings, streaming) and the chat REPL.

The names below load on first use, so `ember.infer.params`, `ember.infer.request` and the
torch-free native runner (`ember.infer.native_run`) import without torch.
"""

import importlib

_EXPORTS = {
    "Engine": "engine",
    "GenerationResult": "request",
    "StopStringMatcher": "request",
    "StreamChunk": "request",
    "Sampler": "sampling",
    "SamplingParams": "params",
    "sample": "sampling",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
