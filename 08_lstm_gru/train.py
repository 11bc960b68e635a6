"""Stage 08: recurrent language models, a vanilla RNN, a GRU and an LSTM.

What did transformers replace, and why? Before attention, a language model read its text
one character at a time and carried everything it remembered in a hidden state vector `h`,
updated by the same small network at every step (a "cell"). This stage builds the three
classic cells with the engine's ops, so gradients are automatic, and trains them as
character-level language models:

    vanilla RNN   h = tanh(W [x, h_prev] + b)
    GRU           gates r (reset), z (update), candidate n; h = (1 - z) * n + z * h_prev
    LSTM          gates i (input), f (forget), g (cell candidate), o (output);
                  c = f * c_prev + i * g, h = o * tanh(c)

New over stage 07: the sigmoid and the three cells, written op by op with the engine's
ops so that backpropagation through time (BPTT) is automatic; `stack` (joining tensors
along a new dimension); truncated BPTT, where the hidden state is carried from one chunk
of text to the next but no gradient flows back across the border; and sampling with
temperature and top-k (greedy decoding as the failure case). `--fused` runs each layer's
whole recurrence as ONE op whose backward pass is BPTT written out by hand: the same
numbers (tested), several times faster. Stage 07's transformer is not carried on: this
stage trains its own models, with stage 07's AdamW, gradient clipping and layers.

    python 08_lstm_gru/train.py                      # a GRU on names, then samples
    python 08_lstm_gru/train.py --cell lstm          # or --cell rnn
    python 08_lstm_gru/train.py --compare            # all three cells, one loss plot
    python 08_lstm_gru/train.py --dataset shakespeare --cell lstm   # truncated BPTT
    python 08_lstm_gru/train.py --fused              # the fused recurrence, faster

Names are set up as in makemore: every name is one sequence `.emma.`, the input padded
to 16 positions, targets past the end ignored by the loss; the last 1,000 names of the
lectures' shuffle are the test set; n_embd 64, hidden 64, AdamW lr 5e-4, weight decay
0.01, batch 32. What the runs print (measured with --fused, which gives the same numbers
as the default op-by-op cells; README.md has the lesson notes and all tables,
tests/benchmarks/README.md the timings):
    RNN   11,803 parameters, test loss 2.0595
    GRU   28,379 parameters, test loss 2.0119
    LSTM  36,635 parameters, test loss 2.0038
    GRU samples: riyan. dary. christan. febuba. haudmick. colton. mack. jamiah. azlee. ...
    greedy: analis. analis. analis. analis. analis. (always the likeliest letter)
47 time steps back, the trained LSTM still passes 8e-4 of the gradient (relative to the
last input), the RNN 1e-6. On tiny Shakespeare, against stage 07's GPT code shrunk to
about the recurrent models' size (n_embd 64, batch 16, 3,000 steps: 212k parameters, 2-3
minutes; stage 07's default has 817k), the GRU reaches a validation loss of 1.69-1.71,
the LSTM 1.75-1.76, that GPT 1.79-1.80 (two runs of tests/benchmarks/bench_rnn.py).
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
    cell: str = cli.arg("gru", "recurrent cell", choices=["rnn", "gru", "lstm"])
    dataset: str = cli.arg("names", "names (one name per sequence) or shakespeare "
                           "(one long text, truncated BPTT)", choices=["names", "shakespeare"])
    n_embd: int = cli.arg(64, "dimensions of each character's embedding", min=1, max=8192)
    n_hidden: int = cli.arg(64, "size of the hidden state (makemore's n_embd2)", min=1,
                            max=8192)
    n_layer: int = cli.arg(1, "recurrent layers stacked on each other", min=1, max=64)
    init_state: str = cli.arg("learned", "initial hidden state: a learned vector (as "
                              "makemore) or zeros", choices=["learned", "zero"])
    bptt: int = cli.arg(64, "shakespeare: characters per truncated-BPTT chunk", min=1,
                        max=100_000)
    steps: int = cli.arg(30_000, "training steps (minibatches)", min=0)
    batch_size: int = cli.arg(32, "sequences per minibatch", min=1, max=100_000)
    lr: float = cli.arg(5e-4, "learning rate (the peak, with a schedule)", min=1e-9, max=10)
    schedule: str = cli.arg("constant", "learning rate after warmup: constant (makemore), "
                            "or cosine decay to --min-lr", choices=("cosine", "constant"))
    warmup_steps: int = cli.arg(0, "steps of linear learning-rate warmup", min=0)
    min_lr: float = cli.arg(5e-5, "learning rate at the end of the cosine decay", min=0,
                            max=10)
    beta2: float = cli.arg(0.99, "AdamW's beta2 (beta1 is 0.9)", min=0, max=0.9999)
    weight_decay: float = cli.arg(0.01, "AdamW's decoupled weight decay (on every "
                                        "parameter, as makemore)", min=0, max=100)
    grad_clip: float = cli.arg(1.0, "clip the gradient's global norm to this (0: off)",
                               min=0, max=1e6)
    eval_interval: int = cli.arg(500, "evaluate the held-out loss every this many steps",
                                 min=1)
    fused: bool = cli.arg(False, "run each recurrent layer as ONE op with a hand-written "
                                 "backpropagation through time (the same numbers as the "
                                 "cells op by op, several times faster)")
    seed: int = cli.arg(3407, "seed of the generator (makemore's 3407)", min=0,
                        max=2**64 - 1)
    samples: int = cli.arg(20, "names to sample after training (shakespeare: passages, at "
                           "most 1)", min=0, max=10_000)
    temperature: float = cli.arg(1.0, "sampling temperature (< 1: safer, > 1: wilder)",
                                 min=1e-3, max=100)
    top_k: int = cli.arg(0, "sample only among the k most likely characters (0: all)",
                         min=0)
    prompt: str = cli.arg("", "start every sample with this text")
    max_new_tokens: int = cli.arg(500, "shakespeare: characters per sample", min=0,
                                  max=1_000_000)
    compare: bool = cli.arg(False, "train all three cells and plot their losses together")
    sample: bool = cli.arg(False, "do not train: sample from the checkpoint in --out")
    out: str = cli.arg("out/08_lstm_gru", "output folder for figures and the checkpoint")
    plots: bool = cli.arg(True, "write figures")
    format: str = cli.arg("png", "file format of the figures: png, or svg and pdf to scale "
                                 "on slides", choices=cli.FIGURE_FORMATS)

    def check(self):
        cli.check(self.min_lr <= self.lr or self.schedule == "constant",
                  f"--min-lr {self.min_lr} must not exceed --lr {self.lr}")


# %% Data
BLOCK_SIZE = 16  # makemore's: the longest name (15 letters) plus the start/stop token
TEST_NAMES = 1000  # makemore holds out min(1000, 10%) names as its test set


def names_split(words):
    """makemore's split, with our deterministic shuffle: the lectures' shuffle
    (data.split_words: random.seed(42)), then the last 1,000 names are the test set and the
    other 31,033 the training set. (makemore itself shuffles with torch.randperm.)"""
    shuffled = [w for part in data.split_words(words) for w in part]
    return shuffled[:-TEST_NAMES], shuffled[-TEST_NAMES:]


def names_dataset(words, stoi, block_size=BLOCK_SIZE):
    """makemore's CharDataset: for 'emma', x = . e m m a . . . and y = e m m a . -1 -1 ...:
    x starts with the start token 0, y ends with the stop token 0, both padded to
    block_size; a -1 in y marks padding that the loss ignores. Returns X, Y (N, block_size)
    and the lengths (letters + 1: the positions that count)."""
    X = np.zeros((len(words), block_size), dtype=np.int64)
    Y = np.full((len(words), block_size), -1, dtype=np.int64)
    for i, w in enumerate(words):
        ix = [stoi[ch] for ch in w]
        X[i, 1:1 + len(ix)] = ix
        Y[i, :len(ix)] = ix
        Y[i, len(ix)] = 0  # the stop token
    return X, Y, np.array([len(w) + 1 for w in words])


def show_examples(X, Y, itos, n=3):
    """A row as the model sees it: input x, target y ('-' is ignored padding)."""
    for x, y in zip(X[:n], Y[:n]):
        print("  x " + "".join(itos[i] for i in x) + "   y "
              + "".join(itos[i] if i >= 0 else "-" for i in y))


def name_batch(X, Y, lengths, batch_size, g):
    """A minibatch of names drawn with replacement (makemore's RandomSampler), cut to its
    longest name: the steps after every name in the batch has ended only feed ignored
    targets, and the recurrence is causal, so dropping them changes no number."""
    ix = rng.randint(0, X.shape[0], (batch_size,), generator=g)   # (B,)
    T = int(lengths[ix].max())
    return X[ix, :T], Y[ix, :T]                                     # (B, T) each


class TextStreams:
    """Truncated BPTT batches from one long text: the text is cut into `batch_size` equal
    streams read side by side, `bptt` characters at a time, so row b of one chunk continues
    exactly where row b of the previous chunk stopped and the hidden state can be carried
    over. At the end of the streams reading starts again at the beginning (`reset`)."""

    def __init__(self, tokens, batch_size, bptt):
        n = (len(tokens) - 1) // batch_size  # characters per stream
        if n < bptt:
            raise cli.UserError(f"the text ({len(tokens)} characters) is too short for "
                                f"{batch_size} streams of --bptt {bptt}")
        self.x = tokens[:n * batch_size].reshape(batch_size, n)           # (B, n)
        self.y = tokens[1:n * batch_size + 1].reshape(batch_size, n)      # next characters
        self.bptt, self.pos = bptt, 0

    def next(self):
        """(X, Y, reset): the next chunk (B, bptt); reset says the streams restarted."""
        reset = self.pos + self.bptt > self.x.shape[1]
        if reset:
            self.pos = 0
        sl = slice(self.pos, self.pos + self.bptt)
        self.pos += self.bptt
        return self.x[:, sl], self.y[:, sl], reset


def load_dataset(cfg):
    """The vocabulary and splits of --dataset: a dict the rest of the stage reads."""
    if cfg.dataset == "names":
        words = data.load_names()
        stoi, itos = data.names_vocab(words)
        train_words, test_words = names_split(words)
        return dict(kind="names", stoi=stoi, itos=itos, vocab_size=len(stoi),
                    train=names_dataset(train_words, stoi), test=names_dataset(test_words, stoi),
                    train_words=train_words, test_words=test_words)
    text = data.load_shakespeare()
    chars, stoi, itos = data.char_vocab(text)
    train, val = data.train_val_split(data.encode_chars(text, stoi))
    return dict(kind="shakespeare", stoi=stoi, itos=itos, vocab_size=len(chars),
                train=train, test=val)


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


class Embedding(Module):
    """nn.Embedding: row `i` of the table is token i's vector; initialized N(0, 1)."""

    def __init__(self, num_embeddings, embedding_dim, generator=None):
        self.weight = Tensor(normal_init((num_embeddings, embedding_dim), 1.0, generator),
                             requires_grad=True)

    def forward(self, idx):
        return self.weight[idx]                    # (B, T) -> (B, T, embedding_dim)


# %% Model: recurrent cells
# The three cells, written op by op with the engine: readable, and their gradients come for
# free. Shapes: x (B, E) one time step's input, h and c (B, H), W (E + H, G), b (G,).
# Weights and gate order are PyTorch's (torch.nn.RNNCell / GRUCell / LSTMCell): our W is
# their weight_ih and weight_hh, transposed and stacked, [W_ih.T; W_hh.T], and our b is
# b_ih + b_hh (for the GRU's candidate only b_ih; its b_hh part is our b_hn). The tests
# compare all three cells with PyTorch's on the same weights.

def rnn_cell(x, h, W, b):
    """The vanilla (Elman) RNN: h = tanh(W [x, h_prev] + b), as makemore's RNNCell."""
    return (cat([x, h], 1) @ W + b).tanh()                       # (B, H)


def gru_cell(x, h, W, b, b_hn):
    """The GRU (Cho et al. 2014) with PyTorch's equations, gates r, z, n:
        r = sigmoid(W_r [x, h] + b_r)                 reset: how much of h the candidate sees
        z = sigmoid(W_z [x, h] + b_z)                 update: how much of h to keep
        n = tanh(W_xn x + b_n + r * (W_hn h + b_hn))  candidate state
        h = (1 - z) * n + z * h_prev
    Other texts differ in two details. The final version of Cho et al.'s paper, and
    makemore, apply the reset gate before the matmul, tanh(W_n [x, r * h]); PyTorch, cuDNN
    and the paper's first version after it, as here (so all of h @ W_h can be one matmul
    per step, as the fused recurrence does; gru_cell splits it to show the equation). And
    makemore, like some later texts, lets z weight the candidate instead,
    h = (1 - z) * h_prev + z * n: the same cell with z renamed 1 - z."""
    E, H = x.shape[1], h.shape[1]
    rz = (cat([x, h], 1) @ W[:, :2 * H] + b[:2 * H]).sigmoid()    # (B, 2H)
    r, z = rz[:, :H], rz[:, H:]
    n = (x @ W[:E, 2 * H:] + b[2 * H:] + r * (h @ W[E:, 2 * H:] + b_hn)).tanh()
    return (1 - z) * n + z * h                                    # (B, H)


def lstm_cell(x, h, c, W, b):
    """The LSTM (Hochreiter & Schmidhuber 1997, with the forget gate of Gers et al. 2000)
    with PyTorch's gate order i, f, g, o:
        i, f, o = sigmoid(W_{i,f,o} [x, h] + b)   input, forget, output gates
        g = tanh(W_g [x, h] + b_g)                what to write into the cell
        c = f * c_prev + i * g                    the cell: a running, gated sum
        h = o * tanh(c)
    The cell c is the point: dc_prev = dc * f, a product of forget gates, not of weight
    matrices, so a gradient can travel many steps back when f stays near 1."""
    H = h.shape[1]
    a = cat([x, h], 1) @ W + b                                   # (B, 4H)
    i, f = a[:, :H].sigmoid(), a[:, H:2 * H].sigmoid()
    g, o = a[:, 2 * H:3 * H].tanh(), a[:, 3 * H:].sigmoid()
    c = f * c + i * g
    return o * c.tanh(), c                                        # (B, H) each


class Recurrent(Module):
    """One recurrent layer: a cell applied at every time step, carrying h (and the LSTM's
    c) from step to step; like torch.nn.RNN / GRU / LSTM with batch_first=True."""

    def __init__(self, cell, n_in, n_hidden, generator=None, learned_state=True):
        self.cell, H, G = cell, n_hidden, GATES[cell] * n_hidden
        # torch.nn.GRU's (and RNN's, LSTM's) initialisation and draw order: weight_ih,
        # weight_hh, bias_ih, bias_hh, every value ~ U(-1/sqrt(H), 1/sqrt(H))
        k = 1 / math.sqrt(n_hidden)
        w_ih, w_hh, b_ih, b_hh = (rng.uniform(shape, -k, k, generator=generator)
                                  for shape in ((G, n_in), (G, H), (G,), (G,)))
        self.W = Tensor(np.concatenate([w_ih.T, w_hh.T]), requires_grad=True)  # (n_in+H, G)
        if cell == "gru":  # b_hh's candidate block stays apart, inside r * (h W_hn + b_hn)
            b_ih[:2 * H] += b_hh[:2 * H]
            self.b = Tensor(b_ih, requires_grad=True)                          # (G,)
            self.b_hn = Tensor(b_hh[2 * H:], requires_grad=True)               # (H,)
        else:  # the two biases are only ever added: one does their job
            self.b = Tensor(b_ih + b_hh, requires_grad=True)                   # (G,)
            self.b_hn = None
        # the state before the first character: a learned vector (makemore's `start`) or 0
        zeros = np.zeros((1, H), dtype=np.float32)
        self.h0 = Tensor(zeros, requires_grad=learned_state)
        self.c0 = Tensor(zeros.copy(), requires_grad=learned_state) if cell == "lstm" else None

    def forward(self, x, state=None, fused=False, record=None):
        """x (B, T, n_in) -> hs (B, T, H) and the final state. `state` (from the previous
        chunk) replaces the initial state; it arrives as plain arrays, so no gradient
        flows back into the chunk it came from. The cells run op by op unless `fused`;
        `record` (a dict to fill with the gates' values) takes the fused op, which keeps
        them anyway."""
        h0, c0 = self.h0, self.c0
        if state is not None:
            h0 = Tensor(state[0])
            c0 = None if state[1] is None else Tensor(state[1])
        if fused or record is not None:
            return recurrence(self.cell, x, h0, self.W, self.b, c0, self.b_hn, record)
        return self.step_by_step(x, h0, c0)

    def step_by_step(self, x, h, c=None):
        """The same layer op by op: one cell call per time step, 5 (RNN) to 26 (GRU) graph
        nodes each."""
        B, T, _ = x.shape
        ones = np.ones((B, 1), dtype=h.data.dtype)
        h = h if h.shape[0] == B else h * ones                        # (1, H) -> (B, H)
        c = c if c is None or c.shape[0] == B else c * ones
        hs = []
        for t in range(T):
            x_t = x[:, t]                                             # (B, E)
            if self.cell == "rnn":
                h = rnn_cell(x_t, h, self.W, self.b)
            elif self.cell == "gru":
                h = gru_cell(x_t, h, self.W, self.b, self.b_hn)
            else:
                h, c = lstm_cell(x_t, h, c, self.W, self.b)
            hs.append(h)
        return stack(hs, 1), (h.data.copy(), None if c is None else c.data.copy())


class RecurrentLM(Module):
    """A character-level language model: embedding -> n_layer recurrent layers -> a
    linear head to logits over the vocabulary (makemore's RNN model, any cell)."""

    def __init__(self, cfg, vocab_size, generator=None):
        self.cell, self.vocab_size, self.fused = cfg.cell, vocab_size, cfg.fused
        self.wte = Embedding(vocab_size, cfg.n_embd, generator)
        self.layers = [Recurrent(cfg.cell, cfg.n_embd if i == 0 else cfg.n_hidden,
                                 cfg.n_hidden, generator, cfg.init_state == "learned")
                       for i in range(cfg.n_layer)]
        self.lm_head = Linear(cfg.n_hidden, vocab_size, generator=generator)

    def forward(self, idx, state=None, record=None):
        """idx (B, T) token indices -> logits (B, T, vocab) and the state after the last
        step (one (h, c) per layer), from which the next chunk can continue."""
        # self.wte(idx), with the engine's faster backward (new in stage 08)
        x = embedding(self.wte.weight, idx)                             # (B, T, n_embd)
        return self.from_embeddings(x, state, record)

    def from_embeddings(self, x, state=None, record=None):
        B, T, _ = x.shape
        new_state = []
        for i, layer in enumerate(self.layers):
            rec = None if record is None else record.setdefault(i, {})
            x, s = layer(x, None if state is None else state[i], self.fused, rec)  # (B, T, H)
            new_state.append(s)
        logits = self.lm_head(x.view(B * T, -1))                            # (B*T, V)
        return logits.view(B, T, self.vocab_size), new_state


def sequence_loss(logits, Y):
    """Mean cross-entropy over all positions (B, T) whose target is not -1: as makemore,
    the padding after a name's end does not count."""
    return cross_entropy(logits.view(-1, logits.shape[-1]), Y.reshape(-1), ignore_index=-1)


def evaluate_names(model, X, Y, lengths, chunk=2000):
    """Mean loss per real position over a whole name set (no gradient)."""
    total, count = 0.0, 0
    with no_grad():
        for s in range(0, len(X), chunk):
            T = int(lengths[s:s + chunk].max())
            y = Y[s:s + chunk, :T]
            n = int((y >= 0).sum())
            total += sequence_loss(model(X[s:s + chunk, :T])[0], y).item() * n
            count += n
    return total / count


def evaluate_text(model, tokens, streams=128, chunk=256):
    """Mean loss per character over a whole text, cut into `streams` rows read side by
    side (in chunks, the state carried from one to the next), so each character is
    predicted from everything before it in its row: up to len(text) / streams characters
    back (871 for tiny Shakespeare's validation text)."""
    n = (len(tokens) - 1) // streams
    X = tokens[:n * streams].reshape(streams, n)
    Y = tokens[1:n * streams + 1].reshape(streams, n)
    total, state = 0.0, None
    with no_grad():
        for s in range(0, n, chunk):
            logits, state = model(X[:, s:s + chunk], state)
            y = Y[:, s:s + chunk]
            total += cross_entropy(logits.view(-1, model.vocab_size), y.reshape(-1)).item() \
                * y.size
    return total / Y.size


# %% Training
def learning_rate(cfg, step):
    """nanoGPT's schedule (its get_lr): linear warmup over warmup_steps, then (cosine) a
    half cosine from lr down to min_lr at the last step; (constant) lr throughout."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / (cfg.warmup_steps + 1)
    if cfg.schedule == "constant" or cfg.steps <= cfg.warmup_steps:
        return cfg.lr
    decay_ratio = min(1.0, (step - cfg.warmup_steps) / (cfg.steps - cfg.warmup_steps))
    coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))  # 1 -> 0
    return cfg.min_lr + coeff * (cfg.lr - cfg.min_lr)


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


def clip_grad_norm_(params, max_norm):
    """Scale all gradients down together if their global norm exceeds max_norm (a rare
    huge gradient then cannot throw the weights far). Returns the norm before."""
    total = math.sqrt(sum(float(np.dot(p.grad.ravel(), p.grad.ravel()))
                          for p in params if p.grad is not None))
    coef = max_norm / (total + 1e-6)
    if coef < 1:
        for p in params:
            if p.grad is not None:
                p.grad = p.grad * np.asarray(coef, dtype=p.grad.dtype)
    return total


def gate_stats(model, X, mask):
    """The gate that decides how much of the old state survives a step, at the real
    positions (mask) of a batch of names or text: the LSTM's forget gate f, the GRU's
    update gate z; the RNN has no gate, so its hidden values tanh(.) stand in. Returns the
    first layer's values there, flattened (float16: only for histograms)."""
    record = {}
    with no_grad():
        model(X, record=record)
    key = {"lstm": "f", "gru": "z", "rnn": "h"}[model.cell]
    return record[0][key][mask].astype(np.float16)               # (positions, H)


def train(cfg, model, optimizer, ds, g, quiet=False):
    """Minibatches of names, or consecutive chunks of text (truncated BPTT: the state is
    carried from chunk to chunk); forward, backward, gradient clipping, AdamW; the
    held-out loss every eval_interval steps. Returns the history."""
    params = model.parameters()
    hist = dict(loss=[], grad_norm=[], eval_steps=[], eval_loss=[], gate_steps=[], gates=[])
    names = ds["kind"] == "names"
    if names:
        Xtr, Ytr, Ltr = ds["train"]
        Xgate = ds["test"][0][:256]                   # a fixed batch for the gate statistics
        gate_mask = ds["test"][1][:256] >= 0
    else:
        streams = TextStreams(ds["train"], cfg.batch_size, cfg.bptt)
        Xgate = ds["test"][:16 * 256].reshape(16, 256)
        gate_mask = np.ones(Xgate.shape, dtype=bool)
    progress = cli.Progress(cfg.steps, every=cfg.eval_interval, quiet=quiet)
    state, eval_seconds = None, 0.0
    with cli.deferred_interrupt() as stop:
        for step in range(cfg.steps + 1):
            if stop.requested:  # Ctrl-C: stop between two steps (the caller saves)
                hist["stopped_at"] = step
                break
            if step % cfg.eval_interval == 0 or step == cfg.steps:  # before step `step`
                start = time.perf_counter()
                hist["eval_steps"].append(step)
                hist["eval_loss"].append(evaluate(model, ds, cfg))
                hist["gate_steps"].append(step)
                hist["gates"].append(gate_stats(model, Xgate, gate_mask))
                eval_seconds += time.perf_counter() - start
            if step == cfg.steps:
                break
            if names:
                X, Y = name_batch(Xtr, Ytr, Ltr, cfg.batch_size, g)
                state = None                  # every name starts from the initial state
            else:
                X, Y, reset = streams.next()
                if reset:
                    state = None
            logits, state = model(X, state)                   # (B, T, V)
            loss = sequence_loss(logits, Y)
            lr = learning_rate(cfg, step)
            optimizer.zero_grad()
            loss.backward()
            norm = clip_grad_norm_(params, cfg.grad_clip or math.inf)  # (inf: only measure)
            optimizer.step(lr)
            hist["loss"].append(loss.item())
            hist["grad_norm"].append(norm)
            progress.update(step, hist["loss"][-1], lr,
                            extra=f"held-out {hist['eval_loss'][-1]:.4f}")
    hist["eval_seconds"] = eval_seconds
    hist["train_seconds"] = progress.elapsed - eval_seconds
    return hist


def save_checkpoint(path, cfg, model, optimizer, g, history, extra):
    """One file: the model, the optimizer's and the generator's state, the config and the
    progress, for --sample."""
    arrays = {f"model.{name}": p.data for name, p in model.named_parameters()}
    arrays.update(optimizer.state())
    arrays["rng.state"] = g.get_state()
    cli.save_checkpoint(path, arrays, dict(config=asdict(cfg), history=history, **extra))


def load_checkpoint(path):
    """(the saved Config, its metadata) of a checkpoint, every field checked: a damaged or
    foreign file is a one-line error."""
    meta = cli.load_checkpoint_meta(path)
    source = f"checkpoint {path}"
    saved = cli.config_from_dict(Config, meta.get("config"), source)
    cli.field(meta, "step", int, source, min=0, max=saved.steps)
    cli.field(meta, "held_out", float, source, min=0)
    return saved, meta


def load_model_state(model, path):
    """The model's parameters from a checkpoint, each checked for its shape and kind."""
    like = {f"model.{name}": p.data for name, p in model.named_parameters()}
    arrays = cli.load_checkpoint_arrays(path, like)
    for name, p in model.named_parameters():
        p.data = arrays[f"model.{name}"]


def evaluate(model, ds, cfg):
    """The held-out loss: the 1,000 test names, or the validation text."""
    if ds["kind"] == "names":
        return evaluate_names(model, *ds["test"])
    return evaluate_text(model, ds["test"])


def gradient_through_time(model, seq):
    """How strongly the loss at the LAST position depends on the input t steps earlier:
    the norm of dL/dx_t (x_t the embedding read at step t), averaged over the batch;
    seq (B, T + 1) holds T inputs and, last, the character to predict. In a vanilla RNN it
    shrinks roughly geometrically with the distance (each step back multiplies by W_h and
    by tanh's slope, < 1): the vanishing gradient. The gated cells let more of it through."""
    emb = embedding(model.wte.weight, seq[:, :-1]).retain_grad()  # (B, T, E)
    logits, _ = model.from_embeddings(emb)
    loss = cross_entropy(logits[:, -1], seq[:, -1])               # the last position only
    loss.backward()
    return np.linalg.norm(emb.grad, axis=2).mean(axis=0)          # (T,)


# %% Sampling
def next_token_probs(logits, temperature=1.0, top_k=0):
    """softmax(logits / temperature) over the top_k largest logits (all if 0), per row.
    A temperature below 1 sharpens the distribution toward the likeliest characters, above
    1 flattens it; top-k removes the long tail of unlikely characters entirely."""
    logits = logits / temperature                                # (B, V)
    if top_k and top_k < logits.shape[1]:
        kth = np.sort(logits, axis=1)[:, -top_k][:, None]        # k-th largest per row
        logits = np.where(logits < kth, -np.inf, logits)
    p = np.exp(logits - logits.max(axis=1, keepdims=True))       # exp(-inf) = 0
    return p / p.sum(axis=1, keepdims=True)


def generate(model, prompt, max_new, g, temperature=1.0, top_k=0, greedy=False, stop=None):
    """Extend every row of `prompt` (B, T0) by up to max_new tokens, one step at a time.
    A recurrent model reads the prompt once and then only its last token and the carried
    state: each step costs the same however long the text already is (a transformer
    re-reads its whole context window; with stage 07's --kv-cache it computes only the new
    token, but attends to every earlier one). `greedy` takes the likeliest token every time;
    rows stop early once they produced `stop` (all rows: the loop ends)."""
    out = np.array(prompt, dtype=np.int64).reshape(len(prompt), -1)  # (B, T0)
    done = np.zeros(len(out), dtype=bool)
    with no_grad():
        logits, state = model(out)
        for _ in range(max_new):
            last = logits.data[:, -1].astype(np.float64)         # (B, V)
            if greedy:
                ix = last.argmax(axis=1)
            else:
                probs = next_token_probs(last, temperature, top_k)
                ix = rng.multinomial(probs, num_samples=1, generator=g)[:, 0]
            ix = np.where(done, stop if stop is not None else 0, ix)
            out = np.concatenate([out, ix[:, None]], axis=1)
            if stop is not None:
                done |= ix == stop
                if done.all():
                    break
            logits, state = model(ix[:, None], state)            # one step, state carried
    return out


def sample_names(model, n, g, stoi, itos, temperature=1.0, top_k=0, greedy=False, prompt=""):
    """n names: start from the start token (and the prompt's letters), stop at '.', at
    most 15 letters in all (makemore's longest name)."""
    start = [0] + [stoi[ch] for ch in prompt]
    if n == 0:
        return []
    rows = generate(model, [start] * n, BLOCK_SIZE - len(start), g, temperature, top_k,
                    greedy, stop=0)
    names = []
    for row in rows[:, 1:].tolist():
        row = row[:row.index(0) + 1] if 0 in row else row
        names.append("".join(itos[i] for i in row))
    return names


def sample_text(model, n_chars, g, stoi, itos, temperature=1.0, top_k=0, greedy=False,
                prompt="\n"):
    """One passage of n_chars characters after the prompt."""
    start = [stoi[ch] for ch in prompt]
    row = generate(model, [start], n_chars, g, temperature, top_k, greedy)[0]
    return "".join(itos[i] for i in row.tolist())


def check_prompt(prompt, stoi, dataset):
    """A prompt must use the dataset's characters (names: the letters a-z, and leave room
    for at least one more letter)."""
    allowed = set(stoi) - {"."} if dataset == "names" else set(stoi)
    unknown = "".join(sorted(set(prompt) - allowed))
    if unknown:
        raise cli.UserError(f"--prompt has characters outside the {dataset} vocabulary: "
                            f"{unknown!r}")
    if dataset == "names" and len(prompt) >= BLOCK_SIZE - 1:
        raise cli.UserError(f"--prompt is {len(prompt)} letters; names have at most "
                            f"{BLOCK_SIZE - 1}, so a prompt at most {BLOCK_SIZE - 2} (the "
                            f"model adds at least one)")


# %% Figures
CELL_COLORS = {"rnn": "tab:red", "gru": "tab:blue", "lstm": "tab:green"}


def smooth(values, n=100):
    """Means over consecutive blocks of n values, and the block centres."""
    m = len(values) // n * n
    if m == 0:
        return np.arange(len(values)), np.asarray(values)
    return np.arange(m // n) * n + n / 2, np.asarray(values[:m]).reshape(-1, n).mean(1)


def plot_losses(hists, held_out, path):
    """Training loss (mean over 100 steps, thin) and held-out loss (thick) per cell."""
    plt = cli.pyplot()
    from matplotlib.lines import Line2D
    fig, ax = plt.subplots(figsize=(7, 3.8))
    handles = []
    for cell, hist in hists.items():
        color = CELL_COLORS[cell]
        ax.plot(*smooth(hist["loss"]), color=color, lw=0.8, alpha=0.5)
        handles += ax.plot(hist["eval_steps"], hist["eval_loss"], color=color, lw=2,
                           label=f"{cell.upper()}: {held_out} {hist['eval_loss'][-1]:.4f}")
    handles += [Line2D([], [], color="gray", lw=0.8, alpha=0.7,
                       label="training (mean of 100 steps)"),
                Line2D([], [], color="gray", lw=2, label=f"{held_out} (thick)")]
    ax.set_xlabel("step", fontsize=11)
    ax.set_ylabel("cross-entropy loss (nats/char)", fontsize=11)
    ax.set_title(f"RNN vs GRU vs LSTM: training and {held_out} loss", fontsize=12)
    finals = [h["eval_loss"][-1] for h in hists.values()]
    ax.set_ylim(min(finals) - 0.15, min(finals) + 1.0)
    ax.legend(handles=handles, fontsize=10, title=f"final {held_out} loss",
              title_fontsize=10)
    ax.tick_params(labelsize=10)
    ax.grid(alpha=0.3)
    cli.save_figure(fig, path)


def plot_gradient_through_time(curves, path):
    """||dL/dx_t|| against the distance from the predicted position, log scale: one line per
    trained cell (solid) and at initialisation (dashed)."""
    plt = cli.pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.8))
    for (cell, when), norms in curves.items():
        back = np.arange(len(norms))[::-1]                  # steps back from the end
        ax.semilogy(back, norms, color=CELL_COLORS[cell], ls="-" if when == "trained" else "--",
                    label=f"{cell.upper()} ({when})")
    ax.set_xlabel("distance from the predicted character (time steps)", fontsize=11)
    ax.set_ylabel("mean ||dL/dx_t|| (log scale)", fontsize=11)
    ax.set_title("how far back the gradient reaches (input embedding x_t)", fontsize=12)
    ax.grid(alpha=0.3, which="both")
    ax.tick_params(labelsize=10)
    ax.legend(fontsize=10, ncol=2)
    cli.save_figure(fig, path)


