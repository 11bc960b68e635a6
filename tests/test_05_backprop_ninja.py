"""Stage 05: the manual gradients against the engine and finite differences, the new `max`
op, a training loop that never calls backward(), and a short seeded run's pinned numbers."""

import numpy as np
import pytest

from conftest import assert_one_line_error, load_stage, run_script
from gradcheck import gradcheck

stage = load_stage("05_backprop_ninja")
Tensor = stage.Tensor


def rand(*shape, seed=0, scale=1.0, shift=0.0):
    return np.random.default_rng(seed).standard_normal(shape) * scale + shift


def float64_network(seed=0, n=8, n_embd=4, n_hidden=16):
    """A small exercise network in float64, a batch of n, its atomic forward pass and the
    engine's backward pass."""
    from common import rng
    cfg = stage.Config(n_embd=n_embd)
    params = stage.init_params(cfg, rng.Generator(seed), n_hidden)
    params = {k: Tensor(p.data.astype(np.float64), requires_grad=True)
              for k, p in params.items()}
    r = np.random.default_rng(seed)
    Xb, Yb = r.integers(0, 27, (n, 3)), r.integers(0, 27, n)
    t = stage.forward_steps(params, Xb, Yb)
    t["loss"].backward()
    return params, t, Xb, Yb


# -- the new op and the negative powers, against finite differences in float64 --

@pytest.mark.parametrize("dim,keepdim", [(0, False), (1, False), (1, True), (0, True)])
def test_max_gradient_and_values(dim, keepdim):
    x = rand(5, 7)
    gradcheck(Tensor, lambda a: a.max(dim, keepdim=keepdim).values, x)
    values, indices = Tensor(x).max(dim, keepdim=keepdim)
    assert np.array_equal(values.data, x.max(axis=dim, keepdims=keepdim))
    expected = x.argmax(axis=dim)  # plain integers; with keepdim, kept as torch keeps them
    assert np.array_equal(indices, np.expand_dims(expected, dim) if keepdim else expected)


@pytest.mark.parametrize("training", [True, False])
def test_fused_batch_norm_gradients(training):
    x, gain, bias = rand(8, 5, scale=3.0, shift=1.0), rand(5, seed=1), rand(5, seed=2)
    stats = () if training else (rand(5, seed=3), rand(5, seed=4, shift=5.0) ** 2)
    gradcheck(Tensor, lambda x, g, b: stage.batch_norm(x, g, b, 1e-5, *stats)[0],
              x, gain, bias)


def _both(f, *arrays):
    """f's output and the gradients of sum(f * R) for the inputs, in float64."""
    tensors = [Tensor(a, requires_grad=True) for a in arrays]
    out = f(*tensors)
    (out * Tensor(rand(*out.shape, seed=9))).sum().backward()
    return [out.data] + [t.grad for t in tensors]


@pytest.mark.parametrize("eps", [1e-5, 0.0])
def test_fused_batch_norm_equals_the_written_out_expressions(eps):
    x, gain, bias = rand(32, 6, scale=2.0, shift=-1.0), rand(1, 6, seed=1), rand(1, 6, seed=2)
    fused = _both(lambda x, g, b: stage.batch_norm(x, g, b, eps)[0], x, gain, bias)
    # the lecture's BatchNorm1d layer: x.var() and torch.sqrt
    layer = _both(lambda x, g, b: g * ((x - x.mean(0, keepdim=True))
                                       / (x.var(0, keepdim=True) + eps).sqrt()) + b,
                  x, gain, bias)
    for a, b in zip(fused, layer):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_max_routes_the_gradient_to_the_largest_element_only():
    x = Tensor(np.array([[1.0, 5.0, 2.0], [7.0, 0.0, 3.0]]), requires_grad=True)
    (x.max(1, keepdim=True).values * Tensor(np.array([[2.0], [3.0]]))).sum().backward()
    assert np.array_equal(x.grad, [[0, 2, 0], [3, 0, 0]])


@pytest.mark.parametrize("k", [-0.5, -1, -1.5, 2])
def test_powers(k):
    gradcheck(Tensor, lambda a: a**k, rand(4, 3, scale=0.3, shift=2.0))  # positive


def test_atomic_forward_pass_against_finite_differences():
    """The engine's gradients through all 20 atomic steps, with respect to the 7
    parameters: the reference the exercises compare with must itself be right."""
    from common import rng
    params = stage.init_params(stage.Config(n_embd=4), rng.Generator(3), 16)
    r = np.random.default_rng(3)
    Xb, Yb = r.integers(0, 27, (8, 3)), r.integers(0, 27, 8)
    gradcheck(Tensor, lambda *ps: stage.forward_steps(dict(zip(params, ps)), Xb, Yb)["loss"],
              *[p.data.astype(np.float64) for p in params.values()])


