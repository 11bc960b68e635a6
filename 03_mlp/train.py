"""Stage 03: a multilayer perceptron language model (Bengio et al. 2003).

Follows "Building makemore Part 2: MLP" (makemore part 2). New over stage 02: the model
sees the previous `block_size` characters instead of one; each character is looked up in a
learned embedding table `C`, the embeddings are concatenated and go through a tanh hidden
layer; the loss is `cross_entropy`, built from the engine's ops with the lecture's
max-subtraction; training uses minibatches, a learning-rate finder and a learning-rate
decay; and the data is split into train / dev / test. The engine gains tanh, view and
cross_entropy.

    python 03_mlp/train.py                            # the lecture's final model
    python 03_mlp/train.py --n-embd 2 --n-hidden 100  # 2-D embeddings, for the picture

What the default run prints (measured; about a minute on a 2-core CPU):
    11897 parameters; first minibatch loss 27.8817 (stage 04 explains why so high)
    after 200,000 steps: train 2.1233, val 2.1670, test 2.1579
    samples: carlah. amorie. khi. mili. taty. skanden. jazhnen. den. art. kaqui. ...
(the lecture, with unseeded batches and another split (README.md), printed train 2.1260,
val 2.1701.)
"""

# %% Imports
from __future__ import annotations

import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

# One BLAS thread: the matrices here are small, and on a busy 2-core machine a second
# thread mostly waits for the other core (tests/benchmarks/README.md has the measurements).
# Must precede numpy's import.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
import numpy as np  # noqa: E402

# to import common/: from the repository root, or (in a notebook, which has no __file__)
# from the folder above the stage's, where the notebook runs
ROOT = Path(__file__).resolve().parent.parent if "__file__" in globals() else Path.cwd().parent
sys.path.insert(0, str(ROOT))
from common import cli, data, rng  # noqa: E402


# %% Config
@dataclass
class Config:
    block_size: int = cli.arg(3, "context length: how many characters predict the next",
                              min=1, max=32)
    n_embd: int = cli.arg(10, "dimensions of each character's embedding", min=1, max=1000)
    n_hidden: int = cli.arg(200, "neurons in the hidden tanh layer", min=1, max=10_000)
    steps: int = cli.arg(200_000, "training steps (minibatches)", min=0)
    batch_size: int = cli.arg(32, "examples per minibatch", min=1, max=100_000)
    lr: float = cli.arg(0.1, "learning rate", min=1e-9, max=1e6)
    lr_decay_step: int = cli.arg(100_000, "from this step on the learning rate is lr / 10",
                                 min=0)
    seed: int = cli.arg(2147483647, "seed of the generator (the lecture's 2147483647)",
                        min=0, max=2**64 - 1)
    samples: int = cli.arg(20, "names to sample after training", min=0, max=10_000)
    out: str = cli.arg("out/03_mlp", "output folder for figures and the checkpoint")
    plots: bool = cli.arg(True, "write figures")
    format: str = cli.arg("png", "file format of the figures: png, or svg and pdf to scale "
                                 "on slides", choices=cli.FIGURE_FORMATS)


# %% Data
def show_examples(X, Y, itos, n=5):
    """The lecture's view of the dataset: context ---> next character (`... ---> e`,
    `..e ---> m`, ... for emma; here the shuffled training set starts with yuheng)."""
    for x, y in zip(X[:n], Y[:n]):
        print("  " + "".join(itos[i] for i in x), "--->", itos[y])


# %% Model
def init_params(cfg, g):
    """The lecture's parameters, drawn in its order from generator g, unscaled (so the
    first loss is far above -ln(1/27) = 3.30: the puzzle stage 04 solves)."""
    C = rng.randn(27, cfg.n_embd, generator=g)                    # (27, n_embd) embedding
    W1 = rng.randn(cfg.block_size * cfg.n_embd, cfg.n_hidden, generator=g)  # (30, 200)
    b1 = rng.randn(cfg.n_hidden, generator=g)                     # (200,)
    W2 = rng.randn(cfg.n_hidden, 27, generator=g)                 # (200, 27)
    b2 = rng.randn(27, generator=g)                               # (27,)
    params = {"C": C, "W1": W1, "b1": b1, "W2": W2, "b2": b2}
    return {name: Tensor(p, requires_grad=True) for name, p in params.items()}


