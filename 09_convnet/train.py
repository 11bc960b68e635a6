"""Stage 09: convolutional networks on images: LeCun et al. 1989 reproduced, then a modern
CNN on Fashion-MNIST.

Text came one token after another; an image comes as a grid, and what makes a "7" is a
pattern of strokes wherever it sits. A convolution slides one small filter over the whole
grid: the same few weights look for their pattern at every position (weight sharing),
so a network needs far fewer parameters than a fully connected one, and what it learns in
one corner works in every other. New over stage 08: images as (B, C, H, W) arrays; the
engine's `conv2d` (im2col: every window copied into a row, then one matmul) and
`max_pool2d`, each with its backward pass; `Conv2d`, `BatchNorm2d`, `MaxPool2d` and
`Flatten` layers; SGD with momentum next to stage 08's AdamW; accuracy, a validation split
and early stopping; data augmentation; int8 quantization; reading handwritten digits from a
picture. Stage 08's recurrent cells are not carried on (the engine keeps its fused
`recurrence`: the engine only grows).

    python 09_convnet/train.py                       # Fashion-MNIST: baselines, then the CNN
    python 09_convnet/train.py --task lecun1989      # the 1989 network on 5,000 digits
    python 09_convnet/train.py --task lecun1989 --cross-entropy --adamw --augment --relu-dropout
    python 09_convnet/train.py --task tricks         # optimizers, dropout, augmentation
    python 09_convnet/train.py --read digits.png     # read a picture of handwritten digits

What it prints (measured; README.md has the lesson notes and tables,
tests/benchmarks/README.md the timings):
    default run        test accuracy: logistic regression 84.28%, MLP 89.04%, CNN 92.21%
                       (8 epochs each; the CNN trains in about 4 minutes); its weights in
                       int8: 4.0x smaller, 92.18%
    --task lecun1989   9,760 parameters; after 23 passes train error 0.92%, test error
                       5.00% (50 of 1,000 digits; the paper: 5.0%, 102 of its 2,007)
    --read             a row of digits it never trained on, read back (tests)
"""

# %% Imports
from __future__ import annotations

import math
import os
import sys
import time
from collections import namedtuple
from dataclasses import asdict, dataclass, replace
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
    task: str = cli.arg("fashion", "fashion: Fashion-MNIST, two baselines and a CNN; "
                        "lecun1989: the 1989 network on 16 x 16 digits; tricks: the CNN "
                        "trained with each training trick in turn, on a subset",
                        choices=("fashion", "lecun1989", "tricks"))
    # Fashion-MNIST and the tricks
    epochs: int = cli.arg(8, "passes over the training images", min=1, max=1000)
    batch_size: int = cli.arg(64, "images per minibatch", min=1, max=60_000)
    lr: float = cli.arg(2e-3, "learning rate at the start (linear decay to 10% of it)",
                        min=1e-9, max=10)
    optimizer: str = cli.arg("adamw", "sgd, momentum (sgd with momentum 0.9), or adamw",
                             choices=("sgd", "momentum", "adamw"))
    weight_decay: float = cli.arg(1e-4, "decoupled weight decay (AdamW) or L2 (SGD)",
                                  min=0, max=100)
    channels: int = cli.arg(16, "filters of the first convolution (the second has twice "
                                "as many)", min=1, max=1024)
    dropout: float = cli.arg(0.0, "dropout before the last layer while training", min=0,
                             max=0.99)
    augment: bool = cli.arg(False, "random shifts by up to 2 pixels and (fashion) "
                                   "horizontal flips while training; lecun1989: shifts by "
                                   "up to 1 pixel (modern step 3)")
    patience: int = cli.arg(0, "early stopping: stop after this many epochs without a "
                               "better validation loss, keep the best (0: off)", min=0)
    val_size: int = cli.arg(5000, "training images held out for validation", min=1,
                            max=30_000)
    subset: int = cli.arg(0, "a quick run: only this many training and test images (0: "
                             "all; --task tricks: 10,000 training images)", min=0,
                          max=60_000)
    baselines: bool = cli.arg(True, "train logistic regression and an MLP before the CNN "
                                    "(--task fashion)")
    # LeCun 1989 and its modern steps
    passes: int = cli.arg(0, "lecun1989: passes over the 4,000 training digits (0: the "
                             "step's own: 23, 46 with --adamw, 60 with --augment, 80 "
                             "with --relu-dropout)", min=0, max=1000)
    cross_entropy: bool = cli.arg(False, "lecun1989 step 1: softmax and cross-entropy "
                                         "instead of tanh outputs and squared error")
    adamw: bool = cli.arg(False, "lecun1989 step 2: AdamW, lr 3e-4 decaying to 1e-4, "
                                 "instead of SGD")
    relu_dropout: bool = cli.arg(False, "lecun1989 step 4: ReLU instead of tanh, dropout "
                                        "0.25 before H3")
    # reading digits
    read: str = cli.arg("", "a picture (PNG or JPEG) of handwritten digits to read, with "
                            "a CNN trained on 4,500 of the 5,000 digits (trained on first "
                            "use, then kept in --out as digits.npz)")
    seed: int = cli.arg(1337, "seed of the generator", min=0, max=2**64 - 1)
    out: str = cli.arg("out/09_convnet", "output folder for figures and models")
    plots: bool = cli.arg(True, "write figures")
    format: str = cli.arg("png", "file format of the figures: png, or svg and pdf to scale "
                                 "on slides", choices=cli.FIGURE_FORMATS)

    def check(self):
        lecun = (self.cross_entropy, self.adamw, self.relu_dropout, self.passes)
        cli.check(self.task == "lecun1989" or not any(lecun),
                  "--cross-entropy, --adamw, --relu-dropout and --passes are for "
                  "--task lecun1989")


# %% Data
CLASSES = data.FASHION_CLASSES  # T-shirt/top, Trouser, Pullover, ..., Ankle boot
# Fashion-MNIST's pixel mean and standard deviation (of the training images, in [0, 1]):
# inputs centred and scaled to unit variance train faster
FASHION_MEAN, FASHION_STD = 0.2860, 0.3530


def shuffled(n, g):
    """A random order of 0..n-1 (torch.randperm's role), from the generator g."""
    return np.argsort(rng.rand(n, generator=g), kind="stable")


def fashion_splits(cfg, g):
    """{'train', 'val', 'test'}: (images (N, 1, 28, 28) float32, labels (N,) int64). The
    validation images are cut from the training set (the test set is used once, at the
    end); pixels go from 0..255 to (x / 255 - mean) / std."""
    (Xtr, Ytr), (Xte, Yte) = data.load_fashion_mnist()
    order = shuffled(len(Xtr), g)
    val, train = order[:cfg.val_size], order[cfg.val_size:]
    if cfg.subset:  # a quick run: fewer training and test images
        train, Xte, Yte = train[:cfg.subset], Xte[:cfg.subset], Yte[:cfg.subset]

    def prep(X, Y):
        X = (X.astype(np.float32) / 255 - FASHION_MEAN) / FASHION_STD
        return X[:, None], Y.astype(np.int64)     # a channel axis: (N, 1, 28, 28)
    return {"train": prep(Xtr[train], Ytr[train]), "val": prep(Xtr[val], Ytr[val]),
            "test": prep(Xte, Yte)}


def resize_bilinear(images, size):
    """(N, H, W) -> (N, size, size) by bilinear interpolation, as
    F.interpolate(mode='bilinear', align_corners=False): output pixel i samples the input
    at (i + 0.5) * H / size - 0.5, between its two nearest pixels in each direction."""
    def weights(n_in):
        pos = np.clip((np.arange(size) + 0.5) * n_in / size - 0.5, 0, n_in - 1)
        lo = np.floor(pos).astype(int)
        hi = np.minimum(lo + 1, n_in - 1)
        frac = (pos - lo).astype(np.float32)
        return lo, hi, frac
    (r0, r1, fr), (c0, c1, fc) = weights(images.shape[1]), weights(images.shape[2])
    x = images.astype(np.float32)
    rows = x[:, r0] * (1 - fr)[:, None] + x[:, r1] * fr[:, None]       # (N, size, W)
    return rows[:, :, c0] * (1 - fc) + rows[:, :, c1] * fc             # (N, size, size)


def digits_1989(g, n_test=1000):
    """LeCun 1989's data, rebuilt from the 5,000 MNIST digits: 16 x 16 images (bilinear)
    with pixels in [-1, 1] (-1: the background), targets +1 for the right digit and -1
    for the other nine, shuffled and split 4,000 / 1,000. (The paper: 7,291 training and
    2,007 test digits from US zip codes, 16 x 16.)"""
    X, Y = data.load_mnist5k()
    X = resize_bilinear(X, 16) / 127.5 - 1                   # (5000, 16, 16) in [-1, 1]
    order = shuffled(len(X), g)
    X, Y = X[order][:, None].astype(np.float32), Y[order].astype(np.int64)
    T = np.full((len(Y), 10), -1.0, dtype=np.float32)
    T[np.arange(len(Y)), Y] = 1.0                            # +-1 targets (B, 10)
    n = len(X) - n_test
    return {"train": (X[:n], Y[:n], T[:n]), "test": (X[n:], Y[n:], T[n:])}


def shift(x, dy, dx, fill):
    """x (B, C, H, W) moved dy pixels down and dx right; the uncovered edge is `fill`."""
    out = np.full_like(x, fill)
    H, W = x.shape[2:]
    out[:, :, max(dy, 0):H + min(dy, 0), max(dx, 0):W + min(dx, 0)] = \
        x[:, :, max(-dy, 0):H + min(-dy, 0), max(-dx, 0):W + min(-dx, 0)]
    return out


def augment(x, g, max_shift, flips, fill):
    """A new random version of each image of the batch x (B, C, H, W) for this step: moved
    by up to max_shift pixels each way and, with flips, mirrored left-right with
    probability 1/2. The label stays the same: a shirt moved or mirrored is still a
    shirt (a mirrored digit is not a digit, so no flips for digits)."""
    shifts = rng.randint(-max_shift, max_shift + 1, (len(x), 2), generator=g)
    out = np.empty_like(x)
    for i, (dy, dx) in enumerate(shifts):
        out[i] = shift(x[i:i + 1], int(dy), int(dx), fill)[0]
    if flips:
        mirror = rng.rand(len(x), generator=g) < 0.5
        out[mirror] = out[mirror][..., ::-1]
    return out


# %% Model: layers
class Module:
    """The part of torch.nn.Module the lecture uses: `parameters()` collects the tensors
    that need gradients from the attributes (layers, lists of layers), and
    `train()` / `eval()` set the `training` flag everywhere (dropout acts only when
    training)."""

    training = True

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def children(self):
        for value in vars(self).values():
            for item in (value if isinstance(value, list) else [value]):
                if isinstance(item, Module):
                    yield item

    def named_parameters(self, prefix=""):
        """(name, tensor) pairs in the order the layers were made, named by attribute:
        'blocks.layers.0.sa.heads.0.key.weight', ..."""
        for name, value in vars(self).items():
            items = [(f"{name}.{i}", v) for i, v in enumerate(value)] \
                if isinstance(value, list) else [(name, value)]
            for key, item in items:
                if isinstance(item, Tensor) and item.requires_grad:
                    yield prefix + key, item
                elif isinstance(item, Module):
                    yield from item.named_parameters(f"{prefix}{key}.")

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def apply(self, fn):
        """fn(module) for every module, children first (as torch's `apply`)."""
        for child in self.children():
            child.apply(fn)
        fn(self)
        return self

    def train(self, mode=True):
        self.training = mode
        for child in self.children():
            child.train(mode)
        return self

    def eval(self):
        return self.train(False)

    def zero_grad(self):
        for p in self.parameters():
            p.grad = None


def normal_init(shape, std, generator):
    """torch.nn.init.normal_(a tensor of this shape, 0, std), from `generator`."""
    return rng.normal(math.prod(shape), 0.0, std, generator=generator).reshape(shape)


