"""The RAG store over PostgreSQL: pgvector for the vectors, PostgreSQL's full-text search
for the keyword side. Same interface as `ember.rag.store.SQLiteStore`, for a store shared
by several machines or too big for one file.

    meta, documents, chunks    tables in one schema (default "ember_rag") of the database
    chunks.embedding           pgvector `vector`; dense search is `ORDER BY embedding <=> q`,
                               exact (no approximate index is built), score 1 - cosine distance
    chunks.tsv                 generated `to_tsvector('english', text || headings)`, GIN-indexed

The keyword scores are PostgreSQL's `ts_rank` (term frequency with length normalisation),
not BM25: they rank the same way in spirit, but their values differ from SQLite's FTS5.
Needs the `vector` extension in the server (`CREATE EXTENSION vector` is run if missing)
and `psycopg` 3 (`pip install "psycopg[binary]"`). For a throwaway server with pgvector
included, the `pgserver` package starts one in a folder:

    >>> import pgserver                                                  # doctest: +SKIP
    >>> store = PgStore(pgserver.get_server("/tmp/pg").get_uri())        # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator

import numpy as np

from ember.rag.store import Chunk, MetaProps, check_vector, check_where, query_terms

IDENT = re.compile(r"^[a-z_][a-z0-9_]{0,40}$")


def _schema_sql(s: str) -> list[str]:
    return [
        f"CREATE SCHEMA IF NOT EXISTS {s}",
        f"CREATE TABLE IF NOT EXISTS {s}.meta (key text PRIMARY KEY, value text NOT NULL)",
        f"""CREATE TABLE IF NOT EXISTS {s}.documents (
              id bigserial PRIMARY KEY, source text NOT NULL UNIQUE, file text NOT NULL, path text NOT NULL,
              kind text NOT NULL, hash text NOT NULL, metadata jsonb NOT NULL)""",
        f"CREATE INDEX IF NOT EXISTS documents_file ON {s}.documents (file)",
        f"""CREATE TABLE IF NOT EXISTS {s}.chunks (
              id bigserial PRIMARY KEY, doc_id bigint NOT NULL REFERENCES {s}.documents (id) ON DELETE CASCADE,
              start integer NOT NULL, "end" integer NOT NULL, headings jsonb NOT NULL, text text NOT NULL,
              metadata jsonb NOT NULL, embedding vector NOT NULL,
              tsv tsvector GENERATED ALWAYS AS (to_tsvector('english', text || ' ' || headings::text)) STORED)""",
        f"CREATE INDEX IF NOT EXISTS chunks_doc ON {s}.chunks (doc_id)",
        f"CREATE INDEX IF NOT EXISTS chunks_tsv ON {s}.chunks USING gin (tsv)",
    ]


def redact(dsn: str) -> str:
    """A DSN without its password, for messages.

    >>> redact("postgresql://me:secret@db:5432/rag"), redact("host=db password=secret dbname=rag")
    ('postgresql://me:***@db:5432/rag', 'host=db password=*** dbname=rag')
    """
    dsn = re.sub(r"(://[^:/@]*):[^@]*@", r"\1:***@", dsn)
    return re.sub(r"(password\s*=\s*)('[^']*'|\S+)", r"\1***", dsn)


def _vec(v: np.ndarray) -> str:
    return "[" + ",".join(f"{x:.9g}" for x in np.asarray(v, dtype=np.float32).tolist()) + "]"


class PgStore(MetaProps):
    """The store in PostgreSQL; `dsn` is a libpq connection string or URI."""

    def __init__(self, dsn: str, schema: str = "ember_rag"):
        try:
            import psycopg
        except ImportError:
            raise ValueError('the postgres backend needs psycopg: pip install "psycopg[binary]"') from None
        if not IDENT.match(schema):
            raise ValueError(f"schema {schema!r} is not a plain lower-case SQL name")
        self.path, self.s = redact(dsn), schema  # the name errors show: no password
        try:
            self.db = psycopg.connect(dsn, autocommit=True)
        except psycopg.Error as e:
            raise ValueError(f"cannot connect to PostgreSQL at {self.path!r}: {str(e).strip()}") from None
        try:
            with self.db.transaction():
                self.db.execute("CREATE EXTENSION IF NOT EXISTS vector")
                self.db.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"{schema}.schema",))
                for stmt in _schema_sql(schema):
                    self.db.execute(stmt)
                self.db.execute(f"INSERT INTO {schema}.meta VALUES ('schema_version', '1') ON CONFLICT DO NOTHING")
        except psycopg.Error as e:
            self.db.close()
            raise ValueError(f"PostgreSQL at {self.path!r} cannot hold the store: {str(e).strip()} "
                             "(the pgvector extension must be installed in the server)") from None

    def _q(self, sql: str, args=()):
        return self.db.execute(sql.replace("{s}", self.s), args)

    # meta
    def meta(self) -> dict[str, str]:
        return dict(self._q("SELECT key, value FROM {s}.meta").fetchall())

    def set_meta(self, values: dict) -> None:
        with self.db.transaction():
            for k, v in values.items():
                self._q("INSERT INTO {s}.meta VALUES (%s, %s) ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                        (k, str(v)))

    # writes
    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """The writer's lock: a session advisory lock, dropped by the server if we die."""
        key = f"{self.s}.writer"
        if not self._q("SELECT pg_try_advisory_lock(hashtext(%s))", (key,)).fetchone()[0]:
            raise ValueError(f"the store {self.s} at {self.path} is being indexed by another process; "
                             "wait for it to finish")
        try:
            yield
        finally:
            self._q("SELECT pg_advisory_unlock(hashtext(%s))", (key,))

    def put_document(self, source, path, kind, hash, metadata, chunks, vectors, file=None) -> None:
        """Replace one document and all its chunks in one transaction; the hash goes last."""
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.shape != (len(chunks), self.dim or vectors.shape[-1]):
            raise ValueError(f"{len(chunks)} chunks need ({len(chunks)}, {self.dim}) vectors, got {vectors.shape}")
        with self.db.transaction():
            row = self._q("SELECT id FROM {s}.documents WHERE source = %s", (source,)).fetchone()
            if row is None:
                doc_id = self._q("INSERT INTO {s}.documents (source, file, path, kind, hash, metadata) "
                                 "VALUES (%s, %s, %s, %s, '', %s) RETURNING id",
                                 (source, file or source, path, kind, json.dumps(metadata))).fetchone()[0]
            else:
                doc_id = row[0]
                self._q("DELETE FROM {s}.chunks WHERE doc_id = %s", (doc_id,))
            with self.db.cursor() as cur:
                cur.executemany(
                    'INSERT INTO {s}.chunks (doc_id, start, "end", headings, text, metadata, embedding) '
                    "VALUES (%s, %s, %s, %s, %s, %s, %s::vector)".replace("{s}", self.s),
                    [(doc_id, a, b, json.dumps(list(h)), t, json.dumps(m), _vec(v))
                     for (a, b, h, t, m), v in zip(chunks, vectors)])
            self._q("UPDATE {s}.documents SET file = %s, path = %s, kind = %s, metadata = %s, hash = %s "
                    "WHERE id = %s", (file or source, path, kind, json.dumps(metadata), hash, doc_id))

    def remove_documents(self, sources: list[str]) -> None:
        with self.db.transaction():
            self._q("DELETE FROM {s}.documents WHERE source = ANY(%s)", (list(sources),))

    def rename(self, source: str, path: str) -> None:
        self._q("UPDATE {s}.documents SET path = %s WHERE source = %s", (path, source))

    def clear(self) -> None:
        with self.db.transaction():
            self._q("DELETE FROM {s}.chunks")
            self._q("DELETE FROM {s}.documents")

    # reads
    def document_states(self) -> dict[str, tuple[str, str, str]]:
        rows = self._q("SELECT source, file, path, hash FROM {s}.documents").fetchall()
        return {s: (f, p, h) for s, f, p, h in rows}

    def documents(self) -> list[str]:
        return [p for (p,) in self._q("SELECT path FROM {s}.documents ORDER BY path COLLATE \"C\"")]

    def count(self) -> int:
        return self._q("SELECT COUNT(*) FROM {s}.chunks").fetchone()[0]

    def _filter(self, where: dict | None) -> tuple[str, list]:
        sql, args = [], []
        for key, value in check_where(where).items():
            if key == "doc_prefix":
                sql.append("starts_with(d.path, %s)")
                args.append(value)
            elif key == "kind":
                sql.append("d.kind = %s")
                args.append(value)
            else:  # jsonb containment: numbers compare as numbers (1 = 1.0)
                sql.append("d.metadata @> %s::jsonb")
                args.append(json.dumps({key: value}))
        return "".join(f" AND {s}" for s in sql), args

    def bm25(self, query: str, k: int, where: dict | None = None) -> list[tuple[int, float]]:
        words = query_terms(query)
        if not words or k < 1:
            return []
        # each word on its own through plainto_tsquery, OR-ed: the raw query is never syntax
        tsq = " || ".join(["plainto_tsquery('english', %s)"] * len(words))
        cond, args = self._filter(where)
        rows = self._q(
            f"WITH q AS (SELECT {tsq} AS q) SELECT c.id, ts_rank(c.tsv, q.q, 1) AS score "
            "FROM {s}.chunks c JOIN {s}.documents d ON d.id = c.doc_id, q "
            f"WHERE c.tsv @@ q.q{cond} ORDER BY score DESC, c.id LIMIT %s", [*words, *args, k]).fetchall()
        return [(int(i), float(s)) for i, s in rows]

    def dense(self, vector: np.ndarray, k: int, where: dict | None = None) -> list[tuple[int, float]]:
        v = _vec(check_vector(vector, self.dim))
        if k < 1:
            return []
        cond, args = self._filter(where)
        rows = self._q(
            "SELECT c.id, 1 - (c.embedding <=> %s::vector) AS score FROM {s}.chunks c "
            f"JOIN {{s}}.documents d ON d.id = c.doc_id WHERE true{cond} "
            "ORDER BY c.embedding <=> %s::vector, c.id LIMIT %s", [v, *args, v, k]).fetchall()
        return [(int(i), float(s)) for i, s in rows]

    def chunks(self, ids: list[int]) -> list[Chunk]:
        ids = [int(i) for i in ids]
        rows = {r[0]: r for r in self._q(
            'SELECT c.id, d.path, c.text, c.start, c."end", c.headings, c.metadata, d.metadata '
            "FROM {s}.chunks c JOIN {s}.documents d ON d.id = c.doc_id WHERE c.id = ANY(%s)", (ids,))}
        missing = [i for i in ids if i not in rows]
        if missing:
            raise KeyError(f"no chunk with id {missing[0]} in {self.s} at {self.path}")
        return [Chunk(i, p, t, a, b, tuple(h), {**dm, **cm})
                for i, p, t, a, b, h, cm, dm in (rows[i] for i in ids)]

    def vectors(self, ids: list[int]) -> np.ndarray:
        ids = [int(i) for i in ids]
        rows = dict(self._q("SELECT id, embedding::real[] FROM {s}.chunks WHERE id = ANY(%s)", (ids,)).fetchall())
        missing = [i for i in ids if i not in rows]
        if missing:
            raise KeyError(f"no chunk with id {missing[0]} in {self.s} at {self.path}")
        return np.array([rows[i] for i in ids], dtype=np.float32).reshape(len(ids), self.dim or 0)

    def close(self) -> None:
        self.db.close()
