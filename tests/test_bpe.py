"""common/bpe.py: training (tie rule, incremental counts), tiktoken-exact encoding with the
GPT-2 and GPT-4 ranks, special tokens, save/load, the command line and its errors."""

import base64
import doctest
import io
import json
import os
import random
import subprocess
import sys
import time

import numpy as np
import pytest
import regex
import tiktoken
import tiktoken.load

from common import bpe, cli, data
from conftest import ROOT, assert_one_line_error, run_script

# The split patterns as tiktoken's r50k_base and cl100k_base define them, written out here
# so that a change to the module's constants cannot go unnoticed.
TIKTOKEN_R50K_PATTERN = (
    r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
)
TIKTOKEN_CL100K_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++"""
    r"""[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)

EDGE_CASES = [
    "", " ", "  ", "\n", "\n\n\n", "\t\t x", "hello world", "Hello World!!!",
    "hello123!!!? (안녕하세요!) 😉",
    "I'm you're they'll we've she'd it's IT'S DON'T We'Ve 'S",
    "'s'S''' ''", "12345678901234567890", "3.14159, 1,000,000 and 0x1F; -42e-7",
    "   leading and trailing   ", "a  b   c    d     e", "line1\r\nline2\rline3\n",
    "    \n    \n", "trailing newline\n", "x\n \n", "spaces before newline   \nnext",
    "emoji: 👍🏽 👨‍👩‍👧‍👦 🇫🇷 😉😉😉 🫠", "한국어 텍스트와 English mixed",
    "日本語のテキスト、中文文本。", "Ελληνικά и русский текст", "مرحبا بالعالم", "हिन्दी भाषा",
    "tabs\tand\u00a0nbsp\u2009thin\u3000ideographic", "\x00\x01\x1b[31mred\x1b[0m\x7f",
    "\ufeffbyte order mark", "combining: e\u0301 a\u0308 n\u0303", "zero\u200bwidth\u200djoin",
    "١٢٣ ४५६ Ⅻ Ⅳ ²³ ½", "def f(x):\n    return x ** 2  # square\n",
    "<html><body>&amp;&nbsp;</body></html>", "a" * 300, " " * 300, "ab" * 200, "🙂" * 50,
    "9" * 40, "lone high \ud800 surrogate", "lone low \udfff", "pair \ud83d\ude00 of halves",
    "\x1c\x1d\x1e\x1f separators", "\u2028\u2029\x85 breaks", "\U0001F600\U0010FFFF\uFFFF",
    "<|endoftext|> written as text", "<|fim_prefix|>a<|fim_suffix|>b<|fim_middle|>",
]


def fix(text):
    return bpe.fix_surrogates(text)


def fuzz_strings(n=300, seed=0):
    """Random short strings from a pool that exercises every branch of the patterns."""
    pool = list("aZ09 '\n\r\t.,!?-_()é한😉\u00a0\u3000\u0301\ud800\x1c") + [
        "'s", "'LL", "  ", "\r\n", "123", "�"]
    rng = random.Random(seed)
    return ["".join(rng.choice(pool) for _ in range(rng.randint(1, 30))) for _ in range(n)]


def reference_train(text, vocab_size, pattern):
    """The lecture's trainer, recounting every pair after every merge: the pair to merge
    is `max` over an insertion-ordered count dict, i.e. the first most frequent pair."""
    chunks = regex.findall(pattern, text) if pattern else [text]
    ids = [list(chunk.encode("utf-8")) for chunk in chunks]
    vocab = {i: bytes([i]) for i in range(256)}
    merges = {}
    while len(vocab) < vocab_size:
        stats = {}
        for chunk_ids in ids:
            bpe.get_stats(chunk_ids, stats)
        if not stats:
            break
        pair = max(stats, key=stats.get)
        idx = len(vocab)
        vocab[idx] = vocab[pair[0]] + vocab[pair[1]]
        merges[pair] = idx
        ids = [bpe.merge(chunk_ids, pair, idx) for chunk_ids in ids]
    return merges, vocab, sum(map(len, ids))


def tiktoken_from_file(name, pattern, special_tokens):
    """A tiktoken.Encoding from a shipped rank file, parsed here (offline, no cache)."""
    raw = (data.DATA_DIR / name).read_bytes()
    ranks = {base64.b64decode(token): int(rank)
             for token, rank in (line.split() for line in raw.splitlines() if line)}
    return tiktoken.Encoding(name=name, pat_str=pattern, mergeable_ranks=ranks,
                             special_tokens=special_tokens)


