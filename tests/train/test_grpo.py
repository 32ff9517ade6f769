"""GRPO on a random tiny Llama wearing SmolLM2's tokenizer: two steps, a few tokens each."""

import json
import math

import pytest
import torch

from ember.data.arithmetic import exact_match_reward, format_reward
from ember.peft import LoraConfig
from ember.train.grpo import GRPOConfig, build_grpo, main, score
from ember.train.loop import TrainConfig
from ember.train.optim import OptimConfig


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
    quiet = dict(eval_every=0, sample_every=0, save_every=0, log_every=1, progress=False)
    train = TrainConfig(steps=2, batch_size=4, out=str(out), precision="fp32", seed=3, **quiet)
    sizes = dict(group_size=2, prompts_per_step=2, max_new_tokens=4, n_eval=4)
    optim = OptimConfig(lr=1e-2, warmup_steps=0)
    lora = LoraConfig(rank=4)
    return GRPOConfig(model=str(model), lora=lora, train=train, optim=optim, **sizes, **kw)


def _varied(row, text):  # a reward that differs within groups, so advantages are not all 0
    return float(len(text) % 3)


def _raises(row, text):
    raise RuntimeError("broken reward")


def _nan(row, text):
    return math.nan


def test_score_sums_rewards_and_counts_the_broken_ones():
    row = {"answer": -12}
    assert score([exact_match_reward, format_reward, _raises, _nan], row, " -12") == (1.2, 2)


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="group_size"):
        GRPOConfig(group_size=1)
    with pytest.raises(ValueError, match="unknown reward 'length'; valid: exact_match, format"):
        GRPOConfig(rewards=["length"])
    with pytest.raises(ValueError, match="ops"):
        GRPOConfig(ops=["/"])


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
