"""Generation speed, start time and memory: ember beside llama.cpp's own `llama-bench`, one run.

Each ember variant runs in its own child process (so peak RSS is its own), 2 threads:
  decode tok/s   batch 1, 128 greedy tokens after a short chat prompt (EOS ignored, no
                 speculation: what llama-bench's tg128 measures), median of --repeats
  prefill tok/s  a 512-token prompt in one forward (pp512), median of --repeats
  start→token    process start → first token of a short prompt (import, load, build, prefill):
                 cold = empty kernel cache (a fresh EMBER_KERNELS_DIR), warm = the next start
  peak RSS       the child's high-water mark (model load included)
llama.cpp: `llama-bench -m <same GGUF> -t 2 -p 512 -n 128 -r <repeats>` (tg128, pp512), and
`llama-simple -n 1` for its start→token (twice: cold, warm) and peak RSS.

Variants: ember-default (the `ember generate` command itself, run as a user runs it: on a 4-bit
GGUF the torch-free native runner, ember/infer/native_run.py; decode and prefill read from its
--json line, start→token from the first byte it prints, RSS from wait4), ember-engine
(`ember.load(quant="auto")` through the Engine in this process: the native kernels under torch,
what `ember serve` runs), ember-exact (`--exact`: fp32), ember-int4 (torch's int4 kernel,
fused), hf-fp32 / hf-bf16 (transformers, if installed), llama.cpp (the binaries in --llama-bin).

    python -P bench/generate.py [--variants ember-default,ember-exact,llama.cpp] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

THREADS = 2
CHAT_PROMPT = [{"role": "user", "content": "Write a short story about a lighthouse keeper."}]
DEFAULT_VARIANTS = "ember-default,ember-exact,llama.cpp"
ALL_VARIANTS = ["ember-default", "ember-engine", "ember-exact", "ember-int4", "hf-fp32", "hf-bf16", "llama.cpp"]
QUANT = {"ember-engine": "auto", "ember-exact": None, "ember-int4": "int4"}
LLAMA_BIN = "/tmp/llama.cpp-build/bin"


def _prompts(tok, prompt_len: int):
    from ember.data.corpus import pydoc_topics_text

    long_ids = tok.encode(pydoc_topics_text())[:prompt_len]
    chat_ids, _ = tok.render_chat(CHAT_PROMPT)
    return chat_ids, long_ids


def run_ember(variant: str, n_tokens: int, prompt_len: int, repeats: int, t_spawn: float) -> dict:
    import torch

    import ember
    from ember.infer.engine import Engine
    from ember.infer.sampling import SamplingParams

    model, tok = ember.load("smollm2", quant=QUANT[variant], fuse=True)
    chat_ids, long_ids = _prompts(tok, prompt_len)
    engine = Engine(model, tok, max_batch_size=1, max_seq_len=prompt_len + n_tokens + 64)
    with torch.inference_mode():
        engine.generate([chat_ids[:8]], SamplingParams(temperature=0.0, max_tokens=1))
        start_to_token = time.time() - t_spawn
        greedy = SamplingParams(temperature=0.0, max_tokens=n_tokens, ignore_eos=True)
        runs = [engine.generate([chat_ids], greedy)[0] for _ in range(repeats)]
        ttfts = [engine.generate([long_ids], SamplingParams(temperature=0.0, max_tokens=1))[0].ttft_ms
                 for _ in range(repeats)]
    ttft = statistics.median(ttfts)
    return {"decode_tok_s": statistics.median(r.decode_tok_s for r in runs), "ttft_ms": ttft,
            "prefill_tok_s": len(long_ids) / (ttft / 1e3), "start_to_token_s": start_to_token,
            "model": type(model).__name__, "text": tok.decode(runs[0].token_ids[:24])}


def run_start(variant: str, t_spawn: float) -> dict:
    """Only process start → first token (for the warm/cold start rows)."""
    import torch

    import ember
    from ember.infer.engine import Engine
    from ember.infer.sampling import SamplingParams

    model, tok = ember.load("smollm2", quant=QUANT[variant], fuse=True)
    engine = Engine(model, tok, max_batch_size=1, max_seq_len=256)
    with torch.inference_mode():
        engine.generate([tok.encode("The capital of France is")], SamplingParams(temperature=0.0, max_tokens=1))
    return {"start_to_token_s": time.time() - t_spawn}


def run_hf(variant: str, n_tokens: int, prompt_len: int, repeats: int, t_spawn: float) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from ember.core.registry import resolve_model
    from ember.tokenizer import load_tokenizer

    path = resolve_model("smollm2")
    dtype = torch.bfloat16 if variant == "hf-bf16" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype).eval()
    tok = load_tokenizer("smollm2")
    chat_ids, long_ids = _prompts(tok, prompt_len)
    x = torch.tensor([chat_ids])
    kw = dict(do_sample=False, pad_token_id=2, eos_token_id=None)

    def timed(ids, n):
        t = time.perf_counter()
        out = model.generate(torch.tensor([ids]), max_new_tokens=n, min_new_tokens=n, **kw)
        return time.perf_counter() - t, out

    with torch.inference_mode():
        t_first, _ = timed(chat_ids, 1)
        start = time.time() - t_spawn
        total, out = timed(chat_ids, n_tokens)
        ttft = statistics.median(timed(long_ids, 1)[0] for _ in range(repeats))
    return {"decode_tok_s": (n_tokens - 1) / (total - t_first), "ttft_ms": ttft * 1e3,
            "prefill_tok_s": len(long_ids) / ttft, "start_to_token_s": start,
            "model": "transformers", "text": tok.decode(out[0, x.shape[1]:][:24].tolist())}


def child(args) -> None:
    import resource

    import torch

    from ember.core.memory import release_freed_memory_eagerly

    release_freed_memory_eagerly()  # every variant alike, as `ember` itself runs
    torch.set_num_threads(THREADS)
    if args.start_only:
        out = run_start(args.child, args.t_spawn)
    elif args.child.startswith("hf"):
        out = run_hf(args.child, args.tokens, args.prompt_len, args.repeats, args.t_spawn)
    else:
        out = run_ember(args.child, args.tokens, args.prompt_len, args.repeats, args.t_spawn)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(out))


def _run(cmd, env) -> tuple[subprocess.CompletedProcess, float]:
    """Run cmd; (completed process, its own peak RSS in MB, from wait4)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        p = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, env=env)
        _, status, usage = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(cmd, p.returncode, out.read(), err.read()), usage.ru_maxrss / 1024


