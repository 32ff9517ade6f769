"""Tool-call validity: SmolLM2-135M-Instruct through `ember serve` and the official `openai`
client, with constrained decoding of the calls and without it, in one run.

Each row of ember/agents/data/function_calls.jsonl is a user request, the 3-4 tools offered
with it (nested objects, enums, arrays) and the one call it expects. Every request goes with
tool_choice "required", parallel_tool_calls false (one call is wanted) and temperature 0,
once decoded under the tools' grammar and once free (`"constrained_tools": false`, ember's
per-request extension). Per mode and split:

  calls    the reply holds at least one tool call (the first one is scored)
  valid    that call names an offered tool and its arguments parse and validate against
           the tool's JSON Schema (jsonschema)
  right fn the call names the expected function
  exact    ... with exactly the expected arguments (same keys, same values, booleans are
           not numbers; optional keys the request did not ask for count as wrong)
  cut      the reply ran into max_tokens (a constrained call cut there is no call: the
           grammar keeps it valid, but a string the model never closes stays open)

The "heldout" rows were written after the "dev" rows in other phrasings; nothing (prompt
format, settings) was chosen by looking at results on either.

    python bench/tool_calls.py [--model smollm2] [--split all|dev|heldout] [--limit N] [--clients 4]

Measured (2026-12-06, `python bench/tool_calls.py --clients 4`, defaults: max_tokens 128, fp32,
2 shared CPU cores under a load average of ~15, so the seconds say nothing about speed):

| decoding | split | n | calls | valid | right fn | exact args | cut by max_tokens | tokens/reply |
|---|---|---|---|---|---|---|---|---|
| constrained | all | 60 | 88.3% (53) | 88.3% (53) | 60.0% (36) | 10.0% (6) | 11.7% (7) | 63.0 |
| constrained | dev | 40 | 87.5% (35) | 87.5% (35) | 60.0% (24) | 7.5% (3) | 12.5% (5) | 64.4 |
| constrained | heldout | 20 | 90.0% (18) | 90.0% (18) | 60.0% (12) | 15.0% (3) | 10.0% (2) | 60.1 |
| free | all | 60 | 0.0% (0) | 0.0% (0) | 0.0% (0) | 0.0% (0) | 71.7% (43) | 106.9 |
| free | dev | 40 | 0.0% (0) | 0.0% (0) | 0.0% (0) | 0.0% (0) | 70.0% (28) | 102.8 |
| free | heldout | 20 | 0.0% (0) | 0.0% (0) | 0.0% (0) | 0.0% (0) | 75.0% (15) | 115.2 |

With budget-aware closing (ember.infer.constrained.budget), measured the same way
(`python -P bench/tool_calls.py --modes constrained --clients 4 --threads 2`, load ~17):

| decoding | split | n | calls | valid | right fn | exact args | cut by max_tokens | tokens/reply |
|---|---|---|---|---|---|---|---|---|
| constrained | all | 60 | 100.0% (60) | 100.0% (60) | 56.7% (34) | 8.3% (5) | 0.0% (0) | 59.0 |
| constrained | dev | 40 | 100.0% (40) | 100.0% (40) | 57.5% (23) | 7.5% (3) | 0.0% (0) | 59.9 |
| constrained | heldout | 20 | 100.0% (20) | 100.0% (20) | 55.0% (11) | 10.0% (2) | 0.0% (0) | 57.2 |

Before it, every constrained reply that ended on its own held a valid call (53 of 53); the 7 without
one ran into max_tokens inside a call (a string that repeats itself, an array that keeps
growing). Free, the 135M model never writes the <tool_call> format: it answers in prose or
code.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / "ember/agents/data/function_calls.jsonl"
MODEL_ID = "bench"


def same(a, b) -> bool:
    """JSON equality where true is not 1 (Python's == says it is)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def score(row: dict, message) -> dict:
    import jsonschema

    out = {"calls": False, "valid": False, "right": False, "exact": False}
    if not message.tool_calls:
        return out
    call = message.tool_calls[0].function
    out["calls"] = True
    specs = {t["function"]["name"]: t["function"]["parameters"] for t in row["tools"]}
    try:
        args = json.loads(call.arguments)
        jsonschema.validate(args, specs[call.name])
    except (ValueError, KeyError, jsonschema.ValidationError):
        return out
    want = row["expected"]
    out["valid"] = True
    out["right"] = call.name == want["name"]
    out["exact"] = out["right"] and same(args, want["arguments"])
    return out


def serve(model_name: str, max_batch: int, ctx: int):
    """`ember serve`'s app over the real model, on uvicorn in a thread; returns (url, stop)."""
    import socket

    import torch
    import uvicorn

    import ember
    from ember.infer import Engine
    from ember.infer.server import create_app

    model, tok = ember.load(model_name, dtype=torch.float32, fuse=True)
    engine = Engine(model.eval(), tok, max_batch_size=max_batch, max_seq_len=ctx)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(engine, MODEL_ID), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the server did not start")
        time.sleep(0.05)

    def stop():
        server.should_exit = True
        thread.join(10)

    return f"http://127.0.0.1:{port}/v1", stop


def run_mode(client, rows: list[dict], constrained: bool, clients: int, max_tokens: int) -> list[dict]:
    def one(row):
        t0 = time.perf_counter()
        r = client.chat.completions.create(
            model=MODEL_ID, messages=[{"role": "user", "content": row["prompt"]}], tools=row["tools"],
            tool_choice="required", parallel_tool_calls=False, temperature=0, max_tokens=max_tokens,
            extra_body={"constrained_tools": constrained})
        return {**score(row, r.choices[0].message), "split": row["split"], "id": row["id"],
                "cut": r.choices[0].finish_reason == "length",
                "seconds": time.perf_counter() - t0, "tokens": r.usage.completion_tokens,
                "reply": r.choices[0].message.model_dump(exclude_none=True)}

    from tqdm import tqdm

    with ThreadPoolExecutor(clients) as pool:
        return list(tqdm(pool.map(one, rows), total=len(rows), desc="constrained" if constrained else "free"))


def table(results: dict[str, list[dict]], splits: list[str]) -> str:
    lines = ["| decoding | split | n | calls | valid | right fn | exact args | cut by max_tokens | tokens/reply | s/reply |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for mode, res in results.items():
        for split in splits:
            rs = [r for r in res if split == "all" or r["split"] == split]
            if not rs:
                continue
            n = len(rs)

            def rate(key, rs=rs, n=n):
                return f"{sum(r[key] for r in rs) / n:.1%} ({sum(r[key] for r in rs)})"

            tok = sum(r["tokens"] for r in rs) / n
            sec = sum(r["seconds"] for r in rs) / n
            lines.append(f"| {mode} | {split} | {n} | {rate('calls')} | {rate('valid')} | {rate('right')} | "
                         f"{rate('exact')} | {rate('cut')} | {tok:.1f} | {sec:.2f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--split", default="all", choices=["all", "dev", "heldout"])
    ap.add_argument("--limit", type=int, default=None, help="the first N rows only")
    ap.add_argument("--clients", type=int, default=4, help="concurrent requests (engine slots too)")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--ctx", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    ap.add_argument("--modes", default="constrained,free", help="which decodings to run, comma-separated")
    ap.add_argument("--out", default=None, help="write every reply and its scores here (JSON)")
    args = ap.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from openai import OpenAI

    rows = [json.loads(line) for line in Path(args.data).read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = [r for r in rows if args.split == "all" or r["split"] == args.split][: args.limit]
    url, stop = serve(args.model, args.clients, args.ctx)
    client = OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=600)
    try:
        results = {}
        modes = [m for m in args.modes.split(",") if m]
        if not modes or set(modes) - {"constrained", "free"}:
            raise ValueError(f"--modes takes constrained and/or free, got {args.modes!r}")
        for mode, constrained in ((m, m == "constrained") for m in modes):
            t0 = time.perf_counter()
            results[mode] = run_mode(client, rows, constrained, args.clients, args.max_tokens)
            print(f"{mode}: {len(rows)} requests in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    finally:
        stop()
    print(f"{args.model}, tool_choice required, temperature 0, {len(rows)} prompts ({args.data})")
    print(table(results, ["all", "dev", "heldout"]))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1, ensure_ascii=False), encoding="utf-8")


if __name__ == "__main__":
    main()
