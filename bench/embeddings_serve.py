"""Embeddings throughput: `ember serve --embedding-model minilm` over HTTP beside
sentence-transformers in-process, in one run, on the same sentences.

The sentences are the first N of Python's help topics cut at full stops (5 to 60 words,
at most the encoder's 256 tokens: the server refuses longer inputs rather than cut them).
One after the other (each gets the whole machine):

  ember HTTP   `ember serve` in a child process; C clients post requests of R sentences
               (float vectors, as a client that reads JSON gets them)
  ember        the same Embedder in this process, no HTTP (what the server adds is the gap)
  s-t          sentence-transformers' encode, batch 32, fp32

The table gives each row's lowest cosine against sentence-transformers' vectors.

    python bench/embeddings_serve.py [--n 2000] [--clients 4] [--per-request 64]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import torch

THREADS = 2


def sentences(n: int, embedder) -> list[str]:
    from ember.data.corpus import pydoc_topics_text

    parts = re.split(r"(?<=\.)\s+", " ".join(pydoc_topics_text().split()))
    out = [p for p in parts if 5 <= len(p.split()) <= 60 and len(embedder.tokenize(p)) <= embedder.max_tokens]
    if len(out) < n:
        raise ValueError(f"only {len(out)} sentences in the help topics, asked for {n}")
    return out[:n]


def serve(port: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "ember", "serve", "--model", "smollm2", "--embedding-model", "minilm",
           "--port", str(port), "--threads", str(THREADS), "--max-batch", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError("ember serve did not start within 120 s")


def over_http(url: str, texts: list[str], clients: int, per_request: int) -> tuple[np.ndarray, float]:
    chunks = [texts[i : i + per_request] for i in range(0, len(texts), per_request)]

    def post(chunk):
        r = httpx.post(url + "/v1/embeddings", json={"model": "minilm", "input": chunk}, timeout=300)
        if r.status_code != 200:
            raise RuntimeError(f"ember serve answered {r.status_code}: {r.text}")
        return [d["embedding"] for d in r.json()["data"]]

    post(chunks[0])  # warm-up
    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        rows = [row for part in pool.map(post, chunks) for row in part]
    return np.array(rows, dtype=np.float32), time.perf_counter() - t0


def timed(fn, texts):
    fn(texts[:32])  # warm-up
    t0 = time.perf_counter()
    out = fn(texts)
    return np.asarray(out, dtype=np.float32), time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--per-request", type=int, default=64)
    ap.add_argument("--port", type=int, default=8765)
    args = ap.parse_args()
    torch.set_num_threads(THREADS)
    from ember.infer.embed import load_embedder

    embedder = load_embedder("minilm")
    texts = sentences(args.n, embedder)
    n_tokens = sum(len(embedder.tokenize(t)) for t in texts)
    results = {}
    proc = serve(args.port)
    try:
        results["ember HTTP"] = over_http(f"http://127.0.0.1:{args.port}", texts, args.clients, args.per_request)
    finally:
        proc.terminate()
        proc.wait(30)
    results["ember"] = timed(lambda t: embedder.embed(t).numpy(), texts)
    try:
        from sentence_transformers import SentenceTransformer

        from ember.core.registry import resolve_model

        st = SentenceTransformer(str(resolve_model("minilm")), device="cpu")
        results["s-t"] = timed(lambda t: st.encode(t, batch_size=32, normalize_embeddings=True), texts)
    except ImportError:
        print("sentence-transformers is not installed: its row is left out", file=sys.stderr)
    ref = results.get("s-t", results["ember"])[0]
    print(f"{len(texts)} sentences, mean {n_tokens / len(texts):.1f} tokens; {args.clients} clients x "
          f"{args.per_request} per request; {THREADS} threads")
    print("| | sentences/s | vs s-t | min cosine vs s-t |\n|---|---|---|---|")
    base = len(texts) / results["s-t"][1] if "s-t" in results else None
    for name, (vecs, seconds) in results.items():
        rate = len(texts) / seconds
        cos = float((vecs * ref).sum(1).min())
        ratio = f"{rate / base:.2f}x" if base else "-"
        print(f"| {name} | {rate:.0f} | {ratio} | {cos:.6f} |")


if __name__ == "__main__":
    main()
