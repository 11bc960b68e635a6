"""Byte-level BPE tokenizer that encodes token for token like tiktoken.

This is the tokenizer of the "Let's build the GPT Tokenizer" lecture: text becomes UTF-8
bytes, and byte pair encoding (Sennrich et al. 2015, in GPT-2's byte-level form) keeps
merging the most frequent adjacent pair of tokens into a new token. As in GPT-2, the text is
first split into chunks with a regular expression (words, numbers, punctuation, whitespace)
so that no merge crosses a chunk boundary.

    from common import bpe
    tok = bpe.Tokenizer().train(text, vocab_size=512)   # 256 bytes + 256 merges
    ids = tok.encode("hello world")
    tok.decode(ids)                                      # 'hello world'

    enc = bpe.gpt2()                                     # GPT-2's shipped ranks
    enc.encode("hello world")                            # [31373, 995]
    bpe.gpt4().encode("<|endoftext|>hi", allowed_special="all")

Command line, from the repository root:

    python -m common.bpe train common/data/tinyshakespeare.txt --vocab-size 4096 --out out/bpe
    python -m common.bpe encode "hello world" --tokenizer gpt2     # 31373 995
    python -m common.bpe decode 31373 995 --tokenizer gpt2         # hello world
    python -m common.bpe show "hello world" --tokenizer out/bpe    # visible token boundaries
    python -m common.bpe plot                                      # out/bpe/bytes_per_token.png

Merges and ranks: two views of one tokenizer. Training learns *merges*, an ordered table
"pair of token ids -> new id". A rank file (tiktoken's format, in which GPT-2 and GPT-4
ship) lists *ranks*, "token bytes -> id"; a token learned earlier has a lower id. The encoder
works on ranks, exactly as tiktoken does: within a chunk it keeps merging the adjacent pair
whose concatenated bytes have the lowest rank (the leftmost one on a tie). A trained
tokenizer and a loaded rank file therefore share one encoder, and the merges of a loaded
file are recovered from its ranks (`Tokenizer.merges`).

For a vocabulary learned by `train`, the two views give the same ids: a stretch of a chunk
that ends up as one token was always merged exactly as that token's bytes alone would be,
so the lowest-ranked adjacent pair is always the learned pair of its token (the tests check
`encode` against `encode_with_merges`, the lecture's merge-by-merge encoder). For the same
reason training never makes two tokens with the same bytes.

Training breaks ties between equally frequent pairs in favour of the pair that occurs first
in the (current, partly merged) text: the pair Python's `max` picks from an
insertion-ordered count dict, as in the lecture.

Measured on a 2-core CPU (tests/benchmarks/bench_bpe.py, tiny Shakespeare, medians of 5 runs
on a machine shared with other jobs): training with the GPT-4 split, vocabulary 512 on the
first 185 KB in 0.1 s and 4,096 on all 1.1 MB in 0.6-1.0 s; encoding with the GPT-2 ranks
at 4.9 MB/s in pure Python (3.2 MB/s without the chunk cache) and 13 MB/s through
`to_tiktoken()`. Tiny Shakespeare is 338,025 GPT-2 tokens, 301,829 GPT-4 tokens, and
310,480 tokens (3.59 bytes per token) with the 4,096-token vocabulary trained on it.

One known difference from tiktoken: what counts as a letter, a number or whitespace
(\\p{L}, \\p{N}, \\s in the split patterns) comes from the Unicode tables built into each
regular-expression engine: the installed `regex` module's here, those of the Rust regex
engine compiled into tiktoken there. When the two engines follow different Unicode
versions, the letters and digits assigned in between (a new CJK extension, a new script)
can be chunked differently. How many code points that is depends on both installed versions
(see `pip show regex tiktoken`) and changes when either is upgraded; on every code point
that both Unicode versions assign alike, the two agree.

A split pattern that does not come with this module (one read from a tokenizer.json, or
passed in) is used with guards (`make_splitter`): a chunk is always the whole match, also
when the pattern has capture groups (as in tiktoken); splitting has a time limit, so a
pattern that backtracks catastrophically is refused instead of hanging; and a pattern that
skips characters is an error (tiktoken drops them silently).
"""

from __future__ import annotations

import base64
import hashlib
import heapq
import json
import operator
import sys
import time
import unicodedata
from collections import Counter
from pathlib import Path

import regex  # like `re`, plus the Unicode classes (\p{L}, \p{N}) the GPT patterns need

try:  # `python -m common.bpe` from the repository root, or `import common.bpe`
    from common import cli, data
except ImportError:  # pragma: no cover - run as a plain script from inside common/
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from common import cli, data

# The split patterns exactly as tiktoken runs them. GPT-2's original release spelled its
# pattern with plain quantifiers,
#     's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
# the possessive (++) form below chunks every text the same way, only faster.
GPT2_SPLIT_PATTERN = (
    r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
)
# GPT-4 (cl100k_base): case-insensitive contractions, digits in groups of at most 3,
# a word may take one leading non-letter (" hello", "(hello"), newlines kept apart.
GPT4_SPLIT_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+|"""
    r""" ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)
PATTERNS = {"gpt2": GPT2_SPLIT_PATTERN, "gpt4": GPT4_SPLIT_PATTERN, "none": None}

GPT2_SPECIAL_TOKENS = {"<|endoftext|>": 50256}
GPT4_SPECIAL_TOKENS = {
    "<|endoftext|>": 100257,
    "<|fim_prefix|>": 100258,
    "<|fim_middle|>": 100259,
    "<|fim_suffix|>": 100260,
    "<|endofprompt|>": 100276,
}

RANKS_FILE = "tokenizer.tiktoken"  # tiktoken's own format: tiktoken can load it directly
META_FILE = "tokenizer.json"       # pattern and special tokens
VOCAB_FILE = "vocab.txt"           # human-readable listing, one token per line

_NO_RANK = sys.maxsize       # "this pair is not a token"
_LONG_PIECE = 128            # chunks longer than this are merged with a heap (n log n)
_CACHE_SIZE = 200_000        # chunk -> ids results kept by each tokenizer
_NO_SPLIT = r"[\s\S]+"       # "no split pattern": the whole text is one chunk
_ID_LIMIT = 2**31            # ids fit a signed 32-bit integer (tiktoken's: unsigned 32-bit)

