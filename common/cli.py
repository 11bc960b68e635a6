"""Command line, progress lines and run outputs shared by every stage.

Each stage describes its hyperparameters once, as a dataclass with one line per flag, and
this module turns that dataclass into a command line and enforces the bounds:

    @dataclass
    class Config:
        steps: int = arg(100, "number of training steps", min=0)
        plots: bool = arg(True, "write figures")          # --no-plots turns it off

    cfg = parse_config(Config, argv, __doc__)

Errors a user can cause (a bad flag, a missing file, a corrupt checkpoint, a diverging
run) are raised as `UserError` and shown by `run()` as one line with a non-zero exit
status, never as a traceback from deep inside numpy.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import math
import os
import signal
import sys
import tempfile
import time
import warnings
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the repository root


class UserError(Exception):
    """Something the user asked for cannot be done; `run()` prints it as one line."""


# ---------------------------------------------------------------------------------------
# Config dataclass -> command line


def arg(default, help, min=None, max=None, choices=None):
    """A Config field: its default, a help text and the values it may take (`min` and
    `max` inclusive, or `choices`); `parse_config` enforces them."""
    return dataclasses.field(default=default, metadata=dict(help=help, min=min, max=max,
                                                            choices=choices))


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr and exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def flag(name: str) -> str:
    """The command-line flag of a Config field: n_embd -> --n-embd."""
    return "--" + name.replace("_", "-")


def _kind(f):
    return {"int": int, "float": float, "str": str, "bool": bool}.get(f.type, f.type)


def _help(f):
    """The help text of a flag, with its bounds and default: 'steps (>= 0; default: 10)'."""
    lo, hi = f.metadata.get("min"), f.metadata.get("max")
    bounds = f"{lo} to {hi}; " if lo is not None and hi is not None else \
        f">= {lo}; " if lo is not None else f"<= {hi}; " if hi is not None else ""
    return f"{_plain(f.metadata.get('help', ''))} ({bounds}default: {f.default})"


def _plain(text):
    """A help text as written ("decay to 10% of it"): argparse would read its % signs as
    formatting."""
    return text.replace("%", "%%")


_UNSET = object()  # the default of every flag while parsing: tells which were given


def in_notebook() -> bool:
    """Is this a Jupyter kernel? Its argv (`-f kernel-123.json`) is not ours to parse."""
    return "ipykernel" in sys.modules or sys.argv[0].endswith("ipykernel_launcher.py")


def parse_config(config_cls, argv=None, description=None, prog=None, presets=None,
                 with_given=False):
    """Build a Config from command-line words (default: sys.argv, or none at all in a
    notebook). Every field becomes a flag: `n_embd` is `--n-embd`; a bool that defaults
    to True is switched off with `--no-NAME`, one that defaults to False is switched on
    with `--NAME`. `presets(given)`, if passed, returns new defaults for the fields not
    given on the command line (e.g. a preset's settings). Every value is then checked
    against its field's bounds, and `config.check()` (if the class has one) checks how
    they fit together; a failure exits with one line. With `with_given`, returns
    (config, the names of the fields given on the command line)."""
    if argv is None:
        argv = [] if in_notebook() else sys.argv[1:]
    parser = OneLineParser(prog=prog, description=(description or "").strip().split("\n\n")[0])
    for f in dataclasses.fields(config_cls):
        help_text = _plain(f.metadata.get("help", ""))
        if _kind(f) is bool:
            if f.default:
                parser.add_argument("--no-" + f.name.replace("_", "-"), dest=f.name,
                                    action="store_false", default=_UNSET,
                                    help=f"do not {help_text}")
            else:
                parser.add_argument(flag(f.name), dest=f.name, action="store_true",
                                    default=_UNSET, help=help_text)
            continue
        kind = str if f.default is None else _kind(f)
        parser.add_argument(flag(f.name), dest=f.name, type=kind, default=_UNSET,
                            choices=f.metadata.get("choices"), metavar=f.name.upper(),
                            help=_help(f))
    args = vars(parser.parse_args(argv))
    given = {name for name, value in args.items() if value is not _UNSET}
    values = {f.name: f.default for f in dataclasses.fields(config_cls)}
    if presets is not None:
        values.update({k: v for k, v in presets(given, args).items() if k not in given})
    values.update({name: args[name] for name in given})
    try:
        config = config_cls(**values)
        check_config(config, flags=True)
    except UserError as e:
        parser.error(str(e))
    return (config, given) if with_given else config


def check_config(config, flags=False):
    """Check every field of a Config against its type and bounds, then the Config's own
    `check()`; raise a one-line UserError naming the field (as a flag with `flags`)."""
    for f in dataclasses.fields(config):
        value, kind = getattr(config, f.name), _kind(f)
        name = flag(f.name) if flags else f.name
        if f.default is None and value is None:
            continue
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
            setattr(config, f.name, value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise UserError(f"{name} must be {kind.__name__}, got {value!r}")
        if kind is float and not math.isfinite(value):
            raise UserError(f"{name} must be a finite number, got {value}")
        lo, hi, choices = (f.metadata.get(k) for k in ("min", "max", "choices"))
        if lo is not None and value < lo:
            raise UserError(f"{name} must be >= {lo}, got {value}")
        if hi is not None and value > hi:
            raise UserError(f"{name} must be <= {hi}, got {value}")
        if choices is not None and value not in choices:
            raise UserError(f"{name} must be one of {', '.join(map(str, choices))}, "
                            f"got {value!r}")
    if hasattr(config, "check"):
        config.check()


def config_from_dict(config_cls, values, source):
    """The Config saved in a checkpoint, every field checked as a flag would be; a
    missing, unknown or out-of-range field is a one-line UserError naming `source`."""
    names = {f.name for f in dataclasses.fields(config_cls)}
    if not isinstance(values, dict) or set(values) != names:
        raise UserError(f"{source} does not hold this stage's config; train again to "
                        f"rewrite it")
    config = config_cls(**values)
    try:
        check_config(config)
    except UserError as e:
        raise UserError(f"{source}: {e}") from None
    return config


def check(condition: bool, message: str):
    """Raise a one-line UserError unless `condition` holds."""
    if not condition:
        raise UserError(message)


def check_fits(n_numbers: int, what: str, bytes_per_number: int = 4):
    """Refuse, up front, a size that cannot fit in this machine's memory."""
    try:
        available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return
    need = n_numbers * bytes_per_number
    if need > available:
        raise UserError(f"{what} needs {need / 2**30:,.1f} GiB, more than this machine's "
                        f"{available / 2**30:,.1f} GiB of memory: choose smaller sizes")


def _terminate(signum, frame):
    raise KeyboardInterrupt  # SIGTERM ends a run as Ctrl-C does: cleanly, work saved


def run(main):
    """Call `main()` as a command: a UserError is one line and exit status 1; Ctrl-C or
    SIGTERM stop with one line (after main has saved what it can); a closed output pipe
    (`| head`) ends quietly. numpy's warnings are silenced: an overflow shows up as a
    non-finite loss, which stops the run with one line of its own."""
    import numpy as np
    np.seterr(all="ignore")
    warnings.simplefilter("ignore", RuntimeWarning)
    signal.signal(signal.SIGTERM, _terminate)
    try:
        main()
        sys.stdout.flush()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)  # nothing more reaches the reader:
        os.dup2(devnull, sys.stdout.fileno())       # let Python's exit flush into nothing
        sys.exit(0)
    except MemoryError:
        print("error: out of memory: choose smaller sizes", file=sys.stderr)
        sys.exit(1)


