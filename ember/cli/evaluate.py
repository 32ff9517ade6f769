"""`ember eval <task>`: evaluations that need the whole stack (engine, tools, adapters)."""

from __future__ import annotations

from dataclasses import dataclass

from jsonargparse import ArgumentParser

from ember.cli.errors import at_least


@dataclass
class ToolUseEvalConfig:
    """Calculator tool-use accuracy on arithmetic questions (held-out phrasings by default)."""

    model: str = "smollm2"  # known name, GGUF, HF folder
    adapter: str | None = None  # a LoRA/PEFT adapter folder from `ember sft`, or a merged model
    data: str | None = None  # JSONL of {"question": str, "answer": number}; default: generated held-out set
    json: bool = False  # print one line: {"accuracy": ..., "n": ...}
    limit: int | None = None  # evaluate only the first N items
    batch_size: int = 8

    def __post_init__(self):
        at_least("--limit", self.limit, 1, optional=True)
        at_least("--batch-size", self.batch_size, 1)


def add_commands(sub, command) -> None:
    ev = ArgumentParser(description="evaluations")
    sub.add_subcommand("eval", ev, help="evaluate a model on a task")
    ev.add_subcommands(dest="task").add_subcommand("tool-use", command(ToolUseEvalConfig), help="calculator tool use")


def bool_fields() -> set[str]:
    return {"json"}


def run(args, build) -> bool:
    if args.command != "eval":
        return False
    from ember.agents.tool_eval import main

    cfg = build(ToolUseEvalConfig, {k: v for k, v in args.eval["tool-use"].as_dict().items() if k != "config"})
    main(model=cfg.model, adapter=cfg.adapter, data=cfg.data, json=cfg.json, limit=cfg.limit, batch_size=cfg.batch_size)
    return True
