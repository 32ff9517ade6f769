"""SFT: JSONL chats → packed rows, loss on assistant tokens only, LoRA/QLoRA/full through
`ember sft`, and bad input (malformed lines, unknown roles, overlong chats)."""

import json

import pytest

from ember.cli import main
from ember.data.sft import IGNORE, Example, encode_conversation, pack, read_chat_jsonl

CHATS = [
    [{"role": "user", "content": f"What is {a} plus {b}?"}, {"role": "assistant", "content": f"{a + b}."}]
    for a, b in [(12, 30), (7, 5), (100, 23), (41, 1), (3, 3), (19, 81), (55, 45), (2, 9)]
]


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" if not isinstance(r, str) else r + "\n" for r in rows))
    return path


def test_labels_cover_exactly_the_assistant_tokens(smollm2_tokenizer):
    tok = smollm2_tokenizer
    ex = encode_conversation(tok, CHATS[0], max_len=512)
    ids, mask = tok.render_chat(CHATS[0], add_generation_prompt=False)
    assert ex.ids == ids
    targets = [t for t in ex.labels if t != IGNORE]
    assert targets == [i for i, m in zip(ids, mask) if m]  # next-token targets = masked tokens
    assert tok.decode(targets).startswith("42.")


def test_pack_keeps_conversations_apart():
    exs = [Example([1, 2, 3], [2, 3, IGNORE]), Example([4, 5], [5, IGNORE]), Example([6, 7, 8, 9], [7, 8, 9, IGNORE])]
    rows = pack(exs, 6, pad_id=0)
    assert rows["ids"].shape == (2, 6)
    for r in range(2):  # every example lands whole in one row, with its own segment id
        seg = rows["segment_ids"][r].tolist()
        assert seg == sorted(seg)
    flat = [t for row in rows["ids"].tolist() for t in row if t]
    assert sorted(flat) == list(range(1, 10))
    padded = pack(exs, 6, pad_id=0, packing=False)
    assert padded["ids"].shape == (3, 6)


def test_malformed_lines_are_reported_by_number_then_skipped_or_fatal(tmp_path, capsys):
    path = _jsonl(tmp_path / "c.jsonl", [
        {"messages": CHATS[0]}, "{not json", {"messages": [{"role": "wizard", "content": "hi"}]},
        {"messages": [{"role": "user", "content": "no reply"}]}, {"messages": CHATS[1]},
    ])
    convs = read_chat_jsonl(path, "skip")
    err = capsys.readouterr().err
    assert len(convs) == 2
    assert "c.jsonl:2: not JSON" in err and "c.jsonl:3:" in err and "wizard" in err and "c.jsonl:4:" in err
    with pytest.raises(ValueError, match=r"c.jsonl:2: not JSON"):
        read_chat_jsonl(path, "fail")


def test_overlong_conversations_truncate_or_drop(smollm2_tokenizer, capsys):
    from ember.data.sft import encode_conversations

    long = [{"role": "user", "content": "word " * 40}, {"role": "assistant", "content": "ok " * 200}]
    out = encode_conversations(smollm2_tokenizer, [CHATS[0], long], max_len=128, overlong="truncate")
    assert len(out) == 2 and len(out[1].ids) == 128
    assert "1 of 2 conversations truncated to 128 tokens" in capsys.readouterr().err
    out = encode_conversations(smollm2_tokenizer, [CHATS[0], long], max_len=128, overlong="drop")
    assert len(out) == 1
    assert "dropped, longer than 128" in capsys.readouterr().err
    no_reply_left = [{"role": "user", "content": "word " * 300}, {"role": "assistant", "content": "ok"}]
    assert len(encode_conversations(smollm2_tokenizer, [CHATS[0], no_reply_left], max_len=128)) == 1
    assert "dropped 1 conversations with no assistant token within 128" in capsys.readouterr().err


