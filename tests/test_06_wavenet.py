"""Stage 06: the new ops and layers against finite differences, the lecture's numbers, and
the dilated convolutions against the hierarchical model they compute."""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as the stage sets it when run

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from conftest import assert_one_line_error, load_stage, run_script  # noqa: E402
from gradcheck import gradcheck  # noqa: E402

stage = load_stage("06_wavenet")
Tensor = stage.Tensor


def rand(*shape, seed=0, scale=1.0, shift=0.0):
    return np.random.default_rng(seed).standard_normal(shape) * scale + shift


# -- the new ops, against finite differences in float64 --

def test_matmul_of_a_stack_of_matrices():
    gradcheck(Tensor, lambda a, b: a @ b, rand(2, 3, 4), rand(4, 5, seed=1))
    a, b = rand(2, 3, 4), rand(4, 5, seed=1)
    np.testing.assert_allclose((Tensor(a) @ Tensor(b)).data, np.matmul(a, b), rtol=1e-12)


def test_squeeze_and_ndim():
    gradcheck(Tensor, lambda a: a.view(3, 1, 4).squeeze(1) * 2.0, rand(3, 4))
    x = Tensor(rand(3, 1, 4))
    assert x.squeeze(1).shape == (3, 4) and x.squeeze(-2).shape == (3, 4)
    assert x.squeeze(0) is x and x.ndim == 3  # like torch: a size other than 1 stays


@pytest.mark.parametrize("dims", [(0,), (0, 1)], ids=["per-position", "over-positions"])
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_on_3d_input(dims, training):
    x, gain, bias = rand(5, 3, 4, scale=2.0, shift=1.0), rand(4, seed=1), rand(4, seed=2)
    keep = (1, 3, 4) if dims == (0,) else (1, 1, 4)
    stats = () if training else (rand(*keep, seed=3), rand(*keep, seed=4, shift=3.0) ** 2)
    gradcheck(Tensor, lambda x, g, b: stage.batch_norm(x, g, b, 1e-5, *stats, dims=dims)[0],
              x, gain, bias)


@pytest.mark.parametrize("dilation", [1, 2, 4])
def test_conv1d_gradients(dilation):
    gradcheck(Tensor, lambda x, w: stage.conv1d(x, w, dilation), rand(2, 9, 3),
              rand(6, 4, seed=1))


def test_conv1d_is_flatten_consecutive_and_linear_at_every_position():
    x, w = rand(2, 8, 3), rand(6, 5, seed=1)
    out = stage.conv1d(Tensor(x), Tensor(w), 1).data          # (2, 7, 5)
    assert out.shape == (2, 7, 5)
    pairs = Tensor(x).view(2, 4, 6) @ Tensor(w)               # every second position
    np.testing.assert_allclose(out[:, 0::2], pairs.data, rtol=1e-12)
    out4 = stage.conv1d(Tensor(x), Tensor(w), 4).data         # (2, 4, 5)
    np.testing.assert_allclose(out4[:, 1], np.concatenate([x[:, 1], x[:, 5]], 1) @ w,
                               rtol=1e-12)


# -- the new layers, in float64, against finite differences --

def _float64(model):
    for p in model.parameters():
        p.data = p.data.astype(np.float64)
    return model


def _with_params(model, tensors):
    """Put `tensors` into the model's parameter slots, in parameters() order."""
    it = iter(tensors)
    for layer in model.layers:
        for name in ("weight", "bias", "gamma", "beta"):
            if getattr(layer, name, None) is not None:
                setattr(layer, name, next(it))


def test_layers_gradients():
    """Embedding, FlattenConsecutive, Linear on 3-D input, BatchNorm1d on 3-D input (both
    versions), Tanh and Sequential: a whole small hierarchical model."""
    X = np.random.default_rng(0).integers(0, 27, (6, 4))
    for bug in (False, True):
        cfg = stage.Config(block_size=4, n_embd=2, n_hidden=4, batchnorm_bug=bug)
        model = _float64(stage.build_model(cfg, stage.rng.Generator(1)))
        params = [p.data for p in model.parameters()]

        def f(*tensors):
            _with_params(model, tensors)
            return model(X)
        gradcheck(Tensor, f, *params)


