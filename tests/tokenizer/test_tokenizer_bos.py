"""The tokenizer owns BOS: encode(add_bos=None) follows the tokenizer's own setting, True
forces it, and the default (False) keeps plain encode() giving the text's ids alone."""

import pytest

from ember.tokenizer import Tokenizer

SPECIALS = {"<s>": 256, "</s>": 257}


def tok(add_bos: bool, bos: str | None = "<s>", use_fast: bool = True) -> Tokenizer:
    return Tokenizer(merges=[(108, 111, 258)], pattern="gpt2", special_tokens=SPECIALS, bos_token=bos,
                     eos_tokens=["</s>"], add_bos=add_bos, use_fast=use_fast)


@pytest.mark.parametrize("use_fast", [True, False])
def test_add_bos_none_follows_the_tokenizer_setting(use_fast):
    on, off = tok(True, use_fast=use_fast), tok(False, use_fast=use_fast)
    assert on.encode("lol", add_bos=None) == [256, 258, 108]
    assert off.encode("lol", add_bos=None) == [258, 108]
    assert on.encode_batch(["lol", "l"], add_bos=None) == [[256, 258, 108], [256, 108]]


def test_default_encode_never_adds_bos():
    assert tok(True).encode("lol") == [258, 108]  # what every existing caller gets
    assert tok(True).encode_batch(["lol"]) == [[258, 108]]
    assert tok(False).encode("lol", add_bos=True) == [256, 258, 108]


def test_add_bos_errors():
    assert tok(True, bos=None).encode("lo", add_bos=None) == [258]  # setting on, no BOS: nothing
    with pytest.raises(ValueError, match="no BOS token"):
        tok(False, bos=None).encode("lo", add_bos=True)
    with pytest.raises(ValueError, match="add_bos must be"):
        tok(True).encode("lo", add_bos="yes")


def test_split_special_is_the_public_cut_at_allowed_specials():
    t = tok(False)
    assert list(t.split_special("a<s>b</s>", "all")) == [(False, "a"), (True, "<s>"), (False, "b"), (True, "</s>")]
    assert list(t.split_special("a<s>b", ())) == [(False, "a<s>b")]
    with pytest.raises(ValueError, match="unknown special"):
        t.split_special("x", {"<nope>"})
