"""Stage 10: what the network looks at: a linear classifier's templates, saliency,
SmoothGrad, integrated gradients, occlusion, activation maximization, and a sanity check.

Stage 09's CNN gets 92% of Fashion-MNIST's test images right; this stage asks it why.
Each method answers "which pixels made the logit of class c what it is?" with a map of
the image, and each can mislead, so the stage also checks them: Adebayo et al.'s (2018)
test re-initializes the model's layers one by one and measures (Spearman rank
correlation) how much each method's maps change; a method whose maps stay the same
without the trained weights shows the image, not the model. New over stage 09: the
engine's `grad` (torch.autograd.grad: the gradient with respect to chosen tensors, the
input or a layer's activations, the parameters left alone), and the methods, in the
`Model: what the network looks at` cell: softmax regression's weights as templates
(Fashion-MNIST and the MNIST digits), saliency for the predicted and the true class,
SmoothGrad, integrated gradients from a black image with its completeness check,
occlusion by a sliding square, activation maximization with three regularizers. The CNN
explained is stage 09's checkpoint (out/09_convnet/cnn.npz) if there is one, else one
trained here for 2 epochs (the training flags shape only that one). Stage 09's LeCun
1989 task, the `--task tricks` experiment, int8 weights, digit reader and MLP baseline
are not carried on.

    python 10_interpretability/train.py                    # stage 09's CNN (or train one)
    python 10_interpretability/train.py --cnn ''           # always train the CNN here
    python 10_interpretability/train.py --cnn out/10_interpretability/cnn.npz  # it, again
    python 10_interpretability/train.py --patch-fill black # occlusion by black squares

What it prints (measured with OpenBLAS's AVX2 kernels, as the course's other numbers;
README.md has the lesson notes and the numbers of both CNNs):
    linear classifiers   test accuracy 84.01% (Fashion-MNIST), 91.80% (500 digits)
    the CNN              stage 09's: 92.21% (the whole run takes about 22 s); trained
                         here for 2 epochs: 90.78% (about 1m20s in all)
    with stage 09's CNN  integrated gradients' completeness error at m = 300: 0.17% on
                         average (0.01-0.37%), falling about as 1/m (6.2% at m = 10,
                         0.48% at 100); the sanity check's rank correlation once every
                         layer is random: saliency 0.16, SmoothGrad 0.08, occlusion 0.12
                         (they pass), integrated gradients 0.90 (it fails on |map|,
                         which is mostly the image's silhouette)
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
    # the models explained
    cnn: str = cli.arg("out/09_convnet/cnn.npz", "the trained CNN to explain, a checkpoint "
                       "of stage 09's; if this default file does not exist, a CNN is "
                       "trained here and saved in --out as cnn.npz, to explain again with "
                       "--cnn PATH ('': always train one here)")
    # how the CNN is trained here; the linear classifiers have a fixed recipe (LINEAR)
    epochs: int = cli.arg(2, "passes over the training images (only for a CNN trained "
                             "here, --cnn '')", min=1, max=1000)
    linear_epochs: int = cli.arg(5, "passes over the training images of the linear "
                                    "classifiers (Fashion-MNIST and the digits)", min=1,
                                 max=1000)
    batch_size: int = cli.arg(64, "images per minibatch", min=1, max=60_000)
    lr: float = cli.arg(2e-3, "learning rate at the start, decaying linearly to 10% of it "
                              "(only for a CNN trained here, --cnn '')", min=1e-9, max=10)
    optimizer: str = cli.arg("adamw", "sgd, momentum (sgd with momentum 0.9), or adamw "
                                      "(only for a CNN trained here, --cnn '')",
                             choices=("sgd", "momentum", "adamw"))
    weight_decay: float = cli.arg(1e-4, "decoupled weight decay (AdamW) or L2 (SGD) (only "
                                        "for a CNN trained here, --cnn '')", min=0, max=100)
    channels: int = cli.arg(16, "filters of the first convolution, twice as many in the "
                                "second (only for a CNN trained here, --cnn '')", min=1,
                            max=1024)
    dropout: float = cli.arg(0.0, "dropout before the last layer while training (only for "
                                  "a CNN trained here, --cnn '')", min=0, max=0.99)
    augment: bool = cli.arg(False, "random shifts by up to 2 pixels and horizontal flips "
                                   "while training (only for a CNN trained here, --cnn '')")
    patience: int = cli.arg(0, "early stopping: stop after this many epochs without a "
                               "better validation loss, keep the best, 0: off (only for a "
                               "CNN trained here, --cnn '')", min=0)
    val_size: int = cli.arg(5000, "training images held out for validation", min=1,
                            max=30_000)
    subset: int = cli.arg(0, "a quick run: only this many training and test images (0: "
                             "all)", min=0, max=60_000)
    # the explanations
    images: int = cli.arg(6, "test images to explain", min=1, max=50)
    mistakes: int = cli.arg(2, "how many of them are the CNN's most confident mistakes",
                            min=0, max=50)
    smoothgrad_samples: int = cli.arg(50, "SmoothGrad: noisy copies of each image",
                                      min=1, max=1000)
    smoothgrad_noise: float = cli.arg(0.15, "SmoothGrad: the noise's standard deviation, "
                                            "as a fraction of the image's range", min=0,
                                      max=10)
    ig_steps: int = cli.arg(300, "integrated gradients: steps m from the black image to "
                                 "the image", min=1, max=10_000)
    patch: int = cli.arg(5, "occlusion: side of the square, in pixels", min=1, max=28)
    patch_stride: int = cli.arg(1, "occlusion: pixels between two positions of the square",
                                min=1, max=28)
    patch_fill: str = cli.arg("grey", "occlusion: what covers the square, grey (the mean "
                                      "pixel) or black (the background)",
                              choices=("grey", "black"))
    maximize_steps: int = cli.arg(200, "activation maximization: steps of gradient ascent",
                                  min=1, max=100_000)
    maximize_lr: float = cli.arg(0.05, "activation maximization: learning rate (AdamW)",
                                 min=1e-9, max=100)
    maximize_l2: float = cli.arg(2.0, "activation maximization: weight of the penalty on "
                                      "bright pixels", min=0, max=1000)
    maximize_tv: float = cli.arg(20.0, "activation maximization: weight of the penalty on "
                                       "jumps between neighbouring pixels", min=0, max=1000)
    maximize_jitter: int = cli.arg(2, "activation maximization: each step moves the image "
                                      "by up to this many pixels each way", min=0, max=14)
    seed: int = cli.arg(1337, "seed of the generator", min=0, max=2**64 - 1)
    out: str = cli.arg("out/10_interpretability", "output folder for figures and models")
    plots: bool = cli.arg(True, "write figures")
    format: str = cli.arg("png", "file format of the figures: png, or svg and pdf to scale "
                                 "on slides", choices=cli.FIGURE_FORMATS)

    def check(self):
        cli.check(self.mistakes <= self.images, "--mistakes must be at most --images")


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


MNIST_MEAN, MNIST_STD = 0.1307, 0.3081  # MNIST's pixel mean and std


def digit_splits(cfg, g, n_val=500, n_test=500):
    """The 5,000 MNIST digits shuffled and split 4,000 / 500 / 500, as fashion_splits'
    dictionary: (N, 1, 28, 28) float32 images normalized as MNIST, (N,) int64 labels."""
    X, Y = data.load_mnist5k()                    # sorted by digit: shuffle first
    X = ((X.astype(np.float32) / 255 - MNIST_MEAN) / MNIST_STD)[:, None]
    order = shuffled(len(X), g)
    test, val, train = order[:n_test], order[n_test:n_test + n_val], order[n_test + n_val:]
    if cfg.subset:
        train = train[:cfg.subset]
    return {name: (X[i], Y[i].astype(np.int64))
            for name, i in (("train", train), ("val", val), ("test", test))}


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


# %% Model: what the network looks at
# A trained classifier turns an image into ten logits, one per class. Every method below
# asks which pixels made the logit of class c what it is, and answers with a map of the
# image's shape, (B, 1, 28, 28). The model runs in evaluation mode (BatchNorm's running
# statistics, no dropout): an image's logits then depend on that image alone. Each
# function that runs the model calls model.eval() itself, first: stage 09's `evaluate`
# and `predict`, carried unchanged, put the model back in training mode when they end.
def linear_templates(model):
    """A linear classifier (Flatten, then Linear 784 -> 10) as ten 28 x 28 images. Logit c
    is the sum of the pixels times column c of the weight (plus a bias), so column c is
    the pattern class c looks for: a template, positive where bright pixels vote for the
    class, negative where they vote against it. (10, 28, 28)."""
    W = model.layers[-1].weight.data                    # (784, 10)
    return W.T.reshape(-1, 28, 28)


def class_logits(model, x, classes, batch_size=500):
    """The logit of class classes[i] for each image x[i] (B, 1, H, W): (B,), no graph."""
    model.eval()
    picked = []
    with no_grad():
        for i in range(0, len(x), batch_size):
            logits = model(Tensor(x[i:i + batch_size])).data          # (b, 10)
            picked.append(logits[np.arange(len(logits)), classes[i:i + batch_size]])
    return np.concatenate(picked)


def logit_gradients(model, x, classes, batch_size=250):
    """For each image x[i], the logit of class classes[i] and its gradient with respect to
    every pixel, d logit / d x: (B,) and (B, 1, H, W). The gradient of a batch's summed
    logits is each image's own gradient, since no image's logit depends on another's."""
    model.eval()
    logits, grads = [], []
    for i in range(0, len(x), batch_size):
        xb = Tensor(x[i:i + batch_size], requires_grad=True)     # (b, 1, H, W)
        cb = classes[i:i + batch_size]
        picked = model(xb)[np.arange(len(cb)), cb]              # (b,) one logit each
        logits.append(picked.data)
        grads.append(grad(picked.sum(), [xb])[0])              # (b, 1, H, W)
    return np.concatenate(logits), np.concatenate(grads)


