"""A multi-turn chat REPL over the engine: stream each reply, keep the history, /reset.

Interactive on a terminal; when stdin is not a TTY (a pipe, a file) each line of stdin is
one user turn and no prompt is echoed, so `printf 'Hi\\n/reset\\nBye\\n' | ember chat` works.

    >>> run_chat(engine, tok, system="Be brief.")  # doctest: +SKIP
    > Hi
    Hello! How can I help?
    [9 tokens, 41.3 tok/s]
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from .params import SamplingParams
from .request import GenerationResult

if TYPE_CHECKING:
    from .engine import Engine

HELP = "commands: /reset clears the history, /exit quits"


def _stdin_lines(prompt: str) -> str:
    """input() on a terminal; a bare line read from a pipe (no prompt echoed)."""
    if sys.stdin.isatty():
        return input(prompt)
    line = sys.stdin.readline()
    if not line:
        raise EOFError
    return line.rstrip("\n")


def run_chat(
    engine: Engine,
    tokenizer,
    system: str | None = None,
    params: SamplingParams | None = None,
    input_fn: Callable[[str], str] | None = None,
    print_fn: Callable[..., None] = print,
) -> list[dict]:
    """Run the REPL until EOF or /exit; returns the final history (list of messages).

    Each turn renders system + history + the new user message through the model's chat
    template, streams the reply, then prints the token count and decode speed. An engine
    with a prefix cache (`Engine(prefix_cache_mb=...)`) prefills only the new turn: the
    K/V of the earlier ones are reused, and the footer says how many prompt tokens were. When the
    conversation no longer fits the context, the oldest turns are dropped (and we say so).
    """
    params = params or SamplingParams(temperature=0.7, top_p=0.9, max_tokens=512)
    if params.max_tokens >= engine.max_seq_len:  # else every message would be "too long"
        raise ValueError(f"max_tokens {params.max_tokens} leaves no room for a message in the "
                         f"context of {engine.max_seq_len} tokens; lower --max-tokens")
    read = input_fn or _stdin_lines
    head = [{"role": "system", "content": system}] if system else []
    history: list[dict] = []
    while True:
        try:
            line = read("> ")
        except (EOFError, KeyboardInterrupt):
            print_fn("")
            return history
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            return history
        if text == "/reset":
            history = []
            print_fn("[history cleared]")
            continue
        if text in ("/help", "/?"):
            print_fn(HELP)
            continue
        history.append({"role": "user", "content": line})
        prompt = _fit(engine, tokenizer, head, history, params, print_fn)
        if prompt is None:
            history.pop()
            continue
        try:
            result = _stream_reply(engine, prompt, params, print_fn)
        except KeyboardInterrupt:  # Ctrl-C stops this reply, not the session
            print_fn("\n[interrupted]")
            history.pop()
            continue
        history.append({"role": "assistant", "content": result.text})
        cached = f", {result.cached_tokens} prompt tokens reused" if result.cached_tokens else ""
        print_fn(f"[{result.completion_tokens} tokens, {result.decode_tok_s:.1f} tok/s, "
                 f"first token {result.ttft_ms:.0f} ms{cached}]")


def _fit(engine, tokenizer, head, history, params, print_fn) -> list[int] | None:
    """Render the chat, dropping the oldest turns until prompt + max_tokens fits."""
    budget = engine.max_seq_len - params.max_tokens
    while True:
        ids, _ = tokenizer.render_chat(head + history, add_generation_prompt=True)
        if len(ids) <= budget:
            return ids
        if len(history) <= 1:
            print_fn(f"[message too long: {len(ids)} prompt tokens + max_tokens "
                     f"{params.max_tokens} exceed the context of {engine.max_seq_len}]")
            return None
        del history[:2]  # the oldest user turn and its reply
        print_fn("[context full: dropped the oldest turn]")


def _stream_reply(engine, prompt, params, print_fn) -> GenerationResult:
    result = None
    for chunk in engine.stream(prompt, params):
        if chunk.text:
            print_fn(chunk.text, end="", flush=True)
        result = chunk.result or result
    print_fn("")
    return result
