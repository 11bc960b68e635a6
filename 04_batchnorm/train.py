"""Stage 04: activations, gradients and BatchNorm: how healthy is the network?

Follows "Building makemore Part 3: Activations & Gradients, BatchNorm" (makemore part 3).
New over stage 03: the initialization is fixed one problem at a time (a softmax that starts
out confidently wrong, a tanh layer that starts out saturated, then Kaiming's fan-in
scaling instead of hand-picked numbers), and BatchNorm normalizes the hidden layer's
pre-activations, with running estimates for evaluation and a calibration over the training
set. The engine gains `var`, `std` and `sqrt`, from which BatchNorm is built as the lecture
builds it. `--deep` builds the lecture's "PyTorch-ified" network (Linear, BatchNorm1d and
Tanh layers, six deep) and shows its four diagnostics: activations, gradients, weight
gradients and update:data ratios.

    python 04_batchnorm/train.py                                  # the BatchNorm MLP
    python 04_batchnorm/train.py --init original --no-batchnorm   # stage 03's model, then
    python 04_batchnorm/train.py --init softmax --no-batchnorm    # each fix in turn:
    python 04_batchnorm/train.py --init tanh --no-batchnorm       #   tanh,
    python 04_batchnorm/train.py --init kaiming --no-batchnorm    #   kaiming
    python 04_batchnorm/train.py --deep                           # deep net + diagnostics
    python 04_batchnorm/train.py --deep --no-batchnorm --gain 5/3 # without BatchNorm

What the default run prints (measured; tests/benchmarks/README.md has the timings):
    12097 parameters; first minibatch loss 3.3239 (-ln(1/27) = 3.2958; stage 03's: 27.8817)
    every 10,000 steps the lecture's own 20 losses, 3.3239 2.0322 2.5675 ... 2.1707, all equal
    after 200,000 steps: train 2.0674, val 2.1057 (running estimates, as the lecture prints)
    samples: carlah. amorie. khi. mri. reity. salaysie. mahnen. delynn. jareei. ner. ...
The fixes one by one (train / val): original 2.1233 / 2.1670, softmax 2.0696 / 2.1311, tanh
2.0356 / 2.1027, kaiming 2.0377 / 2.1070 (04_batchnorm/README.md compares the lecture's).
--deep (1,001 steps, a few seconds): 47024 parameters, first loss 3.2870, tanh layers' std
0.63-0.65 with 1.7-2.8% saturated, train 2.4003, val 2.3982, and the lecture's 20 samples
carpah. qarlileif. jmrix. thty. ...
"""

# %% Imports
from __future__ import annotations

import os
import sys
import time
from dataclasses import asdict, dataclass, replace
from fractions import Fraction
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
INITS = ("original", "softmax", "tanh", "kaiming")  # the lecture's fixes, in its order


@dataclass
class Config:
    block_size: int = cli.arg(3, "context length: how many characters predict the next",
                              min=1, max=32)
    n_embd: int = cli.arg(10, "dimensions of each character's embedding", min=1, max=1000)
    n_hidden: int = cli.arg(200, "neurons in the hidden tanh layer", min=1, max=10_000)
    init: str = cli.arg("kaiming", "initial weight scales: original (stage 03's), softmax "
                        "(W2 * 0.01, b2 * 0), tanh (also W1 * 0.2, b1 * 0.01), kaiming "
                        "(W1 * (5/3) / sqrt(fan_in) instead of 0.2)", choices=INITS)
    batchnorm: bool = cli.arg(True, "normalize the hidden pre-activations with BatchNorm "
                                    "(which replaces b1)")
    steps: int = cli.arg(200_000, "training steps (minibatches)", min=0)
    batch_size: int = cli.arg(32, "examples per minibatch", min=1, max=100_000)
    lr: float = cli.arg(0.1, "learning rate", min=1e-9, max=1e6)
    lr_decay_step: int = cli.arg(100_000, "from this step on the learning rate is lr / 10",
                                 min=0)
    seed: int = cli.arg(2147483647, "seed of the generator (the lecture's 2147483647)",
                        min=0, max=2**64 - 1)
    samples: int = cli.arg(20, "names to sample after training", min=0, max=10_000)
    deep: bool = cli.arg(False, "train the lecture's deep network instead: five Linear, "
                                "BatchNorm1d, Tanh blocks, then Linear, BatchNorm1d")
    deep_hidden: int = cli.arg(100, "with --deep: neurons in each hidden layer", min=1,
                               max=10_000)
    gain: str = cli.arg("1", "with --deep: gain of the hidden Linear weights, a number or "
                             "a fraction (the lecture compares 1 and tanh's 5/3)")
    break_at: int = cli.arg(1000, "with --deep: stop after this step, as the lecture's "
                                  "diagnostic run does (-1: train all --steps; the "
                                  "lecture's schedule for it is --lr-decay-step 150000)",
                            min=-1)
    out: str = cli.arg("out/04_batchnorm", "output folder for figures and the checkpoint")
    plots: bool = cli.arg(True, "write figures")
    format: str = cli.arg("png", "file format of the figures: png, or svg and pdf to scale "
                                 "on slides", choices=cli.FIGURE_FORMATS)

    def check(self):
        cli.check(self.batch_size >= 2 or not self.batchnorm,
                  "BatchNorm needs --batch-size >= 2: one example has no spread to "
                  "normalize by (or use --no-batchnorm)")
        parse_gain(self.gain)


