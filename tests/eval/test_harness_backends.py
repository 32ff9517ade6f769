"""The harness end to end on a tiny random model wearing a byte-level tokenizer: shared
prefill scores as one full forward per choice does, the engine and a live `ember serve`
give the same numbers on every task type, and a backend without log-probs is refused."""

import json
import sys
from pathlib import Path

import pytest

from ember.cli import main
from ember.eval.harness import EngineBackend, OpenAIBackend, evaluate, load_task

sys.path.insert(0, str(Path(__file__).parents[1] / "infer"))
from infer_helpers import LiveServer, make_model, make_tokenizer  # noqa: E402

CTX = 128
DOCS = [{"q": f"what is {i} + {i}?", "choices": ["four", "a longer choice", "é!", str(2 * i)], "gold": i % 4,
         "answer": str(2 * i), "text": f"Document {i}. " + "Some words go here, and more of them. " * (3 + 2 * i)}
        for i in range(6)]
COMMON = """dataset_path: json
dataset_kwargs:
  data_files:
    test: docs.jsonl
test_split: test
"""
TASKS = {
    "mc": COMMON + """task: mc
output_type: multiple_choice
doc_to_text: "Q: {{q}}\\nA:"
doc_to_choice: "{{choices}}"
doc_to_target: gold
metric_list: [{metric: acc}, {metric: acc_norm}, {metric: exact_match}]
""",
    "gen": COMMON + """task: gen
output_type: generate_until
doc_to_text: "Q: {{q}}\\nA:"
doc_to_target: answer
generation_kwargs: {until: ["\\n"], max_gen_toks: 6}
filter_list:
  - name: raw
    filter: [{function: take_first}]
  - name: number
    filter: [{function: last_number}]
""",
    "roll": COMMON + """task: roll
output_type: loglikelihood_rolling
doc_to_target: "{{text}}"
""",
}


