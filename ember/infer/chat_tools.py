"""What the generation endpoints add to a plain request: tools, tool_choice and
response_format for chat (tool_calls.py does the work), and vLLM's sampling fields that
need more than a SamplingParams field: min_tokens (a token mask), best_of,
stop_token_ids and include_stop_str_in_output.

Per choice, the engine gets at most one constraint: the tools' or the response format's
grammar, AND-ed with min_tokens' mask of the end tokens. A grammar that is complete and
allows nothing but an end token wins over min_tokens: the output cannot grow past its end.

    >>> m = MinTokens(2, [0], size=3)
    >>> m.allowed().tolist(); m.advance(1); m.advance(1); m.allowed().tolist()
    [False, True, True]
    [True, True, True]
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .protocol import APIError
from .tool_calls import (
    ToolError,
    build_grammar,
    check_history,
    check_schema,
    check_tools,
    render_prompt,
    resolve_tool_choice,
)
from .tool_stream import ToolCallStream


@dataclass
class ChatSetup:
    """A chat request's prompt and how its replies are decoded and read back."""

    ids: list[int]
    choice: str = "none"  # "none", "auto", "required" or the one function's name
    grammar: object = None  # ember.infer.constrained.Grammar, or None: free decoding
    incremental: bool = False  # stream a call's arguments as they are generated


def _api_error(e: ToolError) -> APIError:
    return APIError(400, str(e), param=e.param)


def setup_chat(tokenizer, body) -> ChatSetup:
    """Prompt ids and decoding mode of a ChatCompletionRequest; APIError (400) naming the
    bad field for tools, tool_choice, response_format or a history that does not add up."""
    messages = [m.model_dump(exclude_none=True) | {"content": m.text() if m.content is not None else None}
                for m in body.messages]
    try:
        tools = check_tools([t.model_dump(exclude_none=True) for t in body.tools or []])
        tc = body.tool_choice
        choice = resolve_tool_choice(tools, tc.model_dump() if hasattr(tc, "model_dump") else tc)
        check_history(messages)
        ids = render_prompt(tokenizer, messages, tools if choice != "none" else [])
        rf = body.response_format.model_dump(by_alias=True) if body.response_format else None
        grammar = build_grammar(tokenizer, tools, choice, body.parallel_tool_calls, rf, body.constrained_tools)
    except ToolError as e:
        raise _api_error(e) from None
    incremental = grammar is not None and choice != "none"
    guided = guided_grammar(tokenizer, body)
    if guided is not None and choice != "none":
        raise APIError(400, "guided_json/guided_regex/guided_choice need tool_choice 'none' (or no tools)",
                       param="tool_choice")
    return ChatSetup(ids, choice, grammar or guided, incremental)


def guided_grammar(tokenizer, body):
    """vLLM's guided_json / guided_regex / guided_choice as a grammar (at most one), or None."""
    from ember.infer import constrained as C

    asked = [f for f in ("guided_json", "guided_regex", "guided_choice") if getattr(body, f) is not None]
    if len(asked) > 1 or (asked and getattr(body, "response_format", None) is not None):
        raise APIError(400, f"{' and '.join(asked + ['response_format'][: 2 - len(asked)])} cannot be combined: "
                            "give one constraint", param=asked[-1])
    if not asked:
        return None
    field, value = asked[0], getattr(body, asked[0])
    try:
        if field == "guided_json":
            check_schema(value, field)
            return C.json_schema(value, tokenizer)
        return (C.regex if field == "guided_regex" else C.choice)(value, tokenizer)
    except ToolError as e:
        raise _api_error(e) from None
    except (ValueError, RecursionError) as e:
        raise APIError(400, f"{field} cannot be used for decoding: {e}", param=field) from None


class ChatDeltas:
    """A chat stream's deltas per choice: content as it comes, or (tool_choice not "none")
    through a ToolCallStream each; finish_reason "tool_calls" for a choice that called."""

    def __init__(self, setup: ChatSetup, plan, tokenizer):
        self.plan, self.tokenizer = plan, tokenizer
        on = setup.choice != "none" and not plan.zero
        self.streams = {i: ToolCallStream(setup.incremental) for i, _, _ in plan.specs} if on else {}

    def __call__(self, ev) -> list[dict]:
        """The deltas of one engine event (worker.Event) of choice ev.index."""
        plan, i, last = self.plan, ev.index, ev.result is not None
        if plan.zero:
            return []
        text = ev.text + (stop_suffix(self.tokenizer, ev.result, plan.stops, plan.end_ids) if last else "")
        if i not in self.streams:
            return [{"content": text}] if text else []
        return self.streams[i].push(text) + (self.streams[i].finish() if last else [])

    def reason(self, i: int, finish_reason: str) -> str:
        if self.plan.zero:
            return "length"
        calls = i in self.streams and self.streams[i].n_calls
        return "tool_calls" if calls and finish_reason == "stop" else finish_reason


