"""Rerank retrieved passages with a chat model's judgement: its log-odds of "yes" against
"no" to "Does this passage answer the question?".

Each (question, passage) pair is rendered through the model's own chat template, and the
model's next-token distribution after the assistant prefix is read once: one prefill per
passage, no decoding. The pairs of one query run as right-padded batches: the model is
causal, so a row's last real token never sees the padding after it, and only that
position's logits are computed (`logits_index`). The score is
log(P(yes) + P(Yes)) − log(P(no) + P(No)).

With SmolLM2-135M this judge is weaker than the fused ranking it reorders: on the dev
questions of the bundled pydoc set it lowered nDCG@10 from 0.784 to 0.603 (README,
"Retrieval: search, cited answers, evaluation"), so search leaves it off unless asked.

    >>> r = Reranker(*ember.load("smollm2"))                              # doctest: +SKIP
    >>> r.score("How do I stop a loop?", ["The break statement ...", "Integers ..."])  # doctest: +SKIP
    [1.92, -0.41]
"""

from __future__ import annotations

import torch

PROMPT = ("Passage:\n{passage}\n\nQuestion: {question}\n\n"
          "Does the passage answer the question? Reply with yes or no.")


class Reranker:
    """Scores passages for a question with a decoder and its tokenizer (see the module
    docstring). max_passage_tokens: a passage is cut to its first N tokens; batch_size:
    pairs per forward."""

    def __init__(self, model, tokenizer, max_passage_tokens: int = 256, batch_size: int = 8):
        if max_passage_tokens < 1 or batch_size < 1:
            raise ValueError(f"max_passage_tokens and batch_size must be >= 1, got {max_passage_tokens}, {batch_size}")
        self.model, self.tokenizer = model, tokenizer
        self.max_passage_tokens, self.batch_size = max_passage_tokens, batch_size
        self.yes = self._first_ids(["yes", "Yes", " yes", " Yes"])
        self.no = self._first_ids(["no", "No", " no", " No"])
        if set(self.yes) & set(self.no):
            raise ValueError("the tokenizer gives 'yes' and 'no' a common first token: cannot score")

    def _first_ids(self, words: list[str]) -> list[int]:
        return sorted({self.tokenizer.encode(w)[0] for w in words})

    def prompt_ids(self, question: str, passage: str) -> list[int]:
        """The chat-rendered pair, ending where the assistant's reply would begin."""
        ids = self.tokenizer.encode(passage)
        if len(ids) > self.max_passage_tokens:
            passage = self.tokenizer.decode(ids[: self.max_passage_tokens])
        msgs = [{"role": "user", "content": PROMPT.format(passage=passage, question=question)}]
        return self.tokenizer.render_chat(msgs, add_generation_prompt=True)[0]

    @torch.inference_mode()
    def score(self, question: str, passages: list[str]) -> list[float]:
        """One log-odds per passage, in the order given (higher: more likely an answer)."""
        rows = [self.prompt_ids(question, p) for p in passages]
        limit = self.model.config.max_seq_len
        if any(len(r) > limit for r in rows):
            raise ValueError(f"a rerank prompt is longer than the model's {limit} tokens; lower max_passage_tokens")
        device = next(self.model.parameters()).device
        out: list[float] = []
        for b in range(0, len(rows), self.batch_size):
            batch = rows[b: b + self.batch_size]
            T = max(len(r) for r in batch)
            ids = torch.tensor([r + [0] * (T - len(r)) for r in batch], device=device)  # (B, T)
            last = torch.tensor([len(r) - 1 for r in batch], device=device)  # (B,)
            logp = self.model(ids, logits_index=last)[:, 0].float().log_softmax(-1)  # (B, V)
            yes = logp[:, self.yes].logsumexp(-1)
            no = logp[:, self.no].logsumexp(-1)
            out += (yes - no).tolist()
        return out
