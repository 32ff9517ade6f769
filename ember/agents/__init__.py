"""Tool use and agents.

- registry.py: `@tool` (OpenAI function specs from type hints and docstrings) and `Toolbox`
  (argument validation with jsonschema, errors as observations, the side-effect gate);
- builtin.py: the calculator (calculator.py), sandboxed Python (sandbox.py), retrieval over
  an `ember rag` store, a read-only file reader confined to a folder;
- react.py and plan.py: the ReAct loop and plan-and-execute; models.py: the model
  interface over the engine; tasks.py: the task set and its scoring; cli.py: the commands;
- tools.py and tool_eval.py: the calculator's text tool-call loop and its evaluation
  (`ember eval tool-use`).

The tool-call format and the training conversations live in `ember.data.tool_use`.

>>> from ember.agents import parse_tool_call
>>> parse_tool_call('<tool_call>{"name": "calculator", "arguments": {"expression": "2+2"}}</tool_call>')
('calculator', {'expression': '2+2'})
"""

from ember.agents.registry import Tool, Toolbox, tool
from ember.agents.tools import (
    TOOLS,
    execute_tool_call,
    generate_with_tools,
    parse_tool_call,
    run_calculator,
)

__all__ = ["TOOLS", "Tool", "Toolbox", "execute_tool_call", "generate_with_tools", "parse_tool_call",
           "run_calculator", "tool"]