def test_wavenet_gradients_with_padded_names():
    cfg = stage.Config(block_size=4, n_embd=2, n_hidden=4)
    model = _float64(stage.build_model(cfg, stage.rng.Generator(1)))
    conv = stage.wavenet(model)
    X = np.random.default_rng(0).integers(1, 27, (3, 9))
    lengths = np.array([5, 3, 4])
    X[:, :4] = 0
    for i, n in enumerate(lengths):
        X[i, 4 + n:] = 0  # padding

    bns = [layer for layer in model.layers if isinstance(layer, stage.BatchNorm1d)]
    for i, bn in enumerate(bns):
        bn.running_mean, bn.running_var = rand(4, seed=i), rand(4, seed=i + 5) ** 2 + 0.5
    buffers = [(bn.running_mean, bn.running_var) for bn in bns]

    def f(*tensors):
        _with_params(model, tensors)
        for bn, (mean, var) in zip(bns, buffers):  # every call from the same buffers
            bn.running_mean, bn.running_var = mean, var
        conv.layers = stage.wavenet(model).layers
        return conv(X, lengths)
    gradcheck(Tensor, f, *[p.data for p in model.parameters()])


# -- the lecture's facts --

@pytest.fixture(scope="module")
def splits():
    return stage.data.makemore_splits(8)


def test_dataset_and_examples(splits, capsys):
    (Xtr, Ytr), (Xdev, _), (Xte, _) = splits
    assert (len(Xtr), len(Xdev), len(Xte)) == (182625, 22655, 22866)
    stage.show_examples(Xtr, Ytr, stage.data.names_vocab()[1], n=8)
    lines = capsys.readouterr().out.split("\n")
    assert lines[:3] == ["  ........ --> y", "  .......y --> u", "  ......yu --> h"]
    assert lines[6:8] == ["  ..yuheng --> .", "  ........ --> d"]


@pytest.mark.parametrize("flags, n_params", [
    (dict(model="flat", block_size=3, n_embd=10, n_hidden=200), 12097),
    (dict(model="flat", n_embd=10, n_hidden=200), 22097),
    (dict(n_embd=10, n_hidden=68, batchnorm_bug=True), 22397),
    (dict(n_embd=10, n_hidden=68), 22397),
    ({}, 76579),
], ids=["3-char", "context-8", "hierarchical", "bn-fix", "scaled"])
def test_performance_log_models(flags, n_params):
    model = stage.build_model(stage.Config(**flags), stage.rng.Generator(42))
    assert sum(p.data.size for p in model.parameters()) == n_params


def test_batchnorm_bug_and_fix(splits):
    (Xtr, Ytr), _, _ = splits
    shapes = {}
    for bug in (True, False):
        cfg = stage.Config(n_embd=10, n_hidden=68, batchnorm_bug=bug, steps=1)
        stage.rng.manual_seed(42)
        model = stage.build_model(cfg)
        stage.train(cfg, model, Xtr, Ytr, quiet=True)
        shapes[bug] = [bn.running_mean.shape for bn in model.layers
                       if isinstance(bn, stage.BatchNorm1d)]
    assert shapes[True] == [(1, 4, 68), (1, 2, 68), (1, 68)]   # the lecture's bug
    assert shapes[False] == [(1, 1, 68), (1, 1, 68), (1, 68)]  # the fix
    x = Tensor(rand(32, 4, 6, shift=np.arange(4)[:, None]).astype(np.float32))
    per_position = stage.BatchNorm1d(6, per_position=True)(x).data
    np.testing.assert_allclose(per_position.mean(0), 0, atol=1e-5)  # each position alone
    fixed = stage.BatchNorm1d(6)(x).data
    np.testing.assert_allclose(fixed.mean((0, 1)), 0, atol=1e-5)
    assert np.abs(fixed.mean(0)).max() > 0.5                  # positions keep their offsets


# the lecture's run, its first 2,000 steps (the full run: tests/benchmarks/bench_wavenet.py)
@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("out06")
    return stage.main(["--steps", "2000", "--out", str(out)])


