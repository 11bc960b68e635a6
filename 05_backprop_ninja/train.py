"""Stage 05: becoming a backprop ninja: the backward pass, written by hand.

Follows "Building makemore Part 4: Becoming a Backprop Ninja" (makemore part 4). New over
stage 04: stage 04's BatchNorm MLP is cut into its atomic steps and backpropagated by hand,
one line of numpy per step, with every manual gradient compared with the engine's
(exercise 1); cross-entropy (exercise 2) and BatchNorm (exercise 3) each get a backward
pass of one formula, derived on paper; and finally the network trains with the manual
backward pass alone, no autograd at all (exercise 4). Our Tensor engine plays the part
PyTorch's autograd plays in the lecture: the reference the hand-written gradients are
checked against. The engine gains `max` (values and indices) and, from exercises 2 and 3,
`cross_entropy` and `batch_norm` as single ops with their one-formula backward passes,
which the stages after this one use.

    python 05_backprop_ninja/train.py                    # the four exercises, in order
    python 05_backprop_ninja/train.py --exercise 1       # only one of them
    python 05_backprop_ninja/train.py --exercise 4 --backward engine  # loss.backward()

What the default run prints (measured; about 1.5 minutes on a 2-core CPU):
    the exercise network: 4137 parameters, loss 3.5571 on one batch of 32
    exercise 1: all 26 manual gradients bitwise equal to the engine's (maxdiff 0.0)
    exercise 2: dlogits in one step, maxdiff 1.0e-08 from the engine's (lecture: ~5e-9);
                every row sums to 0
    exercise 3: dhprebn in one line, maxdiff 9.3e-10 (lecture: ~9e-10)
    exercise 4: 12297 parameters, 200,000 steps without autograd: train 2.0711, val 2.1119
                (lecture: 2.0705, 2.1099), at 0.20 ms/step of CPU (the engine: 0.35)
    samples: carlah. amelle. khi. mri. reigh. skanden. jazhitlalee. arci. aqui. ner. ...
(PyTorch 2.13, running the lecture's loop from the same initial parameters and batches,
ends at the same train 2.0711 and val 2.1119.)
"""

# %% Imports
from __future__ import annotations

import os
import sys
import time
from collections import namedtuple
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
EXERCISES = (0, 1, 2, 3, 4)       # 0 runs all four, in the lecture's order
BACKWARDS = ("manual", "engine")  # exercise 4: who computes the gradients


@dataclass
class Config:
    exercise: int = cli.arg(0, "which exercise to run: 1 backpropagate through every atomic "
                               "step by hand, 2 cross-entropy in one step, 3 BatchNorm in "
                               "one step, 4 train with the manual backward pass only; 0 "
                               "runs all four", choices=EXERCISES)
    block_size: int = cli.arg(3, "context length: how many characters predict the next",
                              min=1, max=32)
    n_embd: int = cli.arg(10, "dimensions of each character's embedding", min=1, max=1000)
    ex_hidden: int = cli.arg(64, "exercises 1-3: neurons in the hidden layer of the network "
                                 "backpropagated by hand", min=1, max=10_000)
    n_hidden: int = cli.arg(200, "exercise 4: neurons in the hidden tanh layer", min=1,
                            max=10_000)
    steps: int = cli.arg(200_000, "exercise 4: training steps (minibatches)", min=0)
    batch_size: int = cli.arg(32, "examples per minibatch (BatchNorm's variance divides by "
                                  "n - 1: one example has no spread)", min=2, max=100_000)
    lr: float = cli.arg(0.1, "learning rate", min=1e-9, max=1e6)
    lr_decay_step: int = cli.arg(100_000, "from this step on the learning rate is lr / 10",
                                 min=0)
    backward: str = cli.arg("manual", "exercise 4: how the gradients are computed: manual "
                                      "(the formulas of exercises 1-3, no autograd) or "
                                      "engine (loss.backward(), for comparison)",
                            choices=BACKWARDS)
    seed: int = cli.arg(2147483647, "seed of the generator (the lecture's 2147483647)",
                        min=0, max=2**64 - 1)
    samples: int = cli.arg(20, "names to sample after training", min=0, max=10_000)
    out: str = cli.arg("out/05_backprop_ninja", "output folder for figures and the checkpoint")
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
def init_params(cfg, g, n_hidden):
    """The lecture's parameters for this exercise, drawn in its order from generator g.
    Unlike stage 04's, every one is a small random number, even b2 and bnbias (zeros in
    stage 04) and b1, which BatchNorm makes useless (it subtracts the batch mean, and b1
    with it): with zeros, a wrong term in a manual gradient can be multiplied by zero
    and go unnoticed. The lecture draws bngain and bnbias from torch's unseeded global
    generator; here they come from g, after the others, so that every number repeats."""
    fan_in = cfg.block_size * cfg.n_embd
    C = rng.randn(27, cfg.n_embd, generator=g)                    # (27, n_embd) embedding
    # in the lecture's order: multiply by tanh's gain 5/3, then divide by sqrt(fan_in)
    W1 = rng.randn(fan_in, n_hidden, generator=g) * (5 / 3) / fan_in**0.5  # (30, n_hidden)
    b1 = rng.randn(n_hidden, generator=g) * 0.1                   # (n_hidden,) just for fun
    W2 = rng.randn(n_hidden, 27, generator=g) * 0.1               # (n_hidden, 27)
    b2 = rng.randn(27, generator=g) * 0.1                         # (27,)
    bngain = rng.randn(1, n_hidden, generator=g) * 0.1 + 1.0      # (1, n_hidden)
    bnbias = rng.randn(1, n_hidden, generator=g) * 0.1            # (1, n_hidden)
    params = dict(C=C, W1=W1, b1=b1, W2=W2, b2=b2, bngain=bngain, bnbias=bnbias)
    return {name: Tensor(p, requires_grad=True) for name, p in params.items()}