# Any split pattern other than the built-in ones runs with a time limit: 1 s plus 1
# microsecond per character of the text (a sane pattern splits several MB/s), so one that
# backtracks catastrophically is refused instead of hanging. When a tokenizer is made, such
# a pattern is first tried on a short probe text with long runs of one character, which
# set off the usual culprits. The limit is not free (regex then splits about half as fast),
# so the built-in patterns, which cover every text in linear time, go without it.
_SPLIT_SECONDS = (1.0, 1e-6)
_PROBE_SECONDS = 0.25
_PROBE = "".join(ch * 40 + "!" for ch in "a A1 \n.'_-\t\u00e9\u4e00") + (
    "Hello, World 123! It's 3.14 + x\r\n\t(\u00e9t\u00e9)  \u4f60\u597d \U0001F600") * 3


class TokenizerError(cli.UserError, ValueError):
    """Bad input to the tokenizer (an unknown id, a disallowed special token, a damaged
    rank file, a vocabulary smaller than 256). A ValueError, like tiktoken's errors, and a
    UserError, so the command line prints it as one line."""


class TokenIdTypeError(TokenizerError, TypeError):
    """A token id that is not an integer (1.0, "7"): also a TypeError, as in tiktoken."""


# ---------------------------------------------------------------------------------------
# The lecture's building blocks


def get_stats(ids, counts=None):
    """Count the adjacent pairs in a list of ids (added to `counts` if given). The dict
    keeps the pairs in order of first appearance, which is the training tie rule.

    >>> get_stats([1, 2, 3, 1, 2])
    {(1, 2): 2, (2, 3): 1, (3, 1): 1}
    """
    counts = {} if counts is None else counts
    for pair in zip(ids, ids[1:]):
        counts[pair] = counts.get(pair, 0) + 1
    return counts


def merge(ids, pair, idx):
    """Replace every occurrence of `pair` in `ids`, left to right, by the new token `idx`.

    >>> merge([1, 2, 3, 1, 2], (1, 2), 4)
    [4, 3, 4]
    >>> merge([7, 7, 7], (7, 7), 8)      # overlapping: the leftmost pair goes first
    [8, 7]
    """
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and ids[i] == pair[0] and ids[i + 1] == pair[1]:
            out.append(idx)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def render_token(token: bytes) -> str:
    """A token's bytes as readable text: invalid UTF-8 as \\xNN, control characters
    (newline, tab, ...) as \\uNNNN, so every token fits on one line.

    >>> render_token(b"hi\\n"), render_token(b"\\xe2\\x82")
    ('hi\\\\u000a', '\\\\xe2\\\\x82')
    """
    text = token.decode("utf-8", errors="backslashreplace")
    return "".join(f"\\u{ord(ch):04x}" if unicodedata.category(ch)[0] == "C" else ch
                   for ch in text)


def fix_surrogates(text: str) -> str:
    """What tiktoken does with text that is not valid Unicode: a surrogate pair becomes
    its character, a lone surrogate becomes U+FFFD.

    >>> fix_surrogates("a\\ud800b") == "a\\ufffdb"
    True
    """
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


# ---------------------------------------------------------------------------------------
# Encoding one chunk with ranks


def bpe_merge(piece: bytes, ranks: dict, max_rank: int | None = None) -> list[bytes]:
    """Split one chunk into tokens: start from single bytes, merge the adjacent pair whose
    concatenation has the lowest rank (the leftmost on a tie), until no adjacent pair is a
    token (with `max_rank`: none with a rank below it).

    >>> ranks = {bytes([b]): b for b in range(256)} | {b"aa": 256, b"aaa": 257}
    >>> bpe_merge(b"aaaa", ranks), bpe_merge(b"aaa", ranks), bpe_merge(b"aaa", ranks, 257)
    ([b'aa', b'aa'], [b'aaa'], [b'aa', b'a'])
    """
    limit = _NO_RANK if max_rank is None else max_rank
    if len(piece) > _LONG_PIECE:
        return _merge_long(piece, ranks, limit)
    return _merge_short(piece, ranks, limit)


def _merge_short(piece: bytes, ranks: dict, limit: int) -> list[bytes]:
    """bpe_merge for a short chunk: a list of parts and the rank of each adjacent pair;
    each merge only re-ranks the two pairs next to it (the list scans run in C)."""
    get = ranks.get
    parts = [piece[i:i + 1] for i in range(len(piece))]

    def rank(i):  # rank of the pair (parts[i], parts[i + 1])
        r = get(parts[i] + parts[i + 1], _NO_RANK)
        return r if r < limit else _NO_RANK

    pair_ranks = [rank(i) for i in range(len(parts) - 1)]
    while pair_ranks:
        best = min(pair_ranks)
        if best == _NO_RANK:
            break
        i = pair_ranks.index(best)  # the leftmost of equal ranks
        parts[i] += parts.pop(i + 1)
        del pair_ranks[i]
        if i > 0:
            pair_ranks[i - 1] = rank(i - 1)
        if i < len(pair_ranks):
            pair_ranks[i] = rank(i)
    return parts


def _merge_long(piece: bytes, ranks: dict, limit: int) -> list[bytes]:
    """bpe_merge for a long chunk (a whole text when there is no split pattern): the same
    merges in the same order, from a heap of (rank, start) with stale entries skipped.
    Parts are kept as a linked list of start offsets: nxt[i] is where the part at i ends."""
    get, n = ranks.get, len(piece)
    nxt = list(range(1, n + 1))  # nxt[i] = -1 once the part starting at i is merged away

    def push(i, j, k):  # candidate merge of parts piece[i:j] and piece[j:k]
        r = get(piece[i:k], _NO_RANK)
        if r < limit:
            heapq.heappush(heap, (r, i, j, k))

    heap = []
    for i in range(n - 1):
        push(i, i + 1, i + 2)
    prv = list(range(-1, n - 1))
    while heap:
        _, i, j, k = heapq.heappop(heap)
        if nxt[i] != j or nxt[j] != k:
            continue  # one of the two parts has changed since this entry was pushed
        nxt[i], nxt[j] = k, -1
        if k < n:
            prv[k] = i
            push(i, k, nxt[k])
        if prv[i] >= 0:
            push(prv[i], i, k)
    parts, i = [], 0
    while i < n:
        parts.append(piece[i:nxt[i]])
        i = nxt[i]
    return parts


