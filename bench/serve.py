"""Serving throughput: `ember serve` beside llama.cpp's `llama-server`, in one run.

Both serve the same SmolLM2-135M GGUF over the OpenAI API. Both are up at once, but only
one gets requests at a time (the other idles): for each N and round, each server in turn,
so a change in the machine's load hits both alike. In a round, N streaming chat clients
start together, each with its own prompt, 128 tokens, temperature 0, and it is timed:

  aggregate tok/s   completion tokens of the round / wall time of the round
  TTFT              request sent -> first content chunk (queue wait included)
  latency           request sent -> end of stream
  per-stream tok/s  (tokens - 1) / (last chunk - first chunk), the decode rate one user sees

Percentiles pool every stream of every round (--rounds, after an untimed warm-up round).

    python bench/serve.py [--clients 1,4,8] [--llama-server PATH] [--ember-args "--quant int4"]...

Each --ember-args runs one more ember server (the default: `ember serve`'s defaults), each
in its own row, and every ember row gets its ratio to llama-server. Leading NAME=VALUE
words set that server's environment, e.g. `--ember-args "PYTHONPATH=/tmp/ember-before"`
serves another source tree beside this one (a before/after comparison in one run).

llama-server comes from --llama-server or $LLAMA_SERVER and runs as the reference does:
`-t 2 -c 8192 --parallel 8` (continuous batching over 8 slots). Without it, ember's
figures are printed alone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

THREADS = 2  # as the reference figures ran; --threads changes it for both servers
SUBJECTS = [
    "a lighthouse keeper", "a clockmaker", "a lost robot", "a mountain village", "a night train",
    "a beekeeper", "an old library", "a desert caravan", "a river ferry", "a street musician",
    "a glass blower", "a polar station", "a city bakery", "a paper kite", "a retired pilot",
    "a small island",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prompt(i: int) -> list[dict]:
    """Client i's conversation: distinct for every client of every round (so no server can
    reuse a previous request's whole prompt), and long-winded enough to fill 128 tokens."""
    return [{"role": "user", "content": f"Story {i + 1}: write a long story about {SUBJECTS[i % len(SUBJECTS)]}."}]


# ---- servers ------------------------------------------------------------------------------
class Server:
    """A server process on a free port, up once GET /health answers 200; stopped on exit."""

    def __init__(self, name: str, argv: list[str], port: int, startup_s: float, env: dict | None = None):
        self.name, self.argv, self.port, self.startup_s = name, argv, port, startup_s
        self.env = env or {}
        self.url = f"http://127.0.0.1:{port}"
        self.log = tempfile.TemporaryFile()
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> Server:
        env = {**os.environ, "OMP_NUM_THREADS": str(THREADS), **self.env}
        self.proc = subprocess.Popen(self.argv, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + self.startup_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        self.__exit__()
        raise RuntimeError(f"{self.name} was not healthy after {self.startup_s:.0f} s:\n{self.tail()}")

    def __exit__(self, *exc) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def tail(self, n: int = 3000) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-n:]


def ember_server(args, extra: str, port: int) -> Server:
    words, env = shlex.split(extra), {}  # -P below: PYTHONPATH, not the current folder, picks the tree
    while words and "=" in words[0] and not words[0].startswith("-"):  # NAME=VALUE: the server's environment
        name, value = words.pop(0).split("=", 1)
        env[name] = value
    argv = [sys.executable, "-P", "-m", "ember", "serve", "--model", args.model, "--max-batch", "8",
            "--host", "127.0.0.1", "--port", str(port), "--threads", str(THREADS), *words]
    return Server("ember", argv, port, startup_s=300, env=env)  # --compile warms up for a while


def llama_server(binary: str, gguf: Path, port: int) -> Server:
    argv = [binary, "-m", str(gguf), "-t", str(THREADS), "-c", "8192", "--parallel", "8",
            "--host", "127.0.0.1", "--port", str(port), "--no-webui"]
    return Server("llama-server", argv, port, startup_s=120)


