"""What makes the ORM / PRM verifiers learn: heads fitted on the frozen SmolLM2's states
(`ember reward --peft head`), swept over the layer read, the L2 penalty and the number of
training solutions, all on the same held-out solutions (half corrupted).

    .venv/bin/python -P bench/verifiers.py --n_train 256 --n_eval 64

Each solution is encoded once (ember.data.reasoning.encode_solution); the states at every
step's last token (PRM) and at the last token (ORM) are kept for the middle and the final
layer, so every fit is seconds. Prints held-out step AUROC (PRM) / solution AUROC (ORM and
PRM-min) per setting and writes runs/verifier_sweep.json. Only the final layer's head is
what `load_verifier` reads; the middle layer says whether the states there hold more.

On-policy verifiers (`--onpolicy ADAPTER`): the policy (SmolLM2 with the SFT reasoning
adapter, LoRA merged, fp32) samples `--k` replies to each of `--n_questions` training
problems per level of `--levels` (seed 2027, questions of the strategies bench's held-out
set left out); each reply's equation lines (`split_steps`) are labelled by `step_labels`
and its outcome by `is_correct`. Heads are fitted on the questions' first 75% and scored
on the rest, next to the corrupted-solution heads (--orm, --prm) on the same replies; then
refitted on all and written as `load_verifier` folders under --out (orm/, prm/):

    OMP_NUM_THREADS=1 .venv/bin/python -P bench/verifiers.py --onpolicy runs/sft-reasoning/adapter \\
        --levels 3 4 5 --n_questions 40 --k 4 --out runs/verifiers-onpolicy

Measured 2026-12-07 (levels as defined at c49bff5, one thread under load ~16, 48 min, 25 of
them the body's states): 476 replies to 119 questions, all with an equation line, 157 right.
The held-out quarter is the last 30 questions, all of level 5 (the split follows question
order: the hardest level only, 120 replies). Held-out AUROC, on-policy head (corrupted-
solution head): ORM 0.52 (0.36), PRM steps 0.71 (0.64), PRM solution by lowest step 0.58
(0.48). On the 512 level-3 replies of bench/reasoning_strategies.py, against their
correctness: ORM 0.557 (0.518), PRM 0.739 (0.528).

`reply_features` and `step_scores` score many replies with any `--peft head` verifier from
the body's states computed once; `EquationPRM` lets beam search read only equation lines.
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


def policy_generator(adapter: str, batch: int):
    """SmolLM2 with a LoRA adapter merged (fp32), batched by the engine."""
    from ember.agents.tool_eval import load_for_eval
    from ember.infer.engine import Engine
    from ember.peft import merge_lora
    from ember.prompting.generate import EngineGenerator

    net, tok = load_for_eval("smollm2", adapter)
    return EngineGenerator(Engine(merge_lora(net).eval(), tok, max_batch_size=batch, batch_invariant=False), chat=True)


def sample_policy(gen, problems: list[dict], k: int, max_tokens: int, seed: int, batch: int) -> list[dict]:
    """k replies (temperature 0.7) to each problem: {"problem", "texts", "tokens"}."""
    from ember.data.reasoning_tasks import prompt_text

    out, per = [], max(1, batch // k)
    for i in tqdm(range(0, len(problems), per), desc="sample", file=sys.stderr):
        part = problems[i : i + per]
        replies = gen.generate([[{"role": "user", "content": prompt_text(p)}] for p in part], k, 0.7, max_tokens,
                               (), seed)
        out += [{"problem": p, "texts": [r.text for r in rs], "tokens": [r.tokens for r in rs]}
                for p, rs in zip(part, replies)]
    return out


def onpolicy_rows(samples: list[dict]) -> list[dict]:
    """One verifier row per reply that writes at least one equation line: its steps, their
    `step_labels` and the reply's outcome (`is_correct`); "q" numbers the question."""
    from ember.data.reasoning_tasks import is_correct, step_labels
    from ember.train.verifiers import split_steps

    rows = []
    for q, s in enumerate(samples):
        p = s["problem"]
        for text in s["texts"]:
            steps = split_steps(text)
            if steps:
                rows.append({"question": p["question"], "steps": steps, "labels": step_labels(p, steps),
                             "correct": int(is_correct(p, text)), "q": q})
    return rows


