"""Stage 09: the convolution and pooling ops against finite differences (float64) and
against their definitions written as loops; the layers, LeCun's 1989 network, the data
preparation, SGD, quantization, and short runs of every task."""

import math

import numpy as np
import pytest

from common import rng
from conftest import assert_one_line_error, load_stage, run_script
from gradcheck import gradcheck

stage = load_stage("09_convnet")
Tensor = stage.Tensor
R = np.random.default_rng(0)


def conv_loops(x, w, b, stride, pad, pad_value):
    """F.conv2d's definition: out[n, o, i, j] = sum over c, u, v of
    xpad[n, c, i stride + u, j stride + v] * w[o, c, u, v], plus b[o]."""
    B, C, H, W = x.shape
    O, _, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)), constant_values=pad_value)
    Ho, Wo = (H + 2 * pad - kh) // stride + 1, (W + 2 * pad - kw) // stride + 1
    out = np.zeros((B, O, Ho, Wo))
    for n in range(B):
        for o in range(O):
            for i in range(Ho):
                for j in range(Wo):
                    window = xp[n, :, i * stride:i * stride + kh, j * stride:j * stride + kw]
                    out[n, o, i, j] = (window * w[o]).sum() + (b[o] if b is not None else 0)
    return out


def pool_loops(x, k):
    B, C, H, W = x.shape
    out = np.zeros((B, C, H // k, W // k))
    for i in range(H // k):
        for j in range(W // k):
            out[:, :, i, j] = x[:, :, i * k:(i + 1) * k, j * k:(j + 1) * k].max(axis=(2, 3))
    return out


CONVS = [(1, 0, 0.0), (2, 2, -1.0), (1, 1, 0.0), (2, 1, 0.5), (3, 0, 0.0)]


@pytest.mark.parametrize("stride,pad,pad_value", CONVS)
def test_conv2d_is_its_definition(stride, pad, pad_value):
    x, w, b = R.standard_normal((2, 3, 9, 8)), R.standard_normal((4, 3, 3, 2)), \
        R.standard_normal(4)
    got = stage.conv2d(Tensor(x), Tensor(w), Tensor(b), stride, pad, pad_value).data
    np.testing.assert_allclose(got, conv_loops(x, w, b, stride, pad, pad_value),
                               atol=1e-12)


@pytest.mark.parametrize("stride,pad,pad_value", CONVS)
def test_conv2d_gradients(stride, pad, pad_value):
    gradcheck(Tensor, lambda x, w, b: stage.conv2d(x, w, b, stride, pad, pad_value),
              R.standard_normal((2, 3, 7, 6)), R.standard_normal((4, 3, 3, 2)),
              R.standard_normal(4))


def test_conv2d_without_bias_and_5x5_stride_2():
    x, w = R.standard_normal((1, 1, 16, 16)), R.standard_normal((12, 1, 5, 5))
    got = stage.conv2d(Tensor(x), Tensor(w), None, 2, 2, -1.0).data
    assert got.shape == (1, 12, 8, 8)
    np.testing.assert_allclose(got, conv_loops(x, w, None, 2, 2, -1.0), atol=1e-12)
    gradcheck(Tensor, lambda x, w: stage.conv2d(x, w, None, 2, 2, -1.0),
              R.standard_normal((1, 2, 8, 8)), R.standard_normal((3, 2, 5, 5)))


@pytest.mark.parametrize("k,shape", [(2, (2, 3, 6, 6)), (2, (2, 3, 5, 7)), (3, (1, 2, 7, 6))])
def test_max_pool2d(k, shape):
    x = R.standard_normal(shape)
    np.testing.assert_array_equal(stage.max_pool2d(Tensor(x), k).data, pool_loops(x, k))
    gradcheck(Tensor, lambda t: stage.max_pool2d(t, k), x)


def test_max_pool2d_gives_a_tie_to_one_element():
    t = Tensor(np.zeros((1, 1, 4, 4)), requires_grad=True)
    stage.max_pool2d(t, 2).sum().backward()
    assert t.grad.sum() == 4 and t.grad[0, 0, ::2, ::2].sum() == 4


def test_batchnorm2d_normalizes_each_channel_over_batch_and_positions():
    bn = stage.BatchNorm2d(3)
    x = R.standard_normal((4, 3, 5, 5)) * np.array([1, 5, 0.1])[:, None, None] + 2
    y = bn(Tensor(x)).data
    np.testing.assert_allclose(y.mean(axis=(0, 2, 3)), 0, atol=1e-10)
    np.testing.assert_allclose(y.std(axis=(0, 2, 3), ddof=1), 1, atol=1e-3)
    np.testing.assert_allclose(bn.running_mean.ravel(), 0.1 * x.mean(axis=(0, 2, 3)))
    gradcheck(Tensor, lambda x, w, b: stage.batch_norm(
        x, w.view(3, 1, 1), b.view(3, 1, 1), dims=(0, 2, 3))[0],
        R.standard_normal((3, 3, 2, 2)), R.standard_normal(3), R.standard_normal(3))


def test_lenet1989_shapes_parameters_and_gradient():
    model = stage.LeNet1989(rng.Generator(0))
    assert sum(p.data.size for p in model.parameters()) == 9760  # the paper's count
    x = R.uniform(-1, 1, (2, 1, 16, 16))
    assert model(Tensor(x.astype(np.float32))).shape == (2, 10)
    # the whole network's gradient in float64, for a few elements of every parameter
    for p in model.parameters():
        p.data = p.data.astype(np.float64)
    T = -np.ones((2, 10))
    T[[0, 1], [3, 7]] = 1

    def loss():
        return float(((model(Tensor(x)).data - T) ** 2).mean())

    model.zero_grad()
    ((model(Tensor(x)) - Tensor(T)) ** 2).mean().backward()
    for p in model.parameters():
        for i in np.random.default_rng(1).choice(p.data.size, 3, replace=False):
            idx = np.unravel_index(i, p.data.shape)
            old = p.data[idx]
            p.data[idx] = old + 1e-6
            plus = loss()
            p.data[idx] = old - 1e-6
            minus = loss()
            p.data[idx] = old
            assert abs(p.grad[idx] - (plus - minus) / 2e-6) < 1e-7 + 1e-5 * abs(p.grad[idx])


def test_resize_bilinear_halving_averages_2x2_blocks():
    x = R.uniform(0, 255, (3, 8, 8))
    want = x.reshape(3, 4, 2, 4, 2).mean(axis=(2, 4))
    np.testing.assert_allclose(stage.resize_bilinear(x, 4), want, rtol=1e-5)
    same = stage.resize_bilinear(x, 8)
    np.testing.assert_allclose(same, x, rtol=1e-6)


def test_digits_1989_data():
    d = stage.digits_1989(rng.Generator(0))
    X, Y, T = d["train"]
    assert X.shape == (4000, 1, 16, 16) and len(d["test"][0]) == 1000
    assert -1 <= X.min() and X.max() <= 1 and X.min() == -1   # background is -1
    assert (T[np.arange(len(Y)), Y] == 1).all() and (T.sum(axis=1) == -8).all()
    assert set(np.bincount(Y)) != {400}  # shuffled, not sorted by digit
    assert abs(np.bincount(np.concatenate([Y, d["test"][1]])) - 500).max() == 0


def test_shift_and_augment():
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    s = stage.shift(x, 1, -1, fill=-9)
    np.testing.assert_array_equal(s[0, 0], [[-9, -9, -9, -9], [1, 2, 3, -9],
                                            [5, 6, 7, -9], [9, 10, 11, -9]])
    batch = np.repeat(x, 50, axis=0)
    a = stage.augment(batch, rng.Generator(0), 1, flips=True, fill=-9)
    assert a.shape == batch.shape and len({a[i].tobytes() for i in range(50)}) > 5
    assert not np.array_equal(a, batch)


def test_sgd_with_momentum_and_weight_decay_follows_torch():
    p = Tensor(np.array([1.0, -2.0]), requires_grad=True)
    opt = stage.SGD([p], lr=0.1, momentum=0.9, weight_decay=0.5)
    grads = [np.array([1.0, 1.0]), np.array([0.5, -1.0])]
    w, v = np.array([1.0, -2.0]), None
    for g in grads:
        p.grad = g.copy()
        opt.step()
        d = g + 0.5 * w
        v = d if v is None else 0.9 * v + d
        w = w - 0.1 * v
    np.testing.assert_allclose(p.data, w)


def test_int8_quantization_per_channel():
    w = R.standard_normal((8, 3, 3, 3)).astype(np.float32) * np.arange(1, 9)[:, None, None, None]
    q, scale = stage.quantize_int8(w, axis=0)
    assert q.dtype == np.int8 and scale.shape == (8, 1, 1, 1)
    assert np.abs(q).max() == 127
    assert (np.abs(q * scale - w) <= scale / 2 + 1e-7).all()   # within half a step


def test_quantized_copy_keeps_the_predictions():
    cfg = stage.Config(channels=4)
    model = stage.convnet(cfg, rng.Generator(0))
    x = Tensor(R.standard_normal((5, 1, 28, 28)).astype(np.float32))
    model.eval()
    copy, fbytes, qbytes = stage.quantized_copy(model, lambda: stage.convnet(
        cfg, rng.Generator(1)))
    copy.eval()
    a, b = model(x).data, copy(x).data
    assert 3.5 < fbytes / qbytes < 4 and np.abs(a - b).max() < 0.05 * np.abs(a).max()


def test_fashion_run(tmp_path):
    r = stage.main(["--subset", "300", "--val-size", "200", "--epochs", "2", "--channels",
                    "4", "--out", str(tmp_path)])
    res = r["results"]
    assert set(res) == {"logistic regression", "MLP 784-128-64-10", "CNN", "CNN int8"}
    assert res["CNN"]["test_acc"] > 0.3 and res["logistic regression"]["test_acc"] > 0.5
    assert all(h["val_loss"][1] < h["val_loss"][0] for h in r["histories"])
    assert (tmp_path / "cnn.npz").is_file() and (tmp_path / "confusion.png").is_file()
    # the CNN alone, from the same seed: the very same CNN (each model has its generators)
    again = stage.main(["--subset", "300", "--val-size", "200", "--epochs", "2",
                        "--channels", "4", "--no-plots", "--no-baselines",
                        "--out", str(tmp_path / "b")])
    assert set(again["results"]) == {"CNN", "CNN int8"}
    for name in ("CNN", "CNN int8"):
        assert again["results"][name]["test_acc"] == res[name]["test_acc"]


def test_early_stopping_restores_the_best_epoch_batchnorm_included(monkeypatch):
    """Validation losses 1.0, 0.5, 0.7, 0.8 with patience 2: training stops after epoch
    4 and the model is again exactly what it was after epoch 2, BatchNorm's running
    statistics included; without patience the last epoch's model stays."""
    X = R.standard_normal((64, 1, 28, 28)).astype(np.float32)
    Y = R.integers(0, 10, 64)
    splits = {"train": (X, Y), "val": (X[:8], Y[:8])}
    for patience, kept in ((2, 1), (0, 3)):
        seen = []

        def fake_evaluate(model, X, Y):
            seen.append({k: v.copy() for k, v in stage.model_arrays(model).items()})
            return [1.0, 0.5, 0.7, 0.8][len(seen) - 1], 0.5
        monkeypatch.setattr(stage, "evaluate", fake_evaluate)
        cfg = stage.Config(epochs=4, batch_size=16, channels=2, patience=patience)
        model = stage.convnet(cfg, rng.Generator(0))
        hist = stage.train_classifier(cfg, model, splits, rng.Generator(1), "t", quiet=True)
        assert len(seen) == 4 and hist.get("stopped_at") == (4 if patience else None)
        now = stage.model_arrays(model)
        assert any("running_var" in k for k in now)
        for k, v in seen[kept].items():
            assert np.array_equal(now[k], v), k
        assert not all(np.array_equal(now[k], v) for k, v in seen[-1].items()) or not patience


def test_tricks_run(tmp_path, monkeypatch):
    monkeypatch.setattr(stage, "TRICKS", stage.TRICKS[:2] + stage.TRICKS[-1:])
    r = stage.main(["--task", "tricks", "--subset", "200", "--val-size", "100", "--epochs",
                    "3", "--channels", "2", "--out", str(tmp_path)])
    assert [h["name"] for h in r["histories"]] == ["AdamW (reference)", "SGD",
                                                   "early stopping"]


def test_lecun1989_training_step_by_step():
    """A short 1989 run on 200 digits, and the cross-entropy + AdamW + augmentation +
    ReLU/dropout variant: both learn (test loss and error fall)."""
    g = rng.Generator(0)
    d = stage.digits_1989(g)
    small = {"train": tuple(a[:200] for a in d["train"]),
             "test": tuple(a[:200] for a in d["test"])}
    for flags in ({}, dict(cross_entropy=True, adamw=True, augment=True,
                           relu_dropout=True)):
        cfg = stage.Config(task="lecun1989", passes=3, **flags)
        model = stage.LeNet1989(rng.Generator(1), logits=cfg.cross_entropy,
                                relu=cfg.relu_dropout,
                                dropout=0.25 if cfg.relu_dropout else 0.0)
        loss, error, _ = stage.evaluate_1989(cfg, model, *small["test"])
        rows, _ = stage.train_1989(cfg, model, small, rng.Generator(2), quiet=True)
        assert len(rows) == 3 and rows[-1]["test_loss"] < loss
        assert rows[-1]["test_error"] < (0.5 if not flags else error)


def test_lecun_flags_belong_to_lecun():
    line = assert_one_line_error(run_script("09_convnet/train.py", "--cross-entropy"))
    assert "--task lecun1989" in line


# --- reading handwritten digits -----------------------------------------------------------
def compose(digits, gap=8, scale=3, dark_on_light=True, noise=0.0, margin=12):
    """MNIST digits (N, 28, 28) uint8 laid side by side, `gap` columns apart, enlarged
    `scale` times, as a grey uint8 picture (dark ink on light paper if asked), with
    Gaussian noise of std `noise` (a fraction of 255)."""
    n, h, w = digits.shape
    row = np.zeros((h + 2 * margin, n * w + (n - 1) * gap + 2 * margin), np.float32)
    for k, d in enumerate(digits):
        row[margin:margin + h, margin + k * (w + gap):margin + k * (w + gap) + w] = d
    img = row.repeat(scale, axis=0).repeat(scale, axis=1)
    if dark_on_light:
        img = 255 - img
    img = img + np.random.default_rng(0).normal(0, noise * 255, img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def save_png(path, grey):
    import matplotlib.image
    matplotlib.image.imsave(path, grey, cmap="gray", vmin=0, vmax=255)


@pytest.fixture(scope="module")
def reader_out(tmp_path_factory, request):
    """An output folder holding a digit reader trained briefly (3 epochs)."""
    out = tmp_path_factory.mktemp("read")
    mp = pytest.MonkeyPatch()
    mp.setitem(stage.DIGITS, "epochs", 3)
    request.addfinalizer(mp.undo)
    blank = out / "blank.png"
    save_png(blank, np.full((60, 200), 255, np.uint8))
    return out


def held_out_digits():
    """Digits of the 5,000 that the reader never trained on (its 500 held out)."""
    from common import data
    X, Y = data.load_mnist5k()
    held = stage.shuffled(len(X), rng.Generator(stage.Config().seed))[:500]
    return X[held], Y[held]


@pytest.mark.parametrize("dark_on_light,noise", [(True, 0.0), (False, 0.05)])
def test_reads_a_composed_string_of_unseen_digits(reader_out, dark_on_light, noise):
    X, Y = held_out_digits()
    pick = [int(np.nonzero(Y == d)[0][k]) for k, d in enumerate([3, 1, 4, 1, 5, 9, 2, 6])]
    path = reader_out / f"digits_{dark_on_light}.png"
    save_png(path, compose(X[pick], dark_on_light=dark_on_light, noise=noise))
    r = stage.main(["--read", str(path), "--out", str(reader_out)])
    assert len(r["boxes"]) == 8   # every digit found, in order; the briefly trained
    assert sum(a == b for a, b in zip(r["text"], "31415926")) >= 7   # reader: ~98%
    assert (reader_out / "read.png").is_file() and (reader_out / "digits.npz").is_file()


def test_no_digits_in_specks_and_a_gigantic_jpeg_is_refused(tmp_path, monkeypatch):
    mask = np.zeros((40, 40), bool)
    assert stage.components(mask) == []
    mask[5, 5:7] = True  # two pixels: a speck, not a digit
    assert stage.components(mask) == []
    import matplotlib.image
    from PIL import Image
    path = tmp_path / "big.jpg"
    matplotlib.image.imsave(path, np.full((64, 64), 200, np.uint8), cmap="gray")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow refuses > 2x this
    with pytest.raises(stage.ImageError, match="big.jpg: image too large"):
        stage.load_grey(str(path))


def test_unreadable_pictures_are_one_line(reader_out, tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("not a picture")
    for path, message in [(tmp_path / "none.png", "no such file"),
                          (text, "not a readable image"),
                          (reader_out / "blank.png", "no digits found")]:
        line = assert_one_line_error(run_script("09_convnet/train.py", "--read", path,
                                                "--out", reader_out))
        assert message in line and str(path.name) in line, line