def test_lecture_run(run):
    assert run["sizes"] == (182625, 22655, 22866) and run["n_params"] == 76579
    lossi = run["lossi"]
    assert round(lossi[0], 4) == 3.3167                        # the lecture's step 0
    # what PyTorch computes from the same random numbers (checked to ~1e-6)
    assert [round(x, 4) for x in lossi[1:5]] == [3.2927, 3.2276, 3.1838, 3.1727]
    assert round(lossi[1999], 4) == 2.4351
    assert (round(run["train"], 4), round(run["val"], 4)) == (2.2390, 2.2481)
    assert run["samples"][:5] == ["madirer.", "kazerbe.", "maqsyn.", "tpriu.", "gydann."]
    assert len(run["samples"]) == 20 and run["chars"] == 2000 * 32
    assert [s for s, _ in run["shapes"]][:5] == ["Embedding", "FlattenConsecutive",
                                                 "Linear", "BatchNorm1d", "Tanh"]
    assert [shape for _, shape in run["shapes"]][::4] == [(4, 8, 24), (4, 4, 128),
                                                         (4, 2, 128), (4, 128)]
    assert run["running_shapes"] == [(1, 1, 128), (1, 1, 128), (1, 128)]


def test_forgetting_eval_mode(run):
    assert run["pitfall"].shape == (1, 27) and np.isnan(run["pitfall"]).all()


def test_pitfall_leaves_the_model_alone():
    cfg = stage.Config(n_embd=4, n_hidden=8)
    model = stage.build_model(cfg, stage.rng.Generator(3))
    for bn in model.layers[3::4]:
        bn.running_mean = rand(1, 1, 8, seed=1).astype(np.float32)
    before = [bn.running_mean.copy() for bn in model.layers[3::4]]
    logits = stage.show_eval_mode_pitfall(model, 8)
    assert np.isnan(logits).all()
    assert all(not la.training for la in model.layers if hasattr(la, "training"))
    for bn, mean in zip(model.layers[3::4], before):
        assert np.array_equal(bn.running_mean, mean)
    with stage.no_grad():
        assert np.isfinite(model(np.zeros((1, 8), dtype=np.int64)).data).all()


def test_outputs(run):
    from common import cli
    names = [p.split("/")[-1] for p in run["files"]]
    assert names == ["model.npz", "samples.txt", "loss.png"]
    assert open(run["files"][2], "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    arrays = cli.load_checkpoint_arrays(run["files"][0],
                                        {"layers.0.weight": np.zeros((27, 24), np.float32)})
    assert arrays["layers.0.weight"].shape == (27, 24)
    assert cli.load_checkpoint_meta(run["files"][0])["config"]["steps"] == 2000
    assert open(run["files"][1]).read().split() == run["samples"]


# -- the dilated causal convolutions --

def test_convolutions_compute_the_hierarchical_model(splits):
    """In evaluation mode (shared running statistics) the convolutions' output at every
    position of every name equals the hierarchical model on that position's context."""
    (Xtr, Ytr), _, _ = splits
    model = stage.build_model(stage.Config(), stage.rng.Generator(5))
    for i, bn in enumerate(model.layers[3::4]):  # trained-looking statistics
        bn.running_mean = rand(1, 1, 128, seed=i).astype(np.float32)
        bn.running_var = (rand(1, 1, 128, seed=i + 9) ** 2 + 0.5).astype(np.float32)
        bn.gamma.data[:] = rand(128, seed=i + 20) + 1
    stage.set_training(model, False)
    words = stage.data.split_words(stage.data.load_names())[0][:300]
    names = stage.name_rows(words, 8, stage.data.names_vocab()[0])
    X, Y, lengths = stage.name_batch(names, np.arange(300))
    n = int((lengths + 1).sum())                              # the first n examples
    with stage.no_grad():
        hier = model(Xtr[:n]).data                            # (n, 27): one per context
        conv = stage.wavenet(model)(X).data                   # (300, 12, 27): all at once
    real = Y >= 0                                             # (the longest name: 11)
    assert conv.shape == (300, 12, 27) and np.array_equal(Y[real], Ytr[:n])
    np.testing.assert_allclose(conv[real], hier, rtol=1e-5, atol=2e-6)


