"""Trained verifiers for the generated word problems: an outcome reward model (ORM, is the
final answer right) and a process reward model (PRM, is each step right), both written by
`ember reward --preset orm|prm`.

    >>> v = load_verifier("runs/prm", policy_tokenizer=tok)  # doctest: +SKIP
    >>> v.score(question, "<think>\\n3 + 4 = 7\\n</think>\\nThe answer is 7.")  # doctest: +SKIP
    0.93
    >>> v.score_steps(question, ["3 + 4 = 7", "7 * 2 = 15"])  # doctest: +SKIP
    [0.95, 0.08]

Scores are probabilities (the sigmoid of the head's logit). An ORM scores a solution at its
last token; a PRM scores each step at its last token, and `score` of a PRM is its lowest step
score (a solution is as good as its worst step). Solutions are encoded exactly as in
training (ember.data.reasoning.encode_solution).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch

_STEP_LINE = re.compile(r"^\s*-?\d+\s*[-+*]\s*-?\d+\s*=\s*-?\d+")


def split_steps(solution: str) -> list[str]:
    """The equation lines of a written solution (inside <think> when it has one).

    >>> split_steps("<think>\\n3 + 4 = 7\\nso\\n7 * 2 = 14\\n</think>\\nThe answer is 14.")
    ['3 + 4 = 7', '7 * 2 = 14']
    """
    body = solution.split("<think>", 1)[-1].split("</think>", 1)[0]
    return [line.strip() for line in body.splitlines() if _STEP_LINE.match(line)]


def tokenizer_id(tok) -> str:
    """What two tokenizers must share to score each other's text: the fingerprint when the
    tokenizer has one, else its vocabulary size."""
    fp = getattr(tok, "fingerprint", None)
    return fp() if callable(fp) else f"vocab-{getattr(tok, 'vocab_size', '?')}"


@dataclass
class Verifier:
    """A trained ORM or PRM (`objective` "outcome" or "steps") with its tokenizer."""

    model: torch.nn.Module
    tok: object
    objective: str
    max_len: int
    name: str = ""

    @torch.no_grad()
    def _scores(self, question: str, steps: list[str]) -> list[float]:
        from ember.data.reasoning import encode_solution
        from ember.train.kit.verifier import position_scores

        ids, ends, last = encode_solution(self.tok, question, steps, self.max_len)
        positions = [last] if self.objective == "outcome" else ends
        if not positions:
            return []
        device = next(self.model.parameters()).device
        s = position_scores(self.model, torch.tensor([ids], device=device), torch.tensor([positions], device=device))
        return torch.sigmoid(s[0]).tolist()

    def score(self, question: str, solution: str) -> float:
        """P(the solution is right): the ORM's score, or the PRM's lowest step score."""
        steps = split_steps(solution)
        if not steps:
            return 0.0
        scores = self._scores(question, steps)
        return min(scores) if scores else 0.0

    def score_steps(self, question: str, steps: list[str]) -> list[float]:
        """P(right so far) after each step (a PRM); an ORM gives its one outcome score for
        every step."""
        if not steps:
            return []
        scores = self._scores(question, steps)
        return scores if self.objective == "steps" else scores * len(steps)

    def check_tokenizer(self, policy_tok, policy_name: str = "policy") -> None:
        """Refuse a policy whose tokenizer differs from this verifier's."""
        mine, theirs = tokenizer_id(self.tok), tokenizer_id(policy_tok)
        if mine != theirs:
            raise ValueError(f"verifier {self.name!r} uses tokenizer {mine}, but {policy_name} uses {theirs}: "
                             "a verifier scores text tokenized its own way; train one on the policy's tokenizer")


def load_verifier(folder: str | Path, policy_tokenizer=None, policy_name: str = "policy",
                  device: str = "cpu") -> Verifier:
    """A verifier back from an `ember reward --objective outcome|steps` folder. With
    policy_tokenizer, refuse it when the tokenizers differ (naming both)."""
    from ember.tokenizer import load_tokenizer
    from ember.train.kit.model import load_reward_model

    folder = Path(folder)
    try:
        saved = json.loads((folder / "config.json").read_text(encoding="utf-8"))["reward"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{folder}: not an `ember reward` output folder (config.json: {e})") from None
    objective = saved.get("objective", "pairs")
    if objective not in ("outcome", "steps"):
        raise ValueError(f"{folder}: a reward model trained on {objective!r}, not a verifier "
                         "(train one with `ember reward --preset orm` or `--preset prm`)")
    verifier = Verifier(load_reward_model(folder, device), load_tokenizer(saved["model"]), objective,
                        int(saved.get("max_len", 192)), name=str(folder))
    if policy_tokenizer is not None:
        verifier.check_tokenizer(policy_tokenizer, policy_name)
    return verifier
