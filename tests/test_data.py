"""common/data.py: the dataset facts every stage relies on."""

import doctest
import gzip
import re
import shutil
import struct

import numpy as np
import pytest

from common import data
from common.cli import UserError


def test_names_facts():
    words = data.load_names()
    assert len(words) == 32033
    assert min(map(len, words)) == 2 and max(map(len, words)) == 15
    assert words[:3] == ["emma", "olivia", "ava"]


def test_names_vocab():
    stoi, itos = data.names_vocab()
    assert len(stoi) == 27
    assert itos[0] == "." and stoi["a"] == 1 and stoi["z"] == 26
    assert "".join(itos[i] for i in range(27)) == ".abcdefghijklmnopqrstuvwxyz"


def test_split_is_pythons_seeded_shuffle():
    words = data.load_names()
    train, dev, test = data.split_words(words)
    assert (len(train), len(dev), len(test)) == (25626, 3203, 3204)
    assert train[0] == "yuheng"  # the first shuffled word the lectures print
    assert sorted(train + dev + test) == sorted(words)
    assert words[0] == "emma"  # the caller's list is left alone


@pytest.mark.parametrize("block_size", [3, 8])
def test_makemore_split_sizes(block_size):
    (Xtr, Ytr), (Xdev, Ydev), (Xte, Yte) = data.makemore_splits(block_size)
    assert (len(Xtr), len(Xdev), len(Xte)) == (182625, 22655, 22866)
    assert Xtr.shape == (182625, block_size) and Xtr.dtype == np.int64
    assert len(Ytr) == 182625 and Ytr.max() == 26 and Ytr.min() == 0


def test_context_windows_for_emma():
    stoi, _ = data.names_vocab()
    X, Y = data.build_dataset(["emma"], 3, stoi)
    # ... -> e, ..e -> m, .em -> m, emm -> a, mma -> .
    assert X.tolist() == [[0, 0, 0], [0, 0, 5], [0, 5, 13], [5, 13, 13], [13, 13, 1]]
    assert Y.tolist() == [5, 13, 13, 1, 0]
    with pytest.raises(UserError):
        data.build_dataset(["emma"], 0, stoi)


def test_shakespeare_facts():
    text = data.load_shakespeare()
    assert len(text) == 1115394
    chars, stoi, itos = data.char_vocab(text)
    assert len(chars) == 65 and chars[:2] == ["\n", " "]
    ids = data.encode_chars(text, stoi)
    train, val = data.train_val_split(ids)
    assert (len(train), len(val)) == (1003854, 111540)
    assert "".join(itos[i] for i in ids[:14]) == "First Citizen:"


def test_unknown_characters_are_a_user_error():
    _, stoi, _ = data.char_vocab("abc")
    with pytest.raises(UserError, match="outside the vocabulary"):
        data.encode_chars("abz", stoi)


def test_missing_and_damaged_files_are_named(tmp_path):
    with pytest.raises(data.DataError, match="names.txt is missing"):
        data.load_names(tmp_path)
    shutil.copy(data.DATA_DIR / "names.txt", tmp_path / "names.txt")
    assert len(data.load_names(tmp_path)) == 32033
    with open(tmp_path / "names.txt", "a") as f:
        f.write("zzz\n")
    with pytest.raises(data.DataError, match="names.txt is damaged"):
        data.load_names(tmp_path)


def test_shipped_rank_files_are_intact():
    for name in ("r50k_base.tiktoken", "cl100k_base.tiktoken"):
        assert len(data.read_bytes(name)) > 800_000


# ---------------------------------------------------------------------------------------
# images: Fashion-MNIST and the 5,000-digit MNIST sample (IDX files)


@pytest.fixture(scope="module")
def fashion():
    return data.load_fashion_mnist()  # about half a second; loaded once for these tests


def test_fashion_mnist_facts(fashion):
    (Xtr, Ytr), (Xte, Yte) = fashion
    assert Xtr.shape == (60000, 28, 28) and Xte.shape == (10000, 28, 28)
    assert Ytr.shape == (60000,) and Yte.shape == (10000,)
    assert Xtr.dtype == Xte.dtype == Ytr.dtype == Yte.dtype == np.uint8
    assert np.bincount(Ytr).tolist() == [6000] * 10  # 10 classes, balanced
    assert np.bincount(Yte).tolist() == [1000] * 10
    assert Ytr[:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]  # the file's order
    assert Yte[:5].tolist() == [9, 2, 1, 1, 6]
    assert Xtr.min() == 0 and Xtr.max() == 255
    # the mean pixel: 72.94 / 255 = 0.2860, the normalisation constant everyone quotes
    assert round(float(Xtr.mean()), 4) == 72.9404
    assert round(float(Xte.mean()), 4) == 73.1466
    assert int(Xtr[0].sum()) == 76247


def test_fashion_class_names(fashion):
    (_, Ytr), _ = fashion
    assert len(data.FASHION_CLASSES) == 10
    assert data.FASHION_CLASSES[0] == "T-shirt/top" and data.FASHION_CLASSES[9] == "Ankle boot"
    assert data.FASHION_CLASSES[Ytr[0]] == "Ankle boot"  # as the module docstring says


def test_mnist5k_facts():
    X, Y = data.load_mnist5k()
    assert X.shape == (5000, 28, 28) and Y.shape == (5000,)
    assert X.dtype == Y.dtype == np.uint8
    assert Y.tolist() == np.repeat(np.arange(10), 500).tolist()  # 500 of each, sorted
    assert X.min() == 0 and X.max() == 255
    assert int(X[0].sum()) == 31095
    assert round(float(X.mean()), 4) == 33.4865
    X[0, 0, 0] = 1  # a learner may shuffle or edit in place: the arrays are writable


