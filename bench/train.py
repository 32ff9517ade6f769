"""Training throughput, ember's loop beside a minimal plain-PyTorch loop, in one run (2 threads).

The nanoGPT "baby GPT" shape: 6 layers, 6 heads, d_model 384, ctx 256, batch 16, GELU MLP
4×, LayerNorm, learned positions, bias, tied embeddings; vocab --vocab (4096, ember's
default pre-training BPE size). Random token batches (seeded): throughput does not depend
on the text. Each variant runs in its own child process (its own threads and memory):
  plain   nanoGPT-style GPT written below, AdamW(fused=False), forward → cross-entropy →
          backward → clip_grad_norm_(1.0) → step → zero_grad
  ember   ember.train.loop.Trainer.train_step (the step fit() runs: lr schedule, autocast,
          lm_loss, backward, clip, AdamW, the logged loss and grad norm)
in fp32 and under bf16 autocast (and torch.compile with --compile). `--warmup` steps, then
`--steps` timed steps: tokens/s = batch·ctx·steps / time. FLOPs per token for both are
ember's flops_per_token (6·(N_nonemb + V·D) + 12·L·T·D); MFU is against a *measured*
1024² matmul rate of the same dtype on the same 2 threads, not a datasheet peak.

The two models are the same shape but not the same code: plain fuses q/k/v into one matmul
and uses exact (erf) GELU as nanoGPT does; ember has separate wq/wk/wv and GPT-2's tanh GELU
("gelu_new", needed for parity with GPT-2 checkpoints). On CPU the tanh GELU kernel costs
about 3× the erf one (≈14 vs 4.5 ms forward+backward per layer here), which is most of the
few per cent between the fp32 rows; the separate projections cost nothing measurable.

    python bench/train.py [--vocab 4096] [--steps 20] [--warmup 3] [--compile] [--repeats 1]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

THREADS = 2
N_LAYERS, N_HEADS, D_MODEL, CTX, BATCH = 6, 6, 384, 256, 16


# ---- the plain reference: nanoGPT's model.py, trimmed to what training needs ---------------
def plain_gpt(vocab: int):
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    class CausalSelfAttention(nn.Module):
        def __init__(self):
            super().__init__()
            self.c_attn = nn.Linear(D_MODEL, 3 * D_MODEL)  # q, k, v in one matmul
            self.c_proj = nn.Linear(D_MODEL, D_MODEL)

        def forward(self, x):
            B, T, D = x.shape
            q, k, v = self.c_attn(x).split(D, dim=2)
            q, k, v = (t.view(B, T, N_HEADS, D // N_HEADS).transpose(1, 2) for t in (q, k, v))  # (B, H, T, Dh)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            return self.c_proj(y.transpose(1, 2).reshape(B, T, D))

    class MLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.c_fc = nn.Linear(D_MODEL, 4 * D_MODEL)
            self.gelu = nn.GELU()  # exact erf GELU, as nanoGPT (ember: tanh, as GPT-2)
            self.c_proj = nn.Linear(4 * D_MODEL, D_MODEL)

        def forward(self, x):
            return self.c_proj(self.gelu(self.c_fc(x)))

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1, self.attn = nn.LayerNorm(D_MODEL), CausalSelfAttention()
            self.ln_2, self.mlp = nn.LayerNorm(D_MODEL), MLP()

        def forward(self, x):
            x = x + self.attn(self.ln_1(x))
            return x + self.mlp(self.ln_2(x))

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte, self.wpe = nn.Embedding(vocab, D_MODEL), nn.Embedding(CTX, D_MODEL)
            self.h = nn.ModuleList(Block() for _ in range(N_LAYERS))
            self.ln_f = nn.LayerNorm(D_MODEL)
            self.lm_head = nn.Linear(D_MODEL, vocab, bias=False)
            self.lm_head.weight = self.wte.weight  # tied
            for m in self.modules():
                if isinstance(m, (nn.Linear, nn.Embedding)):
                    nn.init.normal_(m.weight, std=0.02)

        def forward(self, idx):
            B, T = idx.shape
            x = self.wte(idx) + self.wpe(torch.arange(T, device=idx.device))  # (B, T, D)
            for block in self.h:
                x = block(x)
            return self.lm_head(self.ln_f(x))  # (B, T, V)

    return GPT()


def ember_config(vocab: int):
    from ember.model import ModelConfig

    return ModelConfig(vocab_size=vocab, n_layers=N_LAYERS, d_model=D_MODEL, n_heads=N_HEADS, d_ff=4 * D_MODEL,
                       max_seq_len=CTX, norm="layernorm", pos_emb="learned", mlp="gelu", bias=True,
                       tie_embeddings=True)


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())  # tied weights counted once


# ---- one variant, in a child process --------------------------------------------------------
def make_step_plain(vocab: int, bf16: bool, compile: bool):
    import contextlib

    import torch
    import torch.nn.functional as F

    model = plain_gpt(vocab)
    params = n_params(model)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=3e-4, betas=(0.9, 0.95), fused=False)
    fwd = torch.compile(model) if compile else model
    model.train()

    def step(x, y):
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with ctx:
            logits = fwd(x)
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    return step, params


def make_step_ember(vocab: int, bf16: bool, compile: bool, n_steps: int, batches: list, out: str):
    from ember.model import Transformer
    from ember.train.loop import TrainConfig, Trainer
    from ember.train.losses import lm_loss
    from ember.train.metrics import flops_per_token
    from ember.train.optim import OptimConfig

    cfg = ember_config(vocab)
    model = Transformer(cfg)
    tcfg = TrainConfig(steps=n_steps, batch_size=BATCH, eval_every=0, sample_every=0, save_every=0,
                       log_every=n_steps, precision="bf16" if bf16 else "fp32", compile=compile, device="cpu",
                       out=out, progress=False)
    trainer = Trainer(model, tcfg, OptimConfig(), lm_loss, batches=lambda step: batches[step], run_config={},
                      tokens_per_step=BATCH * CTX, flops_per_token=flops_per_token(cfg, CTX))
    trainer.plain.train()

    def step(i):
        return trainer.train_step(i)["loss"]

    return step, n_params(model)


def child(variant: str, vocab: int, warmup: int, steps: int) -> None:
    import torch

    torch.set_num_threads(THREADS)
    impl, prec, *rest = variant.split("-")
    bf16, compile = prec == "bf16", "compile" in rest
    g = torch.Generator().manual_seed(1337)
    batches = []
    for _ in range(warmup + steps):
        xy = torch.randint(0, vocab, (BATCH, CTX + 1), generator=g)
        batches.append((xy[:, :-1].contiguous(), xy[:, 1:].contiguous()))
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="ember-bench-train-") as out:
        if impl == "plain":
            step_fn, params = make_step_plain(vocab, bf16, compile)

            def run(i):
                return step_fn(*batches[i])
        else:
            run, params = make_step_ember(vocab, bf16, compile, warmup + steps, batches, out)
        t0 = time.perf_counter()
        for i in range(warmup):
            run(i)
        t_warm = time.perf_counter() - t0
        times, cpu0 = [], time.process_time()
        for i in range(warmup, warmup + steps):
            t = time.perf_counter()
            loss = run(i)
            times.append(time.perf_counter() - t)
        # CPU seconds this process got per wall second per thread: ≈1 on an idle machine,
        # lower when other work shares the cores (then the row is not a clean measurement)
        cpu_share = (time.process_time() - cpu0) / sum(times) / THREADS
    peak = peak_flops_best("bf16" if bf16 else "fp32")
    print("RESULT " + json.dumps({"time_s": sum(times), "step_ms_min": 1e3 * min(times), "warmup_s": t_warm,
                                  "params": params, "loss": loss, "cpu_share": cpu_share, "peak": peak}))


def peak_flops_best(precision: str) -> float:
    """The matmul rate MFU is measured against: the best of 3 calls of ember's peak_flops
    (each times a 1024² matmul for 0.3 s; it is cached, hence __wrapped__)."""
    import torch

    from ember.train.metrics import peak_flops

    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    return max(peak_flops.__wrapped__("cpu", dtype) for _ in range(3))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=20, help="timed steps per variant")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (include compile time)")
    ap.add_argument("--compile", action="store_true", help="also torch.compile variants (slow to compile)")
    ap.add_argument("--repeats", type=int, default=1, help="rounds over all variants; the best time counts")
    ap.add_argument("--variants", default=None, help="comma list, e.g. plain-fp32,ember-fp32")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.vocab, args.warmup, args.steps)
        return

    variants = ["plain-fp32", "ember-fp32", "plain-bf16", "ember-bf16"]
    if args.compile:
        variants += ["plain-fp32-compile", "ember-fp32-compile", "plain-bf16-compile", "ember-bf16-compile"]
    if args.variants:
        variants = args.variants.split(",")

    import torch

    from ember.train.metrics import flops_per_token

    fpt = flops_per_token(ember_config(args.vocab), CTX)
    load_start = os.getloadavg()
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS)}
    results: dict[str, dict] = {}
    for r in range(args.repeats):
        for v in variants:
            p = subprocess.run([sys.executable, __file__, "--child", v, "--vocab", str(args.vocab), "--steps",
                                str(args.steps), "--warmup", str(args.warmup)], capture_output=True, text=True,
                               env=env)
            line = next((ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if line is None:
                print(f"{v}: failed\n{p.stderr[-3000:]}", file=sys.stderr)
                continue
            res = json.loads(line[7:])
            if v not in results or res["time_s"] < results[v]["time_s"]:
                results[v] = res
            print(f"  {v} (round {r + 1}): {BATCH * CTX * args.steps / res['time_s']:,.0f} tok/s", file=sys.stderr)
    peaks: dict[str, float] = {}  # per precision, the best any child measured
    for v, r in results.items():
        prec = v.split("-")[1]
        peaks[prec] = max(peaks.get(prec, 0.0), r["peak"])

    counts = {v: r["params"] for v, r in results.items()}
    print("\nparameters (tied embeddings counted once): "
          + ", ".join(sorted({f"{v.split('-')[0]} {n:,}" for v, n in counts.items()})))
    assert len(set(counts.values())) <= 1, f"the two models differ in size: {counts}"

    print(f"\nTraining, {N_LAYERS} layers, {N_HEADS} heads, d_model {D_MODEL}, ctx {CTX}, batch {BATCH}, "
          f"vocab {args.vocab}, {THREADS} threads, {args.steps} timed steps after {args.warmup} warm-up"
          f"{f', best of {args.repeats}' if args.repeats > 1 else ''}; torch {torch.__version__}")
    print(f"{'variant':20s} {'tokens/s':>9s} {'GFLOP/s':>8s} {'MFU':>6s} {'ember/plain':>11s} {'min step ms':>11s} "
          f"{'warm-up s':>9s} {'last loss':>9s} {'CPU share':>9s}")
    for v, r in results.items():
        tok_s = BATCH * CTX * args.steps / r["time_s"]
        prec = v.split("-")[1]
        mfu = tok_s * fpt / peaks[prec]
        ratio = "-"
        if v.startswith("ember"):
            ref = results.get("plain" + v[len("ember"):])
            if ref:
                ratio = f"{ref['time_s'] / r['time_s']:.2f}x"
        print(f"{v:20s} {tok_s:9,.0f} {tok_s * fpt / 1e9:8.1f} {100 * mfu:5.1f}% {ratio:>11s} "
              f"{r['step_ms_min']:11.0f} {r['warmup_s']:9.1f} {r['loss']:9.3f} {100 * r['cpu_share']:8.0f}%")
    print(f"\nFLOPs/token {fpt / 1e6:.1f} M (ember flops_per_token: 6·(N_nonemb + V·D) + 12·L·T·D, both models).")
    print(f"CPU MFU is against a measured 1024² matmul rate on {THREADS} threads, not a datasheet peak: "
          + ", ".join(f"{p} {f / 1e9:.0f} GFLOP/s" for p, f in peaks.items()) + ".")
    print(f"CPU share: CPU time / (wall time · {THREADS} threads) over the timed steps; well under 100% means "
          f"other work shared the cores and that row is not clean. Load average (1, 5, 15 min) "
          f"at start {' '.join(f'{x:.2f}' for x in load_start)}, at end {' '.join(f'{x:.2f}' for x in os.getloadavg())}.")


if __name__ == "__main__":
    main()
