"""Stage 01: the Value engine's gradients, the lecture's examples, the moons demo."""

import math
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_one_line_error, load_stage, run_script

stage = load_stage("01_micrograd")
Value = stage.Value


def check_grads(fn, *xs, eps=1e-6, rel=1e-6, abs=1e-9):
    """Compare backward's d fn / d x_i with central differences
    (fn(x + eps) - fn(x - eps)) / 2 eps; fn takes and returns Values; float64 throughout."""
    inputs = [Value(x) for x in xs]
    out = fn(*inputs)
    out.backward()

    def at(i, delta):
        return fn(*[Value(x + delta if j == i else x) for j, x in enumerate(xs)]).data

    for i, v in enumerate(inputs):
        numerical = (at(i, eps) - at(i, -eps)) / (2 * eps)
        assert v.grad == pytest.approx(numerical, rel=rel, abs=abs), f"input {i}"
    return out


# -- every op against finite differences --

BINARY = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "div": lambda a, b: a / b,
    "mixed": lambda a, b: (a * b + a).tanh() * b - a / (b * b + 1),
}


@pytest.mark.parametrize("name", BINARY)
@pytest.mark.parametrize("a, b", [(1.3, -0.7), (-2.1, 0.4)])
def test_binary_ops_match_finite_differences(name, a, b):
    check_grads(BINARY[name], a, b)


UNARY = {  # name: (Value op, the same function on floats, inputs to try)
    "neg": (lambda a: -a, lambda x: -x, [1.3, -0.7]),
    "radd": (lambda a: 2 + a, lambda x: 2 + x, [1.3]),
    "rsub": (lambda a: 1 - a, lambda x: 1 - x, [1.3]),
    "rmul": (lambda a: 2 * a, lambda x: 2 * x, [-0.7]),
    "rtruediv": (lambda a: 1 / a, lambda x: 1 / x, [1.3, -0.7]),
    "pow2": (lambda a: a**2, lambda x: x**2, [1.3, -0.7]),
    "pow3": (lambda a: a**3, lambda x: x**3, [-0.7]),
    "pow-1": (lambda a: a**-1, lambda x: x**-1, [1.3]),
    "pow0.5": (lambda a: a**0.5, lambda x: x**0.5, [1.3]),
    "pow-1.5": (lambda a: a**-1.5, lambda x: x**-1.5, [0.6]),
    "exp": (lambda a: a.exp(), math.exp, [1.3, -0.7]),
    "log": (lambda a: a.log(), math.log, [1.3, 0.2]),
    "tanh": (lambda a: a.tanh(), math.tanh, [1.3, -0.7, 0.0, 4.0]),
    "relu": (lambda a: a.relu(), lambda x: max(x, 0.0), [1.3, -0.7]),
    "sigmoid": (lambda a: a.sigmoid(), lambda x: 1 / (1 + math.exp(-x)), [1.3, -0.7, 8.0]),
}


@pytest.mark.parametrize("name", UNARY)
def test_unary_ops_values_and_gradients(name):
    op, reference, xs = UNARY[name]
    for x in xs:
        out = check_grads(op, x)
        assert out.data == pytest.approx(reference(x), rel=1e-15, abs=1e-15)


def test_saturating_ops_do_not_overflow():
    for x, t, s in [(1000.0, 1.0, 1.0), (-1000.0, -1.0, 0.0)]:
        v = Value(x)
        out = v.tanh() + v.sigmoid()
        out.backward()
        assert (v.tanh().data, v.sigmoid().data) == (t, s)
        assert v.grad == 0.0  # flat on both sides, and no nan


def test_pow_takes_a_number_exponent_only():
    with pytest.raises(TypeError):
        Value(2.0) ** Value(3.0)


# -- the micrograd repository's reference values (computed there with PyTorch) --

def test_micrograd_sanity_check():
    x = Value(-4.0)
    z = 2 * x + 2 + x
    q = z.relu() + z * x
    h = (z * z).relu()
    y = h + q + q * x
    y.backward()
    assert (y.data, x.grad) == (-20.0, 46.0)


def test_micrograd_more_ops():
    a, b = Value(-4.0), Value(2.0)
    c = a + b
    d = a * b + b**3
    c += c + 1
    c += 1 + c + (-a)
    d += d * 2 + (b + a).relu()
    d += 3 * d + (b - a).relu()
    e = c - d
    f = e**2
    g = f / 2.0
    g += 10.0 / f
    g.backward()
    assert g.data == pytest.approx(24.70408163265306, rel=1e-14)
    assert a.grad == pytest.approx(138.83381924198252, rel=1e-14)
    assert b.grad == pytest.approx(645.5772594752186, rel=1e-14)


