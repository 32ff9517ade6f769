"""End to end: the web chat page served by `ember serve`, driven in headless Chromium.

A tiny random model wearing SmolLM2's tokenizer serves the page; selenium types a message,
sends it, and waits for the streamed reply, its stats, and both turns in the history.
Selenium only drives Debian's chromium + chromedriver (never selenium-manager, which would
try to download a browser); without them the test skips.
"""

from pathlib import Path

import pytest
from infer_helpers import serve_tiny

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")

pytestmark = pytest.mark.skipif(
    not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
    reason="needs Debian chromium and chromium-driver (apt-get install chromium chromium-driver)",
)


@pytest.fixture(scope="module")
def server_url(smollm2_tokenizer):
    """`ember serve`'s app on a free port, in a thread, over a tiny random model."""
    live = serve_tiny(smollm2_tokenizer, max_batch_size=4)
    yield live.url
    live.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", f"--user-data-dir={tmp_path_factory.mktemp('chromium')}",
    ):
        opts.add_argument(flag)
    # An explicit driver path: selenium-manager is never asked to find or fetch one.
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)
    driver.set_page_load_timeout(10)
    yield driver
    driver.quit()


def test_chat_streams_a_reply_and_keeps_history(server_url, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server_url + "/")
    wait = WebDriverWait(browser, 10, poll_frequency=0.05)
    wait.until(lambda d: d.find_element(By.ID, "model").text == "tiny-smollm2")

    for field, value in (("temperature", "0"), ("max-tokens", "24")):
        el = browser.find_element(By.ID, field)
        el.clear()
        el.send_keys(value)
    browser.find_element(By.ID, "system").send_keys("You are terse.")
    browser.find_element(By.ID, "input").send_keys("Hello <b>there</b>")
    browser.find_element(By.ID, "send").click()

    wait.until(lambda d: d.find_element(By.ID, "messages").get_attribute("data-state") == "idle"
               and d.find_element(By.ID, "stats").text)
    assert browser.find_element(By.ID, "error").text == ""
    stats = browser.find_element(By.ID, "stats")
    assert "tok/s" in stats.text and "TTFT" in stats.text, stats.text
    assert float(stats.get_attribute("data-tok-s")) > 0

    reply = browser.find_element(By.CSS_SELECTOR, ".msg.assistant")
    text = reply.find_element(By.CSS_SELECTOR, ".text").get_attribute("textContent")
    assert text
    assert int(reply.get_attribute("data-chunks")) > 1, "the reply arrived in one piece, not streamed"

    history = browser.execute_script("return window.emberChat.history")
    assert [m["role"] for m in history] == ["user", "assistant"]
    assert history[0]["content"] == "Hello <b>there</b>" and history[1]["content"] == text
    assert browser.find_element(By.ID, "messages").get_attribute("data-turns") == "2"
    assert not browser.find_elements(By.CSS_SELECTOR, ".msg b"), "message text was parsed as HTML"

    # Clear empties the conversation.
    browser.find_element(By.ID, "clear").click()
    assert browser.execute_script("return window.emberChat.history.length") == 0
    assert not browser.find_elements(By.CSS_SELECTOR, ".msg")


def test_server_error_is_shown(server_url, browser):
    """A request the server rejects (max_tokens past the context) shows its error message."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server_url + "/")
    wait = WebDriverWait(browser, 10, poll_frequency=0.05)
    wait.until(lambda d: d.find_element(By.ID, "model").text == "tiny-smollm2")
    el = browser.find_element(By.ID, "max-tokens")
    el.clear()
    el.send_keys("100000")
    browser.find_element(By.ID, "input").send_keys("Hi")
    browser.find_element(By.ID, "send").click()
    wait.until(lambda d: d.find_element(By.ID, "error").text)
    assert "max_tokens" in browser.find_element(By.ID, "error").text
    assert browser.execute_script("return window.emberChat.history.length") == 0

