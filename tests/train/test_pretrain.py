"""`ember pretrain` end to end: shards → loop → checkpoint → HF export; torchrun DDP/FSDP2
on two gloo processes gives the losses of one process with the same global batch."""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from ember.cli import main

TINY = ["--arch", "mini-llama", "--model.n_layers", "2", "--model.d_model", "64", "--model.n_heads", "4",
        "--model.n_kv_heads", "2", "--model.d_ff", "128", "--data.seq_len", "32"]


def _args(shards, out, steps=6, *extra):
    return ["pretrain", *TINY, "--data.dir", str(shards), "--train.steps", str(steps), "--train.batch_size", "4",
            "--train.eval_every", "3", "--train.eval_windows", "4", "--train.sample_every", "0",
            "--train.log_every", "1", "--train.out", str(out), "--train.progress", "false",
            "--train.precision", "fp32", "--sample_tokens", "8", *extra]


def _losses(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_pretrain_cli_end_to_end_and_hf_export(shards, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_args(shards, out)) == 0
    recs = _losses(out)
    assert [r["step"] for r in recs] == list(range(1, 7))
    assert "val_loss" in recs[2] and "val_loss" in recs[5] and recs[5]["val_ppl"] > 1
    assert all(r["tok_s"] > 0 and 0 < r["mfu"] for r in recs)
    assert (out / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "checkpoints" / "latest").read_text().strip() == "step_000006"
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] == 6 and summary["val_loss"] == recs[5]["val_loss"]

    import ember
    from ember.train.pretrain import load_run

    trained, tok = load_run(out)
    back, tok2 = ember.load(out / "hf")  # the HF folder loads back into ember
    ids = torch.tensor([tok.encode("The assert statement")])
    with torch.no_grad():
        want = trained(ids)
        torch.testing.assert_close(back(ids), want)
    assert tok2.encode("def f(x):") == tok.encode("def f(x):")
    assert main(["export", "--run", str(out), "--out", str(tmp_path / "hf2")]) == 0  # ember export
    again, _ = ember.load(tmp_path / "hf2")
    with torch.no_grad():
        torch.testing.assert_close(again(ids), want)
    transformers = pytest.importorskip("transformers")  # the parity extra
    hf = transformers.AutoModelForCausalLM.from_pretrained(out / "hf").eval()
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, want, rtol=1e-4, atol=1e-4)
    hf_tok = transformers.AutoTokenizer.from_pretrained(out / "hf")  # tokenizer.json, not only ember's file
    text = "The assert statement:  x = [1, 22, 333]\n\tüñí 🤖<|endoftext|>"
    assert hf_tok(text)["input_ids"] == tok.encode(text, allowed_special="all")


def test_resume_against_another_model_config_fails_clearly(shards, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_args(shards, out, 3)) == 0
    capsys.readouterr()
    code = main(_args(shards, out, 6, "--train.resume", "true", "--model.d_ff", "160"))
    assert code == 2
    assert "model.d_ff: 128 in the checkpoint vs 160 now" in capsys.readouterr().err


def test_corrupt_shard_is_a_clear_error(shards, tmp_path, capsys):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(shards, bad)
    shard = sorted(bad.glob("train_*.bin"))[0]
    shard.write_bytes(shard.read_bytes()[:-6])
    assert main(_args(bad, tmp_path / "run", 2)) == 2
    assert shard.name in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(cmd, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_torchrun_two_gloo_processes_match_one_process(shards, tmp_path, parallel):
    """Global batch 4: one process takes all 4 rows; two processes take 2 each and average
    gradients. Same data, same init → the same losses (up to float summation order)."""
    one, two = tmp_path / "one", tmp_path / "two"
    extra = ["--train.parallel", parallel, "--train.micro_batch_size", "1"]
    _run([sys.executable, "-m", "ember", *_args(shards, one, 4, *extra), "--train.device", "cpu"], tmp_path)
    _run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(_free_port()),
          "-m", "ember", *_args(shards, two, 4, *extra), "--train.device", "cpu"], tmp_path)
    a, b = _losses(one), _losses(two)
    assert [r["step"] for r in b] == [1, 2, 3, 4]  # rank 0 alone logs
    for ra, rb in zip(a, b):
        assert rb["loss"] == pytest.approx(ra["loss"], rel=1e-5, abs=1e-6)
        assert rb["grad_norm"] == pytest.approx(ra["grad_norm"], rel=1e-4)
    assert b[-1]["val_loss"] == pytest.approx(a[-1]["val_loss"], rel=1e-5)
    from ember.train.checkpoint import latest_checkpoint, load_checkpoint

    wa, wb = (load_checkpoint(latest_checkpoint(d))["model"] for d in (one, two))
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-5)


