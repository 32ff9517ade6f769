"""`ember serve` with speculative decoding: a lone request drafts (here with a draft model
equal to the served one, so every draft is kept), and its replies, plain or streamed, are
the engine's plain greedy reply; a seeded sampled request repeats itself."""

import copy
import json

import pytest
import torch
from infer_helpers import LiveServer

from ember.infer import Engine, SamplingParams
from ember.infer.draft import ModelDrafter
from ember.infer.server import create_app
from ember.model import ModelConfig, Transformer

MODEL, CTX = "tiny-smollm2", 256


@pytest.fixture(scope="module")
def served(smollm2_tokenizer):
    import httpx

    torch.manual_seed(0)
    model = Transformer(ModelConfig.tiny(vocab_size=smollm2_tokenizer.vocab_size, max_seq_len=CTX)).eval()
    drafter = ModelDrafter(copy.deepcopy(model), k=3)
    srv = LiveServer(create_app(Engine(model, smollm2_tokenizer, max_batch_size=4, max_seq_len=CTX,
                                       speculative=drafter), MODEL))
    http = httpx.Client(base_url=srv.url, timeout=30)
    yield model, smollm2_tokenizer, drafter, http
    http.close()
    srv.close()


def chat(http, **kw):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Tell me about lighthouses"}], **kw}
    r = http.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["message"]["content"]


def test_a_lone_greedy_request_drafts_and_replies_as_plain_greedy(served):
    model, tok, drafter, http = served
    text = chat(http, temperature=0, max_tokens=24)
    ids, _ = tok.render_chat([{"role": "user", "content": "Tell me about lighthouses"}], add_generation_prompt=True)
    plain = Engine(model, tok, max_batch_size=1, max_seq_len=CTX).generate(
        [ids], SamplingParams(temperature=0, max_tokens=24))[0]
    assert drafter.owner is not None  # the served request went through the drafter
    assert text == plain.text
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Tell me about lighthouses"}],
            "temperature": 0, "max_tokens": 24, "stream": True}
    with http.stream("POST", "/v1/chat/completions", json=body) as resp:
        lines = [ln[6:] for ln in resp.iter_lines() if ln.startswith("data: ") and ln != "data: [DONE]"]
    streamed = "".join(json.loads(ln)["choices"][0]["delta"].get("content") or "" for ln in lines)
    assert streamed == plain.text


def test_a_seeded_sampled_request_repeats_itself(served):
    _, _, _, http = served
    a, b = (chat(http, temperature=0.8, seed=7, max_tokens=16) for _ in range(2))
    assert a == b and a
