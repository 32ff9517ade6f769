"""`ember distill`: train a small student on a teacher's next-token distributions.

Loss per step: (1 − α) · τ² · D(p_T^τ, p_S^τ) + α · CE(data), D forward KL, reverse KL or
GKD's generalized JSD(β) (ember/train/kit/distill.py cites each), α = --ce_weight. With
--on_policy λ > 0 a step is, with probability λ (drawn per step from the seed), on the
student's own samples (GKD, Agarwal et al. 2024, Algorithm 1): prompts are the first
--prompt_len tokens of data windows, the student continues them, and the teacher scores
the continuation online; CE does not apply to those steps.

Teacher logits, off-policy: cached top-k. One teacher pass over every training and
validation window keeps each position's k most likely tokens' log-probs (exact: normalised
over the full vocabulary); the loss rebuilds a full distribution from them, the remaining
mass spread evenly over the other V − k tokens. The cache is written to
out/teacher_topk.safetensors and `--teacher_cache` reuses it in another run (same teacher,
data and windows), so a CE-only baseline or another divergence costs no teacher forward.

The student is a preset of STUDENTS (or an arch of `ember pretrain`) with the teacher's
vocabulary, or an HF folder; `--init_embeddings teacher-pca` starts its tied embedding at
the teacher's embedding projected on its top d_model principal directions. The result is
out/model, an HF folder with the teacher's tokenizer: `ember generate --model out/model`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from ember.parallel import init_distributed
from ember.train.kit import pad_id, split_rows
from ember.train.kit.distill import divergence, top1_agreement
from ember.train.kit.pretraining import ARCHS
from ember.train.loop import TrainConfig, Trainer, prepare_run_dir
from ember.train.optim import OptimConfig

CACHE_FILE = "teacher_topk.safetensors"
# A draft model for SmolLM2: its vocabulary, 4 blocks of width 192 (~1.8 M parameters
# besides the 9.4 M of the tied embedding): a few minutes per hundred steps on 2 cores.
STUDENTS: dict[str, dict] = {
    "draft-smollm2": dict(n_layers=4, d_model=192, n_heads=3, n_kv_heads=3, d_ff=512, max_seq_len=2048,
                          norm="rmsnorm", pos_emb="rope", rope_theta=100000.0, mlp="swiglu",
                          tie_embeddings=True),
}


@dataclass
class DistillConfig:
    """Distil a teacher into a small student on text."""

    teacher: str = "smollm2"
    """The teacher: a known name, GGUF file or HF folder."""
    student: str = "draft-smollm2"
    """A preset of STUDENTS (draft-smollm2), an arch of `ember pretrain` (mini-llama, ...), or an HF folder."""
    loss: Literal["fkl", "rkl", "jsd"] = "fkl"
    """The divergence: forward KL(p_T‖p_S), reverse KL(p_S‖p_T), or generalized JSD(β)."""
    beta: float = 0.5
    """JSD's β: 0 is forward KL, 1 reverse KL (GKD)."""
    temperature: float = 1.0
    """τ: both distributions are softmax(logits / τ); the divergence is scaled by τ²."""
    ce_weight: float = 0.0
    """α: the weight of cross-entropy on the data; 1 trains on the data alone (no distillation)."""
    on_policy: float = 0.0
    """λ: the share of steps on the student's own samples, scored by the teacher online."""
    prompt_len: int = 32
    """On-policy steps: data tokens given as the prompt."""
    max_new_tokens: int = 32
    """On-policy steps: tokens the student samples after the prompt."""
    sample_temperature: float = 1.0
    """On-policy steps: the student's sampling temperature."""
    top_k: int = 64
    """Teacher tokens kept per position in the cache."""
    teacher_cache: str | None = None
    """A teacher_topk.safetensors of an earlier run on the same teacher and windows (None: compute it)."""
    data: str | None = None
    """A UTF-8 text file to distil on (None: Python's pydoc topics)."""
    max_chars: int = 400_000
    """Characters of the text used."""
    seq_len: int = 128
    """Tokens per window."""
    n_val: int = 16
    """Windows held out (the end of the text) for val_loss, perplexity, KL and top-1 agreement."""
    init_embeddings: Literal["teacher-pca", "random"] = "teacher-pca"
    """The student's embedding at the start: the teacher's projected on its principal directions, or random."""
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        steps=200, batch_size=4, eval_every=100, sample_every=0, save_every=100, out="runs/distill",
        keep_checkpoints=1))
    """The training loop: steps, batch size, evaluation, checkpoints, device."""
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=3e-3, warmup_steps=20, weight_decay=0.0))
    """The optimizer and its schedule."""

    def __post_init__(self):
        for name, lo, hi in (("beta", 0.0, 1.0), ("ce_weight", 0.0, 1.0), ("on_policy", 0.0, 1.0)):
            v = getattr(self, name)
            if not lo <= v <= hi:
                raise ValueError(f"{name} must be in [{lo}, {hi}], got {v}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        for name in ("top_k", "seq_len", "n_val", "prompt_len", "max_new_tokens", "max_chars"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.student not in STUDENTS and self.student not in ARCHS and not Path(self.student).is_dir():
            raise ValueError(f"student {self.student!r}: not a preset ({sorted(STUDENTS)}), an arch "
                             f"({sorted(ARCHS)}) nor an HF folder")
        if self.ce_weight == 1.0 and self.on_policy > 0:
            raise ValueError("on_policy steps distil (they have no data labels): use ce_weight < 1 with on_policy > 0")


Config = DistillConfig


def token_windows(tok, cfg: DistillConfig) -> torch.Tensor:
    """The text cut into non-overlapping windows of seq_len + 1 tokens → (N, T + 1)."""
    if cfg.data is None:
        from ember.data.corpus import pydoc_topics_text

        text = pydoc_topics_text()
    else:
        from ember.core.io import read_text_utf8

        text = read_text_utf8(cfg.data)
    ids = np.asarray(tok.encode(text[: cfg.max_chars]), dtype=np.int64)
    n = (len(ids) - 1) // cfg.seq_len
    if n < cfg.n_val + 1:
        raise ValueError(f"{cfg.data or 'the pydoc text'}: {len(ids)} tokens make {n} windows of {cfg.seq_len}; "
                         f"need more than n_val = {cfg.n_val}")
    rows = np.lib.stride_tricks.sliding_window_view(ids, cfg.seq_len + 1)[:: cfg.seq_len][:n]
    return torch.from_numpy(np.ascontiguousarray(rows))


def build_student(cfg: DistillConfig, teacher):
    """The student model with the teacher's vocabulary; a vocabulary mismatch is refused."""
    from ember.model.config import ModelConfig
    from ember.model.transformer import Transformer

    V = teacher.config.vocab_size
    if cfg.student in STUDENTS or cfg.student in ARCHS:
        shape = {**ARCHS.get(cfg.student, {}), **STUDENTS.get(cfg.student, {})}
        torch.manual_seed(cfg.train.seed)
        student = Transformer(ModelConfig.from_dict({**shape, "vocab_size": V}))
        if cfg.init_embeddings == "teacher-pca":
            pca_embeddings(student, teacher)
        return student
    from ember.model.load import load_model

    student = load_model(cfg.student)
    if student.config.vocab_size != V:
        raise ValueError(f"student {cfg.student} has a vocabulary of {student.config.vocab_size} tokens, the teacher "
                         f"{cfg.teacher} {V}: distillation compares distributions over one vocabulary")
    return student.train()


@torch.no_grad()
def pca_embeddings(student, teacher) -> None:
    """student.tok_embeddings ← c · E_T U_d, U_d the top d principal directions of the
    teacher's embedding E_T (V, D_T) and c the scale of the student's init: similar tokens
    start close, as in the teacher."""
    E = teacher.tok_embeddings.weight.float()  # (V, D_T)
    d = student.config.d_model
    if d > E.shape[1]:
        raise ValueError(f"--init_embeddings teacher-pca needs d_model <= the teacher's {E.shape[1]}, got {d}")
    _, vecs = torch.linalg.eigh(E.T @ E)  # ascending eigenvalues
    proj = E @ vecs[:, -d:].flip(-1)  # (V, d)
    # at the scale of the student's own init: the tied head's first logits stay small
    W = student.tok_embeddings.weight
    W.copy_(proj * (W.float().std() / proj.std()))


def dense_teacher(idx: torch.Tensor, logp: torch.Tensor, V: int) -> torch.Tensor:
    """Full log-probs (K, V) from the top-k (K, k) ids and log-probs; the rest of the mass is
    spread evenly over the other V − k tokens.

    >>> out = dense_teacher(torch.tensor([[1]]), torch.log(torch.tensor([[0.7]])), 4)
    >>> [round(p, 2) for p in out.exp()[0].tolist()]
    [0.1, 0.7, 0.1, 0.1]
    """
    k = idx.shape[-1]
    rest = (1.0 - logp.exp().sum(-1)).clamp_min(1e-12)  # (K,)
    out = torch.log(rest / max(V - k, 1))[:, None].expand(-1, V).clone()
    return out.scatter_(1, idx.long(), logp.float())


@torch.no_grad()
def teacher_topk(teacher, windows: torch.Tensor, k: int, device, batch: int = 4) -> dict[str, torch.Tensor]:
    """The teacher's top-k log-probs at each window position predicting a next token."""
    from tqdm import tqdm

    idx, logp = [], []
    for i in tqdm(range(0, len(windows), batch), desc="teacher top-k", file=sys.stderr, unit="batch"):
        x = windows[i : i + batch, :-1].to(device)
        lp = F.log_softmax(teacher(x).float(), dim=-1)  # (B, T, V)
        top = lp.topk(k, dim=-1)
        idx.append(top.indices.to(torch.int32).cpu())
        logp.append(top.values.cpu())
    return {"windows": windows, "idx": torch.cat(idx), "logp": torch.cat(logp)}


def cache_key(cfg: DistillConfig, windows: torch.Tensor) -> str:
    """What a cache must match: teacher, k and the windows' ids."""
    digest = hashlib.sha256(windows.numpy().tobytes()).hexdigest()[:16]
    return f"{cfg.teacher}|k={cfg.top_k}|{digest}"


def load_or_build_cache(cfg: DistillConfig, teacher, windows: torch.Tensor, device) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file, save

    from ember.core.io import atomic_write_bytes

    key = cache_key(cfg, windows)
    if cfg.teacher_cache is not None:
        from safetensors import safe_open

        with safe_open(cfg.teacher_cache, "pt") as f:
            found = (f.metadata() or {}).get("key")
        if found != key:
            raise ValueError(f"teacher cache {cfg.teacher_cache} was made for {found!r}, this run needs {key!r} "
                             f"(teacher|top_k|windows): drop --teacher_cache to compute it")
        return load_file(cfg.teacher_cache)
    cache = teacher_topk(teacher, windows, cfg.top_k, device)
    atomic_write_bytes(Path(cfg.train.out) / CACHE_FILE, save(cache, metadata={"key": key}))
    return cache


def make_loss(cfg: DistillConfig, teacher, V: int):
    alpha = cfg.ce_weight

    def loss_fn(model, b):
        mask = b["mask"]  # (B, T): position t predicts ids[t + 1]
        s = model(b["ids"], logits_mask=mask)  # (K, V)
        on_policy = "topk_idx" not in b
        ce = None if on_policy else F.cross_entropy(s.float(), b["ids"][:, 1:][mask[:, :-1]])
        if alpha == 1.0:
            return ce, {"ce": ce.detach()}
        if on_policy:
            with torch.no_grad():
                t = teacher(b["ids"], logits_mask=mask)
        else:
            t = dense_teacher(b["topk_idx"][mask], b["topk_logp"][mask], V)
        kd = divergence(s, t, cfg.loss, cfg.temperature, cfg.beta)
        if on_policy:  # no data labels: the student's own tokens
            return kd, {"kd": kd.detach(), "on_policy": 1.0}
        return (1 - alpha) * kd + alpha * ce, {"kd": kd.detach(), "ce": ce.detach(), "on_policy": 0.0}

    return loss_fn


def window_batch(cache: dict, rows: torch.Tensor) -> dict[str, torch.Tensor]:
    """Data windows as a batch: ids (B, T + 1), every position but the last scored."""
    ids = cache["windows"][rows]
    mask = torch.ones(ids.shape, dtype=torch.bool)
    mask[:, -1] = False
    pad = torch.zeros(ids.shape[0], 1, cache["idx"].shape[-1], dtype=cache["idx"].dtype)
    return {"ids": ids, "mask": mask, "topk_idx": torch.cat([cache["idx"][rows], pad], 1),
            "topk_logp": torch.cat([cache["logp"][rows], pad.float()], 1)}


def policy_batch(model, tok, cfg: DistillConfig, prompts: torch.Tensor, seed: int) -> dict[str, torch.Tensor]:
    """The student's continuations of data prompts (prompt i seeded seed + i): ids, and the
    mask of the positions that predict a sampled token."""
    from ember.infer.sampling import SamplingParams
    from ember.train.kit import batch_completions, generate

    plist = prompts.tolist()
    params = [SamplingParams(temperature=cfg.sample_temperature, max_tokens=cfg.max_new_tokens, seed=seed + i,
                             ignore_eos=True) for i in range(len(plist))]
    outs = generate(model, tok, plist, params)
    comps = [list(o.token_ids)[: cfg.max_new_tokens] or [pad_id(tok)] for o in outs]
    ids, mask = batch_completions(plist, comps, pad_id(tok))
    return {"ids": ids, "mask": mask}


def make_evaluate(cache: dict, val_rows: torch.Tensor, V: int, device):
    """val_loss (CE on data), val_ppl, val_kl (forward KL to the cached teacher) and
    val_top1 (the student's argmax is the teacher's)."""

    @torch.no_grad()
    def evaluate(model) -> dict:
        sums, n = {"val_loss": 0.0, "val_kl": 0.0, "val_top1": 0.0}, 0
        for b in split_rows(window_batch(cache, val_rows), 4, device):
            mask = b["mask"]
            s = model(b["ids"], logits_mask=mask).float()
            t = dense_teacher(b["topk_idx"][mask], b["topk_logp"][mask], V)
            k = len(s)
            sums["val_loss"] += F.cross_entropy(s, b["ids"][:, 1:][mask[:, :-1]]).item() * k
            sums["val_kl"] += divergence(s, t, "fkl").item() * k
            sums["val_top1"] += top1_agreement(s, t) * k
            n += k
        out = {key: v / n for key, v in sums.items()}
        return out

    return evaluate


def build_distill(cfg: DistillConfig) -> Trainer:
    import ember
    from ember.train.kit.objectives import step_generator

    info = init_distributed(cfg.train.device)
    prepare_run_dir(cfg.train, info)  # the teacher cache is written into out
    teacher, tok = ember.load(cfg.teacher)
    teacher.requires_grad_(False)
    teacher = teacher.to(info.device).eval()
    V = teacher.config.vocab_size
    if tok.vocab_size > V:
        raise ValueError(f"teacher {cfg.teacher}: its tokenizer has {tok.vocab_size} tokens, its model {V}")
    student = build_student(cfg, teacher)
    if cfg.seq_len > student.config.max_seq_len:
        raise ValueError(f"seq_len {cfg.seq_len} exceeds the student's max_seq_len {student.config.max_seq_len}")
    windows = token_windows(tok, cfg)
    cache = load_or_build_cache(cfg, teacher, windows, info.device)
    n_train = len(windows) - cfg.n_val
    val_rows = torch.arange(n_train, len(windows))
    per_rank = cfg.train.batch_size // info.world_size
    n_params = sum(p.numel() for p in student.parameters())
    print(f"distill: {cfg.teacher} → {cfg.student} ({n_params:,} parameters), {n_train} windows of {cfg.seq_len} "
          f"tokens, loss {cfg.loss if cfg.ce_weight < 1 else 'ce only'}, α {cfg.ce_weight}, λ {cfg.on_policy}",
          file=sys.stderr)
    run: dict = {}

    def batches(step: int) -> dict:
        g = step_generator(cfg.train.seed, step, info.rank)
        on_policy = bool(torch.rand(1, generator=g) < cfg.on_policy)
        rows = torch.randint(0, n_train, (per_rank,), generator=g)
        if on_policy:
            prompts = cache["windows"][rows, : cfg.prompt_len]
            b = policy_batch(run["trainer"].plain, tok, cfg, prompts, seed=cfg.train.seed * 100_003 + step * 1009)
        else:
            b = window_batch(cache, rows)
        return {k: v.to(info.device) for k, v in b.items()}

    run_cfg = {"distill": dataclasses.asdict(cfg), "model": student.config.to_dict()}
    trainer = Trainer(student, cfg.train, cfg.optim, make_loss(cfg, teacher, V), batches, run_cfg,
                      eval_fn=make_evaluate(cache, val_rows, V, info.device),
                      tokens_per_step=cfg.train.batch_size * cfg.seq_len, info=info)
    run["trainer"], trainer.tokenizer = trainer, tok
    return trainer


def main(cfg: DistillConfig) -> dict:
    """Train; write out/model (an HF folder with the tokenizer) and out/summary.json with the
    held-out metrics before and after."""
    from ember.core.io import atomic_write_json
    from ember.model.convert.hf import save_hf
    from ember.tokenizer.hf_export import save_hf_tokenizer

    trainer = build_distill(cfg)
    before = trainer.evaluate()
    print(f"before: {before}", file=sys.stderr)
    summary = trainer.fit()
    summary["before"] = before
    summary["after"] = {k: summary[k] for k in before if k in summary}
    if trainer.info.is_main:
        out = Path(cfg.train.out) / "model"
        summary["model"] = str(save_hf(trainer.plain, out))
        trainer.tokenizer.save(out)
        save_hf_tokenizer(trainer.tokenizer, out)
        atomic_write_json(Path(cfg.train.out) / "summary.json", summary)
    return summary
