"""`ember eval <task>`: evaluations that need the whole stack (engine, tools, adapters)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ember.cli.errors import at_least


@dataclass
class ToolUseEvalConfig:
    """Calculator tool-use accuracy on arithmetic questions (held-out phrasings by default)."""

    model: str = "smollm2"
    """known name, GGUF file or HF folder"""
    adapter: str | None = None
    """a LoRA/PEFT adapter folder from `ember sft`, or a merged model"""
    data: str | None = None
    """JSONL of {"question": str, "answer": number}; default: a generated held-out set"""
    json: bool = False
    """print one line: {"accuracy": ..., "n": ...}"""
    limit: int | None = None
    """evaluate only the first N items"""
    quant: Literal["none", "int8", "int4"] = "none"
    """weight-only quantized matmuls for faster CPU decode (a LoRA adapter is merged first)"""
    batch_size: int = 8
    """questions answered together"""

    def __post_init__(self):
        at_least("--limit", self.limit, 1, optional=True)
        at_least("--batch-size", self.batch_size, 1)


def tool_use(cfg: ToolUseEvalConfig) -> dict:
    from ember.agents.tool_eval import main

    return main(model=cfg.model, adapter=cfg.adapter, data=cfg.data, json=cfg.json, limit=cfg.limit,
                quant=None if cfg.quant == "none" else cfg.quant, batch_size=cfg.batch_size)
