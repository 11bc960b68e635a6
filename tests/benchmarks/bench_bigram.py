"""Stage 02 benchmark: the full default run (300 full-batch steps over 228,146 bigrams).

    python tests/benchmarks/bench_bigram.py

Prints ms per step and the lecture's numbers, and checks them: loss 3.768619 at step 0,
2.489959 at step 100, 2.481499 after 300 steps, and the five sampled names.
"""

import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
from conftest import load_stage  # noqa: E402

stage = load_stage("02_bigram")
start = time.perf_counter()
r = stage.main(["--no-plots"])
total = time.perf_counter() - start
ms = 1000 * r["seconds"] / len(r["losses"])
print(f"\nstage 02: {ms:.1f} ms per full-batch step, training {r['seconds']:.1f}s, "
      f"whole run {total:.1f}s")
got = (round(r["losses"][0], 6), round(r["losses"][100], 6), round(r["final_loss"], 6),
       " ".join(r["neural_samples"]))
want = (3.768619, 2.489959, 2.481499, "mor. axx. minaymoryles. kondlaisah. anchthizarie.")
print("lecture numbers reproduced:", got == want, got)
sys.exit(0 if got == want else 1)