# ---- clients ------------------------------------------------------------------------------
async def stream_chat(client: httpx.AsyncClient, model: str, messages: list[dict], max_tokens: int) -> dict:
    """One streaming request; returns its timings and token count (or an error)."""
    body = {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    t_first = t_last = None
    chunks, usage, done = 0, None, False
    async with client.stream("POST", "/v1/chat/completions", json=body) as resp:
        if resp.status_code != 200:
            return {"error": f"HTTP {resp.status_code}: {(await resp.aread())[:300]!r}"}
        async for line in resp.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                done = True
                break
            event = json.loads(data)
            if "error" in event:
                return {"error": str(event["error"])}
            usage = event.get("usage") or usage
            for choice in event.get("choices") or ():
                if (choice.get("delta") or {}).get("content"):
                    t_last = time.perf_counter()
                    t_first = t_first or t_last
                    chunks += 1
    t_end = time.perf_counter()
    if not done or t_first is None:
        return {"error": "stream ended without [DONE]" if not done else "no content"}
    n = usage["completion_tokens"] if usage else chunks  # one chunk per token without usage
    span = t_last - t_first
    return {"tokens": n, "ttft_s": t_first - t0, "latency_s": t_end - t0,
            "stream_tok_s": (n - 1) / span if n > 1 and span > 0 else float("nan")}


async def warm_up(client: httpx.AsyncClient, clients: list[int], max_tokens: int) -> str:
    """Untimed: one short request, then one full round at the largest N, so that one-off
    costs (cache allocation, a --compile server's graphs) fall outside the timed rounds."""
    model = (await client.get("/v1/models")).json()["data"][0]["id"]
    warm = [await stream_chat(client, model, prompt(0), 16)]
    n = max(clients)
    warm += await asyncio.gather(*[stream_chat(client, model, prompt(10_000 + i), max_tokens) for i in range(n)])
    errors = [w["error"] for w in warm if "error" in w]
    if errors:
        raise RuntimeError(f"warm-up request failed: {errors[0]}")
    return model


async def bench_servers(urls: dict[str, str], clients: list[int], max_tokens: int, rounds: int) -> dict:
    """Every server's rounds, interleaved: for each N and round, each server in turn (the
    others idle), so a change in the machine's load hits every server alike."""
    timeout = httpx.Timeout(600.0)
    conns = {name: httpx.AsyncClient(base_url=url, timeout=timeout) for name, url in urls.items()}
    try:
        models = {name: await warm_up(c, clients, max_tokens) for name, c in conns.items()}
        out: dict[str, dict] = {name: {} for name in urls}
        for n in clients:
            runs = {name: ([], [], []) for name in urls}  # streams, walls, errors
            for r in range(rounds):
                for name, client in conns.items():
                    streams, walls, errors = runs[name]
                    t0 = time.perf_counter()
                    res = await asyncio.gather(*[stream_chat(client, models[name], prompt(r * n + i), max_tokens)
                                                 for i in range(n)])
                    walls.append(time.perf_counter() - t0)
                    errors += [x["error"] for x in res if "error" in x]
                    streams += [x for x in res if "error" not in x]
                    tokens = sum(x["tokens"] for x in res if "error" not in x)
                    print(f"    {name} N={n} round {r + 1}: {tokens} tokens in {walls[-1]:.2f} s, "
                          f"load {os.getloadavg()[0]:.1f}", file=sys.stderr)
            for name in urls:
                out[name][n] = summarize(*runs[name], n)
    finally:
        for c in conns.values():
            await c.aclose()
    return out


def summarize(streams: list[dict], walls: list[float], errors: list[str], n: int) -> dict:
    def pct(key: str, q: float) -> float:
        return float(np.percentile([s[key] for s in streams], q)) if streams else float("nan")

    tokens = sum(s["tokens"] for s in streams)
    return {
        "clients": n, "streams": len(streams), "errors": errors[:5], "n_errors": len(errors),
        "aggregate_tok_s": tokens / sum(walls), "mean_tokens": tokens / max(len(streams), 1),
        "ttft_ms_p50": 1e3 * pct("ttft_s", 50), "ttft_ms_p99": 1e3 * pct("ttft_s", 99),
        "latency_ms_p50": 1e3 * pct("latency_s", 50), "latency_ms_p99": 1e3 * pct("latency_s", 99),
        "stream_tok_s_p50": pct("stream_tok_s", 50),
    }


# ---- report -------------------------------------------------------------------------------
COLUMNS = [("aggregate_tok_s", "agg tok/s", "{:9.1f}"), ("ttft_ms_p50", "TTFT p50", "{:8.0f}"),
           ("ttft_ms_p99", "TTFT p99", "{:8.0f}"), ("latency_ms_p50", "lat p50", "{:8.0f}"),
           ("latency_ms_p99", "lat p99", "{:8.0f}"), ("stream_tok_s_p50", "stream tok/s", "{:12.1f}"),
           ("mean_tokens", "tokens", "{:6.0f}")]


def print_table(results: dict[str, dict], clients: list[int]) -> None:
    names = list(results)
    width = max(12, *(len(n) for n in names))
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\nSmolLM2-135M Q4_1 GGUF, {THREADS} threads, streaming chat, temperature 0 (ms for TTFT/latency); "
          f"load average now {load} (other work on the machine skews both servers)")
    print(f"{'server':{width}s} {'N':>2s} " + " ".join(f"{h:>{len(f.format(0))}s}" for _, h, f in COLUMNS) + "  errors")
    for n in clients:
        for name in names:
            r = results[name][n]
            print(f"{name:{width}s} {n:2d} " + " ".join(f.format(r[k]) for k, _, f in COLUMNS) + f"  {r['n_errors']}")
    b = "llama-server"
    for a in [x for x in names if x != b] if b in results else []:
        print(f"\nratio {a}/{b} (aggregate and per-stream tok/s: higher is better for {a}; TTFT: lower is)")
        print(f"{'N':>2s} {'agg tok/s':>9s} {'stream tok/s':>12s} {'TTFT p50':>8s}")
        for n in clients:
            ra, rb = results[a][n], results[b][n]
            print(f"{n:2d} {ra['aggregate_tok_s'] / rb['aggregate_tok_s']:8.2f}x "
                  f"{ra['stream_tok_s_p50'] / rb['stream_tok_s_p50']:11.2f}x "
                  f"{ra['ttft_ms_p50'] / rb['ttft_ms_p50']:7.2f}x")


