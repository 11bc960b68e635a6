"""Stage 01: micrograd, a scalar autograd engine and a small neural net trained with it.

Follows "The spelled-out intro to neural networks and backpropagation: building micrograd"
and the moons demo of the micrograd repository. What this stage builds:
  - a derivative measured numerically, (f(x + h) - f(x)) / h;
  - `Value`, a number that remembers which numbers and which operation made it, so that
    `backward()` can apply the chain rule from the output back to every input;
  - `Neuron`, `Layer` and `MLP` made of Values, trained by gradient descent to separate
    the two half moons of a toy 2-D dataset.

    python 01_micrograd/train.py                # 100 steps, figures in out/01_micrograd/
    python 01_micrograd/train.py --steps 20 --no-plots

What it prints (measured; f(3.0), L and o are the lecture's, the moons lines the demo
notebook's; the slope uses h = 0.0001, where the video first uses h = 0.001, 14.003):
    f(3.0) = 20.0, slope 14.000300000063248; L = -8.0; tanh neuron o = 0.7071067811865476
    number of parameters 337
    step 0 loss 0.8958441028683222, accuracy 50.0%
    step 1 loss 1.7235905336972022, accuracy 81.0%
    ...
    step 99 loss 0.010978370135492717, accuracy 100.0%
Every step has the notebook's accuracy, and its loss to within 3.1e-15 relative (identical
at 25 steps, the first two and the last included). The 100 steps take about 7 s of CPU time
(about 70 ms per step): each of the ~65,000 numbers of a step is a Python object. Stage
02 moves the same idea onto whole numpy arrays.
"""

# %% Imports
from __future__ import annotations

import contextlib
import gc
import math
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

# to import common/: from the repository root, or (in a notebook, which has no __file__)
# from the folder above the stage's, where the notebook runs
ROOT = Path(__file__).resolve().parent.parent if "__file__" in globals() else Path.cwd().parent
sys.path.insert(0, str(ROOT))
from common import cli  # noqa: E402


# %% Config
@dataclass
class Config:
    steps: int = cli.arg(100, "gradient-descent steps (each one on all the points); the "
                              "learning rate decays over them", min=1)
    seed: int = cli.arg(1337, "seed of numpy's and Python's generators (the demo's 1337)",
                        min=0, max=2**32 - 1)
    samples: int = cli.arg(100, "points in the moons dataset (one moon each half)",
                           min=2, max=100_000)
    noise: float = cli.arg(0.1, "standard deviation of the noise added to the points", min=0)
    out: str = cli.arg("out/01_micrograd", "output folder for figures and graph.dot")
    plots: bool = cli.arg(True, "write the figures")
    format: str = cli.arg("png", "file format of the figures: png, or svg and pdf to scale "
                                 "on slides", choices=cli.FIGURE_FORMATS)


# %% Data
def make_moons(n_samples=100, noise=0.1):
    """Two interleaving half circles, as scikit-learn's make_moons draws them, using
    numpy's global generator (so `np.random.seed(1337)` gives the demo's exact points).

    Returns X (n, 2) float64 points and y (n,) int labels: 0 for the outer moon, 1 for
    the inner one."""
    n_out = n_samples // 2
    n_in = n_samples - n_out
    t_out = np.linspace(0, np.pi, n_out)
    t_in = np.linspace(0, np.pi, n_in)
    X = np.vstack([np.append(np.cos(t_out), 1 - np.cos(t_in)),
                   np.append(np.sin(t_out), 1 - np.sin(t_in) - 0.5)]).T  # (n, 2)
    y = np.hstack([np.zeros(n_out, dtype=np.int64), np.ones(n_in, dtype=np.int64)])
    # Shuffle through an index array, then add the noise: the same draws, in the same
    # order, as scikit-learn's version.
    idx = np.arange(n_samples)
    np.random.shuffle(idx)
    X, y = X[idx], y[idx]
    X += np.random.normal(scale=noise, size=X.shape)
    return X, y


# %% Engine
# Before any engine: what a derivative is, measured numerically.
def f(x):
    """The lecture's first function: a parabola, f(3) = 20."""
    return 3 * x**2 - 4 * x + 5


def numerical_derivative(fn, x, h=0.0001):
    """The slope of fn at x, measured: nudge x by a little h and see how fn responds.
    For f at x = 3 this gives 14.000300000063248; the exact slope 6x - 4 is 14."""
    return (fn(x + h) - fn(x)) / h


