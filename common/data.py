"""Datasets, vocabularies, splits and batches, shared by every stage.

The data files ship in `common/data/` and are checked against their known sha256, so a
truncated or edited file is reported by name instead of silently changing every number.

    words = load_names()                        # 32,033 names
    stoi, itos = names_vocab()                  # '.' -> 0, 'a' -> 1, ..., 'z' -> 26
    (Xtr, Ytr), (Xdev, Ydev), (Xte, Yte) = makemore_splits(block_size=3)
    Xtr.shape                                   # (182625, 3)

    text = load_shakespeare()                   # 1,115,394 characters
    chars = sorted(set(text))                   # 65 characters, '\\n' and ' ' first

    (Xtr, Ytr), (Xte, Yte) = load_fashion_mnist()  # 60,000 / 10,000 uint8 28 x 28 images
    FASHION_CLASSES[Ytr[0]]                     # 'Ankle boot'
    X, Y = load_mnist5k()                       # 5,000 digits, 500 of each, sorted by digit
"""

from __future__ import annotations

import gzip
import hashlib
import random
import zlib
from pathlib import Path

import numpy as np

from common.cli import UserError

DATA_DIR = Path(__file__).resolve().parent / "data"

# sha256 of the shipped files (the rank files are the exact ones tiktoken checks).
SHA256 = {
    "names.txt": "0a30b5557f192f32ab962680889aac5f6fda0f4cecf40a6d0b5694f58ea8cc4d",
    "tinyshakespeare.txt": "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
    "r50k_base.tiktoken": "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930",
    "cl100k_base.tiktoken": "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
    "fashion-train-images-idx3-ubyte.gz":
        "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
    "fashion-train-labels-idx1-ubyte.gz":
        "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
    "fashion-t10k-images-idx3-ubyte.gz":
        "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
    "fashion-t10k-labels-idx1-ubyte.gz":
        "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
    "mnist5k-images-idx3-ubyte.gz":
        "48e13f85a421673a98f8683b95f79e04dfb31dd4454840908b4c2ae71cb1b29a",
    "mnist5k-labels-idx1-ubyte.gz":
        "b87ffd33979c6c37d1d57891359eb8be61e061ddda9156bfdc82c06710f1abcc",
}


class DataError(UserError):
    """A data file is missing or damaged."""


def read_bytes(name: str, data_dir: Path | None = None) -> bytes:
    """The bytes of a shipped data file, verified against its sha256."""
    path = Path(data_dir or DATA_DIR) / name
    if not path.is_file():
        raise DataError(f"data file {path} is missing; it ships with the repository "
                        f"(restore it with `git checkout -- {path.name}` in {path.parent})")
    raw = path.read_bytes()
    want = SHA256.get(name)
    if want is not None and hashlib.sha256(raw).hexdigest() != want:
        raise DataError(f"data file {path} is damaged (its sha256 does not match the "
                        f"shipped file); restore it from the repository")
    return raw


def read_text(name: str, data_dir: Path | None = None) -> str:
    return read_bytes(name, data_dir).decode("utf-8")


# ---------------------------------------------------------------------------------------
# names.txt: makemore's dataset


def load_names(data_dir: Path | None = None) -> list[str]:
    """The 32,033 names of names.txt, in file order (lengths 2 to 15)."""
    return read_text("names.txt", data_dir).splitlines()


def names_vocab(words: list[str] | None = None):
    """(stoi, itos): '.' (start and end of a name) at index 0, then the letters sorted.
    For names.txt that is '.', 'a', ..., 'z': 27 characters."""
    chars = sorted(set("".join(words if words is not None else load_names())))
    stoi = {s: i + 1 for i, s in enumerate(chars)}
    stoi["."] = 0
    itos = {i: s for s, i in stoi.items()}
    return stoi, itos


def split_words(words: list[str], seed: int = 42):
    """The lectures' split: `random.seed(42); random.shuffle(words)`, then the first 80%
    of the words for training, the next 10% for dev (validation), the last 10% for test.
    Returns three lists; the input list is not modified."""
    words = list(words)
    random.Random(seed).shuffle(words)  # same stream as random.seed(seed); random.shuffle
    n1, n2 = int(0.8 * len(words)), int(0.9 * len(words))
    return words[:n1], words[n1:n2], words[n2:]


def build_dataset(words: list[str], block_size: int, stoi: dict):
    """Context windows: for every character of every name (and the final '.'), the
    `block_size` previous characters, padded with '.' (index 0) at the start.

    >>> X, Y = build_dataset(["emma"], 3, names_vocab()[0])
    >>> X.tolist()[:2], Y.tolist()[:2]            # '...' -> 'e', '..e' -> 'm'
    ([[0, 0, 0], [0, 0, 5]], [5, 13])
    """
    if block_size < 1:
        raise UserError(f"block size must be at least 1, got {block_size}")
    X, Y = [], []
    for w in words:
        context = [0] * block_size
        for ch in w + ".":
            ix = stoi[ch]
            X.append(context)
            Y.append(ix)
            context = context[1:] + [ix]  # slide the window one character on
    X = np.array(X, dtype=np.int64).reshape(len(Y), block_size)
    return X, np.array(Y, dtype=np.int64)


def makemore_splits(block_size: int, seed: int = 42):
    """((Xtr, Ytr), (Xdev, Ydev), (Xte, Yte)) for names.txt with the lectures' split; for
    block size 3 (and 8) the sizes are 182,625 / 22,655 / 22,866 examples."""
    words = load_names()
    stoi, _ = names_vocab(words)
    return tuple(build_dataset(part, block_size, stoi) for part in split_words(words, seed))


