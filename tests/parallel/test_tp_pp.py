"""Tensor and pipeline parallelism on two gloo processes give the losses and gradients of one
process, step after step of AdamW; their compositions (activation checkpointing, FSDP2 on a
2-D mesh) too; full state dicts round-trip under TP whatever order each rank's dict has;
bad sizes are clear errors. The command line under torchrun: test_tp_pp_cli.py.

The steps are SGD's: its update is linear in the gradient, so the ranks' float rounding
(they sum the row-split matmuls and the stages' gradients in another order than one process,
~1e-7) stays rounding; AdamW's first steps move each weight by about lr·sign(g) and would turn
rounding on a near-zero gradient into a visible change of the trajectory (the CLI test runs
AdamW). Tolerances: losses within 1e-5, gradients within atol 1e-6 / rtol 1e-4.

The default suite runs one TP and one PP case (with tied embeddings, and checkpointing on the
PP one); the rest (untied, TP with checkpointing, FSDP2 + TP on a 1 x 2 mesh, FSDP2 with checkpointing)
are marked slow.
"""

import json
import os
import random
import traceback
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from gloo_ranks import run_ranks
from safetensors.torch import load_file, save_file
from torch.distributed.tensor import DTensor

from ember.model import ModelConfig, Transformer
from ember.parallel import (
    DistInfo,
    broadcast_object,
    destroy_distributed,
    full_state_dict,
    init_distributed,
    load_full_state_dict,
)
from ember.parallel.pipeline import Pipeline, stage_bounds
from ember.parallel.tensor import (
    apply_tp,
    check_same_batch,
    check_tp,
    data_parallel,
    parallelize,
    tp_degree,
)
from ember.train.losses import lm_loss

WORLD, STEPS, LR = 2, 3, 0.2
JOIN_TIMEOUT_S = 120  # a hang fails the test instead of blocking the suite
LOSS_TOL = 1e-5
GRAD_TOL = dict(atol=1e-6, rtol=1e-4)
# (name, parallel mode, tie_embeddings, n_layers, activation checkpointing)
FAST = [("tp_tied", "tp", True, 2, False), ("pp_tied_ac", "pp", True, 3, True)]
SLOW = [
    ("tp", "tp", False, 2, False),
    ("tp_ac", "tp", True, 2, True),
    ("fsdp_tp", "fsdp+tp", True, 2, False),
    ("fsdp_ac", "fsdp", True, 2, True),  # FSDP2 over checkpointed blocks (both ranks read every row)
    ("pp", "pp", False, 3, False),
]


def _config(tie: bool, n_layers: int) -> ModelConfig:
    return ModelConfig.tiny(n_layers=n_layers, tie_embeddings=tie)  # 4 heads, 2 KV heads: GQA


def _batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(0, 256, (4, 17), generator=torch.Generator().manual_seed(step))  # (B, T+1)
    return ids[:, :-1], ids[:, 1:]


def _full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if isinstance(t, DTensor) else t.detach().clone()


def _train(model, step_fn, params) -> tuple[list[float], list[dict]]:
    """STEPS SGD steps with clipping: the loss and every full gradient of each step."""
    opt = torch.optim.SGD(params, lr=LR)
    losses, grads = [], []
    for step in range(STEPS):
        losses.append(step_fn(_batch(step)))
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        grads.append({n: _full(p.grad) for n, p in model.named_parameters()})
        opt.step()
        opt.zero_grad(set_to_none=True)
    return losses, grads


def _reference(tie: bool, n_layers: int):
    torch.manual_seed(0)
    model = Transformer(_config(tie, n_layers))

    def step(batch):
        loss = lm_loss(model, batch)[0]
        loss.backward()
        return loss.item()

    return _train(model, step, list(model.parameters()))


# ---------------------------------------------------------------------------------------------
# What each rank runs