# %% Engine: Value
class Value:
    """A scalar that remembers how it was made.

    `data` is the number, `grad` will hold d(output)/d(this) after `output.backward()`,
    `_prev` the Values it was computed from (its children in the graph), `_op` the
    operation's name (for drawing) and `_backward` the rule that passes this node's grad
    on to its children (None for leaves: inputs and parameters)."""

    # __slots__: no per-object __dict__, so a node is small and quick to create; a
    # training step of the moons demo makes about 65,000 of them.
    __slots__ = ("data", "grad", "_prev", "_op", "_backward", "label")

    def __init__(self, data, _children=(), _op="", _backward=None, label=""):
        self.data = data
        self.grad = 0.0
        # a tuple, not the lecture's set(_children): a set's order follows memory
        # addresses, so the gradients' last digits would change from run to run (and
        # b = a + a keeps a twice, which _add_backward relies on)
        self._prev = _children
        self._op = _op
        self._backward = _backward
        self.label = label

    def __repr__(self):
        return f"Value(data={self.data}, grad={self.grad})"

    # Each operation computes its result and records a backward rule: a plain function
    # of the result node `out`, shared by all nodes of that operation (the lecture makes
    # a new closure per node instead; same rule, one allocation less per node). out.grad
    # is d(final output)/d(out); the rule multiplies it by the local derivative (the
    # chain rule) and ADDS the product to the children's grads, because a Value used
    # twice (b = a + a) must receive the sum of both paths' contributions.

    def __add__(self, other):
        other = other if isinstance(other, Value) else Value(other)
        return Value(self.data + other.data, (self, other), "+", Value._add_backward)

    @staticmethod
    def _add_backward(out):  # d(a + b)/da = d(a + b)/db = 1
        a, b = out._prev
        a.grad += out.grad
        b.grad += out.grad

    def __mul__(self, other):
        other = other if isinstance(other, Value) else Value(other)
        return Value(self.data * other.data, (self, other), "*", Value._mul_backward)

    @staticmethod
    def _mul_backward(out):  # d(a * b)/da = b, d(a * b)/db = a
        a, b = out._prev
        a.grad += b.data * out.grad
        b.grad += a.data * out.grad

    def __pow__(self, n):
        if not isinstance(n, (int, float)):
            raise TypeError("Value ** n supports a number exponent only")
        # A shared backward rule has no closure to remember n (the lecture's has, and
        # its op reads f'**{n}'), so the exponent rides along as a constant child: its
        # rule reads it and never gives it a gradient.
        return Value(self.data**n, (self, Value(n)), "**", Value._pow_backward)

    @staticmethod
    def _pow_backward(out):  # d(a**n)/da = n * a**(n - 1)
        a, n = out._prev
        a.grad += (n.data * a.data ** (n.data - 1)) * out.grad

    # -x, a - b, a / b and the reflected forms are made of +, * and **; Python calls the
    # reflected forms (__radd__, ...) for `2 + v`, when the number on the left does not
    # know Values.
    def __neg__(self):  # -self
        return self * -1

    def __radd__(self, other):  # other + self
        return self + other

    def __sub__(self, other):  # self - other
        return self + (-other)

    def __rsub__(self, other):  # other - self
        return other + (-self)

    def __rmul__(self, other):  # other * self
        return self * other

    def __truediv__(self, other):  # self / other
        return self * other**-1

    def __rtruediv__(self, other):  # other / self
        return other * self**-1

    # exp is the lecture's (it rebuilds tanh as (e - 1) / (e + 1) with e = (2*n).exp());
    # log and sigmoid are not in the lecture: two more ops of the same pattern, tested.
    def exp(self):
        return Value(math.exp(self.data), (self,), "exp", Value._exp_backward)

    @staticmethod
    def _exp_backward(out):  # d(e^a)/da = e^a, which is out.data
        (a,) = out._prev
        a.grad += out.data * out.grad

    def log(self):
        return Value(math.log(self.data), (self,), "log", Value._log_backward)

    @staticmethod
    def _log_backward(out):  # d(log a)/da = 1 / a
        (a,) = out._prev
        a.grad += out.grad / a.data

    def tanh(self):
        # The lecture's formula (e^2x - 1) / (e^2x + 1), written with e^-2|x| so that it
        # never overflows; it gives the lecture's 0.7071067811865476 for the neuron
        # (math.tanh rounds that one to ...477).
        e = math.exp(-2 * abs(self.data))
        t = (1 - e) / (1 + e)
        return Value(t if self.data >= 0 else -t, (self,), "tanh", Value._tanh_backward)

    @staticmethod
    def _tanh_backward(out):  # d(tanh a)/da = 1 - tanh(a)**2
        (a,) = out._prev
        a.grad += (1 - out.data**2) * out.grad

    def relu(self):
        return Value(0.0 if self.data < 0 else self.data, (self,), "ReLU",
                     Value._relu_backward)

    @staticmethod
    def _relu_backward(out):  # 1 where the input was positive, 0 elsewhere
        (a,) = out._prev
        if out.data > 0:
            a.grad += out.grad

    def sigmoid(self):
        # 1 / (1 + e^-x), computed from e^-|x| so that it never overflows
        e = math.exp(-abs(self.data))
        s = 1 / (1 + e) if self.data >= 0 else e / (1 + e)
        return Value(s, (self,), "sigmoid", Value._sigmoid_backward)

    @staticmethod
    def _sigmoid_backward(out):  # d(s(a))/da = s(a) * (1 - s(a))
        (a,) = out._prev
        a.grad += out.data * (1 - out.data) * out.grad

    def backward(self):
        """Fill in d(self)/d(node) as node.grad, for every node self was computed from.

        The chain rule flows from the output back to the inputs, so a node may pass its
        grad on only once its own grad is complete, that is after every node that uses
        it. A topological order (children before parents), walked backwards, guarantees
        that. It is built with an explicit stack instead of recursion, so a graph 10,000
        nodes deep does not hit Python's recursion limit. Grads accumulate (+=): call
        zero_grad() on the parameters before each new backward pass.

        The order in which a node's contributions are added shows in the last digits
        (float addition is not associative). This order, each node's children pushed
        in turn and so visited last one first, gives the demo notebook's printed losses
        to the last digit at steps 1 and 99 of the moons demo (step 0's comes before any
        backward pass)."""
        topo, visited = [], set()
        stack = [(self, False)]  # (node, are its children already in topo?)
        while stack:
            node, children_done = stack.pop()
            if children_done:
                topo.append(node)
            elif node not in visited:
                visited.add(node)
                stack.append((node, True))  # comes back after all its children
                for child in node._prev:
                    if child not in visited:
                        stack.append((child, False))
        self.grad = 1.0  # d(self)/d(self)
        for node in reversed(topo):
            if node._backward is not None:
                node._backward(node)