def saliency(model, x, classes):
    """Simonyan et al. 2013: |d logit_c / d x|, how far a small change of each pixel moves
    the logit of class c, (B, 1, H, W). Local: where the logit is sensitive around this
    very image, not which pixels made it large."""
    return np.abs(logit_gradients(model, x, classes)[1])


def smoothgrad(model, x, classes, g, n=50, noise=0.15):
    """Smilkov et al. 2017: the gradient averaged over n noisy copies of each image,
        SmoothGrad_i = | (1/n) * sum over k = 1..n of d logit_c / d x_i at x + e_k |
    with e_k Gaussian noise, its std `noise` times the image's range (max - min); the
    map is the average's absolute value, as saliency's is the gradient's. A ReLU network
    is piecewise linear: its gradient changes abruptly wherever a small change of the
    image switches ReLUs on or off, which makes saliency maps noisy. Averaged over a
    small cloud around the image, what the copies share adds up and the rest, of random
    sign, cancels. (B, 1, H, W)."""
    std = noise * (x.max(axis=(1, 2, 3)) - x.min(axis=(1, 2, 3)))      # (B,)
    eps = rng.randn(n, *x.shape, generator=g).astype(x.dtype)          # (n, B, 1, H, W)
    noisy = x + std[:, None, None, None] * eps                          # (n, B, 1, H, W)
    _, grads = logit_gradients(model, noisy.reshape(-1, *x.shape[1:]), np.tile(classes, n))
    return np.abs(grads.reshape(n, *x.shape).mean(axis=0))             # (B, 1, H, W)


def integrated_gradients(model, x, classes, baseline, steps=300):
    """Sundararajan et al. 2017: walk from the baseline x' (an image showing nothing: here
    all black) to the image x in m equal steps, and average the gradients met on the way:
        IG_i = (x_i - x'_i) * (1/m) * sum over k = 1..m of d f(x' + k/m (x - x')) / d x_i
    (the right Riemann sum of the paper's integral). As m grows, the attributions add up
    to f(x) - f(x') (completeness, the gradient theorem along the straight line), so each
    pixel gets its share of how much the logit rose from the baseline. (B, 1, H, W)."""
    alphas = np.arange(1, steps + 1, dtype=x.dtype) / steps            # (m,)
    out = np.empty_like(x)
    for i in range(len(x)):  # the m points of one image's path, as one batch
        path = baseline + alphas[:, None, None, None] * (x[i] - baseline)  # (m, 1, H, W)
        _, grads = logit_gradients(model, path, np.full(steps, classes[i]))
        out[i] = (x[i] - baseline) * grads.mean(axis=0)
    return out


def logit_rise(model, x, classes, baseline):
    """f(x) - f(x'): how much the logit of class c rose from the baseline to the image,
    (B,): what integrated gradients' attributions add up to."""
    return class_logits(model, x, classes) - class_logits(
        model, np.broadcast_to(baseline, x.shape), classes)