GATE_NAME = {"lstm": "forget gate f", "gru": "update gate z", "rnn": "hidden state tanh(.)"}


def saturation(values, cell):
    """The fraction of gate values stuck near 0 or 1 (< 0.05 or > 0.95), or of RNN hidden
    values near -1 or 1 (|h| > 0.95): where tanh and sigmoid are flat, little gradient
    passes through the unit itself (a gate near 1 passes the old state unchanged)."""
    v = np.abs(values) if cell == "rnn" else np.minimum(values, 1 - values)
    return float((v > 0.95).mean()) if cell == "rnn" else float((v < 0.05).mean())


def plot_gates(hists, path):
    """Per cell: histograms of the gate's values at several points of training, and the
    saturated fraction over training."""
    plt = cli.pyplot()
    fig, axes = plt.subplots(len(hists), 2, figsize=(7.5, 3.0 * len(hists)), squeeze=False)
    for row, (cell, hist) in zip(axes, hists.items()):
        steps, gates = hist["gate_steps"], hist["gates"]
        cmap = plt.get_cmap("viridis")
        lo = -1 if cell == "rnn" else 0
        shown = np.unique(np.linspace(0, len(steps) - 1, min(len(steps), 6)).round())
        for j, k in enumerate(shown.astype(int)):  # at most 6 histograms, evenly spaced
            row[0].hist(gates[k].ravel(), bins=50, range=(lo, 1), histtype="step",
                        density=True, color=cmap(j / max(1, len(shown) - 1)),
                        label=f"step {steps[k]}")
        row[0].set_title(f"{cell.upper()}: {GATE_NAME[cell]}", fontsize=11)
        row[0].set_xlabel("value" + (" of h" if cell == "rnn" else " of the gate"),
                          fontsize=10)
        row[0].set_ylabel("density", fontsize=10)
        row[0].set_ylim(top=row[0].get_ylim()[1] * 1.6)  # room for the legend above
        row[0].legend(fontsize=10, ncol=3, loc="upper center", handlelength=1.2,
                      columnspacing=0.8, borderpad=0.3, labelspacing=0.2)
        row[1].plot(steps, [saturation(v, cell) for v in gates], marker="o",
                    color=CELL_COLORS[cell], label=cell.upper())
        row[1].set_ylim(0, 1)
        row[1].set_title("fraction saturated (" + ("|h| > 0.95)" if cell == "rnn"
                                                   else "< 0.05 or > 0.95)"), fontsize=11)
        row[1].set_xlabel("step", fontsize=10)
        row[1].set_ylabel("fraction of values", fontsize=10)
        row[1].legend(fontsize=10)
        row[1].grid(alpha=0.3)
        for ax in row:
            ax.tick_params(labelsize=10)
    fig.suptitle("gate values over training, and how many are saturated", fontsize=12)
    fig.tight_layout()
    cli.save_figure(fig, path)


