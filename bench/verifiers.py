"""What makes the ORM / PRM verifiers learn: heads fitted on the frozen SmolLM2's states
(`ember reward --peft head`), swept over the layer read, the L2 penalty and the number of
training solutions, all on the same held-out solutions (half corrupted).

    .venv/bin/python -P bench/verifiers.py --n_train 256 --n_eval 64

Each solution is encoded once (ember.data.reasoning.encode_solution); the states at every
step's last token (PRM) and at the last token (ORM) are kept for the middle and the final
layer, so every fit is seconds. Prints held-out step AUROC (PRM) / solution AUROC (ORM and
PRM-min) per setting and writes runs/verifier_sweep.json. Only the final layer's head is
what `load_verifier` reads; the middle layer says whether the states there hold more.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from ember.core.io import atomic_write_json
from ember.data.reasoning import encode_solution, verifier_rows
from ember.model.heads import ScalarHead
from ember.train.kit.verifier import figures, fit_head


@torch.no_grad()
def states(model, tok, rows, layers, max_len=160, batch=8) -> list[dict]:
    """Per row: {layer: (steps + 1, D) states at the step ends then the last token}, labels."""
    captured = {}
    hooks = [model.layers[i].register_forward_hook(lambda m, a, out, i=i: captured.__setitem__(i, out))
             for i in layers if i != "final"]
    out = []
    for j in tqdm(range(0, len(rows), batch), desc="states", file=sys.stderr):
        chunk = rows[j : j + batch]
        enc = [encode_solution(tok, r["question"], r["steps"], max_len) for r in chunk]
        T = max(len(e[0]) for e in enc)
        h = model.hidden(torch.tensor([e[0] + [0] * (T - len(e[0])) for e in enc]))
        for b, (r, (_, ends, last)) in enumerate(zip(chunk, enc)):
            pos = torch.tensor(ends + [last])
            f = {i: (h if i == "final" else captured[i])[b, pos].float() for i in layers}
            out.append({"f": f, "labels": r["labels"][len(r["labels"]) - len(ends):], "correct": r["correct"]})
    for hk in hooks:
        hk.remove()
    return out


def design(rows, layer, objective):
    """(features, targets, row index) of an objective: the last token (outcome) or the steps."""
    feats, targets, index = [], [], []
    for k, r in enumerate(rows):
        f = r["f"][layer]
        if objective == "outcome":
            feats.append(f[-1:]), targets.append([float(r["correct"])]), index.append([k])
        else:
            feats.append(f[:-1]), targets.append([float(x) for x in r["labels"]]), index.append([k] * len(r["labels"]))
    return torch.cat(feats), torch.tensor(sum(targets, [])), torch.tensor(sum(index, []))


def main() -> None:
    import ember

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n_train", type=int, default=256)
    ap.add_argument("--n_eval", type=int, default=64)
    ap.add_argument("--l2", type=float, nargs="+", default=[1e-3, 1e-2, 1e-1, 1.0])
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.time()
    model, tok = ember.load("smollm2")
    model.eval()
    layers = [model.config.n_layers // 2, "final"]
    train = states(model, tok, verifier_rows(args.n_train, 0, "train"), layers)
    held = states(model, tok, verifier_rows(args.n_eval, 0, "heldout"), layers)
    results = []
    sizes = sorted({args.n_train // 4, args.n_train // 2, args.n_train})
    for objective in ("outcome", "steps"):
        for layer in layers:
            hx, hy, hi = design(held, layer, objective)
            for n in sizes:
                for l2 in args.l2:
                    x, y, _ = design(train[:n], layer, objective)
                    head = ScalarHead(x.shape[1])
                    fit_head(head, x, y, l2=l2)
                    with torch.no_grad():
                        f = figures(head(hx), hy, hi)
                    results.append({"objective": objective, "layer": str(layer), "n_train": n, "l2": l2, **f})
                    print(f"{objective:<7} layer {layer!s:<5} n {n:<4} l2 {l2:<6g} step AUROC {f['rm_auroc']:.3f}  "
                          f"solution AUROC {f['solution_auroc']:.3f}  accuracy {f['solution_accuracy']:.3f}")
    atomic_write_json(Path("runs/verifier_sweep.json"), {"n_train": args.n_train, "n_eval": args.n_eval,
                                                       "seconds": round(time.time() - t0), "results": results})
    print(json.dumps({"seconds": round(time.time() - t0)}))


if __name__ == "__main__":
    main()
