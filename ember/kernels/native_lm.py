"""NativeLM: a Llama-family language model whose whole forward — prefill chunks and batched
decode steps — is one native call (`ember_forward` in decode_step.inc), with the weights and
the KV cache in numpy arrays. Importing it does not import torch, so a process that
generates with it starts fast and stays small.

The weights are the GGUF's own blocks: Q4_1/Q4_0 block matrices kept exactly (other types
re-quantized to Q4_1), the embedding/head Q8_0 (kept, or re-quantized), norms in fp32. The
cache holds `n_rows` independent sequences of up to `max_seq_len` positions (fp32 K and V,
allocated zeroed: pages the sequences never reach cost no memory). A row's numbers depend
only on its own tokens, whatever the thread count, as long as a call stays on one side of
the kernels' GEMM row count (q4.cpp's GEMM_ROWS): a `step` over fewer rows equals one-row
steps bit for bit; prefill chunks of that many tokens or more round like each other.

>>> lm = NativeLM.from_gguf(resolve_model("smollm2"), max_seq_len=512)  # doctest: +SKIP
>>> int(lm.forward([1, 2, 3]).argmax()), lm.n_past()  # doctest: +SKIP
(28, 3)
"""

from __future__ import annotations

import ctypes
import mmap
import os
import time
from collections.abc import Sequence

import numpy as np

from ember.core.gguf import gguf_field, open_gguf
from ember.kernels.build import load_kernels, unavailable_reason
from ember.kernels.layout import (
    Q4_TYPES,
    native_unsupported,
    pair_permute,
    q4_into,
    q8_arrays,
    quantize_q4_1,
    quantize_q8_0,
    read_tensor,
    rope_inv_freq,
)
from ember.model.config import ModelConfig
from ember.model.gguf_config import config_from_gguf

# GGUF names of one block's tensors, in the order the kernel's fused matrices stack them.
_QKV = ("attn_q", "attn_k", "attn_v")
_GATE_UP = ("ffn_gate", "ffn_up")  # gate rows first: SiLU(gate)·up
# Calls of fewer tokens time their thread counts apart from longer ones (q4.cpp's GEMM_ROWS).
FEW_TOKENS = 16


def _lazy_zeros(shape) -> np.ndarray:
    """A zeroed float32 array on its own anonymous mapping: a page costs memory only once
    written. (np.zeros asks the kernel for 2 MB huge pages on large arrays, so one position
    written into each head's plane of a long cache made ~230 MB of an 8k-context SmolLM2
    cache resident after a 5-token prompt; with 4 kB pages it is what the positions use.)"""
    n = int(np.prod(shape))
    return np.frombuffer(mmap.mmap(-1, max(4 * n, 1)), dtype=np.float32, count=n).reshape(shape)


class ThreadChooser:
    """The faster of 1 and n threads for one kind of call (few tokens or many), by timing both.

    A native call syncs its threads ~5 times per layer; on a machine with more runnable
    processes than cores each sync can wait a scheduler slice for a descheduled partner
    (measured on a 2-core box at load ~17: SmolLM2 decode 26-36 tok/s on 1 thread, 1.3-3.1 on
    2). So each count is timed (seconds per token, an exponential average) and the faster
    kept. The other is re-tried after `probe_every` calls, or after 10x the slow/fast ratio
    when that is more (a probe then costs ~10% of the time). `busy` (load average at least n
    at start) times 1 thread first, so a loaded machine's first call is not the slow one.

    >>> tc = ThreadChooser(2)
    >>> tc.record(tc.choose(), 0.5, 1); tc.record(tc.choose(), 0.1, 1)  # 2 threads, then 1
    >>> tc.choose(), tc.ema
    (1, {2: 0.5, 1: 0.1})
    """

    def __init__(self, n: int, probe_every: int = 32, busy: bool = False):
        self.n, self.probe_every = n, probe_every
        self.order = (1, n) if busy else (n, 1)
        self.ema: dict[int, float] = {}
        self.since, self.probe = 0, False

    def choose(self) -> int:
        if self.n <= 1:
            return 1
        for c in self.order:
            if c not in self.ema:
                return c
        best = min(self.ema, key=self.ema.get)
        self.since += 1
        every = max(self.probe_every, int(10 * max(self.ema.values()) / max(min(self.ema.values()), 1e-12)))
        self.probe = self.since >= every
        if self.probe:
            self.since = 0
            return 1 if best == self.n else self.n
        return best

    def record(self, threads: int, seconds: float, tokens: int) -> None:
        per = seconds / max(tokens, 1)
        fresh = threads not in self.ema or self.probe  # a probe replaces its count's stale figure
        self.ema[threads] = per if fresh else 0.7 * self.ema[threads] + 0.3 * per


