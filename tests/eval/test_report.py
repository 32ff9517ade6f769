"""`ember report`: one self-contained HTML page from real tiny training runs, an evaluation
attached to one of them, a GRPO-shaped run and a scaling sweep."""

import base64
import json
import re

import pytest
from report_helpers import grpo_run, pretrain_run, results_json, scaling_sweep, tiny_shards

from ember.cli import main
from ember.eval.report import ReportConfig, report
from ember.eval.report_data import load_run


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two real pretrain runs (different lr), an eval inside the first, a GRPO run, a sweep."""
    root = tmp_path_factory.mktemp("runs")
    shards = tiny_shards(root)
    a, b = pretrain_run(root, "run-a", "3e-3", shards), pretrain_run(root, "run-b", "1e-3", shards)
    results_json(a / "eval" / "commonsense", "commonsense", 0.5)
    results_json(root / "loose", "commonsense", 0.25, model="other")
    return {"a": a, "b": b, "grpo": grpo_run(root / "grpo"), "sweep": scaling_sweep(root / "sweep"),
            "loose": root / "loose" / "results.json"}


def _images(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([^"]+)"', page)]


def test_report_of_two_real_runs_overlays_their_curves_and_compares(runs, tmp_path):
    out = tmp_path / "report.html"
    summary = report(ReportConfig(runs=[str(runs["a"]), str(runs["b"])], out=out))
    page = out.read_text()
    assert summary == {"out": str(out), "runs": 2, "figures": 1, "evals": 1, "bytes": len(page.encode())}
    imgs = _images(page)
    assert len(imgs) == 1 and imgs[0][:4] == b"\x89PNG" and len(imgs[0]) > 5000
    recs_a = [json.loads(line) for line in (runs["a"] / "metrics.jsonl").read_text().splitlines()]
    comparison = page.split("<h2>Comparison</h2>")[1].split("</table>")[0]
    assert "<td>run-a</td><td class=num>6</td>" in comparison and "<td>run-b</td>" in comparison
    assert f"{recs_a[-1]['val_loss']:.4g}" in comparison  # the last validation loss
    assert "commonsense: acc" in comparison and "<td class=num>0.5</td>" in comparison
    config = page.split("<h2>Configuration</h2>")[1]
    assert re.search(r"<tr class=diff><td>optim\.lr</td><td>0\.003</td><td>0\.001</td></tr>", config)
    assert "<tr><td>arch</td><td>mini-llama</td><td>mini-llama</td></tr>" in config  # same: not marked
    assert "http://" not in page.replace("http://www.w3.org", "") and "<script" not in page  # nothing loads


def test_report_shows_evals_rl_fits_and_scaling(runs, tmp_path):
    out = tmp_path / "all.html"
    summary = report(ReportConfig(runs=[str(runs[k]) for k in ("a", "grpo", "sweep", "loose")], out=out))
    page = out.read_text()
    assert summary["figures"] == 3 and summary["evals"] == 2 and len(_images(page)) == 3
    evals = page.split("<h2>Evaluations</h2>")[1]
    assert "<h3>commonsense</h3>" in evals and "0.5 ± 0.1" in evals and "0.25 ± 0.1" in evals
    assert "Question 0 &lt;i&gt;?&lt;/i&gt;" in evals and "-1.5  yes" in evals  # items, choices with scores
    rl = page.split("<h2>RL reward</h2>")[1].split("<h2>")[0]
    assert "<td>grpo</td><td class=num>24</td>" in rl and "A (asymptote)" in rl
    assert "1 metrics line(s) skipped" in page  # the GRPO file's last line was cut short
    scaling = page.split("<h2>Scaling law: sweep</h2>")[1].split("<h2>")[0]
    assert "<td>held</td>" in scaling and "<td class=num>0.34</td>" in scaling and "n100000-d1000000" in scaling


def test_every_text_from_a_run_is_escaped(runs, tmp_path):
    evil = tmp_path / "<script>alert(1)<"
    results_json(evil, "<img src=x onerror=alert(2)>", 0.5, model="</td><script>alert(3)</script>")
    (evil / "config.json").write_text(json.dumps({"name": "<script>alert(4)</script>"}))
    out = tmp_path / "evil.html"
    report(ReportConfig(runs=[str(evil)], out=out, title="<b>t</b>"))
    page = out.read_text()
    assert "<script" not in page and "<img src=x" not in page and "<b>t</b>" not in page
    assert "&lt;script&gt;alert(4)&lt;/script&gt;" in page and "&lt;b&gt;t&lt;/b&gt;" in page


def test_an_existing_page_is_kept_without_overwrite(runs, tmp_path):
    out = tmp_path / "r.html"
    out.write_text("keep me")
    with pytest.raises(FileExistsError, match="--overwrite"):
        report(ReportConfig(runs=[str(runs["a"])], out=out))
    assert out.read_text() == "keep me"
    report(ReportConfig(runs=[str(runs["a"])], out=out, overwrite=True))
    assert out.read_text().startswith("<!DOCTYPE html>")


@pytest.mark.parametrize("case, error, match", [
    ("missing", FileNotFoundError, "no-such-run"),
    ("empty", ValueError, "nothing to report"),
    ("bad_json", ValueError, r"config\.json: not valid JSON"),
    ("bad_results", ValueError, r"metrics\['acc'\] is 'high', not a number"),
    ("other_file", ValueError, "give a run folder"),
])
def test_bad_run_folders_are_named(tmp_path, case, error, match):
    path = tmp_path / ("no-such-run" if case == "missing" else case)
    if case == "bad_json":
        path.mkdir()
        (path / "config.json").write_text("{oops")
    elif case == "bad_results":
        (path / "eval").mkdir(parents=True)
        (path / "eval" / "results.json").write_text(json.dumps({"task": "t", "metrics": {"acc": "high"}}))
    elif case == "other_file":
        path = tmp_path / "notes.txt"
        path.write_text("x")
    elif case == "empty":
        path.mkdir()
    with pytest.raises(error, match=match):
        load_run(path)


def test_cli_takes_run_folders_as_bare_words(runs, tmp_path, capsys):
    out = tmp_path / "sub" / "cli.html"
    assert main(["report", str(runs["a"]), str(runs["b"]), "--out", str(out)]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["runs"] == 2
    assert main(["report", str(runs["a"]), "--out", str(out)]) == 2  # exists: refused, one line
    assert "--overwrite" in capsys.readouterr().err
    assert main(["report", str(runs["a"]), "--out", str(out), "--overwrite"]) == 0
    assert main(["report", "--out", str(tmp_path / "x.html")]) == 2
    assert main(["report", str(runs["a"]), "--out", str(tmp_path)]) == 2  # a folder, not a file
    assert "is a folder" in capsys.readouterr().err