def plot_hidden_state(model, text, stoi, path):
    """Heat map of the first layer's hidden state (units x time) while reading `text`,
    with the gate (z or f) below it for the gated cells."""
    record = {}
    with no_grad():
        model(np.array([[stoi[ch] for ch in text]]), record=record)
    panels = [("hidden state h", record[0]["h"][0].T, "RdBu_r", -1, 1, "h (tanh range)")]
    if model.cell != "rnn":
        key = "z" if model.cell == "gru" else "f"
        panels.append((GATE_NAME[model.cell], record[0][key][0].T, "viridis", 0, 1,
                       f"{key} (sigmoid)"))
    plt = cli.pyplot()
    width = min(16, max(7, 3 + 0.22 * len(text)))
    fig, axes = plt.subplots(len(panels), 1, figsize=(width, 3.2 * len(panels)), squeeze=False)
    for ax, (title, values, cmap, lo, hi, clabel) in zip(axes[:, 0], panels):
        im = ax.imshow(values, aspect="auto", cmap=cmap, vmin=lo, vmax=hi,
                       interpolation="nearest")
        ax.set_xticks(range(len(text)))
        ax.set_xticklabels([repr(ch)[1:-1] if ch in "\n\t" else ch for ch in text],
                           fontsize=9 if len(text) > 40 else 10)
        ax.set_ylabel("hidden unit (index)", fontsize=11)
        ax.set_title(f"{model.cell.upper()} {title}, reading {text[:40]!r}"
                     + ("..." if len(text) > 40 else ""), fontsize=12)
        ax.tick_params(axis="y", labelsize=10)
        cbar = fig.colorbar(im, ax=ax, fraction=0.03)
        cbar.set_label(clabel, fontsize=10)
        cbar.ax.tick_params(labelsize=10)
    axes[-1, 0].set_xlabel("character read at this step (time)", fontsize=11)
    fig.tight_layout()
    cli.save_figure(fig, path)


