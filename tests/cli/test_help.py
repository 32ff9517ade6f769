"""Every option of every command in the table explains itself in `--help`: words beyond the
type and default jsonargparse prints anyway."""

import re

import pytest

from ember.cli import COMMANDS, main
from ember.cli.parser import command_parser

NO_HELP_NEEDED = {"-h", "--help", "--config", "--print_config"}


def undocumented(name: str) -> list[str]:
    """The options of `ember NAME` whose help has no words of its own."""
    from jsonargparse._actions import _ActionConfigLoad  # a nested group's `--train CONFIG`

    cmd = COMMANDS[name]
    _, cfg_cls = cmd.resolve()
    parser = command_parser(name, cmd, cfg_cls)
    missing = []
    for action in parser._actions:
        if not action.option_strings or set(action.option_strings) & NO_HELP_NEEDED:
            continue
        if isinstance(action, _ActionConfigLoad):
            continue
        if not re.search(r"[A-Za-z]{2,}", action.help or ""):
            missing.append(action.option_strings[0])
    return missing


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_option_has_help(name):
    assert undocumented(name) == [], f"ember {name}: options without help"


def test_generate_help_explains_its_options(capsys):
    assert main(["generate", "--help"]) == 0
    out = capsys.readouterr().out
    assert "sampling temperature" in out and "weight-only quantized" in out
    assert "dashes or underscores" in out  # the spellings the parser accepts


def test_pretrain_model_overrides_carry_modelconfig_help(capsys):
    assert main(["pretrain", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "--model.n_layers N_LAYERS Transformer blocks" in out


def test_top_level_and_group_help_list_the_table(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in COMMANDS) and "EMBER_DEBUG=1" in out
    assert main(["scaling"]) == 2
    err = capsys.readouterr().err
    assert "scaling sweep" in err and "scaling fit" in err and "generate" not in err


def test_unknown_command_is_one_line(capsys):
    assert main(["frobnicate"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ember: error: unknown command 'frobnicate'") and "\n" not in err
