"""Merging two LoRA adapters of SmolLM2 (`ember merge`): does the merged model keep both
parents' skills? Parents: a calculator tool-use adapter (`ember sft --dataset tool-use`)
and a reasoning adapter (`ember sft --preset reasoning`, word problems answered with a
<think> trace). Each model (the base, each parent, each merge) is scored on both tasks:

- tool NLL / reason NLL: mean cross-entropy per assistant token on 16 held-out tool-use
  conversations (held-out phrasings) and 16 reasoning traces (another seed) — one forward;
- tool acc: `ember eval tool-use` accuracy on the first --n held-out questions;
- reason acc: greedy answers to --n held-out word problems, checked by their final number.

    .venv/bin/python bench/merge.py --tool runs/sft-tool-use/adapter --reason runs/sft-reasoning/adapter
    .venv/bin/python bench/merge.py ... --n_tool 0 --n_reason 0   # the NLL columns only (no generation)

The merges are computed as `ember merge` computes them (ember.peft.merge: the adapters'
updates ΔW merged as task vectors) and added to the base weights in memory.

Measured (--n_tool 0 --n_reason 0 --n_nll 8; 2-core CPU under heavy shared load; the tool-use
parent: 30 steps of `ember sft --dataset tool-use`, batch 2; the reasoning parent: `ember sft
--preset reasoning`, 16 steps; both rank-16 LoRA on all linears of SmolLM2):

    model                                tool NLL reason NLL
    base                                    0.737      1.986
    tool-use                                0.012      2.776
    reasoning                               1.099      0.087
    linear {}                               0.006      0.266
    task_arithmetic {'weights': [1.0, 1.0]} 0.019      0.391
    ties {'density': 0.5}                   0.007      0.373
    slerp {'t': 0.5}                        0.007      0.310

The generated accuracies (--n_tool, --n_reason) did not finish in the time the shared machine
allowed; they are not measured yet.
"""

from __future__ import annotations

import argparse
import copy
import random
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def nll(model, tok, convs: list[list[dict]]) -> float:
    from ember.data.sft import IGNORE, encode_conversations, pack
    from ember.train.kit import pad_id, split_rows

    rows = pack(encode_conversations(tok, convs, 512), 512, pad_id(tok), packing=False)
    total, n = 0.0, 0
    with torch.no_grad():
        for b in split_rows(rows, 4):
            sel = b["labels"] != IGNORE
            logits = model(b["ids"], logits_mask=sel).float()
            total += F.cross_entropy(logits, b["labels"][sel], reduction="sum").item()
            n += int(sel.sum())
    return total / n


def reason_accuracy(model, tok, n: int) -> float:
    from ember.data.reasoning import mixed_problems
    from ember.data.reasoning_tasks import is_correct, prompt_text
    from ember.train.kit import greedy_replies

    problems = mixed_problems(n, seed=7, split="heldout")
    outs = greedy_replies(model, tok, [[{"role": "user", "content": prompt_text(p)}] for p in problems], 96)
    return sum(is_correct(p, o.text) for p, o in zip(problems, outs)) / n


def score(model, tok, n_tool: int, n_reason: int, n_nll: int) -> dict:
    from ember.agents.tool_eval import evaluate_tool_use
    from ember.data.reasoning import trace_conversations
    from ember.data.tool_use import default_eval_set, make_conversation

    rng = random.Random(4321)
    tool_convs = [make_conversation(rng, "heldout")["messages"] for _ in range(n_nll)]
    out = {"tool NLL": nll(model, tok, tool_convs), "reason NLL": nll(model, tok, trace_conversations(n_nll, seed=991))}
    if n_tool:
        out["tool acc"] = evaluate_tool_use(model, tok, default_eval_set()[:n_tool], batch_size=n_tool)["accuracy"]
    if n_reason:
        out["reason acc"] = reason_accuracy(model, tok, n_reason)
    return out


def merged_model(base, deltas: dict[str, torch.Tensor]):
    """base with the merged LoRA updates added to its weights (what `ember merge --output model` writes)."""
    model = copy.deepcopy(base)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, d in deltas.items():
            params[f"{name}.weight"] += d
    return model


def main() -> None:
    import ember
    from ember.peft.merge import merge_lora_deltas, read_lora_deltas

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tool", required=True, help="the tool-use LoRA adapter folder")
    p.add_argument("--reason", required=True, help="the reasoning LoRA adapter folder")
    p.add_argument("--n_tool", type=int, default=10, help="tool-use questions for the accuracy (0: none)")
    p.add_argument("--n_reason", type=int, default=10, help="word problems for the reasoning accuracy (0: none)")
    p.add_argument("--n_nll", type=int, default=16, help="held-out conversations per NLL")
    p.add_argument("--methods", nargs="+", default=["linear", "task_arithmetic", "ties", "slerp"])
    p.add_argument("--no_base", action="store_true", help="skip the base model's row")
    a = p.parse_args()
    torch.set_num_threads(2)
    settings = {"linear": {}, "task_arithmetic": {"weights": [1.0, 1.0]}, "ties": {"density": 0.5},
                "slerp": {"t": 0.5}}
    named = {"tool-use": read_lora_deltas(a.tool)[0], "reasoning": read_lora_deltas(a.reason)[0]}
    base, tok = ember.load("smollm2")
    variants = {} if a.no_base else {"base": lambda: base}
    variants["tool-use"] = lambda: merged_model(base, named["tool-use"])
    variants["reasoning"] = lambda: merged_model(base, named["reasoning"])
    for m in a.methods:
        variants[f"{m} {settings[m]}"] = lambda m=m: merged_model(base, merge_lora_deltas(m, named, **settings[m]))
    cols = ["tool NLL", "reason NLL"] + (["tool acc"] if a.n_tool else []) + (["reason acc"] if a.n_reason else [])
    print(f"n: NLL {a.n_nll} conversations per task, tool acc {a.n_tool}, reason acc {a.n_reason}")
    print(f"{'model':<34}" + "".join(f"{c:>11}" for c in cols) + f"{'s':>6}", flush=True)
    for name, build in variants.items():
        t0 = time.perf_counter()
        r = score(build().eval(), tok, a.n_tool, a.n_reason, a.n_nll)
        print(f"{name:<34}" + "".join(f"{r[c]:>11.3f}" for c in cols) + f"{time.perf_counter() - t0:>6.0f}",
              flush=True)


if __name__ == "__main__":
    main()
