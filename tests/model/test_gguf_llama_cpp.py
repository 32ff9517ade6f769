"""llama.cpp runs what `ember export --format gguf` writes: its tokenizer gives ember's ids and
its greedy tokens are ember's, for SmolLM2 (f16) and a tiny ember-trained run (f32).

Needs llama.cpp's `llama-server`, found as bench/serve.py finds it: $LLAMA_SERVER, then PATH,
then /tmp/llama.cpp-build/bin. Skipped without it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import torch

from ember.cli import main
from ember.model.load import load_model
from ember.tokenizer import load_tokenizer

pytestmark = pytest.mark.slow
N_TOKENS = 8
TEXT = "The capital of France is Paris. x = [1, 22, 333]\n\n\tüñí's"


def _binary() -> str | None:
    for cand in (os.environ.get("LLAMA_SERVER"), shutil.which("llama-server"), "/tmp/llama.cpp-build/bin/llama-server"):
        if cand and Path(cand).is_file() and os.access(cand, os.X_OK):
            return cand
    return None


@pytest.fixture(scope="module")
def llama_server():
    binary = _binary()
    if binary is None:
        pytest.skip("llama-server not found ($LLAMA_SERVER, PATH or /tmp/llama.cpp-build/bin)")
    return binary


class _Server:
    """llama-server on a free port with one GGUF, up once /health answers 200."""

    def __init__(self, binary: str, gguf: Path):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.argv = [binary, "-m", str(gguf), "-t", "2", "-c", "256", "--host", "127.0.0.1",
                     "--port", str(self.port), "--no-webui"]
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.TemporaryFile()

    def __enter__(self):
        import httpx

        self.proc = subprocess.Popen(self.argv, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"llama-server exited {self.proc.returncode}:\n{self._tail()}"
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        self.__exit__()
        raise AssertionError(f"llama-server not healthy after 120 s:\n{self._tail()}")

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def _tail(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-3000:]

    def post(self, path: str, body: dict) -> dict:
        import httpx

        r = httpx.post(self.url + path, json=body, timeout=120)
        assert r.status_code == 200, f"{path}: {r.status_code} {r.text[:500]}"
        return r.json()


def _greedy(model, ids: list[int], n: int) -> list[int]:
    out = list(ids)
    with torch.no_grad():
        for _ in range(n):
            logits = model(torch.tensor([out]))
            logits = logits if torch.is_tensor(logits) else logits.logits
            out.append(int(logits[0, -1].argmax()))
    return out[len(ids):]


def _check_agreement(binary: str, gguf: Path, prompt: str):
    tok, model = load_tokenizer(gguf), load_model(gguf)
    ids = tok.encode(prompt)
    want = _greedy(model, ids, N_TOKENS)
    with _Server(binary, gguf) as srv:
        assert srv.post("/tokenize", {"content": TEXT})["tokens"] == tok.encode(TEXT)
        got = srv.post("/completion", {"prompt": ids, "n_predict": N_TOKENS, "temperature": 0, "top_k": 1,
                                       "cache_prompt": False, "return_tokens": True})
    if "tokens" in got and got["tokens"]:
        assert got["tokens"] == want
    else:  # an older server without return_tokens: the text of the same tokens
        assert got["content"] == tok.decode(want)


def test_llama_cpp_runs_smollm2_f16(llama_server, tmp_path):
    out = tmp_path / "smollm2-f16.gguf"
    assert main(["export", "--format", "gguf", "--run", "smollm2", "--dtype", "f16", "--out", str(out)]) == 0
    _check_agreement(llama_server, out, "The capital of France is")


def test_llama_cpp_runs_a_tiny_trained_run(llama_server, tmp_path):
    from ember.data.corpus import pydoc_topics_text
    from ember.data.shards import prepare_shards
    from ember.tokenizer import train_bpe

    text = pydoc_topics_text()[:200_000]
    docs = [text[i : i + 4000] for i in range(0, len(text), 4000)]
    tok = train_bpe(docs, 512, special_tokens=["<|endoftext|>"], eos_tokens=["<|endoftext|>"], progress=False)
    prepare_shards(tmp_path / "shards", tok, texts=docs, progress=False, workers=1)
    run = tmp_path / "run"
    assert main(["pretrain", "--arch", "mini-llama", "--model.n_layers", "2", "--model.d_model", "64",
                 "--model.n_heads", "4", "--model.n_kv_heads", "2", "--model.d_ff", "128", "--data.seq_len", "32",
                 "--data.dir", str(tmp_path / "shards"), "--train.steps", "30", "--train.batch_size", "8",
                 "--train.sample_every", "0", "--train.out", str(run), "--train.progress", "false",
                 "--train.precision", "fp32", "--sample_tokens", "0"]) == 0
    assert main(["export", "--format", "gguf", "--run", str(run)]) == 0
    _check_agreement(llama_server, run / "model-f32.gguf", "The assert statement")
