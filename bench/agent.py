"""The agent on the project's task set (ember/agents/data/agent_tasks.jsonl: arithmetic,
lookups in a fictional corpus, code), SmolLM2 without and with the tool-use LoRA adapter of
`ember sft --preset tool-use`, in the same run. Prints the success rate per kind of task.

    .venv/bin/python bench/agent.py --adapter /tmp/sft-tool-use/adapter [--limit N] [--strategy react]

Both models decode greedily through `ember.infer.tool_calls.chat` (tool calls constrained to
the tools' schemas); the lookup tasks search an `ember rag` store of agent_facts.md built
here with MiniLM.

Measured on the shared 2-core CPU (load average ~16), react, max_steps 4, max_tokens 128,
greedy; `--only base --limit 4` (12 tasks, 1247 s):

                      base
    arithmetic        0.00
    code              0.00
    lookup            0.00
    all               0.00
    tool-call rate    0.00

The base SmolLM2 never calls a tool here: it answers from memory or writes the program
into its reply instead of running it. The adapter column is not measured yet: on that
machine an adapter trained with `--train.steps 30 --train.batch_size 2` (val_loss 0.0020;
the preset's 110 x 6 would have taken hours there) was ready too late to run the tasks.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from ember.agents.models import EngineModel, load_agent_model
from ember.agents.tasks import build_facts_db, load_tasks, run_tasks, summarize


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--adapter", default="/tmp/sft-tool-use/adapter", help="the tool-use LoRA adapter folder")
    ap.add_argument("--limit", type=int, default=None, help="only the first N tasks of each kind")
    ap.add_argument("--strategy", choices=["react", "plan"], default="react")
    ap.add_argument("--max-steps", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=128, help="most tokens per model turn")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", choices=["base", "adapter"], default=None, help="run one of the two models")
    ap.add_argument("--out", default=None, help="write every task's record here (JSON)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tasks = load_tasks()
    if args.limit:
        kinds = sorted({t["kind"] for t in tasks})
        tasks = [t for k in kinds for t in [t for t in tasks if t["kind"] == k][: args.limit]]
    if args.only != "base" and not (Path(args.adapter) / "adapter_config.json").is_file():
        sys.exit(f"no adapter at {args.adapter}: train it with `ember sft --preset tool-use --train.out ...`")
    db = Path(tempfile.mkdtemp()) / "facts.db"
    build_facts_db(db)
    variants = [("base", None), ("adapter", args.adapter)]
    results = {}
    for name, adapter in variants:
        if args.only and name != args.only:
            continue
        agent_model = load_agent_model(args.model, adapter)
        start = time.perf_counter()

        def fresh(m=agent_model):
            return EngineModel(m.engine, m.tokenizer, temperature=0.0, seed=0, max_tokens=args.max_tokens)

        def show(rec, name=name):
            print(f"{name:8} {rec['id']:10} {'right' if rec['right'] else 'wrong'}  called={rec['called']} "
                  f"answer={(rec['answer'] or '')[:70]!r}", file=sys.stderr, flush=True)

        records = run_tasks(fresh, tasks, db=str(db), strategy=args.strategy, max_steps=args.max_steps,
                            on_task=show)
        results[name] = {**summarize(records), "seconds": time.perf_counter() - start, "records": records}
    _table(results, args)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


def _table(results: dict, args) -> None:
    names = list(results)
    kinds = sorted({k for r in results.values() for k in r["by_kind"]})
    print(f"\nagent ({args.strategy}, max_steps {args.max_steps}) on {results[names[0]]['n']} tasks; {args.model}")
    print(f"{'':16}" + "".join(f"{n:>10}" for n in names))
    for k in kinds:
        print(f"{k:16}" + "".join(f"{results[n]['by_kind'][k]:10.2f}" for n in names))
    print(f"{'all':16}" + "".join(f"{results[n]['success']:10.2f}" for n in names))
    print(f"{'tool-call rate':16}" + "".join(f"{results[n]['tool_call_rate']:10.2f}" for n in names))
    print(f"{'seconds':16}" + "".join(f"{results[n]['seconds']:10.0f}" for n in names))
    if len(names) == 2 and results["base"]["success"] > 0:
        print(f"adapter / base success: {results['adapter']['success'] / results['base']['success']:.2f}")


if __name__ == "__main__":
    main()
