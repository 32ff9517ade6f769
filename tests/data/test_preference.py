"""Preference data: reading with counted skips, encoding with reply-only labels, the style set."""

import json
import re

import pytest

from ember.data.preference import (
    IGNORE,
    encode_completion,
    encode_pair,
    read_preference_jsonl,
    write_preference_jsonl,
)
from ember.data.style import STYLE_SYSTEM_PROMPT, VIOLATIONS, make_style_pairs, style_violation

USER = [{"role": "user", "content": "What is 2 plus 2?"}]


def _write(path, lines):
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return path


def test_read_normalises_layouts_and_counts_skips(tmp_path, capsys):
    path = _write(tmp_path / "p.jsonl", [
        {"prompt": "What is 2 plus 2?", "chosen": "4.", "rejected": "Five"},  # 1 ok: plain strings
        "{not json",  # 2 bad_json
        {"prompt": USER, "chosen": "4."},  # 3 missing_field
        {"prompt": USER, "chosen": [{"role": "assistant", "content": "4."}],
         "rejected": [{"role": "assistant", "content": "4!"}]},  # 4 ok: conversational replies
        {"prompt": USER, "chosen": "4.", "rejected": "4."},  # 5 identical
        {"prompt": USER, "chosen": 4, "rejected": "5."},  # 6 bad_type
        "",  # 7 blank: ignored, not counted
        {"chosen": USER + [{"role": "assistant", "content": "4."}],
         "rejected": USER + [{"role": "assistant", "content": "5."}]},  # 8 ok: implicit prompt
        {"rejected": "x"},  # 9 missing_field
    ])
    rows, report = read_preference_jsonl(path)
    assert report == {"bad_json": 1, "missing_field": 2, "identical": 1, "bad_type": 1}
    assert [r["chosen"] for r in rows] == ["4.", "4.", "4."]
    assert all(r["prompt"] == USER for r in rows)
    assert [r["rejected"] for r in rows] == ["Five", "4!", "5."]
    err = capsys.readouterr().err
    for n, reason in [(2, "bad_json"), (3, "missing_field"), (5, "identical"), (6, "bad_type"), (9, "missing_field")]:
        assert f"p.jsonl:{n}: {reason}" in err
    assert "p.jsonl:1:" not in err and "skipped 5 bad lines" in err


def test_fail_mode_names_the_line(tmp_path):
    path = _write(tmp_path / "p.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "b"},
                                         {"prompt": "q", "chosen": "a", "rejected": "a"}])
    with pytest.raises(ValueError, match=r"p\.jsonl:2: identical"):
        read_preference_jsonl(path, on_error="fail")
    with pytest.raises(ValueError, match="on_error"):
        read_preference_jsonl(path, on_error="ignore")


def test_bad_prompts_and_empty_files(tmp_path):
    path = _write(tmp_path / "p.jsonl", [
        {"prompt": USER + [{"role": "assistant", "content": "hm"}], "chosen": "a", "rejected": "b"},
        {"prompt": [{"role": "wizard", "content": "q"}], "chosen": "a", "rejected": "b"},
        {"prompt": "q", "chosen": " ", "rejected": "b"},
    ])
    with pytest.raises(ValueError, match="no valid pair rows"):
        read_preference_jsonl(path)


def test_unpaired_kto_rows(tmp_path):
    path = _write(tmp_path / "k.jsonl", [
        {"prompt": "q", "completion": "good.", "label": True},
        {"prompt": "q", "completion": "bad", "label": "yes"},
        {"prompt": "q", "completion": "meh"},
    ])
    rows, report = read_preference_jsonl(path, kind="unpaired")
    assert rows == [{"prompt": [{"role": "user", "content": "q"}], "completion": "good.", "label": True}]
    assert report == {"bad_type": 1, "missing_field": 1}


def test_write_then_read_round_trip(tmp_path):
    rows = make_style_pairs(20, seed=1)
    path = write_preference_jsonl(tmp_path / "sub" / "s.jsonl", rows)
    back, report = read_preference_jsonl(path)
    assert report == {}
    assert [(r["prompt"], r["chosen"], r["rejected"]) for r in back] == [
        (r["prompt"], r["chosen"], r["rejected"]) for r in rows
    ]


# ---- the style set ------------------------------------------------------------------------