def _notes(tmp_path, name="notes.txt", start=0):
    from ember.data.corpus import pydoc_topics_text

    path = tmp_path / name
    path.write_text(pydoc_topics_text()[start : start + 20_000], encoding="utf-8")
    return path


def _data_args(out, *data):
    return ["pretrain", *TINY, "--data.vocab_size", "300", "--train.steps", "1", "--train.batch_size", "2",
            "--train.eval_windows", "1", "--train.sample_every", "0", "--train.out", str(out),
            "--train.progress", "false", "--train.precision", "fp32", "--sample_tokens", "0",
            "--export_hf", "false", *data]


def test_one_data_input_path_prepares_and_trains(tmp_path, capsys):
    """`--data.input notes.txt` (one path, no list syntax) prepares --data.dir and trains; a
    warmup (30 by default) longer than the 1-step run is announced."""
    notes, d = _notes(tmp_path), tmp_path / "d"
    assert main(_data_args(tmp_path / "run", "--data.input", str(notes), "--data.dir", str(d))) == 0
    err = capsys.readouterr().err
    assert "preparing token shards" in err and "optim.warmup_steps 30 >= the run's 1 steps" in err
    from ember.data.shards import read_plan

    assert [doc["path"] for doc in read_plan(d)["documents"]] == [str(notes.resolve())]
    assert json.loads((tmp_path / "run" / "config.json").read_text())["data"]["input"] == [str(notes)]


def test_data_dir_with_other_data_is_refused_naming_the_difference(tmp_path, capsys):
    from ember.tokenizer import train_bpe

    notes, other, d = _notes(tmp_path), _notes(tmp_path, "other.txt", 30_000), tmp_path / "d"
    tok = train_bpe([other.read_text()], 280, special_tokens=["<|endoftext|>"], eos_tokens=["<|endoftext|>"],
                    progress=False).save(tmp_path / "tok")
    assert main(_data_args(tmp_path / "run", "--data.input", str(notes), "--data.dir", str(d))) == 0
    capsys.readouterr()
    refusals = {
        ("--data.input", str(other)): f"data.input: ['{notes.resolve()}'] vs ['{other.resolve()}']",
        ("--data.input", str(notes), "--data.vocab_size", "400"): "data.vocab_size: 300 in the folder vs 400 now",
        ("--data.input", str(notes), "--data.val_fraction", "0.2"): "data.val_fraction: 0.05 in the folder vs 0.2 now",
        ("--data.tokenizer", str(tok)): "data.tokenizer: another tokenizer (",
    }
    for flags, want in refusals.items():
        assert main(_data_args(tmp_path / "refused", "--data.dir", str(d), *flags)) == 2, flags
        err = capsys.readouterr().err
        assert want in err and "pass a new --data.dir" in err, err
    # the same data, or no data options at all: the folder is reused, and says so
    assert main(_data_args(tmp_path / "again", "--data.dir", str(d))) == 0
    assert f"using the shards in {d} (files ['{notes.resolve()}']" in capsys.readouterr().err
    notes.write_text(notes.read_text() + " edited", encoding="utf-8")
    assert main(_data_args(tmp_path / "edited", "--data.input", str(notes), "--data.dir", str(d))) == 2
    assert f"data.input: ['{notes.resolve()}'] changed since the shards were made" in capsys.readouterr().err


def test_a_data_dir_without_shards_needs_an_input(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    assert main(_data_args(tmp_path / "run", "--data.dir", str(missing))) == 2
    err = capsys.readouterr().err
    assert f"data.dir {missing} does not exist; pass --data.input FILES" in err
    assert not missing.exists() and not (tmp_path / "runs").exists()  # no bundled corpus in its place


def test_default_data_dir_is_checked_against_the_defaults(tmp_path, monkeypatch, capsys):
    import ember.data.corpus
    from ember.parallel import init_distributed
    from ember.train.pretrain import DataConfig, prepare_data

    texts = [_notes(tmp_path).read_text()[i : i + 1000] for i in range(0, 20_000, 1000)]
    monkeypatch.setattr(ember.data.corpus, "bundled_documents", lambda: texts)
    monkeypatch.chdir(tmp_path)
    info = init_distributed("cpu")
    folder = prepare_data(DataConfig(vocab_size=300), info, progress=False)
    assert folder == tmp_path.joinpath("runs/data/bundled-bpe300").relative_to(tmp_path)
    assert prepare_data(DataConfig(vocab_size=300, val_fraction=0.05), info, progress=False) == folder
    with pytest.raises(ValueError, match=r"data.val_fraction: 0.05 in the folder vs 0.1 now.*delete runs/data"):
        prepare_data(DataConfig(vocab_size=300, val_fraction=0.1), info, progress=False)