def forward_steps(params, Xb, Yb):
    """The lecture's forward pass, chopped into steps small enough to backpropagate
    through by hand. Returns every intermediate tensor by name, in order, the loss last;
    after loss.backward() each holds its gradient (retain_grad(), as in the lecture)."""
    C, W1, b1, W2, b2, bngain, bnbias = params.values()   # in the lecture's order
    n = len(Xb)                                           # batch size, 32
    emb = C[Xb]                                           # (32, 3, 10) embed the characters
    embcat = emb.view(emb.shape[0], -1)                   # (32, 30) concatenate them
    # Linear layer 1
    hprebn = embcat @ W1 + b1                             # (32, 64) pre-BatchNorm
    # BatchNorm layer
    bnmeani = 1 / n * hprebn.sum(0, keepdim=True)         # (1, 64)
    bndiff = hprebn - bnmeani                             # (32, 64)
    bndiff2 = bndiff**2                                   # (32, 64)
    bnvar = 1 / (n - 1) * bndiff2.sum(0, keepdim=True)    # (1, 64) Bessel: n - 1, not n
    bnvar_inv = (bnvar + 1e-5)**-0.5                      # (1, 64)
    bnraw = bndiff * bnvar_inv                            # (32, 64)
    hpreact = bngain * bnraw + bnbias                     # (32, 64)
    # non-linearity
    h = hpreact.tanh()                                    # (32, 64) hidden layer
    # Linear layer 2
    logits = h @ W2 + b2                                  # (32, 27) output layer
    # cross-entropy loss, the same as cross_entropy(logits, Yb)
    logit_maxes = logits.max(1, keepdim=True).values      # (32, 1)
    norm_logits = logits - logit_maxes                    # (32, 27) for numerical stability
    counts = norm_logits.exp()                            # (32, 27)
    counts_sum = counts.sum(1, keepdim=True)              # (32, 1)
    # **-1 rather than 1 / counts_sum, whose backward pass rounds differently: a
    # manual gradient could then only be close to the engine's, not equal
    counts_sum_inv = counts_sum**-1                       # (32, 1)
    probs = counts * counts_sum_inv                       # (32, 27)
    logprobs = probs.log()                                # (32, 27)
    loss = -logprobs[range(n), Yb].mean()                 # ()
    for t in [logprobs, probs, counts, counts_sum, counts_sum_inv, norm_logits,
              logit_maxes, logits, h, hpreact, bnraw, bnvar_inv, bnvar, bndiff2, bndiff,
              hprebn, bnmeani, embcat, emb]:
        t.retain_grad()  # keep every intermediate gradient, to compare ours with
    return dict(emb=emb, embcat=embcat, hprebn=hprebn, bnmeani=bnmeani, bndiff=bndiff,
                bndiff2=bndiff2, bnvar=bnvar, bnvar_inv=bnvar_inv, bnraw=bnraw,
                hpreact=hpreact, h=h, logits=logits, logit_maxes=logit_maxes,
                norm_logits=norm_logits, counts=counts, counts_sum=counts_sum,
                counts_sum_inv=counts_sum_inv, probs=probs, logprobs=logprobs, loss=loss)


def forward(params, X, bnstats=None):
    """Logits (N, 27) for contexts X (N, block_size), with the engine: exercise 4's
    network, BatchNorm in a few lines. Without `bnstats` (training) BatchNorm uses this
    batch's mean and unbiased variance; with them, those (the statistics calibrated over
    the training set, for evaluation and sampling)."""
    emb = params["C"][X]                                  # (N, block_size, n_embd)
    embcat = emb.view(emb.shape[0], -1)                   # (N, block_size * n_embd)
    hprebn = embcat @ params["W1"] + params["b1"]         # (N, n_hidden)
    if bnstats is None:
        bnmean = hprebn.mean(0, keepdim=True)             # (1, n_hidden)
        bnvar = hprebn.var(0, keepdim=True)               # (1, n_hidden) 1/(n-1), as above
    else:
        bnmean, bnvar = bnstats["mean"], bnstats["var"]
    bnvar_inv = (bnvar + 1e-5)**-0.5                      # (1, n_hidden)
    bnraw = (hprebn - bnmean) * bnvar_inv                 # (N, n_hidden)
    hpreact = params["bngain"] * bnraw + params["bnbias"]  # (N, n_hidden)
    h = hpreact.tanh()                                    # (N, n_hidden)
    return h @ params["W2"] + params["b2"]                # (N, 27)


def evaluate(params, X, Y, bnstats):
    with no_grad():
        return cross_entropy(forward(params, X, bnstats), Y).item()


def calibrate(params, Xtr):
    """The lecture's BatchNorm statistics for evaluation: after training, measure each
    neuron's mean and variance once over the whole training set."""
    with no_grad():
        emb = params["C"][Xtr]                            # (182625, block_size, n_embd)
        hprebn = emb.view(emb.shape[0], -1) @ params["W1"] + params["b1"]  # (182625, 200)
        return {"mean": hprebn.mean(0, keepdim=True).data,
                "var": hprebn.var(0, keepdim=True).data}


