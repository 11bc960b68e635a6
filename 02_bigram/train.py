"""Stage 02: a bigram language model of names, counted and then learned.

Follows "The spelled-out intro to language modeling: building makemore" (makemore part 1).
New over stage 01: the `Tensor`, stage 01's `Value` over whole numpy arrays, and random
numbers identical to the lecture's (common/rng.py reproduces PyTorch's generator), so the
printed losses and sampled names match the video.

    python 02_bigram/train.py                 # both models, figures in out/02_bigram/
    python 02_bigram/train.py --steps 100     # fewer gradient-descent steps

What it prints (measured; the lecture's samples and losses, except that its float32
running sum gives the counting model's NLL as 2.4541, 2.4544 with smoothing):
    counting model   average NLL 2.454014 (2.454577 with +1 smoothing)
                     samples: mor. axx. minaymoryles. kondlaisah. anchshizarie.
    neural bigram    loss 3.768619 at step 0, 2.489959 at step 100, 2.481499 after 300
                     samples: mor. axx. minaymoryles. kondlaisah. anchthizarie.
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
    steps: int = cli.arg(300, "gradient-descent steps of the neural bigram", min=0)
    lr: float = cli.arg(50.0, "learning rate (the lecture's 50: the model is tiny)",
                        min=1e-9, max=1e6)
    reg: float = cli.arg(0.01, "weight of the (W**2).mean() regularization", min=0, max=1e6)
    seed: int = cli.arg(2147483647, "seed of the generator (the lecture's 2147483647)",
                        min=0, max=2**64 - 1)
    samples: int = cli.arg(5, "names to sample from each model", min=0, max=10_000)
    out: str = cli.arg("out/02_bigram", "output folder for figures")
    plots: bool = cli.arg(True, "write figures")
    format: str = cli.arg("png", "file format of the figures: png, or svg and pdf to scale "
                                 "on slides", choices=cli.FIGURE_FORMATS)


# %% Data
def bigram_pairs(words, stoi):
    """Every bigram of every name with '.' marking start and end: 'emma' gives
    .e em mm ma a. -> xs = [0, 5, 13, 13, 1], ys = [5, 13, 13, 1, 0]."""
    xs, ys = [], []
    for w in words:
        chs = ["."] + list(w) + ["."]
        for ch1, ch2 in zip(chs, chs[1:]):
            xs.append(stoi[ch1])
            ys.append(stoi[ch2])
    return np.array(xs, dtype=np.int64), np.array(ys, dtype=np.int64)


def top_bigrams(words, k=10):
    """The lecture's first count, in a dict with <S> and <E> tokens: the k most common."""
    b = {}
    for w in words:
        chs = ["<S>"] + list(w) + ["<E>"]
        for bigram in zip(chs, chs[1:]):
            b[bigram] = b.get(bigram, 0) + 1
    return sorted(b.items(), key=lambda kv: -kv[1])[:k]


# %% Model
def count_matrix(xs, ys, n=27):
    """N[i, j]: how often character j follows character i (a 27x27 table of ints)."""
    N = np.zeros((n, n), dtype=np.int32)
    np.add.at(N, (xs, ys), 1)  # not N[xs, ys] += 1, which counts a repeated pair once
    return N


def counting_model(N, smoothing=1):
    """P[i]: the probability of the next character given character i: the counts of
    row i, plus `smoothing` fake counts so no bigram has probability zero, normalized."""
    P = (N + smoothing).astype(np.float32)
    return P / P.sum(1, keepdims=True)  # (27, 27) / (27, 1): every row divided by its sum


def average_nll(P, xs, ys):
    """The quality of a model on data: the average negative log likelihood of the
    observed next characters (lower is better; 0 would be perfect)."""
    with np.errstate(divide="ignore"):  # log(0) = -inf for an unseen bigram is the point
        logprobs = np.log(P[xs, ys].astype(np.float64))
    # summed in float64; the lecture adds float32 numbers one by one (-559891.75: 2.4541)
    return float(-logprobs.sum() / len(xs))


def neural_bigram_loss(W, xenc, ys, reg):
    """The neural net's loss: one-hot inputs times W give log-counts ("logits"); exp and
    normalize them into probabilities (a softmax); the average NLL of the right next
    characters, plus a pull of W towards zero (the counting model's smoothing)."""
    logits = Tensor(xenc) @ W                   # (N, 27) @ (27, 27): log-counts
    counts = logits.exp()                       # (N, 27) counts, like the rows of the table N
    probs = counts / counts.sum(1, keepdim=True)  # (N, 27) each row sums to 1
    return -probs[np.arange(len(ys)), ys].log().mean() + reg * (W**2).mean()


