"""JSON Schema → matcher nodes.

Supported: `type` (string, number, integer, boolean, null, object, array, or a list of
them), `properties` + `required` (properties come out in the schema's order; optional ones
may be left out; no other keys are produced unless the object declares no properties and
`additionalProperties` is not false, then any keys with values of the
`additionalProperties` schema or any JSON), `items`, `minItems`/`maxItems`, `enum`,
`const`, `anyOf` (and `oneOf` treated as `anyOf`: the output matches at least one branch),
`minLength`/`maxLength`, local `$ref` into `$defs`/`definitions` (recursion allowed), and
`{}` / `true` for any value. `minimum`/`maximum`, `format` and annotations are ignored: the
type is still respected. Keywords that would constrain in ways the matcher cannot follow
(`pattern`, `allOf`, `not`, `prefixItems`, ...) are a ValueError naming the keyword and
where it sits in the schema.

>>> node = compile_schema({"type": "object", "properties": {"a": {"type": "integer"}}})
>>> type(node).__name__
'Obj'
"""

from __future__ import annotations

from .json_nodes import Arr, Num, Obj, Str, any_value, literal
from .nodes import Alt, Lit, LitSet, Node, Ref

UNSUPPORTED = (
    "pattern", "allOf", "not", "if", "then", "else", "prefixItems", "patternProperties",
    "uniqueItems", "contains", "minContains", "maxContains", "minProperties", "maxProperties",
    "dependentRequired", "dependentSchemas", "propertyNames", "multipleOf", "unevaluatedItems",
    "unevaluatedProperties", "$dynamicRef", "additionalItems",
)
TYPES = ("string", "number", "integer", "boolean", "null", "object", "array")


class _Compiler:
    def __init__(self, root_schema):
        self.root = root_schema
        self.refs: dict[str, Ref] = {}

    def fail(self, path: str, what: str):
        return ValueError(f"unsupported JSON schema at {path or '#'}: {what}")

    def node(self, s, path: str = "#") -> Node:
        if s is True or s == {}:
            return any_value()
        if not isinstance(s, dict):
            raise self.fail(path, f"a schema must be an object or true, got {s!r}")
        for key in UNSUPPORTED:
            if key in s:
                raise self.fail(path, f"the keyword {key!r} is not supported")
        if "$ref" in s:
            return self.ref(s["$ref"], path)
        if "const" in s:
            return literal(s["const"])
        if "enum" in s:
            values = s["enum"]
            if not isinstance(values, list) or not values:
                raise self.fail(path, f"enum must be a non-empty list, got {values!r}")
            return LitSet([literal(v).data for v in values])
        for key in ("anyOf", "oneOf"):
            if key in s:
                branches = s[key]
                if not isinstance(branches, list) or not branches:
                    raise self.fail(path, f"{key} must be a non-empty list")
                base = {k: v for k, v in s.items() if k != key}
                return Alt([self.node(b if not _typed(base) else {**base, **b}, f"{path}/{key}/{i}")
                            for i, b in enumerate(branches)])
        t = s.get("type")
        if t is None:
            t = "object" if "properties" in s else "array" if "items" in s else None
        if t is None:
            return any_value()
        if isinstance(t, list):
            if not t:
                raise self.fail(path, "type must not be an empty list")
            return Alt([self.typed(s, x, path) for x in t])
        return self.typed(s, t, path)

    def typed(self, s: dict, t, path: str) -> Node:
        if t not in TYPES:
            raise self.fail(path, f"unknown type {t!r} (expected one of {', '.join(TYPES)})")
        if t == "string":
            lo, hi = s.get("minLength", 0), s.get("maxLength")
            if not isinstance(lo, int) or lo < 0 or (hi is not None and (not isinstance(hi, int) or hi < lo)):
                raise self.fail(path, f"bad minLength/maxLength {lo!r}/{hi!r}")
            return Str(lo, hi)
        if t in ("number", "integer"):
            return Num(integer=t == "integer")
        if t == "boolean":
            return Alt([Lit(b"true"), Lit(b"false")])
        if t == "null":
            return Lit(b"null")
        if t == "array":
            lo, hi = s.get("minItems", 0), s.get("maxItems")
            if not isinstance(lo, int) or lo < 0 or (hi is not None and (not isinstance(hi, int) or hi < lo)):
                raise self.fail(path, f"bad minItems/maxItems {lo!r}/{hi!r}")
            item = self.node(s.get("items", True), f"{path}/items")
            return Arr(item, lo, float("inf") if hi is None else hi)
        return self.obj(s, path)

    def obj(self, s: dict, path: str) -> Node:
        props = s.get("properties")
        required = s.get("required", [])
        if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
            raise self.fail(path, f"required must be a list of names, got {required!r}")
        extra = s.get("additionalProperties", True)
        if props is None or props == {}:
            missing = [r for r in required]
            if missing:
                raise self.fail(path, f"required {missing} names properties the schema does not declare")
            if extra is False:
                return Obj([])
            return Obj(None, self.node(extra, f"{path}/additionalProperties"))
        if not isinstance(props, dict):
            raise self.fail(path, f"properties must be an object, got {props!r}")
        unknown = [r for r in required if r not in props]
        if unknown:
            raise self.fail(path, f"required names undeclared properties {unknown}")
        return Obj([
            (k, self.node(v, f"{path}/properties/{k}"), k in required) for k, v in props.items()
        ])

    def ref(self, ref, path: str) -> Node:
        if not isinstance(ref, str) or not ref.startswith("#"):
            raise self.fail(path, f"only local $ref ('#/...') is supported, got {ref!r}")
        if ref not in self.refs:
            node = self.refs[ref] = Ref()
            target = self.root
            for part in [p for p in ref[1:].split("/") if p]:
                part = part.replace("~1", "/").replace("~0", "~")
                if not isinstance(target, dict) or part not in target:
                    raise self.fail(path, f"$ref {ref!r} points nowhere")
                target = target[part]
            node.target = self.node(target, ref)
        return self.refs[ref]


def _typed(base: dict) -> bool:
    """Does the schema beside an anyOf say something the branches must inherit?"""
    return any(k in base for k in ("type", "properties", "items", "required"))


def compile_schema(schema) -> Node:
    c = _Compiler(schema)
    root = c.node(schema)
    for path, ref in c.refs.items():
        try:
            ref.enter()  # fails now, not mid-generation, on a loop that reads no input
        except ValueError as e:
            raise c.fail(path, str(e)) from None
    return root
