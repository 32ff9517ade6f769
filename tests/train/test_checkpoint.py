"""Checkpoints: exact round trip, corruption detected, and kill -9 mid-save loses nothing."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ember.train.checkpoint import (
    flatten_state,
    latest_checkpoint,
    load_checkpoint,
    load_resume_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
    unflatten_state,
)
from ember.train.optim import OptimConfig, build_optimizer, lr_at


def _optimizer_after_steps(n=3):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 3))
    opt = build_optimizer(model, OptimConfig())
    for _ in range(n):
        model(torch.tensor([1, 2, 3])).sum().backward()
        opt.step()
        opt.zero_grad()
    return model, opt


def test_flatten_round_trip_of_optimizer_state():
    _, opt = _optimizer_after_steps()
    sd = opt.state_dict()
    skeleton, tensors = flatten_state(sd)
    json.dumps(skeleton)  # the skeleton is plain JSON
    back = unflatten_state(json.loads(json.dumps(skeleton)), tensors)
    assert back["param_groups"][0]["params"] == sd["param_groups"][0]["params"]
    for i, st in sd["state"].items():
        for k, v in st.items():
            assert torch.equal(back["state"][i][k], v)


def test_save_load_round_trip_and_latest(tmp_path):
    model, opt = _optimizer_after_steps()
    for step in (10, 20, 30):
        save_checkpoint(tmp_path, step, model.state_dict(), opt.state_dict(), {"tokens": step * 7, "rng": rng_state()}, keep=2)
    latest = latest_checkpoint(tmp_path)
    assert latest.name == "step_000030"
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*")) == ["step_000020", "step_000030"]
    ck = load_checkpoint(latest)
    assert ck["step"] == 30 and ck["state"]["tokens"] == 210
    for k, v in model.state_dict().items():
        assert torch.equal(ck["model"][k], v)
    model2, _ = _optimizer_after_steps(0)
    opt2 = build_optimizer(model2, OptimConfig())
    opt2.load_state_dict(ck["optimizer"])  # loads into a fresh optimizer
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])


def test_rng_state_round_trip():
    state = rng_state()
    a = (torch.rand(3), random.random(), np.random.rand())
    set_rng_state(state)
    b = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(a[0], b[0]) and a[1:] == b[1:]


@pytest.mark.parametrize("damage", ["flip", "truncate", "json", "missing"])
def test_corrupt_checkpoint_is_a_clear_error(tmp_path, damage):
    model, opt = _optimizer_after_steps(1)
    path = save_checkpoint(tmp_path, 1, model.state_dict(), opt.state_dict(), {"rng": rng_state()})
    f = path / "model.safetensors"
    if damage == "flip":
        data = bytearray(f.read_bytes())
        data[-3] ^= 0xFF
        f.write_bytes(bytes(data))
    elif damage == "truncate":
        f.write_bytes(f.read_bytes()[:-10])
    elif damage == "json":
        (path / "state.json").write_text("{not json", encoding="utf-8")
    else:
        f.unlink()
    with pytest.raises(ValueError, match="corrupt"):
        load_checkpoint(path)


def test_malformed_file_table_is_a_clear_error(tmp_path):
    model, opt = _optimizer_after_steps(1)
    path = save_checkpoint(tmp_path, 1, model.state_dict(), opt.state_dict(), {"rng": rng_state()})
    doc = json.loads((path / "state.json").read_text())
    (tmp_path / "outside.bin").write_bytes(b"x")
    doc["files"]["../../outside.bin"] = {"bytes": 1, "sha256": "0" * 64}  # must not be read
    (path / "state.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="file table is malformed"):
        load_checkpoint(path)


def test_resume_checkpoint_without_latest_is_the_newest_intact_one(tmp_path):
    model, opt = _optimizer_after_steps(1)
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, model.state_dict(), opt.state_dict(), {"rng": rng_state()}, keep=3)
    assert load_resume_checkpoint(tmp_path)[0]["step"] == 3  # latest intact: no note
    assert load_resume_checkpoint(tmp_path)[1] is None
    (tmp_path / "checkpoints" / "latest").unlink()
    (tmp_path / "checkpoints" / "step_000003" / "model.safetensors").write_bytes(b"garbage")
    ck, note = load_resume_checkpoint(tmp_path)
    assert ck["step"] == 2 and "latest is missing" in note and "step_000003" in note  # the skip is said
    assert load_resume_checkpoint(tmp_path / "nothing") == (None, None)


def test_a_save_removes_leftovers_of_a_killed_save_and_pointer_write(tmp_path):
    root = tmp_path / "checkpoints"
    (root / ".step_000001.x1.tmp").mkdir(parents=True)
    (root / ".latest.x2.tmp").write_text("step_0000")  # kill -9 during the pointer's atomic write
    save_checkpoint(tmp_path, 1, {"w": torch.zeros(2)}, None, {})
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_000001"]


def test_lr_schedule_shape():
    cfg = OptimConfig(lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    lrs = [lr_at(s, 100, cfg) for s in range(100)]
    assert lrs[9] == 1.0 and lrs[0] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))  # non-increasing after warmup
    assert lrs[-1] == pytest.approx(0.1, abs=1e-3)
    assert lr_at(50, 100, OptimConfig(lr=1.0, warmup_steps=0, schedule="linear", min_lr_ratio=0.0)) == 0.5


def test_weight_decay_skips_norms_biases_embeddings():
    from ember.model import ModelConfig, Transformer

    model = Transformer(ModelConfig.tiny(bias=True))
    opt = build_optimizer(model, OptimConfig(weight_decay=0.1))
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    for name, p in model.named_parameters():
        should = p.ndim == 2 and "embeddings" not in name
        assert (id(p) in decayed) == should, name


_SAVER = r"""
import sys, torch
from ember.train.checkpoint import save_checkpoint
run = sys.argv[1]
step = 0
while True:
    step += 1
    w = torch.full((1024, 1024), float(step))  # 4 MB per tensor, value = step
    save_checkpoint(run, step, {"a": w, "b": w + 1}, {"state": {0: {"m": w}}, "param_groups": []}, {"step_seen": step})
    print(step, flush=True)
"""


@pytest.mark.parametrize("delay", [0.05, 0.13, 0.31])
def test_kill_9_during_save_leaves_previous_checkpoint_loadable(tmp_path, delay):
    proc = subprocess.Popen([sys.executable, "-c", _SAVER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "1"  # one complete checkpoint exists
        time.sleep(delay)  # the saver is mid-write almost all the time
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    ck = load_checkpoint(latest_checkpoint(tmp_path))
    step = ck["step"]
    assert step >= 1 and ck["state"]["step_seen"] == step
    assert torch.equal(ck["model"]["a"], torch.full((1024, 1024), float(step)))
    assert torch.equal(ck["optimizer"]["state"][0]["m"], ck["model"]["a"])
    leftovers = [p for p in Path(tmp_path, "checkpoints").iterdir() if p.name.endswith(".tmp")]
    # a killed save may leave a temp folder; the next save removes it, loading ignores it
    save_checkpoint(tmp_path, step + 1, ck["model"], None, {"step_seen": step + 1})
    assert all(not p.exists() for p in leftovers)
