"""Stage 07 with GPT-2's weights (--init-from gpt2) and the KV cache (--kv-cache).

No real weights are needed: a small model of the stage, built with GPT-2's architecture
(biased q/k/v, lm_head tied to wte) and randomly initialized, is written out in the layout
Hugging Face publishes (named by hand here, from GPT-2's structure, not by the stage's own
mapping), read back through --init-from gpt2, and checked against the original model and
against a separate numpy forward pass written from GPT-2's equations."""

import math
import re
from dataclasses import replace

import numpy as np
import pytest

from common import rng, safetensors
from conftest import assert_one_line_error, load_stage, run_script
from gradcheck import gradcheck

stage = load_stage("07_gpt")
VOCAB = 50257  # GPT-2's tokenizer
SMALL = dict(n_layer=2, n_head=4, n_embd=32, block_size=16)  # a GPT-2 at toy size


def gpt2_config(**kw):
    return replace(stage.Config(), init_from="gpt2", tokenizer="gpt2", activation="gelu",
                   dropout=0.0, **dict(SMALL, **kw))


def random_gpt2(seed=0, **kw):
    """A GPT-2-shaped model of the stage with random weights, biases and LayerNorms
    included (not zeros, so every tensor's place is tested)."""
    model = stage.build_model(gpt2_config(**kw), VOCAB, rng.Generator(seed))
    r = np.random.default_rng(seed)
    for p in model.parameters():
        p.data = (p.data + 0.1 * r.standard_normal(p.data.shape)).astype(np.float32)
    return model


def gpt2_file_layout(model, prefix="", buffers=True):
    """The model's tensors as GPT-2's published file names them, assembled by hand:
    c_attn.weight is (C, 3C) with the columns [q of head 0..H-1 | k ... | v ...]; the
    Conv1D weights are (in, out); no lm_head (tied); the causal-mask buffers attn.bias
    present when `buffers`, as in older files."""
    T = model.block_size
    out = {"wte.weight": model.token_embedding_table.weight.data,
           "wpe.weight": model.position_embedding_table.weight.data}
    for i, block in enumerate(model.blocks.layers):
        heads = block.sa.heads
        q = [h.query for h in heads]
        k = [h.key for h in heads]
        v = [h.value for h in heads]
        out[f"h.{i}.attn.c_attn.weight"] = np.concatenate(
            [m.weight.data for m in q + k + v], axis=1)
        out[f"h.{i}.attn.c_attn.bias"] = np.concatenate([m.bias.data for m in q + k + v])
        out[f"h.{i}.attn.c_proj.weight"] = block.sa.proj.weight.data
        out[f"h.{i}.attn.c_proj.bias"] = block.sa.proj.bias.data
        fc, _, proj, _ = block.ffwd.net.layers
        out[f"h.{i}.mlp.c_fc.weight"], out[f"h.{i}.mlp.c_fc.bias"] = fc.weight.data, fc.bias.data
        out[f"h.{i}.mlp.c_proj.weight"] = proj.weight.data
        out[f"h.{i}.mlp.c_proj.bias"] = proj.bias.data
        out[f"h.{i}.ln_1.weight"], out[f"h.{i}.ln_1.bias"] = block.ln1.weight.data, block.ln1.bias.data
        out[f"h.{i}.ln_2.weight"], out[f"h.{i}.ln_2.bias"] = block.ln2.weight.data, block.ln2.bias.data
        if buffers:
            out[f"h.{i}.attn.bias"] = np.tril(np.ones((T, T), np.float32))[None, None]
    out["ln_f.weight"], out["ln_f.bias"] = model.ln_f.weight.data, model.ln_f.bias.data
    return {prefix + name: np.ascontiguousarray(a) for name, a in out.items()}


def reference_forward(t, idx, n_head):
    """GPT-2's forward pass, written from its equations on the file's tensors (float64):
    pre-LayerNorm blocks, causal attention with the heads side by side in c_attn, GELU
    with the tanh approximation, logits = x @ wte^T."""
    def ln(x, w, b):
        mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + 1e-5) * w + b

    t = {k: v.astype(np.float64) for k, v in t.items()}
    T = idx.shape[1]
    x = t["wte.weight"][idx] + t["wpe.weight"][:T]
    C = x.shape[-1]
    hs = C // n_head
    i = 0
    while f"h.{i}.ln_1.weight" in t:
        h = lambda name: t[f"h.{i}.{name}"]  # noqa: E731
        a = ln(x, h("ln_1.weight"), h("ln_1.bias")) @ h("attn.c_attn.weight") + \
            h("attn.c_attn.bias")
        q, k, v = (a[..., j * C:(j + 1) * C].reshape(*a.shape[:2], n_head, hs)
                   .transpose(0, 2, 1, 3) for j in range(3))
        att = q @ k.transpose(0, 1, 3, 2) / math.sqrt(hs)
        att = np.where(np.tril(np.ones((T, T))) == 1, att, -np.inf)
        att = np.exp(att - att.max(-1, keepdims=True))
        att /= att.sum(-1, keepdims=True)
        y = (att @ v).transpose(0, 2, 1, 3).reshape(x.shape)
        x = x + y @ h("attn.c_proj.weight") + h("attn.c_proj.bias")
        m = ln(x, h("ln_2.weight"), h("ln_2.bias")) @ h("mlp.c_fc.weight") + h("mlp.c_fc.bias")
        m = 0.5 * m * (1 + np.tanh(math.sqrt(2 / math.pi) * (m + 0.044715 * m**3)))
        x = x + m @ h("mlp.c_proj.weight") + h("mlp.c_proj.bias")
        i += 1
    return ln(x, t["ln_f.weight"], t["ln_f.bias"]) @ t["wte.weight"].T


