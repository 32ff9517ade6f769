"""Speculative decoding (prompt lookup), on vs off in one run (SmolLM2-135M fp32, CPU, batch 1).

  grounded   edit a given text (fix its typos): a long prompt the reply copies from
  chat       a free question: little to copy

For each task: greedy decode tok/s (tokens after the first / time after the first, median of
--repeats) with and without drafting, their ratio, the draft acceptance rate, and whether
the replies are token-identical.

    python -P bench/speculative.py [--threads 1] [--repeats 3] [--tokens 96]

Measured (`--threads 1 --repeats 1 --tokens 64`, a 2-core machine shared with other jobs:
absolute tok/s are far below an idle machine's ~20; read the ratios):

    grounded  (136 prompt tokens, 64 generated): off 1.4 tok/s, ngram 2.9 tok/s (2.07x), acceptance 51%, identical tokens: True
    chat      (44 prompt tokens, 64 generated): off 1.4 tok/s, ngram 1.3 tok/s (0.91x), acceptance 0%, identical tokens: True
"""

from __future__ import annotations

import argparse
import statistics

TEXT = (
    "The lighthouse stood on the rocks at the end of the harbour for two hundred years. Every "
    "night the keeper climbed the ninety steps, trimmed the wick and wound the clockwork that "
    "turned the lens. Ships far out at sea saw the beam sweep across the water once every ten "
    "seconds, and they knew where the reef lay. In the winter storms the waves broke over the "
    "gallery and the whole tower shook, but the light never went out."
)
TYPOS = TEXT.replace("night", "nihgt").replace("climbed", "climbd").replace("water", "watr")
TASKS = {
    "grounded": f"Fix the spelling mistakes in this text and repeat it in full:\n\n{TYPOS}",
    "chat": "Write a short story about a cat who learns to play the piano.",
}


def run(engine, ids, max_tokens):
    from ember.infer.sampling import SamplingParams

    req = engine.add_request(ids, SamplingParams(temperature=0.0, max_tokens=max_tokens))
    while engine.has_unfinished():
        engine.step()
    r = req.result()
    acc = req.spec_accepted / req.spec_drafted if req.spec_drafted else 0.0
    return r.decode_tok_s, acc, r.token_ids


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=96)
    args = ap.parse_args()
    import torch

    import ember
    from ember.infer.engine import Engine

    torch.set_num_threads(args.threads)
    model, tok = ember.load("smollm2")
    model.eval()
    print(f"SmolLM2-135M fp32, {args.threads} thread(s), greedy, {args.tokens} tokens, median of {args.repeats}")
    engines = {m: Engine(model, tok, max_batch_size=1, speculative=m) for m in ("off", "ngram")}
    for name, text in TASKS.items():
        ids, _ = tok.render_chat([{"role": "user", "content": text}], add_generation_prompt=True)
        res = {m: [run(e, ids, args.tokens) for _ in range(args.repeats)] for m, e in engines.items()}
        off = statistics.median(r[0] for r in res["off"])
        on = statistics.median(r[0] for r in res["ngram"])
        acc = res["ngram"][0][1]
        same = res["off"][0][2] == res["ngram"][0][2]
        print(f"{name:9s} ({len(ids)} prompt tokens, {len(res['off'][0][2])} generated): off {off:.1f} tok/s, "
              f"ngram {on:.1f} tok/s ({on / off:.2f}x), acceptance {acc:.0%}, identical tokens: {same}")


if __name__ == "__main__":
    main()