class Linear(Module):
    """nn.Linear: y = x @ weight + bias, with the weight stored (fan_in, fan_out) so that
    x @ weight needs no transpose. Initialized as torch does, uniform in +-1/sqrt(fan_in),
    drawn in torch's (fan_out, fan_in) layout and order, so a run seeded like the
    lecture's starts from the same numbers."""

    def __init__(self, fan_in, fan_out, bias=True, generator=None):
        bound = 1 / math.sqrt(fan_in)
        w = rng.uniform((fan_out, fan_in), -bound, bound, generator=generator)
        self.weight = Tensor(np.ascontiguousarray(w.T), requires_grad=True)  # (in, out)
        self.bias = Tensor(rng.uniform(fan_out, -bound, bound, generator=generator),
                           requires_grad=True) if bias else None

    def forward(self, x):
        return linear(x, self.weight, self.bias)   # (..., fan_in) -> (..., fan_out)


class Conv2d(Module):
    """nn.Conv2d: out_channels filters, each (in_channels, k, k), slid over the image with
    `stride`, after `padding` pixels of zeros around it: (B, C, H, W) -> (B, O, H', W').
    Initialized as torch does, weight and bias uniform in +-1/sqrt(fan_in), fan_in = C k k
    (the numbers one output reads)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 generator=None):
        self.stride, self.padding = stride, padding
        bound = 1 / math.sqrt(in_channels * kernel_size**2)
        shape = (out_channels, in_channels, kernel_size, kernel_size)
        self.weight = Tensor(rng.uniform(shape, -bound, bound, generator=generator),
                             requires_grad=True)
        self.bias = Tensor(rng.uniform(out_channels, -bound, bound, generator=generator),
                           requires_grad=True)

    def forward(self, x):
        return conv2d(x, self.weight, self.bias, self.stride, self.padding)


class BatchNorm2d(Module):
    """nn.BatchNorm2d: stage 04's BatchNorm, one mean and variance per channel, taken over
    the batch AND every position of the image (dims 0, 2, 3), since a channel is one
    filter applied everywhere. Running estimates for evaluation, as in stage 04. As the
    lecture's BatchNorm1d, it normalizes with the unbiased variance (torch's normalizes
    with the biased one; over the B x H x W = 64 x 28 x 28 values of the first BatchNorm
    and 64 x 14 x 14 of the second, the two variances differ by 0.002% and 0.008%)."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1):
        self.eps, self.momentum = eps, momentum
        self.weight = Tensor(np.ones(num_features, dtype=np.float32), requires_grad=True)
        self.bias = Tensor(np.zeros(num_features, dtype=np.float32), requires_grad=True)
        self.running_mean = np.zeros((1, num_features, 1, 1), dtype=np.float32)
        self.running_var = np.ones((1, num_features, 1, 1), dtype=np.float32)

    def forward(self, x):
        C = self.weight.shape[0]
        # (C, 1, 1) broadcasts over H and W: batch_norm's "features" are the channels here
        gain, bias = self.weight.view(C, 1, 1), self.bias.view(C, 1, 1)  # per channel
        if not self.training:
            out, _, _ = batch_norm(x, gain, bias, self.eps, self.running_mean,
                                   self.running_var)
            return out
        out, mean, var = batch_norm(x, gain, bias, self.eps, dims=(0, 2, 3))
        m = self.momentum
        self.running_mean = (1 - m) * self.running_mean + m * mean
        self.running_var = (1 - m) * self.running_var + m * var
        return out


class MaxPool2d(Module):
    """nn.MaxPool2d(k): the largest value of each k x k block, halving H and W for k = 2:
    a pattern found anywhere in the block counts, so a shift that stays inside the block
    does not change the output."""

    def __init__(self, kernel_size=2):
        self.kernel_size = kernel_size

    def forward(self, x):
        return max_pool2d(x, self.kernel_size)


class Flatten(Module):
    """nn.Flatten: (B, C, H, W) -> (B, C * H * W), for the Linear layers at the end."""

    def forward(self, x):
        return x.view(x.shape[0], -1)


class ReLU(Module):
    def forward(self, x):
        return x.relu()


class Dropout(Module):
    """nn.Dropout: while training, zero a random fraction p of the values (masks from
    `generator`); in evaluation, pass everything through."""

    def __init__(self, p, generator=None):
        self.p, self.generator = p, generator

    def forward(self, x):
        return x.dropout(self.p, self.generator) if self.training and self.p > 0 else x


class Sequential(Module):
    """nn.Sequential: the layers applied one after the other."""

    def __init__(self, layers):
        self.layers = list(layers)

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


# %% Model: LeCun et al. 1989
class LeNet1989(Module):
    """The network of "Backpropagation Applied to Handwritten Zip Code Recognition"
    (LeCun et al., 1989), 9,760 parameters, on 16 x 16 digits in [-1, 1]:
        H1   12 planes of 8 x 8: 5 x 5 filters, stride 2, over the input padded with -1
        H2   12 planes of 4 x 4: 5 x 5 filters, stride 2, padded with -1 too (also after
             ReLU, as the reproduction's modern.py does, though a ReLU never outputs -1),
             each plane reading 8 of H1's 12
        H3   30 units, fully connected to H2's 192
        out  10 units, fully connected to H3
    Each H1 and H2 unit has its own bias (the paper's; not one per plane); tanh after every
    layer; weights uniform in +-2.4 / sqrt(fan_in), biases 0 (karpathy/lecun1989-repro's
    repro.py starts the 10 output biases at -1, as nine of ten targets are -1; its
    modern.py at 0). The modern steps change the
    output (logits for cross-entropy) and the non-linearity (ReLU, with dropout)."""

    def __init__(self, generator=None, logits=False, relu=False, dropout=0.0):
        def winit(fan_in, *shape):
            bound = 2.4 / math.sqrt(fan_in)
            return Tensor(rng.uniform(shape, -bound, bound, generator=generator),
                          requires_grad=True)

        def zeros(*shape):
            return Tensor(np.zeros(shape, dtype=np.float32), requires_grad=True)
        self.H1w, self.H1b = winit(5 * 5 * 1, 12, 1, 5, 5), zeros(12, 8, 8)
        self.H2w, self.H2b = winit(5 * 5 * 8, 12, 8, 5, 5), zeros(12, 4, 4)
        self.H3w, self.H3b = winit(4 * 4 * 12, 4 * 4 * 12, 30), zeros(30)
        self.outw, self.outb = winit(30, 30, 10), zeros(10)
        self.logits, self.relu = logits, relu
        self.dropout = Dropout(dropout, generator)

    def act(self, x):
        return x.relu() if self.relu else x.tanh()

    def forward(self, x):                                     # x (B, 1, 16, 16)
        x = self.act(conv2d(x, self.H1w, None, stride=2, padding=2, pad_value=-1.0)
                     + self.H1b)                              # (B, 12, 8, 8)
        # H2: the paper connects each plane to 8 of H1's 12 without saying which; three
        # blocks of 4 planes read planes 0-7, 4-11, and 0-3 with 8-11
        blocks = [(x[:, 0:8], self.H2w[0:4]), (x[:, 4:12], self.H2w[4:8]),
                  (cat([x[:, 0:4], x[:, 8:12]], dim=1), self.H2w[8:12])]
        x = cat([conv2d(xi, wi, None, stride=2, padding=2, pad_value=-1.0)
                 for xi, wi in blocks], dim=1) + self.H2b     # (B, 12, 4, 4)
        x = self.dropout(self.act(x))
        x = self.act(x.view(x.shape[0], -1) @ self.H3w + self.H3b)  # (B, 30)
        x = x @ self.outw + self.outb                        # (B, 10)
        return x if self.logits else x.tanh()


# %% Model: Fashion-MNIST
def logistic_regression(g):
    """The linear baseline: each of the 784 pixels votes for each class with a weight."""
    return Sequential([Flatten(), Linear(784, 10, generator=g)])


def mlp(g):
    """A fully connected baseline, 784-128-64-10 with ReLU: no idea that pixels have
    neighbours (shuffle all pixels the same way and it learns exactly as well)."""
    return Sequential([Flatten(), Linear(784, 128, generator=g), ReLU(),
                       Linear(128, 64, generator=g), ReLU(), Linear(64, 10, generator=g)])


def convnet(cfg, g):
    """A small modern CNN: twice [3 x 3 convolution (padding 1 keeps the size), BatchNorm,
    ReLU, 2 x 2 max-pool], then a hidden Linear layer and the output:
        (B, 1, 28, 28) -> (B, c, 14, 14) -> (B, 2c, 7, 7) -> (B, 128) -> (B, 10)."""
    c = cfg.channels
    # A convolution's bias is wasted before BatchNorm, which subtracts the mean anyway (as
    # in stage 04); kept here, as torch's Conv2d has one unless told otherwise.
    return Sequential([                                                    # (B, 1, 28, 28)
        Conv2d(1, c, 3, padding=1, generator=g), BatchNorm2d(c), ReLU(),    # (B, c, 28, 28)
        MaxPool2d(2),                                                       # (B, c, 14, 14)
        Conv2d(c, 2 * c, 3, padding=1, generator=g), BatchNorm2d(2 * c), ReLU(),
        MaxPool2d(2),                                                       # (B, 2c, 7, 7)
        Flatten(),                                                          # (B, 98c)
        Linear(2 * c * 7 * 7, 128, generator=g), ReLU(), Dropout(cfg.dropout, g),
        Linear(128, 10, generator=g)])                                      # (B, 10)


# %% Training
class AdamW:
    """torch.optim.AdamW's algorithm, step for step: decoupled weight decay
    p -= lr * wd * p first, then Adam: running means of the gradient (m) and of its square
    (v), both corrected for starting at zero, and the update lr * m_hat / (sqrt(v_hat) +
    eps). As in torch, each parameter counts its own steps (one without a gradient is
    skipped, and its count does not move). Weight decay applies to every parameter
    (torch's default) or, as nanoGPT does, to the matrices only (not to biases and
    LayerNorm weights)."""

    def __init__(self, named_params, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01,
                 decay="all"):
        self.names, self.params = zip(*named_params)
        self.lr, self.betas, self.eps = lr, betas, eps
        self.weight_decay = [weight_decay if decay == "all" or p.data.ndim >= 2 else 0.0
                             for p in self.params]
        self.m = [np.zeros_like(p.data) for p in self.params]
        self.v = [np.zeros_like(p.data) for p in self.params]
        self.t = np.zeros(len(self.params), dtype=np.int64)  # steps taken, per parameter

    def zero_grad(self):
        for p in self.params:
            p.grad = None

    def step(self, lr=None):
        lr = self.lr if lr is None else lr
        beta1, beta2 = self.betas
        for i, (p, m, v, wd) in enumerate(zip(self.params, self.m, self.v,
                                              self.weight_decay)):
            g = p.grad
            if g is None:
                continue
            self.t[i] += 1
            t = int(self.t[i])
            step_size = lr / (1 - beta1**t)                # lr / bias correction 1
            bias_correction2_sqrt = math.sqrt(1 - beta2**t)
            if wd:
                p.data *= 1 - lr * wd                      # decoupled weight decay
            # torch's arithmetic, in place (every array of a big model is large)
            tmp = np.subtract(g, m)                        # m = beta1 m + (1-beta1) g,
            tmp *= 1 - beta1                               # as m += (1-beta1) (g - m)
            m += tmp
            np.multiply(g, 1 - beta2, out=tmp)             # v = beta2 v + (1-beta2) g^2
            tmp *= g
            v *= beta2
            v += tmp
            denom = np.sqrt(v)
            denom /= bias_correction2_sqrt
            denom += self.eps
            np.multiply(m, step_size, out=tmp)             # p -= step_size * m / denom
            tmp /= denom
            p.data -= tmp

    def state(self):
        """Arrays for a checkpoint."""
        arrays = {"adam.t": self.t}
        for name, m, v in zip(self.names, self.m, self.v):
            arrays[f"adam.m.{name}"], arrays[f"adam.v.{name}"] = m, v
        return arrays

    def load_state(self, arrays):
        self.t[...] = arrays["adam.t"]
        for name, m, v in zip(self.names, self.m, self.v):
            m[...], v[...] = arrays[f"adam.m.{name}"], arrays[f"adam.v.{name}"]


