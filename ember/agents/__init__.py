"""Tool use and agents: tool-call parsing, the calculator, generation that runs the tools the
model calls, and the calculator accuracy evaluation (tool_eval.py).

The tool-call format and the training conversations live in `ember.data.tool_use`.

>>> from ember.agents import parse_tool_call
>>> parse_tool_call('<tool_call>{"name": "calculator", "arguments": {"expression": "2+2"}}</tool_call>')
('calculator', {'expression': '2+2'})
"""

from ember.agents.tools import (
    TOOLS,
    execute_tool_call,
    generate_with_tools,
    parse_tool_call,
    run_calculator,
)

__all__ = ["TOOLS", "execute_tool_call", "generate_with_tools", "parse_tool_call", "run_calculator"]
