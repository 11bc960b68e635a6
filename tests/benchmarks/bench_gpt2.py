"""Stage 07 with GPT-2 (124M) shapes: sampling speed with and without the KV cache, and
the cost of one fine-tuning step. Random weights stand in for the published ones (the
arithmetic, hence the time, is the same), so nothing needs downloading.

    python tests/benchmarks/bench_gpt2.py                  # ~10 minutes
    python tests/benchmarks/bench_gpt2.py --tokens 50      # shorter
    python tests/benchmarks/bench_gpt2.py --no-finetune    # sampling only

Measured in this process (one BLAS thread, as the stage sets):
  - tokens per second generating --tokens tokens after a one-token prompt, with each
    attention path (each Head on its own, the default; --attention batched), with and
    without --kv-cache; the tokens are checked equal;
  - seconds per fine-tuning step at the --init-from gpt2 defaults (4 x 256 tokens:
    forward, backward, clipping, AdamW), and per loss estimate, hence the cost of the
    default 200-step fine-tuning run.
"""

import argparse
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
from conftest import load_stage  # noqa: E402
from common import rng  # noqa: E402

stage = load_stage("07_gpt")
GPT2_124M = dict(n_layer=12, n_head=12, n_embd=768, block_size=1024)
VOCAB = 50257


def gpt2_124m(**kw):
    """A 124M GPT-2-shaped model with weights N(0, 0.02) (LayerNorms at 1 and 0)."""
    cfg = replace(stage.Config(), init_from="gpt2", tokenizer="gpt2", activation="gelu",
                  **dict(GPT2_124M, **kw))
    model = stage.build_model(cfg, VOCAB, rng.Generator(0), draw=False)
    r = np.random.default_rng(0)
    for name, p in model.named_parameters():
        if name.split(".")[-2] in ("ln1", "ln2", "ln_f"):  # LayerNorm: weight 1, bias 0
            p.data = np.full_like(p.data, name.endswith(".weight"))
        else:
            p.data = (0.02 * r.standard_normal(p.data.shape)).astype(np.float32)
    return cfg, model


def time_sampling(tokens):
    print(f"== sampling {tokens} tokens after a 1-token prompt (124M, context 1024)")
    results = {}
    for attention in ("heads", "batched"):
        _, model = gpt2_124m(attention=attention)
        model.eval()
        for cache in (False, True):
            start = time.perf_counter()
            idx = model.generate(np.array([[464]]), tokens, rng.Generator(1),
                                 kv_cache=cache)
            seconds = time.perf_counter() - start
            results[attention, cache] = idx
            print(f"  attention {attention:7s}  KV cache {'on ' if cache else 'off'}  "
                  f"{tokens / seconds:7.2f} tokens/s  ({seconds:.1f} s)", flush=True)
        same = np.array_equal(results[attention, False], results[attention, True])
        print(f"  same tokens with and without the cache: {same}")
        del model


def time_finetune(steps=3):
    print("== fine-tuning step at the --init-from gpt2 defaults")
    cfg = stage.cli.parse_config(stage.Config, ["--init-from", "gpt2"],
                                 presets=stage.presets)
    cfg, model = gpt2_124m(block_size=cfg.block_size, batch_size=cfg.batch_size,
                           eval_iters=cfg.eval_iters, steps=cfg.steps, lr=cfg.lr)
    opt = stage.AdamW(model.named_parameters(), cfg.lr, (0.9, cfg.beta2),
                      weight_decay=cfg.weight_decay, decay=cfg.decay)
    params = model.parameters()
    data = np.random.default_rng(0).integers(0, VOCAB, 100_000)
    g = rng.Generator(0)
    times = []
    for _ in range(steps + 1):  # the first warms up
        start = time.perf_counter()
        xb, yb = stage.get_batch(data, cfg.block_size, cfg.batch_size, g)
        stage.train_step(model, opt, params, xb, yb, cfg.lr, cfg.grad_clip)
        times.append(time.perf_counter() - start)
    step = min(times[1:])
    start = time.perf_counter()
    stage.estimate_loss(model, {"train": data, "val": data}, cfg, g)
    estimate = time.perf_counter() - start
    evals = cfg.steps // cfg.eval_interval + 1
    print(f"  {cfg.batch_size} x {cfg.block_size} tokens per step: {step:.1f} s per step "
          f"(best of {steps}); a loss estimate ({cfg.eval_iters} batches per split) "
          f"{estimate:.0f} s")
    print(f"  the default {cfg.steps}-step run: about "
          f"{(cfg.steps * step + evals * estimate) / 60:.0f} minutes")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=100, help="tokens to generate")
    ap.add_argument("--no-finetune", action="store_true", help="skip the step timing")
    args = ap.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f}")
    time_sampling(args.tokens)
    if not args.no_finetune:
        time_finetune()


if __name__ == "__main__":
    main()
