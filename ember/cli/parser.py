"""One command's parser, built from its config dataclass, and the argv it accepts.

jsonargparse turns the dataclass's fields into options (nested dataclasses into dotted
groups, `--train.steps`) and their attribute docstrings into help text. It spells options
with underscores and wants a value after every boolean; ember also accepts what users
type in shells, so `normalize_argv` rewrites, driven by the built parser alone:

- `--vocab-size 3` is `--vocab_size 3` (every dash in an option name);
- a bare boolean `--json` is `--json true`;
- for a command with a positional field, a bare word that is no option's value sets it
  (`ember tokenize "some text"` is `--text "some text"`).
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from jsonargparse import ActionConfigFile, ArgumentParser, set_parsing_settings

from ember.core.config import build_config, preset_table, presets_of

# the help of every option is its field's attribute docstring (the """...""" under it)
set_parsing_settings(docstring_parse_attribute_docstrings=True)

SPELLING = ("Options may be spelt with dashes or underscores (--max-tokens, --max_tokens); "
            "a boolean option alone means true (--json is --json true).")


@dataclass(frozen=True)
class Command:
    """One row of the command table.

    target: "module:function" taking an instance of `config`, a class of the same module
    (or nothing, when `config` is None); or "module" for a recipe: a module that exports
    `main(cfg)` and its config class as `Config` (else the class `main`'s first parameter
    is annotated with), and optionally `PRESETS`.
    """

    target: str
    help: str
    config: str | None = None  # the config class of a "module:function" target
    many: tuple[str, ...] = ()  # list fields given as several words: --input a.txt b/
    positional: str | None = None  # the field a bare word sets: ember tokenize "text"
    loads_model: bool = False  # inference: trade allocator speed for a lower peak while loading
    prints: tuple[str, ...] | None = None  # recipe summary keys printed (None: all but the sample)

    @property
    def is_recipe(self) -> bool:
        return ":" not in self.target

    def resolve(self) -> tuple[Callable, type | None]:
        """(the function to call, its config class or None), importing the module now."""
        module, _, name = self.target.partition(":")
        mod = importlib.import_module(module)
        if not self.is_recipe:
            return getattr(mod, name), getattr(mod, self.config) if self.config else None
        cfg_cls = getattr(mod, "Config", None)
        if cfg_cls is None:
            ann = next(iter(inspect.signature(mod.main).parameters.values())).annotation
            cfg_cls = getattr(mod, ann) if isinstance(ann, str) else ann
        return mod.main, cfg_cls


def command_parser(name: str, cmd: Command, cfg_cls: type | None, doc: str | None = None) -> ArgumentParser:
    """The parser of `ember NAME`: one option per field of `cfg_cls`, plus --config and,
    when the recipe declares PRESETS, --preset."""
    p = ArgumentParser(prog=f"ember {name}", description=doc or (cfg_cls.__doc__ if cfg_cls else None),
                       epilog=SPELLING if cfg_cls else None)
    if cfg_cls is None:
        return p
    p.add_argument("--config", action=ActionConfigFile, help="YAML file of options (flags given after it win)")
    fields = {f.name for f in dataclasses.fields(cfg_cls)}
    presets = presets_of(cfg_cls)
    if presets and "preset" not in fields:
        p.add_argument("--preset", type=str, help=f"a named table of option defaults: {', '.join(sorted(presets))}; "
                       "options given explicitly still win")
    p.add_class_arguments(cfg_cls, nested_key=None, fail_untyped=False, skip=set(cmd.many))
    docs = _field_docs(cfg_cls)
    for field in cmd.many:
        p.add_argument(f"--{field}", nargs="+", type=str, default=[], help=docs.get(field))
    return p


def _field_docs(cls: type) -> dict[str, str]:
    import docstring_parser

    return {p.arg_name: p.description for p in docstring_parser.parse_from_object(cls).params if p.description}


def parse_command(name: str, cmd: Command, argv: list[str]) -> tuple[Callable, Any]:
    """(function, config) for `ember NAME ARGV`; the config is None for a command without one.
    A bad command line exits through jsonargparse (SystemExit) with its own message."""
    fn, cfg_cls = cmd.resolve()
    parser = command_parser(name, cmd, cfg_cls, doc=None if cfg_cls else fn.__doc__)
    if cfg_cls is not None:
        preset = _preset_named(argv)
        if preset is not None and presets_of(cfg_cls):
            parser.set_defaults(preset_table(cfg_cls, preset))  # defaults: explicit flags still win
    ns = parser.parse_args(normalize_argv(argv, parser, cmd.positional))
    if cfg_cls is None:
        return fn, None
    values = ns.as_dict()
    values.pop("config", None)
    if "preset" not in {f.name for f in dataclasses.fields(cfg_cls)}:
        values.pop("preset", None)
    return fn, build_config(cfg_cls, values)


def _preset_named(argv: list[str]) -> str | None:
    """The value of --preset in argv (the last one given), read before parsing so that its
    table can become the parser's defaults."""
    found = None
    for k, tok in enumerate(argv):
        if tok == "--preset" and k + 1 < len(argv):
            found = argv[k + 1]
        elif tok.startswith("--preset="):
            found = tok.partition("=")[2]
    return found


def normalize_argv(argv: list[str], parser: ArgumentParser, positional: str | None = None) -> list[str]:
    """The spellings of the module docstring, rewritten to what jsonargparse parses.

    >>> p = ArgumentParser()
    >>> _ = p.add_argument("--max_tokens", type=int)
    >>> _ = p.add_argument("--json", type=bool)
    >>> _ = p.add_argument("--text", type=str)
    >>> normalize_argv(["--max-tokens", "5", "--json", "hello"], p, positional="text")
    ['--max_tokens', '5', '--json', 'true', '--text', 'hello']
    """
    actions = {s: a for a in parser._actions for s in a.option_strings}
    out: list[str] = []
    expects = 0  # words still owed to the last option: 1 for a value, -1 for one or more
    for k, tok in enumerate(argv):
        if tok.startswith("--") and len(tok) > 2:
            name, eq, value = tok[2:].partition("=")
            opt = "--" + name.replace("-", "_")
            out.append(opt + eq + value)
            action = actions.get(opt)
            nxt = argv[k + 1] if k + 1 < len(argv) else None
            if not eq and _is_bool(action) and (nxt is None or nxt.lower() not in ("true", "false")):
                out.append("true")
                expects = 0
            else:
                expects = 0 if eq else (-1 if action is not None and action.nargs == "+" else 1)
        elif positional and expects == 0 and not tok.startswith("-"):
            out.extend([f"--{positional}", tok])
            # a list positional (ember embed A B) takes the bare words that follow as well
            expects = -1 if getattr(actions.get(f"--{positional}"), "nargs", None) == "+" else 0
        else:
            out.append(tok)
            expects = -1 if expects == -1 else 0
    return out


def _is_bool(action) -> bool:
    hint = getattr(action, "_typehint", None)
    return hint is bool or (action is not None and action.type is bool) or hint == (bool | None)