def saved_with(tok, folder, **meta):
    """Save `tok` into `folder`, then change fields of its tokenizer.json, as a hand edit
    (or another program) might."""
    tok.save(folder)
    path = folder / bpe.META_FILE
    path.write_text(json.dumps(json.loads(path.read_text()) | meta))
    return folder


@pytest.fixture(scope="module")
def gpt2_pair():
    return bpe.gpt2(), tiktoken_from_file("r50k_base.tiktoken", TIKTOKEN_R50K_PATTERN,
                                          {"<|endoftext|>": 50256})


@pytest.fixture(scope="module")
def gpt4_pair():
    specials = {"<|endoftext|>": 100257, "<|fim_prefix|>": 100258, "<|fim_middle|>": 100259,
                "<|fim_suffix|>": 100260, "<|endofprompt|>": 100276}
    return bpe.gpt4(), tiktoken_from_file("cl100k_base.tiktoken", TIKTOKEN_CL100K_PATTERN,
                                          specials)


@pytest.fixture(scope="module")
def shakespeare():
    return data.load_shakespeare()


@pytest.fixture(scope="module")
def small_tok(shakespeare):
    """A 512-token tokenizer trained on the first 50,000 characters of tiny Shakespeare."""
    return bpe.Tokenizer().train(shakespeare[:50_000], 512, special_tokens=["<|endoftext|>"])


# ---------------------------------------------------------------------------------------
# Lecture helpers and training


def test_docstring_examples():
    result = doctest.testmod(bpe)
    assert result.attempted >= 15 and result.failed == 0


def test_docstring_names_what_the_unicode_difference_depends_on():
    # how many code points chunk differently from tiktoken depends on the installed regex
    # and tiktoken versions, so the module must not pin a number for it
    doc = " ".join(bpe.__doc__.split())
    assert "Unicode tables" in doc and "`regex` module" in doc and "pip show regex" in doc
    assert not regex.search(r"\d[\d,]* (letters|code points|characters)", doc)


def test_lecture_example_and_tie_rule():
    # "aaabdaaabac": (97, 97) occurs 4 times; then (256, 97) and (97, 98) both occur twice,
    # and (256, 97) comes first in the text; then (257, 98) -> 258.
    tok = bpe.Tokenizer().train("aaabdaaabac", 259, pattern=None)
    assert tok.merges == {(97, 97): 256, (256, 97): 257, (257, 98): 258}
    assert tok.encode("aaabdaaabac") == [258, 100, 258, 97, 99]
    assert tok.decode([258, 100, 258, 97, 99]) == "aaabdaaabac"
    assert tok.vocab[258] == b"aaab" and tok.vocab_size == 259
    # a tie between pairs of equal count goes to the one seen first: here "cd" before "ab"
    assert bpe.Tokenizer().train("cd ab cd ab", 257).merges == {(99, 100): 256}
    assert bpe.Tokenizer().train("ab cd ab cd", 257).merges == {(97, 98): 256}


@pytest.mark.parametrize("alphabet, length, vocab_size, pattern", [
    ("ab", 400, 330, None),                      # many ties, long runs
    ("aab", 300, 300, None),
    ("ab \n", 600, 320, bpe.GPT4_SPLIT_PATTERN),
    ("abc d'\n1", 800, 340, bpe.GPT2_SPLIT_PATTERN),
    ("é한😉 a", 300, 320, bpe.GPT4_SPLIT_PATTERN),   # multi-byte characters
])
def test_incremental_training_matches_recounting(alphabet, length, vocab_size, pattern):
    rng = random.Random(length + vocab_size)
    text = "".join(rng.choice(alphabet) for _ in range(length))
    tok = bpe.Tokenizer().train(text, vocab_size, pattern=pattern)
    merges, vocab, n_tokens = reference_train(text, vocab_size, pattern)
    assert list(tok.merges.items()) == list(merges.items())  # same merges, same order
    assert tok.vocab == vocab
    assert tok.history[-1] == (len(vocab), n_tokens)
    assert len(set(vocab.values())) == len(vocab)  # no two tokens with the same bytes


