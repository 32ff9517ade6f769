"""Shared pieces for the infer tests (a plain module, not conftest.py, so that a root
conftest can never shadow it): a byte-level tokenizer, a tiny random Transformer,
and a scripted model that emits a fixed token sequence (for stop/UTF-8/length tests)."""

import torch
from torch import nn

from ember.model.config import ModelConfig
from ember.model.transformer import Transformer
from ember.tokenizer.tokenizer import Tokenizer

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
EOT, IM_START, IM_END = 256, 257, 258
V = 260


def make_tokenizer() -> Tokenizer:
    """Bytes + 3 specials + one merge " " + 0xC3 → 259, a token that ends inside a UTF-8
    character (so "é" after a space is split across two tokens mid-character)."""
    return Tokenizer(
        merges=[(32, 0xC3, 259)],
        pattern="gpt2",
        special_tokens={"<|endoftext|>": EOT, "<|im_start|>": IM_START, "<|im_end|>": IM_END},
        eos_tokens=["<|endoftext|>", "<|im_end|>"],
        chat_template=CHATML,
    )


def make_model(seed: int = 0, dtype=torch.float32, **overrides) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(ModelConfig.tiny(vocab_size=V, **overrides)).to(dtype).eval()


class ScriptedModel(nn.Module):
    """Obeys the forward contract but ignores the text: the token predicted after absolute
    position p is script[p + 1 - start] (then `fill`), the same for every row."""

    def __init__(self, script: list[int], start: int, fill: int = ord("."), max_seq_len: int = 256):
        super().__init__()
        self.config = ModelConfig.tiny(vocab_size=V, max_seq_len=max_seq_len)
        self.table = torch.tensor([*script, fill])
        self.start = start
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, ids, cache=None, input_pos=None, logits_index=None, kv_len=None):
        B, T = ids.shape
        pos = input_pos if input_pos is not None else torch.arange(T).expand(B, T)
        if logits_index is not None:
            pos = pos[torch.arange(B), logits_index][:, None]  # [B, 1]
        nxt = self.table[(pos + 1 - self.start).clamp(0, len(self.table) - 1)]
        logits = torch.full((*pos.shape, V), -30.0)
        return logits.scatter(-1, nxt[..., None], 30.0)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """An ASGI app served by uvicorn in a thread on a free 127.0.0.1 port (`.url`); `close()`
    stops it. Fails if it is not up within startup_s."""

    def __init__(self, app, startup_s: float = 20):
        import threading
        import time

        import uvicorn

        self.app, self.port = app, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + startup_s
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"uvicorn did not start within {startup_s} s")
            time.sleep(0.01)

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def serve_tiny(tokenizer, max_batch_size: int, **app_kw) -> LiveServer:
    """`ember serve`'s app over a tiny random model wearing `tokenizer`, live as "tiny-smollm2".
    Untied embeddings: a tied random model's greedy reply repeats the prompt's last token."""
    from ember.infer import Engine
    from ember.infer.server import create_app

    torch.manual_seed(0)
    cfg = ModelConfig.tiny(vocab_size=tokenizer.vocab_size, max_seq_len=256)
    engine = Engine(Transformer(cfg).eval(), tokenizer, max_batch_size=max_batch_size)
    return LiveServer(create_app(engine, "tiny-smollm2", **app_kw))
