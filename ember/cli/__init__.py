"""`ember <command> ...`: every stage from the command line.

COMMANDS is the one table of commands: a name (one or two words) → what it runs. A recipe
joins by exporting `Config` and `main(cfg)` (and optionally `PRESETS`) from its module and
getting one row here. Each command's options come from its config dataclass (see
`ember.cli.parser`); the command body calls the same functions Python users call.
"""

from __future__ import annotations

import sys

from ember.cli.errors import guarded
from ember.cli.parser import Command, parse_command

COMMANDS: dict[str, Command] = {
    # tokenizers
    "tokenizer train": Command("ember.cli.tokenizer:tokenizer_train", "train a byte-level BPE tokenizer",
                               "TokenizerTrainConfig", many=("input",)),
    "tokenize": Command("ember.cli.tokenizer:tokenize", "show how text tokenizes", "TokenizeConfig",
                        positional="text"),
    "demo": Command("ember.cli.tokenizer:demo", "tokenizer demo on the bundled corpus"),
    # inference
    "generate": Command("ember.cli.infer:generate", "complete one prompt", "GenerateConfig", many=("stop",),
                        loads_model=True),
    "chat": Command("ember.cli.infer:chat", "chat in the terminal", "ChatConfig", loads_model=True),
    "perplexity": Command("ember.cli.infer:perplexity", "perplexity on a text file", "PerplexityConfig",
                          loads_model=True),
    "serve": Command("ember.cli.infer:serve", "OpenAI-compatible HTTP server", "ServeConfig", loads_model=True),
    "embed": Command("ember.cli.infer:embed", "sentence embeddings from a BERT encoder", "EmbedConfig",
                     many=("text",), positional="text", loads_model=True),
    # training
    "data prepare": Command("ember.cli.train:data_prepare", "tokenize files into shards", "DataPrepareConfig",
                            many=("input",)),
    "pretrain": Command("ember.train.pretrain", "train a decoder (or an encoder: --objective) from scratch"),
    "classify": Command("ember.train.classify", "fine-tune an encoder with a classification head (word-swap probe)"),
    "scaling sweep": Command("ember.train.scaling:sweep", "train a grid of tiny models", "ScalingSweepConfig"),
    "scaling fit": Command("ember.train.scaling:fit", "fit L(N, D) and predict", "ScalingFitConfig"),
    "export": Command("ember.cli.train:export", "a run's checkpoint → HF folder or GGUF file", "ExportConfig"),
    "merge": Command("ember.peft.merge:merge", "merge models or LoRA adapters of one base (linear, task arithmetic, "
                     "TIES, SLERP)", "MergeConfig", many=("models", "weights"), positional="models"),
    "sft": Command("ember.train.sft", "supervised fine-tuning (LoRA, QLoRA, full)"),
    "dpo": Command("ember.train.dpo", "preference optimisation (DPO, cDPO, IPO, SimPO, ORPO, KTO)",
                   prints=("before", "after")),
    "reward": Command("ember.train.reward", "Bradley-Terry reward model on preference pairs",
                      prints=("before", "after")),
    "grpo": Command("ember.train.grpo", "GRPO with verifiable rewards"),
    "distill": Command("ember.train.distill", "distil a teacher into a small student (forward/reverse KL, JSD, "
                       "on-policy)", prints=("before", "after")),
    "ppo": Command("ember.train.ppo", "RLHF: PPO against an `ember reward` model, KL to the reference",
                   prints=("before", "after", "score_first", "score_last", "kl_first", "kl_last")),
    # looking inside
    "trace": Command("ember.inspect.trace:trace", "one text through the model: tokens, logit lens, attention, sampling",
                     "TraceConfig", positional="text", loads_model=True),
    "inspect lens": Command("ember.inspect.lens:tuned_lens", "train a tuned lens; per-block KL of the logit and tuned lens",
                            "TunedLensConfig", loads_model=True),
    "inspect embeddings": Command("ember.inspect.geometry:embeddings", "embedding geometry: cosines, neighbours, "
                                  "analogies, PCA plot", "EmbeddingsConfig", loads_model=True),
    "inspect causal": Command("ember.inspect.causal:causal", "causal tracing of a fact (corrupt the subject, restore "
                              "one block)", "CausalConfig", loads_model=True),
    # retrieval
    "rag index": Command("ember.rag.cli_index:index", "index files into a RAG store (SQLite or PostgreSQL)",
                         "IndexConfig", many=("input",), loads_model=True),
    "rag pydoc": Command("ember.rag.cli_index:pydoc", "write Python's pydoc topics as a text corpus", "PydocConfig"),
    "rag search": Command("ember.cli.rag:search", "search a RAG store (hybrid, BM25 or dense)", "RagSearchConfig",
                          positional="query"),
    "rag ask": Command("ember.cli.rag:ask", "answer from a RAG store with cited sources", "RagAskConfig",
                       positional="question", loads_model=True),
    "rag eval": Command("ember.cli.rag:evaluate", "recall@k, MRR, nDCG@10 per search mode on labelled questions",
                        "RagEvalConfig", many=("modes",)),
    # evaluation
    "eval tool-use": Command("ember.cli.evaluate:tool_use", "calculator tool use", "ToolUseEvalConfig"),
    # agents
    "agent": Command("ember.agents.cli:agent", "an agent (ReAct or plan-and-execute) with built-in tools",
                     "AgentConfig", positional="task", loads_model=True),
    "tool python": Command("ember.agents.cli:tool_python", "run a Python file in the sandbox", "ToolPythonConfig"),
    "eval run": Command("ember.cli.evaluate:run", "an lm-eval style task (multiple choice, generation, perplexity)",
                        "EvalRunConfig", loads_model=True),
    "reason": Command("ember.cli.reason:reason", "test-time compute on a task: greedy, CoT, self-consistency, "
                      "best-of-n, PRM beam, revision", "ReasonConfig", loads_model=True),
    "reason curve": Command("ember.cli.reason:curve", "accuracy against samples and tokens from `ember reason --out` "
                            "runs (PNG, JSON)", "ReasonCurveConfig", many=("runs",), positional="runs"),
    "report": Command("ember.eval.report:report", "one self-contained HTML page about runs (curves, evals, configs)",
                      "ReportConfig", many=("runs",), positional="runs"),
}

