"""Streaming tool calls: generated text in, OpenAI `delta`s out (`content` pieces and
`tool_calls` fragments by index), so that the official client's accumulation of a stream
gives the message a plain response has (tool_calls.to_message).

Text outside calls streams as content, except what may begin `<tool_call>` and trailing
whitespace (sent once more text follows; at the end, dropped after calls, as `split_calls`
strips it, and sent when there were none).
A call's first fragment carries its index, id, type and name with empty arguments. Then:

- incremental (constrained decoding, where every call that starts is valid): the
  arguments stream as they are generated, holding back only what may be the call's closing
  `}` and `</tool_call>`;
- buffered (free decoding): the whole arguments arrive in one fragment once the call is
  closed and parses; a call that does not parse streams as content, as it stays in the
  content of a plain response.

    >>> s = ToolCallStream(incremental=True)
    >>> deltas = s.push('<tool_call>{"name": "f", "arguments": {"x": ') + s.push('1}}</tool_call>')
    >>> [d["tool_calls"][0]["function"] for d in deltas]
    [{'name': 'f', 'arguments': ''}, {'arguments': '{"x":'}, {'arguments': ' 1}'}]
"""

from __future__ import annotations

import json

from .request import partial_stop_len
from .tool_calls import _HEAD, CALL_CLOSE, CALL_OPEN, call_id, parse_call


class ToolCallStream:
    """The fragmenter for one choice: `push(text) -> [delta]`, then `finish() -> [delta]`;
    `n_calls` counts the calls sent (finish_reason "tool_calls" when > 0)."""

    def __init__(self, incremental: bool):
        self.incremental = incremental
        self.n_calls = 0
        self._buf = ""  # input not yet handled: content that may begin a call, or an open call
        self._held = ""  # content whitespace held back until more content follows
        self._in_call = False
        self._args_at = -1  # incremental: where the open call's arguments start in _buf, once known
        self._sent = 0  # incremental: characters of the open call's arguments sent

    def push(self, text: str) -> list[dict]:
        self._buf += text
        out, more = [], True
        while more:
            more, deltas = self._call() if self._in_call else self._content()
            out += deltas
        return out

    def finish(self) -> list[dict]:
        """The end of the text. A call left open (cut by max_tokens) is content when
        buffered; incremental, it sends what it has."""
        out = []
        if self._in_call and self.incremental and self._args_at >= 0:
            rest = self._buf[self._args_at + self._sent:]
            out = [self._fragment({"arguments": rest})] if rest else []
        else:
            out = self._say((CALL_OPEN if self._in_call else "") + self._buf)
            if self._held and not self.n_calls:  # no call: the text is the reply, as it was
                out.append({"content": self._held})
        self._buf, self._held, self._in_call = "", "", False
        return out

    def _say(self, text: str) -> list[dict]:
        """Content: everything but trailing whitespace goes out now."""
        self._held += text
        ready = self._held.rstrip()
        if not ready:
            return []
        self._held = self._held[len(ready):]
        return [{"content": ready}]

    def _content(self) -> tuple[bool, list[dict]]:
        i = self._buf.find(CALL_OPEN)
        if i >= 0:
            head, self._buf = self._buf[:i], self._buf[i + len(CALL_OPEN):]
            self._in_call, self._args_at, self._sent = True, -1, 0
            return True, self._say(head)
        n = len(self._buf) - partial_stop_len(self._buf, [CALL_OPEN])
        head, self._buf = self._buf[:n], self._buf[n:]
        return False, self._say(head)

    def _call(self) -> tuple[bool, list[dict]]:
        end = self._buf.find(CALL_CLOSE)
        if not self.incremental:
            if end < 0:
                return False, []
            body, self._buf = self._buf[:end], self._buf[end + len(CALL_CLOSE):]
            self._in_call = False
            call = parse_call(body)
            if call is None:  # not a call after all: content, as in a plain response
                return True, self._say(CALL_OPEN + body + CALL_CLOSE)
            out = [self._header(call[0]), self._fragment({"arguments": call[1]})]
            self.n_calls += 1
            return True, out
        out = []
        if self._args_at < 0:
            m = _HEAD.match(self._buf)
            if m is None or m.end() == len(self._buf):  # the arguments have not begun
                return False, []
            self._args_at = m.end()
            out.append(self._header(json.loads(m.group(1))))
        if end >= 0:  # the call is complete: the rest of its arguments, up to its own "}"
            args = self._buf[self._args_at:end].rstrip()
            args = args[:-1].rstrip() if args.endswith("}") else args
            piece, self._buf = args[self._sent:], self._buf[end + len(CALL_CLOSE):]
            out += [self._fragment({"arguments": piece})] if piece else []
            self._in_call = False
            self.n_calls += 1
            return True, out
        args = self._buf[self._args_at:]
        safe = args[: len(args) - partial_stop_len(args, [CALL_CLOSE])].rstrip()
        safe = safe[:-1].rstrip() if safe.endswith("}") else safe  # maybe the call's own closing brace
        if len(safe) > self._sent:
            out.append(self._fragment({"arguments": safe[self._sent:]}))
            self._sent = len(safe)
        return False, out

    def _header(self, name: str) -> dict:
        return {"tool_calls": [{"index": self.n_calls, "id": call_id(), "type": "function",
                                "function": {"name": name, "arguments": ""}}]}

    def _fragment(self, function: dict) -> dict:
        return {"tool_calls": [{"index": self.n_calls, "function": function}]}
