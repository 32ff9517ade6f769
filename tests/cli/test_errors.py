"""Every user-caused error from `ember ...` is one line on stderr, `ember: error: ...`, naming
the bad value, exit code 2, no traceback; Ctrl-C exits 130 quietly; bugs keep their
traceback, and EMBER_DEBUG=1 shows it for any error."""

import errno
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import ember.cli.tokenizer as tokenizer_commands
from ember.cli import main
from ember.infer.sampling import SamplingParams, apply_top_p

sys.path.insert(0, str(Path(__file__).parents[1] / "infer"))
from infer_helpers import make_model, make_tokenizer  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny random model + byte tokenizer saved as an HF folder."""
    from ember.model.convert.hf import save_hf

    folder = tmp_path_factory.mktemp("tiny")
    save_hf(make_model(0), folder)
    make_tokenizer().save(folder)
    return str(folder)


def one_error_line(capsys, *needles: str) -> str:
    """The error is the last line on stderr, and the only one (progress lines may precede it)."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err, err
    assert [line for line in lines if "error" in line.lower()] == lines[-1:], err
    assert lines[-1].startswith("ember: error: "), err
    for needle in needles:
        assert needle in lines[-1], (needle, err)
    return lines[-1]


# ---- option values, checked at the edge ---------------------------------------------------
@pytest.mark.parametrize(
    "args, needles",
    [
        (["--temperature", "1e308"], ("temperature", "1e+308", "2.0")),
        (["--top-k", str(2**40)], ("top_k", str(2**40))),
        (["--repetition-penalty", "1e-300"], ("repetition_penalty",)),
        (["--seed", str(2**64)], ("seed", str(2**64))),
        (["--max-tokens", "0"], ("max_tokens", "0")),
        (["--threads", "-1"], ("--threads", "-1")),
        (["--threads", "0"], ("--threads", "0")),
        (["--max-seq-len", "0"], ("--max-seq-len", "0")),
    ],
)
def test_generate_bad_values_are_one_line(tiny, capsys, monkeypatch, args, needles):
    import ember

    # every one of these is caught before the model loads
    monkeypatch.setattr(ember, "load", lambda *a, **k: pytest.fail("loaded the model"))
    assert main(["generate", "--model", tiny, "--prompt", "hi", *args]) == 2
    one_error_line(capsys, *needles)


@pytest.mark.parametrize(
    "args, needles",
    [
        (["serve", "--port", "99999"], ("--port", "99999")),
        (["serve", "--port", "-1"], ("--port", "-1")),
        (["serve", "--max-batch", "0"], ("--max-batch", "0")),
        (["serve", "--ctx", "0"], ("--ctx", "0")),
        (["serve", "--max-body-bytes", "0"], ("--max-body-bytes", "0")),
        (["serve", "--threads", "-1"], ("--threads", "-1")),
        (["perplexity", "--ctx", "-5"], ("--ctx", "-5")),
        (["chat", "--temperature", "1e308"], ("temperature",)),
        (["data", "prepare", "--val-fraction", "1.5"], ("--val-fraction", "1.5")),
        (["data", "prepare", "--workers", "0"], ("--workers", "0")),
        (["eval", "tool-use", "--batch-size", "0"], ("--batch-size", "0")),
    ],
)
def test_command_bad_values_are_one_line(capsys, monkeypatch, args, needles):
    import ember

    monkeypatch.setattr(ember, "load", lambda *a, **k: pytest.fail("loaded the model"))
    assert main(args) == 2
    one_error_line(capsys, *needles)


