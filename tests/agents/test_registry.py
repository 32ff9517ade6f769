"""@tool: JSON Schema from type hints and docstrings; Toolbox: validation, errors as
observations, the side-effect gate."""

from dataclasses import dataclass
from typing import Literal, Optional, TypedDict

import jsonschema
import pytest

from ember.agents.registry import Tool, Toolbox, json_schema, parse_docstring, requested_tools, tool


class Address(TypedDict):
    city: str
    zip: int


@dataclass
class Box:
    width: float
    label: str = "box"


@tool
def ship(address: Address, boxes: list[Box], speed: Literal["slow", "fast"] = "slow",
         note: Optional[str] = None,  # noqa: UP045 (typing.Optional is supported too)
         tags: dict[str, int] | None = None, insured: bool = False) -> dict:
    """Ship boxes to an address.

    More words that are not the summary.

    Args:
        address: where to, with its
            postal code.
        boxes: what to ship.
        speed (str): how fast.
    """
    return {"city": address["city"], "widths": [b.width for b in boxes], "labels": [b.label for b in boxes],
            "types": sorted({type(b).__name__ for b in boxes}), "speed": speed, "note": note}


def test_the_spec_of_a_typed_documented_function():
    spec = ship.spec()
    assert spec["type"] == "function"
    fn = spec["function"]
    assert fn["name"] == "ship" and fn["description"] == "Ship boxes to an address."
    p = fn["parameters"]
    assert p["required"] == ["address", "boxes"] and p["additionalProperties"] is False
    props = p["properties"]
    assert props["address"] == {"type": "object", "properties": {"city": {"type": "string"}, "zip": {"type": "integer"}},
                                "required": ["city", "zip"], "additionalProperties": False,
                                "description": "where to, with its postal code."}
    assert props["boxes"]["items"]["required"] == ["width"]
    assert props["boxes"]["items"]["properties"]["width"] == {"type": "number"}
    assert props["speed"] == {"type": "string", "enum": ["slow", "fast"], "description": "how fast.", "default": "slow"}
    assert props["note"]["anyOf"] == [{"type": "string"}, {"type": "null"}]
    assert props["tags"]["anyOf"][0] == {"type": "object", "additionalProperties": {"type": "integer"}}
    assert props["insured"] == {"type": "boolean", "default": False}
    jsonschema.Draft202012Validator.check_schema(p)


def test_the_decorated_function_still_runs_directly():
    out = ship({"city": "Osk", "zip": 1}, [Box(2.0)])
    assert out["city"] == "Osk" and out["widths"] == [2.0]


def test_valid_arguments_are_converted_and_run():
    box = Toolbox([ship])
    out = box.call("ship", '{"address": {"city": "Osk", "zip": 7}, "boxes": [{"width": 2}, {"width": 1.5, "label": "b"}],'
                           ' "speed": "fast"}')
    assert '"widths": [2.0, 1.5]' in out and '"types": ["Box"]' in out and '"labels": ["box", "b"]' in out


@pytest.mark.parametrize("args, message", [
    ({"boxes": []}, "'address' is a required property"),
    ({"address": {"city": "Osk", "zip": "x"}, "boxes": []}, "'x' is not of type 'integer' (at address.zip)"),
    ({"address": {"city": "Osk", "zip": 1}, "boxes": [], "speed": "warp"}, "'warp' is not one of ['slow', 'fast']"),
    ({"address": {"city": "Osk", "zip": 1}, "boxes": [{"label": "a"}]}, "'width' is a required property"),
    ({"address": {"city": "Osk", "zip": 1}, "boxes": [], "colour": "red"}, "Additional properties are not allowed"),
    ('{"address": ', "not valid JSON"),
    ([1, 2], "is not of type 'object'"),
])
def test_schema_violations_come_back_as_observations(args, message):
    out = Toolbox([ship]).call("ship", args)
    assert out.startswith("error: ") and message in out


def test_unknown_tools_and_tool_errors_are_observations():
    @tool
    def boom(x: int) -> str:
        """Fail."""
        raise RuntimeError(f"broke on {x}")

    box = Toolbox([boom])
    assert box.call("nope", {}) == 'error: unknown tool "nope" (available: boom)'
    assert box.call("boom", {"x": 3}) == "error: boom failed (RuntimeError: broke on 3)"


def test_long_observations_are_truncated():
    @tool
    def long() -> str:
        """Talk a lot."""
        return "y" * 10_000

    out = Toolbox([long]).call("long", {})
    assert len(out) < 4100 and out.endswith("[truncated, 10000 characters]")


def test_docstring_parsing():
    assert parse_docstring("Summary line\ncontinued.\n\nArgs:\n    a: first.\n    b (int): second,\n        more.\n\nReturns:\n    x") \
        == ("Summary line continued.", {"a": "first.", "b": "second, more."})
    assert parse_docstring("") == ("", {})


@pytest.mark.parametrize("bad, message", [
    (set[int], "no JSON Schema for the type"), (dict[int, str], "keys are strings"), (bytes, "no JSON Schema"),
])
def test_unsupported_types_are_errors(bad, message):
    with pytest.raises(ValueError, match=message):
        json_schema(bad)


def test_bad_tool_definitions_are_errors():
    with pytest.raises(ValueError, match="needs a docstring"):
        tool(lambda x: x)
    with pytest.raises(ValueError, match="has no type hint"):
        @tool
        def f(x):
            """Doc."""
    with pytest.raises(ValueError, match=r"cannot take \*args"):
        @tool
        def g(*args: int):
            """Doc."""
    with pytest.raises(ValueError, match="not a tool"):
        Toolbox([print])
    with pytest.raises(ValueError, match="two tools are named 'ship'"):
        Toolbox([ship, ship])


# ---- the side-effect gate ----------------------------------------------------------------


def _deleter(log):
    @tool(side_effects=True)
    def delete_file(path: str) -> str:
        """Delete a file.

        Args:
            path: the file.
        """
        log.append(path)
        return f"deleted {path}"

    return delete_file


def test_a_side_effect_tool_runs_only_when_allowed_or_confirmed():
    log = []
    delete_file = _deleter(log)
    assert isinstance(delete_file, Tool) and delete_file.side_effects
    refused = Toolbox([delete_file]).call("delete_file", {"path": "a"})
    assert refused.startswith("error: delete_file has side effects") and log == []
    assert Toolbox([delete_file], allow={"delete_file"}).call("delete_file", {"path": "b"}) == "deleted b"
    asked = []
    no = Toolbox([delete_file], confirm=lambda n, a: asked.append((n, a)) or False)
    assert no.call("delete_file", {"path": "c"}).startswith("error:") and asked == [("delete_file", {"path": "c"})]
    yes = Toolbox([delete_file], confirm=lambda n, a: True)
    assert yes.call("delete_file", {"path": "d"}) == "deleted d"
    assert log == ["b", "d"]
    with pytest.raises(ValueError, match="allow names unknown tools: rm"):
        Toolbox([delete_file], allow={"rm"})


def test_requested_tools_reads_only_whole_names():
    log = []
    tools = [_deleter(log)]
    assert requested_tools("please delete_file old.txt", tools) == {"delete_file"}
    assert requested_tools("do not undelete_files anything", tools) == set()
    assert requested_tools("delete the file", tools) == set()
