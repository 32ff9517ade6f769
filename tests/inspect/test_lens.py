"""The tuned lens: identity at init (= the logit lens), lower KL than the logit lens in the
middle blocks after training, saved and loaded through safetensors."""

import pytest
import torch

from ember.inspect.lens import TunedLens, lens_kl, load_lens, save_lens, train_tuned_lens
from ember.model import ModelConfig, Transformer


@pytest.fixture(scope="module")
def model():
    """A random tiny model whose blocks write 30x more into the residual stream than at
    init, so each block moves the prediction (as a trained model's do)."""
    torch.manual_seed(0)
    m = Transformer(ModelConfig.tiny(n_layers=4, vocab_size=128)).eval()
    with torch.no_grad():
        for b in m.layers:
            b.attention.wo.weight.mul_(30)
            b.feed_forward.w2.weight.mul_(30)
    return m


def _windows(n, seed):
    return torch.randint(0, 128, (n, 16), generator=torch.Generator().manual_seed(seed))


def test_identity_lens_is_the_logit_lens(model):
    ev = _windows(2, 1)
    assert lens_kl(model, ev, [0, 1, 3]) == pytest.approx(lens_kl(model, ev, [0, 1, 3], TunedLens(64, [0, 1, 3])))
    assert lens_kl(model, ev, [3])[3] == pytest.approx(0.0, abs=1e-6)  # the last block's lens is the output


def test_tuned_lens_beats_the_logit_lens_in_the_middle(model, tmp_path):
    layers = [0, 1, 2]
    lens = train_tuned_lens(model, _windows(64, 2), layers, steps=30, batch=4, lr=1e-2, progress=False)
    ev = _windows(8, 3)  # held out
    logit, tuned = lens_kl(model, ev, layers), lens_kl(model, ev, layers, lens)
    for i in (1, 2):
        assert tuned[i] < 0.6 * logit[i], (i, logit, tuned)
    assert all(p.requires_grad for p in model.parameters())  # unfrozen again afterwards
    save_lens(lens, tmp_path / "lens.safetensors", "tiny")
    again = load_lens(tmp_path / "lens.safetensors")
    assert again.layers == layers
    assert lens_kl(model, ev, layers, again) == pytest.approx(tuned)


def test_bad_lens_files_and_layers(tmp_path):
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match="not a tuned lens"):
        load_lens(tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match="block 5"):
        TunedLens(8, [0, 1]).translate(5, torch.zeros(1, 8))


def test_tuned_lens_trains_on_a_quantized_model():
    """int4 blocks and an int8 head (the `--quant int4` path): the integer matmuls have no
    backward, so the lens trains through the dequantized head; it still lowers the KL."""
    from ember.quant import QuantConfig, apply_quant

    torch.manual_seed(0)
    m = Transformer(ModelConfig.tiny(n_layers=3, vocab_size=128)).eval()
    with torch.no_grad():
        for b in m.layers:
            b.attention.wo.weight.mul_(30)
            b.feed_forward.w2.weight.mul_(30)
    q = apply_quant(m, QuantConfig(mode="int4", group_size=32))
    assert type(q.output).__name__ != "Linear"
    lens = train_tuned_lens(q, _windows(32, 4), [0, 1], steps=20, batch=4, lr=1e-2, progress=False)
    ev = _windows(4, 5)
    logit, tuned = lens_kl(q, ev, [0, 1]), lens_kl(q, ev, [0, 1], lens)
    assert tuned[1] < logit[1], (logit, tuned)
