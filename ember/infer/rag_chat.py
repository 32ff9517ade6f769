"""Retrieval in chat requests (`ember serve --rag F`): a request with `"rag": true` or
`"rag": {"k": 3}` gets the best chunks of the server's store as numbered sources in its
prompt, and the response carries them as a top-level `"sources"` list of
`{"n", "doc", "chunk", "score", "text"}` (streamed: in the first chunk).

The retrieval itself is the store's business: the server holds a callable
(`ember.rag.answer.ChatRetriever`, built by the CLI) that takes the chat messages, k and
the answer's token budget and returns the messages to render (the sources inside a
marked data region) and the sources. Here: the request side only.

    >>> body, extra = with_sources(state, body)  # doctest: +SKIP
    >>> extra["sources"][0]["doc"]               # doctest: +SKIP
    'pydoc/break.txt'
"""

from __future__ import annotations

from .protocol import APIError, ChatMessage, RagOptions

ANSWER_RESERVE = 256  # tokens kept free for the answer when the request names no max_tokens


def with_sources(state, body):
    """(body, extra response fields): the body unchanged and {} without a `rag` option;
    else its messages rebuilt around the retrieved sources, and {"sources": [...]}."""
    option = body.rag
    if option is None or option is False:
        return body, {}
    if state.rag is None:
        raise APIError(400, "this server has no document store: start it with `ember serve --rag F` to use rag",
                       param="rag")
    k = option.k if isinstance(option, RagOptions) else RagOptions().k
    messages = [{"role": m.role, "content": m.text()} for m in body.messages]
    budget = body.max_new_tokens if body.max_new_tokens else ANSWER_RESERVE
    try:
        built, sources = state.rag(messages, k, budget)
    except ValueError as e:  # no user question last, or the question alone overflows the context
        raise APIError(400, str(e), param="rag") from None
    system, user = built[0], built[-1]
    history = [m for m in body.messages[:-1] if m.role != "system"]
    rebuilt = [ChatMessage(role="system", content=system["content"]), *history,
               ChatMessage(role="user", content=user["content"])]
    return body.model_copy(update={"messages": rebuilt}), {"sources": sources}
