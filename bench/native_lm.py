"""The torch-free NativeLM beside llama.cpp, one run: memory, start time and speed on SmolLM2.

ember (a child process; threads: NativeLM's default, the faster of 1 and all cores, or
--threads): import, load_tokenizer + NativeLM.from_gguf,
a short prompt, then 128 greedy tokens (argmax, one `step` each) — its peak RSS
(ru_maxrss), process start → first token, decode tok/s — and a 512-token prefill on the
emptied row (prefill tok/s; the RSS after it too). RSS after each stage shows what costs it.
llama.cpp (the binaries in --llama-bin): `llama-simple -n 128` (peak RSS from wait4, wall
time), `llama-simple -n 1` (start → first token), `llama-bench -t 1,<cores> -p 512 -n 128 -r 1`
(tok/s: the faster thread count, as NativeLM picks its own). On a loaded machine every figure moves with the load: compare the ratios of one run.

    python -P bench/native_lm.py [--threads N] [--llama-bin /tmp/llama.cpp-build/bin]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from generate import _run  # noqa: E402  (a child's peak RSS from wait4, as bench/generate.py measures it)

PROMPT = "The capital of France is"
LLAMA_BIN = "/tmp/llama.cpp-build/bin"


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(t_spawn: float, threads: int | None, tokens: int, prompt_len: int) -> dict:
    stages, seconds = {"python": _rss_mb()}, {"python": time.time() - t_spawn}

    def mark(name):
        stages[name], seconds[name] = _rss_mb(), time.time() - t_spawn

    import numpy as np

    mark("numpy")
    from ember.core.registry import resolve_model
    from ember.kernels.native_lm import NativeLM
    from ember.tokenizer import load_tokenizer

    tok = load_tokenizer("smollm2")  # first, as ember generate does: its parse's garbage is freed before the weights
    mark("tokenizer")
    lm = NativeLM.from_gguf(resolve_model("smollm2"), max_seq_len=1024, threads=threads)
    mark("NativeLM")
    nxt = int(lm.forward(tok.encode(PROMPT)).argmax())
    mark("first token")
    first = seconds["first token"]
    out = [nxt]
    start = time.perf_counter()
    for _ in range(tokens - 1):
        nxt = int(lm.step([nxt], [0])[0].argmax())
        out.append(nxt)
    decode = (tokens - 1) / (time.perf_counter() - start)
    mark("generated")
    lm.reset()
    ids = np.random.default_rng(0).integers(0, lm.vocab_size, prompt_len).tolist()
    start = time.perf_counter()
    lm.forward(ids)
    prefill = prompt_len / (time.perf_counter() - start)
    mark("prefill")
    return {"start_to_token_s": first, "decode_tok_s": decode, "prefill_tok_s": prefill,
            "peak_rss_mb_generate": stages["generated"], "peak_rss_mb": stages["prefill"], "rss_stages_mb": stages, "stages_s": seconds,
            "cache_mb": lm.cache_bytes / 2**20, "text": tok.decode(out[:24]), "torch_imported": "torch" in sys.modules}


def llama_cpp(binary: Path, threads: int, tokens: int, prompt_len: int) -> dict | None:
    from ember.core.registry import resolve_model

    if not (binary / "llama-simple").exists():
        print(f"llama.cpp: no llama-simple in {binary}; skipped", file=sys.stderr)
        return None
    env = {**os.environ, "LD_LIBRARY_PATH": str(binary)}
    gguf = str(resolve_model("smollm2"))
    t = time.time()
    p, rss = _run([str(binary / "llama-simple"), "-m", gguf, "-n", str(tokens), PROMPT], env)
    out = {"generate_wall_s": time.time() - t, "peak_rss_mb": rss, "ok": p.returncode == 0}
    t = time.time()
    _run([str(binary / "llama-simple"), "-m", gguf, "-n", "1", PROMPT], env)
    out["start_to_token_s"] = time.time() - t
    counts = ",".join(str(n) for n in sorted({1, threads}))
    p, _ = _run([str(binary / "llama-bench"), "-m", gguf, "-t", counts, "-p", str(prompt_len), "-n",
                 str(tokens), "-r", "1", "-o", "json"], env)
    if p.returncode == 0:
        rows = json.loads(p.stdout)
        out["decode_tok_s"] = max(r["avg_ts"] for r in rows if r["n_gen"] == tokens and r["n_prompt"] == 0)
        out["prefill_tok_s"] = max(r["avg_ts"] for r in rows if r["n_prompt"] == prompt_len and r["n_gen"] == 0)
        out["llama_bench_rows"] = [(r["n_threads"], r["n_prompt"], r["n_gen"], round(r["avg_ts"], 2)) for r in rows]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=None, help="ember threads (default: NativeLM's choice)")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--prompt-len", type=int, default=512)
    ap.add_argument("--llama-bin", default=LLAMA_BIN)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--t-spawn", type=float, default=0.0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(args.t_spawn, args.threads, args.tokens, args.prompt_len)))
        return
    t = time.time()
    threads = [] if args.threads is None else ["--threads", str(args.threads)]
    p, rss = _run([sys.executable, "-P", __file__, "--child", "--t-spawn", str(t), *threads,
                   "--tokens", str(args.tokens), "--prompt-len", str(args.prompt_len)])
    if p.returncode != 0:
        sys.exit(f"ember child failed: {p.stderr[-2000:]}")
    ember = json.loads(next(line for line in p.stdout.splitlines() if line.startswith("RESULT "))[7:])
    ember["peak_rss_mb_wait4"] = rss
    ref = llama_cpp(Path(args.llama_bin), args.threads or len(os.sched_getaffinity(0)), args.tokens,
                    args.prompt_len) or {}
    print(json.dumps({"ember NativeLM": ember, "llama.cpp": ref}, indent=1))
    for key in ("peak_rss_mb", "start_to_token_s", "decode_tok_s", "prefill_tok_s"):
        if key in ref:
            print(f"{key:18s} ember {ember[key]:9.2f}  llama.cpp {ref[key]:9.2f}  ratio {ember[key] / ref[key]:.2f}x")


if __name__ == "__main__":
    main()
