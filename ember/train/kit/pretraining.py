"""Pre-training's building blocks: the model shapes `--arch` names, the data and run configs,
preparing and checking the token shards, and the Trainer for a decoder trained from scratch.
`ember pretrain` runs one; `ember scaling sweep` runs a grid of them.
"""

from __future__ import annotations

import dataclasses
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from ember.model.config import PRESETS as MODEL_PRESETS
from ember.model.config import ModelConfig
from ember.parallel import DistInfo, barrier, init_distributed
from ember.parallel.tensor import data_parallel
from ember.train.kit.objectives import (
    OBJECTIVE_SPECIALS,
    ObjectiveConfig,
    build_objective,
    evaluate_objective,
    extra_rows,
    to_device,
)
from ember.train.loop import TrainConfig, Trainer, broadcast_config
from ember.train.losses import cross_entropy
from ember.train.metrics import non_embedding_params
from ember.train.optim import OptimConfig

# Every model shape `--arch` names, in one table: ModelConfig's presets and the shapes for
# training from scratch. vocab_size always comes from the tokenizer.
ARCHS: dict[str, dict[str, Any]] = {
    **{name: {k: v for k, v in shape.items() if k != "vocab_size"} for name, shape in MODEL_PRESETS.items()},
    # Llama-style, ~3.4 M non-embedding parameters: minutes on a laptop
    "mini-llama": dict(n_layers=4, d_model=256, n_heads=4, n_kv_heads=4, d_ff=688, max_seq_len=256,
                       norm="rmsnorm", pos_emb="rope", mlp="swiglu", tie_embeddings=True),
    # the nanoGPT "baby GPT" shape used by bench/train.py
    "gpt2-mini": dict(n_layers=6, d_model=384, n_heads=6, d_ff=1536, max_seq_len=256, norm="layernorm",
                      pos_emb="learned", mlp="gelu", bias=True, tie_embeddings=True),
    # a T5-style encoder-decoder for --objective span, denoise: mini-llama's blocks, 4 in the
    # encoder and 4 in the decoder (which adds cross-attention), embeddings tied as in T5
    "mini-t5": dict(n_layers=4, d_model=256, n_heads=4, n_kv_heads=4, d_ff=688, max_seq_len=256,
                    norm="rmsnorm", pos_emb="rope", mlp="swiglu", tie_embeddings=True),
    # a BERT-style encoder (bidirectional, learned positions, LayerNorm, erf GELU) of mini-llama's
    # size, for the encoder objectives (--objective mlm, electra, plm)
    "mini-bert": dict(n_layers=4, d_model=256, n_heads=4, d_ff=1024, max_seq_len=256, norm="layernorm",
                      pos_emb="learned", mlp="gelu_erf", bias=True, tie_embeddings=True, causal=False),
}


def _overrides_class() -> type:
    """ModelConfig with every field optional (None: the arch's value), each with its help."""
    import docstring_parser

    hints = typing.get_type_hints(ModelConfig)
    docs = {p.arg_name: p.description for p in docstring_parser.parse_from_object(ModelConfig).params}
    cls = dataclasses.make_dataclass(
        "ModelOverrides", [(f.name, hints[f.name] | None, field(default=None)) for f in dataclasses.fields(ModelConfig)]
    )
    # jsonargparse reads option help from this docstring's Attributes section
    cls.__doc__ = "Model fields that override the arch.\n\nAttributes:\n" + "".join(
        f"    {name}: {' '.join(doc.split())}\n" for name, doc in docs.items()
    )
    return cls


# A config-file/CLI view of ModelConfig where every field is optional: set fields override the arch.
ModelOverrides = _overrides_class()


@dataclass
class DataConfig:
    """Where the token shards come from. A --data.dir that holds shards is checked against
    every data option given (input, tokenizer, vocab_size, val_fraction): a difference is an
    error, never a silent reuse. Without --data.dir: the bundled corpus under runs/data."""

    input: list[str] | str = field(default_factory=list)
    """text file(s) or folder(s): notes.txt or [a.txt, b/]"""
    dir: str | None = None
    """shard folder: reused if it holds shards, else prepared from --data.input"""
    tokenizer: str | None = None
    """tokenizer name or path; default: a BPE of vocab_size trained on the data"""
    vocab_size: int | None = None
    """vocabulary of that BPE; default 4096 (with an existing --data.dir: checked if given)"""
    loader: Literal["random", "packed"] = "random"
    """random windows, or shuffled packed documents"""
    seq_len: int = 256
    """tokens per training window"""
    val_fraction: float | None = None
    """held-out share; default 0.05 (with an existing --data.dir: checked if given)"""

    def __post_init__(self):
        # one path is the natural spelling (--data.input notes.txt); keep a list from here on
        self.input = [self.input] if isinstance(self.input, str) else list(self.input or [])