class NativeLM:
    """A GGUF Llama-family model on the native kernels: `forward` appends tokens to one cache
    row and returns the last token's logits; `step` runs one token on each of several rows."""

    def __init__(self, config: ModelConfig, arrays: dict, max_seq_len: int, n_rows: int, threads: int | None,
                 chunk: int):
        lib = load_kernels()
        if lib is None:
            raise ValueError(f"the native kernels are unavailable: {unavailable_reason()}")
        checks = [("max_seq_len", max_seq_len), ("n_rows", n_rows), ("chunk", chunk)]
        for name, v in checks + ([("threads", threads)] if threads is not None else []):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive int (got {v!r})")
        if max_seq_len > config.max_seq_len:
            raise ValueError(f"max_seq_len {max_seq_len} exceeds the model's context of {config.max_seq_len}")
        self._lib, self.config, self.max_seq_len, self.n_rows = lib, config, max_seq_len, n_rows
        self.threads, self.chunk = threads, chunk
        cores = len(os.sched_getaffinity(0))
        busy = os.getloadavg()[0] >= cores
        # Calls of few tokens (decode, by step or forward) and of many (prefill) scale apart.
        self._choosers = {kind: ThreadChooser(cores, busy=busy) for kind in ("few", "many")}
        c = config
        shape = (n_rows, c.n_kv_heads, max_seq_len, c.head_dim)
        self._k = [_lazy_zeros(shape) for _ in range(c.n_layers)]
        self._v = [_lazy_zeros(shape) for _ in range(c.n_layers)]
        self._n = [0] * n_rows
        keep = [arrays["emb_q"], arrays["emb_d"], arrays["norm"], arrays["head_q"], arrays["head_d"],
                rope_inv_freq(c)]
        for i, layer in enumerate(arrays["layers"]):
            keep += [layer["attn_norm"], *layer["qkv"], *layer["wo"], layer["ffn_norm"], *layer["w13"], *layer["w2"],
                     self._k[i], self._v[i]]
        for a in keep:
            if not a.flags.c_contiguous:
                raise ValueError("native model: an array is not contiguous")
        self._keep = keep  # the pointers below point into these arrays
        self._ptrs = (ctypes.c_void_p * len(keep))(*(a.ctypes.data for a in keep))
        self._cfg = np.array([c.n_layers, c.d_model, c.n_heads, c.n_kv_heads, c.head_dim, c.d_ff, c.vocab_size,
                              c.n_kv_heads * max_seq_len * c.head_dim, max_seq_len, int(c.rope_interleaved),
                              1], dtype=np.int64)
        self._eps = ctypes.c_float(c.norm_eps)

    @classmethod
    def from_gguf(cls, path: str | os.PathLike, max_seq_len: int | None = None, n_rows: int = 1,
                  threads: int | None = None, chunk: int = 256) -> NativeLM:
        """Load a GGUF file's weights (read with os.pread, not mapped) and allocate the cache.

        max_seq_len: cache positions per row (default: the model's context). threads: OpenMP
        threads per call (default: 1 or the cores this process may run on, whichever runs
        faster: see ThreadChooser). chunk: most tokens per prefill call."""
        if load_kernels() is None:
            raise ValueError(f"the native kernels are unavailable: {unavailable_reason()}")
        reader = open_gguf(path)
        cfg = config_from_gguf(reader)
        why = native_unsupported(cfg)
        if why:
            raise ValueError(f"the native kernels cannot run {path}: {why}")
        if gguf_field(reader, "general.architecture") != "llama":
            raise ValueError(f"the native kernels cannot run {path}: needs a llama-architecture GGUF")
        rope_inv_freq(cfg)  # an unsupported RoPE scaling fails before the weights are read
        arrays = _load_arrays(reader, cfg)
        return cls(cfg, arrays, cfg.max_seq_len if max_seq_len is None else max_seq_len, n_rows, threads, chunk)

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def cache_bytes(self) -> int:
        """Bytes allocated for the K/V cache (virtual: untouched pages take no memory)."""
        return sum(a.nbytes for a in (*self._k, *self._v))

    def n_past(self, row: int = 0) -> int:
        """Positions of `row` filled so far."""
        return self._n[self._row(row)]

    def reset(self, row: int = 0) -> None:
        """Empty `row` (its next token goes to position 0)."""
        self._n[self._row(row)] = 0

    def truncate(self, n: int, row: int = 0) -> None:
        """Keep the first `n` positions of `row` (a shared prefix), dropping the rest."""
        r = self._row(row)
        if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= self._n[r]:
            raise ValueError(f"cannot truncate row {r} to {n!r} positions: it holds {self._n[r]}")
        self._n[r] = n

    def forward(self, tokens: Sequence[int], row: int = 0) -> np.ndarray:
        """Append `tokens` to `row` (prefill in chunks of `chunk`) → the last token's logits
        (vocab_size,) float32."""
        r = self._row(row)
        toks = self._tokens(tokens)
        if toks.size == 0:
            raise ValueError("forward needs at least one token")
        start = self._n[r]
        if start + toks.size > self.max_seq_len:
            raise ValueError(f"row {r} holds {start} positions; {toks.size} more exceed the cache length "
                             f"{self.max_seq_len}")
        logits = np.empty((1, self.vocab_size), np.float32)
        for i in range(0, toks.size, self.chunk):
            part = toks[i : i + self.chunk]
            pos = np.arange(start + i, start + i + part.size, dtype=np.int64)
            self._call(part, pos, np.full(part.size, r, np.int64), np.array([part.size - 1], np.int64),
                       logits)
            self._n[r] = start + i + part.size
        return logits[0]

    def step(self, tokens: Sequence[int], rows: Sequence[int]) -> np.ndarray:
        """One token on each of `rows` (distinct), each at that row's end → logits
        (len(rows), vocab_size) float32."""
        toks = self._tokens(tokens)
        rs = [self._row(r) for r in rows]
        if len(rs) != toks.size or not rs:
            raise ValueError(f"step needs one token per row (got {toks.size} tokens for {len(rs)} rows)")
        if len(set(rs)) != len(rs):
            raise ValueError(f"step rows must be distinct (got {rs})")
        full = [r for r in rs if self._n[r] >= self.max_seq_len]
        if full:
            raise ValueError(f"row {full[0]} is full: {self._n[full[0]]} positions, the cache length {self.max_seq_len}")
        pos = np.array([self._n[r] for r in rs], np.int64)
        logits = np.empty((len(rs), self.vocab_size), np.float32)
        self._call(toks, pos, np.array(rs, np.int64), np.arange(len(rs), dtype=np.int64), logits)
        for r in rs:
            self._n[r] += 1
        return logits

    def _call(self, toks, pos, rows, idx, logits) -> None:
        chooser = self._choosers["few" if toks.size < FEW_TOKENS else "many"]
        self._cfg[10] = threads = self.threads or chooser.choose()
        start = time.perf_counter()
        self._lib.ember_forward(self._cfg.ctypes.data, self._eps, self._ptrs, toks.ctypes.data, pos.ctypes.data,
                                rows.ctypes.data, toks.size, idx.ctypes.data, idx.size, logits.ctypes.data)
        if not self.threads:
            chooser.record(threads, time.perf_counter() - start, toks.size)

    def _row(self, row) -> int:
        if not isinstance(row, int | np.integer) or isinstance(row, bool) or not 0 <= row < self.n_rows:
            raise ValueError(f"row {row!r} is outside 0..{self.n_rows - 1}")
        return int(row)

    def _tokens(self, tokens) -> np.ndarray:
        try:
            toks = np.asarray(tokens, dtype=np.int64).reshape(-1)
        except (TypeError, ValueError, OverflowError):
            raise ValueError(f"token ids must be integers (got {str(tokens)[:60]})") from None
        bad = toks[(toks < 0) | (toks >= self.vocab_size)]
        if bad.size:
            raise ValueError(f"token id {int(bad[0])} is outside the vocabulary 0..{self.vocab_size - 1}")
        return np.ascontiguousarray(toks)


