"""Indexing: files → documents → chunks → vectors → the store, incrementally.

Each run walks the inputs and compares every document's hash with the stored one:
unchanged documents are skipped, changed ones replaced, new ones added, and documents
whose file under one of the given roots is gone are removed (documents outside those roots
are never touched). Chunks are embedded in batches across documents, then written one
document per transaction, so a run killed at any point leaves a consistent store and the
next run finishes the work. A file that changes while it is read or embedded is skipped
with a reason (its stored chunks, if any, stay those of its stored hash).

    >>> index = Index("rag.db")                      # doctest: +SKIP
    >>> print(index.add(["docs/"]).summary())        # doctest: +SKIP
    added 12, updated 0, unchanged 0, removed 0, skipped 1; 97 chunks written (97 in 12 documents) in 4.1 s
      skipped logo.png: binary file (NUL bytes)
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ember.rag.chunking import chunk_text, late_chunk_vectors
from ember.rag.loaders import Skip, iter_files, kind_of, parse, read_bytes

BACKENDS = ("sqlite", "postgres")


@dataclass
class IndexReport:
    """What one `Index.add` did: document paths per outcome, (path, reason) per skip, the
    chunks written, and the store's totals after the run."""

    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    n_chunks: int = 0
    seconds: float = 0.0
    total_chunks: int = 0
    total_documents: int = 0

    def summary(self) -> str:
        """One line of counts, then one line per skipped file and its reason.

        >>> print(IndexReport(added=["a.md"], skipped=[("b.bin", "binary file")], n_chunks=3,
        ...                   seconds=0.5, total_chunks=3, total_documents=1).summary())
        added 1, updated 0, unchanged 0, removed 0, skipped 1; 3 chunks written (3 in 1 documents) in 0.5 s
          skipped b.bin: binary file
        """
        head = (f"added {len(self.added)}, updated {len(self.updated)}, unchanged {len(self.unchanged)}, "
                f"removed {len(self.removed)}, skipped {len(self.skipped)}; {self.n_chunks} chunks written "
                f"({self.total_chunks} in {self.total_documents} documents) in {self.seconds:.1f} s")
        return "\n".join([head, *(f"  skipped {p}: {r}" for p, r in self.skipped)])


