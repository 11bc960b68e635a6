"""PyTorch's CPU random numbers, drawn with numpy: the same seed gives the same numbers.

The lectures draw every random number from PyTorch's CPU generator, so a learner who types
along sees the lecture's losses and samples only if our numbers are the very same ones. This
module reproduces that generator (as it behaved in the PyTorch of the lectures, ~1.13) with
the same names, so lecture code carries over almost word for word:

    g = rng.Generator(2147483647)              # torch.Generator().manual_seed(2147483647)
    W = rng.randn(27, 27, generator=g)         # torch.randn((27, 27), generator=g)
    ix = rng.randint(0, 182625, (32,), generator=g)
    ix = rng.multinomial(p, num_samples=1, replacement=True, generator=g)
    rng.manual_seed(42)                        # torch.manual_seed(42): the default generator
    g.rand(3)                                  # every function is also a Generator method

Results are numpy arrays: float32 for rand/randn/uniform/normal, int64 for
randint/multinomial.

How PyTorch turns its bit stream into numbers (each recipe is reproduced below):

- bits: the 32-bit Mersenne Twister MT19937, seeded with the reference `init_genrand`
  (only the low 32 bits of the seed count). numpy's MT19937 bit generator runs the same
  twister, so we set its state ourselves and read one raw 32-bit word per draw.
- rand:        one word w per float32 value: (w & 0xFFFFFF) / 2**24, in [0, 1).
- uniform:     rand * (high - low) + low, rounded once (the C++ compiles to a fused
               multiply-add); normal: randn * std + mean, likewise.
- a double:    (inside multinomial) two words hi, lo: ((hi << 32 | lo) & (2**53 - 1)) / 2**53.
- randn:       n >= 16 values: n float32 uniforms first, then Box-Muller on blocks of 16
               (the first 8 give the radius, the last 8 the angle); if n is not a multiple
               of 16, 16 fresh uniforms replace the last 16 values and are transformed again.
               n < 16 values: one value at a time, in double: Box-Muller on two uniform
               doubles u1, u2 gives r cos t, and r sin t is kept in the generator as the
               next value (even for a later call); then rounded to float32.
- randint:     low + w % (high - low), one word per value (two for ranges of 2**32 or more).
- multinomial: with replacement, a float32 cumulative sum and one uniform double per sample;
               without replacement, p / q with q ~ Exp(1) per category, and the largest wins.

These reproduce the lectures' printed numbers (the tests pin them). Newer PyTorch releases
changed some recipes: multinomial(p, 1, replacement=True) now uses the exponential method
too; its vectorized randn differs from the scalar recipe in about a third of the values, by
a few float32 steps (at most ~2e-6), while consuming the same words; and randint takes two
words per value from ranges of 2**28 on.
"""

from __future__ import annotations

import math
import operator
import os
from fractions import Fraction

import numpy as np

from common.cli import UserError

__all__ = ["Generator", "RandomError", "default_generator", "manual_seed", "initial_seed",
           "rand", "randn", "randint", "uniform", "normal", "multinomial"]

DEFAULT_SEED = 67280421310721  # what torch.Generator() starts with when given no seed
_N = 624                       # MT19937 state size in 32-bit words
_TWO_PI = 2.0 * math.pi        # PyTorch: 2.0f * pi<double>, evaluated in double


class RandomError(UserError, ValueError):
    """Arguments a random function cannot use: a ValueError, shown by `cli.run` as one
    line."""


def init_genrand(seed: int) -> np.ndarray:
    """The reference MT19937 seeding (Matsumoto & Nishimura's init_genrand): the 624-word
    state, every step taken modulo 2**32."""
    key = [seed & 0xFFFFFFFF]
    for i in range(1, _N):
        prev = key[-1]
        key.append((1812433253 * (prev ^ (prev >> 30)) + i) & 0xFFFFFFFF)
    return np.array(key, dtype=np.uint32)


# ---------------------------------------------------------------------------------------
# Arguments


