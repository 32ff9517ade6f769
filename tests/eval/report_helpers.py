"""Run folders for the report tests: a real tiny `ember pretrain` run with an evaluation
results.json attached, a GRPO-shaped metrics file, and a scaling sweep's files."""

import json
import random
from pathlib import Path

TINY = ["--arch", "mini-llama", "--model.n_layers", "1", "--model.d_model", "32", "--model.n_heads", "2",
        "--model.n_kv_heads", "1", "--model.d_ff", "64", "--data.seq_len", "16"]


def pretrain_run(root: Path, name: str, lr: str, shards: Path) -> Path:
    """`ember pretrain` for 6 steps (validation every 3) into root/name."""
    from ember.cli import main

    out = root / name
    args = ["pretrain", *TINY, "--data.dir", str(shards), "--train.steps", "6", "--train.batch_size", "2",
            "--train.eval_every", "3", "--train.eval_windows", "2", "--train.sample_every", "0",
            "--train.log_every", "1", "--train.out", str(out), "--train.progress", "false",
            "--train.precision", "fp32", "--sample_tokens", "4", "--optim.lr", lr, "--export_hf", "false"]
    assert main(args) == 0
    return out


def tiny_shards(root: Path) -> Path:
    from ember.data.corpus import pydoc_topics_text
    from ember.data.shards import prepare_shards
    from ember.tokenizer import train_bpe

    text = pydoc_topics_text()[:40_000]
    docs = [text[i: i + 2000] for i in range(0, len(text), 2000)]
    tok = train_bpe(docs, 300, special_tokens=["<|endoftext|>"], eos_tokens=["<|endoftext|>"], progress=False)
    prepare_shards(root / "shards", tok, texts=docs, progress=False, workers=1)
    return root / "shards"


def results_json(folder: Path, task: str, acc: float, model: str = "m", items: int = 3) -> Path:
    """An `ember eval run` results.json (its documented shape) in folder."""
    folder.mkdir(parents=True, exist_ok=True)
    res = {"task": task, "model": model, "backend": "engine", "shots": 0, "metrics": {"acc": acc, "acc_norm": acc / 2},
           "stderr": {"acc": 0.1, "acc_norm": 0.05}, "n": items, "seconds": 0.5,
           "items": [{"doc": {"q": i}, "prompt": f"Question {i} <i>?</i>", "target": 0, "choices": ["yes", "no"],
                      "loglikelihoods": [-1.5, -2.0], "metrics": {"acc": 1.0}} for i in range(items)],
           "config": {}}
    (folder / "results.json").write_text(json.dumps(res))
    return folder / "results.json"


def grpo_run(folder: Path, steps: int = 24) -> Path:
    """metrics.jsonl rows as GRPO logs them (reward, accuracy, step_tokens), rising on a sigmoid."""
    folder.mkdir(parents=True, exist_ok=True)
    rng, c, rows = random.Random(0), 0.0, []
    for s in range(1, steps + 1):
        c += 1000.0
        r = 0.1 + 0.7 / (1 + (8000 / c) ** 2) + rng.uniform(-0.02, 0.02)
        rows.append({"step": s, "loss": 0.05, "reward": r, "accuracy": 0.9 * r, "step_tokens": 1000.0, "lr": 1e-5})
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 99, "rew')
    (folder / "config.json").write_text(json.dumps({"recipe": "grpo", "lr": 1e-5}))
    return folder


def scaling_sweep(folder: Path) -> Path:
    from ember.eval.scaling import ScalingFit

    folder.mkdir(parents=True, exist_ok=True)
    law = ScalingFit(E=1.8, A=400.0, B=300.0, alpha=0.34, beta=0.28, n_points=4)
    pts = [{"n_params": n, "n_tokens": d, "loss": law.predict(n, d), "name": f"n{n}-d{d}"}
           for n in (100_000, 1_000_000) for d in (1_000_000, 8_000_000)]
    (folder / "points.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pts))
    held = {"n_params": 2_000_000, "n_tokens": 16_000_000, "loss": 7.0, "name": "held"}
    (folder / "holdout.jsonl").write_text(json.dumps(held) + "\n")
    fit = {"fit": law.to_dict(), "holdout": [{"name": "held", "N": 2_000_000, "D": 16_000_000, "measured": 7.0,
                                              "predicted": 6.9, "rel_error": -0.014}], "compute_optimal": []}
    (folder / "fit.json").write_text(json.dumps(fit))
    return folder
