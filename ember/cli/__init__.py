"""`ember <stage> ...`: every stage from the command line.

Each command's options come from a dataclass (jsonargparse turns fields into flags and
`--config file.yaml`); the command body calls the same functions Python users call.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from jsonargparse import ActionConfigFile, ArgumentParser

from ember.cli.errors import at_least, check_port_free, guarded, out_folder


# ---- tokenizer ----------------------------------------------------------------------------
@dataclass
class TokenizerTrainConfig:
    """Train a byte-level BPE tokenizer."""

    input: list[str] = field(default_factory=list)  # text files or folders; empty = bundled corpus
    vocab_size: int = 4096  # bytes (256) + merges + special tokens
    out: str = "runs/tokenizer"  # folder for tokenizer.ember.json
    pattern: str = "gpt4"  # gpt2 | gpt4 | smollm | a regex
    special_tokens: list[str] = field(default_factory=lambda: ["<|endoftext|>"])
    progress: bool = True


def tokenizer_train(cfg: TokenizerTrainConfig) -> Path:
    from ember.core.io import read_text_utf8
    from ember.data.corpus import bundled_corpus
    from ember.tokenizer import train_bpe

    out_folder(cfg.out)
    if cfg.input:
        files = _expand_inputs(cfg.input)
        texts = [read_text_utf8(f) for f in files]
        what = f"{len(files)} file(s)"
    else:
        texts, what = [bundled_corpus()], "the bundled corpus (pydoc topics)"
    n_chars = sum(len(t) for t in texts)
    print(f"training BPE on {what}, {n_chars:,} characters, vocab {cfg.vocab_size}", file=sys.stderr)
    tok = train_bpe(
        texts, cfg.vocab_size, pattern=cfg.pattern, special_tokens=cfg.special_tokens,
        progress=cfg.progress, eos_tokens=cfg.special_tokens[:1],
    )
    path = tok.save(cfg.out)
    print(f"saved {len(tok.merges)} merges, vocab {tok.vocab_size} -> {path}", file=sys.stderr)
    return path


def _expand_inputs(inputs: list[str]) -> list[Path]:
    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files.extend(sorted(f for f in p.rglob("*") if f.is_file()))
        elif p.is_file():
            files.append(p)
        else:
            raise ValueError(f"input {item!r} is neither a file nor a folder")
    if not files:
        raise ValueError(f"no input files found in {inputs}")
    return files


@dataclass
class TokenizeConfig:
    """Show how a model's tokenizer cuts text."""

    text: str | None = None  # the text (or use --file)
    model: str = "smollm2"  # known name, GGUF, tokenizer.json/folder, or ember tokenizer JSON
    file: str | None = None  # read the text from this file instead
    format: Literal["ids", "pieces", "json"] = "ids"
    allow_special: bool = False  # treat special-token strings in the text as special tokens


def tokenize(cfg: TokenizeConfig) -> str:
    from ember.core.io import read_text_utf8
    from ember.tokenizer import load_tokenizer

    if (cfg.text is None) == (cfg.file is None):
        raise ValueError("give either TEXT or --file, not both or neither")
    text = read_text_utf8(cfg.file) if cfg.file else cfg.text
    tok = load_tokenizer(cfg.model)
    ids = tok.encode(text, allowed_special="all" if cfg.allow_special else ())
    pieces = [tok.id_to_bytes(i).decode("utf-8", errors="backslashreplace") for i in ids]
    if cfg.format == "ids":
        out = json.dumps(ids)
    elif cfg.format == "pieces":
        out = json.dumps(pieces, ensure_ascii=False)
    else:
        out = json.dumps({"ids": ids, "pieces": pieces, "n_tokens": len(ids), "n_chars": len(text)}, ensure_ascii=False)
    print(out)
    return out


