"""Tapes called from the user's own @njit code (dualtape.embed).

The user functions here are compiled with cache=True: linking the sweeps into a new
function costs a few seconds once, later runs load it from the cache.
"""
import numba
import numpy as np
import pytest

import dualtape
from dualtape import embed
from fixtures import central_jacobian, rosen


def bratu(u, lam):
    """Discretised -u'' = lam exp(u) on (0, 1), u = 0 at both ends."""
    h = 1.0 / (u.size + 1)
    up = np.concatenate([np.zeros(1), u, np.zeros(1)])
    return up[:-2] - 2.0 * u + up[2:] + h * h * lam * np.exp(u)


@numba.njit(cache=True)
def newton(tp, x, tol, maxiter):
    """Newton's method on F(x[:nx], params) = 0 in place; (status, iterations)."""
    n = tp.nx
    J = np.empty((n, n))
    for it in range(maxiter):
        st = embed.jacobian(tp, x, J)
        if st != embed.OK:
            return st, it
        dx = np.linalg.solve(J, embed.output(tp))
        x[:n] -= dx
        if np.max(np.abs(dx)) < tol:
            return embed.OK, it + 1
    return embed.OK, maxiter


def test_newton_in_nopython_solves_bratu():
    n = 30
    tp = dualtape.tape(bratu, np.zeros(n), 1.0)
    x = tp.pack((np.zeros(n), 2.0)).copy()           # inputs then the parameter lam
    st, its = newton(tp.nopython(), x, 1e-12, 30)
    assert st == embed.OK and its < 10
    u = x[:n]
    assert np.abs(bratu(u, 2.0)).max() < 1e-12
    # the lower branch of Bratu's problem at lam = 2 peaks near 0.37
    assert 0.3 < u.max() < 0.45


@numba.njit(cache=True)
def call_all(tp, x, v, y, g, J, jv, hv):
    s1 = embed.value(tp, x, y)
    s2 = embed.gradient(tp, x, g) if tp.nout == 1 else embed.OK
    s3 = embed.jacobian(tp, x, J)
    s4 = embed.jvp(tp, x, v, jv)
    s5 = embed.hvp(tp, x, v, hv) if tp.nout == 1 else embed.OK
    return max(s1, s2, s3, s4, s5), min(s1, s2, s3, s4, s5)


def run_all(tape, x, v, chunk=None):
    ntp = tape.nopython(chunk)
    m, n = tape.out_size, tape.nx
    out = (np.full(m, np.nan), np.full(n, np.nan), np.full((m, n), np.nan),
           np.full(m, np.nan), np.full(n, np.nan))
    st = call_all(ntp, tape.pack((x,)), v, *out)
    return st, out


def test_entries_match_analytic_rosenbrock():
    x = np.array([0.3, -1.2, 0.8, 2.0])
    v = np.array([1.0, 0.5, -2.0, 0.25])
    (hi, lo), (y, g, J, jv, hv) = run_all(dualtape.tape(rosen, x), x, v)
    assert hi == lo == embed.OK
    a, b = x[:-1], x[1:]
    grad = np.zeros(4)
    grad[:-1] += -400.0 * a * (b - a * a) - 2.0 * (1.0 - a)
    grad[1:] += 200.0 * (b - a * a)
    H = np.zeros((4, 4))
    for i in range(3):
        H[i, i] += 1200.0 * a[i] ** 2 - 400.0 * b[i] + 2.0
        H[i, i + 1] = H[i + 1, i] = -400.0 * a[i]
        H[i + 1, i + 1] += 200.0
    np.testing.assert_allclose(y, rosen(x), rtol=1e-15)
    np.testing.assert_allclose(g, grad, rtol=1e-13)
    np.testing.assert_allclose(J[0], grad, rtol=1e-13)    # reverse: 4 inputs > 1 output
    np.testing.assert_allclose(jv, grad @ v, rtol=1e-13)
    np.testing.assert_allclose(hv, H @ v, rtol=1e-13)