# %% Training
def train_neural_bigram(cfg, xs, ys, quiet=False):
    """Full-batch gradient descent on all 228,146 bigrams."""
    g = rng.Generator(cfg.seed)
    W = Tensor(rng.randn(27, 27, generator=g), requires_grad=True)  # (27, 27)
    xenc = one_hot(xs, 27)  # (N, 27) inputs, encoded once: they never change
    progress = cli.Progress(cfg.steps, every=10, quiet=quiet)
    losses = []
    for k in range(cfg.steps):
        loss = neural_bigram_loss(W, xenc, ys, cfg.reg)  # forward pass
        W.grad = None                                   # zero the gradient
        loss.backward()                                 # backward pass
        W.data += -cfg.lr * W.grad                      # update
        losses.append(loss.item())
        progress.update(k, losses[-1], cfg.lr)
    with no_grad():
        final = neural_bigram_loss(W, xenc, ys, cfg.reg).item()
    return W, losses, final


# %% Sampling
def sample_names(next_probs, n, seed, itos, max_len=100):
    """Sample `n` names: start at '.', draw the next character from next_probs(ix) with
    torch.multinomial's sampling (with replacement), stop at the next '.' (or after
    max_len characters: a badly trained model may never draw the '.')."""
    g = rng.Generator(seed)
    names = []
    for _ in range(n):
        out, ix = [], 0
        while len(out) < max_len:
            p = next_probs(ix)
            ix = int(rng.multinomial(p, num_samples=1, replacement=True, generator=g)[0])
            out.append(itos[ix])
            if ix == 0:
                break
        names.append("".join(out))
    return names


def neural_next_probs(W):
    """The trained net's distribution of the character after `ix`."""
    def next_probs(ix):
        with no_grad():
            logits = Tensor(one_hot(np.array([ix]), 27)) @ W  # (1, 27)
            counts = logits.exp()
            return (counts / counts.sum(1, keepdim=True)).data[0]
    return next_probs


# %% Figures
def plot_counts(N, itos, path):
    """The lecture's annotated heat map: every cell shows its bigram and count."""
    plt = cli.pyplot()
    fig, ax = plt.subplots(figsize=(16, 16))
    im = ax.imshow(N, cmap="Blues")
    for i in range(27):
        for j in range(27):
            color = "white" if N[i, j] > 0.5 * N.max() else "dimgray"  # readable on dark cells
            ax.text(j, i, itos[i] + itos[j], ha="center", va="bottom", color=color,
                    fontsize=10)
            ax.text(j, i, str(N[i, j]), ha="center", va="top", color=color, fontsize=10)
    ax.set_title("bigram counts N[row, col]: how often character col follows row",
                 fontsize=18, pad=14)
    ax.set_xticks(range(27), [itos[j] for j in range(27)], fontsize=13)
    ax.set_yticks(range(27), [itos[i] for i in range(27)], fontsize=13)
    ax.xaxis.set_ticks_position("top")
    ax.xaxis.set_label_position("top")
    ax.tick_params(length=0)
    ax.set_xlabel("next character (col)", fontsize=15)
    ax.set_ylabel("current character (row)", fontsize=15)
    cbar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    cbar.set_label("count", fontsize=15)
    cbar.ax.tick_params(labelsize=13)
    cli.save_figure(fig, path)


def plot_one_hot(xenc, path):
    """The one-hot encoded inputs: one row per bigram of 'emma', one column per character."""
    plt = cli.pyplot()
    from matplotlib.colors import ListedColormap
    fig, ax = plt.subplots(figsize=(7, 2.8))
    im = ax.imshow(xenc, cmap=ListedColormap(["white", "black"]), vmin=0, vmax=1,
                   aspect="auto")
    ax.set_title("one-hot inputs for the 5 bigrams of 'emma'", fontsize=12)
    ax.set_yticks(range(len(xenc)), [".e", "em", "mm", "ma", "a."], fontsize=10)
    ax.set_ylabel("bigram (input -> target)", fontsize=11)
    ax.set_xlabel("character index (0 = '.', 1-26 = a-z)", fontsize=11)
    ax.tick_params(labelsize=10)
    ax.set_xticks(np.arange(-0.5, xenc.shape[1], 1), minor=True)
    ax.set_yticks(np.arange(-0.5, len(xenc), 1), minor=True)
    ax.grid(which="minor", color="lightgray", lw=0.5)
    ax.tick_params(which="minor", length=0)
    cbar = fig.colorbar(im, ax=ax, ticks=[0, 1], fraction=0.04, pad=0.02)
    cbar.set_label("one-hot value", fontsize=11)
    cbar.ax.tick_params(labelsize=10)
    cli.save_figure(fig, path)


def plot_loss(losses, counting_nll, path, reg=0.01):
    """The neural bigram's training loss per step against the counting model's NLL. The
    training loss includes the regularization reg * mean(W**2), the counting model's NLL
    has none: that term is why the neural curve levels off slightly above the line."""
    plt = cli.pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.8))
    ax.plot(losses, lw=2, label=f"neural bigram: training loss = NLL + {reg:g} * mean(W**2)")
    ax.axhline(counting_nll, color="gray", ls="--", lw=1.5,
               label=f"counting model (+1 smoothing): NLL {counting_nll:.4f}, no regularization")
    # room below the dashed line and above the curve, so neither sits on the frame
    values = [counting_nll, *losses]
    low, high = min(values), max(values)
    pad = 0.08 * max(high - low, 0.1)
    ax.set_ylim(low - pad, high + pad)
    ax.set_xlim(0, max(len(losses) - 1, 1))
    ax.set_title("neural bigram vs. counting model: loss on all training bigrams", fontsize=12)
    ax.set_xlabel("gradient-descent step", fontsize=11)
    ax.set_ylabel("loss (nats per bigram)", fontsize=11)
    ax.tick_params(labelsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=10, loc="upper right")
    cli.save_figure(fig, path)