# -- the lecture's worked examples --

def test_numerical_derivative_of_the_parabola():
    assert stage.f(3.0) == 20.0
    assert stage.numerical_derivative(stage.f, 3.0) == 14.000300000063248  # as printed
    assert stage.numerical_derivative(stage.f, -3.0) == pytest.approx(-22.0, abs=1e-3)
    assert stage.numerical_derivative(stage.f, 2 / 3) == pytest.approx(0.0, abs=1e-3)


def test_lecture_expression_L():
    L = stage.lecture_expression()
    grads = {k: v.grad for k, v in stage.leaves(L).items()}
    assert L.data == -8.0
    assert grads == {"a": 6.0, "b": -4.0, "c": -2.0, "f": 4.0}


def test_lecture_tanh_neuron():
    o = stage.tanh_neuron()
    assert o.data == 0.7071067811865476  # the lecture's printed value, to the last digit
    grads = {k: v.grad for k, v in stage.leaves(o).items()}
    assert grads == pytest.approx({"x1": -1.5, "w1": 1.0, "x2": 0.5, "w2": 0.0, "b": 0.5},
                                  abs=1e-12)


# -- reuse and depth --

def test_a_value_used_twice_gets_both_contributions():
    a = Value(3.0)
    b = a + a  # the lecture's bug: with `=` instead of `+=` a.grad would be 1
    b.backward()
    assert a.grad == 2.0
    a = Value(3.0)
    (a * a).backward()
    assert a.grad == 6.0


def test_a_value_used_in_several_places():
    # d = (2a) * (a + 2a) = 6a^2, so dd/da = 12a
    a = Value(3.0)
    b = a * 2
    c = a + b
    d = b * c
    d.backward()
    assert (d.data, a.grad, b.grad, c.grad) == (54.0, 36.0, 15.0, 6.0)
    # the lecture's second example: d = a*b, e = a + b, f = d*e
    x, y = Value(-2.0), Value(3.0)
    g = (x * y) * (x + y)
    g.backward()
    assert (g.data, x.grad, y.grad) == (-6.0, -3.0, -8.0)


def test_deep_graph_needs_no_recursion():
    depth = 10_000
    assert depth > sys.getrecursionlimit()  # a recursive topological sort would fail
    x = Value(0.5)
    y = x
    for _ in range(depth):
        y = y + x  # 10,000 nodes deep, and x is used at every level
    y.backward()
    assert y.data == 0.5 * (depth + 1)
    assert x.grad == depth + 1
    z = Value(1.0)
    w = z
    for _ in range(depth):
        w = w * 1.0001  # d w / d z = 1.0001**10000, about e
    w.backward()
    assert z.grad == pytest.approx(1.0001**depth, rel=1e-12)


def test_backward_visits_each_node_once():
    a = Value(1.0)
    b = a * 2
    layers = [b]
    for _ in range(30):  # a diamond ladder: 2**30 paths, so revisiting would never end
        layers.append(layers[-1] + layers[-1] * 1.0)
    layers[-1].backward()
    assert a.grad == 2.0 * 2.0**30


# -- the network --

def test_mlp_shape_and_parameters():
    random.seed(0)
    model = stage.MLP(2, [16, 16, 1])
    params = model.parameters()
    assert len(params) == 337 == 2 * 16 + 16 + 16 * 16 + 16 + 16 + 1
    assert [n.nonlin for layer in model.layers for n in layer.neurons][-1] is False
    assert all(n.nonlin for n in model.layers[0].neurons + model.layers[1].neurons)
    assert all(n.b.data == 0.0 for layer in model.layers for n in layer.neurons)
    random.seed(0)  # weights are drawn in construction order: layer, neuron, input
    assert model.layers[0].neurons[0].w[0].data == random.uniform(-1, 1)
    out = model([Value(0.3), Value(-0.2)])
    assert isinstance(out, Value)  # a one-neuron layer returns a Value, not a list
    out.backward()
    assert any(p.grad != 0.0 for p in params)
    model.zero_grad()
    assert all(p.grad == 0.0 for p in params)
    assert str(model).startswith("MLP of [Layer of [ReLUNeuron(2), ")


def test_numpy_predict_matches_the_value_graph():
    random.seed(5)
    model = stage.MLP(2, [16, 16, 1])
    points = np.random.default_rng(0).normal(size=(20, 2))
    by_graph = [model(list(map(Value, p))).data for p in points.tolist()]
    np.testing.assert_allclose(stage.predict(model, points), by_graph, rtol=1e-12,
                               atol=1e-12)