@pytest.mark.parametrize("chunk", [None, 2])
def test_forward_jacobian_in_chunks_matches_differences(chunk):
    def f(x):
        return np.concatenate([np.sin(x) * x[::-1], [np.prod(x)]])
    x = np.array([0.3, -1.2, 0.8])
    tape = dualtape.tape(f, x)
    v = np.array([1.0, -1.0, 0.5])
    (hi, lo), (y, _, J, jv, _) = run_all(tape, x, v, chunk)
    assert hi == lo == embed.OK
    Jfd = central_jacobian(f, x)
    np.testing.assert_allclose(J, Jfd, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(jv, Jfd @ v, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(y, f(x))


def branchy(x):
    if x[0] > 0:
        return np.sum(x ** 2)
    return np.sum(x ** 3)


@numba.njit(cache=True)
def descend(tp, x, step, iters, g):
    """Gradient descent that stops and reports at the first failed sweep."""
    for it in range(iters):
        st = embed.gradient(tp, x, g)
        if st != embed.OK:
            return st, it
        x[:tp.nx] -= step * g
    return embed.OK, iters


def test_guard_flip_in_nopython_is_reported_never_answered():
    tape = dualtape.tape(branchy, np.array([1.0, 2.0]))
    ntp = tape.nopython()
    g = np.full(2, np.nan)
    st = embed.gradient(ntp, np.array([-1.0, 2.0]), g)
    assert embed.guard_flipped(st) and not embed.index_error(st)
    assert tape.code[st, 0] == dualtape.ops.OPCODES["guard"]
    assert np.isnan(g).all()                         # nothing written on a flip
    with pytest.raises(dualtape.GuardFlipped):
        tape.check(st)
    # the fallback pattern: return to Python, record at the point reached, continue
    x = np.array([0.5, 1.0])
    st, it = descend(ntp, x, 0.6, 50, g)
    assert st >= 0 and x[0] < 0                      # descent crossed x0 = 0 and stopped
    reached = x.copy()
    tape2 = dualtape.tape(branchy, x)
    st2, _ = descend(tape2.nopython(), x, 0.01, 1, g)
    assert st2 == embed.OK
    np.testing.assert_allclose(g, 3.0 * reached ** 2)  # the other branch's gradient


def test_index_error_status():
    tape = dualtape.tape(lambda x: x[np.argmax(x) + 1], np.array([0.5, 3.0, 1.0]))
    ntp = tape.nopython()
    g = np.zeros(3)
    assert embed.gradient(ntp, np.array([0.5, 3.0, 1.0]), g) == embed.OK
    st = embed.gradient(ntp, np.array([0.5, 1.0, 3.0]), g)
    assert embed.index_error(st) and not embed.guard_flipped(st)
    with pytest.raises(IndexError):
        tape.check(st)


def test_wrong_sizes_raise():
    ntp = dualtape.tape(rosen, np.ones(3)).nopython()
    with pytest.raises(ValueError, match="nin"):
        embed.gradient(ntp, np.ones(4), np.zeros(3))
    with pytest.raises(ValueError, match="nx"):
        embed.gradient(ntp, np.ones(3), np.zeros(2))
    with pytest.raises(ValueError, match="nout, nx"):
        embed.jacobian(ntp, np.ones(3), np.zeros((3, 3)))


def test_parameters_follow_the_inputs():
    tape = dualtape.tape(lambda x, p: p * np.sum(x ** 2), np.ones(2), 1.0)
    ntp = tape.nopython()
    g = np.zeros(2)
    assert embed.gradient(ntp, np.array([1.0, 2.0, 3.0]), g) == embed.OK
    np.testing.assert_allclose(g, [6.0, 12.0])
    assert embed.output(ntp)[0] == 15.0


def test_no_compilation_per_tape():
    for n in (2, 5):
        embed.gradient(dualtape.tape(rosen, np.ones(n)).nopython(), np.ones(n), np.zeros(n))
    assert len(embed.gradient.signatures) == 1