def main() -> None:
    global THREADS
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", default="1,4,8", help="comma-separated numbers of concurrent clients")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3, help="rounds per N (percentiles pool them)")
    ap.add_argument("--model", default="smollm2", help="what ember serve loads (a GGUF for llama-server too)")
    ap.add_argument("--ember-args", action="append",
                    help="extra flags for `ember serve`, e.g. '--quant int4'; repeat for more ember rows (default: none)")
    ap.add_argument("--llama-server", default=os.environ.get("LLAMA_SERVER"),
                    help="llama-server binary (default: $LLAMA_SERVER, then PATH)")
    ap.add_argument("--threads", type=int, default=THREADS, help="threads of each server (-t, --threads)")
    ap.add_argument("--out", default="runs/bench_serve.json")
    args = ap.parse_args()
    THREADS = args.threads
    clients = [int(c) for c in args.clients.split(",")]

    from ember.core.registry import resolve_model

    gguf = resolve_model(args.model)
    binary = args.llama_server or shutil.which("llama-server")
    variants = args.ember_args or [""]
    servers = {(f"ember {extra}".strip() if len(variants) > 1 else "ember"): ember_server(args, extra, free_port())
               for extra in variants}
    if binary and gguf.suffix == ".gguf":
        servers["llama-server"] = llama_server(binary, gguf, free_port())
    with contextlib.ExitStack() as stack:
        for name, srv in servers.items():  # up one after another, then idle until their rounds
            stack.enter_context(srv)
            print(f"{name}: {' '.join(srv.argv)}", file=sys.stderr)
        results = asyncio.run(bench_servers({name: srv.url for name, srv in servers.items()}, clients,
                                            args.max_tokens, args.rounds))
    print_table(results, clients)
    if "llama-server" not in results:
        print("\nllama-server not found (--llama-server PATH or $LLAMA_SERVER): ember's figures only")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps({"max_tokens": args.max_tokens, "rounds": args.rounds, "threads": THREADS,
                               "model": str(gguf), "ember_args": variants,
                               "llama_server": binary, "loadavg": os.getloadavg(), "results": results}, indent=2))
    os.replace(tmp, out)
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
