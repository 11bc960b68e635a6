"""Stage 10: every method against its definition on a tiny model in float64 (saliency
against finite differences, integrated gradients' completeness, occlusion written as
loops, Spearman's rank correlation against a plain reference), the engine's `grad` (with
respect to the image and to an activation inside the model), activation maximization,
the sanity check's randomized models, and short runs."""

import numpy as np
import pytest

from common import cli, rng
from conftest import assert_one_line_error, load_stage, run_script
from gradcheck import numerical_grad

stage = load_stage("10_interpretability")
Tensor = stage.Tensor
R = np.random.default_rng(0)

SHORT = ["--cnn", "", "--subset", "200", "--val-size", "100", "--epochs", "1",
         "--linear-epochs", "1", "--channels", "2", "--images", "2", "--mistakes", "1",
         "--smoothgrad-samples", "4", "--ig-steps", "20", "--patch-stride", "4",
         "--maximize-steps", "5", "--no-plots"]


def tiny_cnn(seed=0):
    """The stage's layers at a tiny size, on 8 x 8 images, in float64 and in evaluation
    mode, with BatchNorm statistics that are not 0 and 1."""
    g = rng.Generator(seed)
    model = stage.Sequential([
        stage.Conv2d(1, 3, 3, padding=1, generator=g), stage.BatchNorm2d(3), stage.ReLU(),
        stage.MaxPool2d(2), stage.Flatten(), stage.Linear(48, 16, generator=g),
        stage.ReLU(), stage.Linear(16, 4, generator=g)])
    for p in model.parameters():
        p.data = p.data.astype(np.float64)
    bn = model.layers[1]
    bn.running_mean = np.random.default_rng(seed).normal(0, 0.1, (1, 3, 1, 1))
    bn.running_var = np.random.default_rng(seed).uniform(0.5, 2, (1, 3, 1, 1))
    return model.eval()


def test_black_is_exactly_the_images_black_background():
    """BLACK must equal a black pixel as fashion_splits normalizes it, bit for bit (the
    garment masks compare with it), under numpy 1.x's casting rules as under 2.x's."""
    black = (np.zeros(3, np.uint8).astype(np.float32) / 255 - stage.FASHION_MEAN) \
        / stage.FASHION_STD
    assert black.dtype == np.float32 and (black == stage.BLACK).all()


def test_saliency_is_the_finite_difference_gradient_of_the_logit():
    model = tiny_cnn()
    x, classes = R.standard_normal((3, 1, 8, 8)), np.array([0, 2, 3])
    logits, grads = stage.logit_gradients(model, x, classes, batch_size=2)
    assert grads.dtype == np.float64
    for i in range(len(x)):
        xi = x[i:i + 1].copy()
        num = numerical_grad(lambda: stage.class_logits(model, xi, classes[i:i + 1])[0], xi)
        np.testing.assert_allclose(grads[i:i + 1], num, rtol=1e-5, atol=1e-8)
        assert logits[i] == pytest.approx(stage.class_logits(model, x[i:i + 1],
                                                             classes[i:i + 1])[0])
    np.testing.assert_array_equal(stage.saliency(model, x, classes), np.abs(grads))


def test_grad_gives_the_input_gradient_and_leaves_the_parameters_alone():
    model = tiny_cnn()
    x = Tensor(R.standard_normal((2, 1, 8, 8)), requires_grad=True)
    x.grad = np.full(x.shape, 7.0)
    (gx,) = stage.grad(model(x)[:, 1].sum(), [x])
    assert (x.grad == 7.0).all()                      # the input's own .grad kept
    assert all(p.grad is None and p.requires_grad for p in model.parameters())
    y = Tensor(x.data, requires_grad=True)
    model(y)[:, 1].sum().backward()                   # what backward() would give
    np.testing.assert_allclose(gx, y.grad)


