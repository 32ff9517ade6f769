"""Generation speed and memory, ember beside transformers and llama.cpp, in one run.

Each variant runs in its own child process (so peak RSS is its own), 2 threads:
  decode tok/s  batch 1, 128 greedy tokens after a short chat prompt (EOS ignored)
  prefill tok/s a 512-token prompt in one forward
  TTFT          512-token prompt → first sampled token
  peak RSS      the child's high-water mark (model load included)
Ratios are printed against llama.cpp (decode, RSS) and transformers bf16 (prefill).

    python bench/generate.py [--variants ember-int4,hf-bf16,...] [--tokens 128] [--prompt-len 512]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

THREADS = 2
CHAT_PROMPT = [{"role": "user", "content": "Write a short story about a lighthouse keeper."}]
# ember-int4c: int4 (exact Q4_1 blocks, int8 head), fused projections, compiled decode step.
ALL_VARIANTS = ["ember-fp32", "ember-bf16", "ember-int4", "ember-int4c", "hf-fp32", "hf-bf16", "llama.cpp"]


def _prompts(tok, prompt_len: int):
    from ember.data.corpus import pydoc_topics_text

    long_ids = tok.encode(pydoc_topics_text())[:prompt_len]
    chat_ids, _ = tok.render_chat(CHAT_PROMPT)
    return chat_ids, long_ids


def run_ember(variant: str, n_tokens: int, prompt_len: int) -> dict:
    import torch

    import ember
    from ember.infer.engine import Engine
    from ember.infer.sampling import SamplingParams

    dtype = torch.bfloat16 if variant == "ember-bf16" else torch.float32
    quant = "int4" if variant.startswith("ember-int4") else None
    model, tok = ember.load("smollm2", dtype=dtype, quant=quant, fuse=True)
    model.eval()
    chat_ids, long_ids = _prompts(tok, prompt_len)
    engine = Engine(model, tok, max_batch_size=1, max_seq_len=prompt_len + n_tokens + 64,
                    compile=variant.endswith("c"))
    greedy = SamplingParams(temperature=0.0, max_tokens=n_tokens, ignore_eos=True)
    with torch.inference_mode():
        engine.generate([chat_ids], SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True))  # warm up
        r = engine.generate([chat_ids], greedy)[0]
        ttfts = []
        for _ in range(3):
            ttfts.append(engine.generate([long_ids], SamplingParams(temperature=0.0, max_tokens=1))[0].ttft_ms)
    ttft = sorted(ttfts)[1]
    return {"decode_tok_s": r.decode_tok_s, "ttft_ms": ttft, "prefill_tok_s": len(long_ids) / (ttft / 1e3),
            "text": tok.decode(r.token_ids[:24])}


def run_hf(variant: str, n_tokens: int, prompt_len: int) -> dict:
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
    with torch.inference_mode():
        model.generate(x, max_new_tokens=4, min_new_tokens=4, **kw)  # warm up
        t = time.perf_counter()
        model.generate(x, max_new_tokens=1, **kw)
        t_first = time.perf_counter() - t
        t = time.perf_counter()
        out = model.generate(x, max_new_tokens=n_tokens, min_new_tokens=n_tokens, **kw)
        total = time.perf_counter() - t
        ttfts = []
        for _ in range(3):
            t = time.perf_counter()
            model.generate(torch.tensor([long_ids]), max_new_tokens=1, **kw)
            ttfts.append(time.perf_counter() - t)
    ttft = sorted(ttfts)[1]
    return {"decode_tok_s": (n_tokens - 1) / (total - t_first), "ttft_ms": ttft * 1e3,
            "prefill_tok_s": len(long_ids) / ttft, "text": tok.decode(out[0, x.shape[1]:][:24].tolist())}


def run_llama_cpp(n_tokens: int, prompt_len: int) -> dict:
    from llama_cpp import Llama

    from ember.core.registry import resolve_model
    from ember.tokenizer import load_tokenizer

    tok = load_tokenizer("smollm2")
    chat_ids, long_ids = _prompts(tok, prompt_len)
    llm = Llama(str(resolve_model("smollm2")), n_ctx=2048, n_threads=THREADS, n_batch=512,
                flash_attn=True, verbose=False)

    def decode_run(n):
        llm.reset()
        ids, t0, t_first = [], time.perf_counter(), None
        for i, t in enumerate(llm.generate(chat_ids, top_k=1, temp=0.0, reset=True)):
            if i == 0:
                t_first = time.perf_counter()
            ids.append(t)
            if len(ids) >= n:
                break
        return ids, t_first - t0, time.perf_counter() - t_first

    decode_run(4)  # warm up
    ids, _, rest = decode_run(n_tokens)
    ttfts = []
    for _ in range(3):
        llm.reset()
        t = time.perf_counter()
        next(iter(llm.generate(long_ids, top_k=1, temp=0.0, reset=True)))
        ttfts.append(time.perf_counter() - t)
    ttft = sorted(ttfts)[1]
    return {"decode_tok_s": (n_tokens - 1) / rest, "ttft_ms": ttft * 1e3, "prefill_tok_s": len(long_ids) / ttft,
            "text": tok.decode(ids[:24])}


def child(variant: str, n_tokens: int, prompt_len: int) -> None:
    import torch

    from ember.core.memory import release_freed_memory_eagerly

    release_freed_memory_eagerly()  # every variant alike, as `ember` itself runs

    torch.set_num_threads(THREADS)
    if variant.startswith("ember"):
        out = run_ember(variant, n_tokens, prompt_len)
    elif variant.startswith("hf"):
        out = run_hf(variant, n_tokens, prompt_len)
    else:
        out = run_llama_cpp(n_tokens, prompt_len)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variants", default=",".join(ALL_VARIANTS))
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--prompt-len", type=int, default=512)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.tokens, args.prompt_len)
        return

    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS)}
    results: dict[str, dict] = {}
    for v in args.variants.split(","):
        if v == "llama.cpp":
            try:
                import llama_cpp  # noqa: F401
            except ImportError:
                print("llama.cpp: llama-cpp-python not installed; skipped "
                      "(CMAKE_ARGS=-DGGML_NATIVE=ON pip install llama-cpp-python)", file=sys.stderr)
                continue
        p = subprocess.run([sys.executable, __file__, "--child", v, "--tokens", str(args.tokens),
                            "--prompt-len", str(args.prompt_len)], capture_output=True, text=True, env=env)
        line = next((ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if line is None:
            print(f"{v}: failed\n{p.stderr[-2000:]}", file=sys.stderr)
            continue
        results[v] = json.loads(line[7:])
        print(f"  {v}: done", file=sys.stderr)

    ref_dec = results.get("llama.cpp", {}).get("decode_tok_s")
    ref_rss = results.get("llama.cpp", {}).get("peak_rss_mb")
    ref_pre = results.get("hf-bf16", {}).get("prefill_tok_s")
    print(f"\nSmolLM2-135M, {THREADS} threads, decode {args.tokens} greedy tokens, prefill {args.prompt_len} tokens")
    head = f"{'variant':12s} {'decode tok/s':>12s} {'vs llama.cpp':>12s} {'prefill tok/s':>13s} {'vs hf-bf16':>10s} {'TTFT ms':>8s} {'RSS MB':>7s} {'vs llama.cpp':>12s}"
    print(head)

    def ratio(a, b):
        return f"{a / b:11.2f}x" if a and b else f"{'-':>12s}"

    for v, r in results.items():
        print(f"{v:12s} {r['decode_tok_s']:12.1f} {ratio(r['decode_tok_s'], ref_dec)} {r['prefill_tok_s']:13.0f} "
              f"{ratio(r['prefill_tok_s'], ref_pre)[1:]} {r['ttft_ms']:8.0f} {r['peak_rss_mb']:7.0f} "
              f"{ratio(ref_rss, r['peak_rss_mb'])}")
    print("\n(RSS column 'vs llama.cpp' is llama.cpp RSS / variant RSS; the goal is RSS ≤ 2× llama.cpp, i.e. ≥ 0.50x)")
    for v, r in results.items():
        print(f"{v:12s} {r['text']!r}")


if __name__ == "__main__":
    main()
