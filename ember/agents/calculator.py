"""The calculator tool. Its evaluator (`safe_eval`, never Python's eval) and `format_number`
are defined in `ember.data.tool_use`, beside the training conversations that use them: the
data layer sits below agents and may not import from it (tests/test_imports.py), so agents
import them from there and re-export them here.

>>> calculator("123 * 456")
'56088'
>>> safe_eval("2 ** 10")
1024
"""

from __future__ import annotations

from ember.agents.registry import tool
from ember.data.tool_use import format_number, safe_eval

__all__ = ["calculator", "format_number", "safe_eval"]


@tool
def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression (+ - * / // % ** and parentheses).

    Args:
        expression: the arithmetic, e.g. "123 * 456".
    """
    return format_number(safe_eval(expression))