class Index:
    """A store and the embedder that fills and queries it.

    db: a SQLite file (backend "sqlite") or a PostgreSQL DSN (backend "postgres").
    embedding_model: the model's name, stored in the database; None takes the database's,
    else the embedder's `name`, else "minilm". embedder: anything with `embed(texts)`,
    `tokenize(text)` (ids with the two specials), `dim` and `max_tokens`; None loads
    `embedding_model` when first needed. rebuild: accept a database built with another model
    or other chunk settings; `add` then re-chunks and re-embeds everything. create=False:
    the database must already exist (for searching). pg_schema: the PostgreSQL schema
    holding the store's tables. batch_chunks: chunks embedded together before their
    documents are written. headers: embed each chunk under its heading path
    (`header_text`; the stored text stays the chunk itself); not with late chunking.
    """

    def __init__(self, db, embedding_model: str | None = None, chunk_tokens: int = 200, overlap: int = 32,
                 late_chunking: bool = False, embedder=None, backend: str = "sqlite", rebuild: bool = False,
                 create: bool = True, batch_chunks: int = 128, pg_schema: str = "ember_rag",
                 headers: bool = True):
        if backend not in BACKENDS:
            raise ValueError(f"backend {backend!r} is not one of {BACKENDS}")
        if chunk_tokens < 8 or not 0 <= overlap <= chunk_tokens // 2:
            raise ValueError(f"need chunk_tokens >= 8 and 0 <= overlap <= chunk_tokens / 2, "
                             f"got chunk_tokens {chunk_tokens} and overlap {overlap}")
        if backend == "postgres":
            from ember.rag.pgstore import PgStore

            self.store = PgStore(str(db), schema=pg_schema)
        else:
            from ember.rag.store import SQLiteStore

            self.store = SQLiteStore(db, create=create)
        self.db, self.rebuild, self.batch_chunks = self.store.path, rebuild, batch_chunks  # no password
        self.chunk_tokens, self.overlap, self.late_chunking = chunk_tokens, overlap, late_chunking
        self.headers = headers and not late_chunking
        stored = self.store.embedding_model
        self.embedding_model = embedding_model or stored or getattr(embedder, "name", None) or "minilm"
        if stored and stored != self.embedding_model and not rebuild:
            self.store.close()
            raise ValueError(f"{self.db} was built with embedding model {stored!r}, not {self.embedding_model!r}: "
                             f"use --embedding-model {stored}, or --rebuild to re-embed everything")
        self._embedder = embedder
        self._ready = False

    @property
    def embedder(self):
        if self._embedder is None:
            from ember.infer.embed import load_embedder

            self._embedder = load_embedder(self.embedding_model)
        dim = self.store.dim
        if dim is not None and dim != self._embedder.dim and not self.rebuild:
            raise ValueError(f"{self.db} holds {dim}-dim vectors; {self.embedding_model!r} makes "
                             f"{self._embedder.dim}-dim ones")
        return self._embedder

    @property
    def settings(self) -> dict:
        return {"chunk_tokens": self.chunk_tokens, "overlap": self.overlap, "late_chunking": self.late_chunking,
                "headers": self.headers}

    def count_tokens(self, text: str) -> int:
        """Tokens of `text` in the embedding model's tokenizer, specials excluded."""
        return len(self.embedder.tokenize(text)) - 2

    def add(self, paths, progress: bool = True) -> IndexReport:
        """Index files and folders (see the module docstring); returns what was done."""
        paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
        files = input_files(paths)
        t0 = time.perf_counter()
        with self.store.lock():
            self._prepare()
            run = _Run(self, [Path(p).resolve() for p in paths])
            from tqdm import tqdm

            for path in tqdm(files, desc="indexing", unit="file", disable=not progress):
                run.file(path)
            run.flush()
            run.remove_missing()
        r = run.report
        r.seconds = time.perf_counter() - t0
        r.total_chunks, r.total_documents = self.store.count(), len(self.store.documents())
        return r

    def _prepare(self) -> None:
        """Before a run: clear the store for a rebuild, or check its chunk settings are ours."""
        meta = self.store.meta()
        settings = json.dumps(self.settings, sort_keys=True)
        if self.rebuild:
            self.store.clear()
            self.store.set_meta({"embedding_model": "", "dim": "", "chunker": ""})
            self.rebuild = False  # rebuilt: from now on, this index is the store's
        elif self.store.count() and meta.get("chunker", settings) != settings:
            raise ValueError(f"{self.db} was chunked with {meta['chunker']}, not {settings}: "
                             "use those settings, or --rebuild to re-chunk everything")
        self._ready = False

    def ready(self) -> None:
        """Before the first chunk of a run: load and check the embedder, and record the model
        and chunk settings in the store (a run that finds nothing new never loads the model)."""
        if self._ready:
            return
        e = self.embedder
        if self.chunk_tokens > e.max_tokens - 2:
            raise ValueError(f"chunk_tokens {self.chunk_tokens} exceeds what {self.embedding_model!r} reads "
                             f"({e.max_tokens - 2} tokens plus [CLS] and [SEP])")
        if self.late_chunking and not hasattr(e, "model"):
            raise ValueError("late chunking needs a BERT Embedder (ember.infer.embed), whose hidden states it pools")
        self.store.set_meta({"embedding_model": self.embedding_model, "dim": e.dim,
                             "chunker": json.dumps(self.settings, sort_keys=True)})
        self._ready = True

    def embedded_text(self, text: str, span) -> str:
        """What the encoder reads for one chunk (a `Span` of `text`): the chunk under its
        heading path (`header_text`) when `headers` is on and that fits the encoder, else the
        chunk alone."""
        chunk = text[span.start:span.end]
        if not self.headers or not span.headings:
            return chunk
        full = header_text(span.headings, chunk)
        if span.n_tokens + self.count_tokens(full[:len(full) - len(chunk)]) > self.embedder.max_tokens - 2:
            return chunk
        return full

    def embed_query(self, text: str) -> tuple[np.ndarray, str | None]:
        """The query's normalised float32 vector, and a note when the encoder had to cut it."""
        n, limit = len(self.embedder.tokenize(text)) - 2, self.embedder.max_tokens - 2
        note = None
        if n > limit:
            note = f"the query has {n} tokens; the encoder reads {limit}, so only its first {limit} were used"
        v = self.embedder.embed([text])[0]
        return np.asarray(v, dtype=np.float32).reshape(-1), note

    def search(self, query: str, k: int = 5, **kw):
        from ember.rag.search import search

        return search(self, query, k, **kw)

    def close(self) -> None:
        self.store.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def header_text(headings, chunk: str) -> str:
    """A chunk under its heading path, as it is embedded: a chunk deep in a section often
    never names its subject, and its headings do.

    >>> header_text(("Install", "From source"), "Run make.")
    'Install > From source\\n\\nRun make.'
    """
    return " > ".join(headings) + "\n\n" + chunk if headings else chunk


