"""Stage 08: the recurrent cells and their fused op, truncated BPTT, AdamW, clipping,
sampling, and a seeded run's pinned numbers."""

import os
from pathlib import Path

# One BLAS thread, as the stage itself sets: OpenBLAS reads this once, when numpy is first
# imported, and on a busy 2-core machine a second thread makes these small matmuls 10-30x
# slower (tests/benchmarks/bench_rnn.py).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from conftest import assert_one_line_error, load_stage, run_script  # noqa: E402
from gradcheck import gradcheck  # noqa: E402

stage = load_stage("08_lstm_gru")
Tensor = stage.Tensor
CELLS = ["rnn", "gru", "lstm"]


def rand(*shape, seed=0, scale=1.0):
    return np.random.default_rng(seed).standard_normal(shape) * scale


def cell_weights(cell, E, H, seed=0, scale=0.5):
    """x-independent arrays of one layer, float64: W, b, b_hn (GRU), h0, c0 (LSTM)."""
    G = stage.GATES[cell] * H
    return dict(W=rand(E + H, G, seed=seed, scale=scale), b=rand(G, seed=seed + 1, scale=scale),
                b_hn=rand(H, seed=seed + 2, scale=scale), h0=rand(1, H, seed=seed + 3),
                c0=rand(1, H, seed=seed + 4))


def fused(cell):
    """f(x, h0, W, b, c0, b_hn) -> hs through the fused op."""
    def f(x, h0, W, b, c0, b_hn):
        return stage.recurrence(cell, x, h0, W, b, c0 if cell == "lstm" else None,
                                b_hn if cell == "gru" else None)[0]
    return f


def op_by_op(cell):
    """The same through the op-by-op cells (Recurrent.step_by_step)."""
    def f(x, h0, W, b, c0, b_hn):
        layer = stage.Recurrent.__new__(stage.Recurrent)
        layer.cell, layer.W, layer.b = cell, W, b
        layer.b_hn = b_hn if cell == "gru" else None
        return layer.step_by_step(x, h0, c0 if cell == "lstm" else None)[0]
    return f


def layer_inputs(cell, B=3, T=5, E=4, H=3, seed=0):
    w = cell_weights(cell, E, H, seed)
    arrays = [rand(B, T, E, seed=seed + 9), w["h0"], w["W"], w["b"], w["c0"], w["b_hn"]]
    wrt = [0, 1, 2, 3] + ([4] if cell == "lstm" else []) + ([5] if cell == "gru" else [])
    return arrays, wrt


# -- the new ops, against finite differences in float64 --

def test_sigmoid_cat_stack():
    gradcheck(Tensor, lambda a: a.sigmoid(), rand(4, 5, scale=3))
    gradcheck(Tensor, lambda a, b: stage.cat([a, b.tanh(), a], 1), rand(2, 3), rand(2, 4))
    gradcheck(Tensor, lambda a, b: stage.stack([a, b, a * b], 1), rand(2, 3), rand(2, 3))


def test_sigmoid_does_not_overflow():
    s = Tensor(np.array([-1000.0, 0.0, 1000.0], dtype=np.float32)).sigmoid()
    assert s.data.tolist() == [0.0, 0.5, 1.0] and s.data.dtype == np.float32


def test_embedding_equals_indexing():
    idx = np.array([[0, 3, 3], [1, 0, 3]])  # repeated rows get both gradients
    gradcheck(Tensor, lambda C: stage.embedding(C, idx), rand(5, 4))
    C1, C2 = Tensor(rand(5, 4), requires_grad=True), Tensor(rand(5, 4), requires_grad=True)
    R = rand(2, 3, 4, seed=1)
    (stage.embedding(C1, idx) * R).sum().backward()
    (C2[idx] * R).sum().backward()
    np.testing.assert_allclose(C1.grad, C2.grad, atol=1e-14)


def test_cross_entropy_ignores_padding():
    Y = np.array([2, -1, 0, -1, 4])
    gradcheck(Tensor, lambda x: stage.cross_entropy(x, Y, ignore_index=-1), rand(5, 6))
    x = Tensor(rand(5, 6), requires_grad=True)
    loss = stage.cross_entropy(x, Y, ignore_index=-1)
    kept = stage.cross_entropy(Tensor(rand(5, 6)[[0, 2, 4]]), Y[[0, 2, 4]])
    assert loss.item() == pytest.approx(kept.item(), rel=1e-14)  # mean over kept rows only
    loss.backward()
    assert not x.grad[[1, 3]].any()