# %% Main
def describe_data(ds):
    if ds["kind"] == "names":
        n_tr, n_te = len(ds["train_words"]), len(ds["test_words"])
        print(f"{n_tr + n_te} names -> {n_tr} train, {n_te} test (the last {TEST_NAMES} of the "
              f"lectures' shuffle); vocabulary {ds['vocab_size']}, block {BLOCK_SIZE}")
        show_examples(ds["train"][0], ds["train"][1], ds["itos"])
    else:
        print(f"tiny Shakespeare: {len(ds['train'])} train, {len(ds['test'])} validation "
              f"characters; vocabulary {ds['vocab_size']}")


def probe_sequences(ds, n=64, length=48):
    """Inputs for the gradient-through-time figure: n rows of length + 1 tokens of held-out
    text (names: test names joined by '.')."""
    if ds["kind"] == "names":
        stream = np.array([0] + [ds["stoi"][ch] for ch in ".".join(ds["test_words"]) + "."])
    else:
        stream = ds["test"]
    starts = np.linspace(0, len(stream) - length - 2, n).astype(int)
    return np.stack([stream[s:s + length + 1] for s in starts])


def grad_curve(model, seq):
    """gradient_through_time on seq, leaving the parameters' gradients clean."""
    norms = gradient_through_time(model, seq)
    for p in model.parameters():
        p.grad = None
    return norms