def encode_with_merges(ids, merges: dict) -> list[int]:
    """The lecture's encoder: apply the learned merges in the order they were learned,
    each time to the adjacent pair that was merged earliest. Slower than the rank-based
    encoder, and the same ids for a trained tokenizer.

    >>> encode_with_merges([97, 97, 97, 98], {(97, 97): 256, (256, 97): 257})
    [257, 98]
    """
    ids = list(ids)
    while len(ids) >= 2:
        stats = get_stats(ids)
        pair = min(stats, key=lambda p: merges.get(p, _NO_RANK))
        if pair not in merges:
            break  # nothing left to merge
        ids = merge(ids, pair, merges[pair])
    return ids


def recover_merges(ranks: dict) -> dict:
    """The merges behind a rank file: for each token of two or more bytes, merging its
    bytes with only the lower-ranked tokens ends in the two parts it was made from.

    >>> recover_merges({bytes([b]): b for b in range(256)} | {b"ab": 256, b"abc": 257})
    {(97, 98): 256, (256, 99): 257}
    """
    merges = {}
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) > 1:
            parts = bpe_merge(token, ranks, max_rank=rank)
            if len(parts) == 2:  # otherwise the token is reachable only as a whole chunk
                merges[ranks[parts[0]], ranks[parts[1]]] = rank
    return merges


# ---------------------------------------------------------------------------------------
# Rank files (tiktoken's format: one "base64(token bytes) rank" per line)


def format_ranks(ranks: dict) -> str:
    """The text of a rank file, lines in rank order, exactly as tiktoken writes it.

    >>> format_ranks({b"a": 1, b"hi": 0})
    'aGk= 0\\nYQ== 1\\n'
    """
    return "".join(f"{base64.b64encode(token).decode('ascii')} {rank}\n"
                   for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]))


def parse_ranks(raw: bytes, source="rank file") -> dict:
    """token bytes -> rank from the text of a rank file; a damaged file (a malformed line,
    a repeated token or rank, a missing single byte) is a TokenizerError naming `source`.

    >>> ranks = parse_ranks(format_ranks(gpt2().ranks).encode())
    >>> len(ranks), ranks[b"hello"]
    (50256, 31373)
    """
    ranks, seen = {}, set()
    for lineno, line in enumerate(raw.splitlines(), 1):
        if not line:
            continue
        try:
            token_b64, rank_text = line.split()
            token = base64.b64decode(token_b64, validate=True)
            rank = int(rank_text)
            if rank < 0 or not token:
                raise ValueError
        except ValueError:  # wrong field count, bad base64 (binascii.Error), bad number
            shown = line[:40].decode("utf-8", errors="backslashreplace")
            raise TokenizerError(f"{source} is damaged: line {lineno} ({shown!r}) is not "
                                 f"'<base64 token> <rank>'") from None
        if rank >= _ID_LIMIT:
            raise TokenizerError(f"{source} is damaged: line {lineno} has rank {rank}, "
                                 f"above the largest token id {_ID_LIMIT - 1}")
        if token in ranks or rank in seen:
            what = f"token {token!r}" if token in ranks else f"rank {rank}"
            raise TokenizerError(f"{source} is damaged: {what} appears twice "
                                 f"(line {lineno})")
        ranks[token] = rank
        seen.add(rank)
    _check_single_bytes(ranks, source)
    return ranks


def _check_single_bytes(ranks: dict, source: str):
    """Every byte must be a token, or some text could not be encoded at all."""
    missing = [b for b in range(256) if bytes([b]) not in ranks]
    if missing:
        raise TokenizerError(f"{source} is damaged or incomplete: {len(missing)} of the 256 "
                             f"single bytes are not tokens (the first is {missing[0]})")


