"""Stage 06 benchmark: BLAS threads, training throughput of the hierarchical model and of
its dilated convolutions, the full default run against the lecture's printed numbers, and
the lecture's performance log (five runs of 200,000 steps).

    python tests/benchmarks/bench_wavenet.py                     # threads, throughput,
                                                                 # evaluation, default run
    python tests/benchmarks/bench_wavenet.py threads throughput evaluation  # minutes
    python tests/benchmarks/bench_wavenet.py log --jobs 2        # the performance log
    python tests/benchmarks/bench_wavenet.py conv                # --conv, 200,000 steps

Every run is `python 06_wavenet/train.py ...` in a subprocess; the numbers are read from
what it prints. Times are wall-clock and CPU seconds of the training loop: on a machine
shared with other work the CPU time is what the run itself cost.
"""

import argparse
import importlib.util
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# the lecture's notebook (makemore_part5_cnn1.ipynb): its printed losses every 10,000
# steps, the final split losses and its 20 samples
LECTURE_LOSSES = [3.3167, 2.0576, 2.0723, 2.5134, 2.1476, 1.7836, 2.2592, 1.9331, 1.6875,
                  2.0395, 1.7736, 1.9570, 1.7465, 1.8126, 1.7406, 1.7466, 1.8806, 1.6266,
                  1.6476, 1.8555]
LECTURE_FINAL = {"train": 1.7690284252166748, "val": 1.9936515092849731}
LECTURE_SAMPLES = ("arlij. chetta. heago. rocklei. hendrix. jamylie. broxin. denish. "
                   "anslibt. marianah. astavia. annayve. aniah. jayce. nodiel. remita. "
                   "niyelle. jaylene. aiyan. aubreana.").split()
# the performance log: (name, flags, the lecture's train and val)
LOG = [
    ("original: context 3, 200 hidden (12K)",
     ["--model", "flat", "--block-size", "3", "--n-embd", "10", "--n-hidden", "200"],
     2.058, 2.105),
    ("context 3 -> 8 (22K)", ["--model", "flat", "--n-embd", "10", "--n-hidden", "200"],
     1.918, 2.027),
    ("flat -> hierarchical (22K)", ["--n-embd", "10", "--n-hidden", "68",
                                    "--batchnorm-bug"], 1.941, 2.029),
    ("fix bug in batchnorm (22K)", ["--n-embd", "10", "--n-hidden", "68"], 1.912, 2.022),
    ("scale up: n_embd 24, n_hidden 128 (76K)", [], 1.769, 1.993),
]


def run(args, threads=1):
    """Run the stage; returns what it printed, parsed."""
    env = dict(os.environ, OPENBLAS_NUM_THREADS=str(threads))
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "06_wavenet/train.py", "--no-plots", "--out", out, *args]
        text = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                              check=True).stdout
    speed = re.search(r"\n  ([\d.]+)s \(([\d.]+)s of CPU\), ([\d.]+) ms/step, ([\d,]+) "
                      r"characters", text)
    losses = re.search(r"evaluation mode: train ([\d.]+), val ([\d.]+), test ([\d.]+)",
                       text)
    samples = text.split("== Samples\n")[1].split("\n")[0].split() \
        if "== Samples\n" in text else []
    steps = int(args[args.index("--steps") + 1]) if "--steps" in args else 200_000
    seconds, cpu = float(speed[1]), float(speed[2])
    chars_per_s = float(speed[4].replace(",", ""))
    return dict(text=text, seconds=seconds, cpu=cpu, ms=float(speed[3]),
                cpu_ms=1000 * cpu / max(steps, 1), chars_per_s=chars_per_s,
                chars_per_cpu_s=chars_per_s * seconds / cpu,
                train=float(losses[1]), val=float(losses[2]), test=float(losses[3]),
                printed=printed_losses(text), samples=samples)


def printed_losses(text):
    """The progress lines at steps 0, 10,000, 20,000, ...: the lecture's printout."""
    return [float(m[2]) for m in re.finditer(r"^ *(\d+)/\d+: ([\d.]+)", text, re.M)
            if int(m[1]) % 10_000 == 0]


def threads():
    print("== BLAS threads: the default model, 3,000 steps")
    for n in (1, 2):
        r = run(["--steps", "3000", "--samples", "0"], threads=n)
        print(f"  {n} thread(s): {r['ms']:.2f} ms/step wall, {r['cpu_ms']:.2f} ms/step CPU")


