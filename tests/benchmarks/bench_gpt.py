"""Stage 07 benchmark: training speed, generation speed and memory of the GPT, and the
full default run, for both attention paths: each Head on its own (the default, as the
lecture types it) and all heads at once (--attention batched).

    python tests/benchmarks/bench_gpt.py             # all but the table, ~8 minutes
    python tests/benchmarks/bench_gpt.py --quick     # speeds only, ~3 minutes
    python tests/benchmarks/bench_gpt.py --table     # + the lecture's intermediate models

Measured, each in a fresh process:
  - ms per training step (batch, forward, backward, clipping, AdamW) of the default model
    with 1 and 2 BLAS threads, and of the lecture's 10.8M-parameter model (1 thread);
    the minimum over repeats (the machine is shared: the minimum is the least disturbed);
  - tokens per second of sampling (500 tokens from the default model, 20 from the
    lecture's), and peak memory (resident set) of each process;
  - the full default run `python 07_gpt/train.py` (and with --attention batched): final
    losses, ms per step, total time;
  - with --table, the lecture's steps (--model bigram ... layernorm): final losses.
The load average is printed with each number: timings on a busy machine are not
comparable.
"""

import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def worker(preset, attention, steps, repeats, tokens):
    """Runs inside the subprocess: time training steps and sampling, report JSON."""
    sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
    from conftest import load_stage
    stage = load_stage("07_gpt")
    from common import cli, data, rng
    cli.keep_freed_memory()
    cfg = cli.parse_config(stage.Config, ["--preset", preset, "--attention", attention],
                           presets=stage.presets)
    text = data.load_shakespeare()
    tok = stage.CharTokenizer(sorted(set(text)))
    splits, _ = stage.load_splits(tok, text)
    g = rng.Generator(cfg.seed)
    model = stage.build_model(cfg, tok.vocab_size, g)
    opt = stage.AdamW(model.named_parameters(), cfg.lr, (0.9, cfg.beta2),
                      weight_decay=cfg.weight_decay, decay=cfg.decay)
    params = model.parameters()

    def step():
        xb, yb = stage.get_batch(splits["train"], cfg.block_size, cfg.batch_size, g)
        stage.train_step(model, opt, params, xb, yb, cfg.lr, cfg.grad_clip)

    step()  # warm up (first-touch of the memory, BLAS buffers)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            step()
        times.append((time.perf_counter() - start) / steps)
    model.eval()
    start = time.perf_counter()
    model.generate(np.zeros((1, 1), dtype=np.int64), tokens, g)
    gen = tokens / (time.perf_counter() - start)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(dict(ms=1000 * min(times),
                          ms_median=1000 * sorted(times)[len(times) // 2],
                          tokens_per_second=gen, peak_mb=peak_mb,
                          n_params=sum(p.data.size for p in params))))


def load():
    return os.getloadavg()[0]


def measure(preset, threads, steps, repeats, tokens, attention="heads"):
    env = dict(os.environ, OPENBLAS_NUM_THREADS=str(threads))
    cmd = [sys.executable, __file__, "--worker", preset, attention, str(steps), str(repeats),
           str(tokens)]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def full_run(args, threads=None):
    env = dict(os.environ)
    if threads:
        env["OPENBLAS_NUM_THREADS"] = str(threads)
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        text = subprocess.run([sys.executable, "07_gpt/train.py", *args, "--no-plots",
                               "--out", out], cwd=ROOT, env=env, capture_output=True,
                              text=True, check=True).stdout
        seconds = time.perf_counter() - start
    summary = [line for line in text.splitlines() if line.startswith("after ")][-1]
    train, val = map(float, re.search(r"train loss ([\d.]+), val loss ([\d.]+)",
                                      summary).groups())
    ms = float(re.search(r"([\d.]+) ms per training step", summary).group(1))
    return dict(train=train, val=val, ms=ms, seconds=seconds,
                evals=[line for line in text.splitlines() if line.startswith("step ")])


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        import numpy as np  # noqa: F401  (after OPENBLAS_NUM_THREADS is set)
        preset, attention, steps, repeats, tokens = *sys.argv[2:4], *map(int, sys.argv[4:7])
        worker(preset, attention, steps, repeats, tokens)
        sys.exit(0)
    quick = "--quick" in sys.argv
    print(f"{os.cpu_count()} CPUs; load average {load():.2f} at the start")
    for threads, attention in ((1, "heads"), (1, "batched"), (2, "heads")):
        r = measure("cpu", threads, steps=10, repeats=8, tokens=500, attention=attention)
        print(f"default model ({r['n_params']:,} parameters), attention {attention}, "
              f"{threads} BLAS thread(s): "
              f"{r['ms']:.1f} ms/step (median {r['ms_median']:.1f}); sampling "
              f"{r['tokens_per_second']:.0f} tokens/s; peak memory {r['peak_mb']:.0f} MB; "
              f"load {load():.2f}", flush=True)
    r = measure("lecture", 1, steps=1, repeats=3, tokens=20)
    print(f"lecture model ({r['n_params']:,} parameters), 1 BLAS thread: "
          f"{r['ms'] / 1000:.1f} s/step (5,000 steps: {r['ms'] * 5000 / 3.6e6:.1f} hours); "
          f"sampling {r['tokens_per_second']:.1f} tokens/s; peak memory "
          f"{r['peak_mb']:.0f} MB; load {load():.2f}", flush=True)
    if not quick:
        for args in ([], ["--attention", "batched"]):
            r = full_run(args)
            print("\n".join(r["evals"]))
            print(f"default run {' '.join(args)}: train {r['train']:.4f}, val {r['val']:.4f}; "
                  f"{r['ms']:.1f} ms per training step; {r['seconds']:.0f}s in all; load "
                  f"{load():.2f}", flush=True)
    if "--table" in sys.argv:
        for model in ("bigram", "single-head", "multi-head", "feed-forward", "residual",
                      "layernorm"):
            r = full_run(["--model", model], threads=1)
            print(f"--model {model}: train {r['train']:.4f}, val {r['val']:.4f}; "
                  f"{r['ms']:.2f} ms/step, {r['seconds']:.0f}s", flush=True)
