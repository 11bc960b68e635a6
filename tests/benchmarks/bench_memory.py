"""Peak memory of whole runs: each run is a separate `python NN_stage/train.py ...`
process, and its peak resident memory is what the operating system reports for it
(getrusage's ru_maxrss of the finished child, the "Maximum resident set size" that
`/usr/bin/time -v` prints).

    python tests/benchmarks/bench_memory.py              # the short runs, ~3 minutes
    python tests/benchmarks/bench_memory.py --full       # + stage 07's full default run

The runs are the ones compared with PyTorch in tests/benchmarks/README.md: stage 02's
neural bigram (30 and 50 full-batch steps over all 228,146 bigrams), stage 04's BatchNorm
MLP (5,000 steps), stage 07's default GPT (200 steps; with --full all 2,000).
"""

import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

RUNS = [
    ("02 neural bigram, 30 full-batch steps", "02_bigram", ["--steps", "30"]),
    ("02 neural bigram, 50 full-batch steps", "02_bigram", ["--steps", "50"]),
    ("04 BatchNorm MLP, 5,000 steps", "04_batchnorm", ["--steps", "5000"]),
    ("07 GPT default, 200 steps", "07_gpt", ["--steps", "200"]),
]
FULL = [("07 GPT default, full run (2,000 steps)", "07_gpt", [])]


def peak_of(stage, args):
    """(peak resident memory in MB, wall seconds) of one run in a fresh process."""
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, f"{stage}/train.py", *args, "--no-plots", "--out", out]
        start = time.perf_counter()
        subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        seconds = time.perf_counter() - start
    # the largest child so far: run the biggest last, or one run per invocation
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, seconds


def main():
    runs = RUNS + (FULL if "--full" in sys.argv[1:] else [])
    print("| run | peak memory | wall time |\n|---|---|---|")
    for label, stage, args in runs:
        # ru_maxrss of RUSAGE_CHILDREN is the largest child yet, so each run gets its own
        # measuring process
        code = ("import sys; sys.path.insert(0, %r); from bench_memory import peak_of; "
                "mb, s = peak_of(%r, %r); print(f'{mb:.0f} {s:.1f}')"
                % (str(Path(__file__).parent), stage, args))
        env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
        mb, s = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True,
                               capture_output=True, text=True).stdout.split()
        print(f"| {label} | {float(mb):,.0f} MB | {float(s):.1f} s |", flush=True)


if __name__ == "__main__":
    main()
