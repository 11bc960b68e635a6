"""Stage 08 benchmark: the recurrent language models' speed and full-length results.

    python tests/benchmarks/bench_rnn.py              # both of the next two (about 15 min)
    python tests/benchmarks/bench_rnn.py --quick      # speed table only (about 10 minutes)
    python tests/benchmarks/bench_rnn.py --names      # full names runs only (--compare, 5 min)
    python tests/benchmarks/bench_rnn.py --shakespeare    # against stage 07's GPT (10 min)

Speed: ms per training step of each cell in the names setup (batch 32, hidden 64), with
the fused recurrence and op by op, with 1 and 2 BLAS threads; every figure is the median
of three runs (the machine is shared, so the load average is printed with it). Full runs:
`train.py --compare --fused` at the default settings (--fused: the same numbers as the
default op-by-op cells, faster), which trains all three cells, prints their test losses
and writes the comparison figures into out/08_lstm_gru/. Shakespeare: stage
07's GPT and an LSTM and a GRU of about the same parameter count, each trained for about
the same wall-clock time; the table gives the validation loss measured the same way for
all three (random windows of 64 characters) and, for the recurrent models, with the state
carried through the whole validation text.
"""

import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def load():
    return os.getloadavg()[0]


def run(args, threads=1, cwd=ROOT):
    env = dict(os.environ, OPENBLAS_NUM_THREADS=str(threads), MPLBACKEND="Agg")
    res = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                         text=True)
    if res.returncode:
        sys.exit(f"failed: {' '.join(args)}\n{res.stderr}")
    return res.stdout


def ms_per_step(cell, fused, threads, steps, out):
    args = ["08_lstm_gru/train.py", "--cell", cell, "--steps", str(steps), "--no-plots",
            "--samples", "0", "--eval-interval", str(10 * steps), "--out", out]
    text = run(args + (["--fused"] if fused else []), threads)
    return float(re.search(r"\(([\d.]+) ms/step\)", text).group(1))


def speed_table(out):
    print(f"load average before: {load():.2f} (2 cores, shared)")
    print("cell  op        BLAS threads  ms/step (median of 3: min-max)")
    rows = {}
    for cell in ("rnn", "gru", "lstm"):
        for fused, steps in ((True, 1000), (False, 200)):
            for threads in (1, 2):
                ms = [ms_per_step(cell, fused, threads, steps, out) for _ in range(3)]
                rows[cell, fused, threads] = statistics.median(ms)
                print(f"{cell:4s}  {'fused' if fused else 'op-by-op':8s}  {threads:12d}  "
                      f"{statistics.median(ms):7.2f} ({min(ms):.2f}-{max(ms):.2f})",
                      flush=True)
    print(f"load average after: {load():.2f}")
    return rows


def full_names_runs(out):
    print(f"\n== train.py --compare --fused (default settings); load average {load():.2f}",
          flush=True)
    text = run(["08_lstm_gru/train.py", "--compare", "--fused", "--out", out])
    for line in text.splitlines():
        if line.startswith("== ") and "Comparison" not in line or "ms/step)" in line \
                or "steps back" in line \
                or "saturated" in line:
            print(line)
    print(text[text.index("== Comparison"):].strip())
    print(f"load average after: {load():.2f}")


# -- tiny Shakespeare: recurrent models against stage 07's GPT ----------------------------

GPT = ["--n-layer", "4", "--n-head", "4", "--n-embd", "64", "--block-size", "64",
       "--batch-size", "16", "--eval-interval", "500", "--eval-iters", "50"]
RECURRENT = {"lstm": ["--n-embd", "64", "--n-hidden", "192"],
             "gru": ["--n-embd", "64", "--n-hidden", "224"]}
SHAKESPEARE = ["--dataset", "shakespeare", "--fused", "--bptt", "64", "--batch-size", "16",
               "--lr", "2e-3", "--schedule", "cosine", "--min-lr", "2e-4", "--warmup-steps", "100",
               "--weight-decay", "0.1", "--samples", "1", "--no-plots", "--eval-interval", "500"]


