"""`ember reason`: a test-time-compute strategy on a task; `ember reason curve`: accuracy
against samples and generated tokens from saved runs.

The task is an evaluation task (`ember.eval.harness`: a bundled name or a .yaml file) or a
JSONL file of {"question", "answer"[, "choices"]}. Generation tasks are answered by number
(the phrase "answer is X", else the task's own filter, e.g. the last number); multiple-choice
tasks show lettered options and are answered by letter (the last "answer is (B)" / "Answer: B",
else the last letter A-H standing alone outside a restated option line, the harness'
`choice_answer`). A reply with no such answer is
unparseable: counted, never right.

    $ ember reason --task arithmetic --strategy sc --n 8 --limit 20 --json
    {"accuracy": ..., "ci": [..., ...], "n": 20, "strategy": "sc", "samples": 8, "tokens": ...}
"""

from __future__ import annotations

import json as jsonlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ember.cli.errors import at_least, in_range

ANSWER_IS = r"answer is[:\s]*\$?\(?(-?[0-9]+(?:\.[0-9]+)?)"
PROBE = "The answer is 42.\n"


@dataclass
class ReasonConfig:
    """Answer a task's questions with one strategy; accuracy with a 95% Wilson interval."""

    task: str = "arithmetic"
    """a bundled task (arithmetic, commonsense), a task .yaml file, or a JSONL file of {question, answer[, choices]}"""
    model: str = "smollm2"
    """known name, GGUF file or HF folder"""
    adapter: str | None = None
    """a LoRA/PEFT adapter folder from `ember sft`, or a merged model"""
    strategy: Literal["greedy", "cot", "sc", "bon", "wbon", "prm-beam", "revise"] = "greedy"
    """greedy, cot (greedy chain of thought), sc (self-consistency), bon / wbon (best-of-n, verifier-weighted
    votes), prm-beam (step beam search), revise (self-revision rounds)"""
    n: int = 8
    """samples per question (sc, bon, wbon), rounds (revise), candidates per step (prm-beam)"""
    verifier: str | None = None
    """a verifier folder (`load_verifier`), or 'logprob' (the model's mean token log-prob); bon, wbon, prm-beam"""
    shots: int = 0
    """demonstrations before each question (drawn from the task's few-shot split)"""
    format: Literal["plain", "chat"] = "plain"
    """a plain completion prompt, or chat messages through the model's chat template"""
    template: Literal["qa", "qa-terse", "instruct"] = "qa"
    """how a question reads (see ember.prompting.prompts.TEMPLATES)"""
    system: str = ""
    """a system prompt (chat: the system message; plain: a first paragraph)"""
    limit: int | None = None
    """answer only the first N questions"""
    temperature: float = 0.7
    """sampling temperature (sc, bon, wbon, prm-beam)"""
    max_tokens: int | None = None
    """tokens per reply (default: the task's max_gen_toks for greedy, 192 for chain of thought; prm-beam: per step)"""
    beam: int = 2
    """prm-beam: partial solutions kept per step"""
    max_steps: int = 8
    """prm-beam: reasoning steps at most"""
    seed: int = 0
    """demonstrations and samples (sample i of a question: seed + i)"""
    batch_size: int = 8
    """engine slots (requests decoded together)"""
    json: bool = False
    """print one JSON line"""
    out: str | None = None
    """write every item (samples, answers, tokens) to this JSON file, for `ember reason curve`"""

    def __post_init__(self):
        at_least("--n", self.n, 1)
        at_least("--shots", self.shots, 0)
        at_least("--limit", self.limit, 1, optional=True)
        at_least("--max-tokens", self.max_tokens, 1, optional=True)
        at_least("--beam", self.beam, 1)
        at_least("--max-steps", self.max_steps, 1)
        at_least("--batch-size", self.batch_size, 1)
        in_range("--temperature", self.temperature, 0.0, 100.0)


