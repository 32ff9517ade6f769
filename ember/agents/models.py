"""The agents' model interface over the engine: `model(messages, tools, tool_choice)` →
an OpenAI assistant message, through `ember.infer.tool_calls.chat` (decoding constrained so
that every tool call is well-formed JSON for one of the tools).

Replays are identical: sampling is seeded with `seed + turn` and tool-call ids are numbered
by turn, so the same seed gives the same trace.

>>> model = load_agent_model("smollm2", temperature=0.0)  # doctest: +SKIP
>>> model([{"role": "user", "content": "Hi"}], [], "none")["content"]  # doctest: +SKIP
'Hello! How can I help you today?'
"""

from __future__ import annotations


class EngineModel:
    """A model callable for `react` / `plan_and_execute` over an `Engine` and its tokenizer."""

    def __init__(self, engine, tokenizer, temperature: float = 0.0, seed: int = 0, max_tokens: int = 192,
                 constrained: bool = True):
        self.engine, self.tokenizer = engine, tokenizer
        self.temperature, self.seed, self.max_tokens = temperature, seed, max_tokens
        self.constrained = constrained
        self.turn = 0

    def __call__(self, messages: list[dict], tools: list[dict], tool_choice: str = "auto") -> dict:
        from ember.infer.sampling import SamplingParams
        from ember.infer.tool_calls import chat

        params = SamplingParams(temperature=self.temperature, seed=self.seed + self.turn, max_tokens=self.max_tokens)
        out = chat(self.engine, self.tokenizer, messages, tools=tools or None,
                   tool_choice=tool_choice if tools else "none", params=params, constrained=self.constrained)
        message = dict(out["message"])
        if message.get("tool_calls"):
            message["tool_calls"] = [{**c, "id": f"call_{self.turn}_{k}"} for k, c in enumerate(message["tool_calls"])]
        self.turn += 1
        return message


def load_agent_model(model: str = "smollm2", adapter: str | None = None, temperature: float = 0.0, seed: int = 0,
                     max_tokens: int = 192, max_seq_len: int | None = 2048) -> EngineModel:
    """An `EngineModel` for a known model name (with a LoRA adapter folder from `ember sft`)."""
    from ember.agents.tool_eval import load_for_eval
    from ember.infer.engine import Engine

    net, tok = load_for_eval(model, adapter)
    engine = Engine(net.eval(), tok, max_batch_size=1, max_seq_len=max_seq_len)
    return EngineModel(engine, tok, temperature=temperature, seed=seed, max_tokens=max_tokens)
