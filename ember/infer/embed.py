"""Sentence embeddings from a BERT encoder: texts → WordPiece ids → batches → pooled vectors.

What sentence-transformers does for all-MiniLM-L6-v2 (its modules.json: Transformer →
Pooling → Normalize): `[CLS] text [SEP]` truncated to max_seq_length (256), the encoder's
last hidden states, the mean over real tokens (1_Pooling/config.json), L2 normalisation.

Batching is ours: sentences are sorted by token count and cut into batches of at most
`token_budget` padded tokens, so short sentences never ride with long ones (padding
doubles the work of a random batch of 32), and a batch whose rows are all the same length
runs without any mask.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ember.core.registry import resolve_model
from ember.model.heads import POOLINGS
from ember.model.load import load_model
from ember.tokenizer import load_tokenizer


@dataclass
class Embeddings:
    """Vectors (N, D) in the order of the texts, and per text the tokens the encoder read
    (specials included) and the tokens truncation dropped."""

    vectors: torch.Tensor
    n_tokens: list[int]
    n_truncated: list[int]


def length_batches(lengths: list[int], token_budget: int, max_batch: int = 256) -> list[list[int]]:
    """Indices of `lengths` sorted longest first and cut into batches whose padded size
    (rows × longest row) stays within `token_budget` (a longer row goes alone).

    >>> length_batches([3, 9, 4, 8, 3], token_budget=16)
    [[1], [3, 2], [0, 4]]
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    for i in order:
        # sorted longest first: a batch's first row is its longest, so its width is known
        last = batches[-1] if batches else None
        if last and len(last) < max_batch and (len(last) + 1) * lengths[last[0]] <= token_budget:
            last.append(i)
        else:
            batches.append([i])
    return batches


class Embedder:
    """A BERT encoder and its WordPiece tokenizer → sentence vectors.

    `embed(texts)` gives the (N, D) vectors; `embed_batch(texts)` also the token and
    truncation counts; `tokenize`/`wrap`/`embed_ids` serve callers that count and check
    tokens themselves (the HTTP server). max_seq_length None: the model's positions;
    autocast_dtype (e.g. torch.bfloat16) runs the encoder under torch.autocast.

    >>> from ember.model import ModelConfig, Transformer
    >>> from ember.tokenizer import WordPieceTokenizer
    >>> tok = WordPieceTokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat"])
    >>> model = Transformer(ModelConfig.from_preset("tiny-bert", vocab_size=8)).eval()
    >>> e = Embedder(model, tok).embed_batch(["the cat sat", "", "cat"])
    >>> e.vectors.shape, e.n_tokens, e.n_truncated
    (torch.Size([3, 64]), [5, 2, 3], [0, 0, 0])
    """

    def __init__(
        self,
        model,
        tokenizer,
        pooling: str = "mean",
        max_seq_length: int | None = None,
        token_budget: int = 4096,
        max_batch: int = 256,
        autocast_dtype: torch.dtype | None = None,
    ):
        if model.config.causal:
            raise ValueError("an Embedder needs a bidirectional encoder (config.causal is True: a decoder)")
        if pooling not in POOLINGS:
            raise ValueError(f"pooling {pooling!r} is not one of {sorted(POOLINGS)}")
        limit = model.config.max_seq_len
        if max_seq_length is not None and not 2 <= max_seq_length <= limit:
            raise ValueError(f"max_seq_length must be 2..{limit} (the model's positions), got {max_seq_length}")
        if token_budget < 1 or max_batch < 1:
            raise ValueError(f"token_budget and max_batch must be >= 1, got {token_budget} and {max_batch}")
        self.model, self.tokenizer, self.pooling = model, tokenizer, pooling
        self.max_tokens = limit if max_seq_length is None else max_seq_length
        self.token_budget, self.max_batch, self.autocast_dtype = token_budget, max_batch, autocast_dtype

    @property
    def dim(self) -> int:
        return self.model.config.d_model

    @property
    def vocab_size(self) -> int:
        return self.model.config.vocab_size

    def tokenize(self, text: str) -> list[int]:
        """`[CLS] text [SEP]` as ids, not truncated (the caller checks against max_tokens)."""
        return self.tokenizer.encode(text)

    def wrap(self, ids: list[int]) -> list[int]:
        """Token ids without specials → `[CLS] ids [SEP]`."""
        return [self.tokenizer.cls_token_id, *ids, self.tokenizer.sep_token_id]

    def embed(self, texts: list[str], normalize: bool = True) -> torch.Tensor:
        """Texts → (N, D) float32 vectors, L2-normalised unless normalize=False."""
        return self.embed_batch(texts, normalize).vectors

    def embed_batch(self, texts: list[str], normalize: bool = True) -> Embeddings:
        """Texts → vectors plus, per text, tokens read and tokens dropped by truncation."""
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise ValueError("embed takes a list of str")
        encs = [self.tokenizer.encode_full(t, max_length=self.max_tokens) for t in texts]
        vectors = self.embed_ids([e.ids for e in encs], normalize)
        return Embeddings(vectors, [len(e.ids) for e in encs], [e.n_truncated for e in encs])

    @torch.inference_mode()
    def embed_ids(self, batch: list[list[int]], normalize: bool = True) -> torch.Tensor:
        """Id lists, specials included, each at most max_tokens long → (B, D) float32 vectors."""
        too_long = [len(ids) for ids in batch if not 0 < len(ids) <= self.max_tokens]
        if too_long:
            raise ValueError(f"every input needs 1..{self.max_tokens} token ids, got one of {too_long[0]}")
        device = self.model.tok_embeddings.weight.device
        out = torch.empty(len(batch), self.dim)
        for rows in length_batches([len(ids) for ids in batch], self.token_budget, self.max_batch):
            out[rows] = self._forward([batch[i] for i in rows], device).float().cpu()
        return F.normalize(out, dim=-1) if normalize else out

    def _forward(self, batch: list[list[int]], device) -> torch.Tensor:
        """One padded batch (longest row first) → pooled (B, D)."""
        T = len(batch[0])
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([row + [pad] * (T - len(row)) for row in batch], device=device)  # (B, T)
        mask = torch.tensor([[1] * len(row) + [0] * (T - len(row)) for row in batch], device=device)  # (B, T)
        # equal lengths: no padding, no mask, and attention takes its unmasked (faster) path
        ragged = len(batch[-1]) != T
        with torch.autocast(device.type, self.autocast_dtype, enabled=self.autocast_dtype is not None):
            h = self.model.hidden(ids, attention_mask=mask if ragged else None)  # (B, T, D)
        return POOLINGS[self.pooling](h.float(), mask)  # (B, D)


