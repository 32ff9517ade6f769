"""The agent task set: multi-step tasks with checkable numeric answers (arithmetic with the
calculator, lookups in a small fictional corpus through `search`, code through `python`),
and the loop that scores an agent on them.

data/agent_tasks.jsonl holds one {"id", "kind", "tools", "task", "answer"} a line;
data/agent_facts.md is the corpus the lookup tasks search (invented facts, so the model
cannot know them). An answer is right when its last number equals the expected one.

>>> tasks = load_tasks()
>>> len(tasks), sorted({t["kind"] for t in tasks})
(24, ['arithmetic', 'code', 'lookup'])
>>> is_right("So the bridge is 1,284 meters long.", 1284)
True
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

from ember.core.io import read_text_utf8

DATA = Path(__file__).with_name("data")
TASKS = DATA / "agent_tasks.jsonl"
FACTS = DATA / "agent_facts.md"


def load_tasks(path: str | Path = TASKS) -> list[dict]:
    """The tasks of a JSONL file; a bad line is a ValueError naming the file and line."""
    from ember.agents.builtin import BUILTIN

    tasks = []
    for lineno, line in enumerate(read_text_utf8(path).splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            t = json.loads(line)
        except ValueError as e:
            raise ValueError(f"{where}: not valid JSON ({e})") from None
        if not isinstance(t, dict) or not isinstance(t.get("task"), str) or not t["task"].strip():
            raise ValueError(f"{where}: expected an object with a non-empty \"task\"")
        a = t.get("answer")
        if isinstance(a, bool) or not isinstance(a, int | float) or not math.isfinite(a):
            raise ValueError(f"{where}: \"answer\" must be a number, got {a!r}")
        unknown = [n for n in t.get("tools", []) if n not in BUILTIN]
        if unknown:
            raise ValueError(f"{where}: unknown tool {unknown[0]!r} (known: {', '.join(BUILTIN)})")
        tasks.append({"id": t.get("id", f"task-{lineno}"), "kind": t.get("kind", "other"),
                      "tools": list(t.get("tools", ["calculator"])), "task": t["task"], "answer": a})
    if not tasks:
        raise ValueError(f"{path}: no tasks")
    return tasks


def is_right(answer: str | None, expected: float) -> bool:
    """The last number of the answer equals `expected` (absolute tolerance 1e-6)."""
    from ember.agents.tool_eval import parse_numbers

    numbers = parse_numbers(answer) if answer else []
    return bool(numbers) and math.isclose(numbers[-1], expected, rel_tol=0.0, abs_tol=1e-6)


def build_facts_db(db: str | Path, embedder=None) -> Path:
    """An `ember rag` store of the facts corpus (for the lookup tasks' search tool)."""
    from ember.rag import Index

    with Index(str(db), embedder=embedder) as index:
        index.add([str(FACTS)])
    return Path(db)


def run_tasks(make_model: Callable[[], Callable], tasks: list[dict], *, db: str | None = None,
              strategy: str = "react", max_steps: int = 6, on_task: Callable[[dict], None] | None = None
              ) -> list[dict]:
    """Run every task with a fresh model from make_model(); one record per task:
    {"id", "kind", "right", "answer", "n_steps", "called"} (called: the tools it called)."""
    from ember.agents.builtin import build_tools
    from ember.agents.plan import plan_and_execute
    from ember.agents.react import make_toolbox, react

    if strategy not in ("react", "plan"):
        raise ValueError(f"unknown strategy {strategy!r} (known: react, plan)")
    records = []
    for t in tasks:
        tools = build_tools(t["tools"], db=db)
        toolbox = make_toolbox(tools, t["task"])
        if strategy == "react":
            r = react(make_model(), toolbox, t["task"], max_steps=max_steps)
        else:
            r = plan_and_execute(make_model(), toolbox, t["task"], max_steps=max(max_steps, 3))
        called = sorted({c["name"] for s in _flat(r.steps) for c in s.get("tool_calls", [])})
        rec = {"id": t["id"], "kind": t["kind"], "right": is_right(r.answer, t["answer"]), "answer": r.answer,
               "n_steps": len(r.steps), "called": called}
        records.append(rec)
        if on_task is not None:
            on_task(rec)
    return records


def _flat(steps: list[dict]) -> list[dict]:
    out = []
    for s in steps:
        out.append(s)
        out.extend(_flat(s.get("steps", [])))
    return out


def summarize(records: list[dict]) -> dict:
    """Success rate overall and per kind, and the share of tasks where a tool was called."""
    kinds = sorted({r["kind"] for r in records})

    def rate(rs: list[dict]) -> float:
        return sum(r["right"] for r in rs) / len(rs) if rs else float("nan")

    return {"success": rate(records), "n": len(records),
            "by_kind": {k: rate([r for r in records if r["kind"] == k]) for k in kinds},
            "tool_call_rate": sum(bool(r["called"]) for r in records) / max(len(records), 1)}
