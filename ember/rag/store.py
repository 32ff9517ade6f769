"""The RAG store: documents, chunks, BM25 and vectors in one SQLite file.

    meta       key → value: schema version, embedding model and dim, chunker settings
    documents  source (the file, or file#record) → path, kind, hash, metadata (JSON)
    chunks     document, character span, heading path, text, float32 vector (a blob)
    chunks_fts FTS5 over chunk text and headings (external content, kept by triggers)

Writes go one document per transaction (`put_document`: old chunks out, new in, the hash
last), in WAL mode, so a process killed at any instant leaves every document either as it
was or fully replaced, and FTS5's BM25 statistics always count exactly the stored chunks.
Dense search is exact: one matrix product over every vector, the float32 matrix read once
and cached until the store's generation (bumped by every write) changes.

`Store` is the interface search code uses; `SQLiteStore` is the embedded default and
`ember.rag.pgstore.PgStore` the same over PostgreSQL with pgvector.

    >>> s = SQLiteStore(":memory:", create=True)
    >>> s.set_meta({"embedding_model": "toy", "dim": "2"})
    >>> s.put_document("/a.txt", "a.txt", "text", "h1", {}, [(0, 5, (), "hello", {})], np.eye(2, dtype=np.float32)[:1])
    >>> s.bm25("hello", 3), s.dense(np.array([1, 0], np.float32), 3), s.chunks([1])[0].doc
    ([(1, 1e-06)], [(1, 1.0)], 'a.txt')
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

SCHEMA_VERSION = "1"
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS documents (
  id INTEGER PRIMARY KEY, source TEXT NOT NULL UNIQUE, file TEXT NOT NULL, path TEXT NOT NULL,
  kind TEXT NOT NULL, hash TEXT NOT NULL, metadata TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS documents_file ON documents (file);
CREATE TABLE IF NOT EXISTS chunks (
  id INTEGER PRIMARY KEY AUTOINCREMENT, doc_id INTEGER NOT NULL REFERENCES documents (id) ON DELETE CASCADE,
  start INTEGER NOT NULL, "end" INTEGER NOT NULL, headings TEXT NOT NULL, text TEXT NOT NULL,
  metadata TEXT NOT NULL, vector BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS chunks_doc ON chunks (doc_id);
CREATE VIRTUAL TABLE IF NOT EXISTS chunks_fts USING fts5 (
  text, headings, content='chunks', content_rowid='id', tokenize='porter unicode61 remove_diacritics 2');
CREATE TRIGGER IF NOT EXISTS chunks_ai AFTER INSERT ON chunks BEGIN
  INSERT INTO chunks_fts (rowid, text, headings) VALUES (new.id, new.text, new.headings); END;
CREATE TRIGGER IF NOT EXISTS chunks_ad AFTER DELETE ON chunks BEGIN
  INSERT INTO chunks_fts (chunks_fts, rowid, text, headings) VALUES ('delete', old.id, old.text, old.headings); END;
"""
WORD = re.compile(r"\w+")
META_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class Chunk:
    """One stored chunk: `doc` is the document's path and `text == document.text[start:end]`."""

    id: int
    doc: str
    text: str
    start: int
    end: int
    headings: tuple[str, ...]
    metadata: dict = field(default_factory=dict)


class Store(Protocol):
    """What search needs from a store (SQLiteStore, PgStore); scores are higher-is-better."""

    embedding_model: str | None
    dim: int | None

    def bm25(self, query: str, k: int, where: dict | None = None) -> list[tuple[int, float]]: ...
    def dense(self, vector: np.ndarray, k: int, where: dict | None = None) -> list[tuple[int, float]]: ...
    def chunks(self, ids: list[int]) -> list[Chunk]: ...
    def vectors(self, ids: list[int]) -> np.ndarray: ...
    def count(self) -> int: ...
    def documents(self) -> list[str]: ...
    def close(self) -> None: ...