def input_files(paths: list) -> list[Path]:
    """The files to index under `paths`; a ValueError when there are none."""
    if not paths:
        raise ValueError("no input given: name files or folders to index")
    files = list(iter_files(paths))
    if not files:
        raise ValueError(f"nothing to index: no files under {', '.join(map(str, paths))}")
    return files


def display_path(path: Path) -> str:
    """The name a document is cited by: relative to the working folder when under it."""
    full = path.resolve()
    try:
        return full.relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return full.as_posix()


def _stat(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


class _Run:
    """One `Index.add`: the per-file decisions, the batch of documents waiting for their
    vectors, and the report."""

    def __init__(self, index: Index, roots: list[Path]):
        self.index, self.store, self.roots = index, index.store, roots
        self.report = IndexReport()
        self.states = self.store.document_states()  # source → (file, path, hash)
        self.seen: set[str] = set()
        self.pending: list[tuple] = []  # (doc, source, file, spans, stat, outcome)

    def file(self, path: Path) -> None:
        full, name = str(path.resolve()), display_path(path)
        self.seen.add(full)
        try:
            before = _stat(path)
            data = read_bytes(path)
            after = _stat(path)
            if before != after or after is None or len(data) != after[1]:
                raise Skip("changed while being read; run again")
            docs, bad = parse(name, data, kind_of(path))
        except Skip as e:
            self.report.skipped.append((name, str(e)))
            return
        self.report.skipped += bad
        produced = set()
        for doc in docs:
            source = full + doc.path[len(name):]  # file docs: the file; JSONL records: file#id
            produced.add(source)
            old = self.states.get(source)
            if old is not None and old[2] == doc.hash:
                if old[1] != doc.path:
                    self.store.rename(source, doc.path)
                self.report.unchanged.append(doc.path)
                continue
            self.index.ready()
            spans = chunk_text(doc.text, doc.kind, self.index.count_tokens, self.index.chunk_tokens,
                               self.index.overlap)
            self.pending.append((doc, source, full, spans, after, "updated" if old else "added"))
            if sum(len(p[3]) for p in self.pending) >= self.index.batch_chunks:
                self.flush()
        gone = [s for s, (f, _, _) in self.states.items() if f == full and s not in produced]
        self._remove(gone)  # JSONL records no longer in their file

    def flush(self) -> None:
        """Embed the waiting documents' chunks, then write each document in its own transaction."""
        if not self.pending:
            return
        embedder = self.index.embedder
        if self.index.late_chunking:
            vectors = [late_chunk_vectors(embedder, doc.text, spans) for doc, _, _, spans, _, _ in self.pending]
        else:
            texts = [self.index.embedded_text(doc.text, s) for doc, _, _, spans, _, _ in self.pending for s in spans]
            flat = np.asarray(embedder.embed(texts), dtype=np.float32) if texts else np.zeros((0, embedder.dim))
            cuts = np.cumsum([0] + [len(p[3]) for p in self.pending])
            vectors = [flat[a:b] for a, b in zip(cuts, cuts[1:])]
        for (doc, source, full, spans, stat, outcome), vecs in zip(self.pending, vectors):
            if _stat(Path(full)) != stat:
                self.report.skipped.append((doc.path, "changed during indexing; run again"))
                continue
            chunks = [(s.start, s.end, s.headings, doc.text[s.start:s.end], {}) for s in spans]
            self.store.put_document(source, doc.path, doc.kind, doc.hash, doc.metadata, chunks, vecs, file=full)
            getattr(self.report, outcome).append(doc.path)
            self.report.n_chunks += len(chunks)
        self.pending = []

    def remove_missing(self) -> None:
        """Documents whose file, under one of the roots, no longer exists."""
        def under(f: Path) -> bool:
            return any(f == r or r in f.parents for r in self.roots)

        gone = [s for s, (f, _, _) in self.states.items()
                if f not in self.seen and under(Path(f)) and not Path(f).exists()]
        self._remove(gone)

    def _remove(self, sources: list[str]) -> None:
        if sources:
            self.store.remove_documents(sources)
            self.report.removed += [self.states[s][1] for s in sources]
