"""Forward mode on Dual numbers: the NumPy surface, nesting, inputs and error paths.

Expected values come from analytic formulas, from NumPy itself (values, argmax, shapes)
or from central differences (``fixtures.central_jacobian``); nothing is compared with
dualtape's own output except where two of its modes are compared with each other.
"""
import math

import numpy as np
import pytest

import dualtape
from dualtape import Dual, derivative
from dualtape.api import dual_jvp as jvp
from dualtape.api import forward_jacobian
from dualtape.dual import new_tag
from fixtures import central_jacobian


def jacobian(f, mode="forward", chunk=None):
    """Forward mode on Dual numbers (dualtape.jacobian replays tapes); reverse by a tape."""
    if mode != "forward":
        return dualtape.jacobian(f, mode=mode)
    return lambda x: forward_jacobian(f, x, chunk=chunk)[1]

RNG = np.random.default_rng(12345)


# ---------------------------------------------------------------------------- helpers

def fwd(f, x, chunk=None):
    """(value, Jacobian) of f at x by forward mode."""
    return forward_jacobian(f, np.asarray(x, dtype=float), chunk=chunk)


def check(f, x, rtol=1e-6, atol=1e-7, analytic=None):
    """Forward value == NumPy value; forward Jacobian == central differences (and
    == ``analytic`` exactly up to rounding, when given)."""
    x = np.asarray(x, dtype=float)
    value, J = fwd(f, x)
    expected_value = np.asarray(f(x), dtype=float)
    assert np.shape(value) == expected_value.shape
    np.testing.assert_allclose(value, expected_value, rtol=1e-13, atol=1e-13)
    assert J.shape == expected_value.shape + x.shape
    np.testing.assert_allclose(J, central_jacobian(f, x), rtol=rtol, atol=atol)
    if analytic is not None:
        np.testing.assert_allclose(J, analytic, rtol=1e-12, atol=1e-14)
    return J


def linear_jacobian(f, x):
    """The Jacobian of a linear f, computed by NumPy alone: column j is f(e_j)."""
    x = np.asarray(x, dtype=float)
    cols = []
    for j in range(x.size):
        e = np.zeros(x.size)
        e[j] = 1.0
        cols.append(np.asarray(f(e.reshape(x.shape)), dtype=float))
    return np.stack(cols, axis=-1).reshape(np.shape(cols[0]) + x.shape)


def seeded(x):
    """A Dual at x with the identity seed (one direction per element)."""
    x = np.asarray(x, dtype=float)
    return Dual(x, np.eye(x.size).reshape(x.shape + (x.size,)), new_tag())


X6 = np.array([0.3, -1.2, 2.5, 0.7, -0.4, 1.9])
M23 = np.array([[0.3, -1.2, 2.5], [0.7, -0.4, 1.9]])
M34 = np.array([[0.5, -1.1, 0.25, 1.7], [-0.6, 0.9, 2.2, -0.15],
                [1.3, 0.05, -0.8, 0.45]])
T234 = RNG.uniform(-1.5, 1.5, size=(2, 3, 4))


# ---------------------------------------------------------------------------- reductions

AXES_2D = [None, 0, 1, -1, -2, (0, 1), (1, 0), (-1,)]
AXES_3D = [None, 0, 1, 2, -1, (0, 2), (1, 2), (0, 1, 2), (-3, -1)]


@pytest.mark.parametrize("keepdims", [False, True])
@pytest.mark.parametrize("axis", AXES_2D)
def test_sum_mean_2d(axis, keepdims):
    def f(x):
        return np.sum(x, axis=axis, keepdims=keepdims)

    def g(x):
        return np.mean(x, axis=axis, keepdims=keepdims)
    check(f, M34, analytic=linear_jacobian(f, M34))
    assert np.all((fwd(f, M34)[1] == 0) | (fwd(f, M34)[1] == 1))
    check(g, M34, analytic=linear_jacobian(g, M34))
    check(lambda x: x.sum(axis=axis, keepdims=keepdims), M34,
          analytic=linear_jacobian(f, M34))


@pytest.mark.parametrize("keepdims", [False, True])
@pytest.mark.parametrize("axis", AXES_3D)
def test_sum_mean_3d(axis, keepdims):
    check(lambda x: np.sum(x, axis=axis, keepdims=keepdims), T234)
    check(lambda x: x.mean(axis=axis, keepdims=keepdims), T234)
    check(lambda x: np.sum(np.sin(x) * x, axis=axis, keepdims=keepdims), T234)


def test_sum_method_and_add_reduce():
    check(lambda x: x.sum(), M34, analytic=np.ones((3, 4)))
    check(lambda x: np.add.reduce(x, axis=1), M34)
    check(lambda x: np.multiply.reduce(x, axis=0), M34)


def _prod_grad(x):
    """Analytic gradient of prod(x) for a 1-D x: product of all the other elements."""
    return np.array([np.prod(np.delete(x, i)) for i in range(x.size)])


