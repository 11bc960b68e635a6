"""common/data.py: the dataset facts every stage relies on."""

import shutil

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