def head_figures(head, rows, objective) -> dict:
    x, y, index = design(rows, "final", objective)
    with torch.no_grad():
        f = figures(head(x), y, index)
    return {k: round(v, 4) for k, v in f.items()}


def onpolicy(args) -> dict:
    """Sample, label, fit and write the on-policy ORM and PRM (see the module docstring)."""
    from safetensors.torch import load, save

    import ember
    from ember.core.io import atomic_write_bytes
    from ember.data.reasoning_tasks import make_problems

    out = Path(args.out)
    cache = out / "samples.json"
    if cache.is_file():
        samples = json.loads(cache.read_text())
    else:
        held = {p["question"] for d in args.levels for p in make_problems(args.exclude_n, d, 12345)}
        problems = [p | {"difficulty": d} for d in args.levels for p in make_problems(args.n_questions, d, 2027)
                    if p["question"] not in held]
        samples = sample_policy(policy_generator(args.onpolicy, args.batch), problems, args.k, args.max_tokens,
                                args.seed, args.batch)
        atomic_write_json(cache, samples)
    rows = onpolicy_rows(samples)
    model, tok = ember.load("smollm2")
    feats = states(model.eval(), tok, rows, ["final"])
    cut = int(0.75 * len(samples))
    train, held = [f for f, r in zip(feats, rows) if r["q"] < cut], [f for f, r in zip(feats, rows) if r["q"] >= cut]
    report = {"replies": sum(len(s["texts"]) for s in samples), "rows": len(rows), "train_rows": len(train),
              "held_rows": len(held), "correct": sum(r["correct"] for r in rows),
              "no_equation": sum(len(s["texts"]) for s in samples) - len(rows)}
    for name, objective, old in (("orm", "outcome", args.orm), ("prm", "steps", args.prm)):
        for fit_rows, tag in ((train, "heldout"), (feats, None)):
            head = ScalarHead(feats[0]["f"]["final"].shape[1])
            x, y, _ = design(fit_rows, "final", objective)
            fit_head(head, x, y, l2=args.onpolicy_l2)
            if tag:
                report[f"{name}_onpolicy_{tag}"] = head_figures(head, held, objective)
        folder = out / name
        config = json.loads(Path(old, "config.json").read_text())
        config["reward"].update(n_train=len(rows), onpolicy=str(args.onpolicy))
        atomic_write_json(folder / "config.json", config)
        atomic_write_bytes(folder / "head.safetensors", save({k: v.contiguous() for k, v in head.state_dict().items()}))
        before = ScalarHead(head.linear.in_features)
        before.load_state_dict(load(Path(old, "head.safetensors").read_bytes()))
        report[f"{name}_corrupted_heldout"] = head_figures(before, held, objective)
        atomic_write_json(folder / "summary.json", {"after": report[f"{name}_onpolicy_heldout"], "rows": len(rows)})
    atomic_write_json(out / "report.json", report)
    print(json.dumps(report, indent=1))
    return report


class EquationPRM:
    """A PRM that reads a partial reply the way `Verifier.score` reads a whole one: the score
    after each line is the lowest step score of the equation lines so far (0 before any),
    so the `<think>` and answer lines of a reply do not reach the verifier as steps. Scores
    are kept per (question, equation lines): a line that adds no equation, or a prefix scored
    at an earlier depth, costs no forward pass."""

    def __init__(self, verifier):
        self.verifier, self.seen = verifier, {}

    def _min(self, question: str, steps: list[str]) -> float:
        if not steps:
            return 0.0
        key = (question, tuple(steps))
        if key not in self.seen:
            self.seen[key] = min(self.verifier.score_steps(question, steps))
        return self.seen[key]

    def score_steps(self, question: str, lines: list[str]) -> list[float]:
        from ember.train.verifiers import split_steps

        return [self._min(question, split_steps("\n".join(lines[: i + 1]))) for i in range(len(lines))]