class SGD:
    """torch.optim.SGD: p -= lr * g, with g the gradient plus weight_decay * p (L2), and,
    with momentum, a running velocity v = momentum * v + g used in place of g: steps that
    agree add up, steps that zigzag cancel out."""

    def __init__(self, params, lr, momentum=0.0, weight_decay=0.0):
        self.params, self.lr = list(params), lr
        self.momentum, self.weight_decay = momentum, weight_decay
        self.v = [None] * len(self.params)

    def zero_grad(self):
        for p in self.params:
            p.grad = None

    def step(self, lr=None):
        lr = self.lr if lr is None else lr
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            g = p.grad + self.weight_decay * p.data if self.weight_decay else p.grad
            if self.momentum:
                self.v[i] = g if self.v[i] is None else self.momentum * self.v[i] + g
                g = self.v[i]
            p.data -= lr * g


def make_optimizer(cfg, model):
    if cfg.optimizer == "adamw":
        return AdamW(model.named_parameters(), cfg.lr, weight_decay=cfg.weight_decay)
    return SGD(model.parameters(), cfg.lr, momentum=0.9 if cfg.optimizer == "momentum"
               else 0.0, weight_decay=cfg.weight_decay)


def evaluate(model, X, Y, batch_size=1000):
    """(mean cross-entropy, accuracy) of the model on images X and labels Y, in evaluation
    mode (BatchNorm's running statistics, no dropout), without a graph."""
    model.eval()
    losses, correct = [], 0
    with no_grad():
        for i in range(0, len(X), batch_size):
            logits = model(Tensor(X[i:i + batch_size]))
            y = Y[i:i + batch_size]
            losses.append(cross_entropy(logits, y).item() * len(y))
            correct += int((logits.data.argmax(axis=1) == y).sum())
    model.train()
    return sum(losses) / len(X), correct / len(X)


def lr_at(cfg, step, total):
    """Linear decay from lr to lr / 10 over the run (the last steps take small steps)."""
    return cfg.lr * (1 - 0.9 * step / max(total - 1, 1))


def all_modules(model):
    """Every module of the model, children first."""
    found = []
    model.apply(found.append)
    return found


def model_arrays(model):
    """What a trained model is, by name: its parameters and BatchNorm's running
    statistics (for a checkpoint, or to keep the best epoch's model)."""
    arrays = {name: p.data for name, p in model.named_parameters()}
    for i, m in enumerate(all_modules(model)):
        if isinstance(m, BatchNorm2d):
            arrays[f"bn{i}.running_mean"], arrays[f"bn{i}.running_var"] = \
                m.running_mean, m.running_var
    return arrays


def set_model_arrays(model, arrays):
    """The inverse of model_arrays: put the arrays back into the model."""
    for name, p in model.named_parameters():
        p.data = arrays[name]
    for i, m in enumerate(all_modules(model)):
        if isinstance(m, BatchNorm2d):
            m.running_mean = arrays[f"bn{i}.running_mean"]
            m.running_var = arrays[f"bn{i}.running_var"]
    return model


def save_model(path, model, cfg):
    cli.save_checkpoint(path, model_arrays(model), dict(config=asdict(cfg)))


def load_model(path, model):
    """Fill the model from a checkpoint of save_model's, each array checked for its name,
    shape and kind (a damaged or foreign file is one line)."""
    return set_model_arrays(model, cli.load_checkpoint_arrays(path, model_arrays(model)))