def parse_gain(text: str) -> float:
    """'5/3' -> 1.6666666666666667, the value of the lecture's `5/3`; '1' -> 1.0."""
    try:
        gain = float(Fraction(text.strip()))
    except (ValueError, ZeroDivisionError, OverflowError):
        gain = float("nan")
    cli.check(0 < gain < float("inf"),
              f"--gain must be a positive number or fraction such as 5/3, got {text!r}")
    return gain


# %% Data
def show_examples(X, Y, itos, n=5):
    """The lecture's view of the dataset: context ---> next character (`... ---> e`,
    `..e ---> m`, ... for emma; here the shuffled training set starts with yuheng)."""
    for x, y in zip(X[:n], Y[:n]):
        print("  " + "".join(itos[i] for i in x), "--->", itos[y])


# %% Model
def init_params(cfg, g):
    """The lecture's parameters, drawn in its order from generator g and scaled as the
    chosen --init says (each fix keeps the ones before it):
      original  unscaled, stage 03's: the first loss is ~28, far above -ln(1/27) = 3.2958,
                because large random logits make the softmax confidently wrong;
      softmax   W2 * 0.01 and b2 * 0: logits near 0, so every character starts out about
                equally likely and the loss starts near 3.30;
      tanh      also W1 * 0.2 and b1 * 0.01: the pre-activations are small enough that
                tanh is not saturated at +-1, where its gradient 1 - tanh**2 vanishes;
      kaiming   W1 * (5/3) / sqrt(fan_in) instead of the hand-picked 0.2: unit-variance
                pre-activations, times tanh's gain 5/3 (Kaiming He et al. 2015).
    With BatchNorm, b1 is left out (subtracting the batch mean would cancel it; bnbias
    takes its place) and the gain and bias of BatchNorm join the parameters."""
    fan_in = cfg.block_size * cfg.n_embd
    C = rng.randn(27, cfg.n_embd, generator=g)                    # (27, n_embd) embedding
    W1 = rng.randn(fan_in, cfg.n_hidden, generator=g)             # (30, 200)
    if cfg.init == "tanh":
        W1 = W1 * 0.2
    elif cfg.init == "kaiming":
        W1 = W1 * (5 / 3) / fan_in**0.5  # in the lecture's order: multiply, then divide
    params = {"C": C, "W1": W1}
    if not cfg.batchnorm:
        b1 = rng.randn(cfg.n_hidden, generator=g)                 # (200,)
        params["b1"] = b1 if cfg.init in ("original", "softmax") else b1 * 0.01
    W2 = rng.randn(cfg.n_hidden, 27, generator=g)                 # (200, 27)
    b2 = rng.randn(27, generator=g)                               # (27,)
    if cfg.init != "original":
        W2, b2 = W2 * 0.01, b2 * 0
    params.update(W2=W2, b2=b2)
    if cfg.batchnorm:
        params["bngain"] = np.ones((1, cfg.n_hidden), dtype=np.float32)   # (1, 200)
        params["bnbias"] = np.zeros((1, cfg.n_hidden), dtype=np.float32)  # (1, 200)
    return {name: Tensor(p, requires_grad=True) for name, p in params.items()}


def init_running(cfg):
    """BatchNorm's running estimates of each neuron's mean and std, for evaluation.
    Buffers, not parameters: a running average updates them, not the gradient."""
    return {"mean": np.zeros((1, cfg.n_hidden), dtype=np.float32),   # (1, 200)
            "std": np.ones((1, cfg.n_hidden), dtype=np.float32)}     # (1, 200)


