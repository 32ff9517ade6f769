"""Document-level retrieval metrics on hand-computed cases."""

import math

import pytest

from ember.rag.evaluate import bundled_qa, load_qa, scores
from ember.rag.metrics import dedupe, matches, ndcg_at_k, recall_at_k, reciprocal_rank


def test_matches_whole_names_not_substrings():
    assert matches("/x/topics/for.txt", "/x/topics/for.txt")
    assert matches("topics/for.txt", "/x/topics/for.txt")
    assert matches("for", "/x/topics/for.txt")
    assert not matches("for", "/x/topics/formatstrings.txt")
    assert not matches("ics/for.txt", "/x/topics/for.txt")  # a trailing run of whole components only
    assert not matches("topics", "/x/topics/for.txt")


def test_recall_counts_each_relevant_item_once():
    docs = ["a.txt", "x.txt", "b.txt", "c.txt"]
    assert recall_at_k(docs, ["a", "b", "c"], 2) == pytest.approx(1 / 3)
    assert recall_at_k(docs, ["a", "b", "c"], 4) == 1.0
    assert recall_at_k(["a.txt", "a.txt"], ["a", "b"], 2) == 0.5  # a repeated document is no second hit


def test_reciprocal_rank_and_cutoff():
    assert reciprocal_rank(["x", "y", "a"], ["a", "y"]) == 0.5
    assert reciprocal_rank(["x"] * 10 + ["a"], ["a"], k=10) == 0.0


def test_ndcg_hand_computed():
    # relevant at ranks 2 and 3 of {a, b}: (1/log2(3) + 1/log2(4)) / (1 + 1/log2(3))
    want = (1 / math.log2(3) + 0.5) / (1 + 1 / math.log2(3))
    assert ndcg_at_k(["x", "a", "b"], ["a", "b"]) == pytest.approx(want)
    assert ndcg_at_k(["a", "b"], ["b", "a"]) == pytest.approx(1.0)
    assert ndcg_at_k(["x", "y"], ["a"]) == 0.0


def test_dedupe_keeps_first_appearance():
    assert dedupe(["b", "a", "b", "c", "a"]) == ["b", "a", "c"]


def test_scores_mean_over_rows():
    rows = [{"relevant": ["a"]}, {"relevant": ["y", "z"]}]
    out = scores([["a", "b"], ["x", "y"]], rows, k=2)
    assert out == {"recall@2": 0.75, "mrr": 0.75,
                   "ndcg@10": round((1 + (1 / math.log2(3)) / (1 + 1 / math.log2(3))) / 2, 4)}


def test_bad_inputs_name_the_value(tmp_path):
    with pytest.raises(ValueError, match="at least one relevant"):
        recall_at_k(["a"], [], 5)
    with pytest.raises(ValueError, match="k must be >= 1, got 0"):
        ndcg_at_k(["a"], ["a"], 0)
    bad = tmp_path / "qa.jsonl"
    bad.write_text('{"question": "q", "relevant": []}\n')
    with pytest.raises(ValueError, match=r"qa.jsonl:1: 'relevant' must be a non-empty list"):
        load_qa(bad)
    bad.write_text("{oops\n")
    with pytest.raises(ValueError, match="qa.jsonl:1: not JSON"):
        load_qa(bad)
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        load_qa(tmp_path / "missing.jsonl")


def test_bundled_questions_name_real_topics_and_do_not_copy_them():
    from pydoc_data.topics import topics

    rows = load_qa(bundled_qa())
    assert len(rows) >= 60
    assert {r["split"] for r in rows} == {"dev", "test"}
    for r in rows:
        assert all(item in topics for item in r["relevant"]), r
        words = r["question"].lower().split()
        # no run of 8 words copied from the relevant topic's text
        for item in r["relevant"]:
            text = " ".join(topics[item].lower().split())
            assert not any(" ".join(words[i:i + 8]) in text for i in range(len(words) - 7)), r
