"""The everyday NumPy surface beyond the basics, and scipy.special, in every mode.

Each function below is ordinary NumPy / SciPy code; run on plain arrays it gives the
reference values and the central differences. ``check_modes`` (tests/test_inplace.py)
compares the tape's reverse and forward Jacobians, Dual numbers, several VJP seeds and,
for scalar functions, the Hessian against central differences; ``check_replay`` replays
one cached Jacobian at new points. Analytic formulas where there is a simple one; every
error path names the function or argument to use instead.
"""
import math
import sys
import types

import numpy as np
import pytest
import scipy.special as sp

import dualtape
from dualtape import kernels
from dualtape.api import dual_jvp, forward_jacobian
from dualtape.special import log_softmax, logsumexp, softmax
from test_inplace import EXACT, check_modes, check_replay

X = np.array([0.5, -1.2, 2.0, 0.3, 1.1, -0.7])
X2 = np.array([-0.4, 0.9, 1.3, -1.5, 0.2, 0.8])      # a second point for the replays
M = np.array([[1.0, -2.0, 0.5], [0.3, 1.5, -1.0]])   # a constant matrix


# ---------------------------------------------------------------------------- functions

def f_cumsum(x):
    return np.concatenate([np.cumsum(x), np.cumsum(x.reshape(2, 3), axis=0).ravel(),
                           x.reshape(3, 2).cumsum(axis=1).ravel()])


def f_cumprod(x):
    return np.concatenate([np.cumprod(x), np.cumprod(x.reshape(2, 3), axis=1).ravel(),
                           x.reshape(3, 2).cumprod(axis=-2).ravel()])


def f_diff(x):
    m = x.reshape(2, 3)
    return np.concatenate([np.diff(x), np.diff(x, n=2), np.diff(m, axis=0).ravel(),
                           np.diff(x, prepend=1.0, append=x[:2]),
                           np.diff(m, axis=1, prepend=x[4]).ravel(), np.ediff1d(x),
                           np.ediff1d(m, to_begin=x[0], to_end=[1.0, 2.0])])


def f_pad(x):
    m = x.reshape(2, 3)
    return np.concatenate([
        np.pad(x, 2), np.pad(x, (1, 2), constant_values=(x[0], 3.0)),
        np.pad(m, ((1, 0), (2, 1)), constant_values=((x[1], x[2]), (x[3] * x[4], -1.0))).ravel(),
        np.pad(m, 1, mode="edge").ravel(), np.pad(x, (3, 2), mode="reflect"),
        np.pad(m, ((0, 1), (2, 2)), mode="symmetric").ravel(), np.pad(x, 4, mode="wrap")])


def f_take(x):
    m = x.reshape(2, 3)
    idx = np.array([[2, 0], [1, 1]])
    return np.concatenate([
        np.take(x, [0, 3, 3, -1]), np.take(m, [2, 0], axis=1).ravel(),
        np.take(m, idx).ravel(), np.take(x, 7, mode="wrap")[None],
        np.take_along_axis(m, np.array([[2, 0, 0], [1, 2, 0]]), axis=1).ravel(),
        np.take_along_axis(m, np.array([[1, 0, 1]]), axis=0).ravel(),
        np.append(x[:2], m[1]), np.append(m, m[:1], axis=0).ravel(),
        *np.split(x, 3), *np.array_split(x[:5], 2), np.split(m, [1], axis=1)[1].ravel()])


def f_take_traced(x):
    """Indices computed from x: recomputed at every replay."""
    m = x.reshape(2, 3)
    top = np.argmax(m, axis=1, keepdims=True)
    return np.concatenate([np.take_along_axis(m, top, axis=1).ravel() * x[:2],
                           np.take(x, np.argmin(x))[None], np.take(m, np.argmax(x[:2]), axis=0)])


def f_meshgrid(x):
    a, b = np.meshgrid(x[:2], x[2:5])
    c, d = np.meshgrid(x[:3], x[3:], indexing="ij")
    e, g = np.meshgrid(x[:2], x[4:], sparse=True)
    return np.concatenate([(a * b).ravel(), (c - 2.0 * d).ravel(), (e * g).ravel()])


def f_polyval(x):
    return np.concatenate([np.polyval(x[:3], x), np.polyval([1.0, -2.0, 0.5, 3.0], x),
                           np.atleast_1d(np.polyval(x[3:], 0.7)),
                           np.atleast_1d(np.polyval([x[0], 2.0, x[1]], x[2]))])


