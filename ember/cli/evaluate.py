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


@dataclass
class EvalRunConfig:
    """Run an evaluation task (a bundled name or an lm-eval style YAML file) on a model."""

    task: str = "commonsense"
    """a bundled task (commonsense, arithmetic, pydoc, heldout) or a task .yaml file"""
    model: str = "smollm2"
    """known name, GGUF file or HF folder (with --backend URL: the tokenizer to make token ids with)"""
    adapter: str | None = None
    """a LoRA/PEFT adapter folder from `ember sft`, or a merged model (engine backend)"""
    backend: str = "engine"
    """'engine' (in this process) or the URL of an OpenAI-compatible server, e.g. http://127.0.0.1:8000"""
    served_model: str | None = None
    """the `model` field sent to the server (default: the first of its GET /v1/models)"""
    shots: int | None = None
    """demonstrations before each question (default: the task's num_fewshot)"""
    limit: int | None = None
    """evaluate only the first N documents"""
    max_length: int = 2048
    """tokens per forward: longer prompts lose tokens on the left, rolling texts go in windows of this size"""
    rolling_context: int = 1
    """rolling texts: tokens of context each window after the first carries over (1: disjoint windows, as lm-eval)"""
    batch_size: int = 8
    """generations run together"""
    naive: bool = False
    """engine: score each choice with its own full forward instead of sharing the context's prefill"""
    json: bool = False
    """print the results (without the per-item records) as one JSON line"""
    out: str | None = None
    """folder for results.json (default runs/eval/<task>-<timestamp>); an existing results.json is never overwritten"""

    def __post_init__(self):
        at_least("--limit", self.limit, 1, optional=True)
        at_least("--shots", self.shots, 0, optional=True)
        at_least("--max-length", self.max_length, 2)
        at_least("--rolling-context", self.rolling_context, 1)
        at_least("--batch-size", self.batch_size, 1)


def run(cfg: EvalRunConfig) -> dict:
    import json as jsonlib
    from pathlib import Path

    from ember.eval.harness import EngineBackend, OpenAIBackend, evaluate, load_task, save_results
    from ember.eval.harness.run import default_out_dir

    task = load_task(cfg.task)  # a bad task file fails before any model loads
    out_dir = Path(cfg.out) if cfg.out else default_out_dir(task.name)
    if (out_dir / "results.json").exists():
        raise FileExistsError(17, "results already there (give another --out)", str(out_dir / "results.json"))
    if cfg.backend == "engine":
        from ember.agents.tool_eval import load_for_eval

        net, tok = load_for_eval(cfg.model, cfg.adapter)
        backend = EngineBackend(net, tok, batch_size=cfg.batch_size, shared_prefill=not cfg.naive)
        max_length = min(cfg.max_length, backend.max_length)
    else:
        if cfg.adapter is not None:
            raise ValueError("--adapter applies to the engine backend; a server serves its own model")
        from ember.tokenizer import load_tokenizer

        backend = OpenAIBackend(cfg.backend, load_tokenizer(cfg.model), cfg.served_model, max_length=cfg.max_length,
                                batch_size=cfg.batch_size)
        max_length = cfg.max_length
    results = evaluate(task, backend, shots=cfg.shots, limit=cfg.limit, model=cfg.model,
                       rolling_context=cfg.rolling_context, max_length=max_length)
    results["config"].update(adapter=cfg.adapter, batch_size=cfg.batch_size, shared_prefill=not cfg.naive)
    path = save_results(results, out_dir)
    summary = {k: v for k, v in results.items() if k not in ("items", "config")}
    if cfg.json:
        print(jsonlib.dumps(summary))
    else:
        for name, value in results["metrics"].items():
            se = results["stderr"].get(name)
            print(f"{task.name} {name:<16} {value:.4f}" + (f" ± {se:.4f}" if se is not None else ""))
        print(f"n={results['n']} shots={results['shots']} backend={results['backend']} "
              f"{results['seconds']:.1f} s → {path}")
    return summary
