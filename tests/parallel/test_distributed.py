"""DDP and FSDP2 on two gloo processes give the loss, gradients and AdamW step of one process
on the whole batch; full state dicts have the plain model's keys and values; a single process
needs no process group at all.

Spawned children write safetensors/JSON into tmp_path; the parent compares with a reference
computed in-process. A child's exception is written beside its results and shown by the parent.
"""

import json
import os
import tempfile
import traceback
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from gloo_ranks import run_ranks
from safetensors.torch import load_file, save_file
from torch.distributed.tensor import DTensor

from ember.model import ModelConfig, Transformer
from ember.parallel import (
    DistInfo,
    all_reduce_mean,
    apply_ddp,
    apply_fsdp,
    barrier,
    broadcast_object,
    destroy_distributed,
    full_optim_state_dict,
    full_state_dict,
    init_distributed,
    load_full_optim_state_dict,
    load_full_state_dict,
    no_sync,
    unwrap,
)

WORLD = 2
JOIN_TIMEOUT_S = 90  # a hang fails the test instead of blocking the suite
LR = 1e-2
TOL = dict(atol=1e-6, rtol=1e-5)  # the ranks reduce in another order than one process does


def _config(tie: bool) -> ModelConfig:
    return ModelConfig.tiny(n_layers=2, tie_embeddings=tie)


def _batch() -> torch.Tensor:
    return torch.randint(0, 256, (4, 17), generator=torch.Generator().manual_seed(1))  # (B, T+1)


def _loss(model, ids):
    logits = model(ids[:, :-1])  # (B, T, V)
    return F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())


def _full(t):
    return t.full_tensor() if isinstance(t, DTensor) else t.detach().clone()


def _reference(tie: bool):
    """One process, all four rows: loss and gradients."""
    torch.manual_seed(0)
    model = Transformer(_config(tie))
    loss = _loss(model, _batch())
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}


def _adamw_step(tie: bool, grads: dict) -> dict:
    """One process: the parameters after one AdamW step with the given gradients.

    Compared with the ranks' step given *their* gradients, not the reference ones: Adam's first
    step is about lr·sign(g), so a 1e-9 reduction-order difference in a gradient near zero
    moves a weight by ~lr·1e-3. The gradients themselves are compared with the reference.
    """
    torch.manual_seed(0)
    model = Transformer(_config(tie))
    for n, p in model.named_parameters():
        p.grad = grads[n]
    torch.optim.AdamW(model.parameters(), lr=LR).step()
    return model.state_dict()


# ---------------------------------------------------------------------------------------------
# What each rank runs (module level, so a spawned child can import it by name)


def _train_step(info: DistInfo, out: Path, wrap: str):
    torch.manual_seed(0)
    model = Transformer(_config(tie=wrap == "fsdp"))
    model = apply_ddp(model, info) if wrap == "ddp" else apply_fsdp(model, info)
    rows = _batch()[2 * info.rank : 2 * info.rank + 2]  # rank 0: rows 0-1, rank 1: rows 2-3
    loss = _loss(model, rows)
    loss.backward()
    mean = all_reduce_mean(loss, info)
    grads = {n: _full(p.grad) for n, p in unwrap(model).named_parameters()}

    # Gradient accumulation: two micro-batches of one row, the first without communication.
    opt = torch.optim.AdamW(model.parameters(), lr=LR)
    opt.zero_grad(set_to_none=True)
    with no_sync(model):
        (_loss(model, rows[:1]) / 2).backward()
    if wrap == "ddp":  # each rank kept its own gradient: the parent checks they differ
        local = unwrap(model).tok_embeddings.weight.grad.clone()
        save_file({"g": local}, out / f"nosync_{info.rank}.safetensors")
    # FSDP2 keeps the unreduced gradients to itself: no sharded .grad until a syncing backward.
    deferred = all(p.grad is None for p in model.parameters())
    (_loss(model, rows[1:]) / 2).backward()
    accum = {n: _full(p.grad) for n, p in unwrap(model).named_parameters()}
    opt.step()
    params = full_state_dict(model, info)

    save_file(grads, out / f"grads_{info.rank}.safetensors")
    save_file(accum, out / f"accum_{info.rank}.safetensors")
    if info.is_main:
        save_file(params, out / "params.safetensors")
        result = {"mean_loss": mean, "loss0": loss.item(), "deferred": deferred}
        (out / "result.json").write_text(json.dumps(result))