# %% Engine: the lecture's worked examples
def lecture_expression():
    """L = (a*b + c) * f with a=2, b=-3, c=10, f=-2: L = -8, and after backward
    dL/da = 6, dL/db = -4, dL/dc = -2, dL/df = 4. Returns L (its graph hangs off it)."""
    a = Value(2.0, label="a")
    b = Value(-3.0, label="b")
    c = Value(10.0, label="c")
    e = a * b
    e.label = "e"
    d = e + c
    d.label = "d"
    f = Value(-2.0, label="f")
    L = d * f
    L.label = "L"
    L.backward()
    return L


def tanh_neuron():
    """The lecture's neuron o = tanh(x1*w1 + x2*w2 + b), with the bias picked so that
    o = 1/sqrt(2): do/dx1 = -1.5, do/dw1 = 1.0, do/dx2 = 0.5, do/dw2 = 0.0."""
    x1 = Value(2.0, label="x1")
    x2 = Value(0.0, label="x2")
    w1 = Value(-3.0, label="w1")
    w2 = Value(1.0, label="w2")
    b = Value(6.8813735870195432, label="b")
    x1w1 = x1 * w1
    x1w1.label = "x1*w1"
    x2w2 = x2 * w2
    x2w2.label = "x2*w2"
    x1w1x2w2 = x1w1 + x2w2
    x1w1x2w2.label = "x1*w1 + x2*w2"
    n = x1w1x2w2 + b
    n.label = "n"
    o = n.tanh()
    o.label = "o"
    o.backward()
    return o


def leaves(root):
    """The leaf Values of a graph by label, e.g. {'a': Value(...), 'b': ...}."""
    found, stack, seen = {}, [root], set()
    while stack:
        v = stack.pop()
        if v not in seen:
            seen.add(v)
            if not v._prev and v.label:
                found[v.label] = v
            stack.extend(v._prev)
    return found