def test_training_on_shakespeare_matches_recounting(shakespeare):
    text = shakespeare[:8_000]
    tok = bpe.Tokenizer().train(text, 340, pattern=bpe.GPT2_SPLIT_PATTERN)
    merges, vocab, n_tokens = reference_train(text, 340, bpe.GPT2_SPLIT_PATTERN)
    assert list(tok.merges.items()) == list(merges.items())
    assert tok.history[-1] == (340, n_tokens)


def test_training_facts(small_tok, shakespeare, capsys):
    # pinned from a run: the first merges on tiny Shakespeare (GPT-4 split)
    first = [small_tok.vocab[i] for i in range(256, 262)]
    assert first == [b" t", b"he", b"ou", b" a", b" the", b" w"]
    assert list(small_tok.merges)[4] == (256, 257)  # " t" + "he"
    assert small_tok.special_tokens == {"<|endoftext|>": 512}
    assert small_tok.vocab_size == 513
    sizes = [v for v, _ in small_tok.history]
    assert sizes == list(range(256, 513))
    assert small_tok.history[0][1] == 50_000           # one token per byte to start
    tokens = [t for _, t in small_tok.history]
    assert all(a > b for a, b in zip(tokens, tokens[1:]))  # every merge compresses
    # a progress line, at a steady rhythm, when verbose
    bpe.Tokenizer().train(shakespeare[:5000], 300, verbose=True)
    lines = capsys.readouterr().out.strip().splitlines()
    assert 10 <= len(lines) <= 12 and lines[-1].startswith("merge 44/44: ")
    assert "bytes/token" in lines[-1] and "ms/merge" in lines[-1] and "left" in lines[-1]


def test_training_stops_when_pairs_run_out(capsys):
    tok = bpe.Tokenizer().train("abc", 1000, verbose=True)
    assert tok.vocab_size == 258 and tok.encode("abc") == [257]
    assert "no pairs left to merge: stopping at vocabulary 258" in capsys.readouterr().out


@pytest.mark.parametrize("size", [255, 0, -3, 300.5])
def test_vocab_size_below_256_is_an_error(size):
    with pytest.raises(ValueError, match="at least 256"):
        bpe.Tokenizer().train("hello", size)


def test_recovered_merges_equal_trained_ones(small_tok):
    assert bpe.recover_merges(small_tok.ranks) == small_tok.merges


def test_merges_and_ranks_encode_alike(small_tok, gpt2_pair, shakespeare):
    """The lecture's merge-by-merge encoder and the rank-based one give the same ids, for a
    trained tokenizer and for GPT-2's rank file (with its recovered merges)."""
    names = data.read_text("names.txt")[:20_000]
    for tok, text in ((small_tok, shakespeare[:60_000]), (gpt2_pair[0], names)):
        single = {b: tok.ranks[bytes([b])] for b in range(256)}
        for piece in sorted(set(regex.findall(tok.pattern, text + "".join(EDGE_CASES)))):
            ids = [single[b] for b in fix(piece).encode("utf-8")]
            assert bpe.encode_with_merges(ids, tok.merges) == tok.encode_ordinary(piece), piece


def test_long_chunks_merge_like_short_ones(small_tok):
    rng = random.Random(1)
    ranks = small_tok.ranks
    for _ in range(30):
        piece = "".join(rng.choice("the, and\n ou") for _ in range(rng.randint(2, 400)))
        piece = piece.encode()
        assert bpe._merge_long(piece, ranks, bpe._NO_RANK) == \
            bpe._merge_short(piece, ranks, bpe._NO_RANK)


# ---------------------------------------------------------------------------------------
# GPT-2 and GPT-4: the same ids as tiktoken


def test_patterns_are_tiktokens():
    assert bpe.GPT2_SPLIT_PATTERN == TIKTOKEN_R50K_PATTERN
    assert bpe.GPT4_SPLIT_PATTERN == TIKTOKEN_CL100K_PATTERN


def test_gpt2_facts(gpt2_pair, shakespeare):
    ours, ref = gpt2_pair
    assert ours.encode("hello world") == [31373, 995]
    assert ours.vocab_size == ref.n_vocab == 50257
    ids = ours.encode(shakespeare)
    assert len(ids) == 338_025
    assert ids == ref.encode(shakespeare)
    assert ours.decode(ids) == shakespeare
    assert list(ours.merges.items())[0] == ((220, 83), 256)  # " " + "t"