def test_grad_with_respect_to_an_activation_inside_the_model():
    """torch.autograd.grad's other use: the gradient with respect to a layer's output (here
    the first ReLU's), which backward() alone would free."""
    model = tiny_cnn()
    first, rest = stage.Sequential(model.layers[:3]), stage.Sequential(model.layers[3:])
    x = Tensor(np.random.default_rng(1).standard_normal((2, 1, 8, 8)), requires_grad=True)
    h = first(x)                                      # conv, BatchNorm, ReLU: (2, 3, 8, 8)
    gh, gx = stage.grad(rest(h)[:, 1].sum(), [h, x])
    assert gh.shape == h.shape and np.abs(gh).sum() > 0
    assert h.grad is None and not h._retain and x.grad is None   # all as it was
    assert all(p.grad is None and p.requires_grad for p in model.parameters())
    # the rest of the model, given the activation as its input: the same gradient
    leaf = Tensor(h.data, requires_grad=True)
    rest(leaf)[:, 1].sum().backward()
    np.testing.assert_allclose(gh, leaf.grad)
    # the chain rule by hand: d logit / dx = (d logit / dh) (dh / dx)
    x2 = Tensor(x.data, requires_grad=True)
    (gx_chain,) = stage.grad((first(x2) * gh).sum(), [x2])
    np.testing.assert_allclose(gx, gx_chain, rtol=1e-10, atol=1e-12)
    x3 = Tensor(x.data, requires_grad=True)           # asked alone, the same gradient
    (gx_alone,) = stage.grad(model(x3)[:, 1].sum(), [x3])
    np.testing.assert_allclose(gx, gx_alone)


def test_integrated_gradients_are_complete_within_1_percent_at_300_steps():
    model = tiny_cnn()
    x = np.abs(R.standard_normal((3, 1, 8, 8)))
    x[:, :, :2] = 0                                   # some pixels equal the baseline
    baseline = np.zeros((1, 8, 8))
    classes = np.array([0, 1, 3])
    ig = stage.integrated_gradients(model, x, classes, baseline, steps=300)
    rise = stage.logit_rise(model, x, classes, baseline)
    np.testing.assert_allclose(rise, stage.class_logits(model, x, classes) -
                               stage.class_logits(model, np.zeros_like(x), classes))
    err = stage.completeness_error(ig, rise)
    assert (err < 0.01).all(), err
    assert (ig[:, :, :2] == 0).all()                  # x = x': no attribution
    # fewer steps, a larger error: the sum converges to f(x) - f(x')
    coarse = stage.completeness_error(stage.integrated_gradients(model, x, classes,
                                                                 baseline, steps=3), rise)
    assert coarse.mean() > err.mean()


def test_a_linear_models_saliency_is_its_template_and_ig_is_exact():
    model = stage.logistic_regression(rng.Generator(0)).eval()
    x, classes = R.standard_normal((2, 1, 28, 28)).astype(np.float32), np.array([3, 7])
    templates = stage.linear_templates(model)                       # (10, 28, 28)
    np.testing.assert_allclose(stage.saliency(model, x, classes)[:, 0],
                               np.abs(templates[classes]), rtol=1e-6)
    np.testing.assert_allclose(stage.smoothgrad(model, x, classes, rng.Generator(0), n=3)
                               [:, 0], np.abs(templates[classes]), rtol=1e-5, atol=1e-7)
    baseline = np.zeros((1, 28, 28), np.float32)
    ig = stage.integrated_gradients(model, x, classes, baseline, steps=1)
    np.testing.assert_allclose(ig[:, 0], x[:, 0] * templates[classes], rtol=1e-5,
                               atol=1e-7)


def occlusion_loops(model, x, c, size, stride, fill):
    """The definition, one square at a time: each pixel gets the mean drop of the logit
    over the squares that covered it."""
    H, W = x.shape[1:]
    f0 = stage.class_logits(model, x[None], np.array([c]))[0]
    total, count = np.zeros((H, W)), np.zeros((H, W))
    for top in range(0, H - size + 1, stride):
        for left in range(0, W - size + 1, stride):
            covered = x.copy()
            covered[:, top:top + size, left:left + size] = fill
            drop = f0 - stage.class_logits(model, covered[None], np.array([c]))[0]
            total[top:top + size, left:left + size] += drop
            count[top:top + size, left:left + size] += 1
    return np.where(count > 0, total / np.maximum(count, 1), 0.0)


