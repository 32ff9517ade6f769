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
                                   [--modes off,ngram,early-exit,draft]

Measured (`--threads 1 --tokens 64`, then `--quant auto`, on a 2-core machine shared with other
jobs, load average 21-31: absolute tok/s are far below an idle machine's; read the ratios):

    SmolLM2-135M (Transformer, quant none), 1 thread(s), 64 tokens, draft k 4 (ngram: up to 8)
    task      decoding mode            tok/s  x off  accept drafted  same  load
    grounded  greedy   off              1.73   1.00      0%       0  True  30.7
    grounded  greedy   ngram            3.36   1.94     51%      89  True  30.9
    grounded  greedy   early-exit 25    1.30   0.75     28%      32  True  30.6
    grounded  greedy   draft Native     5.15   2.98     98%      51  True  30.7
    grounded  T=0.7    off              2.63   1.00      0%       0     -  30.6
    grounded  T=0.7    ngram            6.14   2.34     48%      83     -  30.5
    grounded  T=0.7    early-exit 25    2.26   0.86     28%      32     -  30.1
    grounded  T=0.7    draft Native     6.70   2.55    100%      50     -  29.3
    chat      greedy   off              3.71   1.00      0%       0  True  28.8
    chat      greedy   ngram            3.75   1.01      0%      36  True  28.4
    chat      greedy   early-exit 25    2.77   0.75     19%      32  True  27.8
    chat      greedy   draft Native     6.08   1.64     83%      58  True  27.1
    chat      T=0.7    off              4.06   1.00      0%       0     -  26.4
    chat      T=0.7    ngram            3.82   0.94      0%      36     -  26.1
    chat      T=0.7    early-exit 25    2.74   0.67     22%      32     -  25.2
    chat      T=0.7    draft Native     8.16   2.01     98%      51     -  25.2

    SmolLM2-135M (NativeTransformer, quant auto), 1 thread(s), 64 tokens, draft k 4 (ngram: up to 8)
    grounded  greedy   off             30.09   1.00      0%       0  True  24.3
    grounded  greedy   ngram           18.09   0.60     53%      90 False  24.6
    grounded  greedy   early-exit 25   11.56   0.38     28%      32 False  25.3
    grounded  greedy   draft Native     8.73   0.29    100%      50 False  25.5
    grounded  T=0.7    off             23.38   1.00      0%       0     -  25.9
    grounded  T=0.7    ngram           12.52   0.54     40%     102     -  26.1
    grounded  T=0.7    early-exit 25   11.10   0.47     28%      32     -  26.6
    grounded  T=0.7    draft Native    10.56   0.45     88%      32     -  26.8
    chat      greedy   off             26.25   1.00      0%       0  True  26.9
    chat      greedy   ngram           19.49   0.74     16%      32 False  27.0
    chat      greedy   early-exit 25   13.85   0.53      9%      32 False  27.2
    chat      greedy   draft Native     9.78   0.37     98%      51 False  27.8
    chat      T=0.7    off             26.33   1.00      0%       0     -  28.2
    chat      T=0.7    ngram           16.13   0.61      0%      36     -  28.5
    chat      T=0.7    early-exit 25   12.38   0.47     22%      32     -  28.4
    chat      T=0.7    draft Native    10.27   0.39    100%      50     -  28.3

The distilled student of `ember distill` as the draft (runs/bench-distill/kd/model: 4 blocks,
d_model 192, 30 steps, held-out top-1 agreement with SmolLM2 7.9%; `--modes off,draft
--draft-model runs/bench-distill/kd/model --draft-quant none`, load average 19-21): no draft
accepted (0% of 32 on each task and decoding), so it stopped after its probation at 0.87-0.95x.

On the native decode step every drafter loses (a verify forward of k + 1 tokens runs PyTorch's
Q4 path, 6-8 native steps), so `--speculative auto` is off there; greedy tokens differ from off
there because the native step and the PyTorch forward round differently. Early exit drafts
poorly (SmolLM2's blocks before the last are not trained to feed its head) and stops after its
32-token probation; a draft with acceptance under its cost + 0.1 stops likewise.
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
    if args.draft_model and "draft" in args.modes.split(","):
        import ember

        quant = None if args.draft_quant == "none" else args.draft_quant
        draft, draft_tok = ember.load(args.draft_model, quant=quant)
        out[f"draft {type(draft).__name__[:6]}"] = ModelDrafter(draft.eval(), draft_tok, name=args.draft_model,
                                                                 k=args.draft_k)
    keep = args.modes.split(",")
    return {name: Engine(model, tok, max_batch_size=1, speculative=s) for name, s in out.items()
            if name.split()[0] in keep}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--quant", default="none", help="the target's: none (float32) or auto (native Q4 step)")
    ap.add_argument("--draft-layers", type=int, default=25)
    ap.add_argument("--draft-k", type=int, default=4)
    ap.add_argument("--draft-model", default="smollm2", help="'' for none")
    ap.add_argument("--draft-quant", default="auto")
    ap.add_argument("--modes", default="off,ngram,early-exit,draft", help="which rows, comma-separated")
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
