"""Run folders: never overwritten, mixed or silently restarted; locked while a run trains;
Ctrl-C leaves a run that resumes exactly."""

import json
import os
import re
import subprocess
import sys

import pytest
import torch
from loop_helpers import MCFG, noisy_loss, random_batches

from ember.core.lock import dir_lock
from ember.model import Transformer
from ember.train.checkpoint import latest_checkpoint
from ember.train.loop import TrainConfig, Trainer, prepare_run_dir
from ember.train.optim import OptimConfig


def _batches(step):
    return random_batches(step, B=2, T=8)


def _noisy_loss(model, batch):
    return noisy_loss(model, batch)[0], {}


def _trainer(out, steps=6, loss_fn=_noisy_loss, **kw):
    torch.manual_seed(0)
    kw = {"save_every": 2, "keep_checkpoints": 5, **kw}
    cfg = TrainConfig(
        steps=steps, batch_size=2, eval_every=0, sample_every=0, log_every=1, out=str(out), progress=False,
        precision="fp32", **kw,
    )
    optim = OptimConfig(lr=1e-2, warmup_steps=1)
    return Trainer(Transformer(MCFG), cfg, optim, loss_fn, _batches, run_config={"model": MCFG.to_dict()})


def _steps(out):
    return [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def _ckpts(out):
    return sorted(p.name for p in (out / "checkpoints").glob("step_*"))


def test_a_folder_holding_a_run_is_refused_without_resume_or_overwrite(tmp_path):
    _trainer(tmp_path, steps=4).fit()
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "checkpoints").iterdir()}
    metrics = (tmp_path / "metrics.jsonl").read_text()
    with pytest.raises(ValueError, match=rf"{re.escape(str(tmp_path))} already holds a run.*--train.resume true.*--train.overwrite true"):
        _trainer(tmp_path, steps=6).fit()
    with pytest.raises(ValueError, match="already holds a run"):
        prepare_run_dir(TrainConfig(out=str(tmp_path)))  # what recipes call before writing
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "checkpoints").iterdir()} == before
    assert (tmp_path / "metrics.jsonl").read_text() == metrics