# %% Main
def walkthrough_emma(W, stoi, itos):
    """The lecture's five examples of 'emma', one line each; returns the average NLL."""
    xs, ys = bigram_pairs(["emma"], stoi)
    with no_grad():
        logits = Tensor(one_hot(xs, 27)) @ W
        counts = logits.exp()
        probs = (counts / counts.sum(1, keepdim=True)).data  # (5, 27)
    nlls = np.zeros(5, dtype=np.float32)
    for i, (x, y) in enumerate(zip(xs, ys)):
        p = probs[i, y]
        nlls[i] = -np.log(p)
        print(f"  bigram {itos[x]}{itos[y]}: input {x:2d}, label {y:2d}, "
              f"probability {p:.4f}, negative log likelihood {nlls[i]:.4f}")
    return float(nlls.mean())


def main(argv=None) -> dict:
    cfg = cli.parse_config(Config, argv, __doc__, prog="02_bigram/train.py")
    out = cli.out_dir(cfg.out)  # fail now on an unusable folder, not after training
    cli.keep_freed_memory()  # full-batch arrays are big: reuse their memory each step
    words = data.load_names()
    stoi, itos = data.names_vocab(words)
    xs, ys = bigram_pairs(words, stoi)
    print(f"{len(words)} names, {len(xs)} bigrams")

    print("\n== Counting: the most common bigrams")
    top = top_bigrams(words)
    print("  " + ", ".join(f"{a}{b} {n}" for (a, b), n in top[:5]) + ", ...")
    N = count_matrix(xs, ys)
    print(f"  count matrix {N.shape}: {N.sum()} bigrams, {(N == 0).sum()} empty cells")

    # The broadcasting trap: sum(1) without keepdim is a (27,) row vector, which numpy
    # aligns with the LAST dimension, so it divides columns, not rows.
    P_raw = N.astype(np.float32)
    right = P_raw / P_raw.sum(1, keepdims=True)  # (27, 27) / (27, 1)
    wrong = P_raw / P_raw.sum(1)                 # (27, 27) / (1, 27) after broadcasting
    print(f"  rows of P sum to {right[0].sum():.4f} with keepdim, "
          f"to {wrong[0].sum():.4f} without (the columns got normalized instead)")

    nll_raw = average_nll(counting_model(N, smoothing=0), xs, ys)
    P = counting_model(N, smoothing=1)
    nll = average_nll(P, xs, ys)
    xq, yq = bigram_pairs(["andrejq"], stoi)
    nll_q = average_nll(counting_model(N, smoothing=0), xq, yq)
    print(f"  average NLL {nll_raw:.6f}; with +1 smoothing {nll:.6f}; "
          f"'andrejq' unsmoothed {nll_q}")
    counted_names = sample_names(lambda ix: P[ix], cfg.samples, cfg.seed, itos)
    print("  samples: " + " ".join(counted_names))

    print("\n== Neural bigram: one-hot(x) @ W, softmax, negative log likelihood")
    W0 = Tensor(rng.randn(27, 27, generator=rng.Generator(cfg.seed)))
    emma_nll = walkthrough_emma(W0, stoi, itos)
    print(f"  average negative log likelihood over 'emma': {emma_nll}")

    start = time.perf_counter()
    W, losses, final = train_neural_bigram(cfg, xs, ys)
    seconds = time.perf_counter() - start
    print(f"  loss after {cfg.steps} steps: {final:.6f} ({seconds:.1f}s)")
    neural_names = sample_names(neural_next_probs(W), cfg.samples, cfg.seed, itos)
    print("  samples: " + " ".join(neural_names))

    files = []
    if cfg.plots:
        plot_counts(N, itos, out / f"counts.{cfg.format}")
        plot_one_hot(one_hot(bigram_pairs(["emma"], stoi)[0], 27), out / f"one_hot.{cfg.format}")
        plot_loss(losses, nll, out / f"loss.{cfg.format}", reg=cfg.reg)
        files = [str(out / f) for f in (f"counts.{cfg.format}", f"one_hot.{cfg.format}", f"loss.{cfg.format}")]
        print(f"\nfigures: {', '.join(files)}")
    return dict(config=asdict(cfg), n_bigrams=int(N.sum()), empty_cells=int((N == 0).sum()),
                top=top, nll_unsmoothed=nll_raw, nll_smoothed=nll, nll_andrejq=nll_q,
                counting_samples=counted_names, emma_nll=emma_nll, losses=losses,
                final_loss=final, neural_samples=neural_names, seconds=seconds, files=files)


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


if __name__ == "__main__":
    cli.run(main)
