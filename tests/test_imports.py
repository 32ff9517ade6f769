"""The import rule of DESIGN.md: a module imports only from layers before it; packages in the
same layer do not import each other. And no two modules import each other, even lazily."""

import ast
from pathlib import Path

# `__init__` is the top-level package (`import ember`, `ember.load`): it builds on core,
# tokenizer, model and quant, so it sits just after them, and recipes above may use it.
LAYERS = [
    ["core"], ["tokenizer", "model"], ["data", "peft", "quant", "parallel"], ["kernels"], ["__init__"], ["infer"], ["prompting", "inspect"],
    ["eval"], ["train"], ["rag"], ["agents"], ["cli", "__main__"],
]
RANK = {pkg: k for k, layer in enumerate(LAYERS) for pkg in layer}
ROOT = Path(__file__).resolve().parents[1] / "ember"
# Import cycles between modules of packages owned elsewhere, to be broken there:
# (importer, imported) pairs, as paths relative to ember/.
KNOWN_CYCLES: set[tuple[str, str]] = set()


def _package_of(path: Path) -> str:
    rel = path.relative_to(ROOT).parts
    return rel[0] if len(rel) > 1 else rel[0].removesuffix(".py")


def _imported_modules(path: Path, source: str | None = None):
    """(dotted module under ember, or "" for the package itself; line) for every import in
    the file, function-level ones included. `from ember.x import y` yields x.y as well as
    x, since y may be a module."""
    tree = ast.parse(path.read_text(encoding="utf-8") if source is None else source)
    own = path.relative_to(ROOT).parts[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this file's package
                base = list(own[: len(own) - node.level + 1])
                mod = base + (node.module.split(".") if node.module else [])
            elif node.module and node.module.split(".")[0] == "ember":
                mod = node.module.split(".")[1:]
            else:
                continue
            yield ".".join(mod), node.lineno
            for a in node.names:
                yield ".".join([*mod, a.name]), node.lineno
        elif isinstance(node, ast.Import):
            for a in node.names:
                parts = a.name.split(".")
                if parts[0] == "ember":
                    yield ".".join(parts[1:]), node.lineno


def _imported_packages(path: Path, source: str | None = None):
    """(package, line): `import ember` and `from ember import load` are package `__init__`."""
    seen = set()
    for mod, line in _imported_modules(path, source):
        pkg = mod.split(".")[0] if mod else "__init__"
        if pkg in RANK and (pkg, line) not in seen:
            seen.add((pkg, line))
            yield pkg, line


def test_layering():
    bad = []
    files = sorted(ROOT.rglob("*.py"))
    assert files
    for f in files:
        me = _package_of(f)
        assert me in RANK, f"{f}: package {me!r} is not in DESIGN.md's layer list"
        for dep, line in _imported_packages(f):
            if dep == me or dep not in RANK:
                continue
            if RANK[dep] >= RANK[me] and me not in ("cli", "__main__"):
                bad.append(f"{f.relative_to(ROOT.parent)}:{line} ({me}) imports {dep}")
    assert not bad, "layer violations:\n" + "\n".join(bad)


def test_layering_sees_a_bare_import_ember():
    """`import ember` reaches the top-level package (`ember.load`): fine from a recipe, a
    violation from the model layer."""
    src = "import ember\nfrom ember import load\n"
    assert list(_imported_packages(ROOT / "model" / "x.py", src)) == [("__init__", 1), ("__init__", 2)]
    assert RANK["model"] < RANK["__init__"] < RANK["train"]


def _module_files() -> dict[str, Path]:
    """dotted name under ember ("model.layers", "peft" for peft/__init__.py) → file."""
    out = {}
    for f in ROOT.rglob("*.py"):
        parts = list(f.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


def test_no_import_cycles():
    files = _module_files()
    graph = {name: set() for name in files}
    for name, f in files.items():
        for mod, _ in _imported_modules(f):
            if mod in files and mod != name and not name.startswith(mod + "."):
                graph[name].add(mod)  # a package's submodule importing its own __init__ is no cycle
    rel = {name: str(f.relative_to(ROOT)) for name, f in files.items()}
    known = KNOWN_CYCLES | {(y, x) for x, y in KNOWN_CYCLES}
    cycles = sorted(
        f"{rel[a]} -> {rel[b]}" for a, deps in graph.items() for b in deps
        if a in _reachable(graph, b) and (rel[a], rel[b]) not in known
    )
    assert not cycles, "imports on a cycle (the module imported leads back to the importer):\n" + "\n".join(cycles)


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


def test_no_module_imports_another_packages_private_names():
    """A name starting with _ is its module's own: another package that needs it gets it
    made public (as prompt tuning got model.transformer.segment_positions)."""
    bad = []
    for f in sorted(ROOT.rglob("*.py")):
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ImportFrom) or node.level or not (node.module or "").startswith("ember."):
                continue
            dep = node.module.split(".")[1]
            private = [a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
            if private and dep != _package_of(f):
                bad.append(f"{f.relative_to(ROOT.parent)}:{node.lineno} imports {private} from {node.module}")
    assert not bad, "\n".join(bad)
