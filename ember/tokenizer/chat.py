"""Chat templates: messages → ids with a mask over what the assistant says.

The model's own Jinja template (GGUF `tokenizer.chat_template` or `tokenizer_config.json`)
renders in a sandboxed child process bounded in time, memory and output (template_sandbox.py),
with the real message contents, so the text is exactly what Jinja and transformers produce,
filters (`| trim`, `| upper`, slices) included. Special-token strings are honoured only where
the *template* writes them; inside message contents they are plain text, so a user who types
"<|im_start|>system" cannot open a system turn. The mask marks assistant content plus the
end-of-turn token that closes it: what SFT puts the loss on.

Where each content lands in the output is learned from a second render whose contents carry
private-use markers, accepted only if removing the markers gives back the real output
character for character (see `_trace`).
"""

from __future__ import annotations

import re

from .template_sandbox import render_many

ROLES = ("system", "user", "assistant", "tool")
# Markers for message k: open/close from plane 15, one per message; "owner" stand-ins from
# plane 16. Outputs that already contain plane 15/16 characters skip the marker strategies.
_OPEN0, _CLOSE0, _OWNER0 = 0xF0000, 0xF8000, 0x100000
_MAX_TRACED = 0x8000  # messages the markers can name
_FILL = "\U0010fffd"
_MARKED = re.compile("[\U000f0000-\U0010ffff]")
_MARKER = re.compile("[\U000f0000-\U000fffff]")
_OWNER_RUN = re.compile("([\U00100000-\U0010fffc])\\1*")
_FILL_RUN = re.compile(_FILL + "+")
_UNKNOWN = -1  # content whose message is not known: never learned, never special


def validate_messages(messages) -> list[dict]:
    if not isinstance(messages, list | tuple) or not messages:
        raise ValueError("messages must be a non-empty list of {'role': ..., 'content': ...}")
    out = []
    for k, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m:
            raise ValueError(f"message {k} must be a dict with 'role' and 'content'")
        if m["role"] not in ROLES:
            raise ValueError(f"message {k} has unknown role {m['role']!r} (allowed: {', '.join(ROLES)})")
        content = m.get("content", "")
        if not isinstance(content, str):
            raise ValueError(f"message {k} content must be a string, not {type(content).__name__}")
        out.append({**m, "content": content})
    return out


def render_text(tok, messages, add_generation_prompt: bool = True, **template_vars) -> str:
    """The template's output as text (contents verbatim)."""
    messages = validate_messages(messages)
    return _render(tok, [_variables(tok, messages, add_generation_prompt, template_vars)])[0]


def _variables(tok, messages, add_generation_prompt, template_vars) -> dict:
    if not tok.chat_template:
        raise ValueError("this tokenizer has no chat template")
    eos = tok.eos_tokens[0] if tok.eos_tokens else None
    # As apply_chat_template: tools and documents are None unless given, so `is none` tests agree.
    return {"tools": None, "documents": None, "bos_token": tok.bos_token or "", "eos_token": eos or "",
            **template_vars, "messages": messages, "add_generation_prompt": add_generation_prompt}


def _render(tok, renders: list[dict], real: bool = True) -> list[str | None]:
    """Texts of the renders; None for a marked render that failed. The real one (first, when
    `real`) must not fail."""
    outs = render_many(tok.chat_template, renders)
    if real and "error" in outs[0]:
        raise ValueError(outs[0]["error"])
    return [o.get("text") for o in outs]


def render_chat(tok, messages, add_generation_prompt: bool = True, **template_vars):
    """Messages → (ids, assistant_mask), mask[i] = 1 where token i is the assistant's to learn.

    >>> from ember.tokenizer import Tokenizer
    >>> chatml = ("{% for m in messages %}<|im_start|>{{ m.role }}\\n{{ m.content }}<|im_end|>\\n"
    ...           "{% endfor %}")
    >>> tok = Tokenizer([], pattern="gpt2", chat_template=chatml, eos_tokens=["<|im_end|>"],
    ...                 special_tokens={"<|im_start|>": 256, "<|im_end|>": 257})
    >>> ids, mask = render_chat(tok, [{"role": "user", "content": "Hi"},
    ...                               {"role": "assistant", "content": "Hello!"}])
    >>> tok.decode([i for i, m in zip(ids, mask) if m])
    'Hello!<|im_end|>'
    """
    messages = validate_messages(messages)
    text, spans = _trace(tok, messages, _variables(tok, messages, add_generation_prompt, template_vars))
    # Atoms: (text, owner, is_special). owner = message index for contents, None for template.
    atoms: list[tuple[str, int | None, bool]] = []
    pos = 0
    for start, end, owner in spans:
        _template_atoms(tok, text[pos:start], atoms)
        atoms.append((text[start:end], owner, False))
        pos = end
    _template_atoms(tok, text[pos:], atoms)

    ids: list[int] = []
    mask: list[int] = []
    eos_ids = tok.eos_token_ids
    closes_assistant = False
    run: list[tuple[str, int | None]] = []

    def is_assistant(owner):
        return owner is not None and owner >= 0 and messages[owner]["role"] == "assistant"

    def flush_run():
        for tid, owner in _encode_run(tok, run):
            ids.append(tid)
            mask.append(int(is_assistant(owner)))
        run.clear()

    for piece, owner, is_special in atoms:
        if is_special:
            flush_run()
            tid = tok.special_tokens[piece]
            ids.append(tid)
            mask.append(int(closes_assistant and tid in eos_ids))
            closes_assistant = False
        elif piece:
            run.append((piece, owner))
            if owner is not None:
                closes_assistant = is_assistant(owner)
    flush_run()
    return ids, mask


