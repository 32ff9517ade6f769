"""The reasoning presets: ORM / PRM verifiers trained by `ember reward` on generated
solutions (tiny model), and the SFT / GRPO presets' tables."""

import json

import pytest

from ember.cli import main


def _synthetic_rows(n, seed):
    """Rows whose label at each scored position is whether the token there is < 16."""
    import torch

    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        ids = torch.randint(0, 32, (12,), generator=g).tolist()
        positions = sorted(torch.randperm(12, generator=g)[:3].tolist())
        rows.append({"ids": ids, "positions": positions, "targets": [float(ids[p] < 16) for p in positions]})
    return rows


def test_per_position_bce_trains_and_separates_held_out_rows():
    """The PRM/ORM objective on a tiny model: the loss falls and held-out positions separate."""
    import torch

    from ember.model import ModelConfig, Transformer
    from ember.model.heads import RewardModel
    from ember.train.kit.verifier import pad_verifier_rows, verifier_accuracy, verifier_loss

    torch.manual_seed(0)
    rm = RewardModel(Transformer(ModelConfig.tiny(vocab_size=32, max_seq_len=16)))
    train, held = pad_verifier_rows(_synthetic_rows(64, 0), 0), pad_verifier_rows(_synthetic_rows(32, 1), 0)
    before = verifier_accuracy(rm, held)
    opt = torch.optim.AdamW(rm.parameters(), lr=3e-3)
    losses = []
    for step in range(60):
        b = {k: v[(step * 16) % 64 : (step * 16) % 64 + 16] for k, v in train.items()}
        loss, _ = verifier_loss(rm, b)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    after = verifier_accuracy(rm, held)
    assert sum(losses[-8:]) / 8 < 0.5 * sum(losses[:8]) / 8
    assert after["rm_accuracy"] > 0.9 and after["rm_margin"] > 2 and after["rm_margin"] > before["rm_margin"]
    assert after["solution_accuracy"] > before["solution_accuracy"]