def forward(params, X, bnstats=None, training=False):
    """Logits (N, 27) for contexts X (N, block_size), and the hidden layer before and
    after its tanh (for the diagnostics). `bnstats` are BatchNorm's running estimates (or
    calibrated statistics): updated while training, used otherwise."""
    emb = params["C"][X]                                  # (N, block_size, n_embd)
    embcat = emb.view(emb.shape[0], -1)                   # (N, block_size * n_embd)
    hpreact = embcat @ params["W1"]                       # (N, n_hidden) pre-activation
    if "b1" in params:
        hpreact = hpreact + params["b1"]
    if "bngain" in params:
        hpreact = batchnorm_layer(params, hpreact, bnstats, training)
    h = hpreact.tanh()                                    # (N, n_hidden)
    return h @ params["W2"] + params["b2"], hpreact, h   # (N, 27), ...


def batchnorm_layer(params, hpreact, bnstats, training):
    """The lecture's BatchNorm layer, written out: while training, every neuron is
    normalized by this batch's mean and (unbiased) std, which the running estimates follow
    slowly; at evaluation the running estimates stand in (one example has no batch)."""
    if training:
        bnmeani = hpreact.mean(0, keepdim=True)           # (1, n_hidden)
        bnstdi = hpreact.std(0, keepdim=True)             # (1, n_hidden)
        # torch.no_grad() in the lecture; here plain numpy on .data records nothing
        bnstats["mean"] = 0.999 * bnstats["mean"] + 0.001 * bnmeani.data
        bnstats["std"] = 0.999 * bnstats["std"] + 0.001 * bnstdi.data
    else:
        bnmeani, bnstdi = bnstats["mean"], bnstats["std"]
    return params["bngain"] * (hpreact - bnmeani) / bnstdi + params["bnbias"]


def evaluate(params, X, Y, bnstats=None):
    with no_grad():
        return cross_entropy(forward(params, X, bnstats)[0], Y).item()


def calibrate(params, Xtr):
    """The lecture's alternative to running estimates: after training, measure each
    neuron's mean and std once over the whole training set."""
    with no_grad():
        emb = params["C"][Xtr]                            # (182625, block_size, n_embd)
        hpreact = emb.view(emb.shape[0], -1) @ params["W1"]   # (182625, n_hidden)
        return {"mean": hpreact.mean(0, keepdim=True).data,
                "std": hpreact.std(0, keepdim=True).data}


# %% Model: the deep network ("PyTorch-ified")
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


def deep_network(cfg, g):
    """The lecture's deep MLP: the embedding table C, then five hidden blocks Linear ->
    BatchNorm1d -> Tanh and an output block Linear -> BatchNorm1d; the Linear layers have
    no bias (BatchNorm's beta replaces it). With --no-batchnorm: Linear (with bias) ->
    Tanh blocks. C and the weights are drawn from g in construction order."""
    C = Tensor(rng.randn(27, cfg.n_embd, generator=g), requires_grad=True)  # (27, n_embd)
    sizes = [cfg.block_size * cfg.n_embd] + [cfg.deep_hidden] * 5 + [27]  # 30, 100, ..., 27
    layers = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes, sizes[1:])):
        layers.append(Linear(fan_in, fan_out, bias=not cfg.batchnorm, generator=g))
        if cfg.batchnorm:
            layers.append(BatchNorm1d(fan_out))
        if i < 5:  # not after the output layer: its outputs are the logits
            layers.append(Tanh())
    # last layer: make it less confident (small logits, like the first half's W2 * 0.01)
    if cfg.batchnorm:
        layers[-1].gamma.data *= 0.1
    else:
        layers[-1].weight.data *= 0.1
    # all other layers: apply the gain (5/3 keeps tanh's outputs from shrinking, layer
    # after layer, when no BatchNorm restores their scale)
    gain = parse_gain(cfg.gain)
    for layer in layers[:-1]:
        if isinstance(layer, Linear):
            layer.weight.data *= gain
    return C, layers


def deep_forward(C, layers, X):
    """Logits (N, 27): every layer keeps its output as .out for the diagnostics."""
    emb = C[X]                                            # (N, block_size, n_embd)
    x = emb.view(emb.shape[0], -1)                        # (N, block_size * n_embd)
    for layer in layers:
        x = layer(x)
    return x