def completeness_error(attributions, rise):
    """How far the attributions' sum is from rise = f(x) - f(x') (logit_rise), relative
    to it: (B,)."""
    return np.abs(attributions.sum(axis=(1, 2, 3)) - rise) / np.maximum(np.abs(rise),
                                                                         1e-12)


def patch_masks(H, W, size, stride):
    """Every size x size square that fits in H x W, `stride` pixels apart, as boolean
    masks (P, H, W), row by row."""
    tops, lefts = np.arange(0, H - size + 1, stride), np.arange(0, W - size + 1, stride)
    # rows[t, i]: is row i inside the square whose top is tops[t]? (columns alike)
    rows = (np.arange(H) >= tops[:, None]) & (np.arange(H) < tops[:, None] + size)
    cols = (np.arange(W) >= lefts[:, None]) & (np.arange(W) < lefts[:, None] + size)
    return (rows[:, None, :, None] & cols[None, :, None, :]).reshape(-1, H, W)


def occlusion(model, x, classes, size=5, stride=1, fill=0.0):
    """Zeiler & Fergus 2014: cover a size x size square of the image with `fill` (grey:
    the mean pixel), see how far the logit drops, and do it at every position; each
    pixel gets the mean drop of the squares that covered it (0 if none did). (Zeiler &
    Fergus mapped the class probability at each position of the square; the logit and
    the mean per pixel are this stage's choices.) Positive:
    hiding it lowers the logit (evidence for the class); negative: hiding it raises the
    logit. No gradient: the model itself is asked, but only about what a square of
    `fill` can hide. (B, 1, H, W)."""
    masks = patch_masks(*x.shape[2:], size, stride)                # (P, H, W)
    covered = masks.sum(axis=0)                                     # (H, W)
    out = np.zeros_like(x)
    for i in range(len(x)):  # the P covered copies of one image, as one batch
        copies = np.where(masks[:, None], fill, x[i]).astype(x.dtype)  # (P, 1, H, W)
        drop = class_logits(model, x[i:i + 1], classes[i:i + 1]) - class_logits(
            model, copies, np.full(len(copies), classes[i]))        # (P,)
        out[i, 0] = np.tensordot(drop, masks, axes=1) / np.maximum(covered, 1)
    return out


def activation_maximization(model, classes, x0, g, steps=200, lr=0.05, l2=2.0, tv=20.0,
                            jitter=2, blank=0.0, lo=-np.inf, hi=np.inf):
    """Erhan et al. 2009, Simonyan et al. 2013: an image made from scratch to maximize one
    class's logit. Start from x0 (noise), then climb the gradient of
        logit_c(x) - l2 * mean((x - blank)^2) - tv * mean((x - its neighbour)^2)
    keeping every pixel within the range of real images, [lo, hi]. Without a
    regularizer the logit climbs fastest through a speckle of extreme pixels that looks
    like nothing; here three of them: bright pixels cost (`blank` is an empty image),
    jumps from a pixel to the next cost, and every step sees the image moved by up to
    `jitter` pixels each way (a random roll, from g), so that only patterns that work
    wherever they sit keep growing. (AdamW descends: it is given the gradient of minus
    the objective.) Returns the images (K, 1, H, W) and their class logits at the start
    and at the end, (K,) each."""
    model.eval()
    image = Tensor(x0.copy(), requires_grad=True)                   # (K, 1, H, W)
    opt = AdamW([("image", image)], lr, weight_decay=0.0)
    rows = np.arange(len(classes))
    for _ in range(steps):
        dy, dx = (int(d) for d in rng.randint(-jitter, jitter + 1, (2,), generator=g))
        x = Tensor(np.roll(image.data, (dy, dx), axis=(2, 3)), requires_grad=True)
        dv = x[:, :, 1:, :] - x[:, :, :-1, :]                      # (K, 1, H - 1, W)
        dh = x[:, :, :, 1:] - x[:, :, :, :-1]                      # (K, 1, H, W - 1)
        penalty = l2 * ((x - blank) ** 2).mean(dim=(1, 2, 3)) + tv * (
            (dv ** 2).mean(dim=(1, 2, 3)) + (dh ** 2).mean(dim=(1, 2, 3)))   # (K,)
        objective = model(x)[rows, classes] - penalty                       # (K,)
        # the gradient with respect to the moved image, moved back into place
        image.grad = -np.roll(grad(objective.sum(), [x])[0], (-dy, -dx), axis=(2, 3))
        opt.step()
        np.clip(image.data, lo, hi, out=image.data)
    return image.data, class_logits(model, x0, classes), class_logits(model, image.data,
                                                                      classes)


# -- the sanity check: do the maps depend on what the model learned? --
def ranks(a):
    """The rank of each value of the 1-D array a, 1 for the smallest; tied values share
    the mean of their ranks (ranks([5, 1, 5]) = [2.5, 1, 2.5]). (n,) float."""
    order = np.argsort(a, kind="stable")
    s = a[order]
    first = np.r_[True, s[1:] != s[:-1]]           # where each run of equal values starts
    starts = np.flatnonzero(first)                   # its first position, 0-based
    ends = np.r_[starts[1:], len(a)]                  # one past its last
    mean_rank = (starts + 1 + ends) / 2               # the mean of ranks starts+1 .. ends
    out = np.empty(len(a))
    out[order] = mean_rank[np.cumsum(first) - 1]
    return out


def spearman(a, b):
    """Spearman's rank correlation of two maps of the same size: Pearson's correlation of
    their pixels' ranks. 1: both order the pixels the same way; about 0: unrelated
    orders. Only the order counts, not the scale (0 for a constant map, which orders
    nothing)."""
    ra, rb = ranks(a.ravel()), ranks(b.ravel())
    ra, rb = ra - ra.mean(), rb - rb.mean()
    norm = np.sqrt((ra**2).sum() * (rb**2).sum())
    return float((ra * rb).sum() / norm) if norm > 0 else 0.0


def layer_groups(model):
    """The layers of a Sequential that have weights, from the output back to the input,
    as lists of indices into model.layers (a BatchNorm goes with the convolution before
    it): the order in which the sanity check re-initializes them."""
    groups = []
    for k, layer in enumerate(model.layers):
        if isinstance(layer, BatchNorm2d):
            groups[-1].append(k)
        elif layer.parameters():
            groups.append([k])
    return groups[::-1]


