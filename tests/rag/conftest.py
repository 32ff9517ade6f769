"""Shared RAG fixtures: a tiny corpus folder, a fake deterministic embedder (see rag_fakes),
an index of both, and each store backend (a PostgreSQL server started for the session)."""

import pytest
from rag_fakes import FakeEmbedder, write_corpus


@pytest.fixture
def fake_embedder():
    return FakeEmbedder()


@pytest.fixture
def rag_corpus(tmp_path):
    """A small folder: Markdown, text, HTML, Python and JSONL files."""
    return write_corpus(tmp_path / "corpus")


@pytest.fixture
def rag_index(tmp_path, rag_corpus, fake_embedder):
    """An Index over rag_corpus with the fake embedder, in tmp_path/rag.db (64-token chunks)."""
    from ember.rag.index import Index

    index = Index(tmp_path / "rag.db", embedder=fake_embedder, chunk_tokens=64, overlap=8)
    index.add([rag_corpus], progress=False)
    yield index
    index.close()


@pytest.fixture(scope="session")
def pg_dsn(tmp_path_factory):
    """A PostgreSQL server with pgvector (the `pgserver` package bundles both), started for
    the session in a temporary folder and stopped after; skips where it cannot start."""
    pgserver = pytest.importorskip("pgserver", reason="pip install pgserver (PostgreSQL with pgvector)")
    pytest.importorskip("psycopg", reason='pip install "psycopg[binary]"')
    try:
        server = pgserver.get_server(tmp_path_factory.mktemp("pg"), cleanup_mode="stop")
    except Exception as e:  # no server on this machine: the PostgreSQL tests skip, the rest run
        pytest.skip(f"PostgreSQL did not start: {e}")
    yield server.get_uri()
    server.cleanup()


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request):
    """Each backend in turn: ("sqlite", a new database file) or ("postgres", DSN and schema)."""
    import uuid

    if request.param == "postgres":
        return "postgres", (request.getfixturevalue("pg_dsn"), "t" + uuid.uuid4().hex[:12])
    return "sqlite", request.getfixturevalue("tmp_path") / f"{uuid.uuid4().hex[:8]}.db"
