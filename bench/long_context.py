"""Length generalisation: tiny models trained at context 256, evaluated at 256/512/1024/2048.

Three decoders of one shape (2 layers, d_model 64, 4 heads, SwiGLU 192, the 4,096-token BPE
of `ember pretrain`) are trained at ctx 256 on the bundled corpus by the `ember pretrain` loop
(fp32, same seed, steps and batches), one per position method: rope, sinusoidal, learned.
Each is then evaluated at length L ∈ {256, 512, 1024, 2048} as:

  rope            no scaling (extrapolation)
  rope+linear     position interpolation, factor L/256
  rope+ntk        NTK-aware base, factor L/256
  rope+dynamic    dynamic NTK, factor 1 (the base grows with the current length)
  rope+yarn       YaRN, factor L/256, original length 256
  rope+window     sliding window of 256 (no scaling); +sinks: the first 4 tokens kept too
  sinusoidal      the fixed table, extrapolated
  learned         only up to 256 (no rows beyond it): "-"

Two figures per cell:
- ppl: perplexity over the same held-out tokens (the first --windows × 2048 of the val split)
  cut into non-overlapping L-token windows, so only the context each token sees changes;
- passkey: a 5-digit key hidden at a random depth in filler text ("The grass is green. ...
  The pass key is 71432. Remember it. ... What is the pass key? The pass key is"); accuracy =
  how often the true key is the most likely of 10 candidates (9 random keys; chance 0.10).
  These models are far too small to learn retrieval from the corpus, so this mostly shows
  whether long inputs break the model (below chance) rather than retrieval skill.

    python bench/long_context.py [--steps 150] [--batch 8] [--trials 8] [--windows 8] [--procs 3]

Measured (shared 2-core CPU, `--steps 400 --batch 4 --trials 10 --windows 3`; ppl, passkey 0.10
in every cell, i.e. chance):

| method | ppl@256 | ppl@512 | ppl@1024 | ppl@2048 |
|---|---|---|---|---|
| rope | 244.2 | 245.3 | 252.1 | 255.7 |
| rope+linear | 244.2 | 255.7 | 260.0 | 261.9 |
| rope+ntk | 244.2 | 245.9 | 250.1 | 255.4 |
| rope+dynamic | 244.2 | 245.9 | 250.1 | 255.4 |
| rope+yarn | 244.2 | 247.9 | 254.9 | 260.1 |
| rope+window | 244.2 | 243.8 | 244.3 | 244.4 |
| rope+window+sinks | 244.2 | 243.9 | 244.5 | 244.6 |
| sinusoidal | 649.5 | 712.8 | 925.3 | 1154.0 |
| learned | 349.7 | - | - | - |

`--smollm2 1024 2048 --trials 5`: passkey 1.00 at both lengths, with and without YaRN ×2.

Trained models are kept under --out and reused by later runs (--retrain to train again).

`--smollm2 L ...` runs the passkey on SmolLM2-135M (trained at 8192) with and without YaRN ×2
(original 8192, so 16384 positions). 2× its context (16k tokens of a 135M model in fp32) is
out of reach of a shared 2-core CPU, so this measures the lengths given (e.g. 1024 2048):
whether YaRN costs anything inside the trained context, not the gain beyond it.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import random
import sys
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import torch

from ember.model import Transformer
from ember.model.kv_cache import KVCache

TRAIN_LEN, LENGTHS = 256, (256, 512, 1024, 2048)
SHAPE = dict(n_layers=2, d_model=64, n_heads=4, n_kv_heads=4, d_ff=192, max_seq_len=TRAIN_LEN)
METHODS = ["rope", "rope+linear", "rope+ntk", "rope+dynamic", "rope+yarn", "rope+window", "rope+window+sinks",
           "sinusoidal", "learned"]
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "


def train(pos_emb: str, steps: int, batch: int, out: Path, retrain: bool, threads: int = 1):
    torch.set_num_threads(threads)
    from ember.train.kit.pretraining import (
        DataConfig,
        ModelOverrides,
        PretrainConfig,
        build_pretrain,
        load_run,
    )
    from ember.train.loop import TrainConfig
    from ember.train.optim import OptimConfig

    folder = out / pos_emb
    if (folder / "checkpoints").is_dir() and not retrain:
        return load_run(folder)
    cfg = PretrainConfig(
        arch="tiny", model=ModelOverrides(**SHAPE, pos_emb=pos_emb), data=DataConfig(seq_len=TRAIN_LEN),
        train=TrainConfig(steps=steps, batch_size=batch, eval_every=steps, eval_windows=16, sample_every=0,
                          save_every=steps,
                          precision="fp32", out=str(folder), progress=False, overwrite=True),
        optim=OptimConfig(warmup_steps=steps // 10), sample_tokens=0, export_hf=False,
    )
    summary = build_pretrain(cfg).fit()
    print(f"{pos_emb}: val_loss {summary['val_loss']:.3f} at ctx {TRAIN_LEN}", file=sys.stderr)
    return load_run(folder)


def variant(model: Transformer, name: str, L: int) -> Transformer | None:
    """The trained model re-configured for length L as `name` says (same weights)."""
    cfg = model.config
    if cfg.pos_emb == "learned":
        return model if L <= TRAIN_LEN else None
    f = L / TRAIN_LEN
    changes = {"max_seq_len": L + 16}
    if name == "rope+linear":
        changes["rope_scaling"] = {"type": "linear", "factor": f}
    elif name == "rope+ntk":
        changes["rope_scaling"] = {"type": "ntk", "factor": f}
    elif name == "rope+dynamic":
        changes["rope_scaling"] = {"type": "dynamic", "factor": 1.0, "original_max_position_embeddings": TRAIN_LEN}
    elif name == "rope+yarn":
        changes["rope_scaling"] = {"type": "yarn", "factor": f, "original_max_position_embeddings": TRAIN_LEN}
    elif name.startswith("rope+window"):
        changes.update(sliding_window=TRAIN_LEN, n_sink_tokens=4 if "sinks" in name else 0)
    out = Transformer(dataclasses.replace(cfg, **changes)).eval()
    out.load_state_dict(model.state_dict())
    return out


@torch.no_grad()
def perplexity(model: Transformer, tokens: torch.Tensor, L: int, max_windows: int) -> float:
    """Perplexity over the same first max_windows·2048 tokens at every L, cut into L-token windows
    (so lengths differ only in how much context each token has)."""
    n = min(max_windows * LENGTHS[-1], len(tokens) - 1) // L
    total = 0.0
    for i in range(n):
        w = tokens[i * L: i * L + L + 1]
        logits = model(w[None, :-1])
        total += torch.nn.functional.cross_entropy(logits[0], w[1:]).item()
    return math.exp(total / n)


def passkey_prompt(tok, L: int, key: str, rng: random.Random) -> list[int]:
    """Filler with the key sentence at a random depth, to about L tokens, ending in the question."""
    head = tok.encode("There is an important pass key hidden inside a lot of irrelevant text. Find it. ")
    needle = tok.encode(f"The pass key is {key}. Remember it. {key} is the pass key. ")
    tail = tok.encode("What is the pass key? The pass key is")
    filler = tok.encode(FILLER)
    room = L - len(head) - len(needle) - len(tail) - 8
    body = (filler * (room // len(filler) + 1))[:room]
    cut = int(rng.uniform(0.1, 0.9) * len(body))
    return head + body[:cut] + needle + body[cut:] + tail


@torch.no_grad()
def passkey(model: Transformer, tok, L: int, trials: int, seed: int = 0) -> float:
    """Share of trials where the true key is the most likely of 10 candidates (chance 0.1):
    the prompt is prefilled once, then the candidates are scored in one batch on its cache."""
    rng, hits = random.Random(seed), 0
    for _ in range(trials):
        keys = [str(rng.randint(10000, 99999)) for _ in range(10)]
        prefix = passkey_prompt(tok, L, keys[0], rng)
        cands = [tok.encode(" " + k) for k in keys]
        P, K = len(prefix), max(map(len, cands))
        cache = KVCache.for_model(model, 1, P + K)
        first = model(torch.tensor([prefix]), cache, torch.arange(P)[None])[0, -1].log_softmax(-1)  # (V,)
        big = KVCache.for_model(model, len(cands), P + K)
        for i in range(len(cache.k)):
            big.k[i][:, :, :P] = cache.k[i][:, :, :P]
            big.v[i][:, :, :P] = cache.v[i][:, :, :P]
        ids = torch.tensor([c + [0] * (K - len(c)) for c in cands])  # (C, K) right-padded
        logp = model(ids, big, (P + torch.arange(K)).expand(len(cands), K)).log_softmax(-1)  # (C, K, V)
        scores = []
        for c, row in zip(cands, logp):
            scores.append(first[c[0]].item() + sum(row[j - 1, c[j]].item() for j in range(1, len(c))))
        hits += max(range(len(cands)), key=scores.__getitem__) == 0
    return hits / trials


def smollm2(lengths: list[int], trials: int) -> None:
    """SmolLM2-135M (trained at 8192) passkey accuracy with and without YaRN ×2 at `lengths`."""
    from ember.model.load import build_model, load_model
    from ember.tokenizer import load_tokenizer

    base, tok = load_model("smollm2"), load_tokenizer("smollm2")
    yarn = {"type": "yarn", "factor": 2.0, "original_max_position_embeddings": base.config.max_seq_len}
    yarned = build_model(dataclasses.replace(base.config, rope_scaling=yarn, max_seq_len=2 * base.config.max_seq_len),
                         base.state_dict())
    print(f"SmolLM2-135M (GGUF, fp32 on CPU), passkey over {trials} trials per length (chance 0.10)")
    print("| model | " + " | ".join(f"key@{L}" for L in lengths) + " |")
    print("|---|" + "---|" * len(lengths))
    for name, model in (("smollm2", base), ("smollm2+yarn×2", yarned)):
        cells = []
        for L in lengths:
            cells.append(f"{passkey(model, tok, L, trials):.2f}")
            print(f"{name} key@{L}: {cells[-1]}", file=sys.stderr, flush=True)
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--windows", type=int, default=8, help="perplexity over this many × 2048 held-out tokens")
    p.add_argument("--threads", type=int, default=1, help="threads per process")
    p.add_argument("--procs", type=int, default=3, help="processes training and evaluating at once")
    p.add_argument("--out", default="runs/bench-long-context")
    p.add_argument("--retrain", action="store_true")
    p.add_argument("--smollm2", type=int, nargs="*", default=None, metavar="L",
                   help="instead: SmolLM2's passkey accuracy with and without YaRN at these lengths")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.smollm2 is not None:
        return smollm2(args.smollm2 or [1024], args.trials)
    out = Path(args.out)
    kinds = ("rope", "sinusoidal", "learned")
    with ProcessPoolExecutor(args.procs, mp_context=get_context("spawn")) as pool:
        for f in [pool.submit(train, pe, args.steps, args.batch, out, args.retrain, args.threads) for pe in kinds]:
            f.result()  # trained and saved under out/<kind>
        rows = pool.map(evaluate, METHODS, [args] * len(METHODS))
        print(f"trained at ctx {TRAIN_LEN}, {args.steps} steps × {args.batch} windows; {SHAPE}; ppl over the "
              f"first {args.windows}×2048 val tokens; passkey over {args.trials} trials (chance 0.10)")
        print("| method | " + " | ".join(f"ppl@{L} | key@{L}" for L in LENGTHS) + " |")
        print("|---|" + "---|---|" * len(LENGTHS))
        for name, cells in zip(METHODS, rows):
            print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


def evaluate(name: str, args) -> list[str]:
    """The row of one method: perplexity and passkey accuracy at each length."""
    from ember.data.shards import open_split
    from ember.train.kit.pretraining import load_run

    torch.set_num_threads(args.threads)
    base, tok = load_run(Path(args.out) / name.split("+")[0])
    split = open_split(Path("runs/data/bundled-bpe4096"), "val")
    val = torch.from_numpy(split.tokens(0, len(split)).astype("int64"))
    cells = []
    for L in LENGTHS:
        m = variant(base, name, L)
        if m is None:
            cells += ["-", "-"]
            continue
        cells += [f"{perplexity(m, val, L, args.windows):.1f}", f"{passkey(m, tok, L, args.trials):.2f}"]
    print(f"{name}: {cells}", file=sys.stderr, flush=True)
    return cells


if __name__ == "__main__":
    main()
