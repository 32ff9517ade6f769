"""`ember serve --rag F`: a chat request's `rag` option puts the store's best chunks into the
prompt and returns them as top-level "sources" (in the first chunk when streaming). A tiny
random model wearing SmolLM2's tokenizer; the store uses the fake embedder."""

import json

import pytest

MODEL = "tiny-smollm2"
CTX = 512
SOURCE_KEYS = {"n", "doc", "chunk", "score", "text"}


@pytest.fixture(scope="module")
def tiny(smollm2_tokenizer):
    import torch

    from ember.model import ModelConfig, Transformer

    torch.manual_seed(0)
    cfg = ModelConfig.tiny(vocab_size=smollm2_tokenizer.vocab_size, max_seq_len=CTX, tie_embeddings=True)
    return Transformer(cfg).eval(), smollm2_tokenizer


def _client(tiny, rag_index=None):
    from fastapi.testclient import TestClient

    from ember.infer import Engine
    from ember.infer.server import create_app
    from ember.rag.answer import ChatRetriever

    model, tok = tiny
    rag = ChatRetriever(rag_index, tok, CTX) if rag_index is not None else None
    return TestClient(create_app(Engine(model, tok, max_batch_size=2, max_seq_len=CTX), MODEL, rag=rag))


def _body(**kw):
    return {"model": MODEL, "messages": [{"role": "user", "content": "How does a loop stop early with break?"}],
            "max_tokens": 4, "temperature": 0, **kw}


def test_rag_returns_sources_and_grows_the_prompt(tiny, rag_index):
    with _client(tiny, rag_index) as client:
        plain = client.post("/v1/chat/completions", json=_body()).json()
        out = client.post("/v1/chat/completions", json=_body(rag=True)).json()
        two = client.post("/v1/chat/completions", json=_body(rag={"k": 2})).json()
    assert "sources" not in plain
    sources = out["sources"]
    assert 1 <= len(sources) <= 5 and all(set(s) == SOURCE_KEYS for s in sources)
    assert [s["n"] for s in sources] == list(range(1, len(sources) + 1))
    assert sources[0]["doc"].endswith("notes/loops.txt") and "break" in sources[0]["text"]
    assert out["usage"]["prompt_tokens"] > plain["usage"]["prompt_tokens"] + 20
    assert len(two["sources"]) == 2 and out["choices"][0]["message"]["role"] == "assistant"


def test_rag_sources_come_in_the_first_streamed_chunk(tiny, rag_index):
    with _client(tiny, rag_index) as client:
        with client.stream("POST", "/v1/chat/completions", json=_body(rag={"k": 3}, stream=True)) as r:
            events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    assert len(events[0]["sources"]) == 3 and set(events[0]["sources"][0]) == SOURCE_KEYS
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all("sources" not in e for e in events[1:])


def test_rag_errors_are_400s_naming_rag(tiny, rag_index):
    with _client(tiny) as client:
        r = client.post("/v1/chat/completions", json=_body(rag=True))
    assert r.status_code == 400 and r.json()["error"]["param"] == "rag"
    assert "--rag" in r.json()["error"]["message"]
    with _client(tiny, rag_index) as client:
        r = client.post("/v1/chat/completions", json=_body(rag={"k": 0}))
        assert r.status_code == 400 and "rag" in json.dumps(r.json()["error"])
        r = client.post("/v1/chat/completions", json=_body(rag={"top": 3}))
        assert r.status_code == 400 and "top" in r.json()["error"]["message"]
        last_assistant = _body(rag=True, messages=[{"role": "user", "content": "hi"},
                                                   {"role": "assistant", "content": "hello"}])
        r = client.post("/v1/chat/completions", json=last_assistant)
        assert r.status_code == 400 and "user's question" in r.json()["error"]["message"]
