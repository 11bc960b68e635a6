"""common/safetensors.py: exact round trips, hand-made files, and one clear line for
every kind of bad file."""

import json
import os
import struct
import time

import numpy as np
import pytest

from common import safetensors as st
from common.cli import UserError


def file_bytes(header, data=b"", length=None):
    """A safetensors file made by hand: the 8-byte length, the header, the data. `header`
    is a dict (dumped as JSON) or the header's raw bytes; `length` overrides the length."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode("utf-8")
    n = len(raw) if length is None else length
    return struct.pack("<Q", n) + raw + data


def write(tmp_path, content: bytes, name="model.safetensors"):
    path = tmp_path / name
    path.write_bytes(content)
    return path


def f32(shape, begin, end, dtype="F32"):
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


# ---------------------------------------------------------------------------------------
# Round trips


SHAPES = [(), (0,), (5,), (2, 3), (2, 0, 4), (1, 1, 1, 1), (3, 4, 5)]


def test_float32_round_trip_is_exact(tmp_path):
    rng = np.random.default_rng(0)
    tensors = {f"t{i}": rng.standard_normal(shape).astype(np.float32)
               for i, shape in enumerate(SHAPES)}
    tensors["t2"][:3] = [np.nan, np.inf, -np.inf]  # non-finite numbers are just data
    tensors["t3"][0, 0] = -0.0
    path = tmp_path / "m.safetensors"
    st.save(path, tensors)
    back = st.load(path)
    assert list(back) == sorted(tensors)  # all the same item size: in name order
    for name, a in tensors.items():
        b = back[name]
        assert b.dtype == np.float32 and b.shape == a.shape
        assert b.tobytes() == a.tobytes()  # bit for bit: NaN, -0.0 included


def test_float16_round_trip(tmp_path):
    a = np.array([[0.5, -1.25, 65504.0], [6e-8, np.inf, 1 / 3]], dtype=np.float16)
    path = tmp_path / "h.safetensors"
    st.save(path, {"h": a, "s": np.float16(2.5)})
    assert st.read_header(path)[0] == {"h": st.TensorInfo("F16", (2, 3)),
                                       "s": st.TensorInfo("F16", ())}
    back = st.load(path)
    assert back["h"].dtype == np.float32
    assert np.array_equal(back["h"], a.astype(np.float32))
    assert back["s"].shape == () and back["s"] == 2.5


def test_integers_and_float64_and_byte_order(tmp_path):
    path = tmp_path / "i.safetensors"
    big_endian = np.arange(6, dtype=">f4").reshape(2, 3)
    st.save(path, {"i64": np.array([-(2**62), 7]), "f64": np.array([0.1, 1e30]),
                   "i32": np.arange(-3, 3, dtype=np.int32), "be": big_endian,
                   "t": big_endian.T})
    header, _ = st.read_header(path)
    assert {n: i.dtype for n, i in header.items()} == \
        {"i64": "I64", "i32": "I32", "f64": "F32", "be": "F32", "t": "F32"}
    back = st.load(path)
    assert back["i64"].dtype == np.int64 and back["i64"].tolist() == [-(2**62), 7]
    assert back["i32"].dtype == np.int32 and back["i32"].tolist() == [-3, -2, -1, 0, 1, 2]
    assert back["f64"].tolist() == np.array([0.1, 1e30]).astype(np.float32).tolist()
    assert np.array_equal(back["be"], big_endian)
    assert np.array_equal(back["t"], big_endian.T)


def test_metadata_and_header_without_data(tmp_path):
    path = tmp_path / "meta.safetensors"
    st.save(path, {"w": np.ones((4, 2), np.float32)}, metadata={"step": "500", "é": "ü"})
    tensors, metadata = st.read_header(path)
    assert tensors == {"w": ("F32", (4, 2))}
    assert metadata == {"step": "500", "é": "ü"}
    st.save(path, {"w": np.ones(1, np.float32)})
    assert st.read_header(path)[1] == {}


def test_saved_layout_is_deterministic_and_aligned(tmp_path):
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    tensors = {"z": np.float16([1, 2, 3]), "y": np.float32([1]), "x": np.int64([5])}
    st.save(a, tensors, {"k": "v"})
    st.save(b, dict(reversed(tensors.items())), {"k": "v"})
    raw = a.read_bytes()
    assert raw == b.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    assert n % 8 == 0 and raw[8 + n - 1:8 + n] in (b" ", b"}")
    header = json.loads(raw[8:8 + n])
    assert list(header) == ["__metadata__", "x", "y", "z"]  # wide items first, then names
    for name in ("x", "y", "z"):
        begin = header[name]["data_offsets"][0]
        assert (8 + n + begin) % np.dtype(tensors[name].dtype).itemsize == 0
    assert sorted(os.listdir(tmp_path)) == ["a.safetensors", "b.safetensors"]  # no temp


def test_load_returns_writable_copies_and_can_pick_names(tmp_path):
    path = tmp_path / "w.safetensors"
    st.save(path, {"w": np.arange(4, dtype=np.float32), "b": np.zeros(2, np.float32)})
    w = st.load(path, names=["w"])
    assert list(w) == ["w"]
    w = w["w"]
    assert type(w) is np.ndarray and w.flags.writeable and w.flags.owndata
    w += 1  # a model updates its parameters in place; the file must not change
    assert st.load(path)["w"].tolist() == [0, 1, 2, 3]


def test_load_unknown_name(tmp_path):
    path = tmp_path / "w.safetensors"
    st.save(path, {"w": np.zeros(1, np.float32)})
    with pytest.raises(UserError, match="has no tensor 'nope'"):
        st.load(path, names=["nope"])


def test_save_refuses_what_it_cannot_write(tmp_path):
    with pytest.raises(TypeError):
        st.save(tmp_path / "x.safetensors", {"b": np.array([True])})
    with pytest.raises(ValueError):
        st.save(tmp_path / "x.safetensors", {"__metadata__": np.zeros(1)})
    with pytest.raises(TypeError):
        st.save(tmp_path / "x.safetensors", {"a": np.zeros(1)}, metadata={"step": 5})
    missing = tmp_path / "no" / "such" / "folder" / "x.safetensors"
    with pytest.raises(UserError, match="cannot write safetensors file .*x.safetensors"):
        st.save(missing, {"a": np.zeros(1)})
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------------------------------
# Files made byte by byte (not by our own writer)


def test_hand_made_file_with_padding_and_unaligned_data(tmp_path):
    # a 7-byte-odd header padded with spaces, so the data starts unaligned
    header = b'{"b":{"dtype":"F32","shape":[3],"data_offsets":[4,16]},' \
             b'"__metadata__":{"format":"pt"},' \
             b'"a":{"dtype":"F32","shape":[],"data_offsets":[0,4]}}   '
    data = struct.pack("<f", 2.5) + struct.pack("<3f", 1.0, -0.5, 1e-3)
    path = write(tmp_path, file_bytes(header, data))
    assert st.read_header(path) == ({"b": ("F32", (3,)), "a": ("F32", ())},
                                    {"format": "pt"})
    back = st.load(path)
    assert back["a"].shape == () and back["a"] == 2.5
    assert back["b"].tolist() == [1.0, -0.5, np.float32(1e-3)]


BF16 = {  # the 16 bits -> the float32 they stand for
    0x3F80: 1.0, 0xC000: -2.0, 0x0000: 0.0, 0x4049: 3.140625, 0x3E80: 0.25,
    0x7F80: np.inf, 0xFF80: -np.inf, 0x4780: 65536.0, 0x0080: 2.0**-126,
}


def test_bfloat16_decodes_known_bits(tmp_path):
    bits = list(BF16) + [0x8000, 0x7FC0]  # -0.0 and a NaN
    data = b"".join(struct.pack("<H", b) for b in bits)  # little-endian: low byte first
    assert data[:2] == b"\x80\x3f"
    header = {"x": f32([len(bits)], 0, len(data), "BF16")}
    path = write(tmp_path, file_bytes(header, data))
    x = st.load(path)["x"]
    assert x.dtype == np.float32 and x.shape == (len(bits),)
    assert x[:len(BF16)].tolist() == list(BF16.values())
    assert x[-2] == 0 and np.signbit(x[-2]) and np.isnan(x[-1])


def test_bfloat16_matrix_keeps_its_shape(tmp_path):
    data = struct.pack("<4H", 0x3F80, 0x4000, 0x4040, 0x4080)  # 1, 2, 3, 4
    path = write(tmp_path, file_bytes({"m": f32([2, 2], 0, 8, "BF16")}, data))
    assert st.load(path)["m"].tolist() == [[1.0, 2.0], [3.0, 4.0]]


def test_float16_bytes_match_numpy(tmp_path):
    values = np.array([1.0, -2.0, 0.1, 65504.0, 5.96e-8, -np.inf], dtype=np.float16)
    data = values.astype("<f2").tobytes()
    assert data[:2] == b"\x00\x3c"  # 1.0 in float16 is 0x3C00
    path = write(tmp_path, file_bytes({"h": f32([2, 3], 0, 12, "F16")}, data))
    h = st.load(path)["h"]
    assert h.dtype == np.float32
    assert np.array_equal(h, values.astype(np.float32).reshape(2, 3))


def test_empty_file_of_tensors_and_only_empty_tensors(tmp_path):
    assert st.load(write(tmp_path, file_bytes({}), "none.safetensors")) == {}
    path = write(tmp_path, file_bytes({"e": f32([0, 3], 0, 0), "f": f32([2, 0], 0, 0)}))
    back = st.load(path)
    assert back["e"].shape == (0, 3) and back["f"].shape == (2, 0)


# ---------------------------------------------------------------------------------------
# Bad files: one UserError line naming the file and what is wrong

ENTRY = f32([2], 0, 8)
DATA = b"\x00" * 8

BAD = [  # (what the error line says, the file)
    ("too short", b"\x01\x00\x00"),
    ("over the 100,000,000-byte limit", struct.pack("<Q", 2**40) + b"{}"),
    ("runs past the end of the file", file_bytes(b"{}", length=100)),
    ("not UTF-8", file_bytes(b'{"\xff\xfe":1}')),
    ("not valid JSON", file_bytes(b'{"a": ')),
    ("not valid JSON", file_bytes(b"")),  # header length 0
    ("not valid JSON", file_bytes(b"[" * 100_000 + b"]" * 100_000)),  # too deep
    ("not a JSON object", file_bytes(b"[1, 2]")),
    ("repeats the key 'a'", file_bytes(b'{"a":{},"a":{}}')),
    ("is not an object", file_bytes({"a": 3})),
    ("has no 'dtype'", file_bytes({"a": {"shape": [2], "data_offsets": [0, 8]}}, DATA)),
    ("has no 'shape'", file_bytes({"a": {"dtype": "F32", "data_offsets": [0, 8]}}, DATA)),
    ("has no 'data_offsets'", file_bytes({"a": {"dtype": "F32", "shape": [2]}}, DATA)),
    ("unsupported dtype 'F128'", file_bytes({"a": f32([2], 0, 8, "F128")}, DATA)),
    ("unsupported dtype 1", file_bytes({"a": f32([2], 0, 8, 1)}, DATA)),
    ("unsupported dtype ['F32']", file_bytes({"a": f32([2], 0, 8, ["F32"])}, DATA)),
    ("shape must be a list of non-negative integers, not [-1, -2]",
     file_bytes({"a": f32([-1, -2], 0, 8)}, DATA)),
    ("shape must be a list of non-negative integers, not [2.0]",
     file_bytes({"a": f32([2.0], 0, 8)}, DATA)),
    ("shape must be a list of non-negative integers, not [True, 2]",
     file_bytes({"a": f32([True, 2], 0, 8)}, DATA)),
    ("shape must be a list of non-negative integers, not '2'",
     file_bytes({"a": f32("2", 0, 8)}, DATA)),
    ("data_offsets must be two non-negative integers [begin, end], not [0]",
     file_bytes({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0]}}, DATA)),
    ("data_offsets must be two non-negative integers [begin, end], not [-8, 0]",
     file_bytes({"a": f32([2], -8, 0)}, DATA)),
    ("data_offsets must be two non-negative integers [begin, end], not [0, 8.0]",
     file_bytes({"a": f32([2], 0, 8.0)}, DATA)),
    ("ends (at byte 0) before it begins (8)", file_bytes({"a": f32([0], 8, 0)}, DATA)),
    ("has data_offsets [100000000000000000...0000000000000000000, 0], past the end",
     file_bytes({"a": f32([0], 10**60, 0)}, DATA)),
    ("holds 8 bytes, but F32 [3] needs 12", file_bytes({"a": f32([3], 0, 8)}, DATA)),
    ("holds 8 bytes, but BF16 [2] needs 4",
     file_bytes({"a": f32([2], 0, 8, "BF16")}, DATA)),
    ("holds 4 bytes, but F32 [4611686018427387904, 4611686018427387904] needs over "
     "2**64",
     file_bytes({"a": f32([2**62, 2**62], 0, 4)}, b"\x00" * 4)),
    ("numpy cannot hold an array of shape [0, 4611686018427387904, 4611686018427387904]",
     file_bytes({"a": f32([0, 2**62, 2**62], 0, 0)})),
    ("numpy cannot hold an array of shape [1, 1, 1",  # too many dimensions
     file_bytes({"a": f32([1] * 100, 0, 4)}, b"\x00" * 4)),
    ("has data_offsets [0, 8], past the end of the 7-byte data section: the file is "
     "truncated",
     file_bytes({"a": ENTRY}, DATA[:7])),
    ("tensor 'b' has data_offsets [8, 16], past the end of the 12-byte data section",
     file_bytes({"a": ENTRY, "b": f32([2], 8, 16)}, b"\x00" * 12)),
    ("tensor 'b' overlaps tensor 'a' (bytes 4 to 8)",
     file_bytes({"a": ENTRY, "b": f32([2], 4, 12)}, b"\x00" * 12)),
    ("tensor 'e' overlaps tensor 'a'",  # even an empty tensor may not sit inside another
     file_bytes({"a": ENTRY, "e": f32([0], 4, 4)}, DATA)),
    ("gap in the data section (bytes 8 to 12 belong to no tensor)",
     file_bytes({"a": ENTRY, "b": f32([1], 12, 16)}, b"\x00" * 16)),
    ("gap in the data section (bytes 0 to 4 belong to no tensor)",
     file_bytes({"a": f32([1], 4, 8)}, DATA)),
    ("3 bytes after the last tensor belong to no tensor",
     file_bytes({"a": ENTRY}, DATA + b"abc")),
    ("__metadata__ must map strings to strings, not {'step': 5}",
     file_bytes({"__metadata__": {"step": 5}})),
    ("__metadata__ must map strings to strings, not ['a']",
     file_bytes({"__metadata__": ["a"]})),
]


@pytest.mark.parametrize("phrase, content", BAD, ids=[phrase for phrase, _ in BAD])
def test_bad_file_is_one_clear_line(tmp_path, phrase, content):
    path = write(tmp_path, content, "bad.safetensors")
    for read in (st.load, st.read_header):
        with pytest.raises(UserError) as info:
            read(path)
        message = str(info.value)
        assert f"safetensors file {path}: " in message
        assert phrase in message
        assert "\n" not in message and len(message) < 300


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(UserError, match=r"safetensors file .*nope.safetensors not found"):
        st.load(tmp_path / "nope.safetensors")
    with pytest.raises(UserError, match=f"cannot read safetensors file {tmp_path}"):
        st.read_header(tmp_path)


def test_long_names_are_cut_short_in_errors(tmp_path):
    path = write(tmp_path, file_bytes({"x" * 10_000: f32([3], 0, 8)}, DATA))
    with pytest.raises(UserError, match="'xxx.*xxx' holds 8 bytes") as info:
        st.load(path)
    assert len(str(info.value)) < 300


def test_hostile_shapes_fail_fast(tmp_path):
    # 1,000 numbers of 1,000 digits: multiplying them all takes seconds, so the byte
    # count must give up as soon as the product passes the bytes the tensor holds
    shape = b"[" + b",".join([b"9" * 1000] * 1000) + b"]"
    header = b'{"a":{"dtype":"F32","shape":' + shape + b',"data_offsets":[0,4]}}'
    path = write(tmp_path, file_bytes(header, b"\x00" * 4))
    start = time.perf_counter()
    with pytest.raises(UserError, match="needs over 2"):
        st.load(path)
    assert time.perf_counter() - start < 0.5
