"""Stage 07: the GPT's new ops and layers, the lecture's numbers, and the command line."""

import math
import os

# One BLAS thread, as the stage itself uses: it only takes effect if this module is the
# first to import numpy, and on a busy 2-core machine a second thread makes these small
# matmuls many times slower.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from common import cli, rng  # noqa: E402
from conftest import ROOT, assert_one_line_error, load_stage, run_script  # noqa: E402
from gradcheck import gradcheck  # noqa: E402

stage = load_stage("07_gpt")
Tensor = stage.Tensor


def rand(*shape, seed=0, scale=1.0):
    return np.random.default_rng(seed).standard_normal(shape) * scale


def tiny(**overrides):
    """A small GPT config in the style of the command line's defaults."""
    values = dict(model="gpt", n_layer=2, n_head=2, n_embd=16, block_size=8, batch_size=4)
    values.update(overrides)
    return stage.Config(**values)


# -- the new ops, against finite differences in float64 --

@pytest.mark.parametrize("shapes", [((2, 3, 4), (4, 5)), ((2, 3, 4), (2, 4, 5)),
                                    ((2, 2, 3, 4), (2, 2, 4, 3)), ((3, 4), (4, 2))],
                         ids=["stack@matrix", "batched", "4-d", "2-d"])
def test_batched_matmul(shapes):
    a, b = shapes
    gradcheck(Tensor, lambda x, y: x @ y, rand(*a), rand(*b, seed=1))


def test_transpose_view_and_split():
    gradcheck(Tensor, lambda a: a.transpose(-2, -1) * 2.0, rand(2, 3, 4))
    gradcheck(Tensor, lambda a: a.view(2, 3, 2, 2).transpose(1, 2).reshape(2, 2, 6),
              rand(2, 3, 4))
    gradcheck(Tensor, lambda a: (lambda p: p[0] * 2.0 + p[1] * p[2])(a.split(2, dim=2)),
              rand(2, 3, 6))
    pieces = Tensor(rand(3, 5)).split(2, dim=1)
    assert [p.shape for p in pieces] == [(3, 2), (3, 2), (3, 1)]


def test_linear():
    gradcheck(Tensor, lambda x, w, b: stage.linear(x, w, b), rand(2, 3, 4),
              rand(4, 5, seed=1), rand(5, seed=2))
    gradcheck(Tensor, lambda x, w: stage.linear(x, w), rand(3, 4), rand(4, 2, seed=1))


def test_backward_keeps_only_the_parameters_gradients():
    """As torch: after backward() the parameters have .grad, the logits do not (unless
    retain_grad()), and keeping them changes no gradient."""
    model = float64_model(tiny())
    X = np.random.default_rng(1).integers(0, 65, (2, 8))
    grads = []
    for keep in (True, False):
        model.zero_grad()
        logits, loss = model(X, X)
        if keep:
            logits.retain_grad()
        loss.backward()
        grads.append([p.grad for p in model.parameters()])
        assert (logits.grad is None) == (not keep)
    for a, b in zip(*grads):
        np.testing.assert_array_equal(a, b)


def test_cat():
    gradcheck(Tensor, lambda a, b: stage.cat([a, b, a], dim=-1) * 1.5,
              rand(2, 3, 2), rand(2, 3, 4, seed=1))
    gradcheck(Tensor, lambda a, b: stage.cat([a, b], dim=0), rand(2, 3), rand(1, 3, seed=1))


def test_masked_fill_and_softmax():
    mask = np.triu(np.ones((4, 4), dtype=bool), 1)
    gradcheck(Tensor, lambda a: a.masked_fill(mask, 0.5) * 3.0, rand(2, 4, 4))
    gradcheck(Tensor, lambda a: a.softmax(dim=-1), rand(2, 4, 5))
    gradcheck(Tensor, lambda a: a.softmax(dim=0), rand(3, 4))
    gradcheck(Tensor, lambda a: a.masked_fill(mask, float("-inf")).softmax(-1), rand(4, 4))
    s = Tensor(np.array([[1000.0, 0.0, -1000.0]])).softmax(-1).data  # no overflow
    np.testing.assert_allclose(s, [[1.0, 0.0, 0.0]], atol=1e-12)


@pytest.mark.parametrize("op", ["relu", "gelu"])
def test_activations(op):
    x = rand(4, 5)
    x[np.abs(x) < 1e-3] = 0.5  # keep relu's kink away from the finite differences
    gradcheck(Tensor, lambda a: getattr(a, op)(), x)


