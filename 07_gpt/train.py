"""Stage 07: a GPT, built from scratch and trained on tiny Shakespeare.

Follows "Let's build GPT: from scratch, in code, spelled out", and trains the default model
with nanoGPT's recipe. New over stage 06: text as a stream of tokens, batches of random
windows (targets shifted by one); the bigram baseline; the "mathematical trick" of
self-attention (averaging the past with a lower-triangular matrix); `Head` (keys,
queries, values, the 1/sqrt(head_size) scale), `MultiHeadAttention`, `FeedForward`,
residual `Block`s with pre-LayerNorm, dropout and the `GPTLanguageModel`; AdamW with
warmup, cosine decay and gradient clipping; checkpoints, `--resume`, `--sample`, BPE
tokenizers. The default run computes every Head on its own, as the lecture types it;
`--attention batched` is the lecture's exercise 1, all heads at once (the same weights
and results up to float32 rounding).
Beyond the lecture: `--init-from gpt2` loads OpenAI's GPT-2 into the same classes, to
sample from or fine-tune, and `--kv-cache` samples with a cache of keys and values.
The engine gains transpose, masked_fill, softmax, relu, gelu, dropout, split, cat, and
fused linear, layer norm and attention ops (and permute and log_softmax, which no model
here calls: tests/test_torch_parity.py checks them against torch). Stage 06's
convolutional WaveNet is not carried on.

    python 07_gpt/train.py                          # nanoGPT's laptop GPT, minutes
    python 07_gpt/train.py --sample --prompt "ROMEO:" --temperature 0.8
    python 07_gpt/train.py --model bigram           # the lecture's steps, one by one:
    python 07_gpt/train.py --model single-head      #   single-head, multi-head,
    python 07_gpt/train.py --model residual         #   feed-forward, residual, layernorm
    python 07_gpt/train.py --preset lecture         # the lecture's 10.8M model (a day)
    python 07_gpt/train.py --tokenizer bpe --vocab-size 512
    python 07_gpt/train.py --attention batched      # all heads in one matmul
    python 07_gpt/train.py --init-from gpt2 --weights W --sample --kv-cache  # GPT-2
    python 07_gpt/train.py --init-from gpt2 --weights W   # GPT-2 fine-tuned on Shakespeare
                                     # (W: GPT-2's model.safetensors; see the README)

What it prints (measured; tests/benchmarks/README.md has the timings):
    default run     val loss 1.7757 (2.562 bits per character) after 2,000 steps
                    (nanoGPT's own train.py with this recipe: 1.8857)
    --model bigram  step 0: train 4.7305, val 4.7241; step 2700: 2.4738, 2.4911, the
                    lecture's prints digit for digit
    lecture steps   single-head 2.4133, multi-head 2.2808, feed-forward 2.2496, residual
                    2.0736, layernorm 2.0598 (the lecture: 2.4, 2.28, 2.24, 2.08, 2.06)
    --preset lecture  10,788,929 parameters
"""

# %% Imports
from __future__ import annotations

import codecs
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
from common import bpe, cli, data, rng, safetensors  # noqa: E402


# %% Config
# The lecture builds the GPT in steps; --model picks one (each adds to the one before).
MODELS = ("bigram", "single-head", "multi-head", "feed-forward", "residual", "layernorm",
          "gpt")

# torch.optim.AdamW's defaults, used by the lecture's scripts
TORCH_ADAMW = dict(beta2=0.999, weight_decay=0.01, decay="all", schedule="constant",
                   warmup_steps=0, grad_clip=0.0)
# the lecture's intermediate models: n_embd 32, context 8, lr 1e-3, 5,000 steps
LECTURE_STEPS = dict(TORCH_ADAMW, n_layer=3, n_head=4, n_embd=32, block_size=8,
                     batch_size=32, dropout=0.0, steps=5000, lr=1e-3, eval_interval=500,
                     eval_iters=200)
PRESETS = {
    "bigram": dict(LECTURE_STEPS, steps=3000, lr=1e-2, eval_interval=300),  # bigram.py
    "lecture-steps": LECTURE_STEPS,
    "lecture": dict(LECTURE_STEPS, n_layer=6, n_head=6, n_embd=384,  # gpt.py
                    block_size=256, batch_size=64, dropout=0.2, lr=3e-4),
}
# fine-tuning GPT-2 (--init-from gpt2): nanoGPT's finetune_shakespeare recipe (a small,
# constant learning rate, no dropout), with fewer tokens per step to suit a CPU
GPT2_FINETUNE = dict(tokenizer="gpt2", activation="gelu", dropout=0.0, steps=200,
                     batch_size=4, block_size=256, lr=3e-5, schedule="constant",
                     warmup_steps=0,
                     eval_interval=50, eval_iters=10, out="out/07_gpt2")
# fixed by the checkpoint when resuming or sampling
ARCHITECTURE = ("model", "init_from", "n_layer", "n_head", "n_embd", "block_size",
                "activation", "tokenizer", "vocab_size")


@dataclass
class Config:
    model: str = cli.arg("gpt", "which model of the lecture (each step adds to the one "
                                "before): bigram, single-head, multi-head, feed-forward, "
                                "residual, layernorm, gpt", choices=MODELS)
    preset: str = cli.arg("cpu", "with --model gpt: 'cpu' is nanoGPT's laptop-sized GPT "
                                 "(the defaults shown here); 'lecture' is the lecture's "
                                 "10.8M-parameter GPT (about a day of CPU time). The other "
                                 "models default to the lecture's settings; flags given "
                                 "override", choices=("cpu", "lecture"))
    init_from: str = cli.arg("scratch", "'scratch': a new model, randomly initialized; "
                                        "'gpt2': OpenAI's GPT-2 from --weights (its size "
                                        "follows from the file; GPT-2's tokenizer and "
                                        "GELU), to --sample from or to fine-tune",
                             choices=("scratch", "gpt2"))
    weights: str = cli.arg("", "with --init-from gpt2: the model.safetensors file Hugging "
                               "Face publishes for gpt2 (or gpt2-medium, -large, -xl)")
    n_layer: int = cli.arg(4, "transformer blocks", min=1, max=96)
    n_head: int = cli.arg(4, "attention heads per block (head size: n_embd / n_head)",
                          min=1, max=128)
    n_embd: int = cli.arg(128, "embedding dimension", min=1, max=8192)
    block_size: int = cli.arg(64, "context length: the most tokens the model looks back",
                              min=1, max=8192)
    dropout: float = cli.arg(0.0, "dropout probability while training", min=0, max=0.99)
    activation: str = cli.arg("relu", "non-linearity of the feed-forward layers",
                              choices=("relu", "gelu"))
    attention: str = cli.arg("heads", "'heads': each Head on its own, as typed in the "
                                      "lecture; 'batched': all heads in one matmul and one "
                                      "fused attention op (the lecture's exercise 1: the "
                                      "same weights, the same results up to float32 "
                                      "rounding, faster)",
                             choices=("heads", "batched"))
    tokenizer: str = cli.arg("char", "'char': one token per character (the lecture's 65); "
                                     "'bpe': byte-pair encoding trained on the training "
                                     "split; 'gpt2': GPT-2's 50,257 tokens",
                             choices=("char", "bpe", "gpt2"))
    vocab_size: int = cli.arg(512, "with --tokenizer bpe: its vocabulary size (one token "
                                   "per byte at least)", min=256, max=100_000)
    steps: int = cli.arg(2000, "training steps (max_iters)", min=0)
    batch_size: int = cli.arg(12, "sequences per batch", min=1, max=100_000)
    lr: float = cli.arg(1e-3, "learning rate (the peak, with a schedule)", min=1e-9,
                        max=10)
    schedule: str = cli.arg("cosine", "learning rate after warmup: cosine decay to "
                                      "--min-lr, or constant",
                            choices=("cosine", "constant"))
    warmup_steps: int = cli.arg(100, "steps of linear learning-rate warmup", min=0)
    min_lr: float = cli.arg(1e-4, "learning rate at the end of the cosine decay", min=0,
                            max=10)
    beta2: float = cli.arg(0.99, "AdamW's beta2 (beta1 is 0.9)", min=0, max=0.9999)
    weight_decay: float = cli.arg(0.1, "AdamW's decoupled weight decay", min=0, max=100)
    decay: str = cli.arg("matrices", "parameters that weight decay applies to: the "
                                     "matrices (nanoGPT) or all (torch's AdamW)",
                         choices=("matrices", "all"))
    grad_clip: float = cli.arg(1.0, "clip the gradient's global norm to this (0: off)",
                               min=0, max=1e6)
    eval_interval: int = cli.arg(250, "estimate the losses every this many steps", min=1)
    eval_iters: int = cli.arg(20, "batches per split in each loss estimate", min=1,
                              max=100_000)
    seed: int = cli.arg(1337, "seed of the generator (the lecture's torch.manual_seed)",
                        min=0, max=2**64 - 1)
    out: str = cli.arg("out/07_gpt", "folder of the checkpoint, figures and tokenizer")
    plots: bool = cli.arg(True, "write figures")
    format: str = cli.arg("png", "file format of the figures: png, or svg and pdf to scale "
                                 "on slides", choices=cli.FIGURE_FORMATS)
    resume: bool = cli.arg(False, "continue training from the checkpoint in --out")
    sample: bool = cli.arg(False, "do not train: generate from the checkpoint in --out")
    prompt: str = cli.arg("", "text the sample continues (default: a newline)")
    max_new_tokens: int = cli.arg(500, "tokens to generate", min=0, max=1_000_000)
    temperature: float = cli.arg(1.0, "divide the logits by this before sampling (< 1: "
                                      "safer, > 1: wilder)", min=1e-3, max=100)
    top_k: int = cli.arg(0, "sample among the k most likely tokens only (0: all)", min=0)
    kv_cache: bool = cli.arg(False, "sample with a KV cache: each layer keeps the keys and "
                                    "values of the tokens so far, so a new token costs one "
                                    "position, not the whole context (the same tokens)")

    def check(self):
        cli.check(self.preset == "cpu" or self.model == "gpt",
                  "--preset lecture is the full GPT: use it with --model gpt")
        cli.check(not (self.sample and self.resume),
                  "--sample and --resume exclude each other")
        cli.check(self.n_embd % self.n_head == 0 or self.model in ("bigram", "single-head"),
                  f"--n-embd {self.n_embd} must be a multiple of --n-head {self.n_head}")
        cli.check(self.min_lr <= self.lr or self.schedule == "constant",
                  f"--min-lr {self.min_lr} must not exceed --lr {self.lr}")
        if self.init_from == "gpt2":
            cli.check(self.model == "gpt" and self.preset == "cpu", "--init-from gpt2 "
                      "loads the full GPT: use it without --model and --preset")
            cli.check(self.tokenizer == "gpt2" and self.activation == "gelu", "GPT-2 needs "
                      "its own tokenizer and GELU: drop --tokenizer and --activation")


