"""Loaders: every kind becomes text; binary, non-UTF-8 and unreadable files are skipped with
a reason and never stop the run."""

from pathlib import Path

import pytest

from ember.rag import loaders
from ember.rag.loaders import Document, html_text, iter_files, load_documents


def by_name(docs):
    return {Path(d.path.split("#")[0]).name + ("#" + d.path.split("#")[1] if "#" in d.path else ""): d
            for d in docs}


def test_corpus_kinds_and_texts(rag_corpus):
    docs, skipped = load_documents([rag_corpus])
    assert skipped == []
    got = by_name(docs)
    assert {k: d.kind for k, d in got.items()} == {
        "install.md": "markdown", "usage.md": "markdown", "loops.txt": "text", "page.html": "html",
        "stack.py": "python", "faq.jsonl#q1": "jsonl", "faq.jsonl#q2": "jsonl"}
    assert got["loops.txt"].text == (rag_corpus / "notes/loops.txt").read_text()
    page = got["page.html"].text
    assert page == ("# Tokenizers\n\nA tokenizer turns text into integer ids.\n\n## BPE\n\n"
                    "Byte pair encoding merges the most frequent pair.")
    assert got["faq.jsonl#q2"].metadata == {"id": "q2", "topic": "coffee"}
    assert got["faq.jsonl#q2"].text == "Espresso is coffee brewed under pressure."


def test_binary_non_utf8_and_unreadable_are_skipped_with_reasons(tmp_path, monkeypatch):
    (tmp_path / "ok.txt").write_text("fine")
    (tmp_path / "img.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    (tmp_path / "latin.txt").write_bytes("caf\xe9".encode("latin-1"))
    (tmp_path / "locked.md").write_text("secret")
    (tmp_path / "blank.md").write_text("  \n\n")
    real = Path.read_bytes

    def read_bytes(self):
        if self.name == "locked.md":
            raise PermissionError(13, "Permission denied")
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    docs, skipped = load_documents([tmp_path])
    assert [Path(d.path).name for d in docs] == ["ok.txt"]
    assert {Path(p).name: r for p, r in skipped} == {
        "img.png": "binary file (NUL bytes)",
        "latin.txt": "not UTF-8 (bad byte 0xe9 at offset 3)",
        "locked.md": "unreadable (Permission denied)",
        "blank.md": "no text",
    }


def test_jsonl_bad_lines_are_skipped_by_line(tmp_path):
    (tmp_path / "r.jsonl").write_text('{"text": "one"}\nnot json\n{"title": "no text"}\n'
                                      '{"id": 7, "content": "seven", "tags": ["x"]}\n{"id": 7, "text": "again"}\n')
    docs, skipped = load_documents([tmp_path / "r.jsonl"])
    assert [(Path(d.path).name, d.text, d.metadata) for d in docs] == [
        ("r.jsonl#1", "one", {}), ("r.jsonl#7", "seven", {"id": 7})]
    assert [(Path(p).name, r) for p, r in skipped] == [
        ("r.jsonl:2", "not JSON (Expecting value)"), ("r.jsonl:3", 'no "text" or "content" string'),
        ("r.jsonl:5", "duplicate id '7'")]


def test_walk_is_sorted_recursive_and_skips_hidden(tmp_path):
    for rel in ["b/z.txt", "a.txt", "b/a.txt", ".git/config", "b/.hidden.md"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x")
    got = [p.relative_to(tmp_path).as_posix() for p in iter_files([tmp_path, tmp_path / "a.txt"])]
    assert got == ["a.txt", "b/a.txt", "b/z.txt"]


def test_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file or folder: .*nope"):
        load_documents([tmp_path / "nope"])


def test_html_pre_keeps_its_lines_and_entities_decode():
    assert html_text("<p>a &amp; b</p><pre>x = 1\n  y = 2</pre>") == "a & b\n\nx = 1\n  y = 2"


def test_document_hash_covers_text_kind_and_metadata():
    a = Document("p", "text", "text", {})
    assert a.hash == Document("other/path", "text", "text", {}).hash  # the path is not content
    assert len({a.hash, Document("p", "text!", "text").hash, Document("p", "text", "markdown").hash,
                Document("p", "text", "text", {"k": 1}).hash}) == 4


def test_large_files_are_skipped(tmp_path, monkeypatch):
    monkeypatch.setattr(loaders, "MAX_FILE_BYTES", 8)
    (tmp_path / "big.txt").write_text("0123456789")
    assert load_documents([tmp_path])[1] == [(str(tmp_path / "big.txt"), "10 bytes, over the limit of 8")]


def test_a_named_fifo_is_skipped_not_read(tmp_path):
    import os

    os.mkfifo(tmp_path / "pipe")
    assert load_documents([tmp_path / "pipe"]) == ([], [(str(tmp_path / "pipe"), "not a regular file")])