def test_gelu_is_the_tanh_approximation():
    x = np.array([-3.0, -1.0, 0.0, 0.5, 2.0])
    want = 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    np.testing.assert_allclose(Tensor(x).gelu().data, want, rtol=1e-12)
    erf_gelu = np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x])
    np.testing.assert_allclose(Tensor(x).gelu().data, erf_gelu, atol=1e-3)


def test_dropout():
    gradcheck(Tensor, lambda a: a.dropout(0.3, rng.Generator(0)), rand(4, 6))
    y = Tensor(np.ones((200, 200))).dropout(0.2, rng.Generator(1)).data
    assert set(np.unique(y)) == {0.0, 1.25}           # kept values scaled by 1 / (1 - p)
    assert abs((y == 0).mean() - 0.2) < 0.01 and abs(y.mean() - 1) < 0.02
    layer = stage.Dropout(0.5, rng.Generator(0))
    x = Tensor(np.ones(10))
    assert layer.eval()(x) is x and layer.train()(x) is not x  # only when training


@pytest.mark.parametrize("bias", [True, False])
def test_layer_norm(bias):
    arrays = [rand(2, 3, 5, scale=3.0), 1 + rand(5, seed=1)] + [rand(5, seed=2)] * bias
    gradcheck(Tensor, lambda x, w, *b: stage.layer_norm(x, w, *b, *[None] * (not bias)),
              *arrays)
    x = Tensor(rand(4, 7) * 5 + 3)
    y = stage.layer_norm(x, Tensor(np.ones(7)), Tensor(np.zeros(7)))
    np.testing.assert_allclose(y.data.mean(-1), 0, atol=1e-12)
    np.testing.assert_allclose(y.data.var(-1), 1, atol=1e-5)  # eps = 1e-5 in the variance


@pytest.mark.parametrize("dropout, scale", [(0.0, 1.0), (0.25, 1.0), (0.0, 12.0)])
def test_fused_attention_gradient(dropout, scale):
    """scale 12: affinities in the hundreds, where the softmax must subtract row maxima."""
    def f(q, k, v):
        return stage.scaled_dot_product_attention(q, k, v, dropout, rng.Generator(3))[0]
    gradcheck(Tensor, f, rand(2, 2, 5, 3, scale=scale),
              rand(2, 2, 5, 3, seed=1, scale=scale), rand(2, 2, 5, 3, seed=2))
    q = Tensor(rand(1, 1, 4, 3, scale=scale))
    k = Tensor(rand(1, 1, 4, 3, seed=1, scale=scale))
    _, att = stage.scaled_dot_product_attention(q, k, Tensor(rand(1, 1, 4, 3)))
    s = q.data[0, 0] @ k.data[0, 0].T / math.sqrt(3) + np.triu(np.full((4, 4), -np.inf), 1)
    want = np.exp(s - s.max(-1, keepdims=True))
    np.testing.assert_allclose(att[0, 0], want / want.sum(-1, keepdims=True), atol=1e-12)


def test_cross_entropy_gradient():
    Y = np.array([2, 0, 4, 4, 1, 3])
    gradcheck(Tensor, lambda logits: stage.cross_entropy(logits.view(6, 5), Y),
              rand(2, 3, 5, scale=4.0))


def test_embedding_gradient_with_repeated_tokens():
    idx = np.array([[0, 3, 3], [1, 0, 3]])
    gradcheck(Tensor, lambda W: W[idx] * 2.0, rand(5, 4))


# -- the lecture's equivalences --

def test_averaging_trick_three_ways():
    x = rng.randn(4, 8, 2, generator=rng.Generator(1337)).astype(np.float64)
    a = stage.average_loop(x)
    np.testing.assert_allclose(stage.average_matmul(x), a, atol=1e-12)
    np.testing.assert_allclose(stage.average_softmax(x), a, atol=1e-12)
    np.testing.assert_allclose(a[0, 1], x[0, :2].mean(0))
    assert stage.show_attention_trick(1337) is True


def test_head_scales_by_head_size():
    """Scaling by 1/sqrt(n_embd) (or not at all) instead of 1/sqrt(head_size) fails this."""
    g = rng.Generator(0)
    head = stage.Head(n_embd=32, head_size=8, block_size=6, generator=g)
    head.keep_att = True
    x = rand(2, 6, 32)
    out = head(Tensor(x)).data
    k, q, v = (x @ lin.weight.data for lin in (head.key, head.query, head.value))
    wei = q @ k.transpose(0, 2, 1) / math.sqrt(8)
    wei[:, np.triu(np.ones((6, 6), dtype=bool), 1)] = -np.inf
    wei = np.exp(wei - wei.max(-1, keepdims=True))
    wei /= wei.sum(-1, keepdims=True)
    np.testing.assert_allclose(out, wei @ v, rtol=1e-5, atol=1e-6)
    assert np.allclose(head.att[:, 0, 1:], 0)  # the first token sees only itself


