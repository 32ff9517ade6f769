"""From documents to token ids, as lm-eval builds its requests.

- `fewshot_context`: [description] + k demonstrations + the document's text. The
  demonstrations come from one `random.Random(1234)` shared by the whole run, drawn doc after
  doc in order (`rnd.sample(fewshot_docs, k)`, k + 1 when the fewshot split is the evaluated
  one, then the evaluated document dropped and k kept), so `--limit N` sees the same prompts
  as the first N of a full run. Each demonstration is text + target_delimiter + target +
  fewshot_delimiter.
- `encode_pair`: context and continuation tokenized together, the continuation being the
  tokens after the context's own encoding; trailing spaces of the context move to the
  continuation first. An empty context is the prefix token (BOS, else EOS).
- `rolling_windows`: a long text in windows of at most max_length tokens, every token
  predicted once; the first window is predicted from the prefix token, each later one
  from the `context_len` tokens before it (1: disjoint windows, lm-eval's default; more: a
  sliding window that gives each window more of the text before it). A short last window
  is topped up with earlier tokens as context, to max_length tokens fed.

    >>> rolling_windows(list(range(10)), prefix_id=99, max_length=4)
    [([99], [0, 1, 2, 3]), ([3], [4, 5, 6, 7]), ([5, 6, 7], [8, 9])]
"""

from __future__ import annotations

import random

from .tasks import Task
from .templates import doc_to_choice, doc_to_target, doc_to_text, render_field

FEWSHOT_SEED = 1234  # lm-eval's --fewshot_random_seed default


def text_of(task: Task, doc: dict) -> str | int:
    return doc_to_text(task.doc_to_text, doc, task.doc_to_choice is not None, task.where("doc_to_text"))


def target_of(task: Task, doc: dict):
    return doc_to_target(task.doc_to_target, doc, task.doc_to_choice is not None, task.where("doc_to_target"))


def choices_of(task: Task, doc: dict) -> list[str]:
    return doc_to_choice(task.doc_to_choice, doc, task.where("doc_to_choice"))


def _as_text(task: Task, doc: dict, value) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, int) and task.doc_to_choice is not None:
        return choices_of(task, doc)[value]
    return str(value)


def demonstration(task: Task, doc: dict) -> str:
    """One solved example: text + target_delimiter + target + fewshot_delimiter."""
    text, target = text_of(task, doc), target_of(task, doc)
    out = _as_text(task, doc, text)
    if target != "":
        target = target[0] if isinstance(target, list) else target
        out += task.target_delimiter + _as_text(task, doc, target) + task.fewshot_delimiter
    return out


def fewshot_context(task: Task, doc: dict, shots: int, rnd: random.Random) -> str:
    """The prompt of `doc` with `shots` demonstrations drawn with `rnd`."""
    out = render_field(task.description, doc, task.where("description")) if task.description else ""
    if shots > 0:
        docs, extra = task.fewshot_docs()
        n = shots + 1 if extra else shots
        if n > len(docs):
            raise ValueError(f"{shots} shots need {n} fewshot documents; the split has {len(docs)}")
        picked = [d for d in rnd.sample(docs, n) if d != doc][:shots]
        out += "".join(demonstration(task, d) for d in picked)
    text = text_of(task, doc)
    if isinstance(text, int):
        raise ValueError(f"{task.where('doc_to_text')}: renders to the choice index {text} (one context per "
                         "choice, as winogrande does): not supported")
    return out + text


def encode_pair(tok, context: str, continuation: str, prefix_id: int) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) as lm-eval tokenizes a log-likelihood request.

    >>> from ember.tokenizer import Tokenizer
    >>> encode_pair(Tokenizer(merges=[]), "Q: ", "A", prefix_id=0)  # bytes: " A" moves over
    ([81, 58], [32, 65])
    """
    if context == "":
        return [prefix_id], tok.encode(continuation)
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    whole, ctx = tok.encode(context + continuation), tok.encode(context)
    return ctx, whole[len(ctx):]


def truncate(ctx: list[int], cont: list[int], max_length: int) -> tuple[list[int], list[int]]:
    """Drop context tokens from the left so that the fed tokens (all but the last) fit."""
    if len(cont) > max_length:
        raise ValueError(f"a continuation of {len(cont)} tokens does not fit max_length {max_length}")
    keep = max_length + 1 - len(cont)
    return (ctx[-keep:] if len(ctx) > keep else ctx), cont


def rolling_windows(ids: list[int], prefix_id: int, max_length: int, context_len: int = 1):
    """[(context ids, predicted ids)] covering `ids` (lm-eval's get_rolling_token_windows,
    then make_disjoint_window)."""
    if not 1 <= context_len <= max_length:
        raise ValueError(f"context_len must be in 1..{max_length}, got {context_len}")
    if not ids:
        return []
    pred_len = max_length - context_len + 1
    first = min(max_length, len(ids))
    windows = [([prefix_id], ids[:first])]
    done = first
    while done < len(ids):
        n = min(len(ids) - done, pred_len)
        end = done + n
        ctx = ids[max(0, end - max_length - 1) : end - 1]
        windows.append((ctx[: len(ctx) - (n - 1)], ids[end - n : end]))
        done = end
    return windows
