"""Evaluation: perplexity (and, later, log-likelihood tasks, exact match, scaling fits)."""

from .perplexity import perplexity

__all__ = ["perplexity"]