# -- the cells: finite differences over several time steps, fused == op by op --

@pytest.mark.parametrize("cell", CELLS)
def test_cells_gradient_over_time_steps(cell):
    arrays, wrt = layer_inputs(cell, B=2, T=4, E=3, H=3)
    gradcheck(Tensor, op_by_op(cell), *arrays, wrt=wrt)


@pytest.mark.parametrize("cell", CELLS)
def test_fused_recurrence_gradient(cell):
    arrays, wrt = layer_inputs(cell, B=2, T=4, E=3, H=3, seed=5)
    gradcheck(Tensor, fused(cell), *arrays, wrt=wrt)


@pytest.mark.parametrize("cell", CELLS)
def test_fused_equals_op_by_op(cell):
    arrays, wrt = layer_inputs(cell, B=4, T=7, E=5, H=6, seed=2)
    a = [Tensor(x, requires_grad=True) for x in arrays]
    b = [Tensor(x, requires_grad=True) for x in arrays]
    out_a, out_b = fused(cell)(*a), op_by_op(cell)(*b)
    np.testing.assert_allclose(out_a.data, out_b.data, rtol=0, atol=1e-14)
    R = rand(*out_a.shape, seed=3)
    (out_a * R).sum().backward()
    (out_b * R).sum().backward()
    for i in wrt:
        np.testing.assert_allclose(a[i].grad, b[i].grad, rtol=0, atol=1e-13)


# PyTorch 2.13's RNNCell / GRUCell / LSTMCell (float64) on the inputs of torch_case():
# weight_ih = W[:E].T, weight_hh = W[E:].T, bias_ih = b, bias_hh = 0 (GRU: 0, 0, b_hn).
TORCH = {
    "rnn": [[0.381586071439995, -0.9917007167065729], [-0.9166657021149327, -0.9948447344097677]],
    "gru": [[-0.955912425430791, 0.9986707867565636], [0.9543995680834348, 0.7730591320365108]],
    "lstm": ([[0.1797442357256296, -0.02136673275510591],
              [-0.2688373372607746, 0.0017091847983970552]],
             [[1.2074846055983937, -0.5705703878157619],
              [-0.3069839677248999, 0.7985617373953389]]),
}


def torch_case(cell, B=2, E=3, H=2):
    r = np.random.default_rng(8)
    x, h, c = r.standard_normal((B, E)), r.standard_normal((B, H)), r.standard_normal((B, H))
    k = stage.GATES[cell]
    W, b = r.standard_normal((E + H, k * H)), r.standard_normal(k * H)
    return x, h, c, W, b, r.standard_normal(H)


@pytest.mark.parametrize("cell", CELLS)
def test_cells_match_pytorch(cell):
    x, h, c, W, b, b_hn = (Tensor(a) for a in torch_case(cell))
    if cell == "rnn":
        np.testing.assert_allclose(stage.rnn_cell(x, h, W, b).data, TORCH["rnn"], atol=1e-15)
    elif cell == "gru":
        np.testing.assert_allclose(stage.gru_cell(x, h, W, b, b_hn).data, TORCH["gru"],
                                   atol=1e-15)
    else:
        h1, c1 = stage.lstm_cell(x, h, c, W, b)
        np.testing.assert_allclose(h1.data, TORCH["lstm"][0], atol=1e-15)
        np.testing.assert_allclose(c1.data, TORCH["lstm"][1], atol=1e-15)


# -- truncated backpropagation through time --