def float64_model(cfg, seed=0):
    model = stage.build_model(cfg, 65, rng.Generator(seed))
    for p in model.parameters():
        p.data = p.data.astype(np.float64) + 0.05 * rand(*p.data.shape, seed=p.data.size)
    return model


def test_batched_heads_equal_separate_heads():
    cfg = tiny(dropout=0.0)
    model = float64_model(cfg)
    X = np.random.default_rng(1).integers(0, 65, (3, 8))
    Y = np.random.default_rng(2).integers(0, 65, (3, 8))
    results = []
    for mode in (True, False):
        for block in model.blocks.layers:
            block.sa.batched = mode
        model.zero_grad()
        logits, loss = model(X, Y)
        loss.backward()
        results.append((logits.data, [p.grad for p in model.parameters()],
                        model.attention_maps(X[:1])))
    np.testing.assert_allclose(results[0][0], results[1][0], atol=1e-12)
    for a, b in zip(results[0][1], results[1][1]):
        np.testing.assert_allclose(a, b, atol=1e-12)
    np.testing.assert_allclose(results[0][2], results[1][2], atol=1e-12)


@pytest.mark.parametrize("model_name", ["single-head", "feed-forward", "layernorm", "gpt"])
def test_whole_model_gradient(model_name):
    """Backprop through the whole model against finite differences (float64), on a few
    elements of every parameter."""
    cfg = tiny(model=model_name, n_layer=1, block_size=4, activation="gelu")
    model = float64_model(cfg)
    X = np.random.default_rng(1).integers(0, 65, (2, 4))
    Y = np.random.default_rng(2).integers(0, 65, (2, 4))
    _, loss = model(X, Y)
    model.zero_grad()
    loss.backward()
    pick = np.random.default_rng(3)
    for name, p in model.named_parameters():
        for _ in range(3):
            i = tuple(pick.integers(0, n) for n in p.data.shape)
            if "token_embedding" in name:
                i = (int(X[0, 0]),) + i[1:]  # a row that is used
            old = p.data[i]
            p.data[i] = old + 1e-6
            plus = model(X, Y)[1].item()
            p.data[i] = old - 1e-6
            minus = model(X, Y)[1].item()
            p.data[i] = old
            numeric = (plus - minus) / 2e-6
            assert p.grad[i] == pytest.approx(numeric, rel=1e-5, abs=1e-8), name


def test_init_and_parameter_counts(monkeypatch):
    cfg = stage.Config()
    model = stage.build_model(cfg, 65, rng.Generator(1337))
    assert sum(p.data.size for p in model.parameters()) == 816_705
    w = model.blocks.layers[0].ffwd.net.layers[0].weight.data
    assert w.shape == (128, 512) and abs(w.std() - 0.02) < 0.001  # gpt.py's N(0, 0.02)
    assert not model.lm_head.bias.data.any()
    counts = {}
    for name in stage.MODELS[:-1]:
        c = parsed("--model", name)
        counts[name] = sum(p.data.size for p in stage.build_model(c, 65, rng.Generator(0))
                           .parameters())
    assert counts == {"bigram": 4225, "single-head": 7553, "multi-head": 7553,
                      "feed-forward": 8609, "residual": 41921, "layernorm": 42369}
    # the lecture's model: only the shapes matter here, so skip the 10.8M random draws
    monkeypatch.setattr(rng, "uniform", lambda size, low, high, generator=None:
                        np.zeros(size, np.float32))
    monkeypatch.setattr(rng, "normal", lambda size, mean, std, generator=None:
                        np.zeros(size, np.float32))
    big = parsed("--preset", "lecture")
    assert sum(p.data.size for p in stage.build_model(big, 65, None).parameters()) \
        == 10_788_929


def test_linear_init_is_torch_default():
    lin = stage.Linear(100, 7, generator=rng.Generator(0))
    assert lin.weight.shape == (100, 7)
    assert 0.09 < np.abs(lin.weight.data).max() <= np.float32(0.1)
    want = rng.uniform((7, 100), -0.1, 0.1, generator=rng.Generator(0)).T  # torch's layout
    np.testing.assert_array_equal(lin.weight.data, want)