def evaluate_deep(C, layers, X, Y, chunk=10_000):
    """The lecture's split_loss with the layers in evaluation mode. Evaluated in chunks:
    every layer keeps its output, and 17 outputs of 182,625 x 100 floats would take over
    a gigabyte (the chunks change nothing but the order of the final average's sum)."""
    total = 0.0
    with no_grad():
        for i in range(0, len(X), chunk):
            loss = cross_entropy(deep_forward(C, layers, X[i:i + chunk]), Y[i:i + chunk])
            total += loss.item() * len(X[i:i + chunk])
    return total / len(X)


# %% Training
def learning_rate(cfg, step):
    """The lecture's schedule: lr for the first lr_decay_step steps, then lr / 10."""
    return cfg.lr if step < cfg.lr_decay_step else cfg.lr / 10


def sgd_step(params, bnstats, X, Y, lr):
    """One minibatch step: forward, zero the gradients, backward, update."""
    loss = cross_entropy(forward(params, X, bnstats, training=True)[0], Y)
    for p in params.values():
        p.grad = None
    loss.backward()
    for p in params.values():
        p.data += -lr * p.grad
    return loss.item()


def train(cfg, params, bnstats, Xtr, Ytr, g, quiet=False):
    """Minibatch gradient descent; the minibatch indices come from generator g."""
    lossi = []
    progress = cli.Progress(cfg.steps, every=10_000, quiet=quiet)
    for i in range(cfg.steps):
        ix = rng.randint(0, Xtr.shape[0], (cfg.batch_size,), generator=g)  # (32,)
        lr = learning_rate(cfg, i)
        loss = sgd_step(params, bnstats, Xtr[ix], Ytr[ix], lr)
        lossi.append(loss)
        progress.update(i, loss, lr)
    return lossi


def first_batch(cfg, Xtr, Ytr):
    """The lecture's look at the initialization: initialize exactly as training does, run
    the first minibatch forward, and return its loss and the hidden layer before and
    after tanh (the lecture stops its loop after one step for this)."""
    g = rng.Generator(cfg.seed)
    params = init_params(cfg, g)
    ix = rng.randint(0, Xtr.shape[0], (cfg.batch_size,), generator=g)
    with no_grad():
        logits, hpreact, h = forward(params, Xtr[ix], init_running(cfg), training=True)
        return cross_entropy(logits, Ytr[ix]).item(), hpreact.data, h.data


def init_report(cfg, Xtr, Ytr):
    """The first minibatch under each --init of the lecture's progression (without
    BatchNorm), and under this run's own settings: the loss, the share of tanh outputs
    beyond +-0.99 (where 1 - tanh**2 < 0.02 lets almost no gradient through), and dead
    neurons: saturated for every example of the batch, so they learn from none."""
    print(f"  {'init':8s} {'BatchNorm':9s} {'loss':>8s} {'|h| > 0.99':>11s} "
          f"{'dead neurons':>13s}")
    variants = [replace(cfg, init=init, batchnorm=False) for init in INITS]
    if cfg.batchnorm:
        variants.append(cfg)
    rows = []
    for v in variants:
        loss, _, h = first_batch(v, Xtr, Ytr)
        saturated = np.abs(h) > 0.99                      # (32, n_hidden)
        row = dict(init=v.init, batchnorm=v.batchnorm, loss=loss,
                   saturated=float(saturated.mean()), dead=int(saturated.all(0).sum()))
        rows.append(row)
        mark = "  <- this run" if v == cfg else ""
        print(f"  {v.init:8s} {'yes' if v.batchnorm else 'no':9s} {loss:8.4f} "
              f"{row['saturated']:10.1%} {row['dead']:13d}{mark}")
    return rows


def save_model(path, params, bnstats, cfg):
    """The parameters, BatchNorm's running estimates and the config, in one file."""
    arrays = {n: p.data for n, p in params.items()}
    if bnstats is not None:
        arrays.update(bnmean_running=bnstats["mean"], bnstd_running=bnstats["std"])
    cli.save_checkpoint(path, arrays, dict(config=asdict(cfg)))


