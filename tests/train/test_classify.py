"""The classification fine-tune: head and loss, padding, the loop, `ember classify`; the probe."""

import json

import pytest
import torch
import torch.nn.functional as F

from ember.data.probe import ProbeRow, corpus_sentences, probe_split, word_swap_rows
from ember.model import ModelConfig, Transformer
from ember.train.classify import Classifier, Config, classification_loss, fine_tune
from ember.train.config import TrainConfig
from ember.train.optim import OptimConfig


def encoder(**kw):
    torch.manual_seed(0)
    return Transformer(ModelConfig.tiny(causal=False, pos_emb="learned", norm="layernorm", mlp="gelu", **kw))


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_padding_changes_no_logit(pooling):
    clf = Classifier(encoder(), 3, pooling).eval()
    ids = torch.randint(0, 256, (1, 7))
    padded = torch.cat([ids, torch.zeros(1, 5, dtype=torch.long)], 1)
    mask = torch.arange(12)[None] < 7
    with torch.no_grad():
        torch.testing.assert_close(clf(padded, mask), clf(ids, torch.ones(1, 7, dtype=torch.bool)))


def test_loss_is_cross_entropy_of_the_pooled_head():
    clf = Classifier(encoder(), 2, "mean")
    b = {"input_ids": torch.randint(0, 256, (4, 6)), "attention_mask": torch.ones(4, 6, dtype=torch.bool),
         "labels": torch.tensor([0, 1, 1, 0])}
    loss, m = classification_loss(clf, b)
    pooled = clf.body.hidden(b["input_ids"]).mean(1)
    logits = clf.head(pooled)
    torch.testing.assert_close(loss, F.cross_entropy(logits, b["labels"]))
    assert float(m["accuracy"]) == float((logits.argmax(-1) == b["labels"]).float().mean())
    with pytest.raises(ValueError, match="unknown pooling 'max'"):
        Classifier(encoder(), 2, "max")


def word_tokenizer():
    from ember.tokenizer import train_bpe

    words = "cat dog sat ran the a on mat log".split()
    return train_bpe([" ".join(words)] * 4, 256 + 12, special_tokens=["<|endoftext|>"],
                     eos_tokens=["<|endoftext|>"], pattern="gpt2")


def toy_rows(n, seed):
    """Label 1 when 'cat' comes before 'dog', 0 when after: order, not the bag of words."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        fill = ["the", "a", "on", "mat", "log", "sat", "ran"]
        words = [fill[int(i)] for i in torch.randint(0, len(fill), (5,), generator=g)]
        i, j = sorted(torch.randperm(6, generator=g)[:2].tolist())
        label = int(torch.rand(1, generator=g) < 0.5)
        words.insert(i, "cat" if label else "dog")
        words.insert(j, "dog" if label else "cat")
        rows.append(ProbeRow(" ".join(words), label))
    return rows


def small_cfg(tmp_path, **kw):
    train = TrainConfig(steps=300, batch_size=16, eval_every=0, sample_every=0, save_every=0, log_every=20,
                        out=str(tmp_path / "clf"), progress=False, precision="fp32")
    return Config(train=train, optim=OptimConfig(lr=3e-3, warmup_steps=5), **kw)


def test_fine_tune_learns_a_task_that_needs_word_order(tmp_path):
    tok = word_tokenizer()
    body = encoder(vocab_size=tok.vocab_size)
    before = {k: v.clone() for k, v in body.state_dict().items()}
    summary = fine_tune(body, tok, toy_rows(256, 0), toy_rows(64, 1), small_cfg(tmp_path))
    assert summary["val_accuracy"] > 0.9, summary
    assert all(torch.equal(before[k], v) for k, v in body.state_dict().items())  # a copy was trained


def test_freeze_trains_the_head_alone(tmp_path):
    from ember.train.checkpoint import latest_checkpoint, load_checkpoint

    cfg = small_cfg(tmp_path, freeze=True)
    cfg.train.steps = 3
    tok = word_tokenizer()
    fine_tune(encoder(vocab_size=tok.vocab_size), tok, toy_rows(32, 0), toy_rows(8, 1), cfg)
    ckpt = load_checkpoint(latest_checkpoint(cfg.train.out))
    assert sorted(ckpt["model"]) == ["head.bias", "head.weight"]


def test_probe_rows_are_balanced_and_swaps_keep_the_words():
    from ember.data.corpus import pydoc_topics_text

    sentences = corpus_sentences([pydoc_topics_text()])
    assert len(sentences) > 300 and len(set(sentences)) == len(sentences)
    rows = word_swap_rows(sentences, seed=0)
    assert abs(sum(r.label for r in rows) / len(rows) - 0.5) < 0.05
    originals = set(sentences)
    for r in rows:
        assert (r.text in originals) == (r.label == 1)
    by_words = {tuple(sorted(w.strip(",;:.!?").lower() for w in s.split())): s for s in sentences}
    swapped = [r for r in rows if r.label == 0]
    found = sum(tuple(sorted(w.strip(",;:.!?").lower() for w in r.text.split())) in by_words for r in swapped)
    assert found == len(swapped)  # exactly the words of a real sentence, in another order
    assert word_swap_rows(sentences, seed=0) == rows  # seeded
    train, test = probe_split(rows, 100)
    assert len(test) == 100 and train + test == rows
    with pytest.raises(ValueError, match="n_test"):
        probe_split(rows, len(rows))


def test_classify_cli_on_a_pretrained_encoder(mask_shards, tmp_path, capsys):
    from ember.cli import main

    run = tmp_path / "pre"
    assert main(["pretrain", "--arch", "mini-bert", "--objective", "mlm", "--model.n_layers", "1",
                 "--model.d_model", "32", "--model.n_heads", "2", "--model.d_ff", "64", "--data.seq_len", "24",
                 "--data.dir", str(mask_shards), "--train.steps", "2", "--train.batch_size", "4",
                 "--train.out", str(run), "--train.progress", "false", "--train.eval_windows", "2"]) == 0
    capsys.readouterr()
    out = tmp_path / "clf"
    args = ["classify", "--run", str(run), "--n_test", "50", "--train.steps", "3", "--train.batch_size", "8",
            "--train.out", str(out), "--train.progress", "false"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0 <= summary["val_accuracy"] <= 1 and summary["steps"] == 3
    assert main(["classify", "--run", str(tmp_path / "none"), "--train.out", str(tmp_path / "x")]) == 2
    assert "holds no checkpoint" in capsys.readouterr().err