DEFAULT_VOCAB_SIZE, DEFAULT_VAL_FRACTION = 4096, 0.05
SEPARATOR = "<|endoftext|>"  # between documents in the shards: the BPE's first special token


Objective = Literal["clm", "mlm", "electra", "plm", "span", "denoise"]


@dataclass
class PretrainConfig:
    """Train a model from scratch: a decoder (clm), or an encoder (mlm, electra, plm)."""

    arch: str = "mini-llama"
    """model shape: a name of ARCHS (mini-llama, gpt2-mini, mini-bert, gpt2, tiny, smollm2-135m, ...)"""
    objective: Objective = "clm"
    """clm: next token (a decoder); mlm: BERT's masked LM; electra: ELECTRA's replaced-token
    detection; plm: XLNet's permutation LM (the three encoder ones need an encoder arch such
    as mini-bert); span, denoise: T5 and BART (encoder-decoder)"""
    encoder: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    """options of the encoder objectives"""
    model: ModelOverrides = field(default_factory=ModelOverrides)
    """fields that override the arch's shape, e.g. --model.n_layers 6"""
    data: DataConfig = field(default_factory=DataConfig)
    """the token shards to train on"""
    # ~1.2 M tokens (2.5 passes over the bundled corpus): a few minutes on 2 cores
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(steps=300, eval_every=50, sample_every=100, save_every=100)
    )
    """how long and how to train"""
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(warmup_steps=30))
    """optimizer and learning-rate schedule"""
    sample_prompt: str = "The"
    """prompt of the samples shown during the run"""
    sample_tokens: int = 48
    """tokens per sample; 0: no samples"""
    export_hf: bool = True
    """also write out/hf: an HF safetensors folder transformers loads"""





def model_config(arch: str, overrides, vocab_size: int, seq_len: int) -> ModelConfig:
    """Arch < explicit overrides; vocab from the tokenizer; context at least seq_len."""
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; valid archs: {sorted(ARCHS)}")
    base = dict(ARCHS[arch])
    given = {k: v for k, v in dataclasses.asdict(overrides).items() if v is not None} if overrides else {}
    base.update(given)
    base["vocab_size"] = vocab_size
    if "max_seq_len" not in given:
        base["max_seq_len"] = max(base.get("max_seq_len", seq_len), seq_len)
    cfg = ModelConfig.from_dict(base)
    if cfg.max_seq_len < seq_len:
        raise ValueError(f"data.seq_len {seq_len} exceeds the model's max_seq_len {cfg.max_seq_len}")
    return cfg


def prepare_data(data: DataConfig, info: DistInfo, progress: bool = True,
                 special_tokens: list[str] | None = None) -> Path:
    """The shard folder to train on: checked against `data` when it holds shards, else
    prepared (by rank 0, once) from data.input, or from the bundled corpus when no
    data.dir is named. A named data.dir that holds no shards needs data.input.
    special_tokens: those of the BPE trained for it (default: the document separator)."""
    from ember.data.shards import load_manifest, prepare_shards

    special_tokens = special_tokens or [SEPARATOR]
    folder = Path(data.dir) if data.dir else _default_data_dir(data, special_tokens)
    if info.is_main and (folder / "manifest.json").is_file():
        check_data_dir(folder, data)
    elif info.is_main:
        if data.dir and not data.input:
            state = "does not exist" if not folder.exists() else "holds no finished shards (no manifest.json)"
            raise ValueError(f"data.dir {folder} {state}; pass --data.input FILES to prepare it now, or "
                             f"prepare it first with `ember data prepare --out {folder} --input FILES`")
        from ember.data.corpus import bundled_documents

        texts = None if data.input else bundled_documents()
        tok = _tokenizer_for(data, texts, special_tokens)
        print(f"preparing token shards in {folder}", file=sys.stderr)
        prepare_shards(folder, tok, inputs=data.input or None, texts=texts, val_fraction=_val_fraction(data),
                       progress=progress)
    barrier(info)
    load_manifest(folder)  # validates every shard's size on every rank
    return folder