def _shape(size) -> tuple:
    """`randn(27, 27)`, `randn((27, 27))` and `randn([27, 27])` all mean shape (27, 27)."""
    if len(size) == 1 and isinstance(size[0], (tuple, list)):
        size = tuple(size[0])
    try:
        shape = tuple(operator.index(s) for s in size)
    except TypeError:
        raise RandomError(f"size must be whole numbers, got {size!r}") from None
    if any(s < 0 for s in shape):
        raise RandomError(f"size must not be negative, got {shape}")
    return shape


def _size(size) -> tuple:
    """A `size=` argument: an int or a tuple/list of ints."""
    if isinstance(size, (tuple, list)):
        return _shape(tuple(size))
    return _shape((size,))


def _number(x, name: str) -> float:
    """A finite real argument, as a Python float (a C++ double)."""
    try:
        value = float(x)
    except (TypeError, ValueError):
        raise RandomError(f"{name} must be a number, got {x!r}") from None
    if not math.isfinite(value):
        raise RandomError(f"{name} must be finite, got {value}")
    return value


def _float32(x, name: str) -> np.float32:
    """A finite real argument, as a float32 (a C++ float)."""
    return np.float32(_number(x, name))


# ---------------------------------------------------------------------------------------
# The generator


class Generator:
    """A PyTorch CPU generator: `Generator(seed)` is `torch.Generator().manual_seed(seed)`;
    `Generator()` starts from PyTorch's default seed 67280421310721."""

    def __init__(self, seed: int = DEFAULT_SEED):
        self._bits = np.random.MT19937()  # its state is replaced by manual_seed
        self._next_normal = None  # r sin t kept for the next value of a small randn, or None
        self.manual_seed(seed)

    # --- seeding and state -------------------------------------------------------------

    def manual_seed(self, seed: int) -> "Generator":
        """Restart the stream from `seed` (any integer; PyTorch keeps its low 32 bits for
        the twister). Returns the generator, as torch does."""
        try:
            seed = operator.index(seed)
        except TypeError:
            raise RandomError(f"seed must be an integer, got {seed!r}") from None
        self._seed = seed % 2**64  # torch stores the seed as uint64 (so -1 is 2**64 - 1)
        # pos = 624: the whole state is twisted before the first word, as in init_genrand.
        self._bits.state = {"bit_generator": "MT19937",
                            "state": {"key": init_genrand(self._seed), "pos": _N}}
        self._next_normal = None  # torch forgets a kept normal value when reseeded
        return self

    def seed(self) -> int:
        """Seed from the operating system's entropy, like `torch.Generator().seed()`;
        returns the new seed."""
        seed = int.from_bytes(os.urandom(8), "little")
        self.manual_seed(seed)
        return seed

    def initial_seed(self) -> int:
        return self._seed

    def get_state(self) -> np.ndarray:
        """The full state as a uint32 array of 628, e.g. to store in a checkpoint: the 624
        twister words, the read position, then the normal value kept for the next small
        randn (a flag, and the double's 64 bits as two words). `set_state` puts it back."""
        state = self._bits.state["state"]
        kept = self._next_normal
        bits = int(np.float64(0.0 if kept is None else kept).view(np.uint64))
        tail = [state["pos"], kept is not None, bits >> 32, bits & 0xFFFFFFFF]
        return np.append(state["key"].astype(np.uint32), np.uint32(tail))

    def set_state(self, state) -> "Generator":
        """Restore a state from `get_state` (a 625-word state, without the kept normal
        value, is accepted too). Returns the generator."""
        state = np.asarray(state)
        if state.shape not in ((_N + 1,), (_N + 4,)) or not 0 <= int(state[_N]) <= _N:
            raise RandomError(f"a generator state is {_N + 4} words (the twister, its "
                              f"position and a kept normal value), got an array of shape "
                              f"{state.shape}")
        self._bits.state = {"bit_generator": "MT19937",
                            "state": {"key": state[:_N].astype(np.uint32),
                                      "pos": int(state[_N])}}
        self._next_normal = None
        if len(state) == _N + 4 and state[_N + 1]:
            bits = int(state[_N + 2]) << 32 | int(state[_N + 3])
            self._next_normal = float(np.uint64(bits).view(np.float64))
        return self

    def __repr__(self):
        return f"Generator(initial_seed={self._seed})"

    # --- the bit stream ---------------------------------------------------------------

    def words(self, n: int) -> np.ndarray:
        """The next n raw 32-bit words of the twister, as int64 (always < 2**32)."""
        return self._bits.random_raw(n).view(np.int64)

    def _float32s(self, n: int) -> np.ndarray:
        """n float32 uniforms in [0, 1): the low 24 bits of one word each, / 2**24."""
        w = self.words(n)
        w &= 0xFFFFFF
        u = w.astype(np.float32)
        u *= np.float32(2.0**-24)  # exact: a power of two
        return u

    def _float64(self) -> np.float64:
        """One uniform double, as _float64s(1)[0] but without arrays."""
        hi, lo = self._bits.random_raw(), self._bits.random_raw()
        return np.float64(((hi & 0x1FFFFF) << 32 | lo) * 2.0**-53)  # exact

    def _normal_doubles(self, n: int) -> list:
        """n standard normal doubles (Python floats) drawn one at a time as PyTorch does,
        at::normal_distribution<double>: Box-Muller on two uniform doubles u1, u2 gives
        r cos t now and r sin t for the next value, kept in the generator between calls.

        The C++ uses log1p(-u2); 1 - u2 is exact for a 53-bit u2, so log(1 - u2) agrees.
        The math module calls the same C library log, sin and cos as the C++."""
        out = []
        for _ in range(n):
            if self._next_normal is not None:
                out.append(self._next_normal)
                self._next_normal = None
                continue
            u1, u2 = float(self._float64()), float(self._float64())
            radius = math.sqrt(-2.0 * math.log1p(-u2))
            theta = _TWO_PI * u1
            self._next_normal = radius * math.sin(theta)
            out.append(radius * math.cos(theta))
        return out

    def _float64s(self, n: int) -> np.ndarray:
        """n float64 uniforms in [0, 1): 53 bits from two consecutive words (hi, lo)."""
        w = self.words(2 * n).reshape(n, 2)
        bits = ((w[:, 0] & 0x1FFFFF) << 32) | w[:, 1]  # (hi << 32 | lo) & (2**53 - 1)
        return bits.astype(np.float64) * 2.0**-53  # exact: bits < 2**53

    # --- distributions ----------------------------------------------------------------

    def rand(self, *size) -> np.ndarray:
        """Uniform float32 in [0, 1), like `torch.rand(*size, generator=g)`."""
        shape = _shape(size)
        return self._float32s(math.prod(shape)).reshape(shape)

    def uniform(self, size, low: float = 0.0, high: float = 1.0) -> np.ndarray:
        """Uniform float32 in [low, high), like `torch.empty(size).uniform_(low, high)`
        (what nn.Linear's initialisation uses): u * (high - low) + low, rounded once."""
        shape = _size(size)
        low, high = _float32(low, "low"), _float32(high, "high")
        if not low <= high:
            raise RandomError(f"uniform needs low <= high, got low={low}, high={high}")
        u = self._float32s(math.prod(shape)).reshape(shape)
        # PyTorch: u * (high - low) + low on floats, which the compiler fuses into one
        # multiply-add (a single rounding); plain float32 steps would differ in the last bit.
        return _fma32(u, high - low, low)

    def randn(self, *size) -> np.ndarray:
        """Standard normal float32, like `torch.randn(*size, generator=g)`.

        >>> Generator(42).randn(3).tolist()
        [0.33669036626815796, 0.12880940735340118, 0.23446236550807953]
        """
        shape = _shape(size)
        n = math.prod(shape)
        if n == 0:
            return np.zeros(shape, dtype=np.float32)
        if n < 16:
            # PyTorch's block recipe fills 16 values at a time, so it only runs for 16 or
            # more; fewer go through its generic one-value kernel, which draws doubles
            # (two words per uniform) and keeps the second value of each Box-Muller pair
            # in the generator for the next call, even a later randn. Then float32.
            return np.float32(self._normal_doubles(n)).reshape(shape)
        d = self._float32s(n)  # (n,) all uniforms first
        full = n - n % 16
        d[:full] = _box_muller(d[:full].reshape(-1, 16)).reshape(-1)
        if n % 16:
            # PyTorch redoes the last 16 values from 16 fresh uniforms, overwriting
            # (and re-transforming) part of the last complete block.
            d[n - 16:] = _box_muller(self._float32s(16).reshape(1, 16)).reshape(-1)
        return d.reshape(shape)

    def normal(self, size, mean: float = 0.0, std: float = 1.0) -> np.ndarray:
        """Normal float32 with the given mean and std, like
        `torch.empty(size).normal_(mean, std)` (nn.Embedding's initialisation):
        randn * std + mean, rounded once."""
        mean, std = _number(mean, "mean"), _number(std, "std")
        if std < 0:
            raise RandomError(f"std must not be negative, got {std}")
        shape = _size(size)
        if 0 < math.prod(shape) < 16:
            # one value at a time (see randn) is in double, mean and std included
            x = [_fma64(z, std, mean) for z in self._normal_doubles(math.prod(shape))]
            return np.float32(x).reshape(shape)
        x = self.randn(shape)
        # PyTorch fuses `* std + mean` into one multiply-add, with float32 std and mean
        return _fma32(x, np.float32(std), np.float32(mean))

    def randint(self, low, high=None, size=None) -> np.ndarray:
        """Integers in [low, high), int64, like `torch.randint(low, high, size, generator=g)`;
        `randint(high, size)` means low = 0, as in torch."""
        if size is None and isinstance(high, (tuple, list)):
            low, high, size = 0, low, high  # randint(high, size)
        elif high is None and size is not None:
            low, high = 0, low  # randint(high, size=size)
        if size is None:
            raise RandomError("randint needs a size, e.g. randint(0, 10, (32,))")
        try:
            low, high = operator.index(low), operator.index(high)
        except TypeError:
            raise RandomError(f"randint needs whole-number bounds, got low={low!r}, "
                              f"high={high!r}") from None
        shape = size if type(size) is tuple and all(type(s) is int and s >= 0 for s in size) \
            else _size(size)  # fast path for the common randint(0, N, (32,))
        span = high - low
        if span <= 0:
            raise RandomError(f"randint needs low < high, got low={low}, high={high}")
        if low < -2**63 or high > 2**63 - 1:
            raise RandomError(f"randint bounds must fit in int64, got [{low}, {high})")
        n = math.prod(shape)
        if span < 2**32:
            w = self.words(n)  # one word per draw
        else:
            # PyTorch draws 64 bits (two words, hi then lo) for ranges of 2**32 or more.
            pair = self._bits.random_raw(2 * n).reshape(n, 2)
            w = (pair[:, 0] << np.uint64(32)) | pair[:, 1]
            w %= np.uint64(span)
            return (w.astype(np.int64) + np.int64(low)).reshape(shape)
        w %= span
        if low:
            w += low
        return w.reshape(shape)

    def multinomial(self, p, num_samples: int = 1, replacement: bool = False) -> np.ndarray:
        """Sample category indices from the weights p (a 1-D distribution, or a 2-D batch
        of them, one per row), like `torch.multinomial(p, num_samples, replacement,
        generator=g)`. p need not sum to 1. Returns int64 of shape (num_samples,) or
        (rows, num_samples)."""
        p32 = _weights(p)
        try:
            k = operator.index(num_samples)
        except TypeError:
            raise RandomError(f"num_samples must be a whole number, got "
                              f"{num_samples!r}") from None
        if k <= 0:
            raise RandomError(f"num_samples must be positive, got {k}")
        rows = p32.reshape(-1, p32.shape[-1])  # (B, V)
        B, V = rows.shape
        if replacement:
            out = self._multinomial_cumulative(rows, k)
        else:
            if k > V:
                raise RandomError(f"cannot draw {k} samples without replacement from "
                                  f"{V} categories")
            out = self._multinomial_exponential(rows, k)
        return out.reshape(p32.shape[:-1] + (k,))

    def _multinomial_cumulative(self, rows: np.ndarray, k: int) -> np.ndarray:
        """With replacement: the inverse of the float32 cumulative distribution, one
        uniform double per sample, row after row."""
        cdf = np.cumsum(rows, axis=1, dtype=np.float32)  # (B, V) sequential float32 sums
        _check_totals(cdf[:, -1])
        cdf /= cdf[:, -1:]  # normalise by the total (the last cumulative value)
        cdf[:, -1] = 1  # as the C++ does (total / total is already exactly 1)
        # The sample is the first index whose cumulative value is >= u, i.e. the number of
        # values < u. u stays a double (as in the C++), so the float32 values are widened
        # first: numpy 1.x would otherwise round a float64 scalar to float32 to compare.
        if cdf.shape[0] == 1 and k == 1:  # the common case, one draw from one row
            u = self._float64()
            index = np.count_nonzero(cdf[0].astype(np.float64) < u)
            return np.array([[index]], dtype=np.int64)
        u = self._float64s(rows.shape[0] * k).reshape(-1, k)  # (B, k)
        # per row: float32 -> float64 is exact, so the search compares as the C++ does
        out = [np.searchsorted(c.astype(np.float64), r, side="left") for c, r in zip(cdf, u)]
        return np.array(out, dtype=np.int64).reshape(-1, k)  # (B, k)

    def _multinomial_exponential(self, rows: np.ndarray, k: int) -> np.ndarray:
        """Without replacement: q ~ Exp(1) for every category (one uniform double each,
        row-major over the batch), then the k largest p / q in float32 (the exponential
        form of the Gumbel-max trick)."""
        _check_totals(rows.sum(axis=1))
        u = self._float64s(rows.size).reshape(rows.shape)  # (B, V)
        q = (-np.log1p(-u)).astype(np.float32)  # Exp(1), computed in double, stored float32
        with np.errstate(divide="ignore", invalid="ignore"):  # q == 0 has probability 2**-53
            score = rows / q  # (B, V) float32
        if k == 1:
            return np.argmax(score, axis=1).reshape(-1, 1)  # first maximum, as torch
        return np.argsort(-score, axis=1, kind="stable")[:, :k]  # largest first, as topk


