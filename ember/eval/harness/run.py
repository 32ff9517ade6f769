"""Run a task on a backend and keep every item: `evaluate(task, backend) -> results`.

The results (saved as results.json, read by `ember report`):
{"task", "model", "backend", "shots", "metrics": {name: value}, "stderr": {name: value},
"n", "seconds", "items": [{"doc", "prompt", "target", "loglikelihoods" | "response",
"metrics"}], "config"}. A metric computed on a filtered response is named
"metric,filter" (lm-eval's naming), except for the default filter "none".

    >>> results = evaluate(load_task("arithmetic"), EngineBackend(model, tok), limit=40)  # doctest: +SKIP
    >>> results["metrics"]  # doctest: +SKIP
    {'exact_match,last-number': 0.15}
"""

from __future__ import annotations

import datetime as dt
import random
import time
from pathlib import Path

from tqdm.auto import tqdm

from ember.core.io import atomic_write_json

from . import metrics as M
from .extract import build_pipeline
from .prompts import (
    FEWSHOT_SEED,
    choices_of,
    encode_pair,
    fewshot_context,
    rolling_windows,
    target_of,
    truncate,
)
from .tasks import Task


def prefix_token(tok) -> int:
    """What an empty context becomes: BOS, else the lowest EOS id (lm-eval's prefix_token_id)."""
    return tok.bos_token_id if tok.bos_token_id is not None else min(tok.eos_token_ids)


def evaluate(task: Task, backend, shots: int | None = None, limit: int | None = None, model: str = "",
             progress: bool = True, rolling_context: int = 1, max_length: int | None = None) -> dict:
    """Score the first `limit` documents (all by default) with `shots` demonstrations
    (default: the task's num_fewshot); returns the results dict described above."""
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    shots = task.num_fewshot if shots is None else shots
    if shots < 0:
        raise ValueError(f"shots must be >= 0, got {shots}")
    max_length = max_length or backend.max_length
    docs = task.eval_docs()[:limit]
    t0 = time.perf_counter()
    bar = tqdm(total=len(docs), desc=task.name, unit="doc", disable=not progress)
    if task.output_type == "loglikelihood_rolling":
        shots = 0
        items, corpus = _rolling(task, backend, docs, max_length, rolling_context, bar)
    else:
        rnd = random.Random(FEWSHOT_SEED)
        prompts = [fewshot_context(task, d, shots, rnd) for d in docs]
        run = _multiple_choice if task.output_type == "multiple_choice" else _generate
        items, corpus = run(task, backend, docs, prompts, max_length, bar), {}
    bar.close()
    metrics, stderr = _aggregate(items, corpus)
    return {"task": task.name, "model": model, "backend": backend.name, "shots": shots, "metrics": metrics,
            "stderr": stderr, "n": len(items), "seconds": round(time.perf_counter() - t0, 3), "items": items,
            "config": {"task_file": str(task.path), "limit": limit, "fewshot_seed": FEWSHOT_SEED,
                       "max_length": max_length, "rolling_context": rolling_context,
                       "metric_list": task.metrics, "generation_kwargs": task.generation_kwargs,
                       "filters": [name for name, _ in task.filters]}}


def _gold_index(task: Task, i: int, gold, choices: list[str]) -> int | list[int]:
    golds = gold if isinstance(gold, list) else [gold]
    out = []
    for g in golds:
        idx = choices.index(g) if isinstance(g, str) and g in choices else g
        if not isinstance(idx, int) or not 0 <= idx < len(choices):
            raise ValueError(f"document {i}: target {g!r} is not one of its {len(choices)} choices "
                             f"({task.where('doc_to_target')})")
        out.append(idx)
    return out if isinstance(gold, list) else out[0]


def _multiple_choice(task: Task, backend, docs, prompts, max_length: int, bar) -> list[dict]:
    tok, prefix = backend.tokenizer, prefix_token(backend.tokenizer)
    items = []
    for i, (doc, prompt) in enumerate(zip(docs, prompts)):
        choices = choices_of(task, doc)
        gold = _gold_index(task, i, target_of(task, doc), choices)
        pairs = [encode_pair(tok, prompt, task.target_delimiter + c, prefix) for c in choices]
        for c, (_, cont) in zip(choices, pairs):
            if not cont:
                raise ValueError(f"document {i}: choice {c!r} tokenizes to nothing")
        pairs = [truncate(ctx, cont, max_length) for ctx, cont in pairs]
        scored = backend.score(_groups(pairs))
        lls = [ll for group in scored for ll, _ in group]
        greedy = [g for group in scored for _, g in group]
        if all(ll == 0.0 for ll in lls):
            raise ValueError(f"{backend.name} gave log-likelihood 0 to every choice of document {i}: it returns "
                             "no real prompt log-probs, and accuracy would be chance; refusing to score")
        mc = M.multiple_choice(lls, choices, gold, greedy)
        items.append({"doc": doc, "prompt": prompt, "target": gold, "choices": choices, "loglikelihoods": lls,
                      "metrics": {k: v for k, v in mc.items() if k in task.metrics}})
        bar.update()
    return items


