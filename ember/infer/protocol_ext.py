"""Request fields beyond plain chat: the strict base every request model shares, OpenAI's
tools, tool_choice and response_format, and the sampling fields vLLM and llama.cpp accept.

Shapes are checked here (pydantic); what needs the tokenizer or a JSON Schema compiler
(unknown tool names, schemas that cannot be compiled, tool messages that answer no call)
is checked in tool_calls.py, where the 400 names the field too.

    >>> ToolFields(tools=[{"type": "function", "function": {"name": "get_time"}}]).tool_choice is None
    True
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

MAX_TOOLS = 128  # OpenAI's limit on functions per request
MAX_STOP_TOKEN_IDS = 64


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


def _unicode(s: str) -> str:
    # JSON can spell a lone UTF-16 surrogate ("\ud800"); it is no character, so it can
    # be neither tokenized nor written back as UTF-8: refuse it here, naming the field.
    if not s.isascii():
        try:
            s.encode("utf-8")
        except UnicodeEncodeError as e:
            msg = f"lone surrogate U+{ord(s[e.start]):04X} at character {e.start} is not valid Unicode"
            raise PydanticCustomError("invalid_unicode", msg) from None
    return s


Text = Annotated[str, AfterValidator(_unicode)]  # every string a request carries
# OpenAI's rule for function and schema names.
Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]


# ---- tools ------------------------------------------------------------------------------


class FunctionDef(Strict):
    name: Name
    description: Text | None = None
    parameters: dict[str, Any] | None = None  # a JSON Schema; None: no arguments
    strict: bool | None = None  # accepted; calls are always schema-valid when constrained


class Tool(Strict):
    type: Literal["function"]
    function: FunctionDef


class FunctionName(Strict):
    name: Text


class NamedToolChoice(Strict):
    type: Literal["function"]
    function: FunctionName


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class CalledFunction(Strict):
    name: Text
    arguments: Text  # JSON text, as OpenAI sends it


class ToolCall(Strict):
    """A call an earlier assistant message made (in the history a client sends back)."""

    id: Text
    type: Literal["function"] = "function"
    function: CalledFunction


class JSONSchemaFormat(Strict):
    name: Name
    description: Text | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")  # None: any JSON object
    strict: bool | None = None


class ResponseFormat(Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_iff_json_schema(self):
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError("response_format.json_schema is required with type 'json_schema' "
                             "and only allowed with it")
        return self


class ToolFields(Strict):
    """The chat request's tool-calling and structured-output fields (OpenAI's), plus
    `constrained_tools` (ember's): false lets the model write tool calls freely, as plain
    sampling would, instead of decoding them under the tools' schemas (for comparison)."""

    tools: Annotated[list[Tool], Field(max_length=MAX_TOOLS)] | None = None
    tool_choice: ToolChoice | None = None  # default: "auto" with tools, "none" without
    parallel_tool_calls: bool = True
    response_format: ResponseFormat | None = None
    constrained_tools: bool = True


# ---- sampling fields of other servers -----------------------------------------------------

# Fields vLLM or llama.cpp accept that ember does not implement: a request may carry them at
# the value that changes nothing (clients send defaults); any other value is a 400 naming it.
NEUTRAL = {
    "logit_bias": {}, "typical_p": 1.0, "tfs_z": 1.0, "mirostat": 0, "use_beam_search": False,
    "length_penalty": 1.0, "truncate_prompt_tokens": None, "guided_grammar": None, "logits_processors": None,
    "dynatemp_range": 0.0,
    "xtc_probability": 0.0, "dry_multiplier": 0.0, "prompt_logprobs": None, "grammar": None,
    "repeat_last_n": None, "penalize_nl": False, "n_probs": 0,
}


class VendorSampling(Strict):
    """vLLM's extra sampling fields that map onto ember's sampling (guided_*: constrained
    decoding, one at a time), and the ones refused unless neutral (NEUTRAL). skip_special_tokens and spaces_between_special_tokens state
    what ember does (special tokens a reply holds are written as their text, nothing added
    between them): the other value is refused, not ignored."""

    min_tokens: int = Field(0, ge=0)  # EOS and stop_token_ids are masked until this many
    ignore_eos: bool = False
    stop_token_ids: Annotated[list[Annotated[int, Field(ge=0)]], Field(max_length=MAX_STOP_TOKEN_IDS)] | None = None
    include_stop_str_in_output: bool = False
    best_of: int | None = Field(None, ge=1)  # only best_of == n (no ranking of extra samples)
    guided_json: dict[str, Any] | None = None  # the reply is JSON valid under this schema
    guided_regex: Text | None = None  # the reply fully matches this regex (ember.infer.constrained's subset)
    guided_choice: Annotated[list[Text], Field(min_length=1)] | None = None  # the reply is one of these
    skip_special_tokens: bool | None = None
    spaces_between_special_tokens: bool | None = None
    logit_bias: dict[str, Any] | None = None
    typical_p: Any = None
    tfs_z: Any = None
    mirostat: Any = None
    use_beam_search: Any = None
    length_penalty: Any = None
    truncate_prompt_tokens: Any = None
    guided_grammar: Any = None
    logits_processors: Any = None
    dynatemp_range: Any = None
    xtc_probability: Any = None
    dry_multiplier: Any = None
    prompt_logprobs: Any = None
    grammar: Any = None
    repeat_last_n: Any = None
    penalize_nl: Any = None
    n_probs: Any = None

    @field_validator(*NEUTRAL, mode="before")
    @classmethod
    def _neutral_only(cls, v, info):
        neutral = NEUTRAL[info.field_name]
        if v is None or v == neutral:
            return None
        raise ValueError(f"{info.field_name} is not supported by this server; omit it"
                         + ("" if neutral is None else f" or send {neutral!r}"))

    @field_validator("skip_special_tokens", "spaces_between_special_tokens", mode="before")
    @classmethod
    def _what_ember_does(cls, v, info):
        if v is True:
            raise ValueError(f"{info.field_name}: true is not supported; this server writes the special "
                             "tokens a reply holds as their text, with nothing between them (send false or omit it)")
        return v