# -- training machinery --

def test_adamw_follows_torch_algorithm():
    """Three steps of AdamW, against the algorithm written out in float64."""
    p = Tensor(np.array([1.0, -2.0, 0.5]), requires_grad=True)
    b = Tensor(np.array([[0.3]]), requires_grad=True)
    opt = stage.AdamW([("p", p), ("b", b)], lr=0.1, betas=(0.9, 0.99), weight_decay=0.1,
                      decay="matrices")
    x, m, v = np.array([1.0, -2.0, 0.5]), 0.0, 0.0
    xb, mb, vb = 0.3, 0.0, 0.0
    for t, grad in enumerate([np.array([0.1, 0.2, -0.3]), np.array([1.0, 0.0, 2.0]),
                              np.array([-0.5, 0.5, 0.5])], start=1):
        lr = 0.1 / t
        p.grad, b.grad = grad.copy(), np.array([[1.0]])
        opt.step(lr)
        # the 1-D p has no weight decay
        m, v = 0.9 * m + 0.1 * grad, 0.99 * v + 0.01 * grad**2
        x = x - lr * (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.99**t)) + 1e-8)
        np.testing.assert_allclose(p.data, x, rtol=1e-12)
        # the matrix b has: decoupled, before the Adam step
        mb, vb = 0.9 * mb + 0.1, 0.99 * vb + 0.01
        xb = xb * (1 - lr * 0.1) - lr * (mb / (1 - 0.9**t)) / (
            np.sqrt(vb / (1 - 0.99**t)) + 1e-8)
        assert b.data[0, 0] == pytest.approx(xb, rel=1e-12)


def test_gradient_clipping():
    a, b = Tensor(np.zeros(2), requires_grad=True), Tensor(np.zeros(1), requires_grad=True)
    a.grad, b.grad = np.array([3.0, 0.0]), np.array([4.0])
    assert stage.clip_grad_norm_([a, b], 1.0) == pytest.approx(5.0)
    np.testing.assert_allclose(np.concatenate([a.grad, b.grad]), [0.6, 0, 0.8], rtol=1e-6)
    a.grad = np.array([0.3, 0.4])
    b.grad = None
    stage.clip_grad_norm_([a, b], 1.0)
    np.testing.assert_allclose(a.grad, [0.3, 0.4])  # under the limit: untouched


def test_learning_rate_schedule():
    cfg = stage.Config()
    lrs = [stage.learning_rate(cfg, i) for i in range(cfg.steps + 1)]
    assert lrs[0] == pytest.approx(1e-3 / 101)
    assert lrs[99] == pytest.approx(1e-3 * 100 / 101)
    assert lrs[100] == pytest.approx(1e-3) and max(lrs) == pytest.approx(1e-3)
    assert lrs[1050] == pytest.approx(5.5e-4) and lrs[2000] == pytest.approx(1e-4)
    assert all(a >= b for a, b in zip(lrs[100:], lrs[101:]))
    lecture = parsed("--model", "bigram")
    assert {stage.learning_rate(lecture, i) for i in (0, 1500, 2999)} == {1e-2}


def parsed(*argv):
    return cli.parse_config(stage.Config, list(argv), presets=stage.presets)


def test_presets_and_given_flags():
    c = parsed("--model", "bigram", "--lr", "0.5")
    assert (c.batch_size, c.block_size, c.steps, c.lr, c.beta2, c.weight_decay) == \
        (32, 8, 3000, 0.5, 0.999, 0.01)
    c = parsed("--preset=lecture", "--n-lay", "2")  # a prefix is a flag too
    assert (c.n_embd, c.n_head, c.n_layer, c.block_size, c.dropout, c.lr) == \
        (384, 6, 2, 256, 0.2, 3e-4)
    assert parsed() == stage.Config()  # the defaults are nanoGPT's laptop GPT
    _, given = cli.parse_config(stage.Config, ["--no-plots", "--lr", "1", "--steps=3"],
                                with_given=True)
    assert given == {"plots", "lr", "steps"}


def test_get_batch_targets_are_shifted_inputs():
    d = np.arange(100)
    x, y = stage.get_batch(d, 8, 4, rng.Generator(1337))
    assert x.shape == y.shape == (4, 8)
    np.testing.assert_array_equal(y, x + 1)
    first = rng.randint(0, 92, (4,), generator=rng.Generator(1337))
    np.testing.assert_array_equal(x[:, 0], first)  # torch.randint(len - block_size, (B,))