def test_gpt4_facts(gpt4_pair, shakespeare):
    ours, ref = gpt4_pair
    assert ours.encode("hello123!!!? (안녕하세요!) 😉") == [
        15339, 4513, 12340, 30, 320, 31495, 230, 75265, 243, 92245, 16715, 57037]
    assert ours.encode("<|endoftext|>hello world", allowed_special="all") == [
        100257, 15339, 1917]
    assert ours.vocab_size == ref.n_vocab == 100277
    ids = ours.encode(shakespeare)
    assert len(ids) == 301_829
    assert ids == ref.encode(shakespeare)


@pytest.mark.parametrize("which", ["gpt2", "gpt4"])
def test_names_edge_cases_and_fuzz_match_tiktoken(which, gpt2_pair, gpt4_pair):
    ours, ref = gpt2_pair if which == "gpt2" else gpt4_pair
    names = data.read_text("names.txt")
    assert ours.encode(names) == ref.encode(names)
    for text in EDGE_CASES + fuzz_strings():
        assert ours.encode(text, disallowed_special=()) == \
            ref.encode(text, disallowed_special=()), repr(text)


def test_rank_file_round_trips_byte_for_byte(gpt2_pair):
    ours, _ = gpt2_pair
    shipped = data.read_bytes("r50k_base.tiktoken")
    assert bpe.format_ranks(ours.ranks).encode("ascii") == shipped


# ---------------------------------------------------------------------------------------
# Special tokens, decoding


def test_special_tokens_follow_tiktoken(gpt2_pair, gpt4_pair):
    ours, ref = gpt2_pair
    text = "a<|endoftext|>b"
    with pytest.raises(ValueError, match="special token '<\\|endoftext\\|>'.*not allowed"):
        ours.encode(text)
    with pytest.raises(ValueError):
        ref.encode(text)
    for kwargs in ({"allowed_special": "all"}, {"allowed_special": {"<|endoftext|>"}},
                   {"disallowed_special": ()}, {"disallowed_special": "none"}):
        tk_kwargs = {k: (() if v == "none" else v) for k, v in kwargs.items()}
        assert ours.encode(text, **kwargs) == ref.encode(text, **tk_kwargs), kwargs
    assert ours.encode("<|endoftext|>", allowed_special="all") == [50256]
    assert ours.encode("<|endoftext|>", disallowed_special=()) == [27, 91, 437, 1659, 5239,
                                                                   91, 29]
    ours4, ref4 = gpt4_pair
    text = "<|fim_prefix|>x<|fim_suffix|>y<|fim_middle|><|endoftext|><|endofprompt|>"
    allowed = {"<|fim_prefix|>", "<|fim_suffix|>"}
    assert ours4.encode(text, allowed_special=allowed, disallowed_special=()) == \
        ref4.encode(text, allowed_special=allowed, disallowed_special=())
    assert ours4.encode(text, allowed_special="all") == ref4.encode(text, allowed_special="all")
    with pytest.raises(ValueError, match="<\\|fim_middle\\|>"):
        ours4.encode(text, allowed_special=allowed)


def test_unknown_special_names_follow_tiktoken(gpt2_pair):
    """A name in allowed_special that is not a special token is ignored, as in tiktoken;
    one in disallowed_special refuses text that contains it, as in tiktoken."""
    ours, ref = gpt2_pair
    for text, kwargs in [
            ("x<|nope|>y", {"allowed_special": {"<|nope|>"}}),
            ("x<|nope|>y<|endoftext|>", {"allowed_special": {"<|nope|>", "<|endoftext|>"}}),
            ("x<|nope|>y<|endoftext|>", {"allowed_special": {"<|nope|>"},
                                        "disallowed_special": ()}),
            ("plain text", {"disallowed_special": {"<|nope|>"}})]:
        assert ours.encode(text, **kwargs) == ref.encode(text, **kwargs), kwargs
    for text, kwargs in [("x<|nope|>y", {"disallowed_special": {"<|nope|>"}}),
                         ("x<|nope|>y<|endoftext|>", {"allowed_special": {"<|nope|>"}})]:
        with pytest.raises(ValueError):
            ref.encode(text, **kwargs)
        with pytest.raises(ValueError, match="not allowed"):
            ours.encode(text, **kwargs)


