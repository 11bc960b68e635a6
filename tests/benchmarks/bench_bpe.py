"""Speed of common/bpe.py on tiny Shakespeare: training time and encoding throughput.

    python tests/benchmarks/bench_bpe.py [--out out/bpe] [--repeats 3]

Measures (median of --repeats runs):
  - training, GPT-4 split pattern: vocabulary 512 on the first 185,000 characters, and
    4,096 on all 1,115,394; also 512 without a split pattern (one chunk: the whole text);
  - encoding all of tiny Shakespeare in MB/s (UTF-8 bytes): our pure-Python encoder with the
    GPT-2 and GPT-4 ranks (a fresh tokenizer, so its chunk cache starts empty, and the same
    tokenizer again), the lecture's merge-by-merge encoder for comparison, and tiktoken
    through `to_tiktoken()`;
  - token counts and bytes per token.
It writes the figure bytes per token against vocabulary size to OUT/bytes_per_token.png.

Measured on a 2-core CPU shared with other jobs (medians of 5; an idle machine is faster):
  training 512 on 185 KB 0.12 s (no split: 0.70 s), 4,096 on 1.1 MB 1.01 s (0.59 s idle);
  GPT-2 ranks: pure Python 3.2 MB/s without cache, 4.9 MB/s from an empty cache, 8.0 MB/s
  warm; to_tiktoken() 13.3 MB/s. GPT-4 ranks: 3.2 / 4.4 / 8.0 MB/s, to_tiktoken() 13.3 MB/s.
  The lecture's merge-by-merge encoder: 0.62 MB/s (trained 4,096 tokens, first 100 KB).
  Tokens: GPT-2 338,025, GPT-4 301,829, trained 4,096: 310,480 (3.59 bytes per token).
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import regex  # noqa: E402

from common import bpe, cli, data  # noqa: E402


def timed(fn, repeats):
    """(median seconds, last result) of `repeats` calls of fn()."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def lecture_encode(tok, text):
    """The lecture's encoder: chunk, then apply merges one by one (no cache)."""
    ids = []
    for piece in regex.findall(tok.pattern, text):
        ids.extend(bpe.encode_with_merges(list(piece.encode("utf-8")), tok.merges))
    return ids


def no_cache_encode(tok, text):
    """Our encoder without its chunk cache: every chunk merged from its bytes."""
    ids, ranks = [], tok.ranks
    for piece in regex.findall(tok.pattern, text):
        token = piece.encode("utf-8")
        ids.extend([ranks[token]] if token in ranks
                   else [ranks[part] for part in bpe.bpe_merge(token, ranks)])
    return ids


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="out/bpe", help="folder for the figure")
    parser.add_argument("--repeats", type=int, default=3, help="runs per measurement")
    args = parser.parse_args(argv)
    text = data.load_shakespeare()
    n_bytes = len(text.encode("utf-8"))
    mb = n_bytes / 1e6
    results = {}

    print("training (GPT-4 split pattern unless said otherwise)")
    for label, sample, size, pattern in (
            ("512 on 185 KB", text[:185_000], 512, bpe.GPT4_SPLIT_PATTERN),
            ("512 on 185 KB, no split", text[:185_000], 512, None),
            ("4096 on 1.1 MB", text, 4096, bpe.GPT4_SPLIT_PATTERN)):
        seconds, tok = timed(lambda: bpe.Tokenizer().train(sample, size, pattern), args.repeats)
        results[f"train {label}"] = seconds
        print(f"  vocab {label:24s} {seconds:6.2f} s")
    trained = tok  # the 4,096-token tokenizer
    print("  one run with its progress lines:")
    bpe.Tokenizer().train(text, 4096, verbose=True)

    print(f"encoding all of tiny Shakespeare ({n_bytes:,} bytes)")
    for name, make in (("GPT-2", bpe.gpt2), ("GPT-4", bpe.gpt4)):
        tok = make()
        bare, ids = timed(lambda: no_cache_encode(tok, text), args.repeats)
        cold, ids = timed(lambda: make().encode(text), args.repeats)
        tok.encode(text)
        warm, _ = timed(lambda: tok.encode(text), args.repeats)
        start = time.perf_counter()
        enc = tok.to_tiktoken()
        build = time.perf_counter() - start
        fast, fast_ids = timed(lambda: enc.encode(text), args.repeats)
        assert fast_ids == ids, f"{name}: to_tiktoken() disagrees with our encoder"
        results[f"{name} tokens"] = len(ids)
        results[f"{name} MB/s ours"] = mb / cold
        results[f"{name} MB/s tiktoken"] = mb / fast
        print(f"  {name}: {len(ids):,} tokens ({n_bytes / len(ids):.3f} bytes/token)")
        print(f"    pure Python, no cache     {mb / bare:6.2f} MB/s  ({bare:.2f} s)")
        print(f"    pure Python, empty cache  {mb / cold:6.2f} MB/s  ({cold:.2f} s)")
        print(f"    pure Python, warm cache   {mb / warm:6.2f} MB/s  ({warm:.2f} s)")
        print(f"    to_tiktoken()             {mb / fast:6.2f} MB/s  ({fast:.3f} s, "
              f"+ {build:.2f} s to build the Encoding)")
    sample = text[:100_000]
    lecture, ids = timed(lambda: lecture_encode(trained, sample), 1)
    assert ids == trained.encode(sample)
    bare, _ = timed(lambda: no_cache_encode(trained, sample), args.repeats)
    cold, _ = timed(lambda: bpe.Tokenizer(trained.ranks).encode(sample), args.repeats)
    print("  the trained 4,096-token tokenizer on the first 100 KB:")
    print(f"    lecture's merge-by-merge encoder {0.1 / lecture:6.2f} MB/s")
    print(f"    ours, no cache                   {0.1 / bare:6.2f} MB/s")
    print(f"    ours, empty cache                {0.1 / cold:6.2f} MB/s")
    ids = trained.encode(text)
    results["trained 4096 tokens"] = len(ids)
    print(f"  trained 4,096 on all of it: {len(ids):,} tokens "
          f"({n_bytes / len(ids):.3f} bytes/token; {trained.history[-1][1]:,} in training)")

    refs = {"GPT-2": (50257, n_bytes / results["GPT-2 tokens"]),
            "GPT-4": (100277, n_bytes / results["GPT-4 tokens"])}
    path = bpe.bytes_per_token_figure(trained.history,
                                      cli.out_dir(args.out) / "bytes_per_token.png", refs)
    print(f"wrote {path}")
    return results


if __name__ == "__main__":
    cli.run(main)