def read_ranks(path) -> dict:
    """token bytes -> rank from a rank file on disk (see parse_ranks)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise TokenizerError(f"cannot read rank file {path}: {e.strerror}") from None
    return parse_ranks(raw, f"rank file {path}")


# ---------------------------------------------------------------------------------------
# Training: merges learned from chunk counts, with incremental pair counts


def _learn_merges(chunks: dict, vocab: dict, vocab_size: int, verbose: bool):
    """Grow `vocab` (id -> bytes, the 256 bytes to start) to `vocab_size` tokens by
    merging the most frequent pair in the chunks, given as {chunk bytes: frequency}.
    Returns (merges, history) with history[k] = (vocabulary size, tokens in the text).

    Speed comes from never recounting: every distinct chunk is laid out once, one position
    per byte, weighted by its frequency; a dict holds each pair's count and a second one
    the positions where the pair starts, so a merge visits only its own occurrences and
    adjusts the counts of their neighbouring pairs. The next pair comes from a heap of
    (-count, pair) entries; entries whose count has changed since are skipped (lazy
    deletion). Positions grow in text order (distinct chunks in order of first appearance),
    so the first occurrence of a pair is the smallest position where it starts.
    """
    tok, nxt, prv, weight = [], [], [], []  # one slot per byte of every distinct chunk
    counts, where = {}, {}                  # pair -> weighted count, pair -> {positions}
    for chunk, freq in chunks.items():
        start, n = len(tok), len(chunk)
        tok.extend(chunk)
        weight.extend([freq] * n)
        nxt.extend(range(start + 1, start + n))
        nxt.append(-1)  # -1: no neighbour (chunk boundary)
        prv.append(-1)
        prv.extend(range(start, start + n - 1))
        for i in range(start, start + n - 1):
            pair = (tok[i], tok[i + 1])
            counts[pair] = counts.get(pair, 0) + freq
            where.setdefault(pair, set()).add(i)
    heap = [(-c, pair) for pair, c in counts.items()]
    heapq.heapify(heap)

    def best_pair():
        """The most frequent pair; of equally frequent ones, the first in the text."""
        while heap and counts.get(heap[0][1]) != -heap[0][0]:
            heapq.heappop(heap)  # stale: that count has changed since
        if not heap:
            return None
        top, tied = heap[0][0], set()
        while heap and heap[0][0] == top:
            negc, pair = heapq.heappop(heap)
            if counts.get(pair) == -negc:
                tied.add(pair)
        best = min(tied, key=lambda p: min(where[p]))
        for pair in tied - {best}:
            heapq.heappush(heap, (top, pair))
        return best

    def apply(pair, idx):
        """Merge every occurrence of `pair` into `idx`; returns how many there were."""
        a, b = pair
        changed, merged = set(), 0

        def remove(p, pos, f):
            if p == pair:
                return  # the merged pair itself: all of it goes at once below
            c = counts[p] - f
            if c:
                counts[p] = c
                where[p].discard(pos)
            else:
                del counts[p], where[p]
            changed.add(p)

        def add(p, pos, f):
            counts[p] = counts.get(p, 0) + f
            where.setdefault(p, set()).add(pos)
            changed.add(p)

        for i in sorted(where.pop(pair)):  # left to right, so "aaa" -> [aa, a]
            j = nxt[i]
            if tok[i] != a or j < 0 or tok[j] != b:
                continue  # taken by the previous, overlapping occurrence
            f, p, n = weight[i], prv[i], nxt[j]
            if p >= 0:
                remove((tok[p], a), p, f)
            if n >= 0:
                remove((b, tok[n]), j, f)
            tok[i], tok[j], nxt[i] = idx, -1, n
            if n >= 0:
                prv[n] = i
                add((idx, tok[n]), i, f)
            if p >= 0:
                add((tok[p], idx), p, f)
            merged += f
        del counts[pair]
        for p in changed:
            if p in counts:
                heapq.heappush(heap, (-counts[p], p))
        return merged

    merges = {}
    total = sum(len(chunk) * f for chunk, f in chunks.items())
    history = [(len(vocab), total)]
    n_new = vocab_size - len(vocab)
    start = last_print = time.perf_counter()
    while len(vocab) < vocab_size:
        pair = best_pair()
        if pair is None:
            if verbose:
                print(f"no pairs left to merge: stopping at vocabulary {len(vocab)}")
            break
        idx, count = len(vocab), counts[pair]
        vocab[idx] = token = vocab[pair[0]] + vocab[pair[1]]
        merges[pair] = idx
        total -= apply(pair, idx)
        history.append((len(vocab), total))
        now, done = time.perf_counter(), len(vocab) + n_new - vocab_size
        if verbose and (done % max(1, n_new // 10) == 0 or done == n_new
                        or now - last_print > 2.0):
            last_print = now
            ms = 1000 * (now - start) / max(done, 1)
            print(f"merge {done:{len(str(n_new))}d}/{n_new}: {pair} -> {idx} "
                  f"[{render_token(token)}] had {count} occurrences | "
                  f"{history[0][1] / total:.3f} bytes/token | {ms:.2f} ms/merge | "
                  f"{cli.fmt_duration((n_new - done) * ms / 1000)} left", flush=True)
    return merges, history


# ---------------------------------------------------------------------------------------
# Split patterns


_BUILT_IN_PATTERNS = (GPT2_SPLIT_PATTERN, GPT4_SPLIT_PATTERN, None)  # cover any text, fast


def make_splitter(pattern: str | None, source: str = "the split pattern"):
    """A function text -> list of chunks for a split pattern (None: the text is one chunk).
    A bad pattern is a TokenizerError whose message starts with `source`.

    The built-in patterns run as they are. Any other pattern is guarded: a chunk is the
    whole match, even when the pattern has capture groups (as in tiktoken); splitting stops
    after _SPLIT_SECONDS (a pattern that backtracks catastrophically is refused, and one
    that does so on the short _PROBE text already here); and chunks that leave characters
    out (a pattern such as [a-z]+ on "Hi!") are an error, not lost text.

    >>> make_splitter(r"(\\w)\\w*|\\W")("Hi, you")
    ['Hi', ',', ' ', 'you']
    """
    try:
        compiled = regex.compile(_NO_SPLIT if pattern is None else pattern)
    except regex.error as e:
        raise TokenizerError(f"{source} is not a valid regular expression: {e}") from None
    if pattern in _BUILT_IN_PATTERNS:
        return compiled.findall
    if compiled.flags & regex.REVERSE:
        raise TokenizerError(f"{source} matches from right to left ((?r)); a split pattern "
                             f"must chunk the text from left to right")

    def find(text, seconds):
        if compiled.groups:  # findall would return the groups, not the chunks
            return [m.group() for m in compiled.finditer(text, timeout=seconds)]
        return compiled.findall(text, timeout=seconds)

    def split(text):
        seconds = _SPLIT_SECONDS[0] + _SPLIT_SECONDS[1] * len(text)
        try:
            pieces = find(text, seconds)
            if sum(map(len, pieces)) != len(text):  # the matches leave a gap somewhere
                at = _first_gap(compiled, text, seconds)
                raise TokenizerError(f"{source} does not cover the text: character {at} "
                                     f"({text[at]!r}) is in no chunk and would be lost")
        except TimeoutError:
            raise TokenizerError(f"{source} is too slow: splitting {len(text):,} "
                                 f"characters took over {seconds:.1f} s (catastrophic "
                                 f"backtracking?); refused") from None
        return pieces

    try:
        find(_PROBE, _PROBE_SECONDS)
    except TimeoutError:
        raise TokenizerError(f"{source} is too slow: splitting a {len(_PROBE)}-character "
                             f"test text took over {_PROBE_SECONDS} s (catastrophic "
                             f"backtracking?); refused") from None
    return split


def _first_gap(compiled, text: str, seconds: float) -> int:
    """The position of the first character of `text` that no match of `compiled` covers."""
    at = 0
    for m in compiled.finditer(text, timeout=seconds):
        if m.start() > at:
            break
        at = m.end()
    return at


# ---------------------------------------------------------------------------------------
# The tokenizer


def _byte_ranks() -> dict:
    """The 256 single bytes, byte b -> token b: an untrained tokenizer."""
    return {bytes([b]): b for b in range(256)}


def _check_special_names(names):
    """Special tokens are non-empty strings (an empty one would match inside every text)."""
    for s in names:
        if not isinstance(s, str) or not s:
            raise TokenizerError(f"special token {s!r} is not a non-empty string")


class Tokenizer:
    """A byte-level BPE tokenizer: ranks (token bytes -> id), a split pattern (a regular
    expression, or None for no split) and special tokens (string -> id).

        tok = Tokenizer().train(text, 512)    # or gpt2(), gpt4(), Tokenizer.load(folder)
        tok.encode("hi there"), tok.decode([104, 105]), tok.vocab_size
    """

    def __init__(self, ranks: dict | None = None, pattern: str | None = GPT4_SPLIT_PATTERN,
                 special_tokens: dict | None = None, name: str = "bpe", *,
                 pattern_source: str = "the split pattern"):
        # pattern_source: how errors about the pattern name it ("the split pattern in FILE")
        ranks = _byte_ranks() if ranks is None else ranks
        _check_single_bytes(ranks, "the ranks")
        if len(set(ranks.values())) != len(ranks):
            raise TokenizerError("two tokens share a rank; every token needs its own id")
        special_tokens = dict(special_tokens or {})
        _check_special_names(special_tokens)
        for i in (min(ranks.values()), max(ranks.values()), *special_tokens.values()):
            if type(i) is not int or not 0 <= i < _ID_LIMIT:
                raise TokenizerError(f"token id {i!r} is not a whole number from 0 to "
                                     f"{_ID_LIMIT - 1}")
        clash = set(special_tokens.values()) & set(ranks.values())
        if clash:
            raise TokenizerError(f"special token id {min(clash)} is also an ordinary token")
        self._split = make_splitter(pattern, pattern_source)
        self.ranks, self.pattern, self.name = ranks, pattern, name
        self.special_tokens = special_tokens
        self._merges = None     # learned by train(), else recovered from ranks on demand
        self.history = []       # (vocabulary size, tokens) during training
        self._reset_caches()

    def _reset_caches(self):
        self.vocab = {rank: token for token, rank in self.ranks.items()}  # id -> bytes
        self._decoder = dict(self.vocab)
        self._decoder.update((i, s.encode("utf-8")) for s, i in self.special_tokens.items())
        self._cache = {}        # chunk -> its ids
        self._special_regex = {}

    # --- facts --------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Number of token ids (the largest id + 1), special tokens included."""
        return max(self._decoder) + 1

    @property
    def merges(self) -> dict:
        """(id, id) -> new id, in the order learned (recovered from the ranks for a loaded
        rank file: GPT-2's first merge is (220, 83) -> 256, " " + "t")."""
        if self._merges is None:
            self._merges = recover_merges(self.ranks)
        return self._merges

    def __repr__(self):
        pattern = {v: k for k, v in PATTERNS.items()}.get(self.pattern, "custom")
        return (f"Tokenizer(name={self.name!r}, vocab_size={self.vocab_size}, "
                f"pattern={pattern}, special_tokens={len(self.special_tokens)})")

    # --- training -------------------------------------------------------------------------

    def train(self, text: str, vocab_size: int, pattern: str | None = GPT4_SPLIT_PATTERN,
              special_tokens=(), verbose: bool = False):
        """Learn `vocab_size - 256` merges from `text` (split by `pattern` first; None: no
        split) and return self. Special tokens (strings) get the ids after the vocabulary.
        Stops early, with fewer tokens, if the text runs out of pairs.

        >>> tok = Tokenizer().train("aaabdaaabac", 259, pattern=None)
        >>> tok.merges, tok.encode("aaabdaaabac")
        ({(97, 97): 256, (256, 97): 257, (257, 98): 258}, [258, 100, 258, 97, 99])
        """
        if int(vocab_size) != vocab_size or vocab_size < 256:
            raise TokenizerError(f"vocab size must be an integer of at least 256 (one token "
                                 f"per byte), got {vocab_size}")
        if isinstance(special_tokens, str):  # one token given on its own
            special_tokens = [special_tokens]
        _check_special_names(special_tokens)
        fresh = Tokenizer(pattern=pattern)  # validates the pattern
        try:
            pieces = fresh._split(text)
            chunks = {piece.encode("utf-8"): f for piece, f in Counter(pieces).items()}
        except UnicodeEncodeError:  # lone surrogates: treat them as tiktoken does
            pieces = fresh._split(fix_surrogates(text))
            chunks = {piece.encode("utf-8"): f for piece, f in Counter(pieces).items()}
        vocab = {i: bytes([i]) for i in range(256)}
        merges, history = _learn_merges(chunks, vocab, int(vocab_size), verbose)
        specials = {s: len(vocab) + k for k, s in enumerate(dict.fromkeys(special_tokens))}
        self.__init__({token: i for i, token in vocab.items()}, pattern, specials, self.name)
        self._merges, self.history = merges, history
        return self

    # --- encoding -------------------------------------------------------------------------

    def encode_ordinary(self, text: str) -> list[int]:
        """Ids of `text`, special token strings encoded as plain text.

        >>> gpt2().encode_ordinary("hello world")
        [31373, 995]
        """
        try:
            return self._encode_chunks(text)
        except UnicodeEncodeError:
            return self._encode_chunks(fix_surrogates(text))

    def _encode_chunks(self, text: str) -> list[int]:
        ids, cache, ranks = [], self._cache, self.ranks
        for piece in self._split(text):
            out = cache.get(piece)
            if out is None:
                token = piece.encode("utf-8")
                if token in ranks:  # a whole chunk that is one token (most words)
                    out = [ranks[token]]
                else:
                    out = [ranks[part] for part in bpe_merge(token, ranks)]
                if len(cache) >= _CACHE_SIZE:
                    cache.clear()
                cache[piece] = out
            ids.extend(out)
        return ids

    def _special_set(self, which, argument: str) -> frozenset:
        """The strings named by allowed_special or disallowed_special. Names that are not
        special tokens of this tokenizer are kept, as in tiktoken: encode ignores them when
        allowed, and refuses text containing them when disallowed."""
        if which == "all":
            return frozenset(self.special_tokens)
        if which in (None, "none"):
            return frozenset()
        if isinstance(which, str):
            raise TokenizerError(f"{argument} must be 'all', 'none' or a set of special "
                                 f"tokens, got the string {which!r}")
        return frozenset(which)

    def _find_special(self, names: frozenset):
        """A compiled regex matching any of the given special token strings."""
        if names not in self._special_regex:  # longest first: no prefix wins over its token
            alternatives = sorted(names, key=lambda s: (-len(s), s))
            self._special_regex[names] = regex.compile("|".join(map(regex.escape,
                                                                    alternatives)))
        return self._special_regex[names]

    def encode(self, text: str, allowed_special="none", disallowed_special="all") -> list[int]:
        """Ids of `text`, with tiktoken's rules for special tokens: those in
        `allowed_special` ("all", "none" or a set) become their ids; text containing one of
        `disallowed_special` (default "all": every special token not allowed) is a
        ValueError; pass `disallowed_special=()` to encode such text as ordinary text.

        >>> gpt4().encode("<|endoftext|>hello world", allowed_special="all")
        [100257, 15339, 1917]
        """
        allowed = self._special_set(allowed_special, "allowed_special") & frozenset(
            self.special_tokens)
        if disallowed_special == "all":
            disallowed = frozenset(self.special_tokens) - allowed
        else:
            disallowed = self._special_set(disallowed_special, "disallowed_special")
        if disallowed:
            found = self._find_special(disallowed).search(text)
            if found:
                raise TokenizerError(
                    f"the text contains the special token {found.group()!r}, which is not "
                    f"allowed; pass allowed_special={{{found.group()!r}}} (or 'all') to encode "
                    f"it as a special token, or disallowed_special=() to encode it as text")
        if not allowed:
            return self.encode_ordinary(text)
        ids, start = [], 0
        for found in self._find_special(allowed).finditer(text):
            ids.extend(self.encode_ordinary(text[start:found.start()]))
            ids.append(self.special_tokens[found.group()])
            start = found.end()
        ids.extend(self.encode_ordinary(text[start:]))
        return ids

    # --- decoding -------------------------------------------------------------------------

    def decode_bytes(self, ids) -> bytes:
        """The bytes of a list of ids (special tokens as their UTF-8 text).

        >>> gpt2().decode_bytes([31373, 995])
        b'hello world'
        """
        decoder, out = self._decoder, []
        for i in ids:
            if type(i) is not int:  # 1.0 == 1 would find token 1: only integers are ids
                i = _token_id(i)
            token = decoder.get(i)
            if token is None:
                raise TokenizerError(f"unknown token id {i!r}: this tokenizer's ids are 0 "
                                     f"to {self.vocab_size - 1}"
                                     + ("" if len(decoder) == self.vocab_size
                                        else " (with gaps)"))
            out.append(token)
        return b"".join(out)

    def decode(self, ids) -> str:
        """The text of a list of ids; bytes that are not valid UTF-8 (a token can hold part
        of a character) become U+FFFD, as in tiktoken.

        >>> gpt2().decode([31373, 995]), gpt2().decode([171])
        ('hello world', '\ufffd')
        """
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    # --- saving, loading, tiktoken --------------------------------------------------------

    def vocab_listing(self) -> str:
        """One line per token: id, [bytes], and the merge that made it."""
        made_from = {}
        for (a, b), idx in self.merges.items():
            made_from.setdefault(idx, (a, b))
        lines = []
        for idx in sorted(self.vocab):
            shown = f"[{render_token(self.vocab[idx])}]"
            if idx in made_from:
                a, b = made_from[idx]
                shown = (f"[{render_token(self.vocab[a])}][{render_token(self.vocab[b])}]"
                         f" -> {shown}")
            lines.append(f"{idx} {shown}")
        lines += [f"{idx} [{s}] special" for s, idx in sorted(self.special_tokens.items(),
                                                              key=lambda kv: kv[1])]
        return "\n".join(lines) + "\n"

    def save(self, directory) -> Path:
        """Write tokenizer.tiktoken (the ranks, in tiktoken's format), tokenizer.json
        (pattern, special tokens, the rank file's sha256) and vocab.txt into `directory`."""
        folder = cli.out_dir(directory)
        rank_text = format_ranks(self.ranks)
        meta = {"name": self.name, "pattern": self.pattern,
                "special_tokens": self.special_tokens,
                "ranks_sha256": hashlib.sha256(rank_text.encode("ascii")).hexdigest()}
        cli.write_text(folder / RANKS_FILE, rank_text)
        cli.write_text(folder / META_FILE, json.dumps(meta, indent=2) + "\n")
        cli.write_text(folder / VOCAB_FILE, self.vocab_listing())
        return folder

    @classmethod
    def load(cls, directory):
        """The tokenizer saved in `directory` by `save`."""
        folder = Path(directory)
        meta_path, ranks_path = folder / META_FILE, folder / RANKS_FILE
        for path in (meta_path, ranks_path):
            if not path.is_file():
                raise TokenizerError(f"{path} not found: is {folder} a folder written by "
                                     f"`python -m common.bpe train`?")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            pattern, specials = meta["pattern"], meta["special_tokens"]
            if not (pattern is None or isinstance(pattern, str)) or not all(
                    isinstance(s, str) and isinstance(i, int) for s, i in specials.items()):
                raise TypeError
        except (ValueError, KeyError, TypeError, AttributeError):
            raise TokenizerError(f"{meta_path} is damaged (not the JSON that save() writes); "
                                 f"save or train the tokenizer again") from None
        for s, i in specials.items():
            if not s or type(i) is not int or not 0 <= i < _ID_LIMIT:
                raise TokenizerError(f"{meta_path} is damaged: special token {s!r} with "
                                     f"id {i!r} (a special token needs a name and an id "
                                     f"from 0 to {_ID_LIMIT - 1})")
        raw = ranks_path.read_bytes()
        if meta.get("ranks_sha256") not in (None, hashlib.sha256(raw).hexdigest()):
            raise TokenizerError(f"rank file {ranks_path} is damaged (its sha256 does not "
                                 f"match {meta_path.name}); save or train the tokenizer again")
        ranks = parse_ranks(raw, f"rank file {ranks_path}")
        return cls(ranks, pattern, specials, str(meta.get("name", "bpe")),
                   pattern_source=f"the split pattern in {meta_path}")

    def to_tiktoken(self):
        """An equivalent `tiktoken.Encoding` (same ids for every text, many times faster)."""
        import tiktoken
        return tiktoken.Encoding(name=self.name,
                                 pat_str=_NO_SPLIT if self.pattern is None else self.pattern,
                                 mergeable_ranks=dict(self.ranks),
                                 special_tokens=dict(self.special_tokens))