def test_atomic_steps_compute_the_compact_forward_pass():
    params, t, Xb, Yb = float64_network(seed=1)
    logits = stage.forward(params, Xb)
    np.testing.assert_allclose(t["logits"].data, logits.data, rtol=1e-12)
    assert t["loss"].item() == pytest.approx(stage.cross_entropy(logits, Yb).item(), rel=1e-13)
    assert list(t)[:3] == ["emb", "embcat", "hprebn"] and list(t)[-1] == "loss"


# -- exercises 1-3: the manual gradients --

@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exercise_1_equals_the_engine_in_float64(seed):
    params, t, Xb, Yb = float64_network(seed)
    grads = stage.backward_by_hand(params, t, Xb, Yb)
    tensors = {**t, **params}
    assert len(grads) == 26
    for name, grad in grads.items():
        np.testing.assert_allclose(grad, tensors[name].grad, rtol=1e-12, atol=1e-15,
                                   err_msg=name)


@pytest.mark.parametrize("seed,batch_size", [(1, 32), (7, 30), (7, 100)])
def test_exercise_1_is_bitwise_exact_in_float32(seed, batch_size):
    """The lecture's network from other seeds, other batch sizes: each manual line
    computes what the engine's backward pass computes, operation for operation (with
    n = 30, the lecture's (1.0 / probs) * dlogprobs would not be exact)."""
    from common import data
    (Xtr, Ytr), _, _ = data.makemore_splits(3)
    cfg = stage.Config(seed=seed, batch_size=batch_size)
    params, t, Xb, Yb = stage.exercise_network(cfg, Xtr, Ytr)
    grads = stage.backward_by_hand(params, t, Xb, Yb)
    tensors = {**t, **params}
    assert all(np.array_equal(g, tensors[name].grad) for name, g in grads.items())


def test_exercises_2_and_3_equal_the_engine_in_float64():
    params, t, Xb, Yb = float64_network(seed=4, n=16)
    dlogits = stage.cross_entropy_backward(t["logits"].data, Yb)
    np.testing.assert_allclose(dlogits, t["logits"].grad, rtol=1e-12, atol=1e-16)
    np.testing.assert_allclose(dlogits.sum(1), 0, atol=1e-16)  # the forces balance
    logits = Tensor(t["logits"].data, requires_grad=True)  # and the fused op's backward
    stage.cross_entropy(logits, Yb).backward()
    np.testing.assert_allclose(dlogits, logits.grad, rtol=1e-12, atol=1e-16)
    dhprebn = stage.batchnorm_backward(t["hpreact"].grad, params["bngain"].data,
                                       t["bnvar_inv"].data, t["bnraw"].data)
    np.testing.assert_allclose(dhprebn, t["hprebn"].grad, rtol=1e-10, atol=1e-16)


def test_cmp_reports_and_rejects_a_wrong_shape(capsys):
    t = Tensor(np.ones((2, 3), np.float32), requires_grad=True)
    t.grad = np.full((2, 3), 0.5, np.float32)
    row = stage.cmp("t", np.full((2, 3), 0.5 + 2e-6, np.float32), t)
    assert (row["exact"], row["approximate"]) == (False, True)
    assert row["maxdiff"] == pytest.approx(2e-6, rel=0.05)
    assert "t               | exact: False | approximate: True  | maxdiff: " in \
        capsys.readouterr().out
    with pytest.raises(ValueError, match="shape"):
        stage.cmp("t", np.ones(3, np.float32), t)  # db1-style (64,) for a (1, 64) tensor


# -- exercise 4: training by hand --

def small_training(backward, steps=40):
    from common import data, rng
    (Xtr, Ytr), _, _ = data.makemore_splits(3)
    cfg = stage.Config(steps=steps, backward=backward)
    g = rng.Generator(cfg.seed)
    params = stage.init_params(cfg, g, cfg.n_hidden)
    return params, stage.train(cfg, params, Xtr, Ytr, g, quiet=True)


def test_manual_training_never_calls_the_engines_backward(monkeypatch):
    def forbidden(self):
        raise AssertionError("Tensor.backward called")
    monkeypatch.setattr(stage.Tensor, "backward", forbidden)
    params, manual = small_training("manual")
    assert all(p.grad is None for p in params.values())  # nothing filled any gradient
    with pytest.raises(AssertionError, match="backward called"):  # the trap works
        small_training("engine")
    monkeypatch.undo()
    _, engine = small_training("engine")
    # the same forward pass (the same numpy operations): the first loss is identical;
    # after that the gradients' rounding differs (fused formulas vs. the engine's chain)
    assert manual[0] == engine[0]
    np.testing.assert_allclose(manual, engine, rtol=1e-5)


def test_manual_step_gradients_in_float64():
    params, t, Xb, Yb = float64_network(seed=5, n=32, n_hidden=20)
    loss, grads = stage.manual_backward(params, Xb, Yb)
    for p in params.values():
        p.grad = None
    engine_loss = stage.cross_entropy(stage.forward(params, Xb), Yb)
    engine_loss.backward()
    assert loss == pytest.approx(engine_loss.item(), rel=1e-14)
    for (name, p), grad in zip(params.items(), grads):
        np.testing.assert_allclose(grad, p.grad, rtol=1e-9, atol=1e-15, err_msg=name)
    assert np.abs(grads[2]).max() < 1e-15  # b1: BatchNorm cancels it, its gradient is 0