def test_style_pairs_chosen_keeps_style_rejected_breaks_it():
    for split in ("train", "heldout"):
        rows = make_style_pairs(400, seed=0, split=split)
        assert {r["violation"] for r in rows} == set(VIOLATIONS)
        for r in rows:
            assert r["prompt"][0] == {"role": "system", "content": STYLE_SYSTEM_PROMPT}
            assert r["prompt"][1]["role"] == "user" and len(r["prompt"]) == 2
            assert r["chosen"].endswith(".") and r["chosen"] != r["rejected"]
            assert style_violation(r["chosen"], r["answer"]) is None, r
            assert style_violation(r["rejected"], r["answer"]) is not None, r
        expect = {"trail": "unfinished", "deflect": "no answer", "repeat": "several sentences",
                  "ramble": "several sentences"}
        assert all(style_violation(r["rejected"], r["answer"]) == expect[r["violation"]] for r in rows)


def test_style_splits_are_disjoint_and_deterministic():
    def templates(split):
        return {re.sub(r"\d+", "#", r["prompt"][1]["content"]) for r in make_style_pairs(600, seed=5, split=split)}

    train, heldout = templates("train"), templates("heldout")
    assert len(train) > 10 and len(heldout) > 10
    assert not train & heldout
    assert make_style_pairs(30, seed=7) == make_style_pairs(30, seed=7)
    assert make_style_pairs(30, seed=7) != make_style_pairs(30, seed=8)
    with pytest.raises(ValueError, match="split"):
        make_style_pairs(3, split="test")


def test_style_violation_reasons():
    assert style_violation("The capital of Peru is Lima.", "Lima") is None
    assert style_violation("The capital of Peru is Lima", "Lima") == "unfinished"
    assert style_violation("Well. The capital of Peru is Lima.", "Lima") == "several sentences"
    assert style_violation("I would rather not say.", "Lima") == "no answer"
    assert style_violation("12 plus 7 is 119.", "19") == "no answer"  # whole numbers only
    assert style_violation(" ".join(["very"] * 20) + " Lima.", "Lima") == "too long"


# ---- encoding -----------------------------------------------------------------------------


def test_encode_pair_labels_only_the_reply(smollm2_tokenizer):
    tok = smollm2_tokenizer
    prompt = [{"role": "system", "content": STYLE_SYSTEM_PROMPT}, {"role": "user", "content": "What is 2 plus 2?"}]
    enc = encode_pair(tok, prompt, "2 plus 2 is 4.", "Great question! 2 plus 2 is 4.", max_len=256)
    for side, reply in (("chosen", "2 plus 2 is 4."), ("rejected", "Great question! 2 plus 2 is 4.")):
        ids, labels = enc[f"{side}_ids"], enc[f"{side}_labels"]
        assert len(ids) == len(labels) and labels[-1] == IGNORE
        targets = [t for t in labels if t != IGNORE]
        assert tok.decode(targets) == reply + "<|im_end|>"  # the reply and its end-of-turn, nothing else
        assert ids[-1] in tok.eos_token_ids  # the sequence ends at the end-of-turn
        first = next(t for t, v in enumerate(labels) if v != IGNORE)
        assert labels[first:-1] == ids[first + 1 :]  # next-token targets from there on
        assert "What is 2 plus 2?" in tok.decode(ids[: first + 1])
    assert enc["chosen_ids"][:5] == enc["rejected_ids"][:5]  # the same prompt


def test_encode_truncates_the_prompt_from_the_left(smollm2_tokenizer):
    tok = smollm2_tokenizer
    prompt = [{"role": "user", "content": "word " * 200 + "What is 2 plus 2?"}]
    full = encode_completion(tok, prompt, "2 plus 2 is 4.", max_len=10_000)
    cut = encode_completion(tok, prompt, "2 plus 2 is 4.", max_len=40)
    assert len(cut["ids"]) == 40 and cut["ids"] == full["ids"][-40:] and cut["labels"] == full["labels"][-40:]
    n_reply = sum(v != IGNORE for v in full["labels"])
    assert encode_completion(tok, prompt, "2 plus 2 is 4.", max_len=n_reply) is None  # the reply alone does not fit
    assert encode_pair(tok, prompt, "2 plus 2 is 4.", "word " * 100, max_len=40) is None
