"""Safetensors files: named tensors, read and written in plain numpy.

The format (Hugging Face's safetensors) has three parts:

    8 bytes    N, the header's length: an unsigned 64-bit little-endian integer
    N bytes    the header: UTF-8 JSON (maybe padded with spaces), an object mapping each
               tensor's name to {"dtype": "F32", "shape": [50257, 768],
               "data_offsets": [begin, end]}, plus an optional "__metadata__" object
               of strings
    the rest   the data section: each tensor's raw bytes, little-endian, in C order, at
               [begin, end) counted from the start of this section (byte 8 + N)

    save("model.safetensors", {"wte": wte, "wpe": wpe}, metadata={"step": "5000"})
    tensors, metadata = read_header("model.safetensors")   # no data read yet
    tensors["wte"]                              # TensorInfo(dtype='F32', shape=(65, 64))
    params = load("model.safetensors")          # {"wpe": array, "wte": array}

F32, F16 and BF16 tensors load as float32, I32 and I64 as int32 and int64. Reading is
strict, as in the reference implementation: every byte of the data section must belong
to exactly one tensor. A damaged file is one UserError line naming the file and what is
wrong with it.
"""

from __future__ import annotations

import collections
import json
import os
import reprlib
from pathlib import Path
from typing import NamedTuple

import numpy as np

from common.cli import UserError, _atomic_write

# The reference implementation refuses headers over 100 MB: no real file needs more, and
# a damaged length field must not make us read (or parse) gigabytes.
HEADER_LIMIT = 100_000_000

# No file holds 2**64 bytes (its data_offsets could not count them): a tensor said to
# need more is wrong, whatever its exact size.
_NBYTES_LIMIT = 2**64

# dtype in the file -> (numpy type of its stored bits, numpy type it loads as)
DTYPES = {
    "F32": ("<f4", np.float32),
    "F16": ("<f2", np.float32),
    "BF16": ("<u2", np.float32),  # no numpy bfloat16: read the bits, widen them (_decode)
    "I64": ("<i8", np.int64),
    "I32": ("<i4", np.int32),
}


class SafetensorsError(UserError):
    """A safetensors file is missing, damaged or uses a dtype this reader lacks."""


class TensorInfo(NamedTuple):
    dtype: str             # as in the file: "F32", "F16", "BF16", "I64" or "I32"
    shape: tuple[int, ...]


class _Entry(NamedTuple):
    dtype: str
    shape: tuple[int, ...]
    begin: int             # [begin, end): bytes of the data section
    end: int


# ---------------------------------------------------------------------------------------
# Reading