def randomized(model, fresh, layers):
    """The trained model with its layers at the indices `layers` replaced by those of
    `fresh`, a newly initialized model of the same shape (Adebayo et al. 2018's model
    randomization test). The other layers are shared, not copied."""
    mixed = Sequential(model.layers)
    for k in layers:
        mixed.layers[k] = fresh.layers[k]
    return mixed


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


# %% Model: Fashion-MNIST
def logistic_regression(g):
    """The linear baseline: each of the 784 pixels votes for each class with a weight."""
    return Sequential([Flatten(), Linear(784, 10, generator=g)])


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


# Softmax regression's recipe: plain SGD from zero. The problem is convex, so the start
# does not change the optimum, only the noise not yet forgotten: from zero, the weights
# are the sum of their gradient steps and nothing else. And SGD moves each weight by its
# gradient, where Adam's steps are about the same size for every weight, so weights with
# small, noisy gradients would wander as far as the ones that matter. Both keep the
# templates legible.
LINEAR = dict(optimizer="sgd", lr=0.05, weight_decay=0.0, augment=False, patience=0)


def train_linear(cfg, splits, name):
    """Softmax regression (stage 09's logistic regression) trained on one dataset for
    --linear-epochs, from zero weights."""
    model = logistic_regression(rng.Generator(cfg.seed))
    for p in model.parameters():
        p.data[...] = 0
    hist = train_classifier(replace(cfg, epochs=cfg.linear_epochs, **LINEAR), model,
                            splits, rng.Generator(cfg.seed + 1), name, quiet=True)
    if "interrupted" in hist:
        raise KeyboardInterrupt
    return model


def stage09_cnn(cfg, cnn_given):
    """Stage 09's trained CNN, read from --cnn, its size taken from the checkpoint's
    config; None if there is none to read (the default file does not exist, or --cnn
    ''). A missing or damaged file that was asked for is one line, before any training."""
    path = Path(cfg.cnn)
    if not cfg.cnn or not (cnn_given or path.exists()):
        return None
    meta = cli.load_checkpoint_meta(path)
    channels = cli.field(meta.get("config"), "channels", int, str(path), min=1, max=1024)
    return load_model(path, convnet(replace(cfg, channels=channels),
                                    rng.Generator(cfg.seed)))


def train_cnn(cfg, splits, out):
    """The CNN trained here for --epochs (there is no stage 09 checkpoint to explain, or
    --cnn ''), saved in --out as cnn.npz: `--cnn` that file explains it again."""
    why = f"there is no {cfg.cnn}" if cfg.cnn else "--cnn ''"
    print(f"training the CNN here ({why}; python 09_convnet/train.py trains it for 8 "
          f"epochs): {epochs(cfg.epochs)}, {cfg.optimizer} lr {cfg.lr:g}, batch "
          f"{cfg.batch_size}")
    model = convnet(cfg, rng.Generator(cfg.seed))
    hist = train_classifier(cfg, model, splits, rng.Generator(cfg.seed + 1), "CNN")
    save_model(out / "cnn.npz", model, cfg)   # the model so far, also after Ctrl-C
    if "interrupted" in hist:
        print(f"the CNN trained so far is in {out / 'cnn.npz'}")
        raise KeyboardInterrupt
    return model


# %% Sampling: predictions, the images to explain
def predict(model, X, batch_size=1000):
    """Class probabilities (N, 10) for images X, in evaluation mode."""
    model.eval()
    with no_grad():
        probs = np.concatenate([model(Tensor(X[i:i + batch_size])).softmax(dim=-1).data
                                for i in range(0, len(X), batch_size)])
    model.train()
    return probs


def images_to_explain(probs, Y, n, mistakes):
    """Indices of n test images: the first right ones of n - mistakes different classes,
    in the test set's order, then the `mistakes` most confident mistakes (the first
    thing to ask a model: why that?). Other images fill in if there are too few."""
    pred = probs.argmax(axis=1)
    right, classes = [], set()
    for i in np.flatnonzero(pred == Y):
        if len(right) < n - mistakes and Y[i] not in classes:
            right.append(int(i))
            classes.add(Y[i])
    wrong = np.flatnonzero(pred != Y)
    wrong = wrong[np.argsort(-probs[wrong, pred[wrong]], kind="stable")][:mistakes]
    chosen = right + [int(i) for i in wrong]
    chosen += [i for i in range(len(Y)) if i not in chosen][:n - len(chosen)]
    return np.array(chosen)


# %% Figures
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


def brightness(x):
    """Normalized images back to pixel brightness in [0, 1] (0 black), for display."""
    return np.clip(x * FASHION_STD + FASHION_MEAN, 0, 1)


def scaled(m, q=99.5):
    """A map divided by the q-th percentile of its |values| and clipped to [-1, 1]: the
    few largest values, which would leave everything else looking blank, saturate."""
    s = float(np.percentile(np.abs(m), q))
    return np.clip(m / (s if s > 0 else max(float(np.abs(m).max()), 1e-30)), -1, 1)


def tiles(images, gap=2):
    """Images (n, H, W) side by side in one array (H, n W + (n - 1) gap), with NaN, drawn
    blank, between them: one axes showing a row of images draws far faster than one
    axes per image."""
    n, H, W = images.shape
    out = np.full((H, n * (W + gap) - gap), np.nan)
    for k in range(n):
        out[:, k * (W + gap):k * (W + gap) + W] = images[k]
    return out


def tile_centres(n, width=28, gap=2):
    """Where the middle of each of tiles()'s n images is, in pixels (for tick labels)."""
    return np.arange(n) * (width + gap) + (width - 1) / 2