def ember_variant(v: str, args, env) -> dict | None:
    base = [sys.executable, "-P", __file__, "--child", v, "--tokens", str(args.tokens),
            "--prompt-len", str(args.prompt_len), "--repeats", str(args.repeats)]
    if v.startswith("hf"):
        r = _result(v, subprocess.run([*base, "--t-spawn", repr(time.time())], capture_output=True, text=True, env=env))
        if r is not None:
            r["cold_start_s"] = r.pop("start_to_token_s")
        return r
    starts = []
    with tempfile.TemporaryDirectory() as kdir:  # an empty kernel cache: the cold start builds
        venv = {**env, "EMBER_KERNELS_DIR": kdir}
        for _ in range(2):  # cold, then warm
            p = subprocess.run([*base, "--start-only", "--t-spawn", repr(time.time())], capture_output=True,
                               text=True, env=venv)
            starts.append(_result(v, p))
        p = subprocess.run([*base, "--t-spawn", repr(time.time())], capture_output=True, text=True, env=venv)
    r = _result(v, p)
    if r is None or None in starts:
        return None
    r["cold_start_s"], r["warm_start_s"] = starts[0]["start_to_token_s"], starts[1]["start_to_token_s"]
    return r


def _cli(args_list: list[str], env) -> tuple[dict, float]:
    """`ember generate ... --json true` in a child process: (its JSON line, its peak RSS MB)."""
    p, rss = _run([sys.executable, "-m", "ember", "generate", *args_list, "--json", "true",
                   "--threads", str(THREADS)], env)
    if p.returncode != 0:
        raise RuntimeError(f"ember generate failed ({p.returncode}): {p.stderr[-1500:]}")
    return json.loads(p.stdout.strip().splitlines()[-1]), rss


