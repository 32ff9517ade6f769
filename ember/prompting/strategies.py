"""Test-time-compute strategies over a generator: more samples or more steps per question.

Each strategy maps a batch of prompts to one `Outcome` per prompt (the chosen answer, every
sample's text and extracted answer, the tokens generated):

- greedy: one greedy reply to the direct prompt.
- cot: one greedy reply to the chain-of-thought prompt.
- sc: self-consistency (Wang et al. 2022): n sampled CoT replies, the majority answer.
- bon: best-of-n: the reply a verifier scores highest (`Verifier.score(question, text)`).
- wbon: weighted best-of-n: the answer whose replies' scores sum highest (Li et al. 2023).
  Scores are used as weights when none is negative, else as log-weights (exp of each).
- revise: a greedy CoT reply, then n - 1 rounds where the model checks and revises its
  previous reply; the last round's parseable answer.
- prm-beam: beam search over reasoning steps scored by a process reward model (beam.py).

Which prompt a strategy wants is `wants_cot(name)`; the caller builds the prompts (see
prompts.py) and passes an `extract(text) -> answer | None` (None: unparseable).
A verifier without `score` may be the model itself: `LogprobVerifier` ranks a reply by the
mean log-prob of its tokens.

    >>> wants_cot("greedy"), wants_cot("sc")
    (False, True)
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable

from .estimators import majority
from .outcome import Outcome, StrategyConfig
from .prompts import revision_prompt

STRATEGIES = ("greedy", "cot", "sc", "bon", "wbon", "prm-beam", "revise")
NEEDS_VERIFIER = ("bon", "wbon", "prm-beam")


def wants_cot(strategy: str) -> bool:
    check_strategy(strategy)
    return strategy != "greedy"


def check_strategy(strategy: str) -> None:
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; strategies: {', '.join(STRATEGIES)}")


class LogprobVerifier:
    """Scores a reply by its mean token log-prob under the generating model (no trained
    verifier): `score` reads it from the sample, so strategies ask the generator for it."""

    uses_logprobs = True

    def score(self, question: str, solution_text: str, sample=None) -> float:
        if sample is None or sample.logprob is None:
            raise ValueError("LogprobVerifier scores samples generated with logprobs")
        return sample.logprob


def run_strategy(strategy: str, gen, prompts: list, questions: list[str], extract: Callable[[str], str | None],
                 cfg: StrategyConfig, verifier=None) -> list[Outcome]:
    """One Outcome per prompt (questions: the bare question of each, for the verifier)."""
    check_strategy(strategy)
    if cfg.n < 1:
        raise ValueError(f"n must be >= 1 sample, got {cfg.n}")
    if len(prompts) != len(questions):
        raise ValueError(f"{len(prompts)} prompts for {len(questions)} questions")
    if strategy in NEEDS_VERIFIER and verifier is None:
        raise ValueError(f"strategy {strategy} needs a verifier (--verifier DIR, or --verifier logprob)")
    if strategy in ("greedy", "cot"):
        return [_single(s[0], extract) for s in gen.generate(prompts, 1, 0.0, cfg.max_tokens, cfg.stop, cfg.seed)]
    if strategy == "revise":
        return _revise(gen, prompts, extract, cfg)
    if strategy == "prm-beam":
        from .beam import prm_beam

        return prm_beam(gen, prompts, questions, extract, cfg, verifier)
    logprobs = getattr(verifier, "uses_logprobs", False)
    batches = gen.generate(prompts, cfg.n, cfg.temperature, cfg.max_tokens, cfg.stop, cfg.seed, logprobs=logprobs)
    out = []
    for q, samples in zip(questions, batches):
        texts = [s.text for s in samples]
        answers = [extract(t) for t in texts]
        tokens = sum(s.tokens for s in samples)
        if strategy == "sc":
            out.append(Outcome(majority(answers), texts, answers, tokens))
            continue
        scores = [_score(verifier, q, s) for s in samples]
        pick = best_of(answers, scores) if strategy == "bon" else weighted_best_of(answers, scores)
        out.append(Outcome(pick, texts, answers, tokens, scores))
    return out


def _single(s, extract) -> Outcome:
    a = extract(s.text)
    return Outcome(a, [s.text], [a], s.tokens)


def _score(verifier, question: str, sample) -> float:
    if getattr(verifier, "uses_logprobs", False):
        return float(verifier.score(question, sample.text, sample))
    return float(verifier.score(question, sample.text))


def best_of(answers: list[str | None], scores: list[float]) -> str | None:
    """The answer of the highest-scoring sample (the first of equal scores).

    >>> best_of(["1", "2", None], [0.2, 0.9, 0.5])
    '2'
    """
    i = max(range(len(scores)), key=lambda j: (scores[j], -j))
    return answers[i]


def weighted_best_of(answers: list[str | None], scores: list[float]) -> str | None:
    """The parseable answer whose samples' weights sum highest (weights: the scores when
    none is negative, else exp(score)); ties go to the answer seen first.

    >>> weighted_best_of(["1", "2", "2"], [0.9, 0.5, 0.5])
    '2'
    """
    weights = scores if min(scores) >= 0 else [math.exp(s - max(scores)) for s in scores]
    total: dict[str, float] = defaultdict(float)
    for a, w in zip(answers, weights):
        if a is not None:
            total[a] += w
    if not total:
        return None
    top = max(total.values())
    return next(a for a in answers if a is not None and total[a] == top)


def _revise(gen, prompts: list, extract, cfg: StrategyConfig) -> list[Outcome]:
    current = list(prompts)
    texts: list[list[str]] = [[] for _ in prompts]
    tokens = [0] * len(prompts)
    for r in range(cfg.n):
        if r:
            current = [revision_prompt(p, t[-1], cfg.chat) for p, t in zip(current, texts)]
        for i, s in enumerate(gen.generate(current, 1, 0.0, cfg.max_tokens, cfg.stop, cfg.seed)):
            texts[i].append(s[0].text)
            tokens[i] += s[0].tokens
    out = []
    for t, tok in zip(texts, tokens):
        answers = [extract(x) for x in t]
        final = next((a for a in reversed(answers) if a is not None), None)
        out.append(Outcome(final, t, answers, tok))
    return out
