"""Stop strings: the earliest one wins, and streaming never shows part of one."""

from hypothesis import given, settings
from hypothesis import strategies as st

from ember.infer.engine import StopStringMatcher, find_stop, partial_stop_len


def test_find_stop_earliest():
    assert find_stop("abc", ["x"]) == -1
    assert find_stop("one STOP two END", ["END", "STOP"]) == 4
    assert find_stop("aab", ["ab", "aab"]) == 0


def test_partial_stop_len():
    assert partial_stop_len("Hello <|", ["<|im_end|>"]) == 2
    assert partial_stop_len("Hello", ["<|im_end|>"]) == 0
    assert partial_stop_len("xaa", ["aab"]) == 2
    assert partial_stop_len("END", ["END"]) == 0  # a whole stop is find_stop's job, not held


def test_matcher_holds_back_then_releases():
    m = StopStringMatcher(["END"])
    assert m.push("abc E") == ("abc ", False)
    assert m.push("N") == ("", False)
    assert m.push("D!") == ("", True)
    m = StopStringMatcher(["END"])
    assert m.push("abc EN") == ("abc ", False)
    assert m.push("d") == ("ENd", False)  # not a stop after all: released
    assert m.push(" E") == (" ", False)
    assert m.flush() == "E"  # stream ended: the held text is real text


def test_shorter_stop_completing_first_wins():
    # Found by the property test below: "NE" already holds the stop "E", so the reply ends
    # at "N" before "NEE" (which starts earlier) could complete.
    m = StopStringMatcher(["E", "NEE"])
    assert m.push("NE") == ("N", True)


def test_matcher_without_stops_is_passthrough():
    m = StopStringMatcher(())
    assert m.push("anything") == ("anything", False)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    text=st.text(alphabet="abE N", max_size=40),
    stops=st.lists(st.text(alphabet="abE N", min_size=1, max_size=4), min_size=1, max_size=3),
    cuts=st.lists(st.integers(0, 40), max_size=10),
)
def test_streamed_text_is_the_cut_text_and_never_shows_a_stop(text, stops, cuts):
    bounds = sorted({0, len(text), *(c for c in cuts if c <= len(text))})
    # Reference semantics (as vLLM/OpenAI): after every piece, cut at the first stop present
    # in the text so far. A longer stop that would only complete later (text "NEE", stops
    # "E"/"NEE", pieces "NE"+"E") never gets the chance: "E" ends it at "N".
    i = -1
    for b in bounds[1:]:
        i = find_stop(text[:b], stops)
        if i >= 0:
            break
    expected = text if i < 0 else text[:i]
    m, shown, stopped = StopStringMatcher(stops), "", False
    for a, b in zip(bounds, bounds[1:]):
        out, stopped = m.push(text[a:b])
        shown += out
        assert expected.startswith(shown)  # never more than the final cut text
        if stopped:
            break
    if not stopped:
        shown += m.flush()
    assert shown == expected
    assert stopped == (i >= 0)
