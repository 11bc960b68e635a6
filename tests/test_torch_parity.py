"""The engine's torch names behave as PyTorch documents them. Each op is tested in the
stage that introduces it (later stages carry it unchanged: tests/test_copy_forward.py)."""

import numpy as np
import pytest

from conftest import load_stage
from gradcheck import gradcheck


def rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


# -- stage 02: matmul with vectors, mean over several dims, integer tensors as indices --

@pytest.mark.parametrize("a_shape,b_shape,out_shape", [
    ((4,), (4, 3), (3,)), ((3, 4), (4,), (3,)), ((4,), (4,), ()),
    ((2, 3, 4), (4,), (2, 3)), ((4,), (2, 4, 3), (2, 3)), ((2, 3, 4), (4, 5), (2, 3, 5))])
def test_matmul_with_vectors_as_torch(a_shape, b_shape, out_shape):
    """torch.matmul: a 1-D first operand is a row (its dimension removed after), a 1-D
    second operand a column; both get gradients."""
    Tensor = load_stage("02_bigram").Tensor
    out = Tensor(rand(*a_shape)) @ Tensor(rand(*b_shape, seed=1))
    assert out.shape == out_shape
    gradcheck(Tensor, lambda a, b: a @ b, rand(*a_shape), rand(*b_shape, seed=1))


@pytest.mark.parametrize("dim,keepdim,shape", [((0, 2), False, (3,)), ((0, 2), True, (1, 3, 1)),
                                               ((-1,), False, (2, 3)), (None, False, ())])
def test_mean_over_a_tuple_of_dims(dim, keepdim, shape):
    Tensor = load_stage("02_bigram").Tensor
    x = rand(2, 3, 4)
    out = Tensor(x).mean(dim=dim, keepdim=keepdim)
    assert out.shape == shape
    np.testing.assert_allclose(out.data, x.mean(axis=dim, keepdims=keepdim))
    gradcheck(Tensor, lambda a: a.mean(dim=dim, keepdim=keepdim), x)


def test_integer_tensors_index_like_torch():
    """torch.tensor([0, 2]) is int64, so a[rows, cols] picks elements (a float tensor
    of indices would be an error)."""
    Tensor = load_stage("02_bigram").Tensor
    a = Tensor(rand(3, 4))
    rows, cols = Tensor([0, 2]), Tensor(np.array([1, 3]))
    assert rows.data.dtype == np.int64 and Tensor([1.0, 2.0]).data.dtype == np.float32
    np.testing.assert_array_equal(a[rows, cols].data, a.data[[0, 2], [1, 3]])
    np.testing.assert_array_equal(a[rows].data, a.data[[0, 2]])
    gradcheck(Tensor, lambda t: t[Tensor([0, 2, 2]), Tensor([1, 3, 3])], rand(3, 4))


def test_retain_grad_keeps_an_intermediate_gradient():
    """As in torch: after backward() only leaves keep .grad, unless retain_grad()."""
    Tensor = load_stage("02_bigram").Tensor
    w = Tensor(rand(3, 3), requires_grad=True)
    h = (w * 2.0).retain_grad()
    other = h * 3.0
    other.sum().backward()
    assert w.grad is not None and h.grad is not None and other.grad is None
    np.testing.assert_allclose(h.grad, np.full((3, 3), 3.0))


# -- stage 05: max --

def test_max_keeps_the_indices_dimension():
    Tensor = load_stage("05_backprop_ninja").Tensor
    x = rand(3, 4)
    r = Tensor(x).max(1, keepdim=True)
    assert r.values.shape == (3, 1) and r.indices.shape == (3, 1)
    np.testing.assert_array_equal(r.indices[:, 0], x.argmax(1))
    r = Tensor(x).max(0)
    assert r.values.shape == (4,) and r.indices.shape == (4,)


def test_max_without_dim_is_the_largest_element():
    Tensor = load_stage("05_backprop_ninja").Tensor
    x = rand(3, 4)
    m = Tensor(x).max()
    assert m.shape == () and m.item() == x.max()
    gradcheck(Tensor, lambda a: a.max() * 2.0, x)


# -- stage 07: permute, log_softmax, AdamW's step count per parameter --

def test_permute_as_torch():
    Tensor = load_stage("07_gpt").Tensor
    x = rand(2, 3, 4, 5)
    out = Tensor(x).permute(0, 2, 1, 3)
    np.testing.assert_array_equal(out.data, x.transpose(0, 2, 1, 3))
    gradcheck(Tensor, lambda a: a.permute(2, 0, 3, 1), x)


@pytest.mark.parametrize("dim", [-1, 0])
def test_log_softmax_as_torch(dim):
    Tensor = load_stage("07_gpt").Tensor
    x = rand(3, 5) * 30  # large logits: log(softmax) would underflow to -inf
    out = Tensor(x).log_softmax(dim)
    expected = x - x.max(dim, keepdims=True)
    expected -= np.log(np.exp(expected).sum(dim, keepdims=True))
    np.testing.assert_allclose(out.data, expected)
    assert np.isfinite(out.data).all()
    gradcheck(Tensor, lambda a: a.log_softmax(dim), rand(3, 5))