def _token_id(i) -> int:
    """An id given as another integer type (True, numpy.int64) as an int; anything that is
    not an integer (1.0, "7", None) is a TokenIdTypeError, as tiktoken refuses it."""
    try:
        return operator.index(i)
    except TypeError:
        raise TokenIdTypeError(f"token id {i!r} is not an integer "
                               f"({type(i).__name__})") from None


# ---------------------------------------------------------------------------------------
# GPT-2 and GPT-4, from the shipped rank files

_shipped_ranks = {}  # file name -> ranks, parsed once per process


def _shipped(name: str, data_dir=None) -> dict:
    key = (name, str(data_dir))
    if key not in _shipped_ranks:
        raw = data.read_bytes(name, data_dir)  # verifies the sha256
        _shipped_ranks[key] = parse_ranks(raw, f"rank file {name}")
    return _shipped_ranks[key]


def gpt2(data_dir=None) -> Tokenizer:
    """GPT-2's tokenizer (tiktoken's r50k_base): 50,257 ids, <|endoftext|> = 50256."""
    return Tokenizer(_shipped("r50k_base.tiktoken", data_dir), GPT2_SPLIT_PATTERN,
                     GPT2_SPECIAL_TOKENS, "r50k_base")


def gpt4(data_dir=None) -> Tokenizer:
    """GPT-4's tokenizer (tiktoken's cl100k_base): 100,277 ids, 5 special tokens."""
    return Tokenizer(_shipped("cl100k_base.tiktoken", data_dir), GPT4_SPLIT_PATTERN,
                     GPT4_SPECIAL_TOKENS, "cl100k_base")


