"""Loaders: batch(step) is pure, rank slices add up to the global batch, packing covers
every document once per epoch, eval windows are fixed."""

import numpy as np
import pytest
import torch

from ember.data.corpus import pydoc_topics_text
from ember.data.loader import PackedDocuments, RandomWindows, build_loader, eval_windows
from ember.data.shards import open_split, prepare_shards
from ember.tokenizer import train_bpe

EOT = "<|endoftext|>"
T, B = 16, 8


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    text = pydoc_topics_text()[:40_000]
    tok = train_bpe([text], vocab_size=300, special_tokens=[EOT], eos_tokens=[EOT])
    docs = [text[i: i + 200 + (i % 7) * 150] for i in range(0, 30_000, 1000)]
    out = tmp_path_factory.mktemp("shards")
    prepare_shards(out, tok, texts=docs, shard_tokens=3000, workers=1, progress=False)
    return out


@pytest.fixture(scope="module")
def train(folder):
    split = open_split(folder, "train")
    assert len(split.shards) > 1  # so windows cross shard boundaries
    return split


def windows(x, y):
    return torch.cat([x, y[:, -1:]], dim=1)  # back to the (B, T + 1) windows


@pytest.mark.parametrize("kind", ["random", "packed"])
def test_batch_is_a_pure_function_of_step(train, kind):
    loader = build_loader(kind, train, T, B, seed=3)
    x, y = loader.batch(5)
    assert x.shape == y.shape == (B, T) and x.dtype == y.dtype == torch.long
    assert torch.equal(x[:, 1:], y[:, :-1])
    loader.batch(0), loader.batch(123)  # other steps in between change nothing
    assert all(torch.equal(a, b) for a, b in zip(loader.batch(5), (x, y)))
    assert all(torch.equal(a, b) for a, b in zip(build_loader(kind, train, T, B, seed=3).batch(5), (x, y)))
    assert not torch.equal(loader.batch(6)[0], x)
    assert not torch.equal(build_loader(kind, train, T, B, seed=4).batch(5)[0], x)


@pytest.mark.parametrize("kind", ["random", "packed"])
@pytest.mark.parametrize("world_size", [2, 4])
def test_rank_slices_make_the_global_batch(train, kind, world_size):
    for step in (0, 7, 40):  # 40 runs past the first packed epoch
        full = build_loader(kind, train, T, B, seed=1).batch(step)
        parts = [build_loader(kind, train, T, B, seed=1, rank=r, world_size=world_size).batch(step)
                 for r in range(world_size)]
        assert parts[0][0].shape == (B // world_size, T)
        for k in (0, 1):
            assert torch.equal(torch.cat([p[k] for p in parts]), full[k])


def test_random_windows_are_slices_of_the_stream(train):
    stream = train.tokens(0, len(train))
    all_windows = np.lib.stride_tricks.sliding_window_view(stream, T + 1)
    for row in windows(*RandomWindows(train, T, B, seed=2).batch(9)).numpy():
        assert (all_windows == row).all(axis=1).any()


def test_packed_covers_every_document_once_per_epoch(train):
    loader = PackedDocuments(train, T, B, seed=7)
    W = loader.windows_per_epoch
    assert W == len(train) // (T + 1)
    rows = torch.cat([windows(*loader.batch(s)) for s in range(W // B + 2)]).numpy()  # > W rows
    for epoch in (0, 1):
        order = loader.epoch_order(epoch)
        assert sorted(order.tolist()) == list(range(train.n_documents))
        stream = np.concatenate([train.document(int(i)) for i in order])
        assert len(stream) - W * (T + 1) <= T  # only a tail shorter than a window is dropped
        got = rows[epoch * W: (epoch + 1) * W].reshape(-1)  # all of epoch 0, a part of epoch 1
        assert np.array_equal(got, stream[: len(got)])
    assert not np.array_equal(loader.epoch_order(0), loader.epoch_order(1))


def test_eval_windows_are_the_first_windows_in_order(folder):
    val = open_split(folder, "val")
    n = min(5, len(val) // (T + 1))
    batches = list(eval_windows(val, T, max_windows=5, batch_size=2))
    assert [x.shape[0] for x, _ in batches] == [2] * (n // 2) + [1] * (n % 2)
    got = torch.cat([windows(x, y) for x, y in batches])
    assert got.reshape(-1).tolist() == val.tokens(0, n * (T + 1)).tolist()
    again = list(eval_windows(val, T, max_windows=5, batch_size=2))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again))


def test_bad_arguments(train):
    with pytest.raises(ValueError, match="batch_size 6 is not divisible by world_size 4"):
        RandomWindows(train, T, 6, world_size=4)
    too_long = len(train)
    with pytest.raises(ValueError, match=f"{len(train)} tokens.*{too_long + 1}"):
        PackedDocuments(train, too_long, B)
    with pytest.raises(ValueError, match=f"{too_long + 1}"):
        eval_windows(train, too_long, 3)
    with pytest.raises(ValueError, match="rank 2"):
        RandomWindows(train, T, B, rank=2, world_size=2)
    with pytest.raises(ValueError, match="unknown loader kind 'shuffled'"):
        build_loader("shuffled", train, T, B)
    with pytest.raises(ValueError, match="step"):
        RandomWindows(train, T, B).batch(-1)