# %% Training: diagnostics of the deep network
def train_deep(cfg, C, layers, Xtr, Ytr, g, quiet=False):
    """The lecture's loop for the deep network. It records each step's loss and, for the
    weights (2-D parameters), the update:data ratio log10(std(lr * grad) / std(data)):
    about -3 is healthy. Every layer keeps its output (.out) and, after backward, that
    output's gradient (.out.grad, which backward() keeps because of retain_grad())."""
    parameters = [C] + [p for layer in layers for p in layer.parameters()]
    steps = cfg.steps if cfg.break_at < 0 else min(cfg.steps, cfg.break_at + 1)
    lossi, ud = [], []
    progress = cli.Progress(steps, every=10_000, quiet=quiet)
    for i in range(steps):  # the lecture's `if i >= 1000: break` is in `steps`
        ix = rng.randint(0, Xtr.shape[0], (cfg.batch_size,), generator=g)  # (32,)
        loss = cross_entropy(deep_forward(C, layers, Xtr[ix]), Ytr[ix])
        for layer in layers:
            layer.out.retain_grad()  # the diagnostics look at the outputs' gradients
        for p in parameters:
            p.grad = None
        loss.backward()
        lr = learning_rate(cfg, i)
        for p in parameters:
            p.data += -lr * p.grad
        lossi.append(loss.item())
        ud.append([np.log10((lr * p.grad).std(ddof=1) / p.data.std(ddof=1))
                   for p in parameters if p.data.ndim == 2])
        progress.update(i, lossi[-1], lr)
    return parameters, lossi, np.array(ud)


def activation_stats(layers):
    """The lecture's printout for every tanh layer but the output: the mean and std of
    its outputs and how many are saturated (|t| > 0.97)."""
    stats = []
    for i, layer in enumerate(layers[:-1]):
        if isinstance(layer, Tanh):
            t = layer.out.data
            st = dict(layer=i, mean=float(t.mean()), std=float(t.std(ddof=1)),
                      saturated=float((np.abs(t) > 0.97).mean()))
            stats.append(st)
            print(f"  layer {i} ({'Tanh':>10s}): mean {st['mean']:+.2f}, "
                  f"std {st['std']:.2f}, saturated: {st['saturated']:.2%}")
    return stats


def gradient_stats(layers):
    """The same for the gradients arriving at every tanh layer's output in the backward
    pass: similar stds in all layers mean no layer shrinks or blows up the gradient."""
    stats = []
    for i, layer in enumerate(layers[:-1]):
        if isinstance(layer, Tanh):
            t = layer.out.grad
            st = dict(layer=i, mean=float(t.mean()), std=float(t.std(ddof=1)))
            stats.append(st)
            print(f"  layer {i} ({'Tanh':>10s}): mean {st['mean']:+f}, std {st['std']:e}")
    return stats


def weight_gradient_stats(parameters):
    """The weights' gradients, and their std relative to the weights' own std: a ratio
    far from the others means that weight learns much faster or slower."""
    stats = []
    for i, p in enumerate(parameters):
        if p.data.ndim == 2:
            t = p.grad
            std = float(t.std(ddof=1))
            st = dict(index=i, shape=p.data.shape, mean=float(t.mean()), std=std,
                      ratio=std / float(p.data.std(ddof=1)))
            stats.append(st)
            print(f"  weight {str(tuple(p.data.shape)):>10s} | mean {st['mean']:+f} | "
                  f"std {st['std']:e} | grad:data ratio {st['ratio']:e}")
    return stats


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


def plot_hidden_histograms(hpreact, h, title, path):
    """The lecture's two histograms of the first batch: the pre-activations, and the tanh
    outputs, which pile up at -1 and +1 when the pre-activations are too wide."""
    plt = cli.pyplot()
    with plt.rc_context({"font.size": 10, "axes.titlesize": 10.5}):
        fig, (a, b) = plt.subplots(1, 2, figsize=(7.5, 3.8))
        a.hist(hpreact.ravel(), bins=50)
        a.set_title(f"pre-activations hpreact\nstd {hpreact.std():.2f}")
        a.set_xlabel("pre-activation value (unitless)")
        a.set_ylabel(f"count ({h.shape[0]} examples x {h.shape[1]} neurons)")
        b.hist(h.ravel(), bins=50, color="C1")
        b.set_title(f"tanh outputs h\n{(np.abs(h) > 0.99).mean():.1%} with |h| > 0.99")
        b.set_xlabel("tanh output value (unitless)")
        b.set_ylabel("count")
        fig.suptitle(f"Hidden layer on the first minibatch, before training\n({title})",
                     fontsize=11)
        fig.tight_layout()
        cli.save_figure(fig, path)