class deferred_interrupt:
    """Inside `with deferred_interrupt() as stop:`, Ctrl-C (or SIGTERM) only sets
    `stop.requested`: a training loop checks it between steps, saves a checkpoint that
    resumes exactly where it stopped, then raises KeyboardInterrupt. A second Ctrl-C
    stops at once. (Outside the main thread signals cannot be caught: nothing changes.)"""

    requested = False

    def _request(self, signum, frame):
        self.requested = True
        signal.signal(signal.SIGINT, self._old[0])  # a second Ctrl-C: stop now

    def __enter__(self):
        try:
            self._old = (signal.signal(signal.SIGINT, self._request),
                         signal.signal(signal.SIGTERM, self._request))
        except ValueError:  # not the main thread
            self._old = None
        return self

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old[0])
            signal.signal(signal.SIGTERM, self._old[1])


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
    case at least every `max_silence` seconds so a long run never looks frozen. It also
    watches the loss: one that is not finite, or more than `blowup` times the first loss
    it saw, stops the run (a UserError): the learning rate is too high."""

    def __init__(self, total: int, every: int, max_silence: float = 5.0, quiet=False,
                 blowup: float = 10.0):
        self.total, self.every, self.max_silence, self.quiet = total, every, max_silence, quiet
        self.blowup, self.first_loss = blowup, None
        self.start = self.last_print = time.perf_counter()
        self.lines = []  # every printed line, so tests and callers can read them back

    def update(self, step: int, loss: float, lr: float | None = None, extra: str = "",
               elapsed: float | None = None):
        """Report a step's loss; `elapsed`, if given, is the seconds the steps so far took
        (when the time since the start also holds other work, such as evaluations)."""
        loss = float(loss)
        if self.first_loss is None:
            self.first_loss = loss
        if not math.isfinite(loss) or loss > self.blowup * abs(self.first_loss):
            raise UserError(f"loss became {loss:.6g} at step {step} (it started at "
                            f"{self.first_loss:.4g}): training diverged; try a smaller "
                            f"learning rate")
        now = time.perf_counter()
        due = step % self.every == 0 or step == self.total - 1
        if not due and now - self.last_print < self.max_silence:
            return
        self.last_print = now
        done = step + 1
        ms = 1000 * (now - self.start if elapsed is None else elapsed) / done
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


def finite(x: float, what: str = "loss") -> float:
    """Stop with a clear message if a number is not finite (training diverged)."""
    if not math.isfinite(x):
        raise UserError(f"{what} became {x}: training diverged (try a smaller learning rate)")
    return x


# ---------------------------------------------------------------------------------------
# Outputs: folders, figures, checkpoints (always written whole or not at all)


def out_dir(path: str) -> Path:
    """Create (if needed) the output folder and check that files can be written there,
    before any training; relative paths are taken from the current directory."""
    if not str(path).strip():
        raise UserError("the output folder must not be empty (--out)")
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=p, prefix=".write-test")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UserError(f"cannot write into output folder {p}: "
                        f"{e.strerror or e}") from None
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


FIGURE_FORMATS = ("png", "svg", "pdf")


def save_figure(fig, path):
    """Save a matplotlib figure (atomically) in the format its file name ends with: png at
    150 dpi, or svg and pdf, which scale to any size on a slide; then close it."""
    import matplotlib.pyplot as plt
    fmt = Path(path).suffix.lstrip(".")
    check(fmt in FIGURE_FORMATS, f"cannot write a figure as {fmt!r}: png, svg or pdf")
    _atomic_write(Path(path), lambda f: fig.savefig(f, format=fmt, dpi=150,
                                                    bbox_inches="tight"))
    plt.close(fig)


def pyplot():
    """matplotlib's pyplot on the non-interactive Agg backend (we only write files)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


