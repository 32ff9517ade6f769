"""Constrained decoding on the real SmolLM2 tokenizer: JSON schema features, UTF-8 split
across tokens, tokens spanning several JSON pieces, masks equal to brute force, errors."""

import json

import jsonschema
import pytest
import torch
from constrained_helpers import brute_mask, random_walk, smollm2

from ember.infer.constrained import choice, json_object, json_schema, regex


def feed_text(c, text: str):
    """Advance c through the tokenizer's own encoding of text, checking each mask."""
    tok = smollm2()
    for t in tok.encode(text):
        assert c.allowed()[t], f"{tok.id_to_bytes(t)!r} refused after {c.text()!r}"
        c.advance(t)
    return c


def accepts(grammar, text: str) -> bool:
    return grammar.matches(text)


PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "email": {"type": "string"},
        "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 2},
        "address": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
    "required": ["name", "age"],
}


@pytest.mark.parametrize("text,ok", [
    ('{"name": "Bob", "age": 42}', True),
    ('{"name":"Bob","age":-7,"tags":["a", "b"]}', True),
    ('{"name": "Bob", "age": 42, "address": {"city": "Paris"}}', True),
    ('{"name": "Bob"}', False),  # age is required
    ('{"age": 42, "name": "Bob"}', False),  # properties come in schema order
    ('{"name": "Bob", "age": 4.5}', False),  # integer
    ('{"name": "Bob", "age": 42, "tags": ["c"]}', False),  # enum
    ('{"name": "Bob", "age": 42, "tags": ["a", "a", "a"]}', False),  # maxItems
    ('{"name": "Bob", "age": 42, "zzz": 1}', False),  # no undeclared keys
    ('{"name": "Bob",  "age": 42}', False),  # at most one space
    ('{"name": "Bob", "age": 0123}', False),  # no leading zeros
])
def test_schema_accepts_exactly_valid_documents(text, ok):
    assert accepts(json_schema(PERSON, smollm2()), text) is ok


def test_token_path_multibyte_utf8_and_spanning_tokens():
    tok = smollm2()
    text = '{"name": "é中😀 naïve", "age": 3, "address": {"city": "東京"}}'
    pieces = [tok.id_to_bytes(t) for t in tok.encode(text)]
    assert any(len(p) > 1 and p.count(b'"') == 1 and not p.startswith(b'"') for p in pieces)  # e.g. '":'
    assert any(b"\xf0" in p and len(p) < 4 for p in pieces)  # the emoji is split across tokens
    c = feed_text(json_schema(PERSON, tok).start(), text)
    assert c.done and c.text() == text
    assert json.loads(c.text())["name"] == "é中😀 naïve"


def test_eos_only_when_complete_and_done_after_root_closes():
    tok = smollm2()
    eos = sorted(tok.eos_token_ids)
    c = json_schema({"type": "integer"}, tok).start()
    assert not c.allowed()[eos].any()
    feed_text(c, "12")
    assert c.allowed()[eos].all() and not c.done  # more digits may follow
    c.advance(eos[0])
    assert c.done
    obj = feed_text(json_schema(PERSON, tok).start(), '{"name": "x", "age": 1')
    assert not obj.allowed()[eos].any()
    feed_text(obj, "}")
    assert obj.done


def test_invalid_token_is_a_value_error():
    tok = smollm2()
    c = json_schema(PERSON, tok).start()
    with pytest.raises(ValueError, match="does not continue"):
        c.advance(tok.encode("hello")[0])
    with pytest.raises(ValueError, match="special"):
        c.advance(tok.special_tokens["<|im_start|>"])
    with pytest.raises(ValueError, match="before the output is complete"):
        c.advance(sorted(tok.eos_token_ids)[0])


@pytest.mark.parametrize("prefix", [
    '{"name": "abc',  # free string: the precomputed fast path
    '{"name": "ab\\',  # inside an escape
    '{"name": "a\u00e9'[:-1] + "\u00e9",  # after a complete 2-byte character
    '{"name": "x", "age": 4',  # inside a number: ends by , or }
    '{"name": "x", "age": 4, "tags": [',
    '{"name": "x", "age": 4, "address": {"city": "P"}',  # the optional key chosen, now close
])
def test_allowed_equals_brute_force(prefix):
    c = feed_text(json_schema(PERSON, smollm2()).start(), prefix)
    assert torch.equal(c.allowed(), brute_mask(c))


def test_mask_mid_utf8_character():
    tok = smollm2()
    c = json_schema({"type": "string"}, tok).start()
    c.advance(tok.encode('"')[0])
    c.advance(tok.encode("😀")[0])  # the emoji's first token ends inside the character
    assert c.text() == '"'  # the unfinished character is held back
    m = c.allowed()
    assert torch.equal(m, brute_mask(c))
    assert not m[tok.encode('"')[0]]  # a quote cannot cut a character in half