def test_docstring_examples():
    result = doctest.testmod(data)
    assert result.attempted >= 3 and result.failed == 0


def test_every_shipped_file_has_a_sha256():
    assert sorted(p.name for p in data.DATA_DIR.iterdir()) == sorted(data.SHA256)


def idx(magic, *dims, payload=None):
    """An IDX file's bytes: the big-endian header, then `payload` (zeros to fit by
    default)."""
    if payload is None:
        payload = bytes(int(np.prod(dims)))
    return struct.pack(f">{1 + len(dims)}I", magic, *dims) + payload


BAD_IDX = {  # a file's (uncompressed) bytes -> what the one-line error says
    "wrong magic": (idx(2052, 2, 28, 28), "not an IDX file"),
    "float data": (idx(0x0D03, 2, 28, 28), "not an IDX file"),
    "empty": (b"", "not an IDX file"),
    "header cut short": (idx(2051, 2, 28, 28)[:10], "cut short inside its IDX header"),
    "truncated payload": (idx(2051, 2, 28, 28)[:-100],
                          "has 1,468 bytes of data but its header says 2 x 28 x 28 = 1,568"),
    "more labels claimed": (idx(2049, 10, payload=bytes(9)),
                            "has 9 bytes of data but its header says 10 = 10"),
    "trailing bytes": (idx(2049, 3) + b"\0", "has 4 bytes of data but its header says 3"),
}


@pytest.mark.parametrize("case", sorted(BAD_IDX))
def test_bad_idx_files_are_one_named_line(tmp_path, case):
    raw, message = BAD_IDX[case]
    (tmp_path / "bad-idx3-ubyte.gz").write_bytes(gzip.compress(raw))
    with pytest.raises(data.DataError, match=re.escape(message)) as e:
        data.read_idx("bad-idx3-ubyte.gz", tmp_path)
    assert str(tmp_path / "bad-idx3-ubyte.gz") in str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("raw", [b"not gzip at all", gzip.compress(idx(2049, 3))[:-6]],
                         ids=["not gzip", "gzip stream cut short"])
def test_bad_gzip_is_one_named_line(tmp_path, raw):
    (tmp_path / "bad-idx1-ubyte.gz").write_bytes(raw)
    with pytest.raises(data.DataError, match="bad-idx1-ubyte.gz is not a valid gzip") as e:
        data.read_idx("bad-idx1-ubyte.gz", tmp_path)
    assert "\n" not in str(e.value)


def test_good_idx_file_round_trips(tmp_path):
    pixels = np.arange(2 * 3 * 4, dtype=np.uint8)
    (tmp_path / "tiny.gz").write_bytes(gzip.compress(idx(2051, 2, 3, 4,
                                                         payload=pixels.tobytes())))
    X = data.read_idx("tiny.gz", tmp_path)
    assert X.dtype == np.uint8 and X.tolist() == pixels.reshape(2, 3, 4).tolist()


MNIST5K = ("mnist5k-images-idx3-ubyte.gz", "mnist5k-labels-idx1-ubyte.gz")


def test_missing_and_damaged_image_files_are_named(tmp_path):
    with pytest.raises(data.DataError, match="fashion-train-images-idx3-ubyte.gz is missing"):
        data.load_fashion_mnist(tmp_path)
    with pytest.raises(data.DataError, match="mnist5k-images-idx3-ubyte.gz is missing"):
        data.load_mnist5k(tmp_path)
    for name in MNIST5K:
        shutil.copy(data.DATA_DIR / name, tmp_path / name)
    assert data.load_mnist5k(tmp_path)[0].shape == (5000, 28, 28)
    raw = bytearray((tmp_path / MNIST5K[1]).read_bytes())
    raw[-5] ^= 1  # one bit of the gzip trailer
    (tmp_path / MNIST5K[1]).write_bytes(raw)
    with pytest.raises(data.DataError, match="mnist5k-labels-idx1-ubyte.gz is damaged") as e:
        data.load_mnist5k(tmp_path)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("images, labels, message", [
    (idx(2051, 2, 28, 28), idx(2049, 3), "does not hold one label per image"),
    (idx(2051, 2, 28, 28), idx(2051, 2, 28, 28), "does not hold one label per image"),
    (idx(2051, 2, 27, 28), idx(2049, 2), "does not hold 28 x 28 images"),
    (idx(2049, 2), idx(2049, 2), "does not hold 28 x 28 images"),
    (idx(2051, 2, 28, 28), idx(2049, 2, payload=b"\x03\x0a"), "a label 10 outside 0..9"),
], ids=["counts differ", "labels are images", "27 rows", "images are labels", "label 10"])
def test_images_and_labels_must_agree(tmp_path, monkeypatch, images, labels, message):
    # files with the shipped names but other contents: lift their sha256 checks so the
    # loader's own checks are what answer
    for name, raw in zip(MNIST5K, (images, labels)):
        monkeypatch.delitem(data.SHA256, name)
        (tmp_path / name).write_bytes(gzip.compress(raw))
    with pytest.raises(data.DataError, match=re.escape(message)) as e:
        data.load_mnist5k(tmp_path)
    assert str(tmp_path) in str(e.value) and "mnist5k-" in str(e.value)
    assert "\n" not in str(e.value)