EPILOG = "`ember COMMAND --help` lists a command's options. An error is one line; EMBER_DEBUG=1 shows its traceback."


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit code: 0, 2 for a user error (one line on stderr,
    see `ember.cli.errors`), 130 for Ctrl-C."""
    return guarded(lambda: _main(list(sys.argv[1:] if argv is None else argv)))


def _main(argv: list[str]) -> int:
    name = next((" ".join(argv[:n]) for n in (2, 1) if " ".join(argv[:n]) in COMMANDS), None)
    if name is None:
        return _usage(argv)
    cmd = COMMANDS[name]
    try:
        fn, cfg = parse_command(name, cmd, argv[len(name.split()):])
    except SystemExit as e:  # jsonargparse printed its own message (or --help)
        return e.code if isinstance(e.code, int) else 2
    if cmd.loads_model:
        from ember.core.memory import release_freed_memory_eagerly

        # a lower peak while loading models; not for training, where every step's large
        # activations would then cost an mmap + page faults each (3x the system time)
        release_freed_memory_eagerly()
    if cfg is None:
        fn()
        return 0
    from ember.cli.train import checked_out_folder, print_summary

    with closing_process_group():
        result = fn(checked_out_folder(cfg))
        if cmd.is_recipe:
            print_summary(result, cmd.prints)
    return 0


class closing_process_group:
    """Close a torchrun process group that the command opened, after every rank is done.
    An error or Ctrl-C already on its way out is what the user sees: a group that fails to
    close then says nothing. Only `ember.parallel` opens groups: not imported, none is open."""

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if "ember.parallel" not in sys.modules:
            return False
        from ember.parallel import destroy_distributed

        try:
            destroy_distributed(sync=exc_type is None)
        except Exception:
            if exc_type is None:
                raise
        return False


def _usage(argv: list[str]) -> int:
    """`ember`, `ember --help`, `ember scaling`: the commands there are; or an unknown one."""
    group = argv[0] if argv and not argv[0].startswith("-") else ""
    names = [n for n in COMMANDS if n.split()[0] == group] if group else list(COMMANDS)
    if not names:
        raise ValueError(f"unknown command {group!r}; commands: {', '.join(sorted({n.split()[0] for n in COMMANDS}))}")
    width = max(len(n) for n in names)
    lines = ["usage: ember COMMAND [options]", "", "commands:"]
    lines += [f"  {n:<{width}}  {COMMANDS[n].help}" for n in names]
    asked = argv[-1:] in (["-h"], ["--help"]) and len(argv) <= 2
    print("\n".join([*lines, "", EPILOG]), file=sys.stdout if asked else sys.stderr)
    return 0 if asked else 2


if __name__ == "__main__":
    raise SystemExit(main())