def _ddp(info, out):
    _train_step(info, out, "ddp")


def _fsdp(info, out):
    _train_step(info, out, "fsdp")


def _fsdp_roundtrip(info: DistInfo, out: Path):
    torch.manual_seed(0)
    model = apply_fsdp(Transformer(_config(tie=True)), info)
    initial = full_state_dict(model, info)  # None on rank 1
    torch.manual_seed(1)
    other = apply_fsdp(Transformer(_config(tie=True)), info)
    load_full_state_dict(other, initial, info, from_rank0=True)
    reloaded = full_state_dict(other, info)

    # Resume: weights and AdamW moments of `model` after one step, loaded into `other`;
    # one more step on each must give the same weights.
    rows = _batch()[2 * info.rank : 2 * info.rank + 2]
    opt = torch.optim.AdamW(model.parameters(), lr=LR)
    _loss(model, rows).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    osd = full_optim_state_dict(model, opt, info)
    load_full_state_dict(other, full_state_dict(model, info), info, from_rank0=True)
    opt2 = torch.optim.AdamW(other.parameters(), lr=LR)
    load_full_optim_state_dict(other, opt2, osd, info, from_rank0=True)
    for m, o in ((model, opt), (other, opt2)):
        _loss(m, rows).backward()
        o.step()
    a, b = full_state_dict(model, info), full_state_dict(other, info)
    tied = other.output.weight is other.tok_embeddings.weight
    if info.is_main:
        save_file(initial, out / "initial.safetensors")
        save_file(reloaded, out / "reloaded.safetensors")
        save_file(
            {f"{n}/{k}": v for n, st in osd["state"].items() for k, v in st.items()},
            out / "optim_state.safetensors",
        )
        save_file(a, out / "resumed_a.safetensors")
        save_file(b, out / "resumed_b.safetensors")
        (out / "result.json").write_text(
            json.dumps({"tied": tied, "param_groups": osd["param_groups"]})
        )


def _cli_closes_group(info, out):
    """A CLI training command closes the group it ran under: exiting with a live gloo group
    can abort a rank after the run itself finished (a torchrun flake seen in CI)."""
    from ember.cli import closing_process_group

    assert dist.is_initialized()
    with closing_process_group():
        pass
    assert not dist.is_initialized()


SCENARIOS = {"ddp": _ddp, "fsdp": _fsdp, "fsdp_roundtrip": _fsdp_roundtrip, "cli_closes_group": _cli_closes_group}


def _child(rank: int, port: int, out: str, scenario: str):
    out = Path(out)
    try:
        os.environ.update(
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            WORLD_SIZE=str(WORLD),
        )
        torch.set_num_threads(1)
        info = init_distributed("cpu")
        assert info == init_distributed("cpu")  # idempotent with the group up
        SCENARIOS[scenario](info, out)
        if dist.is_initialized():
            barrier(info)
        destroy_distributed()
    except BaseException:
        (out / f"error_{rank}.txt").write_text(traceback.format_exc())
        raise


def _spawn(scenario: str, out: Path):
    procs = run_ranks(_child, WORLD, out, scenario, timeout_s=JOIN_TIMEOUT_S)
    assert [p.exitcode for p in procs] == [0] * WORLD


def _assert_dicts_close(got: dict, want: dict, what: str):
    assert sorted(got) == sorted(want), what
    for k in want:
        torch.testing.assert_close(got[k], want[k], **TOL, msg=lambda m, k=k: f"{what} {k}: {m}")


# ---------------------------------------------------------------------------------------------
# Two processes


