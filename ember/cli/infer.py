"""`ember generate`, `ember chat`, `ember perplexity` and `ember serve`: a loaded model from
the shell. Each command body calls the same engine and functions Python users call."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from typing import Literal

from ember.cli.draft_options import SpeculativeOptions, build_speculative
from ember.cli.errors import at_least, check_port_free


@dataclass
class ModelOptions:
    """How to load the model; shared by every command that runs one."""

    model: str = "smollm2"
    """known name, GGUF file, HF folder or ember checkpoint"""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """float32 is exact; bfloat16 is about twice as fast (for --quant none)"""
    quant: Literal["auto", "none", "int8", "int4", "native"] = "auto"
    """auto: a 4-bit GGUF runs on its own Q4 blocks through the native kernels (else torch's int4),
    any other model exactly in float; native: the native kernels (a float model is rounded to Q4_1);
    int4/int8: torch's weight-only quantized matmuls; none: float weights in --dtype"""
    exact: bool = False
    """the float32 reference path (same as --quant none --dtype float32)"""
    max_seq_len: int | None = None
    """KV-cache length (default: the model's context)"""
    threads: int | None = None
    """compute threads (default: all cores)"""
    compile: bool = False
    """torch.compile the decode step (about 30 s once; faster tokens after)"""

    def __post_init__(self):
        at_least("--threads", self.threads, 1, optional=True)
        at_least("--max-seq-len", self.max_seq_len, 1, optional=True)


def _load(opts: ModelOptions):
    import torch

    import ember

    if opts.threads is not None:
        torch.set_num_threads(opts.threads)
    quant = None if opts.exact or opts.quant == "none" else opts.quant
    model, tok = ember.load(opts.model, dtype=torch.float32 if opts.exact else getattr(torch, opts.dtype),
                            quant=quant, fuse=True)
    return model.eval(), tok


def _compile(model, opts: ModelOptions) -> bool:
    """--compile, except on the native decode step (one call per token already)."""
    from ember.kernels.decode import NativeTransformer

    return opts.compile and not isinstance(model, NativeTransformer)


def _native_runner(opts: ModelOptions):
    """The torch-free native runner when these options ask for nothing only torch does (a
    4-bit GGUF at --quant auto/native, no --exact/--compile, no speculation), else None."""
    from ember.infer.native_run import NativeRunner, native_runner_unsupported

    if opts.exact or opts.compile or getattr(opts, "speculative", "off") not in ("auto", "off"):
        return None
    if native_runner_unsupported(opts.model, opts.quant) is not None:
        return None
    return NativeRunner.load(opts.model, max_seq_len=opts.max_seq_len, threads=opts.threads)


def _runner(opts: ModelOptions):
    """(engine-like runner, tokenizer): the native runner where it applies, else the engine."""
    runner = _native_runner(opts)
    if runner is not None:
        return runner, runner.tokenizer
    model, tok = _load(opts)
    return _engine(model, tok, opts), tok


def _engine(model, tok, opts: ModelOptions, max_batch_size: int = 1):
    from ember.infer.engine import Engine

    return Engine(model, tok, max_batch_size=max_batch_size, max_seq_len=opts.max_seq_len, compile=_compile(model, opts),
                  prefix_cache_mb=getattr(opts, "prefix_cache_mb", 0.0), speculative=build_speculative(model, tok, opts))


@dataclass
class GenerateConfig(SpeculativeOptions, ModelOptions):
    """Generate a completion for one prompt."""

    prompt: str | None = None
    """the prompt text (or use --prompt-file)"""
    prompt_file: str | None = None
    """read the prompt from this file"""
    chat: bool = False
    """wrap the prompt as a user message in the model's chat template"""
    system: str | None = None
    """system message (with --chat)"""
    max_tokens: int = 128
    """most tokens to generate"""
    temperature: float = 0.0
    """sampling temperature; 0 is greedy"""
    top_k: int = 0
    """sample from the k likeliest tokens only; 0 keeps all"""
    top_p: float = 1.0
    """sample from the smallest set of tokens whose probability reaches p"""
    min_p: float = 0.0
    """drop tokens less likely than min_p times the likeliest one"""
    repetition_penalty: float = 1.0
    """divide the logits of tokens already seen by this (1 changes nothing)"""
    seed: int | None = None
    """seed for sampling, for a repeatable completion"""
    stop: list[str] = field(default_factory=list)
    """one or more strings that end the completion"""
    ignore_eos: bool = False
    """keep generating past the end-of-sequence token"""
    json: bool = False
    """print one JSON line: text, ids, prompt_tokens, ttft_ms, decode_tok_s"""


def generate(cfg: GenerateConfig) -> dict:
    from ember.core.io import read_text_utf8
    from ember.infer.params import SamplingParams

    if (cfg.prompt is None) == (cfg.prompt_file is None):
        raise ValueError("give either --prompt or --prompt-file, not both or neither")
    text = read_text_utf8(cfg.prompt_file) if cfg.prompt_file else cfg.prompt
    params = SamplingParams(
        temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p, min_p=cfg.min_p,
        repetition_penalty=cfg.repetition_penalty, seed=cfg.seed, max_tokens=cfg.max_tokens,
        stop=tuple(cfg.stop), ignore_eos=cfg.ignore_eos,
    )
    engine, tok = _runner(cfg)
    if cfg.chat:
        msgs = ([{"role": "system", "content": cfg.system}] if cfg.system else []) + [{"role": "user", "content": text}]
        ids, _ = tok.render_chat(msgs, add_generation_prompt=True)
    else:
        ids = tok.encode(text, add_bos=None)  # BOS where the model's own tokenizer asks for one
    result = None
    for chunk in engine.stream(ids, params):
        if not cfg.json:
            print(chunk.text, end="", flush=True)
        result = chunk.result or result
    out = {
        "text": result.text, "ids": result.token_ids, "finish_reason": result.finish_reason,
        "prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
        "ttft_ms": round(result.ttft_ms, 2), "decode_tok_s": round(result.decode_tok_s, 2),
    }
    if cfg.json:
        print(json.dumps(out, ensure_ascii=False))
    else:
        print(f"\n[{result.prompt_tokens} prompt tokens, TTFT {result.ttft_ms:.0f} ms, "
              f"{result.completion_tokens} tokens at {result.decode_tok_s:.1f} tok/s]", file=sys.stderr)
    return out


@dataclass
class ChatConfig(ModelOptions):
    """Chat with a model in the terminal (/reset clears the history, /exit quits)."""

    system: str | None = None
    """system message that starts the conversation"""
    temperature: float = 0.7
    """sampling temperature; 0 is greedy"""
    top_p: float = 0.9
    """sample from the smallest set of tokens whose probability reaches p"""
    max_tokens: int = 512
    """most tokens per reply"""
    seed: int | None = None
    """seed for sampling, for repeatable replies"""
    demo: bool = False
    """answer one demo question and exit (what `make run` does without a terminal)"""
    prefix_cache_mb: float = 256.0
    """MiB of K/V kept so each turn prefills only its new tokens (0: off; replies match up to float ties)"""


DEMO_QUESTION = "In two sentences, what is a tokenizer in a language model?"


def chat(cfg: ChatConfig) -> None:
    from ember.infer.chat import run_chat
    from ember.infer.params import SamplingParams

    params = SamplingParams(temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_tokens, seed=cfg.seed)
    engine, tok = _runner(cfg)
    if not cfg.demo:
        run_chat(engine, tok, system=cfg.system, params=params)
        return
    print(f"> {DEMO_QUESTION}")
    questions = iter([DEMO_QUESTION])

    def read_once(_prompt):
        try:
            return next(questions)
        except StopIteration:  # run_chat ends on EOFError, as at the end of a piped stdin
            raise EOFError from None

    run_chat(engine, tok, system=cfg.system, input_fn=read_once,
             params=SamplingParams(temperature=0.0, max_tokens=cfg.max_tokens))


@dataclass
class PerplexityConfig(ModelOptions):
    """Perplexity of a model on a text file (non-overlapping windows)."""

    file: str | None = None
    """text file; default: the first 20,000 characters of the sorted pydoc topics"""
    ctx: int = 512
    """tokens per window"""
    max_chars: int | None = None
    """score only the first N characters"""
    bos: bool = False
    """start every window with the BOS token"""

    def __post_init__(self):
        super().__post_init__()
        at_least("--ctx", self.ctx, 1)
        at_least("--max-chars", self.max_chars, 1, optional=True)


def perplexity(cfg: PerplexityConfig) -> float:
    import torch

    from ember.core.io import read_text_utf8
    from ember.data.corpus import pydoc_topics_text
    from ember.eval.perplexity import perplexity as ppl_fn

    text = read_text_utf8(cfg.file) if cfg.file else pydoc_topics_text()[:20_000]
    if cfg.max_chars:
        text = text[: cfg.max_chars]
    if not text.strip():
        raise ValueError(f"{cfg.file or 'the text'} is empty")
    model, tok = _load(cfg)
    bos = tok.bos_token_id if cfg.bos else None
    with torch.inference_mode():
        ppl, n = ppl_fn(model, tok.encode(text), ctx=cfg.ctx, bos_id=bos)
    print(json.dumps({"perplexity": round(ppl, 4), "tokens": n, "ctx": cfg.ctx, "model": cfg.model}))
    return ppl


@dataclass
class ServeConfig(SpeculativeOptions, ModelOptions):
    """Serve a model over an OpenAI-compatible HTTP API (chat, completions, embeddings, tokenize,
    metrics)."""

    host: str = "127.0.0.1"
    """address to listen on"""
    port: int = 8000
    """port to listen on (0: any free port)"""
    max_batch: int = 8
    """engine slots: requests decoded together"""
    ctx: int = 2048
    """context per request (KV-cache length); capped at the model's context"""
    max_queue: int = 64
    """requests waiting or running before new ones get a 503"""
    max_body_bytes: int = 8 * 2**20
    """request bodies above this get a 413 before they are read"""
    batch_invariant: bool = True
    """true: a seeded request gives the same tokens alone or beside others (every decode step
    runs all max_batch rows, except on the native kernels, whose rows never mix); false: decode
    only the busy rows and prefill a burst of new prompts in one forward (tokens up to float ties)"""
    prefill_chunk: int = 256
    """prompt tokens prefilled per engine step, beside one decode of the running requests (a long
    prompt goes in by chunks and never stalls the other streams for more than one)"""
    prefix_cache_mb: float = 256.0
    """MiB of K/V of earlier prompts (a shared system prompt, earlier chat turns) reused by later
    ones, which prefill only what follows (0: off; tokens match up to float ties)"""
    embedding_model: str | None = None
    """also serve this sentence encoder at /v1/embeddings (a known name such as minilm, or an
    HF folder); its name must differ from --model"""
    rag: str | None = None
    """a RAG store (`ember rag index`): chat requests with "rag": true (or {"k": 3}) are answered
    from its best chunks, cited as [n], and the response lists them as its sources"""

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise ValueError(f"--port must be in 0..65535 (0: any free port), got {self.port!r}")
        at_least("--max-batch", self.max_batch, 1)
        at_least("--ctx", self.ctx, 1)
        at_least("--max-queue", self.max_queue, 1)
        at_least("--prefill-chunk", self.prefill_chunk, 1)
        at_least("--max-body-bytes", self.max_body_bytes, 1)
        if self.embedding_model is not None and self.embedding_model == self.model:
            raise ValueError(f"--embedding-model must name another model than --model, both are {self.model!r}")


def _load_embedder(name: str):
    from ember.infer.embed import load_embedder

    return load_embedder(name)


def _retriever(db: str | None, tok, ctx: int):
    if db is None:
        return None
    from ember.rag.answer import ChatRetriever
    from ember.rag.index import Index

    return ChatRetriever(Index(db, create=False), tok, ctx)  # a missing store: FileNotFoundError naming it


def serve(cfg: ServeConfig) -> None:
    from ember.infer.engine import Engine
    from ember.infer.server import create_app

    check_port_free(cfg.host, cfg.port)
    model, tok = _load(cfg)
    ctx = min(cfg.max_seq_len or cfg.ctx, model.config.max_seq_len)  # --max-seq-len is an alias
    engine = Engine(model, tok, max_batch_size=cfg.max_batch, max_seq_len=ctx, compile=_compile(model, cfg),
                    batch_invariant=cfg.batch_invariant, prefix_cache_mb=cfg.prefix_cache_mb,
                    prefill_chunk=cfg.prefill_chunk, speculative=build_speculative(model, tok, cfg))
    embedder = _load_embedder(cfg.embedding_model) if cfg.embedding_model else None
    app = create_app(engine, cfg.model, max_queue=cfg.max_queue, max_body_bytes=cfg.max_body_bytes,
                     embedder=embedder, embedding_model=cfg.embedding_model, rag=_retriever(cfg.rag, tok, ctx))
    also = f", embeddings from {cfg.embedding_model}" if embedder is not None else ""
    also += f", retrieval from {cfg.rag}" if cfg.rag else ""
    print(f"serving {cfg.model} (context {ctx}, batch {cfg.max_batch}{also}) on http://{cfg.host}:{cfg.port}",
          file=sys.stderr)
    _run_server(app, host=cfg.host, port=cfg.port)


def _run_server(app, host: str, port: int) -> None:
    import uvicorn

    _serve_on_main_thread(app, uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="info")))