def test_any_run_file_counts_and_other_files_do_not(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    prepare_run_dir(TrainConfig(out=str(tmp_path)))  # a folder of unrelated files is free
    (tmp_path / "summary.json").write_text("{}")
    with pytest.raises(ValueError, match=r"already holds a run \(summary.json\)"):
        prepare_run_dir(TrainConfig(out=str(tmp_path)))


def test_overwrite_starts_again_and_leaves_nothing_of_the_old_run(tmp_path):
    _trainer(tmp_path, steps=8).fit()
    (tmp_path / "notes.txt").write_text("mine")
    assert _ckpts(tmp_path)[-1] == "step_000008"
    _trainer(tmp_path, steps=4, overwrite=True).fit()
    assert _ckpts(tmp_path) == ["step_000002", "step_000004"]  # no step 6 or 8 of the old run
    assert latest_checkpoint(tmp_path).name == "step_000004"
    assert _steps(tmp_path) == [1, 2, 3, 4]
    assert (tmp_path / "notes.txt").read_text() == "mine"  # only the run's own files go


def test_resume_and_overwrite_together_are_refused():
    with pytest.raises(ValueError, match="contradict"):
        TrainConfig(resume=True, overwrite=True)


@pytest.mark.parametrize("case", ["missing_folder", "empty_folder", "deleted_checkpoints"])
def test_resume_with_nothing_to_resume_is_an_error(tmp_path, case):
    out = tmp_path / "run"
    if case == "empty_folder":
        out.mkdir()
    if case == "deleted_checkpoints":  # a run whose checkpoints/ was removed: metrics stay
        _trainer(out, steps=2).fit()
        for p in (out / "checkpoints").iterdir():
            if p.is_dir():
                for f in p.iterdir():
                    f.unlink()
                p.rmdir()
            else:
                p.unlink()
    metrics = (out / "metrics.jsonl").read_text() if out.exists() and (out / "metrics.jsonl").exists() else None
    with pytest.raises(ValueError, match=rf"nothing to resume in {re.escape(str(out))}"):
        _trainer(out, steps=4, resume=True).fit()
    assert (out.exists()) == (case != "missing_folder")  # a misspelt folder is not created
    if metrics is not None:
        assert (out / "metrics.jsonl").read_text() == metrics


def test_missing_latest_resumes_from_the_newest_step_folder(tmp_path, capsys):
    _trainer(tmp_path, steps=4).fit()  # checkpoints at 2 and 4
    (tmp_path / "checkpoints" / "latest").unlink()
    capsys.readouterr()
    t = _trainer(tmp_path, steps=6, resume=True)
    t.fit()
    assert t.start_step == 4
    err = capsys.readouterr().err
    assert "latest is missing: resuming from the newest intact checkpoint" in err and "step_000004" in err
    assert latest_checkpoint(tmp_path).name == "step_000006"


@pytest.mark.parametrize("damage", ["hash", "missing_file", "missing_folder"])
def test_corrupt_latest_names_the_previous_intact_checkpoint(tmp_path, damage):
    _trainer(tmp_path, steps=6).fit()  # checkpoints at 2, 4, 6; latest → 6
    newest = tmp_path / "checkpoints" / "step_000006"
    if damage == "hash":
        data = bytearray((newest / "model.safetensors").read_bytes())
        data[-3] ^= 0xFF
        (newest / "model.safetensors").write_bytes(bytes(data))
    elif damage == "missing_file":
        (newest / "optimizer.safetensors").unlink()
    else:
        for f in newest.iterdir():
            f.unlink()
        newest.rmdir()
    previous = tmp_path / "checkpoints" / "step_000004"
    with pytest.raises(ValueError, match=rf"previous intact checkpoint is {re.escape(str(previous))}.*--train.resume_from"):
        _trainer(tmp_path, steps=8, resume=True).fit()
    assert _ckpts(tmp_path)[0] == "step_000002"  # nothing pruned by the refused resume
    # the way out the message names works, and continues from step 4
    t = _trainer(tmp_path, steps=8, resume_from=str(previous))
    t.fit()
    assert t.start_step == 4 and latest_checkpoint(tmp_path).name == "step_000008"
    assert _steps(tmp_path) == list(range(1, 9))  # the lost run's rows 5-6 are replaced, not doubled


def test_a_locked_run_folder_is_refused_at_once_naming_the_holder(tmp_path):
    with dir_lock(tmp_path):
        with pytest.raises(ValueError, match=rf"run folder {re.escape(str(tmp_path))} is in use by process {os.getpid()}"):
            _trainer(tmp_path, steps=2).fit()
        with pytest.raises(ValueError, match="in use by process"):
            prepare_run_dir(TrainConfig(out=str(tmp_path)))
    assert not (tmp_path / "metrics.jsonl").exists()
    _trainer(tmp_path, steps=2).fit()  # released: the folder trains again


_HOLDER = r"""
import sys, time
from ember.core.lock import dir_lock
with dir_lock(sys.argv[1], "data folder"):
    print("locked", flush=True)
    time.sleep(60)
"""


def test_the_lock_holds_across_processes_and_dies_with_its_holder(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(ValueError, match=rf"in use by process {proc.pid}"):
            with dir_lock(tmp_path):
                pass
    finally:
        proc.kill()
        proc.wait()
    with dir_lock(tmp_path):  # the kernel dropped the dead holder's lock
        pass


def test_the_lock_is_released_when_training_fails(tmp_path):
    def broken(model, batch):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        _trainer(tmp_path, steps=2, loss_fn=broken).fit()
    with dir_lock(tmp_path):
        pass


def test_ctrl_c_saves_the_last_completed_step_and_resumes_exactly(tmp_path, capsys):
    full = tmp_path / "full"
    _trainer(full, steps=8, save_every=4).fit()
    calls = {"n": 0}

    def interrupted_at_step_5(model, batch):
        calls["n"] += 1
        if calls["n"] == 6:  # the 6th step (index 5): steps 1-5 are done, step 4 is the last save
            raise KeyboardInterrupt
        return _noisy_loss(model, batch)

    cut = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        _trainer(cut, steps=8, save_every=4, loss_fn=interrupted_at_step_5).fit()
    assert latest_checkpoint(cut).name == "step_000005"
    assert "saved step 5" in capsys.readouterr().err
    resumed = _trainer(cut, steps=8, save_every=4, resume=True)
    resumed.fit()
    assert resumed.start_step == 5
    a, b = ((d / "metrics.jsonl").read_text().splitlines() for d in (full, cut))
    losses = [[(r["step"], r["loss"]) for r in map(json.loads, x)] for x in (a, b)]
    assert losses[0] == losses[1]  # bit for bit, the RNG state of step 6 included
    with dir_lock(cut):  # Ctrl-C released the lock
        pass


def test_ctrl_c_before_any_step_saves_nothing_and_says_so(tmp_path, capsys):
    def at_once(model, batch):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _trainer(tmp_path, steps=4, loss_fn=at_once).fit()
    assert not (tmp_path / "checkpoints").exists()
    assert "--train.overwrite true" in capsys.readouterr().err


def test_data_preparation_locks_its_folder(tmp_path):
    from ember.data.shards import prepare_shards

    with dir_lock(tmp_path):
        # refused before reading a byte: the tokenizer is never touched
        with pytest.raises(ValueError, match=rf"data folder {re.escape(str(tmp_path))} is in use by process"):
            prepare_shards(tmp_path, tokenizer=None, texts=["some text"])


def test_sft_checks_its_folder_before_writing_into_it(tmp_path):
    from ember.train.sft import SFTConfig, build_sft

    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    with pytest.raises(ValueError, match="already holds a run"):
        build_sft(SFTConfig(dataset="tool-use", train=TrainConfig(out=str(tmp_path), progress=False)))
    assert not (tmp_path / "tool_use_train.jsonl").exists()  # the preset's data was not written


def test_scaling_sweep_folder_follows_the_same_rules(shards, tmp_path):
    from ember.train.scaling import ScalingSweepConfig, sweep

    def cfg(**kw):
        kw = {"models": ["1x32"], "tokens": [256], **kw}
        return ScalingSweepConfig(holdout=[], seq_len=32, batch_size=4, data=str(shards), out=str(tmp_path), **kw)

    sweep(cfg())
    points = (tmp_path / "points.jsonl").read_text()
    with pytest.raises(ValueError, match="already holds a scaling sweep.*--resume true.*--overwrite true"):
        sweep(cfg())
    with pytest.raises(ValueError, match="lr: 0.004 in the sweep vs 0.001 now"):
        sweep(cfg(resume=True, lr=1e-3))  # points of another lr must not join these
    # a run the sweep never finished (no point, no checkpoint) starts again; finished ones stay
    leftover = tmp_path / "runs" / "1x64-256"
    leftover.mkdir(parents=True)
    (leftover / "metrics.jsonl").write_text('{"step": 1, "loss": 9.0}\n')
    sweep(cfg(resume=True, models=["1x32", "1x64"]))
    lines = (tmp_path / "points.jsonl").read_text().splitlines()
    assert lines[0] == points.strip() and len(lines) == 2
    assert [json.loads(r)["step"] for r in (leftover / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    sweep(cfg(overwrite=True, tokens=[512]))
    assert [json.loads(r)["name"] for r in (tmp_path / "points.jsonl").read_text().splitlines()] == ["1x32:512"]
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["1x32-512"]
    with pytest.raises(ValueError, match="nothing to resume"):
        sweep(ScalingSweepConfig(out=str(tmp_path / "typo"), resume=True))
    assert not (tmp_path / "typo").exists()


def test_ctrl_c_inside_the_optimizer_update_saves_nothing_half_done(tmp_path, capsys):
    t = _trainer(tmp_path, steps=6, save_every=2)
    real_step, calls = t.optimizer.step, {"n": 0}

    def step_then_interrupt(*a, **kw):
        calls["n"] += 1
        real_step(*a, **kw)
        if calls["n"] == 3:  # the weights are step 3's, the counters still step 2's
            raise KeyboardInterrupt

    t.optimizer.step = step_then_interrupt
    with pytest.raises(KeyboardInterrupt):
        t.fit()
    assert _ckpts(tmp_path) == ["step_000002"]
    assert "the last checkpoint is step 2" in capsys.readouterr().err