def presets(given, args):
    """The chosen model's (or preset's) settings, for every flag not given: `--model
    bigram` trains like bigram.py, the intermediate models like the lecture's steps,
    `--preset lecture` like gpt.py, `--init-from gpt2` fine-tunes GPT-2."""
    if "init_from" in given and args["init_from"] == "gpt2":
        return GPT2_FINETUNE
    model = args["model"] if "model" in given else "gpt"
    if model == "bigram":
        return PRESETS["bigram"]
    if model != "gpt":
        return PRESETS["lecture-steps"]
    return PRESETS["lecture"] if "preset" in given and args["preset"] == "lecture" else {}


# %% Data
class CharTokenizer:
    """The lecture's tokenizer: each character is a token (65 of them in tiny Shakespeare,
    sorted: '\\n', ' ', '!', ..., 'z'). Same methods as common/bpe.py's Tokenizer."""

    def __init__(self, chars):
        self.chars, self.name = "".join(chars), "char"
        self.stoi = {ch: i for i, ch in enumerate(self.chars)}

    @property
    def vocab_size(self):
        return len(self.chars)

    def encode(self, text):
        return data.encode_chars(text, self.stoi)  # unknown characters: a UserError

    def decode(self, ids):
        return "".join(self.chars[i] for i in ids)

    def decode_bytes(self, ids):
        return self.decode(ids).encode("utf-8")


def get_tokenizer(cfg, text, train_text, out, quiet=False):
    """char: the text's characters; gpt2: GPT-2's shipped ranks; bpe: our BPE trained on
    the training split only (never on validation text), cached in the output folder."""
    if cfg.tokenizer == "char":
        return CharTokenizer(sorted(set(text)))
    if cfg.tokenizer == "gpt2":
        return bpe.gpt2()
    folder = Path(out) / f"bpe{cfg.vocab_size}"
    if (folder / bpe.META_FILE).is_file():
        return bpe.Tokenizer.load(folder)
    start = time.perf_counter()
    tok = bpe.Tokenizer(name=f"bpe{cfg.vocab_size}").train(train_text, cfg.vocab_size)
    tok.save(folder)
    if not quiet:
        print(f"trained a {tok.vocab_size}-token BPE tokenizer on the training split in "
              f"{time.perf_counter() - start:.1f}s (saved in {folder})")
    return tok


def load_splits(tok, text):
    """The lecture's 90/10 split of the text (the first 90% trains), each part encoded:
    int64 token ids, plus the characters per split (for bits per character)."""
    n = int(0.9 * len(text))
    train_data = np.asarray(tok.encode(text[:n]), dtype=np.int64)
    val_data = np.asarray(tok.encode(text[n:]), dtype=np.int64)
    return {"train": train_data, "val": val_data}, {"train": n, "val": len(text) - n}


def get_batch(split_data, block_size, batch_size, g):
    """`batch_size` random windows: x is block_size tokens, y the same window shifted by
    one, so y[b, t] is the token after x[b, :t+1] (block_size examples per window)."""
    ix = rng.randint(0, len(split_data) - block_size, (batch_size,), generator=g)  # (B,)
    offsets = ix[:, None] + np.arange(block_size)                                 # (B, T)
    return split_data[offsets], split_data[offsets + 1]


# %% Model: the self-attention trick
def average_loop(x):
    """The lecture's version 1: xbow[b, t] = mean of x[b, :t+1], with loops. Each token
    sees the average of itself and the tokens before it: a (weak) summary of the past."""
    B, T, C = x.shape
    xbow = np.zeros_like(x)
    for b in range(B):
        for t in range(T):
            xbow[b, t] = x[b, :t + 1].mean(axis=0)
    return xbow


def average_matmul(x):
    """Version 2: the same averages as one matmul with a lower-triangular matrix whose
    rows sum to 1: wei[t] = [1/(t+1)] * (t+1) followed by zeros."""
    T = x.shape[1]
    wei = np.tril(np.ones((T, T), dtype=x.dtype))
    wei = wei / wei.sum(1, keepdims=True)
    return wei @ x                                    # (T, T) @ (B, T, C) -> (B, T, C)


def average_softmax(x):
    """Version 3: the same matrix as a softmax of zeros with the future masked to -inf.
    Self-attention keeps this form but makes the zeros data-dependent affinities."""
    T = x.shape[1]
    tril = np.tril(np.ones((T, T), dtype=x.dtype))
    wei = Tensor(np.zeros((T, T), dtype=x.dtype)).masked_fill(tril == 0, float("-inf"))
    return wei.softmax(dim=-1).data @ x


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


class LayerNorm(Module):
    """nn.LayerNorm: normalizes each token's vector (the fused `layer_norm`), then scales
    and shifts it by trained weight (ones) and bias (zeros)."""

    def __init__(self, dim, eps=1e-5):
        self.eps = eps
        self.weight = Tensor(np.ones(dim, dtype=np.float32), requires_grad=True)
        self.bias = Tensor(np.zeros(dim, dtype=np.float32), requires_grad=True)

    def forward(self, x):
        return layer_norm(x, self.weight, self.bias, self.eps)


class Dropout(Module):
    """nn.Dropout: while training, zero a random fraction p of the values (masks from
    `generator`); in evaluation, pass everything through."""

    def __init__(self, p, generator=None):
        self.p, self.generator = p, generator

    def forward(self, x):
        return x.dropout(self.p, self.generator) if self.training and self.p > 0 else x


class ReLU(Module):
    def forward(self, x):
        return x.relu()