def windowed_val_loss(folder, T=64, n=2048, seed=0):
    """The recurrent model of a checkpoint on the GPT's terms: n random windows of T
    characters of the validation text, each read from the initial state, the loss over
    all T positions (a character has 0 to T-1 characters of context, as in the GPT)."""
    import numpy as np
    from conftest import load_stage
    stage = load_stage("08_lstm_gru")
    path = Path(folder) / "ckpt.npz"
    arrays, saved, _ = stage.load_checkpoint(path)
    ds = stage.load_dataset(saved)
    model = stage.RecurrentLM(saved, ds["vocab_size"], stage.rng.Generator(saved.seed))
    stage.load_model_state(model, arrays, path)
    val = ds["test"]
    starts = np.random.default_rng(seed).integers(0, len(val) - T - 1, n)
    X = val[starts[:, None] + np.arange(T)]
    Y = val[starts[:, None] + np.arange(1, T + 1)]
    with stage.no_grad():
        losses = [stage.sequence_loss(model(X[i:i + 256])[0], Y[i:i + 256]).item()
                  for i in range(0, n, 256)]
    return float(np.mean(losses))


def shakespeare_table(gpt_steps, out):
    print(f"\n== tiny Shakespeare; load average {load():.2f}", flush=True)
    rows = []
    gpt_out = str(Path(out) / "gpt")
    text = run(["07_gpt/train.py", *GPT, "--steps", str(gpt_steps), "--no-plots",
                "--max-new-tokens", "200", "--out", gpt_out], threads=1)
    n_params = int(re.search(r"([\d,]+) parameters", text).group(1).replace(",", ""))
    after = re.search(r"after ([\d,]+) steps: train loss ([\d.]+), val loss ([\d.]+).*?; "
                      r"([\d.]+) ms per training step", text)
    val, ms = float(after.group(3)), float(after.group(4))
    seconds = gpt_steps * ms / 1000
    rows.append(("GPT (stage 07)", n_params, val, None, ms, seconds, gpt_steps))
    print(f"GPT: {n_params:,} parameters, {gpt_steps} steps, {ms:.1f} ms/step, "
          f"{seconds:.0f}s of training; val loss {val:.4f}", flush=True)
    for cell, sizes in RECURRENT.items():
        folder = str(Path(out) / cell)
        probe = run(["08_lstm_gru/train.py", *SHAKESPEARE, *sizes, "--cell", cell,
                     "--steps", "300", "--out", folder])
        probe_ms = float(re.search(r"\(([\d.]+) ms/step\)", probe).group(1))
        steps = max(100, int(seconds * 1000 / probe_ms))  # the GPT's wall-clock time
        text = run(["08_lstm_gru/train.py", *SHAKESPEARE, *sizes, "--cell", cell,
                    "--steps", str(steps), "--out", folder])
        n_params = int(re.search(r"([\d,]+) parameters", text).group(1).replace(",", ""))
        m = re.search(r"([\d.]+)s training \(([\d.]+) ms/step\).*?val loss ([\d.]+)", text)
        windowed = windowed_val_loss(folder)
        rows.append((cell.upper(), n_params, windowed, float(m.group(3)), float(m.group(2)),
                     float(m.group(1)), steps))
        print(f"{cell.upper()}: {n_params:,} parameters, {steps} steps, {m.group(2)} ms/step, "
              f"{m.group(1)}s; val loss {windowed:.4f} (windows of 64), "
              f"{m.group(3)} (whole stream)", flush=True)
        print(text[text.index("== Sample"):text.index("== Greedy")].strip()[:400])
    print("\n| model | parameters | val loss, windows of 64 | val loss, state carried | "
          "ms/step | steps | training time |\n|---|---|---|---|---|---|---|")
    for name, n, val, stream, ms, secs, steps in rows:
        print(f"| {name} | {n:,} | {val:.4f} | {'-' if stream is None else f'{stream:.4f}'} "
              f"| {ms:.1f} | {steps:,} | {secs:.0f} s |")
    print(f"load average after: {load():.2f}")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        if "--shakespeare" in sys.argv:
            shakespeare_table(3000, tmp)
        else:
            if "--names" not in sys.argv:
                speed_table(tmp)
            if "--quick" not in sys.argv:
                full_names_runs(str(ROOT / "out" / "08_lstm_gru"))
