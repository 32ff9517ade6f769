"""Preference data: pairs for reward models and DPO, unpaired rows for KTO.

Rows are JSONL, the TRL layouts (one object a line):

    {"prompt": [messages...] | "user text", "chosen": "reply", "rejected": "reply"}
    {"prompt": ..., "chosen": [{"role": "assistant", "content": ...}], "rejected": [...]}
    {"chosen": [messages..., assistant], "rejected": [messages..., assistant]}  (implicit prompt)
    {"prompt": ..., "completion": "reply", "label": true}                      (KTO, unpaired)

`read_preference_jsonl` normalises them to {"prompt": [messages], "chosen": str, "rejected":
str} (or {"prompt", "completion", "label"}). Each reply is rendered after its prompt through
the model's chat template; labels are next-token targets (as ember.data.sft), −100 on the
prompt, set on the reply's tokens and the end-of-turn that closes it. The rendered sequence
ends at that end-of-turn, so a `RewardModel` reads its reward there.
The generated style pairs are in ember/data/style.py.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

from ember.core.io import atomic_write_text
from ember.data.jsonl import jsonl_lines
from ember.data.sft import IGNORE
from ember.tokenizer.chat import validate_messages

KINDS = ("pair", "unpaired")


class _Bad(ValueError):
    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


# ---- reading ------------------------------------------------------------------------------


def read_preference_jsonl(path: str | Path, on_error: str = "skip", kind: str = "pair") -> tuple[list[dict], dict]:
    """(rows, report): the valid rows, normalised, and {reason: count} of skipped lines.

    Reasons: bad_json (not UTF-8, not JSON, not an object), missing_field, bad_type (a
    non-string reply, malformed messages, a non-bool label), bad_prompt (ends with an
    assistant turn; implicit prompts that differ), empty (a blank reply), identical (chosen
    == rejected). Skipped lines are named with their line numbers on stderr
    (on_error="skip"); on_error="fail" raises a ValueError naming the first one.
    kind="unpaired" reads KTO rows ({"prompt", "completion", "label"}) instead of pairs.

    >>> rows, report = read_preference_jsonl("pairs.jsonl")  # doctest: +SKIP
    """
    if on_error not in ("skip", "fail"):
        raise ValueError(f"on_error must be 'skip' or 'fail', got {on_error!r}")
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no such file: {path}")
    parse = _parse_pair if kind == "pair" else _parse_unpaired
    rows, bad, report = [], [], Counter()
    for n, raw in jsonl_lines(path):
        try:
            rows.append(parse(_load_object(raw)))
        except _Bad as e:
            msg = f"{path}:{n}: {e}"
            if on_error == "fail":
                raise ValueError(msg) from None
            bad.append(msg)
            report[e.reason] += 1
    for msg in bad[:10]:
        print(f"warning: skipped {msg}", file=sys.stderr)
    if bad:
        counts = ", ".join(f"{r} {c}" for r, c in sorted(report.items()))
        print(f"warning: skipped {len(bad)} bad lines of {path} ({counts})", file=sys.stderr)
    if not rows:
        raise ValueError(f"{path} holds no valid {kind} rows ({len(bad)} bad lines)")
    return rows, dict(report)


def _load_object(raw: bytes) -> dict:
    try:
        row = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise _Bad("bad_json", "not UTF-8") from None
    except json.JSONDecodeError as e:
        raise _Bad("bad_json", f"not JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(row, dict):
        raise _Bad("bad_json", f"expected a JSON object, got {type(row).__name__}")
    return row


def _parse_pair(row: dict) -> dict:
    missing = [k for k in ("chosen", "rejected") if k not in row]
    if missing:
        raise _Bad("missing_field", f"no {' or '.join(repr(k) for k in missing)}")
    if "prompt" in row:
        prompt = _prompt(row["prompt"])
        chosen, rejected = _reply(row["chosen"], "chosen"), _reply(row["rejected"], "rejected")
    else:  # implicit prompt: two whole conversations that differ only in the last turn
        prompt, chosen = _split_conversation(row["chosen"], "chosen")
        other, rejected = _split_conversation(row["rejected"], "rejected")
        if other != prompt:
            raise _Bad("bad_prompt", "chosen and rejected conversations differ before the last turn")
    if chosen == rejected:
        raise _Bad("identical", "chosen and rejected are the same reply")
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def _parse_unpaired(row: dict) -> dict:
    missing = [k for k in ("prompt", "completion", "label") if k not in row]
    if missing:
        raise _Bad("missing_field", f"no {' or '.join(repr(k) for k in missing)}")
    if not isinstance(row["label"], bool):
        raise _Bad("bad_type", f"label must be true or false, got {row['label']!r}")
    return {"prompt": _prompt(row["prompt"]), "completion": _reply(row["completion"], "completion"),
            "label": row["label"]}


def _prompt(p) -> list[dict]:
    if isinstance(p, str):
        if not p.strip():
            raise _Bad("empty", "the prompt is empty")
        return [{"role": "user", "content": p}]
    if not isinstance(p, list):
        raise _Bad("bad_type", f"prompt must be a string or a list of messages, got {type(p).__name__}")
    try:
        messages = validate_messages(p)
    except ValueError as e:
        raise _Bad("bad_type", f"prompt: {e}") from None
    if messages[-1]["role"] == "assistant":
        raise _Bad("bad_prompt", "the prompt ends with an assistant turn; nothing is asked")
    return messages


def _reply(r, name: str) -> str:
    if isinstance(r, list):  # [{"role": "assistant", "content": ...}]
        if len(r) != 1 or not isinstance(r[0], dict) or r[0].get("role") != "assistant":
            raise _Bad("bad_type", f"{name} as a list must be one assistant message")
        r = r[0].get("content")
    if not isinstance(r, str):
        raise _Bad("bad_type", f"{name} must be a string, got {type(r).__name__}")
    if not r.strip():
        raise _Bad("empty", f"{name} is empty")
    return r


def _split_conversation(conv, name: str) -> tuple[list[dict], str]:
    if not isinstance(conv, list) or len(conv) < 2:
        raise _Bad("missing_field", f"no 'prompt', and {name} is not a conversation of prompt + reply")
    return _prompt(conv[:-1]), _reply(conv[-1:], name)


def write_preference_jsonl(path: str | Path, rows: list[dict]) -> Path:
    """Write rows, one JSON object a line, atomically.

    >>> write_preference_jsonl("data/style_pairs.jsonl", make_style_pairs(500))  # doctest: +SKIP
    """
    return atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


# ---- encoding -----------------------------------------------------------------------------


def encode_completion(tok, prompt: list[dict], reply: str, max_len: int) -> dict | None:
    """prompt + assistant reply → {"ids", "labels"} (lists), ending at the reply's end-of-turn.
    Too long: the prompt is cut from the left; None when the reply alone (plus one prompt
    token, whose next-token label is the reply's first token) is longer than max_len."""
    ids, mask = tok.render_chat(list(prompt) + [{"role": "assistant", "content": reply}],
                                add_generation_prompt=False)
    if 1 not in mask:
        return None
    start, end = mask.index(1), len(mask) - mask[::-1].index(1)
    if end - start + 1 > max_len:
        return None
    cut = max(0, end - max_len)  # keep the end: the reply and the prompt's last turns
    ids, mask = ids[cut:end], mask[cut:end]
    labels = [ids[t + 1] if mask[t + 1] else IGNORE for t in range(len(ids) - 1)] + [IGNORE]
    return {"ids": ids, "labels": labels}


def encode_pair(tok, prompt_messages: list[dict], chosen: str, rejected: str, max_len: int) -> dict | None:
    """→ {"chosen_ids", "chosen_labels", "rejected_ids", "rejected_labels"}, or None when a
    reply does not fit in max_len (see encode_completion).

    >>> encode_pair(tok, [{"role": "user", "content": "2+2?"}], "4.", "5.", 64)  # doctest: +SKIP
    """
    c = encode_completion(tok, prompt_messages, chosen, max_len)
    r = encode_completion(tok, prompt_messages, rejected, max_len)
    if c is None or r is None:
        return None
    return {"chosen_ids": c["ids"], "chosen_labels": c["labels"],
            "rejected_ids": r["ids"], "rejected_labels": r["labels"]}


def encode_pairs(tok, rows: list[dict], max_len: int) -> list[dict]:
    """encode_pair over read rows, with one warning counting the pairs dropped as too long."""
    out = [e for row in rows if (e := encode_pair(tok, row["prompt"], row["chosen"], row["rejected"], max_len))]
    return _kept(out, len(rows), "pair", max_len)


def _kept(out: list[dict], n: int, what: str, max_len: int) -> list[dict]:
    """One warning counting what was dropped as too long; an error when nothing is left."""
    if len(out) < n:
        print(f"warning: dropped {n - len(out)} of {n} {what}s whose reply does not fit in {max_len} tokens",
              file=sys.stderr)
    if not out:
        raise ValueError(f"no {what} fits in {max_len} tokens")
    return out


def file_kind(path: str | Path) -> str:
    """"unpaired" when the first JSON object in the file has a "completion" key, else "pair"."""
    for _, raw in jsonl_lines(path):
        try:
            row = json.loads(raw)
        except ValueError:
            continue
        if isinstance(row, dict):
            return "unpaired" if "completion" in row else "pair"
    return "pair"


def unpair(rows: list[dict]) -> list[dict]:
    """Pairs → unpaired KTO rows: each chosen reply desirable, each rejected one not (as
    TRL's unpair_preference_dataset). Unpaired rows pass through unchanged.

    >>> unpair([{"prompt": [], "chosen": "a", "rejected": "b"}])[1]["label"]
    False
    """
    out = []
    for r in rows:
        if "completion" in r:
            out.append(r)
            continue
        out.append({"prompt": r["prompt"], "completion": r["chosen"], "label": True})
        out.append({"prompt": r["prompt"], "completion": r["rejected"], "label": False})
    return out


def encode_unpaired(tok, rows: list[dict], max_len: int) -> list[dict]:
    """Unpaired rows → {"ids", "labels", "kl_ids", "kl_labels", "desirable"}. The kl_ sequence
    is this row's prompt with the *next* row's completion: the mismatched (x, y') pairs from
    which KTO estimates its reference point z0 = KL(π‖ref) (Ethayarajh et al. 2024, §4.1).
    Rows whose reply (or mismatched reply) does not fit are dropped, with one warning."""
    if len(rows) < 2:
        raise ValueError(f"KTO needs at least 2 rows (z0 pairs each prompt with another's reply), got {len(rows)}")
    out = []
    for i, r in enumerate(rows):
        e = encode_completion(tok, r["prompt"], r["completion"], max_len)
        k = encode_completion(tok, r["prompt"], rows[(i + 1) % len(rows)]["completion"], max_len)
        if e and k:
            out.append({"ids": e["ids"], "labels": e["labels"], "kl_ids": k["ids"], "kl_labels": k["labels"],
                        "desirable": bool(r["label"])})
    return _kept(out, len(rows), "row", max_len)