def read_header(path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """(tensors, metadata) of a safetensors file, without reading any tensor data:
    tensors maps each name to TensorInfo(dtype, shape), in the header's order, and
    metadata is the "__metadata__" object ({} when there is none). The whole header is
    checked, including that the data section holds exactly the bytes it describes."""
    path = Path(path)
    with _open(path) as f:
        entries, metadata, _ = _read_header(f, path)
    return {name: TensorInfo(e.dtype, e.shape) for name, e in entries.items()}, metadata


def load(path, names=None) -> dict[str, np.ndarray]:
    """The tensors of a safetensors file (only those in `names`, if given), as numpy
    arrays: F32, F16 and BF16 as float32, I32 and I64 as int32 and int64.

    The file is memory-mapped, so only the bytes of the tensors asked for are read, and
    each is read once, straight into its array. Every array is a copy that owns its
    memory: writable (a model updates its parameters in place) and independent of the
    file, which can then be overwritten or deleted."""
    path = Path(path)
    with _open(path) as f:
        entries, _, (data_start, data_len) = _read_header(f, path)
        names = list(entries) if names is None else list(names)
        for name in names:
            if name not in entries:
                raise SafetensorsError(f"safetensors file {path} has no tensor "
                                       f"{_short.repr(name)}")
        data = _map(f, path, data_start, data_len)
    return {name: _decode(data, entries[name]) for name in names}


def _open(path: Path):
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise SafetensorsError(f"safetensors file {path} not found") from None
    except OSError as e:
        raise SafetensorsError(f"cannot read safetensors file {path}: "
                               f"{e.strerror or e}") from None


def _bad(path, what: str) -> SafetensorsError:
    return SafetensorsError(f"safetensors file {path}: {what}")


# Error lines quote parts of the header; a hostile header must not turn them into
# megabytes of text, so long strings, lists and numbers are cut short.
_short = reprlib.Repr()
_short.maxstring = _short.maxother = 60
_short.maxlist = _short.maxdict = 8
_short.maxlong = 40


def _read_header(f, path):
    """(entries, metadata, (data_start, data_len)) of an open file, every part
    checked."""
    size = _file_size(f, path)
    if size < 8:
        raise _bad(path, f"it is too short ({size} bytes) to hold the 8-byte header "
                         f"length")
    n = int.from_bytes(f.read(8), "little")
    if n > HEADER_LIMIT:
        raise _bad(path, f"its header length {n:,} is over the {HEADER_LIMIT:,}-byte "
                         f"limit (the file is damaged or not a safetensors file)")
    raw = f.read(n) if n <= size - 8 else None  # (never read past the end)
    if raw is None or len(raw) != n:
        raise _bad(path, f"its header ({n:,} bytes) runs past the end of the file "
                         f"({size:,} bytes): the file is truncated or not safetensors")
    header = _parse_json(raw, path)
    metadata = _check_metadata(header.pop("__metadata__", None), path)
    data_len = size - 8 - n
    entries = {name: _check_entry(name, value, data_len, path)
               for name, value in header.items()}
    _check_layout(entries, data_len, path)
    return entries, metadata, (8 + n, data_len)


def _file_size(f, path) -> int:
    try:
        return os.fstat(f.fileno()).st_size
    except OSError as e:
        raise SafetensorsError(f"cannot read safetensors file {path}: "
                               f"{e.strerror or e}") from None


class _DuplicateKey(ValueError):
    pass


def _no_duplicates(pairs):
    # json.loads keeps the last of two equal keys; a tensor named twice is a damaged file
    d = dict(pairs)
    if len(d) != len(pairs):
        counts = collections.Counter(k for k, _ in pairs)
        raise _DuplicateKey(next(k for k, c in counts.items() if c > 1))
    return d


def _parse_json(raw: bytes, path) -> dict:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _bad(path, f"its header is not UTF-8 text (byte {e.start + 8:,} of the "
                         f"file)") from None
    try:
        header = json.loads(text, object_pairs_hook=_no_duplicates)
    except _DuplicateKey as e:
        raise _bad(path, f"its header repeats the key {_short.repr(e.args[0])}") from None
    except (ValueError, RecursionError) as e:  # RecursionError: absurdly deep nesting
        where = ""
        if isinstance(e, json.JSONDecodeError):
            where = f" ({e.msg} at character {e.pos:,} of the header)"
        raise _bad(path, f"its header is not valid JSON{where}") from None
    if not isinstance(header, dict):
        raise _bad(path, f"its header is not a JSON object but {type(header).__name__}")
    return header


def _check_metadata(metadata, path) -> dict[str, str]:
    if metadata is None:
        return {}
    if not isinstance(metadata, dict) or \
            not all(isinstance(v, str) for v in metadata.values()):
        raise _bad(path, f"its __metadata__ must map strings to strings, not "
                         f"{_short.repr(metadata)}")
    return metadata


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)  # JSON true is not a size