def train_cell(cfg, ds, quiet=False):
    """Build, train and evaluate one model; returns (model, optimizer, generator, history,
    summary dict)."""
    g = rng.Generator(cfg.seed)
    model = RecurrentLM(cfg, ds["vocab_size"], g)
    n_params = sum(p.data.size for p in model.parameters())
    print(f"\n== {cfg.cell.upper()}: {cfg.n_layer} layer(s), n_embd {cfg.n_embd}, hidden "
          f"{cfg.n_hidden}, {cfg.init_state} initial state: {n_params:,} parameters")
    schedule = f"{cfg.warmup_steps} warmup steps, cosine decay to {cfg.min_lr:g}" \
        if cfg.schedule == "cosine" else "constant"
    print(f"  {cfg.steps:,} steps of {cfg.batch_size} "
          + ("names" if ds["kind"] == "names" else f"x {cfg.bptt} characters (truncated BPTT)")
          + f": AdamW lr {cfg.lr:g} ({schedule}), betas (0.9, {cfg.beta2}), weight decay "
          f"{cfg.weight_decay:g}, gradient clipping {cfg.grad_clip or 'off'}")
    seq = probe_sequences(ds)
    grad_init = grad_curve(model, seq)
    optimizer = AdamW(model.named_parameters(), cfg.lr, betas=(0.9, cfg.beta2),
                      weight_decay=cfg.weight_decay, decay="all")  # makemore: decay on all
    hist = train(cfg, model, optimizer, ds, g, quiet=quiet)
    ms = 1000 * hist["train_seconds"] / max(1, cfg.steps)
    held_out = hist["eval_loss"][-1]
    print(f"  {hist['train_seconds']:.1f}s training ({ms:.2f} ms/step) + "
          f"{hist['eval_seconds']:.1f}s evaluating; "
          f"{'test' if ds['kind'] == 'names' else 'val'} loss {held_out:.4f}")
    grad_trained = grad_curve(model, seq)
    reach = {when: (norms[-16] / norms[-1], norms[0] / norms[-1])
             for when, norms in (("init", grad_init), ("trained", grad_trained))}
    print(f"  gradient reaching 15 and {len(seq[0]) - 2} steps back (relative to the last "
          f"input): {reach['trained'][0]:.1e} and {reach['trained'][1]:.1e} "
          f"(at initialisation {reach['init'][0]:.1e} and {reach['init'][1]:.1e})")
    gate_saturation = saturation(hist["gates"][-1], cfg.cell)
    print(f"  {GATE_NAME[cfg.cell]}: {100 * gate_saturation:.0f}% saturated after training")
    summary = dict(cell=cfg.cell, n_params=n_params, held_out=held_out, ms_per_step=ms,
                   seconds=hist["train_seconds"], grad_init=grad_init,
                   grad_trained=grad_trained, reach=reach, saturation=gate_saturation)
    return model, optimizer, g, hist, summary


