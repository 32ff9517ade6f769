"""prepare_shards / load_manifest / open_split: round trip, determinism, resume, bad input."""

import json
from pathlib import Path

import numpy as np
import pytest

from ember.data.corpus import bundled_documents, pydoc_topics_text
from ember.data.shards import load_manifest, open_split, prepare_shards
from ember.tokenizer import Tokenizer, train_bpe

EOT = "<|endoftext|>"


@pytest.fixture(scope="session")
def tok():
    return train_bpe([pydoc_topics_text()[:60_000]], vocab_size=400, special_tokens=[EOT],
                     eos_tokens=[EOT])


@pytest.fixture(scope="session")
def docs():
    """30 documents of 300..3000 characters."""
    text = pydoc_topics_text()
    out, pos = [], 0
    for k in range(30):
        n = 300 + (k * 997) % 2700
        out.append(text[pos: pos + n])
        pos += n
    return out


def prep(out, tok, **kw):
    kw.setdefault("progress", False)
    kw.setdefault("workers", 1)
    return prepare_shards(out, tok, **kw)


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())
            if p.suffix in (".bin", ".idx") or p.name == "manifest.json"}


def test_texts_round_trip_in_planned_order(tmp_path, tok, docs):
    m = prep(tmp_path / "o", tok, texts=docs, shard_tokens=1500)
    sep = min(tok.eos_token_ids)
    train, val = m.splits["train"], m.splits["val"]
    assert m.n_documents == 30 == train.n_documents + val.n_documents
    assert len(train.shards) > 2 and val.n_documents >= 1
    for s in (train, val):
        assert s.n_tokens == sum(x.n_tokens for x in s.shards)
    assert m.dtype == "uint16" and m.separator_id == sep
    flags = [d["val"] for d in json.loads((tmp_path / "o/plan.json").read_text())["documents"]]
    for name, want in (("train", False), ("val", True)):
        split = open_split(tmp_path / "o", name)
        expected = [tok.encode(d) + [sep] for d, f in zip(docs, flags) if f == want]
        assert split.n_documents == len(expected) and len(split) == sum(map(len, expected))
        for i, ids in enumerate(expected):
            assert split.document(i).tolist() == ids
        stream = np.concatenate([np.array(e) for e in expected])
        # Reads that cross shard boundaries see the virtual concatenation.
        assert split.tokens(0, len(split)).tolist() == stream.tolist()
        pos = np.array([[0, len(split) - 1], [len(split) // 2, 7]])
        assert split.gather(pos).tolist() == stream[pos].tolist()
    assert (tmp_path / "o/tokenizer/tokenizer.ember.json").is_file()
    assert load_manifest(tmp_path / "o").to_dict() == m.to_dict()


def test_same_shards_for_any_worker_count(tmp_path, tok, docs):
    prep(tmp_path / "w1", tok, texts=docs, shard_tokens=1000, workers=1)
    prep(tmp_path / "w2", tok, texts=docs, shard_tokens=1000, workers=2)
    one, two = files_of(tmp_path / "w1"), files_of(tmp_path / "w2")
    assert len(one) > 6 and one == two


def test_files_folders_and_the_tail_split(tmp_path, tok, docs):
    src = tmp_path / "src"
    (src / "b").mkdir(parents=True)
    (src / "b" / "z.txt").write_text(docs[0])
    (src / "a.md").write_text(docs[1])
    (src / ".hidden").write_text("skipped")
    extra = tmp_path / "extra.txt"
    extra.write_text(docs[2])
    m = prep(tmp_path / "o", tok, inputs=[src, extra], val_fraction=0.1)
    sep = min(tok.eos_token_ids)
    assert m.n_documents == 3  # fewer than 20: each document gives its tail to val
    train, val = open_split(tmp_path / "o", "train"), open_split(tmp_path / "o", "val")
    for i, d in enumerate([docs[1], docs[0], docs[2]]):  # a.md, b/z.txt (sorted), then extra
        ids = tok.encode(d)
        cut = len(ids) - int(np.ceil(0.1 * len(ids)))
        assert train.document(i).tolist() == ids[:cut] + [sep]
        assert val.document(i).tolist() == ids[cut:] + [sep]


def test_resume_redoes_only_the_missing_shard(tmp_path, tok, docs):
    out = tmp_path / "o"
    prep(out, tok, texts=docs, shard_tokens=1000)
    before = files_of(out)
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("*.bin")}
    (out / "train_00001.bin").unlink()
    (out / "unit_00001.json").unlink()
    (out / "manifest.json").unlink()  # as if interrupted before the end
    prep(out, tok, texts=docs, shard_tokens=1000)
    assert files_of(out) == before
    for name, t in mtimes.items():
        if not name.endswith("_00001.bin"):
            assert (out / name).stat().st_mtime_ns == t, name
    # A shard truncated after its marker was written is redone too.
    with open(out / "train_00002.bin", "r+b") as f:
        f.truncate(10)
    prep(out, tok, texts=docs, shard_tokens=1000)
    assert files_of(out) == before


def test_another_plan_in_the_same_folder_is_refused(tmp_path, tok, docs):
    prep(tmp_path / "o", tok, texts=docs)
    with pytest.raises(ValueError, match="another plan.*documents.*new --out"):
        prep(tmp_path / "o", tok, texts=docs[:-1])
    with pytest.raises(ValueError, match="val_fraction"):
        prep(tmp_path / "o", tok, texts=docs, val_fraction=0.2)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not an empty folder"):
        prep(tmp_path / "busy", tok, texts=docs)


@pytest.mark.parametrize("content, message", [
    (b"", "empty"), (b" \n\t \n", "empty"), (b"text\x00\x01\x02", "binary"),
    (b"caf\xe9 au lait", "not UTF-8"),
])
def test_bad_files_are_named(tmp_path, tok, content, message):
    good, bad = tmp_path / "good.txt", tmp_path / "bad.txt"
    good.write_text("some fine text")
    bad.write_bytes(content)
    with pytest.raises(ValueError, match=f"bad.txt.*{message}"):
        prep(tmp_path / "o", tok, inputs=[good, bad])
    assert not (tmp_path / "o").exists()  # checked before anything is written


def test_bad_arguments(tmp_path, tok, docs):
    with pytest.raises(ValueError, match="missing.txt does not exist"):
        prep(tmp_path / "o", tok, inputs=[tmp_path / "missing.txt"])
    (tmp_path / "void").mkdir()
    with pytest.raises(ValueError, match="no documents"):
        prep(tmp_path / "o", tok, inputs=[tmp_path / "void"])
    with pytest.raises(ValueError, match="exactly one"):
        prep(tmp_path / "o", tok)
    with pytest.raises(ValueError, match=r"texts\[1\] is empty"):
        prep(tmp_path / "o", tok, texts=["a", "  "])
    with pytest.raises(ValueError, match="EOS nor a BOS"):
        prep(tmp_path / "o", Tokenizer(merges=[]), texts=docs)
    with pytest.raises(ValueError, match="val_fraction"):
        prep(tmp_path / "o", tok, texts=docs, val_fraction=1.0)


def test_truncated_or_missing_shard_is_detected(tmp_path, tok, docs):
    prep(tmp_path / "o", tok, texts=docs, shard_tokens=1000)
    shard = tmp_path / "o" / "train_00001.bin"
    with open(shard, "r+b") as f:
        f.truncate(shard.stat().st_size - 2)
    with pytest.raises(ValueError, match="train_00001.bin is truncated or corrupt"):
        load_manifest(tmp_path / "o")
    shard.unlink()
    with pytest.raises(ValueError, match="train_00001.bin is missing"):
        open_split(tmp_path / "o", "train")
    with pytest.raises(ValueError, match="manifest.json does not exist"):
        load_manifest(tmp_path)


def test_empty_val_split_and_uint32(tmp_path, tok, docs):
    prep(tmp_path / "o", tok, texts=docs, val_fraction=0.0)
    with pytest.raises(ValueError, match="val split .* is empty"):
        open_split(tmp_path / "o", "val")
    with pytest.raises(ValueError, match="unknown split 'test'"):
        open_split(tmp_path / "o", "test")
    big = Tokenizer(merges=[], special_tokens={EOT: 69_999}, eos_tokens=[EOT])
    m = prep(tmp_path / "big", big, texts=["héllo", "wörld"], val_fraction=0.0)
    assert m.dtype == "uint32" and m.vocab_size == 70_000
    train = open_split(tmp_path / "big", "train")
    assert train.document(1).tolist() == list("wörld".encode()) + [69_999]


def test_bundled_documents_are_deterministic():
    docs = bundled_documents(max_chars=500_000)  # past the pydoc topics (~465k): docstrings too
    assert sum(map(len, docs)) == 500_000 and all(docs)
    assert len(docs) > 80 and docs == bundled_documents(max_chars=500_000)