# -- the lecture's numbers: a seeded run of all four exercises, training shortened --

@pytest.fixture(scope="module")
def result(tmp_path_factory):
    out = tmp_path_factory.mktemp("out05")
    return stage.main(["--steps", "1000", "--samples", "5", "--out", str(out)])


def test_exercise_network(result):
    assert result["sizes"] == (182625, 22655, 22866)
    assert result["n_params"] == 4137  # the lecture's count
    assert round(result["loss"], 4) == 3.5571  # PyTorch, given the same numbers, agrees


def test_exercise_1_all_26_exact(result):
    rows = result["exercise1"]
    assert [r["name"] for r in rows] == [
        "logprobs", "probs", "counts_sum_inv", "counts_sum", "counts", "norm_logits",
        "logit_maxes", "logits", "h", "W2", "b2", "hpreact", "bngain", "bnbias", "bnraw",
        "bnvar_inv", "bnvar", "bndiff2", "bndiff", "bnmeani", "hprebn", "embcat", "W1",
        "b1", "emb", "C"]
    assert all(r["exact"] and r["approximate"] and r["maxdiff"] == 0.0 for r in rows)


def test_exercises_2_and_3(result):
    ex2, ex3 = result["exercise2"], result["exercise3"]
    assert ex2["loss_fast"] == ex2["loss"]  # the fused op and the atomic steps agree
    assert ex2["cmp"]["approximate"] and not ex2["cmp"]["exact"]
    # float32 rounding, which depends on the BLAS kernel of the processor: the lecture ~5e-9
    assert 0 < ex2["cmp"]["maxdiff"] < 2e-8 and ex2["cmp"]["approximate"]
    assert ex2["row_sums"] < 1e-8
    assert round(ex2["pull"], 4) == -0.9779 and ex2["pull"] == pytest.approx(ex2["p"] - 1)
    assert ex3["cmp"]["approximate"] and not ex3["cmp"]["exact"]
    assert ex3["cmp"]["maxdiff"] == pytest.approx(9.3132e-10, rel=1e-3)  # lecture: 9e-10
    assert ex3["forward_diff"] == pytest.approx(4.7684e-07, rel=1e-3)


def test_exercise_4_short_run(result):
    ex4 = result["exercise4"]
    assert ex4["n_params"] == 12297  # the lecture's count
    checks = {r["name"]: r for r in ex4["check"]}
    assert list(checks) == ["C", "W1", "b1", "W2", "b2", "bngain", "bnbias"]
    assert all(r["approximate"] for name, r in checks.items() if name != "b1")
    assert max(r["maxdiff"] for r in checks.values()) < 1e-7
    lossi = ex4["lossi"]
    assert len(lossi) == 1000
    assert [round(x, 4) for x in lossi[:4]] == [3.9508, 3.4942, 3.7110, 3.7261]
    assert round(lossi[999], 4) == 2.5948
    assert (round(ex4["train"], 4), round(ex4["val"], 4)) == (2.4279, 2.4270)
    assert ex4["samples"] == ["carpaveato.", "hlri.", "kimrix.", "thty.", "halansae."]
    # Bessel's correction: with n - 1 the batch variance is right on average
    assert abs(ex4["bessel"]["n - 1"] - 1) < 0.005
    assert abs(ex4["bessel"]["n"] - 31 / 32) < 0.005


def test_outputs(result):
    from common import cli
    names = [p.split("/")[-1] for p in result["files"]]
    assert names == ["dlogits.png", "model.npz", "loss.png"]
    for p in (result["files"][0], result["files"][2]):
        assert open(p, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    with np.load(result["files"][1]) as z:
        assert sorted(z.files) == ["C", "W1", "W2", "b1", "b2", "bnbias", "bngain", "bnmean",
                                   "bnvar", "meta.json"]
        assert z["bnvar"].shape == (1, 200)
    assert cli.load_checkpoint_meta(result["files"][1])["config"]["steps"] == 1000


def test_one_exercise_only(tmp_out):
    res = stage.main(["--exercise", "3", "--out", tmp_out])
    assert "exercise3" in res and not {"exercise1", "exercise2", "exercise4"} & set(res)
    assert res["files"] == []


# -- bad input --

@pytest.mark.parametrize("args", [["--exercise", "7"], ["--batch-size", "1"],
                                  ["--backward", "autograd"], ["--steps", "-1"],
                                  ["--ex-hidden", "0"], ["--n-hidden", "0"],
                                  ["--no-such-flag"]])
def test_bad_input_is_one_line(args):
    assert_one_line_error(run_script("05_backprop_ninja/train.py", *args))
