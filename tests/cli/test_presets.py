"""A preset is a named table of option defaults: defaults < preset < --config file < flags.
The command line applies it to the parser's defaults, so a flag given explicitly always wins,
even one equal to the field's default."""

import json
import sys
import types
from dataclasses import dataclass, field

import pytest

import ember.cli as cli
from ember.cli import COMMANDS, main
from ember.cli.parser import Command, parse_command
from ember.core.config import with_preset


@dataclass
class Inner:
    steps: int = 10
    """optimizer steps"""
    lr: float = 1e-3
    """learning rate"""


@dataclass
class Config:
    """A recipe for these tests."""

    size: int = 4
    """model size"""
    inner: Inner = field(default_factory=Inner)
    """training options"""


PRESETS = {"quick": {"size": 2, "inner.steps": 3, "inner.lr": 0.5}}


def recipe_main(cfg: Config) -> dict:
    return {"size": cfg.size, "steps": cfg.inner.steps, "lr": cfg.inner.lr}


@pytest.fixture
def recipe(monkeypatch):
    module = types.ModuleType("fake_recipe")
    module.Config, module.PRESETS, module.main = Config, PRESETS, recipe_main
    module.__file__ = __file__  # where the source of Config, and so its help, is
    Config.__module__ = "fake_recipe"
    monkeypatch.setitem(sys.modules, "fake_recipe", module)
    monkeypatch.setitem(COMMANDS, "fake", Command("fake_recipe", "a recipe for tests"))
    yield
    Config.__module__ = __name__


def _run(capsys, *args) -> dict:
    assert main(["fake", *args]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_preset_sets_defaults_and_explicit_flags_win(recipe, capsys):
    assert _run(capsys) == {"size": 4, "steps": 10, "lr": 1e-3}
    assert _run(capsys, "--preset", "quick") == {"size": 2, "steps": 3, "lr": 0.5}
    # an explicit flag equal to the field's default still beats the preset
    assert _run(capsys, "--preset", "quick", "--inner.steps", "10") == {"size": 2, "steps": 10, "lr": 0.5}
    assert _run(capsys, "--inner.steps=10", "--preset=quick") == {"size": 2, "steps": 10, "lr": 0.5}


def test_config_file_beats_the_preset_and_flags_beat_both(recipe, capsys, tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("inner:\n  steps: 7\n")
    assert _run(capsys, "--preset", "quick", "--config", str(f)) == {"size": 2, "steps": 7, "lr": 0.5}
    assert _run(capsys, "--preset", "quick", "--config", str(f), "--inner.steps", "8")["steps"] == 8


def test_unknown_preset_lists_the_valid_ones(recipe, capsys):
    assert main(["fake", "--preset", "huge"]) == 2
    err = capsys.readouterr().err
    assert "unknown preset 'huge'" in err and "quick" in err


def test_with_preset_in_python(recipe):
    cfg = with_preset(Config, "quick", **{"inner.lr": 0.25})
    assert (cfg.size, cfg.inner.steps, cfg.inner.lr) == (2, 3, 0.25)
    with pytest.raises(ValueError, match="unknown preset 'huge'.*quick"):
        with_preset(Config, "huge")
    with pytest.raises(ValueError, match="unknown config key 'inner.nope'"):
        with_preset(Config, "quick", **{"inner.nope": 1})


def test_sft_tool_use_preset_keeps_an_explicit_flag_equal_to_its_default():
    """Before: `--train.steps 200` (SFT's default) was overwritten by the preset's 110."""
    _, cfg = parse_command("sft", cli.COMMANDS["sft"], ["--preset", "tool-use", "--train.steps", "200"])
    assert cfg.train.steps == 200
    assert cfg.max_len == 448 and cfg.train.out == "runs/sft-tool-use"  # the rest of the preset holds
