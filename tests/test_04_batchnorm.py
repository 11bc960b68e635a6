"""Stage 04: the new ops and BatchNorm against finite differences, and the lecture's numbers."""

import numpy as np
import pytest

from conftest import assert_one_line_error, load_stage, run_script
from gradcheck import gradcheck

stage = load_stage("04_batchnorm")
Tensor = stage.Tensor


def rand(*shape, seed=0, scale=1.0, shift=0.0):
    return np.random.default_rng(seed).standard_normal(shape) * scale + shift


# -- the new ops, against finite differences in float64 --

@pytest.mark.parametrize("f", [
    lambda a: a.sqrt(), lambda a: a.var(), lambda a: a.var(0), lambda a: a.var(1, keepdim=True),
    lambda a: a.var(0, unbiased=False), lambda a: a.std(), lambda a: a.std(0, keepdim=True),
    lambda a: a.std(1), lambda a: a.std(0, unbiased=False),
], ids=["sqrt", "var", "var0", "var1k", "var0-biased", "std", "std0k", "std1", "std0-biased"])
def test_spread_ops(f):
    gradcheck(Tensor, f, rand(6, 4, shift=3.0))  # shifted positive, for sqrt


def test_var_and_std_values():
    x = rand(32, 5, scale=2.0)
    np.testing.assert_allclose(Tensor(x).var(0).data, np.var(x, axis=0, ddof=1), rtol=1e-14)
    np.testing.assert_allclose(Tensor(x).std(0, unbiased=False).data, x.std(0), rtol=1e-14)
    assert Tensor(x).std(0, keepdim=True).shape == (1, 5) and Tensor(x).var().shape == ()
    # float32 in, float32 out: computed in double and rounded once, as torch does
    x32 = x.astype(np.float32)
    std = Tensor(x32).std(0).data
    assert std.dtype == np.float32
    assert np.array_equal(std, np.std(x32.astype(np.float64), axis=0, ddof=1).astype(np.float32))


@pytest.mark.parametrize("training", [True, False])
def test_batchnorm1d_gradients(training):
    """The lecture's BatchNorm1d, built from mean, var, sqrt and arithmetic, in both modes."""
    def f(x, gamma, beta):
        bn = stage.BatchNorm1d(5)
        bn.gamma, bn.beta = gamma, beta
        bn.running_mean, bn.running_var = rand(5, seed=3), rand(5, seed=4, shift=5.0) ** 2
        bn.training = training
        return bn(x)
    gradcheck(Tensor, f, rand(8, 5, scale=3.0, shift=1.0), rand(5, seed=1), rand(5, seed=2))