def check_data_dir(folder: Path, data: DataConfig) -> None:
    """Refuse shards made from other data than `data` says, naming each difference.

    Options left unset are not checked in a named --data.dir (it holds what it holds); in
    the default folder they take their defaults, since that folder is named after them.
    """
    from ember.data.shards import document_changes, load_manifest, read_plan

    plan, manifest = read_plan(folder), load_manifest(folder)
    default = data.dir is None
    differ = []
    if data.input:
        if change := document_changes(plan, inputs=data.input):
            differ.append(f"data.input: {change}")
    elif default and any(d.get("path") for d in plan["documents"]):
        differ.append("data.input: files in the folder vs the bundled corpus now")
    if data.tokenizer:
        from ember.tokenizer import load_tokenizer

        fp = load_tokenizer(data.tokenizer).fingerprint()
        if fp != plan.get("tokenizer_fingerprint"):
            differ.append(f"data.tokenizer: another tokenizer ({str(plan.get('tokenizer_fingerprint'))[:12]}) in "
                          f"the folder vs {data.tokenizer} ({fp[:12]}) now")
    elif (vocab := data.vocab_size or (DEFAULT_VOCAB_SIZE if default else None)) and vocab != manifest.vocab_size:
        differ.append(f"data.vocab_size: {manifest.vocab_size} in the folder vs {vocab} now")
    frac = data.val_fraction if data.val_fraction is not None else (DEFAULT_VAL_FRACTION if default else None)
    if frac is not None and frac != plan.get("val_fraction"):
        differ.append(f"data.val_fraction: {plan.get('val_fraction')} in the folder vs {frac} now")
    if differ:
        fix = f"delete {folder}" if default else "drop those options to train on what it holds"
        raise ValueError(f"data.dir {folder} holds shards of other data ({'; '.join(differ)}); "
                         f"pass a new --data.dir to prepare these, or {fix}")
    files = [d["path"] for d in plan["documents"] if d.get("path")]
    what = f"files {files[:3]}{' ...' if len(files) > 3 else ''}" if files else f"{len(plan['documents'])} texts"
    print(f"using the shards in {folder} ({what}, vocab {manifest.vocab_size})", file=sys.stderr)


def _default_data_dir(data: DataConfig, special_tokens: list[str]) -> Path:
    if data.input:
        raise ValueError("with --data.input, also name the shard folder with --data.dir")
    tok = (data.tokenizer or f"bpe{data.vocab_size or DEFAULT_VOCAB_SIZE}").replace("/", "_")
    # a BPE trained with more special tokens (e.g. [MASK]) is another tokenizer: another folder
    extra = "" if data.tokenizer else "".join(f"-{s.strip('[]<|>').lower()}" for s in special_tokens[1:])
    return Path("runs/data") / f"bundled-{tok}{extra}"


def _val_fraction(data: DataConfig) -> float:
    return DEFAULT_VAL_FRACTION if data.val_fraction is None else data.val_fraction


def _tokenizer_for(data: DataConfig, texts: list[str] | None, special_tokens: list[str]):
    from ember.tokenizer import load_tokenizer, train_bpe

    if data.tokenizer:
        return load_tokenizer(data.tokenizer)
    if texts is None:
        from ember.core.io import read_text_utf8
        from ember.data.shards import expand_inputs

        texts = [read_text_utf8(f) for f in expand_inputs(data.input)]
    vocab_size = data.vocab_size or DEFAULT_VOCAB_SIZE
    print(f"training a {vocab_size}-token BPE on the data", file=sys.stderr)
    return train_bpe(texts, vocab_size, pattern="gpt4", special_tokens=special_tokens,
                     eos_tokens=[SEPARATOR], progress=False)