def f_convolve(x):
    return np.concatenate([np.convolve(x, [1.0, 2.0, -1.0]), np.convolve([0.5, -1.0], x),
                           np.convolve(x[:3], x, mode="same"),
                           np.convolve(x, x[1:3], mode="same"),
                           np.convolve(x, x[1:4], mode="valid"),
                           np.convolve(x[:2], x[2:], mode="valid")])


def f_statistics(x):
    m = x.reshape(2, 3)
    w = np.array([1.0, 2.0, 0.5])
    avg, scl = np.average(m, axis=1, weights=w, returned=True)
    return np.concatenate([
        np.atleast_1d(np.average(x)), np.atleast_1d(np.average(x, weights=x * x + 1.0)),
        np.average(m, axis=0), avg, scl, np.average(m, axis=1, weights=x[:3] ** 2 + 0.1),
        np.atleast_1d(np.var(x)), np.atleast_1d(np.var(x, ddof=1)), np.var(m, axis=0),
        np.var(m, axis=1, ddof=1, keepdims=True).ravel(), np.atleast_1d(np.std(x)),
        np.std(m, axis=1, ddof=1), x.reshape(3, 2).std(axis=0), np.atleast_1d(m.var())])


def f_elementwise(x):
    return np.concatenate([
        np.logaddexp(x, 0.3), np.logaddexp2(x, x[::-1]), np.sinc(x), np.sinc(x * 1e-3),
        np.fmod(x, 0.61), np.fmod(3.0, x + 2.3), np.mod(x, 0.61), np.remainder(x * 2.9, x[0]),
        x % 0.37, np.heaviside(x, 0.5) * x, np.nan_to_num(np.log(x) * x, neginf=-5.0),
        np.nan_to_num(x / (x - x[0]))])


def f_linspace(x):
    a, step = np.linspace(x[0], x[1], 4, retstep=True)
    return np.concatenate([a, np.atleast_1d(step), np.linspace(x[2], 3.0, 3, endpoint=False),
                           np.linspace(-1.0, x[3], 5),
                           np.linspace(x[:2], x[2:4], 3, axis=1).ravel(),
                           np.linspace(x[4], x[5], 1)])


def f_python_builtins(x):
    """Python's sum / max / min over traced elements: each comparison is a guard."""
    return np.stack([sum(x), sum(x * x, 1.0), max(x[0], x[1], x[3]), min(x), max(list(x[2:]))])


def f_lists(x):
    """Lists of traced values given to np.array / np.asarray (the ODE right-hand side)."""
    rhs = np.array([x[1], -x[0]])
    nested = np.array([[x[0], 1.0], [x[2] * x[3], x[4]]])
    mixed = np.asarray([x[5], 2.0, np.sin(x[0])])
    return np.concatenate([rhs, (nested @ np.array([1.0, 2.0])), np.ravel(nested.T),
                           mixed * 3.0, np.array([[x[1]], [x[2]]]).ravel()])


def ode_rhs(y):
    return np.array([y[1], -y[0] + 0.1 * y[1] * y[2], y[0] * y[1] - y[2]])


def f_special(x):
    p = sp.expit(x)
    return np.concatenate([
        p, sp.logit(p), sp.log_expit(x), sp.erf(x), sp.erfc(x), sp.gammaln(np.abs(x) + 0.2),
        sp.digamma(np.abs(x) + 0.2), sp.psi(x * x + 0.5), sp.xlogy(x, np.abs(x) + 0.5),
        sp.xlog1py(x, x * x), sp.ndtr(x), sp.log_ndtr(x * 10.0)])


def f_softmax(x):
    m = x.reshape(2, 3)
    return np.concatenate([
        np.atleast_1d(logsumexp(x)), logsumexp(m, axis=1), logsumexp(m, axis=0, keepdims=True)[0],
        np.atleast_1d(logsumexp(x, b=np.arange(1.0, 7.0))), softmax(x), softmax(m, axis=1).ravel(),
        log_softmax(m, axis=0).ravel(), np.atleast_1d(logsumexp(x * 400.0))])


VECTOR = [f_cumsum, f_cumprod, f_diff, f_pad, f_take, f_take_traced, f_meshgrid, f_polyval,
          f_convolve, f_statistics, f_elementwise, f_linspace, f_python_builtins, f_lists,
          f_special, f_softmax]


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("f", VECTOR, ids=[f.__name__ for f in VECTOR])
def test_modes_and_replay(f):
    check_modes(f, X)
    check_replay(f, [X, X2, X * 0.5])


