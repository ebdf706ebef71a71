"""Custom derivative rules (Function, custom_vjp, custom_jvp) in every mode: reverse on a
tape and on replay, the imperative API, forward mode on Duals and on a tape's tangents, and
the errors of the paths that cannot call Python."""
import doctest

import numpy as np
import pytest
import scipy.linalg

import dualtape
from dualtape import custom
from dualtape import kernels as K


class Square(dualtape.Function):
    def forward(self, x):
        self.x = x
        return x ** 2

    def backward(self, gy):
        return 2 * self.x * gy

    def jvp(self, tx):
        return 2 * self.x * tx


class Exp(dualtape.Function):          # no jvp: reverse mode only
    def forward(self, x):
        self.save_for_backward(np.exp(x))
        return self.saved_tensors[0]

    def backward(self, gy):
        return self.saved_tensors[0] * gy


def chain(x):
    return Square.apply(Exp.apply(Square.apply(x)))


def test_chain_of_functions_in_reverse_mode_and_on_replay():
    assert dualtape.grad(chain)(0.5).item() == 3.297442541400256
    g = dualtape.grad(lambda x: np.sum(chain(x) * x))
    for x in (np.array([0.5, 0.2]), np.array([0.1, -0.3]), np.array([1.1, 0.0])):
        exact = 4 * x ** 2 * np.exp(2 * x ** 2) + np.exp(2 * x ** 2)
        np.testing.assert_allclose(g(x), exact, rtol=1e-14)
    assert g.tapes.records == 1                      # replayed, the rules called back
    tp = dualtape.tape(chain, np.array([0.5, 0.2]))
    assert tp.has_callbacks
    np.testing.assert_allclose(tp(np.array([0.3, 0.4])), np.exp(2 * np.array([0.09, 0.16])))


def test_imperative_api_with_a_custom_rule():
    x = dualtape.attach_grad(np.array(0.5))
    with dualtape.record():
        y = chain(x)
        z = y * x
    y.backward()
    assert x.grad.item() == 3.297442541400256
    z.backward()
    np.testing.assert_allclose(x.grad, 0.5 * 3.297442541400256 + np.exp(0.5), rtol=1e-15)
    with dualtape.pause():
        assert type(Square.apply(x)) is np.ndarray


def test_plain_arrays_call_the_function():
    np.testing.assert_array_equal(Square()(np.array([2.0, 3.0])), [4.0, 9.0])
    assert chain(0.0) == 1.0


def test_vjp_only_rule_refuses_forward_mode():
    for run in (lambda: dualtape.derivative(chain)(0.5),
                lambda: dualtape.jacobian(chain, mode="forward")(np.array([0.5, 1.0])),
                lambda: dualtape.tape(chain, np.ones(2)).jvp(np.ones(2), np.ones(2)),
                lambda: dualtape.check_grads(chain, np.ones(2), modes=("fwd",))):
        with pytest.raises(TypeError, match="custom rule Exp defines only a vjp"):
            run()
    jac = dualtape.jacobian(chain)           # auto: reverse, since Exp has no jvp
    jac(np.array([0.5, 1.0]))
    assert jac.last_mode == "reverse"
    np.testing.assert_allclose(dualtape.jacobian(chain, mode="reverse")(np.array([0.5, 1.0])),
                               np.diag(4 * np.array([0.5, 1.0]) * np.exp(2 * np.array(
                                   [0.5, 1.0]) ** 2)), rtol=1e-14)


def test_forward_mode_uses_the_jvp():
    assert dualtape.derivative(Square.apply)(3.0) == 6.0
    x = np.array([1.0, -2.0, 0.5])
    np.testing.assert_allclose(dualtape.jacobian(Square.apply, mode="forward")(x),
                               np.diag(2 * x))
    tp = dualtape.tape(lambda t: Square.apply(t) * t, x)
    np.testing.assert_allclose(tp.jvp(x, np.ones(3)), 3 * x ** 2)
    dualtape.check_grads(lambda t: np.sum(Square.apply(np.sin(t)) * t), x, modes=("fwd", "rev"))


@dualtape.custom_jvp
def softplus(x):
    return np.logaddexp(0.0, x)


@softplus.defjvp
def _softplus_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    return softplus(x), t / (1.0 + np.exp(-x))


def test_custom_jvp_only_in_both_modes_and_nested():
    x = np.array([-1.0, 0.0, 2.0])
    s = 1.0 / (1.0 + np.exp(-x))
    np.testing.assert_allclose(dualtape.grad(lambda t: np.sum(softplus(t)))(x), s, rtol=1e-15)
    np.testing.assert_allclose(dualtape.jacobian(softplus, mode="reverse")(x), np.diag(s),
                               rtol=1e-15)
    np.testing.assert_allclose(dualtape.jacobian(softplus, mode="forward")(x), np.diag(s),
                               rtol=1e-15)
    d2 = dualtape.derivative(dualtape.derivative(softplus))(0.7)   # the jvp rule, differentiated
    s7 = 1.0 / (1.0 + np.exp(-0.7))
    assert abs(d2 - s7 * (1 - s7)) < 1e-15