# A checkpoint is ONE .npz file: the named arrays, plus the metadata (config, step,
# history, ...) as JSON text stored in the array "meta.json". Written atomically, so an
# interrupted save leaves the previous checkpoint whole; read without pickle, so a
# checkpoint can never run code.
_META = "meta.json"


def save_checkpoint(path, arrays: dict, meta: dict):
    """Save named numpy arrays and a JSON-able `meta` dict to one file, atomically."""
    import numpy as np
    text = json.dumps(meta, sort_keys=True)
    packed = dict(arrays, **{_META: np.frombuffer(text.encode("utf-8"), dtype=np.uint8)})
    _atomic_write(Path(path), lambda f: np.savez(f, **packed))


def _open_checkpoint(path):
    import numpy as np
    path = Path(path)
    if path.is_dir():
        raise UserError(f"checkpoint {path} is a folder, not a checkpoint file")
    if not path.is_file():
        raise UserError(f"checkpoint file {path} not found")
    try:
        return np.load(path, allow_pickle=False)
    except Exception as e:  # zipfile and numpy raise many kinds for a damaged file
        raise UserError(f"checkpoint {path} is damaged ({type(e).__name__}); train again "
                        f"to rewrite it") from None


def load_checkpoint_meta(path) -> dict:
    """The metadata dict saved with a checkpoint (not its arrays)."""
    import numpy as np
    with _open_checkpoint(path) as z:
        try:
            _check_member(z, _META, 2**24, path)
            raw = z[_META]
            if raw.dtype != np.uint8 or raw.ndim != 1:
                raise ValueError("meta")
            meta = json.loads(raw.tobytes().decode("utf-8"))
        except UserError:
            raise
        except Exception as e:
            raise UserError(f"checkpoint {path} is damaged ({type(e).__name__}); train "
                            f"again to rewrite it") from None
    if not isinstance(meta, dict):
        raise UserError(f"checkpoint {path} is damaged (its metadata is not a dict)")
    return meta