def forward(params, X):
    """Logits (N, 27) for contexts X (N, block_size)."""
    emb = params["C"][X]                                  # (N, block_size, n_embd)
    embcat = emb.view(emb.shape[0], -1)                   # (N, block_size * n_embd)
    h = (embcat @ params["W1"] + params["b1"]).tanh()     # (N, n_hidden)
    return h @ params["W2"] + params["b2"]                # (N, 27)


def manual_loss(logits, Y):
    """The softmax and NLL written out (as in stage 02): correct, but exp() of a large
    logit overflows to inf and the loss becomes nan; cross_entropy() avoids that."""
    counts = logits.exp()
    probs = counts / counts.sum(1, keepdim=True)
    return -probs[np.arange(len(Y)), Y].log().mean()


def evaluate(params, X, Y):
    with no_grad():
        return cross_entropy(forward(params, X), Y).item()


# %% Training
def learning_rate(cfg, step):
    """The lecture's schedule: lr for the first lr_decay_step steps, then lr / 10."""
    return cfg.lr if step < cfg.lr_decay_step else cfg.lr / 10


def sgd_step(params, X, Y, lr):
    """One minibatch step: forward, zero the gradients, backward, update."""
    loss = cross_entropy(forward(params, X), Y)
    for p in params.values():
        p.grad = None
    loss.backward()
    for p in params.values():
        p.data += -lr * p.grad
    return loss.item()


def train(cfg, params, Xtr, Ytr, g, quiet=False):
    """Minibatch gradient descent; the minibatch indices come from generator g."""
    lossi = []
    progress = cli.Progress(cfg.steps, every=10_000, quiet=quiet)
    for i in range(cfg.steps):
        ix = rng.randint(0, Xtr.shape[0], (cfg.batch_size,), generator=g)  # (32,)
        lr = learning_rate(cfg, i)
        loss = sgd_step(params, Xtr[ix], Ytr[ix], lr)
        lossi.append(loss)
        progress.update(i, loss, lr)
    return lossi


def overfit_one_batch(cfg, X, Y, steps=1000):
    """A fresh model trained on the same 32 examples only: the loss goes far below what
    any real model reaches, because the model's parameters (11,897 by default) can
    memorize 32 examples. (Not
    zero: the same context, e.g. '...', is followed by different letters.)"""
    params = init_params(cfg, rng.Generator(cfg.seed))
    for _ in range(steps):
        loss = sgd_step(params, X, Y, cfg.lr)
    return loss


def find_learning_rate(cfg, Xtr, Ytr, steps=1000):
    """The learning-rate finder: one step at each of 1,000 rates growing exponentially
    from 10**-3 to 10**0; the loss falls fastest around the best rate, then blows up."""
    g = rng.Generator(cfg.seed)
    params = init_params(cfg, g)
    lre = np.linspace(-3, 0, steps)                       # exponents
    losses = []
    for lr in 10**lre:
        ix = rng.randint(0, Xtr.shape[0], (cfg.batch_size,), generator=g)
        losses.append(sgd_step(params, Xtr[ix], Ytr[ix], float(lr)))
    return lre, np.array(losses)


def save_model(path, params, cfg):
    """The parameters and the config, in one file (common/cli.py: written atomically)."""
    arrays = {n: p.data for n, p in params.items()}
    cli.save_checkpoint(path, arrays, dict(config=asdict(cfg)))


# %% Sampling
def sample_names(params, cfg, n, itos, max_len=100):
    """Sample n names: start from a context of '.', draw the next character from the
    softmax with torch.multinomial's default sampling (without replacement), slide the
    context, stop at '.' (or after max_len characters: a badly trained model may never
    draw the '.'). The generator is seeded seed + 10, as in the lecture."""
    g = rng.Generator(cfg.seed + 10)
    names = []
    for _ in range(n):
        out, context = [], [0] * cfg.block_size
        while len(out) < max_len:
            with no_grad():
                logits = forward(params, np.array([context]))      # (1, 27)
                probs = logits.data - logits.data.max()
                probs = np.exp(probs) / np.exp(probs).sum()         # softmax
            ix = int(rng.multinomial(probs[0], num_samples=1, generator=g)[0])
            context = context[1:] + [ix]
            out.append(itos[ix])
            if ix == 0:
                break
        names.append("".join(out))
    return names


