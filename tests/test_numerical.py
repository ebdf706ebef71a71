"""numerical_diff: shapes (output axes first), agreement with analytic and exact Jacobians,
and the documented error behaviour (truncation ~ eps**2, rounding ~ 1/eps)."""
import numpy as np
import pytest

import dualtape
from fixtures import FUNCTIONS


def square_exp_square(x):
    return np.exp(x ** 2) ** 2


def exact_dydx(x):
    return 4.0 * x * np.exp(2.0 * x ** 2)


def test_scalar_in_scalar_out():
    d = dualtape.numerical_diff(square_exp_square, 0.5)
    assert np.ndim(d) == 0
    assert abs(d - exact_dydx(0.5)) < 1e-7 * exact_dydx(0.5)


def test_shapes_output_axes_first():
    x = np.arange(6.0).reshape(2, 3) / 10
    J = dualtape.numerical_diff(lambda m: m.T @ m, x)
    assert J.shape == (3, 3, 2, 3)
    # d(M^T M)_{ij} / dM_{kl} = delta_jl M_ki + delta_il M_kj
    eye = np.eye(3)
    exact = np.einsum("jl,ki->ijkl", eye, x) + np.einsum("il,kj->ijkl", eye, x)
    np.testing.assert_allclose(J, exact, atol=1e-9)
    assert dualtape.numerical_diff(np.sum, x).shape == (2, 3)
    assert dualtape.numerical_diff(lambda t: np.stack([t, t * t]), 2.0).shape == (2,)
    np.testing.assert_allclose(dualtape.numerical_diff(lambda t: t * 2.0, np.arange(3)),
                               2.0 * np.eye(3))     # integer input promoted to float


@pytest.mark.parametrize("name,f,x", FUNCTIONS, ids=[n for n, _, _ in FUNCTIONS])
def test_agrees_with_exact_jacobian(name, f, x):
    J = dualtape.numerical_diff(f, x, eps=1e-5)
    exact = dualtape.jacobian(f)(x)
    np.testing.assert_allclose(J, exact, rtol=1e-6, atol=1e-7)


def test_error_falls_with_eps_squared_then_rounding_takes_over():
    def err(eps):   # the largest error over a few points, so that no lucky cancellation hides it
        return max(abs(dualtape.numerical_diff(square_exp_square, x, eps) - exact_dydx(x))
                   for x in (0.5, 0.51, 0.52))

    # truncation regime: tenfold smaller eps, about a hundredfold smaller error
    for big, small in ((1e-1, 1e-2), (1e-2, 1e-3), (1e-3, 1e-4)):
        assert 50 < err(big) / err(small) < 200
    # near the best step the error is about 1e-16 ** (2/3) relative
    assert err(1e-5) < 1e-8
    # rounding regime: about 1e-16 * |f| / eps, growing as eps shrinks
    assert err(1e-11) > 1e-7 and err(1e-13) > 1e-5 and err(1e-13) > 10 * err(1e-11)


def test_errors():
    for eps in (0.0, -1e-3, np.inf, np.nan):
        with pytest.raises(ValueError, match="eps"):
            dualtape.numerical_diff(np.sin, 1.0, eps)
    with pytest.raises(TypeError, match="complex"):
        dualtape.numerical_diff(np.sin, 1.0 + 1j)
    with pytest.raises(TypeError, match="complex"):
        dualtape.numerical_diff(lambda t: t * 1j, 1.0)
    with pytest.raises(TypeError, match="real numbers"):
        dualtape.numerical_diff(lambda t: "a", 1.0)
    with np.errstate(invalid="ignore"):   # sqrt(-eps): NaN propagates, no exception
        assert np.isnan(dualtape.numerical_diff(np.sqrt, 0.0))
