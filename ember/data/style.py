"""The generated style preference set: pairs that teach one house style.

`make_style_pairs` teaches one house style, stated in STYLE_SYSTEM_PROMPT and
given as the system message of every prompt: answer the question directly, in one short
sentence that ends with a full stop. CHOSEN is such a sentence ("The capital of France is
Paris."); REJECTED breaks the style one way, at random: rambling filler before the answer,
a deflection that never answers, a reply that trails off mid-sentence, or the answer said
over and over. `style_violation` checks a reply against the style (the eval's metric).
Questions have known short answers (arithmetic, capitals, unit conversions, simple facts);
"train" and "heldout" use disjoint question templates and items.

>>> rows = make_style_pairs(2, seed=0)
>>> rows[0]["prompt"][0]["content"] == STYLE_SYSTEM_PROMPT, rows[0]["chosen"].endswith(".")
(True, True)
"""

from __future__ import annotations

import random
import re

STYLE_SYSTEM_PROMPT = "Answer directly in one short sentence that ends with a full stop."
MAX_STYLE_WORDS = 16
VIOLATIONS = ("ramble", "deflect", "trail", "repeat")

_CAPITALS = {
    "train": {"France": "Paris", "Japan": "Tokyo", "Italy": "Rome", "Egypt": "Cairo", "Canada": "Ottawa",
              "Spain": "Madrid", "Kenya": "Nairobi", "Peru": "Lima", "Norway": "Oslo", "Greece": "Athens"},
    "heldout": {"Germany": "Berlin", "China": "Beijing", "Russia": "Moscow", "Portugal": "Lisbon",
                "Ireland": "Dublin", "Thailand": "Bangkok", "Sweden": "Stockholm", "Cuba": "Havana"},
}
# (question, answer sentence, the answer the sentence must contain)
_FACTS = {
    "train": [
        ("What color is the sky on a clear day?", "The sky is blue on a clear day.", "blue"),
        ("How many legs does a spider have?", "A spider has eight legs.", "eight"),
        ("How many days are in a week?", "A week has seven days.", "seven"),
        ("At what temperature in Celsius does water freeze?", "Water freezes at 0 degrees Celsius.", "0"),
        ("What gas do plants take in from the air?", "Plants take in carbon dioxide from the air.", "carbon dioxide"),
        ("Which animal is known as the king of the jungle?", "The lion is known as the king of the jungle.", "lion"),
    ],
    "heldout": [
        ("What color is fresh grass?", "Fresh grass is green.", "green"),
        ("How many legs does a dog have?", "A dog has four legs.", "four"),
        ("How many months are in a year?", "A year has twelve months.", "twelve"),
        ("At what temperature in Celsius does water boil?", "Water boils at 100 degrees Celsius.", "100"),
        ("Which planet do we live on?", "We live on the planet Earth.", "Earth"),
    ],
}
# (question template, sentence template, factor): "{n} <big> is {n·factor} <small>."
_UNITS = {
    "train": [("How many meters are in {n} kilometers?", "{n} kilometers is {m} meters.", 1000),
              ("How many minutes are in {n} hours?", "{n} hours is {m} minutes.", 60)],
    "heldout": [("How many grams are in {n} kilograms?", "{n} kilograms is {m} grams.", 1000),
                ("How many seconds are in {n} minutes?", "{n} minutes is {m} seconds.", 60)],
}
_ARITHMETIC = {
    "train": [("What is {a} plus {b}?", "{a} plus {b} is {c}.", lambda a, b: a + b),
              ("What is {a} times {b}?", "{a} times {b} is {c}.", lambda a, b: a * b)],
    "heldout": [("How much is {a} minus {b}?", "{a} minus {b} is {c}.", lambda a, b: a - b)],
}

_FILLERS = (
    "Great question!", "Well, let me think about that for a moment.", "That is something many people wonder about.",
    "There are a few things worth saying here before I get to it.", "Okay, so, thinking it over carefully.",
)
_DEFLECTIONS = (
    "That is a good question, and you could look it up yourself.", "I would rather not say.",
    "It depends on how you look at it.", "You should ask someone who knows more about this.",
    "People have argued about that for a long time.",
)
_TRAIL_ENDS = ("", ",", " and", " so", " which")


def _question(rng: random.Random, split: str) -> tuple[str, str, str]:
    """(question, answer sentence, answer) from one of the split's four families."""
    family = rng.choice(("arithmetic", "capital", "unit", "fact"))
    if family == "arithmetic":
        q, s, f = rng.choice(_ARITHMETIC[split])
        a, b = rng.randint(2, 12), rng.randint(2, 12)
        a, b = max(a, b), min(a, b)
        return q.format(a=a, b=b), s.format(a=a, b=b, c=f(a, b)), str(f(a, b))
    if family == "capital":
        country, city = rng.choice(sorted(_CAPITALS[split].items()))
        templates = {"train": "What is the capital of {}?", "heldout": "Which city is the capital of {}?"}
        return templates[split].format(country), f"The capital of {country} is {city}.", city
    if family == "unit":
        q, s, factor = rng.choice(_UNITS[split])
        n = rng.randint(2, 20)
        return q.format(n=n), s.format(n=n, m=n * factor), str(n * factor)
    return rng.choice(_FACTS[split])


def _rejected(rng: random.Random, sentence: str, violation: str) -> str:
    if violation == "ramble":
        return " ".join(rng.sample(_FILLERS, rng.randint(1, 2))) + " " + sentence
    if violation == "deflect":
        return rng.choice(_DEFLECTIONS)
    if violation == "trail":
        words = sentence.removesuffix(".").split()
        return " ".join(words[: rng.randint(max(1, len(words) // 2), len(words) - 1)]) + rng.choice(_TRAIL_ENDS)
    return " ".join([sentence] * rng.randint(2, 3))  # repeat


def make_style_pairs(n: int, seed: int = 0, split: str = "train") -> list[dict]:
    """n preference rows {"prompt", "chosen", "rejected", "answer", "violation"} in the house
    style (module docstring); the extra keys name the answer and how REJECTED breaks the style.

    >>> make_style_pairs(1, seed=3, split="heldout")[0]["chosen"]
    'The capital of Ireland is Dublin.'
    """
    if split not in _CAPITALS:
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    rng = random.Random(f"{split}:{seed}")
    rows = []
    for _ in range(n):
        question, sentence, answer = _question(rng, split)
        violation = rng.choice(VIOLATIONS)
        rows.append({
            "prompt": [{"role": "system", "content": STYLE_SYSTEM_PROMPT}, {"role": "user", "content": question}],
            "chosen": sentence, "rejected": _rejected(rng, sentence, violation),
            "answer": answer, "violation": violation,
        })
    return rows


_SENTENCE_END = re.compile(r"[.!?](?=\s|$)")


def style_violation(reply: str, answer: str) -> str | None:
    """None when the reply keeps the style, else why not: "unfinished" (no final full stop),
    "several sentences", "no answer" (the answer is not in it), "too long" (> 16 words).

    >>> style_violation("The capital of Peru is Lima.", "Lima"), style_violation("Lima is", "Lima")
    (None, 'unfinished')
    """
    text = reply.strip()
    if not text.endswith("."):
        return "unfinished"
    if len(_SENTENCE_END.findall(text)) > 1:
        return "several sentences"
    if not re.search(rf"(?<!\w){re.escape(answer)}(?!\w)", text, flags=re.IGNORECASE):
        return "no answer"
    if len(text.split()) > MAX_STYLE_WORDS:
        return "too long"
    return None