class GELU(Module):
    def forward(self, x):
        return x.gelu()


class TiedLinear(Module):
    """GPT-2's output layer, tied to the token embedding: logits = x @ wte^T, no bias. One
    table serves both ends (a token's vector in and its score out), so its gradient sums
    both uses. The embedding is kept in a tuple, which parameters() does not look into:
    the table is listed once, under the embedding."""

    def __init__(self, embedding):
        self.tied = (embedding,)

    def forward(self, x):
        return x @ self.tied[0].weight.transpose(0, 1)  # (B, T, C) @ (C, vocab)


class Identity(Module):
    """Passes its input through: stands in for a LayerNorm the early models lack."""

    def forward(self, x):
        return x


class Sequential(Module):
    """nn.Sequential: the layers applied one after the other."""

    def __init__(self, layers):
        self.layers = list(layers)

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


# %% Model: the transformer
class KVCache:
    """The keys and values of the tokens seen so far, for one head (B, T, hs) or for a
    layer's heads at once (B, H, T, hs), while sampling. A new token's query attends to
    every earlier key, and those keys and values never change (each depends only on the
    tokens at or before its position: the causal mask hides the later ones in every
    layer): keeping them, each step computes the new token's alone."""

    def __init__(self, block_size):
        self.block_size = block_size
        self.k = self.v = None  # room for block_size positions, allocated on first use
        self.length = 0         # positions stored

    def extend(self, k, v):
        """Store the new positions' k and v (Tensors, positions on axis -2) after the
        ones before; return all of them, as Tensors (sampling records no graph)."""
        T = k.shape[-2]
        if self.k is None:
            shape = k.shape[:-2] + (self.block_size, k.shape[-1])
            self.k, self.v = np.empty(shape, k.data.dtype), np.empty(shape, v.data.dtype)
        self.k[..., self.length:self.length + T, :] = k.data
        self.v[..., self.length:self.length + T, :] = v.data
        self.length += T
        return Tensor(self.k[..., :self.length, :]), Tensor(self.v[..., :self.length, :])


class Head(Module):
    """one head of self-attention"""

    keep_att = False  # keep the attention weights of the forward pass (for the figure)
    cache = None      # a KVCache while sampling with --kv-cache

    def __init__(self, n_embd, head_size, block_size, dropout=0.0, generator=None,
                 bias=False):
        self.head_size = head_size
        self.key = Linear(n_embd, head_size, bias=bias, generator=generator)
        self.query = Linear(n_embd, head_size, bias=bias, generator=generator)
        self.value = Linear(n_embd, head_size, bias=bias, generator=generator)
        self.tril = np.tril(np.ones((block_size, block_size), dtype=np.float32))  # buffer
        self.dropout = Dropout(dropout, generator)

    def forward(self, x):
        B, T, C = x.shape
        k = self.key(x)                                   # (B, T, hs) what I contain
        q = self.query(x)                                 # (B, T, hs) what I look for
        v = self.value(x)                                 # (B, T, hs) what I tell
        t0 = 0  # x's first position: > 0 when the cache holds the tokens before x
        if self.cache is not None:
            t0 = self.cache.length
            k, v = self.cache.extend(k, v)                # (B, t0 + T, hs) the past too
        # affinities: (B, T, hs) @ (B, hs, T) -> (B, T, T). Scaled by 1/sqrt(head_size)
        # so that for unit-variance q and k the scores have variance ~1 and the softmax
        # stays diffuse at initialization instead of converging on one token.
        wei = q @ k.transpose(-2, -1) * self.head_size**-0.5
        wei = wei.masked_fill(self.tril[t0:t0 + T, :t0 + T] == 0,
                              float("-inf"))              # no future
        wei = wei.softmax(dim=-1)                         # (B, T, T) rows sum to 1
        if self.keep_att:
            self.att = wei.data
        wei = self.dropout(wei)
        return wei @ v                                    # (B, T, T) @ (B, T, hs)


class MultiHeadAttention(Module):
    """multiple heads of self-attention in parallel"""

    keep_att = False
    cache = None  # with --attention batched: a KVCache while sampling with --kv-cache

    def __init__(self, num_heads, head_size, n_embd, block_size, dropout=0.0,
                 generator=None, proj=True, batched=False, bias=False):
        self.heads = [Head(n_embd, head_size, block_size, dropout, generator, bias)
                      for _ in range(num_heads)]
        # the projection back into the residual stream (from the lecture's residual step)
        self.proj = Linear(head_size * num_heads, n_embd, generator=generator) \
            if proj else None
        self.dropout = Dropout(dropout, generator)
        self.batched = batched

    def forward(self, x):
        if self.batched:
            out = self.forward_batched(x)
        else:
            out = cat([h(x) for h in self.heads], dim=-1)  # (B, T, num_heads * hs)
        if self.proj is not None:
            out = self.dropout(self.proj(out))
        return out

    def forward_batched(self, x):
        """The same heads with the same weights, computed together: one matmul makes
        every head's q, k and v, one fused op attends for all heads (tested equal)."""
        B, T, C = x.shape
        H, hs = len(self.heads), self.heads[0].head_size
        layers = [h.query for h in self.heads] + [h.key for h in self.heads] + \
            [h.value for h in self.heads]
        W = cat([m.weight for m in layers], dim=1)               # (C, 3 * H * hs)
        b = cat([m.bias for m in layers]) if layers[0].bias is not None else None
        q, k, v = linear(x, W, b).split(H * hs, dim=2)          # each (B, T, H * hs)
        q = q.view(B, T, H, hs).transpose(1, 2)                  # (B, H, T, hs)
        k = k.view(B, T, H, hs).transpose(1, 2)
        v = v.view(B, T, H, hs).transpose(1, 2)
        if self.cache is not None:
            k, v = self.cache.extend(k, v)                       # (B, H, t0 + T, hs)
        drop = self.heads[0].dropout
        y, att = scaled_dot_product_attention(
            q, k, v, drop.p if self.training else 0.0, drop.generator)  # (B, H, T, hs)
        if self.keep_att:
            self.att = att
        return y.transpose(1, 2).reshape(B, T, H * hs)           # heads side by side

    def attention_maps(self):
        """Each head's attention weights from the last forward pass with keep_att set,
        (T, T) each."""
        if self.batched:
            return list(self.att[0])
        return [h.att[0] for h in self.heads]


class FeedForward(Module):
    """a simple linear layer followed by a non-linearity"""

    def __init__(self, n_embd, dropout=0.0, generator=None, mult=4, proj=True,
                 activation="relu"):
        layers = [Linear(n_embd, mult * n_embd, generator=generator),
                  GELU() if activation == "gelu" else ReLU()]
        if proj:  # back into the residual stream (the lecture's residual step)
            layers += [Linear(mult * n_embd, n_embd, generator=generator),
                       Dropout(dropout, generator)]
        self.net = Sequential(layers)

    def forward(self, x):
        return self.net(x)


class Block(Module):
    """Transformer block: communication followed by computation"""

    def __init__(self, cfg, generator=None):
        head_size = cfg.n_embd // cfg.n_head
        # GPT-2's queries, keys and values have biases; the lecture's do not
        self.sa = MultiHeadAttention(cfg.n_head, head_size, cfg.n_embd, cfg.block_size,
                                     cfg.dropout, generator,
                                     batched=cfg.attention == "batched",
                                     bias=cfg.init_from == "gpt2")
        self.ffwd = FeedForward(cfg.n_embd, cfg.dropout, generator,
                                activation=cfg.activation)
        # the residual step has no LayerNorm yet; pre-norm from the layernorm step on
        layernorm = MODELS.index(cfg.model) >= MODELS.index("layernorm")
        self.ln1 = LayerNorm(cfg.n_embd) if layernorm else Identity()
        self.ln2 = LayerNorm(cfg.n_embd) if layernorm else Identity()

    def forward(self, x):
        x = x + self.sa(self.ln1(x))       # residual: the block adds to x, so gradients
        x = x + self.ffwd(self.ln2(x))     # flow straight through to the first layers
        return x