def _serve_on_main_thread(app, server) -> None:
    """HTTP on a thread, the engine loop on this (the main) thread: the thread whose OpenMP
    pool the model load made runs the native steps too (see EngineWorker.run_here)."""
    import threading

    worker = app.state.ember.worker

    def http_then_stop():
        try:
            server.run()
        finally:  # however the server ends (shutdown, a failed start), the engine loop ends too
            worker.stop()

    http = threading.Thread(target=http_then_stop, name="ember-http", daemon=True)
    try:
        worker.run_here(then=http.start)
    except KeyboardInterrupt:
        pass
    finally:
        server.should_exit = True
        if http.is_alive():
            http.join(timeout=30)


@dataclass
class EmbedConfig:
    """Sentence embeddings from a BERT encoder: one L2-normalised vector per text."""

    text: list[str] = field(default_factory=list)
    """the texts to embed (also the bare words after `ember embed`); or use --file"""
    file: str | None = None
    """embed each line of this file (blank lines included: [CLS] [SEP] alone)"""
    model: str = "minilm"
    """known name (minilm) or an HF BERT folder: config.json, *.safetensors, tokenizer.json or vocab.txt"""
    json: bool = False
    """print {"model", "dim", "embeddings": [[...], ...], "n_tokens", "n_truncated"} as one JSON line"""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """float32 matches sentence-transformers (cosine 1 - 1e-7); bfloat16 runs the encoder under
    autocast, ~1.5x faster on CPUs with bf16 units (cosine to float32 >= 0.9999 on bench/embed.py)"""
    threads: int | None = None
    """compute threads (default: all cores)"""

    def __post_init__(self):
        at_least("--threads", self.threads, 1, optional=True)