@pytest.mark.parametrize("schema,good,bad", [
    ({"enum": ["red", "green", 3, None]}, ['"red"', "3", "null"], ['"blue"', '"re"']),
    ({"const": {"a": [1, 2]}}, ['{"a": [1, 2]}'], ['{"a": [1]}']),
    ({"anyOf": [{"type": "integer"}, {"type": "string", "maxLength": 2}]}, ["12", '"ab"'], ['"abc"', "1.5"]),
    ({"type": ["null", "boolean"]}, ["null", "true", "false"], ["0"]),
    ({"type": "array", "items": {"type": "number"}, "minItems": 1, "maxItems": 2},
     ["[1.5e3]", "[0, -2.25]"], ["[]", "[1, 2, 3]"]),
    ({"type": "string", "minLength": 2, "maxLength": 3}, ['"ab"', '"中文字"'], ['"a"', '"abcd"']),
    ({"type": "object", "properties": {"n": {"$ref": "#/$defs/node"}},
      "$defs": {"node": {"type": "object", "properties": {"next": {"$ref": "#/$defs/node"}}}}},
     ['{"n": {"next": {"next": {}}}}', "{}"], ['{"n": {"x": 1}}']),
    ({"type": "object", "additionalProperties": {"type": "integer"}}, ['{"x": 1, "y": 2}'], ['{"x": "s"}']),
    ({"type": "number", "minimum": 0, "maximum": 10}, ["5"], ['"5"']),  # bounds ignored, type kept
])
def test_schema_keywords(schema, good, bad):
    g = json_schema(schema, smollm2())
    for text in good:
        assert accepts(g, text), text
        jsonschema.validate(json.loads(text), schema)
    for text in bad:
        assert not accepts(g, text), text


def test_json_object_accepts_any_object_and_only_objects():
    g = json_object(smollm2())
    assert accepts(g, '{"a": [1, {"b": null}], "c": "é", "d": -0.5e-3, "e": true}')
    assert not accepts(g, "[1]") and not accepts(g, '"x"') and not accepts(g, "{'a': 1}")


def test_json_object_random_walks_parse():
    for seed in range(3):
        text = random_walk(json_object(smollm2()).start(), seed)
        assert isinstance(json.loads(text), dict)


@pytest.mark.parametrize("schema,where", [
    ({"type": "string", "pattern": "a+"}, "'pattern'"),
    ({"type": "object", "properties": {"x": {"allOf": [{}]}}}, "#/properties/x"),
    ({"type": "strange"}, "unknown type 'strange'"),
    ({"type": "object", "properties": {"a": {}}, "required": ["b"]}, "undeclared properties"),
    ({"$ref": "https://example.com/s.json"}, "only local"),
    ({"enum": []}, "enum must be a non-empty list"),
    ({"anyOf": [{"$ref": "#"}, {"type": "null"}]}, "refers back to itself"),
])
def test_unsupported_schema_is_a_value_error_naming_the_part(schema, where):
    with pytest.raises(ValueError, match=where.replace("(", r"\(").replace("[", r"\[")):
        json_schema(schema, smollm2())


def test_regex_and_choice():
    tok = smollm2()
    g = regex(r"(yes|no)-\d{2,3}[a-zé]*", tok)
    assert accepts(g, "yes-12") and accepts(g, "no-123ééa")
    assert not accepts(g, "yes-1") and not accepts(g, "maybe-12") and not accepts(g, "no-1234")
    c = feed_text(g.start(), "no-12")
    assert torch.equal(c.allowed(), brute_mask(c))
    ch = choice(["Paris", "Pari", "London 🇬🇧"], tok)
    assert accepts(ch, "Pari") and accepts(ch, "London 🇬🇧") and not accepts(ch, "Lond")
    c = feed_text(ch.start(), "Pari")
    assert c.complete and not c.done  # "Paris" may still follow
    assert feed_text(ch.start(), "Paris").done
    for bad in [r"(?=x)", r"\1", "a{2,1}", "[a-", r"(a"]:
        with pytest.raises(ValueError, match="regex"):
            regex(bad, tok)


def test_grammars_are_cached_by_canonical_arguments():
    tok = smollm2()
    a = json_schema({"type": "object", "properties": {"x": {"type": "integer"}}}, tok)
    b = json_schema({"properties": {"x": {"type": "integer"}}, "type": "object"}, tok)
    assert a is b and a.start() is not a.start()


def test_large_enum_is_one_thread():
    values = [f"item {i}" for i in range(2000)] + ["item", 7]
    g = json_schema({"enum": values}, smollm2())
    assert g.matches('"item 1999"') and g.matches('"item"') and g.matches("7")
    assert not g.matches('"item 2000"')
    c = feed_text(g.start(), '"item 1')
    assert len(c._threads) == 1 and torch.equal(c.allowed(), brute_mask(c))


@pytest.mark.parametrize("pattern,prefix", [
    (".*", ""),  # broad: every token at once on the DFA table
    (r"[a-z ]+\.", "hello wor"),
    ("[^\"]{0,5}x", "ab"),  # bounded: the table's states count characters
    ("(Paris|London)", "Lo"),  # narrow: the trie walk
])
def test_regex_masks_equal_brute_force(pattern, prefix):
    c = feed_text(regex(pattern, smollm2()).start(), prefix)
    assert torch.equal(c.allowed(), brute_mask(c))
