"""`ember reward` then `ember ppo` on a random tiny Llama wearing SmolLM2's tokenizer."""

import json

import pytest
import torch

from ember.cli import main
from ember.model import ModelConfig, Transformer
from ember.model.heads import RewardModel
from ember.train.kit import load_reward_model
from ember.train.ppo import PPOConfig, end_of_turn_id, score_replies


@pytest.fixture(scope="module")
def reward_run(tiny_chat_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("rm")
    flags = "--dataset style --n_train 8 --n_eval 4 --lora.rank 4 --train.steps 2 --train.batch_size 4"
    flags += " --train.eval_every 0 --train.progress false"
    code = main(["reward", *flags.split(), "--model", str(tiny_chat_model), "--train.out", str(out)])
    assert code == 0
    return out


def test_end_of_turn_is_im_end(smollm2_tokenizer):
    assert smollm2_tokenizer.decode([end_of_turn_id(smollm2_tokenizer)]) == "<|im_end|>"


def test_reward_model_reloads_with_the_scores_it_trained_to(reward_run):
    rm = load_reward_model(reward_run)
    assert not any(p.requires_grad for p in rm.parameters())
    again = load_reward_model(reward_run)
    ids = torch.randint(0, rm.config.vocab_size, (2, 7))
    torch.testing.assert_close(rm(ids), again(ids))
    from safetensors.torch import load_file

    torch.testing.assert_close(rm.head.state_dict(), load_file(reward_run / "head.safetensors"))
    trained_b = [p for n, p in rm.body.named_parameters() if n.endswith("lora_B")]
    assert trained_b and any(p.abs().sum() > 0 for p in trained_b)  # the trained adapter (B starts at 0)


def test_score_replies_reads_at_the_end_token_appending_it_when_cut():
    torch.manual_seed(0)
    rm = RewardModel(Transformer(ModelConfig.tiny(vocab_size=64))).eval()
    end, pad = 5, 0
    prompts, replies = [[1, 2, 3], [4, 6]], [[7, 8, end], [9, 10, 11]]
    scores, ended = score_replies(rm, prompts, replies, end, pad)
    assert ended.tolist() == [True, False]
    want = [rm(torch.tensor([[1, 2, 3, 7, 8, end]])), rm(torch.tensor([[4, 6, 9, 10, 11, end]]))]
    torch.testing.assert_close(scores, torch.cat(want), rtol=1e-5, atol=1e-5)


def test_ppo_cli_ratio_is_one_on_each_rollouts_first_step(tiny_chat_model, reward_run, tmp_path, capsys):
    out = tmp_path / "ppo"
    flags = "--n_train 16 --n_eval 4 --prompts_per_step 4 --ppo_epochs 2 --max_new_tokens 6 --lora.rank 4"
    flags += " --train.steps 4 --train.eval_every 0 --train.progress false --optim.lr 1e-2"
    paths = ["--model", str(tiny_chat_model), "--reward_model", str(reward_run), "--train.out", str(out)]
    code = main(["ppo", *flags.split(), *paths])
    assert code == 0, capsys.readouterr().err
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [1, 2, 3, 4]
    for first in (recs[0], recs[2]):  # a fresh rollout: the policy that sampled it is the one trained
        assert first["ratio"] == 1.0 and first["clipfrac"] == 0.0 and first["approx_kl"] == 0.0
    assert recs[1]["ratio"] != 1.0  # the second epoch on a rollout sees the updated policy
    assert recs[0]["score"] == recs[1]["score"]  # both epochs train on the same rollout
    assert recs[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # LoRA B = 0: policy == reference
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(summary["before"]) >= {"eval_score", "eval_style_rate"} and "eval_score" in summary["after"]
    assert (out / "reward_curve.png").stat().st_size > 0
    assert (out / "adapter" / "adapter.safetensors").is_file()


def test_ppo_config_rejects_bad_values():
    with pytest.raises(ValueError, match="ppo_epochs"):
        PPOConfig(ppo_epochs=0)
    with pytest.raises(ValueError, match="gamma"):
        PPOConfig(gamma=1.5)


def test_ppo_prompts_come_from_a_dataset_not_a_preset():
    assert PPOConfig().dataset == "style" and not hasattr(PPOConfig(), "preset")
    assert PPOConfig().lora.rank == 16  # the kit's shared LoRA block


def test_ppo_names_a_folder_that_is_not_a_reward_run(tiny_chat_model, tmp_path, capsys):
    paths = ["--model", str(tiny_chat_model), "--reward_model", str(tmp_path), "--train.out", str(tmp_path / "o")]
    code = main(["ppo", *paths, "--train.steps", "1", "--train.progress", "false"])
    assert code != 0
    assert "not an `ember reward` output folder" in capsys.readouterr().err