# scalar-valued compositions: the Hessian (forward over reverse) too
def s_scan(x):
    return np.sum(np.cumprod(x) * np.cumsum(x * x)) + np.sum(np.diff(x, n=2) ** 2)


def s_gathers(x):
    m = x.reshape(2, 3)
    return np.sum(np.pad(m, 1, mode="edge") ** 3) + np.sum(np.take(x, [0, 0, 5]) * x[:3]) \
        + np.sum(np.convolve(x, x[:2]) ** 2) + np.sum(np.meshgrid(x[:2], x[2:4])[0] * x[3])


def s_statistics(x):
    return np.std(x) * np.var(x, ddof=1) + np.average(x ** 2, weights=np.exp(x)) \
        + np.polyval(x[:3], x[3])


def s_special(x):
    return (np.sum(sp.gammaln(x * x + 0.5) + sp.digamma(x * x + 1.0) + sp.log_ndtr(3.0 * x)
                   + sp.xlogy(x * x, np.exp(x)) + sp.erf(x) * sp.erfc(-x) + sp.expit(x)
                   * sp.logit(sp.expit(x)) + sp.log_expit(x) + sp.ndtr(x) + sp.xlog1py(x, x * x)
                   + np.sinc(x) + np.logaddexp2(x, 1.0)) + logsumexp(x)
            + np.sum(softmax(x) * x) + np.sum(log_softmax(x) ** 2))


SCALAR = [s_scan, s_gathers, s_statistics, s_special]


@pytest.mark.parametrize("f", SCALAR, ids=[f.__name__ for f in SCALAR])
def test_scalar_functions_hessian_and_replay(f):
    check_modes(f, X)
    check_replay(f, [X, X2])
    hess = dualtape.hessian(f)
    hess(X)
    H2 = hess(X2)          # replayed at a new point
    fd = np.array([[_second_difference(f, X2, i, j) for j in range(X.size)]
                   for i in range(X.size)])
    np.testing.assert_allclose(H2, fd, rtol=1e-4, atol=1e-4)


def _second_difference(f, x, i, j, h=1e-4):
    """d2 f / dx_i dx_j by central differences of f itself (no derivative code)."""
    def at(si, sj):
        z = x.copy()
        z[i] += si * h
        z[j] += sj * h
        return f(z)
    return (at(1, 1) - at(1, -1) - at(-1, 1) + at(-1, -1)) / (4 * h * h)


# ---------------------------------------------------------------------------- analytic checks

@pytest.mark.parametrize("x", [[2.0, 0.0, 3.0, 0.0, 5.0, 1.5], [2.0, 0.0, 3.0, 4.0, 5.0, 1.5],
                               [0.5, -2.0, 3.0, 4.0, 5.0, 1.5]], ids=["two zeros", "one zero", "none"])