# %% Model
class Module:
    """What every part of a network has: its parameters, and a way to reset their grads."""

    def zero_grad(self):
        for p in self.parameters():
            p.grad = 0.0

    def parameters(self):
        return []


class Neuron(Module):
    """relu(w . x + b), or just w . x + b for an output neuron (nonlin=False). This is
    micrograd's nn.py, which the moons demo uses; the Neuron typed in the lecture uses
    tanh, draws its bias from random.uniform(-1, 1) and has no Module base or nonlin."""

    def __init__(self, nin, nonlin=True):
        self.w = [Value(random.uniform(-1, 1)) for _ in range(nin)]
        self.b = Value(0.0)
        self.nonlin = nonlin

    def __call__(self, x):
        # The sum starts from the bias and adds w_i * x_i in order, as the demo does, so
        # that the forward pass rounds exactly as the demo's and prints the same losses.
        act = sum((wi * xi for wi, xi in zip(self.w, x)), self.b)
        return act.relu() if self.nonlin else act

    def parameters(self):
        return self.w + [self.b]

    def __repr__(self):
        return f"{'ReLU' if self.nonlin else 'Linear'}Neuron({len(self.w)})"


class Layer(Module):
    """nout neurons, each looking at the same nin inputs."""

    def __init__(self, nin, nout, **kwargs):
        self.neurons = [Neuron(nin, **kwargs) for _ in range(nout)]

    def __call__(self, x):
        out = [n(x) for n in self.neurons]
        return out[0] if len(out) == 1 else out  # a single output is a Value, not a list

    def parameters(self):
        return [p for n in self.neurons for p in n.parameters()]

    def __repr__(self):
        return f"Layer of [{', '.join(str(n) for n in self.neurons)}]"


class MLP(Module):
    """A multi-layer perceptron: ReLU hidden layers, a linear last layer.
    MLP(2, [16, 16, 1]) has 2*16+16 + 16*16+16 + 16+1 = 337 parameters."""

    def __init__(self, nin, nouts):
        sz = [nin] + nouts
        self.layers = [Layer(sz[i], sz[i + 1], nonlin=i != len(nouts) - 1)
                       for i in range(len(nouts))]

    def __call__(self, x):
        for layer in self.layers:
            x = layer(x)
        return x

    def parameters(self):
        return [p for layer in self.layers for p in layer.parameters()]

    def __repr__(self):
        return f"MLP of [{', '.join(str(layer) for layer in self.layers)}]"


# %% Training
def loss(model, X, y, alpha=1e-4):
    """The demo's loss on the whole dataset, and the accuracy.

    X is a list of [x0, x1] points, y a list of labels in {-1, +1}. The data loss is the
    SVM "max-margin" loss: a point costs relu(1 - y * score), nothing once its score
    has the right sign with a margin of 1. The L2 term alpha * sum(p**2) keeps the
    weights small."""
    inputs = [list(map(Value, xrow)) for xrow in X]
    scores = list(map(model, inputs))
    losses = [(1 + -yi * scorei).relu() for yi, scorei in zip(y, scores)]
    data_loss = sum(losses) * (1.0 / len(losses))
    reg_loss = alpha * sum(p * p for p in model.parameters())
    total_loss = data_loss + reg_loss
    accuracy = [(yi > 0) == (scorei.data > 0) for yi, scorei in zip(y, scores)]
    return total_loss, sum(accuracy) / len(accuracy)