def tile_rows(fig, images, labels, cols=5, **imshow):
    """Images (n, H, W) in rows of `cols` (one axes per row, see `tiles`) in fig, a figure
    or subfigure, each image labelled underneath. Returns the last row's image and all
    the axes, for a colorbar."""
    rows = -(-len(images) // cols)
    axes = fig.subplots(rows, 1, squeeze=False)[:, 0]
    im = None
    for r, ax in enumerate(axes):
        chunk = slice(r * cols, (r + 1) * cols)
        im = ax.imshow(tiles(images[chunk]), **imshow)
        ax.set_xticks(tile_centres(len(images[chunk])), labels[chunk], fontsize=11)
        ax.set_yticks([])
        ax.tick_params(length=0)
        for side in ax.spines.values():
            side.set_visible(False)
    return im, axes


def plot_templates(linear, path):
    """Each linear classifier's ten templates, in two rows of five per dataset: red where
    a bright pixel votes for the class, blue where it votes against, one colour scale
    per dataset."""
    plt = cli.pyplot()
    fig = plt.figure(figsize=(9, 4.1 * len(linear) + 0.5), layout="constrained")
    for sub, (name, r) in zip(fig.subfigures(len(linear), 1, squeeze=False)[:, 0],
                              linear.items()):
        lim = float(np.abs(r["templates"]).max())
        im, axes = tile_rows(sub, r["templates"], r["names"], cmap="RdBu_r", vmin=-lim,
                             vmax=lim)
        cbar = sub.colorbar(im, ax=axes, shrink=0.85)
        cbar.set_label("weight", fontsize=11)
        cbar.ax.tick_params(labelsize=11)
        sub.suptitle(f"{name}: {100 * r['test_acc']:.1f}% of the test images right",
                     fontsize=13)
    fig.suptitle("Softmax regression: each class's 784 weights shown as an image",
                 fontsize=14)
    cli.save_figure(fig, path)


def plot_attributions(x, y, pred, probs, columns, path):
    """One row per image: the image, then each method's map, each scaled on its own (see
    `scaled`). Unsigned maps (saliency) from black 0 to yellow 1; signed maps
    (integrated gradients, occlusion) blue negative, red positive."""
    plt = cli.pyplot()
    B, cols = len(x), len(columns) + 1
    fig, axes = plt.subplots(1, cols, figsize=(2.1 * cols + 2.0, 1.75 * B + 1.0),
                             layout="constrained")

    def column(maps):  # the images' maps one under the other: (B (H + gap) - gap, W)
        return tiles(maps[:, 0].transpose(0, 2, 1)).T
    axes[0].imshow(column(brightness(x)), cmap="gray", vmin=0, vmax=1)
    axes[0].set_yticks(tile_centres(B), [
        f"{CLASSES[t]} {100 * pr[p]:.0f}%" if t == p else
        f"{CLASSES[t]}\n→ {CLASSES[p]} {100 * pr[p]:.0f}%"
        for t, p, pr in zip(y, pred, probs)], fontsize=10)
    axes[0].set_title("image", fontsize=11)
    ims = {}
    for ax, (title, maps, signed) in zip(axes[1:], columns):
        m = np.stack([scaled(mi) for mi in maps])
        ims[signed] = ax.imshow(column(m), cmap="RdBu_r" if signed else "inferno",
                                vmin=-1 if signed else 0, vmax=1)
        ax.set_title(title, fontsize=11)
        ax.set_yticks([])
    for ax in axes:
        ax.set_xticks([])
    if False in ims:
        fig.colorbar(ims[False], ax=axes, shrink=0.4).set_label(
            "|map|, scaled: 1 = its top 0.5%", fontsize=10)
    if True in ims:
        fig.colorbar(ims[True], ax=axes, shrink=0.4).set_label(
            "map, scaled: ±1 = its top 0.5% of |value|", fontsize=10)
    fig.suptitle("What the CNN looks at (true class → predicted, probability)",
                 fontsize=14)
    cli.save_figure(fig, path)


def plot_ig_convergence(ms, errors, path):
    """Integrated gradients' completeness error against the number of steps m, for each
    image and on average, on log-log axes, with a 1/m line for comparison."""
    plt = cli.pyplot()
    ms, pct = np.array(ms), 100 * errors                           # (M,), (M, B)
    fig, ax = plt.subplots(figsize=(7.5, 4.8), layout="constrained")
    for i in range(pct.shape[1]):
        ax.plot(ms, pct[:, i], "o-", lw=1, ms=3, alpha=0.5, label=f"image {i + 1}")
    ax.plot(ms, pct.mean(axis=1), "o-", color="black", lw=2.5, label="mean")
    ax.plot(ms, pct.mean(axis=1)[0] / ms, ":", color="gray", label="∝ 1/m")
    ax.axhline(1, ls="--", color="C3", lw=1, label="1%")
    ax.set(xscale="log", yscale="log", xlabel="steps m from the black image to the image",
           ylabel="completeness error (%)")
    ax.set_title("Integrated gradients: |sum of attributions - (f(x) - f(black))|\n"
                 "relative to f(x) - f(black), as m grows", fontsize=12)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, ncol=2)
    cli.save_figure(fig, path)


def plot_maximized(results, path):
    """The image made for each class, in two rows of five per setting (with the
    regularizers, without them), each with its logit and probability."""
    plt = cli.pyplot()
    fig = plt.figure(figsize=(9, 4.3 * len(results) + 0.5), layout="constrained")
    subs = fig.subfigures(len(results), 1, squeeze=False)[:, 0]
    for sub, (label, r) in zip(subs, results.items()):
        im, axes = tile_rows(sub, brightness(r["images"][:, 0]), [
            f"{name}\nlogit {e:.1f} ({100 * pr:.0f}%)"
            for name, e, pr in zip(CLASSES, r["end"], r["probs"])], cmap="gray", vmin=0,
            vmax=1)
        cbar = sub.colorbar(im, ax=axes, shrink=0.85)
        cbar.set_label("pixel brightness", fontsize=11)
        cbar.ax.tick_params(labelsize=11)
        sub.suptitle(label, fontsize=13)
    fig.suptitle("Activation maximization: an image made from noise for each class\n"
                 "(under each: its logit, and its probability)", fontsize=14)
    cli.save_figure(fig, path)


def plot_sanity_maps(x, maps, steps, path, i=0):
    """For one image, each method's |map| (rows) for the trained model and after each
    step of the cascading randomization (columns), each scaled on its own, with its rank
    correlation to the trained model's map."""
    plt = cli.pyplot()
    names = list(maps)
    n = len(steps) + 1
    fig, axes = plt.subplots(len(names), 2, figsize=(2.1 * n + 3.2, 2.1 * len(names) + 1.2),
                             width_ratios=[1, n], squeeze=False, layout="constrained")
    axes[0, 0].imshow(brightness(x[i, 0]), cmap="gray", vmin=0, vmax=1)
    axes[0, 0].set_title("image", fontsize=11)
    for ax in axes[1:, 0]:
        ax.axis("off")
    for ax, name in zip(axes[:, 1], names):
        a = np.abs(np.stack([m[i, 0] for m in maps[name]]))           # (n, H, W)
        im = ax.imshow(tiles(np.stack([scaled(m) for m in a])), cmap="inferno", vmin=0,
                       vmax=1)
        ax.set_xticks(tile_centres(n), ["trained"] + [f"ρ = {spearman(m, a[0]):.2f}"
                                                      for m in a[1:]], fontsize=10)
        ax.set_yticks([])
        ax.set_ylabel(name, fontsize=11)
    top = axes[0, 1].secondary_xaxis("top")
    top.set_xticks(tile_centres(n), ["trained"] + [f"+ {s}\nrandom" for s in steps],
                   fontsize=10)
    axes[0, 0].set_xticks([])
    axes[0, 0].set_yticks([])
    fig.colorbar(im, ax=axes[:, 1], shrink=0.5).set_label("|map|, scaled: 1 = its top 0.5%",
                                                          fontsize=10)
    fig.suptitle("Sanity check: the maps as the layers are re-initialized from the output "
                 "down (ρ: rank correlation with the trained model's map)", fontsize=13)
    cli.save_figure(fig, path)