def test_cumprod_through_zeros_is_exact(x):
    x = np.array(x)
    np.testing.assert_array_equal(dualtape.tape(np.cumprod, x)(x), np.cumprod(x))
    # d prod(x[:k+1]) / d x_j = prod of the others, no 0 / 0
    want = np.array([[np.prod(np.delete(x[:k + 1], j)) if j <= k else 0.0
                      for j in range(x.size)] for k in range(x.size)])
    np.testing.assert_allclose(dualtape.jacobian(np.cumprod, mode="reverse")(x), want,
                               rtol=1e-15, atol=0)
    np.testing.assert_allclose(dualtape.jacobian(np.cumprod, mode="forward")(x), want,
                               rtol=1e-15, atol=0)
    np.testing.assert_allclose(forward_jacobian(np.cumprod, x)[1], want, rtol=1e-15, atol=0)
    # Hessian of sum(c * cumprod(x)): d2 / dx_i dx_j = sum_{k >= max(i, j)} c_k prod of the
    # others up to k (i != j)
    c = np.linspace(1.0, 2.0, x.size)
    H = dualtape.hessian(lambda z: np.sum(c * np.cumprod(z)))(x)
    H_want = np.array([[0.0 if i == j else sum(
        c[k] * np.prod(np.delete(x[:k + 1], [i, j])) for k in range(max(i, j), x.size))
        for j in range(x.size)] for i in range(x.size)])
    np.testing.assert_allclose(H, H_want, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("n", [1, 2, 7, 64, 1000])
def test_cumsum_sizes(n):
    x = np.random.default_rng(n).normal(size=n)
    g = dualtape.grad(lambda x: np.sum(np.cumsum(x) ** 2))(x)
    # d/dx_j sum_k c_k^2 = 2 sum_{k >= j} c_k
    c = np.cumsum(x)
    np.testing.assert_allclose(g, 2.0 * np.cumsum(c[::-1])[::-1], rtol=1e-12, atol=1e-12)


def test_cumsum_instruction_saved_loaded_and_imperative(tmp_path):
    """cumsum and cumprod are structural instructions: they survive save / load (operand
    checks), and the imperative API records them."""
    def f(x):
        m = x.reshape(2, 3)
        return np.sum(np.cumsum(m * m, axis=1) * np.cumsum(x)[::-1].reshape(2, 3)
                      + np.cumprod(m, axis=0))
    tp = dualtape.tape(f, X)
    tp.save(tmp_path / "cumsum.npz")
    lt = dualtape.load(tmp_path / "cumsum.npz")
    np.testing.assert_allclose(lt(X2), f(X2), rtol=EXACT)
    np.testing.assert_allclose(lt.gradient(X2), tp.gradient(X2), rtol=EXACT)
    np.testing.assert_allclose(lt.hessian(X2), tp.hessian(X2), rtol=EXACT)
    w = dualtape.attach_grad(X2.copy())
    with dualtape.record():
        y = f(w)
    y.backward()
    np.testing.assert_allclose(w.grad, tp.gradient(X2), rtol=EXACT)


def test_linspace_endpoints_exact():
    tp = dualtape.tape(lambda x: np.linspace(x[0], x[1], 7), np.array([0.1, 0.7]))
    for p in ([0.1, 0.7], [-3.0, 1e-3], [2.0, 2.0]):
        np.testing.assert_array_equal(tp(np.array(p)), np.linspace(p[0], p[1], 7))
    J = dualtape.jacobian(lambda x: np.linspace(x[0], x[1], 5))(np.array([0.0, 1.0]))
    t = np.linspace(0.0, 1.0, 5)
    np.testing.assert_allclose(J, np.stack([1.0 - t, t], axis=1), rtol=0, atol=1e-15)


def test_python_max_replays_where_the_winner_changes():
    f = lambda x: max(x[0], x[1]) * x[2]   # noqa: E731
    g = dualtape.grad(f)
    np.testing.assert_array_equal(g(np.array([1.0, 0.0, 2.0])), [2.0, 0.0, 1.0])
    np.testing.assert_array_equal(g(np.array([0.0, 1.0, 3.0])), [0.0, 3.0, 1.0])
    np.testing.assert_array_equal(g(np.array([5.0, 1.0, 3.0])), [3.0, 0.0, 5.0])


def test_take_along_axis_replays_where_argmax_changes():
    def f(x):
        m = x.reshape(2, 2)
        return np.take_along_axis(m, np.argmax(m, axis=1, keepdims=True), axis=1).ravel() ** 2
    jac = dualtape.jacobian(f, mode="reverse")
    for p in ([1.0, 0.0, 0.0, 2.0], [0.0, 1.0, 3.0, 2.0], [-1.0, -2.0, 5.0, 6.0]):
        p = np.array(p)
        m = p.reshape(2, 2)
        want = np.zeros((2, 4))
        for r in range(2):
            k = np.argmax(m[r])
            want[r, 2 * r + k] = 2.0 * m[r, k]
        np.testing.assert_array_equal(jac(p), want)
    assert jac.tapes.records == 1       # the index is recomputed, never re-recorded


def test_ode_list_rhs_in_every_mode_and_replay():
    y = np.array([0.5, -0.3, 1.2])
    J_want = lambda y: np.array([[0.0, 1.0, 0.0], [-1.0, 0.1 * y[2], 0.1 * y[1]],  # noqa: E731
                                 [y[1], y[0], -1.0]])
    jac = dualtape.jacobian(ode_rhs)
    for p in (y, y * 2.0 - 1.0):
        np.testing.assert_allclose(jac(p), J_want(p), rtol=EXACT, atol=EXACT)
        np.testing.assert_allclose(forward_jacobian(ode_rhs, p)[1], J_want(p), rtol=EXACT)
        np.testing.assert_allclose(dualtape.tape(ode_rhs, y)(p), ode_rhs(p), rtol=EXACT)
    assert jac.tapes.records == 1


# ---------------------------------------------------------------------------- scipy.special

@pytest.mark.parametrize("name,ref", [
    ("digamma", sp.psi), ("trigamma", lambda x: sp.polygamma(1, x)),
    ("tetragamma", lambda x: sp.polygamma(2, x))])
def test_polygamma_scalars_match_scipy(name, ref):
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.uniform(1e-3, 1.3, 200), rng.uniform(1.6, 30.0, 200),
                        np.exp(rng.uniform(3.0, 40.0, 100)),
                        -rng.integers(0, 20, 200) - rng.uniform(0.05, 0.95, 200)])
    fn = getattr(kernels, name)
    got = np.array([fn(v) for v in x])
    # relative 1e-13 (5e-13 for psi''), absolute 1e-15 near the zeros of psi for x < 0
    np.testing.assert_allclose(got, ref(x), rtol=1e-13 if name != "tetragamma" else 5e-13,
                               atol=1e-15)
    # poles, infinities and NaN as SciPy gives them
    edge = np.array([0.0, -0.0, -3.0, np.inf, -np.inf, np.nan])
    np.testing.assert_array_equal(np.array([fn(v) for v in edge]), ref(edge))