def test_batchnorm1d_train_and_eval_modes():
    bn = stage.BatchNorm1d(4)
    x = Tensor(rand(64, 4, scale=3.0, shift=2.0).astype(np.float32))
    y = bn(x).data  # training: the batch's own statistics
    np.testing.assert_allclose(y.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(y.std(0, ddof=1), 1, atol=1e-5)  # unbiased, as the variance
    np.testing.assert_allclose(bn.running_mean, 0.1 * x.data.mean(0), rtol=1e-5)
    np.testing.assert_allclose(bn.running_var, 0.9 + 0.1 * x.data.var(0, ddof=1), rtol=1e-5)
    bn.training = False
    before = bn.running_mean.copy()
    one = bn(Tensor(x.data[:1])).data  # one example works in evaluation mode
    np.testing.assert_allclose(one, (x.data[:1] - bn.running_mean)
                               / np.sqrt(bn.running_var + 1e-5), rtol=1e-5)
    assert np.array_equal(bn.running_mean, before)  # the buffers no longer move
    assert [p.shape for p in bn.parameters()] == [(4,), (4,)]


def test_part_a_running_estimates():
    x = Tensor(rand(32, 3, shift=4.0).astype(np.float32))
    params = {"bngain": Tensor(np.ones((1, 3), np.float32)),
              "bnbias": Tensor(np.zeros((1, 3), np.float32))}
    running = {"mean": np.zeros((1, 3), np.float32), "std": np.ones((1, 3), np.float32)}
    stage.batchnorm_layer(params, x, running, training=True)
    np.testing.assert_allclose(running["mean"], 0.001 * x.data.mean(0, keepdims=True), rtol=1e-5)
    np.testing.assert_allclose(running["std"], 0.999 + 0.001 * x.data.std(0, ddof=1,
                                                                        keepdims=True), rtol=1e-6)
    out = stage.batchnorm_layer(params, x, running, training=False).data  # uses them, unchanged
    np.testing.assert_allclose(out, (x.data - running["mean"]) / running["std"], rtol=1e-6)


def test_parameter_counts_and_schedule():
    from common import rng
    counts = {}
    for kw in [{}, dict(batchnorm=False), dict(batchnorm=False, init="original")]:
        params = stage.init_params(stage.Config(**kw), rng.Generator(1))
        counts[tuple(kw.items())] = sum(p.data.size for p in params.values())
    # stage 03's 11,897; BatchNorm drops b1 (200) and adds its gain and bias (400)
    assert list(counts.values()) == [12097, 11897, 11897]
    for batchnorm, n in [(True, 47024), (False, 46497)]:
        C, layers = stage.deep_network(stage.Config(batchnorm=batchnorm), rng.Generator(1))
        assert C.data.size + sum(p.data.size for la in layers for p in la.parameters()) == n
    cfg = stage.Config()
    assert [stage.learning_rate(cfg, i) for i in (0, 99_999, 100_000)] == [0.1, 0.1, 0.01]


def test_gain_keeps_tanh_layers_alive_without_batchnorm():
    """Without BatchNorm, gain 1 lets the tanh outputs shrink layer after layer; tanh's
    gain 5/3 holds them steady (the lecture's comparison), at initialization."""
    from common import rng
    X = np.random.default_rng(0).integers(0, 27, (500, 3))
    stds = {}
    for gain in ("1", "5/3"):
        cfg = stage.Config(deep=True, batchnorm=False, gain=gain)
        C, layers = stage.deep_network(cfg, rng.Generator(cfg.seed))
        with stage.no_grad():
            stage.deep_forward(C, layers, X)
        stds[gain] = [la.out.data.std() for la in layers if isinstance(la, stage.Tanh)]
    assert stds["1"][-1] < 0.75 * stds["1"][0]  # shrinking
    assert stds["5/3"][-1] > 0.9 * stds["5/3"][1] and stds["5/3"][-1] > stds["1"][-1] + 0.15
    assert stage.parse_gain("5/3") == 5 / 3


# -- the lecture's numbers: the BatchNorm MLP (first half) --

@pytest.fixture(scope="module")
def part_a(tmp_path_factory):
    # the first 2,001 of the 200,000 steps; the full run's 20 printed losses (every 10,000
    # steps) and final numbers are checked by tests/benchmarks/bench_batchnorm.py
    out = tmp_path_factory.mktemp("out04a")
    return stage.main(["--steps", "2001", "--samples", "5", "--out", str(out)])


def test_initialization_puzzle(part_a):
    report = [(r["init"], r["batchnorm"], round(r["loss"], 4)) for r in part_a["init_report"]]
    assert report == [("original", False, 27.8817), ("softmax", False, 3.3221),
                      ("tanh", False, 3.3135), ("kaiming", False, 3.3179),
                      ("kaiming", True, 3.3239)]  # -ln(1/27) = 3.2958 is the target
    saturated = [round(r["saturated"], 4) for r in part_a["init_report"]]
    assert saturated == [0.6095, 0.6095, 0.0098, 0.0814, 0.0042]


def test_batchnorm_mlp_matches_the_lecture(part_a):
    assert part_a["sizes"] == (182625, 22655, 22866) and part_a["n_params"] == 12097
    lossi = part_a["lossi"]
    assert round(lossi[0], 4) == 3.3239  # the lecture's first printed loss
    # the next steps and every 500th, as PyTorch prints them given the same random numbers
    assert [round(x, 4) for x in lossi[1:5]] == [3.2736, 3.2064, 3.1753, 3.2302]
    assert [round(x, 4) for x in lossi[500::500]] == [2.4560, 2.4625, 2.3596, 2.3618]
    # our own run: the running estimates lag behind the calibrated statistics this early
    assert [round(part_a[k], 4) for k in ("train", "val", "test")] == [2.3691, 2.3689, 2.3684]
    assert [round(part_a["calibrated"][k], 4) for k in ("train", "val")] == [2.3641, 2.3651]
    assert part_a["samples"] == ["carpahxlan.", "hlel.", "kimrix.", "taty.", "halan."]


def test_part_a_outputs(part_a):
    from common import cli
    names = [p.split("/")[-1] for p in part_a["files"]]
    assert names == ["model.npz", "loss.png", "init_histograms.png", "init_saturation.png"]
    for p in part_a["files"][1:]:
        assert open(p, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    with np.load(part_a["files"][0]) as z:
        assert sorted(z.files) == ["C", "W1", "W2", "b2", "bnbias", "bngain", "bnmean_running",
                                   "bnstd_running", "meta.json"]
    assert cli.load_checkpoint_meta(part_a["files"][0])["config"]["steps"] == 2001


# -- the lecture's numbers: the deep network's diagnostic run (second half) --

@pytest.fixture(scope="module")
def part_b(tmp_path_factory):
    out = tmp_path_factory.mktemp("out04b")
    return stage.main(["--deep", "--out", str(out)])  # 1,001 steps, as the lecture's run


def test_deep_network_matches_the_lecture(part_b):
    assert part_b["n_params"] == 47024 and len(part_b["lossi"]) == 1001
    assert round(part_b["lossi"][0], 4) == 3.2870
    acts = part_b["activations"]
    assert [a["layer"] for a in acts] == [2, 5, 8, 11, 14]
    assert [round(a["std"], 2) for a in acts] == [0.63, 0.64, 0.65, 0.65, 0.65]
    assert [round(100 * a["saturated"], 2) for a in acts] == [2.78, 2.56, 2.25, 1.69, 1.88]
    assert f"{part_b['gradients'][0]['std']:e}" == "2.640702e-03"
    assert (round(part_b["train"], 4), round(part_b["val"], 4)) == (2.4003, 2.3982)
    assert part_b["samples"] == [
        "carpah.", "qarlileif.", "jmrix.", "thty.", "sacansa.", "jazhnte.", "dpn.",
        "arciigqeiunellaia.", "chriiv.", "kalein.", "dhlm.", "join.", "qhinn.", "sroin.",
        "arian.", "quiqaelogiearyxix.", "kaeklinsan.", "ed.", "ecoia.", "gtleley."]


def test_deep_network_diagnostics(part_b):
    # our own run's numbers (PyTorch, given the same random numbers, agrees to ~1e-6)
    assert [f"{g['std']:.4e}" for g in part_b["gradients"]] == [
        "2.6407e-03", "2.2456e-03", "2.0457e-03", "1.9831e-03", "1.9524e-03"]
    weights = part_b["weight_gradients"]
    assert [w["shape"] for w in weights] == [(27, 10), (30, 100)] + [(100, 100)] * 4 + \
        [(100, 27)]
    assert [f"{w['ratio']:.3e}" for w in weights] == [
        "8.013e-03", "4.881e-02", "6.965e-02", "6.074e-02", "5.631e-02", "5.570e-02",
        "1.160e-01"]
    ud = part_b["ud"]  # log10 update:data ratios of the 7 weights, every step
    assert ud.shape == (1001, 7) and np.isfinite(ud).all()
    assert -4 < ud[-100:, 0].mean() < -2.5 and -2.6 < ud[-100:, 1:].mean() < -1.5
    names = [p.split("/")[-1] for p in part_b["files"]]
    assert names == ["deep_activations.png", "deep_gradients.png",
                     "deep_weight_gradients.png", "deep_update_ratios.png", "deep.npz"]


# -- bad input --

@pytest.mark.parametrize("args", [["--init", "bogus"], ["--steps", "-1"], ["--gain", "abc"],
                                  ["--gain", "0"], ["--batch-size", "1"],
                                  ["--break-at", "-2"], ["--no-such-flag"]])
def test_bad_input_is_one_line(args):
    assert_one_line_error(run_script("04_batchnorm/train.py", *args))
