"""GET /v1/trace on the served model, its bounds and 400s, and the vendored page scripts."""

import pytest
import torch
from fastapi.testclient import TestClient

from ember.infer import Engine
from ember.infer.server import create_app
from ember.infer.trace_api import MAX_TRACE_TOKENS
from ember.model import ModelConfig, Transformer


@pytest.fixture(scope="module")
def client(smollm2_tokenizer):
    torch.manual_seed(0)
    model = Transformer(ModelConfig.tiny(vocab_size=smollm2_tokenizer.vocab_size, max_seq_len=256)).eval()
    app = create_app(Engine(model, smollm2_tokenizer, max_batch_size=1), "tiny")
    with TestClient(app) as c:
        c.model, c.tok = model, smollm2_tokenizer
        yield c


def test_trace_route_returns_the_trace(client):
    r = client.get("/v1/trace", params={"text": "The cat sat", "top": 3})
    assert r.status_code == 200, r.text
    tr = r.json()
    ids = client.tok.encode("The cat sat")
    assert [t["id"] for t in tr["tokens"]] == ids
    assert len(tr["layers"]) == 2 and len(tr["next"]) == 3
    top = client.model(torch.tensor([ids]))[0, -1].topk(3).indices.tolist()
    assert [n["id"] for n in tr["next"]] == top


def test_chat_trace_continues_the_reply(client):
    r = client.get("/v1/trace", params={"text": "Hi", "chat": "true", "reply": "Hello there"})
    assert r.status_code == 200, r.text
    ids, _ = client.tok.render_chat([{"role": "user", "content": "Hi"}], add_generation_prompt=True)
    assert [t["id"] for t in r.json()["tokens"]] == list(ids) + client.tok.encode("Hello there")


@pytest.mark.parametrize("params, names", [
    ({}, "text"), ({"text": "x", "top": 0}, "0"), ({"text": "x", "reply": "y"}, "chat=true"),
    ({"text": "a " * (MAX_TRACE_TOKENS + 5)}, str(MAX_TRACE_TOKENS)), ({"text": "x" * 10_000}, "10000 characters"),
])
def test_bad_trace_requests_are_400s_that_say_why(client, params, names):
    r = client.get("/v1/trace", params=params)
    assert r.status_code == 400, r.text
    assert names in r.json()["error"]["message"]


def test_vendored_scripts_are_served_and_nothing_else(client):
    r = client.get("/static/vendor/purify.min.js")
    assert r.status_code == 200 and "DOMPurify" in r.text
    assert client.get("/static/vendor/marked.umd.js").status_code == 200
    for name in ("../server.py", "missing.js", "..%2Fserver.py"):
        assert client.get(f"/static/vendor/{name}").status_code == 404
    page = client.get("/").text
    assert "/static/vendor/marked.umd.js" in page and "https://" not in page.split("<script>")[0]
