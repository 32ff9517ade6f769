"""Generation through the engine (rollouts and greedy evaluation), preference rows, and the
run's metrics read back."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ember.data.preference import file_kind, read_preference_jsonl
from ember.data.style import make_style_pairs
from ember.train.kit.model import context_len


def generate(model, tok, ids: list[list[int]], params, max_batch_size: int | None = None) -> list:
    """Engine.generate over every prompt, the cache sized to the longest prompt plus
    max_tokens (at most the model's context). params: one SamplingParams or one per prompt.
    max_batch_size: cache rows (default: one per prompt); on CPU the decode matmuls round by
    the row count, so a recipe keeps the count its numbers were made with. The engine puts a
    training model back in train mode itself.

    >>> outs = generate(model, tok, [tok.encode("Hi")], SamplingParams(max_tokens=8))  # doctest: +SKIP
    """
    from ember.infer.engine import Engine

    max_tokens = max(p.max_tokens for p in params) if isinstance(params, list) else params.max_tokens
    engine = Engine(model, tok, max_batch_size=max_batch_size or len(ids),
                    max_seq_len=min(context_len(model), max(map(len, ids)) + max_tokens))
    return engine.generate(ids, params)


def greedy_replies(model, tok, prompts: list[list[dict]], max_tokens: int, max_batch_size: int | None = None) -> list:
    """Greedy replies (GenerationResults) to chat prompts, each rendered with the generation
    prompt: evaluation by generation.

    >>> greedy_replies(model, tok, [[{"role": "user", "content": "Hi"}]], 16)[0].text  # doctest: +SKIP
    """
    from ember.infer.sampling import SamplingParams

    ids = [tok.render_chat(p, add_generation_prompt=True)[0] for p in prompts]
    return generate(model, tok, ids, SamplingParams(temperature=0, max_tokens=max_tokens), max_batch_size)


def load_preference_rows(cfg, unpaired_ok: bool = False) -> tuple[list[dict], list[dict]]:
    """(train rows, held-out rows) from cfg.data, or the generated cfg.dataset (a
    PreferenceConfig). Unpaired (KTO) files are read when unpaired_ok, refused otherwise. From
    a file, the first min(n_eval, a tenth) rows are held out; n_eval 0 holds out none."""
    if cfg.dataset == "style" and cfg.data is None:
        held = make_style_pairs(cfg.n_eval, cfg.train.seed, "heldout") if cfg.n_eval else []
        return make_style_pairs(cfg.n_train, cfg.train.seed, "train"), held
    if cfg.data is None:
        raise ValueError("give --data FILE.jsonl (pairs {\"prompt\", \"chosen\", \"rejected\"}) or --dataset style")
    kind = file_kind(cfg.data) if Path(cfg.data).is_file() else "pair"
    if kind == "unpaired" and not unpaired_ok:
        raise ValueError(f"{cfg.data} holds unpaired rows {{\"prompt\", \"completion\", \"label\"}}; this recipe "
                         "needs pairs (for `ember dpo`, use --loss_type kto)")
    rows, report = read_preference_jsonl(cfg.data, cfg.on_error, kind)
    if sum(report.values()):
        print(f"skipped lines by reason: {report}", file=sys.stderr)
    low = 2 if kind == "unpaired" else 1  # KTO's z0 pairs each row with another
    n_eval = min(cfg.n_eval, max(low, len(rows) // 10))
    if len(rows) < n_eval + low:
        raise ValueError(f"{cfg.data}: need at least {n_eval + low} valid {kind} rows ({n_eval} held out), "
                         f"got {len(rows)}")
    return rows[n_eval:], rows[:n_eval]


def read_metrics(out: str | Path) -> list[dict]:
    """Every record of out/metrics.jsonl, in order."""
    lines = (Path(out) / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]