def plot_saturation(h, title, path):
    """The lecture's white-is-saturated image: rows are the batch's examples, columns the
    neurons; an all-white column is a dead neuron, which never gets a gradient."""
    plt = cli.pyplot()
    from matplotlib.colors import BoundaryNorm, ListedColormap
    saturated = np.abs(h) > 0.99                          # (32, n_hidden)
    with plt.rc_context({"font.size": 10, "axes.titlesize": 11}):
        fig, ax = plt.subplots(figsize=(7.5, 3.8))
        im = ax.imshow(saturated, cmap=ListedColormap(["black", "white"]),
                       norm=BoundaryNorm([-0.5, 0.5, 1.5], 2), interpolation="nearest",
                       aspect="auto")
        cbar = fig.colorbar(im, ax=ax, ticks=[0, 1], fraction=0.05, pad=0.02)
        cbar.ax.set_yticklabels(["|h| <= 0.99\n(active)", "|h| > 0.99\n(saturated)"])
        ax.set_xlabel("hidden neuron (index)")
        ax.set_ylabel("example in minibatch")
        ax.set_title(f"Saturated tanh outputs on the first minibatch ({title})\n"
                     f"{saturated.mean():.1%} saturated, {int(saturated.all(0).sum())} "
                     f"dead neurons (all-white columns)")
        cli.save_figure(fig, path)