def _run(info: DistInfo, out: Path, name: str, mode: str, tie: bool, n_layers: int, ac: bool) -> None:
    torch.manual_seed(0)
    model = parallelize(Transformer(_config(tie, n_layers)), info, mode, tp_size=2, activation_checkpointing=ac)
    if mode == "pp":
        pipe = Pipeline(model, lm_loss, n_microbatches=2, device=info.device)
        lo_hi = stage_bounds(n_layers, WORLD)[info.rank]
        assert len(pipe.stage_module.layers) == lo_hi[1] - lo_hi[0]  # this rank computes its stage only
        step_fn = pipe.step
    else:
        wq = model.layers[0].attention.wq.weight
        assert wq.to_local().shape[0] == wq.shape[0] // WORLD  # each rank holds half the query heads

        def step_fn(batch):
            loss = lm_loss(model, batch)[0]
            loss.backward()
            return loss.item()

    losses, grads = _train(model, step_fn, list(model.parameters()))
    if info.is_main:
        save_file({f"{s}/{k}": g for s, gs in enumerate(grads) for k, g in gs.items()}, out / f"{name}.safetensors")
        (out / f"{name}.json").write_text(json.dumps(losses))


def _state_dict_round_trip(info: DistInfo, out: Path) -> None:
    """Full state dict of a TP model → a fresh TP model, each rank's dict in its own key order."""
    torch.manual_seed(0)
    model = parallelize(Transformer(_config(True, 2)), info, "tp")
    sd = broadcast_object(full_state_dict(model, info), info)
    keys = list(sd)
    random.Random(info.rank).shuffle(keys)
    torch.manual_seed(1)
    other = parallelize(Transformer(_config(True, 2)), info, "tp")
    load_full_state_dict(other, {k: sd[k] for k in keys}, info)
    back = full_state_dict(other, info)
    if info.is_main:
        save_file(back, out / "roundtrip.safetensors")


def _different_batches_refused(info: DistInfo, out: Path) -> None:
    x = torch.full((2, 4), info.rank)
    try:
        check_same_batch((x, x), info, "tp")
    except ValueError as e:
        (out / f"refused_{info.rank}.txt").write_text(str(e))
    check_same_batch((torch.ones(2, 4), torch.zeros(2, 4)), info, "pp")  # equal on both: passes


def _scenarios(info: DistInfo, out: Path, slow: bool) -> None:
    for run in SLOW if slow else FAST:
        _run(info, out, *run)
    if not slow:
        _state_dict_round_trip(info, out)
        _different_batches_refused(info, out)


def _child(rank: int, port: int, out: str, slow: bool):
    out = Path(out)
    try:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                          WORLD_SIZE=str(WORLD))
        torch.set_num_threads(1)
        info = init_distributed("cpu", timeout_s=JOIN_TIMEOUT_S)
        _scenarios(info, out, slow)
        destroy_distributed()
    except BaseException:
        (out / f"error_{rank}.txt").write_text(traceback.format_exc())
        raise


def _spawn(out: Path, slow: bool) -> Path:
    run_ranks(_child, WORLD, out, slow, timeout_s=JOIN_TIMEOUT_S)
    return out


@pytest.fixture(scope="module")
def spawned(tmp_path_factory) -> Path:
    return _spawn(tmp_path_factory.mktemp("tp_pp"), slow=False)


@pytest.fixture(scope="module")
def spawned_slow(tmp_path_factory) -> Path:
    return _spawn(tmp_path_factory.mktemp("tp_pp_slow"), slow=True)


# ---------------------------------------------------------------------------------------------
# Two processes against one


def _assert_equal_to_one_process(out: Path, name: str, tie: bool, n_layers: int) -> None:
    want_losses, want_grads = _reference(tie, n_layers)
    losses = json.loads((out / f"{name}.json").read_text())
    assert losses == pytest.approx(want_losses, abs=LOSS_TOL)
    assert len(set(losses)) == STEPS  # distinct steps: the weights moved
    got = load_file(out / f"{name}.safetensors")
    d_grad = max((got[f"{s}/{k}"] - g).abs().max().item() for s, gs in enumerate(want_grads) for k, g in gs.items())
    d_loss = max(abs(a - b) for a, b in zip(losses, want_losses))
    print(f"{name}: max |dloss| {d_loss:.2e}, max |dgrad| {d_grad:.2e}")
    for step, want in enumerate(want_grads):
        assert {k.split("/", 1)[1] for k in got if k.startswith(f"{step}/")} == set(want)
        for k, g in want.items():
            torch.testing.assert_close(got[f"{step}/{k}"], g, **GRAD_TOL, msg=lambda m, k=k, s=step: f"step {s} {k}: {m}")