def check_sampling_extras(body, vocab_size: int, max_tokens: int) -> None:
    """best_of, stop_token_ids and min_tokens against n, the vocabulary and max_tokens."""
    if body.best_of is not None and body.best_of != body.n:
        raise APIError(400, f"best_of {body.best_of} is not supported: this server returns every sample it draws, "
                            f"so best_of must equal n ({body.n}) or be omitted", param="best_of")
    for i, t in enumerate(body.stop_token_ids or []):
        if t >= vocab_size:
            raise APIError(400, f"stop_token_ids[{i}]: token id {t} is outside the vocabulary 0..{vocab_size - 1}",
                           param=f"stop_token_ids[{i}]")
    if body.min_tokens > max_tokens:
        raise APIError(400, f"min_tokens {body.min_tokens} exceeds max_tokens {max_tokens}", param="min_tokens")


def decoding(tokenizer, body, grammar) -> dict:
    """A Plan's decoding fields for a request: its constraint factory, and the stop strings
    and end ids include_stop_str_in_output reads."""
    end_ids = frozenset(body.stop_token_ids or ()) | frozenset(() if body.ignore_eos else tokenizer.eos_token_ids)
    check_budget(tokenizer, grammar, body.max_new_tokens)
    return {"constraint": constraint_factory(grammar, body.min_tokens, end_ids, tokenizer.vocab_size),
            "stops": tuple(body.stop_list()) if body.include_stop_str_in_output else (), "end_ids": end_ids}


def check_budget(tokenizer, grammar, max_tokens: int | None) -> None:
    """APIError (400) when max_tokens is below the tokens of the grammar's shortest output:
    no reply could be valid. max_tokens None (whatever the context leaves) or 0 (no
    generation) is not checked."""
    if grammar is None or not max_tokens:
        return
    try:
        need = grammar.min_tokens(tokenizer)
    except ValueError:  # no finite output: nothing to compare with
        return
    if max_tokens < need:
        what = "call" if grammar.description.startswith("tool_calls") else "output"
        raise APIError(400, f"max_tokens {max_tokens} is below the {need} tokens the shortest valid {what} needs "
                            f"({grammar.shortest()!r})", param="max_tokens")


def constraint_factory(grammar, min_tokens: int, end_ids, size: int):
    """A function making each choice's constraint, or None when nothing is constrained."""
    if grammar is None and min_tokens == 0:
        return None

    def make():
        parts = ([grammar.start()] if grammar is not None else []) + \
                ([MinTokens(min_tokens, end_ids, size)] if min_tokens else [])
        return parts[0] if len(parts) == 1 else AllOf(*parts)

    return make


class MinTokens:
    """vLLM's min_tokens: the end tokens (EOS, stop_token_ids) are masked until n tokens
    have been generated. Stop strings still stop, as in vLLM."""

    def __init__(self, n: int, end_ids, size: int):
        self.n, self.count, self.done = n, 0, False
        self._mask = torch.ones(size, dtype=torch.bool)
        ends = [i for i in end_ids if 0 <= i < size]
        self._mask[ends] = False
        self._all = torch.ones(size, dtype=torch.bool)

    def allowed(self) -> torch.Tensor:
        return self._mask if self.count < self.n else self._all

    def advance(self, token_id: int) -> None:
        self.count += 1

    def text(self) -> str:
        return ""


class AllOf:
    """Several constraints at once: a token must be allowed by each (the first one, a
    grammar, wins when together they allow nothing); done when the first is done."""

    def __init__(self, first, *rest):
        self.parts = (first, *rest)
        self.budget_aware = getattr(first, "budget_aware", False)

    def allowed(self, remaining: int | None = None) -> torch.Tensor:
        first = self.parts[0]
        masks = [first.allowed(remaining) if remaining is not None else first.allowed()]
        masks += [p.allowed() for p in self.parts[1:]]
        both = masks[0]
        for m in masks[1:]:
            both = both & m
        return both if bool(both.any()) else masks[0]

    def advance(self, token_id: int) -> None:
        for p in self.parts:
            p.advance(token_id)

    @property
    def done(self) -> bool:
        return self.parts[0].done

    def text(self) -> str:
        return self.parts[0].text() if hasattr(self.parts[0], "text") else ""


def stop_suffix(tokenizer, result, stops, end_ids) -> str:
    """The stop string that ended a result (include_stop_str_in_output), or "" when EOS,
    a stop token or max_tokens ended it. The engine cuts the text before the stop string:
    the decoded tokens continue with it."""
    if result is None or result.finish_reason != "stop" or not stops or not result.token_ids:
        return ""
    if result.token_ids[-1] in end_ids:
        return ""
    rest = tokenizer.decode(result.token_ids)
    if not rest.startswith(result.text):
        return ""
    rest = rest[len(result.text):]
    return next((s for s in sorted(stops, key=len) if rest.startswith(s)), "")  # the shortest completes first