def batch_variance_ratio(params, Xtr, stats, n, seed, batches=5000, chunk=500):
    """Bessel's correction, measured: the variance of each neuron over a batch of n
    random training examples, divided by n - 1 and by n, relative to the variance over
    the whole training set, averaged over `batches` batches and over the neurons. With
    n - 1 the batch variance is right on average (ratio ~1): training normalizes by the
    same scale on average as the calibrated statistics do at test time."""
    C, W1, b1 = (params[k].data for k in ("C", "W1", "b1"))
    ix = np.random.default_rng(seed).integers(0, len(Xtr), (batches, n))
    sums = {"n - 1": 0.0, "n": 0.0}
    for i in range(0, batches, chunk):
        emb = C[Xtr[ix[i:i + chunk]]]                     # (chunk, n, block_size, n_embd)
        hprebn = emb.reshape(*emb.shape[:2], -1) @ W1 + b1   # (chunk, n, n_hidden)
        for name, ddof in (("n - 1", 1), ("n", 0)):
            var = hprebn.var(axis=1, ddof=ddof, dtype=np.float64)  # (chunk, n_hidden)
            sums[name] += (var / stats["var"]).sum(0)     # (n_hidden,) over the batches
    return {name: float(s.mean() / batches) for name, s in sums.items()}


# %% Model: the backward pass by hand
def cmp(name, manual, t):
    """The lecture's check of a manual gradient against the engine's (t.grad): bitwise
    equal, equal within rounding (np.allclose with torch.allclose's rtol 1e-5 and atol
    1e-8), and the largest difference. Unlike torch's, a shape mismatch is an error: a
    gradient always has its tensor's shape."""
    if manual.shape != t.grad.shape:
        raise ValueError(f"d{name} has shape {manual.shape}, but {name} {t.grad.shape}")
    exact = bool(np.all(manual == t.grad))
    approximate = bool(np.allclose(manual, t.grad, rtol=1e-5, atol=1e-8))
    maxdiff = float(np.abs(manual - t.grad).max())
    print(f"  {name:15s} | exact: {str(exact):5s} | approximate: {str(approximate):5s} | "
          f"maxdiff: {maxdiff}")
    return dict(name=name, exact=exact, approximate=approximate, maxdiff=maxdiff)


def softmax(x):
    """Each row's softmax, in numpy (F.softmax(x, 1)): exp of the row minus its max,
    normalized to sum to 1."""
    counts = np.exp(x - x.max(axis=1, keepdims=True))     # (N, 27)
    return counts / counts.sum(axis=1, keepdims=True)


def backward_by_hand(params, t, Xb, Yb):
    """Exercise 1: the gradient of the loss with respect to every intermediate and every
    parameter, from the loss back to C, one line per forward step. Each line is the
    chain rule: the gradient arriving from above times the step's local derivative; a
    tensor used twice adds up both gradients (`+=`), and a tensor that was broadcast in
    the forward pass sums its gradient over the broadcast dimension. Plain numpy on the
    values `t` of forward_steps: no engine, no graph. Returns the 26 gradients by name."""
    C, W1, b1, W2, b2, bngain, bnbias = (p.data for p in params.values())
    (emb, embcat, hprebn, bnmeani, bndiff, bndiff2, bnvar, bnvar_inv, bnraw, hpreact, h,
     logits, logit_maxes, norm_logits, counts, counts_sum, counts_sum_inv, probs,
     logprobs, loss) = (x.data for x in t.values())
    n = len(Xb)
    # loss = -(logprobs[0, Yb[0]] + ... + logprobs[n-1, Yb[n-1]]) / n
    dlogprobs = np.zeros_like(logprobs)                   # (32, 27) the others: no effect
    dlogprobs[range(n), Yb] = -1.0 / n
    # d log(x) = 1/x. The lecture's (1.0 / probs) * dlogprobs rounds twice; it is the
    # same number only while 1/n is a power of two (n = 32), so divide, as the engine does
    dprobs = dlogprobs / probs                            # (32, 27)
    # probs = counts * counts_sum_inv: (32, 27) * (32, 1), broadcast along rows
    dcounts_sum_inv = (counts * dprobs).sum(1, keepdims=True)  # (32, 1) so summed
    dcounts = counts_sum_inv * dprobs                     # counts' first use ...
    dcounts_sum = (-counts_sum**-2) * dcounts_sum_inv     # d x**-1 = -x**-2
    dcounts += np.ones_like(counts) * dcounts_sum         # ... and its second, in the sum
    dnorm_logits = counts * dcounts                       # d exp(x) = exp(x) = counts
    dlogits = dnorm_logits.copy()                         # logits' first use ...
    dlogit_maxes = (-dnorm_logits).sum(1, keepdims=True)  # (32, 1) broadcast: summed
    # ... and its second: the max picked one element per row, which gets the gradient
    dlogits += one_hot(logits.argmax(1), logits.shape[1]) * dlogit_maxes
    # logits = h @ W2 + b2: the matrix products' shapes fit only one way
    dh = dlogits @ W2.T                                   # (32, 64)
    dW2 = h.T @ dlogits                                   # (64, 27)
    db2 = dlogits.sum(0)                                  # (27,)
    dhpreact = (1.0 - h**2) * dh                          # d tanh(x) = 1 - tanh(x)**2
    # hpreact = bngain * bnraw + bnbias: (1, 64) broadcast along the batch: summed
    dbngain = (bnraw * dhpreact).sum(0, keepdims=True)    # (1, 64)
    dbnraw = bngain * dhpreact                            # (32, 64)
    dbnbias = dhpreact.sum(0, keepdims=True)              # (1, 64)
    dbndiff = bnvar_inv * dbnraw                          # bndiff's first use ...
    dbnvar_inv = (bndiff * dbnraw).sum(0, keepdims=True)  # (1, 64)
    dbnvar = (-0.5 * (bnvar + 1e-5)**-1.5) * dbnvar_inv   # d x**-0.5 = -0.5 x**-1.5
    dbndiff2 = (1.0 / (n - 1)) * np.ones_like(bndiff2) * dbnvar   # a sum: to every term
    dbndiff += (2 * bndiff) * dbndiff2                    # ... and its second, squared
    dhprebn = dbndiff.copy()                              # hprebn's first use ...
    dbnmeani = (-dbndiff).sum(0, keepdims=True)           # (1, 64); the lecture's .sum(0) is (64,)
    dhprebn += 1.0 / n * (np.ones_like(hprebn) * dbnmeani)   # ... and its second, the mean
    # hprebn = embcat @ W1 + b1
    dembcat = dhprebn @ W1.T                              # (32, 30)
    dW1 = embcat.T @ dhprebn                              # (30, 64)
    db1 = dhprebn.sum(0)                                  # (64,)
    demb = dembcat.reshape(emb.shape)                     # (32, 3, 10) undo the view
    # emb = C[Xb]: each row of C gets the gradients of every place it was picked
    dC = np.zeros_like(C)                                 # (27, 10)
    for k in range(Xb.shape[0]):
        for j in range(Xb.shape[1]):
            ix = Xb[k, j]
            dC[ix] += demb[k, j]
    return dict(logprobs=dlogprobs, probs=dprobs, counts_sum_inv=dcounts_sum_inv,
                counts_sum=dcounts_sum, counts=dcounts, norm_logits=dnorm_logits,
                logit_maxes=dlogit_maxes, logits=dlogits, h=dh, W2=dW2, b2=db2,
                hpreact=dhpreact, bngain=dbngain, bnbias=dbnbias, bnraw=dbnraw,
                bnvar_inv=dbnvar_inv, bnvar=dbnvar, bndiff2=dbndiff2, bndiff=dbndiff,
                bnmeani=dbnmeani, hprebn=dhprebn, embcat=dembcat, W1=dW1, b1=db1,
                emb=demb, C=dC)


