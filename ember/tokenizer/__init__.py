"""Tokenization: byte-level BPE (train, encode, decode), real-tokenizer loaders, chat templates."""

from .bpe import train_bpe
from .loaders import from_gguf, from_tokenizer_json, load_tokenizer
from .patterns import GPT2_PATTERN, GPT4_PATTERN, PATTERNS, SMOLLM_PATTERN
from .tokenizer import StreamDecoder, Tokenizer

__all__ = [
    "GPT2_PATTERN", "GPT4_PATTERN", "PATTERNS", "SMOLLM_PATTERN", "StreamDecoder", "Tokenizer",
    "from_gguf", "from_tokenizer_json", "load_tokenizer", "train_bpe",
]
