"""Stage 06: building a WaveNet: a longer context, fused hierarchically.

Follows "Building makemore Part 5: Building a WaveNet" (makemore part 5). New over stage 05:
the context grows from 3 to 8 characters, and the network no longer squashes all of them
into one hidden layer at once: like WaveNet, it fuses two characters, then two pairs, then
two quadruples (a tree of three Linear -> BatchNorm1d -> Tanh blocks). The layers become
torch.nn-style building blocks (`Embedding`, `FlattenConsecutive`, `Sequential`, with
stage 04's `Linear`, `BatchNorm1d`, `Tanh`), `model.parameters()` and a `training` flag;
BatchNorm1d learns to handle 3-D input (the lecture's bug and its fix), on the fused
`batch_norm` of stage 05, which reduces over several dimensions. The engine gains
`squeeze` and `ndim`. Beyond the lecture: the same tree computed as WaveNet does, with
dilated causal convolutions (`conv1d`, `Conv1d`, `--conv`) over whole names at once.

    python 06_wavenet/train.py                       # the lecture's final model (~6 min)
    python 06_wavenet/train.py --conv                # the same tree as convolutions
    python 06_wavenet/train.py --model flat --block-size 3 --n-embd 10 --n-hidden 200
    python 06_wavenet/train.py --model flat --n-embd 10 --n-hidden 200   # context 8
    python 06_wavenet/train.py --n-embd 10 --n-hidden 68 --batchnorm-bug # hierarchical
    python 06_wavenet/train.py --n-embd 10 --n-hidden 68                 # BatchNorm fixed

What the default run prints (measured; 200,000 steps in 3.5-9 minutes on 2 shared cores,
about 1 ms of CPU per step):
    76579 parameters; loss 3.3167 at step 0; 17 of the lecture's 20 printed losses
    exactly, the other three 0.0001 apart; train 1.7690, val 1.9937, as the lecture's;
    and the lecture's 20 samples: arlij. chetta. heago. rocklei. hendrix. jamylie. ...
The lecture's performance log, measured (train / val): context 3 2.0583 / 2.1065,
context 8 flat 1.9163 / 2.0342, hierarchical 1.9419 / 2.0316, BatchNorm fixed
1.9110 / 2.0202, scaled up 1.7690 / 1.9937 (06_wavenet/README.md has the commands).
--conv: the same outputs, all positions of a name in one call. Trained on 4 whole names
per step (BatchNorm then normalizes with its running statistics: the batch's own would
let each name's later characters leak into its earlier outputs): train 1.7999, val
2.0072, at about the hierarchical model's characters per second.
"""

# %% Imports
from __future__ import annotations

import os
import sys
import time
import warnings
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
MODELS = ("flat", "hierarchical")  # the lecture's starting point, then WaveNet's tree