@contextlib.contextmanager
def cycle_collector_paused():
    """Pause Python's cycle collector. Our graphs hold no reference cycles (a node points
    to its children and to a shared backward function, never back to itself), so
    reference counting frees each step's graph the moment it is dropped; the collector
    would only rescan the tens of thousands of live nodes again and again, which makes
    a training step over 3 times slower."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def train(model, X, y, steps, quiet=False):
    """Full-batch gradient descent, the learning rate going from 1.0 down towards 0.1
    (the demo's 1.0 - 0.9 * k / 100 for its 100 steps). Returns the losses and the
    accuracies before each update, and the seconds it took."""
    losses, accuracies = [], []
    start = time.perf_counter()
    with cycle_collector_paused():
        for k in range(steps):
            # forward
            total_loss, acc = loss(model, X, y)
            # backward
            model.zero_grad()
            total_loss.backward()
            # update (sgd)
            learning_rate = 1.0 - 0.9 * k / steps
            for p in model.parameters():
                p.data -= learning_rate * p.grad
            losses.append(cli.finite(total_loss.data))
            accuracies.append(acc)
            if not quiet:
                ms = 1000 * (time.perf_counter() - start) / (k + 1)
                left = cli.fmt_duration((steps - k - 1) * ms / 1000)
                print(f"step {k} loss {total_loss.data}, accuracy {acc*100}% "
                      f"| {ms:.0f} ms/step | {left} left", flush=True)
    return losses, accuracies, time.perf_counter() - start


# %% Sampling
def mlp_arrays(model):
    """The model's parameters as numpy arrays: one (W (nout, nin), b (nout,)) per layer."""
    return [(np.array([[w.data for w in n.w] for n in layer.neurons]),
             np.array([n.b.data for n in layer.neurons])) for layer in model.layers]


def predict(model, points):
    """The model's scores for many points at once, (n, 2) -> (n,): the same arithmetic
    as the Value graph, done by numpy on whole arrays (no graph, no gradients), fast
    enough to colour a grid of thousands of points."""
    h = np.asarray(points, dtype=np.float64)  # (n, nin)
    arrays = mlp_arrays(model)
    for i, (W, b) in enumerate(arrays):
        h = h @ W.T + b  # (n, nout)
        if i < len(arrays) - 1:
            h = np.maximum(h, 0.0)
    return h[:, 0]


# %% Figures
def plot_moons(model, X, y, path):
    """The points and the trained model's decision boundary (score = 0) over a grid."""
    plt = cli.pyplot()
    from matplotlib.colors import ListedColormap
    accuracy = np.mean((predict(model, X) > 0) == (y > 0))
    x_min, x_max = X[:, 0].min() - 0.5, X[:, 0].max() + 0.5
    y_min, y_max = X[:, 1].min() - 0.5, X[:, 1].max() + 0.5
    xx, yy = np.meshgrid(np.linspace(x_min, x_max, 300), np.linspace(y_min, y_max, 300))
    scores = predict(model, np.c_[xx.ravel(), yy.ravel()]).reshape(xx.shape)  # (300, 300)
    fig, ax = plt.subplots(figsize=(7, 3.8))
    regions = ax.contourf(xx, yy, (scores > 0).astype(float), levels=[-0.5, 0.5, 1.5],
                          cmap=ListedColormap(["#f4c7a1", "#b9d3ee"]), alpha=0.8)
    ax.contour(xx, yy, scores, levels=[0.0], colors="k", linewidths=1.2)
    for label, color, name in [(-1, "#d95f02", "y = -1 (outer moon)"),
                               (1, "#1f5fa8", "y = +1 (inner moon)")]:
        pts = X[y == label]
        ax.scatter(pts[:, 0], pts[:, 1], s=24, c=color, edgecolors="white",
                   linewidths=0.6, label=name)
    ax.plot([], [], color="k", lw=1.2, label="boundary (score = 0)")
    ax.set_xlim(x_min, x_max)
    ax.set_ylim(y_min, y_max)
    ax.set_xlabel("$x_0$ (feature 1, unitless)", fontsize=11)
    ax.set_ylabel("$x_1$ (feature 2, unitless)", fontsize=11)
    ax.set_title(f"MLP(2, [16, 16, 1]) decision regions on the moons\n"
                 f"training accuracy {accuracy * 100:.0f}%, {len(X)} points", fontsize=12)
    ax.tick_params(labelsize=10)
    ax.legend(loc="lower left", fontsize=10, framealpha=0.9)
    cbar = fig.colorbar(regions, ax=ax, ticks=[0, 1], fraction=0.05, pad=0.02)
    cbar.ax.set_yticklabels(["-1\n(score < 0)", "+1\n(score > 0)"], fontsize=10)
    cbar.set_label("predicted class", fontsize=11)
    cli.save_figure(fig, path)


def plot_curves(losses, accuracies, path):
    """Training loss (log scale) and accuracy per step."""
    plt = cli.pyplot()
    steps = np.arange(len(losses))
    marker = "." if len(losses) < 30 else None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(7, 3.8))
    ax1.plot(steps, losses, color="#1f5fa8", marker=marker, label="training loss")
    ax1.set_yscale("log")
    ax1.set_xlabel("step", fontsize=11)
    ax1.set_ylabel("loss (max-margin + L2, log scale)", fontsize=11)
    ax1.set_title(f"loss (last {losses[-1]:.4f})", fontsize=12)
    ax1.grid(alpha=0.3, which="both")
    ax2.plot(steps, [100 * a for a in accuracies], color="#d95f02", marker=marker,
             label="training accuracy")
    ax2.set_xlabel("step", fontsize=11)
    ax2.set_ylabel("accuracy (%)", fontsize=11)
    ax2.set_title(f"accuracy (last {100 * accuracies[-1]:.0f}%)", fontsize=12)
    ax2.set_ylim(min(40, 100 * min(accuracies) - 5), 102)
    ax2.grid(alpha=0.3)
    for ax in (ax1, ax2):
        ax.xaxis.get_major_locator().set_params(integer=True)  # steps are whole numbers
        ax.tick_params(labelsize=10)
    fig.suptitle("MLP on the moons: training curves", fontsize=13)
    fig.tight_layout()
    cli.save_figure(fig, path)