# ---------------------------------------------------------------------------------------
# tiny Shakespeare: character-level language modelling


def load_shakespeare(data_dir: Path | None = None) -> str:
    """Tiny Shakespeare: 1,115,394 characters, 65 distinct."""
    return read_text("tinyshakespeare.txt", data_dir)


def char_vocab(text: str):
    """(chars, stoi, itos) of a text: the sorted distinct characters and their indices."""
    chars = sorted(set(text))
    stoi = {ch: i for i, ch in enumerate(chars)}
    return chars, stoi, dict(enumerate(chars))


def encode_chars(text: str, stoi: dict) -> np.ndarray:
    """Characters -> int64 indices; a character outside the vocabulary is a UserError."""
    unknown = sorted(set(text) - set(stoi))
    if unknown:
        raise UserError(f"text has characters outside the vocabulary: "
                        f"{''.join(unknown)!r}")
    return np.array([stoi[ch] for ch in text], dtype=np.int64)


def train_val_split(data: np.ndarray, train_fraction: float = 0.9):
    """First 90% for training, the rest for validation (tiny Shakespeare: 1,003,854 /
    111,540 characters)."""
    n = int(train_fraction * len(data))
    return data[:n], data[n:]


# ---------------------------------------------------------------------------------------
# images: Fashion-MNIST and a 5,000-digit MNIST sample, both gzip-compressed IDX files

IDX_IMAGES, IDX_LABELS = 2051, 2049  # magic 0x00000803 (uint8, 3 dims), 0x00000801 (1 dim)

FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


def read_idx(name: str, data_dir: Path | None = None) -> np.ndarray:
    """A gzip-compressed IDX file as a uint8 array: images (magic 2051) as (N, rows, cols),
    labels (magic 2049) as (N,). The header is big-endian: the magic number, then one
    4-byte size per dimension, then the pixels or labels, one byte each, row by row.

    >>> read_idx("mnist5k-labels-idx1-ubyte.gz").shape
    (5000,)
    """
    path = Path(data_dir or DATA_DIR) / name
    raw = read_bytes(name, data_dir)  # verifies the sha256 of a shipped file
    try:
        buf = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"data file {path} is not a valid gzip file ({e})") from None
    magic = int.from_bytes(buf[:4], "big")
    if len(buf) < 4 or magic not in (IDX_IMAGES, IDX_LABELS):
        raise DataError(f"data file {path} is not an IDX file of uint8 images or labels "
                        f"(magic number {magic}, expected {IDX_IMAGES} or {IDX_LABELS})")
    ndim = magic & 0xFF  # the magic's last byte is the number of dimensions: 3 or 1
    start = 4 + 4 * ndim
    if len(buf) < start:
        raise DataError(f"data file {path} is cut short inside its IDX header")
    shape = tuple(int.from_bytes(buf[i:i + 4], "big") for i in range(4, start, 4))
    size = int(np.prod(shape))
    if len(buf) - start != size:
        dims = " x ".join(f"{n:,}" for n in shape)
        raise DataError(f"data file {path} has {len(buf) - start:,} bytes of data but its "
                        f"header says {dims} = {size:,}")
    # copy, so the array is writable and owns its memory (the decompressed bytes are freed)
    return np.frombuffer(buf, dtype=np.uint8, offset=start).reshape(shape).copy()


def load_idx_pair(images_name: str, labels_name: str, data_dir: Path | None = None):
    """(X, Y): images (N, 28, 28) and labels (N,) in 0..9, both uint8, checked to agree."""
    X, Y = read_idx(images_name, data_dir), read_idx(labels_name, data_dir)
    path = Path(data_dir or DATA_DIR)
    if X.ndim != 3 or X.shape[1:] != (28, 28):
        raise DataError(f"data file {path / images_name} does not hold 28 x 28 images "
                        f"(shape {X.shape})")
    if Y.ndim != 1 or len(Y) != len(X):
        raise DataError(f"data file {path / labels_name} does not hold one label per image "
                        f"of {images_name} (shape {Y.shape}, {len(X):,} images)")
    if len(Y) and Y.max() > 9:
        raise DataError(f"data file {path / labels_name} has a label {Y.max()} "
                        f"outside 0..9")
    return X, Y


def load_fashion_mnist(data_dir: Path | None = None):
    """((Xtr, Ytr), (Xte, Yte)): Fashion-MNIST's 60,000 training and 10,000 test images,
    uint8 (N, 28, 28) greyscale (0 is the black background), and their uint8 labels 0..9,
    which `FASHION_CLASSES` names (6,000 of each class in train, 1,000 in test)."""
    return (load_idx_pair("fashion-train-images-idx3-ubyte.gz",
                          "fashion-train-labels-idx1-ubyte.gz", data_dir),
            load_idx_pair("fashion-t10k-images-idx3-ubyte.gz",
                          "fashion-t10k-labels-idx1-ubyte.gz", data_dir))


def load_mnist5k(data_dir: Path | None = None):
    """(X, Y): 5,000 real MNIST digits, uint8 (5000, 28, 28) images and uint8 labels 0..9,
    500 of each digit, sorted by digit as shipped (all the 0s first). There is no split:
    shuffle and split them yourself."""
    return load_idx_pair("mnist5k-images-idx3-ubyte.gz", "mnist5k-labels-idx1-ubyte.gz",
                         data_dir)
