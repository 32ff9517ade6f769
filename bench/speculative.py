"""Speculative decoding, on vs off in one run (SmolLM2-135M, CPU, one request).

  grounded   edit a given text (fix its typos): a long prompt the reply copies from
  chat       a free question: little to copy

For each task, greedy and sampled (T=0.7, seed 0): decode tok/s (tokens after the first /
time after the first) with drafting off and with each drafter — prompt lookup (ngram), early
exit (the model's first --draft-layers blocks drafting --draft-k tokens) and a draft model
(--draft-model loaded with --draft-quant: by default SmolLM2's own Q4_1 file on the native
decode step, drafting for the float32 model) — their ratio to off, the share of drafted tokens accepted,
whether greedy replies are token-identical to off, and the 1-minute load average while it
ran (a shared machine: read the ratios, not the absolute tok/s). Modes run in turn, task by
task, so a change in load hits them alike.

    python -P bench/speculative.py [--threads 1] [--tokens 64] [--quant none|auto] [--draft-layers 25]
                                   [--draft-k 4] [--draft-model smollm2] [--draft-quant auto]
"""

from __future__ import annotations

import argparse
import os
import time

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


def run(engine, ids, params):
    req = engine.add_request(ids, params)
    t0 = time.perf_counter()
    while engine.has_unfinished():
        engine.step()
    r = req.result()
    acc = req.spec_accepted / req.spec_drafted if req.spec_drafted else 0.0
    return r.decode_tok_s, acc, req.spec_drafted, r.token_ids, time.perf_counter() - t0


def engines(model, tok, args):
    from ember.infer.draft import ModelDrafter, early_exit
    from ember.infer.engine import Engine

    out = {"off": "off", "ngram": "ngram",
           f"early-exit {args.draft_layers}": ModelDrafter(early_exit(model, args.draft_layers), k=args.draft_k)}
    if args.draft_model:
        import ember

        quant = None if args.draft_quant == "none" else args.draft_quant
        draft, draft_tok = ember.load(args.draft_model, quant=quant)
        out[f"draft {type(draft).__name__[:6]}"] = ModelDrafter(draft.eval(), draft_tok, name=args.draft_model,
                                                                 k=args.draft_k)
    return {name: Engine(model, tok, max_batch_size=1, speculative=s) for name, s in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--quant", default="none", help="the target's: none (float32) or auto (native Q4 step)")
    ap.add_argument("--draft-layers", type=int, default=25)
    ap.add_argument("--draft-k", type=int, default=4)
    ap.add_argument("--draft-model", default="smollm2", help="'' for none")
    ap.add_argument("--draft-quant", default="auto")
    args = ap.parse_args()
    import torch

    import ember
    from ember.infer.sampling import SamplingParams

    torch.set_num_threads(args.threads)
    model, tok = ember.load("smollm2", quant=None if args.quant == "none" else args.quant)
    model.eval()
    by_mode = engines(model, tok, args)
    print(f"SmolLM2-135M ({type(model).__name__}, quant {args.quant}), {args.threads} thread(s), {args.tokens} "
          f"tokens, draft k {args.draft_k} (ngram: up to 8)")
    print(f"{'task':9s} {'decoding':8s} {'mode':14s} {'tok/s':>6s} {'x off':>6s} {'accept':>7s} {'drafted':>7s} "
          f"{'same':>5s} {'load':>5s}")
    for task, text in TASKS.items():
        ids, _ = tok.render_chat([{"role": "user", "content": text}], add_generation_prompt=True)
        for decoding, sp in (("greedy", SamplingParams(temperature=0.0, max_tokens=args.tokens)),
                             ("T=0.7", SamplingParams(temperature=0.7, seed=0, max_tokens=args.tokens))):
            base = None
            for mode, engine in by_mode.items():
                tok_s, acc, drafted, out, _ = run(engine, ids, sp)
                base = base or (tok_s, out)
                same = str(out == base[1]) if decoding == "greedy" else "-"
                print(f"{task:9s} {decoding:8s} {mode:14s} {tok_s:6.2f} {tok_s / base[0]:6.2f} {acc:7.0%} "
                      f"{drafted:7d} {same:>5s} {os.getloadavg()[0]:5.1f}", flush=True)


if __name__ == "__main__":
    main()
