"""Distillation: the divergences on hand-computed distributions, τ² scaling, the top-k
teacher cache, and the `ember distill` recipe on a tiny teacher."""

import json
import math

import pytest
import torch

from ember.train.kit.distill import divergence, generalized_jsd, top1_agreement

T_PROBS, S_PROBS = torch.tensor([[0.5, 0.5]]), torch.tensor([[0.9, 0.1]])
T, S = T_PROBS.log(), S_PROBS.log()  # logits whose softmax is the probabilities


def test_forward_kl_by_hand():
    # KL(T‖S) = .5 ln(.5/.9) + .5 ln(.5/.1)
    expected = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    assert divergence(S, T, "fkl").item() == pytest.approx(expected, abs=1e-6)


def test_reverse_kl_by_hand():
    # KL(S‖T) = .9 ln(.9/.5) + .1 ln(.1/.5)
    expected = 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)
    assert divergence(S, T, "rkl").item() == pytest.approx(expected, abs=1e-6)


def test_jsd_by_hand():
    # β = 0.3: M = .3 T + .7 S = [.78, .22]; JSD = .3 KL(T‖M) + .7 KL(S‖M)
    m = [0.3 * 0.5 + 0.7 * 0.9, 0.3 * 0.5 + 0.7 * 0.1]
    kl_t = sum(p * math.log(p / q) for p, q in zip([0.5, 0.5], m))
    kl_s = sum(p * math.log(p / q) for p, q in zip([0.9, 0.1], m))
    assert divergence(S, T, "jsd", beta=0.3).item() == pytest.approx(0.3 * kl_t + 0.7 * kl_s, abs=1e-6)


def test_jsd_limits_are_the_two_kls():
    s, t = torch.randn(5, 7), torch.randn(5, 7)
    ls, lt = s.log_softmax(-1), t.log_softmax(-1)
    fkl, rkl = divergence(s, t, "fkl"), divergence(s, t, "rkl")
    eps = 1e-3
    assert (generalized_jsd(ls, lt, eps).mean() / eps).item() == pytest.approx(fkl.item(), rel=1e-2)
    assert (generalized_jsd(ls, lt, 1 - eps).mean() / eps).item() == pytest.approx(rkl.item(), rel=1e-2)
    assert divergence(s, t, "jsd", beta=0.0).item() == pytest.approx(fkl.item(), abs=1e-6)
    assert divergence(s, t, "jsd", beta=1.0).item() == pytest.approx(rkl.item(), abs=1e-6)
    assert divergence(s, s, "jsd", beta=0.5).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("kind", ["fkl", "rkl", "jsd"])
def test_temperature_softens_and_scales_by_tau_squared(kind):
    s, t = torch.randn(4, 6), torch.randn(4, 6)
    tau = 2.5
    raw = divergence(s / tau, t / tau, kind, temperature=1.0, beta=0.5)
    assert divergence(s, t, kind, temperature=tau, beta=0.5).item() == pytest.approx(tau**2 * raw.item(), rel=1e-5)


def test_teacher_gets_no_gradient_and_student_does():
    s, t = torch.randn(3, 5, requires_grad=True), torch.randn(3, 5, requires_grad=True)
    divergence(s, t, "jsd").backward()
    assert s.grad is not None and s.grad.abs().sum() > 0 and t.grad is None


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="unknown divergence 'kl2'"):
        divergence(S, T, "kl2")
    with pytest.raises(ValueError, match="temperature must be > 0, got 0"):
        divergence(S, T, temperature=0)
    with pytest.raises(ValueError, match=r"\(1, 2\).*\(1, 3\).*vocabularies"):
        divergence(S, torch.zeros(1, 3))
    with pytest.raises(ValueError, match="beta must be in"):
        generalized_jsd(S, T, 1.5)


def test_top1_agreement():
    assert top1_agreement(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[2.0, 0.0], [3.0, 0.0]])) == 0.5


def test_dense_teacher_keeps_top_k_and_spreads_the_rest():
    from ember.train.distill import dense_teacher

    logp = torch.randn(3, 10).log_softmax(-1)
    top = logp.topk(4, -1)
    dense = dense_teacher(top.indices, top.values, 10)
    assert torch.allclose(dense.exp().sum(-1), torch.ones(3), atol=1e-5)
    assert torch.allclose(dense.gather(1, top.indices), top.values)
    full = logp.topk(10, -1)
    assert torch.allclose(dense_teacher(full.indices, full.values, 10), logp, atol=1e-4)