# %% Figures
def plot_lr_finder(lre, losses, path):
    """Minibatch loss against the learning rate (log10), one step at each rate."""
    plt = cli.pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.8))
    ax.plot(lre, losses, color="#1f5fa8", lw=1, label="loss after one step")
    ax.set_xlabel("log10(learning rate)", fontsize=11)
    ax.set_ylabel("minibatch loss (nats)", fontsize=11)
    ax.set_title("learning-rate finder: pick the valley before the loss climbs",
                 fontsize=12)
    ax.set_ylim(top=min(losses.max(), 3 * np.median(losses)))
    ax.tick_params(labelsize=10)
    ax.grid(alpha=0.3)
    cli.save_figure(fig, path)


def plot_losses(lossi, path, chunk=1000):
    """log10 of every minibatch loss (noisy), and the mean over chunks of 1,000 steps."""
    plt = cli.pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.8))
    log_loss = np.log10(lossi)
    ax.plot(log_loss, lw=0.3, alpha=0.5, color="C0", label="each minibatch")
    m = len(log_loss) // chunk * chunk
    if m:
        means = log_loss[:m].reshape(-1, chunk).mean(1)
        ax.plot(np.arange(len(means)) * chunk + chunk / 2, means, lw=2, color="C1",
                marker="o" if len(means) < 20 else None, ms=4,
                label=f"mean of each {chunk:,} steps")
    ax.set_title("MLP training: the loss of every minibatch", fontsize=12)
    ax.set_xlabel("step", fontsize=11)
    ax.set_ylabel("log10(minibatch loss)", fontsize=11)
    ax.tick_params(labelsize=10)
    ax.grid(True, alpha=0.3)
    legend = ax.legend(fontsize=10, loc="upper right")
    legend.get_lines()[0].set_linewidth(2)  # the minibatch line: too thin to see there
    cli.save_figure(fig, path)


def plot_embedding(C, itos, path):
    """The 27 characters at their (first two) embedding coordinates: each letter in a
    light circle on its point; where circles would overlap, the letters are pushed
    apart and a thin line leads back to the point (a small dot)."""
    plt = cli.pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.8 if C.shape[1] == 2 else 3.6))
    xy = np.asarray(C[:, :2], dtype=np.float64)
    lo, hi = xy.min(0), xy.max(0)
    span = np.maximum(hi - lo, 1e-6)
    lo, hi = lo - 0.08 * span, hi + 0.08 * span
    # the axes' size in inches, to measure distances between labels as they will be drawn
    box = ax.get_position()
    inches = fig.get_size_inches() * (box.width, box.height)
    scale = inches / (hi - lo)                          # inches per data unit, x and y
    points = (xy - lo) * scale
    labels = points + 1e-3 * np.stack(                  # a nudge apart for equal points
        [np.cos(np.arange(len(xy))), np.sin(np.arange(len(xy)))], 1)
    min_dist = 0.27                                     # inches: a circle, plus a gap
    for _ in range(500):
        d = labels[:, None] - labels[None]              # (27, 27, 2)
        dist = np.hypot(d[..., 0], d[..., 1])
        np.fill_diagonal(dist, np.inf)
        overlap = np.clip(min_dist - dist, 0, None)
        if not overlap.any():
            break
        labels += 0.5 * (d / dist[..., None] * overlap[..., None]).sum(1)
        labels += 0.02 * (points - labels)              # and back towards their points
    labels = labels / scale + lo
    moved = np.hypot(*((labels - xy) * scale).T) > 0.05
    for i in np.flatnonzero(moved):
        ax.plot(*zip(xy[i], labels[i]), color="gray", lw=0.7, zorder=1)
    ax.scatter(xy[:, 0], xy[:, 1], s=8, color="C0", zorder=2)
    for i, (x, y) in enumerate(labels):
        ch = itos[i]
        ax.text(x, y, ch, ha="center", va="center", zorder=3,
                fontsize=14 if ch == "." else 11, fontweight="bold" if ch == "." else None,
                bbox=dict(boxstyle="circle,pad=0.2", fc="white", ec="C0", lw=0.8, alpha=0.9))
    everything = np.concatenate([xy, labels])
    lo2, hi2 = everything.min(0), everything.max(0)
    margin = 0.06 * np.maximum(hi2 - lo2, 1e-6)
    ax.set_xlim(lo2[0] - margin[0], hi2[0] + margin[0])
    ax.set_ylim(lo2[1] - margin[1], hi2[1] + margin[1])
    ax.grid(True, alpha=0.3)
    ax.set_xlabel("embedding dimension 0", fontsize=11)
    ax.set_ylabel("embedding dimension 1", fontsize=11)
    ax.tick_params(labelsize=10)
    if C.shape[1] == 2:
        title = "learned 2-D character embeddings (the whole embedding)"
    else:
        title = (f"learned character embeddings: the first 2 of {C.shape[1]} dimensions\n"
                 "(train with --n-embd 2 to see the whole embedding)")
    ax.set_title(title, fontsize=12)
    cli.save_figure(fig, path)