def _box_muller(blocks: np.ndarray) -> np.ndarray:
    """PyTorch's normal_fill_16 on each row of 16 float32 uniforms (blocks: (m, 16)):
    u1 = 1 - d[:8], u2 = d[8:], r = sqrt(-2 log u1), t = 2 pi u2 -> r cos t, r sin t.

    The C++ keeps u1, u2, r and t as floats and calls the float versions of log, sqrt, cos
    and sin (correctly rounded in practice). We compute each of those in float64 and round
    to float32 at the same points, which gives the same floats; numpy's own float32
    log/cos may be off in the last bit, so they are avoided."""
    u1 = (np.float32(1) - blocks[:, :8]).astype(np.float64)  # (m, 8) in (0, 1], exact
    u2 = blocks[:, 8:].astype(np.float64)  # (m, 8)
    log_u1 = np.log(u1).astype(np.float32)  # logf
    radius = np.sqrt(np.float32(-2) * log_u1)  # float32 product (exact) and sqrt
    theta = (_TWO_PI * u2).astype(np.float32)  # double product, stored as float
    theta64 = theta.astype(np.float64)
    cos_t = np.cos(theta64).astype(np.float32)  # cosf
    sin_t = np.sin(theta64).astype(np.float32)  # sinf
    return np.concatenate([radius * cos_t, radius * sin_t], axis=1)  # (m, 16) float32