def cross_entropy_backward(logits, Yb):
    """Exercise 2: the gradient of the mean cross-entropy with respect to the logits in
    one step, worked out on paper: d loss / d logits[i, j] = (softmax(logits)[i, j] -
    (1 if j == Yb[i] else 0)) / n. Each example pulls its right character's logit up
    by 1 - p and pushes every other logit down by its p: the forces balance (each row
    sums to zero), and an example whose right character already has probability 1
    pulls and pushes nothing."""
    n = len(Yb)
    dlogits = softmax(logits)                             # (32, 27)
    dlogits[range(n), Yb] -= 1
    dlogits /= n
    return dlogits


def batchnorm_backward(dhpreact, bngain, bnvar_inv, bnraw):
    """Exercise 3: BatchNorm's input gradient in one line, worked out on paper: every
    output of a neuron depends on every input of the batch, through the batch mean and
    variance. The n / (n - 1) is Bessel's correction of the variance showing up in the
    gradient. The engine's batch_norm op, new in this stage, uses this formula for its
    backward pass."""
    n = dhpreact.shape[0]
    return bngain * bnvar_inv / n * (n * dhpreact - dhpreact.sum(0)
                                     - n / (n - 1) * bnraw * (dhpreact * bnraw).sum(0))


def manual_backward(params, Xb, Yb):
    """Exercise 4's forward and backward pass without any autograd: numpy on the
    parameters' arrays, the forward pass as forward() computes it, the backward pass
    with the one-step formulas of exercises 2 and 3. Returns the loss and the gradients
    in the parameters' order (C, W1, b1, W2, b2, bngain, bnbias)."""
    C, W1, b1, W2, b2, bngain, bnbias = (p.data for p in params.values())
    n = len(Xb)
    # forward pass: the same numpy operations as the engine's, so the same numbers
    emb = C[Xb]                                           # (32, 3, 10)
    embcat = emb.reshape(n, -1)                           # (32, 30)
    hprebn = embcat @ W1 + b1                             # (32, 200)
    bnmean = hprebn.mean(0, keepdims=True)                # (1, 200)
    bnvar = _spread(hprebn, 0, ddof=1)                    # (1, 200) as Tensor.var does
    bnvar_inv = (bnvar + 1e-5)**-0.5                      # (1, 200)
    bnraw = (hprebn - bnmean) * bnvar_inv                 # (32, 200)
    hpreact = bngain * bnraw + bnbias                     # (32, 200)
    h = np.tanh(hpreact)                                  # (32, 200)
    logits = h @ W2 + b2                                  # (32, 27)
    loss = cross_entropy(Tensor(logits), Yb).item()       # its value only: no graph
    # backward pass
    dlogits = cross_entropy_backward(logits, Yb)          # (32, 27)
    dh = dlogits @ W2.T                                   # 2nd layer
    dW2 = h.T @ dlogits
    db2 = dlogits.sum(0)
    dhpreact = (1.0 - h**2) * dh                          # tanh
    dbngain = (bnraw * dhpreact).sum(0, keepdims=True)    # BatchNorm
    dbnbias = dhpreact.sum(0, keepdims=True)
    dhprebn = batchnorm_backward(dhpreact, bngain, bnvar_inv, bnraw)
    dembcat = dhprebn @ W1.T                              # 1st layer
    dW1 = embcat.T @ dhprebn
    db1 = dhprebn.sum(0)
    demb = dembcat.reshape(emb.shape)                     # embedding
    dC = np.zeros_like(C)
    np.add.at(dC, Xb, demb)  # exercise 1's double loop, in one call (same order of sums)
    return loss, [dC, dW1, db1, dW2, db2, dbngain, dbnbias]


# %% Model: stage 04's layers
# Not used by this lecture, which takes the network apart by hand; stage 06 builds on them.
class Linear:
    """torch.nn.Linear's computation, x @ weight + bias, with weights drawn from `generator`
    and divided by sqrt(fan_in): unit-variance inputs then give unit-variance outputs."""

    def __init__(self, fan_in, fan_out, bias=True, generator=None):
        self.weight = Tensor(rng.randn(fan_in, fan_out, generator=generator) / fan_in**0.5,
                             requires_grad=True)          # (fan_in, fan_out)
        self.bias = Tensor(np.zeros(fan_out, dtype=np.float32), requires_grad=True) \
            if bias else None

    def __call__(self, x):
        self.out = x @ self.weight
        if self.bias is not None:
            self.out = self.out + self.bias
        return self.out

    def parameters(self):
        return [self.weight] + ([] if self.bias is None else [self.bias])


