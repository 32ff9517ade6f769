"""Tokenizer speed, ember beside the references, in one run (2 threads).

Encode MB/s on ~10 MB of English text and code (pydoc topics + stdlib sources), for
ember's pure-Python reference, ember's fast path (tiktoken engine with ember's ranks,
single call and batched over both cores), HF `tokenizers` (single call and encode_batch),
and tiktoken with the same ranks. Then BPE training seconds at vocab 16,384, ember vs HF.

    python bench/tokenizer.py [--mb 10] [--vocab 16384]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("RAYON_NUM_THREADS", "2")  # HF tokenizers' thread pool


def timed(fn, repeat=1):
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mb", type=float, default=10.0)
    ap.add_argument("--vocab", type=int, default=16384)
    ap.add_argument("--skip-train", action="store_true")
    args = ap.parse_args()

    import tiktoken
    import tokenizers

    from ember.data.corpus import bundled_corpus
    from ember.tokenizer import load_tokenizer, train_bpe

    text = bundled_corpus(int(args.mb * 1e6))
    mb = len(text.encode()) / 1e6
    docs = text.split("\n\n")
    tok = load_tokenizer("smollm2")

    # References on the same vocabulary.
    from ember.core.gguf import gguf_field, open_gguf
    from ember.core.registry import resolve_model

    r = open_gguf(resolve_model("smollm2"))
    toks = gguf_field(r, "tokenizer.ggml.tokens")
    merges = [tuple(m.split(" ")) for m in gguf_field(r, "tokenizer.ggml.merges")]
    hf = tokenizers.Tokenizer(tokenizers.models.BPE(vocab={t: i for i, t in enumerate(toks)}, merges=merges))
    pre = tokenizers.pre_tokenizers
    hf.pre_tokenizer = pre.Sequence([pre.Digits(individual_digits=True), pre.ByteLevel(add_prefix_space=False)])
    tk = tiktoken.Encoding("smollm2-ranks", pat_str=tok.pattern, mergeable_ranks=tok._fast.enc._mergeable_ranks,
                           special_tokens={})

    rows = []
    t_tk, ref_ranks = timed(lambda: tk.encode_ordinary(text), 2)
    rows.append(("tiktoken, same ranks, encode_ordinary (1 thread)", t_tk))
    t, ids_fast = timed(lambda: tok.encode(text), 2)
    rows.append(("ember fast path, encode (1 thread)", t))
    t, _ = timed(lambda: tok.encode_batch(docs), 2)
    rows.append(("ember fast path, encode_batch (2 threads)", t))
    t, hf_ids = timed(lambda: hf.encode(text, add_special_tokens=False).ids, 1)
    rows.append(("HF tokenizers, encode (1 call)", t))
    t, _ = timed(lambda: hf.encode_batch(docs, add_special_tokens=False), 1)
    rows.append(("HF tokenizers, encode_batch (2 threads)", t))
    pure_tok = load_tokenizer("smollm2", use_fast=False)
    t, ids_pure = timed(lambda: pure_tok.encode(text), 1)
    rows.append(("ember pure Python (per-chunk cache)", t))
    assert ids_fast == ids_pure == hf_ids, "ids differ between ember paths and HF"

    print(f"\nEncode, {mb:.1f} MB, SmolLM2 vocabulary (ids identical across ember fast, ember pure, HF)")
    print(f"{'':52s} {'MB/s':>8s} {'vs tiktoken':>12s}")
    for name, t in rows:
        print(f"{name:52s} {mb / t:8.2f} {t_tk / t:11.2f}x")

    if args.skip_train:
        return
    print(f"\nBPE training, vocab {args.vocab}, {mb:.1f} MB (GPT-2 split pattern for both)")
    t_ember, ours = timed(lambda: train_bpe([text], args.vocab, pattern="gpt2"))
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=args.vocab, show_progress=False, initial_alphabet=pre.ByteLevel.alphabet()
    )
    h = tokenizers.Tokenizer(tokenizers.models.BPE())
    h.pre_tokenizer = pre.ByteLevel(add_prefix_space=False)
    t_hf, _ = timed(lambda: h.train_from_iterator(docs, trainer))
    print(f"{'ember train_bpe (2 processes for counting)':52s} {t_ember:7.2f} s")
    print(f"{'HF tokenizers BpeTrainer (2 threads)':52s} {t_hf:7.2f} s")
    print(f"{'ratio ember / HF':52s} {t_ember / t_hf:7.2f}x")


if __name__ == "__main__":
    main()
