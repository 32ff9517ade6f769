"""Atomic writes: a temp file renamed over the target, except where the target is a device."""

import os
import stat

import pytest

from ember.core.io import atomic_write_bytes, atomic_write_json


def test_a_regular_file_is_replaced_whole(tmp_path):
    target = tmp_path / "sub" / "out.json"
    atomic_write_json(target, {"a": 1})
    atomic_write_json(target, {"b": 2})
    assert target.read_text() == '{\n "b": 2\n}\n'
    assert [p.name for p in target.parent.iterdir()] == ["out.json"]  # no temp file left


def test_writing_to_a_device_keeps_the_device(tmp_path):
    # As root, renaming a temp file onto /dev/null replaced the device with a regular file.
    # A null device of the test's own (making one needs root, as the bug did).
    null = tmp_path / "null"
    try:
        os.mknod(null, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("making a device node needs root")
    atomic_write_bytes(null, b"discarded")
    assert stat.S_ISCHR(os.stat(null).st_mode)


def test_writing_to_a_fifo_writes_into_it(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    r = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        atomic_write_bytes(fifo, b"hello")
        assert os.read(r, 100) == b"hello"
    finally:
        os.close(r)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)


def test_a_folder_target_is_an_error(tmp_path):
    with pytest.raises(OSError):
        atomic_write_bytes(tmp_path, b"x")