# Words that carry no topic in a question asked in plain English (articles, pronouns,
# auxiliaries, interrogatives, common prepositions): left out of the BM25 query, where they
# would otherwise match almost every chunk. Operator-like words (in, is, not, or, and, if,
# for, with) stay: in technical text they are often the subject. On the 27 dev questions of
# the bundled pydoc set this raised BM25's nDCG@10 from 0.589 to 0.644 (bench/rag.py).
QUERY_STOPWORDS = frozenset(
    "a an the i me my we you your it its are was be do does did how what when why which who "
    "can could should would to of on at by this that these those there here some any".split())


def query_terms(query: str) -> list[str]:
    """The words of a query that BM25 searches for: every word but QUERY_STOPWORDS (compared
    lower-cased), or every word when that would leave none.

    >>> query_terms("How do I leave a loop early?"), query_terms("what is it")
    (['leave', 'loop', 'early'], ['is'])
    >>> query_terms("Which one?"), query_terms("who"), query_terms("?!")
    (['one'], ['who'], [])
    """
    words = WORD.findall(query)
    return [w for w in words if w.lower() not in QUERY_STOPWORDS] or words


def fts_query(query: str) -> str | None:
    """A raw user query → an FTS5 query that only ever means "any of these words"
    (`query_terms`): each word quoted, so AND/OR/NOT, *, :, quotes and parentheses are
    plain text; None if no word.

    >>> fts_query('NOT "x" (a OR b*) c:d')
    '"NOT" OR "x" OR "OR" OR "b" OR "c" OR "d"'
    """
    words = query_terms(query)
    return " OR ".join(f'"{w}"' for w in words) if words else None


def check_where(where: dict | None) -> dict:
    """The filter, checked: doc_prefix and kind are strings, other keys are metadata names
    (letters, digits, _) compared for equality with a str/int/float/bool."""
    where = dict(where or {})
    for key, value in where.items():
        if key in ("doc_prefix", "kind"):
            if not isinstance(value, str):
                raise ValueError(f"where[{key!r}] must be a string, got {value!r}")
        elif not META_KEY.match(str(key)):
            raise ValueError(f"where key {key!r} is not a metadata name (letters, digits, _)")
        elif not isinstance(value, (str, int, float, bool)):
            raise ValueError(f"where[{key!r}] must be a str, int, float or bool, got {value!r}")
    return where


def check_vector(vector, dim: int | None) -> np.ndarray:
    v = np.asarray(vector, dtype=np.float32).reshape(-1)
    if dim is not None and v.shape[0] != dim:
        raise ValueError(f"query vector has {v.shape[0]} values; the store's vectors have {dim}")
    return v


class MetaProps:
    """The embedding model and dimension a store was built with, read from its meta table
    (both backends store them the same way; `meta()` is the backend's)."""

    def meta(self) -> dict[str, str]:
        raise NotImplementedError

    @property
    def embedding_model(self) -> str | None:
        return self.meta().get("embedding_model")

    @property
    def dim(self) -> int | None:
        d = self.meta().get("dim")
        return int(d) if d else None


