"""WordPiece speed on all-MiniLM-L6-v2's vocabulary, ember beside the references, in one run.

Sentences/s and MB/s encoding N lines of the bundled corpus (pydoc topics and stdlib code)
as one padded batch truncated to 256 tokens (what the embedder feeds the encoder): ember,
HF `tokenizers` (one by one, and batched on 2 threads) and transformers' pure-Python BertTokenizer. Ids are checked
equal to `tokenizers` before any time is printed.

    python bench/wordpiece.py [--lines 2000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import timeit

os.environ.setdefault("RAYON_NUM_THREADS", "2")  # HF tokenizers' thread pool


def timed(fn, repeat: int):
    """(best seconds of `repeat` calls, the last call's result)."""
    outs = []
    best = min(timeit.repeat(lambda: outs.append(fn()), number=1, repeat=repeat))
    return best, outs[-1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lines", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    import tokenizers

    from ember.core.registry import resolve_model
    from ember.data.corpus import bundled_corpus
    from ember.tokenizer import load_tokenizer

    lines = [ln for ln in bundled_corpus(2_000_000).splitlines() if ln.strip()]
    lines = lines[:: max(1, len(lines) // args.lines)][: args.lines]
    mb = sum(len(ln.encode()) for ln in lines) / 1e6
    folder = resolve_model("minilm")

    rows = []
    ours = load_tokenizer("minilm")
    t_cold, got = timed(lambda: load_tokenizer("minilm").encode_batch(lines, max_length=256), 1)
    rows.append(("ember, cold word cache (load included)", t_cold))
    t, got = timed(lambda: ours.encode_batch(lines, max_length=256), args.repeat)
    rows.append(("ember, warm word cache", t))

    hf = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
    hf.enable_truncation(256)
    hf.enable_padding(pad_id=ours.pad_token_id, pad_token=ours.pad_token)
    want = hf.encode_batch(lines)
    assert got.input_ids == [e.ids for e in want], "ids differ from HF tokenizers"
    t_hf, _ = timed(lambda: [hf.encode(ln) for ln in lines], args.repeat)
    rows.append(("HF tokenizers, encode one by one (1 thread)", t_hf))
    t, _ = timed(lambda: hf.encode_batch(lines), args.repeat)
    rows.append(("HF tokenizers, encode_batch (2 threads)", t))
    try:
        from transformers import BertTokenizer

        slow = BertTokenizer(str(folder / "vocab.txt"), do_lower_case=True)
        t, _ = timed(lambda: slow(lines, truncation=True, max_length=256, padding=True), 1)
        rows.append(("transformers BertTokenizer (pure Python)", t))
    except ImportError:
        pass

    print(f"\n{len(lines)} lines, {mb:.2f} MB, MiniLM vocabulary (ids identical to HF tokenizers)")
    print(f"{'':44s} {'lines/s':>9s} {'MB/s':>7s} {'vs HF 1 thread':>15s}")
    for name, t in rows:
        print(f"{name:44s} {len(lines) / t:9.0f} {mb / t:7.2f} {t_hf / t:14.2f}x")


if __name__ == "__main__":
    main()