def test_batch_norm_on_names():
    """Training on whole names: normalized with the running statistics of the batches
    before, which then follow this batch's statistics over the names' positions only."""
    bn = stage.BatchNorm1d(4)
    bn.running_mean = rand(1, 1, 4, seed=1)
    bn.running_var = rand(1, 1, 4, seed=2) ** 2 + 0.5
    old_mean, old_var = bn.running_mean, bn.running_var
    x = Tensor(rand(3, 5, 4, scale=2.0, shift=1.0))
    within = stage.within_names(5, np.array([5, 3, 4]))      # (3, 5)
    out = stage.batch_norm_on_names(bn, x, within).data
    np.testing.assert_allclose(out, (x.data - old_mean) / np.sqrt(old_var + 1e-5),
                               rtol=1e-12)
    values = x.data[within]                                   # 12 positions of 15
    assert values.shape == (12, 4)
    np.testing.assert_allclose(bn.running_mean, 0.9 * old_mean + 0.1 * values.mean(0),
                               rtol=1e-12)
    np.testing.assert_allclose(bn.running_var,
                               0.9 * old_var + 0.1 * values.var(0, ddof=1), rtol=1e-12)


def test_training_on_names_cannot_see_ahead():
    """In training mode, a name's outputs before a character do not depend on that
    character (nor on the other names of the batch): batch statistics would leak it."""
    model = stage.build_model(stage.Config(), stage.rng.Generator(5))
    conv = stage.wavenet(model)
    words = ["diondre", "xavien", "emma", "jo"]
    X, Y, lengths = stage.name_batch(stage.name_rows(words, 8, stage.data.names_vocab()[0]),
                                     np.arange(4))
    changed = X.copy()
    changed[0, 8 + 4] = 1                                     # 'dion' + 'a' + ...
    changed[1:, 8:] = 0                                       # other names: all '.'
    bns = [layer for layer in model.layers if isinstance(layer, stage.BatchNorm1d)]
    buffers = [(bn.running_mean, bn.running_var) for bn in bns]
    with stage.no_grad():
        a = conv(X, lengths).data
        for bn, (mean, var) in zip(bns, buffers):  # the same state for both
            bn.running_mean, bn.running_var = mean, var
        b = conv(changed, lengths).data
    assert all(bn.training for bn in bns)
    assert np.array_equal(a[0, :5], b[0, :5])  # predictions of 'd', 'i', 'o', 'n', 'd'
    assert not np.allclose(a[0, 5], b[0, 5])   # the next one sees the change


@pytest.fixture(scope="module")
def conv_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("out06c")
    return stage.main(["--conv", "--steps", "300", "--samples", "3", "--no-plots",
                       "--out", str(out)])


def test_convolutional_training(conv_run):
    lossi = conv_run["lossi"]
    assert round(lossi[0], 4) == 3.2985 and round(lossi[299], 4) == 2.5552
    assert conv_run["chars"] == 8498  # whole names: 300 steps x 4 names
    for split in ("train", "val", "test"):  # the convolutions' loss = the hierarchical's
        assert conv_run["conv"][split] == pytest.approx(conv_run[split], abs=1e-6)
    assert conv_run["running_shapes"] == [(1, 1, 128)] * 3


# -- bad input --

@pytest.mark.parametrize("args", [["--block-size", "6"], ["--conv", "--model", "flat"],
                                  ["--n-hidden", "0"], ["--no-such-flag"]])
def test_bad_input_is_one_line(args):
    assert_one_line_error(run_script("06_wavenet/train.py", *args))


@pytest.mark.parametrize("args", [["--block-size", "0"], ["--block-size", "64"],
                                  ["--batchnorm-bug", "--model", "flat"],
                                  ["--batchnorm-bug", "--conv"], ["--batch-size", "1"],
                                  ["--batch-names", "0"], ["--model", "bogus"],
                                  ["--steps", "-1"], ["--lr", "0"], ["--seed", "-1"]])
def test_bad_flags_are_refused(args, capsys):
    with pytest.raises(SystemExit) as exit_:
        stage.main(args)
    assert exit_.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