@pytest.mark.parametrize("wrap", ["ddp", "fsdp"])
def test_two_ranks_equal_one_process(wrap, tmp_path):
    tie = wrap == "fsdp"  # FSDP2 on the tied head: the shared weight lives in the root group
    loss, grads = _reference(tie)
    _spawn(wrap, tmp_path)
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["mean_loss"] == pytest.approx(loss, abs=1e-6)
    assert result["loss0"] != pytest.approx(loss, abs=1e-6)  # rank 0 alone saw other rows
    for rank in range(WORLD):
        _assert_dicts_close(
            load_file(tmp_path / f"grads_{rank}.safetensors"), grads, f"rank {rank} grad"
        )
        _assert_dicts_close(
            load_file(tmp_path / f"accum_{rank}.safetensors"), grads, f"rank {rank} accum"
        )
    stepped = _adamw_step(tie, load_file(tmp_path / "accum_0.safetensors"))
    _assert_dicts_close(load_file(tmp_path / "params.safetensors"), stepped, "param after AdamW")
    if wrap == "ddp":  # inside no_sync each rank kept its own gradient
        g0, g1 = (load_file(tmp_path / f"nosync_{r}.safetensors")["g"] for r in range(WORLD))
        assert not torch.allclose(g0, g1)
    else:
        assert result["deferred"]


def test_fsdp_full_state_dict_round_trip(tmp_path):
    torch.manual_seed(0)
    plain = Transformer(_config(tie=True))
    _spawn("fsdp_roundtrip", tmp_path)
    want = plain.state_dict()
    assert "output.weight" in want  # the tied head keeps its own key
    for name in ("initial", "reloaded"):
        got = load_file(tmp_path / f"{name}.safetensors")
        assert sorted(got) == sorted(want)
        for k in want:
            assert torch.equal(got[k], want[k]), f"{name} {k}"
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["tied"]
    a, b = (
        load_file(tmp_path / "resumed_a.safetensors"),
        load_file(tmp_path / "resumed_b.safetensors"),
    )
    _assert_dicts_close(b, a, "resumed vs uninterrupted")

    # The FSDP2 optimizer state loads into a plain single-process model: one format for all.
    names = [n for n, _ in plain.named_parameters()]  # the tied weight once
    assert result["param_groups"][0]["params"] == names
    flat = load_file(tmp_path / "optim_state.safetensors")
    osd = {
        "state": {
            n: {k: flat[f"{n}/{k}"] for k in ("step", "exp_avg", "exp_avg_sq")} for n in names
        },
        "param_groups": result["param_groups"],
    }
    plain.load_state_dict(load_file(tmp_path / "resumed_a.safetensors"))  # any weights will do
    opt = torch.optim.AdamW(plain.parameters(), lr=LR)
    info = init_distributed("cpu")
    load_full_optim_state_dict(plain, opt, osd, info)
    for n, p in plain.named_parameters():
        torch.testing.assert_close(
            opt.state[p]["exp_avg"], osd["state"][n]["exp_avg"], atol=0, rtol=0
        )


# ---------------------------------------------------------------------------------------------
# One process


@pytest.fixture
def no_torchrun(monkeypatch):
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)


def test_single_process_needs_no_group(no_torchrun):
    info = init_distributed("cpu")
    assert (info.rank, info.world_size, info.backend, info.device) == (
        0,
        1,
        None,
        torch.device("cpu"),
    )
    assert info.is_main and not info.distributed
    model = Transformer(_config(tie=False))
    assert apply_ddp(model, info) is model and apply_fsdp(model, info) is model
    assert unwrap(model) is model and unwrap(torch.compile(model)) is model
    assert all_reduce_mean(torch.tensor(1.5), info) == 1.5
    assert broadcast_object({"a": 1}, info) == {"a": 1}
    barrier(info)
    with no_sync(model):
        pass
    destroy_distributed()  # no group: nothing to do