def test_custom_vjp_several_inputs_constants_and_none():
    @dualtape.custom_vjp
    def mul(a, b):
        return a * b
    mul.defvjp(lambda a, b: (a * b, (a, b)), lambda r, g: (g * r[1], g * r[0]))

    @dualtape.custom_vjp
    def first(a, b):
        return a + 0.0 * b
    first.defvjp(lambda a, b: (a, None), lambda r, g: (g, None))

    c = np.array([2.0, 3.0])
    f = dualtape.grad(lambda x: np.sum(mul(x, c)) + mul(x[0], x[1]) + np.sum(first(x, x * 9)))
    x = np.array([1.0, 5.0])
    np.testing.assert_array_equal(f(x), [2.0 + 5.0 + 1.0, 3.0 + 1.0 + 1.0])


def test_the_rule_is_used_not_the_code_inside():
    """A straight-through estimator: round forward (np.round, not even in dualtape's NumPy
    surface), identity backward."""
    @dualtape.custom_vjp
    def st_round(x):
        return np.round(x)
    st_round.defvjp(lambda x: (np.round(x), None), lambda r, g: g)
    g = dualtape.grad(lambda x: np.sum(st_round(x) * 3.0))
    np.testing.assert_array_equal(g(np.array([0.4, 1.7])), [3.0, 3.0])
    np.testing.assert_array_equal(dualtape.grad(lambda x: np.sum(np.rint(x) * 3.0))(
        np.array([0.4, 1.7])), [0.0, 0.0])        # the table's rint: derivative zero


def test_a_function_outside_the_supported_surface():
    """scipy.linalg.solve wrapped with its adjoint: x = A^-1 b, b_bar = A^-T x_bar."""
    A = np.array([[3.0, 1.0, 0.0], [1.0, 4.0, 1.0], [0.0, 1.0, 5.0]])

    class Solve(dualtape.Function):
        def forward(self, b):
            return scipy.linalg.solve(A, b)

        def backward(self, gx):
            return scipy.linalg.solve(A.T, gx)

    def f(b):
        return np.sum(np.sin(Solve.apply(b * b)))

    b = np.array([0.3, -0.5, 1.2])
    np.testing.assert_allclose(dualtape.grad(f)(b), dualtape.numerical_diff(f, b, 1e-6),
                               rtol=1e-8)


def test_guards_and_callbacks_replay_and_re_record():
    def f(x):
        y = Square.apply(x)
        return np.sum(y * 2.0) if np.sum(x).item() > 0 else np.sum(y * -1.0)
    g = dualtape.grad(f)
    np.testing.assert_allclose(g(np.array([1.0, 2.0])), [4.0, 8.0])
    np.testing.assert_allclose(g(np.array([-1.0, -2.0])), [2.0, 4.0])
    np.testing.assert_allclose(g(np.array([3.0, 1.0])), [12.0, 4.0])
    assert g.tapes.records == 2


def test_paths_that_cannot_call_python_refuse_the_tape():
    tp = dualtape.tape(lambda x: np.sum(chain(x)), np.ones(2))
    assert tp.prog[K.H_NCALL] == 3
    with pytest.raises(TypeError, match=r"custom derivative rule\(s\) Exp, Square.*njit"):
        tp.refuse_callbacks("inside @njit code")
    out = np.empty(3)
    status = K.grad(tp.prog, np.ones(2), out, tp.workspace())      # the raw compiled entry
    assert status >= K.CALL_STOP
    with pytest.raises(TypeError, match="Exp, Square"):
        tp.check(status)
    with pytest.raises(NotImplementedError, match="Exp, Square"):
        tp.hessian(np.ones(2))
    assert not dualtape.tape(np.sin, np.ones(2)).has_callbacks


def test_rule_errors_are_clear():
    @dualtape.custom_vjp
    def bad(x):
        return x * 2.0
    bad.defvjp(lambda x: (x * 2.0, None), lambda r, g: np.ones(5))
    with pytest.raises(ValueError, match=r"bad returned shape \(5,\) for input 0 of shape \(2,\)"):
        dualtape.grad(lambda x: np.sum(bad(x)))(np.ones(2))

    @dualtape.custom_vjp
    def nothing(x):
        return x
    with pytest.raises(TypeError, match="no derivative yet"):
        dualtape.grad(lambda x: np.sum(nothing(x)))(np.ones(2))


def test_docstring_examples():
    res = doctest.testmod(custom, extraglobs={"np": np, "dualtape": dualtape},
                          optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert res.failed == 0
