"""Constrained decoding: masks that keep generated text a valid prefix of a JSON Schema, a
JSON object, a regex, a choice, or tool calls.

How it works (each part has its own module):

- `nodes.py`: a byte-level pushdown matcher. Its state is a set of threads (stacks of
  frames), so alternatives that share a prefix (enum values, `anyOf`, optional keys) are
  followed together without lookahead. Bytes, not characters: byte-level BPE tokens may
  split a UTF-8 character or span several JSON pieces (`"},`).
- `json_nodes.py`, `schema.py`: JSON values and the schema compiler (supported keywords
  are listed there). `regex_dfa.py`: regexes and choices as a lazily built DFA;
  `dfa_mask.py`: a broad regex state masked for all tokens at once on the full DFA.
- `vocab.py`: the tokenizer's tokens as raw bytes in a trie, plus precomputed masks: inside
  a free JSON string 48.7k of SmolLM2's 49k tokens are allowed without a walk.
- `grammar.py`: `Grammar` (compiled once per arguments and tokenizer, LRU-cached by the
  canonical JSON of its arguments) and `TokenConstraint` (one per request: `allowed()`,
  `advance()`, `done`, `text()`).
- `tools.py`: tool-call grammars and `parse_tool_calls`.

The engine applies a constraint by setting the logits of forbidden tokens to -inf before
sampling (`Engine.add_request(..., constraint=g.start())`).

>>> from ember.tokenizer import load_tokenizer                         # doctest: +SKIP
>>> tok = load_tokenizer("smollm2")                                    # doctest: +SKIP
>>> c = json_schema({"type": "object", "properties": {"ok": {"type": "boolean"}},
...                  "required": ["ok"]}, tok).start()                 # doctest: +SKIP
>>> c.advance(tok.encode('{"')[0]); c.text()                           # doctest: +SKIP
'{"'
"""

from __future__ import annotations

import json

from .grammar import Grammar, TokenConstraint
from .json_nodes import Obj, any_value
from .regex_dfa import compile_choice, compile_regex
from .schema import compile_schema
from .tools import parse_tool_calls, tool_calls_node
from .vocab import GRAMMAR_CACHE_SIZE, vocab_for

__all__ = [
    "Grammar", "TokenConstraint", "choice", "json_object", "json_schema", "parse_tool_calls",
    "regex", "tool_calls",
]


def _grammar(tokenizer, kind: str, args, build) -> Grammar:
    v = vocab_for(tokenizer)
    try:
        key = (kind, json.dumps(args, sort_keys=True))
    except (TypeError, ValueError) as e:
        raise ValueError(f"{kind}: the arguments are not JSON: {e}") from None
    return v.cached(
        v.grammars, key, lambda: Grammar(build(), v, f"{kind} {key[1][:80]}"), GRAMMAR_CACHE_SIZE
    )


def json_schema(schema: dict, tokenizer) -> Grammar:
    """Outputs that are JSON documents valid under `schema` (see schema.py for the keywords)."""
    return _grammar(tokenizer, "json_schema", schema, lambda: compile_schema(schema))


def json_object(tokenizer) -> Grammar:
    """Any JSON object."""
    return _grammar(tokenizer, "json_object", None, lambda: Obj(None, any_value(1)))


def regex(pattern: str, tokenizer) -> Grammar:
    """Outputs that fully match `pattern` (the subset in regex_dfa.py)."""
    return _grammar(tokenizer, "regex", pattern, lambda: compile_regex(pattern))


def choice(options: list[str], tokenizer) -> Grammar:
    """Outputs equal to one of `options`."""
    return _grammar(tokenizer, "choice", options, lambda: compile_choice(options))


def tool_calls(tools: list[dict], tokenizer, tool_choice="required", parallel: bool = True) -> Grammar:
    """`<tool_call>{"name": ..., "arguments": {...}}</tool_call>` outputs for OpenAI-shaped
    `tools` (tools.py says what tool_choice and parallel do)."""
    return _grammar(
        tokenizer, "tool_calls", [tools, tool_choice, parallel],
        lambda: tool_calls_node(tools, tool_choice, parallel),
    )
