"""Stage 03: the MLP's new ops, its equivalences, and a seeded run's pinned numbers."""

import numpy as np
import pytest

from conftest import assert_one_line_error, load_stage, run_script
from gradcheck import gradcheck

stage = load_stage("03_mlp")
Tensor = stage.Tensor


def rand(*shape, seed=0, scale=1.0):
    return np.random.default_rng(seed).standard_normal(shape) * scale


# -- the new ops, against finite differences in float64 --

def test_tanh_and_view():
    gradcheck(Tensor, lambda a: a.tanh(), rand(4, 5))
    gradcheck(Tensor, lambda a: a.view(2, -1) * 2.0, rand(4, 3))


def test_embedding_lookup_with_repeated_indices():
    X = np.array([[0, 0, 3], [3, 1, 0]])  # row 0 of C used three times, row 3 twice
    gradcheck(Tensor, lambda C: C[X].view(2, -1), rand(5, 4))


@pytest.mark.parametrize("scale", [1.0, 30.0])
def test_cross_entropy_gradient(scale):
    Y = np.array([2, 0, 4, 4])
    gradcheck(Tensor, lambda logits: stage.cross_entropy(logits, Y), rand(4, 5, scale=scale))


def test_cross_entropy_and_the_written_out_softmax_agree():
    logits = rand(8, 27)
    Y = np.arange(8) * 3
    a, b = Tensor(logits, requires_grad=True), Tensor(logits, requires_grad=True)
    ce, manual = stage.cross_entropy(a, Y), stage.manual_loss(b, Y)
    assert ce.item() == pytest.approx(manual.item(), rel=1e-12)
    ce.backward()
    manual.backward()
    np.testing.assert_allclose(a.grad, b.grad, atol=1e-12)
    # (softmax - onehot) / N: every row of the gradient sums to zero
    np.testing.assert_allclose(a.grad.sum(1), 0, atol=1e-12)


def test_large_logits_overflow_only_the_manual_version():
    manual, stable = stage.show_overflow()
    assert np.isnan(manual)
    assert stable == pytest.approx(0.0, abs=1e-6)  # the right class has the 100 logit


def test_lookup_equals_one_hot_matmul():
    C = Tensor(rand(27, 10).astype(np.float32))
    assert stage.show_lookup_equivalence(C)


def test_learning_rate_schedule():
    cfg = stage.Config()
    assert [stage.learning_rate(cfg, i) for i in (0, 99_999, 100_000, 199_999)] == \
        [0.1, 0.1, 0.01, 0.01]


def test_parameter_counts():
    from common import rng
    g = rng.Generator(2147483647)
    assert sum(p.data.size for p in stage.init_params(stage.Config(), g).values()) == 11897
    small = stage.Config(n_embd=2, n_hidden=100)
    assert sum(p.data.size for p in stage.init_params(small, g).values()) == 3481


# -- a short seeded run: pinned numbers --

@pytest.fixture(scope="module")
def result(tmp_path_factory):
    out = tmp_path_factory.mktemp("out03")
    return stage.main(["--steps", "1000", "--no-plots", "--out", str(out)])


def test_dataset_sizes(result):
    assert result["sizes"] == (182625, 22655, 22866)
    assert result["n_params"] == 11897


def test_seeded_run_is_pinned(result):
    lossi = result["lossi"]
    assert round(lossi[0], 4) == 27.8817  # the unscaled init's puzzle: far above 3.2958
    assert [round(x, 4) for x in lossi[200::200]] == [8.7427, 3.6873, 4.2246, 5.2832]
    assert (round(result["train"], 4), round(result["val"], 4), round(result["test"], 4)) \
        == (4.0198, 4.0076, 4.0667)
    assert result["samples"][:5] == ["crenzo.", "quisem.", "khzanne.", "reh.", "crenlenn."]
    assert len(result["samples"]) == 20 and all(s.endswith(".") for s in result["samples"])


def test_overfit_and_lr_finder(result):
    assert round(result["overfit_loss"], 4) == 0.2522
    lre, losses = result["lr_finder"]
    assert len(lre) == 1000 and lre[0] == -3 and lre[-1] == 0
    assert round(float(losses[0]), 4) == 27.8817
    assert -1.5 < lre[np.argmin(losses)] < 0  # the valley is near lr 0.1-1


def test_checkpoint_written(result):
    from common import cli
    path = result["files"][0]
    config = cli.load_checkpoint_meta(path)["config"]
    arrays = cli.load_checkpoint_arrays(path, {"W1": np.zeros((30, 200), np.float32)})
    assert arrays["W1"].shape == (30, 200) and config["steps"] == 1000


def test_figures(tmp_out):
    res = stage.main(["--steps", "50", "--n-embd", "2", "--n-hidden", "100", "--samples", "0",
                      "--out", tmp_out])
    assert res["n_params"] == 3481
    names = sorted(p.split("/")[-1] for p in res["files"])
    assert names == ["embedding.png", "loss.png", "lr_finder.png", "model.npz"]


@pytest.mark.parametrize("args", [["--block-size", "0"], ["--lr", "-0.1"], ["--bogus"],
                                  ["--steps", "x"]])
def test_bad_input_is_one_line(args):
    assert_one_line_error(run_script("03_mlp/train.py", *args))
