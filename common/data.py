"""Datasets, vocabularies, splits and batches, shared by every stage.

The data files ship in `common/data/` and are checked against their known sha256, so a
truncated or edited file is reported by name instead of silently changing every number.

    words = load_names()                        # 32,033 names
    stoi, itos = names_vocab()                  # '.' -> 0, 'a' -> 1, ..., 'z' -> 26
    (Xtr, Ytr), (Xdev, Ydev), (Xte, Yte) = makemore_splits(block_size=3)
    Xtr.shape                                   # (182625, 3)

    text = load_shakespeare()                   # 1,115,394 characters
    chars = sorted(set(text))                   # 65 characters, '\\n' and ' ' first
"""

from __future__ import annotations

import hashlib
import random
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
