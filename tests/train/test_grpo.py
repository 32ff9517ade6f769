"""GRPO on a random tiny Llama wearing SmolLM2's tokenizer: two steps, a few tokens each."""

import json
import math
import random

import pytest
import torch

from ember.train.grpo import (
    GRPOConfig,
    arithmetic_row,
    build_grpo,
    exact_match_reward,
    format_reward,
    heldout_rows,
    main,
    score,
    step_rows,
)
from ember.train.loop import TrainConfig
from ember.train.optim import OptimConfig
from ember.train.sft import LoraArgs


@pytest.fixture(scope="module")
def tiny_chat_model(tmp_path_factory, smollm2_tokenizer):
    """A random tiny Llama wearing SmolLM2's tokenizer and ChatML template: an HF folder."""
    from ember.model import ModelConfig, Transformer
    from ember.model.convert.hf import save_hf

    torch.manual_seed(0)
    cfg = ModelConfig.tiny(
        vocab_size=smollm2_tokenizer.vocab_size, max_seq_len=256, tie_embeddings=True
    )
    folder = tmp_path_factory.mktemp("tiny-chat")
    save_hf(Transformer(cfg), folder)
    smollm2_tokenizer.save(folder)
    return folder


def _cfg(model, out, **kw) -> GRPOConfig:
    train = TrainConfig(steps=2, batch_size=4, eval_every=0, sample_every=0, save_every=0, log_every=1,
                        out=str(out), progress=False, precision="fp32", seed=3)  # fmt: skip
    return GRPOConfig(model=str(model), group_size=2, prompts_per_step=2, max_new_tokens=4, n_eval=4,
                      lora=LoraArgs(rank=4), train=train, optim=OptimConfig(lr=1e-2, warmup_steps=0), **kw)  # fmt: skip


def _varied(row, text):  # a reward that differs within groups, so advantages are not all 0
    return float(len(text) % 3)


def _raises(row, text):
    raise RuntimeError("broken reward")


def _nan(row, text):
    return math.nan


def test_rewards():
    row = {"answer": -12}
    assert exact_match_reward(row, "so 3 - 15 = -12") == 1.0
    assert exact_match_reward(row, "-12 or 7") == 0.0
    assert exact_match_reward(row, "no idea") == 0.0
    assert format_reward(row, "-12") == 0.2 and format_reward(row, "-12 apples") == 0.0
    assert score([exact_match_reward, format_reward, _raises, _nan], row, " -12") == (1.2, 2)


def test_prompts_are_seeded_and_heldout_is_disjoint():
    cfg = GRPOConfig(n_eval=50)
    held = {r["expression"] for r in heldout_rows(cfg)}
    assert len(held) == 50
    rows = [r for s in range(100) for r in step_rows(cfg, s, held)]
    assert not held & {r["expression"] for r in rows}
    assert step_rows(cfg, 7, held) == step_rows(cfg, 7, held)
    row = arithmetic_row(random.Random(1), ["-"])
    assert exact_match_reward(row, str(row["answer"])) == 1.0


def test_batch_advantages_are_zero_mean_per_group(tiny_chat_model, tmp_path):
    trainer = build_grpo(_cfg(tiny_chat_model, tmp_path), reward_fns=[_varied])
    batch = trainer.batches(0)
    assert batch["ids"].shape[0] == 4 and batch["mask"].shape == batch["ids"].shape
    assert torch.allclose(batch["advantages"].view(-1, 2).mean(-1), torch.zeros(2), atol=1e-6)
    n = batch["mask"].sum(-1)
    assert (n >= 1).all() and (n <= 4).all()  # 1..max_new_tokens completion tokens per row
    assert (batch["old_logp"][~batch["mask"]] == 0).all() and (
        batch["old_logp"][batch["mask"]] < 0
    ).all()
    # batches(step) is a pure function of the step: same prompts, same samples
    again = trainer.batches(0)
    assert torch.equal(batch["ids"], again["ids"])


def test_two_steps_ratio_one_errors_counted_adapter_saved(tiny_chat_model, tmp_path):
    out = tmp_path / "run"
    summary = main(_cfg(tiny_chat_model, out, beta=0.04), reward_fns=[_varied, _raises, _nan])
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [1, 2]
    assert recs[0]["ratio"] == 1.0 and recs[0]["clipfrac"] == 0.0  # one update per batch
    assert recs[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # LoRA B = 0: policy = reference
    assert all(r["reward_errors"] == 8.0 for r in recs)  # 2 broken rewards × 4 completions
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["reward"]) for r in recs)
    assert (out / "adapter" / "adapter.safetensors").is_file()
    assert (out / "reward_curve.png").is_file()
    assert summary["eval_accuracy_before"] is not None and "eval_accuracy_after" in summary
    assert "eval_accuracy" in recs[-1]


def test_rl_curve_report_extrapolates_a_sigmoid_run(tmp_path):
    """Accuracy that follows a ScaleRL sigmoid in cumulative tokens: a fit on the first half
    predicts the last steps' mean accuracy."""
    from ember.eval.rl_curve import RLCurveFit
    from ember.train.grpo import rl_curve_report

    true = RLCurveFit(R0=0.1, A=0.6, C_mid=20_000.0, B=1.5)
    rng = random.Random(0)
    records, c = [], 0.0
    for step in range(1, 41):
        c += 2000.0
        acc = float(true.predict(c)) + rng.uniform(-0.01, 0.01)
        records.append({"step": step, "accuracy": acc, "step_tokens": 2000.0})
    report = rl_curve_report(records, tmp_path / "rl.png", key="accuracy")
    assert report["n_fit"] == 20 and report["n_steps"] == 40
    assert report["abs_error"] < 0.03
    assert report["reached_final"] == pytest.approx(float(true.predict(40 * 2000.0)), abs=0.02)
    assert (tmp_path / "rl.png").stat().st_size > 0
    assert rl_curve_report(records[:5], tmp_path / "x.png", key="accuracy") is None  # too few steps to fit