# ---- inference ---------------------------------------------------------------------------
@dataclass
class ModelOptions:
    model: str = "smollm2"  # known name, GGUF file, or HF folder
    dtype: Literal["float32", "bfloat16"] = "float32"  # float32 is exact; bfloat16 is ~2x faster
    quant: Literal["none", "int8", "int4"] = "none"  # weight-only matmuls for fast CPU decode
    max_seq_len: int | None = None  # KV-cache length (default: the model's context)
    threads: int | None = None  # torch threads (default: all cores)
    compile: bool = False  # torch.compile the decode step (~30 s once; faster tokens after)

    def __post_init__(self):
        at_least("--threads", self.threads, 1, optional=True)
        at_least("--max-seq-len", self.max_seq_len, 1, optional=True)


def _load(opts: ModelOptions):
    import torch

    import ember

    if opts.threads is not None:
        torch.set_num_threads(opts.threads)
    model, tok = ember.load(opts.model, dtype=getattr(torch, opts.dtype),
                            quant=None if opts.quant == "none" else opts.quant, fuse=True)
    return model.eval(), tok


def _engine(model, tok, opts: ModelOptions, max_batch_size: int = 1):
    from ember.infer.engine import Engine

    return Engine(model, tok, max_batch_size=max_batch_size, max_seq_len=opts.max_seq_len, compile=opts.compile)


@dataclass
class GenerateConfig(ModelOptions):
    """Generate a completion for one prompt."""

    prompt: str | None = None
    prompt_file: str | None = None
    chat: bool = False  # wrap the prompt as a user message in the model's chat template
    system: str | None = None  # system message (with --chat)
    max_tokens: int = 128
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    ignore_eos: bool = False
    json: bool = False  # one JSON line: text, ids, prompt_tokens, ttft_ms, decode_tok_s


def generate(cfg: GenerateConfig) -> dict:
    from ember.core.io import read_text_utf8
    from ember.infer.sampling import SamplingParams

    if (cfg.prompt is None) == (cfg.prompt_file is None):
        raise ValueError("give either --prompt or --prompt-file, not both or neither")
    text = read_text_utf8(cfg.prompt_file) if cfg.prompt_file else cfg.prompt
    params = SamplingParams(
        temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p, min_p=cfg.min_p,
        repetition_penalty=cfg.repetition_penalty, seed=cfg.seed, max_tokens=cfg.max_tokens,
        stop=tuple(cfg.stop), ignore_eos=cfg.ignore_eos,
    )
    model, tok = _load(cfg)
    if cfg.chat:
        msgs = ([{"role": "system", "content": cfg.system}] if cfg.system else []) + [{"role": "user", "content": text}]
        ids, _ = tok.render_chat(msgs, add_generation_prompt=True)
    else:
        ids = tok.encode(text)
        if tok.add_bos and tok.bos_token_id is not None:
            ids = [tok.bos_token_id, *ids]
    engine = _engine(model, tok, cfg)
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
    temperature: float = 0.7
    top_p: float = 0.9
    max_tokens: int = 512
    seed: int | None = None
    demo: bool = False  # answer one demo question and exit (what `make run` does without a terminal)


DEMO_QUESTION = "In two sentences, what is a tokenizer in a language model?"


def chat(cfg: ChatConfig) -> None:
    from ember.infer.chat import run_chat
    from ember.infer.sampling import SamplingParams

    params = SamplingParams(temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_tokens, seed=cfg.seed)
    model, tok = _load(cfg)
    engine = _engine(model, tok, cfg)
    if cfg.demo:
        lines = iter([DEMO_QUESTION])
        print(f"> {DEMO_QUESTION}")

        def read(_prompt):
            return next(lines)  # StopIteration is not EOFError: map it below

        def read_once(prompt):
            try:
                return read(prompt)
            except StopIteration:
                raise EOFError from None

        run_chat(engine, tok, system=cfg.system, input_fn=read_once,
                 params=SamplingParams(temperature=0.0, max_tokens=cfg.max_tokens))
        return
    run_chat(engine, tok, system=cfg.system, params=params)