@pytest.mark.parametrize("name, mode, tie, n_layers, ac", FAST, ids=[r[0] for r in FAST])
def test_two_processes_equal_one_process(spawned, name, mode, tie, n_layers, ac):
    _assert_equal_to_one_process(spawned, name, tie, n_layers)


@pytest.mark.slow
@pytest.mark.parametrize("name, mode, tie, n_layers, ac", SLOW, ids=[r[0] for r in SLOW])
def test_two_processes_equal_one_process_more_cases(spawned_slow, name, mode, tie, n_layers, ac):
    _assert_equal_to_one_process(spawned_slow, name, tie, n_layers)


def test_tp_state_dict_round_trip_in_any_key_order(spawned):
    torch.manual_seed(0)
    want = Transformer(_config(True, 2)).state_dict()
    got = load_file(spawned / "roundtrip.safetensors")
    assert sorted(got) == sorted(want)
    for k in want:
        assert torch.equal(got[k], want[k]), k


def test_ranks_fed_different_batches_are_refused(spawned):
    for rank in range(WORLD):
        assert "given different batches" in (spawned / f"refused_{rank}.txt").read_text()


# ---------------------------------------------------------------------------------------------
# Sizes (one process)


def test_tp_must_split_whole_kv_heads():
    check_tp(ModelConfig.tiny(), 2)
    with pytest.raises(ValueError, match="degree 4 must divide n_kv_heads 2"):
        check_tp(ModelConfig.tiny(), 4)  # 4 query heads would split, 2 KV heads would not
    with pytest.raises(ValueError, match=r"degree 3 must divide n_kv_heads 4 \(and n_heads 8\)"):
        check_tp(ModelConfig.tiny(n_heads=8, n_kv_heads=4), 3)
    with pytest.raises(ValueError, match="degree 2 must divide d_ff 129"):
        check_tp(ModelConfig.tiny(d_ff=129), 2)


def test_pp_needs_a_block_per_stage():
    assert stage_bounds(4, 2) == [(0, 2), (2, 4)]
    assert stage_bounds(3, 3) == [(0, 1), (1, 2), (2, 3)]
    with pytest.raises(ValueError, match="pipeline degree 3 exceeds n_layers 2"):
        stage_bounds(2, 3)
    with pytest.raises(ValueError, match="positive int, got 0"):
        stage_bounds(2, 0)


def test_modes_and_tp_sizes():
    info4 = DistInfo(1, 1, 4, torch.device("cpu"), "gloo")
    assert data_parallel(info4, "ddp") == (1, 4)
    assert data_parallel(info4, "tp") == (0, 1)
    assert data_parallel(info4, "pp") == (0, 1)
    assert data_parallel(info4, "fsdp+tp", 2) == (0, 2)
    with pytest.raises(ValueError, match="needs tp_size"):
        tp_degree(info4, "fsdp+tp")
    with pytest.raises(ValueError, match="tp_size 3 does not divide the 4 processes"):
        tp_degree(info4, "fsdp+tp", 3)
    with pytest.raises(ValueError, match="unknown parallel mode 'zero'"):
        tp_degree(info4, "zero")


def test_one_process_is_the_plain_model():
    one = DistInfo(0, 0, 1, torch.device("cpu"), None)
    model = Transformer(ModelConfig.tiny())
    assert parallelize(model, one, "tp") is model
    assert all(not isinstance(p, DTensor) for p in model.parameters())
    with pytest.raises(ValueError, match="Linear has no .layers"):
        apply_tp(nn.Linear(2, 2), None)


def test_tp_refuses_projections_that_are_not_plain_linears():
    model = Transformer(ModelConfig.tiny())
    model.layers[1].feed_forward.w2 = nn.Sequential(nn.Linear(128, 64))
    with pytest.raises(ValueError, match=r"layers.1: .*\['feed_forward.w2'\] are not"):
        apply_tp(model, None)
    with pytest.raises(ValueError, match="token-type embeddings"):
        apply_tp(Transformer(ModelConfig.tiny(n_token_types=2)), None)


def test_tp_size_belongs_to_fsdp_tp():
    from ember.train.config import TrainConfig

    with pytest.raises(ValueError, match="train.tp_size is for --train.parallel fsdp\\+tp"):
        TrainConfig(parallel="tp", tp_size=2)