def small_model(cell, n_layer=2, dtype=np.float64, vocab_size=7, fused=False):
    cfg = stage.Config(cell=cell, n_embd=5, n_hidden=4, n_layer=n_layer, fused=fused)
    model = stage.RecurrentLM(cfg, vocab_size, stage.rng.Generator(1))
    for p in model.parameters():
        p.data = p.data.astype(dtype)
    return model


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("fused_op", [True, False])
def test_carried_chunks_equal_one_long_forward(cell, fused_op):
    model = small_model(cell)
    X = np.random.default_rng(0).integers(0, 7, (3, 12))
    with stage.no_grad():
        whole, end = model(X)
        first, state = model(X[:, :5])
        second, end2 = model(X[:, 5:], state)
    np.testing.assert_allclose(np.concatenate([first.data, second.data], 1), whole.data,
                               rtol=0, atol=1e-14)
    for (h, c), (h2, c2) in zip(end, end2):  # the same final state to carry on from
        np.testing.assert_allclose(h, h2, atol=1e-14)
        assert (c is None) == (c2 is None) and (c is None or np.allclose(c, c2, atol=1e-14))


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("fused_op", [True, False])
def test_no_gradient_reaches_the_previous_chunk(cell, fused_op):
    model = small_model(cell)
    X1 = np.full((2, 4), 6)                          # token 6 appears only in chunk 1
    X2 = np.random.default_rng(1).integers(0, 6, (2, 4))
    logits1, state = model(X1)
    logits2, _ = model(X2, state)
    stage.sequence_loss(logits2, X2).backward()
    assert logits1.grad is None                      # chunk 1's graph was cut off
    assert not model.wte.weight.grad[6].any()               # its inputs got nothing
    assert model.wte.weight.grad[X2.ravel()].any()
    # the carried state was a constant: the gradient equals one from a detached restart
    grads = {k: p.grad.copy() for k, p in model.named_parameters() if p.grad is not None}
    fresh = small_model(cell)
    logits2b, _ = fresh(X2, [tuple(None if a is None else a.copy() for a in s)
                             for s in state])
    stage.sequence_loss(logits2b, X2).backward()
    for k, p in fresh.named_parameters():
        if k in grads:
            np.testing.assert_allclose(p.grad, grads[k], atol=1e-14)
        else:
            assert p.grad is None                    # e.g. the learned start state


@pytest.mark.parametrize("cell,init_state", [("rnn", "zero"), ("gru", "learned"),
                                             ("lstm", "learned")])
def test_stacked_model_gradient(cell, init_state):
    """Two stacked layers, embedding and head: the loss's gradient for a sample of every
    parameter's entries, against central differences."""
    cfg = stage.Config(cell=cell, n_embd=3, n_hidden=4, n_layer=2, init_state=init_state)
    model = stage.RecurrentLM(cfg, 5, stage.rng.Generator(2))
    for p in model.parameters():
        p.data = p.data.astype(np.float64)
    r = np.random.default_rng(3)
    X, Y = r.integers(0, 5, (2, 6)), r.integers(-1, 5, (2, 6))

    def loss():
        return stage.sequence_loss(model(X)[0], Y)
    loss().backward()
    names = [name for name, _ in model.named_parameters()]
    assert ("layers.0.h0" in names) == (init_state == "learned")
    for name, p in model.named_parameters():
        for i in r.choice(p.data.size, min(4, p.data.size), replace=False):
            idx = np.unravel_index(i, p.data.shape)
            old = p.data[idx]
            p.data[idx] = old + 1e-6
            up = loss().item()
            p.data[idx] = old - 1e-6
            down = loss().item()
            p.data[idx] = old
            assert p.grad[idx] == pytest.approx((up - down) / 2e-6, rel=1e-5, abs=1e-8), name


def test_text_streams_continue_row_by_row():
    tokens = np.arange(100)
    streams = stage.TextStreams(tokens, batch_size=3, bptt=10)  # 33 characters per stream
    X1, Y1, r1 = streams.next()
    X2, Y2, r2 = streams.next()
    X3, _, _ = streams.next()
    _, _, r4 = streams.next()                                  # 30 + 10 > 33: start over
    assert X1[:, 0].tolist() == [0, 33, 66] and (X2[:, 0] == X1[:, -1] + 1).all()
    assert (Y1 == X1 + 1).all() and not r1 and not r2 and r4
    with pytest.raises(stage.cli.UserError):
        stage.TextStreams(tokens[:20], batch_size=3, bptt=10)


# -- AdamW, clipping, the model --

def test_adamw_matches_pytorch():
    p = Tensor(np.array([[0.5, -1.0], [2.0, 0.25]]), requires_grad=True)
    opt = stage.AdamW([("p", p)], lr=0.1, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.01)
    for g in ([[0.1, -0.2], [0.3, 0.0]], [[-0.5, 0.4], [0.2, 1.0]], [[0.05, 0.05], [-0.1, 0.3]]):
        p.grad = np.array(g)
        opt.step()
    # torch.optim.AdamW, same settings and gradients (PyTorch 2.13, float64)
    np.testing.assert_allclose(p.data, [[0.4981529165468427, -0.96898368057194],
                                        [1.7418507912961865, 0.10164697578755835]], atol=1e-15)


