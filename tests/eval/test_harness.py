"""The harness without a model: task files, templates, few-shot prompts, tokenization of
requests, rolling windows, metrics and extraction, against lm-eval's definitions."""

import json
import math
import random

import pytest

from ember.eval.harness import load_task
from ember.eval.harness.extract import build_pipeline, regex_extract
from ember.eval.harness.metrics import exact_match, mean_and_stderr, multiple_choice, rolling
from ember.eval.harness.prompts import encode_pair, fewshot_context, rolling_windows, truncate
from ember.eval.harness.run import save_results
from ember.tokenizer import Tokenizer

MC_YAML = """task: toy
dataset_path: json
dataset_kwargs:
  data_files:
    test: docs.jsonl
test_split: test
fewshot_split: test
output_type: multiple_choice
doc_to_text: "Q: {{q}}\\nA:"
doc_to_choice: "{{choices}}"
doc_to_target: gold
"""


def write_task(folder, yaml_text=MC_YAML, docs=None, name="task.yaml"):
    docs = docs if docs is not None else [{"q": f"q{i}", "choices": ["x", "yy", "zzz"], "gold": i % 3} for i in range(12)]
    (folder / "docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (folder / name).write_text(yaml_text)
    return folder / name


# ---- task files -------------------------------------------------------------------------


def test_bundled_tasks_load_and_are_sound():
    cs = load_task("commonsense")
    docs = cs.eval_docs()
    assert len(docs) >= 100
    for d in docs + cs.docs("dev"):
        assert len(d["choices"]) == 4 and len(set(d["choices"])) == 4 and 0 <= d["answer"] < 4
    assert len({d["question"] for d in docs}) == len(docs)
    assert sorted({d["answer"] for d in docs}) == [0, 1, 2, 3]  # the right answer is not always in one place
    ops = {"+": int.__add__, "-": int.__sub__, "*": int.__mul__}
    for d in load_task("arithmetic").eval_docs():
        assert d["answer"] == str(ops[d["op"]](d["a"], d["b"])) and d["question"] == f"What is {d['a']} {d['op']} {d['b']}?"
    assert len(load_task("pydoc").eval_docs()) >= 30
    text = "".join(d["text"] for d in load_task("heldout").eval_docs())
    assert 5000 <= len(text.encode()) <= 10000


def test_unsupported_key_is_named_with_its_line(tmp_path):
    path = write_task(tmp_path, MC_YAML + "process_results: !!str utils.process\n")
    with pytest.raises(ValueError, match=r"unsupported key 'process_results' at line 12"):
        load_task(str(path))


def test_function_tag_and_yaml_syntax_errors_name_the_line(tmp_path):
    path = write_task(tmp_path, MC_YAML.replace("doc_to_target: gold", "doc_to_target: !function utils.gold"))
    with pytest.raises(ValueError, match=r"task.yaml line 11"):
        load_task(str(path))
    path = write_task(tmp_path, MC_YAML + "metric_list: [\n")
    with pytest.raises(ValueError, match=r"task.yaml line \d+"):
        load_task(str(path))


def test_bad_template_names_key_and_line(tmp_path):
    path = write_task(tmp_path, MC_YAML.replace('"Q: {{q}}\\nA:"', '"Q: {{q}\\nA:"'))
    with pytest.raises(ValueError, match=r"doc_to_text \(task.yaml line 9\): bad template"):
        load_task(str(path))


def test_missing_field_is_named_at_render(tmp_path):
    task = load_task(str(write_task(tmp_path, MC_YAML.replace("{{q}}", "{{question}}"))))
    with pytest.raises(ValueError, match=r"doc_to_text \(task.yaml line 9\): 'question' is undefined \(document fields: q, choices, gold\)"):
        fewshot_context(task, task.eval_docs()[0], 0, random.Random(0))


def test_template_sandbox_refuses_attribute_escape(tmp_path):
    task = load_task(str(write_task(tmp_path, MC_YAML.replace("{{q}}", "{{ q.__class__.__mro__ }}"))))
    with pytest.raises(Exception, match="unsafe|not safely|access"):
        fewshot_context(task, task.eval_docs()[0], 0, random.Random(0))


def test_missing_keys_and_bad_values(tmp_path):
    with pytest.raises(ValueError, match="missing key 'output_type'"):
        load_task(str(write_task(tmp_path, MC_YAML.replace("output_type: multiple_choice\n", ""))))
    with pytest.raises(ValueError, match="'loglikelihood' is not one of"):
        load_task(str(write_task(tmp_path, MC_YAML.replace("output_type: multiple_choice", "output_type: loglikelihood"))))
    with pytest.raises(ValueError, match="metric 'f1' is not one of acc"):
        load_task(str(write_task(tmp_path, MC_YAML + "metric_list:\n  - metric: f1\n")))
    with pytest.raises(ValueError, match="no split 'train'"):
        load_task(str(write_task(tmp_path, MC_YAML.replace("fewshot_split: test", "fewshot_split: train"))))
    with pytest.raises(ValueError, match="only local JSONL"):
        load_task(str(write_task(tmp_path, MC_YAML.replace("dataset_path: json", "dataset_path: hellaswag"))))
    with pytest.raises(ValueError, match="unknown task 'nope'.*commonsense"):
        load_task("nope")


def test_jsonl_errors_name_file_and_line(tmp_path):
    path = write_task(tmp_path)
    (tmp_path / "docs.jsonl").write_text('{"q": "a", "choices": ["x"], "gold": 0}\n{oops\n')
    with pytest.raises(ValueError, match=r"docs.jsonl line 2: not JSON"):
        load_task(str(path))


# ---- prompts ----------------------------------------------------------------------------


def lm_eval_context(docs, doc, k, rnd, same_split=True):
    """lm-eval's ContextSampler.get_context, as its source reads, for this task shape."""
    fewshotex = rnd.sample(docs, k + 1 if same_split else k)
    selected = [x for x in fewshotex if x != doc][:k]
    out = ""
    for d in selected:
        out += f"Q: {d['q']}\nA:" + " " + d["choices"][d["gold"]] + "\n\n"
    return out + f"Q: {doc['q']}\nA:"


def test_fewshot_prompts_match_lm_eval_sampling(tmp_path):
    task = load_task(str(write_task(tmp_path)))
    docs = task.eval_docs()
    ours, ref = random.Random(1234), random.Random(1234)
    for doc in docs:  # one generator across the documents, in order
        assert fewshot_context(task, doc, 3, ours) == lm_eval_context(docs, doc, 3, ref)
    rnd = random.Random(1234)
    for doc in docs:
        demos = fewshot_context(task, doc, 11, rnd).split("\n\n")[:-1]
        assert len(demos) == 11 and f"Q: {doc['q']}\n" not in [d[: len(doc["q"]) + 4] for d in demos]


def test_fewshot_from_another_split_draws_exactly_k(tmp_path):
    yaml_text = MC_YAML.replace("test: docs.jsonl", "test: docs.jsonl\n    dev: docs.jsonl").replace(
        "fewshot_split: test", "fewshot_split: dev")
    task = load_task(str(write_task(tmp_path, yaml_text)))
    docs = task.eval_docs()
    ours, ref = random.Random(1234), random.Random(1234)
    for doc in docs:
        assert fewshot_context(task, doc, 2, ours) == lm_eval_context(docs, doc, 2, ref, same_split=False)


def test_encode_pair_moves_trailing_space():
    tok = Tokenizer(merges=[])  # bytes
    assert encode_pair(tok, "A: ", "b", prefix_id=7) == ([65, 58], [32, 98])
    assert encode_pair(tok, "", "b", prefix_id=7) == ([7], [98])
    assert truncate(list(range(10)), [10, 11], max_length=5) == ([6, 7, 8, 9], [10, 11])


@pytest.mark.parametrize("n,max_length,context_len", [(1, 4, 1), (10, 4, 1), (17, 5, 1), (17, 5, 3), (40, 8, 8)])
def test_rolling_windows_predict_each_token_once(n, max_length, context_len):
    ids = list(range(100, 100 + n))
    windows = rolling_windows(ids, prefix_id=1, max_length=max_length, context_len=context_len)
    assert [t for _, pred in windows for t in pred] == ids
    assert windows[0][0] == [1]
    for ctx, pred in windows:
        assert len(ctx) + len(pred) - 1 <= max_length  # tokens fed
        full = [1, *ids]
        start = full.index(pred[0]) if ctx != [1] else 1
        assert full[start - len(ctx) : start] == ctx  # the context is the text just before
    if n > max_length and context_len > 1:
        assert all(len(ctx) >= context_len for ctx, _ in windows[1:])


# ---- metrics and extraction -------------------------------------------------------------


def test_multiple_choice_metrics_by_characters_and_bytes():
    # ll/chars: -2/1 = -2, -3/6 = -0.5 → acc picks 0, acc_norm picks 1
    assert multiple_choice([-2.0, -3.0], ["a", "bbbbbb"], gold=1) == {"acc": 0.0, "acc_norm": 1.0, "acc_bytes": 1.0}
    # "é" is 1 character but 2 bytes: -1.5/1 vs -1.0/1 by characters; -1.5/2 vs -1.0/1 by bytes
    out = multiple_choice([-1.5, -1.0], ["é", "e"], gold=0, greedy=[True, False])
    assert out == {"acc": 0.0, "acc_norm": 0.0, "acc_bytes": 1.0, "exact_match": 1.0}
    assert multiple_choice([-1.0, -1.0], ["a", "b"], gold=0)["acc"] == 1.0  # ties: the first, as np.argmax


def test_exact_match_options():
    assert exact_match("Paris", "Paris") == 1.0
    assert exact_match("paris!", "Paris") == 0.0
    assert exact_match("paris!", "Paris", ignore_case=True, ignore_punctuation=True) == 1.0
    assert exact_match("The answer: 4", "4", regexes_to_ignore=["The answer: "]) == 1.0


def test_rolling_metrics_formulas():
    out = rolling([(-10.0, 4, 20), (-6.0, 2, 12)])
    assert math.isclose(out["word_perplexity"], math.exp(16 / 6))
    assert math.isclose(out["byte_perplexity"], math.exp(16 / 32))
    assert math.isclose(out["bits_per_byte"], 16 / 32 / math.log(2))


def test_mean_and_stderr():
    mu, se = mean_and_stderr([1.0, 0.0, 0.0, 1.0, 1.0])
    assert mu == 0.6 and math.isclose(se, math.sqrt(0.3 / 5))


def test_extraction():
    assert regex_extract("first 3 then -12", r"(-?[0-9]+)", -1) == "-12"
    assert regex_extract("a=1, b=2", r"(a)=(\d)|(b)=(\d)", 1) == "b"  # a tuple match: its first non-empty group
    assert build_pipeline([{"function": "last_number"}])("3 + 4 = 7.") == "7"
    assert build_pipeline([{"function": "first_number"}])("no number") == "[invalid]"
    assert build_pipeline([{"function": "choice_letter"}, {"function": "lowercase"}])("I pick C.") == "c"
    with pytest.raises(ValueError, match="unknown filter function 'majority_vote'"):
        build_pipeline([{"function": "majority_vote"}])
    with pytest.raises(ValueError, match="bad regex_pattern"):
        build_pipeline([{"function": "regex", "regex_pattern": "("}])


def test_results_are_never_overwritten(tmp_path):
    save_results({"task": "t"}, tmp_path)
    with pytest.raises(FileExistsError):
        save_results({"task": "t"}, tmp_path)
    assert json.loads((tmp_path / "results.json").read_text()) == {"task": "t"}