def load_problems(name: str):
    """(problems, demonstration pool, extract, extraction's name, the task's max_gen_toks)."""
    from ember.prompting.prompts import LETTERS, Problem

    if Path(name).suffix == ".jsonl":
        return _jsonl_problems(Path(name))
    from ember.eval.harness import load_task
    from ember.eval.harness.prompts import choices_of, target_of, text_of

    task = load_task(name)
    if task.output_type == "loglikelihood_rolling":
        raise ValueError(f"task {task.name} is a perplexity task: it has no answers to reason towards")

    def problem(doc) -> Problem:
        q = doc.get("question") if isinstance(doc.get("question"), str) else str(text_of(task, doc))
        gold = target_of(task, doc)
        gold = gold[0] if isinstance(gold, list) else gold
        if task.output_type == "multiple_choice":
            choices = tuple(choices_of(task, doc))
            gold = LETTERS[gold] if isinstance(gold, int) else LETTERS[choices.index(gold)]
            return Problem(q, gold, choices)
        return Problem(q, str(gold).strip())

    probs, pool = [problem(d) for d in task.eval_docs()], [problem(d) for d in task.fewshot_docs()[0]]
    if task.output_type == "multiple_choice":
        return probs, pool, *choice_extractor(), task.generation_kwargs.get("max_gen_toks", 16)
    fname, steps = task.filters[-1]
    return probs, pool, *number_extractor(steps, fname), task.generation_kwargs.get("max_gen_toks", 16)


