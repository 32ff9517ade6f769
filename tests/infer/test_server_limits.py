"""`ember serve` against clients that send too much or the wrong thing: bodies over the
limit are refused unread, big requests are worked off the event loop (so /health keeps
answering), and every mistake is a 4xx in OpenAI's shape that names the real problem."""

import json
import socket
import threading
import time
import types
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from infer_helpers import make_tokenizer, serve_tiny

MODEL = "tiny-smollm2"
LIMIT = 64 * 1024
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, "temperature": 0}


@pytest.fixture(scope="module")
def srv():
    s = serve_tiny(make_tokenizer(), max_batch_size=2, max_queue=4, max_body_bytes=LIMIT)
    s.http = httpx.Client(base_url=s.url, timeout=10)
    yield s
    s.http.close()
    s.close()


def _raw(srv, head: bytes, *parts: bytes, timeout: float = 5.0) -> tuple[int, dict]:
    """Send a hand-made request (head, then parts, and nothing more: the socket stays open
    for writing) and read the answer up to its end."""
    with socket.create_connection(("127.0.0.1", srv.port), timeout=timeout) as sock:
        sock.sendall(head)
        for p in parts:
            sock.sendall(p)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    header, _, body = data.partition(b"\r\n\r\n")
    return int(header.split()[1]), json.loads(body)


def _error(r, status: int) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    return err


# ---- item: the body limit ------------------------------------------------------------------


def test_a_body_declared_over_the_limit_is_413_before_any_of_it_is_sent(srv):
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n"
    status, body = _raw(srv, head)  # not one byte of the body: the answer must not wait for it
    assert status == 413
    err = body["error"]
    assert err["code"] == "request_too_large" and "1000000000" in err["message"] and str(LIMIT) in err["message"]


