"""The import rule of DESIGN.md: a module imports only from layers before it; packages in the
same layer do not import each other."""

import ast
from pathlib import Path

LAYERS = [
    ["core"], ["tokenizer", "model"], ["data", "peft", "quant", "parallel"], ["infer"], ["prompting"],
    ["eval"], ["train"], ["rag"], ["agents"], ["cli", "__main__", "__init__"],
]
RANK = {pkg: k for k, layer in enumerate(LAYERS) for pkg in layer}
ROOT = Path(__file__).resolve().parents[1] / "ember"


def _package_of(path: Path) -> str:
    rel = path.relative_to(ROOT).parts
    return rel[0] if len(rel) > 1 else rel[0].removesuffix(".py")


def _imported_packages(path: Path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    own = path.relative_to(ROOT).parts[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this file's package
                base = own[: len(own) - node.level + 1]
                mod = list(base) + (node.module.split(".") if node.module else [])
                if mod:
                    yield mod[0], node.lineno
            elif node.module and node.module.split(".")[0] == "ember" and "." in node.module:
                yield node.module.split(".")[1], node.lineno
        elif isinstance(node, ast.Import):
            for a in node.names:
                parts = a.name.split(".")
                if parts[0] == "ember" and len(parts) > 1:
                    yield parts[1], node.lineno


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
            if RANK[dep] >= RANK[me] and me not in ("cli", "__main__", "__init__"):
                bad.append(f"{f.relative_to(ROOT.parent)}:{line} ({me}) imports {dep}")
    assert not bad, "layer violations:\n" + "\n".join(bad)
