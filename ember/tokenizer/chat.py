"""Chat templates: messages → ids with a mask over what the assistant says.

The model's own Jinja template (GGUF `tokenizer.chat_template` or `tokenizer_config.json`)
renders in a sandbox. Special-token strings are honoured only where the *template* writes
them; inside message content they are plain text, so a user who types "<|im_start|>system"
cannot open a system turn. The mask marks assistant content plus the end-of-turn token that
closes it: what SFT puts the loss on.
"""

from __future__ import annotations

from functools import lru_cache

import regex

ROLES = ("system", "user", "assistant", "tool")
# Private-use sentinels stand in for message contents while the template renders, so we
# learn exactly where each content lands without searching the output for it.
_OPEN, _CLOSE = "\ue000", "\ue001"
_SENTINEL = regex.compile(_OPEN + r"(\d+)" + _CLOSE)


@lru_cache(maxsize=16)
def _compile(template: str):
    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise TemplateError(message)

    # Same environment options as Hugging Face's apply_chat_template.
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = raise_exception
    try:
        return env.from_string(template)
    except TemplateError as e:
        raise ValueError(f"the chat template does not parse: {e}") from None


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
    return _render(tok, messages, add_generation_prompt, template_vars)


def _render(tok, messages, add_generation_prompt, template_vars) -> str:
    if not tok.chat_template:
        raise ValueError("this tokenizer has no chat template")
    from jinja2.exceptions import TemplateError

    eos = tok.eos_tokens[0] if tok.eos_tokens else None
    try:
        return _compile(tok.chat_template).render(
            messages=messages, add_generation_prompt=add_generation_prompt,
            bos_token=tok.bos_token or "", eos_token=eos or "", **template_vars,
        )
    except TemplateError as e:
        raise ValueError(f"the chat template failed: {e}") from None


def render_chat(tok, messages, add_generation_prompt: bool = True, **template_vars):
    """Messages → (ids, assistant_mask), mask[i] = 1 where token i is the assistant's to learn.

    >>> ids, mask = render_chat(tok, [{"role": "user", "content": "Hi"},
    ...                               {"role": "assistant", "content": "Hello!"}])  # doctest: +SKIP
    >>> tok.decode([i for i, m in zip(ids, mask) if m])  # doctest: +SKIP
    'Hello!<|im_end|>'
    """
    messages = validate_messages(messages)
    stand_ins = [{**m, "content": f"{_OPEN}{k}{_CLOSE}"} for k, m in enumerate(messages)]
    text = _render(tok, stand_ins, add_generation_prompt, template_vars)
    # Atoms: (text, owner, is_special). owner = message index for contents, None for template.
    atoms: list[tuple[str, int | None, bool]] = []
    pos = 0
    for m in _SENTINEL.finditer(text):
        _template_atoms(tok, text[pos : m.start()], atoms)
        k = int(m.group(1))
        atoms.append((messages[k]["content"], k, False))
        pos = m.end()
    _template_atoms(tok, text[pos:], atoms)
    if any(_OPEN in a[0] or _CLOSE in a[0] for a in atoms if a[1] is None):
        # The template cut into a content (e.g. sliced it): we can no longer tell template
        # text, whose special tokens count, from content, whose special tokens must not.
        raise ValueError("the chat template transforms message contents; cannot render it safely")

    ids: list[int] = []
    mask: list[int] = []
    eos_ids = tok.eos_token_ids
    closes_assistant = False
    run: list[tuple[str, int | None]] = []

    def flush_run():
        for tid, owner in _encode_run(tok, run):
            ids.append(tid)
            mask.append(int(owner is not None and messages[owner]["role"] == "assistant"))
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
                closes_assistant = messages[owner]["role"] == "assistant"
    flush_run()
    return ids, mask


def _template_atoms(tok, text: str, atoms: list) -> None:
    """Split template output on special tokens (which the template may write)."""
    if not text:
        return
    for is_special, piece in tok._segments(text, set(tok.special_tokens)):
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
