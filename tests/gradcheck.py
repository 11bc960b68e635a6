"""Finite-difference gradient checks, in float64, for the Tensor engines of stages 02+.

    gradcheck(Tensor, lambda a, b: (a @ b).tanh(), A, B)

compares the engine's gradient of `sum(f(inputs) * R)` (R a fixed random array, so every
output element matters with a different weight) with central differences
`(s(x + eps) - s(x - eps)) / (2 eps)` for every element of every input.
"""

import numpy as np


def numerical_grad(fun, x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """d fun() / d x by central differences; `fun` reads `x`, which is perturbed in place."""
    grad = np.zeros_like(x, dtype=np.float64)
    it = np.nditer(x, flags=["multi_index"])
    for _ in it:
        i = it.multi_index
        old = x[i]
        x[i] = old + eps
        plus = fun()
        x[i] = old - eps
        minus = fun()
        x[i] = old
        grad[i] = (plus - minus) / (2 * eps)
    return grad


def gradcheck(Tensor, f, *arrays, eps=1e-6, rtol=1e-5, atol=1e-7, seed=0, wrt=None):
    """Check the engine's gradients of f(*tensors) against finite differences.

    `arrays` are float64 numpy arrays (copied); `wrt` lists the indices of the inputs to
    check (default: all float inputs). Integer arrays are passed as they are."""
    arrays = [np.array(a, dtype=np.float64) if np.asarray(a).dtype.kind == "f" else a
              for a in arrays]
    if wrt is None:
        wrt = [i for i, a in enumerate(arrays) if np.asarray(a).dtype.kind == "f"]
    tensors = [Tensor(a, requires_grad=True) if i in wrt else a for i, a in enumerate(arrays)]
    out = f(*tensors)
    assert out.data.dtype == np.float64, f"op lost float64: {out.data.dtype}"
    R = np.random.default_rng(seed).standard_normal(out.data.shape)

    (out * Tensor(R)).sum().backward()

    def scalar():
        fresh = [Tensor(a) if i in wrt else a for i, a in enumerate(arrays)]
        return float((f(*fresh).data * R).sum())

    for i in wrt:
        num = numerical_grad(scalar, arrays[i], eps)
        got = tensors[i].grad
        assert got is not None, f"input {i} got no gradient"
        np.testing.assert_allclose(got, num, rtol=rtol, atol=atol,
                                   err_msg=f"gradient of input {i}")
