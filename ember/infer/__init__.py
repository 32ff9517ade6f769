"""Inference: sampling, the engine (prefill/decode, stop strings, streaming) and the chat REPL."""

from .engine import Engine, GenerationResult, StopStringMatcher, StreamChunk
from .sampling import Sampler, SamplingParams, sample

__all__ = [
    "Engine",
    "GenerationResult",
    "Sampler",
    "SamplingParams",
    "StopStringMatcher",
    "StreamChunk",
    "sample",
]