def plot_sanity(steps, rho, path):
    """Each method's rank correlation with the trained model's maps after each step of
    the cascading randomization."""
    plt = cli.pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.8), layout="constrained")
    xs = np.arange(len(steps) + 1)
    for name, r in rho.items():
        ax.plot(xs, [1.0] + r, "o-", lw=2, label=name)
    ax.axhline(SANITY_LIMIT, ls="--", color="gray", lw=1,
               label=f"{SANITY_LIMIT}: above it at the end, the method fails")
    ax.set_xticks(xs, ["trained"] + [f"+ {s}" for s in steps], rotation=20, ha="right",
                  fontsize=10)
    lowest = min(min(r) for r in rho.values())
    ax.set(ylim=(min(-0.1, lowest - 0.05), 1.05),
           xlabel="layers re-initialized, from the output down",
           ylabel="Spearman rank correlation\nof |map| with the trained model's")
    ax.set_title("Sanity check (Adebayo et al. 2018): do the maps need the trained "
                 "weights?", fontsize=12)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9)
    cli.save_figure(fig, path)


# %% Main
def n_params(model):
    return sum(p.data.size for p in model.parameters())


def epochs(n):
    return f"{n} epoch" + ("s" if n != 1 else "")


# a black pixel as the model sees it, computed as fashion_splits computes it (float32), so
# that the images' black background equals it exactly: -0.8102. (A one-element array, not a
# 0-d one: numpy 1.x computes a float32 0-d array minus a Python float in float64.)
BLACK = ((np.zeros(1, np.float32) / 255 - FASHION_MEAN) / FASHION_STD).item()
GREY = 0.0                                 # the mean pixel, normalized: a dark grey
M_GRID = (1, 3, 10, 30, 100, 300, 1000)    # integrated gradients' steps, to see it converge
SANITY_LIMIT = 0.5  # a method whose maps stay this rank-correlated at the end fails


def layer_name(layer):
    """'Linear 128->10', 'Conv2d 1->16', from the weight's shape."""
    w = layer.weight.shape
    n_in, n_out = (w[1], w[0]) if isinstance(layer, Conv2d) else w
    return f"{type(layer).__name__} {n_in}->{n_out}"


def linear_main(cfg, fashion, digits):
    """Softmax regression on Fashion-MNIST and on the digits: accuracy and templates."""
    print("\n== 1. Linear classifiers (softmax regression, 784 -> 10): each class's "
          "weights are a template")
    results = {}
    for name, splits, names in (("Fashion-MNIST", fashion, CLASSES),
                                ("digits", digits, [str(d) for d in range(10)])):
        model = train_linear(cfg, splits, name)
        _, acc = evaluate(model, *splits["test"])
        results[name] = dict(test_acc=acc, templates=linear_templates(model), names=names)
        print(f"  {name:13s} {epochs(cfg.linear_epochs)} of SGD: test accuracy "
              f"{100 * acc:.2f}% ({len(splits['test'][0]):,} images)")
    return results


# the flags that shape the CNN trained here: a CNN read from a checkpoint has its own
CNN_TRAINING = ("epochs", "lr", "optimizer", "weight_decay", "channels", "dropout",
                "augment", "patience")


def ignored_flags(cfg):
    """The flags of CNN_TRAINING set away from their defaults, as '--lr', '--augment'."""
    default = Config()
    return [cli.flag(name) for name in CNN_TRAINING
            if getattr(cfg, name) != getattr(default, name)]


def cnn_main(cfg, fashion, out, cnn):
    """The CNN to explain (stage 09's, or trained here if there is none), its test
    accuracy, and the test images to explain."""
    print("\n== 2. The CNN")
    if cnn is None:
        cnn = train_cnn(cfg, fashion, out)
        source = f"trained here for {epochs(cfg.epochs)}, saved in {out / 'cnn.npz'}"
    else:
        source = f"loaded from {cfg.cnn}"
    X, Y = fashion["test"]
    _, acc = evaluate(cnn, X, Y)
    print(f"  {n_params(cnn):,} parameters, {source}: test accuracy {100 * acc:.2f}%")
    if source.startswith("trained"):
        print(f"  (to explain this CNN again without training it: --cnn {out / 'cnn.npz'})")
    probs = predict(cnn, X)
    idx = images_to_explain(probs, Y, cfg.images, cfg.mistakes)
    pred = probs[idx].argmax(axis=1)
    print(f"  the {len(idx)} test images explained (true -> predicted, probability): " +
          "; ".join(f"{CLASSES[Y[i]]} -> {CLASSES[p]} {100 * probs[i, p]:.0f}%"
                    for i, p in zip(idx, pred)))
    return cnn, dict(test_acc=acc, source=source, idx=idx, x=X[idx], y=Y[idx], pred=pred,
                     probs=probs[idx])


def attribution_methods(cfg, x, classes, baseline):
    """Every method's maps of the images x for the classes, as functions of a model (the
    sanity check computes them again for randomized models; SmoothGrad draws the same
    noise every time)."""
    fill = GREY if cfg.patch_fill == "grey" else BLACK
    return {
        "saliency": lambda m: saliency(m, x, classes),
        "SmoothGrad": lambda m: smoothgrad(m, x, classes, rng.Generator(cfg.seed + 2),
                                           cfg.smoothgrad_samples, cfg.smoothgrad_noise),
        "integrated gradients": lambda m: integrated_gradients(m, x, classes, baseline,
                                                               cfg.ig_steps),
        "occlusion": lambda m: occlusion(m, x, classes, cfg.patch, cfg.patch_stride, fill),
    }