def throughput():
    print("== Training throughput: characters predicted per second")
    print("  | model | per step | ms/step | chars/s (wall) | chars/s (CPU) |")
    print("  |---|---|---|---|---|")
    for label, args in [("hierarchical", ["--batch-size", "32"]),
                        ("convolutions", ["--conv", "--batch-names", "4"]),
                        ("hierarchical", ["--batch-size", "256"]),
                        ("convolutions", ["--conv", "--batch-names", "32"])]:
        r = run(["--steps", "2000", "--samples", "0", *args])
        per_step = f"{args[-1]} {'names' if '--conv' in args else 'examples'}"
        print(f"  | {label} | {per_step} | {r['ms']:.2f} | {r['chars_per_s']:,.0f} | "
              f"{r['chars_per_cpu_s']:,.0f} |")


def evaluation():
    """The whole training split in evaluation mode: 182,625 contexts one by one, or
    25,626 names in one pass each (untrained weights: the speed does not depend on
    them). In this process, with one BLAS thread."""
    os.environ["OPENBLAS_NUM_THREADS"] = "1"  # before numpy's import (by the stage)
    sys.path.insert(0, str(ROOT))
    spec = importlib.util.spec_from_file_location("wavenet", ROOT / "06_wavenet/train.py")
    stage = importlib.util.module_from_spec(spec)
    sys.modules["wavenet"] = stage
    spec.loader.exec_module(stage)
    words = stage.data.load_names()
    (Xtr, Ytr), _, _ = stage.data.makemore_splits(8)
    names = stage.name_rows(stage.data.split_words(words)[0], 8,
                            stage.data.names_vocab(words)[0])
    model = stage.build_model(stage.Config(), stage.rng.Generator(42))
    stage.set_training(model, False)
    conv = stage.wavenet(model)
    print("== Evaluating the training split (182,625 characters), best of 3")
    for label, fn in [("hierarchical", lambda: stage.split_loss(model, Xtr, Ytr)),
                      ("convolutions", lambda: stage.split_loss_names(conv, names))]:
        best = min(cpu_time(fn) for _ in range(3))
        print(f"  {label}: {best:.2f}s of CPU, {len(Ytr) / best:,.0f} characters/s")


def cpu_time(fn):
    start = time.process_time()
    fn()
    return time.process_time() - start


def default():
    print("== The default run: 200,000 steps (the lecture's model)")
    r = run([])
    same = sum(round(a, 4) == b for a, b in zip(r["printed"], LECTURE_LOSSES))
    print(f"  {r['seconds']:.0f}s ({r['cpu']:.0f}s CPU), {r['ms']:.2f} ms/step")
    print(f"  printed losses: {' '.join(f'{x:.4f}' for x in r['printed'])}")
    print(f"  {same} of the lecture's {len(LECTURE_LOSSES)} printed losses equal")
    print(f"  train {r['train']:.4f} (lecture {LECTURE_FINAL['train']:.4f}), val "
          f"{r['val']:.4f} (lecture {LECTURE_FINAL['val']:.4f}), test {r['test']:.4f}")
    print(f"  samples: {' '.join(r['samples'])}")
    print(f"  {sum(a == b for a, b in zip(r['samples'], LECTURE_SAMPLES))} of the "
          f"lecture's 20 samples equal")


def log(jobs):
    print("== The lecture's performance log, measured (200,000 steps each)")
    with ThreadPoolExecutor(jobs) as pool:
        results = list(pool.map(lambda entry: run(entry[1]), LOG))
    print("  | model | flags | lecture train / val | measured train / val |")
    print("  |---|---|---|---|")
    for (name, flags, train, val), r in zip(LOG, results):
        print(f"  | {name} | `{' '.join(flags) or '(defaults)'}` | {train:.3f} / {val:.3f} "
              f"| {r['train']:.4f} / {r['val']:.4f} |")


def conv():
    print("== --conv: the same model as convolutions, trained on whole names")
    r = run(["--conv"])
    print(f"  {r['seconds']:.0f}s ({r['cpu']:.0f}s CPU), {r['ms']:.2f} ms/step, "
          f"{r['chars_per_s']:,.0f} chars/s; train {r['train']:.4f}, val {r['val']:.4f}, "
          f"test {r['test']:.4f}")
    print(f"  samples: {' '.join(r['samples'])}")


if __name__ == "__main__":
    parts = dict(threads=threads, throughput=throughput, evaluation=evaluation,
                 default=default, log=log, conv=conv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("parts", nargs="*", metavar="PART",
                        help=f"any of {', '.join(parts)} (default: all but log and conv)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="performance-log runs at once (the machine's cores)")
    args = parser.parse_args()
    unknown = sorted(set(args.parts) - set(parts))
    if unknown:
        parser.error(f"unknown part(s) {', '.join(unknown)}")
    for part in args.parts or ["threads", "throughput", "evaluation", "default"]:
        parts[part](args.jobs) if part == "log" else parts[part]()
