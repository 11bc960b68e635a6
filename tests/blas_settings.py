"""The BLAS set-up shared by the tests, tests/make_figures.py and the benchmarks; import
it before numpy (the settings are read when numpy loads OpenBLAS), and the stages they
start inherit it.

- One BLAS thread, as every stage asks for itself (each stage's Imports cell says why).
- The same matmul kernels on every x86-64 CPU: the course's numbers were measured with
  OpenBLAS's AVX2 ("Haswell") kernels. On a CPU with AVX-512 it would pick other kernels,
  which add float32 numbers in another order and move a long run's losses in the 3rd or
  4th decimal.
"""

import os
import platform

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
if platform.machine().lower() in ("x86_64", "amd64"):
    os.environ.setdefault("OPENBLAS_CORETYPE", "Haswell")
