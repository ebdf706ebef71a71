"""dualtape's functions as SciPy's jac / hess / hessp, with solver args as tape parameters.

Derivatives are compared with SciPy's own analytic Rosenbrock derivatives and with
hand-written Jacobians; recordings are counted to show that args= changes replay.
"""
import numpy as np
import pytest
from scipy.integrate import solve_ivp
from scipy.optimize import least_squares, minimize, root, rosen_der, rosen_hess, rosen_hess_prod

import dualtape
from fixtures import rosen        # SciPy's rosen calls np.asarray(x): not traceable

TRACED = []      # one entry per call of f on traced values (a list: not fingerprinted)


def scaled_rosen(x, a):
    if not isinstance(x, np.ndarray):
        TRACED.append(a)
    return a * np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


X0 = np.full(5, -0.5)


def test_derivatives_match_scipy_rosenbrock():
    x = np.array([0.3, -1.2, 0.8, 2.0, 0.1])
    p = np.linspace(-1.0, 1.0, 5)
    assert dualtape.grad(rosen)(x) == pytest.approx(rosen_der(x), rel=1e-13)
    np.testing.assert_allclose(dualtape.hessian(rosen)(x), rosen_hess(x), rtol=1e-13)
    np.testing.assert_allclose(dualtape.hvp(rosen)(x, p), rosen_hess_prod(x, p), rtol=1e-13)


def test_minimize_with_grad_and_hessian():
    TRACED.clear()
    jac, hess = dualtape.grad(scaled_rosen), dualtape.hessian(scaled_rosen)
    for a in (1.0, 3.0, 0.5):
        res = minimize(scaled_rosen, X0, args=(a,), jac=jac, hess=hess, method="trust-exact")
        assert res.success and np.allclose(res.x, 1.0, atol=1e-7)
        np.testing.assert_allclose(jac(res.x * 0.9, a), a * rosen_der(res.x * 0.9),
                                   rtol=1e-13)
    # one recording for the gradient, one for the Hessian, whatever a is
    assert len(TRACED) == 2
    assert jac.tapes.records == hess.tapes.records == 1


def test_minimize_newton_cg_with_hessp_and_args():
    TRACED.clear()
    hessp = dualtape.hvp(scaled_rosen)
    jac = dualtape.grad(scaled_rosen)
    for a in (2.0, 5.0):
        res = minimize(scaled_rosen, X0, args=(a,), jac=jac, hessp=hessp,
                       method="Newton-CG", options={"xtol": 1e-10})
        assert res.success and np.allclose(res.x, 1.0, atol=1e-6)
    p = np.arange(5.0)
    np.testing.assert_allclose(hessp(X0, p, 5.0), 5.0 * rosen_hess_prod(X0, p), rtol=1e-13)
    assert hessp.tapes.records == jac.tapes.records == 1 and len(TRACED) == 2


def test_minimize_with_value_and_grad():
    fg = dualtape.value_and_grad(scaled_rosen)
    res = minimize(fg, X0, args=(1.0,), jac=True, method="BFGS", options={"gtol": 1e-9})
    assert res.success and np.allclose(res.x, 1.0, atol=1e-6)


def system(x, c):
    """x0^2 + x1^2 = c, x0 = x1^3; Jacobian [[2 x0, 2 x1], [1, -3 x1^2]]."""
    return np.stack([x[0] ** 2 + x[1] ** 2 - c, x[0] - x[1] ** 3])


def test_root_with_jacobian():
    jac = dualtape.jacobian(system)
    for c in (1.0, 2.0, 4.0):
        sol = root(system, np.array([1.0, 0.5]), args=(c,), jac=jac, method="hybr")
        assert sol.success
        x = sol.x
        assert abs(x[0] ** 2 + x[1] ** 2 - c) < 1e-10 and abs(x[0] - x[1] ** 3) < 1e-10
    x = np.array([0.7, -0.4])
    np.testing.assert_allclose(jac(x, 3.0), [[1.4, -0.8], [1.0, -0.48]], rtol=1e-15)
    assert jac.tapes.records == 1 and jac.last_mode == "forward"


def test_least_squares_with_jacobian():
    t = np.linspace(0.0, 2.0, 20)
    data = 3.0 * np.exp(-1.5 * t)

    def residual(p, t, data):
        return p[0] * np.exp(-p[1] * t) - data
    jac = dualtape.jacobian(residual)
    res = least_squares(residual, np.array([1.0, 1.0]), jac=jac, args=(t, data))
    np.testing.assert_allclose(res.x, [3.0, 1.5], rtol=1e-9)
    assert jac.last_mode == "forward"         # 2 parameters, 20 residuals


def robertson(t, y, k1, k2, k3):
    """Robertson's stiff chemical kinetics, rhs(t, y, *args)."""
    return np.stack([-k1 * y[0] + k3 * y[1] * y[2],
                     k1 * y[0] - k2 * y[1] ** 2 - k3 * y[1] * y[2],
                     k2 * y[1] ** 2])


def robertson_jac(t, y, k1, k2, k3):
    return np.array([[-k1, k3 * y[2], k3 * y[1]],
                     [k1, -2 * k2 * y[1] - k3 * y[2], -k3 * y[1]],
                     [0.0, 2 * k2 * y[1], 0.0]])


def test_solve_ivp_bdf_with_jacobian():
    jac = dualtape.jacobian(robertson, argnums=1)
    y0 = np.array([1.0, 0.0, 0.0])
    for args in ((0.04, 3e7, 1e4), (0.05, 2e7, 1e4)):
        ours = solve_ivp(robertson, (0.0, 100.0), y0, method="BDF", jac=jac, args=args,
                         rtol=1e-8, atol=1e-10)
        exact = solve_ivp(robertson, (0.0, 100.0), y0, method="BDF", jac=robertson_jac,
                          args=args, rtol=1e-8, atol=1e-10)
        assert ours.success and ours.njev > 0
        np.testing.assert_allclose(ours.y[:, -1], exact.y[:, -1], rtol=1e-6, atol=1e-12)
        y = np.array([0.9, 2e-5, 0.1])
        np.testing.assert_allclose(jac(1.0, y, *args), robertson_jac(1.0, y, *args),
                                   rtol=1e-14)
    # t and the rate constants are tape parameters: one recording for every call
    assert jac.tapes.records == 1
