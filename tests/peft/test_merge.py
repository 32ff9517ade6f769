"""Model merging: each method on hand-made tensors, LoRA adapters merged as an adapter and
as a model, whole model folders, and the errors."""

import pytest
import torch

from ember.peft.merge import (
    MergeConfig,
    check_weights,
    lora_factors,
    merge,
    merge_state_dicts,
    merge_tensors,
    slerp,
    ties_delta,
    trim,
)


def test_ties_by_hand():
    base = torch.tensor([10.0, 10.0, 10.0, 10.0])
    t1, t2 = torch.tensor([1.0, -2.0, 0.5, 3.0]), torch.tensor([2.0, 1.0, -0.1, -4.0])
    # trim to the top half: t1 → [0, -2, 0, 3], t2 → [2, 0, 0, -4]; sum [2, -2, 0, -1] elects
    # signs [+, -, 0, -]; the agreeing entries' mean: [2, -2, 0, -4]
    assert trim(t1, 0.5).tolist() == [0.0, -2.0, 0.0, 3.0]
    assert ties_delta([t1, t2], [1.0, 1.0], 0.5).tolist() == [2.0, -2.0, 0.0, -4.0]
    merged = merge_tensors("ties", [base + t1, base + t2], base, density=0.5)
    assert merged.tolist() == [12.0, 8.0, 10.0, 6.0]
    # weights weigh the election and the mean: 3·t1 outweighs t2 on the last entry
    assert ties_delta([t1, t2], [3.0, 1.0], 0.5).tolist() == [2.0, -6.0 / 3.0, 0.0, 3.0]


def test_task_arithmetic_is_base_plus_scaled_task_vectors():
    torch.manual_seed(0)
    base, a, b = torch.randn(3, 4), torch.randn(3, 4), torch.randn(3, 4)
    out = merge_tensors("task_arithmetic", [a, b], base, [0.7, -0.2])
    assert torch.allclose(out, base + 0.7 * (a - base) - 0.2 * (b - base))


def test_linear_is_the_weighted_average():
    sds = {"a": {"w": torch.tensor([1.0, 3.0])}, "b": {"w": torch.tensor([3.0, 5.0])}}
    assert merge_state_dicts("linear", sds, weights=[0.25, 0.75])["w"].tolist() == [2.5, 4.5]


def test_slerp_endpoints_and_midpoint_norm():
    torch.manual_seed(0)
    a = torch.randn(64)
    b = torch.randn(64)
    b = b / b.norm() * a.norm()  # equal norms
    assert torch.allclose(slerp(a, b, 0.0), a, atol=1e-6) and torch.allclose(slerp(a, b, 1.0), b, atol=1e-6)
    mid = slerp(a, b, 0.5)
    assert mid.norm().item() == pytest.approx(a.norm().item(), rel=1e-5)  # on the sphere
    assert ((a + b) / 2).norm() < 0.9 * a.norm()  # where linear interpolation shrinks
    assert torch.allclose(mid / mid.norm(), (a + b) / (a + b).norm(), atol=1e-5)  # halfway in angle


def test_lora_factors_reproduce_a_low_rank_update():
    torch.manual_seed(0)
    delta = torch.randn(6, 3) @ torch.randn(3, 8)
    A, B = lora_factors(delta, 3)
    assert A.shape == (3, 8) and B.shape == (6, 3) and torch.allclose(B @ A, delta, atol=1e-4)
    A, B = lora_factors(torch.randn(2, 2), 4)  # a rank above the matrix's: zero-padded
    assert A.shape == (4, 2) and B.shape == (2, 4)


@pytest.mark.parametrize("method, n, weights, message", [
    ("average", 2, None, "unknown merge method 'average'"),
    ("linear", 2, [0.5, 0.7], "must sum to 1, got [0.5, 0.7] (sum 1.2)"),
    ("linear", 2, [1.0], "1 weights for 2 models"),
    ("ties", 2, [1.0, -1.0], "ties weights must be > 0"),
    ("slerp", 3, None, "exactly 2 models, got 3"),
    ("task_arithmetic", 2, [float("nan"), 1.0], "finite"),
])
def test_bad_weights_and_methods_are_named(method, n, weights, message):
    with pytest.raises(ValueError) as e:
        check_weights(method, n, weights)
    assert message in str(e.value)


def test_different_shapes_name_the_tensor():
    sds = {"a": {"w": torch.zeros(2, 3)}, "b": {"w": torch.zeros(3, 2)}}
    with pytest.raises(ValueError, match=r"tensor w: shape \(2, 3\) in a, \(3, 2\) in b"):
        merge_state_dicts("linear", sds)
    with pytest.raises(ValueError, match="needs|give the base"):
        merge_state_dicts("ties", {"a": {"w": torch.zeros(1)}, "b": {"w": torch.zeros(1)}})


# ---- folders ---------------------------------------------------------------------------------

