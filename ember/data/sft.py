"""SFT data: JSONL conversations → token rows with the loss on assistant tokens only.

One conversation per line: `{"messages": [{"role": "user", "content": "..."}, ...]}` with
roles system, user, assistant and tool. Each is rendered through the model's own chat
template (`Tokenizer.render_chat`), whose mask marks assistant content and the end-of-turn
token that closes it; labels are -100 everywhere else.

Rows pack several conversations (first-fit, longest first) with segment ids, so the model
restarts positions and never attends across conversations (`Transformer(segment_ids=...)`);
`packing=False` pads one conversation per row instead.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ember.data.jsonl import jsonl_lines
from ember.tokenizer.chat import validate_messages

IGNORE = -100
"""Label of a position that is not scored (prompt tokens, padding): cross-entropy's ignore_index."""


@dataclass
class Example:
    ids: list[int]  # the rendered conversation
    labels: list[int]  # next-token targets: labels[t] is the token after ids[t], or IGNORE


def read_chat_jsonl(path: str | Path, on_error: str = "skip") -> list[list[dict]]:
    """Conversations from a JSONL file. A bad line (not JSON, no "messages" list, an unknown
    role, a non-string content) is reported with its line number, then skipped
    (on_error="skip") or fatal (on_error="fail").

    >>> read_chat_jsonl("chats.jsonl")  # doctest: +SKIP
    """
    if on_error not in ("skip", "fail"):
        raise ValueError(f"on_error must be 'skip' or 'fail', got {on_error!r}")
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no such file: {path}")
    out, bad = [], []
    for n, raw in jsonl_lines(path):
        try:
            out.append(_parse_line(raw))
        except ValueError as e:
            msg = f"{path}:{n}: {e}"
            if on_error == "fail":
                raise ValueError(msg) from None
            bad.append(msg)
    for msg in bad[:10]:
        print(f"warning: skipped {msg}", file=sys.stderr)
    if len(bad) > 10:
        print(f"warning: skipped {len(bad) - 10} more bad lines", file=sys.stderr)
    if not out:
        raise ValueError(f"{path} holds no valid conversations ({len(bad)} bad lines)")
    return out


def _parse_line(raw: bytes) -> list[dict]:
    try:
        row = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ValueError("not UTF-8") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"not JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(row, dict) or not isinstance(row.get("messages"), list) or not row["messages"]:
        raise ValueError('expected {"messages": [...]} with at least one message')
    messages = validate_messages(row["messages"])  # unknown roles, missing content → ValueError
    if not any(m["role"] == "assistant" for m in messages):
        raise ValueError("no assistant message: nothing to learn from")
    return messages


def encode_conversation(tok, messages: list[dict], max_len: int, overlong: str = "truncate") -> Example | None:
    """Render → ids and next-token labels. Longer than max_len: cut to max_len
    (overlong="truncate") or None (overlong="drop"). None too when no assistant token is left."""
    ids, mask = tok.render_chat(messages, add_generation_prompt=False)
    if len(ids) > max_len:
        if overlong == "drop":
            return None
        ids, mask = ids[:max_len], mask[:max_len]
    labels = [ids[t + 1] if mask[t + 1] else IGNORE for t in range(len(ids) - 1)] + [IGNORE]
    if all(v == IGNORE for v in labels):
        return None
    return Example(ids, labels)


def encode_conversations(tok, conversations, max_len: int, overlong: str = "truncate") -> list[Example]:
    """encode_conversation over a list, with one warning that counts what was cut or dropped."""
    if overlong not in ("truncate", "drop"):
        raise ValueError(f"overlong must be 'truncate' or 'drop', got {overlong!r}")
    out, long, empty = [], 0, 0
    for messages in conversations:
        n = len(tok.render_chat(messages, add_generation_prompt=False)[0])
        long += n > max_len
        ex = encode_conversation(tok, messages, max_len, overlong)
        if ex is not None:
            out.append(ex)
        elif overlong == "truncate" or n <= max_len:
            empty += 1
    if long:
        verb = "truncated to" if overlong == "truncate" else "dropped, longer than"
        print(f"warning: {long} of {len(conversations)} conversations {verb} {max_len} tokens", file=sys.stderr)
    if empty:
        print(f"warning: dropped {empty} conversations with no assistant token within {max_len} tokens",
              file=sys.stderr)
    if not out:
        raise ValueError("no conversation left to train on (all too long, or no assistant tokens)")
    return out


def pack(examples: list[Example], seq_len: int, pad_id: int, packing: bool = True) -> dict[str, torch.Tensor]:
    """Rows of seq_len: {"ids", "labels", "segment_ids"} (R, T) tensors. Packing is first-fit
    decreasing; padding gets label IGNORE and its own segment id.

    >>> rows = pack([Example([1, 2], [2, -100])], 4, pad_id=0)
    >>> rows["ids"].tolist(), rows["segment_ids"].tolist()
    ([[1, 2, 0, 0]], [[0, 0, 1, 1]])
    """
    if any(len(e.ids) > seq_len for e in examples):
        raise ValueError(f"an example is longer than seq_len {seq_len}; encode with max_len <= seq_len")
    bins: list[list[Example]] = []
    space: list[int] = []
    order = sorted(range(len(examples)), key=lambda i: -len(examples[i].ids)) if packing else range(len(examples))
    for i in order:
        e = examples[i]
        k = next((b for b, free in enumerate(space) if free >= len(e.ids)), None) if packing else None
        if k is None:
            bins.append([])
            space.append(seq_len)
            k = len(bins) - 1
        bins[k].append(e)
        space[k] -= len(e.ids)
    R = len(bins)
    ids = np.full((R, seq_len), pad_id, dtype=np.int64)
    labels = np.full((R, seq_len), IGNORE, dtype=np.int64)
    seg = np.zeros((R, seq_len), dtype=np.int64)
    for r, row in enumerate(bins):
        t = 0
        for s, e in enumerate(row):
            n = len(e.ids)
            ids[r, t : t + n], labels[r, t : t + n], seg[r, t : t + n] = e.ids, e.labels, s
            t += n
        seg[r, t:] = len(row)  # padding: a segment of its own
    return {"ids": torch.from_numpy(ids), "labels": torch.from_numpy(labels), "segment_ids": torch.from_numpy(seg)}


class RowLoader:
    """batch(step) → this rank's rows of the global batch: epoch-wise seeded shuffles, pure in
    step (so resume is exact), each rank a contiguous slice (as the pre-training loaders)."""

    def __init__(self, rows: dict[str, torch.Tensor], batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1):
        if batch_size % world_size:
            raise ValueError(f"batch_size {batch_size} is not divisible by {world_size} processes")
        self.rows, self.B, self.seed, self.rank, self.world = rows, batch_size, seed, rank, world_size
        self.n = len(next(iter(rows.values())))
        self._orders: dict[int, np.ndarray] = {}

    def _order(self, epoch: int) -> np.ndarray:
        if epoch not in self._orders:
            if len(self._orders) > 2:
                self._orders.clear()
            self._orders[epoch] = np.random.default_rng([self.seed, epoch]).permutation(self.n)
        return self._orders[epoch]

    def batch(self, step: int) -> dict[str, torch.Tensor]:
        start = step * self.B
        picks = [int(self._order((start + j) // self.n)[(start + j) % self.n]) for j in range(self.B)]
        per = self.B // self.world
        idx = torch.tensor(picks[self.rank * per : (self.rank + 1) * per])
        return {k: v[idx] for k, v in self.rows.items()}