@dataclass
class PerplexityConfig(ModelOptions):
    """Perplexity of a model on a text file (non-overlapping windows)."""

    file: str | None = None  # text file; default: the first 20,000 chars of the sorted pydoc topics
    ctx: int = 512
    max_chars: int | None = None  # only the first N characters
    bos: bool = False  # start every window with the BOS token

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
class ServeConfig(ModelOptions):
    """Serve a model over an OpenAI-compatible HTTP API (chat, completions, tokenize, metrics)."""

    host: str = "127.0.0.1"
    port: int = 8000
    max_batch: int = 8  # engine slots: requests decoded together
    ctx: int = 2048  # context per request (KV-cache length); capped at the model's context
    max_queue: int = 64  # requests waiting or running before new ones get a 503
    max_body_bytes: int = 8 * 2**20  # request bodies above this get a 413 before they are read
    # True: a seeded request gives the same tokens alone or beside others (every decode step
    # runs all max_batch rows); false: decode only the busy rows, faster with few clients
    batch_invariant: bool = True

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise ValueError(f"--port must be in 0..65535 (0: any free port), got {self.port!r}")
        at_least("--max-batch", self.max_batch, 1)
        at_least("--ctx", self.ctx, 1)
        at_least("--max-queue", self.max_queue, 1)
        at_least("--max-body-bytes", self.max_body_bytes, 1)


def serve(cfg: ServeConfig) -> None:
    import uvicorn

    from ember.infer.engine import Engine
    from ember.infer.server import create_app

    check_port_free(cfg.host, cfg.port)
    model, tok = _load(cfg)
    ctx = min(cfg.max_seq_len or cfg.ctx, model.config.max_seq_len)  # --max-seq-len is an alias
    engine = Engine(model, tok, max_batch_size=cfg.max_batch, max_seq_len=ctx, compile=cfg.compile,
                    batch_invariant=cfg.batch_invariant)  # fmt: skip
    app = create_app(engine, cfg.model, max_queue=cfg.max_queue, max_body_bytes=cfg.max_body_bytes)
    print(f"serving {cfg.model} (context {ctx}, batch {cfg.max_batch}) on http://{cfg.host}:{cfg.port}",
          file=sys.stderr)  # fmt: skip
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="info")


# ---- demo (`make run`) ---------------------------------------------------------------------
DEMO_SENTENCE = "ember turns raw text into tokens: 12 apples, 3 naïve cafés and one 🚀!"


def demo() -> None:
    """Train a tokenizer on the bundled corpus, then show how a sentence tokenizes."""
    from ember.data.corpus import pydoc_topics_text
    from ember.tokenizer import train_bpe

    text = pydoc_topics_text()
    print(f"Training a 2,048-token byte-level BPE on Python's pydoc topics ({len(text):,} chars)...")
    tok = train_bpe([text], 2048, pattern="gpt4", special_tokens=["<|endoftext|>"], progress=True)
    ids = tok.encode(DEMO_SENTENCE)
    print(f"\n{DEMO_SENTENCE!r}\n-> {len(ids)} tokens:")
    print(" | ".join(tok.id_to_bytes(i).decode("utf-8", errors="backslashreplace") for i in ids))
    print(ids)
    assert tok.decode(ids) == DEMO_SENTENCE
    print("first merges:", [tok.vocab[c].decode("utf-8", "replace") for _, _, c in tok.merges[:12]])


# ---- wiring ---------------------------------------------------------------------------------
def _command(cfg_cls, doc: str | None = None, many: tuple[str, ...] = ()) -> ArgumentParser:
    """A parser whose flags are `cfg_cls`'s fields; fields in `many` take several values."""
    p = ArgumentParser(description=doc or cfg_cls.__doc__)
    p.add_argument("--config", action=ActionConfigFile, help="YAML file of options")
    p.add_class_arguments(cfg_cls, nested_key=None, fail_untyped=False, skip=set(many))
    for name in many:
        p.add_argument(f"--{name}", nargs="+", type=str, default=[], help=f"one or more {name} values")
    return p


def _bool_flags() -> set[str]:
    from ember.cli.train import bool_fields

    configs = (TokenizerTrainConfig, TokenizeConfig, GenerateConfig, ChatConfig, PerplexityConfig, ServeConfig)
    names = {f.name for c in configs for f in c.__dataclass_fields__.values() if f.type in (bool, "bool")}
    return names | bool_fields()