class LanguageModel(Module):
    """What the bigram and the GPT share: sampling, one token at a time."""

    block_size = 1  # the most tokens forward() looks at
    cached = 0      # positions the KV caches hold (see use_kv_cache)

    def generate(self, idx, max_new_tokens, generator=None, temperature=1.0, top_k=0,
                 on_token=None, kv_cache=False):
        """Extend idx (B, T) by max_new_tokens tokens, each drawn from the softmax of the
        last position's logits (with torch.multinomial's default, no replacement);
        on_token(id) is called as each one comes (to stream it). With kv_cache, only the
        tokens the caches have not seen go through the model (the same logits)."""
        try:
            for _ in range(max_new_tokens):
                idx_cond = idx[:, -self.block_size:]        # crop to the context length
                if kv_cache:
                    idx_cond = self.uncached(idx_cond)
                with no_grad():
                    logits, _ = self(idx_cond)
                if kv_cache:
                    self.cached += idx_cond.shape[1]    # in the caches now
                logits = logits.data[:, -1, :] / np.float32(temperature)  # (B, vocab)
                if top_k:
                    kth = np.sort(logits, axis=-1)[:, -min(top_k, logits.shape[-1]), None]
                    logits = np.where(logits < kth, -np.inf, logits)
                probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
                probs /= probs.sum(axis=-1, keepdims=True)  # F.softmax
                idx_next = rng.multinomial(probs, num_samples=1,
                                           generator=generator)  # (B, 1)
                idx = np.concatenate([idx, idx_next], axis=1)
                if on_token is not None:
                    on_token(int(idx_next[0, 0]))
        finally:
            self.use_kv_cache(False)  # free the caches; forward() back to whole windows
        return idx

    def uncached(self, idx_cond):
        """The tokens of the window idx_cond (B, T) that the KV caches have not seen
        (after the first step: the last one). Once the text outgrows the context, the
        window slides and every token changes position: the caches start again each
        step, as slow as no cache (and the same numbers)."""
        if not 0 < self.cached < idx_cond.shape[1]:
            self.use_kv_cache(True)
        return idx_cond[:, self.cached:]

    def use_kv_cache(self, on):
        """Start empty KV caches (on) or drop them (off). The bigram looks at one token:
        it has nothing to cache."""
        self.cached = 0


class BigramLanguageModel(LanguageModel):
    """The baseline: each token reads the logits of the next one straight off a row of
    its embedding table; the tokens before it play no part."""

    def __init__(self, vocab_size, generator=None):
        self.vocab_size = vocab_size
        self.token_embedding_table = Embedding(vocab_size, vocab_size, generator)

    def forward(self, idx, targets=None):
        logits = self.token_embedding_table(idx)         # (B, T, C=vocab_size)
        if targets is None:
            return logits, None
        B, T, C = logits.shape
        loss = cross_entropy(logits.view(B * T, C), targets.reshape(B * T))
        return logits, loss


class GPTLanguageModel(LanguageModel):
    """The lecture's GPT, at any of its steps (cfg.model): token and position embeddings,
    then self-attention (one head; several; then blocks with feed-forward, residual
    connections, LayerNorm), then a linear map to the vocabulary's logits."""

    def __init__(self, cfg, vocab_size, generator=None):
        g, C = generator, cfg.n_embd
        self.block_size, self.vocab_size = cfg.block_size, vocab_size
        self.token_embedding_table = Embedding(vocab_size, C, g)
        self.position_embedding_table = Embedding(cfg.block_size, C, g)
        batched = cfg.attention == "batched"
        if cfg.model == "single-head":
            self.sa_head = Head(C, C, cfg.block_size, 0.0, g)  # one head, size n_embd
        elif cfg.model in ("multi-head", "feed-forward"):
            self.sa_heads = MultiHeadAttention(cfg.n_head, C // cfg.n_head, C,
                                               cfg.block_size, 0.0, g, proj=False,
                                               batched=batched)
            if cfg.model == "feed-forward":  # think about what the heads gathered
                self.ffwd = FeedForward(C, 0.0, g, mult=1, proj=False,
                                        activation=cfg.activation)
        else:
            self.blocks = Sequential([Block(cfg, g) for _ in range(cfg.n_layer)])
            self.ln_f = LayerNorm(C) if cfg.model != "residual" else Identity()
        if cfg.init_from == "gpt2":  # GPT-2 reuses the token embeddings as lm_head
            self.lm_head = TiedLinear(self.token_embedding_table)
        else:
            self.lm_head = Linear(C, vocab_size, generator=g)
        if cfg.model == "gpt":  # gpt.py's initialization (in the script, not in the video)
            self.apply(lambda m: self._init_weights(m, g))

    @staticmethod
    def _init_weights(module, g):
        """Every Linear and Embedding weight drawn again from N(0, 0.02), biases zero:
        small weights start the deep model near 'every token equally likely'."""
        if isinstance(module, Linear):
            fan_in, fan_out = module.weight.shape
            module.weight.data = np.ascontiguousarray(normal_init((fan_out, fan_in), 0.02,
                                                                  g).T)
            if module.bias is not None:
                module.bias.data = np.zeros_like(module.bias.data)
        elif isinstance(module, Embedding):
            module.weight.data = normal_init(module.weight.shape, 0.02, g)

    def forward(self, idx, targets=None):
        B, T = idx.shape
        t0 = self.cached  # idx's first position: > 0 when KV caches hold the ones before
        tok_emb = self.token_embedding_table(idx)                  # (B, T, C)
        pos_emb = self.position_embedding_table(np.arange(t0, t0 + T))  # (T, C)
        x = tok_emb + pos_emb                                      # (B, T, C)
        if hasattr(self, "sa_head"):
            x = self.sa_head(x)                                    # (B, T, C)
        elif hasattr(self, "sa_heads"):
            x = self.sa_heads(x)                                   # (B, T, C)
            if hasattr(self, "ffwd"):
                x = self.ffwd(x)                                   # (B, T, C)
        else:
            x = self.ln_f(self.blocks(x))                          # (B, T, C)
        logits = self.lm_head(x)                                   # (B, T, vocab_size)
        if targets is None:
            return logits, None
        B, T, V = logits.shape
        loss = cross_entropy(logits.view(B * T, V), targets.reshape(B * T))
        return logits, loss

    def use_kv_cache(self, on):
        """Give every attention module an empty KVCache (on), or none (off): each Head
        its own, or, with --attention batched, each layer one for all its heads."""
        def give(m):
            if isinstance(m, (Head, MultiHeadAttention)):
                m.cache = KVCache(self.block_size) if on else None
        self.apply(give)
        self.cached = 0

    def attention_maps(self, idx):
        """Per layer, each head's (T, T) attention weights on the passage idx (1, T)."""
        def keep(on):
            return lambda m: setattr(m, "keep_att", on) if isinstance(
                m, (Head, MultiHeadAttention)) else None
        self.apply(keep(True))
        with no_grad():
            self(idx)
        self.apply(keep(False))
        if hasattr(self, "sa_head"):
            return [[self.sa_head.att[0]]]
        if hasattr(self, "sa_heads"):
            return [self.sa_heads.attention_maps()]
        return [block.sa.attention_maps() for block in self.blocks.layers]


class NoDraws(rng.Generator):
    """Stands in for the generator while building a model whose weights all come from a
    file next (GPT-2's, or a checkpoint's): every weight starts at zero, since drawing
    numbers only to replace them takes time (half a minute for GPT-2's 124M)."""

    def uniform(self, size, low=0.0, high=1.0):
        return np.zeros(size, dtype=np.float32)

    def normal(self, size, mean=0.0, std=1.0):
        return np.zeros(size, dtype=np.float32)


def build_model(cfg, vocab_size, generator, draw=True):
    """The model cfg describes, its weights drawn from `generator`; with draw=False, all
    zeros, to be loaded (dropout draws from `generator` either way)."""
    init = generator if draw else NoDraws()
    if cfg.model == "bigram":
        return BigramLanguageModel(vocab_size, init)
    model = GPTLanguageModel(cfg, vocab_size, init)
    model.apply(lambda m: setattr(m, "generator", generator) if isinstance(m, Dropout)
                else None)
    return model