# %% Main
def show_lookup_equivalence(C):
    """C[5] picks row 5; one_hot(5) @ C computes the same row with a matmul."""
    a = C.data[5]
    b = (Tensor(one_hot(np.array([5]), 27)) @ C).data[0]
    print(f"  C[5] == one_hot(5) @ C: {np.allclose(a, b)}")
    return bool(np.allclose(a, b))


def show_overflow():
    """Why cross_entropy subtracts each row's max: logits of 100 overflow exp() in
    float32, and the written-out softmax + NLL becomes nan."""
    logits = Tensor(np.array([[-5.0, -3.0, 0.0, 100.0]], dtype=np.float32))
    with np.errstate(over="ignore", invalid="ignore"):
        manual = manual_loss(logits, np.array([3])).item()
    stable = cross_entropy(logits, np.array([3])).item() + 0.0  # no "-0.0"
    print(f"  logits [-5, -3, 0, 100], target 3: manual softmax+NLL {manual}, "
          f"cross_entropy {stable:.4f}")
    return manual, stable


def main(argv=None) -> dict:
    cfg = cli.parse_config(Config, argv, __doc__, prog="03_mlp/train.py")
    out = cli.out_dir(cfg.out)  # fail now on an unusable folder, not after training
    words = data.load_names()
    stoi, itos = data.names_vocab(words)
    (Xtr, Ytr), (Xdev, Ydev), (Xte, Yte) = data.makemore_splits(cfg.block_size)
    print(f"{len(words)} names -> train {len(Xtr)}, dev {len(Xdev)}, test {len(Xte)} "
          f"examples of {cfg.block_size} characters")
    show_examples(Xtr, Ytr, itos)

    g = rng.Generator(cfg.seed)
    params = init_params(cfg, g)
    n_params = sum(p.data.size for p in params.values())
    print(f"\n== Model: embedding {cfg.n_embd}, hidden {cfg.n_hidden}: {n_params} parameters")
    lookup_ok = show_lookup_equivalence(params["C"])
    manual, stable = show_overflow()
    overfit = overfit_one_batch(cfg, Xtr[:32], Ytr[:32])
    print(f"  overfitting one batch of 32 examples: loss {overfit:.4f} after 1000 steps")
    lre, lr_losses = find_learning_rate(cfg, Xtr, Ytr)
    print(f"  learning-rate finder: lowest loss at lr 10**{lre[np.argmin(lr_losses)]:.2f}")

    print(f"\n== Training {cfg.steps} steps, lr {cfg.lr} then {cfg.lr / 10} "
          f"from step {cfg.lr_decay_step}")
    start = time.perf_counter()
    try:
        lossi = train(cfg, params, Xtr, Ytr, g)
    except KeyboardInterrupt:  # Ctrl-C: keep the model trained so far
        save_model(out / "model.npz", params, cfg)
        print(f"\nthe model trained so far is in {out / 'model.npz'}")
        raise
    seconds = time.perf_counter() - start
    splits = {"train": (Xtr, Ytr), "val": (Xdev, Ydev), "test": (Xte, Yte)}
    final = {name: evaluate(params, X, Y) for name, (X, Y) in splits.items()}
    print(f"  {seconds:.1f}s; " + ", ".join(f"{k} {v:.4f}" for k, v in final.items()))

    names = sample_names(params, cfg, cfg.samples, itos)
    print("\n== Samples\n  " + " ".join(names))

    save_model(out / "model.npz", params, cfg)
    files = [str(out / "model.npz")]
    if cfg.plots:
        plot_lr_finder(lre, lr_losses, out / f"lr_finder.{cfg.format}")
        plot_losses(lossi, out / f"loss.{cfg.format}")
        plot_embedding(params["C"].data, itos, out / f"embedding.{cfg.format}")
        files += [str(out / f) for f in (f"lr_finder.{cfg.format}", f"loss.{cfg.format}", f"embedding.{cfg.format}")]
    print(f"\nwrote {', '.join(files)}")
    return dict(config=asdict(cfg), sizes=(len(Xtr), len(Xdev), len(Xte)),
                n_params=n_params, lookup_equivalent=lookup_ok, manual_overflow=manual,
                stable_large_logits=stable, overfit_loss=overfit, lr_finder=(lre, lr_losses),
                lossi=lossi, **final, samples=names, seconds=seconds, files=files)