def test_decode(gpt2_pair):
    ours, ref = gpt2_pair
    assert ours.decode_bytes([31373, 50256]) == b"hello<|endoftext|>"
    # a token can hold part of a character: the bytes survive, the text shows U+FFFD
    ids = ours.encode("😉")
    assert len(ids) == 2
    assert ours.decode_bytes(ids[:1]) + ours.decode_bytes(ids[1:]) == "😉".encode()
    assert ours.decode(ids[:1]) == ref.decode(ids[:1]) == "\ufffd"
    for bad in ([50257], [-1], [3, 10**9]):
        with pytest.raises(ValueError, match="unknown token id"):
            ours.decode(bad)


def test_decode_refuses_non_integer_ids_like_tiktoken(gpt2_pair):
    ours, ref = gpt2_pair
    for bad in ([1.0], [31373.0, 995], [np.float64(1)], ["1"], [None]):
        with pytest.raises(TypeError):
            ref.decode(bad)
        with pytest.raises(TypeError, match="is not an integer"):
            ours.decode(bad)
    for fine in ([True, False], [np.int64(31373), np.int32(995)]):  # integers: accepted
        assert ours.decode(fine) == ref.decode(fine)


def test_ids_beyond_the_id_range_are_refused(gpt2_pair, small_tok, tmp_path):
    ours, ref = gpt2_pair
    for i in (2**31, 2**32, 2**32 + 31373, 2**64, -1):
        with pytest.raises((KeyError, OverflowError)):
            ref.decode([i])
        with pytest.raises(ValueError, match=f"unknown token id {i}"):
            ours.decode([i])
    # a saved tokenizer that gives a special token such an id is refused when loaded
    folder = saved_with(small_tok, tmp_path / "tok",
                        special_tokens={"<|endoftext|>": 2**32})
    with pytest.raises(ValueError, match="tokenizer.json is damaged: special token "
                                         "'<\\|endoftext\\|>' with id 4294967296"):
        bpe.Tokenizer.load(folder)
    with pytest.raises(cli.UserError, match="tokenizer.json is damaged") as e:
        bpe.main(["decode", str(2**32), "--tokenizer", str(folder)])
    assert "\n" not in str(e.value)
    # so is a rank file with such a rank, and such an id given directly
    raw = bpe.format_ranks(small_tok.ranks) + "YWJjZA== 2147483648\n"  # b"abcd"
    with pytest.raises(ValueError, match="rank 2147483648, above the largest token id "
                                         "2147483647"):
        bpe.parse_ranks(raw.encode(), "rank file x")
    with pytest.raises(ValueError, match="token id 2147483648 is not a whole number"):
        bpe.Tokenizer(small_tok.ranks, special_tokens={"<|x|>": 2**31})


# ---------------------------------------------------------------------------------------
# Saving, loading, tiktoken


def test_save_load_and_tiktoken_reads_our_files(small_tok, shakespeare, tmp_path,
                                                monkeypatch):
    folder = small_tok.save(tmp_path / "tok")
    assert sorted(p.name for p in folder.iterdir()) == ["tokenizer.json",
                                                         "tokenizer.tiktoken", "vocab.txt"]
    loaded = bpe.Tokenizer.load(folder)
    assert loaded.ranks == small_tok.ranks and loaded.pattern == small_tok.pattern
    assert loaded.special_tokens == {"<|endoftext|>": 512}
    assert loaded.merges == small_tok.merges
    text = shakespeare[50_000:60_000] + "<|endoftext|>"
    assert loaded.encode(text, allowed_special="all") == \
        small_tok.encode(text, allowed_special="all")
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")  # tiktoken's own loader, no cache copy
    assert tiktoken.load.load_tiktoken_bpe(str(folder / "tokenizer.tiktoken")) == \
        small_tok.ranks
    meta = json.loads((folder / "tokenizer.json").read_text())
    assert meta["pattern"] == bpe.GPT4_SPLIT_PATTERN
    listing = (folder / "vocab.txt").read_text(encoding="utf-8").splitlines()
    assert listing[10] == "10 [\\u000a]"                  # a newline, escaped
    assert listing[256] == "256 [ ][t] -> [ t]"
    assert listing[269] == "269 [\\u000a][\\u000a] -> [\\u000a\\u000a]"
    assert listing[-1] == "512 [<|endoftext|>] special"