def build_pretrain(cfg: PretrainConfig, info: DistInfo | None = None) -> Trainer:
    """Everything `main` runs, without running it: data, model, loaders, the Trainer."""
    from ember.data.loader import build_loader, eval_windows
    from ember.data.shards import load_manifest, open_split
    from ember.tokenizer import load_tokenizer

    info = info or init_distributed(cfg.train.device)
    folder = prepare_data(cfg.data, info, cfg.train.progress, OBJECTIVE_SPECIALS.get(cfg.objective))
    manifest = load_manifest(folder)
    tok = load_tokenizer(folder / "tokenizer")
    T = cfg.data.seq_len
    mcfg = model_config(cfg.arch, cfg.model, tok.vocab_size, T + extra_rows(cfg.objective, cfg.encoder, T))
    train_split, val_split = open_split(folder, "train"), open_split(folder, "val")
    dp_rank, dp_size = data_parallel(info, cfg.train.parallel, cfg.train.tp_size)  # tp, pp: all read the same rows
    loader = build_loader(cfg.data.loader, train_split, T, cfg.train.batch_size, cfg.train.seed, dp_rank, dp_size)
    eval_windows(val_split, T, 1)  # a val split too short for one window fails now, not at step 100
    device = info.device
    torch.manual_seed(cfg.train.seed)  # same init on every rank
    parts = build_objective(cfg.objective, mcfg, tok, cfg.encoder, cfg.train.seed, dp_rank, T)
    model = parts.model
    mcfg = model.config  # the model built: span and denoise add their extra ids to the vocabulary

    def batches(step):
        return to_device(parts.collate(*loader.batch(step), step), device)

    def evaluate(model) -> dict:  # mean loss over the same validation windows every time
        if cfg.objective != "clm":
            return evaluate_objective(parts, model, eval_windows(val_split, T, cfg.train.eval_windows, batch_size=8),
                                      device)
        total, n = 0.0, 0
        for x, y in eval_windows(val_split, T, cfg.train.eval_windows, batch_size=8):
            total += cross_entropy(model(x.to(device)), y.to(device)).item() * len(x)
            n += len(x)
        return {"val_loss": total / n}

    run_config = _jsonable(cfg)
    run_config["model"] = mcfg.to_dict()
    run_config["data"]["dir"] = str(folder)
    run_config["tokenizer_fingerprint"] = manifest.tokenizer_fingerprint
    run_config = broadcast_config(run_config, info)
    if info.is_main:
        n = non_embedding_params(mcfg)
        print(f"model: {cfg.arch} ({cfg.objective}), {n / 1e6:.2f} M non-embedding parameters, vocab {mcfg.vocab_size}, "
              f"ctx {T}; data: {manifest.splits['train'].n_tokens:,} train tokens", file=sys.stderr)
    trainer = Trainer(
        model, cfg.train, cfg.optim, parts.loss_fn, batches, run_config, eval_fn=evaluate,
        sample_fn=(lambda m: sample_text(m, tok, cfg.sample_prompt, cfg.sample_tokens, cfg.train.seed))
        if cfg.sample_tokens > 0 and cfg.objective == "clm" else None,
        tokens_per_step=cfg.train.batch_size * T, flops_per_token=parts.flops_per_token, info=info,
    )
    trainer.tokenizer = tok
    return trainer


def sample_text(model, tok, prompt: str, max_tokens: int, seed: int) -> str:
    """A seeded sample (temperature 0.8, top-k 40) after the document separator + prompt."""
    from ember.infer.engine import Engine
    from ember.infer.sampling import SamplingParams

    sep = min(tok.eos_token_ids) if tok.eos_token_ids else tok.bos_token_id
    ids = ([sep] if sep is not None else []) + tok.encode(prompt)
    ids = ids[-(model.config.max_seq_len // 2) :]  # leave room to generate
    max_tokens = min(max_tokens, model.config.max_seq_len - len(ids))
    engine = Engine(model, tok, max_batch_size=1, max_seq_len=len(ids) + max_tokens)
    params = SamplingParams(temperature=0.8, top_k=40, max_tokens=max_tokens, seed=seed)
    return prompt + engine.generate([ids], params)[0].text


def _jsonable(cfg) -> dict:
    return dataclasses.asdict(cfg)


def load_run(run_dir: str | Path):
    """(model, tokenizer) from a pre-training run folder: its latest checkpoint and config.
    For an encoder objective the model is the encoder kept (ELECTRA's discriminator, XLNet's
    body), a plain Transformer; for span and denoise, the EncoderDecoder.

    >>> model, tok = load_run("runs/pretrain")  # doctest: +SKIP
    """
    from ember.model.load import build_model
    from ember.tokenizer import load_tokenizer
    from ember.train.checkpoint import latest_checkpoint, load_checkpoint
    from ember.train.kit.objectives import body_state_dict

    path = latest_checkpoint(run_dir)
    if path is None:
        raise ValueError(f"{run_dir} holds no checkpoint (expected {Path(run_dir) / 'checkpoints' / 'latest'})")
    ckpt = load_checkpoint(path)
    config = ckpt["state"].get("config", {})
    if "model" not in config or "data" not in config:
        raise ValueError(f"checkpoint {path} lacks its run config")
    mcfg = ModelConfig.from_dict(config["model"])
    if config.get("objective") in ("span", "denoise"):  # an encoder-decoder, kept whole
        from ember.model.seq2seq import load_encoder_decoder

        model = load_encoder_decoder(mcfg, ckpt["model"])
    else:
        model = build_model(mcfg, body_state_dict(ckpt["model"]))
    tok = load_tokenizer(Path(config["data"]["dir"]) / "tokenizer")
    return model, tok
