"""The bundled evaluation tasks on SmolLM2-135M-Instruct through every backend, one table.

Backends, each a function `(task, shots, limit) -> results` so more columns can join:
- engine: the in-process engine (shared-prefill scoring);
- serve: `ember serve`'s app on 127.0.0.1 (uvicorn in a thread), through /v1/completions;
- transformers: `AutoModelForCausalLM` on the same GGUF (fp32), scoring the same token ids
  through the same harness (log-likelihood tasks only).
Then the speedup of shared-prefill scoring over one full forward per choice.

    .venv/bin/python bench/eval.py --limit 40 --shots 0 5

Measured 2026-12-06, SmolLM2-135M-Instruct fp32, one thread on a shared 2-core CPU, first 40
documents (heldout: all 4); seconds are wall time per run (the table's rows, left to right:
engine, serve, transformers; arithmetic is generation, which transformers does not run):

    task         shots  metric            value (all backends)   engine    serve   transformers
    commonsense    0    acc / acc_norm    0.625 / 0.625            29.1     88.0       99.3
    commonsense    5    acc / acc_norm    0.675 / 0.700            64.4    298.6      287.2
    pydoc          0    acc / acc_norm    0.375 / 0.525            31.4     96.2      149.3
    pydoc          5    acc / acc_norm    0.700 / 0.775            85.5    387.5      345.6
    arithmetic     0    exact_match       0.150                    47.0     55.8         -
    arithmetic     5    exact_match       0.200                    68.5     73.3         -
    heldout        0    bits_per_byte     1.087547 (transformers 1.087546, ratio 1.000000)
                        byte / word ppl   2.12512 / 50.8006        29.8     50.4       55.4

Shared prefill vs one full forward per choice (commonsense, 10 documents): 0-shot 28.8 s →
12.2 s (2.36x), 5-shot 78.1 s → 21.6 s (3.61x); max |Δ log-likelihood| 1.9e-5 and 3.8e-5.
"""

from __future__ import annotations

import argparse
import socket
import threading
import time

import torch

from ember.eval.harness import EngineBackend, OpenAIBackend, evaluate, load_task

TASKS = ["commonsense", "pydoc", "arithmetic", "heldout"]
_MODEL = {}


def smollm2():
    if not _MODEL:
        import ember

        _MODEL["model"], _MODEL["tok"] = ember.load("smollm2")
    return _MODEL["model"], _MODEL["tok"]


def run_engine(task, shots, limit, shared_prefill=True):
    model, tok = smollm2()
    return evaluate(task, EngineBackend(model, tok, shared_prefill=shared_prefill), shots=shots, limit=limit,
                    model="smollm2", progress=False, max_length=2048)


class _Server:
    def __init__(self):
        import uvicorn

        from ember.infer import Engine
        from ember.infer.server import create_app

        model, tok = smollm2()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        app = create_app(Engine(model, tok, max_batch_size=8), "smollm2")
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        threading.Thread(target=self.server.run, daemon=True).start()
        while not self.server.started:
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{self.port}"


_SERVER = []


def run_serve(task, shots, limit):
    if not _SERVER:
        _SERVER.append(_Server())
    _, tok = smollm2()
    return evaluate(task, OpenAIBackend(_SERVER[0].url, tok), shots=shots, limit=limit, model="smollm2",
                    progress=False, max_length=2048)


class TransformersBackend:
    """Scores (context, continuations) groups with a transformers model: one forward per pair."""

    name = "transformers"

    def __init__(self, hf, tok):
        self.hf, self.tokenizer, self.max_length = hf, tok, 2048

    @torch.no_grad()
    def score(self, groups):
        out = []
        for ctx, conts in groups:
            row = []
            for cont in conts:
                x = torch.tensor([ctx + cont[:-1]])
                logp = torch.log_softmax(self.hf(x).logits[0, len(ctx) - 1 :].float(), -1)
                t = torch.tensor(cont)
                row.append((logp.gather(-1, t[:, None]).sum().item(), bool((logp.argmax(-1) == t).all())))
            out.append(row)
        return out


def run_transformers(task, shots, limit):
    if task.output_type == "generate_until":
        return None
    from transformers import AutoModelForCausalLM

    from ember.core.registry import resolve_model

    if "hf" not in _MODEL:
        path = resolve_model("smollm2")
        _MODEL["hf"] = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                            dtype=torch.float32).eval()
    return evaluate(task, TransformersBackend(_MODEL["hf"], smollm2()[1]), shots=shots, limit=limit,
                    model="smollm2", progress=False, max_length=2048)


ROLLING = {}
BACKENDS = {"engine": run_engine, "serve": run_serve, "transformers": run_transformers}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", nargs="+", default=TASKS)
    ap.add_argument("--shots", nargs="+", type=int, default=[0, 5])
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--backends", nargs="+", default=list(BACKENDS))
    ap.add_argument("--speedup-docs", type=int, default=20, help="commonsense docs for the shared-prefill timing")
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"{'task':<12} {'shots':>5} {'backend':<13} {'metric':<26} {'value':>9} {'n':>4} {'seconds':>8}")
    for name in args.tasks:
        task = load_task(name)
        for shots in [0] if task.output_type == "loglikelihood_rolling" else args.shots:
            for backend in args.backends:
                res = BACKENDS[backend](task, shots, args.limit)
                if res is None:
                    continue
                if task.output_type == "loglikelihood_rolling":
                    ROLLING[backend] = res
                for metric, value in res["metrics"].items():
                    print(f"{name:<12} {shots:>5} {backend:<13} {metric:<26} {value:>9.5f} {res['n']:>4} "
                          f"{res['seconds']:>8.1f}", flush=True)
    bpb = {b: r["metrics"]["bits_per_byte"] for b, r in ROLLING.items()}
    if "engine" in bpb and "transformers" in bpb:
        print(f"bits per byte, heldout: ember {bpb['engine']:.6f}, transformers {bpb['transformers']:.6f}, "
              f"ratio {bpb['engine'] / bpb['transformers']:.6f}", flush=True)
    if args.speedup_docs:
        task = load_task("commonsense")
        for shots in args.shots:
            naive = run_engine(task, shots, args.speedup_docs, shared_prefill=False)
            shared = run_engine(task, shots, args.speedup_docs)
            diff = max(abs(a - b) for x, y in zip(naive["items"], shared["items"])
                       for a, b in zip(x["loglikelihoods"], y["loglikelihoods"]))
            print(f"shared prefill, commonsense {shots}-shot, {args.speedup_docs} docs: naive {naive['seconds']:.1f} s, "
                  f"shared {shared['seconds']:.1f} s, speedup {naive['seconds'] / shared['seconds']:.2f}x, "
                  f"max |Δ ll| {diff:.1e}", flush=True)


if __name__ == "__main__":
    main()