def train_classifier(cfg, model, splits, g, name, quiet=False):
    """Minibatch training for cfg.epochs epochs: each epoch a new random order of the
    training images, each batch (augmented, with --augment) through forward, backward and
    an update. After every epoch, the loss and accuracy on the validation images; with
    --patience, training stops when the validation loss has not improved for that many
    epochs and the
    best epoch's model is restored, also when the last epochs were worse without
    stopping (early stopping). Ctrl-C stops between two steps (the
    caller saves the model so far). Returns the history."""
    say = (lambda *a, **k: None) if quiet else print
    X, Y = splits["train"]
    opt = make_optimizer(cfg, model)
    n_batches = -(-len(X) // cfg.batch_size)
    total = cfg.epochs * n_batches
    hist = dict(name=name, epoch=[], train_loss=[], val_loss=[], val_acc=[], seconds=0.0)
    progress = cli.Progress(total, every=max(1, n_batches // 4), quiet=quiet)
    fill = X.min()  # the background, to fill the edge uncovered by a shift
    best, best_arrays, waited = float("inf"), None, 0
    with cli.deferred_interrupt() as stop:
        for epoch in range(cfg.epochs):
            order = shuffled(len(X), g)
            losses = []
            for b in range(n_batches):
                if stop.requested:
                    hist["interrupted"] = True
                    say(f"\nstopped in epoch {epoch + 1}, at step {b}")
                    return hist
                idx = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
                xb = X[idx]
                if cfg.augment:
                    xb = augment(xb, g, 2, flips=True, fill=fill)
                logits = model(Tensor(xb))                          # (B, 10)
                loss = cross_entropy(logits, Y[idx])
                opt.zero_grad()
                loss.backward()
                lr = lr_at(cfg, epoch * n_batches + b, total)
                opt.step(lr)
                losses.append(loss.item())
                progress.update(epoch * n_batches + b, losses[-1], lr)  # stops a divergence
            val_loss, val_acc = evaluate(model, *splits["val"])
            for key, value in (("epoch", epoch + 1), ("train_loss", float(np.mean(losses))),
                               ("val_loss", val_loss), ("val_acc", val_acc)):
                hist[key].append(value)
            hist["seconds"] = progress.elapsed
            say(f"  {name} epoch {epoch + 1:2d}: train loss {np.mean(losses):.4f}, val "
                f"loss {val_loss:.4f}, val accuracy {100 * val_acc:.2f}% "
                f"({cli.fmt_duration(progress.elapsed)})", flush=True)
            if val_loss < best:  # a copy: training goes on changing the arrays in place
                best, waited = val_loss, 0
                best_arrays = {k: v.copy() for k, v in model_arrays(model).items()}
            else:
                waited += 1
                if cfg.patience and waited >= cfg.patience:
                    say(f"  early stopping: no better validation loss for {waited} epochs")
                    hist["stopped_at"] = epoch + 1
                    break
    if cfg.patience and waited:  # keep the best epoch's model, BatchNorm statistics too
        set_model_arrays(model, best_arrays)
        hist["best_epoch"] = hist["epoch"][int(np.argmin(hist["val_loss"]))]
        say(f"  back to epoch {hist['best_epoch']}, the best validation loss")
    return hist


# -- LeCun 1989: one digit at a time ---------------------------------------------------
def lecun_loss(cfg, out, Y, T):
    """1989: squared error of the tanh outputs against the +-1 targets, averaged over the
    10 outputs; step 1: cross-entropy of the logits."""
    if cfg.cross_entropy:
        return cross_entropy(out, Y)
    return ((out - Tensor(T)) ** 2).mean()


def evaluate_1989(cfg, model, X, Y, T):
    """(loss, error rate, misses) on a whole split, in one batch, in evaluation mode."""
    model.eval()
    with no_grad():
        out = model(Tensor(X))
        loss = lecun_loss(cfg, out, Y, T).item()
    model.train()
    misses = int((out.data.argmax(axis=1) != Y).sum())
    return loss, misses / len(Y), misses


def lecun_passes(cfg):
    """The number of passes of the chosen step, as in the reproduction's steps: 23 (the
    paper's), 46 with AdamW, 60 with augmentation, 80 with ReLU and dropout."""
    if cfg.passes:
        return cfg.passes
    return 80 if cfg.relu_dropout else 60 if cfg.augment else 46 if cfg.adamw else 23


def train_1989(cfg, model, digits, g, quiet=False):
    """The paper's presentation: one example at a time (a batch of 1), in the same order
    every pass. The reproduction's optimizer (the paper used a Newton-like method with a
    diagonal Hessian and gives no learning rate): SGD with lr 0.03 (0.01 with
    cross-entropy), or AdamW with lr 3e-4 decaying linearly to 1e-4 and torch's default
    weight decay 0.01, as its modern.py (--lr and --weight-decay are for Fashion-MNIST).
    With --augment, each example shifted by -1, 0 or +1 pixels each way (with the
    background filling the edge). After every pass, the error on both splits."""
    say = (lambda *a, **k: None) if quiet else print
    X, Y, T = digits["train"]
    passes = lecun_passes(cfg)
    if cfg.adamw:
        opt = AdamW(model.named_parameters(), 3e-4)
    else:
        opt = SGD(model.parameters(), 0.01 if cfg.cross_entropy else 0.03)
    rows, start = [], time.perf_counter()
    with cli.deferred_interrupt() as stop:
        for pass_num in range(passes):
            if cfg.adamw:
                alpha = pass_num / max(passes - 1, 1)
                opt.lr = (1 - alpha) * 3e-4 + alpha * 1e-4
            for i in range(len(X)):
                if stop.requested:
                    say(f"\nstopped in pass {pass_num + 1}, at digit {i}")
                    raise KeyboardInterrupt
                x = X[i:i + 1]
                if cfg.augment:
                    dy, dx = rng.randint(-1, 2, (2,), generator=g)
                    x = shift(x, int(dy), int(dx), fill=-1.0)
                loss = lecun_loss(cfg, model(Tensor(x)), Y[i:i + 1], T[i:i + 1])
                opt.zero_grad()
                loss.backward()
                opt.step()
                cli.finite(loss.item())
            train, test = (evaluate_1989(cfg, model, *digits[s]) for s in ("train", "test"))
            rows.append(dict(pass_=pass_num + 1, train_loss=train[0], train_error=train[1],
                             test_loss=test[0], test_error=test[1], test_misses=test[2]))
            say(f"  pass {pass_num + 1:2d}: train loss {train[0]:.6f}, error "
                f"{100 * train[1]:5.2f}% ({train[2]:3d} misses) | test loss {test[0]:.6f}, error "
                f"{100 * test[1]:5.2f}% ({test[2]:3d} misses)  "
                f"[{cli.fmt_duration(time.perf_counter() - start)}]", flush=True)
    return rows, time.perf_counter() - start


# %% Sampling: predictions, int8 weights, reading digits
def predict(model, X, batch_size=1000):
    """Class probabilities (N, 10) for images X, in evaluation mode."""
    model.eval()
    with no_grad():
        probs = np.concatenate([model(Tensor(X[i:i + batch_size])).softmax(dim=-1).data
                                for i in range(0, len(X), batch_size)])
    model.train()
    return probs


def confusion_matrix(y_true, y_pred, n=10):
    """C[i, j]: how many images of class i were predicted as class j."""
    C = np.zeros((n, n), dtype=np.int64)
    np.add.at(C, (y_true, y_pred), 1)
    return C


# -- int8 quantization -------------------------------------------------------------------
def quantize_int8(w, axis):
    """Per-channel symmetric int8: along `axis` (a conv's output filters, a Linear's output
    units) each channel gets its own scale = max |w| / 127, and q = round(w / scale) in
    -127..127. Returns (q int8, scale float32). One scale per channel instead of one per
    tensor: a channel of small weights keeps its precision."""
    other = tuple(i for i in range(w.ndim) if i != axis)
    scale = np.abs(w).max(axis=other, keepdims=True) / 127
    scale = np.where(scale > 0, scale, 1).astype(np.float32)
    q = np.clip(np.round(w / scale), -127, 127).astype(np.int8)
    return q, scale


def quantized_copy(model, make_model):
    """A copy of the model whose weight matrices and filters were stored as int8 and read
    back (w = q * scale); biases and BatchNorm stay float32 (a few hundred numbers).
    Returns (the copy, bytes as float32, bytes as int8 + scales)."""
    copy = make_model()
    float_bytes = int8_bytes = 0
    for (name, p), (_, c) in zip(model.named_parameters(), copy.named_parameters()):
        float_bytes += p.data.nbytes
        if p.data.ndim >= 2:
            axis = 0 if p.data.ndim == 4 else p.data.ndim - 1   # Conv2d: (O, C, k, k)
            q, scale = quantize_int8(p.data, axis)              # Linear: (in, out)
            c.data = q.astype(np.float32) * scale
            int8_bytes += q.nbytes + scale.nbytes
        else:
            c.data = p.data.copy()
            int8_bytes += p.data.nbytes
    for m, mc in zip(all_modules(model), all_modules(copy)):   # BatchNorm's running stats
        if isinstance(m, BatchNorm2d):
            mc.running_mean, mc.running_var = m.running_mean, m.running_var
    return copy, float_bytes, int8_bytes


# -- reading handwritten digits ----------------------------------------------------------
MAX_PIXELS = 40_000_000   # refuse absurdly large images (a 40 MP float image is already 160 MB)
MIN_SIDE = 8              # an image smaller than 8x8 cannot hold a readable digit
WORK_SIDE = 1200          # larger images are shrunk to about this size before reading


class ImageError(ValueError):
    """The image cannot be read, or no digits were found in it (message is one line)."""


# -- load --

def _png_size(path):
    """(width, height) from a PNG header, or None if the file is not a PNG.

    Why: lets us refuse a huge PNG before decoding it into memory.
    """
    with open(path, "rb") as f:
        head = f.read(24)
    if len(head) < 24 or head[:8] != b"\x89PNG\r\n\x1a\n":
        return None
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def load_grey(path):
    """Read an image file as a grey float32 array (H, W) with values in [0, 1].

    What: colour is mixed to grey with the usual luminance weights, and a
    transparent background is treated as white paper.
    Why: the rest of the pipeline only needs brightness.
    Any problem raises ImageError with a one-line message naming the file.
    """
    import matplotlib.image  # reads PNG (and, through Pillow, JPEG)
    if not os.path.exists(path):
        raise ImageError(f"{path}: no such file")
    if not os.path.isfile(path):
        raise ImageError(f"{path}: not a file")
    size = _png_size(path)
    if size is not None and size[0] * size[1] > MAX_PIXELS:
        raise ImageError(f"{path}: image too large ({size[0]}x{size[1]} pixels)")
    try:
        img = matplotlib.image.imread(path)          # (H, W), (H, W, 3) or (H, W, 4)
    except Exception as e:                # not an image, truncated file, unknown format ...
        if "DecompressionBomb" in type(e).__name__:   # Pillow refuses a gigantic JPEG
            raise ImageError(f"{path}: image too large") from e
        raise ImageError(f"{path}: not a readable image file") from e

    if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] not in (1, 2, 3, 4)):
        raise ImageError(f"{path}: unexpected image shape {img.shape}")
    if np.issubdtype(img.dtype, np.integer):          # JPEG gives uint8, 16-bit PNG uint16
        img = img / np.iinfo(img.dtype).max
    img = img.astype(np.float32)

    if img.ndim == 3:
        has_alpha = img.shape[2] in (2, 4)
        alpha = img[..., -1] if has_alpha else 1.0    # (H, W) opacity
        colour = img[..., :-1] if has_alpha else img  # (H, W, 1) or (H, W, 3)
        if colour.shape[2] == 3:
            grey = colour @ np.array([0.299, 0.587, 0.114], np.float32)   # (H, W)
        else:
            grey = colour[..., 0]
        img = grey * alpha + 1.0 * (1.0 - alpha)      # composite over white paper

    h, w = img.shape
    if h * w > MAX_PIXELS:
        raise ImageError(f"{path}: image too large ({w}x{h} pixels)")
    if h < MIN_SIDE or w < MIN_SIDE:
        raise ImageError(f"{path}: image too small ({w}x{h} pixels)")
    return np.clip(img, 0.0, 1.0).astype(np.float32)


def shrink(grey, max_side=WORK_SIDE):
    """Average k x k blocks so that the longer side is at most about max_side.

    Why: a 12 MP phone photo has far more pixels than needed to read digits,
    and every later step gets faster on a smaller image.
    """
    k = int(np.ceil(max(grey.shape) / max_side))
    if k <= 1:
        return grey
    h, w = grey.shape[0] // k * k, grey.shape[1] // k * k
    return grey[:h, :w].reshape(h // k, k, w // k, k).mean(axis=(1, 3))   # (h/k, w/k)


# -- ink --

def paper_level(grey, blocks=4):
    """Brightness of the bare paper at every pixel (H, W), allowing for uneven light.

    What: cut the image into about `blocks` squares along its longer side, take
    the median of each square (digits cover well under half of a square, so the
    median is paper), then interpolate linearly between the square centres.
    Why: a phone photo is often darker on one side; one global paper level
    would call the shadow "ink".
    """
    h, w = grey.shape
    side = int(np.ceil(max(h, w) / blocks))                     # square size in pixels
    ny, nx = int(np.ceil(h / side)), int(np.ceil(w / side))
    med = np.array([[np.median(grey[i * side:(i + 1) * side, j * side:(j + 1) * side])
                     for j in range(nx)] for i in range(ny)])   # (ny, nx)
    return _interp_matrix(h, ny, side) @ med @ _interp_matrix(w, nx, side).T   # (H, W)


def _interp_matrix(n, k, side):
    """(n, k) weights that linearly interpolate k block values, at block centres, to n pixels."""
    centres = (np.arange(k) + 0.5) * side
    eye = np.eye(k)
    return np.stack([np.interp(np.arange(n) + 0.5, centres, eye[j]) for j in range(k)], axis=1)


def ink(grey, min_contrast=0.1):
    """Turn a grey image (H, W) into an ink map (H, W): 0 = paper, 1 = strongest pen.

    What: subtract the paper level (see paper_level).  The ink is on the side
    where the few most extreme pixels lie further from the paper: dark pen on
    light paper, or chalk on a board.  Dark ink is flipped so that ink is always
    positive, then the map is rescaled so that the strongest ink is 1.
    Why: MNIST digits are light strokes (255) on a black (0) background.
    An almost uniform image (contrast below min_contrast) gives all zeros.
    """
    diff = grey - paper_level(grey)                  # (H, W), about 0 on paper
    low, high = np.percentile(diff, [0.5, 99.5])
    x = -diff if -low >= high else diff              # dark ink -> flip so ink > 0
    strength = x.max()
    if strength < min_contrast:
        return np.zeros_like(grey, dtype=np.float32)
    return np.clip(x / strength, 0.0, 1.0).astype(np.float32)


# -- threshold --

def otsu_level(values, bins=256):
    """Otsu's threshold for values in [0, 1]: the cut that best separates two groups.

    What: for every possible cut between histogram bins, compute the
    between-class variance  w0 * w1 * (mean0 - mean1)^2  and keep the largest.
    Why: it needs no hand-tuned level, whatever the lighting or pen.
    Returns (level, separation); separation = between-class variance / total
    variance, near 1 for ink on paper, lower when the values are one blur of noise.
    """
    hist, edges = np.histogram(values, bins=bins, range=(0.0, 1.0))   # (bins,), (bins+1,)
    centres = (edges[:-1] + edges[1:]) / 2
    n0 = np.cumsum(hist)                       # pixels at or below each cut
    valid = (n0 > 0) & (n0 < n0[-1])           # cuts that leave both classes non-empty
    if not valid.any():
        return 1.0, 0.0                        # one single grey level: nothing to separate
    w0 = n0 / n0[-1]                           # weight of the low class
    s0 = np.cumsum(hist * centres) / n0[-1]    # w0 * mean0
    mean_all = s0[-1]
    between = np.zeros(bins)
    between[valid] = (mean_all * w0[valid] - s0[valid]) ** 2 / (w0[valid] * (1 - w0[valid]))
    total = (hist * (centres - mean_all) ** 2).sum() / n0[-1]
    k = np.argmax(between)
    return float(edges[k + 1]), float(between[k] / total)


def threshold(ink_map, floor=0.1, min_separation=0.8):
    """Boolean mask (H, W) of ink pixels: ink above Otsu's level (and above floor).

    Why the floor: on a blank page the ink map is ~0 everywhere and Otsu would
    still split it in two; the floor keeps that mask empty.  For the same
    reason a poorly separated histogram (a noisy blank page) gives an empty mask.
    """
    level, separation = otsu_level(ink_map)
    if separation < min_separation:
        return np.zeros(ink_map.shape, bool)
    return ink_map > max(level, floor)


# -- components --

def _runs(mask):
    """All horizontal runs of True pixels, row by row: rows, starts, stops (stop exclusive)."""
    h, w = mask.shape
    padded = np.zeros((h, w + 2), np.int8)
    padded[:, 1:-1] = mask
    step = np.diff(padded, axis=1)           # (H, W+1): +1 where a run starts, -1 just after it
    rows, starts = np.nonzero(step == 1)     # row-major order, so starts and stops pair up
    _, stops = np.nonzero(step == -1)
    return rows, starts, stops


def _find(parent, i):
    """Root of i in the union-find forest (with path halving to keep trees flat)."""
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


def label_runs(mask):
    """Connected components (8-connectivity) of a mask, as boxes and pixel counts.

    What: cut every row into runs, then join each run to the runs of the row
    above that touch it (diagonal contact counts) with a union-find.
    Why runs: a digit row has a few thousand runs but ~100x more pixels, so the
    Python loop stays short.  No recursion, so no stack limit.
    Returns boxes (K, 4) int as (top, left, bottom, right), bottom/right
    exclusive like numpy slices, and areas (K,) in pixels.
    """
    h, _ = mask.shape
    rows, starts, stops = _runs(mask)
    first = np.searchsorted(rows, np.arange(h + 1)).tolist()   # runs of row r: first[r]..first[r+1]
    st, sp = starts.tolist(), stops.tolist()
    parent = list(range(len(st)))
    for r in range(1, h):
        i, i_end = first[r - 1], first[r]    # runs in the row above
        j, j_end = first[r], first[r + 1]    # runs in this row
        while i < i_end and j < j_end:
            if st[j] <= sp[i] and st[i] <= sp[j]:     # overlap or touch diagonally
                a, b = _find(parent, i), _find(parent, j)
                if a != b:
                    parent[max(a, b)] = min(a, b)
            if sp[i] < sp[j]:                          # move past the run that ends first
                i += 1
            else:
                j += 1
    roots = np.array([_find(parent, k) for k in range(len(st))], dtype=np.int64)
    _, comp = np.unique(roots, return_inverse=True)    # (runs,) component number 0..K-1
    k = comp.max() + 1 if comp.size else 0
    boxes = np.zeros((k, 4), np.int64)
    boxes[:, :2] = max(mask.shape)                     # start top/left high, bottom/right low
    np.minimum.at(boxes[:, 0], comp, rows)
    np.minimum.at(boxes[:, 1], comp, starts)
    np.maximum.at(boxes[:, 2], comp, rows + 1)
    np.maximum.at(boxes[:, 3], comp, stops)
    areas = np.bincount(comp, weights=stops - starts, minlength=k)
    return boxes, areas


def _belong_together(p, q, min_overlap=0.5):
    """True if boxes p and q (top, left, bottom, right, ...) look like parts of one digit.

    Either their x-extents overlap by more than min_overlap of the narrower box
    (a 4 or 7 written in two strokes), or they overlap in x at all and one is
    less than half as tall as the other (the flag of a 5, the tail of a 9).
    """
    overlap = min(p[3], q[3]) - max(p[1], q[1])
    if overlap > min_overlap * min(p[3] - p[1], q[3] - q[1]):
        return True
    hp, hq = p[2] - p[0], q[2] - q[0]
    return overlap > 0 and min(hp, hq) < 0.5 * max(hp, hq)


def merge_pieces(boxes):
    """Merge boxes (top, left, bottom, right, area) that belong to one digit.

    Why: a digit written in several strokes gives several components.
    Each pass adds every box to the first group it belongs with; a merged group
    is larger and may now touch another one, so passes repeat until nothing changes.
    """
    groups = [list(b) for b in boxes]
    while True:
        merged = []
        for b in groups:
            for k, g in enumerate(merged):
                if _belong_together(g, b):
                    merged[k] = [min(g[0], b[0]), min(g[1], b[1]), max(g[2], b[2]),
                                 max(g[3], b[3]), g[4] + b[4]]
                    break
            else:                             # no group took it: start a new one
                merged.append(b)
        if len(merged) == len(groups):
            return merged
        groups = merged


def components(mask, speck=0.03, min_pixels=10, min_area=0.1, min_height=0.3):
    """Digit boxes [(top, left, bottom, right), ...] sorted left to right.

    Steps: 8-connected components; drop specks (fewer than min_pixels, or less
    than `speck` of the largest component); merge the pieces of multi-stroke
    digits; drop what is still small: less than `min_area` of the largest
    digit's ink or less than `min_height` of the tallest digit (dots, dashes).
    bottom/right are exclusive, so a digit is ink[top:bottom, left:right].
    """
    boxes, areas = label_runs(mask)                       # (K, 4), (K,)
    if len(boxes) == 0:
        return []
    keep = areas >= max(min_pixels, speck * areas.max())
    pieces = np.column_stack([boxes, areas])[keep]        # (K', 5)
    digits = merge_pieces(pieces)
    if not digits:
        return []
    biggest = max(d[4] for d in digits)
    tallest = max(d[2] - d[0] for d in digits)
    boxes = [tuple(int(v) for v in d[:4]) for d in digits
             if d[4] >= min_area * biggest and d[2] - d[0] >= min_height * tallest]
    return sorted(boxes, key=lambda b: b[1])


# -- normalize --

def _area_weights(n_in, n_out):
    """(n_out, n_in) matrix: output cell i is the average of the input cells it covers.

    Why: 'area averaging' resize, which anti-aliases when shrinking (like MNIST)
    and repeats pixels when enlarging.  Fractional overlaps get fractional weights.
    """
    edges = np.linspace(0, n_in, n_out + 1)                  # output cell borders, input units
    cells = np.arange(n_in)
    lo = np.maximum(edges[:-1, None], cells[None, :])        # (n_out, n_in)
    hi = np.minimum(edges[1:, None], cells[None, :] + 1)
    w = np.clip(hi - lo, 0, None)
    return w / w.sum(axis=1, keepdims=True)


def resize(img, new_h, new_w):
    """Area-average resize of a 2-D array (h, w) -> (new_h, new_w)."""
    return _area_weights(img.shape[0], new_h) @ img @ _area_weights(img.shape[1], new_w).T


def _paste(canvas, patch, top, left):
    """Copy patch onto canvas with its corner at (top, left), cutting what falls outside."""
    ph, pw = patch.shape
    ch, cw = canvas.shape
    t, l = max(top, 0), max(left, 0)
    b, r = min(top + ph, ch), min(left + pw, cw)
    if b > t and r > l:
        canvas[t:b, l:r] = patch[t - top:b - top, l - left:r - left]


def normalize_digit(ink_map, box, size=20, canvas=28):
    """MNIST normalisation of one digit: float32 (28, 28) in [0, 1], ink = 1.

    What (as in the MNIST paper): crop the box, resize it keeping the aspect
    ratio so that its longer side is 20 pixels, and place it on a 28x28 black
    canvas so that its centre of mass lands on pixel (14, 14).
    Why: a network trained on MNIST expects exactly this framing.
    """
    top, left, bottom, right = box
    crop = ink_map[top:bottom, left:right]                     # (h, w)
    h, w = crop.shape
    scale = size / max(h, w)
    patch = resize(crop, max(1, round(h * scale)), max(1, round(w * scale)))   # (<=20, <=20)
    out = np.zeros((canvas, canvas), np.float32)
    if patch.max() <= 0:
        return out
    patch = patch / patch.max()            # thin strokes shrink to grey; MNIST strokes reach 1
    ys, xs = np.indices(patch.shape)       # (h', w') row and column numbers
    cy, cx = (ys * patch).sum() / patch.sum(), (xs * patch).sum() / patch.sum()
    _paste(out, patch, int(round(canvas / 2 - cy)), int(round(canvas / 2 - cx)))
    return out


# -- pipeline --

def read_digits(path):
    """Read every digit in an image file, left to right.

    Returns the (possibly shrunk) grey working image, digits (N, 28, 28) float32
    in [0, 1] (MNIST pixels / 255) and the N boxes (top, left, bottom, right)
    in the working image's coordinates.  Raises ImageError if the file is unreadable or
    no digit is found.
    """
    grey = shrink(load_grey(path))                   # (H, W)
    ink_map = ink(grey)                              # (H, W), 1 = pen
    mask = threshold(ink_map)                        # (H, W) bool
    boxes = components(mask)
    if not boxes:
        raise ImageError(f"{path}: no digits found")
    # Paper texture just above zero would land in the 28x28 images: keep only
    # ink at least a quarter as strong as the weakest pixel of the mask.
    clean = np.where(ink_map >= 0.25 * ink_map[mask].min(), ink_map, 0.0)
    digits = np.stack([normalize_digit(clean, b) for b in boxes])   # (N, 28, 28)
    return grey, digits.astype(np.float32), boxes


# %% Figures
def plot_samples(X, Y, names, path, title, n=(4, 8)):
    """A grid of images with their labels."""
    plt = cli.pyplot()
    rows, cols = n
    fig, axes = plt.subplots(rows, cols, figsize=(1.3 * cols, 1.5 * rows + 0.5),
                             layout="constrained")
    for ax, x, y in zip(axes.flat, X, Y):
        ax.imshow(x.reshape(x.shape[-2:]), cmap="gray_r")
        ax.set_title(names[int(y)], fontsize=10)
        ax.axis("off")
    fig.suptitle(title, fontsize=13)
    cli.save_figure(fig, path)


def plot_filters(weight, path, title):
    """Each first-layer filter (O, 1, k, k) as a small image: blue negative, red
    positive, one colour scale for all."""
    plt = cli.pyplot()
    O = weight.shape[0]
    cols = min(O, 8)
    rows = -(-O // cols)
    lim = float(np.abs(weight).max())
    fig, axes = plt.subplots(rows, cols, figsize=(1.2 * cols + 1, 1.2 * rows + 0.6),
                             squeeze=False, layout="constrained")
    im = None
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k < O:
            im = ax.imshow(weight[k, 0], cmap="RdBu_r", vmin=-lim, vmax=lim)
    cbar = fig.colorbar(im, ax=axes, shrink=0.8)
    cbar.set_label("weight", fontsize=11)
    fig.suptitle(title, fontsize=13)
    cli.save_figure(fig, path)


def plot_confusion(C, names, path, title):
    """The confusion matrix, each row as percentages of its true class."""
    plt = cli.pyplot()
    pct = 100 * C / np.maximum(C.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(8, 7), layout="constrained")
    im = ax.imshow(pct, cmap="Blues", vmin=0, vmax=100)
    for i in range(len(names)):
        for j in range(len(names)):
            if C[i, j]:
                ax.text(j, i, f"{pct[i, j]:.0f}", ha="center", va="center", fontsize=9,
                        color="white" if pct[i, j] > 50 else "black")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=10)
    ax.set_yticks(range(len(names)), names, fontsize=10)
    ax.set_xlabel("predicted class", fontsize=11)
    ax.set_ylabel("true class", fontsize=11)
    ax.set_title(title, fontsize=13)
    cbar = fig.colorbar(im, ax=ax, shrink=0.8)
    cbar.set_label("% of the true class", fontsize=11)
    cli.save_figure(fig, path)


def plot_confused(X, Y, probs, names, path, n=12):
    """The test images the model got wrong with the most confidence."""
    plt = cli.pyplot()
    pred = probs.argmax(axis=1)
    wrong = np.nonzero(pred != Y)[0]
    wrong = wrong[np.argsort(-probs[wrong, pred[wrong]])][:n]
    cols = 6
    rows = max(1, -(-len(wrong) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.0 * cols, 2.3 * rows + 0.5),
                             squeeze=False, layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, wrong):
        ax.imshow(X[i, 0], cmap="gray_r")
        ax.set_title(f"{names[Y[i]]}\n→ {names[pred[i]]} {100 * probs[i, pred[i]]:.0f}%",
                     fontsize=9)
    fig.suptitle("The most confident mistakes (true → predicted, probability)",
                 fontsize=13)
    cli.save_figure(fig, path)


def plot_curves(hists, path, title):
    """Training loss per epoch (dashed) and validation loss (solid) of each run, and the
    validation accuracy."""
    plt = cli.pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
    for k, h in enumerate(hists):
        c = f"C{k}"
        ax1.plot(h["epoch"], h["train_loss"], "--", color=c, label=f"{h['name']}: train")
        ax1.plot(h["epoch"], h["val_loss"], "o-", color=c, label=f"{h['name']}: val")
        ax2.plot(h["epoch"], [100 * a for a in h["val_acc"]], "o-", color=c,
                 label=h["name"])
    ax1.set(xlabel="epoch", ylabel="cross-entropy loss (nats)", title="loss")
    ax2.set(xlabel="epoch", ylabel="validation accuracy (%)", title="validation accuracy")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=13)
    cli.save_figure(fig, path)


def plot_lecun(rows, path, title):
    """Train and test error after every pass."""
    plt = cli.pyplot()
    fig, ax = plt.subplots(figsize=(7, 4), layout="constrained")
    passes = [r["pass_"] for r in rows]
    ax.plot(passes, [100 * r["train_error"] for r in rows], "o-", label="train")
    ax.plot(passes, [100 * r["test_error"] for r in rows], "o-", label="test")
    ax.set(xlabel="pass over the 4,000 training digits", ylabel="error (%)", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    cli.save_figure(fig, path)


def plot_read(grey, boxes, labels, path):
    """The picture with a box and the predicted digit over each digit found."""
    plt = cli.pyplot()
    h, w = grey.shape
    fig, ax = plt.subplots(figsize=(min(12, 2 + w / 60), min(6, 1.5 + h / 60)),
                           layout="constrained")
    ax.imshow(grey, cmap="gray", vmin=0, vmax=1)
    for (top, left, bottom, right), label in zip(boxes, labels):
        ax.add_patch(plt.Rectangle((left - 0.5, top - 0.5), right - left, bottom - top,
                                   fill=False, edgecolor="red", lw=2))
        ax.text(left, top - 3, label, color="red", fontsize=14, fontweight="bold",
                va="bottom")
    ax.set_title(f"read: {''.join(labels)}", fontsize=13)
    ax.axis("off")
    cli.save_figure(fig, path)


# %% Main
def n_params(model):
    return sum(p.data.size for p in model.parameters())


def epochs(n):
    return f"{n} epoch" + ("s" if n != 1 else "")


def fashion_main(cfg, out):
    """The default run: Fashion-MNIST with logistic regression, an MLP and the CNN, each
    validated after every epoch (the best kept, with --patience; else the last); the test
    set is used once, at the end."""
    start = time.perf_counter()
    splits = fashion_splits(cfg, rng.Generator(cfg.seed))
    print(f"Fashion-MNIST: train {len(splits['train'][0]):,}, validation "
          f"{len(splits['val'][0]):,}, test {len(splits['test'][0]):,} images of 28 x 28; "
          f"{len(CLASSES)} classes: {', '.join(CLASSES)}")
    # each model starts from its own generator seeded the same way (its weights from seed,
    # its batches from seed + 1), so the CNN is the same with or without the baselines
    models = {}
    if cfg.baselines:
        models["logistic regression"] = logistic_regression(rng.Generator(cfg.seed))
        models["MLP 784-128-64-10"] = mlp(rng.Generator(cfg.seed))
    models["CNN"] = convnet(cfg, rng.Generator(cfg.seed))
    hists, results = [], {}
    for name, model in models.items():
        print(f"\n== {name}: {n_params(model):,} parameters, {epochs(cfg.epochs)}, "
              f"{cfg.optimizer} lr {cfg.lr:g}, batch {cfg.batch_size}")
        g = rng.Generator(cfg.seed + 1)
        hists.append(train_classifier(cfg, model, splits, g, name))
        if "interrupted" in hists[-1]:  # Ctrl-C: keep the model trained so far
            path = out / f"{name.split()[0].lower()}.npz"
            save_model(path, model, cfg)
            print(f"the {name} trained so far is in {path}")
            raise KeyboardInterrupt
    print("\n== Test set (used once, now)")
    for (name, model), h in zip(models.items(), hists):
        loss, acc = evaluate(model, *splits["test"])
        results[name] = dict(params=n_params(model), test_loss=loss, test_acc=acc,
                             seconds=h["seconds"], val_acc=h["val_acc"][-1]
                             if h["val_acc"] else float("nan"))
        print(f"  {name:22s} {n_params(model):8,d} parameters  test accuracy "
              f"{100 * acc:.2f}%  (loss {loss:.4f}; trained in "
              f"{cli.fmt_duration(h['seconds'])})")
    cnn = models["CNN"]
    save_model(out / "cnn.npz", cnn, cfg)
    Xte, Yte = splits["test"]
    qmodel, fbytes, qbytes = quantized_copy(cnn, lambda: convnet(cfg, rng.Generator(0)))
    _, qacc = evaluate(qmodel, Xte, Yte)
    results["CNN int8"] = dict(test_acc=qacc, float_bytes=fbytes, int8_bytes=qbytes)
    print(f"\n== int8 weights: {fbytes:,} bytes as float32 -> {qbytes:,} bytes "
          f"({fbytes / qbytes:.1f}x smaller); test accuracy {100 * results['CNN']['test_acc']:.2f}% "
          f"-> {100 * qacc:.2f}%")
    files = []
    if cfg.plots:
        probs = predict(cnn, Xte)
        C = confusion_matrix(Yte, probs.argmax(axis=1))
        f = cfg.format
        plot_samples(Xte[:32], Yte[:32], CLASSES, out / f"samples.{f}",
                     "Fashion-MNIST: the first 32 test images")
        plot_filters(cnn.layers[0].weight.data, out / f"filters.{f}",
                     f"The CNN's {cfg.channels} first-layer 3 x 3 filters")
        plot_confusion(C, CLASSES, out / f"confusion.{f}", "CNN on the Fashion-MNIST "
                       f"test set: {100 * results['CNN']['test_acc']:.2f}% right")
        plot_confused(Xte, Yte, probs, CLASSES, out / f"confused.{f}")
        plot_curves(hists, out / f"curves.{f}", "Fashion-MNIST: training and validation")
        files = [str(out / f"{n}.{f}") for n in ("samples", "filters", "confusion",
                                                 "confused", "curves")]
    files.append(str(out / "cnn.npz"))
    print(f"\nwrote {', '.join(files)}")
    seconds = time.perf_counter() - start
    print(f"\nthe CNN: {100 * results['CNN']['test_acc']:.2f}% of the test images right; "
          f"the whole run took {cli.fmt_duration(seconds)}")
    return dict(config=asdict(cfg), results=results, histories=hists, files=files,
                seconds=seconds)


def lecun_main(cfg, out):
    """LeCun et al. 1989 on 4,000 / 1,000 digits, or one of its modern steps."""
    g = rng.Generator(cfg.seed)
    digits = digits_1989(g)
    model = LeNet1989(g, logits=cfg.cross_entropy, relu=cfg.relu_dropout,
                      dropout=0.25 if cfg.relu_dropout else 0.0)
    steps = [s for s, on in (("cross-entropy", cfg.cross_entropy), ("AdamW", cfg.adamw),
                             ("augmentation", cfg.augment),
                             ("ReLU + dropout", cfg.relu_dropout)) if on]
    print(f"LeCun et al. 1989 on 16 x 16 digits: train {len(digits['train'][0]):,}, test "
          f"{len(digits['test'][0]):,}; {n_params(model):,} parameters; "
          f"{lecun_passes(cfg)} passes, one digit at a time; "
          f"{' + '.join(steps) if steps else 'as in 1989'}")
    rows, seconds = train_1989(cfg, model, digits, g)
    last = rows[-1]
    print(f"after {last['pass_']} passes: train error {100 * last['train_error']:.2f}%, "
          f"test error {100 * last['test_error']:.2f}% ({last['test_misses']} misses) in "
          f"{cli.fmt_duration(seconds)}")
    files = []
    if cfg.plots:
        path = out / f"lecun1989.{cfg.format}"
        plot_lecun(rows, path, "LeCun 1989: " + (" + ".join(steps) or "as in the paper"))
        files = [str(path)]
        print(f"wrote {path}")
    return dict(config=asdict(cfg), n_params=n_params(model), rows=rows, files=files,
                seconds=seconds)


TRICKS = [  # (label, the settings it changes), each on the same model, data and seed
    ("AdamW (reference)", {}),
    ("SGD", dict(optimizer="sgd", lr=0.05)),
    ("SGD + momentum", dict(optimizer="momentum", lr=0.01)),
    ("dropout 0.5", dict(dropout=0.5)),
    ("weight decay 0.05", dict(weight_decay=0.05)),
    ("augmentation", dict(augment=True)),
    ("early stopping", dict(patience=2)),
]


def tricks_main(cfg, out):
    """Each trick changes one setting of the same CNN, trained from the same seed on the
    same subset; the table shows what it does to the validation loss and to the gap
    between training and validation loss (overfitting)."""
    g = rng.Generator(cfg.seed)
    splits = fashion_splits(replace(cfg, subset=cfg.subset or 10_000), g)
    print(f"training tricks: the CNN on {len(splits['train'][0]):,} training images, "
          f"{epochs(cfg.epochs)} each, the same seed")
    hists = []
    for label, change in TRICKS:
        c = replace(cfg, **change)
        model = convnet(c, rng.Generator(cfg.seed))
        hists.append(train_classifier(c, model, splits, rng.Generator(cfg.seed + 1), label,
                                      quiet=True))
        h = hists[-1]
        if "interrupted" in h:
            raise KeyboardInterrupt
        best = int(np.argmin(h["val_loss"]))
        print(f"  {label:20s} best val loss {h['val_loss'][best]:.4f} (epoch "
              f"{h['epoch'][best]}), val accuracy {100 * h['val_acc'][best]:.2f}%, "
              f"train-val gap {h['val_loss'][-1] - h['train_loss'][-1]:+.4f}"
              f"{'  (stopped at epoch %d)' % h['stopped_at'] if 'stopped_at' in h else ''}",
              flush=True)
    files = []
    if cfg.plots:
        path = out / f"tricks.{cfg.format}"
        plot_curves(hists, path, "Training tricks on the same CNN and data")
        files = [str(path)]
        print(f"wrote {path}")
    return dict(config=asdict(cfg), histories=hists, files=files)


MNIST_MEAN, MNIST_STD = 0.1307, 0.3081  # MNIST's pixel mean and std, for the digit CNN
# the digit reader's CNN and training (under a minute, once)
DIGITS = dict(channels=16, epochs=8, batch_size=32, lr=2e-3, dropout=0.0, augment=False,
              patience=0)


def digits_model(cfg, out):
    """The CNN that reads digits: trained on 4,500 of the 5,000 MNIST digits (28 x 28,
    normalized as MNIST), checked on the other 500; kept in out/digits.npz and reused."""
    dcfg = replace(cfg, **DIGITS)
    model = convnet(dcfg, rng.Generator(cfg.seed))
    path = out / "digits.npz"
    if path.is_file():
        return load_model(path, model)
    X, Y = data.load_mnist5k()
    X = ((X.astype(np.float32) / 255 - MNIST_MEAN) / MNIST_STD)[:, None]
    g = rng.Generator(cfg.seed)
    order = shuffled(len(X), g)
    held, train = order[:500], order[500:]
    splits = {"train": (X[train], Y[train].astype(np.int64)),
              "val": (X[held], Y[held].astype(np.int64))}
    print(f"training the digit reader (once): a CNN on {len(train):,} MNIST digits, "
          f"{epochs(dcfg.epochs)}")
    hist = train_classifier(dcfg, model, splits, g, "digits")
    if "interrupted" in hist:
        raise KeyboardInterrupt
    save_model(path, model, dcfg)
    return model


def read_main(cfg, out):
    """--read: find the digits in the picture, normalize each as MNIST does, classify."""
    try:
        grey, digits, boxes = read_digits(cfg.read)
    except ImageError as e:
        raise cli.UserError(str(e)) from None
    model = digits_model(cfg, out)
    X = ((digits - MNIST_MEAN) / MNIST_STD)[:, None].astype(np.float32)
    probs = predict(model, X)
    labels = [str(int(d)) for d in probs.argmax(axis=1)]
    text = "".join(labels)
    print(f"{cfg.read}: {len(labels)} digits: {text}  (confidence "
          f"{', '.join(f'{100 * p:.0f}%' for p in probs.max(axis=1))})")
    files = []
    if cfg.plots:
        path = out / f"read.{cfg.format}"
        plot_read(grey, boxes, labels, path)
        files = [str(path)]
        print(f"wrote {path}")
    return dict(config=asdict(cfg), text=text, probs=probs, boxes=boxes, files=files)


def main(argv=None) -> dict:
    cfg = cli.parse_config(Config, argv, __doc__, prog="09_convnet/train.py")
    out = cli.out_dir(cfg.out)
    if cfg.read:
        return read_main(cfg, out)
    if cfg.task == "lecun1989":
        return lecun_main(cfg, out)
    if cfg.task == "tricks":
        return tricks_main(cfg, out)
    return fashion_main(cfg, out)


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

    # -- new in stage 07: the ops of attention, each with its backward pass --
    def transpose(self, dim0, dim1):
        """Swap two dimensions (a view, as in torch): k.transpose(-2, -1) is every k^T."""
        out = Tensor(np.swapaxes(self.data, dim0, dim1), _children=(self,), _op="transpose")
        out._backward = lambda g: self._accumulate(np.swapaxes(g, dim0, dim1))
        return out

    def permute(self, *dims):
        """Reorder the dimensions (a view, as in torch): (B, T, nh, hs) -> (B, nh, T, hs)
        with permute(0, 2, 1, 3). The gradient goes back through the inverse order."""
        out = Tensor(np.transpose(self.data, dims), _children=(self,), _op="permute")
        out._backward = lambda g: self._accumulate(np.transpose(g, np.argsort(dims)))
        return out

    def masked_fill(self, mask, value):
        """`value` where mask is True, the tensor elsewhere: wei.masked_fill(tril == 0,
        -inf) hides the future. The filled places pass no gradient back."""
        mask = np.asarray(mask, dtype=bool)
        out = Tensor(np.where(mask, np.asarray(value, dtype=self.data.dtype), self.data),
                     _children=(self,), _op="masked_fill")
        out._backward = lambda g: self._accumulate(g * ~mask)  # 0 where filled
        return out

    def softmax(self, dim=-1):
        """F.softmax as ONE op: exp(x - max) / sum. The backward pass is the short
        s * (g - sum(g * s)) (the softmax Jacobian diag(s) - s s^T applied to g)."""
        x = self.data
        e = np.exp(x - x.max(axis=dim, keepdims=True))  # no overflow; exp(-inf) = 0
        s = e / e.sum(axis=dim, keepdims=True)
        out = Tensor(s, _children=(self,), _op="softmax")
        out._backward = lambda g: self._accumulate(
            s * (g - (g * s).sum(axis=dim, keepdims=True)))
        return out

    def log_softmax(self, dim=-1):
        """F.log_softmax as ONE op: x - max - log(sum(exp(x - max))), never log(0). The
        backward pass is g - softmax * sum(g)."""
        x = self.data
        shifted = x - x.max(axis=dim, keepdims=True)
        ls = shifted - np.log(np.exp(shifted).sum(axis=dim, keepdims=True))
        out = Tensor(ls, _children=(self,), _op="log_softmax")
        out._backward = lambda g: self._accumulate(
            g - np.exp(ls) * g.sum(axis=dim, keepdims=True))
        return out

    def relu(self):
        out = Tensor(np.maximum(self.data, 0), _children=(self,), _op="relu")
        out._backward = lambda g: self._accumulate(g * (self.data > 0))  # 1 where x > 0
        return out

    def gelu(self):
        """GELU, x * P(N(0,1) < x), in GPT-2's tanh approximation (torch's
        GELU(approximate='tanh')): 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
        x = self.data
        c = math.sqrt(2 / math.pi)
        t = np.tanh(c * (x + 0.044715 * x**3))
        out = Tensor(0.5 * x * (1 + t), _children=(self,), _op="gelu")

        def _backward(g):  # product rule; d tanh(u) = (1 - t^2) du
            du = c * (1 + 3 * 0.044715 * x**2)
            self._accumulate(g * (0.5 * (1 + t) + 0.5 * x * (1 - t * t) * du))
        out._backward = _backward
        return out

    def dropout(self, p, generator=None):
        """Inverted dropout, as torch's: keep each element with probability 1 - p and
        scale the kept ones by 1 / (1 - p), so the expected value does not change and
        evaluation (no dropout) needs no rescaling. The mask comes from `generator`."""
        keep = rng.rand(*self.data.shape, generator=generator) < 1 - p  # bool: 1 byte
        out = self.data * keep
        out *= 1 / (1 - p)
        out = Tensor(out, _children=(self,), _op="dropout")
        out._backward = lambda g: self._accumulate(g * keep * (1 / (1 - p)))
        return out

    def split(self, split_size, dim=-1):
        """torch's x.split(size, dim): consecutive pieces of `split_size` along `dim`;
        q, k, v = qkv.split(C, dim=2). Each piece's gradient goes back to its place."""
        dim %= self.data.ndim
        n = self.data.shape[dim]
        return [self._piece((slice(None),) * dim + (slice(i, min(i + split_size, n)),))
                for i in range(0, n, split_size)]

    def _piece(self, index):
        out = Tensor(self.data[index], _children=(self,), _op="split")

        def _backward(g):
            grad = np.zeros_like(self.data)
            grad[index] = g
            self._accumulate(grad)
        out._backward = _backward
        return out

    # -- new in stage 08: the gates' squashing function --
    def sigmoid(self):
        """1 / (1 + exp(-a)), computed as (1 + tanh(a / 2)) / 2: the same function, but
        exp(-a) would overflow for a very negative a, tanh never does."""
        s = 0.5 * (1 + np.tanh(0.5 * self.data))
        out = Tensor(s, _children=(self,), _op="sigmoid")
        out._backward = lambda g: self._accumulate(g * s * (1 - s))  # s (1 - s)
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


# %% Engine: new in stage 07
def linear(x, weight, bias=None):
    """F.linear, x @ weight + bias, as ONE op: the same numbers as the two ops, with one
    result array instead of two (memory, and one pass less)."""
    out = _matmul(x.data, weight.data)                   # (..., fan_out)
    if bias is not None:
        out += bias.data
    children = (x, weight) if bias is None else (x, weight, bias)
    out = Tensor(out, _children=children, _op="linear")

    def _backward(g):
        rows = g.reshape(-1, g.shape[-1])                 # (N, fan_out)
        if x.requires_grad:
            x._accumulate(_matmul(g, weight.data.T))
        if weight.requires_grad:
            weight._accumulate(x.data.reshape(-1, x.shape[-1]).T @ rows)
        if bias is not None and bias.requires_grad:
            bias._accumulate(rows.sum(axis=0))
    out._backward = _backward
    return out


def cat(tensors, dim=0):
    """torch.cat: join tensors along `dim`; the gradient is cut back into the pieces."""
    dim %= tensors[0].data.ndim
    out = Tensor(np.concatenate([t.data for t in tensors], axis=dim),
                 _children=tuple(tensors), _op="cat")

    def _backward(g):
        start = 0
        for t in tensors:
            stop = start + t.data.shape[dim]
            t._accumulate(g[(slice(None),) * dim + (slice(start, stop),)])
            start = stop
    out._backward = _backward
    return out


def _row_sum(a):
    """a.sum(axis=-1, keepdims=True), as a matrix-vector product with a vector of ones:
    numpy's sum over many short rows is slow, BLAS's is 3-4x faster for these shapes."""
    return (a.reshape(-1, a.shape[-1]) @ np.ones(a.shape[-1], dtype=a.dtype)).reshape(
        *a.shape[:-1], 1)


def layer_norm(x, weight, bias, eps=1e-5):
    """F.layer_norm over the last dimension, as ONE op: every row of x is normalized to
    mean 0 and variance 1 (the biased variance, as torch), then scaled by `weight` and
    shifted by `bias` (bias may be None). Stage 05's batch-norm backward, by rows instead
    of columns: dx = (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)) / std."""
    C = x.shape[-1]
    xc = x.data - _row_sum(x.data) / C                   # (..., C) centred
    rstd = 1 / np.sqrt(_row_sum(xc * xc) / C + eps)      # (..., 1)
    xhat = xc * rstd                                     # (..., C) normalized
    out = xhat * weight.data
    if bias is not None:
        out += bias.data
    children = (x, weight) if bias is None else (x, weight, bias)
    out = Tensor(out, _children=children, _op="layer_norm")

    def _backward(g):
        if weight.requires_grad:
            weight._accumulate((g * xhat).reshape(-1, C).sum(axis=0))
        if bias is not None and bias.requires_grad:
            bias._accumulate(g.reshape(-1, C).sum(axis=0))
        if x.requires_grad:
            dxhat = g * weight.data
            dx = xhat * (_row_sum(dxhat * xhat) / C)
            dx += _row_sum(dxhat) / C
            np.subtract(dxhat, dx, out=dx)
            dx *= rstd
            x._accumulate(dx)
    out._backward = _backward
    return out


def scaled_dot_product_attention(q, k, v, dropout_p=0.0, generator=None):
    """Causal self-attention of every head at once (torch's
    F.scaled_dot_product_attention(q, k, v, is_causal=True) when Tq == Tk; with fewer
    queries than keys, as with a KV cache, the mask is aligned to the last position, like
    torch's causal_lower_right), as ONE op: the steps of the
    lecture's Head (q @ k^T / sqrt(head_size), mask the future, softmax, dropout, @ v) on
    (B, H, T, hs) arrays, with the backward pass written out, so no (B, H, T, T)
    intermediate is kept but the attention weights themselves. Returns (out, weights)."""
    Tq, Tk, hs = q.shape[-2], k.shape[-2], q.shape[-1]
    qs = q.data * hs**-0.5                  # scaling q is cheaper than scaling q @ k^T
    att = qs @ np.swapaxes(k.data, -1, -2)                 # (B, H, Tq, Tk) affinities
    # softmax over each row. Subtracting the row's max only keeps exp() from overflowing
    # (it does not change the result); numpy's max over short rows is slow, so it is
    # skipped when no affinity is big enough to over- or underflow float32's exp()
    big = not -60 < att.min() <= att.max() < 60
    # no looking ahead (with a KV cache, the Tq queries are the last of Tk positions)
    att += np.triu(np.full((Tq, Tk), -np.inf, dtype=att.dtype), Tk - Tq + 1)
    if big:
        att -= att.max(axis=-1, keepdims=True)
    np.exp(att, out=att)                                   # in place: exp(-inf) = 0
    att /= _row_sum(att)
    weights = att
    if dropout_p > 0:  # dropout on the weights, as the Head does
        keep = rng.rand(*att.shape, generator=generator) < 1 - dropout_p
        weights = att * keep
        weights *= 1 / (1 - dropout_p)
    out = Tensor(weights @ v.data, _children=(q, k, v), _op="attention")  # (B, H, T, hs)
    del weights  # (recomputed in the backward pass: (B, H, T, T) floats are big)

    def _backward(g):
        weights = att
        if dropout_p > 0:
            weights = att * keep
            weights *= 1 / (1 - dropout_p)
        if v.requires_grad:
            v._accumulate(np.swapaxes(weights, -1, -2) @ g)
        datt = g @ np.swapaxes(v.data, -1, -2)               # (B, H, T, T)
        if dropout_p > 0:
            datt *= keep
            datt *= 1 / (1 - dropout_p)
        # softmax backward: att * (datt - sum(datt * att)); masked places have att = 0
        datt -= _row_sum(datt * att)
        datt *= att
        if q.requires_grad:
            dq = datt @ k.data
            dq *= hs**-0.5
            q._accumulate(dq)
        if k.requires_grad:
            k._accumulate(np.swapaxes(datt, -1, -2) @ qs)
    out._backward = _backward
    return out, att


# %% Engine: new in stage 08: stacking tensors, a faster embedding lookup
def stack(tensors, dim=0):
    """torch.stack: tensors of one shape joined along a NEW dimension, e.g. T hidden states
    (B, H) -> (B, T, H). Backward: input i gets the gradient's slice i."""
    out = Tensor(np.stack([t.data for t in tensors], axis=dim), _children=tuple(tensors),
                 _op="stack")

    def _backward(g):
        for i, t in enumerate(tensors):
            t._accumulate(np.take(g, i, axis=dim))
    out._backward = _backward
    return out


def embedding(weight, idx):
    """F.embedding: weight[idx], the rows picked by an integer array idx (B, T) -> (B, T, E).
    The same numbers as indexing, but the backward pass adds the gradient rows into their
    table rows with one matmul, one_hot(idx).T @ grad, instead of np.add.at (scatter-add,
    which is slow: a sizeable share of a training step here)."""
    out = Tensor(weight.data[idx], _children=(weight,), _op="embedding")

    def _backward(g):
        flat = idx.reshape(-1)
        onehot = np.zeros((len(flat), weight.data.shape[0]), dtype=g.dtype)
        onehot[np.arange(len(flat)), flat] = 1                         # (B*T, V)
        weight._accumulate(onehot.T @ g.reshape(len(flat), -1))        # (V, E)
    out._backward = _backward
    return out


# %% Engine: new in stage 08: the recurrence as one fused op
# The op-by-op cells (section Model) build 5 to 26 graph nodes per time step; each costs a
# few microseconds of Python however small its arrays. Here all T steps of one layer are
# one op: the forward pass loops over time in numpy and keeps what the backward pass
# needs; the backward pass is backpropagation through time written out, looping from the
# last step to the first. Two more savings: the input half of every gate pre-activation,
# x_t @ W_x + b, is computed for all time steps in one matmul before the loop, and so are
# the weight gradients after it (one matmul over all B * T rows instead of T small ones).
# tests/test_08_lstm_gru.py checks it against the op-by-op cells and finite differences.

GATES = {"rnn": 1, "gru": 3, "lstm": 4}  # blocks of H columns in W: pre-activations per cell


def _sigmoid_(a):
    """sigmoid(a) in place, as (1 + tanh(a / 2)) / 2: no exp() to overflow."""
    a *= 0.5
    np.tanh(a, out=a)
    a += 1
    a *= 0.5
    return a


# Each cell has a forward loop, which returns the hidden states (B, T, H), the final cell
# state (LSTM) and a cache of what its backward needs, and a backward loop, which turns
# dL/dhs into dL/d(pre-activations): of the input half (x W_x + b) and of the hidden half
# (h W_h). The two are the same except inside the GRU's reset product.
# Speed: inside the loops only what depends on the running gradient dh is computed; every
# local derivative (1 - tanh**2, s (1 - s), ...) is computed for all steps at once before
# the loop, and results are written straight into preallocated arrays (out=...).

def _rnn_forward(xw, h, c, W_h, b_hn):
    """h_t = tanh(x_t W_x + b + h_{t-1} W_h), for t = 0 .. T-1."""
    B, T, H = xw.shape
    hs = np.empty((B, T, H), xw.dtype)
    for t in range(T):
        a = h @ W_h                                         # (B, H)
        a += xw[:, t]
        h = np.tanh(a, out=hs[:, t])
    return hs, None, {}


def _rnn_backward(dhs, hs, h0, c0, W_h, cache):
    B, T, H = hs.shape
    slope = 1 - hs ** 2                                     # tanh' at every step
    da = np.empty_like(hs)                                  # (B, T, H)
    dh = np.zeros_like(h0)                                  # gradient from the future steps
    for t in reversed(range(T)):
        dh += dhs[:, t]                                     # + this step's own output
        np.multiply(dh, slope[:, t], out=da[:, t])          # through tanh
        dh = da[:, t] @ W_h.T                               # to h_{t-1}
    return da, da, dh, None, None


def _gru_forward(xw, h, c, W_h, b_hn):
    """PyTorch's GRU (nn.GRU, gate order r, z, n):
        r = sigmoid(x W_xr + b_r + h W_hr)             reset gate
        z = sigmoid(x W_xz + b_z + h W_hz)             update gate
        n = tanh(x W_xn + b_n + r * (h W_hn + b_hn))   candidate
        h = (1 - z) * n + z * h_prev"""
    B, T, G = xw.shape
    H = G // 3
    rz = np.empty((B, T, 2 * H), xw.dtype)                  # both gates, side by side
    hs, n, hn = (np.empty((B, T, H), xw.dtype) for _ in range(3))
    for t in range(T):
        gh = h @ W_h                                        # (B, 3H)
        _sigmoid_(np.add(gh[:, :2 * H], xw[:, t, :2 * H], out=rz[:, t]))
        r, z = rz[:, t, :H], rz[:, t, H:]
        np.add(gh[:, 2 * H:], b_hn, out=hn[:, t])           # h W_hn + b_hn
        a = r * hn[:, t]
        a += xw[:, t, 2 * H:]
        np.tanh(a, out=n[:, t])
        a = h - n[:, t]
        a *= z
        h = np.add(n[:, t], a, out=hs[:, t])                # n + z (h - n) = (1-z) n + z h
    return hs, None, dict(r=rz[..., :H], z=rz[..., H:], n=n, hn=hn)


def _gru_backward(dhs, hs, h0, c0, W_h, cache):
    r, z, n, hn = cache["r"], cache["z"], cache["n"], cache["hn"]
    B, T, H = hs.shape
    h_prev = np.concatenate([h0[:, None], hs[:, :-1]], axis=1)
    to_n = (1 - z) * (1 - n ** 2)            # dh -> d(pre-activation of n)
    n_to_r = hn * r * (1 - r)                # d(pre n) -> d(pre r), through r * hn
    to_z = (h_prev - n) * z * (1 - z)        # dh -> d(pre z)
    dgh = np.empty((B, T, 3 * H), hs.dtype)  # d(h W_h + ..): blocks r, z, n
    dxn = np.empty((B, T, H), hs.dtype)      # d(x W_xn + b_n): the n block of the input half
    dh = np.zeros_like(h0)
    for t in reversed(range(T)):
        dh += dhs[:, t]
        dn = np.multiply(dh, to_n[:, t], out=dxn[:, t])
        np.multiply(dn, n_to_r[:, t], out=dgh[:, t, :H])
        np.multiply(dh, to_z[:, t], out=dgh[:, t, H:2 * H])
        np.multiply(dn, r[:, t], out=dgh[:, t, 2 * H:])     # the reset gate sits in between
        dh *= z[:, t]                                       # to h_{t-1} directly ...
        dh += dgh[:, t] @ W_h.T                             # ... and through W_h
    dx = np.concatenate([dgh[..., :2 * H], dxn], axis=2)    # r, z as in dgh; n differs
    return dx, dgh, dh, None, dgh[..., 2 * H:].sum(axis=(0, 1))


def _lstm_forward(xw, h, c, W_h, b_hn):
    """PyTorch's LSTM (nn.LSTM, gate order i, f, g, o):
        i, f, o = sigmoid(pre-activations)   input, forget, output gates
        g = tanh(pre-activation)             cell candidate
        c = f * c_prev + i * g,  h = o * tanh(c)"""
    B, T, G = xw.shape
    H = G // 4
    acts = np.empty((B, T, G), xw.dtype)                    # i, f, g, o side by side
    hs, cs, tcs = (np.empty((B, T, H), xw.dtype) for _ in range(3))
    for t in range(T):
        a = np.add(h @ W_h, xw[:, t], out=acts[:, t])       # (B, 4H) pre-activations
        _sigmoid_(a[:, :2 * H])                             # i, f
        np.tanh(a[:, 2 * H:3 * H], out=a[:, 2 * H:3 * H])   # g
        _sigmoid_(a[:, 3 * H:])                             # o
        c = np.multiply(a[:, H:2 * H], c, out=cs[:, t])     # f * c_prev
        c += a[:, :H] * a[:, 2 * H:3 * H]                   # + i * g
        h = np.multiply(a[:, 3 * H:], np.tanh(c, out=tcs[:, t]), out=hs[:, t])
    return hs, c, dict(i=acts[..., :H], f=acts[..., H:2 * H], g=acts[..., 2 * H:3 * H],
                       o=acts[..., 3 * H:], c=cs, tanh_c=tcs)


def _lstm_backward(dhs, hs, h0, c0, W_h, cache):
    i, f, g, o, cs, tcs = (cache[k] for k in ("i", "f", "g", "o", "c", "tanh_c"))
    B, T, H = hs.shape
    c_prev = np.concatenate([c0[:, None], cs[:, :-1]], axis=1)
    to_c = o * (1 - tcs ** 2)                               # dh -> dc, through o tanh(c)
    to_ifg = np.stack([g * i * (1 - i),                     # dc -> d(pre i), d(pre f),
                       c_prev * f * (1 - f),                # d(pre g): (B, T, 3, H)
                       i * (1 - g ** 2)], axis=2)
    to_o = tcs * o * (1 - o)                                # dh -> d(pre o)
    da = np.empty((B, T, 4, H), hs.dtype)                   # blocks i, f, g, o
    dh, dc = np.zeros_like(h0), np.zeros_like(c0)
    for t in reversed(range(T)):
        dh += dhs[:, t]
        dc += dh * to_c[:, t]
        np.multiply(dc[:, None], to_ifg[:, t], out=da[:, t, :3])
        np.multiply(dh, to_o[:, t], out=da[:, t, 3])
        dc *= f[:, t]                                       # to c_{t-1}: the forget gate
        dh = da[:, t].reshape(B, 4 * H) @ W_h.T             # to h_{t-1}
    da = da.reshape(B, T, 4 * H)
    return da, da, dh, dc, None


_CELLS = {"rnn": (_rnn_forward, _rnn_backward), "gru": (_gru_forward, _gru_backward),
          "lstm": (_lstm_forward, _lstm_backward)}


def recurrence(cell, x, h0, W, b, c0=None, b_hn=None, record=None):
    """One recurrent layer over all time steps, as one op.

    x (B, T, E) inputs; h0 (B or 1, H) initial state (c0 too for the LSTM); W (E + H, G)
    the weights of [x, h] stacked, G = 1, 3 or 4 blocks of H columns in PyTorch's gate
    order; b (G,) the bias; b_hn (H,) the GRU's extra bias inside the reset product.
    Returns (hs, state): hs (B, T, H) the hidden states, a Tensor; state = (h_T, c_T), the
    final state as plain arrays, to start the next chunk from (no gradient flows back
    through them: truncated BPTT). `record`, if a dict, receives the gate activations."""
    B, T, E = x.shape
    dtype = W.data.dtype
    W_x, W_h = W.data[:E], W.data[E:]                       # (E, G), (H, G)
    H = W_h.shape[0]
    xw = (x.data.reshape(B * T, E) @ W_x + b.data).reshape(B, T, -1)  # all steps at once
    h_init = np.broadcast_to(h0.data, (B, H)).astype(dtype)
    c_init = None if c0 is None else np.broadcast_to(c0.data, (B, H)).astype(dtype)
    bhn = None if b_hn is None else b_hn.data
    forward, backward = _CELLS[cell]
    hs, c_last, cache = forward(xw, h_init, c_init, W_h, bhn)
    if record is not None:
        record.update(cache, h=hs)
    inputs = [t for t in (x, h0, W, b, c0, b_hn) if t is not None]
    out = Tensor(hs, _children=tuple(inputs), _op=cell)

    def _backward(g):
        dx, dgh, dh0, dc0, db_hn = backward(g, hs, h_init, c_init, W_h, cache)
        h_prev = np.concatenate([h_init[:, None], hs[:, :-1]], axis=1)     # (B, T, H)
        dx2, dgh2 = dx.reshape(B * T, -1), dgh.reshape(B * T, -1)          # (B*T, G)
        x._accumulate((dx2 @ W_x.T).reshape(B, T, E))
        W._accumulate(np.concatenate([x.data.reshape(B * T, E).T @ dx2,
                                      h_prev.reshape(B * T, H).T @ dgh2]))
        b._accumulate(dx2.sum(axis=0))
        h0._accumulate(dh0)          # summed back to (1, H) for a learned start vector
        if c0 is not None:
            c0._accumulate(dc0)
        if b_hn is not None:
            b_hn._accumulate(db_hn)
    out._backward = _backward
    return out, (hs[:, -1].copy(), None if c_last is None else c_last.copy())


# %% Engine: new in stage 09: convolution and pooling over images
def _windows(xp, kh, kw, stride):
    """Every kh x kw window of xp (B, C, H, W), `stride` apart, as a view (no copy):
    (B, C, Ho, Wo, kh, kw)."""
    win = np.lib.stride_tricks.sliding_window_view(xp, (kh, kw), axis=(2, 3))
    return win[:, :, ::stride, ::stride]


def conv2d(x, weight, bias=None, stride=1, padding=0, pad_value=0.0):
    """F.conv2d: x (B, C, H, W), weight (O, C, kh, kw), bias (O,) -> (B, O, Ho, Wo), with
    Ho = (H + 2 padding - kh) // stride + 1 (Wo alike). Output channel o at (i, j) is the
    dot product of filter o with the window of x at (i stride, j stride), all C channels.
    As one matmul ("im2col"): the windows are copied into rows of C kh kw numbers,
    (B Ho Wo, C kh kw) @ (C kh kw, O). Backward: the weight's gradient is the transposed
    matmul; the input's, each window's gradient added back where the window came from
    (a loop over the kh kw offsets of the kernel, never over pixels). `pad_value` fills
    the border (LeCun 1989 pads with -1, the background)."""
    B, C, H, W = x.shape
    O, _, kh, kw = weight.shape
    p = padding
    xp = np.pad(x.data, ((0, 0), (0, 0), (p, p), (p, p)), constant_values=pad_value) \
        if p else x.data
    win = _windows(xp, kh, kw, stride)                     # (B, C, Ho, Wo, kh, kw) view
    Ho, Wo = win.shape[2:4]
    cols = win.transpose(0, 2, 3, 1, 4, 5).reshape(B * Ho * Wo, C * kh * kw)  # a copy
    wmat = weight.data.reshape(O, C * kh * kw)
    out = cols @ wmat.T                                    # (B Ho Wo, O)
    if bias is not None:
        out += bias.data
    out = np.ascontiguousarray(out.reshape(B, Ho, Wo, O).transpose(0, 3, 1, 2))
    children = (x, weight) if bias is None else (x, weight, bias)
    out = Tensor(out, _children=children, _op="conv2d")

    def _backward(g):                                      # g (B, O, Ho, Wo)
        grows = g.transpose(0, 2, 3, 1).reshape(B * Ho * Wo, O)
        if weight.requires_grad:
            weight._accumulate((grows.T @ cols).reshape(weight.shape))
        if bias is not None and bias.requires_grad:
            bias._accumulate(grows.sum(axis=0))
        if x.requires_grad:
            dcols = (grows @ wmat).reshape(B, Ho, Wo, C, kh, kw)
            dxp = np.zeros(xp.shape, dtype=g.dtype)
            for i in range(kh):      # window offset (i, j) touches pixels i, i + stride, ...
                for j in range(kw):
                    dxp[:, :, i:i + stride * Ho:stride, j:j + stride * Wo:stride] += \
                        dcols[:, :, :, :, i, j].transpose(0, 3, 1, 2)
            x._accumulate(dxp[:, :, p:p + H, p:p + W])
    out._backward = _backward
    return out


def max_pool2d(x, kernel_size=2):
    """F.max_pool2d with stride = kernel_size: the largest value of each k x k block of x
    (B, C, H, W) -> (B, C, H // k, W // k) (a leftover edge is dropped, as torch does).
    Taken as the maximum of k * k strided views of x, one per position in the block (a
    loop over the block, never over pixels). The gradient goes to the one element that
    was the largest (the first, on ties)."""
    k = kernel_size
    Ho, Wo = x.shape[2] // k, x.shape[3] // k
    views = [x.data[:, :, i:i + k * Ho:k, j:j + k * Wo:k] for i in range(k) for j in range(k)]
    m = views[0].copy()                                              # (B, C, Ho, Wo)
    for v in views[1:]:
        np.maximum(m, v, out=m)
    out = Tensor(m, _children=(x,), _op="max_pool2d")

    def _backward(g):
        dx = np.zeros(x.shape, dtype=g.dtype)
        taken = np.zeros(m.shape, dtype=bool)
        for n, v in enumerate(views):
            hit = (v == m) & ~taken                 # the first element equal to the max
            taken |= hit
            i, j = divmod(n, k)
            dx[:, :, i:i + k * Ho:k, j:j + k * Wo:k] = g * hit
        x._accumulate(dx)
    out._backward = _backward
    return out


if __name__ == "__main__":
    cli.run(main)
