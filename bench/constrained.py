"""The constrained decoder's overhead per token: SmolLM2 greedy on the same prompts,
unconstrained vs constrained (a JSON schema, a tool call, a JSON object, tool_choice auto), and the mask
computation alone (replaying the constrained tokens through a fresh constraint, with the
mask cache cold and then warm). Prints one table and the one-off costs (vocabulary
preparation, grammar compilation).

    .venv/bin/python -P bench/constrained.py [--threads 1] [--max-tokens 64] [--repeats 3]

ms/token is the wall time of `Engine.generate` divided by the tokens generated (prefill
included, the same prompt both ways); the constrained run is timed twice: first with an
empty mask cache (every new matcher state walks the vocabulary trie), then `--repeats`
times more (the masks of a repeated request are cached), interleaved with as many
unconstrained runs; the best of each is kept, since other processes on the machine slow
runs at random. Because whole-run differences are within that noise on a shared machine,
the constraint's own parts are timed apart too: "mask" is allowed() + advance() per token
(cold: empty mask cache; warm: cached), "apply" the engine's masking of the logits row
(constrain_logits, warm masks), "budget" the same as "mask" with allowed() told the
tokens left of --max-tokens (the budget check: every token's closing cost once the budget
nears the shortest completion; cold: empty caches), and "parts %" is (mask cold + apply) / plain ms per token. Unconstrained replies are cut at the constrained
reply's length (ignore_eos), so both decode the same number of tokens.

Measured (`-P bench/constrained.py --threads 1 --repeats 1`, a 2-core machine shared with
other jobs at load ~17, so the whole-run ms/token columns are noise; the mask columns are
the constraint's own work, max_tokens 64):

    constraint   tokens mask cold ms  mask warm ms  budget cold  budget warm  apply ms
    json_schema      40        3.166         0.015        4.843        0.073     0.678
    tool_calls       35        2.303         0.017        7.681        0.058     2.625
    json_object      64        0.290         0.216        0.567        0.017     0.489
    tools auto       64        0.020         0.017        3.741        0.337     1.638

Vocabulary preparation: 2.6 s (once per tokenizer); grammar compilation: 0.2-0.7 ms.
"""

from __future__ import annotations

import argparse
import time

import torch

from ember.infer import Engine, SamplingParams
from ember.infer.constrained import json_object, json_schema, tool_calls
from ember.infer.constrained.vocab import Vocab, vocab_for
from ember.model.load import load_model
from ember.tokenizer import load_tokenizer

PERSON = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 24}, "age": {"type": "integer"},
    "hobbies": {"type": "array", "items": {"type": "string", "maxLength": 16}, "maxItems": 3}},
    "required": ["name", "age", "hobbies"]}
WEATHER = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"]}}}]
CASES = [
    ("json_schema", "Describe a person as JSON with name, age and hobbies.", lambda t: json_schema(PERSON, t)),
    ("tool_calls", "What is the weather in Paris?", lambda t: tool_calls(WEATHER, t, parallel=False)),
    ("json_object", "Give me a JSON object describing a book.", json_object),
    ("tools auto", "Tell me a joke about Paris.", lambda t: tool_calls(WEATHER, t, tool_choice="auto")),
]


def timed_generate(engine, ids, params, constraint=None):
    start = time.perf_counter()
    r = engine.generate([ids], params, constraints=[constraint])[0]
    return r, time.perf_counter() - start


def mask_ms(grammar, token_ids, budget: int | None = None) -> float:
    """Mean ms of allowed() + advance() per token, replaying token_ids; with budget (the
    request's max_tokens), allowed() is told the tokens left, as the engine does."""
    c = grammar.start()
    start = time.perf_counter()
    for i, t in enumerate(token_ids):
        c.allowed(None if budget is None else budget - i)
        c.advance(t)
    return 1000 * (time.perf_counter() - start) / max(len(token_ids), 1)


def apply_ms(grammar, token_ids, V: int) -> float:
    """Mean ms of the engine's masking step (constrain_logits on one [1, V] row), warm masks."""
    from types import SimpleNamespace

    from ember.infer.constrain_step import constrain_logits

    c, logits, total = grammar.start(), torch.randn(1, V), 0.0
    for t in token_ids:
        start = time.perf_counter()
        req = SimpleNamespace(constraint=c, params=SamplingParams(max_tokens=10**6), token_ids=[])
        constrain_logits([req], logits)
        total += time.perf_counter() - start
        c.advance(t)
    return 1000 * total / max(len(token_ids), 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3, help="timed runs of each (the best is kept)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tok, model = load_tokenizer(args.model), load_model(args.model)
    t0 = time.perf_counter()
    Vocab(tok)
    prep_s = time.perf_counter() - t0
    vocab = vocab_for(tok)
    engine = Engine(model, tok, max_batch_size=1)
    engine.generate([tok.encode("warm up")], SamplingParams(temperature=0, max_tokens=4))
    print(f"vocabulary preparation: {prep_s:.2f} s ({vocab.size} tokens, "
          f"{int(vocab.string_body.sum())} free-string tokens)")
    header = (f"{'constraint':12} {'tokens':>6} {'plain ms/tok':>12} {'constr. cold':>12} {'constr. warm':>12} "
              f"{'overhead warm':>13} {'mask cold ms':>12} {'mask warm ms':>12} {'budget cold':>11} {'budget warm':>11} "
              f"{'apply ms':>9} {'parts %':>10}")
    print(header)
    print("-" * len(header))
    for name, question, make in CASES:
        ids = tok.render_chat([{"role": "user", "content": question}])
        ids = ids[0] if isinstance(ids, tuple) else ids
        t0 = time.perf_counter()
        grammar = make(tok)
        compile_ms = 1000 * (time.perf_counter() - t0)
        vocab.masks.clear()
        params = SamplingParams(temperature=0, max_tokens=args.max_tokens)
        rc, cold_s = timed_generate(engine, ids, params, grammar.start())
        n = len(rc.token_ids)
        plain = SamplingParams(temperature=0, max_tokens=n, ignore_eos=True)
        plain_s, warm_s = float("inf"), float("inf")
        for _ in range(args.repeats):  # interleaved, the best of each: load from others hits both
            plain_s = min(plain_s, timed_generate(engine, ids, plain)[1])
            warm_s = min(warm_s, timed_generate(engine, ids, params, grammar.start())[1])
        vocab.masks.clear()
        m_cold = mask_ms(grammar, rc.token_ids)
        m_warm = mask_ms(grammar, rc.token_ids)
        vocab.masks.clear()
        vocab.costs.clear()
        b_cold = mask_ms(grammar, rc.token_ids, args.max_tokens)
        b_warm = mask_ms(grammar, rc.token_ids, args.max_tokens)
        m_apply = apply_ms(grammar, rc.token_ids, model.config.vocab_size)
        ms = [1000 * s / n for s in (plain_s, cold_s, warm_s)]
        print(f"{name:12} {n:6d} {ms[0]:12.2f} {ms[1]:12.2f} {ms[2]:12.2f} "
              f"{100 * (ms[2] / ms[0] - 1):12.1f}% {m_cold:12.3f} {m_warm:12.3f} {b_cold:11.3f} {b_warm:11.3f} {m_apply:9.3f} "
              f"{100 * (m_cold + m_apply) / ms[0]:9.2f}%")
        print(f"{'':12} compile {compile_ms:.1f} ms, finish {rc.finish_reason}: {rc.text[:90]!r}")


if __name__ == "__main__":
    main()
