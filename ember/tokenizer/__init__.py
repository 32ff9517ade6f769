"""Tokenization: byte-level BPE (train, encode, decode), WordPiece (BERT), real-tokenizer loaders, chat templates."""

from .bert_text import BertNormalizer
from .bpe import train_bpe
from .loaders import from_gguf, from_tokenizer_json, load_tokenizer
from .patterns import GPT2_PATTERN, GPT4_PATTERN, PATTERNS, SMOLLM_PATTERN
from .tokenizer import StreamDecoder, Tokenizer
from .wordpiece import BatchEncoding, Encoding, WordPieceTokenizer

__all__ = [
    "GPT2_PATTERN", "GPT4_PATTERN", "PATTERNS", "SMOLLM_PATTERN", "BatchEncoding", "BertNormalizer", "Encoding",
    "StreamDecoder", "Tokenizer", "WordPieceTokenizer", "from_gguf", "from_tokenizer_json", "load_tokenizer",
    "train_bpe",
]