# %% Engine
# Our stand-in for PyTorch: a Tensor with autograd, in numpy. It sits at the back of the
# file like a library; each stage carries it forward unchanged and adds what its lecture
# needs: Tensor methods under "# -- new in stage NN" before backward(), functions in
# a cell of their own ("Engine: new in stage NN").
class no_grad:
    """`with no_grad():` runs ops without recording the graph (evaluation, sampling)."""

    enabled = True  # is the graph being recorded?

    def __enter__(self):
        self.prev, no_grad.enabled = no_grad.enabled, False

    def __exit__(self, *exc):
        no_grad.enabled = self.prev


def _unbroadcast(grad, shape):
    """Sum a gradient back to `shape`, undoing numpy broadcasting: the dimensions that
    broadcasting added in front, and those it stretched from size 1."""
    if grad.shape == shape:
        return grad
    extra = grad.ndim - len(shape)
    axes = tuple(range(extra)) + tuple(
        extra + i for i, n in enumerate(shape) if n == 1 and grad.shape[extra + i] != 1)
    return grad.sum(axis=axes, keepdims=True).reshape(shape)


def _matmul(a, b):
    """a @ b; a stack of matrices times one matrix, (B, T, C) @ (C, N), as ONE
    (B*T, C) @ (C, N) matmul: numpy would multiply the B small matrices one by one."""
    if b.ndim == 2 < a.ndim:
        return (a.reshape(-1, a.shape[-1]) @ b).reshape(*a.shape[:-1], b.shape[-1])
    return a @ b


