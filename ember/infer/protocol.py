"""The OpenAI wire format: pydantic models for requests (strict) and the error shape.

Requests forbid unknown fields and bound every number, so a client mistake is a 400 that
names the field instead of a silent default or a 500 deep in the engine. Responses are
plain dicts built in server.py (their shapes are OpenAI's, documented there).

    >>> ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "Hi"}]).n
    1
"""

from __future__ import annotations

import json
from typing import Annotated, Literal, TypeVar

from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from .protocol_ext import Strict, Text, ToolCall, ToolFields, VendorSampling

MAX_N = 8  # choices per request: each is its own engine request
MAX_LOGPROBS = 20  # top alternatives per token (OpenAI's cap for chat)
MAX_STOP = 16
MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed takes a signed 64-bit integer


class TextPart(Strict):
    type: Literal["text"]
    text: Text


class ChatMessage(Strict):
    role: Literal["system", "user", "assistant", "tool"]
    content: Text | list[TextPart] | None = None  # None only makes sense for assistant turns
    name: Text | None = None
    tool_call_id: Text | None = None
    tool_calls: list[ToolCall] | None = None  # an assistant turn's calls

    def text(self) -> str:
        # Parts are joined with newlines, as vLLM does; OpenAI does not specify a separator.
        if isinstance(self.content, list):
            return "\n".join(p.text for p in self.content)
        return self.content or ""


class StreamOptions(Strict):
    include_usage: bool = False


Stop = Text | Annotated[list[Text], Field(max_length=MAX_STOP)] | None


class SamplingFields(VendorSampling):
    """Fields both completion endpoints share (OpenAI's names and ranges, plus vLLM's
    top_k / min_p / repetition_penalty)."""

    model: Text
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
    user: Text | None = None  # accepted and ignored, as the OpenAI API allows

    @field_validator("stop", mode="before")
    @classmethod
    def _few_stops(cls, v):
        # Before the union: after it, pydantic would blame the first branch ("should be a
        # valid string") for a list that is merely too long.
        if isinstance(v, list) and len(v) > MAX_STOP:
            raise ValueError(f"stop: at most {MAX_STOP} sequences, got {len(v)}")
        return v

    def stop_list(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return [s for s in stops if s]  # "" would stop everywhere: OpenAI ignores it too

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)


class RagOptions(Strict):
    k: int = Field(5, ge=1, le=20)  # sources retrieved for the prompt (`ember serve --rag F`)


class ChatCompletionRequest(ToolFields, SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    rag: bool | RagOptions | None = None  # answer from the server's document store (rag_chat.py)
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
    prompt: Text | Annotated[list[Text], Field(min_length=1)] | TokenIds | Annotated[list[TokenIds], Field(min_length=1)]
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    echo: bool = False

    @field_validator("prompt", mode="before")
    @classmethod
    def _some_prompt(cls, v):
        if isinstance(v, list) and not v:  # every branch would fail, the first one loudest
            raise ValueError("prompt: the list is empty; give a string, a list of strings, "
                             "a list of token ids or a list of such lists")
        return v

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


MAX_EMBED_INPUTS = 2048  # OpenAI's limit on inputs per embeddings request


def _input_kind(x) -> str:
    if isinstance(x, str):
        return "strings"
    if isinstance(x, int) and not isinstance(x, bool):
        return "token ids"
    return "lists of token ids" if isinstance(x, list) else _JSON_KINDS.get(type(x), "objects")


class EmbeddingRequest(Strict):
    """OpenAI's embeddings request. Empty strings are refused, as OpenAI does: they would
    embed only the model's special tokens, which is almost always a client bug."""

    model: Text
    input: Text | list[Text] | TokenIds | list[TokenIds]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)  # honoured only when it is the model's own (server side)
    user: Text | None = None  # accepted and ignored

    @field_validator("input", mode="before")
    @classmethod
    def _one_kind_of_input(cls, v):
        # Before the union, so that a mix or a too-long batch gets one clear message (and
        # 10,000 inputs are counted, not validated one by one first).
        if v == "":
            raise ValueError("input: the string is empty; give at least one character")
        if not isinstance(v, list):
            return v
        if not v:
            raise ValueError("input: the list is empty; give a string, a list of strings, "
                             "a list of token ids or a list of such lists")
        if len(v) > MAX_EMBED_INPUTS:
            raise ValueError(f"input: at most {MAX_EMBED_INPUTS} inputs per request, got {len(v)}")
        kinds = list(dict.fromkeys(_input_kind(x) for x in v))
        if len(kinds) > 1:
            raise ValueError(f"input: the list mixes {' and '.join(kinds)}; give only strings, only "
                             "token ids, or only lists of token ids")
        if "" in v:
            raise ValueError(f"input[{v.index('')}]: the string is empty; give at least one character")
        return v

    def inputs(self) -> list[str | list[int]]:
        x = self.input
        return [x] if isinstance(x, str) or isinstance(x[0], int) else list(x)