def test_sampling_params_match_the_server_bounds():
    SamplingParams(temperature=2.0, repetition_penalty=10.0, top_k=2**31 - 1, seed=2**63 - 1)
    for bad in ({"temperature": 2.5}, {"temperature": float("inf")}, {"repetition_penalty": 0.001},
                {"repetition_penalty": 11.0}, {"top_k": 2**31}, {"seed": 2**63}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            SamplingParams(**bad)


def test_tiny_temperature_and_top_p_do_not_break_sampling():
    # the server accepts these; in float32 they round to 0 and once gave NaN draws
    assert SamplingParams(temperature=1e-300).greedy
    logits = torch.tensor([[0.5, 3.0, 1.0, -1.0]])
    assert apply_top_p(logits, 1e-300).isfinite().tolist() == [[False, True, False, False]]


# ---- files and ports ----------------------------------------------------------------------
def test_out_that_is_an_existing_file_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("afile").write_text("x")
    Path("c.txt").write_text("the cat sat on the mat\n" * 20)
    for args, flag in [
        (["tokenizer", "train", "--input", "c.txt", "--vocab-size", "260", "--out", "afile"], "--out"),
        (["data", "prepare", "--input", "c.txt", "--vocab-size", "260", "--out", "afile"], "--out"),
        (["pretrain", "--train.out", "afile"], "--train.out"),
        (["sft", "--train.out", "afile"], "--train.out"),
        (["export", "--run", "nowhere", "--out", "afile"], "--out"),
        (["tokenizer", "train", "--input", "c.txt", "--out", "afile/sub"], "--out"),
    ]:
        assert main(args) == 2, args  # before any training: no progress output either
        one_error_line(capsys, flag, "afile")


def test_out_under_proc_is_one_line(tmp_path, capsys):
    corpus = tmp_path / "c.txt"
    corpus.write_text("the cat sat on the mat\n" * 20)
    args = ["tokenizer", "train", "--input", str(corpus), "--vocab-size", "260", "--progress", "false"]
    assert main([*args, "--out", "/proc/ember-out"]) == 2
    one_error_line(capsys, "/proc/ember-out")


def test_missing_prompt_file_and_folder_as_file_are_one_line(tiny, tmp_path, capsys):
    assert main(["generate", "--model", tiny, "--prompt-file", str(tmp_path / "nope.txt")]) == 2
    one_error_line(capsys, "nope.txt")
    assert main(["generate", "--model", tiny, "--prompt-file", str(tmp_path)]) == 2
    one_error_line(capsys, str(tmp_path))


def test_safetensors_file_that_is_a_folder_is_one_line(tiny, tmp_path, capsys):
    import shutil

    folder = tmp_path / "hf"
    shutil.copytree(tiny, folder)
    (folder / "model.safetensors").unlink()
    (folder / "model.safetensors").mkdir()
    assert main(["generate", "--model", str(folder), "--prompt", "hi"]) == 2
    one_error_line(capsys, "model.safetensors")


def test_port_in_use_is_one_line_before_the_model_loads(tiny, capsys, monkeypatch):
    import ember

    monkeypatch.setattr(ember, "load", lambda *a, **k: pytest.fail("loaded the model"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert main(["serve", "--model", tiny, "--port", str(port)]) == 2
    one_error_line(capsys, f"127.0.0.1:{port}", "in use")


# ---- the entry point: every user-caused error class, bugs, debug, Ctrl-C --------------------
@pytest.mark.parametrize(
    "exc, needle",
    [
        (ValueError("vocab_size 7 is too small"), "vocab_size 7"),
        (FileNotFoundError(errno.ENOENT, "No such file or directory", "m/tokenizer.json"), "m/tokenizer.json"),
        (PermissionError(errno.EACCES, "Permission denied", "/root/x"), "/root/x: Permission denied"),
        (IsADirectoryError(errno.EISDIR, "Is a directory", "w.safetensors"), "w.safetensors"),
        (NotADirectoryError(errno.ENOTDIR, "Not a directory", "f/x"), "f/x"),
        (OSError(errno.EADDRINUSE, "Address already in use"), "Address already in use"),
        (json.JSONDecodeError("Expecting value", '{"a": }', 6), "Expecting value"),
        (UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"), "invalid start byte"),
        (ValueError("first line\nsecond line"), "first line second line"),
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"), "out of memory"),
        (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 9 GB"),
         "out of memory"),
        (MemoryError(), "out of memory"),
    ],
)
def test_user_errors_are_one_line(capsys, monkeypatch, exc, needle):
    def boom(cfg):
        raise exc

    monkeypatch.delenv("EMBER_DEBUG", raising=False)
    monkeypatch.setattr(tokenizer_commands, "tokenize", boom)
    assert main(["tokenize", "hi"]) == 2
    one_error_line(capsys, needle)


def test_bugs_keep_their_traceback_and_debug_shows_every_one(monkeypatch):
    def bug(cfg):
        raise TypeError("a bug")

    monkeypatch.setattr(tokenizer_commands, "tokenize", bug)
    with pytest.raises(TypeError):
        main(["tokenize", "hi"])
    monkeypatch.setattr(tokenizer_commands, "tokenize", lambda cfg: int("x"))
    monkeypatch.setenv("EMBER_DEBUG", "1")
    with pytest.raises(ValueError):
        main(["tokenize", "hi"])


def test_argument_errors_keep_the_parser_message(tiny, capsys):
    assert main(["generate", "--model", tiny, "--prompt", "hi", "--bogus"]) == 2
    assert "--bogus" in capsys.readouterr().err
    assert main(["generate", "--model", tiny, "--prompt", "hi", "--max-tokens", "abc"]) == 2
    assert "max_tokens" in capsys.readouterr().err
    assert main(["generate", "--model", tiny, "--prompt", "hi", "--temperature", "nan"]) == 2
    assert "temperature" in capsys.readouterr().err
    assert main(["generate", "--help"]) == 0


def test_ctrl_c_in_generate_exits_130_quietly(tiny, capsys, monkeypatch):
    from ember.infer.engine import Engine

    def interrupted(self, *a, **k):
        raise KeyboardInterrupt
        yield

    monkeypatch.setattr(Engine, "stream", interrupted)
    assert main(["generate", "--model", tiny, "--prompt", "hi"]) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip() == "ember: interrupted"


def test_ctrl_c_in_pretrain_exits_130_and_closes_the_process_group(tmp_path, capsys, monkeypatch):
    import ember.parallel
    import ember.train.pretrain

    closed = []

    def interrupted(cfg):
        raise KeyboardInterrupt

    monkeypatch.setattr(ember.train.pretrain, "main", interrupted)
    monkeypatch.setattr(ember.parallel, "destroy_distributed", lambda sync=True: closed.append(sync))
    assert main(["pretrain", "--train.out", str(tmp_path / "run")]) == 130
    assert closed == [False]  # closed, without waiting at a barrier for peers
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip() == "ember: interrupted"


def test_sigint_to_a_real_process_exits_130(tmp_path):
    """SIGINT while `python -m ember generate` decodes: exit code 130, no traceback."""
    from ember.model.convert.hf import save_hf

    save_hf(make_model(0, max_seq_len=32768), tmp_path)  # ~40 s of decoding: SIGINT lands mid-way
    make_tokenizer().save(tmp_path)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("EMBER_DEBUG", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "ember", "generate", "--model", str(tmp_path), "--prompt", "hi",
         "--max-tokens", "32000", "--ignore-eos", "--threads", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )
    try:
        proc.stdout.read(1)  # the first streamed byte: decoding has started
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err.decode()
    assert b"Traceback" not in err and err.decode().strip().endswith("ember: interrupted")


def test_chat_max_tokens_that_fill_the_context_is_one_line(tiny, capsys):
    # before: every message was refused as "too long", one turn at a time
    assert main(["chat", "--model", tiny, "--max-tokens", "300"]) == 2
    one_error_line(capsys, "max_tokens 300", "256")


def test_a_reader_that_leaves_early_is_not_an_error_message(tiny, tmp_path):
    """`ember tokenize ... | head -c 1`: exit 1, nothing on stderr (no traceback, no error)."""
    big = tmp_path / "big.txt"
    big.write_text("a" * 400_000)  # ~2 MB of output: far more than a pipe holds
    proc = subprocess.Popen(
        [sys.executable, "-m", "ember", "tokenize", "--model", tiny, "--file", str(big), "--format", "pieces"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout.read(1) == b"["
        proc.stdout.close()  # the reader leaves
        err = proc.stderr.read()
        proc.wait(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 1 and err == b"", err.decode()