@pytest.mark.parametrize("objective", ["outcome", "steps"])
def test_reward_cli_trains_a_verifier(tiny_chat_model, tmp_path, capsys, objective):
    out = tmp_path / objective
    code = main(["reward", "--model", str(tiny_chat_model), "--objective", objective, "--n_train", "16",
                 "--n_eval", "8", "--max_len", "96", "--lora.rank", "4", "--train.steps", "3",
                 "--train.batch_size", "4", "--train.eval_every", "3", "--train.save_every", "3",
                 "--train.out", str(out), "--train.progress", "false", "--optim.lr", "3e-3"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert set(summary["after"]) == {"rm_accuracy", "rm_margin", "rm_auroc", "solution_accuracy", "solution_auroc"}
    assert 0 <= summary["after"]["rm_accuracy"] <= 1
    assert json.loads((out / "config.json").read_text())["reward"]["objective"] == objective
    assert (out / "head.safetensors").is_file() and (out / "adapter" / "adapter.safetensors").is_file()


def test_head_fitted_on_frozen_states_separates_held_out_rows():
    """--peft head: the body's states computed once, the head fitted by L-BFGS; held-out
    positions of the synthetic rows separate, and the figures match a forward of the model."""
    import torch

    from ember.model import ModelConfig, Transformer
    from ember.model.heads import RewardModel
    from ember.train.kit.verifier import (
        figures,
        fit_head,
        pad_verifier_rows,
        position_features,
        verifier_accuracy,
    )

    torch.manual_seed(0)
    rm = RewardModel(Transformer(ModelConfig.tiny(vocab_size=32, max_seq_len=16))).eval()
    train, held = pad_verifier_rows(_synthetic_rows(96, 0), 0), pad_verifier_rows(_synthetic_rows(32, 1), 0)
    feats, targets, _ = position_features(rm.body, train)
    assert feats.shape == (96 * 3, 64) and targets.shape == (96 * 3,)
    before = verifier_accuracy(rm, held)
    fit_head(rm.head, feats, targets, l2=1e-3)
    after = verifier_accuracy(rm, held)
    assert after["rm_accuracy"] > 0.9 and after["rm_auroc"] > 0.95 > before["rm_auroc"]
    held_feats, held_targets, held_index = position_features(rm.body, held)
    with torch.no_grad():
        again = figures(rm.head(held_feats), held_targets, held_index)
    assert again == pytest.approx(after, abs=1e-5)


def test_auroc_and_solution_figures():
    import torch

    from ember.train.kit.verifier import auroc, figures

    assert auroc(torch.tensor([3.0, 2.0, 1.0]), torch.tensor([1, 1, 0])) == 1.0
    assert auroc(torch.tensor([1.0, 2.0]), torch.tensor([1, 0])) == 0.0
    assert auroc(torch.tensor([1.0, 2.0]), torch.tensor([1, 1])) != auroc(torch.tensor([1.0]), torch.tensor([1]))  # NaN
    # row 0: steps right then wrong (lowest score -2 < 0: judged wrong, is wrong); row 1: right, judged right
    f = figures(torch.tensor([1.0, -2.0, 0.5]), torch.tensor([1.0, 0.0, 1.0]), torch.tensor([0, 0, 1]))
    assert f["solution_accuracy"] == 1.0 and f["solution_auroc"] == 1.0 and f["rm_margin"] == pytest.approx(2.75)


def test_reward_cli_fits_a_head_on_the_frozen_body(tiny_chat_model, tmp_path, capsys):
    from ember.data.reasoning import verifier_rows
    from ember.train.verifiers import load_verifier

    out = tmp_path / "prm"
    code = main(["reward", "--model", str(tiny_chat_model), "--objective", "steps", "--peft", "head",
                 "--n_train", "12", "--n_eval", "8", "--max_len", "256", "--train.out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["train_positions"] == sum(len(r["steps"]) for r in verifier_rows(12, 0))
    assert summary["n_eval"] == 8
    assert 0 <= summary["after"]["solution_auroc"] <= 1
    v = load_verifier(out)
    assert v.objective == "steps" and len(v.score_steps("Ava has 3 apples.", ["3 + 4 = 7", "7 * 2 = 14"])) == 2


def test_reward_head_refuses_preference_pairs(tiny_chat_model, tmp_path):
    from ember.train.reward import RewardConfig
    from ember.train.reward import main as reward_main

    with pytest.raises(ValueError, match="give --objective outcome or steps, got 'pairs'"):
        reward_main(RewardConfig(model=str(tiny_chat_model), peft="head", objective="pairs",
                                 train=RewardConfig().train.__class__(out=str(tmp_path / "rm"))))


def test_verifier_rows_are_labelled_mechanically():
    from ember.data.reasoning import verifier_rows
    from ember.data.reasoning_tasks import LEVELS, make_problems, step_labels

    rows = verifier_rows(60, seed=0)
    assert sum(r["correct"] for r in rows) == 30
    for r in rows:
        assert r["correct"] == int(all(r["labels"])) and len(r["labels"]) == len(r["steps"]) == LEVELS[r["difficulty"]].steps
    held = {r["question"] for r in verifier_rows(64, seed=0, split="heldout")}
    assert not held & {r["question"] for r in rows}
    assert make_problems(1, 2, seed=0)[0]["steps"] and step_labels(make_problems(1, 2, seed=0)[0], []) == []


def test_step_positions_end_each_step(smollm2_tokenizer):
    from ember.data.reasoning import encode_solution

    steps = ["3 + 4 = 7", "7 * 2 = 14"]
    ids, ends, last = encode_solution(smollm2_tokenizer, "Q?", steps, 512)
    assert smollm2_tokenizer.decode(ids[: ends[0] + 1]).endswith("3 + 4 = 7\n")
    assert smollm2_tokenizer.decode(ids[: ends[1] + 1]).endswith("7 * 2 = 14\n")
    assert last == len(ids) - 1 and smollm2_tokenizer.decode(ids).endswith("The answer is 14.")
    cut_ids, cut_ends, _ = encode_solution(smollm2_tokenizer, "Q?", steps, 12)
    assert len(cut_ids) == 12 and cut_ends == [e - (len(ids) - 12) for e in ends if e >= len(ids) - 12]


@pytest.mark.parametrize("recipe,preset,key,value", [
    ("reward", "orm", "objective", "outcome"), ("reward", "prm", "objective", "steps"),
    ("sft", "reasoning", "dataset", "reasoning"), ("grpo", "reasoning", "task", "reasoning"),
])
def test_presets_set_the_reasoning_data(recipe, preset, key, value):
    import importlib

    from ember.core.config import preset_table

    module = importlib.import_module(f"ember.train.{recipe}")
    cfg_cls = next(v for k, v in vars(module).items() if k.endswith("Config") and v.__module__ == module.__name__)
    assert preset_table(cfg_cls, preset)[key] == value


def test_grpo_runs_on_the_word_problems(tiny_chat_model, tmp_path, capsys):
    from ember.data.reasoning import problem_rows

    out = tmp_path / "grpo"
    code = main(["grpo", "--model", str(tiny_chat_model), "--task", "reasoning", "--difficulty", "2",
                 "--rewards", "[exact_match,think_format]", "--group_size", "2", "--prompts_per_step", "1",
                 "--max_new_tokens", "6", "--n_eval", "2", "--lora.rank", "4", "--train.steps", "1",
                 "--train.eval_every", "1", "--train.out", str(out), "--train.progress", "false"])
    assert code == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["eval_accuracy_before"] == 0.0 and (out / "adapter" / "adapter.safetensors").is_file()
    held = problem_rows(16, 2, 0, "heldout")
    assert all("Think step by step" in r["question"] for r in held)
    assert not {r["question"] for r in held} & {r["question"] for s in range(8) for r in problem_rows(2, 2, 0, s)}


def test_grpo_refuses_a_bad_difficulty():
    from ember.train.grpo import GRPOConfig

    with pytest.raises(ValueError, match=r"difficulty must be in 1..5 \(the generated levels\), got 6"):
        GRPOConfig(task="reasoning", difficulty=6)
