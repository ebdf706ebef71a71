"""Second order and tape tangents: ``hessian``, ``hvp``, ``jvp``, ``jacobian(mode=...)`` and
the ``Tape`` methods ``jvp`` / ``jacobian`` / ``hvp`` / ``hessian``.

Expected values come from SciPy (``rosen_hess``, ``rosen_hess_prod``), analytic formulas,
NumPy alone (linear maps built from basis vectors), central differences, or another mode
of dualtape (Dual-over-Dual forward mode, nested ``derivative``, reverse Jacobians); never
from the code under test alone.
"""
import numpy as np
import pytest
from scipy.optimize import minimize, rosen_hess, rosen_hess_prod

import dualtape
from dualtape import GuardFlipped, derivative
from dualtape.api import dual_jvp, forward_jacobian
from fixtures import FUNCTIONS, rosen

RNG = np.random.default_rng(20240611)
IDS = [name for name, _, _ in FUNCTIONS]


# ============================================================================ helpers

def close(a, b, rtol=1e-12, atol=1e-12):
    np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)


def rel_close(a, b, rtol=1e-10):
    """|a - b| <= rtol * max|b| elementwise (relative to the scale of the whole array)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    assert a.shape == b.shape, (a.shape, b.shape)
    assert np.all(np.isfinite(a)), a
    scale = max(np.max(np.abs(b)), 1e-300) if b.size else 1.0
    err = np.max(np.abs(a - b)) if a.size else 0.0
    assert err <= rtol * scale, f"max abs error {err} > {rtol} * {scale}\n{a}\n{b}"


def dual_grad(f, x, *args):
    """The gradient of a scalar f by forward mode on Duals (no tape)."""
    return forward_jacobian(f, x, args)[1]


def dual_hessian(f, x, *args):
    """Dual-over-Dual Hessian: forward_jacobian of the forward-mode gradient."""
    return forward_jacobian(lambda z: forward_jacobian(f, z, args)[1], x)[1]


def dual_jacobian(f, x, *args):
    return forward_jacobian(f, x, args)[1]


def fd_hessian(f, x, *args, eps=1e-5):
    """Central differences of dualtape.grad (the reverse-mode gradient)."""
    g = dualtape.grad(f)
    x = np.asarray(x, dtype=float)
    H = np.zeros(x.shape + x.shape)
    for i in np.ndindex(x.shape):
        e = np.zeros_like(x)
        e[i] = eps
        H[(Ellipsis,) + i] = (g(x + e, *args) - g(x - e, *args)) / (2 * eps)
    return H


def fd_hvp(f, x, v, *args, eps=1e-5):
    g = dualtape.grad(f)
    return (g(x + eps * v, *args) - g(x - eps * v, *args)) / (2 * eps)


def assert_symmetric(H, rtol=1e-12):
    n = int(np.sqrt(H.size))
    M = H.reshape(n, n)
    assert np.max(np.abs(M - M.T)) <= rtol * max(np.max(np.abs(M)), 1e-300)


def linear_map(g, n):
    """The matrix of a linear map g: R^n -> R^m, computed by NumPy alone (column j is
    g(e_j))."""
    return np.stack([np.asarray(g(np.eye(n)[j]), dtype=float).ravel() for j in range(n)],
                    axis=1)


# ============================================================================ Rosenbrock

def rosen_points(n):
    return [np.ones(n), np.zeros(n), np.linspace(-1.2, 1.3, n),
            RNG.uniform(-2.0, 2.0, n), np.full(n, -0.7)]


@pytest.mark.parametrize("n", [2, 7, 50])
def test_rosenbrock_hessian_matches_scipy(n):
    h = dualtape.hessian(rosen)
    for x in rosen_points(n):
        H = h(x)
        assert H.shape == (n, n)
        close(H, rosen_hess(x), rtol=1e-13, atol=1e-11)
        assert_symmetric(H)
    assert h.tapes.records == 1


@pytest.mark.parametrize("n", [2, 7, 50])
def test_rosenbrock_hvp_matches_scipy(n):
    hv = dualtape.hvp(rosen)
    tp = dualtape.tape(rosen, np.linspace(-1.0, 1.0, n))
    for x in rosen_points(n):
        for v in (np.ones(n), RNG.standard_normal(n), np.eye(n)[n // 2]):
            expected = rosen_hess_prod(x, v)
            close(hv(x, v), expected, rtol=1e-12, atol=1e-9)
            close(tp.hvp(x, v), expected, rtol=1e-12, atol=1e-9)
    assert hv.tapes.records == 1


@pytest.mark.parametrize("n", [2, 7, 50])
def test_rosenbrock_tape_hessian_and_chunks(n):
    x = RNG.uniform(-1.5, 1.5, n)
    tp = dualtape.tape(rosen, x)
    expected = rosen_hess(x)
    results = [tp.hessian(x, chunk=c) for c in (1, 3, 32, None)]
    results += [dualtape.hessian(rosen, chunk=c)(x) for c in (1, 3, 32)]
    for H in results:
        close(H, expected, rtol=1e-13, atol=1e-11)
        np.testing.assert_array_equal(H, results[0])


# ============================================================================ analytic cases

def test_quadratic_form_hessian_is_symmetric_part():
    for n in (1, 4, 9):
        A = RNG.standard_normal((n, n))
        b = RNG.standard_normal(n)

        def quad(x):
            return 0.5 * x @ A @ x + b @ x
        h = dualtape.hessian(quad)
        for x in (RNG.standard_normal(n), np.zeros(n)):
            close(h(x), 0.5 * (A + A.T), rtol=1e-14, atol=1e-14)
            close(dualtape.grad(quad)(x), 0.5 * (A + A.T) @ x + b, rtol=1e-12, atol=1e-12)
            v = RNG.standard_normal(n)
            close(dualtape.hvp(quad)(x, v), 0.5 * (A + A.T) @ v, rtol=1e-12, atol=1e-12)


def test_quadratic_form_of_a_matrix_input():
    """x of shape (2, 3): H has shape (2, 3, 2, 3); A and b are parameters."""
    A = RNG.standard_normal((6, 6))
    b = RNG.standard_normal(6)

    def quad(x, A, b):
        z = x.reshape(-1)
        return 0.5 * np.dot(z, np.dot(A, z)) + np.sum(b * z)
    h = dualtape.hessian(quad)
    x = RNG.standard_normal((2, 3))
    H = h(x, A, b)
    assert H.shape == (2, 3, 2, 3)
    close(H.reshape(6, 6), 0.5 * (A + A.T), rtol=1e-14, atol=1e-14)
    A2 = RNG.standard_normal((6, 6))
    close(h(x, A2, b).reshape(6, 6), 0.5 * (A2 + A2.T), rtol=1e-14, atol=1e-14)
    assert h.tapes.records == 1
    V = RNG.standard_normal((4, 2, 3))
    HV = dualtape.hvp(quad)(x, V, A, b)
    assert HV.shape == (4, 2, 3)
    close(HV.reshape(4, 6), V.reshape(4, 6) @ (0.5 * (A + A.T)), rtol=1e-12, atol=1e-12)


def test_exp_times_sin():
    f = lambda x: np.sum(np.exp(x) * np.sin(x))   # noqa: E731
    for x in (np.linspace(-2, 2, 5), np.array([0.0]), RNG.standard_normal(12)):
        close(dualtape.hessian(f)(x), np.diag(2 * np.exp(x) * np.cos(x)))


def test_logistic_regression_nll():
    X = RNG.standard_normal((40, 5))
    y = (RNG.uniform(size=40) > 0.5).astype(float)

    def nll(w, X, y):
        z = X @ w
        return np.sum(np.logaddexp(0.0, z) - y * z)
    h = dualtape.hessian(nll)
    for w in (np.zeros(5), RNG.standard_normal(5), 3.0 * RNG.standard_normal(5)):
        p = 1.0 / (1.0 + np.exp(-(X @ w)))
        expected = X.T @ np.diag(p * (1 - p)) @ X
        close(h(w, X, y), expected, rtol=1e-11, atol=1e-12)
        close(dualtape.grad(nll)(w, X, y), X.T @ (p - y), rtol=1e-11, atol=1e-12)
    assert h.tapes.records == 1


def test_triple_product():
    f = lambda x: x[0] * x[1] * x[2]   # noqa: E731
    for x in (np.array([1.5, -2.0, 0.5]), np.zeros(3), np.array([0.0, 3.0, 4.0])):
        x0, x1, x2 = x
        expected = np.array([[0, x2, x1], [x2, 0, x0], [x1, x0, 0]])
        close(dualtape.hessian(f)(x), expected, rtol=1e-15, atol=0)


def prod_hessian(x):
    n = x.size
    H = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            if i != j:
                H[i, j] = np.prod(np.delete(x, [i, j]))
    return H


@pytest.mark.parametrize("x", [np.array([1.5, -2.0, 0.5, 3.0]),
                               np.array([0.0, 2.0, 3.0, 4.0]),
                               np.array([0.0, 2.0, 0.0, 5.0]),
                               np.array([0.0, 0.0, 0.0, 5.0])],
                         ids=["no_zero", "one_zero", "two_zeros", "three_zeros"])
def test_prod_with_zeros(x):
    H = dualtape.hessian(np.prod)(x)
    close(H, prod_hessian(x), rtol=1e-15, atol=0)
    close(dualtape.hvp(np.prod)(x, np.arange(1.0, 5.0)), prod_hessian(x) @ np.arange(1.0, 5.0),
          rtol=1e-14, atol=0)
    # along an axis, with the zero in one row
    m_f = lambda z: np.sum(np.prod(z.reshape(2, 2), axis=1) ** 2)   # noqa: E731
    a, b, c, d = x
    # (ab)^2 + (cd)^2
    expected = np.zeros((4, 4))
    expected[:2, :2] = [[2 * b * b, 4 * a * b], [4 * a * b, 2 * a * a]]
    expected[2:, 2:] = [[2 * d * d, 4 * c * d], [4 * c * d, 2 * c * c]]
    close(dualtape.hessian(m_f)(x), expected, rtol=1e-15, atol=0)


W5 = np.array([1.0, -2.0, 0.5, 3.0, -1.5])
# points away from every kink (no ties, no value at a bound)
CHOICE_POINTS = [np.array([0.9, -0.4, 1.7, 0.2, -1.3]), np.array([-0.8, 0.6, -1.6, 1.4, 0.1]),
                 np.array([2.1, 1.2, -0.35, -0.9, 0.55])]


def _e(n, k):
    return np.eye(n)[k]


def _min_times_sumsq(x):
    m = int(np.argmin(x))
    e = _e(x.size, m)
    return np.outer(e, 2 * x) + np.outer(2 * x, e) + 2 * x[m] * np.eye(x.size)


CHOICES = [
    # name, f, analytic Hessian
    ("max_reduce", lambda x: np.max(x ** 2),
     lambda x: np.diag(2.0 * _e(x.size, np.argmax(x ** 2)))),
    ("min_times_sumsq", lambda x: np.min(x) * np.sum(x ** 2), _min_times_sumsq),
    ("abs_cubed", lambda x: np.sum(np.abs(x) ** 3 * W5), lambda x: np.diag(6 * np.abs(x) * W5)),
    ("x_abs_x", lambda x: np.sum(x * np.abs(x)), lambda x: np.diag(2 * np.sign(x))),
    ("maximum_const", lambda x: np.sum(np.maximum(x, 0.3) ** 3),
     lambda x: np.diag(6 * x * (x > 0.3))),
    ("maximum_pairs", lambda x: np.sum(np.maximum(x[:2], x[3:]) * x[2]),
     None),
    ("minimum_sq", lambda x: np.sum(np.minimum(x * x, 1.0) * x),
     lambda x: np.diag(6 * x * (x * x < 1.0))),
    ("clip", lambda x: np.sum(np.clip(x, -1.0, 1.0) ** 2 * x),
     lambda x: np.diag(6 * x * (np.abs(x) < 1.0))),
    ("where", lambda x: np.sum(np.where(x > 0, x ** 3, np.sin(x))),
     lambda x: np.diag(np.where(x > 0, 6 * x, -np.sin(x)))),
    ("where_mixed", lambda x: np.sum(np.where(x > 0.5, x * x[0], np.exp(x))),
     None),
    ("masked", lambda x: np.sum(x[x > 0] ** 4), lambda x: np.diag(12 * x ** 2 * (x > 0))),
]


def _maximum_pairs_hessian(x):
    H = np.zeros((5, 5))
    for i, j in ((0, 3), (1, 4)):
        k = i if x[i] > x[j] else j
        H[k, 2] = H[2, k] = 1.0
    return H


def _where_mixed_hessian(x):
    H = np.diag(np.where(x > 0.5, 0.0, np.exp(x)))
    sel = (x > 0.5).astype(float)
    H[0, :] += sel
    H[:, 0] += sel
    return H


@pytest.mark.parametrize("name,f,analytic", CHOICES, ids=[c[0] for c in CHOICES])
def test_data_dependent_choices_away_from_kinks(name, f, analytic):
    analytic = analytic or {"maximum_pairs": _maximum_pairs_hessian,
                            "where_mixed": _where_mixed_hessian}[name]
    h = dualtape.hessian(f)
    hv = dualtape.hvp(f)
    for x in CHOICE_POINTS + CHOICE_POINTS[::-1]:
        expected = analytic(x)
        H = h(x)
        close(H, expected)
        close(H, dual_hessian(f, x))
        close(H, dualtape.tape(f, x).hessian(x), rtol=1e-14, atol=0)
        v = RNG.standard_normal(5)
        close(hv(x, v), expected @ v)


def test_matmul_with_constant_matrix():
    M = RNG.standard_normal((3, 4))
    f = lambda x: np.sum(np.tanh(M @ x))   # noqa: E731
    for x in (RNG.standard_normal(4), np.zeros(4)):
        t = np.tanh(M @ x)
        expected = M.T @ np.diag(-2 * t * (1 - t * t)) @ M
        close(dualtape.hessian(f)(x), expected)
    g = lambda x: np.sum((x.reshape(2, 3) @ M[:, :2]) ** 2)   # noqa: E731
    # sum_ik (sum_j X_ij M_jk)^2: H[(i,j),(i',j')] = 2 delta_ii' (M M^T)_jj'
    expected = np.kron(np.eye(2), 2 * M[:, :2] @ M[:, :2].T)
    close(dualtape.hessian(g)(RNG.standard_normal(6)), expected)


def test_matmul_of_traced_matrices():
    # f = sum(X @ X): df/dX_ab = rowsum_b + colsum_a, H[(a,b),(c,d)] = [c == b] + [d == a]
    f = lambda x: np.sum(x.reshape(3, 3) @ x.reshape(3, 3))   # noqa: E731
    expected = np.zeros((3, 3, 3, 3))
    for a, b, c, d in np.ndindex(3, 3, 3, 3):
        expected[a, b, c, d] = (c == b) + (d == a)
    x = RNG.standard_normal(9)
    close(dualtape.hessian(f)(x), expected.reshape(9, 9), rtol=0, atol=1e-15)
    close(dualtape.hessian(lambda m: np.sum(m @ m))(x.reshape(3, 3)), expected,
          rtol=0, atol=1e-15)
    # f = sum((X @ X.T)^2) and x^T (X x): cross-checked with Dual-over-Dual and FD
    for g, n in ((lambda x: np.sum((x.reshape(2, 3) @ x.reshape(2, 3).T) ** 2), 6),
                 (lambda x: x[:3] @ (x.reshape(3, 3) @ x[3:6]), 9)):
        z = RNG.standard_normal(n)
        H = dualtape.hessian(g)(z)
        rel_close(H, dual_hessian(g, z), 1e-12)
        close(H, fd_hessian(g, z), rtol=1e-6, atol=1e-6)
        assert_symmetric(H)


GATHERS = [
    ("transpose", lambda x: x.reshape(3, 4).T.ravel()),
    ("flip", lambda x: np.flip(x)),
    ("roll", lambda x: np.roll(x, 5)),
    ("fancy_repeats", lambda x: x[np.array([3, 0, 3, 11, 7, 7, 7])]),
    ("steps", lambda x: x[1::3]),
    ("neg_steps", lambda x: x[::-2]),
    ("slice_2d", lambda x: x.reshape(3, 4)[1:, ::2].ravel()),
    ("concatenate", lambda x: np.concatenate([x[:3], x[5:], x[2:4]])),
    ("tile_repeat", lambda x: np.concatenate([np.tile(x[:2], 3), np.repeat(x[4:6], 2)])),
    ("sum_axis0", lambda x: np.sum(x.reshape(3, 4), axis=0)),
    ("mean_axis1", lambda x: np.mean(x.reshape(3, 4), axis=1)),
    ("sum_axis_keepdims", lambda x: np.sum(x.reshape(2, 3, 2), axis=(0, 2), keepdims=True)
     .ravel()),
    ("diag", lambda x: np.diag(x.reshape(3, 4))),
]


@pytest.mark.parametrize("name,g", GATHERS, ids=[n for n, _ in GATHERS])
def test_linear_maps_inside_nonlinear_functions(name, g):
    """f = sum(c * (P x)^3) + sum(d * (P x) * (Q x)) with P, Q the matrices of linear NumPy
    maps, computed from basis vectors: H = P^T diag(6 c P x) P + P^T diag(d) Q + Q^T diag(d) P."""
    n = 12
    P = linear_map(g, n)
    Q = linear_map(lambda x: np.flip(g(np.roll(x, 1))), n)
    c = RNG.standard_normal(P.shape[0])
    d = RNG.standard_normal(P.shape[0])

    def f(x):
        px = g(x)
        return np.sum(c * px ** 3) + np.sum(d * px * np.flip(g(np.roll(x, 1))))
    h = dualtape.hessian(f)
    for x in (RNG.standard_normal(n), RNG.standard_normal(n)):
        expected = P.T @ np.diag(6 * c * (P @ x)) @ P + P.T @ np.diag(d) @ Q \
            + Q.T @ np.diag(d) @ P
        close(h(x), expected, rtol=1e-12, atol=1e-12)
        v = RNG.standard_normal(n)
        close(dualtape.hvp(f)(x, v), expected @ v, rtol=1e-12, atol=1e-12)
    assert h.tapes.records == 1


def test_reductions_along_axes():
    def f(x):
        m = x.reshape(2, 3)
        return (np.sum(np.sum(m, axis=0) ** 2) + np.sum(np.mean(m, axis=1) ** 3)
                + np.sum(np.prod(m, axis=0)) + np.sum(np.max(m, axis=1) ** 2)
                + np.sum(np.min(m ** 2, axis=0) * np.arange(1.0, 4.0)))
    x = np.array([0.3, -1.2, 2.5, 0.7, -0.4, 1.9])
    m = x.reshape(2, 3)
    expected = np.zeros((6, 6))
    for j in range(3):                         # (m0j + m1j)^2 and m0j m1j
        for a in (j, 3 + j):
            for b in (j, 3 + j):
                expected[a, b] += 2.0 + (a != b)
    for i in range(2):                         # (row mean)^3
        r = slice(3 * i, 3 * i + 3)
        expected[r, r] += 6 * np.mean(m[i]) / 9.0
        k = 3 * i + int(np.argmax(m[i]))       # max^2
        expected[k, k] += 2.0
    for j in range(3):                         # min(m^2) * (j + 1)
        k = 3 * int(np.argmin(m[:, j] ** 2)) + j
        expected[k, k] += 2.0 * (j + 1)
    H = dualtape.hessian(f)(x)
    close(H, expected, rtol=1e-13, atol=1e-14)
    close(H, dual_hessian(f, x))
    close(H, fd_hessian(f, x), rtol=1e-6, atol=1e-6)


def test_scalar_python_loop():
    def f(x):
        s = x[0]
        for _ in range(10):
            s = s * x[1]
        return s
    h = dualtape.hessian(f)
    for x in (np.array([1.5, 0.9]), np.array([-0.5, 1.1]), np.array([2.0, -1.0])):
        x0, x1 = x
        expected = [[0.0, 10 * x1 ** 9], [10 * x1 ** 9, 90 * x0 * x1 ** 8]]
        close(h(x), expected, rtol=1e-13, atol=0)
    assert h.tapes.records == 1


def test_scalar_input_and_argnums():
    h = dualtape.hessian(lambda t: t ** 3 + np.sin(t))
    for t in (2.0, np.array(-0.5)):
        H = h(t)
        assert np.shape(H) == ()
        close(H, 6 * float(t) - np.sin(float(t)))
    close(dualtape.hvp(lambda t: t ** 4)(2.0, 3.0), 3.0 * 12 * 4.0)

    def f(a, x):
        return a * np.sum(x ** 3) + a ** 2 * x[0]
    h1 = dualtape.hessian(f, argnums=1)
    x = np.array([0.5, -1.0, 2.0])
    for a in (2.0, -3.0):
        close(h1(a, x), np.diag(6 * a * x))
    assert h1.tapes.records == 1
    h0 = dualtape.hessian(f, argnums=0)
    close(h0(1.5, x), 2 * x[0])
    with pytest.raises(ValueError):
        dualtape.hessian(f, argnums=2)(1.0, x)


EDGE = [
    # name, f, analytic Hessian at any x of size 3
    ("same_operand_twice", lambda x: np.sum(x * x) + np.dot(x, x), lambda x: 4.0 * np.eye(3)),
    ("identity_output", lambda x: x[1], lambda x: np.zeros((3, 3))),
    ("constant_output", lambda x: 3.0, lambda x: np.zeros((3, 3))),
    ("linear", lambda x: 2.0 * np.sum(x) - x[0], lambda x: np.zeros((3, 3))),
    ("concat_with_constants",
     lambda x: np.sum(np.concatenate([np.ones(2), x, np.zeros(1)]) ** 3 * np.arange(6.0)),
     lambda x: np.diag(6 * x * np.arange(2.0, 5.0))),
    ("traced_index", lambda x: x[np.argmax(x)] ** 3 + x[np.argmin(x)] * x[0],
     None),
    ("broadcast_scalar", lambda x: np.sum(x ** 2 * x[0]),
     lambda x: 2 * x[0] * np.eye(3) + 2 * (np.outer(np.eye(3)[0], x) + np.outer(x, np.eye(3)[0]))),
]


def _traced_index_hessian(x):
    H = np.zeros((3, 3))
    k, m = int(np.argmax(x)), int(np.argmin(x))
    H[k, k] += 6 * x[k]
    H[m, 0] += 1.0
    H[0, m] += 1.0
    return H


@pytest.mark.parametrize("name,f,analytic", EDGE, ids=[e[0] for e in EDGE])
def test_edge_cases(name, f, analytic):
    analytic = analytic or _traced_index_hessian
    h, hv = dualtape.hessian(f), dualtape.hvp(f)
    for x in (np.array([0.7, 1.3, -0.4]), np.array([-1.1, 0.2, 0.9])):
        expected = analytic(x)
        close(h(x), expected)
        close(dualtape.tape(f, x).hessian(x), expected)
        close(hv(x, np.array([1.0, -2.0, 0.5])), expected @ [1.0, -2.0, 0.5])
        close(dual_hessian(f, x), expected)


def test_scalar_input_with_several_directions():
    hv = dualtape.hvp(lambda t: t ** 3)
    close(hv(2.0, np.array([1.0, 2.0, 3.0])), 12.0 * np.array([1.0, 2.0, 3.0]))
    close(hv(2.0, 1.5), 18.0)


def test_jvp_with_parameters_records_once():
    def f(x, p):
        return np.sin(p * x) * x[::-1]
    x = np.array([0.7, 1.3, -0.4])
    v = np.array([1.0, 0.5, -2.0])
    for p in (2.0, 3.0, -0.5):
        y, t = dualtape.jvp(f, x, v, p)
        close(y, f(x, p))
        close(t, dual_jvp(f, x, v, p)[1])
        expected = (p * np.cos(p * x) * x[::-1]) * v + np.sin(p * x) * v[::-1]
        close(t, expected)
    tp = dualtape.tape(f, x, 2.0)
    close(tp.jvp(x, 3.0, v), dual_jvp(f, x, v, 3.0)[1])   # arguments, then v
    jac = dualtape.jacobian(f, mode="forward")
    for p in (2.0, 3.0):
        close(jac(x, p), dual_jacobian(f, x, p))
    assert jac.tapes.records == 1


def test_mutated_closure_array_rerecords_hessian():
    A = np.eye(3)

    def q(x):
        return 0.5 * x @ A @ x
    h = dualtape.hessian(q)
    hv = dualtape.hvp(q)
    x = np.array([0.3, -1.0, 2.0])
    close(h(x), np.eye(3))
    close(hv(x, np.ones(3)), np.ones(3))
    A[0, 1] = 4.0
    close(h(x), 0.5 * (A + A.T))
    close(hv(x, np.ones(3)), 0.5 * (A + A.T) @ np.ones(3))
    assert h.tapes.records == 2 and hv.tapes.records == 2


# ============================================================================ cross-mode

CROSS = [
    ("trig", lambda x: np.sum(np.sin(x) * np.cos(x[::-1]) + np.arctan(x) * x[0]),
     np.array([0.3, -1.2, 2.5, 0.7])),
    ("rational", lambda x: np.sum(x / (1.0 + x ** 2)) + np.prod(x) / np.sum(x ** 2),
     np.array([0.5, -0.8, 1.3])),
    ("logs", lambda x: np.sum(np.log1p(x ** 2) * np.sqrt(x ** 2 + 1.0)) + np.log(np.sum(np.exp(x))),
     np.array([0.2, 1.4, -0.6, 0.9, -2.0])),
    ("hyperbolic", lambda x: np.sum(np.tanh(x) * np.cosh(x[0]) + np.arcsinh(x) ** 2)
     + np.sum(np.hypot(x, x[::-1] + 0.3)), np.array([0.1, 0.7, -0.3])),
    ("powers", lambda x: np.sum(x ** x[0] + 2.0 ** x + np.abs(x) ** 2.5 + np.cbrt(x + 3.0)),
     np.array([1.3, 0.4, 2.2])),
    ("norm", lambda x: np.linalg.norm(x) ** 3 + np.linalg.norm(x.reshape(2, 2) @ x.reshape(2, 2)),
     np.array([0.4, -1.1, 0.9, 1.6])),
]


@pytest.mark.parametrize("name,f,x", CROSS, ids=[c[0] for c in CROSS])
def test_hessian_equals_jacobian_of_gradient_computed_other_ways(name, f, x):
    H = dualtape.hessian(f)(x)
    assert_symmetric(H)
    rel_close(H, dual_hessian(f, x), 1e-12)
    rel_close(H, forward_jacobian(lambda z: dual_grad(f, z), x)[1], 1e-12)
    close(H, fd_hessian(f, x), rtol=1e-6, atol=1e-6)
    # 1-D slices by nested derivative: d2/dt2 f(x + t e_i) at t = 0 is H_ii
    for i in range(x.size):
        e = np.eye(x.size)[i]
        d2 = derivative(derivative(lambda t: f(x + t * e)))(0.0)
        close(d2, H[i, i], rtol=1e-12, atol=1e-12)
    # hvp and jvp
    for v in (RNG.standard_normal(x.size), np.eye(x.size)[0]):
        close(dualtape.hvp(f)(x, v), H @ v, rtol=1e-12, atol=1e-12)
        close(dualtape.hvp(f)(x, v), fd_hvp(f, x, v), rtol=1e-6, atol=1e-6)


def test_hvp_against_central_differences_of_grad():
    def f(x, a):
        return np.sum(a * np.exp(-x ** 2) * np.sin(3.0 * x)) + np.sum(x[:-1] * x[1:] ** 2)
    hv = dualtape.hvp(f)
    for n in (3, 20):
        x = RNG.standard_normal(n)
        for a in (0.5, 2.0):
            for v in (RNG.standard_normal(n), np.ones(n)):
                close(hv(x, v, a), fd_hvp(f, x, v, a), rtol=1e-6, atol=1e-7)
    assert hv.tapes.records == 2        # one per shape, not per parameter value


def test_hvp_batch_equals_single_calls():
    x = RNG.uniform(-1.5, 1.5, 9)
    hv = dualtape.hvp(rosen)
    tp = dualtape.tape(rosen, x)
    for k in (1, 2, 5, 40):
        V = RNG.standard_normal((k, 9))
        batch = hv(x, V)
        assert batch.shape == (k, 9)
        single = np.stack([hv(x, v) for v in V])
        np.testing.assert_array_equal(batch, single)
        np.testing.assert_array_equal(tp.hvp(x, V), single)
        close(batch, V @ rosen_hess(x), rtol=1e-12, atol=1e-9)
    # 2-D input: k directions of shape (2, 3)
    f = lambda m: np.sum(np.sin(m) * m[::-1, ::-1] ** 2)   # noqa: E731
    m = RNG.standard_normal((2, 3))
    V = RNG.standard_normal((4, 2, 3))
    batch = dualtape.hvp(f)(m, V)
    assert batch.shape == (4, 2, 3)
    H = dualtape.hessian(f)(m).reshape(6, 6)
    close(batch.reshape(4, 6), V.reshape(4, 6) @ H.T, rtol=1e-12, atol=1e-12)
    for j in range(4):
        np.testing.assert_array_equal(batch[j], dualtape.hvp(f)(m, V[j]))


def test_tape_hvp_agrees_with_hessian_times_v():
    for name, f, x in [("rosen", rosen, np.linspace(-1, 1, 11))] + CROSS[:3]:
        tp = dualtape.tape(f, x)
        x2 = x * 0.97 + 0.01
        H = tp.hessian(x2)
        close(H, dualtape.hessian(f)(x2), rtol=1e-14, atol=0)
        for v in (RNG.standard_normal(x.size), np.zeros(x.size)):
            close(tp.hvp(x2, v), H @ v, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", [(7,), (3, 4), (40,)])
def test_chunk_sizes_give_identical_hessians(shape):
    f = lambda x: np.sum(np.sin(x) * np.roll(x, 1) ** 2) + np.prod(np.tanh(x))   # noqa: E731
    x = RNG.uniform(0.2, 1.0, shape)
    results = [dualtape.hessian(f, chunk=c)(x) for c in (1, 3, 32)]
    tp = dualtape.tape(f, x)
    results += [tp.hessian(x, chunk=c) for c in (1, 3, 32, 1000)]
    for H in results:
        assert H.shape == shape + shape
        np.testing.assert_array_equal(H, results[0])
    rel_close(results[0], dual_hessian(f, x), 1e-12)


# ============================================================================ shared fixtures

def scalarised(f, x):
    if np.ndim(f(x)) == 0:
        return f
    return lambda z: np.sum(np.sin(f(z)))


@pytest.mark.parametrize("name,f,x", FUNCTIONS, ids=IDS)
def test_fixture_hessian_equals_dual_over_dual(name, f, x):
    g = scalarised(f, x)
    expected = dual_hessian(g, x)
    h = dualtape.hessian(g)
    rel_close(h(x), expected, 1e-10)
    rel_close(dualtape.tape(g, x).hessian(x), expected, 1e-10)
    assert_symmetric(h(x), 1e-11)
    x2 = x * 1.01 + 0.003                  # replay at a new point
    rel_close(h(x2), dual_hessian(g, x2), 1e-10)
    v = np.linspace(-1.0, 1.0, x.size)
    rel_close(dualtape.hvp(g)(x2, v), dual_hessian(g, x2) @ v, 1e-10)
    assert h.tapes.records == 1


@pytest.mark.parametrize("name,f,x", FUNCTIONS, ids=IDS)
def test_fixture_tape_forward_reverse_and_dual_jacobians(name, f, x):
    expected = dual_jacobian(f, x)
    tp = dualtape.tape(f, x)
    fwd = tp.jacobian(x, mode="forward")
    rev = tp.jacobian(x, mode="reverse")
    close(fwd, expected, rtol=1e-12, atol=1e-12)
    close(rev, expected, rtol=1e-12, atol=1e-12)
    for chunk in (1, 3):
        close(tp.jacobian(x, mode="forward", chunk=chunk), fwd, rtol=0, atol=0)
    jf, jr = dualtape.jacobian(f, mode="forward"), dualtape.jacobian(f, mode="reverse")
    close(jf(x), expected)
    close(jr(x), expected)
    assert jf.last_mode == "forward" and jr.last_mode == "reverse"
    # jvp: tape tangent sweep, Dual jvp and J v agree
    v = np.cos(np.arange(x.size) + 0.5)
    y, jv = dualtape.jvp(f, x, v)
    close(y, f(x), rtol=1e-13, atol=1e-13)
    close(jv, np.tensordot(expected, v, axes=1))
    close(jv, dual_jvp(f, x, v)[1])
    close(tp.jvp(x, v), jv)


# ============================================================================ branch flips

def flip_f(x):
    if x[0] > 0:
        r = np.sum(x ** 3)
    else:
        r = np.sum(np.exp(x))
    r = r + np.sum(x[x > 0.5] ** 4)          # mask count
    s = x * 1.0
    while np.sum(s * s).item() < 10.0:       # loop exit
        s = s * 2.0
    return r + np.sum(s ** 2)


def flip_info(x):
    k = 0
    s = x.copy()
    while np.sum(s * s) < 10.0:
        s, k = s * 2.0, k + 1
    return bool(x[0] > 0), int(np.sum(x > 0.5)), k


def flip_hessian(x):
    base = 6 * x if x[0] > 0 else np.exp(x)
    k = flip_info(x)[2]
    return np.diag(base + 12 * x ** 2 * (x > 0.5) + 2.0 * 4.0 ** k)


FLIP_POINTS = [np.array([1.0, 0.2, 2.0]),    # positive, 2 masked, 1 doubling
               np.array([-1.0, 0.2, 2.0]),   # negative
               np.array([1.0, 0.7, 2.0]),    # 3 masked
               np.array([0.3, 0.2, 0.1]),    # 0 masked, 3 doublings
               np.array([-0.3, -0.2, 0.6]),  # negative, 1 masked, 3 doublings
               np.array([3.0, 2.0, 2.0])]    # no doubling


def test_flip_points_cover_distinct_paths():
    infos = [flip_info(x) for x in FLIP_POINTS]
    assert len(set(infos)) == len(infos)
    assert {i[0] for i in infos} == {True, False}
    assert len({i[1] for i in infos}) >= 3 and len({i[2] for i in infos}) >= 3


def test_hessian_replays_across_branches():
    h = dualtape.hessian(flip_f)
    hv = dualtape.hvp(flip_f)
    jv = dualtape.jacobian(flip_f)          # scalar output: one reverse sweep
    v = np.array([0.5, -1.0, 2.0])
    for x in FLIP_POINTS + [p * 1.01 for p in FLIP_POINTS] + FLIP_POINTS[::-1]:
        expected = flip_hessian(x)
        H = h(x)
        close(H, expected)
        close(H, dualtape.tape(flip_f, x).hessian(x), rtol=1e-14, atol=0)
        close(H, dual_hessian(flip_f, x))
        close(hv(x, v), expected @ v)
        J = jv(x)
        close(J, dualtape.grad(flip_f)(x), rtol=1e-14, atol=0)
    assert h.tapes.records == len(FLIP_POINTS)
    assert hv.tapes.records == len(FLIP_POINTS)


def test_jvp_replays_across_branches():
    v = np.array([0.5, -1.0, 2.0])
    for x in FLIP_POINTS + FLIP_POINTS[::-1]:
        y, t = dualtape.jvp(flip_f, x, v)
        close(y, flip_f(x), rtol=1e-14, atol=0)
        close(t, dual_jvp(flip_f, x, v)[1])
        close(t, dualtape.grad(flip_f)(x) @ v)


def test_bare_tape_second_order_raises_guard_flipped():
    x0 = FLIP_POINTS[0]
    tp = dualtape.tape(flip_f, x0)
    v = np.ones(3)
    same_path = x0 * 1.01
    assert flip_info(same_path) == flip_info(x0)
    close(tp.hessian(same_path), flip_hessian(same_path))
    close(tp.hvp(same_path, v), flip_hessian(same_path) @ v)
    close(tp.jvp(same_path, v), dualtape.grad(flip_f)(same_path) @ v)
    for other in FLIP_POINTS[1:]:
        for call in (lambda: tp.hessian(other), lambda: tp.hessian(other, chunk=1),
                     lambda: tp.hvp(other, v), lambda: tp.jvp(other, v),
                     lambda: tp.jacobian(other, mode="forward"),
                     lambda: tp.hvp(other, np.stack([v, v]))):
            with pytest.raises(GuardFlipped):
                call()
    # the tape still works on its own path afterwards
    close(tp.hessian(x0), flip_hessian(x0))


def test_parameters_change_without_rerecording():
    def f(x, p, q):
        return np.sum(p * x ** 3 + np.sin(q * x)) + p * q * x[0] * x[1]
    hv = dualtape.hvp(f)
    h = dualtape.hessian(f)
    x = np.array([0.3, -1.2, 2.0])
    v = np.array([1.0, 0.5, -2.0])
    for p, q in [(0.5, 1.0), (2.0, -3.0), (np.float64(-1.5), 0.25), (0.0, 0.0)]:
        expected = np.diag(6 * p * x - q * q * np.sin(q * x))
        expected[0, 1] = expected[1, 0] = p * q
        close(hv(x, v, p, q), expected @ v)
        close(h(x, p, q), expected)
    assert hv.tapes.records == 1
    assert h.tapes.records == 1
    # array parameters too
    hv2 = dualtape.hvp(lambda x, a: np.sum(a * np.exp(x)))
    for a in (np.ones(3), np.array([1.0, -2.0, 3.0])):
        close(hv2(x, v, a), a * np.exp(x) * v)
    assert hv2.tapes.records == 1


# ============================================================================ mode choice

T100 = np.linspace(0.0, 1.0, 100)


def wide(x):           # R^2 -> R^100
    return np.sin(T100 * x[0]) * x[1] + x[0] ** 2


def wide_jac(x):
    return np.stack([T100 * np.cos(T100 * x[0]) * x[1] + 2 * x[0], np.sin(T100 * x[0])], axis=1)


def tall(x):           # R^100 -> R^2
    return np.stack([np.sum(x ** 2), np.sum(np.sin(x) * T100)])


def tall_jac(x):
    return np.stack([2 * x, T100 * np.cos(x)])


def test_jacobian_mode_choice_and_overrides():
    x2 = np.array([0.7, -1.3])
    x100 = np.linspace(-1, 2, 100)
    for f, x, analytic, auto in ((wide, x2, wide_jac, "forward"), (tall, x100, tall_jac, "reverse")):
        expected = analytic(x)
        jac = dualtape.jacobian(f)
        assert jac.last_mode is None
        close(jac(x), expected)
        assert jac.last_mode == auto
        close(jac(x * 1.1), analytic(x * 1.1))
        assert jac.last_mode == auto
        for mode in ("forward", "reverse"):
            j = dualtape.jacobian(f, mode=mode)
            close(j(x), expected)
            assert j.last_mode == mode
            close(dualtape.tape(f, x).jacobian(x, mode=mode), expected)
        close(dualtape.jacobian(f, mode="forward", chunk=7)(x), expected)
        close(dual_jacobian(f, x), expected)
    with pytest.raises(ValueError):
        dualtape.jacobian(wide, mode="sideways")
    with pytest.raises(ValueError):
        dualtape.tape(wide, x2).jacobian(x2, mode="sideways")


def test_auto_mode_square_and_scalar_cases():
    sq = lambda x: np.sin(x) * x[::-1]   # noqa: E731
    x = np.array([0.2, 0.5, -0.4])
    jac = dualtape.jacobian(sq)
    expected = np.diag(np.cos(x) * x[::-1]) + np.sin(x)[:, None] * np.eye(3)[::-1]
    close(jac(x), expected)
    assert jac.last_mode == "forward"       # nx <= out_size
    js = dualtape.jacobian(lambda x: np.sum(x ** 2))
    close(js(x), 2 * x)
    assert js.last_mode == "reverse"


# ============================================================================ kinks and masks

def masked_sqrt(x):
    return np.where(x > 0, np.sqrt(x), 0.0)


KINKS = [
    # name, elementwise h, points, h', h'' (conventions at the kinks)
    ("masked_sqrt", masked_sqrt, [-1.0, 0.0, 4.0, 0.25],
     [0.0, 0.0, 0.25, 1.0], [0.0, 0.0, -1.0 / 32, -2.0]),
    ("where_cube", lambda x: np.where(x > 0, x ** 3, 0.0), [-1.0, 0.0, 2.0],
     [0.0, 0.0, 12.0], [0.0, 0.0, 12.0]),
    ("abs", lambda x: np.abs(x), [-1.5, 0.0, 2.0], [-1.0, 0.0, 1.0], [0.0, 0.0, 0.0]),
    ("x_abs_x", lambda x: x * np.abs(x), [-1.5, 0.0, 2.0], [3.0, 0.0, 4.0], [-2.0, 0.0, 2.0]),
    ("abs_sq", lambda x: np.abs(x) ** 2, [-1.5, 0.0, 2.0], [-3.0, 0.0, 4.0], [2.0, 0.0, 2.0]),
    # (the chain rule with abs'(0) = 0: 2 abs'(0)^2 = 0 at the kink)
    ("maximum_sq", lambda x: np.maximum(x, 0.0) ** 2, [-1.0, 0.0, 3.0],
     [0.0, 0.0, 6.0], [0.0, 0.5, 2.0]),
    ("x_maximum", lambda x: x * np.maximum(x, 0.0), [-1.0, 0.0, 3.0],
     [0.0, 0.0, 6.0], [0.0, 1.0, 2.0]),
    ("minimum_cube", lambda x: np.minimum(x, 1.0) ** 3, [0.5, 1.0, 2.0],
     [0.75, 1.5, 0.0], [3.0, 1.5, 0.0]),
    ("clip_x", lambda x: x * np.clip(x, -1.0, 1.0), [-2.0, -1.0, 0.5, 1.0, 2.0],
     [-1.0, -2.0, 1.0, 2.0, 1.0], [0.0, 2.0, 2.0, 2.0, 0.0]),
    ("masked_log", lambda x: np.where(x > 0, np.log(x), 0.0), [-1.0, 0.0, 2.0],
     [0.0, 0.0, 0.5], [0.0, 0.0, -0.25]),
    ("masked_reciprocal", lambda x: np.where(x > 0, 1.0 / x, 0.0), [-1.0, 0.0, 2.0],
     [0.0, 0.0, -0.25], [0.0, 0.0, 0.25]),
    ("clip_cube", lambda x: np.clip(x, -1.0, 1.0) ** 3, [-2.0, -1.0, 1.0, 2.0],
     [0.0, 3.0, 3.0, 0.0], [0.0, -6.0, 6.0, 0.0]),
]


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("name,h,points,d1,d2", KINKS, ids=[k[0] for k in KINKS])
def test_kink_conventions_on_tapes(name, h, points, d1, d2):
    """First and second derivatives at the kinks by the tape sweeps: hessian, hvp, grad,
    forward and reverse Jacobians, jvp; fresh recordings and replays of a tape recorded
    at points away from the kinks."""
    x = np.array(points, dtype=float)
    d1, d2 = np.array(d1), np.array(d2)
    f = lambda z: np.sum(h(z))   # noqa: E731
    n = x.size
    away = x - 0.1 if name == "minimum_cube" else np.where(x > 0, x + 0.37, x - 0.37)
    for warmup in ((), (away,)):
        hess, hv, g = dualtape.hessian(f), dualtape.hvp(f), dualtape.grad(f)
        for z in warmup:
            hess(z), hv(z, np.ones(n)), g(z)
        H = hess(x)
        assert np.all(np.isfinite(H)), H
        close(H, np.diag(d2), rtol=1e-15, atol=0)
        close(hv(x, np.ones(n)), d2, rtol=1e-15, atol=0)
        close(hv(x, np.eye(n)), np.diag(d2), rtol=1e-15, atol=0)
        close(g(x), d1, rtol=1e-15, atol=0)
        assert hess.tapes.records == 1
    tp = dualtape.tape(f, x)
    close(tp.hessian(x), np.diag(d2), rtol=1e-15, atol=0)
    close(tp.hvp(x, np.ones(n)), d2, rtol=1e-15, atol=0)
    close(tp.gradient(x), d1, rtol=1e-15, atol=0)
    tq = dualtape.tape(h, x)
    for J in (tq.jacobian(x, mode="forward"), tq.jacobian(x, mode="reverse"),
              dualtape.jacobian(h, mode="forward")(x), dualtape.jacobian(h, mode="reverse")(x)):
        close(J, np.diag(d1), rtol=1e-15, atol=0)
    close(dualtape.jvp(h, x, np.ones(n))[1], d1, rtol=1e-15, atol=0)
    close(tq.jvp(x, np.ones(n)), d1, rtol=1e-15, atol=0)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("name,h,points,d1,d2", KINKS, ids=[k[0] for k in KINKS])
def test_kink_conventions_on_duals(name, h, points, d1, d2):
    """The same values by forward mode on Duals: derivative, nested derivative,
    forward_jacobian, Dual-over-Dual Hessian."""
    x = np.array(points, dtype=float)
    d1, d2 = np.array(d1), np.array(d2)
    f = lambda z: np.sum(h(z))   # noqa: E731
    n = x.size
    got1 = np.array([derivative(h)(t) for t in points])
    got2 = np.array([derivative(derivative(h))(t) for t in points])
    close(got1, d1, rtol=1e-15, atol=0)
    close(dual_grad(f, x), d1, rtol=1e-15, atol=0)
    close(dual_jacobian(h, x), np.diag(d1), rtol=1e-15, atol=0)
    close(got2, d2, rtol=1e-15, atol=0)
    close(dual_hessian(f, x), np.diag(d2), rtol=1e-15, atol=0)
    close(forward_jacobian(lambda z: dual_jvp(h, z, np.ones(n))[1], x)[1], np.diag(d2),
          rtol=1e-15, atol=0)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_masked_sqrt_replayed_onto_nan_branch():
    f = lambda x: np.sum(masked_sqrt(x) * x[0])   # noqa: E731
    h = dualtape.hessian(f)
    hv = dualtape.hvp(f)
    for x in (np.array([1.0, 4.0, 1.0, 9.0]), np.array([2.0, 0.0, -1.0, 4.0]),
              np.array([1.0, -4.0, 0.0, 0.0])):
        s = np.where(x > 0, np.sqrt(np.abs(x)), 0.0)
        d1 = np.where(x > 0, 0.5 / np.sqrt(np.abs(x) + (x <= 0)), 0.0)
        d2 = np.where(x > 0, -0.25 / (np.abs(x) + (x <= 0)) ** 1.5, 0.0)
        expected = np.diag(x[0] * d2)
        expected[0, :] += d1
        expected[:, 0] += d1
        H = h(x)
        assert np.all(np.isfinite(H))
        close(H, expected)
        close(H, dual_hessian(f, x))
        close(hv(x, np.ones(4)), expected @ np.ones(4))
        close(dualtape.grad(f)(x), x[0] * d1 + np.eye(4)[0] * np.sum(s))
    assert h.tapes.records == 1 and hv.tapes.records == 1


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("n", [5, 20])   # both K-direction loops: repeated coefficients, nested
def test_masked_sqrt_in_many_directions_equals_one_at_a_time(n):
    # infinite partials of the unselected branch meet zero adjoints and tangents in every
    # direction at once; chunk=n runs all n directions in one sweep
    f = lambda x: np.sum(masked_sqrt(x) * x[0] + np.tanh(x) * x[-1])   # noqa: E731
    x = np.where(np.arange(n) % 3 == 0, 0.0, RNG.uniform(-1.0, 2.0, n))
    x[1] = -0.5
    tp = dualtape.tape(f, x)
    H = tp.hessian(x, chunk=n)
    assert np.all(np.isfinite(H))
    np.testing.assert_array_equal(H, tp.hessian(x, chunk=1))
    close(H, dual_hessian(f, x))
    g = lambda z: masked_sqrt(z) * z[1] + z   # noqa: E731
    J = dualtape.tape(g, x).jacobian(x, mode="forward", chunk=n)
    assert np.all(np.isfinite(J))
    np.testing.assert_array_equal(J, dualtape.tape(g, x).jacobian(x, mode="forward", chunk=1))


def test_maximum_tie_and_clip_bound_with_traced_operands():
    f = lambda x: np.maximum(x[0], x[1]) * x[2]   # noqa: E731
    x = np.array([1.5, 1.5, 2.0])
    expected = np.array([[0, 0, 0.5], [0, 0, 0.5], [0.5, 0.5, 0]])
    close(dualtape.hessian(f)(x), expected, rtol=0, atol=0)
    close(dual_hessian(f, x), expected, rtol=0, atol=0)
    close(dualtape.grad(f)(x), [1.0, 1.0, 1.5], rtol=0, atol=0)
    close(dualtape.hvp(f)(x, np.array([1.0, 2.0, 3.0])), expected @ [1.0, 2.0, 3.0],
          rtol=0, atol=0)


def clip_traced(x):
    return np.clip(x[0], x[1], x[2]) ** 2


# x0 at the lower bound, at the upper bound, below, above (closed interval: at a bound the
# derivative goes to x0); H = 2 e_k e_k^T for the operand k that clip selects
CLIP_POINTS = [np.array([-1.0, -1.0, 1.0]), np.array([1.0, -1.0, 1.0]),
               np.array([-2.0, -1.0, 1.0]), np.array([3.0, -1.0, 1.0])]


def _clip_selected(x):
    return 0 if x[1] <= x[0] <= x[2] else (1 if x[0] < x[1] else 2)


def test_clip_with_traced_bounds_on_tapes():
    h = dualtape.hessian(clip_traced)
    for x in CLIP_POINTS:
        k = _clip_selected(x)
        close(dualtape.grad(clip_traced)(x), 2 * x[k] * np.eye(3)[k], rtol=0, atol=0)
        expected = 2.0 * np.outer(np.eye(3)[k], np.eye(3)[k])
        close(h(x), expected, rtol=0, atol=0)
        close(dualtape.tape(clip_traced, x).hessian(x), expected, rtol=0, atol=0)


def test_clip_with_traced_bounds_on_duals():
    for x in CLIP_POINTS:
        k = _clip_selected(x)
        close(dual_grad(clip_traced, x), 2 * x[k] * np.eye(3)[k], rtol=0, atol=0)
        expected = 2.0 * np.outer(np.eye(3)[k], np.eye(3)[k])
        close(dual_hessian(clip_traced, x), expected, rtol=0, atol=0)


# ============================================================================ errors

def test_hessian_and_hvp_of_vector_output_raise_value_error():
    f = lambda x: np.sin(x) * 2.0   # noqa: E731
    x = np.array([0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match=r"\(3,\)"):
        dualtape.hessian(f)(x)
    with pytest.raises(ValueError, match=r"\(3,\)"):
        dualtape.hvp(f)(x, np.ones(3))
    tp = dualtape.tape(f, x)
    with pytest.raises(ValueError, match=r"\(3,\)"):
        tp.hessian(x)
    with pytest.raises(ValueError, match=r"\(3,\)"):
        tp.hvp(x, np.ones(3))
    g = lambda x: np.outer(x, x)   # noqa: E731
    with pytest.raises(ValueError, match=r"\(3, 3\)"):
        dualtape.hessian(g)(x)


def test_grad_of_grad_raises_type_error_pointing_to_hessian():
    inner = dualtape.grad(lambda y: np.sum(y ** 3))
    x = np.array([0.5, -1.0, 2.0])
    v = np.array([1.0, 2.0, 3.0])
    with pytest.raises(TypeError, match="hessian|hvp"):
        dualtape.grad(lambda x: np.sum(inner(x) * v))(x)
    with pytest.raises(TypeError, match="hessian|hvp"):
        dualtape.hessian(lambda x: np.sum(inner(x)))(x)
    with pytest.raises(TypeError, match="hessian|hvp"):
        dualtape.hvp(lambda x: np.sum(inner(x)))(x, v)
    for mode in ("auto", "forward", "reverse"):
        with pytest.raises(TypeError, match="hessian|hvp"):
            dualtape.jacobian(inner, mode=mode)(x)
    with pytest.raises(TypeError, match="hessian|hvp"):
        dualtape.jvp(inner, x, v)
    with pytest.raises(TypeError, match="hessian|hvp"):
        dualtape.tape(inner, x)
    # second-order functions inside another differentiation
    with pytest.raises(TypeError, match="hessian|hvp"):
        dualtape.grad(lambda z: np.sum(dualtape.hessian(lambda y: np.sum(y ** 3))(z)))(x)
    with pytest.raises(TypeError, match="hessian|hvp"):
        dualtape.grad(lambda z: np.sum(dualtape.hvp(lambda y: np.sum(y ** 3))(z, v)))(x)
    with pytest.raises(TypeError):
        derivative(lambda t: dualtape.hessian(lambda y: y ** 3)(t))(1.0)
    with pytest.raises(TypeError):    # a traced direction
        dualtape.grad(lambda z: np.sum(dualtape.hvp(lambda y: np.sum(y ** 3))(x, z)))(v)
    # what should be used instead gives the right numbers
    close(dualtape.hvp(lambda y: np.sum(y ** 3))(x, v), 6 * x * v)


def test_bad_direction_shapes_raise_value_error():
    f = lambda x: np.sum(x ** 3)   # noqa: E731
    x = np.ones(3)
    hv = dualtape.hvp(f)
    tp = dualtape.tape(f, x)
    for v in (np.ones(4), np.ones((3, 1)), np.ones((2, 4)), np.ones(()), np.ones((1, 1, 3))):
        with pytest.raises(ValueError, match="shape"):
            hv(x, v)
        with pytest.raises(ValueError, match="shape"):
            tp.hvp(x, v)
        with pytest.raises(ValueError, match="shape"):
            tp.jvp(x, v)
        with pytest.raises(ValueError, match="shape"):
            dualtape.jvp(f, x, v)
    m = np.ones((2, 3))
    for v in (np.ones(3), np.ones((3, 2)), np.ones(6)):
        with pytest.raises(ValueError, match="shape"):
            dualtape.hvp(f)(m, v)
    for run in (lambda v: hv(x, v), lambda v: tp.hvp(x, v), lambda v: tp.jvp(x, v)):
        with pytest.raises(ValueError, match="no directions"):
            run(np.ones((0, 3)))


# ============================================================================ SciPy

def scaled_rosen(x, a):
    return a * np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


X0 = np.array([1.3, 0.7, 0.8, 1.9, 1.2])


def test_scipy_trust_exact_with_hessian():
    g, h = dualtape.grad(rosen), dualtape.hessian(rosen)
    res = minimize(rosen, X0, jac=g, hess=h, method="trust-exact",
                   options={"gtol": 1e-10})
    assert res.success, res.message
    close(res.x, np.ones(5), rtol=0, atol=1e-6)
    assert g.tapes.records == 1 and h.tapes.records == 1
    assert res.nhev >= 2


def test_scipy_newton_cg_with_hessp():
    g, hp = dualtape.grad(rosen), dualtape.hvp(rosen)
    res = minimize(rosen, X0, jac=g, hessp=hp, method="Newton-CG",
                   options={"xtol": 1e-10})
    assert res.success, res.message
    close(res.x, np.ones(5), rtol=0, atol=1e-6)
    assert hp.tapes.records == 1


def test_scipy_with_float_parameter_args():
    g, h, hp = (dualtape.grad(scaled_rosen), dualtape.hessian(scaled_rosen),
                dualtape.hvp(scaled_rosen))
    for a in (0.5, 2.5):
        res = minimize(scaled_rosen, X0, args=(a,), jac=g, hess=h, method="trust-exact",
                       options={"gtol": 1e-10})
        assert res.success, res.message
        close(res.x, np.ones(5), rtol=0, atol=1e-6)
        res = minimize(scaled_rosen, X0, args=(a,), jac=g, hessp=hp, method="Newton-CG",
                       options={"xtol": 1e-10})
        assert res.success, res.message
        close(res.x, np.ones(5), rtol=0, atol=1e-6)
        close(h(X0, a), a * rosen_hess(X0), rtol=1e-13, atol=1e-10)
        close(hp(X0, X0, a), a * rosen_hess_prod(X0, X0), rtol=1e-13, atol=1e-10)
    assert g.tapes.records == 1 and h.tapes.records == 1 and hp.tapes.records == 1


# ============================================================================ fresh arrays

def test_every_second_order_call_returns_a_fresh_array():
    f = lambda x: np.sum(x ** 3)   # noqa: E731
    x = np.array([1.0, 2.0, 3.0])
    v = np.array([1.0, -1.0, 0.5])
    V = np.stack([v, 2 * v])
    x_copy, v_copy = x.copy(), v.copy()
    tp = dualtape.tape(f, x)
    tv = dualtape.tape(lambda x: x ** 2, x)
    h, hv = dualtape.hessian(f), dualtape.hvp(f)
    jf = dualtape.jacobian(lambda x: x ** 2, mode="forward")
    calls = [
        (lambda: h(x), np.diag(6 * x)),
        (lambda: hv(x, v), 6 * x * v),
        (lambda: hv(x, V), 6 * x * V),
        (lambda: tp.hessian(x), np.diag(6 * x)),
        (lambda: tp.hvp(x, v), 6 * x * v),
        (lambda: tp.hvp(x, V), 6 * x * V),
        (lambda: tv.jvp(x, v), 2 * x * v),
        (lambda: tv.jvp(x, V), 2 * x * V),
        (lambda: tv.jacobian(x, mode="forward"), np.diag(2 * x)),
        (lambda: jf(x), np.diag(2 * x)),
        (lambda: dualtape.jvp(lambda x: x ** 2, x, v)[1], 2 * x * v),
    ]
    for call, expected in calls:
        a, b = call(), call()
        assert a is not b and not np.shares_memory(a, b)
        assert not np.shares_memory(a, x) and not np.shares_memory(a, v)
        a[...] = 99.0
        close(call(), expected, rtol=0, atol=0)
        close(b, expected, rtol=0, atol=0)
    np.testing.assert_array_equal(x, x_copy)
    np.testing.assert_array_equal(v, v_copy)


def test_hessian_does_not_depend_on_previous_hvp_calls():
    """Workspaces are reused between sweeps: results must not leak from one call into the
    next (different k, different points)."""
    f = lambda x: np.sum(np.sin(x) * x[::-1]) + np.prod(x)   # noqa: E731
    x = np.array([0.3, 0.8, -0.5, 1.1])
    fresh = dual_hessian(f, x)
    h, hv = dualtape.hessian(f), dualtape.hvp(f)
    for k in (1, 3, 2, 4, 1):
        hv(x * 2.0, RNG.standard_normal((k, 4)))
        close(h(x), fresh)
        close(hv(x, np.eye(4)), fresh.T)
        close(dualtape.hessian(f, chunk=k)(x), fresh)