def _trace(tok, messages: list[dict], variables: dict) -> tuple[str, list[tuple[int, int, int]]]:
    """The real output and the spans (start, end, message) of it that came from message text.

    A template may transform what it is given (`| trim`, `| upper`, `[:10]`, `.split()`), so
    the spans are learned from a second render whose message texts carry markers, accepted
    only if it matches the real output once the markers are set aside. The strategies, in
    order, each exact where it is accepted:
      1. wrap each text in markers: holds when the template passes texts whole (ChatML,
         `| upper`, `| replace`);
      2. put the markers inside the text's edge whitespace, which stays where it was: holds
         for `| trim`, `.strip()` and their one-sided kin (Llama-3, Mistral, Gemma);
      3. replace every non-space character by one that names the message, keeping the
         length: holds for slices, for whatever keeps positions;
      4. otherwise only what matters most, that typed special tokens stay text: the
         special-token strings inside texts become same-length filler, and wherever the
         filler lands is text (of no known message: the mask stays empty). When even that
         does not match, the template rewrites special-token text in ways that cannot be
         followed, and rendering is refused. (A token that a filter builds from other text,
         as `| lower` from '<|IM_END|>', is caught by 1-3 but not here.)
    Texts traced: every content, and any other string in a message (tool calls...) that
    holds a special-token string. Spans are disjoint and ordered.
    """
    special = tok._special_split
    has_special = (lambda s: special.search(s) is not None) if special is not None else (lambda s: False)
    strategies = [_wrap, _wrap_inside_space, _stand_in] if len(messages) < _MAX_TRACED else []
    batch = [variables] + [_traced(variables, messages, f, has_special) for f in strategies[:1]]
    texts = _render(tok, batch)
    text, pending = texts[0], texts[1:]
    if _MARKED.search(text):  # the output already holds marker characters: markers cannot be told apart
        strategies = []
    for k, strategy in enumerate(strategies):
        if not pending:
            pending = _render(tok, [_traced(variables, messages, f, has_special) for f in strategies[k:]], real=False)
        marked = pending.pop(0)
        spans = None if marked is None else _PARSERS[strategy](marked, text, messages)
        if spans is not None:
            return text, spans
    if not any(has_special(s) for m in messages for s in _strings(m)):
        return text, []  # nothing in the messages can become a special token
    defused = _render(tok, [_traced(variables, messages, _defuse(special), has_special)], real=False)[0]
    spans = None if defused is None else _parse_filled(defused, text)
    if spans is None:
        raise ValueError("the chat template rewrites message text that contains special-token strings; "
                         "cannot keep them from acting as special tokens")
    return text, spans


def _strings(obj):
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for key, value in obj.items():
            if key != "role":
                yield from _strings(value)
    elif isinstance(obj, list | tuple):
        for value in obj:
            yield from _strings(value)


def _traced(variables: dict, messages: list[dict], mark, has_special) -> dict:
    def walk(obj, k):
        if isinstance(obj, str):
            return mark(k, obj) if has_special(obj) else obj
        if isinstance(obj, dict):
            return {key: value if key == "role" else walk(value, k) for key, value in obj.items()}
        if isinstance(obj, list | tuple):
            return [walk(value, k) for value in obj]
        return obj

    msgs = [{**walk(m, k), "content": mark(k, m["content"])} for k, m in enumerate(messages)]
    return {**variables, "messages": msgs}


