"""Stage 05 benchmark: ms per training step of the same hidden-200 BatchNorm MLP trained
with the manual backward pass (exercise 4) and with the engine's loss.backward() (stage
04's loop), then the full default run (200,000 steps, manual) and its results.

    python tests/benchmarks/bench_backprop_ninja.py            # about 3 minutes on 2 cores
    python tests/benchmarks/bench_backprop_ninja.py --quick    # the speed comparison only

Both loops take the same minibatches from the same generator, in one process, in
alternating rounds (the machine may be busy with other work: the fastest round of each
counts). CPU time is reported beside wall time.
"""

import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
from conftest import load_stage  # noqa: E402

stage = load_stage("05_backprop_ninja")
from common import data, rng  # noqa: E402  (load_stage put the root on sys.path)

# what the default run printed when these notes were written (python 05_backprop_ninja/train.py)
PINNED = {"train": 2.0711, "val": 2.1119}
LECTURE = {"train": 2.0705, "val": 2.1099}


def time_steps(backward, steps, Xtr, Ytr):
    """Train a fresh hidden-200 network for `steps` steps; (wall, cpu) ms per step."""
    cfg = stage.Config(steps=steps, backward=backward)
    g = rng.Generator(cfg.seed)
    params = stage.init_params(cfg, g, cfg.n_hidden)
    wall, cpu = time.perf_counter(), time.process_time()
    lossi = stage.train(cfg, params, Xtr, Ytr, g, quiet=True)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return 1000 * wall / steps, 1000 * cpu / steps, lossi


def speed(steps=10_000, rounds=3):
    (Xtr, Ytr), _, _ = data.makemore_splits(3)
    best = {}
    for r in range(rounds):
        for backward in stage.BACKWARDS:
            wall, cpu, lossi = time_steps(backward, steps, Xtr, Ytr)
            print(f"  round {r + 1}, {backward:6s}: {wall:.3f} ms/step wall, {cpu:.3f} ms/step "
                  f"CPU (loss at step {steps - 1}: {lossi[-1]:.4f})", flush=True)
            old = best.get(backward, (float("inf"),))
            best[backward] = min(old, (wall, cpu))
    (mw, mc), (ew, ec) = best["manual"], best["engine"]
    print(f"fastest of {rounds} rounds of {steps:,} steps: manual {mw:.3f} ms/step "
          f"({mc:.3f} CPU), engine {ew:.3f} ms/step ({ec:.3f} CPU): the manual backward "
          f"pass is {ew / mw:.2f}x as fast")
    return best


def full_run():
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "05_backprop_ninja/train.py", "--exercise", "4", "--no-plots",
               "--out", out]
        text = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout
    print("\n".join("  " + line for line in text.splitlines()[7:]))
    seconds, ms = re.search(r"\n  ([\d.]+)s \(([\d.]+) ms/step\); train", text).groups()
    losses = {k: float(v) for k, v in re.findall(r"(train|val) ([\d.]+)", text)[-2:]}
    print(f"default run, 200,000 steps: {float(ms):.3f} ms/step, training {float(seconds):.0f}s; "
          + ", ".join(f"{k} {v:.4f} (lecture {LECTURE[k]}, pinned {PINNED[k]})"
                      for k, v in losses.items()))
    for k, v in losses.items():
        assert abs(v - LECTURE[k]) < 0.01, f"{k} {v} is not within 0.01 of the lecture's"
        assert round(v, 4) == PINNED[k], f"{k} {v:.4f} differs from the pinned {PINNED[k]}"


if __name__ == "__main__":
    print("ms per training step, hidden-200 BatchNorm MLP, batch 32:")
    speed(steps=2_000 if "--quick" in sys.argv else 10_000)
    if "--quick" not in sys.argv:
        full_run()
