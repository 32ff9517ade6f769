"""The chat-template worker: renders in a child process that template_sandbox.py starts.

Run as a script, this file reads one JSON request per line on stdin and writes one JSON
reply per line on stdout. It imports nothing from ember, so it starts in ~50 ms. Its
environment is the one Hugging Face's `apply_chat_template` builds, so templates render
exactly as they do there; the commonest blow-ups (`*`, `**`, `+`, `%`, `~` on big operands,
widths given to `center`, `format` and kin) are refused before they allocate, and the
output is cut at a size limit as it streams.

>>> handle({"template": "{{ m }}!", "renders": [{"m": "hi"}], "max_chars": 100},
...        build_environment(), {})
{'outputs': [{'text': 'hi!'}]}
"""

from __future__ import annotations

import json
import re
import sys

MIN_OUTPUT_CHARS = 1 << 16  # output limit: this plus 8x the size of the inputs
MEMORY_LIMIT_MB = 512  # the worker's whole address space (it idles at ~40 MB)
_INT_CHARS_PER_BIT = 0.302  # log10(2): decimal digits of an n-bit integer


class TemplateLimit(Exception):
    """A template asked for more than its output budget."""


def _limit(max_chars: int):
    return TemplateLimit(f"chat template rendering exceeded the output limit of {max_chars} characters")


def _projected_chars(op: str, left, right) -> int:
    """A cheap upper bound on the size of `left op right`, computed before it runs."""
    seq = (str, list, tuple)
    if op == "*":
        if isinstance(left, seq) and isinstance(right, int):
            return len(left) * max(right, 0)
        if isinstance(right, seq) and isinstance(left, int):
            return len(right) * max(left, 0)
        if isinstance(left, int) and isinstance(right, int):
            return int((left.bit_length() + right.bit_length()) * _INT_CHARS_PER_BIT)
    elif op == "**" and isinstance(left, int) and isinstance(right, int) and right > 0:
        return int(right * max(abs(left).bit_length() - 1, 0) * _INT_CHARS_PER_BIT)
    elif op == "+" and isinstance(left, seq) and isinstance(right, seq):
        return len(left) + len(right)
    elif op == "%" and isinstance(left, str):
        # printf widths and precisions ('%0999999999d'); '*' takes them from the arguments
        args = right if isinstance(right, tuple) else tuple(right.values()) if isinstance(right, dict) else (right,)
        specs = re.findall(r"%(?:\([^)]*\))?[-#0 +]*(\d*)(?:\.(\d*))?", left)
        widths = [int(x) for pair in specs for x in pair if x]
        if "*" in left:
            widths += [a for a in args if isinstance(a, int)]
        return len(left) + sum(widths) + sum(len(a) for a in args if isinstance(a, str))
    return 0


def _projected_call(name: str, s: str, args: tuple) -> int:
    """Upper bound on the size of `s.name(*args)` for the str methods that take a width."""
    ints = [a for a in args if isinstance(a, int)]
    if name in ("center", "ljust", "rjust", "zfill", "expandtabs", "indent", "batch"):
        lines = s.count("\n") + 1 if name in ("indent", "expandtabs") else 1
        return len(s) + lines * max(ints + [len(a) for a in args if isinstance(a, str)] + [0])
    if name in ("format", "format_map"):  # '{:>999999999}': every number in it may be a width
        named = [a for v in args if isinstance(v, dict) for a in v.values()]
        return _projected_chars("%", "%" + "%".join(re.findall(r"\d+", s)) + "*", args + tuple(named))
    if name == "replace" and len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
        hits = s.count(args[0]) if args[0] else len(s) + 1
        return len(s) + hits * max(len(args[1]) - len(args[0]), 0)
    return 0


_SIZED = ("center", "ljust", "rjust", "zfill", "expandtabs", "replace", "format", "format_map")