class SQLiteStore(MetaProps):
    """The store in one SQLite file. `create=False` opens an existing one (a missing file is
    a FileNotFoundError naming it); writers are `ember.rag.index.Index`."""

    def __init__(self, path, create: bool = False):
        self.path = str(path)
        if self.path != ":memory:" and not create and not Path(self.path).is_file():
            raise FileNotFoundError(f"no RAG database at {self.path} (build it with `ember rag index`)")
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")  # in WAL: durable against a killed process
            self.db.execute("PRAGMA foreign_keys=ON")
            self.db.execute("PRAGMA busy_timeout=10000")
            with self._tx():
                for stmt in _statements(SCHEMA):
                    self.db.execute(stmt)
                self.db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (SCHEMA_VERSION,))
        except sqlite3.DatabaseError as e:
            self.db.close()
            raise ValueError(f"{self.path} is not a RAG database ({e})") from None
        version = self.meta().get("schema_version")
        if version != SCHEMA_VERSION:
            raise ValueError(f"{self.path} has store schema {version}; this ember reads {SCHEMA_VERSION}")
        self._cache: tuple[str, np.ndarray, np.ndarray] | None = None  # (generation, ids, matrix)

    # meta
    def meta(self) -> dict[str, str]:
        return dict(self.db.execute("SELECT key, value FROM meta"))

    def set_meta(self, values: dict) -> None:
        with self._tx():
            self.db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", [(k, str(v)) for k, v in values.items()])

    # writes
    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the writer's lock (`<db>.lock`, flock: the kernel drops it however the holder
        exits) for the block; a second writer fails at once, naming the holder's PID."""
        if self.path == ":memory:":
            yield
            return
        lock = f"{self.path}.lock"
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
                raise ValueError(f"{self.path} is being indexed by process {holder or '?'} (lock {lock}); "
                                 "wait for it to finish") from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            yield
        finally:
            os.close(fd)  # closing drops the lock

    def _tx(self):
        return _Transaction(self.db)

    def put_document(self, source: str, path: str, kind: str, hash: str, metadata: dict,
                     chunks: list[tuple[int, int, tuple[str, ...], str, dict]], vectors: np.ndarray,
                     file: str | None = None) -> None:
        """Replace one document and all its chunks in one transaction; the hash goes last."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.shape != (len(chunks), self.dim or vectors.shape[-1]):
            raise ValueError(f"{len(chunks)} chunks need ({len(chunks)}, {self.dim}) vectors, got {vectors.shape}")
        with self._tx():
            row = self.db.execute("SELECT id FROM documents WHERE source = ?", (source,)).fetchone()
            if row is None:
                doc_id = self.db.execute(
                    "INSERT INTO documents (source, file, path, kind, hash, metadata) VALUES (?, ?, ?, ?, '', ?)",
                    (source, file or source, path, kind, json.dumps(metadata))).lastrowid
            else:
                doc_id = row[0]
                self.db.execute("DELETE FROM chunks WHERE doc_id = ?", (doc_id,))
            self.db.executemany(
                'INSERT INTO chunks (doc_id, start, "end", headings, text, metadata, vector) VALUES (?, ?, ?, ?, ?, ?, ?)',
                [(doc_id, s, e, json.dumps(list(h)), t, json.dumps(m), v.tobytes())
                 for (s, e, h, t, m), v in zip(chunks, vectors)])
            self.db.execute("UPDATE documents SET file = ?, path = ?, kind = ?, metadata = ?, hash = ? WHERE id = ?",
                            (file or source, path, kind, json.dumps(metadata), hash, doc_id))
            self._bump()

    def remove_documents(self, sources: list[str]) -> None:
        """Delete documents and their chunks, one transaction for all."""
        with self._tx():
            for source in sources:
                self.db.execute("DELETE FROM documents WHERE source = ?", (source,))
            self._bump()

    def rename(self, source: str, path: str) -> None:
        with self._tx():
            self.db.execute("UPDATE documents SET path = ? WHERE source = ?", (path, source))

    def clear(self) -> None:
        """Every document and chunk out (meta stays): before a rebuild."""
        with self._tx():
            self.db.execute("DELETE FROM chunks")
            self.db.execute("DELETE FROM documents")
            self._bump()

    def _bump(self) -> None:
        self.db.execute("INSERT INTO meta VALUES ('generation', '1') ON CONFLICT (key) "
                        "DO UPDATE SET value = CAST(value AS INTEGER) + 1")

    # reads
    def document_states(self) -> dict[str, tuple[str, str, str]]:
        """source → (file, path, hash) of every stored document."""
        return {s: (f, p, h) for s, f, p, h in self.db.execute("SELECT source, file, path, hash FROM documents")}

    def documents(self) -> list[str]:
        return [p for (p,) in self.db.execute("SELECT path FROM documents ORDER BY path")]

    def count(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM chunks").fetchone()[0]

    def _filter(self, where: dict | None) -> tuple[str, list]:
        """SQL conditions on `d` (documents) for a where filter, and their parameters."""
        sql, args = [], []
        for key, value in check_where(where).items():
            if key == "doc_prefix":
                sql.append("substr(d.path, 1, ?) = ?")
                args += [len(value), value]
            elif key == "kind":
                sql.append("d.kind = ?")
                args.append(value)
            else:
                sql.append(f"json_extract(d.metadata, '$.{key}') = ?")
                args.append(int(value) if isinstance(value, bool) else value)
        return "".join(f" AND {s}" for s in sql), args

    def bm25(self, query: str, k: int, where: dict | None = None) -> list[tuple[int, float]]:
        q = fts_query(query)
        if q is None or k < 1:
            return []
        cond, args = self._filter(where)
        rows = self.db.execute(
            "SELECT c.id, bm25(chunks_fts) AS s FROM chunks_fts JOIN chunks c ON c.id = chunks_fts.rowid "
            f"JOIN documents d ON d.id = c.doc_id WHERE chunks_fts MATCH ?{cond} ORDER BY s, c.id LIMIT ?",
            [q, *args, k])
        # FTS5's bm25() is the negated BM25 score (lower is better)
        return [(i, -s) for i, s in rows]

    def _matrix(self) -> tuple[np.ndarray, np.ndarray]:
        gen = self.meta().get("generation", "0")
        if self._cache is None or self._cache[0] != gen:
            rows = self.db.execute("SELECT id, vector FROM chunks ORDER BY id").fetchall()
            ids = np.array([r[0] for r in rows], dtype=np.int64)
            dim = self.dim or 0
            m = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), dim)
            self._cache = (gen, ids, m)
        return self._cache[1], self._cache[2]

    def dense(self, vector: np.ndarray, k: int, where: dict | None = None) -> list[tuple[int, float]]:
        v = check_vector(vector, self.dim)
        ids, m = self._matrix()
        if where:
            cond, args = self._filter(where)
            keep = [i for (i,) in self.db.execute(
                f"SELECT c.id FROM chunks c JOIN documents d ON d.id = c.doc_id WHERE 1{cond}", args)]
            keep = np.array(sorted(keep), dtype=np.int64)
            keep = keep[np.isin(keep, ids)]  # a chunk written since the matrix was read waits for the next call
            rows = np.searchsorted(ids, keep)
            ids, m = ids[rows], m[rows]
        if k < 1 or len(ids) == 0:
            return []
        scores = m @ v  # (N,): cosine, the vectors being unit length
        top = np.argsort(-scores, kind="stable")[:k]
        return [(int(ids[i]), float(scores[i])) for i in top]

    def chunks(self, ids: list[int]) -> list[Chunk]:
        ids = [int(i) for i in ids]
        rows = {}
        for n in range(0, len(ids), 500):
            part = ids[n:n + 500]
            rows.update({r[0]: r for r in self.db.execute(
                'SELECT c.id, d.path, c.text, c.start, c."end", c.headings, c.metadata, d.metadata '
                f"FROM chunks c JOIN documents d ON d.id = c.doc_id WHERE c.id IN ({','.join('?' * len(part))})",
                part)})
        missing = [i for i in ids if i not in rows]
        if missing:
            raise KeyError(f"no chunk with id {missing[0]} in {self.path}")
        return [Chunk(i, p, t, s, e, tuple(json.loads(h)), {**json.loads(dm), **json.loads(cm)})
                for i, p, t, s, e, h, cm, dm in (rows[i] for i in ids)]

    def vectors(self, ids: list[int]) -> np.ndarray:
        all_ids, m = self._matrix()
        ids = np.asarray(ids, dtype=np.int64)
        rows = np.searchsorted(all_ids, ids)
        bad = (rows >= len(all_ids)) | (all_ids[np.minimum(rows, len(all_ids) - 1)] != ids) if len(all_ids) else ids == ids
        if bad.any():
            raise KeyError(f"no chunk with id {int(ids[bad][0])} in {self.path}")
        return m[rows].copy()

    def close(self) -> None:
        self.db.close()


class _Transaction:
    """BEGIN IMMEDIATE … COMMIT, or ROLLBACK on any error (a killed process: SQLite's journal)."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self):
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type, exc, tb):
        self.db.execute("COMMIT" if exc_type is None else "ROLLBACK")
        return False


def _statements(script: str) -> list[str]:
    """The schema script cut into statements (a trigger body holds ';' of its own)."""
    out, buf = [], ""
    for part in script.split(";"):
        buf += part + ";"
        if sqlite3.complete_statement(buf):
            if buf.strip(" \n;"):
                out.append(buf.strip())
            buf = ""
    return out