# ---------------------------------------------------------------------------------------
# Figure: compression against vocabulary size


def bytes_per_token_figure(history, path, references=None, title="tiny Shakespeare"):
    """Plot bytes per token against vocabulary size from a training history, with optional
    reference points {label: (vocab size, bytes per token)}; saved as PNG at `path`."""
    plt = cli.pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    n_bytes = history[0][1]
    sizes, bpt = [v for v, _ in history], [n_bytes / t for _, t in history]
    ax.plot(sizes, bpt, lw=2, label="trained here (GPT-4 split), on its own training text")
    top = max(bpt)
    for label, (size, value) in (references or {}).items():
        ax.plot([size], [value], "o", ms=7, label=f"{label} ({size:,} tokens): {value:.2f}")
        top = max(top, value)
    ax.set_xscale("log", base=2)
    largest = max(sizes + [size for size, _ in (references or {}).values()])
    powers = range(8, (largest - 1).bit_length() + 1)  # 256 up to the next power of 2
    ticks = [2 ** k for k in powers[::1 if len(powers) <= 6 else 2]]
    ax.set_xticks(ticks, [f"{t:,}" for t in ticks])
    ax.set_ylim(0.9, top + 0.25)
    ax.set_xlabel("vocabulary size (tokens, log scale)")
    ax.set_ylabel("bytes per token")
    ax.set_title(f"BPE compression on {title}")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    cli.save_figure(fig, path)
    return Path(path)