# -- the lecture's printed numbers --

@pytest.mark.parametrize("model_name", ["bigram", "gpt"])
def test_estimate_loss_in_chunks_is_the_lecture_loop(model_name):
    """Batches pushed through the model together give the losses of the lecture's loop,
    one get_batch and one forward per batch, and draw the same random numbers."""
    cfg = tiny(model=model_name, eval_iters=7)
    text = "First Citizen: we are accounted poor citizens, the patricians good.\n" * 20
    tok = stage.CharTokenizer(sorted(set(text)))
    splits, _ = stage.load_splits(tok, text)
    model = stage.build_model(cfg, tok.vocab_size, rng.Generator(0))

    def lecture_loop(g):
        model.eval()
        out = {}
        for split in ("train", "val"):
            losses = []
            with stage.no_grad():
                for _ in range(cfg.eval_iters):
                    X, Y = stage.get_batch(splits[split], cfg.block_size, cfg.batch_size, g)
                    losses.append(model(X, Y)[1].item())
            out[split] = float(np.mean(losses))
        model.train()
        return out

    g_loop = rng.Generator(5)
    want = lecture_loop(g_loop)
    per_batch = cfg.batch_size * cfg.block_size * tok.vocab_size
    for max_logits in (1, 3 * per_batch, 2**18, 2**24):  # 1, 3, all 7 batches per forward
        g = rng.Generator(5)
        got = stage.estimate_loss(model, splits, cfg, g, max_logits=max_logits)
        assert got == pytest.approx(want, rel=1e-6), max_logits
        assert g.get_state().tolist() == g_loop.get_state().tolist()


@pytest.fixture(scope="module")
def bigram(tmp_path_factory):
    out = tmp_path_factory.mktemp("bigram07")
    return stage.main(["--model", "bigram", "--no-plots", "--out", str(out)])


def test_bigram_reproduces_the_lecture(bigram):
    assert round(bigram["untrained_loss"], 4) == 4.8786
    assert bigram["untrained_sample"].startswith("\nSKIcLT;AcELMoTbvZv C?nq-QE33:CJqk")
    evals = {step: (round(tr, 4), round(va, 4)) for step, tr, va in bigram["evals"]}
    assert evals[0] == (4.7305, 4.7241)      # bigram.py's first line, exactly
    assert evals[300] == (2.8110, 2.8249)
    assert evals[2700] == (2.4738, 2.4911)   # and its last
    assert bigram["n_params"] == 4225
    assert bigram["sample"].startswith("LIZAntaitoupis!\nBENIngt,")
    assert len(bigram["sample"]) == 500


# -- a tiny GPT: pinned losses, checkpoint, resume, sampling --