def _jsonl_problems(path: Path):
    from ember.core.io import read_text_utf8
    from ember.prompting.prompts import Problem

    if not path.is_file():
        raise FileNotFoundError(2, "No such file or directory", str(path))
    probs = []
    for i, line in enumerate(read_text_utf8(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            d = jsonlib.loads(line)
        except jsonlib.JSONDecodeError as e:
            raise ValueError(f"{path} line {i}: not JSON ({e.msg})") from None
        if not isinstance(d, dict) or not isinstance(d.get("question"), str) or "answer" not in d:
            raise ValueError(f"{path} line {i}: expected {{\"question\": str, \"answer\": ...}}")
        ch = d.get("choices")
        probs.append(Problem(d["question"], str(d["answer"]).strip(), tuple(ch) if ch else None))
    if not probs:
        raise ValueError(f"{path}: no questions")
    ext, name = choice_extractor() if probs[0].choices else number_extractor(
        [{"function": "last_number"}], "last_number")
    return probs, probs, ext, name, 32


def number_extractor(steps: list[dict], name: str):
    from ember.eval.harness.extract import FALLBACK, build_pipeline, regex_extract

    base = build_pipeline(steps)

    def extract(text: str) -> str | None:
        a = regex_extract(text, ANSWER_IS, -1)
        a = base(text) if a == FALLBACK else a
        return None if a in (FALLBACK, "") else a.rstrip(".")

    return extract, f"'answer is N', else the task's filter {name!r}"


def choice_extractor():
    from ember.eval.harness.extract import FALLBACK, choice_answer

    def extract(text: str) -> str | None:
        a = choice_answer(text)
        return None if a == FALLBACK else a

    return extract, "choice_answer ('answer is (X)' / 'Answer: X', else the last letter A-H standing alone)"


def load_reason_verifier(spec: str | None, tok):
    """None, the model's own log-probs ('logprob'), or a trained verifier whose tokenizer
    must be the policy's (the same ids for the same text)."""
    if spec is None:
        return None
    from ember.prompting.strategies import LogprobVerifier

    if spec == "logprob":
        return LogprobVerifier()
    if not Path(spec).is_dir():
        raise FileNotFoundError(2, "No such verifier folder", spec)
    from ember.train.verifiers import load_verifier

    v = load_verifier(spec, policy_tokenizer=tok)
    vtok = getattr(v, "tok", None) or getattr(v, "tokenizer", None)
    if vtok is not None and (vtok.encode(PROBE) != tok.encode(PROBE) or set(vtok.eos_token_ids) != set(tok.eos_token_ids)):
        raise ValueError(f"verifier {spec} uses another tokenizer than the model's (it encodes {PROBE!r} as "
                         f"{vtok.encode(PROBE)[:6]}..., the model as {tok.encode(PROBE)[:6]}...)")
    return v


def reason(cfg: ReasonConfig) -> dict:
    from ember.agents.tool_eval import load_for_eval
    from ember.infer.engine import Engine
    from ember.prompting.generate import EngineGenerator
    from ember.prompting.run import evaluate_strategy
    from ember.prompting.strategies import StrategyConfig

    problems, pool, extract, extraction, task_tokens = load_problems(cfg.task)
    problems = problems[:cfg.limit]
    if cfg.strategy in ("bon", "wbon", "prm-beam") and cfg.verifier is None:
        raise ValueError(f"--strategy {cfg.strategy} needs --verifier DIR (or --verifier logprob)")
    net, tok = load_for_eval(cfg.model, cfg.adapter)
    verifier = load_reason_verifier(cfg.verifier, tok)
    max_tokens = cfg.max_tokens or (task_tokens if cfg.strategy == "greedy" else 192)
    check_budget(tok, problems, max_tokens)
    scfg = StrategyConfig(n=cfg.n, temperature=cfg.temperature, max_tokens=max_tokens, seed=cfg.seed,
                          beam=cfg.beam, max_steps=cfg.max_steps, chat=cfg.format == "chat")
    gen = EngineGenerator(Engine(net, tok, max_batch_size=cfg.batch_size), chat=scfg.chat)
    out = evaluate_strategy(gen, problems, pool, extract, cfg.strategy, scfg, cfg.shots, cfg.template, cfg.system,
                            verifier, extraction, chunk=max(1, cfg.batch_size // (1 if cfg.strategy in
                                                                                  ("greedy", "cot", "revise") else cfg.n)))
    out.update(task=cfg.task, model=cfg.model, shots=cfg.shots, format=cfg.format, template=cfg.template,
               temperature=cfg.temperature, max_tokens=max_tokens, shared_prefill=gen.shared_prefill)
    if cfg.out:
        from ember.core.io import atomic_write_json

        _refuse_existing(cfg.out)
        atomic_write_json(cfg.out, out)
    summary = {k: v for k, v in out.items() if k != "items"}
    if cfg.json:
        print(jsonlib.dumps(summary))
    else:
        lo, hi = out["ci"]
        print(f"{cfg.task} {cfg.strategy}: accuracy {out['accuracy']:.3f} (95% CI {lo:.3f}-{hi:.3f}) n={out['n']} "
              f"samples/q={out['samples']:g} tokens={out['tokens']} unparseable={out['unparseable']}")
    return summary


def check_budget(tok, problems, max_tokens: int) -> None:
    """A reply budget must fit the longest gold answer."""
    longest = max(problems, key=lambda p: len(tok.encode(" " + p.answer)))
    need = len(tok.encode(" " + longest.answer))
    if max_tokens < need:
        raise ValueError(f"--max-tokens {max_tokens} is below the answer length: the answer {longest.answer!r} "
                         f"takes {need} tokens")


@dataclass
class ReasonCurveConfig:
    """Accuracy against samples and generated tokens per question, from `ember reason --out` files."""

    runs: list[str] | None = None
    """result files written by `ember reason --out FILE.json` (sampled strategies give a curve, others a point)"""
    out: str = "runs/reason/curve"
    """writes OUT.json and OUT.png"""
    title: str = ""
    """the plot's title"""


def curve(cfg: ReasonCurveConfig) -> dict:
    from ember.core.io import atomic_write_json, read_text_utf8
    from ember.prompting.curves import plot_curves, run_curve

    if not cfg.runs:
        raise ValueError("give at least one result file from `ember reason --out FILE.json`")
    curves = []
    for f in cfg.runs:
        if not Path(f).is_file():
            raise FileNotFoundError(2, "No such file or directory", f)
        try:
            run = jsonlib.loads(read_text_utf8(Path(f)))
            curves.append({**run_curve(run), "file": f, "task": run.get("task")})
        except (jsonlib.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{f}: not an `ember reason --out` result ({type(e).__name__}: {e})") from None
    out = {"curves": curves}
    for suffix in (".json", ".png"):
        _refuse_existing(cfg.out + suffix)
    atomic_write_json(cfg.out + ".json", out)
    plot_curves(curves, cfg.out + ".png", cfg.title)
    for c in curves:
        pts = ", ".join(f"k={p['k']:g}: {p['accuracy']:.3f} ({p['tokens']:.0f} tok)" for p in c["points"])
        print(f"{c['label']}: {pts}")
    print(f"→ {cfg.out}.json, {cfg.out}.png")
    return out


def _refuse_existing(path: str) -> None:
    """Results are never written over an earlier run's file."""
    if Path(path).exists():
        raise FileExistsError(f"{path} exists; choose another --out (results are never overwritten)")