@dataclass
class Config:
    model: str = cli.arg("hierarchical", "flat: the whole context into one hidden layer "
                                         "(the lecture's starting point); hierarchical: "
                                         "fuse 2 characters, then 2 pairs, ... (WaveNet's "
                                         "tree)", choices=MODELS)
    conv: bool = cli.arg(False, "compute the hierarchical model with dilated causal "
                                "convolutions (kernel 2, dilation 1, 2, 4) and train it "
                                "on whole names at once")
    block_size: int = cli.arg(8, "context length: how many characters predict the next "
                                 "(a power of 2 for the hierarchical model)", min=1, max=32)
    n_embd: int = cli.arg(24, "dimensions of each character's embedding", min=1, max=1000)
    n_hidden: int = cli.arg(128, "neurons in each hidden layer", min=1, max=10_000)
    batchnorm_bug: bool = cli.arg(False, "the lecture's first BatchNorm1d: on 3-D input "
                                         "(B, T, C) it averages over dimension 0 only, so "
                                         "each position gets its own statistics")
    steps: int = cli.arg(200_000, "training steps (minibatches)", min=0)
    batch_size: int = cli.arg(32, "examples per minibatch (BatchNorm: one example has no "
                                  "spread to normalize by)", min=2, max=100_000)
    batch_names: int = cli.arg(4, "with --conv: whole names per minibatch (4 names are "
                                  "28.5 characters to predict, on average)", min=1,
                               max=10_000)
    lr: float = cli.arg(0.1, "learning rate", min=1e-9, max=1e6)
    lr_decay_step: int = cli.arg(150_000, "from this step on the learning rate is lr / 10",
                                 min=0)
    seed: int = cli.arg(42, "seed of the global generator (the lecture's "
                            "torch.manual_seed(42))", min=0, max=2**64 - 1)
    samples: int = cli.arg(20, "names to sample after training", min=0, max=10_000)
    out: str = cli.arg("out/06_wavenet", "output folder for figures and the checkpoint")
    plots: bool = cli.arg(True, "write figures")
    format: str = cli.arg("png", "file format of the figures: png, or svg and pdf to scale "
                                 "on slides", choices=cli.FIGURE_FORMATS)

    def check(self):
        if self.model == "hierarchical":
            cli.check(self.block_size >= 2 and self.block_size & (self.block_size - 1) == 0,
                      f"the hierarchical model fuses pairs, so --block-size must be a "
                      f"power of 2 (2, 4, 8, 16, 32), got {self.block_size}")
        cli.check(not self.conv or self.model == "hierarchical",
                  "--conv computes the hierarchical model: it cannot be used with "
                  "--model flat")
        cli.check(not self.batchnorm_bug or (self.model == "hierarchical" and not self.conv),
                  "--batchnorm-bug is about the hierarchical model's 3-D BatchNorm input "
                  "(not --model flat, not --conv)")


# %% Data
def show_examples(X, Y, itos, n=20):
    """The lecture's view of the dataset: `........ --> y`, `.......y --> u`, ..."""
    for x, y in zip(X[:n], Y[:n]):
        print("  " + "".join(itos[i] for i in x), "-->", itos[y])


def name_rows(words, block_size, stoi):
    """Whole names, for the convolutional model: row i of X is block_size '.'s and then
    name i, padded at the end with '.' up to the longest name; row i of Y is the targets,
    each character of the name and then the final '.', padded with -1. A name of L
    characters gives L + 1 targets: the same L + 1 examples build_dataset makes of it,
    in the same order. Returns X (n, block_size + longest), Y (n, longest + 1) and
    lengths (n,); longest is 15 in the training split."""
    longest = max(len(w) for w in words)
    X = np.zeros((len(words), block_size + longest), dtype=np.int64)
    Y = np.full((len(words), longest + 1), -1, dtype=np.int64)
    lengths = np.array([len(w) for w in words], dtype=np.int64)
    for i, w in enumerate(words):
        ix = [stoi[ch] for ch in w]
        X[i, block_size:block_size + len(w)] = ix
        Y[i, :len(w) + 1] = ix + [0]
    return X, Y, lengths


# %% Model
class Linear:
    """torch.nn.Linear's computation, x @ weight + bias, with weights drawn from `generator`
    and divided by sqrt(fan_in): unit-variance inputs then give unit-variance outputs.
    On (B, T, fan_in) input the same weights apply at every position: (B, T, fan_out)."""

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
    """torch.nn.BatchNorm1d: normalizes every feature over the batch (the fused
    `batch_norm`), then scales and shifts it by the trained gamma and beta. While
    `training`, the batch's statistics are used and the running buffers follow them with
    `momentum`; otherwise the buffers are used.

    On 3-D input (B, T, C) the statistics are taken over dimensions 0 and 1: each of the
    B x T positions is one more sample of the C features, which the next layer treats
    alike. The lecture's first version took them over dimension 0 only
    (`per_position=True`, a bug): each of the T positions then has its own statistics,
    estimated from B numbers, and running_mean becomes (1, T, C) instead of (1, 1, C)."""

    def __init__(self, dim, eps=1e-5, momentum=0.1, per_position=False):
        self.eps, self.momentum, self.per_position = eps, momentum, per_position
        self.training = True
        # parameters (trained with backprop)
        self.gamma = Tensor(np.ones(dim, dtype=np.float32), requires_grad=True)
        self.beta = Tensor(np.zeros(dim, dtype=np.float32), requires_grad=True)
        # buffers (trained with a running "momentum update")
        self.running_mean = np.zeros(dim, dtype=np.float32)
        self.running_var = np.ones(dim, dtype=np.float32)

    def __call__(self, x):
        if self.training:
            dims = (0,) if x.ndim == 2 or self.per_position else (0, 1)
            self.out, xmean, xvar = batch_norm(x, self.gamma, self.beta, self.eps,
                                               dims=dims)
            m = self.momentum  # numpy on the buffers: no graph (torch.no_grad())
            self.running_mean = (1 - m) * self.running_mean + m * xmean
            self.running_var = (1 - m) * self.running_var + m * xvar
        else:
            # the buffers have the shape of the last batch's statistics, e.g. (1, 1, C)
            # after a 3-D input; as (k, C) they also broadcast over a 2-D input (N, C)
            C = x.shape[-1]
            self.out, _, _ = batch_norm(x, self.gamma, self.beta, self.eps,
                                        self.running_mean.reshape(-1, C),
                                        self.running_var.reshape(-1, C))
        return self.out

    def parameters(self):
        return [self.gamma, self.beta]


