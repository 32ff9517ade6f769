"""Plan-and-execute (Wang et al. 2023, "Plan-and-Solve"; the LangChain agent of that name):
the model writes a numbered plan, each step runs as a short ReAct loop that sees the
results so far, then the model revises: it answers (`FINAL: ...`) or writes a new plan
(`REVISE:` and numbered steps), at most `max_revisions` times.

`max_steps` bounds every model turn together (planning, steps, revisions). The trace holds
one entry per phase: {"kind": "plan" | "execute" | "revise", ...}.

>>> from ember.agents.builtin import build_tools
>>> from ember.agents.react import ScriptedModel, answer, call
>>> from ember.agents.registry import Toolbox
>>> model = ScriptedModel([answer("1. Multiply 6 by 7."), call("calculator", expression="6*7"),
...                        answer("42"), answer("FINAL: 42")])
>>> r = plan_and_execute(model, Toolbox(build_tools(["calculator"])), "What is 6 times 7?")
>>> r.answer, [s["kind"] for s in r.steps]
('42', ['plan', 'execute', 'revise'])
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from ember.agents.react import REACT_SYSTEM, AgentResult, Model, react
from ember.agents.registry import Toolbox

PLAN_SYSTEM = ("Write a short numbered plan, at most {n} steps, one per line (\"1. ...\"), for the "
               "user's task. Do not carry it out yet.")
REVISE_SYSTEM = ("You planned and carried out steps for the user's task. If the results answer it, "
                 "reply \"FINAL: \" and the answer. Otherwise reply \"REVISE:\" and a new numbered plan.")
_NUMBERED = re.compile(r"^\s*(\d+)[.)]\s+(.+?)\s*$")


def parse_plan(text: str, max_plan: int) -> list[str]:
    """The steps of a numbered plan (any non-empty lines when none is numbered).

    >>> parse_plan("Plan:\\n1. Look it up.\\n2) Compute.\\n", 5)
    ['Look it up.', 'Compute.']
    """
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    numbered = [m.group(2) for ln in lines if (m := _NUMBERED.match(ln))]
    return (numbered or lines)[:max_plan]


def plan_and_execute(model: Model, toolbox: Toolbox, task: str, *, max_steps: int = 12, max_plan: int = 4,
                     steps_per_item: int = 3, max_revisions: int = 1,
                     on_step: Callable[[dict], Any] | None = None) -> AgentResult:
    """Plan, execute each item with `react`, revise; returns the answer and the trace."""
    for name, v, lo in (("max_steps", max_steps, 3), ("max_plan", max_plan, 1),
                        ("steps_per_item", steps_per_item, 1), ("max_revisions", max_revisions, 0)):
        if not isinstance(v, int) or v < lo:
            raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")
    if not isinstance(task, str) or not task.strip():
        raise ValueError("the task is empty")
    result, budget = AgentResult(answer=None), max_steps

    def record(entry: dict) -> None:
        result.steps.append(entry)
        if on_step is not None:
            on_step(entry)

    user = {"role": "user", "content": task}
    reply = model([{"role": "system", "content": PLAN_SYSTEM.format(n=max_plan)}, user], [], "none")
    budget -= 1
    plan = parse_plan(reply.get("content") or "", max_plan) or [task]
    record({"kind": "plan", "plan": plan})
    done: list[tuple[str, str | None]] = []
    for revision in range(max_revisions + 1):
        for item in plan:
            if budget <= 1:  # keep one turn for the revision that answers
                break
            sub = react(model, toolbox, item, max_steps=min(steps_per_item, budget - 1), system=REACT_SYSTEM,
                        context=[{"role": "user", "content": _progress(task, plan, done)}])
            budget -= len(sub.steps)
            done.append((item, sub.answer))
            record({"kind": "execute", "item": item, "answer": sub.answer, "steps": sub.steps})
        messages = [{"role": "system", "content": REVISE_SYSTEM}, user,
                    {"role": "user", "content": _progress(task, plan, done)}]
        text = (model(messages, [], "none").get("content") or "").strip()
        budget -= 1
        revise = text.upper().startswith("REVISE:") and revision < max_revisions and budget > 2
        record({"kind": "revise", "reply": text, "revised": revise})
        if not revise:
            result.answer = re.sub(r"^\s*FINAL:\s*", "", text, flags=re.IGNORECASE) or None
            result.stopped = "answer" if result.answer else "max_steps"
            return result
        plan = parse_plan(text[len("REVISE:"):], max_plan) or plan
        record({"kind": "plan", "plan": plan})
    result.stopped = "max_steps"
    return result


def _progress(task: str, plan: list[str], done: list[tuple[str, str | None]]) -> str:
    lines = [f"Task: {task}", "Plan:", *(f"{i}. {s}" for i, s in enumerate(plan, 1))]
    if done:
        lines += ["Results so far:", *(f"- {s} -> {a if a is not None else '(no result)'}" for s, a in done)]
    return "\n".join(lines)