# ---------------------------------------------------------------------------------------
# Command line

_COLOURS = (153, 186, 218, 223, 194)  # xterm-256 pastel backgrounds, cycled per token


def show_tokens(tokenizer: Tokenizer, text: str, colour: bool, separator: str = "|") -> str:
    """The text with visible token boundaries: alternating background colours (ANSI codes)
    or, without colour, a separator between tokens. Special tokens are shown as tokens.

    >>> show_tokens(gpt2(), "hello world", colour=False)
    'hello| world'
    """
    ids = tokenizer.encode(text, allowed_special="all")
    pieces = [tokenizer.decode([i]) for i in ids]
    if not colour:
        return separator.join(pieces)
    return "".join(f"\x1b[30;48;5;{_COLOURS[k % len(_COLOURS)]}m{piece}\x1b[0m"
                   for k, piece in enumerate(pieces))


def _get_tokenizer(spec: str) -> Tokenizer:
    if spec == "gpt2":
        return gpt2()
    if spec == "gpt4":
        return gpt4()
    return Tokenizer.load(spec)


def _read_text(path) -> str:
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise cli.UserError(f"file {path} not found") from None
    except UnicodeDecodeError:
        raise cli.UserError(f"file {path} is not UTF-8 text") from None
    except OSError as e:
        raise cli.UserError(f"cannot read {path}: {e.strerror}") from None


def _read_stdin() -> str:
    """Standard input as text: strict UTF-8 (anything else is one line naming the first bad
    byte), line endings translated to "\\n" as for a file read as text."""
    if sys.stdin is None:
        raise cli.UserError("no text given, and there is no standard input to read it from")
    stream = getattr(sys.stdin, "buffer", None)
    if stream is None:  # already text (a notebook, a test's StringIO)
        return sys.stdin.read()
    raw = stream.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise cli.UserError(f"standard input is not UTF-8 text (byte "
                            f"0x{raw[e.start]:02x} at offset {e.start})") from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _input_text(args) -> str:
    """TEXT from the command line, else --file, else standard input."""
    if args.text is not None and args.file is not None:
        raise cli.UserError("give either TEXT or --file, not both")
    if args.text is not None:
        return args.text
    if args.file is not None:
        return _read_text(args.file)
    return _read_stdin()


def _training_text(path) -> str:
    """The text of a file to train on; an empty file is refused (nothing to learn from)."""
    text = _read_text(path)
    if not text:
        raise cli.UserError(f"file {path} is empty: there is nothing to train on")
    return text


