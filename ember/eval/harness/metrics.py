r"""Per-item metrics and their aggregation, as lm-eval defines them.

Multiple choice, over the choices' log-likelihoods ll[i] (lm-eval `process_results`):

- acc: argmax ll[i] is the gold choice;
- acc_norm: argmax ll[i] / len(choice_i) in characters (not tokens, not bytes) is gold;
- acc_bytes: argmax ll[i] / len(choice_i.encode("utf-8")) is gold;
- exact_match: the gold continuation is the greedy one (argmax at every token).

Generation: exact_match of the filtered response and the target (with ignore_case,
ignore_punctuation, regexes_to_ignore). Rolling log-likelihood of a text (corpus-level,
summed over documents before dividing):

- word_perplexity = exp(-Σ ll / Σ words), words = len(re.split(r"\s+", text));
- byte_perplexity = exp(-Σ ll / Σ bytes), bytes of the UTF-8 text;
- bits_per_byte = -Σ ll / Σ bytes / ln 2.

The per-item metrics aggregate by the mean, with the standard error of the mean
(sample standard deviation / √n); the corpus ones have no standard error here.

    >>> multiple_choice([-2.0, -3.0], ["a", "bbbbbb"], gold=1)
    {'acc': 0.0, 'acc_norm': 1.0, 'acc_bytes': 1.0}
"""

from __future__ import annotations

import math
import re
import string

MC_METRICS = ("acc", "acc_norm", "acc_bytes", "exact_match")
GEN_METRICS = ("exact_match",)
ROLLING_METRICS = ("word_perplexity", "byte_perplexity", "bits_per_byte")
DEFAULT_METRICS = {
    "multiple_choice": ("acc", "acc_norm"),
    "generate_until": ("exact_match",),
    "loglikelihood_rolling": ROLLING_METRICS,
}
ALLOWED = {"multiple_choice": MC_METRICS, "generate_until": GEN_METRICS, "loglikelihood_rolling": ROLLING_METRICS}
METRIC_OPTIONS = {"exact_match": {"ignore_case", "ignore_punctuation", "regexes_to_ignore", "ignore_numbers"}}


def _argmax(xs) -> int:
    return max(range(len(xs)), key=lambda i: (xs[i], -i))  # the first of equals, as numpy's


def multiple_choice(lls: list[float], choices: list[str], gold: int | list[int],
                    greedy: list[bool] | None = None) -> dict[str, float]:
    """acc, acc_norm, acc_bytes (and exact_match with `greedy`) of one item; `gold` may
    list several right choices."""
    golds = gold if isinstance(gold, list) else [gold]
    pred = _argmax(lls)
    pred_norm = _argmax([ll / len(c) for ll, c in zip(lls, choices)])
    pred_bytes = _argmax([ll / len(c.encode("utf-8")) for ll, c in zip(lls, choices)])
    out = {"acc": float(pred in golds), "acc_norm": float(pred_norm in golds), "acc_bytes": float(pred_bytes in golds)}
    if greedy is not None:
        out["exact_match"] = float(any(greedy[g] for g in golds))
    return out


def exact_match(prediction: str, reference: str, ignore_case: bool = False, ignore_punctuation: bool = False,
                ignore_numbers: bool = False, regexes_to_ignore: list[str] | None = None) -> float:
    """lm-eval's exact_match (Hugging Face evaluate's): 1.0 when equal after the options.

    >>> exact_match(" Paris.", " paris", ignore_case=True, ignore_punctuation=True)
    1.0
    """
    for pattern in regexes_to_ignore or ():
        prediction, reference = re.sub(pattern, "", prediction), re.sub(pattern, "", reference)
    if ignore_case:
        prediction, reference = prediction.lower(), reference.lower()
    if ignore_punctuation:
        table = str.maketrans("", "", string.punctuation)
        prediction, reference = prediction.translate(table), reference.translate(table)
    if ignore_numbers:
        table = str.maketrans("", "", string.digits)
        prediction, reference = prediction.translate(table), reference.translate(table)
    return float(prediction == reference)


def count_words(text: str) -> int:
    return len(re.split(r"\s+", text))


def count_bytes(text: str) -> int:
    return len(text.encode("utf-8"))


def rolling(pairs: list[tuple[float, int, int]]) -> dict[str, float]:
    """(summed log-likelihood, words, bytes) per document → the corpus metrics.

    >>> rolling([(-math.log(2) * 8, 3, 8)])["bits_per_byte"]
    1.0
    """
    ll = sum(p[0] for p in pairs)
    words, n_bytes = sum(p[1] for p in pairs), sum(p[2] for p in pairs)
    return {"word_perplexity": math.exp(-ll / words), "byte_perplexity": math.exp(-ll / n_bytes),
            "bits_per_byte": -ll / n_bytes / math.log(2)}


def mean_and_stderr(values: list[float]) -> tuple[float, float | None]:
    """The mean and lm-eval's standard error of it (None for a single value).

    >>> mean_and_stderr([1.0, 0.0, 1.0, 0.0])
    (0.5, 0.288675...)
    """
    n = len(values)
    mu = sum(values) / n
    if n < 2:
        return mu, None
    sd = math.sqrt(sum((x - mu) ** 2 for x in values) / (n - 1))
    return mu, sd / math.sqrt(n)
