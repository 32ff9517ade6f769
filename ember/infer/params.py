"""Sampling parameters: how one request picks tokens and when it stops (no torch here, so
the torch-free native runner and the HTTP layer validate requests with the same checks).

>>> SamplingParams(temperature=0.7, top_p=0.9).greedy
False
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

MAX_LOGPROBS = 20  # the most alternatives a request may ask for (OpenAI's limit)
# The bounds the HTTP server accepts too (infer/protocol.py): every knob lands in a float32
# or int64 tensor row, where a larger value would overflow deep inside a decode step.
MAX_TEMPERATURE = 2.0  # OpenAI's limit
GREEDY_BELOW = 1e-5  # a smaller temperature divides logits to inf in float32: decode greedily
MAX_TOP_K = 2**31 - 1
MIN_REPETITION_PENALTY, MAX_REPETITION_PENALTY = 0.01, 10.0  # tinier would overflow logits
MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed takes a signed 64-bit integer


@dataclass(frozen=True)
class SamplingParams:
    """How one request picks tokens and when it stops.

    >>> SamplingParams(temperature=0).greedy
    True
    """

    temperature: float = 1.0
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1.0 = off
    min_p: float = 0.0  # 0.0 = off
    repetition_penalty: float = 1.0  # CTRL (Keskar et al. 2019); over prompt + generated tokens
    frequency_penalty: float = 0.0  # OpenAI semantics; over generated tokens only
    presence_penalty: float = 0.0  # OpenAI semantics; over generated tokens only
    seed: int | None = None
    max_tokens: int = 256
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    logprobs: int | None = None  # None: none; k: the chosen token's log-prob + top-k alternatives
    prompt_logprobs: bool = False  # log-prob of every prompt token given the ones before it

    def __post_init__(self):
        # Accept a bare string / list for the tuple fields (as JSON gives them), store tuples.
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
        object.__setattr__(self, "stop", stop)
        object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids))
        _check_float("temperature", self.temperature, lo=0.0, hi=MAX_TEMPERATURE)
        _check_int("top_k", self.top_k, lo=0, hi=MAX_TOP_K)
        _check_float("top_p", self.top_p, lo=0.0, hi=1.0, lo_open=True)
        _check_float("min_p", self.min_p, lo=0.0, hi=1.0)
        _check_float("repetition_penalty", self.repetition_penalty,
                     lo=MIN_REPETITION_PENALTY, hi=MAX_REPETITION_PENALTY)
        _check_float("frequency_penalty", self.frequency_penalty, lo=-2.0, hi=2.0)
        _check_float("presence_penalty", self.presence_penalty, lo=-2.0, hi=2.0)
        if self.seed is not None:
            _check_int("seed", self.seed, lo=0, hi=MAX_SEED)
        _check_int("max_tokens", self.max_tokens, lo=1)
        for s in self.stop:
            if not isinstance(s, str) or not s:
                raise ValueError(f"stop strings must be non-empty strings, got {s!r}")
        for t in self.stop_token_ids:
            _check_int("stop_token_ids", t, lo=0)
        if not isinstance(self.ignore_eos, bool):
            raise ValueError(f"ignore_eos must be a bool, got {self.ignore_eos!r}")
        lp = self.logprobs
        if lp is not None and (isinstance(lp, bool) or not isinstance(lp, int) or not 0 <= lp <= MAX_LOGPROBS):
            raise ValueError(f"logprobs must be None or an int in 0..{MAX_LOGPROBS}, got {lp!r}")
        if not isinstance(self.prompt_logprobs, bool):
            raise ValueError(f"prompt_logprobs must be a bool, got {self.prompt_logprobs!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW

    @property
    def uses_penalties(self) -> bool:
        return (
            self.repetition_penalty != 1.0
            or self.frequency_penalty != 0.0
            or self.presence_penalty != 0.0
        )


def _check_float(name, v, lo=None, hi=None, lo_open=False):
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    ok = ok and (lo is None or (v > lo if lo_open else v >= lo)) and (hi is None or v <= hi)
    if not ok:
        lo_s = "(" if lo_open else "["
        raise ValueError(f"{name} must be a number in {lo_s}{lo}, {hi}], got {v!r}")


def _check_int(name, v, lo, hi=None):
    if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v > hi):
        raise ValueError(f"{name} must be an int >= {lo}, got {v!r}" if hi is None else
                         f"{name} must be an int in [{lo}, {hi}], got {v!r}")


@dataclass
class TokenLogprob:
    """One token's log-probability under the model, and the k most likely tokens at that
    position (`top`, by log-prob descending; the token itself is among them when it ranks).

    >>> TokenLogprob(2, -1.4, [(1, -0.4), (2, -1.4)]).top[0][0]
    1
    """

    token_id: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)