def show_samples(cfg, model, ds):
    """Samples at the chosen temperature / top-k, then colder, hotter and greedy ones."""
    g = rng.Generator(cfg.seed + 10)
    stoi, itos = ds["stoi"], ds["itos"]
    out = {}
    if ds["kind"] == "names":
        def draw(n, **kw):
            return sample_names(model, n, g, stoi, itos, prompt=cfg.prompt, **kw)
        out["samples"] = draw(cfg.samples, temperature=cfg.temperature, top_k=cfg.top_k)
        known = set(ds["train_words"])
        n_known = sum(s[:-1] in known for s in out["samples"])
        print(f"\n== Samples (temperature {cfg.temperature}"
              + (f", top-k {cfg.top_k}" if cfg.top_k else "") + f"; {n_known} of "
              f"{len(out['samples'])} are names from the training set)\n  "
              + " ".join(out["samples"]))
        out["cold"] = draw(10, temperature=0.5)
        out["hot"] = draw(10, temperature=1.5)
        out["greedy"] = draw(5, greedy=True)
        print("  temperature 0.5: " + " ".join(out["cold"]))
        print("  temperature 1.5: " + " ".join(out["hot"]))
        print("  greedy (always the likeliest letter): " + " ".join(out["greedy"])
              + "  <- the same name every time")
    else:
        prompt = cfg.prompt or "\n"
        out["samples"] = [sample_text(model, cfg.max_new_tokens, g, stoi, itos,
                                      cfg.temperature, cfg.top_k, prompt=prompt)
                          for _ in range(min(cfg.samples, 1))]
        out["greedy"] = [sample_text(model, 300, g, stoi, itos, greedy=True, prompt=prompt)]
        for s in out["samples"]:
            print(f"\n== Sample (temperature {cfg.temperature}"
                  + (f", top-k {cfg.top_k}" if cfg.top_k else "") + ")\n" + s)
        print("\n== Greedy (always the likeliest character): it falls into a loop\n"
              + out["greedy"][0])
    return out