def build_environment():
    """Hugging Face's chat-template environment, with size checks on the operators."""
    from jinja2 import nodes
    from jinja2.compiler import CodeGenerator
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Codegen(CodeGenerator):
        def visit_Concat(self, node, frame):  # `a ~ b`: the one join the sandbox cannot intercept
            self.write("environment.bounded_concat((")
            for arg in node.nodes:
                self.visit(arg, frame)
                self.write(", ")
            self.write("))")

    class Generation(Extension):
        # `{% generation %}...{% endgeneration %}` marks assistant text for HF's masks; it
        # renders its body unchanged (ember finds assistant text itself).
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    class Env(ImmutableSandboxedEnvironment):
        code_generator_class = Codegen
        intercepted_binops = frozenset({"*", "**", "+", "%"})
        max_chars = MIN_OUTPUT_CHARS

        def call_binop(self, context, operator, left, right):
            if _projected_chars(operator, left, right) > self.max_chars:
                raise _limit(self.max_chars)
            return super().call_binop(context, operator, left, right)

        def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 (the sandbox's own signature)
            target = getattr(__obj, "__wrapped__", __obj)  # the sandbox wraps str.format
            owner, name = getattr(target, "__self__", None), getattr(target, "__name__", "")
            if isinstance(owner, str) and name in _SIZED:
                if _projected_call(name, owner, args + tuple(kwargs.values())) > __self.max_chars:
                    raise _limit(__self.max_chars)
            return super().call(__context, __obj, *args, **kwargs)

        def bounded_concat(self, parts):
            parts = [p if isinstance(p, str) else str(p) for p in parts]
            if sum(map(len, parts)) > self.max_chars:
                raise _limit(self.max_chars)
            return "".join(parts)

    env = Env(trim_blocks=True, lstrip_blocks=True, extensions=[Generation, loopcontrols])
    for name in ("center", "indent", "replace", "batch", "format"):  # the filters that take a size
        env.filters[name] = _sized_filter(env, name, env.filters[name])
    env.filters["tojson"], env.globals = _tojson, {**env.globals, **_template_globals()}
    return env


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # As transformers: plain json.dumps (Jinja's own escapes HTML characters).
    from jinja2.exceptions import TemplateError

    if isinstance(indent, int) and indent > 1024:
        raise TemplateError(f"tojson indent {indent} is too large")
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _template_globals() -> dict:
    """The globals transformers gives chat templates, with its guards."""
    from jinja2.exceptions import SecurityError, TemplateError
    from jinja2.utils import Namespace

    class TemplateNamespace(Namespace):
        # As in transformers: no underscore attributes, the road to Python internals.
        def __init__(*args, **kwargs):
            self, args = args[0], args[1:]
            attrs = dict(*args, **kwargs)
            for name in attrs:
                TemplateNamespace._check(name)
            Namespace.__init__(self, attrs)

        def __setitem__(self, name, value):
            TemplateNamespace._check(name)
            Namespace.__setitem__(self, name, value)

        @staticmethod
        def _check(name):
            if isinstance(name, str) and name.startswith("_"):
                raise SecurityError(f"chat templates cannot store attribute {name!r} on a namespace")

    class TemplateDict:
        def __call__(self, *args, **kwargs):
            return dict(*args, **kwargs)

        def fromkeys(self, *args, **kwargs):
            return dict.fromkeys(*args, **kwargs)

    def raise_exception(message):
        raise TemplateError(message)

    def strftime_now(fmt):
        from datetime import datetime

        return datetime.now().strftime(fmt)

    return {"raise_exception": raise_exception, "strftime_now": strftime_now, "dict": TemplateDict(),
            "namespace": TemplateNamespace}


def _sized_filter(env, name, fn):
    skip = 1 if "jinja_pass_arg" in fn.__dict__ else 0  # replace takes the eval context first

    def checked(*args, **kwargs):
        value, rest = args[skip], args[skip + 1 :] + tuple(kwargs.values())
        size = (_projected_chars("%", value, rest) if name == "format" else
                _projected_call(name, value if isinstance(value, str) else "", rest))
        if size > env.max_chars:
            raise _limit(env.max_chars)
        return fn(*args, **kwargs)

    # Keep Jinja's pass_context/pass_eval_context flags (replace takes the eval context).
    checked.__dict__.update(fn.__dict__)
    return checked


def _render_one(template, variables: dict, max_chars: int) -> dict:
    out, n = [], 0
    try:
        for piece in template.generate(**variables):  # pieces arrive as they render: stop early
            n += len(piece)
            if n > max_chars:
                raise _limit(max_chars)
            out.append(piece)
    except TemplateLimit as e:
        return {"error": str(e), "limit": True}
    except MemoryError:
        return {"error": f"chat template rendering exceeded the memory limit of {MEMORY_LIMIT_MB} MB", "limit": True}
    except Exception as e:  # TemplateError, TypeError, RecursionError...: the template's own failure
        return {"error": f"the chat template failed: {type(e).__name__}: {e}"}
    return {"text": "".join(out)}


def handle(request: dict, env, cache: dict) -> dict:
    """One request: {"template", "renders": [variables, ...], "max_chars"} → {"outputs": [...]}."""
    from jinja2.exceptions import TemplateError

    source = request["template"]
    template = cache.get(source)
    if template is None:
        try:
            template = env.from_string(source)
        except (TemplateError, RecursionError) as e:
            return {"error": f"the chat template does not parse: {e}"}
        if len(cache) >= 16:
            cache.pop(next(iter(cache)))
        cache[source] = template
    env.max_chars = request["max_chars"]
    return {"outputs": [_render_one(template, v, env.max_chars) for v in request["renders"]]}


def _serve() -> None:
    try:
        import resource

        limit = MEMORY_LIMIT_MB << 20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (ImportError, ValueError, OSError):  # no rlimits here: the time limit still holds
        pass
    env, cache = build_environment(), {}
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    for line in iter(stdin.readline, b""):
        try:
            reply = handle(json.loads(line), env, cache)
        except MemoryError:
            reply = {"error": f"chat template rendering exceeded the memory limit of {MEMORY_LIMIT_MB} MB"}
        stdout.write(json.dumps(reply).encode() + b"\n")
        stdout.flush()


if __name__ == "__main__":
    _serve()
