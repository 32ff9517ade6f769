"""No recipe imports another: each is its Config, its loss and its data, on the loop and the
kit. A recipe is a module of ember/train/ that defines `main(cfg)`, or one of KNOWN."""

import ast
from pathlib import Path

import pytest

import ember.train

TRAIN = Path(ember.train.__file__).parent
KNOWN = {"sft", "dpo", "reward", "grpo", "ppo", "pretrain", "scaling"}


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def recipes() -> set[str]:
    """KNOWN, and every module ember/train/NAME.py that defines a top-level `main`."""
    found = {
        p.stem
        for p in TRAIN.glob("*.py")
        if any(isinstance(n, ast.FunctionDef) and n.name == "main" for n in _tree(p).body)
    }
    return found | {name for name in KNOWN if (TRAIN / f"{name}.py").is_file()}


def imported_train_modules(tree: ast.Module) -> set[str]:
    """The ember.train.X modules a module imports, anywhere in it (function bodies too)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        out |= {n.split(".")[2] for n in names if n.startswith("ember.train.") and n.count(".") >= 2}
    return out


def test_a_module_with_main_is_a_recipe():
    assert recipes() >= {"sft", "dpo", "reward", "grpo", "ppo", "pretrain", "scaling"}
    assert "kit" not in recipes() and "loop" not in recipes()


@pytest.mark.parametrize("name", sorted(recipes()))
def test_no_recipe_imports_another_recipe(name):
    others = (imported_train_modules(_tree(TRAIN / f"{name}.py")) & recipes()) - {name}
    assert not others, f"recipe {name} imports recipes {sorted(others)}: move the shared code into ember/train/kit"
