"""GRPO's level mix, dynamic sampling (groups without reward spread replaced) and a memory
footprint that stays flat across steps, on a random tiny Llama wearing SmolLM2's tokenizer."""

import ctypes.util
import gc
import itertools
import os

import pytest
import torch

from ember.data.arithmetic import step_rows
from ember.peft import LoraConfig
from ember.train.grpo import ROUND, GRPOConfig, build_grpo, reasoning_rows, trim_heap
from ember.train.loop import TrainConfig
from ember.train.optim import OptimConfig


def _cfg(model, out, steps: int = 1, **kw) -> GRPOConfig:
    quiet = dict(eval_every=0, sample_every=0, save_every=0, log_every=1, progress=False)
    train = TrainConfig(steps=steps, batch_size=4, out=str(out), precision="fp32", seed=3, **quiet)
    sizes = dict(group_size=2, prompts_per_step=2, max_new_tokens=4, n_eval=0)
    return GRPOConfig(model=str(model), lora=LoraConfig(rank=4), train=train,
                      optim=OptimConfig(lr=1e-2, warmup_steps=0), **sizes, **kw)


def _flat(row, text):  # every answer scores the same: no group has spread
    return 0.0


def _flat_then_alternating(n_flat: int):
    """0 for the first n_flat calls, then 0, 1, 0, 1, ...: groups scored later have spread."""
    calls = itertools.count()
    return lambda row, text: 0.0 if (i := next(calls)) < n_flat else float(i % 2)


def test_difficulty_takes_a_list_of_levels_and_names_a_bad_one():
    assert GRPOConfig(task="reasoning", difficulty=[2, 4]).levels == [2, 4]
    assert GRPOConfig(task="reasoning", difficulty=3).levels == [3]
    rows = reasoning_rows(GRPOConfig(task="reasoning", difficulty=[2, 3, 4]), 6, 0)
    assert [r["difficulty"] for r in rows] == [2, 3, 4, 2, 3, 4]
    assert len({r["expression"] for r in rows}) == 6
    with pytest.raises(ValueError, match=r"difficulty must be in 1..5 \(the generated levels\), got 6"):
        GRPOConfig(task="reasoning", difficulty=[2, 6])
    with pytest.raises(ValueError, match=r"got \[\]"):
        GRPOConfig(task="reasoning", difficulty=[])
    with pytest.raises(ValueError, match="dynamic_sampling must be >= 0, got -1"):
        GRPOConfig(dynamic_sampling=-1)


def test_single_level_rows_are_those_of_before():
    from ember.data.reasoning import problem_rows

    cfg = GRPOConfig(task="reasoning", difficulty=4)
    assert reasoning_rows(cfg, 3, 7) == problem_rows(3, 4, cfg.train.seed, 7)
    assert reasoning_rows(cfg, 3, "heldout") == problem_rows(3, 4, cfg.train.seed, "heldout")


def test_dynamic_sampling_draws_again_when_no_group_has_spread(tiny_chat_model, tmp_path):
    trainer = build_grpo(_cfg(tiny_chat_model, tmp_path, dynamic_sampling=2), reward_fns=[_flat])
    batch = trainer.batches(0)
    assert batch["ids"].shape[0] == 4  # the batch size stays prompts_per_step × group_size
    assert batch["drawn_groups"][0].item() == 6  # 2 groups in each of 3 rounds, none with spread
    assert batch["zero_std_groups"][0].item() == 1.0


def test_dynamic_sampling_keeps_the_later_groups_that_have_spread(tiny_chat_model, tmp_path):
    plain = build_grpo(_cfg(tiny_chat_model, tmp_path / "a"), reward_fns=[_flat]).batches(0)
    assert plain["drawn_groups"][0].item() == 2 and plain["zero_std_groups"][0].item() == 1.0
    # round 0's two groups (4 answers) score 0 alike; round 1's alternate 0/1
    trainer = build_grpo(_cfg(tiny_chat_model, tmp_path / "b", dynamic_sampling=1),
                         reward_fns=[_flat_then_alternating(4)])
    batch = trainer.batches(0)
    assert batch["drawn_groups"][0].item() == 4
    assert batch["zero_std_groups"][0].item() == 0.0
    assert batch["advantages"].abs().sum() > 0
    again = [step_rows(2, ["+", "-"], 2, 3, rnd * ROUND, set()) for rnd in (0, 1)]
    texts = [trainer.tokenizer.decode(batch["ids"][i].tolist()) for i in (0, 2)]
    assert [r["question"] in t for r, t in zip(again[1], texts)] == [True, True]  # round 1's questions
    assert not any(r["question"] in t for r in again[0] for t in texts)


def _live_tensor_bytes() -> tuple[int, int]:
    gc.collect()
    tensors = [o for o in gc.get_objects() if torch.is_tensor(o)]
    return len(tensors), sum(t.untyped_storage().nbytes() for t in tensors)


def test_steps_leave_no_tensors_behind(tiny_chat_model, tmp_path):
    """Rollout caches, activations and batches of a step are freed by the next one: the live
    tensors after steps 2 and 3 are the same in number and bytes."""
    trainer = build_grpo(_cfg(tiny_chat_model, tmp_path, steps=3, dynamic_sampling=1),
                         reward_fns=[_flat_then_alternating(0)])
    seen = []
    step = trainer.train_step

    def counted(i):
        out = step(i)
        seen.append(_live_tensor_bytes())
        return out

    trainer.train_step = counted
    trainer.fit()
    assert len(seen) == 3 and seen[1] == seen[2], seen


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS"))


@pytest.mark.skipif(not os.path.exists("/proc/self/status") or not ctypes.util.find_library("c"),
                    reason="needs Linux /proc and a C library")
def test_trim_heap_returns_the_freed_heap_of_many_small_tensors():
    """A step frees most of its many small tensors while a few live on: glibc keeps the pages
    (gc does not help) until malloc_trim hands them back. Here ~170 MB are freed."""
    tensors = [torch.ones(12_000) for _ in range(4000)]  # 48 KB each: heap, not mmap
    keep = tensors[9::10]  # a few survivors pin the heap's top
    del tensors
    gc.collect()
    before = _rss_mb()
    trim_heap()
    assert before - _rss_mb() > 100, (before, _rss_mb())
    assert len(keep) == 400