# %% Model: GPT-2's weights
# OpenAI's GPT-2 is this GPT, larger: 12 to 48 blocks, GELU (tanh approximation),
# LayerNorm eps 1e-5, 1,024 learned positions, biases in every Linear, including the
# queries, keys and values, and lm_head tied to the token embedding (--init-from gpt2
# builds those). Its published weights (Hugging Face's model.safetensors) map one to one
# onto our modules. GPT-2 computes the q, k, v of all heads with ONE (C, 3C) matrix,
# c_attn: our heads' matrices are its column blocks. Its Linears (Conv1D) store their
# weights (in, out), as our Linear does: none needs a transpose (nanoGPT, whose Linear is
# torch's (out, in), transposes these four).
GPT2_HEAD_SIZE = 64  # in every GPT-2: n_head = n_embd / 64
GPT2_SIZES = {(12, 768): "124M", (24, 1024): "355M", (36, 1280): "774M",
              (48, 1600): "1.5B"}


def gpt2_names(model):
    """{GPT-2's name of a tensor: [our tensors that hold it, side by side on its last
    axis]}; lm_head is not listed (it is wte)."""
    names = {"wte.weight": [model.token_embedding_table.weight],
             "wpe.weight": [model.position_embedding_table.weight]}
    for i, block in enumerate(model.blocks.layers):
        heads, (fc, _, proj, _) = block.sa.heads, block.ffwd.net.layers
        qkv = [h.query for h in heads] + [h.key for h in heads] + [h.value for h in heads]
        for gpt2, ours in (("ln_1", block.ln1), ("attn.c_proj", block.sa.proj),
                           ("ln_2", block.ln2), ("mlp.c_fc", fc), ("mlp.c_proj", proj)):
            names[f"h.{i}.{gpt2}.weight"] = [ours.weight]
            names[f"h.{i}.{gpt2}.bias"] = [ours.bias]
        names[f"h.{i}.attn.c_attn.weight"] = [m.weight for m in qkv]  # (C, 3C)
        names[f"h.{i}.attn.c_attn.bias"] = [m.bias for m in qkv]      # (3C,)
    names["ln_f.weight"], names["ln_f.bias"] = [model.ln_f.weight], [model.ln_f.bias]
    return names


