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