@pytest.mark.parametrize("size,stride,fill", [(3, 1, 0.0), (2, 3, -0.5), (8, 1, 0.3)])
def test_occlusion_is_its_definition_written_as_loops(size, stride, fill):
    model = tiny_cnn()
    x, classes = R.standard_normal((2, 1, 8, 8)), np.array([1, 2])
    got = stage.occlusion(model, x, classes, size, stride, fill)
    for i in range(len(x)):
        np.testing.assert_allclose(got[i, 0], occlusion_loops(model, x[i], classes[i],
                                                              size, stride, fill),
                                   atol=1e-12)


def test_smoothgrad_is_the_mean_gradient_of_noisy_copies_then_its_absolute_value():
    model = tiny_cnn()
    x, classes = R.standard_normal((2, 1, 8, 8)), np.array([0, 3])
    assert np.allclose(stage.smoothgrad(model, x, classes, rng.Generator(0), n=3,
                                        noise=0.0), stage.saliency(model, x, classes))
    g = rng.Generator(1)
    eps = rng.randn(3, *x.shape, generator=g)
    std = 0.2 * (x.max(axis=(1, 2, 3)) - x.min(axis=(1, 2, 3)))
    noisy = [x + std[:, None, None, None] * e for e in eps]
    grads = [stage.logit_gradients(model, xk, classes)[1] for xk in noisy]   # signed
    got = stage.smoothgrad(model, x, classes, rng.Generator(1), n=3, noise=0.2)
    np.testing.assert_allclose(got, np.abs(np.mean(grads, axis=0)), rtol=1e-6)
    # not the mean of the saliency maps: gradients of opposite sign cancel
    assert not np.allclose(got, np.mean([np.abs(gk) for gk in grads], axis=0))


def test_every_method_runs_the_model_in_evaluation_mode():
    """stage 09's predict() leaves a model in training mode; the methods set it back."""
    x, classes = np.random.default_rng(2).standard_normal((3, 1, 8, 8)), np.array([0, 1, 2])
    want = stage.saliency(tiny_cnn(), x, classes)
    model = tiny_cnn()
    stage.predict(model, x)
    assert model.training                             # BatchNorm would use batch statistics
    np.testing.assert_array_equal(stage.saliency(model, x, classes), want)


def spearman_reference(a, b):
    """Ranks by counting (1 + how many are smaller + half the other equal ones), then
    Pearson's correlation by numpy."""
    def ranks(v):
        return np.array([1 + (v < t).sum() + ((v == t).sum() - 1) / 2 for t in v])
    return np.corrcoef(ranks(a.ravel()), ranks(b.ravel()))[0, 1]


def test_spearman_against_a_plain_reference():
    np.testing.assert_array_equal(stage.ranks(np.array([5.0, 1.0, 5.0, 0.0])),
                                  [3.5, 2, 3.5, 1])
    for _ in range(5):
        a = R.integers(0, 6, (4, 5)).astype(float)        # many ties, as maps with zeros
        b = a + R.integers(0, 3, (4, 5))
        assert stage.spearman(a, b) == pytest.approx(spearman_reference(a, b))
    a, b = R.standard_normal(30), R.standard_normal(30)       # no ties: the textbook formula
    d = stage.ranks(a) - stage.ranks(b)
    assert stage.spearman(a, b) == pytest.approx(1 - 6 * (d**2).sum() / (30 * (30**2 - 1)))
    assert stage.spearman(a, np.exp(a)) == pytest.approx(1)   # only the order counts
    assert stage.spearman(a, -a) == pytest.approx(-1)
    assert stage.spearman(a, np.zeros(30)) == 0.0


def test_activation_maximization_raises_the_logit_within_the_pixel_range():
    model = tiny_cnn()
    classes = np.arange(4)
    x0 = np.random.default_rng(3).normal(0, 1, (4, 1, 8, 8))
    images, start, end = stage.activation_maximization(model, classes, x0, rng.Generator(0),
                                                       steps=50, lr=0.05, l2=0.1, tv=0.1,
                                                       jitter=1, lo=-1.0, hi=1.0)
    np.testing.assert_allclose(start, stage.class_logits(model, x0, classes))
    assert (end > start + 0.05).all(), (start, end)
    assert images.min() >= -1 and images.max() <= 1
    assert all(p.grad is None for p in model.parameters())