@pytest.fixture(scope="module")
def tiny():
    return make_model(0, max_seq_len=CTX), make_tokenizer()


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tasks")
    (folder / "docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    for name, text in TASKS.items():
        (folder / f"{name}.yaml").write_text(text)
    return {name: load_task(str(folder / f"{name}.yaml")) for name in TASKS}


@pytest.fixture(scope="module")
def live(tiny):
    from ember.infer import Engine
    from ember.infer.server import create_app

    model, tok = tiny
    srv = LiveServer(create_app(Engine(model, tok, max_batch_size=4, max_seq_len=CTX), "tiny"))
    yield srv
    srv.close()


def run(task, backend, **kw):
    return evaluate(task, backend, progress=False, max_length=64, **kw)


def test_shared_prefill_scores_as_full_forwards(tiny):
    model, tok = tiny
    groups = [(tok.encode("Q: one\nA:"), [tok.encode(" a"), tok.encode(" longer one"), tok.encode(" é")]),
              (tok.encode("x"), [tok.encode("y")])]
    shared = EngineBackend(model, tok).score(groups)
    naive = EngineBackend(model, tok, shared_prefill=False).score(groups)
    for a, b in zip(shared, naive):
        for (ll_a, g_a), (ll_b, g_b) in zip(a, b):
            assert ll_a == pytest.approx(ll_b, abs=1e-4) and g_a == g_b
    assert all(ll < 0 for group in shared for ll, _ in group)


def test_scoring_gives_the_training_mode_back(tiny):
    model, tok = tiny
    model.train()
    try:
        EngineBackend(model, tok).score([(tok.encode("ab"), [tok.encode("c"), tok.encode("d")])])
        assert model.training and all(m.training for m in model.modules())
    finally:
        model.eval()


@pytest.mark.parametrize("name,shots", [("mc", 0), ("mc", 2), ("gen", 1), ("roll", 0)])
def test_engine_and_server_agree(tiny, tasks, live, name, shots):
    model, tok = tiny
    engine = run(tasks[name], EngineBackend(model, tok, batch_size=4), shots=shots)
    served = run(tasks[name], OpenAIBackend(live.url, tok, batch_size=4), shots=shots)
    assert served["backend"] == live.url and engine["backend"] == "engine"
    assert engine["n"] == served["n"] == len(DOCS)
    assert engine["metrics"].keys() == served["metrics"].keys()
    for key, value in engine["metrics"].items():
        assert served["metrics"][key] == pytest.approx(value, rel=1e-5), key
    for a, b in zip(engine["items"], served["items"]):
        assert a["prompt"] == b["prompt"]
        if "loglikelihoods" in a:
            assert b["loglikelihoods"] == pytest.approx(a["loglikelihoods"], abs=1e-3)
        else:
            assert a["response"] == b["response"]


def test_rolling_windows_change_nothing_but_context(tiny, tasks):
    """Disjoint windows of 64 and sliding ones score every byte; more context per window
    can only be a different number, never a different count."""
    model, tok = tiny
    a = run(tasks["roll"], EngineBackend(model, tok))
    b = run(tasks["roll"], EngineBackend(model, tok), rolling_context=32)
    assert [it["tokens"] for it in a["items"]] == [it["tokens"] for it in b["items"]]
    assert a["items"][-1]["windows"] < b["items"][-1]["windows"]
    assert a["metrics"]["bits_per_byte"] > 0 and a["stderr"]["bits_per_byte"] is None


class ZeroServer(OpenAIBackend):
    """A server that echoes prompts with log-prob 0 everywhere (or none at all)."""

    def __init__(self, tok, none=False):
        self.tokenizer, self.max_length, self.batch_size, self.name, self.none = tok, 64, 8, "fake", none
        self.base, self.model_name = "http://fake", "m"

    def _request(self, path, body=None):
        lps = lambda p: None if self.none else {"token_logprobs": [None] + [0.0] * len(p), "top_logprobs": [None] + [{"x": 0.0}] * len(p)}  # noqa: E731
        return {"choices": [{"index": i, "text": "", "logprobs": lps(p)} for i, p in enumerate(body["prompt"])]}


def test_backend_without_logprobs_is_refused(tiny, tasks):
    _, tok = tiny
    with pytest.raises(ValueError, match="log-likelihood 0 to every choice of document 0.*refusing"):
        run(tasks["mc"], ZeroServer(tok))
    with pytest.raises(ValueError, match="returned no prompt log-probs"):
        run(tasks["mc"], ZeroServer(tok, none=True))


def test_choice_that_tokenizes_to_nothing(tiny, tmp_path):
    model, tok = tiny
    (tmp_path / "docs.jsonl").write_text(json.dumps({"q": "q", "choices": ["a", ""], "gold": 0}) + "\n")
    (tmp_path / "t.yaml").write_text(TASKS["mc"] + 'target_delimiter: ""\n')
    with pytest.raises(ValueError, match="document 0: choice '' tokenizes to nothing"):
        run(load_task(str(tmp_path / "t.yaml")), EngineBackend(model, tok))


def test_limit_and_target_errors(tiny, tasks, tmp_path):
    model, tok = tiny
    with pytest.raises(ValueError, match="limit must be >= 1, got 0"):
        run(tasks["mc"], EngineBackend(model, tok), limit=0)
    (tmp_path / "docs.jsonl").write_text(json.dumps({"q": "q", "choices": ["a", "b"], "gold": 5}) + "\n")
    (tmp_path / "t.yaml").write_text(TASKS["mc"])
    with pytest.raises(ValueError, match="document 0: target 5 is not one of its 2 choices"):
        run(load_task(str(tmp_path / "t.yaml")), EngineBackend(model, tok))


def test_cli_run_writes_results(tiny, tasks, live, tmp_path, capsys):
    from ember.model.convert.hf import save_hf

    model, tok = tiny
    folder = tmp_path / "model"
    save_hf(model, folder)
    tok.save(folder)
    args = ["eval", "run", "--task", str(tasks["mc"].path), "--model", str(folder), "--limit", "3",
            "--shots", "1", "--out", str(tmp_path / "out"), "--json"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert summary["n"] == saved["n"] == 3 and saved["shots"] == 1
    assert set(saved) >= {"task", "model", "backend", "shots", "metrics", "stderr", "n", "seconds", "items", "config"}
    assert set(saved["items"][0]) >= {"doc", "prompt", "target", "loglikelihoods", "metrics"}
    assert main(args) == 2  # never overwritten
    assert "results already there" in capsys.readouterr().err
    served = [*args[:-3], "--backend", live.url, "--out", str(tmp_path / "served"), "--json"]
    assert main(served) == 0
    remote = json.loads((tmp_path / "served" / "results.json").read_text())
    assert remote["backend"] == live.url and remote["metrics"] == pytest.approx(saved["metrics"])


@pytest.mark.parametrize("extra,message", [
    (["--limit", "0"], "--limit"),
    (["--task", "no-such-task"], "unknown task 'no-such-task'"),
])
def test_cli_bad_input_is_one_line(extra, message, capsys):
    assert main(["eval", "run", "--task", "commonsense", *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