class BatchNorm1d:
    """torch.nn.BatchNorm1d, as the lecture writes it: every feature is normalized over
    the batch, then scaled and shifted by the trained gamma and beta. While `training`,
    the batch's mean and variance are used and the running buffers follow them with
    `momentum`; otherwise the buffers are used."""

    def __init__(self, dim, eps=1e-5, momentum=0.1):
        self.eps, self.momentum = eps, momentum
        self.training = True
        # parameters (trained with backprop)
        self.gamma = Tensor(np.ones(dim, dtype=np.float32), requires_grad=True)
        self.beta = Tensor(np.zeros(dim, dtype=np.float32), requires_grad=True)
        # buffers (trained with a running "momentum update")
        self.running_mean = np.zeros(dim, dtype=np.float32)
        self.running_var = np.ones(dim, dtype=np.float32)

    def __call__(self, x):
        # calculate the forward pass
        if self.training:
            xmean = x.mean(0, keepdim=True)               # (1, dim) batch mean
            xvar = x.var(0, keepdim=True)                 # (1, dim) batch variance
        else:
            xmean, xvar = Tensor(self.running_mean), Tensor(self.running_var)
        xhat = (x - xmean) / (xvar + self.eps).sqrt()     # normalize to unit variance
        self.out = self.gamma * xhat + self.beta
        # update the buffers (numpy on .data: no graph, torch.no_grad() in the lecture)
        if self.training:
            m = self.momentum
            self.running_mean = (1 - m) * self.running_mean + m * xmean.data[0]
            self.running_var = (1 - m) * self.running_var + m * xvar.data[0]
        return self.out

    def parameters(self):
        return [self.gamma, self.beta]


class Tanh:
    def __call__(self, x):
        self.out = x.tanh()
        return self.out

    def parameters(self):
        return []


# %% Training
def learning_rate(cfg, step):
    """The lecture's schedule: lr for the first lr_decay_step steps, then lr / 10."""
    return cfg.lr if step < cfg.lr_decay_step else cfg.lr / 10


def sgd_step(params, X, Y, lr):
    """One minibatch step with the engine: forward, zero the gradients, backward, update."""
    loss = cross_entropy(forward(params, X), Y)
    for p in params.values():
        p.grad = None
    loss.backward()
    for p in params.values():
        p.data += -lr * p.grad
    return loss.item()


def manual_step(params, X, Y, lr):
    """One minibatch step with the gradients computed by hand: no graph, no backward()."""
    loss, grads = manual_backward(params, X, Y)
    for p, grad in zip(params.values(), grads):
        p.data += -lr * grad
    return loss


def train(cfg, params, Xtr, Ytr, g, quiet=False):
    """Minibatch gradient descent; the minibatch indices come from generator g. The
    gradients come from manual_step, or with --backward engine from sgd_step."""
    step = manual_step if cfg.backward == "manual" else sgd_step
    lossi = []
    progress = cli.Progress(cfg.steps, every=10_000, quiet=quiet)
    for i in range(cfg.steps):
        ix = rng.randint(0, Xtr.shape[0], (cfg.batch_size,), generator=g)  # (32,)
        lr = learning_rate(cfg, i)
        loss = step(params, Xtr[ix], Ytr[ix], lr)
        lossi.append(loss)
        progress.update(i, loss, lr)
    return lossi


def save_model(path, params, stats, cfg):
    """The parameters, BatchNorm's calibrated statistics and the config, in one file."""
    arrays = {n: p.data for n, p in params.items()}
    arrays.update(bnmean=stats["mean"], bnvar=stats["var"])
    cli.save_checkpoint(path, arrays, dict(config=asdict(cfg)))


def check_gradients(params, Xb, Yb):
    """The lecture's safety net before training by hand: the manual gradients of one
    batch against the engine's (loss.backward()), parameter by parameter."""
    _, grads = manual_backward(params, Xb, Yb)
    loss = cross_entropy(forward(params, Xb), Yb)
    loss.backward()
    rows = [cmp(name, grad, p) for (name, p), grad in zip(params.items(), grads)]
    # b1's true gradient is zero: BatchNorm subtracts the batch mean, and b1 with it. Both
    # sides are float32 rounding noise around 0, too small for allclose's atol 1e-8 to
    # call them equal, or not, reliably
    noise = max(np.abs(grads[2]).max(), np.abs(params["b1"].grad).max())
    print(f"  (b1 should get exactly 0: both gradients are rounding noise, at most "
          f"{noise:.1e})")
    for p in params.values():
        p.grad = None  # training by hand never reads them
    return rows


# %% Sampling
def sample_names(model, cfg, n, itos, max_len=100):
    """Sample n names: start from a context of '.', draw the next character from the
    softmax with torch.multinomial's default sampling (without replacement), slide the
    context, stop at '.' (or after max_len characters: a badly trained model may never
    draw the '.'). `model` maps contexts (1, block_size) to logits (1, 27) in evaluation
    mode. The generator is seeded seed + 10, as in the lecture."""
    g = rng.Generator(cfg.seed + 10)
    names = []
    for _ in range(n):
        out, context = [], [0] * cfg.block_size
        while len(out) < max_len:
            with no_grad():
                logits = model(np.array([context]))                 # (1, 27)
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