class TokenizeRequest(Strict):
    """POST /tokenize (vLLM's fields; lm-evaluation-harness's remote tokenizer sends them).

    Without add_special_tokens a prompt gets the ids /v1/completions gives the same text:
    BOS as the model adds it, special-token strings as plain text. With it (either value),
    Hugging Face's semantics: special-token strings in the text are their own single ids,
    and True adds what the model adds (SmolLM2: nothing), False adds nothing.
    """

    model: Text | None = None
    prompt: Text | None = None
    messages: list[ChatMessage] | None = Field(None, min_length=1)
    add_generation_prompt: bool = True
    add_special_tokens: bool | None = None
    return_token_strs: bool = False

    @model_validator(mode="after")
    def _one_input(self):
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of prompt or messages")
        return self


class DetokenizeRequest(Strict):
    model: Text | None = None
    tokens: list[Annotated[int, Field(ge=0)]]


M = TypeVar("M", bound=BaseModel)
_JSON_KINDS = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "a boolean",
               type(None): "null"}


def parse_request(raw: bytes, model: type[M]) -> M:
    """A request body → `model`, or the 400 that says what is wrong with it. Costly on a
    big body (JSON, then validation): the server calls it off the event loop.

    >>> parse_request(b'{"prompt": "Hi"}', TokenizeRequest).prompt
    'Hi'
    """
    if not raw or raw.isspace():
        raise APIError(400, "the request body is empty: expected a JSON object")
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as e:
        raise APIError(400, f"malformed JSON in the request body: {e.msg} (line {e.lineno}, column {e.colno})") from None
    except UnicodeDecodeError:
        raise APIError(400, "the request body is not UTF-8 text") from None
    except RecursionError:
        raise APIError(400, "the JSON in the request body is nested too deeply") from None
    if not isinstance(obj, dict):
        raise APIError(400, f"the request body must be a JSON object, got {_JSON_KINDS.get(type(obj), 'a value')}")
    try:
        return model.model_validate(obj)
    except ValidationError as e:  # FastAPI's shape, so one handler words every such error
        errors = [{**err, "loc": ("body", *err["loc"])} for err in e.errors(include_url=False)]
        raise RequestValidationError(errors) from None


_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none", "function-after", "constrained-int"}
_KINDS = {"string_type": "a string", "list_type": "an array", "int_type": "an integer", "float_type": "a number",
          "bool_type": "a boolean", "dict_type": "an object", "model_type": "an object", "none_required": "null",
          "model_attributes_type": "an object"}


def _path(err: dict) -> tuple:
    """pydantic's error location without "body" and the union-member tags pydantic inserts
    (("body", "prompt", "list[str]", 1) → ("prompt", 1)); an unknown field keeps its name."""
    loc = tuple(err.get("loc", ()))
    loc = loc[1:] if loc[:1] == ("body",) else loc
    key = loc[-1:] if err.get("type") == "extra_forbidden" else ()
    body = loc[: len(loc) - len(key)]
    # (a model member of a union is tagged with its class name: "NamedToolChoice")
    return tuple(p for p in body if isinstance(p, int) or not ("[" in p or p in _TYPE_TAGS or p[:1].isupper())) + key


def _param(path: tuple) -> str | None:
    """("messages", 0, "role") → OpenAI's `param` "messages[0].role"."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or None


def _mismatch(err: dict) -> bool:
    return err.get("type") in _KINDS or str(err.get("type", "")).endswith("_type")


def describe_errors(errors: list[dict]) -> tuple[str, str | None]:
    """The message and param of a validation failure. pydantic reports a union's failure
    once per member, the first one ("should be a valid string") usually the wrong one: of
    the first field's errors, report the member that matched the value's shape and got
    furthest into it; if none did, list the shapes that would do."""
    field = _path(errors[0])[:1]
    group = [e for e in errors if _path(e)[:1] == field]

    def rank(e):
        path = _path(e)
        return not _mismatch(e), len(path), [p for p in path if isinstance(p, int)]

    best = max(group, key=rank)
    path, kind = _path(best), best.get("type")
    param = _param(path)
    if kind == "value_error":  # our validators' messages name the field themselves
        return str((best.get("ctx") or {}).get("error", best.get("msg"))), param
    if kind == "extra_forbidden":
        return f"Unrecognized request argument supplied: {param}", param
    if kind == "missing":
        return f"Missing required parameter: '{param}'", param
    msg = best.get("msg", "invalid value")
    if _mismatch(best):
        kinds = list(dict.fromkeys(_KINDS.get(e["type"]) for e in group if _mismatch(e) and _path(e) == path))
        if len(kinds) > 1 and None not in kinds:
            msg = "expected " + ", ".join(kinds[:-1]) + " or " + kinds[-1]
    return (f"Invalid value for '{param}': {msg}" if param else msg), param


def _utf8(s: str | None) -> str | None:
    # An error may quote the client's text, which may hold a lone surrogate: write it as
    # an escape rather than fail to encode the response.
    return s if s is None or s.isascii() else s.encode("utf-8", "backslashreplace").decode("utf-8")


def error_body(message: str, type: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    """OpenAI's error shape.

    >>> error_body("bad", param="n")["error"]["param"]
    'n'
    """
    return {"error": {"message": _utf8(message), "type": type, "param": _utf8(param), "code": code}}


class APIError(Exception):
    """An error the server answers in OpenAI's shape (raised anywhere in a handler)."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code


# ---- responses -------------------------------------------------------------------------


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def sse(obj) -> str:
    """One server-sent event (`[DONE]` goes as is)."""
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
            for e in entries]


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