def test_clip_grad_norm():
    a, b = Tensor(np.zeros(2), requires_grad=True), Tensor(np.zeros((1, 1)), requires_grad=True)
    a.grad, b.grad = np.array([3.0, 4.0]), np.array([[12.0]])
    assert stage.clip_grad_norm_([a, b], 1.0) == 13.0          # sqrt(9 + 16 + 144)
    np.testing.assert_allclose(a.grad, [3 / 13, 4 / 13], rtol=1e-6)  # torch: same numbers
    np.testing.assert_allclose(b.grad, [[12 / 13]], rtol=1e-6)
    assert stage.clip_grad_norm_([a, b], 5.0) == pytest.approx(1.0, rel=1e-6)
    np.testing.assert_allclose(a.grad, [3 / 13, 4 / 13], rtol=1e-6)  # under the limit: as is


@pytest.mark.parametrize("cell,count", [("rnn", 11803), ("gru", 28379), ("lstm", 36635)])
def test_parameter_counts(cell, count):
    # makemore's RNN has 11,803 too; its GRU 28,315: ours adds the GRU's b_hn (64), as torch
    model = stage.RecurrentLM(stage.Config(cell=cell), 27, stage.rng.Generator(3407))
    assert sum(p.data.size for p in model.parameters()) == count
    zero = stage.RecurrentLM(stage.Config(cell=cell, init_state="zero"), 27,
                             stage.rng.Generator(3407))
    assert sum(p.data.size for p in zero.parameters()) == count - 64 * (2 if cell == "lstm" else 1)


def test_names_dataset_is_makemores():
    stoi, itos = stage.data.names_vocab()
    X, Y, lengths = stage.names_dataset(["emma", "abcdefghijklmno"], stoi)
    assert X[0].tolist() == [0, 5, 13, 13, 1] + [0] * 11
    assert Y[0].tolist() == [5, 13, 13, 1, 0] + [-1] * 11
    assert Y[1, -1] == 0 and lengths.tolist() == [5, 16]
    train, test = stage.names_split(stage.data.load_names())
    assert (len(train), len(test)) == (31033, 1000) and not set(train[:50]) & set(test)


def test_batches_are_trimmed_without_changing_the_loss():
    model = small_model("gru", n_layer=1, vocab_size=27)
    stoi, _ = stage.data.names_vocab()
    X, Y, L = stage.names_dataset(["ava", "emma", "olivia"], stoi)
    full = stage.sequence_loss(model(X)[0], Y).item()
    assert stage.sequence_loss(model(X[:, :7])[0], Y[:, :7]).item() == pytest.approx(full,
                                                                                     rel=1e-14)
    g = stage.rng.Generator(0)
    Xb, Yb = stage.name_batch(X, Y, L, 8, g)
    assert Xb.shape[1] == L.max() == 7


# -- sampling --

def test_temperature_and_top_k():
    logits = np.log(np.array([[0.5, 0.25, 0.125, 0.125]]))
    np.testing.assert_allclose(stage.next_token_probs(logits), [[0.5, 0.25, 0.125, 0.125]])
    np.testing.assert_allclose(stage.next_token_probs(logits, top_k=2), [[2 / 3, 1 / 3, 0, 0]])
    cold = stage.next_token_probs(logits, temperature=0.5)  # squares, renormalised
    np.testing.assert_allclose(cold, [[16 / 22, 4 / 22, 1 / 22, 1 / 22]])


def test_greedy_names_repeat_and_sampling_stops():
    model = small_model("gru", n_layer=1, dtype=np.float32)
    model.vocab_size = 7
    g = stage.rng.Generator(0)
    itos = {i: "abcdefg"[i] for i in range(7)}
    stoi = {s: i for i, s in itos.items()}
    greedy = stage.sample_names(model, 4, g, stoi, itos, greedy=True)
    assert len(set(greedy)) == 1                      # always the likeliest: one name
    rows = stage.generate(model, [[0, 1]] * 5, 30, g, stop=0)
    for row in rows.tolist():
        rest = row[2:]
        assert 0 not in rest or set(rest[rest.index(0):]) == {0}  # nothing after the stop


# -- runs --

# a GRU, 300 steps with the default settings (seed 3407), measured on this code
PINNED = dict(first=3.3137, eval=[3.311, 2.5678, 2.4309, 2.3758],
              samples=["ral.", "drioli.", "celiconc.", "flayon.", "hmis.", "cerrier.", "menal.",
                       "jkeremtan."])


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    out = tmp_path_factory.mktemp("out08")
    return stage.main(["--steps", "300", "--eval-interval", "100", "--samples", "8", "--no-plots",
                       "--out", str(out)])


def test_seeded_run_is_pinned(result):
    assert result["n_params"] == 28379
    assert round(result["loss"][0], 4) == PINNED["first"]
    assert [round(x, 4) for x in result["eval_loss"]] == PINNED["eval"]
    assert result["samples"] == PINNED["samples"]
    assert len(set(result["greedy"])) == 1


