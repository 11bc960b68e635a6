"""Per-call cost of common/rng.py for the calls the stages make in their loops.

    python tests/benchmarks/bench_rng.py

A minibatch index draw (`randint(0, 182625, (32,))`) runs 200,000 times per makemore run,
and a multinomial over 27 characters once per sampled character, so the fixed cost of a
call matters more than throughput. Prints the median of several timing rounds.
"""

import statistics
import sys
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root

import numpy as np  # noqa: E402

from common import rng  # noqa: E402


def per_call(stmt, number, env, rounds=7):
    """Median seconds per call over `rounds` rounds of `number` calls."""
    times = timeit.repeat(stmt, globals=env, number=number, repeat=rounds)
    return statistics.median(times) / number


def main():
    g = rng.Generator(2147483647)
    p27 = rng.Generator(0).rand(27)
    p65 = rng.Generator(0).rand(1, 65)
    env = {"rng": rng, "g": g, "p27": p27, "p65": p65, "np": np}
    cases = [
        ("randint(0, 182625, (32,))", "rng.randint(0, 182625, (32,), generator=g)", 100_000),
        ("g.randint(0, 182625, (32,))", "g.randint(0, 182625, (32,))", 100_000),
        ("multinomial(p27, 1, replacement=True)",
         "rng.multinomial(p27, 1, replacement=True, generator=g)", 20_000),
        ("multinomial(p27, 1)", "rng.multinomial(p27, 1, generator=g)", 20_000),
        ("multinomial(p65 (1, 65), 1)", "rng.multinomial(p65, 1, generator=g)", 20_000),
        ("rand(3)", "rng.rand(3, generator=g)", 100_000),
        ("randn(27, 27)", "rng.randn(27, 27, generator=g)", 5_000),
        ("randn(30, 200)", "rng.randn(30, 200, generator=g)", 1_000),
        ("uniform((200, 30), -b, b)", "rng.uniform((200, 30), -0.18, 0.18, generator=g)",
         1_000),
        ("numpy default_rng().integers (for scale)",
         "np.random.default_rng(0).integers(0, 182625, 32)", 20_000),
    ]
    print(f"numpy {np.__version__}")
    for name, stmt, number in cases:
        print(f"{per_call(stmt, number, env) * 1e6:9.2f} us  {name}")
    n = 10_000_000
    t = per_call("rng.randn(n, generator=g)", 1, {**env, "n": n}, rounds=3)
    print(f"{n / t / 1e6:9.1f} M values/s  randn({n:,})")


if __name__ == "__main__":
    main()