def _histograms(ax, series, xlabel, title):
    """One density line per (label, values), like the lecture's torch.histogram plots."""
    for label, t in series:
        hy, hx = np.histogram(t, bins=100, density=True)
        ax.plot(hx[:-1], hy, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    ax.set_title(title)
    ax.legend(fontsize=8)


def plot_activations(layers, stats, title, path):
    """Forward pass: healthy tanh layers look alike, with few outputs at +-1."""
    plt = cli.pyplot()
    with plt.rc_context({"font.size": 10, "axes.titlesize": 11}):
        fig, ax = plt.subplots(figsize=(7, 4))
        _histograms(ax, [(f"layer {s['layer']}: std {s['std']:.2f}, "
                          f"saturated {s['saturated']:.1%}", layers[s["layer"]].out.data)
                         for s in stats], "tanh output value (unitless)",
                    f"Forward pass: activations of each tanh layer\n({title})")
        ax.set_ylabel("probability density (1 / x unit)")
        ax.legend(fontsize=10, title="tanh layer (last training step)",
                  title_fontsize=10, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2,
                  borderaxespad=0)
        ax.grid(alpha=0.3)
        cli.save_figure(fig, path)


def plot_gradients(layers, stats, title, path):
    """Backward pass: similar widths mean no layer shrinks or amplifies the gradient."""
    plt = cli.pyplot()
    with plt.rc_context({"font.size": 10, "axes.titlesize": 11}):
        fig, ax = plt.subplots(figsize=(7, 4))
        _histograms(ax, [(f"layer {s['layer']}: std {s['std']:.2e}",
                          layers[s["layer"]].out.grad) for s in stats],
                    "gradient of the loss at the tanh output (nats per unit)",
                    f"Backward pass: gradients at each tanh layer\n({title})")
        ax.set_ylabel("probability density (1 / x unit)")
        ax.legend(fontsize=10, title="tanh layer (last training step)",
                  title_fontsize=10, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2,
                  borderaxespad=0)
        ax.grid(alpha=0.3)
        cli.save_figure(fig, path)


def plot_weight_gradients(parameters, stats, title, path):
    """The weights' gradients; the legend gives each one's std relative to its weight's."""
    plt = cli.pyplot()
    with plt.rc_context({"font.size": 10, "axes.titlesize": 11}):
        fig, ax = plt.subplots(figsize=(7, 4))
        _histograms(ax, [(f"param {s['index']} {tuple(s['shape'])}: {s['ratio']:.2e}",
                          parameters[s["index"]].grad) for s in stats],
                    "gradient of the loss at the weight (nats per unit weight)",
                    f"Weight gradients at the last training step\n({title})")
        ax.set_ylabel("probability density (1 / x unit)")
        ax.legend(fontsize=10, title="weight (shape): grad std / data std",
                  title_fontsize=10, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2,
                  borderaxespad=0)
        ax.grid(alpha=0.3)
        cli.save_figure(fig, path)


def plot_update_ratios(ud, parameters, title, path):
    """log10(update std / data std) of each weight over training, against the lecture's
    rule of thumb 1e-3: far above, the step is too big for that weight; far below, it
    learns too slowly."""
    plt = cli.pyplot()
    with plt.rc_context({"font.size": 10, "axes.titlesize": 11}):
        fig, ax = plt.subplots(figsize=(7, 4))
        weights = [(i, p) for i, p in enumerate(parameters) if p.data.ndim == 2]
        marker = "o" if len(ud) < 50 else None  # a short run (--break-at 0): show the points
        for j, (i, p) in enumerate(weights):
            ax.plot(ud[:, j], lw=0.8, marker=marker,
                    label=f"param {i} {tuple(p.data.shape)}")
        ax.axhline(-3, color="k", lw=1.5, ls="--", label="1e-3 (rule of thumb)")
        ax.set_xlabel("training step")
        ax.set_ylabel("log10(update std / data std)")
        ax.set_title(f"Update:data ratio of each weight over training\n({title})")
        ax.legend(fontsize=10, title="weight (shape)", title_fontsize=10,
                  loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, borderaxespad=0)
        ax.grid(alpha=0.3)
        cli.save_figure(fig, path)


# %% Main
def describe(cfg):
    """A short name for the run's variant, used in titles."""
    if cfg.deep:
        return f"deep, {'BatchNorm' if cfg.batchnorm else 'no BatchNorm'}, gain {cfg.gain}"
    return f"init {cfg.init}, {'BatchNorm' if cfg.batchnorm else 'no BatchNorm'}"


def main_deep(cfg, splits, itos):
    """The lecture's second half: the deep network, a short run, its diagnostics."""
    (Xtr, Ytr), (Xdev, Ydev), _ = splits.values()
    g = rng.Generator(cfg.seed)
    C, layers = deep_network(cfg, g)
    n_params = sum(p.data.size for p in [C] + [p for la in layers for p in la.parameters()])
    block, head = ("Linear -> BatchNorm1d -> Tanh", "Linear -> BatchNorm1d") \
        if cfg.batchnorm else ("Linear -> Tanh", "Linear")
    print(f"\n== Deep network ({describe(cfg)}): 5 x ({block}), {head}: "
          f"{n_params} parameters")
    start = time.perf_counter()
    parameters, lossi, ud = train_deep(cfg, C, layers, Xtr, Ytr, g)
    seconds = time.perf_counter() - start
    print(f"  {len(lossi)} training steps in {seconds:.1f}s")
    acts, grads, wgrads, figures = [], [], [], []
    if lossi:  # the diagnostics look at the last training step
        print("\n== Forward pass: the tanh layers' outputs (last step)")
        acts = activation_stats(layers)
        print("\n== Backward pass: gradients at the tanh layers' outputs")
        grads = gradient_stats(layers)
        print("\n== Weight gradients")
        wgrads = weight_gradient_stats(parameters)
    out, title = cli.out_dir(cfg.out), describe(cfg)
    if cfg.plots and lossi:  # now, while the layers hold the last step's outputs
        plot_activations(layers, acts, title, out / f"deep_activations.{cfg.format}")
        plot_gradients(layers, grads, title, out / f"deep_gradients.{cfg.format}")
        plot_weight_gradients(parameters, wgrads, title, out / f"deep_weight_gradients.{cfg.format}")
        plot_update_ratios(ud, parameters, title, out / f"deep_update_ratios.{cfg.format}")
        figures = [str(out / f"deep_{f}.{cfg.format}") for f in
                   ("activations", "gradients", "weight_gradients", "update_ratios")]

    for layer in layers:
        layer.training = False  # put the layers into evaluation mode
    final = {"train": evaluate_deep(C, layers, Xtr, Ytr),
             "val": evaluate_deep(C, layers, Xdev, Ydev)}
    print("\n== Loss, layers in evaluation mode: "
          + ", ".join(f"{k} {v:.4f}" for k, v in final.items()))
    names = sample_names(lambda X: deep_forward(C, layers, X), cfg, cfg.samples, itos)
    print("\n== Samples\n  " + " ".join(names))

    arrays = {"C": C.data}
    for i, layer in enumerate(layers):
        for name in ("weight", "bias", "gamma", "beta", "running_mean", "running_var"):
            value = getattr(layer, name, None)
            if value is not None:
                arrays[f"layers.{i}.{name}"] = getattr(value, "data", value)
    cli.save_checkpoint(out / "deep.npz", arrays, dict(config=asdict(cfg)))
    files = figures + [str(out / "deep.npz")]
    print(f"\nwrote {', '.join(files)}")
    return dict(config=asdict(cfg), n_params=n_params, lossi=lossi, ud=ud,
                activations=acts, gradients=grads, weight_gradients=wgrads, **final,
                samples=names, seconds=seconds, files=files)


def main(argv=None) -> dict:
    cfg = cli.parse_config(Config, argv, __doc__, prog="04_batchnorm/train.py")
    out = cli.out_dir(cfg.out)  # fail now on an unusable folder, not after training
    cli.keep_freed_memory()  # evaluating 182,625 examples makes big arrays: reuse them
    words = data.load_names()
    stoi, itos = data.names_vocab(words)
    (Xtr, Ytr), (Xdev, Ydev), (Xte, Yte) = data.makemore_splits(cfg.block_size)
    print(f"{len(words)} names -> train {len(Xtr)}, dev {len(Xdev)}, test {len(Xte)} "
          f"examples of {cfg.block_size} characters")
    show_examples(Xtr, Ytr, itos)
    splits = {"train": (Xtr, Ytr), "val": (Xdev, Ydev), "test": (Xte, Yte)}
    if cfg.deep:
        return main_deep(cfg, splits, itos)

    print(f"\n== The first minibatch: -ln(1/27) = {-np.log(1 / 27):.4f} expected if every "
          f"character starts out equally likely")
    report = init_report(cfg, Xtr, Ytr)
    g = rng.Generator(cfg.seed)
    params = init_params(cfg, g)
    bnstats = init_running(cfg) if cfg.batchnorm else None
    n_params = sum(p.data.size for p in params.values())
    print(f"\n== Model: embedding {cfg.n_embd}, hidden {cfg.n_hidden}, {describe(cfg)}: "
          f"{n_params} parameters")

    print(f"\n== Training {cfg.steps} steps, lr {cfg.lr} then {cfg.lr / 10} "
          f"from step {cfg.lr_decay_step}")
    start = time.perf_counter()
    try:
        lossi = train(cfg, params, bnstats, Xtr, Ytr, g)
    except KeyboardInterrupt:  # Ctrl-C: keep the model trained so far
        save_model(out / "model.npz", params, bnstats, cfg)
        print(f"\nthe model trained so far is in {out / 'model.npz'}")
        raise
    seconds = time.perf_counter() - start
    final = {name: evaluate(params, X, Y, bnstats) for name, (X, Y) in splits.items()}
    print(f"  {seconds:.1f}s; " + ", ".join(f"{k} {v:.4f}" for k, v in final.items())
          + (" (BatchNorm's running estimates)" if cfg.batchnorm else ""))
    calibrated = {}
    if cfg.batchnorm:
        stats = calibrate(params, Xtr)
        calibrated = {name: evaluate(params, X, Y, stats) for name, (X, Y) in splits.items()}
        print("  " + ", ".join(f"{k} {v:.4f}" for k, v in calibrated.items())
              + " (statistics calibrated over the whole training set)")
        print(f"  running estimates vs calibration: means differ by at most "
              f"{np.abs(bnstats['mean'] - stats['mean']).max():.4f}, stds by at most "
              f"{np.abs(bnstats['std'] - stats['std']).max():.4f}")

    names = sample_names(lambda X: forward(params, X, bnstats)[0], cfg, cfg.samples, itos)
    print("\n== Samples\n  " + " ".join(names))

    save_model(out / "model.npz", params, bnstats, cfg)
    files = [str(out / "model.npz")]
    if cfg.plots:
        _, hpreact, h = first_batch(cfg, Xtr, Ytr)
        plot_losses(lossi, out / f"loss.{cfg.format}")
        plot_hidden_histograms(hpreact, h, describe(cfg), out / f"init_histograms.{cfg.format}")
        plot_saturation(h, describe(cfg), out / f"init_saturation.{cfg.format}")
        files += [str(out / f) for f in (f"loss.{cfg.format}", f"init_histograms.{cfg.format}",
                                         f"init_saturation.{cfg.format}")]
    print(f"\nwrote {', '.join(files)}")
    return dict(config=asdict(cfg), sizes=(len(Xtr), len(Xdev), len(Xte)),
                n_params=n_params, init_report=report, lossi=lossi, **final,
                calibrated=calibrated, samples=names, seconds=seconds, files=files)


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


if __name__ == "__main__":
    cli.run(main)
