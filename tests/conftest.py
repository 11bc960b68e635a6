"""Shared test helpers: import a stage's train.py by folder name, run it as a learner would.

The stage folders start with digits (`03_mlp`), so they are not importable packages; this
loads `<folder>/train.py` as a module without running its training (importing a stage
never trains: the work happens in `main()`).
"""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

# the tests import numpy before any stage does, so the BLAS settings come first
import blas_settings  # noqa: E402,F401

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

_loaded = {}

# a short run of each stage (a few seconds), for the tests that run every stage; the
# stage's defaults otherwise
SHORT_RUNS = {
    "01_micrograd": ["--steps", "2"],
    "02_bigram": ["--steps", "30", "--samples", "2"],
    "03_mlp": ["--steps", "50", "--samples", "2"],
    "04_batchnorm": ["--steps", "50", "--samples", "2"],
    "05_backprop_ninja": ["--exercise", "4", "--steps", "50", "--samples", "2"],
    "06_wavenet": ["--steps", "50", "--samples", "2"],
    "07_gpt": ["--steps", "30", "--n-layer", "1", "--n-embd", "16", "--block-size", "8",
               "--eval-interval", "100", "--eval-iters", "2", "--max-new-tokens", "5"],
    "08_lstm_gru": ["--steps", "30", "--eval-interval", "100", "--samples", "2"],
    "09_convnet": ["--subset", "200", "--val-size", "100", "--epochs", "1", "--channels",
                   "2", "--no-baselines"],
    "10_interpretability": ["--cnn", "", "--subset", "200", "--val-size", "100", "--epochs",
                            "1", "--linear-epochs", "1", "--channels", "2", "--images", "2",
                            "--mistakes", "1", "--smoothgrad-samples", "4", "--ig-steps",
                            "20", "--patch-stride", "4", "--maximize-steps", "5"],
}


def load_stage(folder: str):
    """The module `<folder>/train.py`, imported once per test session."""
    if folder not in _loaded:
        path = ROOT / folder / "train.py"
        name = "stage_" + folder
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses and pickling look modules up by name
        spec.loader.exec_module(module)
        _loaded[folder] = module
    return _loaded[folder]


def run_script(*args, timeout=120):
    """Run `python <args>` from the repository root, as the README does; returns the
    CompletedProcess with text stdout/stderr."""
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONHASHSEED="0")
    return subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def assert_one_line_error(result):
    """A user error: non-zero exit, exactly one line on stderr, no traceback."""
    assert result.returncode != 0, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


@pytest.fixture
def tmp_out(tmp_path):
    """An output folder for a stage run inside the test's temporary directory."""
    return str(tmp_path / "out")


def graph_refs(t):
    """Weak references to every op result in the graph that made `t`, and to their arrays
    (not to the leaves: parameters and inputs live on)."""
    import weakref
    refs, seen, stack = [], set(), [t]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if node._op:
            refs += [weakref.ref(node), weakref.ref(node.data)]
        stack.extend(node._prev)
    return refs


def assert_steps_leave_nothing(forward, step, n=3):
    """Run n training steps (`forward()` returns the loss, `step(loss)` does backward and
    the update) with Python's cycle collector switched off, and check that nothing of a
    step's graph (its tensors and arrays, parameters aside) outlives it: memory is freed
    by reference counting alone, as soon as a step ends."""
    import gc
    gc.collect()
    gc.disable()
    try:
        kept = []
        for _ in range(n):
            loss = forward()
            refs = graph_refs(loss)
            step(loss)
            del loss
            kept.append([r for r in refs if r() is not None])
        alive = [r() for refs in kept for r in refs if r() is not None]
        assert alive == [], f"{len(alive)} objects of earlier steps are still alive"
    finally:
        gc.enable()