def share_on_garment(m, x):
    """The share of a map's total |value| that lies on the garment (the pixels that are
    not black), mean over the images."""
    garment = x != BLACK                                               # (B, 1, H, W)
    total = np.maximum(np.abs(m).sum(axis=(1, 2, 3)), 1e-30)
    return float(np.mean((np.abs(m) * garment).sum(axis=(1, 2, 3)) / total))


def maps_main(cfg, cnn, methods, ex):
    """Every method's maps of the images for the predicted class, and saliency for the
    true class too; how much of each map lies on the garment."""
    x = ex["x"]
    n_patches = len(patch_masks(28, 28, cfg.patch, cfg.patch_stride))
    print(f"\n== 3. The maps of the {len(x)} images, for the predicted class: saliency "
          f"|d logit / d x|, SmoothGrad over {cfg.smoothgrad_samples} noisy copies, "
          f"integrated gradients in {cfg.ig_steps} steps, occlusion by a {cfg.patch} x "
          f"{cfg.patch} {cfg.patch_fill} square at {n_patches} positions")
    maps = {name: method(cnn) for name, method in methods.items()}
    true_class = saliency(cnn, x, ex["y"])
    print(f"  share of each map's |value| on the garment (the "
          f"{100 * np.mean(x != BLACK):.0f}% of the pixels that are not black):")
    shares = {name: share_on_garment(m, x) for name, m in
              [("saliency", maps["saliency"]), ("saliency, true class", true_class)] +
              list(maps.items())[1:]}
    for name, share in shares.items():
        print(f"    {name:22s} {100 * share:5.1f}%")
    wrong = np.flatnonzero(ex["y"] != ex["pred"])
    if len(wrong):
        print("  the mistakes: rank correlation of the saliency for the predicted class with "
              "the saliency for the true class: " + ", ".join(
                  f"{CLASSES[ex['y'][i]]} -> {CLASSES[ex['pred'][i]]} "
                  f"{spearman(maps['saliency'][i], true_class[i]):.3f}" for i in wrong))
    return maps, true_class, shares


def ig_main(cfg, cnn, x, classes, baseline, ig):
    """Completeness at m = --ig-steps, image by image, and how it converges with m."""
    print(f"\n== 4. Integrated gradients from a black image, m = {cfg.ig_steps}: "
          f"completeness, the sum of the attributions against f(x) - f(black)")
    rise = logit_rise(cnn, x, classes, baseline)                       # (B,)
    err = completeness_error(ig, rise)
    for i in range(len(x)):
        print(f"  image {i + 1} ({CLASSES[classes[i]]:11s}): sum {ig[i].sum():8.4f}, "
              f"f(x) - f(black) {rise[i]:8.4f}: error {100 * err[i]:.2f}%")
    ms = [m for m in M_GRID if m < cfg.ig_steps]
    errors = np.array([completeness_error(integrated_gradients(cnn, x, classes, baseline,
                                                               m), rise) for m in ms] +
                      [err])                                             # (len(ms) + 1, B)
    ms.append(cfg.ig_steps)
    print("  as m grows (mean error over the images): " + ", ".join(
        f"m = {m}: {100 * e:.2f}%" for m, e in zip(ms, errors.mean(axis=1))))
    return dict(steps=cfg.ig_steps, error=err, rise=rise, ms=ms, errors=errors)


def maximize_main(cfg, cnn):
    """Activation maximization for every class from noise, with the regularizers and
    without them."""
    classes = np.arange(len(CLASSES))
    g = rng.Generator(cfg.seed + 4)
    x0 = (BLACK + 0.1 * rng.randn(len(classes), 1, 28, 28, generator=g)).astype(np.float32)
    lo, hi = BLACK, (1 - FASHION_MEAN) / FASHION_STD              # the pixels' range
    print(f"\n== 5. Activation maximization: from noise, {cfg.maximize_steps} steps of "
          f"AdamW (lr {cfg.maximize_lr:g}) up logit_c(x) - {cfg.maximize_l2:g} mean((x - "
          f"black)^2) - {cfg.maximize_tv:g} mean((x - its neighbour)^2), the image "
          f"moved by up to {cfg.maximize_jitter} pixels each step")
    results = {}
    settings = {"with the regularizers": (cfg.maximize_l2, cfg.maximize_tv,
                                          cfg.maximize_jitter),
                "without them": (0.0, 0.0, 0)}
    for label, (l2, tv, jitter) in settings.items():
        images, start, end = activation_maximization(
            cnn, classes, x0, rng.Generator(cfg.seed + 5), cfg.maximize_steps,
            cfg.maximize_lr, l2, tv, jitter, BLACK, lo, hi)
        probs = predict(cnn, images)[classes, classes]
        results[label] = dict(images=images, start=start, end=end, probs=probs)
    print(f"  {'':12s} {'logit at the start':>19s} {'with the regularizers':>26s} "
          f"{'without them':>26s}")
    w, wo = results["with the regularizers"], results["without them"]
    for c in classes:
        print(f"  {CLASSES[c]:12s} {w['start'][c]:19.2f} {w['end'][c]:11.2f} (p "
              f"{100 * w['probs'][c]:5.1f}%) {wo['end'][c]:14.2f} (p "
              f"{100 * wo['probs'][c]:5.1f}%)")
    return results


def sanity_main(cfg, cnn, methods, trained, x):
    """Adebayo et al. 2018: re-initialize the layers from the output down, one more at a
    time, compute every method's maps again, and compare them with the trained model's:
    Spearman rank correlation of |map|, image by image, averaged over the images. Also
    each trained map against the image itself."""
    channels = cnn.layers[0].weight.shape[0]
    fresh = convnet(replace(cfg, channels=channels), rng.Generator(cfg.seed + 3))
    steps, done = [], []
    rho = {name: [] for name in methods}
    maps = {name: [trained[name]] for name in methods}
    for group in layer_groups(cnn):
        done += group
        steps.append(layer_name(cnn.layers[group[0]]))
        model = randomized(cnn, fresh, done)
        for name, method in methods.items():
            m = method(model)
            maps[name].append(m)
            rho[name].append(float(np.mean([spearman(np.abs(a), np.abs(b))
                                            for a, b in zip(trained[name], m)])))
    like_image = {name: float(np.mean([spearman(np.abs(a), b) for a, b in zip(m, x)]))
                  for name, m in trained.items()}
    passes = {name: rho[name][-1] < SANITY_LIMIT for name in methods}
    print(f"\n== 6. Sanity check (Adebayo et al. 2018): the layers re-initialized from the "
          f"output down, one more each time, and the maps computed again. Spearman rank "
          f"correlation of |map| with the trained model's |map| (mean over the {len(x)} "
          f"images); the last column compares the trained map with the image itself")
    print(f"  {'re-initialized:':22s}" + "".join(f"{'+ ' + s:>19s}" for s in steps) +
          f"{'the image':>12s}")
    for name in methods:
        verdict = ("passes: its maps change with the weights" if passes[name] else
                   "FAILS: without the trained weights its maps keep the image's "
                   "silhouette")
        print(f"  {name:22s}" + "".join(f"{r:19.3f}" for r in rho[name]) +
              f"{like_image[name]:12.3f}   {verdict}")
    garment = x != BLACK  # the black background, where a map may be 0 by construction
    on_garment = {name: float(np.mean([
        spearman(np.abs(a)[g], np.abs(b)[g]) for a, b, g in zip(trained[name],
                                                                maps[name][-1], garment)]))
        for name in methods}
    print("  all layers random, the garment's pixels only: " + ", ".join(
        f"{name} {r:.3f}" for name, r in on_garment.items()))
    return dict(steps=steps, rho=rho, like_image=like_image, on_garment=on_garment,
                passes=passes, maps=maps)