def graph_nodes(root):
    """Every Value of root's graph, children before parents, in a stable order."""
    order, seen, stack = [], set(), [(root, False)]
    while stack:
        v, done = stack.pop()
        if done:
            order.append(v)
        elif v not in seen:
            seen.add(v)
            stack.append((v, True))
            stack.extend((c, False) for c in reversed(v._prev))
    return order


def graph_layout(root):
    """A layered layout, left to right: each value node sits one column right of its
    deepest input (leaves one column left of their first user), with its operation
    drawn just before it. Rows are found in two sweeps: from the output leftwards, each
    column is ordered by where its users are (which keeps edges from crossing in a small
    graph); then from the inputs rightwards, each computed node moves to the mean row of
    its inputs, so that a small graph reads as a tree. Rows in a column stay at least one
    apart. Returns {node: (column, row)}."""
    nodes = graph_nodes(root)
    col = {}
    for v in nodes:  # children first
        col[v] = 1 + max(col[c] for c in v._prev) if v._prev else 0
    users = {v: [] for v in nodes}
    for v in nodes:
        for c in v._prev:
            users[c].append(v)
    for v in nodes:  # a leaf goes right next to its first user
        if not v._prev and users[v]:
            col[v] = min(col[u] for u in users[v]) - 1
    columns = sorted(set(col.values()))

    def place(column, want):
        """Rows for one column: in the order of `want` (a stable sort, ties keep the
        children's order), at least one apart, centred on the wanted rows."""
        column.sort(key=want.get)
        rows = []
        for v in column:
            rows.append(want[v] if not rows else max(want[v], rows[-1] + 1))
        shift = sum(want[v] - r for v, r in zip(column, rows)) / len(column)
        return {v: r + shift for v, r in zip(column, rows)}

    row = {root: 0.0}
    for c in reversed(columns):  # from the output leftwards
        column = [v for v in nodes if col[v] == c and v is not root]
        if column:  # every user of a node is in a column further right: it has its row
            want = {v: sum(row[u] for u in users[v]) / len(users[v]) for v in column}
            order = sorted(column, key=want.get)
            center = sum(want.values()) / len(column)
            row.update({v: center + i - (len(column) - 1) / 2 for i, v in enumerate(order)})
    for c in columns[1:]:  # from the inputs rightwards: a node between its inputs
        column = [v for v in nodes if col[v] == c]
        want = {v: sum(row[ch] for ch in v._prev) / len(v._prev) if v._prev else row[v]
                for v in column}
        row.update(place(column, want))
    return {v: (col[v], row[v]) for v in nodes}