@pytest.fixture(scope="module")
def gpt2_file(tmp_path_factory):
    """(the original model, a GPT-2-layout safetensors file of it, with the
    'transformer.' prefix some exports use and the mask buffers)."""
    model = random_gpt2()
    path = tmp_path_factory.mktemp("gpt2") / "model.safetensors"
    safetensors.save(path, gpt2_file_layout(model, prefix="transformer."),
                     metadata={"format": "pt"})
    return model, path


def load(path, **given):
    """read_gpt2 + load_gpt2 as --init-from gpt2 --weights path does, with `given` flags."""
    cfg = replace(stage.Config(), init_from="gpt2", tokenizer="gpt2", activation="gelu",
                  weights=str(path), sample=True, **given)
    cfg, tensors = stage.read_gpt2(cfg, set(given) | {"init_from", "weights"})
    return cfg, stage.load_gpt2(cfg, tensors, rng.Generator(0))


IDX = np.array([[464, 2068, 7586, 21831, 18045, 625, 262, 16931, 3290, 13],
                [50256, 15496, 11, 995, 0, 198, 5962, 22307, 25, 3]])


def test_layout_round_trip_gives_the_same_logits(gpt2_file):
    model, path = gpt2_file
    cfg, loaded = load(path, n_head=4)
    assert (cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.block_size) == (2, 4, 32, 16)
    want, _ = model(IDX)
    got, _ = loaded(IDX)
    np.testing.assert_array_equal(got.data, want.data)
    assert sum(p.data.size for p in loaded.parameters()) == \
        sum(p.data.size for p in model.parameters())


def test_logits_match_gpt2_equations(gpt2_file):
    """The stage's GPT with GPT-2's weights computes what GPT-2 computes: a separate
    forward pass from the file's tensors agrees to float32 rounding, with both
    attention paths."""
    _, path = gpt2_file
    tensors = {k.removeprefix("transformer."): v for k, v in safetensors.load(path).items()}
    want = reference_forward(tensors, IDX, n_head=4)
    for attention in ("heads", "batched"):
        _, model = load(path, n_head=4, attention=attention)
        got, _ = model(IDX)
        np.testing.assert_allclose(got.data, want, rtol=0, atol=2e-4)


def test_tied_lm_head_is_one_tensor(gpt2_file):
    _, path = gpt2_file
    _, model = load(path, n_head=4)
    wte = model.token_embedding_table.weight
    assert model.lm_head.tied[0].weight is wte
    names = [name for name, _ in model.named_parameters()]
    assert len(names) == len(set(names)) and not any("lm_head" in n for n in names)
    assert sum(p is wte for p in model.parameters()) == 1


def test_tied_weights_gradient_sums_both_uses():
    """d loss / d wte collects the embedding lookup's gradient and the output layer's:
    checked against finite differences in float64."""
    Tensor = stage.Tensor
    idx = np.array([[1, 3, 3, 0]])
    emb = stage.Embedding(5, 3)
    head = stage.TiedLinear(emb)

    def f(W, X):
        emb.weight = W
        return head(emb(idx) + X)      # (1, 4, 5): W used at both ends

    gradcheck(Tensor, f, np.random.default_rng(0).standard_normal((5, 3)),
              np.random.default_rng(1).standard_normal((1, 4, 3)))


def test_sizes_follow_from_the_shapes(gpt2_file, tmp_path):
    """Without --n-head, heads of 64: a 128-wide model has 2; --block-size crops wpe."""
    model = random_gpt2(n_embd=128, n_head=2, n_layer=1)
    path = tmp_path / "g.safetensors"
    safetensors.save(path, gpt2_file_layout(model, buffers=False))
    cfg, loaded = load(path)
    assert (cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.block_size) == (1, 2, 128, 16)
    cfg, cropped = load(path, block_size=8)
    assert cropped.position_embedding_table.weight.shape == (8, 128)
    np.testing.assert_array_equal(cropped(IDX[:, :8])[0].data, loaded(IDX[:, :8])[0].data)


