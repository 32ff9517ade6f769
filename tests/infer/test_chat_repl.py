"""The chat REPL, driven by injected input/print functions."""

import io
import sys

from infer_helpers import EOT, ScriptedModel, make_tokenizer

from ember.infer import Engine, SamplingParams
from ember.infer.chat import run_chat


class RecordingTokenizer:
    """The byte tokenizer, remembering every message list it renders."""

    def __init__(self):
        self.tok = make_tokenizer()
        self.rendered = []

    def __getattr__(self, name):
        return getattr(self.tok, name)

    def render_chat(self, messages, add_generation_prompt=True):
        self.rendered.append([dict(m) for m in messages])
        return self.tok.render_chat(messages, add_generation_prompt=add_generation_prompt)


class ReplyModel(ScriptedModel):
    """Always answers "Hi!" then <|endoftext|>, whatever the prompt length."""

    def __init__(self, tok):
        super().__init__([*tok.encode("Hi!"), EOT], start=0, max_seq_len=256)

    def forward(self, ids, cache=None, input_pos=None, logits_index=None, kv_len=None):
        # Re-anchor the script at each prompt's end: the prefill asks at the last prompt token.
        if logits_index is not None:
            self.start = int(logits_index.max()) + 1
        return super().forward(ids, cache, input_pos, logits_index)


def run(lines, system=None, max_seq_len=None):
    tok = RecordingTokenizer()
    engine = Engine(ReplyModel(tok.tok), tok.tok, max_seq_len=max_seq_len)
    feed = iter(lines)

    def input_fn(prompt):
        try:
            return next(feed)
        except StopIteration:
            raise EOFError from None

    out = []
    history = run_chat(
        engine, tok, system=system, params=SamplingParams(temperature=0, max_tokens=20),
        input_fn=input_fn, print_fn=lambda *a, **k: out.append("".join(map(str, a)) + k.get("end", "\n")),
    )
    return tok, history, "".join(out)


def test_multi_turn_history_and_stats():
    tok, history, out = run(["Hello", "", "How are you?"], system="Be brief.")
    assert history == [
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Hi!"},
        {"role": "user", "content": "How are you?"},
        {"role": "assistant", "content": "Hi!"},
    ]
    assert tok.rendered[1] == [{"role": "system", "content": "Be brief."}, *history[:3]]
    assert out.count("Hi!\n") == 2
    assert out.count("tok/s") == 2 and "[4 tokens" in out  # "H", "i", "!" and the EOS


def test_reset_clears_history_and_exit_stops():
    tok, history, out = run(["one", "/reset", "two", "/exit", "never"])
    assert tok.rendered[-1] == [{"role": "user", "content": "two"}]
    assert history == [{"role": "user", "content": "two"}, {"role": "assistant", "content": "Hi!"}]
    assert "[history cleared]" in out and len(tok.rendered) == 2


def test_oldest_turns_dropped_when_context_is_full():
    lines = [f"message number {i} " * 3 for i in range(6)]
    tok, history, out = run(lines, max_seq_len=160)
    assert "dropped the oldest turn" in out
    assert (
        history[-1] == {"role": "assistant", "content": "Hi!"}
        and history[-2]["content"] == lines[-1]
    )
    assert len(history) < 12


def test_piped_stdin_drives_the_repl(monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("first\nsecond\n"))
    tok = make_tokenizer()
    engine = Engine(ReplyModel(tok), tok)
    out = []
    history = run_chat(engine, tok, params=SamplingParams(temperature=0, max_tokens=20),
                       print_fn=lambda *a, **k: out.append(a))
    assert [m["content"] for m in history] == ["first", "Hi!", "second", "Hi!"]
