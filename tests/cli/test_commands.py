"""The command table and the spellings its parsers accept."""

import pytest

from ember.cli import COMMANDS
from ember.cli.parser import parse_command


def parse(name: str, *args: str):
    return parse_command(name, COMMANDS[name], list(args))[1]


def test_every_command_resolves_to_a_function_and_its_config():
    for name, cmd in COMMANDS.items():
        fn, cfg_cls = cmd.resolve()
        assert callable(fn), name
        assert cfg_cls is None or cfg_cls.__dataclass_fields__, name


def test_eval_tool_use_takes_quant_again():
    assert parse("eval tool-use", "--quant", "int8").quant == "int8"
    assert parse("eval tool-use").quant == "none"


def test_dashes_bare_booleans_lists_and_the_positional_word():
    cfg = parse("generate", "--prompt", "hi", "--max-tokens", "5", "--json", "--stop", "a", "b", "--ignore-eos")
    assert (cfg.max_tokens, cfg.json, cfg.stop, cfg.ignore_eos) == (5, True, ["a", "b"], True)
    assert parse("generate", "--prompt", "hi", "--json", "false").json is False
    cfg = parse("tokenize", "--allow-special", "some text", "--format", "pieces")
    assert (cfg.text, cfg.allow_special, cfg.format) == ("some text", True, "pieces")
    assert parse("pretrain", "--train.resume-from", "x", "--train.progress").train.resume_from == "x"
    assert parse("tokenizer train", "--input", "a.txt", "b/", "--vocab-size", "300").input == ["a.txt", "b/"]


def test_a_bad_value_exits_through_the_parser():
    with pytest.raises(SystemExit):
        parse("generate", "--max-tokens", "many")