def embed(cfg: EmbedConfig) -> list[list[float]]:
    import torch

    from ember.core.io import read_text_utf8
    from ember.infer.embed import load_embedder

    if bool(cfg.text) == (cfg.file is not None):
        raise ValueError("give texts or --file, not both or neither")
    texts = read_text_utf8(cfg.file).splitlines() if cfg.file else list(cfg.text)
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    embedder = load_embedder(cfg.model, autocast_dtype=None if cfg.dtype == "float32" else torch.bfloat16)
    out = embedder.embed_batch(texts)
    vectors = out.vectors.tolist()
    cut = sum(n > 0 for n in out.n_truncated)
    if cut:
        print(f"note: {cut} of {len(texts)} texts were cut to {embedder.max_tokens} tokens", file=sys.stderr)
    if cfg.json:
        print(json.dumps({"model": cfg.model, "dim": out.vectors.shape[1], "embeddings": vectors,
                          "n_tokens": out.n_tokens, "n_truncated": out.n_truncated}))
        return vectors
    for text, v, n in zip(texts, vectors, out.n_tokens):
        head = " ".join(f"{x:+.4f}" for x in v[:5])
        print(f"[{head} ...] ({len(v)} values, {n} tokens)  {text[:60]!r}")
    if 1 < len(texts) <= 10:  # unit vectors: the dot product is the cosine
        print("cosine similarity:")
        for row in (out.vectors @ out.vectors.T).tolist():
            print("  " + " ".join(f"{x:6.3f}" for x in row))
    return vectors