def plot_dlogits(dlogits, Yb, itos, path):
    """The lecture's picture of dlogits: one row per example, one column per character.
    The dark cell of each row is its right character, pulled up; the light ones are the
    wrong characters the network finds likely, pushed down; each row sums to zero."""
    plt = cli.pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.0), layout="constrained")
    im = ax.imshow(dlogits, cmap="gray", aspect="auto", interpolation="nearest")
    ax.set_xticks(range(27), [itos[i] for i in range(27)], fontsize=10)
    # every other row labelled, so the labels stay >= 10 pt without overlapping
    rows = range(0, len(Yb), 2)
    ax.set_yticks(rows, [f"{i}: {itos[int(Yb[i])]}" for i in rows], fontsize=10)
    ax.tick_params(length=2, pad=2)
    ax.set_xlabel("character whose logit gets the gradient", fontsize=11)
    ax.set_ylabel("example: its right next character", fontsize=11)
    ax.set_title("dlogits = (softmax - one-hot) / n: right character pulled up "
                 "(dark),\nlikely wrong ones pushed down (light)", fontsize=11)
    cbar = fig.colorbar(im, ax=ax, pad=0.02)
    cbar.set_label("d loss / d logit (dimensionless)", fontsize=11)
    cbar.ax.tick_params(labelsize=10)
    cli.save_figure(fig, path)


# %% Main
def exercise_network(cfg, Xtr, Ytr):
    """The network of exercises 1-3 (hidden layer of 64) and one batch, forward through
    the atomic steps and backward with the engine: the reference for every manual
    gradient. The batch comes from the same generator, after the parameters."""
    g = rng.Generator(cfg.seed)
    params = init_params(cfg, g, cfg.ex_hidden)
    ix = rng.randint(0, Xtr.shape[0], (cfg.batch_size,), generator=g)  # (32,)
    Xb, Yb = Xtr[ix], Ytr[ix]
    t = forward_steps(params, Xb, Yb)
    t["loss"].backward()
    return params, t, Xb, Yb


def exercise1(params, t, Xb, Yb):
    print("\n== Exercise 1: backpropagate through every step by hand, compared with the "
          "engine")
    grads = backward_by_hand(params, t, Xb, Yb)
    tensors = {**t, **params}
    return [cmp(name, grad, tensors[name]) for name, grad in grads.items()]


def exercise2(t, Yb, itos, cfg):
    print("\n== Exercise 2: cross-entropy's backward pass in one step")
    with no_grad():
        loss_fast = cross_entropy(t["logits"], Yb).item()
    loss = t["loss"].item()
    print(f"  cross_entropy(logits, Yb) {loss_fast:.6f}, atomic steps {loss:.6f}, "
          f"diff: {loss_fast - loss}")
    dlogits = cross_entropy_backward(t["logits"].data, Yb)
    row = cmp("logits", dlogits, t["logits"])
    n, probs, y = len(Yb), softmax(t["logits"].data)[0], int(Yb[0])
    row_sums = float(np.abs(dlogits.sum(1)).max())
    print(f"  the forces on example 0, times n: its right character {itos[y]!r} gets "
          f"p - 1 = {n * dlogits[0, y]:+.4f} (descent\n  pulls its logit up), the other 26 "
          f"characters their p, {n * (dlogits[0].sum() - dlogits[0, y]):+.4f} in all "
          f"(pushed down)")
    print(f"  every row of dlogits sums to zero: the largest |row sum| is {row_sums:.1e}")
    figure = None
    if cfg.plots:
        figure = cli.out_dir(cfg.out) / f"dlogits.{cfg.format}"
        plot_dlogits(dlogits, Yb, itos, figure)
    return dict(loss_fast=loss_fast, loss=loss, cmp=row, row_sums=row_sums,
                pull=float(n * dlogits[0, y]), p=float(probs[y]),
                figure=figure and str(figure))


def exercise3(params, t):
    print("\n== Exercise 3: BatchNorm's backward pass in one step")
    bngain, bnbias, hprebn = params["bngain"], params["bnbias"], t["hprebn"]
    with no_grad():  # the lecture's BatchNorm in one line, forward
        hpreact_fast = bngain * (hprebn - hprebn.mean(0, keepdim=True)) / (
            hprebn.var(0, keepdim=True) + 1e-5).sqrt() + bnbias
    forward_diff = float(np.abs(hpreact_fast.data - t["hpreact"].data).max())
    print(f"  forward: one line vs atomic steps, max diff {forward_diff}")
    dhpreact = t["hpreact"].grad  # the engine's (exercise 1's manual one is equal)
    dhprebn = batchnorm_backward(dhpreact, bngain.data, t["bnvar_inv"].data,
                                 t["bnraw"].data)
    return dict(forward_diff=forward_diff, cmp=cmp("hprebn", dhprebn, hprebn))


