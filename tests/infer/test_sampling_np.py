"""The numpy sampler of the torch-free runner against the engine's torch sampler."""

import numpy as np
import pytest
import torch

from ember.infer.params import SamplingParams
from ember.infer.sampling import Sampler, apply_min_p, apply_top_k, apply_top_p, make_generator
from ember.infer.sampling_np import NumpySampler, TorchRandom
from ember.infer.sampling_np import apply_min_p as np_min_p
from ember.infer.sampling_np import apply_top_k as np_top_k
from ember.infer.sampling_np import apply_top_p as np_top_p

V = 300
CASES = [
    SamplingParams(temperature=0),
    SamplingParams(temperature=0.7, seed=1),
    SamplingParams(temperature=1.3, top_k=20, seed=2),
    SamplingParams(temperature=0.9, top_p=0.8, seed=3),
    SamplingParams(temperature=1.0, min_p=0.05, seed=4),
    SamplingParams(temperature=0.8, top_k=50, top_p=0.9, min_p=0.02, seed=2**40 + 5),
    SamplingParams(temperature=0.8, repetition_penalty=1.3, frequency_penalty=0.5, presence_penalty=0.4, seed=6),
    SamplingParams(temperature=0, repetition_penalty=1.5),
]


@pytest.mark.parametrize("seed", [0, 7, 2**40 + 3, 2**63 - 1])
def test_random_stream_is_torchs(seed):
    g = make_generator(seed)
    r = TorchRandom(seed)
    for _ in range(10):
        assert r.uniform() == torch.rand((), generator=g, dtype=torch.float64).item()


def test_filters_keep_what_torch_keeps():
    rng = np.random.default_rng(0)
    for _ in range(20):
        x = rng.normal(size=V).astype(np.float32) * 3
        t = torch.from_numpy(x.copy())
        for ours, theirs, knob in ((np_top_k, apply_top_k, 17), (np_top_p, apply_top_p, 0.7), (np_min_p, apply_min_p, 0.1)):
            assert np.array_equal(np.isinf(ours(x, knob)), torch.isinf(theirs(t, knob)).numpy())


@pytest.mark.parametrize("params", CASES, ids=range(len(CASES)))
def test_tokens_equal_the_engine_sampler(params):
    """Same logits, same seed: the same token at every step (penalties state included)."""
    rng = np.random.default_rng(1)
    prompt = [3, 5, 5, 9]
    ours = NumpySampler(params, V, prompt)
    theirs = Sampler(1, V)
    theirs.set_row(0, params, prompt)
    for _ in range(60):
        x = (rng.normal(size=V) * 2).astype(np.float32)
        a = ours(x)
        b = int(theirs(torch.from_numpy(x.copy())[None])[0])
        assert a == b
        ours.update(a)
        theirs.update(torch.tensor([b]))
