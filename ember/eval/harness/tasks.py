"""Task files: the subset of lm-eval's YAML task format that local data needs.

A task reads JSONL documents (`dataset_path: json`, `dataset_kwargs: {data_files: ...}`,
paths relative to the YAML file), names its splits, and says how a document becomes a
prompt and an answer (see `templates`). Every key outside SUPPORTED is an error naming the
key and its line, as is a value of the wrong kind; a key lm-eval has but ember does not
(`process_results`, `!function`, `include`, ...) is refused rather than ignored, so a
number never silently means something else.

    >>> task = load_task("commonsense")  # a bundled name, or a path to a .yaml file
    >>> task.output_type, len(task.docs("test")) >= 100
    ('multiple_choice', True)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ember.core.io import read_text_utf8

from . import metrics as M
from .templates import compile_template

BUNDLED = Path(__file__).resolve().parent.parent / "tasks"
OUTPUT_TYPES = ("multiple_choice", "generate_until", "loglikelihood_rolling")
SUPPORTED = {
    "task", "tag", "dataset_path", "dataset_name", "dataset_kwargs", "training_split", "validation_split",
    "test_split", "fewshot_split", "output_type", "doc_to_text", "doc_to_target", "doc_to_choice",
    "target_delimiter", "fewshot_delimiter", "num_fewshot", "generation_kwargs", "metric_list",
    "filter_list", "description", "metadata", "should_decontaminate", "repeats",
}
GENERATION_KEYS = {"until", "max_gen_toks", "do_sample", "temperature"}
MAX_GEN_TOKS = 256  # lm-eval's default


@dataclass
class Task:
    """One task, validated. `lines` maps each key to its line in the file (for errors)."""

    name: str
    output_type: str
    path: Path
    splits: dict[str, list[dict]]
    doc_to_text: object = None
    doc_to_target: object = None
    doc_to_choice: object = None
    test_split: str | None = None
    validation_split: str | None = None
    training_split: str | None = None
    fewshot_split: str | None = None
    target_delimiter: str = " "
    fewshot_delimiter: str = "\n\n"
    description: str = ""
    num_fewshot: int = 0
    generation_kwargs: dict = field(default_factory=dict)
    metrics: dict[str, dict] = field(default_factory=dict)  # name → its options
    filters: list[tuple[str, list[dict]]] = field(default_factory=lambda: [("none", [{"function": "take_first"}])])
    lines: dict[str, int] = field(default_factory=dict)

    def where(self, key: str) -> str:
        """'key (file.yaml line N)', for error messages."""
        line = self.lines.get(key)
        return f"{key} ({self.path.name}" + (f" line {line})" if line else ")")

    def docs(self, split: str) -> list[dict]:
        if split not in self.splits:
            raise ValueError(f"{self.path}: no split {split!r}; the data has {', '.join(self.splits)}")
        return self.splits[split]

    def eval_docs(self) -> list[dict]:
        """The test split, else the validation split (lm-eval's order)."""
        split = self.test_split or self.validation_split
        return self.docs(split)

    def fewshot_docs(self) -> tuple[list[dict], bool]:
        """(the documents demonstrations are drawn from, whether to draw one extra).

        lm-eval's rule, kept literally: the fewshot split, else training, else validation,
        else test; one extra document is drawn (and the evaluated one dropped from the
        draw) when `fewshot_split` equals `test_split` as written, both unset included."""
        split = self.fewshot_split or self.training_split or self.validation_split or self.test_split
        return self.docs(split), self.fewshot_split == self.test_split


def resolve_task_path(name_or_path: str) -> Path:
    """A bundled task name (`commonsense`) or a .yaml file → the YAML path."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml"):
        if not p.is_file():
            raise FileNotFoundError(2, "No such file or directory", str(p))
        return p
    bundled = BUNDLED / f"{name_or_path}.yaml"
    if bundled.is_file():
        return bundled
    names = sorted(q.stem for q in BUNDLED.glob("*.yaml"))
    raise ValueError(f"unknown task {name_or_path!r}: give a .yaml file or a bundled task ({', '.join(names)})")


def _read_yaml(path: Path) -> tuple[dict, dict[str, int]]:
    """The top-level mapping and each key's line; YAML errors name the file and line."""
    text = read_text_utf8(path)
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ValueError(f"{path}{at}: {problem}") from None
    if not isinstance(raw, dict) or node is None:
        raise ValueError(f"{path}: a task file is a YAML mapping (task: ..., output_type: ...)")
    lines = {k.value: k.start_mark.line + 1 for k, _ in node.value if isinstance(k, yaml.ScalarNode)}
    return raw, lines


def load_task(name_or_path: str) -> Task:
    """Read and check a task file and its data."""
    path = resolve_task_path(name_or_path)
    raw, lines = _read_yaml(path)

    def where(key):
        return f"{key} ({path.name} line {lines.get(key, '?')})"

    for key in raw:
        if key not in SUPPORTED:
            raise ValueError(f"{path}: unsupported key {key!r} at line {lines.get(key, '?')}; "
                             f"ember reads: {', '.join(sorted(SUPPORTED))}")
    for key in ("task", "output_type", "dataset_path", "dataset_kwargs"):
        if key not in raw:
            raise ValueError(f"{path}: missing key {key!r}")
    if raw["output_type"] not in OUTPUT_TYPES:
        raise ValueError(f"{where('output_type')}: {raw['output_type']!r} is not one of {', '.join(OUTPUT_TYPES)}")
    if raw["dataset_path"] != "json" or raw.get("dataset_name") is not None:
        raise ValueError(f"{where('dataset_path')}: only local JSONL is read (dataset_path: json, no dataset_name), "
                         f"got {raw['dataset_path']!r}")
    task = Task(name=str(raw["task"]), output_type=raw["output_type"], path=path,
                splits=_load_splits(path, raw["dataset_kwargs"], where("dataset_kwargs")), lines=lines)
    for key in ("test_split", "validation_split", "training_split", "fewshot_split"):
        if raw.get(key) is not None:
            setattr(task, key, str(raw[key]))
            task.docs(getattr(task, key))
    if task.test_split is None and task.validation_split is None:
        raise ValueError(f"{path}: give test_split or validation_split (the documents to evaluate)")
    _read_templates(task, raw)
    _read_options(task, raw)
    return task


def _load_splits(path: Path, kwargs, where: str) -> dict[str, list[dict]]:
    """dataset_kwargs.data_files (a path, a list, or {split: path(s)}) → {split: documents}.
    A bare path or list is the split "train", as Hugging Face `datasets` names it."""
    if not isinstance(kwargs, dict) or set(kwargs) != {"data_files"}:
        raise ValueError(f"{where}: expected {{data_files: ...}}, got {kwargs!r}")
    files = kwargs["data_files"]
    files = files if isinstance(files, dict) else {"train": files}
    splits = {}
    for split, names in files.items():
        docs = []
        for name in [names] if isinstance(names, str) else names:
            docs += _read_jsonl(path.parent / name, where)
        splits[str(split)] = _same_fields(docs)
    return splits


def _read_jsonl(file: Path, where: str) -> list[dict]:
    if not file.is_file():
        raise FileNotFoundError(2, f"No such file or directory (named by {where})", str(file))
    docs = []
    for i, line in enumerate(read_text_utf8(file).splitlines(), 1):
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{file} line {i}: not JSON ({e.msg})") from None
        if not isinstance(doc, dict):
            raise ValueError(f"{file} line {i}: each line is a JSON object, got {type(doc).__name__}")
        docs.append(doc)
    if not docs:
        raise ValueError(f"{file}: no documents")
    return docs


def _same_fields(docs: list[dict]) -> list[dict]:
    # A `datasets` table has one set of columns: a field a document lacks is None there.
    keys = list(dict.fromkeys(k for d in docs for k in d))
    return [{k: d.get(k) for k in keys} for d in docs]


def _read_templates(task: Task, raw: dict) -> None:
    defaults = {"loglikelihood_rolling": ("", "{{text}}")}
    text_default, target_default = defaults.get(task.output_type, (None, None))
    task.doc_to_text = raw.get("doc_to_text", text_default)
    task.doc_to_target = raw.get("doc_to_target", target_default)
    task.doc_to_choice = raw.get("doc_to_choice")
    need = {"multiple_choice": ("doc_to_text", "doc_to_target", "doc_to_choice"),
            "generate_until": ("doc_to_text", "doc_to_target"), "loglikelihood_rolling": ("doc_to_target",)}
    for key in need[task.output_type]:
        if getattr(task, key) is None:
            raise ValueError(f"{task.path}: output_type {task.output_type} needs {key!r}")
    for key in ("doc_to_text", "doc_to_target", "doc_to_choice", "description"):
        value = raw.get(key) if key == "description" else getattr(task, key)
        if isinstance(value, str):
            compile_template(value, task.where(key))  # a syntax error now, with its line
        elif value is not None and not isinstance(value, (int, list, dict)):
            raise ValueError(f"{task.where(key)}: expected a string, an int or a list, got {value!r}")


def _read_options(task: Task, raw: dict) -> None:
    for key in ("target_delimiter", "fewshot_delimiter", "description"):
        if key in raw:
            if not isinstance(raw[key], str):
                raise ValueError(f"{task.where(key)}: expected a string, got {raw[key]!r}")
            setattr(task, key, raw[key])
    shots = raw.get("num_fewshot", 0)
    if isinstance(shots, bool) or not isinstance(shots, int) or shots < 0:
        raise ValueError(f"{task.where('num_fewshot')}: expected an int >= 0, got {shots!r}")
    task.num_fewshot = shots
    if raw.get("repeats", 1) != 1:
        raise ValueError(f"{task.where('repeats')}: only repeats: 1 is supported")
    task.generation_kwargs = _generation_kwargs(task, raw.get("generation_kwargs"))
    task.metrics = _metric_list(task, raw.get("metric_list"))
    if "filter_list" in raw:
        task.filters = _filter_list(task, raw["filter_list"])


def _generation_kwargs(task: Task, gen) -> dict:
    """lm-eval's defaults: stop at the fewshot delimiter, greedy, 256 new tokens."""
    if gen is None:
        return {"until": [task.fewshot_delimiter], "do_sample": False, "temperature": 0.0, "max_gen_toks": MAX_GEN_TOKS}
    if not isinstance(gen, dict) or set(gen) - GENERATION_KEYS:
        bad = sorted(set(gen) - GENERATION_KEYS) if isinstance(gen, dict) else gen
        raise ValueError(f"{task.where('generation_kwargs')}: unsupported {bad!r}; ember reads "
                         f"{', '.join(sorted(GENERATION_KEYS))}")
    until = gen.get("until", [task.fewshot_delimiter])
    until = [until] if isinstance(until, str) else list(until or [])
    if not all(isinstance(s, str) and s for s in until):
        raise ValueError(f"{task.where('generation_kwargs')}: until must be non-empty strings, got {until!r}")
    out = {"until": until, "do_sample": bool(gen.get("do_sample", False)),
           "temperature": float(gen.get("temperature", 0.0)), "max_gen_toks": int(gen.get("max_gen_toks", MAX_GEN_TOKS))}
    if out["max_gen_toks"] < 1:
        raise ValueError(f"{task.where('generation_kwargs')}: max_gen_toks must be >= 1, got {out['max_gen_toks']}")
    return out


def _metric_list(task: Task, metric_list) -> dict[str, dict]:
    if metric_list is None:
        return {m: {} for m in M.DEFAULT_METRICS[task.output_type]}
    if not isinstance(metric_list, list) or not metric_list:
        raise ValueError(f"{task.where('metric_list')}: expected a list of {{metric: NAME, ...}}")
    out = {}
    for entry in metric_list:
        name = entry.get("metric") if isinstance(entry, dict) else None
        if name not in M.ALLOWED[task.output_type]:
            raise ValueError(f"{task.where('metric_list')}: metric {name!r} is not one of "
                             f"{', '.join(M.ALLOWED[task.output_type])} for {task.output_type}")
        opts = {k: v for k, v in entry.items() if k not in ("metric", "aggregation", "higher_is_better")}
        bad = set(opts) - M.METRIC_OPTIONS.get(name, set())
        if bad:
            raise ValueError(f"{task.where('metric_list')}: metric {name!r} does not take {', '.join(sorted(bad))}")
        out[name] = opts
    return out


def _filter_list(task: Task, filter_list) -> list[tuple[str, list[dict]]]:
    from .extract import build_pipeline

    if task.output_type != "generate_until":
        raise ValueError(f"{task.where('filter_list')}: filters apply to generate_until tasks only")
    if not isinstance(filter_list, list) or not filter_list:
        raise ValueError(f"{task.where('filter_list')}: expected a list of {{name: ..., filter: [...]}}")
    out = []
    for entry in filter_list:
        if not isinstance(entry, dict) or set(entry) != {"name", "filter"} or not isinstance(entry["filter"], list):
            raise ValueError(f"{task.where('filter_list')}: each entry is {{name: ..., filter: [steps]}}, got {entry!r}")
        build_pipeline(entry["filter"], task.where("filter_list"))  # check it now
        out.append((str(entry["name"]), entry["filter"]))
    return out
