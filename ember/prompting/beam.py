"""Beam search over reasoning steps, guided by a process reward model.

A step is one line of the reply. From each kept partial solution, `n // beam` next steps
are sampled (stop at the newline); every extended solution is scored by the verifier, and
the `beam` best are kept (a solution ended before its first step ranks last). A solution is finished when its step ends on end-of-sequence, is
empty, or starts what a stop string marks (the next question). After `max_steps`, or when
every kept solution is finished, the best-scored one is the reply.

The score of a partial solution: the PRM's score of its last step
(`Verifier.score_steps(question, steps)[-1]`); a verifier with only `score` (an ORM) scores
the text so far; `LogprobVerifier` the new step's mean token log-prob.

    >>> _finished("Question: next", ["\\n\\nQuestion:"])
    True
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .outcome import Outcome, StrategyConfig


@dataclass
class _Beam:
    steps: list[str] = field(default_factory=list)
    score: float = -math.inf  # no step scored yet: below any scored solution
    done: bool = False


def _finished(step: str, stops) -> bool:
    s = step.strip()
    return not s or any(s.startswith(x.strip()) for x in stops if x.strip())


def _score(verifier, question: str, steps: list[str], sample) -> float:
    if getattr(verifier, "uses_logprobs", False):
        return float(verifier.score(question, "\n".join(steps), sample))
    if hasattr(verifier, "score_steps"):
        scores = verifier.score_steps(question, steps)
        if len(scores) != len(steps):
            raise ValueError(f"the verifier scored {len(scores)} steps of {len(steps)}")
        return float(scores[-1])
    return float(verifier.score(question, "\n".join(steps)))


def prm_beam(gen, prompts: list, questions: list[str], extract, cfg: StrategyConfig, verifier) -> list[Outcome]:
    """One Outcome per prompt; its texts are the kept solutions, best first."""
    if cfg.beam < 1:
        raise ValueError(f"beam must be >= 1, got {cfg.beam}")
    per = max(1, cfg.n // cfg.beam)
    beams = [[_Beam()] for _ in prompts]
    tokens = [0] * len(prompts)
    stop = ("\n", *cfg.stop)
    logprobs = getattr(verifier, "uses_logprobs", False)
    for depth in range(cfg.max_steps):
        live = [(i, b) for i, bs in enumerate(beams) for b in bs if not b.done]
        if not live:
            break
        queries = [(prompts[i], "".join(s + "\n" for s in b.steps)) for i, b in live]
        samples = gen.generate(queries, per, cfg.temperature, cfg.max_tokens, stop, cfg.seed + 1000 * depth,
                               logprobs=logprobs)
        grown: list[list[_Beam]] = [[b for b in bs if b.done] for bs in beams]
        for (i, b), group in zip(live, samples):
            for s in group:
                tokens[i] += s.tokens
                if _finished(s.text, cfg.stop):
                    grown[i].append(_Beam(b.steps, b.score, True))
                    continue
                steps = [*b.steps, s.text]
                grown[i].append(_Beam(steps, _score(verifier, questions[i], steps, s), s.eos))
        beams = [_top(g, cfg.beam) for g in grown]
    out = []
    for bs, tok in zip(beams, tokens):
        bs = [b for b in bs if b.steps] or [_Beam(score=0.0)]
        texts = ["\n".join(b.steps) for b in bs]
        answers = [extract(t) for t in texts]
        out.append(Outcome(answers[0], texts, answers, tok, [b.score for b in bs]))
    return out


def _top(beams: list[_Beam], k: int) -> list[_Beam]:
    """The k best, one per distinct solution (sampling repeats steps)."""
    seen, out = set(), []
    for b in sorted(beams, key=lambda b: -b.score):
        key = tuple(b.steps)
        if key not in seen:
            seen.add(key)
            out.append(b)
    return out[:k]