def exercise4(cfg, splits, itos):
    """Train the hidden-200 network with the manual backward pass only, calibrate
    BatchNorm over the training set, evaluate, sample, save."""
    (Xtr, Ytr), (Xdev, Ydev), _ = splits.values()
    g = rng.Generator(cfg.seed)
    params = init_params(cfg, g, cfg.n_hidden)
    n_params = sum(p.data.size for p in params.values())
    print(f"\n== Exercise 4: training with the {cfg.backward} backward pass: embedding "
          f"{cfg.n_embd}, hidden {cfg.n_hidden}, {n_params} parameters")
    state = g.get_state()  # peek at the first training batch without using it up
    ix = rng.randint(0, Xtr.shape[0], (cfg.batch_size,), generator=g)
    g.set_state(state)
    print("  the first batch's gradients, manual vs engine:")
    check = check_gradients(params, Xtr[ix], Ytr[ix])

    print(f"  {cfg.steps} steps, lr {cfg.lr} then {cfg.lr / 10} from step "
          f"{cfg.lr_decay_step}")
    start = time.perf_counter()
    out = cli.out_dir(cfg.out)
    try:
        lossi = train(cfg, params, Xtr, Ytr, g)
    except KeyboardInterrupt:  # Ctrl-C: keep the model trained so far
        save_model(out / "model.npz", params, calibrate(params, Xtr), cfg)
        print(f"\nthe model trained so far is in {out / 'model.npz'}")
        raise
    seconds = time.perf_counter() - start
    stats = calibrate(params, Xtr)
    final = {name: evaluate(params, X, Y, stats)
             for name, (X, Y) in (("train", (Xtr, Ytr)), ("val", (Xdev, Ydev)))}
    ms = 1000 * seconds / cfg.steps if cfg.steps else 0.0
    print(f"  {seconds:.1f}s ({ms:.3f} ms/step); " + ", ".join(
        f"{k} {v:.4f}" for k, v in final.items()) + " (BatchNorm calibrated on the "
        "training set)")
    bessel = batch_variance_ratio(params, Xtr, stats, cfg.batch_size, cfg.seed)
    print(f"  Bessel's correction: a batch of {cfg.batch_size}'s variance over the "
          f"training set's, on average: {bessel['n - 1']:.4f} dividing by n - 1, "
          f"{bessel['n']:.4f} dividing by n")
    names = sample_names(lambda X: forward(params, X, stats), cfg, cfg.samples, itos)
    print("\n== Samples\n  " + " ".join(names))

    save_model(out / "model.npz", params, stats, cfg)
    files = [str(out / "model.npz")]
    if cfg.plots:
        plot_losses(lossi, out / f"loss.{cfg.format}")
        files.append(str(out / f"loss.{cfg.format}"))
    return dict(n_params=n_params, check=check, lossi=lossi, **final, bessel=bessel,
                samples=names, seconds=seconds, ms_per_step=ms, files=files)


def main(argv=None) -> dict:
    cfg = cli.parse_config(Config, argv, __doc__, prog="05_backprop_ninja/train.py")
    cli.out_dir(cfg.out)  # fail now on an unusable folder, not after training
    cli.keep_freed_memory()  # evaluating 182,625 examples makes big arrays: reuse them
    words = data.load_names()
    stoi, itos = data.names_vocab(words)
    (Xtr, Ytr), (Xdev, Ydev), (Xte, Yte) = data.makemore_splits(cfg.block_size)
    print(f"{len(words)} names -> train {len(Xtr)}, dev {len(Xdev)}, test {len(Xte)} "
          f"examples of {cfg.block_size} characters")
    show_examples(Xtr, Ytr, itos)
    splits = {"train": (Xtr, Ytr), "val": (Xdev, Ydev), "test": (Xte, Yte)}
    result = dict(config=asdict(cfg), sizes=(len(Xtr), len(Xdev), len(Xte)))
    files = []

    if cfg.exercise in (0, 1, 2, 3):
        params, t, Xb, Yb = exercise_network(cfg, Xtr, Ytr)
        n_params = sum(p.data.size for p in params.values())
        loss = t["loss"].item()
        print(f"\n== The exercise network: embedding {cfg.n_embd}, hidden {cfg.ex_hidden}, "
              f"{n_params} parameters; one batch of {cfg.batch_size}, loss {loss:.4f}")
        result.update(n_params=n_params, loss=loss)
    if cfg.exercise in (0, 1):
        result["exercise1"] = exercise1(params, t, Xb, Yb)
    if cfg.exercise in (0, 2):
        result["exercise2"] = exercise2(t, Yb, itos, cfg)
        if result["exercise2"]["figure"]:
            files.append(result["exercise2"]["figure"])
    if cfg.exercise in (0, 3):
        result["exercise3"] = exercise3(params, t)
    if cfg.exercise in (0, 4):
        result["exercise4"] = exercise4(cfg, splits, itos)
        files += result["exercise4"]["files"]
    if files:
        print(f"\nwrote {', '.join(files)}")
    return dict(result, files=files)


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

    # -- new in stage 04: sqrt, and the spread of numbers (BatchNorm divides by it) --
    def sqrt(self):
        s = np.sqrt(self.data)
        out = Tensor(s, _children=(self,), _op="sqrt")
        out._backward = lambda g: self._accumulate(g / (2 * s))  # 1 / (2 sqrt(a))
        return out

    def var(self, dim=None, keepdim=False, unbiased=True):
        """The mean squared distance from the mean; divided by n - 1 instead of n when
        `unbiased` (Bessel's correction, torch's default: a sample's own mean sits closer
        to the samples than the true mean does, so dividing by n would come out small)."""
        ddof = 1 if unbiased else 0
        v = _spread(self.data, dim, ddof)                     # reduced dims kept as 1
        d = self.data.size // v.size - ddof                   # the divisor: n - 1 or n
        out = Tensor(v if keepdim else np.squeeze(v, axis=dim), _children=(self,),
                     _op="var")

        def _backward(g):  # d var / d x_i = 2 (x_i - mean) / d (the mean's own share
            dev = self.data - self.data.mean(axis=dim, keepdims=True)  # cancels out:
            self._accumulate(g.reshape(v.shape) * 2 * dev / d)  # deviations sum to 0)
        out._backward = _backward
        return out

    def std(self, dim=None, keepdim=False, unbiased=True):
        """sqrt(var) as one op, like torch.std: the lecture's BatchNorm divides by it."""
        ddof = 1 if unbiased else 0
        s = _spread(self.data, dim, ddof, take_sqrt=True)
        d = self.data.size // s.size - ddof
        out = Tensor(s if keepdim else np.squeeze(s, axis=dim), _children=(self,),
                     _op="std")

        def _backward(g):  # d std / d x_i = d var / d x_i / (2 std) = (x_i - mean) / (d std)
            dev = self.data - self.data.mean(axis=dim, keepdims=True)
            self._accumulate(g.reshape(s.shape) * dev / (d * s))
        out._backward = _backward
        return out

    # -- new in stage 05: max, whose gradient is routed to the largest element --
    def max(self, dim=None, keepdim=False):
        """torch's max: with no dim, the largest element (a Tensor); with dim, the pair
        (values, indices) of the largest along dim. Only the largest element decides the
        result, so the gradient flows to it alone: a max routes the gradient like a
        switch (a one-hot mask). The indices are plain integers, with no gradient."""
        if dim is None:
            return self.view(-1).max(0).values
        where = np.expand_dims(self.data.argmax(axis=dim), dim)  # (N, 1) the first largest
        values = np.take_along_axis(self.data, where, axis=dim)  # (N, 1)
        out = Tensor(values if keepdim else np.squeeze(values, axis=dim),
                     _children=(self,), _op="max")

        def _backward(g):
            grad = np.zeros_like(self.data)
            np.put_along_axis(grad, where, g.reshape(where.shape), axis=dim)
            self._accumulate(grad)
        out._backward = _backward
        return MaxResult(out, where if keepdim else np.squeeze(where, axis=dim))

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


