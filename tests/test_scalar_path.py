"""The sweeps' short paths for small instructions, against analytic derivatives in every
tape mode (reverse ``grad``, forward ``jacobian`` on tangents, ``hessian`` by
forward-over-reverse) and at a second point (replay):

* elementwise instructions of one element (scalar code) run as scalars
  (``kernels.ew_value1`` / ``ew_partial1``; ``test_ops`` checks every row of those against
  NumPy), also where a scalar result is broadcast into a vector, and with the zero rule;
* a partial that is a broadcast scalar operand (``2.0 * x``, ``x[0] * x``) is a constant
  coefficient: read at replay, and not used when infinite (the zero rule needs a select).
"""
import numpy as np
import pytest

import dualtape
from dualtape import numerical_diff

STEPS = 30


def loop(x):
    """The benchmark's scalar recurrence: every instruction has one element."""
    s = x[0]
    for i in range(STEPS):
        s = s * x[i % 3] + np.sin(s)
    return s


def loop_grad(x):
    """Its gradient by the forward recurrence ds' = ds x_k + s e_k + cos(s) ds."""
    s, ds = x[0], np.eye(3)[0]
    for i in range(STEPS):
        k = i % 3
        ds = ds * x[k] + s * np.eye(3)[k] + np.cos(s) * ds
        s = s * x[k] + np.sin(s)
    return ds


def modes_agree(f, x, want_grad, want_hess, rtol=1e-10, atol=1e-12):
    g = dualtape.grad(f)(x)
    np.testing.assert_allclose(g, want_grad, rtol=rtol, atol=atol, err_msg="grad")
    J = dualtape.jacobian(f, mode="forward")(x)
    np.testing.assert_allclose(J, want_grad, rtol=rtol, atol=atol, err_msg="forward")
    H = dualtape.hessian(f)(x)
    np.testing.assert_allclose(H, want_hess, rtol=1e-6, atol=1e-8, err_msg="hessian")


@pytest.mark.parametrize("x", [np.array([0.5, 0.7, 0.4]), np.array([0.3, 0.9, 0.6])])
def test_scalar_loop_matches_the_analytic_gradient(x):
    g = dualtape.grad(loop)
    g(np.array([0.6, 0.5, 0.8]))             # recorded elsewhere: x is a replay
    np.testing.assert_allclose(g(x), loop_grad(x), rtol=1e-10)
    modes_agree(loop, x, loop_grad(x), numerical_diff(loop_grad, x, eps=1e-5))


def test_scalar_broadcast_into_a_vector():
    """A one-element result (sin of a sum) scales a vector: grad_j = cos(s) sum(x^2) +
    2 sin(s) x_j with s = sum(x)."""
    def f(x):
        return np.sum(np.sin(np.sum(x)) * x ** 2)

    def fg(x):
        s = np.sum(x)
        return np.cos(s) * np.sum(x ** 2) + 2.0 * np.sin(s) * x
    for x in (np.array([0.3, -0.2, 0.9, 0.4]), np.array([1.1, 0.2, -0.5, 0.7])):
        modes_agree(f, x, fg(x), numerical_diff(fg, x, eps=1e-5))


@pytest.mark.parametrize("x, d, d2", [(0.0, 0.0, 0.0), (-1.0, 0.0, 0.0),
                                      (4.0, 3.0 * 0.25, 3.0 * -0.25 / 8.0)])
def test_masked_sqrt_at_one_element_has_the_selected_branch_derivative(x, d, d2):
    """np.where(x > 0, sqrt(x), 0): at x <= 0 the sqrt branch has an infinite or NaN
    partial and a zero adjoint, which contributes zero (not NaN) in every mode."""
    def f(x):
        return np.sum(3.0 * np.where(x > 0, np.sqrt(x), 0.0))
    with np.errstate(invalid="ignore"):      # the recording's sqrt(-1)
        modes_agree(f, np.array([x]), np.array([d]), np.array([[d2]]))


def test_nan_propagates_at_one_element():
    g = dualtape.grad(lambda x: np.sum(np.sqrt(x)))
    assert g(np.array([4.0]))[0] == 0.25
    assert np.isnan(g(np.array([-1.0]))[0])


def test_broadcast_coefficient_is_read_at_replay():
    """x[0] * x: the partial of the vector operand is the traced scalar x[0]."""
    def f(x):
        return np.sum(x[0] * x)
    for x in (np.array([2.0, 1.0, -3.0]), np.array([-0.5, 4.0, 1.5])):
        want = np.full(3, x[0])
        want[0] += np.sum(x)
        H = np.zeros((3, 3))
        H[0, :] += 1.0
        H[:, 0] += 1.0
        modes_agree(f, x, want, H)


@pytest.mark.parametrize("c", [np.inf, 0.0, -2.5])
def test_broadcast_coefficient_zero_rule(c):
    """c * x on the unselected branch of a where: its adjoint is zero, so even an infinite
    coefficient contributes zero; on the selected branch the derivative is c."""
    def f(x):
        return np.sum(np.where(x > 0.0, c * x, 2.0 * x))
    x = np.array([-1.0, -2.0, 3.0])
    want = np.array([2.0, 2.0, c])
    modes_agree(f, x, want, np.zeros((3, 3)))
