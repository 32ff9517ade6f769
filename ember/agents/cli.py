"""`ember agent TASK` and `ember tool python --file F`: the agents and the sandbox from the
command line.

    ember agent --tools calculator,python "What is 17 * 23 + 4?" --json
    ember tool python --file script.py --timeout 2 --json
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal


@dataclass
class AgentConfig:
    """Run an agent on one task with the built-in tools."""

    task: str | None = None
    """what the agent should do (the words after the options)"""
    tools: str = "calculator,python"
    """comma-separated built-in tools: calculator, python, search (needs --db), read_file (needs --folder)"""
    strategy: Literal["react", "plan"] = "react"
    """react: think, call tools, repeat; plan: plan first, run each step, then revise"""
    model: str = "smollm2"
    """known model name, GGUF file or HF folder"""
    adapter: str | None = None
    """a LoRA adapter folder from `ember sft` (e.g. the tool-use preset's)"""
    db: str | None = None
    """an `ember rag` database that the search tool searches"""
    folder: str | None = None
    """the folder read_file may read (nothing outside it)"""
    allow: str = ""
    """comma-separated tools with side effects that may run without asking"""
    max_steps: int = 8
    """most model turns before the agent stops without an answer"""
    timeout: float = 5.0
    """seconds each python tool run may take"""
    temperature: float = 0.0
    """sampling temperature; 0 is greedy"""
    seed: int = 0
    """seed of the sampling: the same seed replays the same trace"""
    json: bool = False
    """print one JSON line: {"answer", "steps"}"""

    def __post_init__(self):
        _at_least("--max-steps", self.max_steps, 1)
        if not self.timeout > 0:
            raise ValueError(f"--timeout must be > 0 seconds, got {self.timeout}")


def _at_least(flag: str, value, lo: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ValueError(f"{flag} must be an integer >= {lo}, got {value!r}")


def agent(cfg: AgentConfig) -> dict:
    from ember.agents.builtin import build_tools
    from ember.agents.models import load_agent_model
    from ember.agents.plan import plan_and_execute
    from ember.agents.react import make_toolbox, react

    if not cfg.task or not cfg.task.strip():
        raise ValueError("give the task: ember agent [options] TASK")
    names = [n.strip() for n in cfg.tools.split(",") if n.strip()]
    tools = build_tools(names, timeout=cfg.timeout, db=cfg.db, folder=cfg.folder)
    allow = [n.strip() for n in cfg.allow.split(",") if n.strip()]
    toolbox = make_toolbox(tools, cfg.task, allow=allow)
    model = load_agent_model(cfg.model, cfg.adapter, temperature=cfg.temperature, seed=cfg.seed)
    show = None if cfg.json else _print_step
    if cfg.strategy == "react":
        result = react(model, toolbox, cfg.task, max_steps=cfg.max_steps, on_step=show)
    else:
        result = plan_and_execute(model, toolbox, cfg.task, max_steps=max(cfg.max_steps, 3), on_step=show)
    out = {"answer": result.answer, "steps": result.steps}
    if cfg.json:
        print(json.dumps(out, ensure_ascii=False))
    else:
        print(f"answer: {result.answer}" if result.answer is not None
              else f"no answer after {cfg.max_steps} steps")
    return out


def _print_step(step: dict) -> None:
    if step.get("thought"):
        print(f"thought: {step['thought']}", file=sys.stderr)
    for c, obs in zip(step.get("tool_calls", []), step.get("observations", [])):
        print(f"call: {c['name']}({json.dumps(c['arguments'], ensure_ascii=False)})\nobservation: {obs}",
              file=sys.stderr)
    if step.get("kind") == "plan":
        print("plan:\n" + "\n".join(f"  {i}. {s}" for i, s in enumerate(step["plan"], 1)), file=sys.stderr)


@dataclass
class ToolPythonConfig:
    """Run a Python file in the sandbox (no network, no host files, limits, timeout)."""

    file: str | None = None
    """the Python file to run"""
    timeout: float = 5.0
    """seconds of wall-clock time before the program is killed"""
    memory_mb: int = 256
    """address-space limit of the program, in MiB"""
    json: bool = False
    """print one JSON line: {"ok", "stdout", "stderr", "error"}"""


def tool_python(cfg: ToolPythonConfig) -> dict:
    from ember.agents.sandbox import run_python
    from ember.core.io import read_text_utf8

    if cfg.file is None:
        raise ValueError("give the program: ember tool python --file F")
    if not Path(cfg.file).is_file():
        raise FileNotFoundError(f"no such file: {cfg.file}")
    if not cfg.timeout > 0:
        raise ValueError(f"--timeout must be > 0 seconds, got {cfg.timeout}")
    _at_least("--memory-mb", cfg.memory_mb, 16)
    result = run_python(read_text_utf8(cfg.file), timeout=cfg.timeout, memory_mb=cfg.memory_mb)
    out = result.to_json()
    if cfg.json:
        print(json.dumps(out, ensure_ascii=False))
    else:
        sys.stdout.write(result.stdout)
        sys.stderr.write(result.stderr)
        if result.error:
            print(f"error: {result.error}", file=sys.stderr)
    return out