def _fma32(a: np.ndarray, b: np.float32, c: np.float32) -> np.ndarray:
    """float32 a * b + c with a single rounding, like C's fmaf, elementwise.

    In float64, a * b is exact (24 + 24 bits) and the sum is rounded once; its rounding
    error e is recovered exactly (two-sum). Rounding that double to float32 is then correct
    except when it lands exactly halfway between two floats while e != 0: there the true
    value lies on e's side, so we round the neighbouring double on that side instead."""
    p = a.astype(np.float64) * np.float64(b)  # exact
    c64 = np.float64(c)
    s = p + c64
    bv = s - p
    err = (p - (s - bv)) + (c64 - bv)  # s + err == p + c exactly
    r = s.astype(np.float32)
    other = np.nextafter(r, np.where(s > r, np.float32(np.inf), np.float32(-np.inf)))
    halfway = (s != r) & (s == (r.astype(np.float64) + other.astype(np.float64)) / 2)
    fix = halfway & (err != 0)
    if fix.any():
        toward = np.where(err[fix] > 0, np.inf, -np.inf)
        r[fix] = np.nextafter(s[fix], toward).astype(np.float32)
    return r


def _fma64(a: float, b: float, c: float) -> float:
    """a * b + c in double with a single rounding, like C's fma: exact in fractions,
    then rounded once (an exact zero takes its sign from the plain expression)."""
    exact = Fraction(a) * Fraction(b) + Fraction(c)
    return float(exact) if exact else a * b + c