TINY = ["--n-layer", "2", "--n-head", "2", "--n-embd", "32", "--block-size", "16",
        "--batch-size", "8", "--eval-interval", "10", "--eval-iters", "4",
        "--max-new-tokens", "40", "--warmup-steps", "5"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpt07")
    return stage.main(TINY + ["--steps", "30", "--out", str(out)]), out


def test_tiny_gpt_run_is_pinned(tiny_run):
    r, out = tiny_run
    assert r["n_params"] == 30_017
    # PyTorch 2.13 running the same model and recipe from the same seed prints the same
    assert [(s, round(t, 4), round(v, 4)) for s, t, v in r["evals"]] == [
        (0, 4.1705, 4.1689), (10, 3.9126, 3.9362), (20, 3.7348, 3.8009),
        (30, 3.6969, 3.6948)]
    assert r["sample"] == "wwJOw elqSzzPGZl,ihJ!dwCSdibSPYguuPurlF "
    assert r["bpc"] == pytest.approx(r["val"] / math.log(2))
    names = sorted(p.split("/")[-1] for p in r["files"])
    assert names == ["attention.png", "ckpt.npz", "loss.png", "lr.png", "sample.txt"]


def test_checkpoint_holds_everything_to_resume(tiny_run):
    r, out = tiny_run
    path = out / "ckpt.npz"
    assert sorted(p.name for p in out.iterdir() if p.suffix in (".npz", ".json", ".tmp")) \
        == ["ckpt.npz"]  # one file: nothing to tear apart
    saved, meta = stage.load_checkpoint(path)
    assert meta["step"] == r["saved_step"] and saved.n_embd == 32
    assert meta["chars"][:3] == "\n !" and len(meta["chars"]) == 65
    with np.load(path) as z:
        assert z["rng.state"].shape == (628,)
        assert (z["adam.t"] == meta["step"]).all()  # every parameter had every step
        assert "adam.m.lm_head.weight" in z.files and "model.lm_head.weight" in z.files


def test_resume_continues_exactly(tmp_path):
    common = TINY + ["--schedule", "constant", "--no-plots", "--max-new-tokens", "0"]
    straight = stage.main(common + ["--steps", "20", "--out", str(tmp_path / "a")])
    first = stage.main(common + ["--steps", "10", "--out", str(tmp_path / "b")])
    assert first["saved_step"] == 10
    resumed = stage.main(["--resume", "--steps", "20", "--out", str(tmp_path / "b")])
    assert resumed["evals"] == straight["evals"]
    assert resumed["lossi"] == straight["lossi"]


@pytest.mark.parametrize("stop_at", [7, 10])  # between evaluations, and at one
def test_resume_after_ctrl_c_continues_exactly(tmp_path, monkeypatch, stop_at):
    """Ctrl-C in the middle of a step: the step finishes, the run saves the step it is
    at and stops; --resume then gives the very numbers of a run never interrupted."""
    import os
    import signal
    common = TINY + ["--schedule", "constant", "--no-plots", "--max-new-tokens", "0"]
    straight = stage.main(common + ["--steps", "20", "--out", str(tmp_path / "a")])
    real_step, calls = stage.train_step, []

    def step_then_ctrl_c(*args):
        calls.append(1)
        if len(calls) == stop_at:
            os.kill(os.getpid(), signal.SIGINT)  # arrives during the step
        return real_step(*args)
    monkeypatch.setattr(stage, "train_step", step_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        stage.main(common + ["--steps", "20", "--out", str(tmp_path / "b")])
    monkeypatch.setattr(stage, "train_step", real_step)
    assert stage.load_checkpoint(tmp_path / "b" / "ckpt.npz")[1]["step"] == stop_at
    resumed = stage.main(["--resume", "--steps", "20", "--out", str(tmp_path / "b")])
    assert resumed["evals"] == straight["evals"]
    assert resumed["lossi"] == straight["lossi"]


def test_adamw_counts_steps_per_parameter():
    """torch.optim.AdamW: a parameter without a gradient is skipped and keeps its own
    step count, so its first real step moves it by lr (here from 3.0 to 2.9)."""
    a = Tensor(np.array([3.0]), requires_grad=True)
    b = Tensor(np.array([3.0]), requires_grad=True)
    opt = stage.AdamW([("a", a), ("b", b)], lr=0.1, weight_decay=0.0)
    a.grad = np.array([1.0])
    opt.step()
    a.grad, b.grad = np.array([1.0]), np.array([1.0])
    opt.step()
    assert b.data[0] == pytest.approx(2.9, abs=1e-6)
    assert a.data[0] == pytest.approx(2.8, abs=1e-6)
    assert opt.t.tolist() == [2, 1]


def test_sample_mode(tiny_run, capsys):
    _, out = tiny_run
    args = ["--sample", "--out", str(out), "--max-new-tokens", "30", "--seed", "7"]
    a = stage.main(args + ["--prompt", "ROMEO:"])
    assert capsys.readouterr().out.count(a["generated"]) == 1  # streamed to the screen
    assert a["text"].startswith("ROMEO:") and len(a["generated"]) == 30
    assert stage.main(args + ["--prompt", "ROMEO:"])["text"] == a["text"]  # seeded
    greedy = [stage.main(args + ["--top-k", "1", "--seed", str(s)])["text"] for s in (1, 2)]
    assert greedy[0] == greedy[1]  # top-k 1 is the argmax: no randomness left


class FixedLogits(stage.LanguageModel):
    """A stand-in model whose next-token logits are always [0, 1, 2, 3]."""
    block_size = 4

    def forward(self, idx, targets=None):
        B, T = idx.shape
        return Tensor(np.broadcast_to(np.arange(4, dtype=np.float32), (B, T, 4))), None


@pytest.mark.parametrize("temperature, top_k, want", [
    (1.0, 0, np.exp(np.arange(4)) / np.exp(np.arange(4)).sum()),
    (100.0, 0, [0.25] * 4), (0.05, 0, [0, 0, 0, 1]),
    (1.0, 2, [0, 0, 1 / (1 + np.e), np.e / (1 + np.e)])])
def test_temperature_and_top_k(temperature, top_k, want):
    idx = FixedLogits().generate(np.zeros((1, 1), dtype=np.int64), 2000, rng.Generator(0),
                                 temperature, top_k)
    freq = np.bincount(idx[0, 1:], minlength=4) / 2000
    np.testing.assert_allclose(freq, want, atol=0.03)


def test_bpe_tokenizer_and_bits_per_character(tmp_path):
    args = ["--tokenizer", "bpe", "--vocab-size", "300", "--steps", "2", "--lr", "0.01",
            "--warmup-steps", "0",
            "--eval-interval", "2", "--eval-iters", "2", "--n-layer", "1", "--n-embd", "16",
            "--block-size", "8", "--batch-size", "2", "--no-plots", "--max-new-tokens", "5",
            "--out", str(tmp_path)]
    r = stage.main(args)
    assert (tmp_path / "bpe300" / "tokenizer.tiktoken").is_file()
    tokens_per_char = r["bpc"] * math.log(2) / r["val"]
    assert 0.5 < tokens_per_char < 0.8  # 300 tokens already merge common pairs
    s = stage.main(["--sample", "--out", str(tmp_path), "--prompt", "KING",
                    "--max-new-tokens", "5"])
    assert s["text"].startswith("KING")


# -- the command line: bad input is one line --

def test_user_errors_in_process(tiny_run, tmp_path):
    _, out = tiny_run
    with pytest.raises(cli.UserError, match="outside the vocabulary"):
        stage.main(["--sample", "--out", str(out), "--prompt", "ROMEO: \u2603"])
    with pytest.raises(cli.UserError, match="not found"):
        stage.main(["--sample", "--out", str(tmp_path / "nothing")])
    with pytest.raises(SystemExit):  # refused with the other flags' bounds
        stage.main(["--block-size", "200000", "--out", str(tmp_path)])
    with pytest.raises(cli.UserError, match="outside the vocabulary"):  # before training
        stage.main(TINY + ["--prompt", "\u2603", "--out", str(tmp_path)])
    other = tmp_path / "other"  # a readable checkpoint, but not one of this stage's
    cli.save_checkpoint(cli.out_dir(other) / "ckpt.npz", {"W1": np.zeros(3)}, {"steps": 5})
    for args in (["--sample"], ["--resume", "--steps", "50"]):
        with pytest.raises(cli.UserError, match="does not hold this stage's config"):
            stage.main(args + ["--out", str(other)])
    with pytest.raises(cli.UserError, match="cannot change when resuming"):
        stage.main(["--resume", "--out", str(out), "--n-embd", "64"])
    with pytest.raises(cli.UserError, match="give --steps beyond it"):
        stage.main(["--resume", "--out", str(out)])  # it is at its last step already
    assert not list(tmp_path.glob("*.npz"))


def test_corrupt_checkpoint_is_one_line(tmp_path):
    (tmp_path / "ckpt.npz").write_bytes(b"not a zip file")
    (tmp_path / "ckpt.json").write_text("{}")
    line = assert_one_line_error(run_script("07_gpt/train.py", "--sample", "--out",
                                            tmp_path))
    assert "damaged" in line


@pytest.mark.parametrize("args", [["--n-head", "3"], ["--model", "transformer"],
                                  ["--dropout", "1"], ["--preset", "lecture", "--model",
                                                       "bigram"], ["--temperature", "0"]])
def test_bad_flags_are_one_line(args):
    assert_one_line_error(run_script("07_gpt/train.py", *args))


def _tampered(src, dst, meta_change=None, array_change=None):
    """A copy of checkpoint src with its metadata or arrays changed."""
    with np.load(src) as z:
        arrays = {k: z[k] for k in z.files if k != "meta.json"}
    meta = cli.load_checkpoint_meta(src)
    if meta_change:
        meta_change(meta)
    if array_change:
        array_change(arrays)
    cli.save_checkpoint(cli.out_dir(dst) / "ckpt.npz", arrays, meta)
    return dst


def _set(path, value):
    def change(d):
        *keys, last = path
        for k in keys:
            d = d[k]
        d[last] = value
    return change


@pytest.mark.parametrize("meta_change", [
    _set(["chars"], 5), _set(["chars"], "aa"), _set(["step"], None), _set(["step"], -3),
    _set(["history"], []), _set(["history", "eval"], [[1, "x", 2]]), _set(["best_val"], "x"),
    _set(["config", "n_layer"], 10**6), _set(["config", "n_embd"], 2**20),
    _set(["config", "model"], "rnn"), _set(["config", "lr"], None),
    _set(["config", "tokenizer"], "bpe"),
    lambda m: (m["config"].update(tokenizer="bpe"), m.update(tokenizer_dir="../..")),
], ids=["chars-int", "chars-repeated", "step-null", "step-negative", "history-list",
        "history-eval", "best-val-str", "n-layer-huge", "n-embd-huge", "model", "lr-null",
        "bpe-without-folder", "tokenizer-dir-outside"])
def test_a_tampered_checkpoint_is_one_line(tiny_run, tmp_path, meta_change):
    _, out = tiny_run
    bad = _tampered(out / "ckpt.npz", tmp_path / "bad", meta_change=meta_change)
    for args in (["--sample", "--max-new-tokens", "3"], ["--resume", "--steps", "50"]):
        with pytest.raises(cli.UserError):
            stage.main(args + ["--out", str(bad)])


@pytest.mark.parametrize("array_change", [
    lambda a: a.update({"adam.t": np.zeros(2, np.int64)}),
    lambda a: a.update({"rng.state": np.array(["x"] * 628)}),
    lambda a: a.update({"model.lm_head.weight": a["model.lm_head.weight"].astype(str)}),
    lambda a: a.update({"model.lm_head.weight": a["model.lm_head.weight"] * 1j}),
    lambda a: a.pop("model.lm_head.weight"),
], ids=["adam-t-shape", "rng-str", "weights-str", "weights-complex", "weights-missing"])
def test_tampered_arrays_are_one_line(tiny_run, tmp_path, array_change):
    _, out = tiny_run
    bad = _tampered(out / "ckpt.npz", tmp_path / "bad", array_change=array_change)
    with pytest.raises(cli.UserError):
        stage.main(["--resume", "--steps", "50", "--out", str(bad)])


def test_an_extra_array_in_the_checkpoint_is_never_loaded(tiny_run, tmp_path, monkeypatch):
    _, out = tiny_run
    bad = _tampered(out / "ckpt.npz", tmp_path / "extra",
                    array_change=lambda a: a.update(junk=np.zeros(10**6, np.float32)))
    read = []
    real = np.lib.npyio.NpzFile.__getitem__
    monkeypatch.setattr(np.lib.npyio.NpzFile, "__getitem__",
                        lambda self, k: read.append(k) or real(self, k))
    stage.main(["--sample", "--max-new-tokens", "3", "--out", str(bad)])
    assert read and "junk" not in read


@pytest.mark.parametrize("args", [["--temperature", "1e-45"], ["--temperature", "1e300"],
                                  ["--temperature", "inf"], ["--lr", "inf"],
                                  ["--weight-decay", "inf"], ["--n-embd", "1000000000"],
                                  ["--batch-size", "1000000000"], ["--out", ""]])
def test_impossible_values_are_refused_up_front(args):
    r = run_script("07_gpt/train.py", *args)
    assert_one_line_error(r)


def test_sampling_into_a_closed_pipe_is_quiet(tiny_run):
    import subprocess
    import sys
    _, out = tiny_run
    r = subprocess.run(f"{sys.executable} 07_gpt/train.py --sample --out {out} "
                       f"--max-new-tokens 3000 | head -c 10", shell=True, cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.stderr == "" and len(r.stdout) == 10


def test_sigterm_saves_the_step_and_leaves_no_temporary_file(tmp_path):
    """`kill` (SIGTERM) stops like Ctrl-C: the step in progress finishes, the checkpoint is
    written whole (no .tmp file is left), and --resume takes it up."""
    import signal
    import subprocess
    import sys
    out = tmp_path / "run"
    cmd = [sys.executable, "07_gpt/train.py", *TINY, "--steps", "100000", "--no-plots",
           "--eval-interval", "100000", "--out", str(out)]
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    for line in p.stdout:  # wait until training runs
        if line.startswith("step 0:"):
            break
    p.send_signal(signal.SIGTERM)
    stdout, stderr = p.communicate(timeout=60)
    assert p.returncode == 130 and stderr.strip() == "interrupted"
    assert "--resume continues" in stdout
    assert sorted(f.name for f in out.iterdir()) == ["ckpt.npz"]
    step = stage.load_checkpoint(out / "ckpt.npz")[1]["step"]
    resumed = stage.main(["--resume", "--steps", str(step + 2), "--eval-interval", "1",
                          "--out", str(out)])
    assert len(resumed["lossi"]) == step + 2  # the history goes on
