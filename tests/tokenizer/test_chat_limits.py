"""Chat templates are untrusted code: rendering is bounded in output, memory and time."""

import threading
import time

import pytest

from ember.tokenizer import Tokenizer, template_sandbox
from ember.tokenizer.chat import render_text
from ember.tokenizer.template_sandbox import render_many

USER = [{"role": "user", "content": "hi"}]


def _tok(template):
    return Tokenizer(merges=[], pattern="gpt2", special_tokens={"<|im_end|>": 256}, chat_template=template)


@pytest.mark.parametrize("template", [
    "{{ 'A' * 3000000000 }}",  # 3 GB if it ran: refused before allocating
    "{{ [1] * 3000000000 }}",
    "{{ 7 ** 300000000 }}",
    "{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}",
    "{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s }}",
    "{{ '%0999999999d' % 1 }}",
    "{{ '%(a)999999999s' % {'a': 1} }}",
    "{{ '%0999999999d' | format(1) }}",
    "{{ '{:>999999999}'.format(1) }}",
    "{{ '{:>{w}}'.format(1, w=999999999) }}",
    "{{ 'x' | center(3000000000) }}",
    "{{ 'x'.rjust(3000000000) }}",
    "{{ 'a\nb' | indent(3000000000) }}",
    "{{ ('x' * 1000) | replace('', 'y' * 60000) }}",
    "{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}",  # 100 MB of output, piece by piece
])
def test_output_and_memory_are_bounded(template):
    t0 = time.monotonic()
    with pytest.raises(ValueError, match="chat template rendering exceeded the output limit of"):
        render_text(_tok(template), USER)
    assert time.monotonic() - t0 < 3  # refused up front, not after building gigabytes


def test_allocation_past_the_memory_cap_is_an_error_not_a_crash():
    # A path no size check covers (a join over a huge generated list) meets the address-space cap.
    tmpl = "{{ (range(100000) | map('string') | list) | join('y' * 60000) | length }}"  # 6 GB
    with pytest.raises(ValueError, match="exceeded the memory limit of 512 MB"):
        render_text(_tok(tmpl), USER)
    assert render_text(_tok("{{ messages[0].content }}"), USER) == "hi"


def test_nested_loops_stop_at_the_time_limit_and_the_next_render_works(monkeypatch):
    monkeypatch.setattr(template_sandbox, "TIME_LIMIT_S", 1.0)
    freeze = _tok("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}")
    t0 = time.monotonic()
    with pytest.raises(ValueError, match=r"chat template rendering exceeded the time limit of 1 s"):
        render_text(freeze, USER)
    assert time.monotonic() - t0 < 4
    assert render_text(_tok("{{ messages[0].content | upper }}"), USER) == "HI"


def test_real_chats_are_far_below_the_limits():
    big = [{"role": "user", "content": "word " * 200_000}]  # 1 MB of content
    assert render_text(_tok("{% for m in messages %}{{ m.content }}{{ m.content }}{% endfor %}"), big) == big[0]["content"] * 2


def test_concurrent_renders_from_threads():
    tok = _tok("{% for m in messages %}[{{ m.content | trim }}]{% endfor %}")
    results, errors = {}, []

    def work(i):
        try:
            results[i] = render_text(tok, [{"role": "user", "content": f"  message {i} "}])
        except Exception as e:  # noqa: BLE001 (collected and reported below)
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert results == {i: f"[message {i}]" for i in range(12)}


def test_template_errors_are_value_errors():
    with pytest.raises(ValueError, match="the chat template does not parse"):
        render_many("{% for %}", [{}])
    assert "no system role" in render_many("{{ raise_exception('no system role') }}", [{}])[0]["error"]
    with pytest.raises(ValueError, match="no system role"):
        render_text(_tok("{{ raise_exception('no system role') }}"), USER)
    with pytest.raises(ValueError, match="must be JSON data"):
        render_text(_tok("{{ x }}"), USER, x=object())


def test_without_child_processes_rendering_stays_bounded_in_size(monkeypatch):
    def no_processes(self):
        raise OSError("cannot start processes here")

    monkeypatch.setattr(template_sandbox, "_pool", None)
    monkeypatch.setattr(template_sandbox._Worker, "__init__", no_processes)
    assert render_text(_tok("{{ messages[0].content | upper }}"), USER) == "HI"
    with pytest.raises(ValueError, match="exceeded the output limit"):
        render_text(_tok("{{ 'A' * 3000000000 }}"), USER)


def test_ordinary_formatting_still_works():
    tmpl = "{{ '{} and {:>5}'.format('x', 'y') }}|{{ '%s-%05d' | format('a', 3) }}|{{ 'ab' | center(6) }}|"
    assert render_many(tmpl, [{}]) == [{"text": "x and     y|a-00003|  ab  |"}]