def test_special_stable_tails():
    x = np.array([-1e3, -60.0, -25.0, -21.0, -19.0, 30.0])
    # log_ndtr and its derivative phi / Phi ~ -x - 1/x for very negative x
    np.testing.assert_allclose(dualtape.tape(sp.log_ndtr, x)(x), sp.log_ndtr(x), rtol=1e-13)
    g = dualtape.grad(lambda x: np.sum(sp.log_ndtr(x)))(x)
    with np.errstate(invalid="ignore"):     # 0 / 0 below -38
        mills = np.exp(-0.5 * x * x) / np.sqrt(2 * np.pi) / sp.ndtr(x)
    assert np.isfinite(g).all()
    np.testing.assert_allclose(g[2:], mills[2:], rtol=1e-10)
    np.testing.assert_allclose(g[1], 60.0 + 1 / 60.0 - 2 / 60.0 ** 3 + 10 / 60.0 ** 5, rtol=1e-12)
    np.testing.assert_allclose(g[0], 1e3 + 1e-3, rtol=1e-9)      # -x - 1/x at -1e3
    # log_expit and logsumexp at large arguments: no overflow, exact limits
    z = np.array([-800.0, 800.0])
    np.testing.assert_array_equal(dualtape.grad(lambda z: np.sum(sp.log_expit(z)))(z), [1.0, 0.0])
    np.testing.assert_allclose(dualtape.grad(logsumexp)(np.array([1000.0, 1000.0])), [0.5, 0.5])
    assert logsumexp(np.array([1000.0, 1000.0])) == sp.logsumexp([1000.0, 1000.0])


def _flat(result):
    """One vector of a result that may be a tuple (logsumexp with return_sign)."""
    parts = result if isinstance(result, tuple) else (result,)
    return np.concatenate([np.ravel(r) for r in parts])


def test_dualtape_special_matches_scipy_on_plain_and_traced_values():
    x = np.array([[0.3, -1.0, 2.0], [1.5, 0.0, -0.5]])
    b = np.array([1.0, -0.5, 2.0])
    for ours, theirs, kw in [(logsumexp, sp.logsumexp, {"axis": 1}),
                             (logsumexp, sp.logsumexp, {"b": b, "return_sign": True}),
                             (softmax, sp.softmax, {"axis": 0}),
                             (log_softmax, sp.log_softmax, {})]:
        want = _flat(theirs(x, **kw))
        np.testing.assert_allclose(_flat(ours(x, **kw)), want, rtol=1e-14)      # plain
        traced = dualtape.tape(lambda z: _flat(ours(z, **kw)), x)
        np.testing.assert_allclose(traced(x), want, rtol=1e-14)
    # the gradient of logsumexp is softmax
    np.testing.assert_allclose(dualtape.grad(logsumexp)(x), sp.softmax(x), rtol=1e-14)