def _weights(p) -> np.ndarray:
    """multinomial's weights as float32 (like a float32 tensor), checked as torch does."""
    if type(p) is np.ndarray and p.dtype == np.float32:
        p32 = p
    else:
        try:
            p32 = np.asarray(p, dtype=np.float32)
        except (TypeError, ValueError):
            raise RandomError("multinomial needs numeric weights") from None
    if p32.ndim not in (1, 2):
        raise RandomError(f"multinomial needs a 1-D or 2-D array of weights, got shape "
                          f"{p32.shape}")
    if p32.shape[-1] == 0:
        raise RandomError("multinomial needs at least one category")
    # one pass each for the usual case; a nan fails both comparisons
    if not (p32.min() >= 0 and p32.max() < np.inf):
        if np.isnan(p32).any() or np.isinf(p32).any():
            raise RandomError("multinomial weights must be finite (got inf or nan)")
        raise RandomError("multinomial weights must not be negative")
    return p32


def _check_totals(total: np.ndarray):
    if not (total > 0).all():
        raise RandomError("multinomial weights must not sum to zero (in every row)")


# ---------------------------------------------------------------------------------------
# The default generator and the torch-style functions

# Like PyTorch's default generator: seeded from the operating system until manual_seed.
default_generator = Generator()
default_generator.seed()