@pytest.fixture
def tiny_base(tmp_path, smollm2_tokenizer):
    from ember.model import ModelConfig, Transformer
    from ember.model.convert.hf import save_hf

    torch.manual_seed(0)
    cfg = ModelConfig.tiny(vocab_size=smollm2_tokenizer.vocab_size, tie_embeddings=True)
    folder = save_hf(Transformer(cfg), tmp_path / "base")
    smollm2_tokenizer.save(folder)
    return folder


def _adapter(base, folder, seed, targets):
    from ember.core.io import atomic_write_json
    from ember.model.load import load_model
    from ember.peft import LoraConfig, apply_lora, save_adapter

    torch.manual_seed(seed)
    model = apply_lora(load_model(base), LoraConfig(rank=2, alpha=4.0, targets=targets))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1)
    save_adapter(model, folder, LoraConfig(rank=2, alpha=4.0, targets=targets))
    atomic_write_json(folder / "base_model.json", {"model": str(base)})
    return folder


def _weights(model, name):
    from ember.peft import merge_lora

    return dict(merge_lora(model).named_parameters())[name].detach()


def test_lora_adapters_merge_into_an_adapter_and_a_model(tiny_base, tmp_path):
    from ember.model.load import load_model
    from ember.peft import load_adapter

    a = _adapter(tiny_base, tmp_path / "a", 1, ["wq", "wv"])
    b = _adapter(tiny_base, tmp_path / "b", 2, ["wq", "w1"])
    name = "layers.0.attention.wq.weight"
    W = _weights(load_model(tiny_base), name)
    dA = _weights(load_adapter(load_model(tiny_base), a), name) - W
    dB = _weights(load_adapter(load_model(tiny_base), b), name) - W
    cfg = MergeConfig(models=[str(a), str(b)], method="task_arithmetic", weights=[1.0, 0.5], out=str(tmp_path / "ab"))
    merge(cfg)
    merged = load_adapter(load_model(tiny_base), tmp_path / "ab")  # rank 2 + 2: exact
    assert torch.allclose(_weights(merged, name), W + dA + 0.5 * dB, atol=1e-5)
    v = "layers.1.attention.wv.weight"  # only adapter a touches wv
    dv = _weights(load_adapter(load_model(tiny_base), a), v) - _weights(load_model(tiny_base), v)
    assert torch.allclose(_weights(merged, v), _weights(load_model(tiny_base), v) + dv, atol=1e-5)
    merge(MergeConfig(models=[str(a), str(b)], method="task_arithmetic", weights=[1.0, 0.5], output="model",
                      out=str(tmp_path / "ab-model")))
    full = load_model(tmp_path / "ab-model")
    assert torch.allclose(dict(full.named_parameters())[name].detach(), W + dA + 0.5 * dB, atol=1e-5)


def test_whole_models_merge_and_refuse_other_shapes(tiny_base, tmp_path, smollm2_tokenizer):
    from ember.model import ModelConfig, Transformer
    from ember.model.convert.hf import save_hf
    from ember.model.load import load_model

    torch.manual_seed(1)
    cfg = load_model(tiny_base).config
    other = save_hf(Transformer(cfg), tmp_path / "other")
    smollm2_tokenizer.save(other)
    merge(MergeConfig(models=[str(tiny_base), str(other)], method="slerp", t=0.0, out=str(tmp_path / "s")))
    got, want = load_model(tmp_path / "s").state_dict(), load_model(tiny_base).state_dict()
    assert all(torch.allclose(got[k], want[k]) for k in want)
    wide = save_hf(Transformer(ModelConfig.tiny(vocab_size=cfg.vocab_size, tie_embeddings=True, d_ff=256)),
                   tmp_path / "wide")
    with pytest.raises(ValueError, match=r"feed_forward.w1.weight: shape \(176, 64\) in .*\(256, 64\)"):
        merge(MergeConfig(models=[str(tiny_base), str(wide)], out=str(tmp_path / "bad")))
    assert not (tmp_path / "bad").exists()  # nothing half-written


def test_cli_refuses_an_existing_output_and_bad_input(tiny_base, tmp_path, capsys):
    from ember.cli import main

    (tmp_path / "taken").mkdir()
    assert main(["merge", str(tiny_base), str(tiny_base), "--out", str(tmp_path / "taken")]) == 2
    assert "exists: pass --overwrite true" in capsys.readouterr().err
    assert main(["merge", str(tiny_base), str(tiny_base), "--weights", "0.6", "0.6", "--out", str(tmp_path / "o")]) == 2
    assert "must sum to 1" in capsys.readouterr().err
    assert main(["merge", str(tiny_base), str(tiny_base), "--method", "ties", "--out", str(tmp_path / "o")]) == 2
    assert "pass --base" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert main(["merge", str(tiny_base), str(tiny_base), "--out", str(tmp_path / "file"), "--overwrite", "true"]) == 2
    assert "not a folder" in capsys.readouterr().err and (tmp_path / "file").read_text() == "x"
