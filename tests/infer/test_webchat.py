"""End to end: the web chat page served by `ember serve`, driven in headless Chromium.

A tiny random model wearing SmolLM2's tokenizer serves the page; selenium types a message,
sends it, and waits for the streamed reply, its stats, and both turns in the history; clicks
a generated token for its alternatives; reloads; and renders hostile Markdown harmlessly.
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


def test_chat_streams_a_reply_and_keeps_history(server_url, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server_url + "/")
    wait = WebDriverWait(browser, 60, poll_frequency=0.05)
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
    text = reply.find_element(By.CSS_SELECTOR, ".text").get_attribute("data-raw")  # before Markdown
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
    wait = WebDriverWait(browser, 60, poll_frequency=0.05)
    wait.until(lambda d: d.find_element(By.ID, "model").text == "tiny-smollm2")
    el = browser.find_element(By.ID, "max-tokens")
    el.clear()
    el.send_keys("100000")
    browser.find_element(By.ID, "input").send_keys("Hi")
    browser.find_element(By.ID, "send").click()
    wait.until(lambda d: d.find_element(By.ID, "error").text)
    assert "max_tokens" in browser.find_element(By.ID, "error").text
    assert browser.execute_script("return window.emberChat.history.length") == 0



def _fresh(browser, url):
    """The page with no conversation stored from an earlier test."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(url + "/")
    browser.execute_script("localStorage.clear()")
    browser.get(url + "/")
    wait = WebDriverWait(browser, 60, poll_frequency=0.05)
    wait.until(lambda d: d.find_element(By.ID, "model").text == "tiny-smollm2")
    return wait


def _ask(browser, wait, text, max_tokens="6"):
    from selenium.webdriver.common.by import By

    for field, value in (("temperature", "0"), ("max-tokens", max_tokens)):
        el = browser.find_element(By.ID, field)
        el.clear()
        el.send_keys(value)
    browser.find_element(By.ID, "input").send_keys(text)
    browser.find_element(By.ID, "send").click()
    wait.until(lambda d: d.find_element(By.ID, "messages").get_attribute("data-state") == "idle"
               and d.find_element(By.ID, "messages").get_attribute("data-turns") == "2")


def test_click_a_token_for_its_alternatives_and_trace(server_url, browser):
    from selenium.webdriver.common.by import By

    wait = _fresh(browser, server_url)
    _ask(browser, wait, "Hi")
    reply = browser.find_element(By.CSS_SELECTOR, ".msg.assistant")
    reply.find_element(By.CSS_SELECTOR, ".show-tokens").click()
    toks = reply.find_elements(By.CSS_SELECTOR, ".tokens .tok")
    assert len(toks) == 6  # max tokens 6, one span per generated token
    toks[1].click()
    wait.until(lambda d: len(reply.find_elements(By.CSS_SELECTOR, ".alts .alt")) == 5)
    alts = [a.text for a in reply.find_elements(By.CSS_SELECTOR, ".alts .alt")]
    assert all(a.endswith("%") for a in alts), alts
    chosen = reply.find_element(By.CSS_SELECTOR, ".alts .alt.chosen").text  # greedy: the top one
    assert chosen == alts[0]
    href = reply.find_element(By.CSS_SELECTOR, ".trace-link").get_attribute("href")
    assert "/v1/trace?" in href and "chat=true" in href
    trace = browser.execute_async_script(
        "const done = arguments[1]; fetch(arguments[0]).then(r => r.json()).then(done)", href)
    assert [lay["layer"] for lay in trace["layers"]] == [0, 1]  # the tiny model's two blocks
    # the trace predicts the clicked token: its `next` top-1 is the greedy reply's second token
    assert trace["next"][0]["token"] == toks[1].text or trace["next"][0]["prob"] > 0


def test_reload_keeps_the_conversation(server_url, browser):
    from selenium.webdriver.common.by import By

    wait = _fresh(browser, server_url)
    _ask(browser, wait, "Remember me")
    before = browser.execute_script("return window.emberChat.history")
    browser.refresh()
    wait.until(lambda d: d.find_element(By.ID, "messages").get_attribute("data-turns") == "2")
    assert browser.execute_script("return window.emberChat.history") == before
    assert browser.find_element(By.CSS_SELECTOR, ".msg.user").text == "Remember me"
    reply = browser.find_element(By.CSS_SELECTOR, ".msg.assistant")
    assert reply.find_element(By.CSS_SELECTOR, ".text").get_attribute("data-raw") == before[1]["content"]
    reply.find_element(By.CSS_SELECTOR, ".show-tokens").click()
    assert len(reply.find_elements(By.CSS_SELECTOR, ".tokens .tok")) == 6  # the tokens came back too


HOSTILE = ("**bold** and `code`\n\n```python\nprint(1)\n```\n\n"
           "<img src=x onerror=\"window.pwned = 1\"> <script>window.pwned = 2</script>\n\n"
           "[link](javascript:window.pwned=3) <b onclick=\"window.pwned=4\">b</b>")


def test_markdown_renders_and_model_html_cannot_inject(server_url, browser):
    """A stored reply with raw HTML: Markdown renders, the HTML shows as text, nothing runs."""
    import json

    from selenium.webdriver.common.by import By

    wait = _fresh(browser, server_url)
    saved = {"history": [{"role": "user", "content": "show me"}, {"role": "assistant", "content": HOSTILE}], "extras": [None, {"prompt": "show me", "tokens": [], "sources": [
            {"n": 1, "doc": "guide<script>.md", "chunk": 0, "score": 0.5, "text": "<img src=x onerror=alert(1)>"}]}]}
    browser.execute_script("localStorage.setItem('ember-chat-v1', arguments[0])", json.dumps(saved))
    browser.refresh()
    wait.until(lambda d: d.find_element(By.ID, "messages").get_attribute("data-turns") == "2")
    reply = browser.find_element(By.CSS_SELECTOR, ".msg.assistant .text")
    assert reply.find_element(By.CSS_SELECTOR, "strong").text == "bold"
    assert reply.find_element(By.CSS_SELECTOR, "pre code").text == "print(1)"
    for tag in ("img", "script", "b"):
        assert not browser.find_elements(By.CSS_SELECTOR, f".msg {tag}"), tag
    assert "<img src=x" in reply.text and "<script>" in reply.text  # shown as text
    for a in reply.find_elements(By.CSS_SELECTOR, "a"):
        assert not (a.get_attribute("href") or "").startswith("javascript:")
    assert browser.execute_script("return window.pwned") is None
    sources = browser.find_element(By.CSS_SELECTOR, ".msg.assistant details.sources")
    assert sources.find_element(By.TAG_NAME, "summary").text == "Sources (1)"
    sources.find_element(By.TAG_NAME, "summary").click()
    assert "guide<script>.md" in sources.text and not sources.find_elements(By.TAG_NAME, "img")