@torch.no_grad()
def reply_features(out: Path, items: list[dict], max_len: int = 160, batch: int = 8) -> list[torch.Tensor | None]:
    """Per sampled reply, the frozen SmolLM2 body's final states (S + 1, D) at the end of each
    of its S equation lines and at its last token, as `Verifier` encodes it (None: no
    equation line). Every `--peft head` verifier reads these, so they are computed once and
    kept in OUT/features.safetensors."""
    from safetensors.torch import load, save

    import ember
    from ember.core.io import atomic_write_bytes
    from ember.data.reasoning import encode_solution
    from ember.model.heads import hidden_states
    from ember.train.verifiers import split_steps

    replies = [(it["question"], split_steps(t)) for it in items for t in it["texts"]]
    cache = out / "features.safetensors"
    feats: list[torch.Tensor | None] = []
    if cache.is_file():  # the samples file only grows: keep the replies already encoded
        saved = load(cache.read_bytes())
        rows = saved["rows"].tolist()[:len(replies)]
        starts = [sum(rows[:i]) for i in range(len(rows))]
        feats = [saved["f"][s:s + r] if r else None for s, r in zip(starts, rows)]
    if len(feats) == len(replies):
        return feats
    body, tok = ember.load("smollm2")
    body.eval()
    enc = [encode_solution(tok, q, steps, max_len) if steps else None for q, steps in replies]
    todo = [i for i, e in enumerate(enc) if e is not None and i >= len(feats)]
    feats += [None] * (len(enc) - len(feats))
    for j in tqdm(range(0, len(todo), batch), desc="verifier states", file=sys.stderr):
        chunk = todo[j:j + batch]
        T = max(len(enc[i][0]) for i in chunk)
        h = hidden_states(body, torch.tensor([enc[i][0] + [0] * (T - len(enc[i][0])) for i in chunk]))
        for b, i in enumerate(chunk):
            feats[i] = h[b, torch.tensor(enc[i][1] + [enc[i][2]])].float()
    rows = torch.tensor([0 if f is None else len(f) for f in feats])
    flat = torch.cat([f for f in feats if f is not None]) if rows.any() else torch.zeros(0, 1)
    atomic_write_bytes(cache, save({"f": flat.contiguous(), "rows": rows}))
    return feats


def step_scores(name: str, folder: str, feats: list[torch.Tensor | None]) -> tuple[list[list[float]], str]:
    """Every reply's scores by one `--peft head` verifier: a PRM's per equation line, an
    ORM's one (none for a reply without an equation line); and the verifier's objective."""
    from safetensors.torch import load

    from ember.model.heads import ScalarHead

    saved = json.loads(Path(folder, "config.json").read_text())["reward"]
    if saved.get("peft") != "head" or saved.get("model") != "smollm2" or saved.get("max_len", 160) != 160:
        raise ValueError(f"verifier {name}={folder}: table reads heads on the frozen smollm2 body "
                         f"(--peft head, max_len 160), got {saved.get('peft')} on {saved.get('model')}")
    head = ScalarHead(next(f for f in feats if f is not None).shape[1])
    head.load_state_dict(load(Path(folder, "head.safetensors").read_bytes()))
    objective = saved["objective"]
    with torch.no_grad():
        return [[] if f is None else torch.sigmoid(head(f[:-1] if objective == "steps" else f[-1:])).tolist()
                for f in feats], objective


def main() -> None:
    import ember

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n_train", type=int, default=256)
    ap.add_argument("--n_eval", type=int, default=64)
    ap.add_argument("--l2", type=float, nargs="+", default=[1e-3, 1e-2, 1e-1, 1.0])
    ap.add_argument("--onpolicy", default=None, help="an SFT adapter: fit verifiers on its own sampled replies")
    ap.add_argument("--levels", type=int, nargs="+", default=[3, 4, 5], help="onpolicy: problem levels")
    ap.add_argument("--n_questions", type=int, default=40, help="onpolicy: training problems per level")
    ap.add_argument("--k", type=int, default=4, help="onpolicy: replies per problem")
    ap.add_argument("--max_tokens", type=int, default=96, help="onpolicy: tokens per reply at most")
    ap.add_argument("--seed", type=int, default=0, help="onpolicy: sampling seed")
    ap.add_argument("--batch", type=int, default=32, help="onpolicy: engine batch")
    ap.add_argument("--exclude_n", type=int, default=100, help="onpolicy: leave out the first N bench questions")
    ap.add_argument("--onpolicy_l2", type=float, default=1e-2)
    ap.add_argument("--orm", default="runs/orm", help="onpolicy: the corrupted-solution ORM to compare")
    ap.add_argument("--prm", default="runs/prm", help="onpolicy: the corrupted-solution PRM to compare")
    ap.add_argument("--out", default="runs/verifiers-onpolicy")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.onpolicy:
        onpolicy(args)
        return
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