def test_to_tiktoken_encodes_identically(small_tok, shakespeare):
    enc = small_tok.to_tiktoken()
    for text in [shakespeare[50_000:150_000]] + EDGE_CASES + fuzz_strings(100, seed=1):
        assert enc.encode(text, disallowed_special=()) == \
            small_tok.encode(text, disallowed_special=()), repr(text)
    # without a split pattern the whole text is one chunk
    plain = bpe.Tokenizer().train(shakespeare[:5000], 300, pattern=None)
    text = shakespeare[5000:8000]
    assert plain.to_tiktoken().encode(text) == plain.encode(text)


def test_damaged_files_are_clear_errors(small_tok, tmp_path):
    good = bpe.format_ranks(small_tok.ranks).encode()
    lines = good.splitlines(keepends=True)
    cases = {
        "not '<base64 token> <rank>'": lines[0][:-3] + b"\n" + b"".join(lines[1:]),
        "line 3 ": lines[0] + lines[1] + b"%%% 2\n" + b"".join(lines[3:]),
        "appears twice": good + lines[5],
        "single bytes are not tokens": b"".join(lines[1:]),
    }
    for message, raw in cases.items():
        path = tmp_path / "bad.tiktoken"
        path.write_bytes(raw)
        with pytest.raises(ValueError, match=regex.escape(message)) as e:
            bpe.read_ranks(path)
        assert str(path) in str(e.value)
    # a saved tokenizer whose rank file lost lines (still well-formed) or lost its JSON
    folder = small_tok.save(tmp_path / "tok")
    (folder / "tokenizer.tiktoken").write_bytes(good[:-200].rsplit(b"\n", 1)[0] + b"\n")
    with pytest.raises(ValueError, match="damaged"):
        bpe.Tokenizer.load(folder)
    (folder / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match="tokenizer.json is damaged"):
        bpe.Tokenizer.load(folder)
    with pytest.raises(ValueError, match="not found"):
        bpe.Tokenizer.load(tmp_path / "nowhere")
    # a shipped rank file that was edited: common.data's checksum names it
    shipped = tmp_path / "data"
    shipped.mkdir()
    raw = data.read_bytes("r50k_base.tiktoken")
    (shipped / "r50k_base.tiktoken").write_bytes(raw[:-100])
    with pytest.raises(data.DataError, match="r50k_base.tiktoken is damaged"):
        bpe.gpt2(data_dir=shipped)