def test_a_tiny_student_learns_a_tiny_teacher():
    from ember.model import ModelConfig, Transformer

    torch.manual_seed(0)
    teacher = Transformer(ModelConfig.tiny(vocab_size=32)).eval()
    student = Transformer(ModelConfig.tiny(vocab_size=32, n_layers=1, d_model=32, n_heads=2, n_kv_heads=1, d_ff=64))
    ids = torch.randint(0, 32, (8, 16))
    with torch.no_grad():
        t = teacher(ids).flatten(0, 1)
    opt = torch.optim.AdamW(student.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        loss = divergence(student(ids).flatten(0, 1), t, "jsd", temperature=2.0, beta=0.5)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0]


def _cfg(teacher, out, **kw):
    from ember.train.config import TrainConfig
    from ember.train.distill import DistillConfig

    train = TrainConfig(steps=kw.pop("steps", 8), batch_size=4, eval_every=0, sample_every=0, save_every=0,
                        out=str(out), progress=False, precision="fp32", device="cpu", log_every=1)
    fields = dict(teacher=str(teacher), student="tiny", max_chars=4000, seq_len=32, n_val=2, top_k=16, train=train)
    return DistillConfig(**{**fields, **kw})


@pytest.mark.slow  # ~30 s on a loaded 2-core machine: two short runs over a 49,152-token vocabulary
def test_distill_recipe_brings_the_student_closer_and_reuses_the_cache(tiny_chat_model, tmp_path):
    from ember.model.load import load_model
    from ember.train.distill import CACHE_FILE, main
    from ember.train.optim import OptimConfig

    optim = OptimConfig(lr=1e-2, warmup_steps=2, weight_decay=0.0)
    kd = main(_cfg(tiny_chat_model, tmp_path / "kd", optim=optim))
    assert kd["after"]["val_kl"] < 0.9 * kd["before"]["val_kl"]
    student = load_model(kd["model"])
    assert student.config.vocab_size == load_model(tiny_chat_model).config.vocab_size
    cache = str(tmp_path / "kd" / CACHE_FILE)
    ce = main(_cfg(tiny_chat_model, tmp_path / "ce", optim=optim, ce_weight=1.0, teacher_cache=cache))
    assert not (tmp_path / "ce" / CACHE_FILE).exists()  # the cache was reused, not recomputed
    assert ce["after"]["val_loss"] < ce["before"]["val_loss"]
    assert ce["before"] == kd["before"]  # same seed, same init, same held-out windows
    from safetensors.torch import load_file

    from ember.train.distill import load_or_build_cache

    windows = load_file(cache)["windows"]
    assert load_or_build_cache(_cfg(tiny_chat_model, tmp_path, teacher_cache=cache), None, windows, "cpu")["idx"].shape[-1] == 16
    with pytest.raises(ValueError, match="teacher cache .* was made for"):
        load_or_build_cache(_cfg(tiny_chat_model, tmp_path, top_k=8, teacher_cache=cache), None, windows, "cpu")


def test_on_policy_steps_score_the_students_samples(tiny_chat_model, tmp_path):
    from ember.train.distill import main

    main(_cfg(tiny_chat_model, tmp_path / "gkd", steps=2, on_policy=1.0, loss="jsd", prompt_len=8, max_new_tokens=4))
    rows = [json.loads(line) for line in (tmp_path / "gkd" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    assert [r["on_policy"] for r in steps] == [1.0, 1.0] and all(math.isfinite(r["kd"]) for r in steps)


def test_vocabulary_mismatch_is_named(tiny_chat_model, tmp_path):
    from ember.model import ModelConfig, Transformer
    from ember.model.convert.hf import save_hf
    from ember.train.distill import main

    save_hf(Transformer(ModelConfig.tiny()), tmp_path / "small-vocab")
    cfg = _cfg(tiny_chat_model, tmp_path / "run", student=str(tmp_path / "small-vocab"))
    with pytest.raises(ValueError, match="vocabulary of 256 tokens.*49152"):
        main(cfg)


@pytest.mark.parametrize("args, message", [
    (["--beta", "2"], "beta must be in [0.0, 1.0], got 2.0"),
    (["--temperature", "0"], "temperature must be > 0, got 0.0"),
    (["--ce_weight", "1", "--on_policy", "0.5"], "on_policy steps distil"),
    (["--student", "no-such-student"], "student 'no-such-student': not a preset"),
])
def test_cli_errors(args, message, capsys, tmp_path):
    from ember.cli import main

    assert main(["distill", *args, "--train.out", str(tmp_path / "r"), "--teacher", "smollm2"]) == 2
    assert message in capsys.readouterr().err
