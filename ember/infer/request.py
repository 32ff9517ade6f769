"""One request's bookkeeping from admission to finish, and streaming stop-string matching.

The engine (engine.py) owns slots, the cache and the forward passes; a `Request` owns what
one request has produced: its tokens, its text (detokenized as it streams, cut at stop
strings), its log-probs and timings, and the `GenerationResult` it ends with.

>>> m = StopStringMatcher(["END"])
>>> m.push("abc E"), m.push("NDxyz")
(('abc ', False), ('', True))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from .params import SamplingParams, TokenLogprob

__all__ = ["GenerationResult", "Request", "StopStringMatcher", "StreamChunk", "find_stop", "partial_stop_len"]


@dataclass
class GenerationResult:
    """What one request produced. token_ids include a final EOS/stop token if one ended it
    (the text never does); finish_reason is "stop" (EOS, stop token or stop string) or
    "length" (max_tokens). logprobs (aligned with token_ids) and prompt_logprobs (aligned
    with the prompt, first entry None) are None unless the request asked for them."""

    text: str
    token_ids: list[int]
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    ttft_ms: float  # request added → first token sampled (queue wait included)
    decode_tok_s: float  # tokens after the first / time after the first (0 if only one)
    logprobs: list[TokenLogprob] | None = None
    prompt_logprobs: list[TokenLogprob | None] | None = None
    cached_tokens: int = 0  # prompt tokens whose K/V the prefix cache gave (not prefilled)


@dataclass
class StreamChunk:
    """A piece of streamed text; the last chunk of a stream also carries the result."""

    text: str
    result: GenerationResult | None = None


# ---- stop strings ---------------------------------------------------------------------


def find_stop(text: str, stops: Sequence[str]) -> int:
    """Index of the earliest occurrence of any stop string in text, or -1.

    >>> find_stop("a END b STOP", ["STOP", "END"])
    2
    """
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(hits, default=-1)


def partial_stop_len(text: str, stops: Sequence[str]) -> int:
    """Length of the longest suffix of text that is a proper prefix of a stop string: the
    text that must be held back while streaming, because the next token may complete it.

    >>> partial_stop_len("Hello <|e", ["<|end|>"])
    3
    """
    longest = max((len(s) for s in stops), default=1) - 1
    for n in range(min(longest, len(text)), 0, -1):
        tail = text[-n:]
        if any(s.startswith(tail) for s in stops):
            return n
    return 0


class StopStringMatcher:
    """Streaming stop-string cutter: `push(piece) -> (text safe to emit, stopped)`.

    It holds back the longest tail that could begin a stop string. Any stop occurrence
    must start inside that tail or later, so only the held tail plus the new piece is
    searched (no re-scan of the whole text), and emitted text never contains part of a stop.

    >>> m = StopStringMatcher(["END"])
    >>> m.push("abc E"), m.push("NDxyz")
    (('abc ', False), ('', True))
    """

    def __init__(self, stops: Sequence[str]):
        self.stops = tuple(stops)
        self._held = ""

    def push(self, piece: str) -> tuple[str, bool]:
        if not self.stops:
            return piece, False
        buf = self._held + piece
        i = find_stop(buf, self.stops)
        if i >= 0:
            self._held = ""
            return buf[:i], True
        n = partial_stop_len(buf, self.stops)
        self._held = buf[len(buf) - n :]
        return buf[: len(buf) - n], False

    def flush(self) -> str:
        """Release the held tail (the stream ended without completing a stop string)."""
        held, self._held = self._held, ""
        return held


# ---- one request --------------------------------------------------------------------


@dataclass(eq=False)
class Request:
    """One request's state from admission to finish."""

    prompt_ids: list[int]
    params: SamplingParams
    decoder: object  # the tokenizer's stream decoder
    stopper: StopStringMatcher
    stop_ids: frozenset[int]
    slot: int = -1
    token_ids: list[int] = field(default_factory=list)
    text_parts: list[str] = field(default_factory=list)
    delta: str = ""  # text produced since the last `take_delta()`
    logprobs: list[TokenLogprob] = field(default_factory=list)  # one per token_ids entry, if asked
    prompt_logprobs: list[TokenLogprob | None] = field(default_factory=list)  # one per prompt token
    finish_reason: str | None = None
    t_arrival: float = 0.0  # add_request time: TTFT includes any wait in the queue
    t_first: float = 0.0
    t_last: float = 0.0
    constraint: object = None  # a TokenConstraint (ember.infer.constrained) or None
    fork: object = None  # the ForkGroup (fork.py) whose prefill it shares, or None
    cached_tokens: int = 0  # prompt tokens whose K/V came from the prefix cache
    prefilled: int = -1  # prompt tokens in its cache row (-1: not started; scheduler.py)
    spec_drafted: int = 0  # speculative draft tokens proposed (speculative.py)
    spec_accepted: int = 0  # and accepted

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def _emit(self, text: str) -> None:
        if text:
            self.text_parts.append(text)
            self.delta += text

    def append(self, token_id: int, now: float) -> None:
        """Take one sampled token: detokenize, check stops and length."""
        if not self.token_ids:
            self.t_first = now
        self.t_last = now
        self.token_ids.append(token_id)
        if self.constraint is not None:
            self.constraint.advance(token_id)  # the mask allowed it (constrain_step.py)
        if token_id in self.stop_ids:  # EOS / stop token: its text is not part of the reply
            return self._finish("stop", self.decoder.flush())
        text, stopped = self.stopper.push(self.decoder.push(token_id))
        self._emit(text)
        if stopped:
            self.finish_reason = "stop"
        elif self.constraint is not None and self.constraint.done:  # nothing more may follow
            self._finish("stop", self.decoder.flush())
        elif len(self.token_ids) >= self.params.max_tokens:
            self._finish("length", self.decoder.flush())

    def _finish(self, reason: str, tail: str) -> None:
        text, stopped = self.stopper.push(tail)
        self._emit(text)
        if not stopped:
            self._emit(self.stopper.flush())
        self.finish_reason = "stop" if stopped else reason

    def take_delta(self) -> str:
        d, self.delta = self.delta, ""
        return d

    def result(self) -> GenerationResult:
        n = len(self.token_ids)
        elapsed = self.t_last - self.t_first
        return GenerationResult(
            text="".join(self.text_parts),
            token_ids=list(self.token_ids),
            finish_reason=self.finish_reason or "length",
            prompt_tokens=len(self.prompt_ids),
            completion_tokens=n,
            ttft_ms=1000.0 * (self.t_first - self.t_arrival) if n else 0.0,
            decode_tok_s=(n - 1) / elapsed if n > 1 and elapsed > 0 else 0.0,
            logprobs=list(self.logprobs) if self.params.logprobs is not None else None,
            prompt_logprobs=list(self.prompt_logprobs) if self.params.prompt_logprobs else None,
            cached_tokens=self.cached_tokens,
        )