def _check_entry(name: str, value, data_len: int, path) -> _Entry:
    """One tensor's header entry, checked on its own: types, dtype, and that its bytes
    lie inside the data section and are exactly what its dtype and shape need."""
    what = f"tensor {_short.repr(name)}"
    if not isinstance(value, dict):
        raise _bad(path, f"the entry for {what} is not an object: {_short.repr(value)}")
    for key in ("dtype", "shape", "data_offsets"):
        if key not in value:
            raise _bad(path, f"{what} has no {key!r}")
    dtype, shape, offsets = value["dtype"], value["shape"], value["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise _bad(path, f"{what} has an unsupported dtype {_short.repr(dtype)} (this "
                         f"reader handles {', '.join(DTYPES)})")
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise _bad(path, f"{what}: its shape must be a list of non-negative integers, "
                         f"not {_short.repr(shape)}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and
            all(_is_int(o) and o >= 0 for o in offsets)):
        raise _bad(path, f"{what}: its data_offsets must be two non-negative integers "
                         f"[begin, end], not {_short.repr(offsets)}")
    begin, end = offsets
    if begin > data_len or end > data_len:  # (checked first: then both numbers are small)
        raise _bad(path, f"{what} has data_offsets {_short.repr(offsets)}, past the end "
                         f"of the {data_len:,}-byte data section: the file is truncated")
    if end < begin:
        raise _bad(path, f"{what} ends (at byte {end:,}) before it begins ({begin:,})")
    need = _nbytes(shape, np.dtype(DTYPES[dtype][0]).itemsize, _NBYTES_LIMIT)
    if need != end - begin:
        needs = "over 2**64" if need is None else f"{need:,}"
        raise _bad(path, f"{what} holds {end - begin:,} bytes, but {dtype} "
                         f"{_short.repr(shape)} needs {needs}")
    _check_numpy_can_hold(shape, what, path)
    return _Entry(dtype, tuple(shape), begin, end)


def _nbytes(shape, itemsize: int, limit: int):
    """prod(shape) * itemsize in Python ints (no overflow), or None as soon as it passes
    `limit`: a hostile shape of many huge numbers must not make us multiply them all."""
    if 0 in shape:
        return 0
    n = itemsize
    for d in shape:
        n *= d
        if n > limit:
            return None
    return n


def _check_numpy_can_hold(shape, what, path):
    # A tensor with bytes has every dimension below the file's size, but an empty one
    # ([0, 2**62, 2**62]) can be too large for numpy, and numpy caps the dimensions at
    # 32 or 64 (by version). np.empty of a size-0 shape allocates nothing.
    probe = shape if 0 in shape else [0] * len(shape)
    try:
        np.empty(probe, dtype=np.uint8)
    except (ValueError, OverflowError):
        raise _bad(path, f"{what}: numpy cannot hold an array of shape "
                         f"{_short.repr(shape)}") from None


def _check_layout(entries: dict, data_len: int, path):
    """Every byte of the data section belongs to exactly one tensor, as the reference
    implementation requires: a gap, an overlap or unused bytes at the end mean a
    damaged file (or a writer that does not follow the format)."""
    pos, last = 0, None
    for name, e in sorted(entries.items(), key=lambda item: (item[1].begin, item[1].end)):
        if e.begin < pos:
            raise _bad(path, f"tensor {_short.repr(name)} overlaps tensor "
                             f"{_short.repr(last)} (bytes {e.begin:,} to {pos:,})")
        if e.begin > pos:
            raise _bad(path, f"there is a gap in the data section (bytes {pos:,} to "
                             f"{e.begin:,} belong to no tensor)")
        pos, last = e.end, name
    if pos != data_len:
        raise _bad(path, f"{data_len - pos:,} bytes after the last tensor belong to no "
                         f"tensor")


def _map(f, path, data_start: int, data_len: int) -> np.ndarray:
    """The data section as a read-only uint8 array backed by the file (memory-mapped:
    nothing is read until a tensor is copied out of it)."""
    if data_len == 0:
        return np.zeros(0, dtype=np.uint8)  # only empty tensors; mmap refuses length 0
    try:
        data = np.memmap(f, dtype=np.uint8, mode="r", offset=data_start, shape=(data_len,))
    except (OSError, ValueError) as e:  # e.g. the file shrank since its header was read
        raise SafetensorsError(f"cannot read safetensors file {path}: {e}") from None
    return data.view(np.ndarray)  # slices of a plain array, still backed by the map


def _decode(data: np.ndarray, e: _Entry) -> np.ndarray:
    stored, loads_as = DTYPES[e.dtype]
    raw = data[e.begin:e.end].view(stored).reshape(e.shape)  # (may be unaligned: fine)
    if e.dtype == "BF16":
        # bfloat16 is the top half of a float32: shift its bits up, read them as float32
        return (raw.astype(np.uint32) << np.uint32(16)).view(np.float32)
    return raw.astype(loads_as)  # always a copy, in this machine's byte order


# ---------------------------------------------------------------------------------------
# Writing


def save(path, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None):
    """Write named arrays to one safetensors file, atomically (an interrupted save leaves
    any previous file whole). float16 arrays are stored as F16, int32 and int64 as I32
    and I64, other float arrays as F32 (float64 rounded to float32). The same arrays
    always give the same bytes, whatever the dict's order."""
    path = Path(path)
    header = {}
    # (a wrong name or metadata type is the caller's bug, so a TypeError, not a UserError)
    if metadata is not None:
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise TypeError("safetensors metadata must map strings to strings")
        header["__metadata__"] = dict(metadata)
    encoded = {name: _encode(name, tensors[name]) for name in _check_names(tensors)}
    # wide items first (then by name): with the header padded to 8 bytes, every tensor
    # then starts at a multiple of its item size, so a memory-mapped view is aligned
    order = sorted(encoded, key=lambda name: (-encoded[name][1].itemsize, name))
    arrays, offset = [], 0
    for name in order:
        dtype, a = encoded[name]
        header[name] = {"dtype": dtype, "shape": list(a.shape),
                        "data_offsets": [offset, offset + a.nbytes]}
        arrays.append(a)
        offset += a.nbytes
    text = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)

    def write(f):
        f.write(len(text).to_bytes(8, "little"))
        f.write(text)
        for a in arrays:
            f.write(a.data)

    try:
        _atomic_write(path, write)
    except OSError as e:
        raise SafetensorsError(f"cannot write safetensors file {path}: "
                               f"{e.strerror or e}") from None


def _check_names(tensors: dict) -> list[str]:
    names = list(tensors)
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"safetensors tensor names are strings, not {name!r}")
        if name == "__metadata__":
            raise ValueError("'__metadata__' is reserved for the metadata, not a tensor")
    return names


def _encode(name: str, array) -> tuple[str, np.ndarray]:
    """(file dtype, the array as little-endian C-order bytes ready to write)."""
    a = np.asarray(array)
    if a.dtype == np.float16:
        dtype = "F16"
    elif a.dtype.kind == "f":
        dtype = "F32"
    elif a.dtype in (np.int32, np.int64):
        dtype = "I32" if a.dtype == np.int32 else "I64"
    else:
        raise TypeError(f"cannot save tensor {name!r} of dtype {a.dtype} as safetensors "
                        f"(float16, float32, float64, int32 or int64)")
    return dtype, a.astype(DTYPES[dtype][0], order="C", copy=False)  # (keeps shape ())
