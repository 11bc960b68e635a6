"""Stage 04 benchmark: the full default run (200,000 steps of the BatchNorm MLP) against the
lecture's printed numbers, then the deep network's diagnostic run.

    python tests/benchmarks/bench_batchnorm.py                 # about 1.5 minutes on 2 cores
    python tests/benchmarks/bench_batchnorm.py --progression   # + the four fixes, ~6 more

Prints ms per step, the loss every 10,000 steps next to the lecture's, the final train / val
losses, and whether everything matches to 4 decimals (exit status 1 if not). With
--progression it also trains the lecture's four models without BatchNorm and prints the
progression table (train / val) next to the lecture's loss log.
"""

import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
from conftest import load_stage  # noqa: E402

# what the lecture prints every 10,000 steps, and after training (running statistics)
LECTURE_LOSSES = [3.3239, 2.0322, 2.5675, 2.0125, 2.2446, 1.8897, 2.0785, 2.3681, 2.2918,
                  2.0238, 2.3673, 2.3132, 1.6414, 1.9311, 2.2231, 2.0027, 2.0997, 2.4949,
                  2.0199, 2.1707]
LECTURE_FINAL = (2.0674, 2.1057)
# the lecture's loss log (train, val); "softmax" was logged rounded to 2 decimals
LECTURE_TABLE = {"original": ("2.1245", "2.1682"), "softmax": ("2.07", "2.13"),
                 "tanh": ("2.0356", "2.1027"), "kaiming": ("2.0377", "2.1070"),
                 "batchnorm": ("2.0668", "2.1048")}
LECTURE_DEEP = dict(first=3.2870, train=2.4003, val=2.3982, grad0="2.640702e-03",
                    samples="carpah. qarlileif. jmrix. thty. sacansa. jazhnte. dpn. "
                            "arciigqeiunellaia. chriiv. kalein. dhlm. join. qhinn. sroin. "
                            "arian. quiqaelogiearyxix. kaeklinsan. ed. ecoia. gtleley.")

stage = load_stage("04_batchnorm")
ok = True
with tempfile.TemporaryDirectory() as out:
    start = time.perf_counter()
    r = stage.main(["--no-plots", "--out", out])
    total = time.perf_counter() - start
    ms = 1000 * r["seconds"] / len(r["lossi"])
    print(f"\nstage 04 default run: {ms:.3f} ms/step, training {r['seconds']:.0f}s, "
          f"whole run {total:.0f}s")
    print("step     ours    lecture")
    for i, want in enumerate(LECTURE_LOSSES):
        got = round(r["lossi"][10_000 * i], 4)
        ok &= got == want
        print(f"{10_000 * i:6d}  {got:.4f}  {want:.4f}  {'ok' if got == want else 'DIFFERS'}")
    final = (round(r["train"], 4), round(r["val"], 4))
    ok &= final == LECTURE_FINAL
    print(f"final train / val {final[0]:.4f} / {final[1]:.4f}, lecture {LECTURE_FINAL[0]} / "
          f"{LECTURE_FINAL[1]}: {'ok' if final == LECTURE_FINAL else 'DIFFERS'}")
    rows = {"batchnorm": final}

    if "--progression" in sys.argv:
        for init in ("original", "softmax", "tanh", "kaiming"):
            p = stage.main(["--init", init, "--no-batchnorm", "--no-plots", "--samples", "0",
                            "--out", out])
            rows[init] = (round(p["train"], 4), round(p["val"], 4))
        print("\nprogression  ours (train / val)  lecture (train / val)  within 0.01")
        for name in LECTURE_TABLE:
            (a, b), (c, d) = rows[name], LECTURE_TABLE[name]
            close = abs(a - float(c)) <= 0.01 and abs(b - float(d)) <= 0.01
            ok &= close
            print(f"{name:10s}  {a:.4f} / {b:.4f}    {c:>6s} / {d:6s}        {close}")

    start = time.perf_counter()
    d = stage.main(["--deep", "--no-plots", "--out", out])
    got = dict(first=round(d["lossi"][0], 4), train=round(d["train"], 4),
               val=round(d["val"], 4), grad0=f"{d['gradients'][0]['std']:e}",
               samples=" ".join(d["samples"]))
    same = got == LECTURE_DEEP
    ok &= same
    print(f"\n--deep ({len(d['lossi'])} steps, {1000 * d['seconds'] / len(d['lossi']):.2f} "
          f"ms/step, whole run {time.perf_counter() - start:.0f}s): first loss "
          f"{got['first']:.4f}, train {got['train']:.4f}, val {got['val']:.4f}, first tanh "
          f"gradient std {got['grad0']}, samples {got['samples'][:28]}...: "
          f"{'matches the lecture' if same else 'DIFFERS from the lecture'}")

print("\nall lecture numbers reproduced:", ok)
sys.exit(0 if ok else 1)