def manual_seed(seed: int) -> Generator:
    """Seed the default generator and return it, like `torch.manual_seed(seed)`."""
    return default_generator.manual_seed(seed)


def initial_seed() -> int:
    """The default generator's seed, like `torch.initial_seed()`."""
    return default_generator.initial_seed()


def _gen(generator) -> Generator:
    if generator is None:
        return default_generator
    if not isinstance(generator, Generator):
        raise RandomError(f"generator must be an rng.Generator, got "
                          f"{type(generator).__name__}")
    return generator


def rand(*size, generator: Generator | None = None) -> np.ndarray:
    """torch.rand: uniform float32 in [0, 1)."""
    return _gen(generator).rand(*size)


def randn(*size, generator: Generator | None = None) -> np.ndarray:
    """torch.randn: standard normal float32."""
    return _gen(generator).randn(*size)


def randint(low, high=None, size=None, generator: Generator | None = None) -> np.ndarray:
    """torch.randint: int64 in [low, high); randint(high, size) starts at 0."""
    return _gen(generator).randint(low, high, size)


def uniform(size, low: float = 0.0, high: float = 1.0,
            generator: Generator | None = None) -> np.ndarray:
    """tensor.uniform_(low, high) on a new float32 array of this size."""
    return _gen(generator).uniform(size, low, high)


def normal(size, mean: float = 0.0, std: float = 1.0,
           generator: Generator | None = None) -> np.ndarray:
    """tensor.normal_(mean, std) on a new float32 array of this size."""
    return _gen(generator).normal(size, mean, std)


def multinomial(p, num_samples: int = 1, replacement: bool = False,
                generator: Generator | None = None) -> np.ndarray:
    """torch.multinomial: category indices (int64) drawn from the weights p."""
    return _gen(generator).multinomial(p, num_samples, replacement)