GROUPED_PATTERN = r"""(')(?:[sdmt]|ll|ve|re)| ?(\p{L})\p{L}*| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
CATASTROPHIC_PATTERN = r"(?:a|a)*$|[\s\S]"  # 2**n steps on a run of n a's not at the end


def test_split_pattern_with_capture_groups_chunks_by_whole_matches(small_tok, shakespeare,
                                                                   tmp_path):
    folder = saved_with(small_tok, tmp_path / "tok", pattern=GROUPED_PATTERN)
    loaded = bpe.Tokenizer.load(folder)
    plain = bpe.Tokenizer(small_tok.ranks, regex.sub(r"\((?!\?)", "(?:", GROUPED_PATTERN))
    assert plain._split("it's") == ["it", "'s"]
    text = shakespeare[:5000] + "".join(EDGE_CASES[:30])
    ids = loaded.encode(text)
    assert ids == plain.encode(text)                            # groups change nothing
    assert ids == loaded.to_tiktoken().encode(text)             # tiktoken: whole matches
    assert loaded.decode(ids) == text


def test_split_pattern_that_skips_characters_is_refused(small_tok, tmp_path):
    folder = saved_with(small_tok, tmp_path / "tok", pattern="[a-z]+")
    tok = bpe.Tokenizer.load(folder)
    assert tok.decode(tok.encode("hello")) == "hello"  # text it covers still encodes
    for text, at in (("Hello, World 123", "character 0 \\('H'\\)"),
                     ("hello, world", "character 5 \\(','\\)"),
                     ("hello!", "character 5 \\('!'\\)")):
        with pytest.raises(ValueError, match=f"json does not cover the text: {at}"):
            tok.encode(text)
    with pytest.raises(ValueError, match="does not cover the text"):
        bpe.Tokenizer().train("Hello there", 260, pattern="[a-z]+")
    with pytest.raises(cli.UserError, match="does not cover the text") as e:
        bpe.main(["encode", "Hello, World 123", "--tokenizer", str(folder)])
    assert str(folder) in str(e.value) and "\n" not in str(e.value)  # one line, naming it


def test_catastrophic_split_pattern_is_refused(small_tok, tmp_path, monkeypatch):
    # caught when the tokenizer is loaded: its pattern is tried on a short probe text
    folder = saved_with(small_tok, tmp_path / "tok", pattern=CATASTROPHIC_PATTERN)
    start = time.perf_counter()
    with pytest.raises(ValueError, match="split pattern in .*tokenizer.json is too slow"):
        bpe.Tokenizer.load(folder)
    assert time.perf_counter() - start < 10  # refused, not left running for minutes
    with pytest.raises(cli.UserError, match="tokenizer.json is too slow") as e:
        bpe.main(["encode", "a" * 40, "--tokenizer", str(folder)])
    assert "\n" not in str(e.value)
    # one that the probe does not set off is stopped by the time limit on splitting
    tok = bpe.Tokenizer(small_tok.ranks, r"(?:q|q)*$|[\s\S]")
    assert tok.decode(tok.encode("qq! q")) == "qq! q"
    monkeypatch.setattr(bpe, "_SPLIT_SECONDS", (0.05, 0.0))
    with pytest.raises(ValueError, match="too slow: splitting 23 characters took over"):
        tok.encode("q" * 22 + "!")
    # the built-in patterns run as they are: no time limit, no extra pass over the chunks
    for pattern in (bpe.GPT2_SPLIT_PATTERN, bpe.GPT4_SPLIT_PATTERN):
        assert bpe.make_splitter(pattern) == regex.compile(pattern).findall


def test_empty_special_token_name_is_refused(small_tok, tmp_path):
    with pytest.raises(ValueError, match="special token '' is not a non-empty string"):
        bpe.Tokenizer().train("hello", 260, special_tokens=["<|a|>", ""])
    with pytest.raises(ValueError, match="special token '' is not a non-empty string"):
        bpe.Tokenizer(special_tokens={"": 256})
    folder = saved_with(small_tok, tmp_path / "tok", special_tokens={"": 512})
    with pytest.raises(ValueError, match="tokenizer.json is damaged: special token ''"):
        bpe.Tokenizer.load(folder)


# ---------------------------------------------------------------------------------------
# Command line


def test_cli_train_encode_decode_show(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(data.load_shakespeare()[:20_000])
    out = tmp_path / "tok"
    result = run_script("-m", "common.bpe", "train", corpus, "--vocab-size", "300",
                        "--out", out, "--special", "<|endoftext|>")
    assert result.returncode == 0, result.stderr
    assert "merge 44/44" in result.stdout and "vocabulary 301" in result.stdout
    trained = bpe.Tokenizer.load(out)
    assert trained.vocab_size == 301

    result = run_script("-m", "common.bpe", "encode", "hello world")
    assert result.returncode == 0 and result.stdout == "31373 995\n"
    result = run_script("-m", "common.bpe", "decode", "31373", "995")
    assert result.returncode == 0 and result.stdout == "hello world\n"
    result = run_script("-m", "common.bpe", "encode", "--tokenizer", out,
                        "<|endoftext|>First", "--allow-special")
    assert result.stdout.split()[0] == "300"
    assert [int(i) for i in result.stdout.split()] == \
        trained.encode("<|endoftext|>First", allowed_special="all")
    result = run_script("-m", "common.bpe", "show", "hello world", "--tokenizer", "gpt4")
    assert result.returncode == 0
    assert result.stdout == "hello| world\n(2 tokens, 11 characters)\n"
    result = run_script("-m", "common.bpe", "show", "hi there", "--color", "always")
    assert "\x1b[" in result.stdout and "\x1b[0m" in result.stdout


def test_show_colours_alternate(gpt2_pair):
    shown = bpe.show_tokens(gpt2_pair[0], "hello world again", colour=True)
    colours = regex.findall(r"\x1b\[30;48;5;(\d+)m", shown)
    assert len(colours) == 3 and colours[0] != colours[1] != colours[2]
    assert regex.sub(r"\x1b\[[0-9;]*m", "", shown) == "hello world again"


@pytest.mark.parametrize("args, message", [
    (["train", "common/data/names.txt", "--vocab-size", "100", "--out", "{tmp}"],
     "at least 256"),
    (["train", "no/such/file.txt", "--vocab-size", "300", "--out", "{tmp}"], "not found"),
    (["decode", "31373", "99999999"], "unknown token id 99999999"),
    (["decode", "hello"], "whole numbers"),
    (["decode", "\u0663"], "digits 0-9: '\u0663' is not one"),  # an Arabic-Indic 3
    (["encode", "a<|endoftext|>b"], "not allowed"),
    (["encode", "x", "--tokenizer", "{tmp}"], "not found"),
    (["show", "x", "--color", "purple"], "invalid choice"),
    (["frobnicate"], "invalid choice"),
])
def test_cli_errors_are_one_line(args, message, tmp_path):
    args = [a.replace("{tmp}", str(tmp_path / "missing")) for a in args]
    line = assert_one_line_error(run_script("-m", "common.bpe", *args))
    assert message in line
    assert not (tmp_path / "missing").exists()  # nothing half-written


def test_plot_writes_the_figure(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(data.load_shakespeare()[:10_000])
    bpe.main(["plot", str(corpus), "--max-vocab-size", "300", "--out", str(tmp_path),
              "--quiet"])
    png = tmp_path / "bytes_per_token.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert capsys.readouterr().out.strip() == f"wrote {png}"


def test_decode_reads_ascii_digits_only():
    assert bpe._parse_ids(["31373", "0995", "0" * 40 + "7"]) == [31373, 995, 7]
    for word in ["\u0663", "\u0661\u0662", "1_000", "+5", "-1", "1.0", "\uff11"]:
        with pytest.raises(cli.UserError, match="digits 0-9"):
            bpe._parse_ids([word])
    with pytest.raises(cli.UserError, match="unknown token id 99999"):
        bpe._parse_ids(["9" * 5000])  # more digits than int() takes: still one line


@pytest.mark.parametrize("command, text, out, extra, expected", [
    ("train", "", "out", [], "is empty: there is nothing to train on"),
    ("train", "hi there\n" * 50, "out", ["--special", "<|endoftext|>", "--special", ""],
     "--special '' is empty"),
    ("train", "hi there\n" * 50, "corpus.txt/tok", [], "corpus.txt/tok"),  # under a file
    ("plot", "hi there\n" * 50, "corpus.txt/tok", [], "corpus.txt/tok"),
], ids=["empty text", "empty special token", "out under a file", "plot out under a file"])
def test_cli_train_refuses_before_training(command, text, out, extra, expected, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(text)
    sizes = ["--vocab-size" if command == "train" else "--max-vocab-size", "300"]
    result = run_script("-m", "common.bpe", command, corpus, *sizes, "--out", tmp_path / out,
                        *extra)
    assert expected in assert_one_line_error(result)
    assert result.stdout == ""  # refused before any training
    assert [p.name for p in tmp_path.iterdir()] == ["corpus.txt"]  # nothing written


def test_cli_train_refuses_an_empty_out(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # where an empty --out would otherwise write
    (tmp_path / "corpus.txt").write_text("hello world, hello there\n" * 50)
    with pytest.raises(cli.UserError, match="empty") as e:
        bpe.main(["train", "corpus.txt", "--vocab-size", "300", "--out", ""])
    assert "\n" not in str(e.value)
    assert capsys.readouterr().out == ""  # no training
    assert os.listdir(tmp_path) == ["corpus.txt"]


def test_cli_standard_input_must_be_utf8(monkeypatch, capsys):
    env = dict(os.environ, PYTHONIOENCODING="utf-8:strict")
    result = subprocess.run([sys.executable, "-m", "common.bpe", "encode"], cwd=ROOT,
                            env=env, input=b"hello \xff\xfe world", capture_output=True,
                            timeout=60)
    result.stdout, result.stderr = result.stdout.decode(), result.stderr.decode()
    line = assert_one_line_error(result)
    assert "standard input is not UTF-8 text (byte 0xff at offset 6)" in line
    # in the same process: decode reads ids from standard input the same way
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"31373, \xe9")))
    with pytest.raises(cli.UserError, match="not UTF-8 text \\(byte 0xe9 at offset 7\\)"):
        bpe.main(["decode"])
    for raw, command, printed in ((b"31373, 995\n", ["decode"], "hello world\n"),
                                  (b"a\r\nb", ["encode"], "64 198 65\n")):  # "a\nb"
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(raw)))
        bpe.main(command)
        assert capsys.readouterr().out == printed
