"""Stage 09 benchmark: the speed of the convolution and of a CNN training step, the full
default run on Fashion-MNIST, and LeCun 1989 with each of its modern steps.

    python tests/benchmarks/bench_convnet.py speed      # ms per op and per step, ~1 minute
    python tests/benchmarks/bench_convnet.py default    # the default run, ~8 minutes
    python tests/benchmarks/bench_convnet.py lecun      # the five LeCun runs, ~40 minutes

Measured:
  - speed: conv2d forward + backward on the default CNN's second convolution (a batch
    of 64, 16 -> 32 channels, 14 x 14, 3 x 3), and one whole training step of the default
    CNN (batch 64: forward, backward, AdamW); the minimum of 20 repeats, one BLAS thread;
  - default: `python 09_convnet/train.py`, its test accuracies and wall time;
  - lecun: `--task lecun1989` as in 1989, then adding cross-entropy, AdamW, augmentation,
    ReLU + dropout one at a time (each step keeps the ones before), each in a fresh
    process: the last pass's train and test error, and the time.
The load average is printed first: on a busy machine timings are not comparable.
"""

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import blas_settings  # noqa: E402,F401  (one BLAS thread, the same kernels on every CPU)
import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
STEPS = [("1989", []), ("+ cross-entropy", ["--cross-entropy"]),
         ("+ AdamW", ["--cross-entropy", "--adamw"]),
         ("+ augmentation", ["--cross-entropy", "--adamw", "--augment"]),
         ("+ ReLU, dropout", ["--cross-entropy", "--adamw", "--augment", "--relu-dropout"])]


def best_ms(fn, repeats=20):
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * min(times)


def speed():
    sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
    from conftest import load_stage
    from common import rng
    stage = load_stage("09_convnet")
    r = np.random.default_rng(0)
    x = stage.Tensor(r.standard_normal((64, 16, 14, 14)).astype(np.float32),
                     requires_grad=True)
    conv = stage.Conv2d(16, 32, 3, padding=1, generator=rng.Generator(0))

    def conv_step():
        x.grad = None
        conv(x).sum().backward()
    print(f"conv2d 64 x 16 x 14 x 14 -> 32 channels, 3 x 3, forward + backward: "
          f"{best_ms(conv_step):.2f} ms")
    cfg = stage.Config()
    model = stage.convnet(cfg, rng.Generator(0))
    opt = stage.make_optimizer(cfg, model)
    xb = r.standard_normal((cfg.batch_size, 1, 28, 28)).astype(np.float32)
    yb = r.integers(0, 10, cfg.batch_size)

    def train_step():
        loss = stage.cross_entropy(model(stage.Tensor(xb)), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
    print(f"one training step of the default CNN (batch {cfg.batch_size}): "
          f"{best_ms(train_step):.1f} ms")


def run(args):
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        r = subprocess.run([sys.executable, str(ROOT / "09_convnet" / "train.py"), *args,
                            "--no-plots", "--out", tmp], capture_output=True, text=True)
        seconds = time.perf_counter() - start
    if r.returncode:
        sys.exit(r.stderr)
    return r.stdout, seconds


def default():
    out, seconds = run([])
    print("\n".join(line for line in out.splitlines() if "test accuracy" in line
                    or "int8" in line))
    print(f"the default run took {seconds / 60:.1f} minutes")


def lecun():
    print("| step | passes | train error | test error (misses of 1,000) | time |")
    print("|---|---|---|---|---|")
    for label, flags in STEPS:
        out, seconds = run(["--task", "lecun1989", *flags])
        m = re.search(r"after (\d+) passes: train error ([\d.]+)%, test error ([\d.]+)% "
                      r"\((\d+) misses\)", out)
        print(f"| {label} | {m[1]} | {m[2]}% | {m[3]}% ({m[4]}) | {seconds / 60:.1f} min |",
              flush=True)


if __name__ == "__main__":
    print(f"load average {os.getloadavg()[0]:.2f}")
    parts = sys.argv[1:] or ["speed", "default", "lecun"]
    for part in parts:
        if part not in ("speed", "default", "lecun"):
            sys.exit(f"unknown part {part!r}: choose speed, default or lecun")
        globals()[part]()