def draw_graph(root, path, title):
    """The expression graph as the lecture draws it with Graphviz, but with matplotlib
    alone, shaped for a slide: a box per Value (its label over its data and its grad),
    a circle per operation, arrows from inputs to outputs, inputs on the left. The axes
    are measured in inches: box sizes come from the measured text, and the rows spread
    out until the figure is about 16:9."""
    plt = cli.pyplot()
    from matplotlib.patches import Circle, FancyBboxPatch
    pos = graph_layout(root)
    size, op_size = 11, 12  # font sizes in points: box text, operation symbols
    fig = plt.figure()
    ax = fig.add_axes([0, 0, 1, 1])
    ax.set_axis_off()
    renderer = fig.canvas.get_renderer()

    def width(text):  # inches
        return text.get_window_extent(renderer).width / fig.dpi

    texts = {}
    for v in pos:  # the three lines of each box, placed once the layout is known
        texts[v] = [ax.text(0, 0, v.label or "", size=size, weight="bold", ha="center",
                            va="center"),
                    ax.text(0, 0, f"data {v.data:7.4f}", size=size, family="monospace",
                            ha="center", va="center"),
                    ax.text(0, 0, f"grad {v.grad:7.4f}", size=size, family="monospace",
                            ha="center", va="center", color="#b2182b")]
    ops = {v: ax.text(0, 0, v._op, size=op_size, weight="bold", ha="center", va="center")
           for v in pos if v._prev}
    line = 1.45 * size / 72  # inches between text lines
    ncols = max(c for c, _ in pos.values()) + 1
    box_w = [max(width(t) for v, (c, _) in pos.items() if c == i for t in texts[v]) + 0.18
             for i in range(ncols)]  # one width per column
    box_h = 3 * line + 0.18
    radius = max([0.2] + [width(t) / 2 + 0.09 for t in ops.values()])
    gap = 0.18  # inches between a box and an op circle
    link = 2 * gap + 2 * radius  # the space between two columns, with its op circle
    margin, header = 0.1, 0.8  # inches; the header holds the title and the key
    left = [margin + sum(box_w[:i]) + i * link for i in range(ncols)]  # box left edges
    top = max(r for _, r in pos.values())
    span = top - min(r for _, r in pos.values())
    fig_w = left[-1] + box_w[-1] + margin
    # rows at least a box and a bit apart, spread out to reach about 16:9
    free = fig_w * 9 / 16 - header - 2 * margin - box_h
    pitch = min(max(box_h + 0.25, free / span if span else 0), 2.5 * box_h)
    fig_h = header + 2 * margin + box_h + span * pitch
    fig.set_size_inches(fig_w, fig_h)
    ax.set_xlim(0, fig_w)
    ax.set_ylim(0, fig_h)

    def center(v):
        c, r = pos[v]
        return left[c] + box_w[c] / 2, margin + box_h / 2 + (top - r) * pitch

    boxes = {}
    for v in pos:
        (x, y), w = center(v), box_w[pos[v][0]]
        leaf, out = not v._prev, v is root
        boxes[v] = FancyBboxPatch((x - w / 2, y - box_h / 2), w, box_h,
                                  boxstyle="round,pad=0,rounding_size=0.06",
                                  fc="#e8f3e4" if leaf else "#eef3fb",
                                  ec="#2e7d32" if leaf else "#1f5fa8", lw=2.2 if out else 1.2)
        ax.add_patch(boxes[v])
        ax.plot([x - w / 2, x + w / 2], [y + line / 2] * 2, lw=0.8,
                color=boxes[v].get_edgecolor())  # under the label, as a record's divider
        for t, dy in zip(texts[v], [line, 0, -line]):
            t.set_position((x, y + dy + (0.03 if dy > 0 else -0.03)))

    arrow = dict(arrowstyle="-|>", mutation_scale=14, color="#555555", lw=1.1,
                 shrinkA=0, shrinkB=0)
    for v, op in ops.items():
        x, y = center(v)
        ox = left[pos[v][0]] - gap - radius  # the op circle, in the gap before the box
        circle = Circle((ox, y), radius, fc="#fdebd3", ec="#d95f02", lw=1.2)
        ax.add_patch(circle)
        op.set_position((ox, y))
        ax.annotate("", xy=(left[pos[v][0]], y), xytext=(ox + radius, y),
                    arrowprops=arrow)
        for child in v._prev:
            c, (_, cy) = pos[child][0], center(child)
            ax.annotate("", xy=(ox, y), xytext=(left[c] + box_w[c], cy),
                        arrowprops=dict(arrow, patchB=circle))
    ax.text(fig_w / 2, fig_h - 0.12, title, ha="center", va="top", size=14)
    name = root.label or "output"
    ax.text(fig_w / 2, fig_h - 0.5, f"box: label, data (forward pass), grad = "
            f"d{name}/d(box) (backward pass); circle: the operation; green: inputs and "
            f"parameters", ha="center", va="top", size=11, color="#444444")
    cli.save_figure(fig, path)


def dot_escape(text):
    """Text made safe inside a quoted DOT record label (braces, bars and angle brackets
    are record syntax there)."""
    for ch in '\\"{}|<>':
        text = text.replace(ch, "\\" + ch)
    return text


