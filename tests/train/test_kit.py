"""The post-training kit: padding, batching and log-probs against values computed by hand."""

import json
import math

import pytest
import torch

from ember.train.kit import (
    PreferenceConfig,
    batch_completions,
    load_preference_rows,
    pad_rows,
    sequence_logprobs,
    token_logprobs,
)
from ember.train.losses import IGNORE


class FixedLogits(torch.nn.Module):
    """A stand-in model: logits (B, T, V) fixed, returned at the masked positions, as the
    Transformer does with logits_mask."""

    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, ids, logits_mask):
        return self.logits[logits_mask]


def close(a, b, tol=1e-5):
    return abs(float(a) - b) < tol


def test_sequence_logprobs_sum_and_count_by_hand():
    # row 0: logits favour token 0 by log 3 over 2 others → p(0) = 3/5, p(1) = 1/5
    logits = torch.zeros(2, 3, 3)
    logits[0, :, 0] = math.log(3)
    ids = torch.tensor([[2, 0, 1], [1, 2, 0]])
    mask = torch.tensor([[True, True, False], [True, False, False]])
    total, count = sequence_logprobs(FixedLogits(logits), ids, mask)
    assert close(total[0], math.log(3 / 5) + math.log(1 / 5)) and close(total[1], math.log(1 / 3))
    assert count.tolist() == [2.0, 1.0]


def test_token_logprobs_are_fp32_and_match_log_softmax():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7).bfloat16()
    ids = torch.randint(0, 7, (2, 5))
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[:, -1] = False
    mask[1, 2:] = False
    got = token_logprobs(FixedLogits(logits), ids, mask)
    assert got.dtype == torch.float32
    lp = logits.float().log_softmax(-1)[:, :-1].gather(-1, ids[:, 1:, None])[..., 0]
    want = torch.cat([lp, torch.zeros(2, 1)], 1) * mask
    torch.testing.assert_close(got, want)


def test_pad_rows_pads_every_side_to_one_length_and_keeps_other_keys():
    rows = [{"ids": [1, 2, 3], "labels": [2, 3, IGNORE], "kl_ids": [1], "kl_labels": [IGNORE], "desirable": True},
            {"ids": [4], "labels": [IGNORE], "kl_ids": [4, 5, 6, 7], "kl_labels": [5, 6, 7, IGNORE],
             "desirable": False}]
    out = pad_rows(rows, ("", "kl_"), pad_id=0)
    assert out["ids"].tolist() == [[1, 2, 3, 0], [4, 0, 0, 0]]
    assert out["kl_labels"][0].tolist() == [IGNORE] * 4
    assert out["desirable"].tolist() == [True, False]
    assert pad_rows([], ("chosen_", "rejected_"), 0)["chosen_ids"].shape == (0, 1)


def test_batch_completions_marks_the_positions_that_predict_a_completion_token():
    ids, mask = batch_completions([[1, 2, 3], [4]], [[5], [6, 7]], pad_id=0)
    assert ids.tolist() == [[1, 2, 3, 5], [4, 6, 7, 0]]
    assert mask.tolist() == [[False, False, True, False], [True, True, False, False]]
    labels = torch.where(mask[:, :-1], ids[:, 1:], IGNORE)  # what each marked position predicts
    assert labels.tolist() == [[IGNORE, IGNORE, 5], [6, 7, IGNORE]]


def test_preference_rows_n_eval_zero_holds_nothing_out(tmp_path):
    cfg = PreferenceConfig(dataset="style", n_train=4, n_eval=0)
    train, held = load_preference_rows(cfg)
    assert len(train) == 4 and held == []
    data = tmp_path / "p.jsonl"
    data.write_text("".join(json.dumps({"prompt": "q", "chosen": f"a{i}.", "rejected": "b"}) + "\n" for i in range(3)))
    train, held = load_preference_rows(PreferenceConfig(data=str(data), n_eval=0))
    assert len(train) == 3 and held == []
    with pytest.raises(ValueError, match="--dataset style"):
        load_preference_rows(PreferenceConfig())