def bad_file(tmp_path, edit):
    tensors = gpt2_file_layout(random_gpt2(n_layer=1))
    edit(tensors)
    path = tmp_path / "bad.safetensors"
    safetensors.save(path, tensors)
    return path


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.pop("h.0.mlp.c_fc.bias"), "no h.0.mlp.c_fc.bias"),
    (lambda t: t.update({"h.0.mlp.extra": np.zeros(3, np.float32)}), "unexpected h.0.mlp.extra"),
    (lambda t: t.update({"h.0.mlp.c_fc.weight": np.zeros((32, 100), np.float32)}),
     "h.0.mlp.c_fc.weight has shape [32, 100]"),
    (lambda t: t.update({"wte.weight": t["wte.weight"][:1000]}), "1,000 tokens"),
    (lambda t: t.pop("wpe.weight"), "not a GPT-2"),
    (lambda t: t.update({"lm_head.weight": t["wte.weight"] + 1}), "ties them"),
])
def test_foreign_files_are_refused(tmp_path, edit, message):
    path = bad_file(tmp_path, edit)
    with pytest.raises(stage.cli.UserError, match=re.escape(message)):
        load(path, n_head=4)


def test_an_untied_copy_of_wte_is_accepted(tmp_path):
    path = bad_file(tmp_path, lambda t: t.update({"lm_head.weight": t["wte.weight"]}))
    load(path, n_head=4)


def test_command_line_errors_are_one_line(gpt2_file, tmp_path):
    _, path = gpt2_file
    for args, message in [
        ([], "needs --weights"),
        (["--weights", tmp_path / "none.safetensors"], "none.safetensors"),
        (["--weights", path, "--n-head", "4", "--block-size", "17"], "beyond GPT-2's context"),
        (["--weights", path, "--tokenizer", "char"], "own tokenizer"),
        (["--weights", path, "--model", "bigram"], "full GPT"),
    ]:
        line = assert_one_line_error(run_script("07_gpt/train.py", "--init-from", "gpt2",
                                                "--sample", *args))
        assert message in line, line


def test_sample_and_fine_tune_from_the_command_line(gpt2_file, tmp_path, capsys):
    """--sample generates from the file (the same tokens with and without the KV cache);
    training flags fine-tune it on tiny Shakespeare, and the checkpoint samples again."""
    _, path = gpt2_file
    common = ["--init-from", "gpt2", "--weights", str(path), "--n-head", "4"]
    texts = [stage.main(common + ["--sample", "--prompt", "ROMEO:", "--max-new-tokens",
                                  "20", *cache])["text"] for cache in ([], ["--kv-cache"])]
    assert texts[0] == texts[1] and texts[0].startswith("ROMEO:") and len(texts[0]) > 6
    out = str(tmp_path / "ft")
    r = stage.main(common + ["--steps", "2", "--batch-size", "2", "--block-size", "16",
                             "--eval-interval", "1", "--eval-iters", "1",
                             "--max-new-tokens", "3", "--no-plots", "--out", out])
    assert r["config"]["lr"] == 3e-5 and r["config"]["schedule"] == "constant"
    assert r["config"]["n_embd"] == 32 and r["saved_step"] is not None
    s = stage.main(["--sample", "--out", out, "--max-new-tokens", "5", "--kv-cache"])
    assert s["config"]["init_from"] == "gpt2"


# --- the KV cache -----------------------------------------------------------------------
def char_gpt(attention, block_size=12):
    cfg = replace(stage.Config(), n_layer=2, n_head=2, n_embd=16, block_size=block_size,
                  attention=attention)
    return stage.build_model(cfg, 65, rng.Generator(3))


@pytest.mark.parametrize("attention", ["heads", "batched"])
def test_cached_forward_equals_full_forward(attention):
    """Feeding a sequence one token at a time through the caches gives, at every
    position, the logits of one forward pass over the whole sequence."""
    model = char_gpt(attention)
    idx = np.random.default_rng(0).integers(0, 65, (2, 12))
    with stage.no_grad():
        full, _ = model(idx)
        model.use_kv_cache(True)
        steps = []
        for t in range(12):
            logits, _ = model(idx[:, t:t + 1])
            model.cached += 1
            steps.append(logits.data[:, 0])
        model.use_kv_cache(False)
    np.testing.assert_allclose(np.stack(steps, axis=1), full.data, rtol=0, atol=1e-5)


@pytest.mark.parametrize("attention", ["heads", "batched"])
def test_cached_generation_equals_uncached(attention):
    """The same tokens, also past the context length (where the window slides and the
    caches start again), and the model works normally afterwards."""
    model = char_gpt(attention, block_size=8)
    prompt = np.array([[5, 9, 13]])
    runs = [model.generate(prompt, 20, rng.Generator(7), kv_cache=c) for c in (False, True)]
    np.testing.assert_array_equal(runs[0], runs[1])
    assert runs[0].shape == (1, 23)
    assert model.cached == 0 and all(
        m.cache is None for m in model.blocks.layers[0].sa.heads + [model.blocks.layers[0].sa])
    a, _ = model(runs[0][:, :8])
    b, _ = char_gpt(attention, block_size=8)(runs[0][:, :8])
    np.testing.assert_array_equal(a.data, b.data)
