"""Stage 03 benchmark: ms per step with one and two BLAS threads, then the full default
run (200,000 steps) and its train / val / test losses.

    python tests/benchmarks/bench_mlp.py            # about 2 minutes on 2 cores
    python tests/benchmarks/bench_mlp.py --quick    # thread comparison only
"""

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(steps, threads, out):
    env = dict(os.environ, OPENBLAS_NUM_THREADS=str(threads))
    cmd = [sys.executable, "03_mlp/train.py", "--steps", str(steps), "--no-plots",
           "--samples", "0", "--out", out]
    text = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                          check=True).stdout
    last = [line for line in text.splitlines() if "ms/step" in line][-1]
    ms = float(re.search(r"([\d.]+) ms/step", last).group(1))
    seconds = float(re.search(r"\n  ([\d.]+)s; train", text).group(1))
    losses = dict(re.findall(r"(train|val|test) ([\d.]+)", text.split("s; train")[-1]
                             .replace(",", " ").join(["train ", ""])))
    return ms, seconds, {k: float(v) for k, v in losses.items()}


with tempfile.TemporaryDirectory() as out:
    for threads in (1, 2):
        ms, _, _ = run(20_000, threads, out)
        print(f"{threads} BLAS thread(s): {ms:.3f} ms/step (20,000 steps)")
    if "--quick" not in sys.argv:
        ms, seconds, losses = run(200_000, 1, out)
        print(f"default run, 200,000 steps: {ms:.3f} ms/step, training {seconds:.0f}s; "
              + ", ".join(f"{k} {v:.4f}" for k, v in losses.items()))
