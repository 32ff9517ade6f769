"""Budget-aware closing: a constraint told how many tokens are left keeps a complete output
reachable, so random walks and an adversarial model that never wants to stop both end in
valid output by max_tokens; the server refuses a max_tokens below the shortest output."""

import json
import random

import jsonschema
import pytest
import torch
from constrained_helpers import smollm2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_constrained_random import SCHEMA
from torch import nn

from ember.infer.constrained import json_schema, parse_tool_calls, regex, tool_calls
from ember.infer.constrained.budget import BIG, min_len, shortest_output, thread_close
from ember.infer.constrained.json_nodes import Arr, Num, Obj, Str
from ember.infer.constrained.nodes import Lit, Repeat, Seq, step_all

WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}, "tags": {"type": "array", "items": {"type": "string"}},
                                     "unit": {"enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "tags", "unit"]}}}
NOTE = {"type": "object", "properties": {"title": {"type": "string", "minLength": 2},
                                         "items": {"type": "array", "items": {"type": "integer"}, "minItems": 1}},
        "required": ["title", "items"]}


def walk(c, max_tokens: int, pick) -> int:
    """Feed c the token pick(mask) chooses, passing the tokens left as the engine does;
    returns the number of tokens taken."""
    n = 0
    while not c.done and n < max_tokens:
        mask = c.allowed(max_tokens - n)
        assert mask.any(), f"dead end after {c.text()!r}"
        c.advance(pick(mask))
        n += 1
    return n


@pytest.mark.parametrize("node, text", [
    (Obj([("a", Arr(Num(), min_items=2), True)]), b'{"a":[0,0]}'),
    (Seq([Lit(b"<x>"), Str(min_len=3), Lit(b"</x>")]), b'<x>"   "</x>'),
    (Repeat(Lit(b"ab"), b", ", lo=3), b"ab, ab, ab"),
])
def test_closing_costs_count_the_shortest_output(node, text):
    assert min_len(node) == len(text)
    assert len(shortest_output([(node.enter()[0],)])) == len(text)


def test_the_closing_cost_falls_by_one_along_the_shortest_output():
    g = tool_calls([WEATHER], smollm2())
    out = g.shortest().encode()
    assert g.matches(g.shortest()) and g.min_bytes == len(out)
    threads = g.initial
    for i, b in enumerate(out):
        threads = step_all(threads, b)
        assert min(thread_close(t) for t in threads) == len(out) - i - 1


@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(schema=SCHEMA, extra=st.integers(0, 24), seed=st.integers(0, 2**16))
def test_random_walks_with_a_small_budget_end_valid(schema, extra, seed):
    g = json_schema(schema, smollm2())
    max_tokens, rng = g.min_bytes + extra, random.Random(seed)
    c = g.start()
    walk(c, max_tokens, lambda m: rng.choice(m.nonzero().flatten().tolist()))
    assert c.complete, (max_tokens, c.text())
    jsonschema.validate(json.loads(c.text()), schema)


def _adversary(vocab):
    """Prefers, in order: a long word (continuing a string), `, "` (another array item),
    a digit; ties go to the lowest id (single bytes)."""
    prefs = [i for i, d in enumerate(vocab.token_bytes) if d == b"ations"]
    prefs += [i for i, d in enumerate(vocab.token_bytes) if d in (b', "', b"7")]

    def pick(mask):
        return next((i for i in prefs if mask[i]), int(mask.nonzero()[0]))
    return pick


@pytest.mark.parametrize("max_tokens", [40, 61, 128])
def test_an_adversary_that_never_closes_ends_a_valid_call_at_max_tokens(max_tokens):
    g = tool_calls([WEATHER], smollm2(), parallel=False)
    c = g.start()
    assert walk(c, max_tokens, _adversary(g.vocab)) == max_tokens
    content, calls = parse_tool_calls(c.text())
    assert c.complete and content == "" and calls[0]["name"] == "get_weather", c.text()
    jsonschema.validate(calls[0]["arguments"], WEATHER["function"]["parameters"])


def test_without_budget_pressure_the_mask_is_unchanged():
    g = json_schema(NOTE, smollm2())
    c, pick = g.start(), _adversary(g.vocab)
    for _ in range(12):
        assert torch.equal(c.allowed(10_000), c.allowed())
        c.advance(pick(c.allowed()))
    assert c.allowed(2).sum() < c.allowed().sum()  # inside a string: only closing tokens


def test_a_budget_below_the_shortest_output_still_moves_towards_the_end():
    g = regex("abcdefgh", smollm2())
    c = g.start()
    mask = c.allowed(1)  # nothing fits: the tokens that get closest
    assert mask.any() and all(len(g.vocab.token_bytes[i]) >= 2 for i in mask.nonzero().flatten().tolist())
    assert thread_close(()) == 0 and BIG > g.min_bytes == 8


class PreferModel(nn.Module):
    """A model over SmolLM2's vocabulary that ignores its input: fixed logits favouring
    `ations` (a string that never ends), then `, "` (an array that keeps growing)."""

    def __init__(self, tok):
        super().__init__()
        from ember.model import ModelConfig

        self.config = ModelConfig.tiny(vocab_size=tok.vocab_size, max_seq_len=512)
        self.row = torch.zeros(tok.vocab_size)
        for rank, text in enumerate(["ations", ', "']):
            self.row[tok.encode(text)[0]] = 20.0 - rank
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, ids, cache=None, input_pos=None, logits_index=None, kv_len=None):
        B, T = ids.shape
        return self.row.expand(B, 1 if logits_index is not None else T, -1).clone()


def test_the_engine_passes_the_budget_and_a_greedy_adversary_ends_valid():
    from ember.infer import Engine, SamplingParams

    tok = smollm2()
    engine = Engine(PreferModel(tok), tok, max_batch_size=2)
    g = json_schema(NOTE, tok)
    rs = engine.generate([tok.encode("Note: ")] * 2, [SamplingParams(temperature=0, max_tokens=m) for m in (30, 90)],
                         constraints=[g.start(), g.start()])
    for r, m in zip(rs, (30, 90)):
        assert len(r.token_ids) == m, r.text
        jsonschema.validate(json.loads(r.text), NOTE)


@pytest.fixture(scope="module")
def live(smollm2_tokenizer):
    from infer_helpers import serve_tiny

    srv = serve_tiny(smollm2_tokenizer, max_batch_size=1)
    yield srv
    srv.close()


@pytest.mark.parametrize("extra", [
    {"tools": [WEATHER], "tool_choice": "required"},
    {"response_format": {"type": "json_schema", "json_schema": {"name": "note", "schema": NOTE}}},
])
def test_the_server_refuses_a_max_tokens_below_the_shortest_valid_output(live, extra):
    import httpx

    body = {"model": "tiny-smollm2", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, **extra}
    r = httpx.post(live.url + "/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == "max_tokens" and "max_tokens 5 is below the" in err["message"], err
    r = httpx.post(live.url + "/v1/chat/completions", json=body | {"max_tokens": 40, "temperature": 0}, timeout=60)
    assert r.status_code == 200, r.text
