"""The server's tokenizer endpoints, in vLLM's shapes (what lm-evaluation-harness's
`tokenizer_backend=remote` reads, so it needs no tokenizer download):

- GET /tokenizer_info → {"tokenizer_class", "bos_token", "eos_token", "pad_token",
  "unk_token", "add_bos_token", "model_max_length", "vocab_size", "chat_template", ...}
- POST /tokenize {"prompt" | "messages", "add_special_tokens"?, "return_token_strs"?}
  → {"tokens", "count", "max_model_len"[, "token_strs"]}
- POST /detokenize {"tokens"} → {"prompt"}

lm-eval asks `/tokenize` for `eos_token` with add_special_tokens=false and takes the first
id as the end-of-text (and, without BOS, the rolling-perplexity prefix) token, so under
that flag special-token strings are single ids, as in Hugging Face `tokenizers`.

    >>> from ember.tokenizer import Tokenizer
    >>> tok = Tokenizer([], pattern="gpt2", special_tokens={"<|im_end|>": 256}, eos_tokens=["<|im_end|>"])
    >>> encode_prompt(tok, "a<|im_end|>", add_special_tokens=False)
    [97, 256]
    >>> encode_prompt(tok, "a<|im_end|>", add_special_tokens=None)[:3]
    [97, 60, 124]
"""

from __future__ import annotations

from fastapi.responses import JSONResponse

from .completions import check_model
from .protocol import APIError, DetokenizeRequest, TokenizeRequest, parse_request
from .state import ServerState


def tokenizer_info(state: ServerState) -> dict:
    """The tokenizer's configuration as vLLM's GET /tokenizer_info gives Hugging Face's
    (the special tokens as strings; lm-eval encodes them back to ids through /tokenize).
    No pad token of its own: padding never reaches the wire, and Hugging Face's SmolLM2
    pads with its end-of-turn token, so pad_token is the first end token."""
    tok = state.tokenizer
    eos = tok.eos_tokens[0] if tok.eos_tokens else None
    named = {tok.bos_token, *tok.eos_tokens}
    return {
        "tokenizer_class": type(tok).__name__,
        "model": state.model_id,
        "bos_token": tok.bos_token,
        "eos_token": eos,
        "pad_token": eos,
        "unk_token": None,  # byte-level BPE: every text has ids
        "add_bos_token": bool(tok.add_bos and tok.bos_token is not None),
        "add_eos_token": False,
        "model_max_length": state.ctx,
        "vocab_size": tok.vocab_size,
        "eos_tokens": list(tok.eos_tokens),
        "additional_special_tokens": [s for s in tok.special_tokens if s not in named],
        "chat_template": tok.chat_template,
    }


def encode_prompt(tok, text: str, add_special_tokens: bool | None) -> list[int]:
    """A /tokenize prompt's ids. None: as /v1/completions encodes a raw prompt (BOS as the
    model adds it, special-token strings as text). True/False: Hugging Face's
    `tokenizer(text, add_special_tokens=...)`: special-token strings are their ids, and
    True adds the model's BOS where the model adds one."""
    if add_special_tokens is None:
        return tok.encode(text, add_bos=None)
    return tok.encode(text, allowed_special="all", add_bos=None if add_special_tokens else False)


def tokenize(state: ServerState, raw: bytes) -> JSONResponse:
    """POST /tokenize (runs in a worker thread: parsing and encoding may be long)."""
    body = parse_request(raw, TokenizeRequest)
    check_model(state, body.model)
    tok = state.tokenizer
    if body.messages is not None:
        msgs = [{"role": m.role, "content": m.text()} for m in body.messages]
        try:
            ids, _ = tok.render_chat(msgs, add_generation_prompt=body.add_generation_prompt)
        except ValueError as e:  # the model's template refused these messages
            raise APIError(400, str(e), param="messages") from None
        bos = tok.encode("", add_bos=None) if body.add_special_tokens else []
        if bos and ids[:1] != bos:  # the template did not put the BOS there itself
            ids = bos + ids
    else:
        ids = encode_prompt(tok, body.prompt, body.add_special_tokens)
    out = {"tokens": ids, "count": len(ids), "max_model_len": state.ctx}
    if body.return_token_strs:
        out["token_strs"] = [tok.decode([i]) for i in ids]
    return JSONResponse(out)


def detokenize(state: ServerState, raw: bytes) -> JSONResponse:
    """POST /detokenize: ids → text (an id outside the vocabulary is a 400 naming it)."""
    body = parse_request(raw, DetokenizeRequest)
    check_model(state, body.model)
    try:
        return JSONResponse({"prompt": state.tokenizer.decode(body.tokens)})
    except ValueError as e:
        raise APIError(400, str(e), param="tokens") from None