def test_nested_second_derivatives_of_special_functions():
    """derivative(derivative(f)) runs the table's first partials on Dual numbers of an
    enclosing level (dlog_ndtr, digamma): compared with SciPy's closed forms."""
    t = 0.7
    d2 = dualtape.derivative(dualtape.derivative(lambda t: sp.gammaln(t) + sp.log_ndtr(t)))(t)
    phi, Phi = np.exp(-0.5 * t * t) / np.sqrt(2 * np.pi), sp.ndtr(t)
    want = sp.polygamma(1, t) - (t * phi / Phi + (phi / Phi) ** 2)
    np.testing.assert_allclose(d2, want, rtol=1e-12)
    d2 = dualtape.derivative(dualtape.derivative(lambda t: sp.erf(t) * sp.expit(t)))(t)
    e, de, d2e = sp.erf(t), 2 / np.sqrt(np.pi) * np.exp(-t * t), -4 * t / np.sqrt(np.pi) * np.exp(-t * t)
    s_, ds = sp.expit(t), sp.expit(t) * sp.expit(-t)
    d2s = ds * (1 - 2 * s_)
    np.testing.assert_allclose(d2, d2e * s_ + 2 * de * ds + e * d2s, rtol=1e-12)
    third = dualtape.derivative(dualtape.derivative(dualtape.derivative(sp.gammaln)))
    with pytest.raises(NotImplementedError, match="polygamma"):
        third(t)


# ---------------------------------------------------------------------------- errors

def _sin(x):
    return math.sin(x[0])


def _lgamma(x):
    return math.lgamma(x[0]) * x[1]


def _exp_of_item(x):
    return math.exp(x.sum().item())


@pytest.mark.parametrize("f,name", [(_sin, "np.sin instead of math.sin"),
                                    (_lgamma, "scipy.special.gammaln instead of math.lgamma"),
                                    (_exp_of_item, "np.exp instead of math.exp")],
                         ids=["sin", "lgamma", "exp_of_item"])   # ids without spaces
def test_math_functions_name_the_numpy_function(f, name):
    x = np.array([0.3, 0.7])
    with pytest.raises(TypeError, match=name):
        dualtape.grad(f)(x)                 # tape
    with pytest.raises(TypeError, match=name):
        dual_jvp(f, x, np.ones(2))          # Dual numbers


_WRAPPED_SCIPY = """
import functools
import numpy as np


def deco(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return fn(*args, **kwargs)
    return wrapper


@deco
def flatten_it(x):
    return np.asarray(x).ravel()


__all__ = ["flatten_it"]
"""


def test_a_decorated_scipy_function_is_named_not_its_wrapper(monkeypatch):
    # SciPy wraps some public functions (array API layers): the error names the function
    mod = types.ModuleType("scipy.fakepkg")
    exec(_WRAPPED_SCIPY, mod.__dict__)
    monkeypatch.setitem(sys.modules, "scipy.fakepkg", mod)
    for run in (lambda f: dualtape.grad(f)(np.ones(3)),
                lambda f: dual_jvp(f, np.ones(3), np.ones(3))):
        with pytest.raises(TypeError, match="scipy.fakepkg.flatten_it converts its input"):
            run(lambda x: np.sum(mod.flatten_it(x)))


def test_errors_name_the_function_or_argument():
    x = np.array([0.3, 0.7, 1.2])
    cases = [
        (lambda x: np.pad(x, 1, mode="linear_ramp"), NotImplementedError, "mode='linear_ramp'"),
        (lambda x: np.pad(x, 1, mode="maximum"), NotImplementedError, "mode='maximum'"),
        (lambda x: np.sum(sp.logsumexp(x)), TypeError, "dualtape.special.logsumexp"),
        (lambda x: np.sum(sp.softmax(x)), TypeError, "dualtape.special.softmax"),
        (lambda x: np.sum(sp.gamma(x)), TypeError, "scipy.special.gamma"),
        (lambda x: np.var(x, out=np.zeros(())), TypeError, "numpy.var"),
        (lambda x: np.cumsum(x, dtype=int), TypeError, "numpy.cumsum"),
        (lambda x: np.sum(np.convolve(x, x, mode="middle")), ValueError, "mode"),
        (lambda x: np.sum(np.linspace(x[0], x[1], 3, dtype=int)), TypeError, "numpy.linspace"),
        (lambda x: np.sum(np.asarray([x, x])), TypeError, "np.stack"),
    ]
    for f, err, msg in cases:
        with pytest.raises(err, match=msg):
            dualtape.grad(f)(x)
        with pytest.raises(err, match=msg):
            dual_jvp(f, x, np.ones(3))
    # a traced index (Dual numbers index with plain integers)
    with pytest.raises(NotImplementedError, match="mode='clip'"):
        dualtape.grad(lambda x: np.take(x, np.argmax(x), mode="clip"))(x)