def test_torchrun_with_one_process_makes_no_group(no_torchrun, monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    info = init_distributed("auto")
    assert info.world_size == 1 and info.backend is None


@pytest.mark.parametrize("device", ["gpu", "cuda:", "cuda:x", "mps", "", "CPU", 0])
def test_bad_device_is_a_value_error(no_torchrun, device):
    with pytest.raises(ValueError, match="device must be one of"):
        init_distributed(device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_cuda_without_cuda_is_a_value_error(no_torchrun, device):
    with pytest.raises(ValueError, match="CUDA is not available"):
        init_distributed(device)


def test_incomplete_torchrun_env_is_a_value_error(no_torchrun, monkeypatch):
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ValueError, match="LOCAL_RANK"):
        init_distributed("cpu")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE"):
        init_distributed("cpu")


def test_single_process_state_dicts_are_owned_copies(no_torchrun):
    info = init_distributed("cpu")
    torch.manual_seed(0)
    model = Transformer(_config(tie=True))
    opt = torch.optim.AdamW(model.parameters(), lr=LR)
    _loss(model, _batch()).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    sd, osd = full_state_dict(model, info), full_optim_state_dict(model, opt, info)
    assert sorted(sd) == sorted(model.state_dict())
    with tempfile.TemporaryDirectory() as d:  # never /dev/null: as root, safetensors renames over it
        save_file(sd, os.path.join(d, "sd.safetensors"))  # refuses tensors sharing memory (the tied head)
    with torch.no_grad():
        model.tok_embeddings.weight.zero_()
    assert sd["tok_embeddings.weight"].abs().sum() > 0  # a copy, not the live weight
    assert (
        osd["state"]["tok_embeddings.weight"]["exp_avg"]
        is not opt.state[model.output.weight]["exp_avg"]
    )

    torch.manual_seed(1)
    other = Transformer(_config(tie=True))
    opt2 = torch.optim.AdamW(other.parameters(), lr=LR)
    given_sd, given_state = dict(sd), dict(osd["state"])
    load_full_state_dict(other, sd, info)
    load_full_optim_state_dict(other, opt2, osd, info)
    # The caller's dicts are left alone (torch's loader writes into the dict it is given).
    assert sd.keys() == given_sd.keys() and all(sd[k] is v for k, v in given_sd.items())
    assert osd["state"].keys() == given_state.keys()
    assert all(osd["state"][k] is v for k, v in given_state.items())
    assert other.output.weight is other.tok_embeddings.weight
    for k, v in other.state_dict().items():
        assert torch.equal(v, sd[k]), k
    for p, q in zip(model.parameters(), other.parameters()):
        assert torch.equal(opt.state[p]["exp_avg_sq"], opt2.state[q]["exp_avg_sq"])


def test_bad_state_dicts_are_value_errors(no_torchrun):
    info = init_distributed("cpu")
    model = Transformer(_config(tie=False))
    sd = full_state_dict(model, info)
    with pytest.raises(ValueError, match=r"missing \['output.weight'\]"):
        load_full_state_dict(model, {k: v for k, v in sd.items() if k != "output.weight"}, info)
    with pytest.raises(ValueError, match="unexpected"):
        load_full_state_dict(model, {**sd, "module.extra": torch.zeros(1)}, info)
    with pytest.raises(ValueError, match="norm.weight: \\(3,\\) != \\(64,\\)"):
        load_full_state_dict(model, {**sd, "norm.weight": torch.zeros(3)}, info)
    with pytest.raises(ValueError, match="None"):
        load_full_state_dict(model, None, info)

    opt = torch.optim.AdamW(model.parameters(), lr=LR)
    _loss(model, _batch()).backward()
    with pytest.raises(ValueError, match="before any backward"):
        load_full_optim_state_dict(model, opt, {"state": {}, "param_groups": []}, info)
    with pytest.raises(ValueError, match="lacks"):
        load_full_optim_state_dict(model, opt, {"state": {"nope": {}}, "param_groups": []}, info)


def test_cli_command_closes_the_process_group(tmp_path):
    _spawn("cli_closes_group", tmp_path)