def _groups(pairs):
    """Consecutive pairs that share a context become one (context, [continuations]) group."""
    groups = []
    for ctx, cont in pairs:
        if groups and groups[-1][0] == ctx:
            groups[-1][1].append(cont)
        else:
            groups.append((ctx, [cont]))
    return groups


def _generate(task: Task, backend, docs, prompts, max_length: int, bar) -> list[dict]:
    gen = task.generation_kwargs
    room = max_length - gen["max_gen_toks"]
    if room < 1:
        raise ValueError(f"max_gen_toks {gen['max_gen_toks']} leaves no room for a prompt in max_length {max_length}")
    filters = [(name, build_pipeline(steps)) for name, steps in task.filters]
    items, step = [], getattr(backend, "batch_size", 8)
    for start in range(0, len(docs), step):
        chunk = range(start, min(start + step, len(docs)))
        ids = [backend.tokenizer.encode(prompts[i])[-room:] for i in chunk]
        for i, response in zip(chunk, backend.generate(ids, gen)):
            target = _generation_target(task, docs[i])
            scores = {}
            for name, fn in filters:
                answer = fn(response)
                for metric, opts in task.metrics.items():
                    key = metric if name == "none" else f"{metric},{name}"
                    scores[key] = max(M.exact_match(answer, t, **opts) for t in target)
            items.append({"doc": docs[i], "prompt": prompts[i], "target": target if len(target) > 1 else target[0],
                          "response": response, "metrics": scores})
            bar.update()
    return items


def _generation_target(task: Task, doc: dict) -> list[str]:
    gold = target_of(task, doc)
    if task.doc_to_choice is not None:
        gold = choices_of(task, doc)[gold]
    return [str(g) for g in gold] if isinstance(gold, list) else [str(gold)]


def _rolling(task: Task, backend, docs, max_length: int, context_len: int, bar):
    tok, prefix = backend.tokenizer, prefix_token(backend.tokenizer)
    items, corpus = [], []
    for i, doc in enumerate(docs):
        text = str(target_of(task, doc))
        windows = rolling_windows(tok.encode(text), prefix, max_length, context_len)
        if not windows:
            raise ValueError(f"document {i}: the text is empty ({task.where('doc_to_target')})")
        ll = sum(score for (score, _), in backend.score([(c, [p]) for c, p in windows]))
        if ll == 0.0:
            raise ValueError(f"{backend.name} gave log-likelihood 0 to document {i}: no real log-probs")
        counts = (ll, M.count_words(text), M.count_bytes(text))
        corpus.append(counts)
        items.append({"doc": doc, "prompt": "", "target": text, "loglikelihoods": [ll],
                      "metrics": {k: v for k, v in M.rolling([counts]).items() if k in task.metrics},
                      "tokens": sum(len(p) for _, p in windows), "windows": len(windows)})
        bar.update()
    agg = {k: v for k, v in M.rolling(corpus).items() if k in task.metrics}
    return items, agg


def _aggregate(items: list[dict], corpus: dict) -> tuple[dict, dict]:
    if corpus:
        return corpus, {k: None for k in corpus}
    metrics, stderr = {}, {}
    for key in items[0]["metrics"] if items else []:
        metrics[key], stderr[key] = M.mean_and_stderr([it["metrics"][key] for it in items])
    return metrics, stderr


def default_out_dir(task_name: str, root: str | Path = "runs/eval") -> Path:
    """runs/eval/<task>-<UTC timestamp>, with -2, -3, ... when that folder exists."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    base = Path(root) / f"{task_name}-{stamp}"
    out, k = base, 1
    while out.exists():
        k += 1
        out = base.with_name(f"{base.name}-{k}")
    return out


def save_results(results: dict, out_dir: str | Path) -> Path:
    """Write out_dir/results.json atomically; an existing one is never overwritten."""
    path = Path(out_dir) / "results.json"
    if path.exists():
        raise FileExistsError(17, "results already there (give another --out)", str(path))
    return atomic_write_json(path, results)
