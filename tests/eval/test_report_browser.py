"""`ember report`'s page in headless Chromium: its figures render (decoded images of
non-zero size), its tables are there, the console stays clean, and the page makes no
request beyond itself. Selenium drives Debian's chromium + chromedriver only (never
selenium-manager, which would try to download a browser); without them the test skips."""

import json
from pathlib import Path

import pytest
from report_helpers import grpo_run, results_json, scaling_sweep

from ember.eval.report import ReportConfig, report

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
    reason="needs Debian chromium and chromium-driver (apt-get install chromium chromium-driver)",
)


def test_report_renders_offline_in_chromium(browser, tmp_path):
    from selenium.webdriver.common.by import By

    grpo = grpo_run(tmp_path / "grpo <b>1")
    results_json(grpo / "eval" / "t", "commonsense", 0.5, model="<script>alert(1)</script>")
    out = tmp_path / "report.html"
    report(ReportConfig(runs=[str(grpo), str(scaling_sweep(tmp_path / "sweep"))], out=out))
    browser.get_log("performance")  # drop what came before this page
    browser.get(out.as_uri())

    images = browser.find_elements(By.TAG_NAME, "img")
    assert len(images) == 3  # loss curves, RL reward, scaling law
    for img in images:
        w, h, done = browser.execute_script(
            "const i = arguments[0]; return [i.naturalWidth, i.naturalHeight, i.complete];", img)
        assert done and w > 200 and h > 100, (w, h)
        assert img.size["width"] > 0 and img.size["height"] > 0
    headings = [e.text for e in browser.find_elements(By.TAG_NAME, "h2")]
    assert headings[:3] == ["Comparison", "Loss curves", "RL reward"] and "Evaluations" in headings
    assert len(browser.find_elements(By.TAG_NAME, "table")) >= 6
    assert browser.find_elements(By.XPATH, "//td[text()='grpo <b>1']")  # the name shows as text
    assert browser.find_elements(By.XPATH, "//td[text()='<script>alert(1)</script>']")
    assert browser.find_elements(By.TAG_NAME, "script") == []

    errors = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
    assert errors == []
    requests = [json.loads(e["message"])["message"] for e in browser.get_log("performance")]
    urls = [m["params"]["request"]["url"] for m in requests if m["method"] == "Network.requestWillBeSent"]
    assert urls and all(u == out.as_uri() or u.startswith("data:") for u in urls), urls