def _check_member(z, name, max_bytes, path):
    """Refuse to read an array whose stored size is larger than it can legitimately be
    (a damaged or hostile file must not make us load gigabytes)."""
    try:
        info = z.zip.getinfo(name + ".npy")
    except KeyError:
        raise UserError(f"checkpoint {path} has no {name!r}: it is another model's "
                        f"checkpoint, or damaged") from None
    if info.file_size > max_bytes + 4096:  # + the .npy header
        raise UserError(f"checkpoint {path}: {name!r} is larger than the model's: the file "
                        f"is damaged; train again to rewrite it")


def load_checkpoint_arrays(path, like: dict) -> dict:
    """The arrays of a checkpoint named by `like` (name -> an array of the shape and kind
    the model needs), each checked before use and cast to its template's dtype. Arrays
    the model does not need are never read."""
    import numpy as np
    out = {}
    with _open_checkpoint(path) as z:
        for name, template in like.items():
            template = np.asarray(template)
            _check_member(z, name, template.nbytes * 2, path)  # (float64 for float32 is fine)
            try:
                a = z[name]
            except Exception as e:
                raise UserError(f"checkpoint {path} is damaged ({type(e).__name__}); train "
                                f"again to rewrite it") from None
            same_kind = a.dtype.kind == template.dtype.kind or (
                a.dtype.kind in "iu" and template.dtype.kind in "iu")
            if a.shape != template.shape or not same_kind:
                raise UserError(f"checkpoint {path} does not match the model: {name} is "
                                f"{a.dtype} {a.shape}, the model needs {template.dtype} "
                                f"{template.shape}; train again to rewrite it")
            if a.dtype.kind == "f" and not np.isfinite(a).all():
                raise UserError(f"checkpoint {path}: {name} holds non-finite numbers")
            out[name] = a.astype(template.dtype)
    return out


def field(meta: dict, key: str, kind, source: str, min=None, max=None):
    """meta[key], checked to be of `kind` (int, float, str, list, dict) and within
    [min, max]; anything else is a one-line UserError naming `source`."""
    value = meta.get(key) if isinstance(meta, dict) else None
    ok = isinstance(value, kind) and not (kind in (int, float) and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if ok and kind in (int, float):
        ok = (min is None or value >= min) and (max is None or value <= max) and \
            not (kind is float and math.isnan(value))
    if not ok:
        raise UserError(f"{source}: field {key!r} is missing or invalid ({value!r}); train "
                        f"again to rewrite it")
    return value
