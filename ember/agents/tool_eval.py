"""Calculator accuracy: does the model call the tool and report its result?

Each item is a question with a numeric answer. The model sees [system TOOL_SYSTEM_PROMPT,
user question] and runs through `generate_with_tools`; it is right when the last number in
its final assistant message (one that is not a tool call) equals the answer within 1e-6.
The default items are the held-out phrasings of `ember.data.tool_use.default_eval_set()`.

    >>> from ember.agents.tool_eval import main
    >>> main(adapter="runs/sft-calc/adapter")  # doctest: +SKIP
    accuracy 0.870 (87/100), tool-call rate 0.990
"""

from __future__ import annotations

import json as jsonlib
import math
import re
from pathlib import Path

from ember.agents.tools import CALL_OPEN, generate_with_tools, parse_tool_call
from ember.core.io import read_text_utf8
from ember.data.tool_use import TOOL_SYSTEM_PROMPT, default_eval_set

# A number: optional sign (not right after a word character or ")", where it is an
# operator: "5-3"), digits with or without thousands separators, optional decimals.
_NUMBER = re.compile(r"(?:(?<![\w)])[-+−])?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?")
N_EXAMPLES = 3


def parse_numbers(text: str) -> list[float]:
    """Every number in text, in order.

    >>> parse_numbers("12 - 5 = 7, and -1,234.5 too; 5-3")
    [12.0, 5.0, 7.0, -1234.5, 5.0, 3.0]
    """
    return [float(m.group().replace(",", "").replace("−", "-")) for m in _NUMBER.finditer(text)]


def final_answer(conversation: list[dict]) -> str | None:
    """The final assistant message, or None if the conversation does not end on an answer
    (it ends on a tool call, or the model never replied)."""
    last = conversation[-1] if conversation else None
    if last is None or last["role"] != "assistant" or CALL_OPEN in last["content"]:
        return None
    return last["content"]


def is_correct(conversation: list[dict], answer: float) -> bool:
    """The last number of the final answer equals `answer` (absolute tolerance 1e-6).

    >>> is_correct([{"role": "assistant", "content": "123 × 456 = 56,088."}], 56088)
    True
    """
    text = final_answer(conversation)
    numbers = parse_numbers(text) if text else []
    return bool(numbers) and math.isclose(numbers[-1], answer, rel_tol=0.0, abs_tol=1e-6)


def called_tool(conversation: list[dict]) -> bool:
    """Whether any assistant message holds a well-formed tool call."""
    return any(m["role"] == "assistant" and parse_tool_call(m["content"]) for m in conversation)


def evaluate_tool_use(model, tok, items: list[dict], batch_size: int = 8, max_rounds: int = 3) -> dict:
    """{"accuracy", "n", "tool_call_rate", "examples"} over items [{"question", "answer"}];
    examples are the first few transcripts (generated messages only, after the system one).

    >>> evaluate_tool_use(model, tok, default_eval_set())["accuracy"]  # doctest: +SKIP
    0.87
    """
    from ember.infer.engine import Engine

    if not items:
        raise ValueError("no evaluation items")
    engine = Engine(model, tok, max_batch_size=batch_size)
    convs = [[{"role": "system", "content": TOOL_SYSTEM_PROMPT}, {"role": "user", "content": it["question"]}]
             for it in items]
    done = generate_with_tools(engine, tok, convs, max_rounds=max_rounds)
    correct = [is_correct(c, it["answer"]) for c, it in zip(done, items)]
    n = len(items)
    return {
        "accuracy": sum(correct) / n,
        "n": n,
        "tool_call_rate": sum(called_tool(c) for c in done) / n,
        "examples": [
            {"question": it["question"], "answer": it["answer"], "correct": ok, "messages": c[1:]}
            for c, it, ok in list(zip(done, items, correct))[:N_EXAMPLES]
        ],
    }


