"""The seed's claim, measured: "at equal pre-training compute, ELECTRA's discriminator beats
MLM on a downstream probe" — and XLNet's permutation LM beside them.

Each objective pre-trains the same small encoder (mini-bert shape, --layers × --width,
context --seq-len, batch --batch) on the bundled corpus with the same 4,096-token BPE (with
[MASK]) for the same training FLOPs (--pflops, counted as ember.train.kit.objectives counts
them: ELECTRA pays for its generator's forward and backward, XLNet for its query rows), so
the cheaper objective takes more steps. Then each encoder — and the same shape untrained, the
no-pre-training baseline — is fine-tuned with a classification head (ember.train.classify,
mean pooling, every weight trained) on the word-swap probe (ember.data.probe: is this
sentence as written, or were two of its words swapped?) and scored on held-out rows, over
--seeds fine-tuning seeds.

    python bench/objectives.py [--pflops 0.05] [--layers 4] [--width 128] [--seeds 2]

The probe's sentences come from the corpus the encoders pre-train on (each sentence is a
probe row once, as written or swapped), so pre-training has seen the originals: the probe
asks whether the encoder learned what fluent text of this corpus looks like.

Measured (2026-12-06, defaults: 4 × 128, 0.01 PFLOPs each, 2 shared CPU cores, ~9 min): MLM
52.3%, ELECTRA 49.3%, PLM 50.0%, untrained 53.0% — all within noise of chance (σ ≈ 1.6
points on 1,000 rows). At this budget MLM predicts 12% of masked tokens and ELECTRA's
discriminator stays at its base rate (it calls every token original; BCE = the entropy of
the 14% replaced), so the claim is neither confirmed nor refuted here: it needs more compute.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

THREADS = 2
OBJECTIVES = ("mlm", "electra", "plm")


def pretrain(objective: str, args, out: Path, steps: int | None = None):
    """(trainer, summary) of one pre-training run of `steps` (default: the FLOPs budget)."""
    from ember.train.config import TrainConfig
    from ember.train.kit.pretraining import (
        DataConfig,
        ModelOverrides,
        PretrainConfig,
        build_pretrain,
    )
    from ember.train.optim import OptimConfig

    def config(n_steps: int) -> PretrainConfig:
        return PretrainConfig(
            arch="mini-bert", objective=objective,
            model=ModelOverrides(n_layers=args.layers, d_model=args.width, n_heads=args.width // 32,
                                 d_ff=4 * args.width),
            data=DataConfig(seq_len=args.seq_len),
            train=TrainConfig(steps=n_steps, batch_size=args.batch, eval_every=0, eval_windows=16,
                              sample_every=0, save_every=0, log_every=max(1, n_steps // 10), seed=0,
                              out=str(out / objective), progress=False, precision="fp32"),
            optim=OptimConfig(lr=args.lr, warmup_steps=max(1, n_steps // 10), min_lr_ratio=0.1),
            export_hf=False, sample_tokens=0,
        )

    trainer = build_pretrain(config(steps or 1))
    if steps is None:  # the budget in steps for this objective's FLOPs per token
        per_step = trainer.flops_per_token * trainer.tokens_per_step
        steps = max(1, round(args.pflops * 1e15 / per_step))
        trainer = build_pretrain(config(steps))
    t0 = time.perf_counter()
    summary = trainer.fit()
    summary["seconds"] = time.perf_counter() - t0
    summary["flops"] = trainer.flops_per_token * trainer.tokens_per_step * steps
    return trainer, summary


def probe_accuracy(body, tok, rows, args, out: Path, init: str, seed: int) -> float:
    from ember.train.classify import Config, fine_tune
    from ember.train.config import TrainConfig
    from ember.train.optim import OptimConfig

    train_rows, test_rows = rows
    cfg = Config(init=init, pooling="mean", train=TrainConfig(
        steps=args.ft_steps, batch_size=32, eval_every=0, sample_every=0, save_every=0,
        log_every=args.ft_steps, seed=seed, out=str(out), progress=False, precision="fp32"),
        optim=OptimConfig(lr=args.ft_lr, warmup_steps=args.ft_steps // 10, min_lr_ratio=0.0))
    return fine_tune(body, tok, train_rows, test_rows, cfg)["val_accuracy"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pflops", type=float, default=0.05, help="pre-training budget per objective, PFLOPs")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--width", type=int, default=128, help="d_model (heads of 32)")
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3, help="pre-training peak learning rate")
    p.add_argument("--ft-steps", type=int, default=300, help="fine-tuning steps on the probe (batch 32)")
    p.add_argument("--ft-lr", type=float, default=2e-4)
    p.add_argument("--n-test", type=int, default=1000, help="held-out probe rows")
    p.add_argument("--seeds", type=int, default=2, help="fine-tuning seeds per encoder")
    p.add_argument("--objectives", default=",".join(OBJECTIVES))
    args = p.parse_args()
    torch.set_num_threads(THREADS)
    os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))

    from ember.data.corpus import bundled_documents
    from ember.data.probe import corpus_sentences, probe_split, word_swap_rows
    from ember.train.objectives import encoder_body

    rows = probe_split(word_swap_rows(corpus_sentences(bundled_documents()), seed=0), args.n_test)
    print(f"probe: {len(rows[0])} train / {len(rows[1])} test rows, "
          f"{sum(r.label for r in rows[1]) / len(rows[1]):.1%} of the test rows as written", file=sys.stderr)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        body = tok = None
        for objective in args.objectives.split(","):
            trainer, summary = pretrain(objective, args, out)
            body, tok = encoder_body(trainer.plain), trainer.tokenizer
            accs = [probe_accuracy(body, tok, rows, args, out / f"ft-{objective}-{s}", "pretrained", s)
                    for s in range(args.seeds)]
            results.append((objective, summary, accs))
            print(f"{objective}: {summary['steps']} steps, {summary['seconds']:.0f} s, probe {accs}", file=sys.stderr)
        accs = [probe_accuracy(body, tok, rows, args, out / f"ft-none-{s}", "random", s) for s in range(args.seeds)]
        results.append(("none (random init)", None, accs))
    report(results, args)


def report(results, args) -> None:
    print(f"\nencoder: {args.layers} layers × d_model {args.width}, ctx {args.seq_len}, batch {args.batch}; "
          f"budget {args.pflops} PFLOPs per objective; probe: word swap, {args.n_test} test rows, "
          f"{args.seeds} fine-tuning seeds × {args.ft_steps} steps\n")
    print("| objective | pre-train steps | tokens | PFLOPs | time (s) | final pre-train loss | probe accuracy |")
    print("|---|---|---|---|---|---|---|")
    for name, s, accs in results:
        acc = f"{100 * sum(accs) / len(accs):.1f}% ({', '.join(f'{100 * a:.1f}' for a in accs)})"
        if s is None:
            print(f"| {name} | 0 | 0 | 0 | 0 | – | {acc} |")
        else:
            print(f"| {name} | {s['steps']} | {s['tokens']:,} | {s['flops'] / 1e15:.3f} | {s['seconds']:.0f} | "
                  f"{s['val_loss']:.3f} | {acc} |")


if __name__ == "__main__":
    main()
