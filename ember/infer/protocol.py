"""The OpenAI wire format: pydantic models for requests (strict) and the error shape.

Requests forbid unknown fields and bound every number, so a client mistake is a 400 that
names the field instead of a silent default or a 500 deep in the engine. Responses are
plain dicts built in server.py (their shapes are OpenAI's, documented there).

    >>> ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "Hi"}]).n
    1
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

MAX_N = 8  # choices per request: each is its own engine request
MAX_LOGPROBS = 20  # top alternatives per token (OpenAI's cap for chat)
MAX_STOP = 16
MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed takes a signed 64-bit integer


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class TextPart(Strict):
    type: Literal["text"]
    text: str


class ChatMessage(Strict):
    role: Literal["system", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None  # None only makes sense for assistant turns
    name: str | None = None
    tool_call_id: str | None = None

    def text(self) -> str:
        # Parts are joined with newlines, as vLLM does; OpenAI does not specify a separator.
        if isinstance(self.content, list):
            return "\n".join(p.text for p in self.content)
        return self.content or ""


class StreamOptions(Strict):
    include_usage: bool = False


Stop = str | Annotated[list[str], Field(max_length=MAX_STOP)] | None


class SamplingFields(Strict):
    """Fields both completion endpoints share (OpenAI's names and ranges, plus vLLM's
    top_k / min_p / repetition_penalty)."""

    model: str
    max_tokens: int | None = Field(None, ge=0)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=-1, le=2**31 - 1)  # 0 or -1 = off (vLLM uses -1)
    min_p: float = Field(0.0, ge=0.0, le=1.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    repetition_penalty: float = Field(1.0, ge=0.01, le=10.0)  # tinier would overflow logits
    stop: Stop = None
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    n: int = Field(1, ge=1, le=MAX_N)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None  # accepted and ignored, as the OpenAI API allows

    def stop_list(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return [s for s in stops if s]  # "" would stop everywhere: OpenAI ignores it too

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=0)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)

    @model_validator(mode="after")
    def _top_logprobs_needs_logprobs(self):
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs requires logprobs: true")
        return self

    @property
    def max_new_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


TokenIds = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]


class CompletionRequest(SamplingFields):
    # One prompt (text or token ids) or a batch of them; each gets n choices.
    prompt: str | Annotated[list[str], Field(min_length=1)] | TokenIds | Annotated[list[TokenIds], Field(min_length=1)]
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    echo: bool = False

    @property
    def max_new_tokens(self) -> int | None:
        return self.max_tokens

    def prompts(self) -> list[str | list[int]]:
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if p and isinstance(p[0], int):
            return [p]
        return list(p)


class TokenizeRequest(Strict):
    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = Field(None, min_length=1)
    add_generation_prompt: bool = True

    @model_validator(mode="after")
    def _one_input(self):
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of prompt or messages")
        return self


class DetokenizeRequest(Strict):
    model: str | None = None
    tokens: list[Annotated[int, Field(ge=0)]]


def error_body(message: str, type: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    """OpenAI's error shape.

    >>> error_body("bad", param="n")["error"]["param"]
    'n'
    """
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


class APIError(Exception):
    """An error the server answers in OpenAI's shape (raised anywhere in a handler)."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None):  # fmt: skip
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code


# ---- responses -------------------------------------------------------------------------


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}  # fmt: skip


def sse(obj) -> str:
    """One server-sent event (`[DONE]` goes as is)."""
    import json

    data = obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False)
    return f"data: {data}\n\n"


def token_str(tok, token_id: int) -> str:
    """A token as text; a token that is part of a UTF-8 character is written as its bytes,
    as OpenAI's legacy log-probs do ("bytes:\\xe2\\x80").

    >>> token_str(tok, 42)  # doctest: +SKIP
    'K'
    """
    b = tok.id_to_bytes(token_id)
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{x:02x}" for x in b)


def chat_logprobs(tok, entries, k: int) -> list[dict]:
    """TokenLogprobs → the chat format's `logprobs.content` list (k alternatives each)."""

    def one(token_id, lp):
        return {"token": token_str(tok, token_id), "logprob": lp, "bytes": list(tok.id_to_bytes(token_id))}

    return [{**one(e.token_id, e.logprob), "top_logprobs": [one(i, lp) for i, lp in e.top[:k]]}
            for e in entries]  # fmt: skip


def legacy_logprobs(tok, token_ids, entries, k: int, offset: int = 0) -> dict:
    """The completions format: parallel lists; an entry of None (the first prompt token,
    which nothing predicts) gives a null log-prob and null alternatives. text_offset is each
    token's character offset in the returned text, starting at `offset`."""
    out = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    decoder = tok.stream_decoder()
    for token_id, e in zip(token_ids, entries):
        out["tokens"].append(token_str(tok, token_id))
        out["token_logprobs"].append(None if e is None else e.logprob)
        out["top_logprobs"].append(None if e is None else {token_str(tok, i): lp for i, lp in e.top[:k]})
        out["text_offset"].append(offset)
        offset += len(decoder.push(token_id))
    return out