def test_a_chunked_body_is_cut_off_once_it_passes_the_limit(srv):
    head = b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunk = b"%x\r\n%s\r\n" % (8192, b" " * 8192)
    # Past the limit by one chunk, and never the final zero-length chunk: only a server that
    # counts as it reads can answer.
    status, body = _raw(srv, head, *[chunk] * (LIMIT // 8192 + 1))
    assert status == 413 and body["error"]["code"] == "request_too_large"


def test_a_body_under_the_limit_is_served_and_413s_are_counted(srv):
    r = srv.http.post("/tokenize", json={"prompt": "hello " * (LIMIT // 8)})
    assert r.status_code == 200 and r.json()["count"] == 6 * (LIMIT // 8)
    status, _ = _raw(srv, b"POST /tokenize HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (LIMIT + 1))
    assert status == 413
    assert 'ember_requests_total{endpoint="/tokenize",status="413"}' in srv.http.get("/metrics").text


def test_a_client_that_leaves_mid_body_counts_as_499_not_500(srv):
    with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as sock:
        sock.sendall(b"POST /tokenize HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"prompt\"")
    deadline = time.monotonic() + 5
    while 'endpoint="/tokenize",status="499"' not in srv.http.get("/metrics").text:
        assert time.monotonic() < deadline, srv.http.get("/metrics").text
        time.sleep(0.02)
    assert 'endpoint="/tokenize",status="500"' not in srv.http.get("/metrics").text


# ---- item: CPU work off the event loop ------------------------------------------------------


class Gate:
    """Wraps a function so that each call announces itself and then waits to be released:
    a stand-in for a slow parse / template / tokenizer that makes the test deterministic."""

    def __init__(self, fn):
        self.fn, self.entered, self.release = fn, threading.Semaphore(0), threading.Event()

    def __call__(self, *a, **kw):
        self.entered.release()
        self.release.wait(10)
        return self.fn(*a, **kw)

    def wait_entered(self, n: int, timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        return all(self.entered.acquire(timeout=max(0.0, deadline - time.monotonic())) for _ in range(n))


def _gate(monkeypatch, srv, where: str) -> Gate:
    tok = srv.app.state.ember.tokenizer
    if where == "json":  # the body parser of every endpoint
        import ember.infer.protocol as protocol

        gate = Gate(json.loads)
        monkeypatch.setattr(protocol, "json", types.SimpleNamespace(loads=gate, dumps=json.dumps, JSONDecodeError=json.JSONDecodeError))
    else:
        gate = Gate(getattr(tok, where))
        monkeypatch.setattr(tok, where, gate)
    return gate


@pytest.mark.parametrize(
    ("where", "path", "body"),
    [
        ("json", "/v1/chat/completions", CHAT),
        ("json", "/v1/completions", {"model": MODEL, "prompt": "Hi", "max_tokens": 1}),
        ("json", "/detokenize", {"tokens": [72, 105]}),
        ("render_chat", "/v1/chat/completions", CHAT),
        ("render_chat", "/tokenize", {"messages": CHAT["messages"]}),
        ("encode", "/v1/completions", {"model": MODEL, "prompt": "Hi", "max_tokens": 1}),
        ("encode", "/tokenize", {"prompt": "Hi"}),
        ("decode", "/detokenize", {"tokens": [72, 105]}),
        ("decode", "/v1/completions", {"model": MODEL, "prompt": [72, 105], "max_tokens": 1, "echo": True}),
    ],
)
def test_health_answers_while_requests_are_parsed_and_tokenized(srv, monkeypatch, where, path, body):
    gate = _gate(monkeypatch, srv, where)
    with ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(srv.http.post, path, json=body) for _ in range(3)]
        try:
            # On the event loop the first call would block every other request, these
            # included: three at once in the gate means they run in worker threads.
            assert gate.wait_entered(3), "the slow step runs on the event loop"
            t0 = time.perf_counter()
            assert srv.http.get("/health", timeout=2).json()["status"] == "ok"
            assert time.perf_counter() - t0 < 1.0
        finally:
            gate.release.set()
        assert [f.result().status_code for f in futures] == [200] * 3


# ---- item: honest 4xx ---------------------------------------------------------------------------


def test_a_request_that_can_never_fit_the_queue_is_400_not_503(srv):
    r = srv.http.post("/v1/completions", json={"model": MODEL, "prompt": ["a", "b", "c"], "n": 2, "max_tokens": 1})
    err = _error(r, 400)
    assert err["param"] == "prompt" and all(s in err["message"] for s in ("6", "3 prompts", "n=2", "4"))
    err = _error(srv.http.post("/v1/chat/completions", json={**CHAT, "n": 5}), 400)
    assert err["param"] == "n" and "5" in err["message"] and "4" in err["message"]


def test_503_only_when_the_request_fits_an_empty_queue_but_not_the_current_one(srv):
    state = srv.app.state.ember
    state.in_flight += 3  # as if three sequences were running (deterministic, no timing)
    try:
        r = srv.http.post("/v1/chat/completions", json={**CHAT, "n": 2})
        assert _error(r, 503)["type"] == "server_error"
        _error(srv.http.post("/v1/chat/completions", json={**CHAT, "n": 5}), 400)  # never fits
        assert srv.http.post("/v1/chat/completions", json=CHAT).status_code == 200  # 3 + 1 fits
    finally:
        state.in_flight -= 3


@pytest.mark.parametrize(
    ("path", "patch", "param", "words"),
    [
        ("/v1/chat/completions", {"stop": ["x"] * 20}, "stop", ["stop: at most 16 sequences, got 20"]),
        ("/v1/completions", {"prompt": []}, "prompt", ["empty"]),
        ("/v1/completions", {"prompt": [[]]}, "prompt[0]", ["at least 1"]),
        ("/v1/completions", {"prompt": [1, "a"]}, "prompt[1]", ["integer"]),
        ("/v1/chat/completions", {"stop": ["a", 5]}, "stop[1]", ["string"]),
        ("/v1/chat/completions", {"stop": 3}, "stop", ["a string", "an array"]),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": 5}]}, "messages[0].content",
         ["a string", "an array"]),
        ("/v1/chat/completions", {"logit_bias_typo": 1}, "logit_bias_typo", ["Unrecognized"]),
        ("/v1/chat/completions", {"model": None}, "model", ["string"]),
    ],
)
def test_validation_errors_name_the_real_problem(srv, path, patch, param, words):
    base = CHAT if "chat" in path else {"model": MODEL, "prompt": "Hi", "max_tokens": 1}
    err = _error(srv.http.post(path, json={**base, **patch}), 400)
    assert err["param"] == param and all(w in err["message"] for w in words), err
    assert "valid string" not in err["message"] or "string" in words


def test_missing_and_non_object_bodies(srv):
    err = _error(srv.http.post("/v1/completions", json={"prompt": "Hi"}), 400)
    assert err["param"] == "model" and "Missing required parameter" in err["message"]
    assert "JSON object" in _error(srv.http.post("/v1/completions", json=[1, 2]), 400)["message"]
    assert "empty" in _error(srv.http.post("/tokenize", content=b""), 400)["message"]
    assert "UTF-8" in _error(srv.http.post("/tokenize", content=b'{"prompt": "\xff"}'), 400)["message"]
    assert "deeply" in _error(srv.http.post("/tokenize", content=b"[" * 50_000), 400)["message"]


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [  # JSON may spell a lone UTF-16 surrogate; it is no character, so no text can hold it
        ("/v1/completions", {"model": "\ud800", "prompt": "a", "max_tokens": 1}, "model"),
        ("/v1/completions", {"model": MODEL, "prompt": "a\udc00", "echo": True, "max_tokens": 1}, "prompt"),
        ("/v1/completions", {"model": MODEL, "prompt": ["a", "\udc00"], "max_tokens": 1}, "prompt[1]"),
        ("/v1/chat/completions", {**CHAT, "messages": [{"role": "user", "content": "\ud83d"}]}, "messages[0].content"),
        ("/v1/chat/completions", {**CHAT, "stop": ["\ud800"]}, "stop[0]"),
        ("/tokenize", {"prompt": "\udfff"}, "prompt"),
    ],
)
def test_lone_surrogates_are_400_naming_the_field(srv, path, body, param):
    raw = json.dumps(body)  # ensure_ascii writes each surrogate as a \uXXXX escape
    err = _error(srv.http.post(path, content=raw, headers={"content-type": "application/json"}), 400)
    assert err["param"] == param and "surrogate" in err["message"]


def test_a_paired_surrogate_escape_is_an_ordinary_character(srv):
    raw = json.dumps({"prompt": "🚀"})  # '{"prompt": "\ud83d\ude80"}', as Python's json writes it
    r = srv.http.post("/tokenize", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 200 and r.json()["tokens"] == list("🚀".encode())


def test_an_engine_that_fails_on_a_request_answers_500_and_keeps_serving(srv, monkeypatch):
    engine = srv.app.state.ember.engine
    real = engine.add_request

    def once(*a, **kw):
        monkeypatch.setattr(engine, "add_request", real)
        raise RuntimeError("boom")

    monkeypatch.setattr(engine, "add_request", once)
    err = _error(srv.http.post("/v1/chat/completions", json=CHAT), 500)
    assert "RuntimeError" in err["message"]
    assert srv.http.post("/v1/chat/completions", json=CHAT).status_code == 200  # the engine thread lives


def test_create_app_refuses_a_bad_body_limit():
    from ember.infer.server import create_app

    with pytest.raises(ValueError, match="max_body_bytes"):
        create_app(object(), "m", max_body_bytes=0)
