"""`ember dpo` on a tiny chat model: the loss starts at log 2 (LoRA policy = reference),
falls, and the held-out metrics and adapter are written."""

import json
import math

import pytest

from ember.cli import main


@pytest.mark.parametrize("loss_type", ["dpo", "simpo"])
def test_dpo_cli_on_style_pairs(tiny_chat_model, tmp_path, capsys, loss_type):
    out = tmp_path / "run"
    code = main(["dpo", "--model", str(tiny_chat_model), "--dataset", "style", "--n_train", "16", "--n_eval", "8",
                 "--loss_type", loss_type, "--lora.rank", "4", "--train.steps", "6", "--train.batch_size", "4",
                 "--train.eval_every", "3", "--train.out", str(out), "--train.progress", "false",
                 "--optim.lr", "1e-2", *(["--beta", "2.0"] if loss_type == "simpo" else [])])
    assert code == 0, capsys.readouterr().err
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    if loss_type == "dpo":
        assert recs[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)  # policy == reference at step 0
    assert recs[-1]["loss"] < recs[0]["loss"]
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0 <= summary["after"]["pref_accuracy"] <= 1 and "style_rate" in summary["before"]
    assert (out / "adapter" / "adapter.safetensors").is_file()


def test_dpo_bad_pairs_are_skipped_and_counted(tiny_chat_model, tmp_path, capsys):
    rows = [{"prompt": "Capital of France?", "chosen": "Paris.", "rejected": "Hmm, maybe"}] * 4
    rows += [{"prompt": "x", "chosen": "same", "rejected": "same"}, {"prompt": "x", "chosen": "only"}]
    data = tmp_path / "p.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code = main(["dpo", "--model", str(tiny_chat_model), "--data", str(data), "--train.steps", "1",
                 "--train.batch_size", "2", "--train.out", str(tmp_path / "o"), "--train.progress", "false"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "identical" in err and "missing_field" in err


def test_reward_model_cli_learns_the_style_pairs(tiny_chat_model, tmp_path, capsys):
    out = tmp_path / "rm"
    code = main(["reward", "--model", str(tiny_chat_model), "--dataset", "style", "--n_train", "16", "--n_eval", "8",
                 "--lora.rank", "4", "--train.steps", "8", "--train.batch_size", "4", "--train.eval_every", "4",
                 "--train.out", str(out), "--train.progress", "false", "--optim.lr", "3e-3"])
    assert code == 0, capsys.readouterr().err
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert recs[-1]["loss"] < recs[0]["loss"]
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0 <= summary["after"]["rm_accuracy"] <= 1
    assert (out / "head.safetensors").is_file() and (out / "adapter" / "adapter.safetensors").is_file()


def test_kto_on_split_style_pairs_starts_at_half(tiny_chat_model, tmp_path, capsys):
    """KTO: policy == reference and z0 = 0 at step 0, so every row costs λ·σ(0) = 0.5."""
    out = tmp_path / "kto"
    code = main(["dpo", "--model", str(tiny_chat_model), "--dataset", "style", "--n_train", "12", "--n_eval", "4",
                 "--loss_type", "kto", "--lora.rank", "4", "--train.steps", "6", "--train.batch_size", "4",
                 "--train.eval_every", "3", "--train.out", str(out), "--train.progress", "false",
                 "--optim.lr", "1e-2"])
    assert code == 0, capsys.readouterr().err
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert recs[0]["loss"] == pytest.approx(0.5, abs=1e-6) and recs[0]["kl_ref"] == pytest.approx(0.0, abs=1e-6)
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["before"]["reward_margin"] == 0.0  # the implicit reward is 0 for every row
    # (KTO's loss need not fall: z0 grows as the policy leaves the reference)
    assert summary["after"]["reward_margin"] > 0 and 0 <= summary["after"]["pref_accuracy"] <= 1


def test_kto_reads_unpaired_rows_and_counts_bad_ones(tiny_chat_model, tmp_path, capsys):
    rows = [{"prompt": f"Capital of country {i}?", "completion": "Paris." if i % 2 else "Hmm, maybe", "label": bool(i % 2)}
            for i in range(8)]
    rows += [{"prompt": "x", "completion": "y", "label": "yes"}, {"prompt": "x", "label": True}]
    data = tmp_path / "u.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = ["--model", str(tiny_chat_model), "--data", str(data), "--train.steps", "1", "--train.batch_size", "2",
            "--train.out", str(tmp_path / "o"), "--train.progress", "false"]
    assert main(["dpo", "--loss_type", "kto", *args]) == 0
    err = capsys.readouterr().err
    assert "bad_type" in err and "missing_field" in err
    assert main(["dpo", *args]) != 0  # unpaired rows need --loss_type kto
    assert "--loss_type kto" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["dpo"], ["dpo", "--loss_type", "kto"], ["reward"]])
def test_n_eval_zero_means_no_heldout_evaluation(tiny_chat_model, tmp_path, capsys, command):
    out = tmp_path / "run"
    code = main([*command, "--model", str(tiny_chat_model), "--dataset", "style", "--n_train", "8", "--n_eval", "0",
                 "--lora.rank", "2", "--train.steps", "1", "--train.batch_size", "4", "--train.out", str(out),
                 "--train.progress", "false"])
    assert code == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["before"] == {} and summary["after"] == {}
