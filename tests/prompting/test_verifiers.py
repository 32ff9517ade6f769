"""ember.train.verifiers: a verifier trained by `ember reward` loads back, scores
solutions and steps as probabilities, and refuses a policy with another tokenizer."""

import json

import pytest

from ember.cli import main
from ember.data.reasoning_tasks import make_problems, solution_text
from ember.train.verifiers import load_verifier, split_steps


@pytest.fixture(scope="module")
def prm_folder(tmp_path_factory, smollm2_tokenizer):
    import torch

    from ember.model import ModelConfig, Transformer
    from ember.model.convert.hf import save_hf

    torch.manual_seed(0)
    model = tmp_path_factory.mktemp("tiny-verifier-base")
    save_hf(Transformer(ModelConfig.tiny(vocab_size=smollm2_tokenizer.vocab_size, max_seq_len=256,
                                         tie_embeddings=True)), model)
    smollm2_tokenizer.save(model)
    out = tmp_path_factory.mktemp("prm") / "prm"
    code = main(["reward", "--model", str(model), "--objective", "steps", "--n_train", "8", "--n_eval", "0",
                 "--max_len", "96", "--lora.rank", "4", "--train.steps", "1", "--train.batch_size", "4",
                 "--train.save_every", "1", "--train.out", str(out), "--train.progress", "false"])
    assert code == 0
    return out


def test_prm_scores_steps_and_solutions(prm_folder, smollm2_tokenizer):
    v = load_verifier(prm_folder, policy_tokenizer=smollm2_tokenizer)
    p = make_problems(1, 5, seed=0)[0]
    steps = v.score_steps(p["question"], p["steps"])
    assert v.objective == "steps" and len(steps) == len(p["steps"]) == 2 and all(0 < s < 1 for s in steps)
    assert v.score(p["question"], solution_text(p["steps"])) == pytest.approx(min(steps), abs=1e-5)
    assert v.score(p["question"], "no steps at all") == 0.0 and v.score_steps(p["question"], []) == []


def test_a_policy_with_another_tokenizer_is_refused(prm_folder):
    from ember.tokenizer import train_bpe

    other = train_bpe(["3 + 4 = 7 and some text"] * 4, 265, special_tokens=["<|endoftext|>"], progress=False)
    with pytest.raises(ValueError, match=f"uses tokenizer .*but my-policy uses {other.fingerprint()}"):
        load_verifier(prm_folder, policy_tokenizer=other, policy_name="my-policy")


def test_a_pairwise_reward_model_or_a_bad_folder_is_refused(prm_folder, tmp_path):
    with pytest.raises(ValueError, match="not an `ember reward` output folder"):
        load_verifier(tmp_path)
    config = json.loads((prm_folder / "config.json").read_text())
    config["reward"]["objective"] = "pairs"
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="trained on 'pairs', not a verifier"):
        load_verifier(tmp_path)


def test_split_steps_reads_equation_lines():
    assert split_steps("<think>\n1 + 2 = 3\nhmm\n3 * 3 = 9\n</think>\nThe answer is 9.") == ["1 + 2 = 3", "3 * 3 = 9"]
    assert split_steps("1 + 2 = 3") == ["1 + 2 = 3"] and split_steps("nothing") == []
