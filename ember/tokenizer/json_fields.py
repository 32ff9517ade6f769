"""Reading tokenizer files defensively: JSON from regular files only, and field checks whose
ValueError names the file, the field and the bad value. Shared by loaders.py (BPE) and
wordpiece_files.py (WordPiece).
"""

from __future__ import annotations

import json
from pathlib import Path

from ember.core.registry import regular_file

# Ids above this are refused: far past real vocabularies (~262k), and the Tokenizer sizes
# itself by the largest id, so one absurd id in a file must not become a huge vocab_size.
MAX_TOKEN_ID = 1 << 24


def _read_json(path: Path):
    regular_file(path, "JSON file")  # reading /dev/zero or a FIFO would never end
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None


def _check(ok: bool, where: str, field: str, expected: str, value) -> None:
    """A ValueError naming file, field and the bad value: "tokenizer.json: added_tokens[3].id must be an int, got 'x'"."""
    if not ok:
        raise ValueError(f"{where}: {field} must be {expected}, got {repr(value)[:60]}")


def _is(kind: type):
    """isinstance as a predicate, with bool not counted as an int (JSON true is no token id)."""
    return lambda v: isinstance(v, kind) and (kind is bool or not isinstance(v, bool))


def _list_of(kind: type):
    return lambda v: isinstance(v, list) and all(map(_is(kind), v))


def _token_id(v, where: str, field: str) -> int:
    _check(_is(int)(v), where, field, "an int", v)
    _check(0 <= v < MAX_TOKEN_ID, where, field, f"an id in [0, {MAX_TOKEN_ID})", v)
    return v