def read_gpt2(cfg, given):
    """(cfg sized like the GPT-2 in --weights, its tensors by GPT-2 name). The sizes follow
    from the shapes: vocabulary and n_embd from wte, the context from wpe, n_layer from the
    h.N blocks, n_head = n_embd / 64 unless --n-head is given. Keys may start with
    'transformer.'; the attention-mask buffers (attn.bias) are skipped."""
    cli.check(cfg.weights, "--init-from gpt2 needs --weights PATH: the model.safetensors "
                           "file of gpt2 (07_gpt/README.md says where to get it)")
    source = f"{cfg.weights}"
    tensors = {}
    for name, array in safetensors.load(cfg.weights).items():
        name = name.removeprefix("transformer.")
        if not name.endswith((".attn.bias", ".attn.masked_bias")):
            tensors[name] = array
    wte, wpe = tensors.get("wte.weight"), tensors.get("wpe.weight")
    cli.check(wte is not None and wte.ndim == 2 and wpe is not None and wpe.ndim == 2,
              f"{source} is not a GPT-2: no 2-D wte.weight and wpe.weight")
    lm_head = tensors.pop("lm_head.weight", None)
    cli.check(lm_head is None or np.array_equal(lm_head, wte),
              f"{source}: lm_head.weight differs from wte.weight (GPT-2 ties them)")
    (vocab, n_embd), n_positions = wte.shape, wpe.shape[0]
    cli.check(vocab == bpe.gpt2().vocab_size, f"{source} has {vocab:,} tokens; GPT-2's "
              f"tokenizer has {bpe.gpt2().vocab_size:,}")
    n_layer = len({name.split(".")[1] for name in tensors if name.startswith("h.")})
    n_head = cfg.n_head if "n_head" in given else max(1, n_embd // GPT2_HEAD_SIZE)
    block_size = cfg.block_size if "block_size" in given or not cfg.sample else n_positions
    cli.check(n_layer >= 1 and n_embd % n_head == 0, f"{source}: {n_layer} layers and "
              f"n_embd {n_embd} do not make a GPT-2 with {n_head} heads")
    cli.check(block_size <= n_positions, f"--block-size {block_size} is beyond GPT-2's "
                                         f"context of {n_positions} positions")
    cfg = replace(cfg, n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=block_size)
    cli.check_config(cfg)
    return cfg, tensors


def load_gpt2(cfg, tensors, generator):
    """Our GPT with GPT-2's weights: each tensor checked for its shape, then put in place
    (safetensors.load's arrays are writable copies: fine-tuning changes them)."""
    model = build_model(cfg, bpe.gpt2().vocab_size, generator, draw=False)
    names = gpt2_names(model)
    missing = [name for name in names if name not in tensors]
    extra = [name for name in tensors if name not in names]
    if missing or extra:
        raise cli.UserError(f"{cfg.weights} is not GPT-2's layout: " + (
            f"no {missing[0]}" if missing else f"unexpected {extra[0]}") +
            f" ({len(missing)} missing, {len(extra)} unexpected)")
    for name, ours in names.items():
        array = tensors[name]
        if name == "wpe.weight":
            array = array[:cfg.block_size]  # a shorter context keeps the first positions
        want = ours[0].shape[:-1] + (sum(p.shape[-1] for p in ours),)
        cli.check(array.shape == want, f"{cfg.weights}: {name} has shape "
                  f"{list(array.shape)}; a GPT-2 with these sizes needs {list(want)}")
        for p, part in zip(ours, np.split(array, len(ours), axis=-1)):
            p.data = np.ascontiguousarray(part, dtype=np.float32)  # q/k/v: copies
    return model


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


def estimate_loss(model, splits, cfg, g, max_logits=2**18):
    """The lecture's estimate_loss: the mean loss over eval_iters random batches of each
    split, without dropout and without recording a graph. The batches' offsets are drawn
    exactly as eval_iters get_batch calls would draw them; several batches go through
    the model at once (the same numbers, fewer, larger matmuls), as long as their logits
    stay below max_logits numbers (1 MB). Bigger chunks are slower again: once a forward
    pass's activations no longer fit in the processor's cache, every op waits on memory."""
    out = {}
    model.eval()
    T, B = cfg.block_size, cfg.batch_size
    per_chunk = max(1, max_logits // (B * T * model.vocab_size))  # batches per forward
    for split in ("train", "val"):
        d = splits[split]
        X, Y = get_batch(d, T, B * cfg.eval_iters, g)  # (eval_iters * B, T)
        losses = []
        with no_grad():
            for i in range(0, cfg.eval_iters, per_chunk):
                rows = slice(i * B, min(i + per_chunk, cfg.eval_iters) * B)
                logits, _ = model(X[rows])
                V = logits.shape[-1]
                for b in range(0, logits.shape[0], B):  # one loss per batch, as the lecture
                    losses.append(cross_entropy(logits[b:b + B].view(-1, V),
                                                Y[rows][b:b + B].reshape(-1)).item())
        out[split] = float(np.mean(losses))
    model.train()
    return out


def save_checkpoint(path, cfg, model, optimizer, g, state, tok_meta):
    """One file: the model, the optimizer's and the generator's state, the config and the
    progress (step, best val loss, history), so --resume continues exactly there."""
    arrays = {f"model.{name}": p.data for name, p in model.named_parameters()}
    arrays.update(optimizer.state())
    arrays["rng.state"] = g.get_state()
    meta = dict(tok_meta, config=asdict(cfg), step=state["step"],
                best_val=state["best_val"], history=state["history"])
    cli.save_checkpoint(path, arrays, meta)


def load_checkpoint(path):
    """(the saved Config, its metadata) of a checkpoint, every field checked: a damaged or
    foreign file is a one-line error. The arrays are read by load_state."""
    meta = cli.load_checkpoint_meta(path)
    source = f"checkpoint {path}"
    saved = cli.config_from_dict(Config, meta.get("config"), source)
    cli.field(meta, "step", int, source, min=0, max=saved.steps)
    cli.field(meta, "best_val", float, source, min=0)
    cli.field(meta, "tokens_per_char", float, source, min=0)
    history = cli.field(meta, "history", dict, source)
    for key in ("step", "loss", "lr", "eval"):
        values = cli.field(history, key, list, source)
        rows = values if key == "eval" else [[v] for v in values]
        if not all(isinstance(r, list) and len(r) == (3 if key == "eval" else 1) and all(
                isinstance(x, (int, float)) and not isinstance(x, bool) for x in r)
                for r in rows):
            raise cli.UserError(f"{source}: field 'history' is invalid; train again to "
                                f"rewrite it")
    if saved.tokenizer == "char":
        chars = cli.field(meta, "chars", str, source)
        cli.check(len(chars) == len(set(chars)) > 0,
                  f"{source}: field 'chars' is invalid; train again to rewrite it")
    elif saved.tokenizer == "bpe":  # a folder inside the checkpoint's, nowhere else
        folder = cli.field(meta, "tokenizer_dir", str, source)
        cli.check(folder == f"bpe{saved.vocab_size}",
                  f"{source}: field 'tokenizer_dir' is invalid; train again to rewrite it")
    return saved, meta


def load_state(path, model, optimizer, g):
    """Put a checkpoint's arrays into the model, the optimizer and the generator; only the
    arrays these need are read, each checked for its shape and kind first."""
    like = {f"model.{name}": p.data for name, p in model.named_parameters()}
    if optimizer is not None:
        like.update(optimizer.state(), **{"rng.state": g.get_state()})
    arrays = cli.load_checkpoint_arrays(path, like)
    for name, p in model.named_parameters():
        p.data = arrays[f"model.{name}"]
    if optimizer is not None:
        cli.check(bool((arrays["adam.t"] >= 0).all()), f"checkpoint {path}: the optimizer's "
                  f"step counts are negative; train again to rewrite it")
        optimizer.load_state(arrays)
        try:
            g.set_state(arrays["rng.state"])
        except (rng.RandomError, ValueError, TypeError, OverflowError):
            raise cli.UserError(f"checkpoint {path}: the generator's state is damaged; "
                                f"train again to rewrite it") from None


def train_step(model, optimizer, params, xb, yb, lr, grad_clip):
    """One step: forward, backward, clip, update. Returns the loss as a number; the
    graph (all the step's activations) is freed when the function returns."""
    logits, loss = model(xb, yb)                        # forward
    optimizer.zero_grad()
    loss.backward()                                     # backward
    if grad_clip:
        clip_grad_norm_(params, grad_clip)
    optimizer.step(lr)                                  # update
    return loss.item()


def train(cfg, model, optimizer, splits, g, out, tok_meta, state=None, quiet=False):
    """The training loop: every eval_interval steps (and after the last) estimate the
    losses and keep the best model on disk; every step, a batch, forward, backward,
    gradient clipping, AdamW update at the scheduled learning rate. Ctrl-C stops between
    two steps and saves a checkpoint that --resume continues exactly from."""
    say = (lambda *a, **k: None) if quiet else print
    state = state or dict(step=0, best_val=float("inf"),
                          history=dict(step=[], loss=[], lr=[], eval=[]))
    history, start = state["history"], state["step"]
    params = model.parameters()
    path = Path(out) / "ckpt.npz"
    progress = cli.Progress(cfg.steps - start, every=max(1, cfg.eval_interval // 5),
                            quiet=quiet)
    step_seconds, saved = 0.0, None
    with cli.deferred_interrupt() as stop:
        for it in range(start, cfg.steps + 1):
            if stop.requested:  # Ctrl-C: save this very step, to resume from
                save_checkpoint(path, cfg, model, optimizer, g, dict(state, step=it),
                                tok_meta)
                say(f"\nstopped at step {it}: saved in {path}; --resume continues")
                raise KeyboardInterrupt
            if (it % cfg.eval_interval == 0 or it == cfg.steps) and \
                    not (history["eval"] and history["eval"][-1][0] == it):  # not twice
                losses = estimate_loss(model, splits, cfg, g)
                bpc = losses["val"] * tok_meta["tokens_per_char"] / math.log(2)
                history["eval"].append([it, losses["train"], losses["val"]])
                say(f"step {it}: train loss {losses['train']:.4f}, val loss "
                    f"{losses['val']:.4f} ({bpc:.3f} bits per character)", flush=True)
                if losses["val"] < state["best_val"]:
                    state["best_val"] = losses["val"]
                    if it > 0:  # keep the best model so far (and all it needs to resume)
                        save_checkpoint(path, cfg, model, optimizer, g,
                                        dict(state, step=it), tok_meta)
                        saved = it
            if it == cfg.steps:
                break
            t0 = time.perf_counter()
            lr = learning_rate(cfg, it)
            xb, yb = get_batch(splits["train"], cfg.block_size, cfg.batch_size, g)
            loss = train_step(model, optimizer, params, xb, yb, lr, cfg.grad_clip)
            step_seconds += time.perf_counter() - t0
            history["step"].append(it)
            history["loss"].append(loss)
            history["lr"].append(lr)
            progress.update(it - start, loss, lr, elapsed=step_seconds)
    steps_run = cfg.steps - start
    return dict(state, history=history, saved=saved,
                ms_per_step=1000 * step_seconds / steps_run if steps_run else float("nan"),
                seconds=progress.elapsed)


# %% Sampling
def printer(tok, pieces):
    """A generate() callback that prints each token's text as soon as it is drawn (a
    byte-level token can end inside a character: those bytes wait for the rest)."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def on_token(i):
        text = decoder.decode(tok.decode_bytes([i]))
        pieces.append(text)
        sys.stdout.write(text)
        sys.stdout.flush()
    return on_token


def encode_prompt(tok, prompt):
    """The prompt's token ids; an empty prompt is a newline (token 0 of the lecture's
    vocabulary: its torch.zeros((1, 1)))."""
    return list(tok.encode(prompt or "\n"))  # characters outside the vocabulary: error


def sample(model, tok, cfg, g, ids, stream=True):
    """Continue the token ids by max_new_tokens tokens; returns the generated text."""
    idx = np.array([ids], dtype=np.int64)   # (1, T)
    pieces = []
    model.eval()
    model.generate(idx, cfg.max_new_tokens, g, cfg.temperature, cfg.top_k,
                   printer(tok, pieces) if stream else None, cfg.kv_cache)
    model.train()
    return "".join(pieces)


def tokenizer_of(saved, meta, out):
    """The tokenizer a checkpoint was trained with (load_checkpoint checked its fields)."""
    if saved.tokenizer == "char":
        return CharTokenizer(meta["chars"])
    if saved.tokenizer == "gpt2":
        return bpe.gpt2()
    return bpe.Tokenizer.load(Path(out) / meta["tokenizer_dir"])


def sample_main(cfg, given):
    """--sample: load the checkpoint in --out (or, with --init-from gpt2, GPT-2's weights)
    and stream a sample."""
    if cfg.init_from == "gpt2":
        tok = bpe.gpt2()
        ids = encode_prompt(tok, cfg.prompt)
        saved, tensors = read_gpt2(cfg, given)
        check_size(replace(saved, batch_size=1), tok.vocab_size)
        model = load_gpt2(saved, tensors, rng.Generator(saved.seed))
        size = GPT2_SIZES.get((saved.n_layer, saved.n_embd), "of a custom size")
        about = (f"{cfg.weights}: GPT-2 {size}, {saved.n_layer} layers, {saved.n_head} "
                 f"heads, n_embd {saved.n_embd}, context {saved.block_size}")
    else:
        path = Path(cfg.out) / "ckpt.npz"
        saved, meta = load_checkpoint(path)
        tok = tokenizer_of(saved, meta, cfg.out)
        ids = encode_prompt(tok, cfg.prompt)
        check_size(saved, tok.vocab_size)
        model = build_model(saved, tok.vocab_size, rng.Generator(saved.seed), draw=False)
        load_state(path, model, None, None)
        about = (f"{path}: {saved.model} model, step {meta['step']}, val loss "
                 f"{meta['best_val']:.4f}")
    print(f"[{about}; temperature {cfg.temperature}, top-k {cfg.top_k or 'off'}, "
          f"seed {cfg.seed}{', KV cache' if cfg.kv_cache else ''}]", flush=True)
    g = rng.Generator(cfg.seed)
    sys.stdout.write(cfg.prompt)
    start = time.perf_counter()
    text = sample(model, tok, replace(saved, max_new_tokens=cfg.max_new_tokens,
                                      temperature=cfg.temperature, top_k=cfg.top_k,
                                      kv_cache=cfg.kv_cache), g, ids)
    seconds = time.perf_counter() - start
    print(f"\n[{cfg.max_new_tokens} tokens in {seconds:.1f}s: "
          f"{cfg.max_new_tokens / max(seconds, 1e-9):.0f} tokens/s]")
    return dict(config=asdict(saved), text=cfg.prompt + text, generated=text,
                tokens_per_second=cfg.max_new_tokens / max(seconds, 1e-9))


# %% Figures
def plot_losses(history, path, title):
    """Training loss of every step (thin) and the estimated train / val losses."""
    plt = cli.pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.8), layout="constrained")
    ax.plot(history["step"], history["loss"], lw=0.4, alpha=0.4, color="C0",
            label="training batch")
    if history["eval"]:
        steps, tr, va = zip(*history["eval"])
        ax.plot(steps, tr, "o-", color="C0", label="train (estimated)")
        ax.plot(steps, va, "o-", color="C1", label="val (estimated)")
    ax.set_xlabel("training step", fontsize=11)
    ax.set_ylabel("loss (nats per token)", fontsize=11)
    ax.set_title(f"Training loss: {title}", fontsize=12)
    ax.tick_params(labelsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=10)
    cli.save_figure(fig, path)


def plot_lr(cfg, path):
    """The learning rate of every step: linear warmup, then cosine decay or constant."""
    plt = cli.pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.8), layout="constrained")
    steps = np.arange(max(cfg.steps, 1))
    ax.plot(steps, [learning_rate(cfg, int(i)) for i in steps], lw=2)
    ax.set_xlabel("training step", fontsize=11)
    ax.set_ylabel("learning rate", fontsize=11)
    ax.set_title("Learning-rate schedule: " + (
        f"{cfg.warmup_steps} warmup steps,\nthen cosine decay from {cfg.lr:g} to "
        f"{cfg.min_lr:g}" if cfg.schedule == "cosine" else
        f"{cfg.warmup_steps} warmup steps,\nthen constant {cfg.lr:g}"), fontsize=12)
    ax.tick_params(labelsize=10)
    ax.yaxis.get_offset_text().set_fontsize(10)
    ax.grid(alpha=0.3)
    cli.save_figure(fig, path)


def token_labels(tok, ids):
    """Each token as text for a tick label, its whitespace made visible: a newline as
    '⏎', a space as '␣' (tok.decode of each id, so it works for any tokenizer)."""
    return [tok.decode([int(i)]).replace("\n", "⏎").replace(" ", "␣").replace("\t", "⇥")
            for i in ids]


def plot_attention(model, tok, ids, path, layer=-1):
    """One layer's heads (the last by default; `layer` counts from 0, or from the end
    when negative), each head's attention weights on a short passage: row t is what token
    t attends to among tokens 0..t. The cells above the diagonal are grey: no head can
    look ahead. Sized for half a 16:9 slide: the tick labels stay >= 9 pt when the figure
    is scaled to half a 13.33 x 7.5 in slide's width."""
    model.eval()
    maps = model.attention_maps(np.array([ids], dtype=np.int64))  # [layer][head] (T, T)
    model.train()
    n_layers = len(maps)
    li = layer % n_layers if -n_layers <= layer < n_layers else n_layers - 1
    heads = maps[li]
    n = len(heads)
    long = max(len(s) for s in token_labels(tok, ids)) > 1  # not chars: vertical x labels
    # fewer tokens when there are more panels (or longer labels): every label readable
    T = min(len(ids), 24 if n == 1 else 16 if n <= 4 and not long else 12)
    ids = list(ids[:T])
    labels = token_labels(tok, ids)
    cols = 1 if n == 1 else 2  # 1 | 1x2 | 2x2 | 3x2: near-square, as half a slide is
    rows = -(-n // cols)
    font = 11  # tick labels, in points at the figure's own size
    side = max(T * font * 1.1 / 72, 2.0)  # panel side in inches: one label per row
    margin = 0.12 * font / 11 * max(len(s) for s in labels) + 0.9
    fig_w = cols * side + margin + 1.3
    fig_h = rows * side + (margin if long else 0.9) + 0.3 * rows + 0.6
    plt = cli.pyplot()
    fig, axes = plt.subplots(rows, cols, figsize=(fig_w, fig_h), squeeze=False,
                             layout="constrained")
    cmap = plt.get_cmap("viridis").with_extremes(bad="0.9")  # grey: the masked future
    future = np.triu(np.ones((T, T), dtype=bool), k=1)
    im = None
    for k, ax in enumerate(axes.flat):
        if k >= n:
            ax.axis("off")
            continue
        r, c = divmod(k, cols)
        att = np.ma.masked_array(np.asarray(heads[k])[:T, :T], mask=future)
        im = ax.imshow(att, cmap=cmap, vmin=0, vmax=1)
        ax.set_title(f"head {k + 1}" if n > 1 else "the single head", fontsize=font + 1)
        ax.set_xticks(range(T))
        ax.set_yticks(range(T))
        ax.tick_params(length=2, pad=2)
        if c == 0:
            ax.set_yticklabels(labels, fontsize=font)
        else:
            ax.set_yticklabels([])
        if k + cols >= n:  # the lowest panel of its column
            ax.set_xticklabels(labels, fontsize=font, rotation=90 if long else 0)
        else:
            ax.set_xticklabels([])
    fig.supxlabel("attends to (key)", fontsize=font + 1)
    fig.supylabel("token (query)", fontsize=font + 1)
    cbar = fig.colorbar(im, ax=axes, shrink=0.8 if rows > 1 else 0.9, aspect=25, pad=0.02)
    cbar.set_label("attention weight", fontsize=font + 1)
    cbar.ax.tick_params(labelsize=font)
    where = f"layer {li + 1} of {n_layers}, " if n_layers > 1 else ""
    fig.suptitle(f"Attention weights ({where}{n} head{'s' if n > 1 else ''}) on the "
                 f"start of a speech", fontsize=font + 3)
    cli.save_figure(fig, path)


def attention_passage(val_data, tok, block_size, length=24):
    """A short passage for the attention figure: the first `length` tokens (at most
    block_size) of the validation text after its first blank line, the start of a
    speech ('GREMIO:\\nGood morrow, nei...' in tiny Shakespeare)."""
    length = min(length, block_size)
    text = tok.decode(val_data[:4 * length + 200].tolist())
    start = text.find("\n\n") + 2 if "\n\n" in text else 0
    ids = list(tok.encode(text[start:]))[:length]
    return ids if len(ids) == length else val_data[:length].tolist()


# %% Main
def show_attention_trick(seed):
    """The lecture's toy example: x = randn(4, 8, 2); the loop, the matmul and the masked
    softmax give the same averages of the past."""
    x = rng.randn(4, 8, 2, generator=rng.Generator(seed))  # (B, T, C)
    a, b, c = average_loop(x), average_matmul(x), average_softmax(x)
    same = bool(np.allclose(a, b, atol=1e-6) and np.allclose(a, c, atol=1e-6))
    print(f"self-attention's trick: averaging the past with loops, with a lower-triangular "
          f"matmul and with a masked softmax agree: {same}")
    return same


def show_untrained_bigram(train_data, tok, seed):
    """The lecture notebook's first bigram model: a 4 x 8 batch drawn after
    torch.manual_seed(1337), a model made after seeding 1337 again, its loss (the
    notebook's 4.8786; a uniform guess would give -ln(1/65) = 4.17) and 100 characters it
    samples before training (noise)."""
    xb, yb = get_batch(train_data, 8, 4, rng.Generator(seed))
    g = rng.Generator(seed)
    m = BigramLanguageModel(tok.vocab_size, g)
    _, loss = m(xb, yb)
    idx = m.generate(np.zeros((1, 1), dtype=np.int64), 100, g)
    text = tok.decode(idx[0].tolist())
    print(f"untrained bigram model: loss {loss.item():.4f} on a first batch of 4 x 8; "
          f"it samples {text[:40]!r}...")
    return loss.item(), text


def resume_config(cfg, given):
    """The checkpoint's config, with the training flags given now (e.g. more --steps);
    the model and tokenizer cannot change."""
    path = Path(cfg.out) / "ckpt.npz"
    saved, meta = load_checkpoint(path)
    for name in ARCHITECTURE:
        if name in given and getattr(cfg, name) != getattr(saved, name):
            raise cli.UserError(f"{cli.flag(name)} cannot change when resuming (the "
                                f"checkpoint has {getattr(saved, name)})")
    keep = given - set(ARCHITECTURE) | {"resume", "out"}
    cfg = replace(saved, **{k: getattr(cfg, k) for k in keep})
    cli.check_config(cfg, flags=True)
    cli.check(cfg.steps > meta["step"], f"the checkpoint is at step {meta['step']}: give "
                                        f"--steps beyond it to train on")
    return cfg, meta


def check_size(cfg, vocab_size):
    """Refuse up front a model (with its gradients, AdamW's state and a batch's
    activations) that cannot fit in memory."""
    C, T, L = cfg.n_embd, cfg.block_size, cfg.n_layer
    params = 12 * L * C * C + (vocab_size + T) * C
    activations = cfg.batch_size * T * (20 * L * C + 3 * vocab_size + 4 * L * cfg.n_head * T)
    cli.check_fits(4 * params + activations, "this model")


def describe(cfg, n_params):
    """One line about the model."""
    if cfg.model == "bigram":
        shape = "a vocab_size x vocab_size table of next-token logits"
    elif cfg.model in ("single-head", "multi-head", "feed-forward"):
        heads = "one head" if cfg.model == "single-head" else f"{cfg.n_head} heads"
        shape = f"{heads}, n_embd {cfg.n_embd}, block size {cfg.block_size}"
    else:
        shape = (f"{cfg.n_layer} layers, {cfg.n_head} heads, n_embd {cfg.n_embd}, block "
                 f"size {cfg.block_size}, {cfg.activation}, dropout {cfg.dropout}")
    return f"{cfg.model} model ({shape}): {n_params:,} parameters ({n_params / 1e6} M)"


def main(argv=None) -> dict:
    cfg, given = cli.parse_config(Config, argv, __doc__, prog="07_gpt/train.py",
                                  presets=presets, with_given=True)
    cli.keep_freed_memory()  # big arrays every step: keep their memory for the next one
    if cfg.sample:
        return sample_main(cfg, given)
    meta = gpt2 = None
    if cfg.resume:
        cfg, meta = resume_config(cfg, given)
    elif cfg.init_from == "gpt2":
        cfg, gpt2 = read_gpt2(cfg, given)
    out = cli.out_dir(cfg.out)

    text = data.load_shakespeare()
    tok = get_tokenizer(cfg, text, text[:int(0.9 * len(text))], out)
    splits, chars = load_splits(tok, text)
    cli.check(cfg.block_size < len(splits["val"]),
              f"--block-size {cfg.block_size} is too large: the validation split has only "
              f"{len(splits['val']):,} tokens")
    prompt_ids = encode_prompt(tok, cfg.prompt)  # a bad prompt fails now, not at the end
    tok_meta = dict(tokens_per_char=len(splits["val"]) / chars["val"])
    if cfg.tokenizer == "char":
        tok_meta["chars"] = tok.chars
    elif cfg.tokenizer == "bpe":
        tok_meta["tokenizer_dir"] = f"bpe{cfg.vocab_size}"
    print(f"tiny Shakespeare: {len(text):,} characters; {cfg.tokenizer} tokenizer, "
          f"{tok.vocab_size:,} tokens; train {len(splits['train']):,} / val "
          f"{len(splits['val']):,} tokens ({tok_meta['tokens_per_char']:.3f} per "
          f"character)")

    result = {}
    if cfg.model == "bigram" and cfg.tokenizer == "char" and not cfg.resume:
        result["untrained_loss"], result["untrained_sample"] = show_untrained_bigram(
            splits["train"], tok, cfg.seed)
    elif cfg.model != "gpt":
        result["trick_equal"] = show_attention_trick(cfg.seed)

    g = rng.manual_seed(cfg.seed)  # torch.manual_seed: init, batches, dropout, sampling
    check_size(cfg, tok.vocab_size)
    if gpt2 is not None:
        model = load_gpt2(cfg, gpt2, g)
        print(f"GPT-2 from {cfg.weights}, fine-tuned on tiny Shakespeare")
    else:  # resuming: the checkpoint's weights replace the drawn ones
        model = build_model(cfg, tok.vocab_size, g, draw=not cfg.resume)
    n_params = sum(p.data.size for p in model.parameters())
    print(describe(cfg, n_params))
    optimizer = AdamW(model.named_parameters(), cfg.lr, betas=(0.9, cfg.beta2),
                      weight_decay=cfg.weight_decay, decay=cfg.decay)
    state = None
    if cfg.resume:
        load_state(Path(out) / "ckpt.npz", model, optimizer, g)
        state = dict(step=meta["step"], best_val=meta["best_val"], history=meta["history"])
        print(f"resuming at step {state['step']} (best val loss {state['best_val']:.4f})")
    if cfg.preset == "lecture":
        print("the lecture's full model takes about a day on a CPU (measured: 15.5 s per "
              "step and half an hour per loss estimate on one core; the lecture used a "
              "GPU). The progress line shows the time left; --eval-iters 20 shortens the "
              "estimates; Ctrl-C saves the step it is at, --resume continues")
    schedule = f"{cfg.warmup_steps} warmup steps, cosine decay to {cfg.min_lr:g}" \
        if cfg.schedule == "cosine" else "constant"
    decayed = "the matrices" if cfg.decay == "matrices" else "all parameters"
    print(f"training {cfg.steps:,} steps of {cfg.batch_size} x {cfg.block_size} tokens: "
          f"AdamW lr {cfg.lr:g} ({schedule}), betas (0.9, {cfg.beta2}), weight decay "
          f"{cfg.weight_decay:g} on {decayed}, gradient clipping {cfg.grad_clip or 'off'}; "
          f"losses from {cfg.eval_iters} batches per split")
    res = train(cfg, model, optimizer, splits, g, out, tok_meta, state)
    history = res["history"]
    last_step, train_loss, val_loss = history["eval"][-1]
    bpc = val_loss * tok_meta["tokens_per_char"] / math.log(2)
    ckpt = f"best checkpoint (step {res['saved']}) in {out / 'ckpt.npz'}" \
        if res["saved"] is not None else "no checkpoint written (val loss never improved)"
    print(f"after {last_step:,} steps: train loss {train_loss:.4f}, val loss "
          f"{val_loss:.4f} ({bpc:.3f} bits per character); {res['ms_per_step']:.1f} ms per "
          f"training step, {cli.fmt_duration(res['seconds'])} in all; {ckpt}")

    print(f"\n== Sample ({cfg.max_new_tokens} tokens)")
    sys.stdout.write(cfg.prompt)
    text_out = sample(model, tok, cfg, g, prompt_ids)  # the generator goes on, as in gpt.py
    print()
    files = [str(out / "ckpt.npz")] if res["saved"] is not None else []
    if cfg.plots:
        plot_losses(history, out / f"loss.{cfg.format}", f"{cfg.model} model, {cfg.tokenizer} tokens")
        plot_lr(cfg, out / f"lr.{cfg.format}")
        files += [str(out / f"loss.{cfg.format}"), str(out / f"lr.{cfg.format}")]
        if cfg.model != "bigram":
            passage = attention_passage(splits["val"], tok, cfg.block_size)
            plot_attention(model, tok, passage, out / f"attention.{cfg.format}")
            files.append(str(out / f"attention.{cfg.format}"))
    cli.write_text(out / "sample.txt", cfg.prompt + text_out + "\n")
    files.append(str(out / "sample.txt"))
    print(f"\nwrote {', '.join(files)}")
    return dict(result, config=asdict(cfg), n_params=n_params, evals=history["eval"],
                lossi=history["loss"], train=train_loss, val=val_loss, bpc=bpc,
                best_val=res["best_val"], saved_step=res["saved"],
                ms_per_step=res["ms_per_step"], seconds=res["seconds"], sample=text_out,
                files=files)


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


if __name__ == "__main__":
    cli.run(main)