class Tanh:
    def __call__(self, x):
        self.out = x.tanh()
        return self.out

    def parameters(self):
        return []


class Embedding:
    """torch.nn.Embedding: a table with one row per character (stage 03's `C`), looked up
    by index: (B, T) characters -> (B, T, embedding_dim)."""

    def __init__(self, num_embeddings, embedding_dim, generator=None):
        self.weight = Tensor(rng.randn(num_embeddings, embedding_dim, generator=generator),
                             requires_grad=True)

    def __call__(self, IX):
        self.out = self.weight[IX]
        return self.out

    def parameters(self):
        return [self.weight]


class FlattenConsecutive:
    """(B, T, C) -> (B, T/n, C*n): every n consecutive positions side by side, so that the
    next Linear fuses them. A view of the same numbers (no copy). When one position is
    left, its dimension of size 1 is dropped: (B, 1, C*n) -> (B, C*n)."""

    def __init__(self, n):
        self.n = n

    def __call__(self, x):
        B, T, C = x.shape
        x = x.view(B, T // self.n, C * self.n)
        if x.shape[1] == 1:
            x = x.squeeze(1)
        self.out = x
        return self.out

    def parameters(self):
        return []


class Sequential:
    """torch.nn.Sequential: the layers, applied one after the other."""

    def __init__(self, layers):
        self.layers = layers

    def __call__(self, x):
        for layer in self.layers:
            x = layer(x)
        self.out = x
        return self.out

    def parameters(self):
        # get parameters of all layers and stretch them out into one list
        return [p for layer in self.layers for p in layer.parameters()]


def build_model(cfg, generator=None):
    """The lecture's models. The weights are drawn in construction order (the embedding
    table, then each Linear's weight) from `generator`, by default the global one that
    the lecture seeds with torch.manual_seed(42).
      flat:          Embedding, FlattenConsecutive(block_size), Linear -> BatchNorm1d ->
                     Tanh, Linear: all characters at once into one hidden layer;
      hierarchical:  Embedding, then log2(block_size) times FlattenConsecutive(2),
                     Linear -> BatchNorm1d -> Tanh, then Linear: pairs of characters, then
                     pairs of pairs, ... (for block_size 8: 8 -> 4 -> 2 -> 1 positions).
    The hidden Linear layers have no bias (BatchNorm's beta replaces it)."""
    vocab_size = 27
    groups = [cfg.block_size] if cfg.model == "flat" else \
        [2] * (cfg.block_size.bit_length() - 1)               # 8 -> [2, 2, 2]
    layers, fan_in = [Embedding(vocab_size, cfg.n_embd, generator)], cfg.n_embd
    for n in groups:
        layers += [FlattenConsecutive(n),
                   Linear(fan_in * n, cfg.n_hidden, bias=False, generator=generator),
                   BatchNorm1d(cfg.n_hidden, per_position=cfg.batchnorm_bug), Tanh()]
        fan_in = cfg.n_hidden
    layers.append(Linear(cfg.n_hidden, vocab_size, generator=generator))
    model = Sequential(layers)
    # parameter init: the last layer less confident (small logits, loss near -ln(1/27))
    model.layers[-1].weight.data *= 0.1
    return model


def split_loss(model, X, Y, chunk=1000):
    """The lecture's split_loss (the model in evaluation mode). Evaluated in chunks:
    every layer keeps its output, and 182,625 examples at once would hold over 2 GB of
    them; chunks of 1,000 keep them in the CPU's cache, and are 2x faster than chunks
    of 10,000 (the chunks change nothing but the order of the final average's sum)."""
    total = 0.0
    with no_grad():
        for i in range(0, len(X), chunk):
            loss = cross_entropy(model(X[i:i + chunk]), Y[i:i + chunk])
            total += loss.item() * len(X[i:i + chunk])
    return total / len(X)


# %% Model: WaveNet's dilated causal convolutions (beyond the lecture)
class Conv1d:
    """torch.nn.Conv1d(in_channels, out_channels, kernel_size=2, dilation=d, bias=False)
    on channels-last input and without padding (the fused `conv1d`):
    (B, T, in_channels) -> (B, T - d, out_channels). Its weight is laid out as the Linear
    after FlattenConsecutive(2), (2 * in_channels, out_channels), the older position's
    rows first, so it can share that Linear's weight."""

    def __init__(self, in_channels, out_channels, dilation, weight=None, generator=None):
        fan_in = 2 * in_channels
        self.dilation = dilation
        self.weight = weight if weight is not None else Tensor(
            rng.randn(fan_in, out_channels, generator=generator) / fan_in**0.5,
            requires_grad=True)                           # (2 * in_channels, out_channels)

    def __call__(self, x):
        self.out = conv1d(x, self.weight, self.dilation)
        return self.out

    def parameters(self):
        return [self.weight]


class WaveNet(Sequential):
    """The hierarchical model computed at every position at once, as WaveNet does:
    Embedding, Conv1d with dilation 1, 2, 4 (each followed by BatchNorm1d and Tanh), and
    the output Linear at every position. Characters (B, T) -> logits
    (B, T - block_size + 1, 27): row t is what the hierarchical model predicts from the
    context idx[:, t : t + block_size]. Each pair, pair of pairs, ... is computed once and
    reused by every context that contains it, instead of once per context."""

    def __call__(self, idx, lengths=None):
        """`lengths` (B,): the rows are names of these lengths, padded at the end (the
        padding cannot reach the names' positions: every output looks only back). While
        training, BatchNorm works as `batch_norm_on_names` says."""
        x = idx
        for layer in self.layers:
            if isinstance(layer, BatchNorm1d) and layer.training:
                x = batch_norm_on_names(layer, x, within_names(x.shape[1], lengths))
            else:
                x = layer(x)
        self.out = x
        return self.out


def within_names(T, lengths=None):
    """(B, T) booleans for a layer's output of length T: True at the positions of each
    name, i.e. all but the last (longest - length) ones of its row (all without lengths)."""
    if lengths is None:
        return np.ones((1, T), dtype=bool)
    pad = lengths.max() - lengths                         # (B,) padding at each row's end
    return np.arange(T) < T - pad[:, None]


def batch_norm_on_names(bn, x, within):
    """The BatchNorm1d layer `bn`, training on whole names (x: (B, T, C)). Normalizing
    with the batch's own statistics, as the lecture's layer does, lets the later
    characters of a name reach its earlier outputs through them: training learns to
    read the very characters it is asked to predict. (Measured, 20,000 steps of 4 names:
    a training loss of 1.70 while the real loss is 2.25; statistics taken from the other
    names only leak too, one layer further on: 0.61 and 4.27.) So the names are
    normalized with the running statistics, which come from the batches before, and
    only then do those follow this batch's statistics over the positions `within` the
    names (not their padding). No gradient flows through the statistics; gamma and beta
    are trained as usual, and the model in evaluation mode is the same."""
    C = x.shape[-1]
    bn.out, _, _ = batch_norm(x, bn.gamma, bn.beta, bn.eps,
                              bn.running_mean.reshape(-1, C), bn.running_var.reshape(-1, C))
    values = x.data[np.broadcast_to(within, x.shape[:2])]     # (N, C): the names' positions
    m = bn.momentum  # numpy on the buffers: no graph
    bn.running_mean = (1 - m) * bn.running_mean + m * values.mean(0, keepdims=True)[None]
    bn.running_var = (1 - m) * bn.running_var + m * _spread(values, 0, ddof=1)[None]
    return bn.out


def wavenet(model):
    """The convolutional form of a hierarchical `model`, sharing its weights and its
    BatchNorm layers (so their running statistics too): the k-th FlattenConsecutive(2)
    -> Linear becomes one Conv1d with dilation 2**k."""
    layers, dilation = [], 1
    for layer in model.layers:
        if isinstance(layer, FlattenConsecutive):
            continue  # Conv1d pairs the positions itself
        if isinstance(layer, Linear) and layer is not model.layers[-1]:
            fan_in, fan_out = layer.weight.shape
            layer = Conv1d(fan_in // 2, fan_out, dilation, weight=layer.weight)
            dilation *= 2
        layers.append(layer)
    return WaveNet(layers)


def name_batch(names, ix):
    """Names ix of `name_rows` as one batch, cut to the longest of them:
    X (B, block_size + longest), Y (B, longest + 1) (-1 past each name's end), lengths."""
    X, Y, lengths = names
    block_size, longest = X.shape[1] - Y.shape[1] + 1, lengths[ix].max()
    return X[ix, :block_size + longest], Y[ix, :longest + 1], lengths[ix]


def conv_loss(model, Xb, Yb, lengths):
    """The mean loss over every character of the names: (loss, characters predicted)."""
    logits = model(Xb, lengths)                           # (B, longest + 1, 27)
    real = Yb >= 0                                        # (B, longest + 1) not padding
    return cross_entropy(logits[real], Yb[real]), int(real.sum())


def split_loss_names(model, names, chunk=200):
    """split_loss for the convolutional model: all the names of a split, every position:
    the same examples as the split's (X, Y), so the same loss. The names go shortest
    first, so that each chunk pads its names to about their own length."""
    order = np.argsort(names[2], kind="stable")                # by length
    total, count = 0.0, 0
    with no_grad():
        for i in range(0, len(order), chunk):
            loss, n = conv_loss(model, *name_batch(names, order[i:i + chunk]))
            total, count = total + loss.item() * n, count + n
    return total / count


# %% Training
def learning_rate(cfg, step):
    """The lecture's schedule: lr for the first lr_decay_step steps, then lr / 10."""
    return cfg.lr if step < cfg.lr_decay_step else cfg.lr / 10


def train(cfg, model, Xtr, Ytr, names=None, quiet=False):
    """The lecture's loop: minibatch SGD, the minibatches drawn from the global
    generator. With `names` (--conv) a minibatch is cfg.batch_names whole names instead
    of cfg.batch_size examples. Returns every step's loss and the number of characters
    predicted in all (for the throughput)."""
    parameters = model.parameters()
    lossi, chars = [], 0
    progress = cli.Progress(cfg.steps, every=10_000, quiet=quiet)
    for i in range(cfg.steps):
        if names is None:
            # minibatch construct
            ix = rng.randint(0, Xtr.shape[0], (cfg.batch_size,))       # (32,)
            Xb, Yb = Xtr[ix], Ytr[ix]                                  # (32, 8), (32,)
            # forward pass
            logits = model(Xb)                                         # (32, 27)
            loss, n = cross_entropy(logits, Yb), len(Yb)
        else:
            ix = rng.randint(0, len(names[0]), (cfg.batch_names,))     # (4,)
            loss, n = conv_loss(model, *name_batch(names, ix))
        # backward pass
        for p in parameters:
            p.grad = None
        loss.backward()
        # update: simple SGD
        lr = learning_rate(cfg, i)
        for p in parameters:
            p.data += -lr * p.grad
        # track stats (the loss itself; plot_losses takes the lecture's log10)
        lossi.append(loss.item())
        chars += n
        progress.update(i, lossi[-1], lr)
    return lossi, chars


def save_model(path, model, cfg):
    """Every layer's parameters and buffers, and the config, in one file."""
    arrays = {}
    for i, layer in enumerate(model.layers):
        for name in ("weight", "bias", "gamma", "beta", "running_mean", "running_var"):
            value = getattr(layer, name, None)
            if value is not None:
                arrays[f"layers.{i}.{name}"] = getattr(value, "data", value)
    cli.save_checkpoint(path, arrays, dict(config=asdict(cfg)))


def set_training(model, training):
    """The lecture's `for layer in model.layers: layer.training = False` (or True)."""
    for layer in model.layers:
        layer.training = training


def show_layer_shapes(model, X):
    """The lecture's look inside the model: each layer's output shape for a small batch
    (run in evaluation mode, which leaves BatchNorm's running statistics alone)."""
    set_training(model, False)
    with no_grad():
        model(X)
    set_training(model, True)
    shapes = [(layer.__class__.__name__, tuple(layer.out.shape)) for layer in model.layers]
    for name, shape in shapes:
        print(f"  {name:18s} {shape}")
    return shapes


def show_eval_mode_pitfall(model, block_size):
    """The lecture's "forgot eval mode" bug, on purpose: in training mode BatchNorm
    normalizes by the batch's own statistics, but one example (sampling feeds one) has
    no spread: its unbiased variance is 0 / 0 = nan, which flows into the logits (and
    makes torch.multinomial refuse the probabilities). Training mode also moves the
    running statistics, so they are put back afterwards. Returns the logits."""
    bns = [layer for layer in model.layers if isinstance(layer, BatchNorm1d)]
    saved = [(bn.running_mean, bn.running_var) for bn in bns]
    set_training(model, True)
    with no_grad(), np.errstate(invalid="ignore", divide="ignore"), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # numpy warns about the 0 / 0
        logits = model(np.zeros((1, block_size), dtype=np.int64)).data
    set_training(model, False)
    for bn, (mean, var) in zip(bns, saved):
        bn.running_mean, bn.running_var = mean, var
    return logits


# %% Sampling
def sample_names(model, cfg, n, itos, max_len=100):
    """Sample n names: start from a context of '.', draw the next character from the
    softmax with torch.multinomial's default sampling (without replacement), slide the
    context, stop at '.'. `model` maps contexts (1, block_size) to logits (1, 27) in
    evaluation mode (the convolutional model to (1, 1, 27)). The draws come from the
    global generator, continuing after training's, as in the lecture. A name stops at
    max_len characters: a badly trained model may never draw the '.'."""
    names = []
    for _ in range(n):
        out, context = [], [0] * cfg.block_size
        while len(out) < max_len:
            with no_grad():
                logits = model(np.array([context])).view(1, -1)     # (1, 27)
                probs = logits.data - logits.data.max()
                probs = np.exp(probs) / np.exp(probs).sum()         # softmax
            ix = int(rng.multinomial(probs[0], num_samples=1)[0])
            context = context[1:] + [ix]
            out.append(itos[ix])
            if ix == 0:
                break
        names.append("".join(out))
    return names


# %% Figures
def plot_losses(lossi, path, title, chunk=1000):
    """Left: log10 of every minibatch loss, too noisy to read. Right: the lecture's fix,
    the mean over chunks of 1,000 steps, `torch.tensor(lossi).view(-1, 1000).mean(1)`,
    where the learning-rate decay at step 150,000 shows as a step down."""
    plt = cli.pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8), layout="constrained")
    log_loss = np.log10(lossi)
    a.plot(log_loss, lw=0.3, color="C0")
    a.set_title("every minibatch", fontsize=11)
    m = len(log_loss) // chunk * chunk
    if m:
        b.plot(np.arange(m // chunk) * chunk + chunk / 2,
               log_loss[:m].reshape(-1, chunk).mean(1), lw=2, color="C1")
    b.set_title(f"mean over {chunk:,} steps", fontsize=11)
    for ax in (a, b):
        ax.set_xlabel("training step", fontsize=11)
        ax.set_ylabel("log10(loss / nats per character)", fontsize=11)
        ax.tick_params(labelsize=10)
        ax.grid(alpha=0.3)
    fig.suptitle(f"Training loss: {title}", fontsize=12)
    cli.save_figure(fig, path)


# %% Main
def describe(cfg):
    """A short name for the run's model, used in titles."""
    name = "WaveNet convolutions" if cfg.conv else cfg.model
    bug = ", BatchNorm bug" if cfg.batchnorm_bug else ""
    return (f"{name}, context {cfg.block_size}, n_embd {cfg.n_embd}, "
            f"n_hidden {cfg.n_hidden}{bug}")


def main(argv=None) -> dict:
    cfg = cli.parse_config(Config, argv, __doc__, prog="06_wavenet/train.py")
    out = cli.out_dir(cfg.out)  # fail now on an unusable folder, not after training
    cli.keep_freed_memory()  # evaluating 182,625 examples makes big arrays: reuse them
    words = data.load_names()
    stoi, itos = data.names_vocab(words)
    (Xtr, Ytr), (Xdev, Ydev), (Xte, Yte) = data.makemore_splits(cfg.block_size)
    print(f"{len(words)} names -> train {len(Xtr)}, dev {len(Xdev)}, test {len(Xte)} "
          f"examples of {cfg.block_size} characters")
    show_examples(Xtr, Ytr, itos)
    splits = {"train": (Xtr, Ytr), "val": (Xdev, Ydev), "test": (Xte, Yte)}

    rng.manual_seed(cfg.seed)  # torch.manual_seed(42): every draw below is from it
    model = build_model(cfg)
    parameters = model.parameters()
    n_params = sum(p.data.size for p in parameters)
    print(f"\n== Model ({describe(cfg)}): {n_params} parameters")
    shapes = show_layer_shapes(model, Xtr[:4])
    names = conv = None
    if cfg.conv:
        conv = wavenet(model)
        names = {split: name_rows(part, cfg.block_size, stoi)
                 for split, part in zip(splits, data.split_words(words))}
        # the lecture's last cell: all 8 positions of the second name in ONE call
        X1, _, lengths = name_batch(names["train"], np.array([0, 1]))
        X1, first = X1[1:, :cfg.block_size + lengths[1]], lengths[0] + 1
        set_training(model, False)
        with no_grad():
            one_by_one = model(Xtr[first:first + lengths[1] + 1]).data  # 8 contexts
            one_pass = conv(X1).data[0]       # (8, 27) from (1, 15): the layers keep it
        set_training(model, True)
        name = "".join(itos[i] for i in X1[0, cfg.block_size:])
        print(f"  as convolutions, all {len(one_pass)} positions of '{name}' in one pass "
              f"(largest difference to the {len(one_by_one)} contexts one by one: "
              f"{np.abs(one_pass - one_by_one).max():.1e}):")
        for layer in conv.layers:
            label = layer.__class__.__name__ + (f"(dilation {layer.dilation})"
                                                if isinstance(layer, Conv1d) else "")
            print(f"  {label:18s} {tuple(layer.out.shape)}")

    print(f"\n== Training {cfg.steps} steps, lr {cfg.lr} then {cfg.lr / 10} from step "
          f"{cfg.lr_decay_step}, " + (f"{cfg.batch_names} whole names per step"
                                      if cfg.conv else f"{cfg.batch_size} examples per step"))
    start, cpu_start = time.perf_counter(), time.process_time()
    try:
        lossi, chars = train(cfg, conv or model, Xtr, Ytr, names["train"] if names else None)
    except KeyboardInterrupt:  # Ctrl-C: keep the model trained so far
        save_model(out / "model.npz", model, cfg)
        print(f"\nthe model trained so far is in {out / 'model.npz'}")
        raise
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    speed = dict(seconds=seconds, cpu_seconds=cpu,
                 ms_per_step=1000 * seconds / max(cfg.steps, 1),
                 chars_per_second=chars / seconds if seconds > 0 else 0.0)
    # CPU time too: on a machine busy with other work it is what this run itself cost
    print(f"  {seconds:.1f}s ({cpu:.1f}s of CPU), {speed['ms_per_step']:.2f} ms/step, "
          f"{speed['chars_per_second']:,.0f} characters predicted per second")
    running_shapes = [tuple(np.shape(layer.running_mean)) for layer in model.layers
                      if isinstance(layer, BatchNorm1d)]
    print(f"  BatchNorm1d running_mean shapes: {', '.join(map(str, running_shapes))}")

    # put layers into eval mode (needed for batchnorm especially)
    set_training(model, False)
    final = {split: split_loss(model, X, Y) for split, (X, Y) in splits.items()}
    print("\n== Loss, layers in evaluation mode: "
          + ", ".join(f"{k} {v:.4f}" for k, v in final.items()))
    conv_final = {}
    if cfg.conv:
        conv_final = {split: split_loss_names(conv, rows) for split, rows in names.items()}
        print("  the same, computed by the convolutions over whole names: "
              + ", ".join(f"{k} {v:.4f}" for k, v in conv_final.items()))

    pitfall = show_eval_mode_pitfall(model, cfg.block_size)
    print(f"\n== Forgetting eval mode: one example in training mode gives "
          f"{int(np.isnan(pitfall).sum())} nan logits of {pitfall.size} (BatchNorm's "
          f"variance of one number is 0/0)")

    names_out = sample_names(conv or model, cfg, cfg.samples, itos)
    print("\n== Samples\n  " + " ".join(names_out))

    save_model(out / "model.npz", model, cfg)
    cli.write_text(out / "samples.txt", "\n".join(names_out) + "\n")
    files = [str(out / "model.npz"), str(out / "samples.txt")]
    if cfg.plots and lossi:
        plot_losses(lossi, out / f"loss.{cfg.format}", describe(cfg))
        files.append(str(out / f"loss.{cfg.format}"))
    print(f"\nwrote {', '.join(files)}")
    return dict(config=asdict(cfg), sizes=(len(Xtr), len(Xdev), len(Xte)),
                n_params=n_params, shapes=shapes, running_shapes=running_shapes,
                lossi=lossi, **final, conv=conv_final, pitfall=pitfall,
                samples=names_out, chars=chars, **speed, files=files)


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

    # -- new in stage 06: squeeze, and ndim --
    def squeeze(self, dim):
        """Drop dimension `dim` if its size is 1: (B, 1, C) -> (B, C). Also a view."""
        if self.data.shape[dim] != 1:
            return self
        dim %= self.data.ndim
        return self.view(*(n for i, n in enumerate(self.data.shape) if i != dim))

    @property
    def ndim(self):
        return self.data.ndim

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


# %% Engine: new in stage 06: the dilated causal convolution (beyond the lecture)
def conv1d(x, weight, dilation):
    """A convolution with kernel size 2 along the time axis of x (B, T, C), channels last,
    without padding: output t sees input positions t and t + dilation,
        out[:, t] = cat(x[:, t], x[:, t + dilation]) @ weight      (B, T - dilation, N)
    with weight (2C, N), the older position's C rows first. It is causal: output t only
    looks back from input position t + dilation, never ahead. With dilation 1 it is
    FlattenConsecutive(2) -> Linear computed at every position instead of every second
    one; stacking dilations 1, 2, 4 gives each output a context of 8 characters (WaveNet,
    van den Oord et al. 2016). As ONE op: one matmul forward, two backward."""
    B, T, C = x.shape
    assert 0 < dilation < T, f"dilation {dilation} needs more than {dilation} positions"
    pairs = np.concatenate([x.data[:, :-dilation], x.data[:, dilation:]], axis=2)
    out = Tensor(_matmul(pairs, weight.data), _children=(x, weight), _op="conv1d")

    def _backward(g):  # g (B, T - dilation, N): the matmul's rules, then un-pair
        if weight.requires_grad:
            weight._accumulate(pairs.reshape(-1, 2 * C).T @ g.reshape(-1, g.shape[-1]))
        if x.requires_grad:
            dpairs = _matmul(g, weight.data.T)                # (B, T - dilation, 2C)
            dx = np.zeros_like(x.data)
            dx[:, :-dilation] += dpairs[:, :, :C]  # every position is the older half of
            dx[:, dilation:] += dpairs[:, :, C:]   # one pair and the newer half of another
            x._accumulate(dx)
    out._backward = _backward
    return out


if __name__ == "__main__":
    cli.run(main)
