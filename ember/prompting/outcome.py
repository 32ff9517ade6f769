"""What a test-time strategy returns per question, and the settings every strategy shares
(kept apart from strategies.py so beam search and the strategies do not import each other)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Outcome:
    """One question's result: the chosen answer (None: nothing parseable), every sample's
    text and answer, the tokens generated for it in all, the verifier's scores if any."""

    answer: str | None
    texts: list[str]
    answers: list[str | None]
    tokens: int
    scores: list[float] | None = None


@dataclass
class StrategyConfig:
    n: int = 8
    """samples (sc, bon, wbon), revision rounds + 1 (revise), candidates per step (prm-beam)"""
    temperature: float = 0.7
    """sampling temperature of the sampled strategies"""
    max_tokens: int = 256
    """generated tokens per reply (prm-beam: per step)"""
    stop: tuple[str, ...] = ()
    """stop strings of every reply"""
    seed: int = 0
    """sample i of a prompt uses seed + i"""
    beam: int = 2
    """prm-beam: partial solutions kept after each step"""
    max_steps: int = 8
    """prm-beam: reasoning steps at most"""
    chat: bool = False
    """prompts are chat messages (revise appends turns)"""
