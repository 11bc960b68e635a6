"""Stage 01 benchmark: the Value engine's speed.

    python tests/benchmarks/bench_micrograd.py

Times a training step of the moons demo (the whole default run of 100 steps, split into
forward, backward and update), and a backward pass over graphs of 100,000 nodes, one
deep (a chain) and one wide (a long sum of products). Prints a small table, with wall
time and the process's CPU time (which other programs running at the same time disturb
less), and checks that the run reproduced the demo notebook's first and last losses.
"""

import gc
import random
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
from conftest import load_stage  # noqa: E402

stage = load_stage("01_micrograd")
Value = stage.Value


def timed(fn):
    """(wall seconds, CPU seconds) of one call of fn()."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def best_of(fn, repeat=3):
    """The fastest of `repeat` runs of fn() (the least disturbed one): (wall, CPU) s."""
    times = [timed(fn) for _ in range(repeat)]
    return min(t[0] for t in times), min(t[1] for t in times)


def demo_data(seed=1337):
    np.random.seed(seed)
    random.seed(seed)
    X, y = stage.make_moons(100, 0.1)
    return X.tolist(), (y * 2 - 1).tolist(), stage.MLP(2, [16, 16, 1])


rows = []  # (what, nodes, (wall, CPU) seconds)

# The whole default run, as `python 01_micrograd/train.py` does it.
X, y, model = demo_data()
cpu = time.process_time()
losses, accuracies, seconds = stage.train(model, X, y, 100, quiet=True)
cpu = time.process_time() - cpu
reproduced = (losses[0] == 0.8958441028683222 and losses[99] == 0.010978370135492717
              and accuracies[99] == 1.0)
graph, _ = stage.loss(model, X, y)
step_nodes = len(stage.graph_nodes(graph))
del graph
rows.append(("moons: one training step (mean of 100)", step_nodes,
             (seconds / 100, cpu / 100)))

# One step taken apart, on the trained model (the graph has the same size every step).
with stage.cycle_collector_paused():
    forward = best_of(lambda: stage.loss(model, X, y))
    total, _ = stage.loss(model, X, y)
    # (the graph's inner grads pile up over the repeats; only the time matters here)
    backward = best_of(lambda: (model.zero_grad(), total.backward()))
    del total
rows.append(("  forward: build the graph, loss", step_nodes, forward))
rows.append(("  backward: topological sort + chain rule", step_nodes, backward))


def steps_with_collector(steps=10):
    """train()'s loop without pausing Python's cycle collector: (wall, CPU) s per step."""
    X, y, model = demo_data()

    def run():
        for k in range(steps):
            total, _ = stage.loss(model, X, y)
            model.zero_grad()
            total.backward()
            for p in model.parameters():
                p.data -= (1.0 - 0.9 * k / 100) * p.grad

    wall, cpu = timed(run)
    return wall / steps, cpu / steps


assert gc.isenabled()
rows.append(("  the same step with the cycle collector on", step_nodes,
             steps_with_collector()))

def chain(n_nodes):
    """x_{i+1} = x_i * a_j + b_k over 1,000 shared leaves: 2 nodes per link, n deep."""
    rng = random.Random(0)
    leaves = [Value(rng.uniform(-1, 1)) for _ in range(1000)]
    x = Value(0.5)
    for i in range(n_nodes // 2):
        x = x * leaves[i % 1000] + leaves[(7 * i) % 1000]
    return x


def wide(n_nodes):
    """sum of a_i * b_j over 1,000 shared leaves: one product and one sum per term."""
    rng = random.Random(0)
    leaves = [Value(rng.uniform(-1, 1)) for _ in range(1000)]
    return sum(leaves[i % 1000] * leaves[(13 * i + 1) % 1000] for i in range(n_nodes // 2))


for name, build in [("deep chain", chain), ("wide sum", wide)]:
    root = build(100_000)
    nodes = len(stage.graph_nodes(root))
    rows.append((f"100,000-node {name}: build", nodes, best_of(lambda: build(100_000))))
    rows.append((f"100,000-node {name}: backward", nodes, best_of(root.backward)))
    del root

width = max(len(what) for what, _, _ in rows)
print(f"\n{'stage 01 (Value engine)':<{width}}  {'nodes':>8}  {'wall ms':>8}  "
      f"{'CPU ms':>8}")
for what, nodes, (wall, cpu_s) in rows:
    print(f"{what:<{width}}  {nodes:>8,}  {1000 * wall:>8.1f}  {1000 * cpu_s:>8.1f}")
print(f"\nfull default run: {seconds:.1f}s for 100 steps ({cpu:.1f}s CPU); "
      f"step 0 loss {losses[0]}, "
      f"step 99 loss {losses[99]}, accuracy {accuracies[99] * 100}%")
print("demo notebook numbers reproduced:", reproduced)
sys.exit(0 if reproduced else 1)