def _normalize_argv(argv: list[str], positional: dict[str, str]) -> list[str]:
    """`--vocab-size 3` → `--vocab_size 3`; a bare `--json` → `--json true`; a bare word
    after `ember CMD` becomes `--<positional> WORD`."""
    out: list[str] = []
    takes_value = False
    bools = _bool_flags()
    for k, tok in enumerate(argv):
        if tok.startswith("--") and len(tok) > 2:
            name, eq, value = tok[2:].partition("=")
            name = name.replace("-", "_")
            out.append("--" + name + eq + value)
            takes_value = not eq
            nxt = argv[k + 1] if k + 1 < len(argv) else None
            if name in bools and not eq and (nxt is None or nxt.lower() not in ("true", "false")):
                out.append("true")
                takes_value = False
        elif out and out[0] in positional and not takes_value and not tok.startswith("-"):
            out.extend([f"--{positional[out[0]]}", tok])
        else:
            out.append(tok)
            takes_value = False
    return out


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="ember", description="ember: one codebase for the whole life of an LLM",
                            epilog="An error is one line; EMBER_DEBUG=1 shows its traceback.")
    sub = parser.add_subcommands(dest="command")

    tokenizer = ArgumentParser(description="tokenizer tools")
    sub.add_subcommand("tokenizer", tokenizer, help="train tokenizers")
    tsub = tokenizer.add_subcommands(dest="action")
    tsub.add_subcommand("train", _command(TokenizerTrainConfig, many=("input",)), help="train a byte-level BPE tokenizer")

    tok_parser = _command(TokenizeConfig)
    sub.add_subcommand("tokenize", tok_parser, help="show how text tokenizes")
    sub.add_subcommand("generate", _command(GenerateConfig, many=("stop",)), help="complete one prompt")
    sub.add_subcommand("chat", _command(ChatConfig), help="chat in the terminal")
    sub.add_subcommand("perplexity", _command(PerplexityConfig), help="perplexity on a text file")
    sub.add_subcommand("serve", _command(ServeConfig), help="OpenAI-compatible HTTP server")
    sub.add_subcommand("demo", ArgumentParser(description=demo.__doc__), help="tokenizer demo")
    from ember.cli.train import add_commands

    add_commands(sub)
    return parser


def _dataclass_from(cls, ns):
    names = cls.__dataclass_fields__
    return cls(**{k: v for k, v in vars(ns).items() if k in names})


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit code: 0, 2 for a user error (one line on stderr,
    see `ember.cli.errors`), 130 for Ctrl-C."""
    return guarded(lambda: _main(list(sys.argv[1:] if argv is None else argv)))


def _main(argv: list[str]) -> int:
    from ember.cli import train as train_commands
    from ember.core.memory import release_freed_memory_eagerly

    argv = _normalize_argv(argv, {"tokenize": "text"})
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # jsonargparse printed its own message (or --help)
        return e.code if isinstance(e.code, int) else 2
    if args.command in ("generate", "chat", "perplexity", "serve"):
        # lower peak memory while loading models; not for training, where every step's
        # large activations would then cost an mmap + page faults each (3x the system time)
        release_freed_memory_eagerly()
    if args.command == "tokenizer" and args.tokenizer.action == "train":
        tokenizer_train(_dataclass_from(TokenizerTrainConfig, args.tokenizer.train))
    elif args.command == "tokenize":
        tokenize(_dataclass_from(TokenizeConfig, args.tokenize))
    elif args.command == "generate":
        generate(_dataclass_from(GenerateConfig, args.generate))
    elif args.command == "chat":
        chat(_dataclass_from(ChatConfig, args.chat))
    elif args.command == "perplexity":
        perplexity(_dataclass_from(PerplexityConfig, args.perplexity))
    elif args.command == "serve":
        serve(_dataclass_from(ServeConfig, args.serve))
    elif args.command == "demo":
        demo()
    elif not train_commands.run(args):
        parser.print_help()
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
