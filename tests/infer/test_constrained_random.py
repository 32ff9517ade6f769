"""Property test: over random schemas, random walks through the allowed tokens of the real
SmolLM2 vocabulary never hit a dead end and always end in JSON that validates."""

import json

import jsonschema
from constrained_helpers import random_walk, smollm2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ember.infer.constrained import json_schema

KEY = st.text(alphabet='abé中 "\\', min_size=1, max_size=4)
SCALAR = st.one_of(
    st.integers(-1000, 1000), st.booleans(), st.none(), st.text(alphabet="ab中😀\n", max_size=3),
    st.floats(-100, 100, allow_nan=False).map(lambda x: round(x, 2)),
)


@st.composite
def string_schema(draw):
    s = {"type": "string"}
    if draw(st.booleans()):
        s["maxLength"] = draw(st.integers(0, 6))
        s["minLength"] = draw(st.integers(0, s["maxLength"]))
    return s


LEAF = st.one_of(
    string_schema(),
    st.sampled_from([{"type": "integer"}, {"type": "number"}, {"type": "boolean"}, {"type": "null"}, {}]),
    st.lists(SCALAR, min_size=1, max_size=3, unique_by=json.dumps).map(lambda v: {"enum": v}),
    SCALAR.map(lambda v: {"const": v}),
)


@st.composite
def object_schema(draw, children):
    props = draw(st.dictionaries(KEY, children, max_size=3))
    required = [k for k in props if draw(st.booleans())]
    return {"type": "object", "properties": props, "required": required}


@st.composite
def array_schema(draw, children):
    s = {"type": "array", "items": draw(children)}
    if draw(st.booleans()):
        s["minItems"] = draw(st.integers(0, 2))
        s["maxItems"] = draw(st.integers(s["minItems"], 3))
    return s


def extend(children):
    return st.one_of(
        object_schema(children),
        array_schema(children),
        st.lists(children, min_size=2, max_size=3).map(lambda b: {"anyOf": b}),
    )


SCHEMA = st.recursive(LEAF, extend, max_leaves=6)


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(schema=SCHEMA, seed=st.integers(0, 2**16))
def test_random_walks_end_in_valid_json(schema, seed):
    g = json_schema(schema, smollm2())
    text = random_walk(g.start(), seed, n_random=10)
    jsonschema.validate(json.loads(text), schema)