def sample_main(cfg, ds):
    """--sample: load the checkpoint in --out and sample from it."""
    path = Path(cfg.out) / "ckpt.npz"
    saved, meta = load_checkpoint(path)
    if saved.dataset != cfg.dataset:
        raise cli.UserError(f"checkpoint {path} was trained on {saved.dataset}; "
                            f"add --dataset {saved.dataset}")
    model = RecurrentLM(replace(saved, fused=cfg.fused), ds["vocab_size"],
                        rng.Generator(saved.seed))
    load_model_state(model, path)
    print(f"[{path}: {saved.cell.upper()}, step {meta['step']}, "
          f"{'test' if saved.dataset == 'names' else 'val'} loss {meta['held_out']:.4f}]")
    return dict(config=asdict(saved), **show_samples(cfg, model, ds))


def compare_cells(cfg, ds, out, held_out):
    """--compare: the three cells, trained alike; one table, one loss plot."""
    hists, results = {}, {}
    for cell in ("rnn", "gru", "lstm"):
        *_, hists[cell], results[cell] = train_cell(replace(cfg, cell=cell), ds)
        if "stopped_at" in hists[cell]:
            raise KeyboardInterrupt
    print(f"\n== Comparison ({cfg.steps} steps each)\n  cell  parameters  {held_out} loss"
          f"  ms/step")
    for r in results.values():
        print(f"  {r['cell']:4s}  {r['n_params']:10,d}  {r['held_out']:9.4f}  "
              f"{r['ms_per_step']:7.2f}")
    files = []
    if cfg.plots:
        plot_losses(hists, held_out, out / f"compare.{cfg.format}")
        plot_gates({c: hists[c] for c in ("gru", "lstm", "rnn")}, out / f"gates.{cfg.format}")
        plot_gradient_through_time(
            {(c, w): results[c][f"grad_{w}"] for c in results for w in ("init", "trained")},
            out / f"gradient_through_time.{cfg.format}")
        files = [str(out / f) for f in (f"compare.{cfg.format}", f"gates.{cfg.format}",
                                        f"gradient_through_time.{cfg.format}")]
        print(f"\nwrote {', '.join(files)}")
    return dict(config=asdict(cfg), results=results, files=files,
                histories={c: {k: h[k] for k in ("loss", "eval_steps", "eval_loss")}
                           for c, h in hists.items()})