def load_eval_items(path: str | Path) -> list[dict]:
    """Items from JSONL, one {"question": str, "answer": number} a line (blank lines skipped);
    a bad line is a ValueError naming the file and line.

    >>> load_eval_items("calc_eval.jsonl")  # doctest: +SKIP
    [{'question': 'What is 2 + 2?', 'answer': 4}]
    """
    items = []
    for lineno, line in enumerate(read_text_utf8(path).splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            obj = jsonlib.loads(line)
        except ValueError as e:
            raise ValueError(f"{where}: not valid JSON ({e})") from None
        if not isinstance(obj, dict):
            raise ValueError(f"{where}: expected an object {{\"question\": ..., \"answer\": ...}}")
        q, a = obj.get("question"), obj.get("answer")
        if not isinstance(q, str) or not q.strip():
            raise ValueError(f"{where}: \"question\" must be a non-empty string, got {q!r}")
        if isinstance(a, bool) or not isinstance(a, int | float) or not math.isfinite(a):
            raise ValueError(f"{where}: \"answer\" must be a number, got {a!r}")
        items.append({"question": q, "answer": a})
    if not items:
        raise ValueError(f"{path}: no evaluation items")
    return items


def load_for_eval(model: str = "smollm2", adapter: str | Path | None = None, quant: str | None = None):
    """(model, tok): `model` alone; with the LoRA of an adapter folder (adapter_config.json,
    see ember.peft.save_adapter); or, when `adapter` is a merged model instead (a GGUF or an
    HF folder), that model, with its own tokenizer if it has one, else `model`'s.

    quant ("int8"/"int4", with fused projections) speeds up CPU decode. A LoRA adapter is
    then merged first, and quantizing the merged weights adds rounding of its own: compare
    with a base model evaluated at the same quant.
    """
    import ember

    if adapter is None:
        return ember.load(model, quant=quant, fuse=quant is not None)
    folder = Path(adapter)
    if (folder / "adapter_config.json").is_file():
        from ember.peft import load_adapter, merge_lora

        net, tok = ember.load(model)
        net = load_adapter(net, folder)
        return (net if quant is None else _quantize(merge_lora(net), quant)), tok
    if not folder.exists():
        raise ValueError(f"adapter {folder}: no such file or folder")
    if folder.suffix.lower() == ".gguf" or any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer.ember.json")):
        return ember.load(str(folder), quant=quant, fuse=quant is not None)
    from ember.model.load import load_model
    from ember.tokenizer import load_tokenizer

    net = load_model(folder)  # a ValueError names what the folder lacks
    return (net if quant is None else _quantize(net, quant)), load_tokenizer(model)


def _quantize(net, quant: str):
    from ember.quant import QuantConfig, apply_fused_projections, apply_quant

    return apply_fused_projections(apply_quant(net, QuantConfig(mode=quant)))


def main(
    model: str = "smollm2", adapter: str | None = None, data: str | None = None, json: bool = False,
    limit: int | None = None, quant: str | None = None, batch_size: int = 8,
) -> dict:
    """Evaluate and print a report (or, with json=True, exactly one line {"accuracy", "n"})."""
    items = load_eval_items(data) if data else default_eval_set()
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit must be a positive int, got {limit!r}")
        items = items[:limit]
    net, tok = load_for_eval(model, adapter, quant)
    report = evaluate_tool_use(net, tok, items, batch_size=batch_size)
    if json:
        print(jsonlib.dumps({"accuracy": report["accuracy"], "n": report["n"]}))
        return report
    n_right = round(report["accuracy"] * report["n"])
    print(f"accuracy {report['accuracy']:.3f} ({n_right}/{report['n']}), "
          f"tool-call rate {report['tool_call_rate']:.3f}")
    for ex in report["examples"]:
        print(f"\n--- {'right' if ex['correct'] else 'wrong'} (expected {ex['answer']})")
        print(f"user: {ex['question']}")
        for m in ex["messages"][1:]:
            print(f"{m['role']}: {m['content']}")
    return report
