"""Distillation vs training on the data alone: the same student, seed, windows and steps,
trained once with forward KL to SmolLM2's cached top-k distributions (`ember distill`) and
once with cross-entropy on the text only (--ce_weight 1). Both are scored on the same
held-out windows: perplexity on the text, forward KL to the teacher, and top-1 agreement
with the teacher (how often the student's most likely next token is the teacher's, the
acceptance rate of greedy speculative decoding when the student drafts one token).

    .venv/bin/python bench/distill.py                 # ~1 h on a loaded 2-core CPU
    .venv/bin/python bench/distill.py --steps 20      # a quick look

Measured (`--steps 30 --max_chars 16000 --reuse_cache`; 2-core CPU under heavy shared load;
4 windows of 64 pydoc tokens per step, 27 training and 16 held-out windows; draft-smollm2,
11.2 M parameters; fkl, τ = 1, top-64 cache):

    student       val ppl  val KL→T  top-1 agree
    kd (fkl)       1937.2     4.070        0.079
    ce only        3570.6     5.291        0.079
    init          44026.4     6.928        0.003
    ratios kd/ce: ppl 0.543, top-1 agreement 1.000

    draft model (greedy, k=4, 32 tokens)   accept (pydoc x4)   accept (chat)
    kd (fkl)                                          0.039           0.000
    ce only                                           0.039           0.000

30 steps (~7.7 k tokens) is far too short for a useful draft model: the acceptance is that
of a student that has barely started; more steps and text are what it needs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def run(out: Path, steps: int, **kw) -> dict:
    from ember.train.config import TrainConfig
    from ember.train.distill import DistillConfig, main

    train = TrainConfig(steps=steps, batch_size=4, eval_every=max(steps // 2, 1), sample_every=0, save_every=0,
                        out=str(out), overwrite=True, log_every=5)
    cfg = DistillConfig(seq_len=64, max_chars=kw.pop("max_chars"), n_val=16, train=train, **kw)
    return main(cfg)


def acceptance(students: dict[str, str], cache: str, n_prompts: int, tokens: int, k: int) -> None:
    """Greedy speculative decoding of SmolLM2 with each student as the draft model: the share
    of drafted tokens the teacher accepts, on held-out pydoc prompts and one chat prompt."""
    from safetensors.torch import load_file

    import ember
    from ember.infer.draft import ModelDrafter
    from ember.infer.engine import Engine
    from ember.infer.sampling import SamplingParams

    teacher, tok = ember.load("smollm2")
    teacher.eval()
    windows = load_file(cache)["windows"]
    prompts = [w[:32].tolist() for w in windows[-n_prompts:]]  # held-out windows' first 32 tokens
    chat, _ = tok.render_chat([{"role": "user", "content": "What is a Python list comprehension?"}],
                              add_generation_prompt=True)
    print(f"\ndraft model (greedy, k={k}, {tokens} tokens)   accept (pydoc x{n_prompts})   accept (chat)")
    for name, folder in students.items():
        draft, _ = ember.load(folder)
        engine = Engine(teacher, tok, max_batch_size=1, speculative=ModelDrafter(draft.eval(), tok, name=folder, k=k))
        rates = []
        for group in (prompts, [chat]):
            acc = drafted = 0
            for ids in group:
                req = engine.add_request(ids, SamplingParams(temperature=0.0, max_tokens=tokens))
                while engine.has_unfinished():
                    engine.step()
                acc, drafted = acc + req.spec_accepted, drafted + req.spec_drafted
            rates.append(acc / max(drafted, 1))
        print(f"{name:<36} {rates[0]:>18.3f} {rates[1]:>15.3f}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--max_chars", type=int, default=40_000)
    p.add_argument("--out", default="runs/bench-distill")
    p.add_argument("--accept_only", action="store_true", help="only the draft acceptance of the students in --out")
    p.add_argument("--prompts", type=int, default=4, help="held-out pydoc prompts for the acceptance rate")
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--reuse_cache", action="store_true", help="the kd run reuses --out/kd's teacher cache")
    a = p.parse_args()
    out = Path(a.out)
    students = {"kd (fkl)": str(out / "kd" / "model"), "ce only": str(out / "ce" / "model")}
    moved, cache = out / "teacher_topk.safetensors", out / "kd" / "teacher_topk.safetensors"
    if a.reuse_cache and cache.exists():  # keep it out of the kd folder the new run overwrites
        cache.rename(moved)
    if moved.exists():
        cache = moved
    if a.accept_only:
        acceptance(students, str(cache), a.prompts, a.tokens, a.k)
        return
    reuse = {"teacher_cache": str(cache)} if a.reuse_cache else {}
    kd = run(out / "kd", a.steps, max_chars=a.max_chars, loss="fkl", **reuse)
    cache = str(cache)
    ce = run(out / "ce", a.steps, max_chars=a.max_chars, ce_weight=1.0, teacher_cache=cache)
    rows = {"kd (fkl)": kd["after"], "ce only": ce["after"], "init": kd["before"]}
    print(f"\n{'student':<10} {'val ppl':>10} {'val KL→T':>9} {'top-1 agree':>12}")
    for name, r in rows.items():
        print(f"{name:<10} {r['val_ppl']:>10.1f} {r['val_kl']:>9.3f} {r['val_top1']:>12.3f}")
    print(f"ratios kd/ce: ppl {kd['after']['val_ppl'] / ce['after']['val_ppl']:.3f}, "
          f"top-1 agreement {kd['after']['val_top1'] / max(ce['after']['val_top1'], 1e-9):.3f}")
    (out / "bench.json").write_text(json.dumps({"steps": a.steps, **rows}, indent=1))
    print(f"student for speculative drafting: {kd['model']}")
    acceptance(students, cache, a.prompts, a.tokens, a.k)


if __name__ == "__main__":
    main()