def main(argv=None) -> dict:
    cfg = cli.parse_config(Config, argv, __doc__, prog="08_lstm_gru/train.py")
    ds = load_dataset(cfg)
    check_prompt(cfg.prompt, ds["stoi"], ds["kind"])
    if cfg.sample:
        return sample_main(cfg, ds)
    describe_data(ds)
    out = cli.out_dir(cfg.out)
    held_out = "test" if ds["kind"] == "names" else "val"
    if cfg.compare:
        return compare_cells(cfg, ds, out, held_out)

    model, optimizer, g, hist, result = train_cell(cfg, ds)
    history = {k: hist[k] for k in ("loss", "eval_steps", "eval_loss")}
    if "stopped_at" in hist:  # Ctrl-C: keep the model trained so far, for --sample
        save_checkpoint(out / "ckpt.npz", cfg, model, optimizer, g, history,
                        dict(step=hist["stopped_at"], held_out=result["held_out"]))
        print(f"\nstopped at step {hist['stopped_at']}: the model so far is in "
              f"{out / 'ckpt.npz'}")
        raise KeyboardInterrupt
    samples = show_samples(cfg, model, ds)
    save_checkpoint(out / "ckpt.npz", cfg, model, optimizer, g, history,
                    dict(step=cfg.steps, held_out=result["held_out"]))
    files = [str(out / "ckpt.npz")]
    if cfg.plots:
        plot_losses({cfg.cell: hist}, held_out, out / f"loss.{cfg.format}")
        plot_gates({cfg.cell: hist}, out / f"gates.{cfg.format}")
        plot_gradient_through_time({(cfg.cell, "init"): result["grad_init"],
                                    (cfg.cell, "trained"): result["grad_trained"]},
                                   out / f"gradient_through_time.{cfg.format}")
        if ds["kind"] == "names":  # the longest sampled name, with its start token
            text = "." + max(samples["samples"] or [ds["test_words"][0] + "."], key=len)
        else:
            text = "".join(ds["itos"][i] for i in ds["test"][:80])
        plot_hidden_state(model, text, ds["stoi"], out / f"hidden_state.{cfg.format}")
        files += [str(out / f) for f in (f"loss.{cfg.format}", f"gates.{cfg.format}", f"gradient_through_time.{cfg.format}",
                                         f"hidden_state.{cfg.format}")]
    print(f"\nwrote {', '.join(files)}")
    return dict(config=asdict(cfg), **result, loss=hist["loss"], grad_norm=hist["grad_norm"],
                eval_steps=hist["eval_steps"], eval_loss=hist["eval_loss"], files=files,
                **samples)


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


if __name__ == "__main__":
    cli.run(main)
