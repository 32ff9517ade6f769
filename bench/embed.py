"""Sentence-embedding speed on all-MiniLM-L6-v2: ember's Embedder beside sentence-transformers,
in one run, on the same sentences.

The sentences are pairs of consecutive non-blank lines of the bundled corpus (pydoc topics,
stdlib sources), sampled evenly: ~26 tokens on average, from 3 to 130. The table gives
sentences/s, the ratio to sentence-transformers (batch 32, fp32, as ANCHORS.md measures it)
and each row's smallest cosine to the reference vectors (a speed-up counts only where it
stays >= 0.9999); then the token-length histogram
and the padded tokens each batching computes.

    python bench/embed.py [--n 2000] [--threads 2] [--repeat 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import timeit
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # read at import: nothing downloads


def sentences(n: int) -> list[str]:
    from ember.data.corpus import bundled_corpus

    lines = [ln.strip() for ln in bundled_corpus(2_000_000).splitlines() if ln.strip()]
    pairs = [" ".join(lines[i : i + 2]) for i in range(0, len(lines) - 1, 2)]
    return pairs[:: max(1, len(pairs) // n)][:n]


def timed(fn, repeat: int):
    """(best wall time of `repeat` calls, the last call's result)."""
    out = []
    return min(timeit.repeat(lambda: out.append(fn()), number=1, repeat=repeat)), out[-1]


def histogram(lengths: list[int]) -> str:
    edges = [1, 9, 17, 33, 65, 129, 257]
    rows = []
    for lo, hi in zip(edges, edges[1:]):
        k = sum(lo <= n < hi for n in lengths)
        rows.append(f"  {lo:>3}-{hi - 1:<3} {k:>5}  {'#' * round(60 * k / len(lengths))}")
    return "\n".join(rows)


def padded(lengths: list[int], batches: list[list[int]]) -> int:
    return sum(len(b) * max(lengths[i] for i in b) for b in batches)


def import_sentence_transformers():
    # run from the repository root, '' on sys.path is the checkout: tests/peft must not shadow peft
    sys.path[:] = [p for p in sys.path if not (Path(p or ".") / "peft").is_dir()]
    import sentence_transformers

    return sentence_transformers


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()

    import torch

    from ember.core.registry import resolve_model
    from ember.infer.embed import load_embedder

    torch.set_num_threads(args.threads)
    st = import_sentence_transformers()
    texts = sentences(args.n)
    folder = resolve_model("minilm")
    ref_model = st.SentenceTransformer(str(folder), device="cpu")
    ours = load_embedder(folder)
    ref_model.encode(texts[:64], batch_size=32)  # warm-up
    ours.embed(texts[:64])

    t_ref, ref = timed(lambda: ref_model.encode(texts, batch_size=32, convert_to_tensor=True).float(), args.repeat)
    rows = [("sentence-transformers, batch 32, fp32", t_ref, 1.0)]

    def row(name, embedder):
        t, got = timed(lambda: embedder.embed(texts), args.repeat)
        rows.append((name, t, torch.nn.functional.cosine_similarity(got, ref).min().item()))

    row("ember, length batches, fp32", ours)
    bf16 = load_embedder(folder, autocast_dtype=torch.bfloat16)
    row("ember, length batches, bf16 autocast", bf16)
    int8 = load_embedder(folder)
    with warnings.catch_warnings():  # torch.ao.quantization is deprecated; it is here to be measured
        warnings.simplefilter("ignore")
        int8.model = torch.ao.quantization.quantize_dynamic(int8.model, {torch.nn.Linear}, dtype=torch.qint8)
        row("ember, length batches, int8 dynamic", int8)

    print(f"{len(texts)} sentences, {args.threads} threads, best of {args.repeat}\n")
    print(f"{'':40} {'sent/s':>8} {'x ST':>6} {'min cos vs ST':>14}")
    for name, t, cos in rows:
        flag = "" if cos >= 0.9999 else "  (below 0.9999: not an option)"
        print(f"{name:40} {len(texts) / t:8.1f} {t_ref / t:6.2f} {cos:14.7f}{flag}")

    from ember.infer.embed import length_batches

    lengths = [len(ours.tokenize(s)[: ours.max_tokens]) for s in texts]
    by_chars = sorted(range(len(texts)), key=lambda i: -len(texts[i]))  # sentence-transformers' order
    in_order = [list(range(i, min(i + 32, len(texts)))) for i in range(0, len(texts), 32)]
    print(f"\ntoken lengths (mean {sum(lengths) / len(lengths):.1f}, max {max(lengths)}):")
    print(histogram(lengths))
    print(f"\nreal tokens {sum(lengths):,}; padded to: batches of 32 in order {padded(lengths, in_order):,}, "
          f"sentence-transformers (sorted by characters) "
          f"{padded(lengths, [by_chars[i : i + 32] for i in range(0, len(texts), 32)]):,}, "
          f"ember (sorted by tokens, {ours.token_budget}-token batches) "
          f"{padded(lengths, length_batches(lengths, ours.token_budget, ours.max_batch)):,}")


if __name__ == "__main__":
    main()