def _parse_ids(words) -> list[int]:
    """Token ids written in ASCII digits ('٣' or '1_000' are not ids, though int() takes
    them); anything else is one line naming the word."""
    ids = []
    for w in words:
        if not regex.fullmatch(r"[0-9]+", w):
            raise cli.UserError(f"decode takes token ids, whole numbers written with the "
                                f"digits 0-9: {w[:40]!r} is not one")
        if len(w.lstrip("0")) > 30:  # far beyond any id (int() refuses > 4,300 digits)
            raise TokenizerError(f"unknown token id {w[:20]}... ({len(w)} digits)")
        ids.append(int(w))
    return ids


def _cmd_train(args) -> dict:
    if args.vocab_size < 256:
        raise TokenizerError(f"--vocab-size must be at least 256 (one token per byte), "
                             f"got {args.vocab_size}")
    for name in args.special:
        if not name:
            raise cli.UserError("--special '' is empty: a special token needs a name, "
                                "e.g. --special '<|endoftext|>'")
    text = _training_text(args.file)
    folder = cli.out_dir(args.out)  # created and checked writable before any training
    start = time.perf_counter()
    tok = Tokenizer().train(text, args.vocab_size, PATTERNS[args.pattern], args.special,
                            verbose=not args.quiet)
    seconds = time.perf_counter() - start
    tok.save(folder)
    n_bytes, n_tokens = tok.history[0][1], tok.history[-1][1]
    print(f"trained {len(tok.merges)} merges in {seconds:.2f}s: vocabulary "
          f"{tok.vocab_size}, {n_bytes / n_tokens:.3f} bytes per token on {args.file}")
    print(f"wrote {folder / RANKS_FILE}, {folder / META_FILE}, {folder / VOCAB_FILE}")
    return {"seconds": seconds, "vocab_size": tok.vocab_size, "tokens": n_tokens}


def _cmd_encode(args) -> dict:
    tok = _get_tokenizer(args.tokenizer)
    ids = tok.encode(_input_text(args), allowed_special="all" if args.allow_special else "none")
    print(" ".join(map(str, ids)))
    return {"ids": ids}


def _cmd_decode(args) -> dict:
    words = args.ids if args.ids else _read_stdin().replace(",", " ").split()
    ids = _parse_ids(words)
    text = _get_tokenizer(args.tokenizer).decode(ids)
    print(text)
    return {"text": text}


def _cmd_show(args) -> dict:
    tok = _get_tokenizer(args.tokenizer)
    text = _input_text(args)
    colour = args.color == "always" or (args.color == "auto" and sys.stdout.isatty())
    n = len(tok.encode(text, allowed_special="all"))
    print(show_tokens(tok, text, colour))
    print(f"({n} tokens, {len(text)} characters)")
    return {"tokens": n}


def _cmd_plot(args) -> dict:
    text = _training_text(args.file)
    folder = cli.out_dir(args.out)  # created and checked writable before any training
    tok = Tokenizer().train(text, args.max_vocab_size, GPT4_SPLIT_PATTERN,
                            verbose=not args.quiet)
    n_bytes = len(text.encode("utf-8"))
    refs = {}
    for label, make in (("GPT-2", gpt2), ("GPT-4", gpt4)):
        ref = make()
        refs[label] = (ref.vocab_size, n_bytes / len(ref.encode(text, disallowed_special=())))
    path = bytes_per_token_figure(tok.history, folder / "bytes_per_token.png", refs,
                                  Path(args.file).name)
    print(f"wrote {path}")
    return {"figure": str(path)}


def _parser():
    parser = cli.OneLineParser(  # usage errors: one line, exit status 2
        prog="python -m common.bpe",
        description="Byte-level BPE tokenizer: train, encode, decode, show, plot.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def tokenizer_flag(p):
        p.add_argument("--tokenizer", default="gpt2", metavar="gpt2|gpt4|DIR",
                       help="gpt2, gpt4, or a folder written by `train` (default: gpt2)")

    p = sub.add_parser("train", help="learn merges from a text file and save them")
    p.add_argument("file", help="UTF-8 text file to train on")
    p.add_argument("--vocab-size", type=int, required=True, help="tokens to end with (>= 256)")
    p.add_argument("--out", default="out/bpe", help="folder for the tokenizer files")
    p.add_argument("--pattern", choices=sorted(PATTERNS), default="gpt4",
                   help="split pattern applied before training (default: gpt4)")
    p.add_argument("--special", action="append", default=[], metavar="TOKEN",
                   help="add a special token, e.g. '<|endoftext|>' (repeatable)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")

    for name, what in (("encode", "print the token ids of a text"),
                       ("show", "print a text with visible token boundaries")):
        p = sub.add_parser(name, help=what)
        p.add_argument("text", nargs="?", help="the text (else --file, else standard input)")
        p.add_argument("--file", help="read the text from this file")
        tokenizer_flag(p)
        if name == "encode":
            p.add_argument("--allow-special", action="store_true",
                           help="encode special token strings as special tokens")
        else:
            p.add_argument("--color", choices=["auto", "always", "never"], default="auto",
                           help="colour the tokens (auto: when printing to a terminal)")

    p = sub.add_parser("decode", help="print the text of token ids")
    p.add_argument("ids", nargs="*", help="token ids (else read from standard input)")
    tokenizer_flag(p)

    p = sub.add_parser("plot", help="figure: bytes per token against vocabulary size")
    p.add_argument("file", nargs="?", default=str(data.DATA_DIR / "tinyshakespeare.txt"),
                   help="text to train on (default: tiny Shakespeare)")
    p.add_argument("--max-vocab-size", type=int, default=4096, help="largest vocabulary")
    p.add_argument("--out", default="out/bpe", help="folder for bytes_per_token.png")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    return parser


def main(argv=None) -> dict:
    args = _parser().parse_args(argv)
    commands = {"train": _cmd_train, "encode": _cmd_encode, "decode": _cmd_decode,
                "show": _cmd_show, "plot": _cmd_plot}
    return commands[args.command](args)


if __name__ == "__main__":
    try:
        cli.run(main)
    except BrokenPipeError:  # output piped into `head` and cut short: not an error
        sys.stdout = None     # nothing left to flush at exit
        sys.exit(1)
