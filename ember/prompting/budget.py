"""Budget forcing (Muennighoff et al. 2025, "s1"): control how long a model thinks.

The reply is forced to open with `<think>`. The thought then runs until the model closes it
or has spent `budget` tokens; at the budget, `</think>` is forced (the thought is cut). To
think longer, an early `</think>` is replaced by "Wait" (at most `extend` times) and the
thought goes on. Then the answer is generated after `</think>`.

The model is any `complete(ids, max_tokens, stop) -> (text, n_tokens, stopped)` — greedy
continuation of token ids, ending at a stop string (excluded from text, stopped True), at
EOS (stopped True) or after max_tokens (stopped False). `engine_complete` wraps a model.

    >>> script = iter([("3 + 4 = 7\\n", 6, True), ("The answer is 7.", 5, True)])
    >>> r = budget_force(lambda ids, n, stop: next(script), [1, 2], _Chars(), budget=32)
    >>> r.text, r.thinking_tokens, r.forced_stop
    ('<think>\\n3 + 4 = 7\\n</think>\\nThe answer is 7.', 6, False)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

Complete = Callable[[list[int], int, list[str]], tuple[str, int, bool]]
OPEN, CLOSE, WAIT = "<think>\n", "</think>", "Wait\n"


@dataclass
class BudgetResult:
    """One budget-forced reply."""

    thought: str
    answer: str
    thinking_tokens: int
    waits: int
    forced_stop: bool
    """True when the budget ran out and `</think>` was forced."""

    @property
    def text(self) -> str:
        return f"{OPEN}{self.thought}{CLOSE}\n{self.answer}"


class _Chars:
    """A stand-in tokenizer: one id per character (for examples and tests)."""

    def encode(self, text: str) -> list[int]:
        return [ord(c) for c in text]


def budget_force(complete: Complete, prompt_ids: list[int], tok, budget: int, extend: int = 0,
                 answer_tokens: int = 24) -> BudgetResult:
    """Generate a thought of at most `budget` tokens (replacing up to `extend` early
    `</think>` with "Wait"), then the answer."""
    if budget < 0 or extend < 0 or answer_tokens < 1:
        raise ValueError(f"budget and extend must be >= 0 and answer_tokens >= 1, got {budget}, {extend}, "
                         f"{answer_tokens}")
    head = list(prompt_ids) + tok.encode(OPEN)
    thought, used, waits, forced = "", 0, 0, True
    while used < budget:
        text, n, stopped = complete(head + tok.encode(thought), budget - used, [CLOSE])
        thought, used = thought + text, used + n
        if not stopped:
            break  # the budget ran out mid-thought
        if waits < extend and used < budget:
            thought += ("" if thought.endswith("\n") or not thought else "\n") + WAIT
            waits += 1
            continue
        forced = False
        break
    if thought and not thought.endswith("\n"):
        thought += "\n"
    answer, _, _ = complete(head + tok.encode(thought + CLOSE + "\n"), answer_tokens, [])
    return BudgetResult(thought, answer, used, waits, forced)


def engine_complete(model, tok) -> Complete:
    """Greedy continuation through the engine, as `budget_force` wants it."""
    from ember.infer.engine import Engine
    from ember.infer.sampling import SamplingParams

    def complete(ids: list[int], max_tokens: int, stop: list[str]) -> tuple[str, int, bool]:
        engine = Engine(model, tok, max_batch_size=1)
        out = engine.generate([ids], SamplingParams(temperature=0, max_tokens=max_tokens, stop=tuple(stop)))[0]
        return out.text, out.completion_tokens, out.finish_reason == "stop"

    return complete