def test_make_moons():
    np.random.seed(1337)
    X, y = stage.make_moons(100, noise=0.0)
    assert X.shape == (100, 2) and sorted(y.tolist()) == [0] * 50 + [1] * 50
    assert y[:50].tolist() != [0] * 50  # shuffled
    outer, inner = X[y == 0], X[y == 1]
    np.testing.assert_allclose(np.hypot(*outer.T), 1.0)  # the upper half circle
    np.testing.assert_allclose(np.hypot(inner[:, 0] - 1, inner[:, 1] - 0.5), 1.0)
    assert (outer[:, 1] >= -1e-12).all() and (inner[:, 1] <= 0.5 + 1e-12).all()
    np.random.seed(1337)
    noisy, y2 = stage.make_moons(100, noise=0.1)
    assert (y2 == y).all()  # the noise is drawn after the shuffle, as in scikit-learn
    assert 0.05 < np.std(noisy - X) < 0.15


# -- the moons demo, against the numbers the micrograd demo notebook prints --

# step: (loss, accuracy %) from the demo notebook's output
NOTEBOOK = [
    (0.8958441028683222, 50), (1.7235905336972022, 81), (0.7429006313851131, 77),
    (0.7705641260584198, 82), (0.3692793385976538, 84), (0.313545481918522, 86),
    (0.2814234349772435, 89), (0.26888733313983904, 91), (0.2567147286057417, 91),
    (0.2704862551637922, 91), (0.24507023853658053, 91), (0.2509905529791503, 92),
    (0.21560951851922952, 91), (0.23090378446402726, 93), (0.20152151227899445, 92),
    (0.22574506279282217, 93), (0.19447987596204114, 92), (0.21089496199246363, 93),
    (0.159830773563036, 94), (0.1845374874688392, 93), (0.18977522856087634, 91),
    (0.19072704042579647, 93), (0.11733695088756485, 97), (0.12173524408232454, 95),
    (0.1261571261277045, 95), (0.16049097780801674, 95), (0.18747197705245805, 92),
    (0.16741837891059408, 95), (0.09586583491455399, 97), (0.0877878370742091, 96),
    (0.11731297569011848, 95), (0.09340146460619836, 97), (0.12454454903103446, 95),
    (0.07984002652777272, 97), (0.07727519232921673, 97), (0.07661250143094483, 98),
    (0.10610492379198365, 96), (0.09062808429265976, 99), (0.10671887043036932, 95),
    (0.05225659921975849, 98), (0.06016009895234464, 100), (0.08596724533333942, 96),
    (0.051121079431796, 99), (0.052401424016428284, 97), (0.045306841790015734, 100),
    (0.07211073370655095, 97), (0.03334238651310234, 99), (0.03143222795751122, 100),
    (0.03658536747111507, 99), (0.04829139382390309, 99), (0.09875114765619622, 96),
    (0.05449063965875453, 99), (0.03392679435708309, 100), (0.05261517263568441, 97),
    (0.03250295251424923, 99), (0.02888327387207822, 100), (0.04139151104027239, 98),
    (0.018987407426128502, 100), (0.0252383352388374, 100), (0.02079656521341895, 100),
    (0.0325971115781023, 99), (0.017863351693480307, 100), (0.023008717832211683, 100),
    (0.022079325463581503, 100), (0.029432917853529684, 99), (0.01625151464409193, 100),
    (0.02846853448326446, 99), (0.013994365546208731, 100), (0.015552344843651405, 100),
    (0.0338911994616017, 99), (0.014229870065926908, 100), (0.013255281583285504, 100),
    (0.012300277590022063, 100), (0.012676052498355976, 100), (0.020593811955954763, 100),
    (0.011845398205364453, 100), (0.016012697472883086, 100), (0.025458360239222128, 100),
    (0.014382930289661911, 100), (0.011698962425817985, 100), (0.012318500800515763, 100),
    (0.014121117031464233, 100), (0.011664591962446225, 100), (0.011589314549188726, 100),
    (0.010990299347735226, 100), (0.01098922672069161, 100), (0.010988193757655071, 100),
    (0.010987200447388707, 100), (0.010986246779084925, 100), (0.010985332742365272, 100),
    (0.010984458327280174, 100), (0.010983623524308862, 100), (0.010982828324359073, 100),
    (0.010982072718767003, 100), (0.010981356699297042, 100), (0.010980680258141723, 100),
    (0.010980043387921506, 100), (0.010979446081684675, 100), (0.010978888332907229, 100),
    (0.010978370135492717, 100),
]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The full default run (100 steps, seed 1337), without figures: about 7 s."""
    return stage.main(["--no-plots", "--out", str(tmp_path_factory.mktemp("demo"))])


def test_moons_demo_reproduces_the_notebook(demo):
    losses, accuracies = demo["losses"], demo["accuracies"]
    assert demo["parameters"] == 337 and len(losses) == 100
    # bit for bit where the video's eye is: the first two steps and the last one
    assert losses[0] == 0.8958441028683222
    assert losses[1] == 1.7235905336972022
    assert losses[99] == demo["final_loss"] == 0.010978370135492717
    assert accuracies[99] == demo["final_accuracy"] == 1.0
    # every step: the same accuracy, and the loss within 3.1e-15 relative (up to 25 units
    # in the last place, at step 55)
    # (the notebook's gradient sums ran in an order set by memory addresses)
    assert [round(100 * a) for a in accuracies] == [acc for _, acc in NOTEBOOK]
    for k, (got, (want, _)) in enumerate(zip(losses, NOTEBOOK)):
        assert got == pytest.approx(want, rel=1e-14), f"step {k}"


def test_moons_result_includes_the_lecture_examples(demo):
    ex = demo["examples"]
    assert (ex["f3"], ex["L"], ex["o"]) == (20.0, -8.0, 0.7071067811865476)
    assert demo["config"]["seed"] == 1337 and demo["files"][0].endswith("graph.dot")


def test_seed_sets_both_generators(tmp_out):
    result = stage.main(["--seed", "7", "--steps", "1", "--no-plots", "--out", tmp_out])
    np.random.seed(7)  # the points come from numpy's generator...
    random.seed(7)  # ...and the weights from Python's
    X, y = stage.make_moons(100, 0.1)
    expected, _ = stage.loss(stage.MLP(2, [16, 16, 1]), X.tolist(), (y * 2 - 1).tolist())
    assert result["losses"] == [expected.data] and expected.data != NOTEBOOK[0][0]


# -- the command line and the files --

def test_short_run_writes_figures_and_dot(tmp_out, capsys):
    result = stage.main(["--out", tmp_out, "--steps", "2"])
    printed = capsys.readouterr().out
    assert "step 0 loss 0.8958441028683222, accuracy 50.0%" in printed
    assert "ms/step" in printed and "left" in printed
    files = {Path(p).name: Path(p) for p in result["files"]}
    assert sorted(files) == ["curves.png", "graph.dot", "graph.png", "moons.png"]
    assert sorted(p.name for p in Path(tmp_out).iterdir()) == sorted(files)  # no leftovers
    for name in ["curves.png", "graph.png", "moons.png"]:
        assert files[name].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    dot = files["graph.dot"].read_text()
    assert dot.startswith("digraph") and dot.rstrip().endswith("}")
    assert dot.count("shape=circle") == 5  # *, *, +, +, tanh
    assert "{ o | data 0.7071 | grad 1.0000 }" in dot
    assert "{ x1 | data 2.0000 | grad -1.5000 }" in dot


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz is optional")
def test_dot_text_renders_with_graphviz(tmp_path):
    path = tmp_path / "graph.dot"
    path.write_text(stage.graph_to_dot(stage.lecture_expression(), 'L = (a*b + c) * f "L"'))
    subprocess.run(["dot", "-Tpng", str(path), "-o", str(tmp_path / "g.png")], check=True)
    assert (tmp_path / "g.png").read_bytes()[:4] == b"\x89PNG"


def test_script_runs_as_the_readme_says(tmp_out):
    r = run_script("01_micrograd/train.py", "--steps", "2", "--no-plots", "--out", tmp_out)
    assert r.returncode == 0, r.stderr
    assert "step 1 loss " in r.stdout and "number of parameters 337" in r.stdout


@pytest.mark.parametrize("args", [["--steps", "-1"], ["--steps", "0"], ["--bogus"],
                                  ["--samples", "1"], ["--noise", "-0.1"], ["--seed", "-5"],
                                  ["--steps", "many"]])
def test_bad_input_is_a_one_line_error(args, tmp_out):
    result = run_script("01_micrograd/train.py", *args, "--out", tmp_out)
    assert "error" in assert_one_line_error(result)
    assert not Path(tmp_out).exists()  # rejected before anything is written


def test_unusable_output_folder_is_a_one_line_error(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    result = run_script("01_micrograd/train.py", "--out", str(blocker / "out"))
    assert "cannot write into output folder" in assert_one_line_error(result)
    assert "step 0" not in result.stdout  # it stops before training


def test_help_lists_the_options():
    r = run_script("01_micrograd/train.py", "--help")
    assert r.returncode == 0
    for flag in ["--steps", "--seed", "--samples", "--noise", "--out", "--no-plots"]:
        assert flag in r.stdout
    assert "micrograd" in r.stdout