@pytest.mark.parametrize("x", [
    [0.5, -1.5, 2.0, 0.8],
    [2.0, 0.0, 3.0, -1.0],          # one zero
    [0.0, 0.0, 3.0, -1.0],          # two zeros: gradient all zero
    [0.0, 1.5, -2.0, 0.7],          # zero first
    [1.5, -2.0, 0.7, 0.0],          # zero last
    [0.0],
    [4.0],
])
def test_prod_1d_with_zeros(x):
    x = np.array(x)
    _, J = fwd(np.prod, x)
    np.testing.assert_allclose(J, _prod_grad(x), rtol=1e-14, atol=0)
    np.testing.assert_allclose(J, central_jacobian(np.prod, x), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("keepdims", [False, True])
@pytest.mark.parametrize("axis", [None, 0, 1, -1, (0, 1)])
def test_prod_2d_with_zeros(axis, keepdims):
    x = M34.copy()
    x[0, 1] = 0.0
    x[2, 1] = 0.0
    x[1, 3] = 0.0

    def f(a):
        return np.prod(a, axis=axis, keepdims=keepdims)
    J = check(f, x)
    # analytic, element by element
    out = np.prod(x, axis=axis, keepdims=keepdims)
    expected = np.zeros(out.shape + x.shape)
    for j in np.ndindex(x.shape):
        for i in np.ndindex(out.shape):
            # which output does x[j] feed?  recompute with x[j] replaced by 1 and 0
            xa = x.copy()
            xa[j] = 1.0
            xb = x.copy()
            xb[j] = 0.0
            # prod is affine in x[j]: slope = f(x[j]=1) - f(x[j]=0)
            expected[i + j] = np.prod(xa, axis=axis, keepdims=keepdims)[i] - \
                np.prod(xb, axis=axis, keepdims=keepdims)[i]
    np.testing.assert_allclose(J, expected, rtol=1e-13, atol=1e-15)


def test_prod_method_3d():
    check(lambda x: x.prod(axis=1), T234)
    check(lambda x: x.prod(axis=(0, 2)), T234)


@pytest.mark.parametrize("kind", ["max", "min"])
@pytest.mark.parametrize("keepdims", [False, True])
@pytest.mark.parametrize("axis", AXES_2D)
def test_max_min_2d(kind, axis, keepdims):
    fn = np.max if kind == "max" else np.min

    def f(x):
        return fn(x, axis=axis, keepdims=keepdims)
    J = check(f, M34)
    # analytic: a one at each selected element
    assert np.all((J == 0) | (J == 1))
    np.testing.assert_array_equal(J.reshape(-1, M34.size).sum(axis=1),
                                  np.ones(f(M34).size))


@pytest.mark.parametrize("kind", ["max", "min"])
@pytest.mark.parametrize("axis", AXES_3D)
def test_max_min_3d(kind, axis):
    fn = np.amax if kind == "max" else np.amin
    check(lambda x: fn(x, axis=axis), T234)
    meth = (lambda x: x.max(axis=axis)) if kind == "max" else (lambda x: x.min(axis=axis))
    check(meth, T234)


def test_max_min_methods_and_ufunc_reduce():
    check(lambda x: x.max(), X6, analytic=np.eye(6)[2])
    check(lambda x: x.min(), X6, analytic=np.eye(6)[1])
    check(lambda x: np.maximum.reduce(x, axis=1), M34)
    check(lambda x: np.minimum.reduce(x, axis=0), M34)


def test_max_tie_derivative_goes_to_one_element():
    # a subgradient: the derivative of max at a tie is a one at exactly one maximal element
    x = np.array([1.0, 3.0, -2.0, 3.0])
    _, J = fwd(np.max, x)
    assert J.sum() == 1.0 and J[0] == 0.0 and J[2] == 0.0
    assert set(np.flatnonzero(J)) <= {1, 3}


@pytest.mark.parametrize("axis", [None, 0, 1, -1])
@pytest.mark.parametrize("kind", ["argmax", "argmin"])
def test_argmax_argmin(kind, axis):
    d = seeded(M34)
    res = getattr(np, kind)(d, axis=axis)
    expected = getattr(np, kind)(M34, axis=axis)
    assert not isinstance(res, Dual)
    np.testing.assert_array_equal(res, expected)
    res_m = getattr(d, kind)(axis=axis)
    np.testing.assert_array_equal(res_m, expected)
    res_k = getattr(np, kind)(d, axis=axis, keepdims=True)
    np.testing.assert_array_equal(res_k, getattr(np, kind)(M34, axis=axis, keepdims=True))


def test_argmax_used_as_index():
    def f(x):
        return x[np.argmax(x)] * x[np.argmin(x)]
    check(f, X6, analytic=X6[1] * np.eye(6)[2] + X6[2] * np.eye(6)[1])


# ---------------------------------------------------------------------------- products

A34 = np.array([[1.0, 2.0, -1.0, 0.5], [0.5, -0.3, 2.0, 1.5], [-0.7, 0.2, 0.9, -1.1]])


def test_dot_1d_1d():
    u = np.array([0.3, -1.2, 2.5, 0.7])
    check(lambda x: np.dot(x, u), u * 2, analytic=u)
    check(lambda x: np.dot(x, x), u, analytic=2 * u)
    check(lambda x: x.dot(u), u, analytic=u)


def test_dot_2d_1d_and_1d_2d():
    v = np.array([0.3, -1.2, 2.5, 0.7])
    check(lambda x: np.dot(A34, x), v, analytic=A34)
    check(lambda x: np.dot(x, A34), np.array([0.2, -0.5, 1.1]), analytic=A34.T)
    # dual matrix times const vector: d(Mv)_i / dM_jk = delta_ij v_k
    J = check(lambda m: np.dot(m, v), A34)
    np.testing.assert_allclose(J, np.einsum("ij,k->ijk", np.eye(3), v))


def test_dot_2d_2d_and_scalar():
    B = RNG.uniform(-1, 1, (4, 2))
    check(lambda m: np.dot(m, B), A34)
    check(lambda m: np.dot(B.T, m.T), A34)
    check(lambda m: np.dot(m, m.T), A34)
    check(lambda x: np.dot(x, 2.5), X6, analytic=2.5 * np.eye(6))


def test_matmul_operator_1d_2d():
    B = RNG.uniform(-1, 1, (4, 2))
    v = np.array([0.3, -1.2, 2.5, 0.7])
    check(lambda x: A34 @ x, v, analytic=A34)
    check(lambda x: x @ B, v, analytic=B.T)
    check(lambda x: x @ x, v, analytic=2 * v)
    check(lambda m: m @ B, A34)
    check(lambda m: B.T @ m.T, A34)
    check(lambda m: m @ m.T @ m, A34)
    check(lambda m: np.matmul(m, B), A34)


def test_matmul_batched_3d():
    B = RNG.uniform(-1, 1, (2, 4, 3))
    C = RNG.uniform(-1, 1, (4, 5))
    check(lambda t: t @ B, T234)                 # (2,3,4) @ (2,4,3)
    check(lambda t: np.matmul(B, t), T234)       # (2,4,3) @ (2,3,4)
    check(lambda t: t @ C, T234)                 # broadcast a matrix over the batch
    check(lambda t: t @ np.swapaxes(t, 1, 2), T234)
    check(lambda t: t @ np.ones(4), T234)        # batched matrix @ vector
    check(lambda b: T234 @ b, B)
    check(lambda t: t[0, :, 0] @ t, T234)      # vector @ batched matrix
    check(lambda t: np.matmul(t[:, None], t.reshape(1, 2, 4, 3)), T234)  # broadcast batch


def test_inner_outer():
    u = np.array([0.3, -1.2, 2.5])
    check(lambda x: np.inner(x, u), np.array([1.0, 2.0, 3.0]), analytic=u)
    check(lambda m: np.inner(m, u), M23)
    check(lambda m: np.inner(m, M34[:, :3]), M23)
    J = check(lambda x: np.outer(x, u), X6[:4])
    np.testing.assert_allclose(J, np.einsum("ik,j->ijk", np.eye(4), u))
    check(lambda x: np.outer(x[:3], x[3:]), X6)
    check(lambda x: np.outer(u, x), X6)


def test_tensordot():
    B = RNG.uniform(-1, 1, (3, 4, 2))
    check(lambda t: np.tensordot(t, B, axes=2), T234)
    check(lambda t: np.tensordot(t, B, axes=([1, 2], [0, 1])), T234)
    check(lambda t: np.tensordot(t, B, axes=([1], [0])), T234)
    check(lambda t: np.tensordot(B, t, axes=([0, 1], [1, 2])), T234)
    check(lambda t: np.tensordot(t, t, axes=([0, 1, 2], [0, 1, 2])), T234,
          analytic=2 * T234)
    check(lambda t: np.tensordot(t, A34.T, axes=1), T234)
    check(lambda t: np.tensordot(t, 2.0, axes=0), T234)


def test_trace():
    M = RNG.uniform(-1, 1, (4, 4))
    check(np.trace, M, analytic=np.eye(4))
    check(lambda m: m.trace(), M, analytic=np.eye(4))
    check(lambda m: np.trace(m, offset=1), M, analytic=np.eye(4, k=1))
    check(lambda m: np.trace(m @ m), M, analytic=2 * M.T)
    check(lambda t: np.trace(t, axis1=1, axis2=2), RNG.uniform(-1, 1, (2, 3, 3)))


@pytest.mark.parametrize("spec,make", [
    ("ij,jk->ik", lambda: (A34, RNG.uniform(-1, 1, (4, 2)))),
    ("ii->", lambda: (RNG.uniform(-1, 1, (4, 4)),)),
    ("ij->ji", lambda: (A34,)),
    ("i,i->", lambda: (X6, X6[::-1] + 0.1)),
    ("bij,bjk->bik", lambda: (T234, RNG.uniform(-1, 1, (2, 4, 3)))),
    ("ij,kj->ik", lambda: (A34, RNG.uniform(-1, 1, (2, 4)))),
    ("ij->", lambda: (A34,)),
    ("ij->i", lambda: (A34,)),
    ("i,j->ij", lambda: (X6[:3], X6)),
    ("ii->i", lambda: (RNG.uniform(-1, 1, (4, 4)),)),
    ("bij,bjk", lambda: (T234, RNG.uniform(-1, 1, (2, 4, 3)))),
])
def test_einsum(spec, make):
    operands = make()
    # differentiate with respect to each operand in turn, others constant
    for i in range(len(operands)):
        def f(x, i=i):
            args = list(operands)
            args[i] = x
            return np.einsum(spec, *args)
        check(f, operands[i])
    # and all operands at once through one flat input
    sizes = [o.size for o in operands]

    def g(flat):
        parts, start = [], 0
        for o, n in zip(operands, sizes):
            parts.append(flat[start:start + n].reshape(o.shape))
            start += n
        return np.einsum(spec, *parts)
    check(g, np.concatenate([o.ravel() for o in operands]))


def test_einsum_analytic_trace_and_dot():
    M = RNG.uniform(-1, 1, (3, 3))
    check(lambda m: np.einsum("ii->", m), M, analytic=np.eye(3))
    check(lambda x: np.einsum("i,i->", x, x), X6, analytic=2 * X6)
    J = check(lambda m: np.einsum("ij->ji", m), M23)
    np.testing.assert_array_equal(J, np.einsum("jk,il->ijkl", np.eye(2), np.eye(3)))


# ---------------------------------------------------------------------------- shape ops

def perm_matrix(np_fn, x):
    """The 0/1 Jacobian of a pure rearrangement: np_fn applied to positions."""
    pos = np_fn(np.arange(x.size).reshape(x.shape))
    J = np.zeros(pos.shape + (x.size,))
    for i in np.ndindex(pos.shape):
        J[i + (pos[i],)] = 1.0
    return J.reshape(pos.shape + x.shape)


SHAPE_OPS = [
    ("reshape", lambda x: x.reshape(4, 3), M34),
    ("reshape-1", lambda x: np.reshape(x, (-1, 2)), M34),
    ("reshape-1-first", lambda x: x.reshape(2, -1, 3), M34),
    ("reshape_args", lambda x: x.reshape(6, 2), M34),
    ("reshape_F", lambda x: np.reshape(x, (4, 3), order="F"), M34),
    ("reshape_F-1", lambda x: x.reshape((2, -1), order="F"), M34),
    ("reshape_3d_F", lambda x: np.reshape(x, (4, 6), order="F"), T234),
    ("ravel", np.ravel, M34),
    ("ravel_method", lambda x: x.ravel(), T234),
    ("ravel_F", lambda x: np.ravel(x, order="F"), M34),
    ("flatten", lambda x: x.flatten(), M34),
    ("transpose", np.transpose, M34),
    (".T", lambda x: x.T, M34),
    ("transpose3d", lambda x: np.transpose(x, (2, 0, 1)), T234),
    ("transpose_method", lambda x: x.transpose(1, 2, 0), T234),
    ("transpose_method_tuple", lambda x: x.transpose((1, 0, 2)), T234),
    ("swapaxes", lambda x: np.swapaxes(x, 0, 2), T234),
    ("swapaxes_method", lambda x: x.swapaxes(-1, 1), T234),
    ("moveaxis", lambda x: np.moveaxis(x, 0, -1), T234),
    ("squeeze", np.squeeze, M34.reshape(1, 3, 1, 4)),
    ("squeeze_axis", lambda x: np.squeeze(x, axis=2), M34.reshape(1, 3, 1, 4)),
    ("squeeze_method", lambda x: x.squeeze(0), M34.reshape(1, 3, 1, 4)),
    ("expand_dims0", lambda x: np.expand_dims(x, 0), M34),
    ("expand_dims-1", lambda x: np.expand_dims(x, -1), M34),
    ("expand_dims_tuple", lambda x: np.expand_dims(x, (0, 2)), M34),
    ("broadcast_to", lambda x: np.broadcast_to(x, (2, 3, 4)), M34),
    ("broadcast_to_col", lambda x: np.broadcast_to(x, (3, 4)), M34[:, :1]),
    ("broadcast_to_row", lambda x: np.broadcast_to(x, (5, 4)), M34[0]),
    ("broadcast_to_same_size", lambda x: np.broadcast_to(x, (1, 4)), M34[0]),
    ("flip", np.flip, M34),
    ("flip0", lambda x: np.flip(x, 0), M34),
    ("flip1", lambda x: np.flip(x, axis=1), M34),
    ("fliplr", np.fliplr, M34),
    ("flipud", np.flipud, M34),
    ("roll", lambda x: np.roll(x, 2), X6),
    ("roll-1", lambda x: np.roll(x, -1), X6),
    ("roll2d_flat", lambda x: np.roll(x, 5), M34),
    ("roll2d_axis", lambda x: np.roll(x, 1, axis=1), M34),
    ("roll_tuple", lambda x: np.roll(x, (1, -2), axis=(0, 1)), M34),
    ("tile", lambda x: np.tile(x, 3), X6),
    ("tile2d", lambda x: np.tile(x, (2, 3)), M23),
    ("repeat", lambda x: np.repeat(x, 2), X6),
    ("repeat_axis", lambda x: np.repeat(x, 3, axis=1), M23),
    ("repeat_counts", lambda x: np.repeat(x, [1, 0, 2, 3, 1, 2]), X6),
    ("rot90", np.rot90, M34),
    ("diag_2d_to_1d", np.diag, M34),
    ("diag_2d_k1", lambda x: np.diag(x, 1), M34),
    ("diag_2d_k-1", lambda x: np.diag(x, -1), M34),
    ("diagonal", lambda x: np.diagonal(x, 0, 1, 2), T234),
]


@pytest.mark.parametrize("name,f,x", SHAPE_OPS, ids=[s[0] for s in SHAPE_OPS])
def test_shape_op(name, f, x):
    check(f, x, analytic=perm_matrix(f, x))


def test_reshape_method_accepts_numpy_integers():
    # NumPy accepts any integer type for a shape, e.g. the np.int64 that np.prod returns
    m = seeded(M34)
    check(lambda x: x.reshape(np.prod(x.shape)), M34, analytic=perm_matrix(np.ravel, M34))
    assert m.reshape(np.int64(4), np.int64(3)).shape == (4, 3)
    assert m.reshape(np.int64(12)).shape == (12,)


@pytest.mark.parametrize("k", [0, 1, -2])
def test_diag_1d_to_2d(k):
    x = np.array([0.3, -1.2, 2.5])
    J = check(lambda v: np.diag(v, k), x)
    n = 3 + abs(k)
    expected = np.zeros((n, n, 3))
    for i in range(3):
        r, c = (i, i + k) if k >= 0 else (i - k, i)
        expected[r, c, i] = 1.0
    np.testing.assert_array_equal(J, expected)


@pytest.mark.parametrize("axis", [0, 1, -1, None])
def test_concatenate(axis):
    B = RNG.uniform(-1, 1, (3, 4))

    def f(x):
        return np.concatenate([x, B * x, np.sin(x)], axis=axis)
    check(f, M34)


def test_concatenate_with_constants():
    c = np.array([10.0, 20.0])
    J = check(lambda x: np.concatenate([c, x, c]), X6[:3])
    np.testing.assert_array_equal(J, np.vstack([np.zeros((2, 3)), np.eye(3), np.zeros((2, 3))]))
    check(lambda x: np.concatenate([np.ones((2, 4)), x], axis=0), M34)
    check(lambda x: np.concatenate([x, np.zeros((3, 2))], axis=1), M34)
    check(lambda x: np.concatenate((x[:2], x[4:], x[1:3]), axis=None), X6)


@pytest.mark.parametrize("axis", [0, 1, 2, -1])
def test_stack(axis):
    check(lambda x: np.stack([x, 2 * x, np.ones((3, 4)), x * x], axis=axis), M34)


def test_stack_scalars_and_hstack_vstack():
    J = check(lambda x: np.stack([x[1], -x[0], x[2] * x[0]]), X6[:3])
    np.testing.assert_allclose(J, [[0, 1, 0], [-1, 0, 0], [X6[2], 0, X6[0]]])
    check(lambda x: np.hstack([x, x[:2], np.ones(3)]), X6)
    check(lambda x: np.hstack([x, np.sin(x)]), M34)
    check(lambda x: np.hstack([x[0], x[1], 2.0]), X6)
    check(lambda x: np.vstack([x, x[::-1], np.ones(6)]), X6)
    check(lambda x: np.vstack([x, np.cos(x)]), M34)
    check(lambda x: np.column_stack([x, x ** 2]), X6)
    check(lambda x: np.append(x, x[:2]), X6)


def test_split():
    check(lambda x: np.split(x, 3)[1] * np.split(x, 3)[2], X6)
    check(lambda x: np.array_split(x, 4, axis=1)[2], M34)


# ---------------------------------------------------------------------------- indexing

X10 = np.linspace(-1.3, 2.1, 10)

INDEXING = [
    ("int", lambda x: x[3], X10),
    ("negative int", lambda x: x[-2], X10),
    ("slice", lambda x: x[2:7], X10),
    ("slice step", lambda x: x[1:9:3], X10),
    ("slice step 2", lambda x: x[::2], X10),
    ("negative start", lambda x: x[-4:], X10),
    ("negative stop", lambda x: x[:-3], X10),
    ("negative step", lambda x: x[::-1], X10),
    ("negative step 3", lambda x: x[8:1:-3], X10),
    ("empty slice", lambda x: x[5:2], X10),
    ("int array", lambda x: x[np.array([0, 3, 3, 9, -1])], X10),
    ("int list", lambda x: x[[4, 1, 1]], X10),
    ("bool mask", lambda x: x[np.arange(10) % 3 == 0], X10),
    ("bool mask from value", lambda x: x[x > 0.5], X10),
    ("2d int int", lambda x: x[1, 2], M34),
    ("2d negative", lambda x: x[-1, -3], M34),
    ("2d row", lambda x: x[1], M34),
    ("2d column", lambda x: x[:, 2], M34),
    ("2d slices", lambda x: x[1:, ::2], M34),
    ("2d negative steps", lambda x: x[::-1, ::-2], M34),
    ("2d fancy", lambda x: x[np.array([0, 2]), np.array([3, 1])], M34),
    ("2d fancy broadcast", lambda x: x[np.array([[0], [2]]), np.array([1, 3])], M34),
    ("2d fancy + slice", lambda x: x[[2, 0], 1:3], M34),
    ("2d bool mask", lambda x: x[M34 > 0], M34),
    ("2d row mask", lambda x: x[np.array([True, False, True])], M34),
    ("None", lambda x: x[None], M34),
    ("None middle", lambda x: x[:, None, 1:], M34),
    ("Ellipsis", lambda x: x[..., 1], T234),
    ("Ellipsis front", lambda x: x[0, ...], T234),
    ("Ellipsis None", lambda x: x[..., None, ::2], T234),
    ("3d mixed", lambda x: x[1, ::-1, np.array([0, 3])], T234),
    ("3d int", lambda x: x[1, 2, 3], T234),
    ("tuple of slices", lambda x: x[(slice(0, 2), slice(1, None, 2))], M34),
]


@pytest.mark.parametrize("name,f,x", INDEXING, ids=[s[0] for s in INDEXING])
def test_indexing(name, f, x):
    check(f, x, analytic=perm_matrix(f, x) if "value" not in name else None)


def test_indexing_inside_python_loops():
    def f(x):
        s = x[0] * 0.0
        for i in range(len(x)):
            s = s + x[i] * x[i - 1]
        return s

    n = X10.size
    expected = np.array([X10[(i + 1) % n] + X10[(i - 1) % n] for i in range(n)])
    check(f, X10, analytic=expected)

    def g(x):
        out = []
        for i in range(x.shape[0]):
            for j in range(x.shape[1]):
                out.append(x[i, j] * (i + 1) - x[i][j] * j)
        return np.stack(out).reshape(x.shape)
    check(g, M34, analytic=np.einsum("ij,ik,jl->ijkl", (np.arange(3)[:, None] + 1.0)
                                     - np.arange(4.0)[None, :], np.eye(3), np.eye(4)))

    def h(x):   # iterate directly over a Dual
        return np.stack([row.sum() * k for k, row in enumerate(x)])
    check(h, M34)


def test_indexing_out_of_bounds_raises():
    d = seeded(X6)
    with pytest.raises(IndexError):
        d[6]
    with pytest.raises(IndexError):
        d[-7]


# ---------------------------------------------------------------------------- where, comparisons

def test_power_with_zero_exponent_at_zero_base():
    # x ** 0 == 1 for every x (NumPy: 0.0 ** 0 == 1.0), so its derivative is 0 everywhere,
    # also at x = 0; polynomial features x[:, None] ** np.arange(3) hit this at x = 0
    assert derivative(lambda x: x ** 0)(2.0) == 0.0
    assert derivative(lambda x: x ** 0.0)(0.0) == 0.0
    x = np.array([0.0, 0.5, -1.5])
    J = check(lambda v: v[:, None] ** np.arange(3.0), x)
    expected = np.zeros((3, 3, 3))
    for i in range(3):
        expected[i, 1, i] = 1.0
        expected[i, 2, i] = 2 * x[i]
    np.testing.assert_array_equal(J, expected)


def test_maximum_minimum_tie_convention_splits_evenly():
    # ops.py: "maximum and minimum split a tie evenly"; clip passes the derivative on the
    # closed interval [lo, hi]; abs'(0) = 0
    x = np.array([1.0, 2.0, 0.5])
    _, J = fwd(lambda v: np.maximum(v, 1.0), x)
    np.testing.assert_array_equal(J, np.diag([0.5, 1.0, 0.0]))
    _, J = fwd(lambda v: np.minimum(v, 1.0), x)
    np.testing.assert_array_equal(J, np.diag([0.5, 0.0, 1.0]))
    _, J = fwd(lambda v: np.clip(v, 0.5, 1.0), np.array([0.5, 1.0, 2.0, 0.2, 0.7]))
    np.testing.assert_array_equal(J, np.diag([1.0, 1.0, 0.0, 0.0, 1.0]))
    assert derivative(np.abs)(0.0) == 0.0
    assert derivative(np.abs)(-2.0) == -1.0


def test_where():
    x = np.array([-1.5, -0.2, 0.4, 1.1, 2.0])
    J = check(lambda v: np.where(v > 0, v ** 2, -3 * v), x)
    np.testing.assert_allclose(J, np.diag(np.where(x > 0, 2 * x, -3.0)))
    check(lambda v: np.where(v > 0.5, v, 0.0), x,
          analytic=np.diag((x > 0.5).astype(float)))
    check(lambda v: np.where(np.arange(5) % 2 == 0, np.sin(v), v[::-1]), x)
    check(lambda m: np.where(m > 0, m, m.T.T * 2.0).sum(axis=0), M34)


def test_where_sqrt_at_zero_has_finite_derivative():
    x = np.array([0.0, 4.0, -1.0])
    _, J = fwd(lambda v: np.where(v > 0, np.sqrt(np.where(v > 0, v, 1.0)), 0.0), x)
    np.testing.assert_allclose(J, np.diag([0.0, 0.25, 0.0]))


def test_where_unselected_branch_with_infinite_partial_contributes_zero():
    # dual.scale: np.where(x > 0, np.sqrt(x), 0.0) differentiates at x = 0 (the unselected
    # sqrt has an infinite partial at 0 and NaN below 0; the select's partial there is 0)
    x = np.array([0.0, 4.0, -1.0])
    with np.errstate(invalid="ignore"):
        value, J = fwd(lambda v: np.where(v > 0, np.sqrt(v), 0.0), x)
    np.testing.assert_allclose(value, [0.0, 2.0, 0.0])
    np.testing.assert_array_equal(J, np.diag([0.0, 0.25, 0.0]))
    # the same at a 0-d x (there the partials are NumPy scalars)
    with np.errstate(divide="ignore", invalid="ignore"):
        assert derivative(lambda v: np.where(v > 0, np.sqrt(v), 0.0))(0.0) == 0.0
        assert derivative(lambda v: np.where(v > 0, np.log(v), v))(0.0) == 1.0
        assert derivative(lambda v: np.where(v > 0, np.log(v), v))(-2.0) == 1.0


def test_comparisons_return_plain_bool_arrays():
    d = seeded(X6)
    other = np.linspace(-1, 1, 6)
    for res, expected in [(d > 0, X6 > 0), (d < other, X6 < other), (d >= d, X6 >= X6),
                          (d <= 0.3, X6 <= 0.3), (d == 0.3, X6 == 0.3),
                          (d != 0.3, X6 != 0.3), (0.0 < d, 0.0 < X6),
                          (np.greater(d, other), X6 > other),
                          (np.isfinite(d), np.ones(6, bool))]:
        assert type(res) is np.ndarray and res.dtype == bool, type(res)
        np.testing.assert_array_equal(res, expected)


def test_item_returns_dual_scalar_that_compares_like_a_number():
    d = seeded(X6)
    s = d[2].item()
    assert isinstance(s, Dual) and s.shape == ()
    np.testing.assert_array_equal(s.tangent, np.eye(6)[2])
    assert s > 2.0 and s < 3.0 and s == 2.5 and not (s != 2.5)
    assert bool(s > 2.0) is True
    if s < 1.0:
        pytest.fail("s < 1.0 should be False")
    t = d.sum().item()
    assert isinstance(t, Dual)
    assert float(t.value) == pytest.approx(X6.sum())
    np.testing.assert_array_equal(t.tangent, np.ones(6))
    u = d.item(3)
    assert isinstance(u, Dual) and u == 0.7
    w = d.reshape(2, 3).item(1, 2)
    assert isinstance(w, Dual) and w == X6[5]
    a = d[4].asscalar()
    assert isinstance(a, Dual) and a < 0
    with pytest.raises(ValueError):
        d.item()
    # max over a Python comparison chain picks the same element as NumPy
    best = max((d[i].item() for i in range(6)), key=lambda z: z.value)
    np.testing.assert_array_equal(best.tangent, np.eye(6)[np.argmax(X6)])


def test_while_loop_on_item():
    def f(b):
        while np.linalg.norm(b).item() < 1000:
            b = b * 2
        return b

    b0 = np.array([0.3, -0.4, 1.2])
    n, b = 0, b0.copy()
    while np.linalg.norm(b) < 1000:
        b, n = b * 2, n + 1
    value, J = fwd(f, b0)
    np.testing.assert_allclose(value, b0 * 2.0 ** n)
    np.testing.assert_allclose(J, 2.0 ** n * np.eye(3), rtol=1e-15)
    # scalar version through derivative()
    d = derivative(lambda x: f(np.stack([x, 2 * x]))[1])(0.7)
    m = int(np.ceil(np.log2(1000 / (0.7 * np.sqrt(5)))))
    assert 0.7 * np.sqrt(5) * 2 ** m >= 1000 > 0.7 * np.sqrt(5) * 2 ** (m - 1)
    np.testing.assert_allclose(d, 2.0 * 2.0 ** m, rtol=1e-15)


# ---------------------------------------------------------------------------- norms

V = np.array([0.3, -1.2, 2.5, 0.7])


@pytest.mark.parametrize("ord,analytic", [
    (None, V / np.linalg.norm(V)),
    (2, V / np.linalg.norm(V)),
    (1, np.sign(V)),
    (np.inf, np.sign(V) * (np.abs(V) == np.abs(V).max())),
    (-np.inf, np.sign(V) * (np.abs(V) == np.abs(V).min())),
    (3, np.sign(V) * np.abs(V) ** 2 / np.sum(np.abs(V) ** 3) ** (2 / 3)),
])
def test_vector_norm(ord, analytic):
    J = check(lambda x: np.linalg.norm(x, ord), V, analytic=analytic)
    assert J.shape == (4,)


def test_matrix_norms():
    check(np.linalg.norm, M34, analytic=M34 / np.linalg.norm(M34))
    check(lambda m: np.linalg.norm(m, "fro"), M34, analytic=M34 / np.linalg.norm(M34))
    check(lambda m: np.linalg.norm(m, axis=1), M34)
    check(lambda m: np.linalg.norm(m, axis=0, keepdims=True), M34)
    check(lambda m: np.linalg.norm(m, 1, axis=-1), M34)
    check(lambda m: np.linalg.norm(m, ord=1), M34)
    check(lambda m: np.linalg.norm(m, ord=np.inf), M34)


def test_norm_of_3d_array_with_default_ord():
    # NumPy: with ord=None and axis=None, the 2-norm of x.ravel() for any ndim
    check(lambda t: np.linalg.norm(t), T234, analytic=T234 / np.linalg.norm(T234))


# ---------------------------------------------------------------------------- object arrays

def test_np_array_of_scalar_duals_as_return_value():
    def f(y):
        return np.array([y[1], -y[0]])
    J = check(f, np.array([0.4, -1.3]), analytic=np.array([[0.0, 1.0], [-1.0, 0.0]]))
    assert J.shape == (2, 2)

    def g(y):   # mixed with constants and nested lists
        return np.array([[y[0] * y[1], 1.0], [np.sin(y[2]), y[0]]])
    y0 = np.array([0.4, -1.3, 0.8])
    J = check(g, y0)
    expected = np.zeros((2, 2, 3))
    expected[0, 0] = [y0[1], y0[0], 0]
    expected[1, 0, 2] = np.cos(y0[2])
    expected[1, 1, 0] = 1.0
    np.testing.assert_allclose(J, expected)

    def h(y):   # a plain list of scalar Duals as return value
        return [y[2], y[0] ** 2]
    check(h, y0, analytic=np.array([[0, 0, 1.0], [2 * y0[0], 0, 0]]))


def test_ode_rhs_with_np_array_under_jvp_and_derivative():
    def rhs(y):
        return np.array([y[1], -np.sin(y[0])])
    y0 = np.array([0.5, -0.2])
    value, t = jvp(rhs, y0, np.array([1.0, 2.0]))
    np.testing.assert_allclose(value, [-0.2, -np.sin(0.5)])
    np.testing.assert_allclose(t, [2.0, -np.cos(0.5)])


# ---------------------------------------------------------------------------- jacobians

def _f_wide(x):       # R^6 -> R^2
    return np.stack([np.sum(x ** 2), np.prod(x[:3]) + x[5]])


def _f_square(x):     # R^4 -> R^4
    return np.sin(x) * x[::-1] + np.roll(x, 1) ** 2


def _f_tall(x):       # R^2 -> R^5
    return np.stack([x[0], x[1], x[0] * x[1], np.exp(x[0]), np.hypot(x[0], x[1])])


def test_jacobian_wide_square_tall():
    x = np.array([0.3, -1.2, 2.5, 0.7, -0.4, 1.9])
    check(_f_wide, x, analytic=np.array([2 * x, [x[1] * x[2], x[0] * x[2], x[0] * x[1],
                                                 0, 0, 1]]))
    y = x[:4]
    expected = np.diag(np.cos(y) * y[::-1]) + np.sin(y)[:, None] * np.eye(4)[::-1] + \
        np.diag(2 * np.roll(y, 1)) @ np.roll(np.eye(4), 1, axis=0)
    check(_f_square, y, analytic=expected)
    z = np.array([0.6, -0.8])
    r = np.hypot(*z)
    check(_f_tall, z, analytic=np.array([[1, 0], [0, 1], [z[1], z[0]],
                                         [np.exp(z[0]), 0], [z[0] / r, z[1] / r]]))


def test_jacobian_shape_is_out_shape_plus_in_shape():
    def f(m):        # (3, 4) -> (2, 3)
        return np.stack([np.sum(m * m, axis=1), np.max(m, axis=1)])
    J = check(f, M34)
    assert J.shape == (2, 3, 3, 4)
    for mode in ("forward", "reverse", "auto"):
        assert jacobian(f, mode=mode)(M34).shape == (2, 3, 3, 4)
    # scalar output: Jacobian has the input's shape
    assert jacobian(np.sum, mode="forward")(T234).shape == (2, 3, 4)
    # scalar input
    Js = jacobian(lambda s: np.stack([s, s * s, np.sin(s)]), mode="forward")(0.5)
    np.testing.assert_allclose(Js, [1.0, 1.0, np.cos(0.5)])
    assert Js.shape == (3,)


@pytest.mark.parametrize("f,x", [(_f_wide, X6), (_f_square, X6[:4]), (_f_tall, X6[:2]),
                                 (lambda m: m @ m.T + np.tanh(m).sum(), M34)])
def test_forward_matches_reverse(f, x):
    np.testing.assert_allclose(jacobian(f, mode="forward")(x),
                               jacobian(f, mode="reverse")(x), rtol=1e-12, atol=1e-14)


def test_derivative_of_vector_valued_function_of_scalar():
    d = derivative(lambda s: np.stack([s, s * s, np.sin(s)]))(0.5)
    np.testing.assert_allclose(d, [1.0, 1.0, np.cos(0.5)], rtol=1e-15)


def test_empty_input_jacobian():
    J = jacobian(np.sum, mode="forward")(np.zeros(0))
    assert J.shape == (0,)
    J = jacobian(lambda x: np.concatenate([x, np.ones(2)]), mode="forward")(np.zeros(0))
    assert J.shape == (2, 0)


def test_jacobian_auto_mode_picks_by_shape():
    jac = dualtape.jacobian(_f_tall)     # the tape knows both sizes from the first call
    J1 = jac(X6[:2])
    assert jac.last_mode == "forward"
    J2 = jac(X6[:2])
    assert jac.last_mode == "forward"
    np.testing.assert_allclose(J1, J2, rtol=1e-13)
    np.testing.assert_allclose(J1, jacobian(_f_tall)(X6[:2]), rtol=1e-13)
    jw = dualtape.jacobian(_f_wide)
    np.testing.assert_allclose(jw(X6), jacobian(_f_wide)(X6), rtol=1e-13)
    assert jw.last_mode == "reverse"


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 7, 12, 64, 1000])
def test_chunk_sizes_give_identical_results(chunk):
    def f(m):
        return np.concatenate([np.tanh(m @ m.T).ravel(), np.prod(m, axis=0), m.ravel()[::-1]])
    _, ref = fwd(f, M34, chunk=M34.size)
    value, J = fwd(f, M34, chunk=chunk)
    np.testing.assert_array_equal(J, ref)
    np.testing.assert_allclose(J, central_jacobian(f, M34), rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(value, f(M34))
    np.testing.assert_array_equal(jacobian(f, mode="forward", chunk=chunk)(M34), ref)


# ---------------------------------------------------------------------------- nesting

SECOND = [
    ("sin", np.sin, lambda x: -np.sin(x)),
    ("exp", np.exp, np.exp),
    ("cube", lambda x: x ** 3, lambda x: 6 * x),
    ("log", np.log, lambda x: -1 / x ** 2),
    ("tanh", np.tanh, lambda x: -2 * np.tanh(x) * (1 - np.tanh(x) ** 2)),
    ("recip", lambda x: 1 / x, lambda x: 2 / x ** 3),
    ("x exp x", lambda x: x * np.exp(x), lambda x: (x + 2) * np.exp(x)),
    ("arctan", np.arctan, lambda x: -2 * x / (1 + x * x) ** 2),
    ("sqrt", np.sqrt, lambda x: -0.25 * x ** -1.5),
    ("sin x^2", lambda x: np.sin(x * x), lambda x: 2 * np.cos(x * x) - 4 * x * x * np.sin(x * x)),
    ("x^x", lambda x: x ** x, lambda x: x ** x * ((np.log(x) + 1) ** 2 + 1 / x)),
    ("hypot", lambda x: np.hypot(x, 2.0), lambda x: 4.0 / (x * x + 4.0) ** 1.5),
    ("logaddexp", lambda x: np.logaddexp(x, 0.5),
     lambda x: np.exp(x - 0.5) / (1 + np.exp(x - 0.5)) ** 2),
    ("vector sum", lambda x: np.sum(np.stack([x, x * x, x ** 3])), lambda x: 2 + 6 * x),
    ("max", lambda x: np.max(np.stack([x * x, 0.1 * x])), lambda x: 2.0 + 0 * x),
]


@pytest.mark.parametrize("name,f,d2", SECOND, ids=[s[0] for s in SECOND])
@pytest.mark.parametrize("x", [0.7, 1.9])
def test_second_derivative(name, f, d2, x):
    got = derivative(derivative(f))(x)
    np.testing.assert_allclose(got, d2(x), rtol=1e-12)
    # and the first derivative against a central difference
    d1 = derivative(f)(x)
    np.testing.assert_allclose(d1, (f(x + 1e-6) - f(x - 1e-6)) / 2e-6, rtol=1e-6)


def test_second_derivative_through_prod():
    # prod(x, x, 2) = 2 x^2, second derivative 4
    f = lambda x: np.prod(np.stack([x, x, 2.0]))  # noqa: E731
    np.testing.assert_allclose(derivative(derivative(f))(0.7), 4.0, rtol=1e-14)


def test_second_derivative_through_reductions_and_products():
    def f(s):
        v = np.stack([s, s * s, np.sin(s)])
        M = np.outer(v, np.array([1.0, 2.0]))
        return np.mean(v) + np.min(v) + np.sum(M.T @ M) + v[1:][::-1][0]
    s0 = 0.6   # min(v) = s^2 near 0.6; v[1:][::-1][0] = sin(s)
    # sum(M.T @ M) = |v|^2 * sum([1,2] outer [1,2]) = 9 |v|^2
    d2 = (2 - np.sin(s0)) / 3 + 2 + 9 * (2 + 12 * s0 ** 2 + 2 * (np.cos(s0) ** 2
                                                                   - np.sin(s0) ** 2)) \
        - np.sin(s0)
    np.testing.assert_allclose(derivative(derivative(f))(s0), d2, rtol=1e-12)


@pytest.mark.parametrize("f,x", [
    (lambda x: np.sum(np.sin(x) * x[::-1]), X6),
    (lambda m: np.tanh(m @ m.T).ravel(), M34),
    (lambda x: np.sum(x.reshape(2, 3) ** 2, axis=0) + np.max(x), X6),
    (lambda x: np.linalg.norm(x) * np.exp(x / 4), X6),
])
def test_check_grads_forward_second_order(f, x):
    from dualtape.testing import check_grads
    check_grads(f, x, modes=("fwd",), order=2)


def test_perturbation_confusion():
    assert derivative(lambda x: x * derivative(lambda y: x * y)(1.0))(2.0) == 4.0
    # the same closure differentiated with the inner variable constant: d/dx (x + 1)... = 1
    assert derivative(lambda x: derivative(lambda y: x + y)(1.0) * x)(3.0) == 1.0
    # Siskind & Pearlmutter: d/dx [x * d/dy (x + y)](1) = 1
    np.testing.assert_allclose(
        derivative(lambda x: x * derivative(lambda y: x + y)(1.0))(1.0), 1.0)


def test_third_derivative_of_sin():
    d3 = derivative(derivative(derivative(np.sin)))
    for x in [0.0, 0.4, 2.3]:
        np.testing.assert_allclose(d3(x), -np.cos(x), rtol=1e-14, atol=1e-15)
    d4 = derivative(d3)
    np.testing.assert_allclose(d4(0.4), np.sin(0.4), rtol=1e-14)


def test_nested_jacobian_of_gradient_is_hessian():
    def f(x):
        return np.sum(x ** 3) + x[0] * x[1] * x[2]

    def g(x):
        return jacobian(f, mode="forward")(x)
    x = np.array([0.5, -1.0, 2.0])
    H = jacobian(g, mode="forward")(x)
    expected = np.diag(6 * x) + np.array([[0, x[2], x[1]], [x[2], 0, x[0]],
                                          [x[1], x[0], 0]])
    np.testing.assert_allclose(H, expected, rtol=1e-13)


def test_nested_derivative_through_shape_ops():
    def f(s):
        v = np.stack([s, 2 * s, s * s])
        m = np.outer(v, v[::-1])
        return np.trace(m @ m.T) + np.max(v)
    x0 = 0.8
    # f(s) = |v|^4 + max(v) with |v|^2 = 5 s^2 + s^4; max = 2 s near 0.8
    def exact(s):
        return (5 * s ** 2 + s ** 4) ** 2 + 2 * s
    d2_exact = 2 * (10 * x0 + 4 * x0 ** 3) ** 2 + 2 * (5 * x0 ** 2 + x0 ** 4) * (10 + 12 * x0 ** 2)
    np.testing.assert_allclose(f(x0), exact(x0), rtol=1e-13)
    np.testing.assert_allclose(derivative(derivative(f))(x0), d2_exact, rtol=1e-12)


# ---------------------------------------------------------------------------- inputs

def test_int_input_promoted():
    seen = []

    def f(x):
        seen.append(x.value.dtype)
        return x * x
    d = derivative(f)(3)
    assert d == 6.0 and np.asarray(d).dtype == np.float64
    assert seen == [np.float64]
    J = jacobian(lambda x: x * 2, mode="forward")(np.arange(3))
    assert J.dtype == np.float64
    np.testing.assert_array_equal(J, 2 * np.eye(3))


def test_float32_input_promoted():
    seen = []

    def f(x):
        seen.append((x.value.dtype, x.tangent.dtype))
        return np.sin(x)
    x32 = np.array([0.1, 0.2], dtype=np.float32)
    value, t = jvp(f, x32, np.ones(2, dtype=np.float32))
    assert seen == [(np.float64, np.float64)]
    assert value.dtype == np.float64 and t.dtype == np.float64
    np.testing.assert_allclose(t, np.cos(x32.astype(np.float64)), rtol=1e-15)


def test_list_and_python_float_inputs():
    J = jacobian(lambda x: x ** 2, mode="forward")([1, 2.5, 3])
    np.testing.assert_array_equal(J, np.diag([2.0, 5.0, 6.0]))
    value, t = jvp(np.exp, 0.5, 2.0)
    np.testing.assert_allclose(value, np.exp(0.5))
    np.testing.assert_allclose(t, 2 * np.exp(0.5))
    value, t = jvp(lambda x: x.sum(), [[1, 2], [3, 4]], [[1, 0], [0, 1]])
    assert value == 10.0 and t == 2.0
    assert derivative(lambda x: x ** 3)(2) == 12.0


@pytest.mark.parametrize("call", [
    lambda: derivative(np.sin)(1.0 + 2.0j),
    lambda: jvp(np.sin, np.array([1.0 + 0j]), np.array([1.0])),
    lambda: jacobian(np.sin, mode="forward")(np.ones(2, dtype=complex)),
])
def test_complex_input_raises_typeerror(call):
    with pytest.raises(TypeError, match="complex"):
        call()


def test_constant_output_has_zero_derivative():
    np.testing.assert_array_equal(jacobian(lambda x: np.ones(2), mode="forward")(X6[:3]),
                                  np.zeros((2, 3)))
    assert derivative(lambda x: 5.0)(1.0) == 0.0


# ---------------------------------------------------------------------------- errors

@pytest.mark.parametrize("fn,name", [
    (lambda x: np.partition(x, 2), "numpy.partition"),
    (np.unwrap, "numpy.unwrap"),
    (np.fft.fft, "numpy.fft.fft"),
    (np.corrcoef, "numpy.corrcoef"),
    (np.unique, "numpy.unique"),
    (lambda x: np.argpartition(x, 2), "numpy.argpartition"),
])
def test_unsupported_function_typeerror(fn, name):
    with pytest.raises(TypeError) as err:
        jacobian(lambda x: fn(x), mode="forward")(X6)
    msg = str(err.value)
    assert name in msg and "docs/supported.md" in msg, msg
    with pytest.raises(TypeError, match="docs/supported.md"):
        fn(seeded(X6))


def test_unsupported_ufunc_and_ufunc_methods():
    d = seeded(X6)
    with pytest.raises(TypeError, match="docs/supported.md") as err:
        np.spacing(d)
    assert "spacing" in str(err.value)
    with pytest.raises(TypeError, match="accumulate"):
        np.add.accumulate(d)
    with pytest.raises(TypeError, match="outer"):
        np.multiply.outer(d, d)


@pytest.mark.parametrize("fn,name", [
    (lambda m: np.linalg.svd(m)[1], "numpy.linalg.svd"),
    (lambda m: np.linalg.eig(m)[0], "numpy.linalg.eig"),
    (np.linalg.pinv, "numpy.linalg.pinv"),
    (lambda m: np.linalg.norm(m, 2), "ord=2"),
])
def test_linalg_not_implemented(fn, name):
    m = np.eye(3) * 2.0 + 0.1
    with pytest.raises(NotImplementedError) as err:
        jacobian(fn, mode="forward")(m)
    assert name in str(err.value), str(err.value)


def test_ufunc_out_raises():
    d = seeded(X6)
    with pytest.raises(TypeError, match="out="):
        np.sin(d, out=np.zeros(6))
    with pytest.raises(TypeError, match="out="):
        np.add(d, 1.0, out=np.zeros(6))
    with pytest.raises(TypeError, match="out="):
        np.sum(d, out=np.zeros(()))
    with pytest.raises(TypeError):
        np.multiply(d, 2.0, out=(np.zeros(6),))


def test_float_and_math_functions_raise_with_item_hint():
    d = seeded(X6)[1]
    with pytest.raises(TypeError, match=r"\.item\(\)"):
        float(d)
    with pytest.raises(TypeError, match=r"\.item\(\)"):
        math.sin(d)
    with pytest.raises(TypeError, match=r"\.item\(\)"):
        math.exp(d.item())
    with pytest.raises(TypeError, match=r"\.item\(\)"):
        int(d)
    with pytest.raises(TypeError, match=r"\.item\(\)"):
        derivative(lambda x: math.sin(x))(0.3)
    # a zero tangent converts: it is a constant at this level
    z = Dual(np.array(2.5), np.zeros(3), new_tag())
    assert float(z) == 2.5 and math.sqrt(z) == math.sqrt(2.5)


def _raises_naming_item(fn):
    """NumPy converts an element with float(); it re-raises dualtape's TypeError (which
    names .item()) as the cause of "setting an array element with a sequence"."""
    with pytest.raises((TypeError, ValueError)) as info:
        fn()
    chain = [info.value]
    while chain[-1].__cause__ or chain[-1].__context__:
        chain.append(chain[-1].__cause__ or chain[-1].__context__)
    assert any(isinstance(e, TypeError) and ".item()" in str(e) for e in chain)


def test_writing_a_dual_into_a_plain_array_fails_loudly():
    d = seeded(X6)
    out = np.zeros(3)

    def put(v):
        out[0] = v
    _raises_naming_item(lambda: put(d[0]))
    _raises_naming_item(lambda: put(d[0].item()))

    def f(x):
        buf = np.zeros(3)
        buf[0] = x[0]
        return buf
    _raises_naming_item(lambda: jacobian(f, mode="forward")(X6))
    np.testing.assert_array_equal(out, np.zeros(3))


def test_writing_into_a_dual_records_the_new_version():
    d = seeded(X6)
    d[0] = 1.0
    d[1:3] += np.ones(2)
    d[np.array([4, 4])] *= 2.0     # repeated index: multiplied once, as NumPy does
    want = X6.copy()
    want[0] = 1.0
    want[1:3] += 1.0
    want[4] *= 2.0
    np.testing.assert_allclose(d.value, want)
    tangent_diag = np.array([0.0, 1.0, 1.0, 1.0, 2.0, 1.0])
    np.testing.assert_allclose(np.diagonal(d.tangent), tangent_diag)


def test_in_place_operators_on_whole_dual_update_aliases():
    # d += 1 updates the array in place: another name for it sees the change (NumPy)
    d = seeded(X6)
    e = d
    d += 1.0
    np.testing.assert_allclose(d.value, X6 + 1.0)
    np.testing.assert_allclose(e.value, X6 + 1.0)


def test_asarray_of_vector_dual_raises_naming_stack():
    d = seeded(X6)
    with pytest.raises(TypeError, match="np.stack"):
        np.asarray(d)
    with pytest.raises(TypeError, match="np.stack"):
        np.array(d)
    with pytest.raises(TypeError, match="np.stack"):
        jacobian(lambda x: np.asarray(x) * 2, mode="forward")(X6)
    with pytest.raises(TypeError):
        d.tolist()


def test_derivative_of_non_scalar_x_raises_valueerror():
    with pytest.raises(ValueError, match="scalar"):
        derivative(np.sin)(np.array([0.1, 0.2]))
    with pytest.raises(ValueError, match="scalar"):
        derivative(np.sin)([0.1])


def test_jvp_tangent_shape_mismatch_raises_valueerror():
    with pytest.raises(ValueError, match="shape"):
        jvp(np.sin, np.ones(3), np.ones(4))
    with pytest.raises(ValueError, match="shape"):
        jvp(np.sin, np.ones((2, 3)), np.ones(6))
    with pytest.raises(ValueError):
        jvp(np.sin, 1.0, np.ones(1))


def test_truth_of_vector_dual_is_ambiguous():
    d = seeded(X6)
    with pytest.raises(ValueError, match="ambiguous"):
        bool(d)
    with pytest.raises(ValueError, match="ambiguous"):
        if d > 0:
            pass


def test_astype_int_raises():
    with pytest.raises(TypeError):
        seeded(X6).astype(int)


def test_jacobian_bad_mode_raises():
    with pytest.raises(ValueError, match="mode"):
        jacobian(np.sin, mode="sideways")


def test_dual_without_a_tag_is_a_fresh_level():
    x = Dual(np.array([0.5, 2.0]), np.eye(2))
    y = np.sin(x) * x
    np.testing.assert_allclose(y.tangent, np.diag(np.cos(x.value) * x.value + np.sin(x.value)),
                               rtol=1e-14)
    assert Dual(np.zeros(1), np.zeros((1, 1))).tag != x.tag
