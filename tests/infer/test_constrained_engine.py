"""The engine hook: constrained rows sample only allowed tokens (greedy, temperature,
top-k/p, log-probs of the masked distribution), stop when the constraint is done, and
unconstrained rows beside them are unchanged. The real SmolLM2 greedy-decodes valid JSON."""

import json
import math

import jsonschema
import pytest
from infer_helpers import make_model, make_tokenizer

from ember.infer import Engine, SamplingParams
from ember.infer.constrained import choice, json_schema, parse_tool_calls, regex, tool_calls

SCHEMA = {"type": "object", "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer"}},
          "required": ["ok", "n"]}


@pytest.fixture(scope="module")
def tiny():
    tok = make_tokenizer()
    return Engine(make_model(seed=3), tok, max_batch_size=3), tok


@pytest.mark.parametrize("params", [
    SamplingParams(temperature=0, max_tokens=60),
    SamplingParams(temperature=1.5, seed=7, max_tokens=60),
    SamplingParams(temperature=1.0, top_k=5, top_p=0.9, seed=1, max_tokens=60, repetition_penalty=1.3),
])
def test_random_model_output_is_valid_and_stops(tiny, params):
    engine, tok = tiny
    g = json_schema(SCHEMA, tok)
    r = engine.generate([tok.encode("Answer: ")], params, constraints=[g.start()])[0]
    if r.finish_reason == "stop":
        jsonschema.validate(json.loads(r.text), SCHEMA)
    else:  # out of tokens: still a valid prefix
        assert r.finish_reason == "length" and len(r.token_ids) == 60
        c = g.start()
        for t in r.token_ids:
            assert c.allowed()[t]
            c.advance(t)


def test_logprobs_are_of_the_masked_distribution(tiny):
    engine, tok = tiny
    params = SamplingParams(temperature=0, max_tokens=8, logprobs=3)
    r = engine.generate([tok.encode("x")], params, constraints=[choice(["yes", "no"], tok).start()])[0]
    assert r.text in ("yes", "no") and r.finish_reason == "stop"
    first = r.logprobs[0]
    assert {t for t, lp in first.top if math.isfinite(lp)} <= {ord("y"), ord("n")}
    assert math.isclose(sum(math.exp(lp) for _, lp in first.top if math.isfinite(lp)), 1.0, rel_tol=1e-4)


def test_unconstrained_rows_unchanged_beside_constrained_ones(tiny):
    engine, tok = tiny
    p = SamplingParams(temperature=0, max_tokens=20, ignore_eos=True)
    prompts = [tok.encode("hello"), tok.encode("abc")]
    alone = engine.generate(prompts, p)
    mixed = engine.generate(prompts + [tok.encode("q")], [p, p, p],
                            constraints=[None, None, regex("[0-9]{3}", tok).start()])
    assert [r.token_ids for r in mixed[:2]] == [r.token_ids for r in alone]
    assert len(mixed[2].text) == 3 and mixed[2].text.isdigit()


def test_stream_with_constraint_and_argument_checks(tiny):
    engine, tok = tiny
    chunks = list(engine.stream(tok.encode("go"), SamplingParams(temperature=0, max_tokens=30),
                                constraint=regex("ab?c{2}", tok).start()))
    assert "".join(c.text for c in chunks) in ("acc", "abcc")
    assert chunks[-1].result.finish_reason == "stop"
    with pytest.raises(ValueError, match="1 constraints for 2 prompts"):
        engine.generate([[1], [2]], constraints=[None])


SCHEMAS = [
    ("Give a person as JSON.", {"type": "object", "properties": {
        "name": {"type": "string", "maxLength": 20}, "age": {"type": "integer"}}, "required": ["name", "age"]}),
    ("Is the sky blue? Answer as JSON.", {"type": "object", "properties": {
        "answer": {"enum": ["yes", "no"]}, "confidence": {"type": "number"}}, "required": ["answer", "confidence"]}),
    ("List three colors as JSON.", {"type": "object", "properties": {
        "colors": {"type": "array", "items": {"type": "string", "maxLength": 12}, "minItems": 3, "maxItems": 3}},
        "required": ["colors"]}),
    ("Describe a city as JSON.", {"type": "object", "properties": {
        "city": {"type": "string", "maxLength": 20}, "capital": {"type": "boolean"},
        "location": {"type": "object", "properties": {"country": {"type": "string", "maxLength": 20}},
                     "required": ["country"]}}, "required": ["city", "capital", "location"]}),
    ("Give a number or nothing, as JSON.", {"type": "object", "properties": {
        "value": {"anyOf": [{"type": "integer"}, {"type": "null"}]}}, "required": ["value"]}),
]


@pytest.fixture(scope="module")
def smollm2_engine():
    from ember.model.load import load_model
    from ember.tokenizer import load_tokenizer

    tok = load_tokenizer("smollm2")
    return Engine(load_model("smollm2"), tok, max_batch_size=len(SCHEMAS), batch_invariant=False), tok


def chat(tok, question):
    ids = tok.render_chat([{"role": "user", "content": question}])
    return ids[0] if isinstance(ids, tuple) else ids


def test_smollm2_greedy_json_schema_output_is_valid(smollm2_engine):
    engine, tok = smollm2_engine
    q, schema = SCHEMAS[0]
    r = engine.generate([chat(tok, q)], SamplingParams(temperature=0, max_tokens=32),
                        constraints=[json_schema(schema, tok).start()])[0]
    assert r.finish_reason == "stop", r.text
    jsonschema.validate(json.loads(r.text), schema)


@pytest.mark.slow
def test_smollm2_greedy_five_schemas_and_a_tool_call(smollm2_engine):
    engine, tok = smollm2_engine
    results = engine.generate([chat(tok, q) for q, _ in SCHEMAS], SamplingParams(temperature=0, max_tokens=64),
                              constraints=[json_schema(s, tok).start() for _, s in SCHEMAS])
    for r, (_, schema) in zip(results, SCHEMAS):
        assert r.finish_reason == "stop", r.text
        jsonschema.validate(json.loads(r.text), schema)
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string", "maxLength": 20}}, "required": ["city"]}}}]
    r = engine.generate([chat(tok, "What is the weather in Paris?")], SamplingParams(temperature=0, max_tokens=64),
                        constraints=[tool_calls(tools, tok, parallel=False).start()])[0]
    assert r.finish_reason == "stop", r.text
    content, calls = parse_tool_calls(r.text)
    assert content == "" and [c["name"] for c in calls] == ["get_weather"]