# %% Engine: new in stage 04
def _spread(x, dim, ddof, take_sqrt=False):
    """The variance of x along dim (with take_sqrt: the standard deviation), dividing by
    n - ddof, kept as a size-1 dimension. As torch does on the CPU, it is computed in
    double precision and rounded once to x's precision (float32 for training)."""
    var = np.var(x, axis=dim, dtype=np.float64, ddof=ddof, keepdims=True)
    return (np.sqrt(var) if take_sqrt else var).astype(x.dtype)


# %% Engine: new in stage 05
# what torch's max(dim) returns: the largest values (a Tensor) and where they are (ints)
MaxResult = namedtuple("MaxResult", ["values", "indices"])


def cross_entropy(logits, targets, ignore_index=None):
    """Stage 03's cross_entropy as ONE op, with the backward pass derived in this lecture
    (exercise 2): dlogits = (softmax(logits) - one_hot(targets)) / N, one formula instead
    of a chain of max, subtract, exp, sum, log, index and mean ops, each with its own
    backward pass and intermediate arrays. It replaces the definition above (the same
    numbers); the stages after this one use it. Rows whose target is `ignore_index`
    (makemore pads with -1) are left out: of the mean, and of the gradient."""
    x = logits.data                                       # (N, 27)
    rows, keep = np.arange(len(targets)), None
    if ignore_index is not None:
        keep = targets != ignore_index                    # (N,) the rows that count
        rows, targets = np.flatnonzero(keep), targets[keep]
    n = len(rows)
    shifted = x - x.max(axis=1, keepdims=True)            # largest logit is now 0
    log_norm = np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    logprobs = shifted - log_norm                         # (N, 27) log softmax
    out = Tensor(-logprobs[rows, targets].mean(), _children=(logits,),
                 _op="cross_entropy")

    def _backward(g):
        dlogits = np.exp(logprobs)                        # softmax
        dlogits[rows, targets] -= 1                       # minus one-hot
        if keep is not None:
            dlogits[~keep] = 0                            # ignored rows: no gradient
        logits._accumulate(g * dlogits / n)
    out._backward = _backward
    return out


def batch_norm(x, gain, bias, eps=1e-5, mean=None, var=None, dims=(0,)):
    """BatchNorm as ONE op (F.batch_norm), with the backward pass derived in this lecture
    (exercise 3): every feature (the last dimension, D) of x is shifted by a mean and
    divided by sqrt(var + eps), then scaled by `gain` and shifted by `bias` (D,). Without
    `mean` and `var` (training) they are the batch's own, taken over the dimensions
    `dims` ((0,) for (N, D) input, (0, 1) for (B, T, D)), the variance unbiased as in the
    lecture, and a gradient flows through them; returns (out, mean, var), the reduced
    dimensions kept as size 1 as the lecture's keepdim=True does, so the caller can update
    its running estimates. Given `mean` and `var` (evaluation: the running estimates),
    they are constants. With xhat = (x - mean) / sqrt(var + eps), s = gain / sqrt(var +
    eps) and N values per statistic,
        dx = s / N * (N dout - sum(dout) - N / (N - 1) * xhat * sum(dout * xhat))
    one formula instead of a chain of mean, subtract, var, add, sqrt, divide, multiply and
    add ops."""
    training = mean is None
    if training:
        mean = x.data.mean(axis=dims, keepdims=True)          # (1, D) or (1, 1, D)
        var = _spread(x.data, dims, ddof=1)                   # unbiased variance, same shape
        n = x.data.size // mean.size                          # values per statistic
    # divide by sqrt(var + eps) as the lecture's layer does (not multiply by its inverse),
    # so that float32 results are the very same numbers
    xhat = (x.data - mean) / np.sqrt(var + eps)               # x's shape
    out = Tensor(gain.data * xhat + bias.data, _children=(x, gain, bias), _op="batch_norm")

    def _backward(g):
        gain._accumulate(g * xhat)  # summed over the batch by _accumulate
        bias._accumulate(g)
        s = gain.data / np.sqrt(var + eps)                    # var's shape, e.g. (1, D)
        if training:  # the statistics depend on x too
            dx = s / n * (n * g - g.sum(axis=dims, keepdims=True)
                          - n / (n - 1) * xhat * (g * xhat).sum(axis=dims, keepdims=True))
            x._accumulate(dx)
        else:
            x._accumulate(g * s)
    out._backward = _backward
    return out, mean, var


if __name__ == "__main__":
    cli.run(main)