def figures_main(cfg, out, linear, cnn, ex, maps, true_class, ig, maximized, sanity):
    """Every figure, in --format; returns the files written."""
    f = cfg.format
    plot_templates(linear, out / f"templates.{f}")
    plot_filters(cnn.layers[0].weight.data, out / f"filters.{f}",
                 f"The CNN's {cnn.layers[0].weight.shape[0]} first-layer 3 x 3 filters")
    columns = [("saliency,\npredicted class", maps["saliency"], False),
               ("saliency,\ntrue class", true_class, False),
               ("SmoothGrad", maps["SmoothGrad"], False),
               ("integrated\ngradients", maps["integrated gradients"], True),
               (f"occlusion\n({cfg.patch_fill} square)", maps["occlusion"], True)]
    plot_attributions(ex["x"], ex["y"], ex["pred"], ex["probs"], columns,
                      out / f"attributions.{f}")
    plot_ig_convergence(ig["ms"], ig["errors"], out / f"ig_convergence.{f}")
    plot_maximized(maximized, out / f"maximization.{f}")
    plot_sanity_maps(ex["x"], sanity["maps"], sanity["steps"], out / f"sanity_maps.{f}")
    plot_sanity(sanity["steps"], sanity["rho"], out / f"sanity.{f}")
    return [str(out / f"{n}.{f}") for n in ("templates", "filters", "attributions",
                                             "ig_convergence", "maximization",
                                             "sanity_maps", "sanity")]


def main(argv=None) -> dict:
    cfg, given = cli.parse_config(Config, argv, __doc__, prog="10_interpretability/train.py",
                                  with_given=True)
    out = cli.out_dir(cfg.out)
    cnn = stage09_cnn(cfg, "cnn" in given)   # a bad checkpoint stops the run here
    ignored = ignored_flags(cfg) if cnn is not None else []
    if ignored:  # a note, not an error: the run goes on
        print(f"note: {', '.join(ignored)} only apply to a CNN trained here (--cnn ''): "
              f"ignored, the CNN is read from {cfg.cnn}")
    start = time.perf_counter()
    fashion = fashion_splits(cfg, rng.Generator(cfg.seed))
    digits = digit_splits(cfg, rng.Generator(cfg.seed))
    print(f"Fashion-MNIST: train {len(fashion['train'][0]):,}, validation "
          f"{len(fashion['val'][0]):,}, test {len(fashion['test'][0]):,} images; the MNIST "
          f"digits: train {len(digits['train'][0]):,}, validation {len(digits['val'][0]):,}, "
          f"test {len(digits['test'][0]):,}")
    linear = linear_main(cfg, fashion, digits)
    cnn, ex = cnn_main(cfg, fashion, out, cnn)
    baseline = np.full(ex["x"].shape[1:], BLACK, dtype=np.float32)   # (1, 28, 28) black
    methods = attribution_methods(cfg, ex["x"], ex["pred"], baseline)
    maps, true_class, shares = maps_main(cfg, cnn, methods, ex)
    ig = ig_main(cfg, cnn, ex["x"], ex["pred"], baseline, maps["integrated gradients"])
    maximized = maximize_main(cfg, cnn)
    sanity = sanity_main(cfg, cnn, methods, maps, ex["x"])
    files = []
    if cfg.plots:
        files = figures_main(cfg, out, linear, cnn, ex, maps, true_class, ig, maximized,
                             sanity)
        print(f"\nwrote {', '.join(files)}")
    seconds = time.perf_counter() - start
    print(f"\nthe whole run took {cli.fmt_duration(seconds)}")
    return dict(config=asdict(cfg), linear={k: v["test_acc"] for k, v in linear.items()},
                cnn={k: ex[k] for k in ("test_acc", "source", "idx", "y", "pred")},
                maps=maps, shares=shares, ig=ig, maximized=maximized, sanity=sanity,
                files=files, seconds=seconds)


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


# %% Engine: new in stage 10: the gradient with respect to chosen inputs
def grad(output, inputs):
    """torch.autograd.grad(output, inputs): the gradient of `output` (summed, if it is not a
    scalar) with respect to each tensor of `inputs`, returned as arrays. The inputs may be
    leaves (an image) or results inside the graph (a layer's activations). Unlike
    output.backward(), it leaves every tensor's .grad as it was, and it does not compute
    the gradients of the graph's other leaves (a model's parameters): to explain a model,
    only the gradient with respect to its input is wanted. As backward(), it frees the
    graph on the way."""
    others, seen, stack = [], set(), [output]
    while stack:  # the leaves that need a gradient, other than the inputs
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        stack.extend(node._prev)
        if not node._prev and node.requires_grad and all(node is not t for t in inputs):
            others.append(node)
    saved = [(t.grad, t._retain) for t in inputs]
    for t in inputs:  # backward() drops an intermediate result's .grad unless retained
        t.grad, t._retain = None, True
    for t in others:  # for now, they need none: conv2d and linear skip their share of the
        # work (BatchNorm's gain and bias reach the graph through views, which still do)
        t.requires_grad = False
    try:
        output.backward()
        return [t.grad for t in inputs]
    finally:
        for t in others:
            t.requires_grad = True
        for t, (g, retain) in zip(inputs, saved):
            t.grad, t._retain = g, retain


if __name__ == "__main__":
    cli.run(main)