def graph_to_dot(root, title=""):
    """The same graph as Graphviz DOT text, for those who have Graphviz:
    `dot -Tpng graph.dot -o graph_dot.png` draws it as the lecture does."""
    nodes = graph_nodes(root)
    name = {v: f"n{i}" for i, v in enumerate(nodes)}
    lines = ["digraph micrograd {", f'  label="{dot_escape(title)}";', "  labelloc=t;",
             "  rankdir=LR;  // left to right, inputs first",
             '  node [shape=record, fontname="monospace"];']
    for v in nodes:
        label = f"{dot_escape(v.label)} | " if v.label else ""
        lines.append(f'  {name[v]} [label="{{ {label}data {v.data:.4f} '
                     f'| grad {v.grad:.4f} }}"];')
        if v._prev:  # an operation node feeding the value, as in the lecture's drawing
            lines.append(f'  {name[v]}_op [label="{dot_escape(v._op)}", shape=circle];')
            lines.append(f"  {name[v]}_op -> {name[v]};")
            for c in v._prev:
                lines.append(f"  {name[c]} -> {name[v]}_op;")
    lines.append("}")
    return "\n".join(lines) + "\n"


# %% Main
def lecture_examples():
    """Run the lecture's worked examples and print what the video shows."""
    slope = numerical_derivative(f, 3.0)
    print(f"f(x) = 3x^2 - 4x + 5: f(3.0) = {f(3.0)}, slope (f(x+h) - f(x))/h with "
          f"h = 0.0001: {slope} (exactly 6x - 4 = 14)")
    L = lecture_expression()
    g = {k: v.grad for k, v in leaves(L).items()}
    print(f"L = (a*b + c) * f = {L.data}: dL/da {g['a']}, dL/db {g['b']}, "
          f"dL/dc {g['c']}, dL/df {g['f']}")
    o = tanh_neuron()
    n = {k: v.grad for k, v in leaves(o).items()}
    print(f"tanh neuron: o = {o.data}: do/dx1 {n['x1']:.4f}, do/dw1 {n['w1']:.4f}, "
          f"do/dx2 {n['x2']:.4f}, do/dw2 {n['w2']:.4f}")
    return dict(f3=f(3.0), slope=slope, L=L.data, L_grads=g, o=o.data, o_grads=n), o


def main(argv=None) -> dict:
    """Run the lecture's examples and the moons demo; write the figures and graph.dot.
    Returns the printed numbers (losses, accuracies, parameter count, timings, files)."""
    cfg = cli.parse_config(Config, argv, __doc__, prog="01_micrograd/train.py")
    out = cli.out_dir(cfg.out)  # fail now on an unusable folder, not after training

    print("== The lecture's worked examples")
    examples, neuron = lecture_examples()

    print(f"\n== The moons demo: {cfg.samples} points, MLP(2, [16, 16, 1]), "
          f"{cfg.steps} steps, seed {cfg.seed}")
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)
    X, y = make_moons(n_samples=cfg.samples, noise=cfg.noise)
    y = y * 2 - 1  # labels -1 and +1
    model = MLP(2, [16, 16, 1])  # its weights come from random.uniform, in this order
    n_params = len(model.parameters())
    print(model)
    print(f"number of parameters {n_params}")
    # Python floats and ints carry exactly the numpy values, and are faster to compute with
    losses, accuracies, seconds = train(model, X.tolist(), y.tolist(), cfg.steps)
    print(f"final (step {cfg.steps - 1}): loss {losses[-1]}, accuracy "
          f"{accuracies[-1] * 100}%; {seconds:.1f}s, "
          f"{1000 * seconds / cfg.steps:.0f} ms/step")

    files = [out / "graph.dot"]
    cli.write_text(files[0], graph_to_dot(neuron, "o = tanh(x1*w1 + x2*w2 + b)"))
    if cfg.plots:
        figures = [out / f"moons.{cfg.format}", out / f"curves.{cfg.format}", out / f"graph.{cfg.format}"]
        plot_moons(model, X, y, figures[0])
        plot_curves(losses, accuracies, figures[1])
        draw_graph(neuron, figures[2], "the lecture's neuron o = tanh(x1*w1 + x2*w2 + b), "
                                       "after o.backward()")
        files += figures
    print("wrote " + ", ".join(str(p) for p in files))
    return dict(config=asdict(cfg), examples=examples, parameters=n_params, losses=losses,
                accuracies=accuracies, final_loss=losses[-1], final_accuracy=accuracies[-1],
                seconds=seconds, ms_per_step=1000 * seconds / cfg.steps,
                files=[str(p) for p in files])


if __name__ == "__main__":
    cli.run(main)
