"""ReAct (Yao et al. 2022): the model thinks, calls tools, reads their observations, and
repeats until it answers without a call, or `max_steps` model turns have passed.

The model is any callable `model(messages, tools, tool_choice) -> message`, the message an
OpenAI assistant message: {"role": "assistant", "content": str | None, "tool_calls": [
{"id", "type": "function", "function": {"name", "arguments": JSON string}}]}. Tools run
through a `Toolbox`, which validates arguments and gates side effects; every mistake comes
back to the model as an observation. The trace (`AgentResult.steps`) is plain JSON.

>>> from ember.agents.builtin import build_tools
>>> from ember.agents.registry import Toolbox
>>> model = ScriptedModel([call("calculator", expression="6 * 7"), answer("The answer is 42.")])
>>> r = react(model, Toolbox(build_tools(["calculator"])), "What is 6 times 7?")
>>> r.answer, r.steps[0]["observations"]
('The answer is 42.', ['42'])
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ember.agents.registry import Toolbox, requested_tools

REACT_SYSTEM = ("You solve the user's task step by step. Think briefly, call a tool when it helps, "
                "read its result, and when you know the answer reply with it and no tool call.")

Model = Callable[[list[dict], list[dict], str], dict]


@dataclass
class AgentResult:
    """The final answer (None if max_steps ran out first) and the step-by-step trace."""

    answer: str | None
    steps: list[dict] = field(default_factory=list)
    stopped: str = "answer"
    """"answer", or "max_steps" when the budget ran out."""

    def to_json(self) -> dict:
        return {"answer": self.answer, "steps": self.steps, "stopped": self.stopped}


def call(name: str, **arguments) -> dict:
    """An assistant message calling one tool (for scripted models and tests)."""
    return {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_0", "type": "function", "function": {"name": name, "arguments": json.dumps(arguments)}}]}


def answer(text: str) -> dict:
    """An assistant message that answers."""
    return {"role": "assistant", "content": text, "tool_calls": []}


class ScriptedModel:
    """Replies from a fixed list, in order (or computed from the messages by callables);
    records the messages it saw in `seen`."""

    def __init__(self, replies: list[dict | Callable[[list[dict]], dict]]):
        self.replies, self.seen = list(replies), []

    def __call__(self, messages: list[dict], tools: list[dict], tool_choice: str = "auto") -> dict:
        self.seen.append([dict(m) for m in messages])
        if not self.replies:
            return answer("(no more scripted replies)")
        r = self.replies.pop(0)
        return r(messages) if callable(r) else r


def react(model: Model, toolbox: Toolbox, task: str, *, max_steps: int = 8, system: str = REACT_SYSTEM,
          on_step: Callable[[dict], Any] | None = None, tool_choice: str = "auto",
          context: list[dict] | None = None) -> AgentResult:
    """Run the loop on `task`. Each step is one model turn: {"step", "thought", "tool_calls",
    "observations"} (or "answer" on the last), passed to `on_step` as it completes.
    `context` messages go between the system message and the task (plan-and-execute's)."""
    if not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"max_steps must be an int >= 1, got {max_steps!r}")
    if not isinstance(task, str) or not task.strip():
        raise ValueError("the task is empty")
    messages = [{"role": "system", "content": system}, *(context or []), {"role": "user", "content": task}]
    result = AgentResult(answer=None)
    for i in range(max_steps):
        reply = model(messages, toolbox.specs(), tool_choice)
        step, done = run_turn(reply, toolbox, messages, i)
        result.steps.append(step)
        if on_step is not None:
            on_step(step)
        if done:
            result.answer = step["answer"]
            return result
    result.stopped = "max_steps"
    return result


def run_turn(reply: dict, toolbox: Toolbox, messages: list[dict], index: int) -> tuple[dict, bool]:
    """Append the model's reply and the tools' observations to messages; (step, answered)."""
    calls = [c for c in (reply.get("tool_calls") or []) if isinstance(c, dict)]
    content = reply.get("content")
    messages.append({"role": "assistant", "content": content, "tool_calls": calls} if calls
                    else {"role": "assistant", "content": content or ""})
    step: dict[str, Any] = {"step": index, "thought": content}
    if not calls:
        step["answer"] = (content or "").strip()
        return step, True
    step["tool_calls"], step["observations"] = [], []
    for k, c in enumerate(calls):
        fn = c.get("function") or {}
        name, args = str(fn.get("name")), fn.get("arguments", "{}")
        obs = toolbox.call(name, args)
        step["tool_calls"].append({"name": name, "arguments": _loads(args)})
        step["observations"].append(obs)
        messages.append({"role": "tool", "tool_call_id": c.get("id", f"call_{k}"), "name": name, "content": obs})
    return step, False


def _loads(args: Any) -> Any:
    if not isinstance(args, str):
        return args
    try:
        return json.loads(args)
    except ValueError:
        return args


def make_toolbox(tools, task: str, allow=(), confirm=None) -> Toolbox:
    """A toolbox whose side-effect tools are allowed when the caller allows them or the
    user's task names them; nothing later in the run can add to that."""
    tools = list(tools)
    return Toolbox(tools, allow=set(allow) | requested_tools(task, tools), confirm=confirm)