def _wrap(k: int, s: str) -> str:
    return f"{chr(_OPEN0 + k)}{s}{chr(_CLOSE0 + k)}"


def _wrap_inside_space(k: int, s: str) -> str:
    core = s.strip()
    if not core:
        return s + _wrap(k, "")
    head = len(s) - len(s.lstrip())
    return s[:head] + _wrap(k, core) + s[head + len(core):]


def _stand_in(k: int, s: str) -> str:
    return re.sub(r"\S", chr(_OWNER0 + k), s)


def _defuse(special):
    return lambda k, s: special.sub(lambda m: _FILL * len(m.group()), s)


def _parse_markers(marked: str, text: str, messages=None):
    """Spans of `text` between matching markers, or None unless `marked` less its markers is `text`."""
    spans, pieces, pos, n, open_k, start = [], [], 0, 0, None, 0
    for m in _MARKER.finditer(marked):
        pieces.append(marked[pos : m.start()])
        n += m.start() - pos
        pos = m.end()
        code = ord(m.group())
        if code < _CLOSE0:
            if open_k is not None:
                return None
            open_k, start = code - _OPEN0, n
        else:
            if open_k != code - _CLOSE0:
                return None  # a template that cut a text in two: its pieces cannot be placed
            spans.append((start, n, open_k))
            open_k = None
    pieces.append(marked[pos:])
    return spans if open_k is None and "".join(pieces) == text else None


def _parse_stand_ins(marked: str, text: str, messages: list[dict]):
    """Spans where `marked` holds message k's stand-in; elsewhere it must equal `text`. Edge
    spaces kept their place, so each span takes back as many as its content had."""
    if len(marked) != len(text):
        return None
    spans, pos = [], 0
    for m in _OWNER_RUN.finditer(marked):
        if marked[pos : m.start()] != text[pos : m.start()]:
            return None
        k = ord(m.group(1)) - _OWNER0
        # Spaces kept their place, so a message's runs are joined across the spaces between them.
        if spans and spans[-1][2] == k and text[spans[-1][1] : m.start()].isspace():
            spans[-1] = (spans[-1][0], m.end(), k)
        else:
            spans.append((m.start(), m.end(), k))
        pos = m.end()
    if marked[pos:] != text[pos:]:
        return None
    for j, (start, end, k) in enumerate(spans):
        content = messages[k]["content"]
        lo = spans[j - 1][1] if j else 0
        hi = spans[j + 1][0] if j + 1 < len(spans) else len(text)
        lead, trail = len(content) - len(content.lstrip()), len(content) - len(content.rstrip())
        while lead and start > lo and text[start - 1].isspace():
            start, lead = start - 1, lead - 1
        while trail and end < hi and text[end].isspace():
            end, trail = end + 1, trail - 1
        spans[j] = (start, end, k)
    return spans


def _parse_filled(defused: str, text: str, messages=None):
    """Spans where the filler landed (text of unknown owner); elsewhere it must equal `text`."""
    if len(defused) != len(text):
        return None
    spans, pos = [], 0
    for m in _FILL_RUN.finditer(defused):
        if defused[pos : m.start()] != text[pos : m.start()]:
            return None
        spans.append((m.start(), m.end(), _UNKNOWN))
        pos = m.end()
    return spans if defused[pos:] == text[pos:] else None


_PARSERS = {_wrap: _parse_markers, _wrap_inside_space: _parse_markers, _stand_in: _parse_stand_ins}


def _template_atoms(tok, text: str, atoms: list) -> None:
    """Split template output on special tokens (which the template may write)."""
    if not text:
        return
    for is_special, piece in tok.split_special(text, "all"):
        atoms.append((piece, None, is_special))


def _encode_run(tok, run: list[tuple[str, int | None]]):
    """Encode adjacent ordinary pieces as one string (as whole-text tokenization would), then
    give each token the owner of the piece its first byte falls in."""
    if not run:
        return []
    joined = "".join(p for p, _ in run)
    ids = tok.encode(joined)
    lengths = [len(tok.id_to_bytes(i)) for i in ids]
    if sum(lengths) != len(joined.encode("utf-8")):
        # A byte the vocabulary lacks was dropped; offsets no longer line up: go piece by piece.
        return [(i, owner) for piece, owner in run for i in tok.encode(piece)]
    bounds, end = [], 0
    for piece, owner in run:
        end += len(piece.encode("utf-8"))
        bounds.append((end, owner))
    out, start, k = [], 0, 0
    for i, n in zip(ids, lengths):
        while start >= bounds[k][0]:
            k += 1
        out.append((i, bounds[k][1]))
        start += n
    return out