def _load_arrays(reader, cfg: ModelConfig) -> dict:
    """The kernel arrays of every tensor the model needs, after checking their shapes."""
    tensors = {t.name: t for t in reader.tensors}
    D, F, Hd, KV = cfg.d_model, cfg.d_ff, cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
    shapes = {"attn_q": (Hd, D), "attn_k": (KV, D), "attn_v": (KV, D), "attn_output": (D, Hd),
              "ffn_gate": (F, D), "ffn_up": (F, D), "ffn_down": (D, F), "attn_norm": (D,), "ffn_norm": (D,)}

    def get(name, shape):
        if name not in tensors:
            raise ValueError(f"{reader.path}: GGUF has no tensor {name} (the config needs it)")
        t = tensors[name]
        got = tuple(int(n) for n in reversed(t.shape))
        if got != shape:
            raise ValueError(f"{reader.path}: GGUF tensor {name} has shape {got}; the config says {shape}")
        return t

    def floats(name, shape):
        return _dequantize(reader.path, get(name, shape)).reshape(shape)

    def q4(names, layer):
        """The matrices `names` of one block stacked by rows (a fused matrix), written in place."""
        ts = [get(f"blk.{layer}.{n}.weight", shapes[n]) for n in names]
        N, K = sum(shapes[n][0] for n in names), shapes[names[0]][1]
        out = np.empty((N, K // 2), np.uint8), np.empty((N, K // 32), np.float16), np.empty((N, K // 32), np.float16)
        row = 0
        for n, t in zip(names, ts):
            rows = slice(row, row + shapes[n][0])
            _q4_into(reader.path, t, shapes[n], *(a[rows] for a in out))
            row = rows.stop
        return out

    def q8(name):
        t = get(name, (cfg.vocab_size, D))
        if t.tensor_type.name == "Q8_0":
            return q8_arrays(read_tensor(reader.path, t), (cfg.vocab_size, D))
        q, d = quantize_q8_0(_dequantize(reader.path, t).reshape(cfg.vocab_size, D))
        return pair_permute(q), d

    emb_q, emb_d = q8("token_embd.weight")
    head_q, head_d = (emb_q, emb_d) if cfg.tie_embeddings else q8("output.weight")
    layers = [{"attn_norm": floats(f"blk.{i}.attn_norm.weight", (D,)), "qkv": q4(_QKV, i),
               "wo": q4(("attn_output",), i), "ffn_norm": floats(f"blk.{i}.ffn_norm.weight", (D,)),
               "w13": q4(_GATE_UP, i), "w2": q4(("ffn_down",), i)} for i in range(cfg.n_layers)]
    return {"emb_q": emb_q, "emb_d": emb_d, "head_q": head_q, "head_d": head_d,
            "norm": floats("output_norm.weight", (D,)), "layers": layers}


def _q4_into(path, t, shape, qs, d, m) -> None:
    """A block matrix into Q4 arrays: its own Q4_1/Q4_0 codes, else re-quantized to Q4_1."""
    if t.tensor_type.name in Q4_TYPES:
        q4_into(read_tensor(path, t), shape, t.tensor_type.name, qs, d, m)
        return
    for dst, src in zip((qs, d, m), quantize_q4_1(_dequantize(path, t).reshape(shape))):
        np.copyto(dst, src)


def _dequantize(path, t) -> np.ndarray:
    """One tensor's values as float32 (flat), any type gguf.quants implements."""
    raw = read_tensor(path, t)
    name = t.tensor_type.name
    if name == "F32":
        return raw.view(np.float32)
    if name == "F16":
        return raw.view(np.float16).astype(np.float32)
    from gguf.quants import dequantize

    try:
        return np.asarray(dequantize(raw.reshape(t.data.shape), t.tensor_type), dtype=np.float32).reshape(-1)
    except NotImplementedError:
        raise ValueError(f"{path}: GGUF tensor {t.name} has type {name}, which cannot be dequantized") from None