def test_checkpoint_written_and_sampled(result):
    saved, meta = stage.load_checkpoint(result["files"][0])
    assert saved.cell == "gru" and meta["step"] == 300
    with np.load(result["files"][0]) as z:
        arrays = {k: z[k] for k in z.files}
    assert sorted(k for k in arrays if k.startswith("model.")) == [
        "model.layers.0.W", "model.layers.0.b", "model.layers.0.b_hn", "model.layers.0.h0",
        "model.lm_head.bias", "model.lm_head.weight", "model.wte.weight"]
    assert arrays["model.layers.0.W"].shape == (128, 192)
    out = str(Path(result["files"][0]).parent)
    again = stage.main(["--sample", "--samples", "8", "--out", out])
    assert again["samples"] == result["samples"]  # same weights, same seed: same names


def test_fused_training_gives_the_same_run(tmp_out):
    """The default run (the cells op by op) and --fused (one op per layer) train alike."""
    a = stage.main(["--steps", "30", "--cell", "lstm", "--samples", "0", "--no-plots",
                    "--out", tmp_out])
    b = stage.main(["--steps", "30", "--cell", "lstm", "--samples", "0", "--no-plots",
                    "--fused", "--out", tmp_out])
    np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-5)


def test_compare_and_figures(tmp_out):
    res = stage.main(["--compare", "--steps", "20", "--eval-interval", "10", "--out", tmp_out])
    assert sorted(res["results"]) == sorted(CELLS)
    assert sorted(p.split("/")[-1] for p in res["files"]) == \
        ["compare.png", "gates.png", "gradient_through_time.png"]


def test_shakespeare_truncated_bptt_run(tmp_out):
    res = stage.main(["--dataset", "shakespeare", "--cell", "lstm", "--steps", "20",
                      "--n-hidden", "32", "--bptt", "16", "--eval-interval", "10",
                      "--samples", "1", "--max-new-tokens", "100", "--out", tmp_out])
    assert res["eval_loss"][-1] < res["eval_loss"][0]
    assert len(res["samples"][0]) == 101 and res["samples"][0][0] == "\n"
    names = sorted(p.split("/")[-1] for p in res["files"])
    assert names == ["ckpt.npz", "gates.png", "gradient_through_time.png", "hidden_state.png",
                     "loss.png"]


def test_min_lr_is_checked_only_with_the_cosine_schedule():
    """--min-lr is the end of the cosine decay: under the default constant schedule a
    learning rate below it is fine."""
    from common import cli
    assert cli.parse_config(stage.Config, ["--lr", "3e-5"]).lr == 3e-5
    with pytest.raises(SystemExit):
        cli.parse_config(stage.Config, ["--lr", "3e-5", "--schedule", "cosine"])


@pytest.mark.parametrize("args", [["--cell", "transformer"], ["--n-hidden", "0"],
                                  ["--temperature", "0"], ["--prompt", "Zoe"],
                                  ["--prompt", "abcdefghijklmno"],
                                  ["--sample", "--out", "no/such/folder"]])
def test_bad_input_is_one_line(args):
    line = assert_one_line_error(run_script("08_lstm_gru/train.py", "--steps", "1",
                                            "--no-plots", *args))
    if args[:2] == ["--prompt", "Zoe"]:
        assert "'Z'" in line
    if args[:2] == ["--prompt", "abcdefghijklmno"]:
        assert "at most 14" in line


def test_ctrl_c_keeps_the_model_trained_so_far(tmp_path, monkeypatch):
    """Ctrl-C in the middle of a step: the step finishes, the model is saved at the step
    it stopped at, and --sample works from it."""
    import os
    import signal
    real, calls = stage.clip_grad_norm_, []

    def clip_then_ctrl_c(*args):
        calls.append(1)
        if len(calls) == 5:
            os.kill(os.getpid(), signal.SIGINT)
        return real(*args)
    monkeypatch.setattr(stage, "clip_grad_norm_", clip_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        stage.main(["--steps", "50", "--eval-interval", "100", "--no-plots",
                    "--out", str(tmp_path)])
    saved, meta = stage.load_checkpoint(tmp_path / "ckpt.npz")
    assert meta["step"] == 5
    monkeypatch.setattr(stage, "clip_grad_norm_", real)
    assert len(stage.main(["--sample", "--samples", "3", "--out", str(tmp_path)])["samples"]) \
        == 3