@pytest.mark.parametrize("variant", [[], ["--quant", "nf4"], ["--peft", "none"], ["--peft", "prefix", "--n_virtual", "4"]])
def test_sft_cli_trains_and_saves(tiny_chat_model, tmp_path, capsys, variant):
    data = _jsonl(tmp_path / "chats.jsonl", [{"messages": c} for c in CHATS * 3])
    out = tmp_path / "run"
    code = main(["sft", "--model", str(tiny_chat_model), "--data", str(data), "--max_len", "64",
                 "--lora.rank", "4", "--train.steps", "12", "--train.batch_size", "4", "--train.eval_every", "6",
                 "--train.sample_every", "0", "--train.out", str(out), "--train.progress", "false",
                 "--n_samples", "1", "--optim.lr", "1e-2", *variant])
    assert code == 0, capsys.readouterr().err
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert recs[-1]["loss"] < recs[0]["loss"]  # it learns
    assert "val_loss" in recs[5]
    if "none" in variant:  # an HF folder transformers can load: weights and tokenizer files
        for name in ("model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json"):
            assert (out / "model" / name).is_file(), name
    else:
        adapter = out / "adapter" / "adapter.safetensors"
        assert adapter.is_file() and adapter.stat().st_size < 2_000_000  # the adapter alone


def test_sft_bad_input_is_a_clear_error(tiny_chat_model, tmp_path, capsys):
    empty = _jsonl(tmp_path / "bad.jsonl", ["{oops"])
    assert main(["sft", "--model", str(tiny_chat_model), "--data", str(empty), "--train.out", str(tmp_path / "o")]) == 2
    assert "holds no valid conversations" in capsys.readouterr().err
    assert main(["sft", "--model", str(tiny_chat_model), "--train.out", str(tmp_path / "o")]) == 2
    assert "--data" in capsys.readouterr().err


def test_tool_use_preset_sets_the_dataset_and_sizes_but_overrides_win():
    from ember.core.config import with_preset
    from ember.train.sft import SFTConfig

    cfg = with_preset(SFTConfig, "tool-use")
    assert cfg.dataset == "tool-use" and cfg.max_len == 448 and cfg.train.steps == 110
    assert cfg.train.out == "runs/sft-tool-use" and cfg.lora.rank == 16
    assert with_preset(SFTConfig, "tool-use", **{"train.steps": 7}).train.steps == 7


def test_eval_tool_use_json_line_and_adapter(tiny_chat_model, tmp_path, capsys):
    """`ember eval tool-use --json` prints exactly one JSON line, with or without an adapter
    (a random tiny model scores 0: this checks the plumbing, the demo checks accuracy)."""
    data = _jsonl(tmp_path / "q.jsonl", [{"question": "What is 2 plus 3?", "answer": 5},
                                         {"question": "Compute 7 * 6.", "answer": 42}])
    base = ["eval", "tool-use", "--model", str(tiny_chat_model), "--data", str(data), "--json"]
    assert main(base) == 0
    line = capsys.readouterr().out.strip().splitlines()
    assert len(line) == 1 and json.loads(line[0]).keys() == {"accuracy", "n"} and json.loads(line[0])["n"] == 2
    chats = _jsonl(tmp_path / "chats.jsonl", [{"messages": c} for c in CHATS * 2])
    out = tmp_path / "run"
    assert main(["sft", "--model", str(tiny_chat_model), "--data", str(chats), "--max_len", "64", "--lora.rank", "2",
                 "--train.steps", "2", "--train.batch_size", "2", "--train.sample_every", "0",
                 "--train.out", str(out), "--train.progress", "false"]) == 0
    capsys.readouterr()
    assert main([*base, "--adapter", str(out / "adapter")]) == 0
    assert json.loads(capsys.readouterr().out.strip())["n"] == 2
    bad = _jsonl(tmp_path / "bad.jsonl", ['{"question": "x"}'])
    assert main(["eval", "tool-use", "--model", str(tiny_chat_model), "--data", str(bad), "--json"]) == 2
    assert "bad.jsonl" in capsys.readouterr().err


def test_val_fraction_zero_holds_nothing_out(tiny_chat_model, tmp_path, capsys):
    data = _jsonl(tmp_path / "chats.jsonl", [{"messages": c} for c in CHATS])
    out = tmp_path / "run"
    code = main(["sft", "--model", str(tiny_chat_model), "--data", str(data), "--max_len", "64", "--val_fraction", "0",
                 "--lora.rank", "4", "--train.steps", "2", "--train.batch_size", "4", "--train.eval_every", "1",
                 "--train.sample_every", "1", "--train.out", str(out), "--train.progress", "false"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert f"sft: {len(CHATS)} conversations" in err  # every one trains
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [1, 2] and not any("val_loss" in r for r in recs)
    assert main(["sft", "--model", str(tiny_chat_model), "--data", str(data), "--val_fraction", "1",
                 "--train.out", str(tmp_path / "other")]) == 2
    assert "val_fraction must be in [0, 1), got 1.0" in capsys.readouterr().err