class Tensor:
    """A numpy array plus its gradient and the op that made it: stage 01's Value, with
    the scalar replaced by an array. Each op computes its result with numpy and stores a
    closure `_backward(grad)` that adds the op's share of `grad` into its inputs. A
    closure holds the op's inputs and the arrays it needs, never its own result, so the
    graph has no reference cycles and each step's memory is freed as soon as it ends."""

    __slots__ = ("data", "grad", "requires_grad", "_prev", "_backward_fn", "_op", "_retain",
                 "__weakref__")

    def __init__(self, data, requires_grad=False, _children=(), _op="", dtype=None):
        if dtype is None:
            array = np.asarray(data)
            if array.dtype.kind in "iu":
                dtype = np.int64  # integers stay integers, as in torch.tensor([1, 2])
            elif array.dtype.kind != "b" and not (
                    isinstance(data, (np.ndarray, np.generic)) and array.dtype.kind == "f"):
                dtype = np.float32  # like torch: float32 unless asked (tests use float64)
        self.data = np.asarray(data, dtype=dtype)
        self.grad = None
        # an op's result needs a gradient if any input does (and we are recording)
        self.requires_grad = requires_grad or (
            no_grad.enabled and any(c.requires_grad for c in _children))
        self._prev = _children if self.requires_grad else ()
        self._backward = None
        self._op = _op
        self._retain = False

    # Each op stores its closure in out._backward. With no graph to record (no input needs
    # a gradient, or inside no_grad) it is dropped at once: the closure would keep the
    # op's inputs alive, and with them every array of the forward pass.
    @property
    def _backward(self):
        return self._backward_fn

    @_backward.setter
    def _backward(self, fn):
        self._backward_fn = fn if self.requires_grad else None

    def _accumulate(self, grad):
        """grad += (the op's contribution), summed back to this tensor's shape. `+=`
        because a tensor used twice receives a gradient from each use."""
        if not self.requires_grad:
            return
        grad = _unbroadcast(grad, self.data.shape)
        self.grad = grad if self.grad is None else self.grad + grad

    def _wrap(self, other):
        return other if isinstance(other, Tensor) else Tensor(other, dtype=self.data.dtype)

    # -- arithmetic: a + b, a * b, ... (numpy broadcasts; _accumulate undoes it) --
    def __add__(self, other):
        other = self._wrap(other)
        out = Tensor(self.data + other.data, _children=(self, other), _op="+")

        def _backward(g):  # d(a+b)/da = d(a+b)/db = 1
            self._accumulate(g)
            other._accumulate(g)
        out._backward = _backward
        return out

    def __mul__(self, other):
        other = self._wrap(other)
        out = Tensor(self.data * other.data, _children=(self, other), _op="*")

        def _backward(g):  # d(a*b)/da = b, d(a*b)/db = a
            self._accumulate(g * other.data)
            other._accumulate(g * self.data)
        out._backward = _backward
        return out

    def __truediv__(self, other):
        other = self._wrap(other)
        out = Tensor(self.data / other.data, _children=(self, other), _op="/")

        def _backward(g):  # d(a/b)/da = 1/b, d(a/b)/db = -a/b**2
            self._accumulate(g / other.data)
            other._accumulate(-g * self.data / other.data**2)
        out._backward = _backward
        return out

    def __pow__(self, k):
        assert isinstance(k, (int, float)), "only a number exponent is supported"
        out = Tensor(self.data**k, _children=(self,), _op=f"**{k}")

        def _backward(g):  # d(a**k)/da = k * a**(k-1)
            self._accumulate(g * k * self.data ** (k - 1))
        out._backward = _backward
        return out

    def __matmul__(self, other):
        other = self._wrap(other)
        a, b = self.data, other.data
        out = Tensor(_matmul(a, b), _children=(self, other), _op="@")

        def _backward(g):  # A @ B: dA = g @ B^T, dB = A^T @ g, on the last two dims
            a2 = a[None] if a.ndim == 1 else a            # a vector is a (1, K) row,
            b2 = b[:, None] if b.ndim == 1 else b         # or a (K, 1) column
            g2 = g[..., None] if b.ndim == 1 else g
            g2 = g2[..., None, :] if a.ndim == 1 else g2
            if self.requires_grad:
                da = _matmul(g2, np.swapaxes(b2, -1, -2))
                self._accumulate(da[..., 0, :] if a.ndim == 1 else da)
            if other.requires_grad:
                if b2.ndim == 2 < a2.ndim:  # (B, T, K) @ (K, M): dB sums over all B*T rows
                    db = a2.reshape(-1, a2.shape[-1]).T @ g2.reshape(-1, g2.shape[-1])
                else:
                    db = np.swapaxes(a2, -1, -2) @ g2
                other._accumulate(db[..., 0] if b.ndim == 1 else db)
        out._backward = _backward
        return out

    def __neg__(self):
        return self * -1.0

    def __sub__(self, other):
        return self + (-self._wrap(other))

    def __radd__(self, other):  # 1 + a
        return self + other

    def __rsub__(self, other):  # 1 - a
        return self._wrap(other) - self

    def __rmul__(self, other):  # 2 * a
        return self * other

    def __rtruediv__(self, other):  # 1 / a
        return self._wrap(other) / self

    # -- elementwise functions --
    def exp(self):
        e = np.exp(self.data)
        out = Tensor(e, _children=(self,), _op="exp")
        out._backward = lambda g: self._accumulate(g * e)  # d exp(a) = exp(a)
        return out

    def log(self):
        out = Tensor(np.log(self.data), _children=(self,), _op="log")
        out._backward = lambda g: self._accumulate(g / self.data)  # d log(a) = 1/a
        return out

    # -- reductions: the gradient of a sum flows back unchanged to every summed element --
    def sum(self, dim=None, keepdim=False):
        out = Tensor(self.data.sum(axis=dim, keepdims=keepdim), _children=(self,), _op="sum")

        def _backward(g):
            if dim is not None and not keepdim:
                g = np.expand_dims(g, dim)  # (27,) -> (27, 1) so it broadcasts back
            self._accumulate(np.broadcast_to(g, self.data.shape))
        out._backward = _backward
        return out

    def mean(self, dim=None, keepdim=False):
        m = self.data.mean(axis=dim, keepdims=keepdim)
        n = self.data.size // max(np.size(m), 1)  # how many numbers each mean averages
        out = Tensor(m, _children=(self,), _op="mean")

        def _backward(g):
            if dim is not None and not keepdim:
                g = np.expand_dims(g, dim)
            self._accumulate(np.broadcast_to(g / n, self.data.shape))
        out._backward = _backward
        return out

    # -- indexing: probs[arange(n), ys] picks one probability per row --
    def __getitem__(self, idx):
        if isinstance(idx, tuple):
            idx = tuple(i.data if isinstance(i, Tensor) else i for i in idx)
        elif isinstance(idx, Tensor):
            idx = idx.data
        out = Tensor(self.data[idx], _children=(self,), _op="[]")

        def _backward(g):
            grad = np.zeros_like(self.data)
            np.add.at(grad, idx, g)  # scatter-add: a row picked twice gets both gradients
            self._accumulate(grad)
        out._backward = _backward
        return out

    # -- new in stage 03: the hidden layer's tanh, and view to concatenate embeddings --
    def tanh(self):
        t = np.tanh(self.data)
        out = Tensor(t, _children=(self,), _op="tanh")
        out._backward = lambda g: self._accumulate(g * (1 - t**2))  # 1 - tanh**2
        return out

    def view(self, *shape):
        """The same numbers seen as a different shape (no copy, like torch's view)."""
        out = Tensor(self.data.reshape(*shape), _children=(self,), _op="view")
        out._backward = lambda g: self._accumulate(g.reshape(self.data.shape))
        return out

    reshape = view

    # -- backpropagation --
    def backward(self):
        """Fill .grad of every tensor this one depends on. The graph is ordered
        topologically with an explicit stack (no recursion limit), then each op's
        _backward runs from the output back to the inputs. As in torch, the graph is
        freed on the way: once an op has passed its gradient on, it lets go of its
        inputs and saved arrays, and an intermediate result drops its .grad (only the
        leaves, such as parameters, keep theirs, and tensors asked to retain_grad())."""
        topo, visited, stack = [], set(), [(self, False)]
        while stack:
            node, children_done = stack.pop()
            if children_done:
                topo.append(node)  # after everything it depends on
            elif id(node) not in visited:
                visited.add(id(node))
                stack.append((node, True))
                stack.extend((child, False) for child in node._prev)
        self.grad = np.ones_like(self.data)  # d self / d self = 1
        for node in reversed(topo):
            if node._backward is not None:
                if node.grad is not None:
                    node._backward(node.grad)
                node._backward, node._prev = None, ()
                if not node._retain:
                    node.grad = None

    def retain_grad(self):
        """Keep this intermediate result's .grad after backward(), as torch's does."""
        self._retain = True
        return self

    # -- conveniences --
    @property
    def shape(self):
        return self.data.shape

    def item(self):
        return self.data.item()

    def __repr__(self):
        return f"Tensor({self.data}, requires_grad={self.requires_grad})"


def one_hot(ix, num_classes):
    """F.one_hot(ix, num_classes).float(): row i is all zeros but a 1 at column ix[i]."""
    return np.eye(num_classes, dtype=np.float32)[ix]


# %% Engine: new in stage 03
def cross_entropy(logits, targets):
    """F.cross_entropy(logits, targets): the mean negative log likelihood of `targets`
    under softmax(logits), built from the ops above. Subtracting each row's largest logit
    first changes nothing mathematically (softmax(x - c) = softmax(x)) but keeps exp()
    from overflowing; the max is taken as a constant, since the result does not depend
    on it. Then log softmax = shifted - log(sum(exp(shifted))), which never takes log(0)."""
    n = len(targets)
    shifted = logits - Tensor(logits.data.max(axis=1, keepdims=True))  # (N, 27), max 0
    logprobs = shifted - shifted.exp().sum(1, keepdim=True).log()       # (N, 27)
    return -logprobs[np.arange(n), targets].mean()


if __name__ == "__main__":
    cli.run(main)