def _first_byte_s(args_list: list[str], env) -> float:
    """Seconds from spawning `ember generate` to the first byte of text it prints."""
    t = time.time()
    p = subprocess.Popen([sys.executable, "-m", "ember", "generate", *args_list, "--threads", str(THREADS)],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    p.stdout.read(1)
    elapsed = time.time() - t
    p.stdout.read()
    p.wait()
    return elapsed


def cli_variant(args, env) -> dict:
    """ember-default: the `ember generate` command (fresh processes; median of --repeats)."""
    from ember.tokenizer import load_tokenizer

    tok = load_tokenizer("smollm2")
    _, long_ids = _prompts(tok, args.prompt_len)
    with tempfile.TemporaryDirectory() as kdir:
        venv = {**env, "EMBER_KERNELS_DIR": kdir}  # an empty kernel cache: the cold start builds
        short = ["--prompt", "The capital of France is", "--max-tokens", "1"]
        cold, warm = _first_byte_s(short, venv), _first_byte_s(short, venv)
        long_file = Path(kdir) / "prompt.txt"
        long_file.write_text(tok.decode(long_ids), encoding="utf-8")
        decode = [_cli(["--prompt", CHAT_PROMPT[0]["content"], "--chat", "true", "--max-tokens", str(args.tokens),
                        "--ignore-eos", "true"], venv) for _ in range(args.repeats)]
        prefill = [_cli(["--prompt-file", str(long_file), "--max-tokens", "1"], venv) for _ in range(args.repeats)]
    ttft = statistics.median(r["ttft_ms"] for r, _ in prefill)
    return {"decode_tok_s": statistics.median(r["decode_tok_s"] for r, _ in decode), "ttft_ms": ttft,
            "prefill_tok_s": prefill[0][0]["prompt_tokens"] / (ttft / 1e3), "cold_start_s": cold, "warm_start_s": warm,
            "peak_rss_mb": max(rss for _, rss in decode + prefill), "model": "ember generate",
            "text": tok.decode(decode[0][0]["ids"][:24])}


def _result(v: str, p) -> dict | None:
    line = next((ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        print(f"{v}: failed\n{p.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(line[7:])


def llama_cpp(args, env) -> dict | None:
    from ember.core.registry import resolve_model

    binary = Path(args.llama_bin)
    if not (binary / "llama-bench").exists():
        print(f"llama.cpp: no llama-bench in {binary}; skipped (--llama-bin)", file=sys.stderr)
        return None
    env = {**env, "LD_LIBRARY_PATH": str(binary)}
    gguf = str(resolve_model("smollm2"))
    cmd = [str(binary / "llama-bench"), "-m", gguf, "-t", str(THREADS), "-p", str(args.prompt_len),
           "-n", str(args.tokens), "-r", str(args.repeats), "-o", "json"]
    p, rss = _run(cmd, env)
    if p.returncode != 0:
        why = p.stderr[-1500:]
        if p.returncode == -4:  # SIGILL
            flags = set(Path("/proc/cpuinfo").read_text().split())
            why = ("illegal instruction: this llama.cpp was built for instructions this CPU lacks "
                   f"(avx_vnni listed: {'avx_vnni' in flags}; a build with -DGGML_AVX_VNNI=ON needs it)")
        print(f"llama-bench failed ({p.returncode}): {why}", file=sys.stderr)
        return None
    rows = json.loads(p.stdout)
    tg = next(r["avg_ts"] for r in rows if r["n_gen"] == args.tokens and r["n_prompt"] == 0)
    pp = next(r["avg_ts"] for r in rows if r["n_prompt"] == args.prompt_len and r["n_gen"] == 0)
    out = {"decode_tok_s": tg, "prefill_tok_s": pp, "ttft_ms": args.prompt_len / pp * 1e3,
           "model": "llama-bench", "text": "", "peak_rss_mb": rss}
    simple = binary / "llama-simple"
    if simple.exists():
        starts = []
        for _ in range(2):
            t = time.time()
            p, rss = _run([str(simple), "-m", gguf, "-n", "1", "The capital of France is"], env)
            starts.append(time.time() - t)
        out["cold_start_s"], out["warm_start_s"], out["peak_rss_mb"] = starts[0], starts[1], max(rss, out["peak_rss_mb"])
    return out


def report(results: dict, args) -> None:
    ref = results.get("llama.cpp", {})
    load = os.getloadavg()
    print(f"\nSmolLM2-135M Q4_1 GGUF, {THREADS} threads, tg{args.tokens} / pp{args.prompt_len}, "
          f"median of {args.repeats}; load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}; "
          "ratio = ember / llama.cpp (RSS: lower is better)")
    cols = [("decode_tok_s", "decode tok/s"), ("prefill_tok_s", "prefill tok/s"), ("cold_start_s", "cold start s"),
            ("warm_start_s", "warm start s"), ("peak_rss_mb", "peak RSS MB")]
    print(f"{'variant':14s}" + "".join(f"{name:>15s}{'ratio':>7s}" for _, name in cols))
    for v, r in results.items():
        cells = []
        for key, _ in cols:
            a, b = r.get(key), ref.get(key)
            cells.append(f"{a:15.1f}" if a is not None else f"{'-':>15s}")
            cells.append(f"{a / b:6.2f}x" if a is not None and b else f"{'-':>7s}")
        print(f"{v:14s}" + "".join(cells))
    print("start s: process start → first token of a 5-token prompt (cold: empty kernel cache); "
          "ember-default's peak RSS: the highest of its decode and prefill runs")
    for v, r in results.items():
        if r.get("text"):
            print(f"{v:14s} [{r['model']}] {r['text']!r}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variants", default=DEFAULT_VARIANTS, help=f"comma-separated, of {ALL_VARIANTS}")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--prompt-len", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--llama-bin", default=LLAMA_BIN, help="folder with llama-bench and llama-simple")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--start-only", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--t-spawn", type=float, default=0.0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    bad = [v for v in args.variants.split(",") if v not in ALL_VARIANTS]
    if bad:
        raise SystemExit(f"unknown variants {bad}; choose from {ALL_VARIANTS}")
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS)}
    results: dict[str, dict] = {}
    for v in args.variants.split(","):
        r = llama_cpp(args, env) if v == "llama.cpp" else cli_variant(args, env) if v == "ember-default" \
            else ember_variant(v, args, env)
        if r is not None:
            results[v] = r
            print(f"  {v}: {json.dumps({k: round(x, 2) if isinstance(x, float) else x for k, x in r.items()})}",
                  file=sys.stderr, flush=True)
    report(results, args)


if __name__ == "__main__":
    main()