def test_the_sanity_check_randomizes_layers_from_the_top():
    cfg = stage.Config(channels=2)
    cnn, fresh = stage.convnet(cfg, rng.Generator(0)), stage.convnet(cfg, rng.Generator(1))
    groups = stage.layer_groups(cnn)
    assert groups == [[12], [9], [4, 5], [0, 1]]       # Linear, Linear, Conv+BN, Conv+BN
    assert [stage.layer_name(cnn.layers[g[0]]) for g in groups] == [
        "Linear 128->10", "Linear 196->128", "Conv2d 2->4", "Conv2d 1->2"]
    mixed = stage.randomized(cnn, fresh, [12, 4, 5])
    for k, layer in enumerate(mixed.layers):
        assert layer is (fresh.layers[k] if k in (12, 4, 5) else cnn.layers[k])
    assert cnn.layers[12] is not fresh.layers[12]      # the trained model is untouched


def test_images_to_explain_right_ones_of_different_classes_then_mistakes():
    Y = np.array([0, 0, 1, 2, 1, 3])
    probs = np.full((6, 4), 0.1)
    probs[[0, 1, 2, 3], [0, 0, 1, 2]] = 0.7            # right
    probs[4, 3], probs[5, 0] = 0.6, 0.9                # wrong: 5 more confidently
    assert list(stage.images_to_explain(probs, Y, 4, 2)) == [0, 2, 5, 4]
    assert list(stage.images_to_explain(probs, Y, 5, 1)) == [0, 2, 3, 5, 1]


def test_a_short_run_then_the_same_cnn_from_its_checkpoint(tmp_path, capsys):
    r = stage.main(SHORT + ["--out", str(tmp_path)])
    assert r["cnn"]["source"].startswith("trained here")
    out = capsys.readouterr().out
    assert f"--cnn {tmp_path / 'cnn.npz'}" in out and "note:" not in out
    assert set(r["maps"]) == {"saliency", "SmoothGrad", "integrated gradients",
                              "occlusion"}
    assert r["maps"]["occlusion"].shape == (2, 1, 28, 28)
    assert r["ig"]["ms"] == [1, 3, 10, 20] and r["ig"]["errors"].shape == (4, 2)
    assert r["shares"]["integrated gradients"] == 1.0  # zero wherever x is black
    assert len(r["sanity"]["steps"]) == 4 and set(r["sanity"]["passes"]) == set(r["maps"])
    again = stage.main(SHORT[2:] + ["--cnn", str(tmp_path / "cnn.npz"), "--out",
                                    str(tmp_path / "b")])
    assert again["cnn"]["source"] == f"loaded from {tmp_path / 'cnn.npz'}"
    # --epochs 1 --channels 2 shaped the CNN trained above, not the one read back
    assert capsys.readouterr().out.startswith(
        "note: --epochs, --channels only apply to a CNN trained here (--cnn ''): ignored")
    assert again["cnn"]["test_acc"] == r["cnn"]["test_acc"]
    np.testing.assert_allclose(again["ig"]["rise"], r["ig"]["rise"], rtol=1e-5)


def test_a_missing_or_damaged_checkpoint_is_one_line(tmp_path):
    with pytest.raises(cli.UserError, match="not found"):
        stage.main(SHORT[2:] + ["--cnn", str(tmp_path / "none.npz"), "--out",
                                str(tmp_path)])
    bad = tmp_path / "cnn.npz"
    bad.write_bytes(b"not a checkpoint")
    r = run_script("10_interpretability/train.py", *SHORT[2:], "--cnn", bad, "--out",
                   tmp_path)
    line = assert_one_line_error(r)
    assert "damaged" in line and "cnn.npz" in line
    assert r.stdout == ""                             # found before any training


def test_more_mistakes_than_images_is_refused(capsys):
    with pytest.raises(SystemExit):
        cli.parse_config(stage.Config, ["--images", "2", "--mistakes", "3"])
    assert "--mistakes must be at most --images" in capsys.readouterr().err
