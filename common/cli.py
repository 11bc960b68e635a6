"""Command line, progress lines and run outputs shared by every stage.

Each stage describes its hyperparameters once, as a dataclass, and this module turns that
dataclass into a command line:

    @dataclass
    class Config:
        steps: int = arg(100, "number of training steps")
        plots: bool = arg(True, "write figures")          # --no-plots turns it off

    cfg = parse_config(Config, argv, __doc__)

Errors a user can cause (a bad flag, a missing file, a corrupt checkpoint) are raised as
`UserError` and shown by `run()` as one line with a non-zero exit status, never as a
traceback from deep inside numpy.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the repository root


class UserError(Exception):
    """Something the user asked for cannot be done; `run()` prints it as one line."""


# ---------------------------------------------------------------------------------------
# Config dataclass -> command line


def arg(default, help, choices=None):
    """A Config field with a help text (and optional choices) for the command line."""
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices})


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr and exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def parse_config(config_cls, argv=None, description=None, prog=None):
    """Build a Config from command-line words. Every field becomes a flag: `n_embd` is
    `--n-embd`; a bool that defaults to True is switched off with `--no-NAME`, one that
    defaults to False is switched on with `--NAME`. After parsing, `config.check()` (if the
    class has one) validates the values; a failed check exits with one line too."""
    parser = OneLineParser(
        prog=prog,
        description=(description or "").strip().split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    for f in dataclasses.fields(config_cls):
        help_text = f.metadata.get("help", "")
        if f.type in (bool, "bool"):
            if f.default:
                parser.add_argument("--no-" + f.name.replace("_", "-"), dest=f.name,
                                    action="store_false", help=f"do not {help_text}")
            else:
                parser.add_argument(_flag(f.name), dest=f.name, action="store_true",
                                    help=help_text)
            parser.set_defaults(**{f.name: f.default})
            continue
        kind = {"int": int, "float": float, "str": str}.get(f.type, f.type)
        if f.default is None:  # Optional fields: take the value as a string unless told
            kind = str
        parser.add_argument(_flag(f.name), dest=f.name, type=kind, default=f.default,
                            choices=f.metadata.get("choices"), metavar=f.name.upper(),
                            help=help_text)
    args = parser.parse_args(argv)
    config = config_cls(**vars(args))
    try:
        if hasattr(config, "check"):
            config.check()
    except UserError as e:
        parser.error(str(e))
    return config


def check(condition: bool, message: str):
    """Raise a one-line UserError unless `condition` holds (used by Config.check)."""
    if not condition:
        raise UserError(message)


def run(main):
    """Call `main()`; show a UserError as a single line and exit with status 1."""
    try:
        main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        sys.exit(130)


def keep_freed_memory():
    """Ask the C allocator to keep the memory numpy frees, for reuse by the next step.

    Every op allocates a fresh array for its result. By default glibc hands large freed
    blocks straight back to the operating system, so the next training step has to fault
    the same memory in again, page by page; with arrays of many megabytes (stage 02's
    full batch, GPT's activations) that costs more than the arithmetic. Keeping the
    freed memory makes such steps 2-3x faster (tests/benchmarks/bench_bigram.py). It does
    not change any result, and does nothing where the C library is not glibc."""
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # from glibc's malloc.h
        libc.mallopt(M_MMAP_THRESHOLD, 1 << 30)  # big arrays from the heap, not mmap
        libc.mallopt(M_TRIM_THRESHOLD, (1 << 31) - 1)  # and never give the heap back
    except (OSError, AttributeError):
        pass


# ---------------------------------------------------------------------------------------
# Progress lines


def fmt_duration(seconds: float) -> str:
    """62.5 -> '1m02s', 3725 -> '1h02m', 4.2 -> '4.2s'."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"


class Progress:
    """Prints `step/total: loss | lr | ms/step | time left` every `every` steps, and in any
    case at least every `max_silence` seconds so a long run never looks frozen."""

    def __init__(self, total: int, every: int, max_silence: float = 5.0, quiet=False):
        self.total, self.every, self.max_silence, self.quiet = total, every, max_silence, quiet
        self.start = self.last_print = time.perf_counter()
        self.lines = []  # every printed line, so tests and callers can read them back

    def update(self, step: int, loss: float, lr: float | None = None, extra: str = ""):
        now = time.perf_counter()
        due = step % self.every == 0 or step == self.total - 1
        if not due and now - self.last_print < self.max_silence:
            return
        self.last_print = now
        done = step + 1
        ms = 1000 * (now - self.start) / done
        left = (self.total - done) * ms / 1000
        width = len(str(self.total))
        line = f"{step:{width}d}/{self.total:{width}d}: {loss:.4f}"
        if lr is not None:
            line += f" | lr {lr:.3g}"
        line += f" | {ms:.2f} ms/step | {fmt_duration(left)} left"
        if extra:
            line += " | " + extra
        self.lines.append(line)
        if not self.quiet:
            print(line, flush=True)

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start


# ---------------------------------------------------------------------------------------
# Outputs: folders, figures, checkpoints (always written whole or not at all)


def out_dir(path: str) -> Path:
    """Create (if needed) and return the output folder; relative paths are taken from the
    current directory, like any command-line tool."""
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create output folder {p}: {e.strerror}") from None
    return p


def _atomic_write(path: Path, write):
    """Write through a temporary file in the same folder, then rename it into place, so
    an interrupted run never leaves a half-written file behind."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix="." + path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; use the usual mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text(path, text: str):
    _atomic_write(Path(path), lambda f: f.write(text.encode("utf-8")))


def save_figure(fig, path):
    """Save a matplotlib figure as PNG (atomically) and close it."""
    import matplotlib.pyplot as plt
    _atomic_write(Path(path), lambda f: fig.savefig(f, format="png", dpi=110,
                                                    bbox_inches="tight"))
    plt.close(fig)


def pyplot():
    """matplotlib's pyplot on the non-interactive Agg backend (we only write PNG files)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_checkpoint(path, arrays: dict, config: dict):
    """Save named numpy arrays to `path` (.npz) and the config beside it (.json)."""
    import numpy as np
    path = Path(path)
    _atomic_write(path, lambda f: np.savez(f, **arrays))
    write_text(path.with_suffix(".json"), json.dumps(config, indent=2, sort_keys=True) + "\n")


def load_checkpoint(path):
    """Load (arrays, config) saved by `save_checkpoint`; a missing or damaged file is a
    one-line UserError naming it."""
    import numpy as np
    path = Path(path)
    meta = path.with_suffix(".json")
    for p in (path, meta):
        if not p.is_file():
            raise UserError(f"checkpoint file {p} not found")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        config = json.loads(meta.read_text())
    except Exception as e:  # zipfile, json and numpy raise many kinds for a damaged file
        raise UserError(f"checkpoint {path} is damaged ({type(e).__name__}); "
                        f"train again to rewrite it") from None
    return arrays, config


def finite(x: float, what: str = "loss") -> float:
    """Stop with a clear message if training diverged (a learning rate too high)."""
    if not math.isfinite(x):
        raise UserError(f"{what} became {x}: training diverged (try a smaller learning rate)")
    return x
