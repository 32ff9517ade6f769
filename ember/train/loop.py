"""The one training loop. Pre-training, SFT, reward models, DPO, PPO and GRPO are recipes
that hand it a model, a `batches(step)` function and a `loss_fn`.

A step: lr from the schedule → for each micro-batch, forward under autocast and backward
(DDP syncs gradients only on the last) → clip → AdamW → log. Everything a step depends on
is a function of (checkpoint, step): the data (`batches(step)` is pure), the schedule
(`lr_at(step)`), and the RNG state saved with the weights. That is what makes a resumed
run repeat the uninterrupted one bit for bit on CPU.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ember.core.io import atomic_write_json
from ember.model.load import build_model
from ember.parallel import (
    DistInfo,
    all_reduce_mean,
    barrier,
    broadcast_object,
    full_optim_state_dict,
    full_state_dict,
    init_distributed,
    load_full_optim_state_dict,
    load_full_state_dict,
    no_sync,
)
from ember.parallel.pipeline import Pipeline
from ember.parallel.tensor import check_same_batch, data_parallel, parallelize
from ember.train.checkpoint import config_mismatch, rng_state, save_checkpoint, set_rng_state
from ember.train.config import TrainConfig
from ember.train.metrics import MetricsLogger, peak_flops, plot_loss_curve
from ember.train.optim import OptimConfig, build_optimizer, lr_at, set_lr, warn_long_warmup
from ember.train.run_dir import claim_run_dir, interrupted_message, prepare_run_dir

__all__ = ["TrainConfig", "Trainer", "broadcast_config", "prepare_run_dir", "resolve_precision", "split_micro"]

LossFn = Callable[[nn.Module, Any], tuple[torch.Tensor, dict]]


def split_micro(batch, micro: int) -> list:
    """Cut a batch (a tensor, or a tuple/dict of tensors sharing dim 0) into micro-batches."""
    if isinstance(batch, torch.Tensor):
        return list(batch.split(micro))
    if isinstance(batch, dict):
        parts = {k: split_micro(v, micro) for k, v in batch.items()}
        return [dict(zip(parts, vals)) for vals in zip(*parts.values())]
    return [tuple(p) for p in zip(*(split_micro(t, micro) for t in batch))]


def resolve_precision(precision: str, info: DistInfo) -> str:
    """'auto' → 'bf16' on CUDA; on CPU the faster of fp32 and bf16 matmuls (timed once, and
    rank 0's choice is shared so every process autocasts alike)."""
    if precision != "auto":
        return precision
    if info.device.type == "cuda":
        return "bf16"
    fast = peak_flops("cpu", torch.bfloat16) > 1.1 * peak_flops("cpu", torch.float32)
    return broadcast_object("bf16" if fast else "fp32", info)


class Trainer:
    """Runs `cfg.steps` optimizer steps of `loss_fn` over `batches(step)`.

    batches(step) → this process's share of the global batch for that step (pure: same step,
    same batch). loss_fn(model, micro_batch) → (mean loss, extra metrics). eval_fn(model) →
    {"val_loss": ...}; sample_fn(model) → str, shown at intervals. run_config is the resolved
    config, stored in checkpoints and compared on resume.
    """

    def __init__(
        self,
        model: nn.Module,
        cfg: TrainConfig,
        optim: OptimConfig,
        loss_fn: LossFn,
        batches: Callable[[int], Any],
        run_config: dict,
        eval_fn: Callable[[nn.Module], dict] | None = None,
        sample_fn: Callable[[nn.Module], str] | None = None,
        tokens_per_step: int | None = None,
        flops_per_token: float | None = None,
        info: DistInfo | None = None,
        save_trainable_only: bool = False,
    ):
        self.cfg, self.optim_cfg, self.run_config = cfg, optim, run_config
        self.info = info or init_distributed(cfg.device)
        self.loss_fn, self.batches, self.eval_fn, self.sample_fn = loss_fn, batches, eval_fn, sample_fn
        # tp and pp: every process reads the same rows (only the data-parallel replicas differ)
        self.micro, self.accum = cfg.micro_batches(data_parallel(self.info, cfg.parallel, cfg.tp_size)[1])
        self.tokens_per_step, self.flops_per_token = tokens_per_step, flops_per_token
        self.out = Path(cfg.out)
        self.plain = model.to(self.info.device)  # the unwrapped model: checkpoints, eval, samples
        self.model = parallelize(self.plain, self.info, cfg.parallel, cfg.tp_size, cfg.activation_checkpointing)
        # pp: every process keeps the plain model and computes one stage of it (ember.parallel.pipeline)
        self.pipeline = (Pipeline(self.plain, loss_fn, self.accum, self.info.device)
                         if cfg.parallel == "pp" and self.info.distributed else None)
        self.optimizer = build_optimizer(self.plain, optim)
        self.forward_model = torch.compile(self.model) if cfg.compile else self.model
        self.start_step, self.tokens_seen, self.history = 0, 0, []
        # for a checkpoint on Ctrl-C: (last completed step, RNG state after it), see _steps
        self._safe, self._last_saved, self._mid_update = (0, None), 0, False
        # PEFT: checkpoints hold the adapters alone (MBs, not the frozen base's GBs)
        self.save_trainable_only = save_trainable_only
        self.autocast_dtype = torch.bfloat16 if resolve_precision(cfg.precision, self.info) == "bf16" else None

    # ---- checkpoints ------------------------------------------------------------------------
    def save(self, step: int, rng: dict | None = None) -> Path | None:
        """Checkpoint the state *before* `step` runs (so resume starts at `step`). `rng`: the
        generators' state at that point, when they have moved on since (an interrupted step)."""
        if self.save_trainable_only and not self.info.distributed:
            model_sd = {k: p.detach().clone() for k, p in self.plain.named_parameters() if p.requires_grad}
        else:
            model_sd = full_state_dict(self.model, self.info)  # collective under FSDP
        optim_sd = full_optim_state_dict(self.model, self.optimizer, self.info)
        path = None
        if self.info.is_main:
            state = {"tokens": self.tokens_seen, "rng": rng or rng_state(), "config": self.run_config}
            path = save_checkpoint(self.out, step, model_sd, optim_sd, state, keep=self.cfg.keep_checkpoints)
        barrier(self.info)
        return path

    def resume(self, ckpt: dict) -> None:
        """Continue from a loaded checkpoint (`load_checkpoint`); another model config is an error."""
        path = ckpt["path"]
        saved = ckpt["state"].get("config", {})
        diff = config_mismatch(saved.get("model", {}), self.run_config.get("model", {}), "model.")
        if diff:
            raise ValueError(f"checkpoint {path} was written for another model config: " + "; ".join(diff))
        if self.save_trainable_only and not self.info.distributed:
            expected = {k for k, p in self.plain.named_parameters() if p.requires_grad}
            if set(ckpt["model"]) != expected:
                raise ValueError(f"checkpoint {path} holds other trainable tensors than this model's adapters")
            self.plain.load_state_dict(ckpt["model"], strict=False)
        else:
            load_full_state_dict(self.model, ckpt["model"], self.info)
        load_full_optim_state_dict(self.model, self.optimizer, ckpt["optimizer"], self.info)
        set_rng_state(ckpt["state"]["rng"])
        self.start_step, self.tokens_seen = ckpt["step"], int(ckpt["state"]["tokens"])

    # ---- one step -----------------------------------------------------------------------------
    def autocast(self):
        """The autocast context of the loss (a no-op in fp32): use it for anything that must
        match the loss bit for bit, such as precomputed reference log-probs."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.info.device.type, dtype=self.autocast_dtype)

    def train_step(self, step: int) -> dict:
        lr = lr_at(step, self.cfg.steps, self.optim_cfg)
        set_lr(self.optimizer, lr)
        batch = self.batches(step)
        if step == self.start_step and self.cfg.parallel in ("tp", "pp"):
            check_same_batch(batch, self.info, self.cfg.parallel)
        if self.pipeline is not None:  # forward and backward of every micro-batch through the stages
            with self.autocast():
                total, extra = self.pipeline.step(batch), {}
        else:
            total, extra = self._accumulate(step, batch)
        clip = self.optim_cfg.grad_clip if self.optim_cfg.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        self._mid_update = True  # from here the weights are no longer the previous step's
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
        return {"loss": all_reduce_mean(total, self.info), "lr": lr, "grad_norm": float(grad_norm), **extra}

    def _accumulate(self, step: int, batch) -> tuple[float, dict]:
        """Forward and backward of each micro-batch → (mean loss, mean extra metrics)."""
        micro_batches = split_micro(batch, self.micro)
        if len(micro_batches) != self.accum:
            raise ValueError(f"batches({step}) gave {len(micro_batches)} micro-batches, expected {self.accum}")
        total, extra = 0.0, {}
        for i, mb in enumerate(micro_batches):
            last = i == len(micro_batches) - 1
            # DDP/FSDP reduce gradients only in the last micro-batch's backward
            sync = contextlib.nullcontext() if last or not self.info.distributed else no_sync(self.model)
            with sync, self.autocast():
                loss, metrics = self.loss_fn(self.forward_model, mb)
            (loss / self.accum).backward()
            total += loss.item() / self.accum
            for k, v in metrics.items():
                extra[k] = extra.get(k, 0.0) + float(v) / self.accum
        return total, extra

    @torch.no_grad()
    def evaluate(self) -> dict:
        if self.eval_fn is None:
            return {}
        self.plain.eval()
        try:
            with self.autocast():
                out = self.eval_fn(self.model if self.cfg.parallel == "fsdp" else self.plain)
        finally:
            self.plain.train()
        out = {k: all_reduce_mean(v, self.info) for k, v in out.items()}
        if "val_loss" in out:
            out["val_ppl"] = math.exp(min(out["val_loss"], 50.0))
        return out

    def sample(self) -> str | None:
        # FSDP shards weights, so every rank must run the forward; otherwise rank 0 alone. Under
        # tp the engine's KV cache wants whole heads: rank 0 samples from a gathered copy.
        split = self.cfg.parallel in ("tp", "fsdp+tp") and self.info.distributed
        if self.sample_fn is None or not (self.info.is_main or self.cfg.parallel == "fsdp" or split):
            return None
        model = self.plain
        if split:
            sd = full_state_dict(self.model, self.info)  # collective
            if not self.info.is_main:
                return None
            model = build_model(self.plain.config, sd)
        model.eval()
        try:
            with torch.no_grad():
                return self.sample_fn(model)
        finally:
            self.plain.train()

    # ---- the run --------------------------------------------------------------------------------
    def fit(self) -> dict:
        """Train from step 0, or from the checkpoint to resume, holding out/'s lock throughout."""
        with contextlib.ExitStack() as stack:
            ckpt = claim_run_dir(stack, self.cfg, self.info)
            if ckpt is not None:
                self.resume(ckpt)
                if self.info.is_main:
                    print(f"resumed from step {self.start_step} ({ckpt['path']})", file=sys.stderr)
            return self._run()

    def _run(self) -> dict:
        cfg, info = self.cfg, self.info
        resumed_at = self.start_step if (cfg.resume or cfg.resume_from is not None) else None
        logger = MetricsLogger(self.out, resume_step=resumed_at) if info.is_main else None
        if info.is_main:
            atomic_write_json(self.out / "config.json", self.run_config)
            warn_long_warmup(self.optim_cfg, cfg.steps)
        if self.start_step == 0 and cfg.sample_every:
            self._show_sample(0, None)  # the untrained model, to compare later samples with
        bar = _progress(cfg, info, self.start_step)
        self.plain.train()
        try:
            last_eval = self._steps(logger, bar)
        except KeyboardInterrupt:
            if bar is not None:
                bar.close()
            self._save_on_interrupt()
            raise
        if bar is not None:
            bar.close()
        final_sample = self._show_sample(cfg.steps, None)
        summary = {"steps": cfg.steps, "tokens": self.tokens_seen, **last_eval, "sample": final_sample}
        if logger:
            summary["plot"] = str(plot_loss_curve(logger.records, self.out / "loss.png", title=str(self.out)))
            logger.close()
            atomic_write_json(self.out / "summary.json", summary)
        return summary

    def _steps(self, logger: MetricsLogger | None, bar) -> dict:
        """The optimizer steps, with logs, evals, samples and saves between them → last eval."""
        cfg, info = self.cfg, self.info
        # What a checkpoint taken on Ctrl-C may hold: the last completed step and the RNG state
        # the next step starts from. `_mid_update` covers optimizer.step → bookkeeping, where
        # the weights are already the next step's but the counters are not.
        self._last_saved, self._mid_update = self.start_step, False
        self._safe = (self.start_step, rng_state())
        peak = peak_flops(info.device.type, self.autocast_dtype or torch.float32) if self.flops_per_token else None
        # tok/s counts time inside train steps only: eval, samples and saves stay out of it
        t_window, tokens_window, last_eval = 0.0, 0, {}
        for step in range(self.start_step, cfg.steps):
            t0 = time.perf_counter()
            rec = self.train_step(step)
            t_window += time.perf_counter() - t0
            self.tokens_seen += self.tokens_per_step or 0
            tokens_window += self.tokens_per_step or 0
            done = step + 1
            self._safe, self._mid_update = (done, rng_state()), False
            if done % cfg.log_every == 0 or done == cfg.steps:
                rec["tokens"] = self.tokens_seen
                if self.tokens_per_step:
                    rec["tok_s"] = tokens_window / t_window
                    if peak:
                        rec["mfu"] = rec["tok_s"] * self.flops_per_token / peak
                t_window, tokens_window = 0.0, 0
            if (cfg.eval_every and done % cfg.eval_every == 0) or done == cfg.steps:
                last_eval = self.evaluate()
                rec.update(last_eval)
            rec["step"] = done
            if logger:
                logger.log(rec)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(_postfix(rec, last_eval), refresh=False)
            if cfg.sample_every and done % cfg.sample_every == 0 and done != cfg.steps:
                self._show_sample(done, bar)
            if (cfg.save_every and done % cfg.save_every == 0) or done == cfg.steps:
                self.save(done)
                self._last_saved = done
            self._safe = (done, rng_state())  # after eval and samples: where step `done` starts
        return last_eval

    def _save_on_interrupt(self) -> None:
        """Ctrl-C: checkpoint the last completed step when that is safe and newer than the last
        checkpoint, and say how to continue. Under torchrun the ranks stop at different points,
        so a collective save could hang: there the last regular checkpoint stands."""
        done, rng = self._safe
        saved = False
        if done > self._last_saved and not self._mid_update and not self.info.distributed:
            try:
                self.save(done, rng)
                self._last_saved, saved = done, True
            except Exception as e:  # the interrupt, not a failed save, is what the caller sees
                print(f"interrupted: could not save step {done}: {e}", file=sys.stderr)
        if not self.info.is_main:
            return
        print(interrupted_message(self.out, self._last_saved, saved), file=sys.stderr)

    def _show_sample(self, step: int, bar) -> str | None:
        text = self.sample()
        if text is not None and self.info.is_main:
            msg = f"--- sample at step {step} ---\n{text}\n---"
            (bar.write(msg, file=sys.stderr) if bar is not None else print(msg, file=sys.stderr))
        return text


def _progress(cfg: TrainConfig, info: DistInfo, start: int):
    if not (cfg.progress and info.is_main):
        return None
    from tqdm import tqdm

    return tqdm(total=cfg.steps, initial=start, desc="train", unit="step", dynamic_ncols=True, file=sys.stderr)


def _postfix(rec: dict, last_eval: dict) -> dict:
    out = {"loss": f"{rec['loss']:.3f}"}
    if "val_loss" in last_eval:
        out["val"] = f"{last_eval['val_loss']:.3f}"
    if "tok_s" in rec:
        out["tok/s"] = f"{rec['tok_s']:.0f}"
    if "mfu" in rec:
        out["mfu"] = f"{100 * rec['mfu']:.0f}%"
    return out


def broadcast_config(cfg: dict, info: DistInfo) -> dict:
    """Rank 0's resolved config on every rank (e.g. a tokenizer path rank 0 created)."""
    return broadcast_object(cfg, info)