def load_embedder(name_or_path: str | os.PathLike, dtype: torch.dtype = torch.float32, device="cpu", **kw) -> Embedder:
    """A sentence encoder from a known name ("minilm") or a folder: HF BERT config.json,
    *.safetensors, tokenizer.json or vocab.txt, and sentence-transformers' settings when
    present (sentence_bert_config.json's max_seq_length, 1_Pooling's mode).

    >>> load_embedder("minilm").embed(["The cat sat on the mat."])[0, :3]  # doctest: +SKIP
    tensor([ 0.1302, -0.0158, -0.0367])
    """
    path = resolve_model(name_or_path)
    if not path.is_dir():
        raise ValueError(f"{path} is a file; a sentence encoder is a folder: {FOLDER}")
    _check_encoder_folder(path)
    settings = {**_sentence_settings(path), **kw}
    return Embedder(load_model(path, dtype, device), load_tokenizer(path), **settings)


FOLDER = "config.json (model_type 'bert'), *.safetensors, and tokenizer.json or vocab.txt"


def _check_encoder_folder(path: Path) -> None:
    """A ValueError naming what the folder lacks to be a BERT encoder, before loading anything."""
    missing = [name for name, ok in (
        ("config.json", (path / "config.json").is_file()),
        ("*.safetensors", any(path.glob("*.safetensors"))),
        ("tokenizer.json or vocab.txt", (path / "tokenizer.json").is_file() or (path / "vocab.txt").is_file()),
    ) if not ok]
    if missing:
        raise ValueError(f"{path} is not a BERT encoder folder: it lacks {', '.join(missing)} (needs {FOLDER})")
    kind = _json(path / "config.json").get("model_type")
    if kind != "bert":
        raise ValueError(f"{path}/config.json has model_type {kind!r}, not 'bert': not a BERT encoder")


def _sentence_settings(path: Path) -> dict:
    """sentence-transformers' max_seq_length and pooling mode, where its files say them."""
    out = {}
    st = _json(path / "sentence_bert_config.json")
    if isinstance(st.get("max_seq_length"), int):
        out["max_seq_length"] = st["max_seq_length"]
    pool = _json(path / "1_Pooling" / "config.json")
    if pool:
        on = sorted(k for k, v in pool.items() if k.startswith("pooling_mode_") and v is True)
        modes = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls"}
        if len(on) != 1 or on[0] not in modes:
            raise ValueError(f"{path}/1_Pooling/config.json: pooling modes {on}; supported: one of {sorted(modes)}")
        out["pooling"] = modes[on[0]]
    return out


def _json(path: Path) -> dict:
    """A small JSON object file; {} when absent; a ValueError naming it when unreadable."""
    if not path.is_file():
        return {}
    if path.stat().st_size > 1 << 20:
        raise ValueError(f"{path} is larger than a settings file")
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: unreadable ({e})") from None
    if not isinstance(d, dict):
        raise ValueError(f"{path}: must hold a JSON object")
    return d
