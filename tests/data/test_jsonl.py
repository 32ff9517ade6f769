"""Every JSONL reader in ember.data keeps the first record of a file that starts with a
UTF-8 BOM (as Windows editors write them)."""

import json

from ember.data.jsonl import jsonl_lines
from ember.data.preference import file_kind, read_preference_jsonl
from ember.data.sft import read_chat_jsonl

BOM = "\ufeff"


def _write(path, rows):
    path.write_text(BOM + "".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_jsonl_lines_strips_a_leading_bom_only(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"a": 1}\n\n  \n{"b": "\xef\xbb\xbf"}\n')
    lines = list(jsonl_lines(path))
    assert [n for n, _ in lines] == [1, 4]
    assert [json.loads(raw) for _, raw in lines] == [{"a": 1}, {"b": BOM}]  # a BOM inside data stays


def test_chat_jsonl_with_bom_keeps_the_first_conversation(tmp_path, capsys):
    chats = [[{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}] for i in range(3)]
    path = _write(tmp_path / "chats.jsonl", [{"messages": c} for c in chats])
    assert read_chat_jsonl(path, "fail") == chats
    assert read_chat_jsonl(path) == chats
    assert "skipped" not in capsys.readouterr().err


def test_preference_jsonl_with_bom_keeps_the_first_row(tmp_path):
    pairs = [{"prompt": f"p{i}", "chosen": f"yes{i}", "rejected": f"no{i}"} for i in range(2)]
    rows, report = read_preference_jsonl(_write(tmp_path / "pairs.jsonl", pairs), "fail")
    assert [r["chosen"] for r in rows] == ["yes0", "yes1"] and report == {}

    unpaired = [{"prompt": "p", "completion": "c", "label": True}, {"prompt": "q", "completion": "d", "label": False}]
    path = _write(tmp_path / "kto.jsonl", unpaired)
    assert file_kind(path) == "unpaired"
    assert file_kind(_write(tmp_path / "one.jsonl", unpaired[:1])) == "unpaired"  # the BOM'd row decides
    rows, _ = read_preference_jsonl(path, "fail", kind="unpaired")
    assert [r["completion"] for r in rows] == ["c", "d"]
