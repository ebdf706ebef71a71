"""The imperative API (attach_grad / record / backward): every statement of issue 12 item 1,
agreement with the functional API and central differences, and the plain-array behaviour
outside a recording."""
import doctest

import numpy as np
import pytest

import dualtape
from dualtape import imperative
from dualtape.imperative import Recorded, Variable
from fixtures import FUNCTIONS, central_jacobian


def test_two_x_dot_x():
    x = dualtape.attach_grad(np.arange(4.0))
    with dualtape.record():
        y = 2 * np.dot(x, x)
    y.backward()
    np.testing.assert_array_equal(x.grad, [0.0, 4.0, 8.0, 12.0])


def test_non_scalar_output_without_head_is_the_sum():
    x = dualtape.attach_grad(np.array([0.5, -1.0, 2.0]))
    with dualtape.record():
        y = np.sin(x) * x
    y.backward()
    xs = x.data
    np.testing.assert_allclose(x.grad, np.cos(xs) * xs + np.sin(xs), rtol=1e-14)


def test_head_gradient_gives_the_vector_jacobian_product():
    x = dualtape.attach_grad(np.arange(4.0))
    head = np.array([10, 1, 0.1, 0.01])
    with dualtape.record():
        y = x * 2
        z = y * x
    z.backward(head)
    np.testing.assert_allclose(x.grad, 4 * np.arange(4.0) * head, rtol=1e-15)


def test_head_gradient_shape_is_checked():
    x = dualtape.attach_grad(np.arange(4.0))
    with dualtape.record():
        y = x * 2
    with pytest.raises(ValueError, match=r"shape \(3,\).*\(4,\)"):
        y.backward(np.ones(3))


def test_detach_and_stop_gradient():
    for cut in (lambda y: y.detach(), dualtape.stop_gradient):
        x = dualtape.attach_grad(np.arange(4.0))
        with dualtape.record():
            y = x * x
            u = cut(y)
            z = u * x
        z.backward()
        np.testing.assert_array_equal(x.grad, np.arange(4.0) ** 2)   # == u
        y.backward()    # over instructions the first backward already swept
        np.testing.assert_array_equal(x.grad, 2 * np.arange(4.0))


def test_attach_grad_on_an_intermediate_cuts_its_history():
    x = dualtape.attach_grad(np.arange(4.0))
    y = dualtape.attach_grad(2 * np.ones(4))
    with dualtape.record():
        u = x * y
        u = dualtape.attach_grad(u)
        z = u + x
    z.backward()
    np.testing.assert_array_equal(x.grad, np.ones(4))
    np.testing.assert_array_equal(u.grad, np.ones(4))
    np.testing.assert_array_equal(y.grad, np.zeros(4))


def test_head_gradients_continue_the_chain_rule_by_hand():
    x = dualtape.attach_grad(np.arange(4.0))
    y = dualtape.attach_grad(2 * np.ones(4))
    with dualtape.record():
        u = x * y
        v = dualtape.attach_grad(u.detach())
        z = v + x
    z.backward()
    np.testing.assert_array_equal(x.grad, np.ones(4))
    np.testing.assert_array_equal(v.grad, np.ones(4))
    u.backward(v.grad)
    np.testing.assert_array_equal(x.grad, 2 * np.ones(4))       # written, not added
    np.testing.assert_array_equal(y.grad, np.arange(4.0))        # = x
    np.testing.assert_array_equal(v.grad, np.ones(4))            # attached after u


def test_chain_by_hand_equals_one_backward():
    """z = g(h(x)) split at h: the head gradient carries dz/dh back through h."""
    x0 = np.array([0.3, -0.7, 1.1])
    x = dualtape.attach_grad(x0)
    with dualtape.record():
        h = np.exp(x) * x
        hv = dualtape.attach_grad(h)
        z = np.sum(np.sin(hv) ** 2)
    z.backward()
    h.backward(hv.grad)
    expected = dualtape.grad(lambda t: np.sum(np.sin(np.exp(t) * t) ** 2))(x0)
    np.testing.assert_allclose(x.grad, expected, rtol=1e-13)


def test_write_and_add():
    x = dualtape.attach_grad(np.arange(3.0))
    with dualtape.record():
        y = np.sum(x * x)
    y.backward()
    y.backward()
    np.testing.assert_array_equal(x.grad, 2 * np.arange(3.0))     # write: overwritten
    x = dualtape.attach_grad(np.arange(3.0), grad_req="add")
    with dualtape.record():
        y = np.sum(x * x)
    y.backward()
    y.backward(retain_graph=True)
    np.testing.assert_array_equal(x.grad, 4 * np.arange(3.0))     # add: doubled
    x.zero_grad()
    np.testing.assert_array_equal(x.grad, np.zeros(3))
    y.backward()
    np.testing.assert_array_equal(x.grad, 2 * np.arange(3.0))
    x.grad[:] = 0                                                 # MXNet's way
    np.testing.assert_array_equal(x.grad, np.zeros(3))
    assert dualtape.attach_grad(x, "write") is x and x.grad_req == "write"
    with pytest.raises(ValueError, match="grad_req"):
        dualtape.attach_grad(np.ones(2), grad_req="null")


def test_backward_on_any_output_in_any_order():
    x = dualtape.attach_grad(np.array([0.5, 1.5]))
    with dualtape.record():
        a = np.exp(x)
        b = np.sum(a * x)
        c = np.sum(a)
    for out, expected in [(c, np.exp(x.data)), (b, np.exp(x.data) * (1 + x.data)),
                          (c, np.exp(x.data)), (a, np.exp(x.data))]:
        out.backward()
        np.testing.assert_allclose(x.grad, expected, rtol=1e-15)


def test_backward_of_a_view_of_an_attached_array():
    x = dualtape.attach_grad(np.arange(4.0))
    with dualtape.record():
        y = x[1:]
        m = x.reshape(2, 2)
    y.backward()
    np.testing.assert_array_equal(x.grad, [0.0, 1.0, 1.0, 1.0])
    m.backward(np.array([[1.0, 2.0], [3.0, 4.0]]))
    np.testing.assert_array_equal(x.grad, [1.0, 2.0, 3.0, 4.0])
    x.backward(np.full(4, 7.0))
    np.testing.assert_array_equal(x.grad, np.full(4, 7.0))


def test_arrays_used_after_an_output_keep_their_gradient():
    x = dualtape.attach_grad(np.arange(3.0))
    late = dualtape.attach_grad(np.ones(3))
    late.grad[:] = 5.0
    with dualtape.record():
        y = np.sum(x * x)
        z = np.sum(late * x)
    y.backward()
    np.testing.assert_array_equal(late.grad, np.full(3, 5.0))
    z.backward()
    np.testing.assert_array_equal(late.grad, np.arange(3.0))


def test_backward_inside_the_block_sees_the_tape_so_far():
    x = dualtape.attach_grad(np.array([2.0]))
    with dualtape.record():
        y = x * x
        y.backward()
        np.testing.assert_array_equal(x.grad, [4.0])
        z = y * x
        z.backward()
    np.testing.assert_array_equal(x.grad, [12.0])


# ---------------------------------------------------------------------------- scopes

def test_recording_and_training_flags():
    assert not dualtape.is_recording() and not dualtape.is_training()
    with dualtape.record():
        assert dualtape.is_recording() and dualtape.is_training()
        with dualtape.pause():
            assert not dualtape.is_recording() and not dualtape.is_training()
            with dualtape.record(train_mode=False):
                assert dualtape.is_recording() and not dualtape.is_training()
        with dualtape.no_grad():
            assert not dualtape.is_recording() and dualtape.is_training()
        with dualtape.predict_mode():
            assert dualtape.is_recording() and not dualtape.is_training()
    with dualtape.train_mode():
        assert dualtape.is_training() and not dualtape.is_recording()
    with dualtape.pause(train_mode=True):
        assert dualtape.is_training()
    assert not dualtape.is_recording() and not dualtape.is_training()


def test_training_mode_changes_what_is_recorded():
    def dropout_like(h):
        return h * 0.5 if dualtape.is_training() else h

    x = dualtape.attach_grad(np.ones(3))
    for train, factor in ((True, 0.5), (False, 1.0)):
        with dualtape.record(train_mode=train):
            y = np.sum(dropout_like(x * 3.0))
        y.backward()
        np.testing.assert_array_equal(x.grad, np.full(3, 3.0 * factor))


def test_nothing_is_recorded_under_pause_or_no_grad():
    x = dualtape.attach_grad(np.arange(3.0))
    with dualtape.record():
        y = x * x
        rec = y.rec
        n = rec.code.n
        for scope in (dualtape.pause, dualtape.no_grad):
            with scope():
                z = y * 3 + x
                w = np.exp(x)
            assert type(z) is np.ndarray and type(w) is np.ndarray
            assert rec.code.n == n
        out = np.sum(y * z)        # z is a constant here
    out.backward()
    np.testing.assert_allclose(x.grad, 2 * x.data * z, rtol=1e-15)


def test_nested_record_blocks_share_one_recording():
    x = dualtape.attach_grad(np.array([1.5]))
    with dualtape.record():
        y = x * x
        with dualtape.pause():
            with dualtape.record():
                z = y * x
    z.backward()
    np.testing.assert_allclose(x.grad, 3 * 1.5 ** 2)


def test_a_value_from_an_earlier_block_is_refused_in_a_new_one():
    x = dualtape.attach_grad(np.arange(3.0))
    with dualtape.record():
        y = x * 2
    with dualtape.record():
        with pytest.raises(TypeError, match="earlier record"):
            y * x
        with pytest.raises(TypeError, match="earlier record"):
            np.sin(y)
        with pytest.raises(TypeError, match="earlier record"):
            (x * 1.0) * y          # a value of this block leads
        z = np.sum(y.detach() * x)     # as a constant: fine
    z.backward()
    np.testing.assert_array_equal(x.grad, 2 * np.arange(3.0))


def test_python_control_flow_doubling_loop():
    def f(a):
        b = a * 2
        while np.linalg.norm(b).item() < 1000:
            b = b * 2
        if b.sum().item() > 0:
            c = b
        else:
            c = 100 * b
        return c

    rng = np.random.default_rng(12)
    for _ in range(6):
        a = dualtape.attach_grad(rng.standard_normal(3))
        with dualtape.record():
            c = f(a)
        c.backward()
        np.testing.assert_allclose(a.grad, c.value / a.data, rtol=1e-15)
        # the functional API gives the same on its replayed tape
        np.testing.assert_allclose(dualtape.vjp(f, a.data)[1](np.ones(3)), a.grad,
                                   rtol=1e-15)


# ---------------------------------------------------------------------------- agreement

@pytest.mark.parametrize("name,f,x0", FUNCTIONS, ids=[n for n, _, _ in FUNCTIONS])
def test_agrees_with_functional_api_and_central_differences(name, f, x0):
    x = dualtape.attach_grad(x0)
    with dualtape.record():
        y = f(x)
    assert isinstance(y, Recorded)
    np.testing.assert_allclose(y.value, f(x0), rtol=1e-14)
    head = np.linspace(0.5, 1.5, y.size).reshape(y.shape)
    y.backward(head)
    functional = dualtape.vjp(f, x0)[1](head)
    np.testing.assert_allclose(x.grad, functional, rtol=1e-12, atol=1e-13)
    fd = np.tensordot(head, central_jacobian(f, x0), axes=y.ndim)
    np.testing.assert_allclose(x.grad, fd, rtol=1e-6, atol=1e-6)
    if y.shape == ():
        y.backward()
        np.testing.assert_allclose(x.grad, dualtape.grad(f)(x0), rtol=1e-12, atol=1e-13)


# ---------------------------------------------------------------------------- plain arrays

def test_outside_a_recording_an_attached_array_is_plain_numpy():
    x = dualtape.attach_grad(np.arange(1.0, 5.0))
    for r in (x + 1, np.sin(x), x.reshape(2, 2).T, x[1:], x @ x, np.sum(x),
              np.linalg.solve(np.diag(x.data), x)):
        assert not isinstance(r, dualtape.imperative._Routed)
    assert float(x[2]) == 3.0 and x[1:].item(0) == 2.0 and x.tolist() == [1, 2, 3, 4]
    assert np.asarray(x) is x.data
    c = x.copy()
    c[0] = 100.0
    assert x.data[0] == 1.0
    np.testing.assert_array_equal(x.asnumpy(), [1, 2, 3, 4])
    with dualtape.record():
        y = x * 2
    assert isinstance(y * 3, np.ndarray) and float(np.sum(y)) == 20.0


def test_in_place_updates_of_attached_arrays():
    w = dualtape.attach_grad(np.array([3.0, -2.0]))
    for _ in range(60):
        with dualtape.record():
            loss = np.sum((w - np.array([1.0, 0.5])) ** 2)
        loss.backward()
        w -= 0.1 * w.grad
    assert isinstance(w, Variable)
    np.testing.assert_allclose(w.data, [1.0, 0.5], atol=1e-5)
    w[:] = 0.0
    w += 1.0
    w *= 3.0
    np.testing.assert_array_equal(w.data, [3.0, 3.0])
    with dualtape.record():
        with pytest.raises(TypeError, match="pause"):
            w -= 1.0
        with pytest.raises(TypeError, match="pause"):
            w[0] = 1.0
        with dualtape.pause():
            w -= 1.0
    np.testing.assert_array_equal(w.data, [2.0, 2.0])


def test_recorded_inputs_are_copies():
    x = dualtape.attach_grad(np.array([1.0, 2.0]))
    with dualtape.record():
        y = np.sum(x * x)
    x[:] = 10.0
    y.backward()
    np.testing.assert_array_equal(x.grad, [2.0, 4.0])
    a = np.array([1.0, 2.0])
    v = dualtape.attach_grad(a)
    a[0] = 7.0
    assert v.data[0] == 1.0


def test_attached_array_in_a_functional_grad_is_a_constant():
    x = dualtape.attach_grad(np.array([1.0, 2.0, 3.0]))
    g = dualtape.grad(lambda z: np.sum(z * x))
    np.testing.assert_array_equal(g(np.ones(3)), x.data)
    with dualtape.record():
        np.testing.assert_array_equal(g(np.zeros(3)), x.data)
    assert dualtape.derivative(lambda t: np.sum(t * x))(1.0) == 6.0


def test_stop_gradient_in_the_functional_api_and_forward_mode():
    f = dualtape.grad(lambda x: np.sum(x * dualtape.stop_gradient(x)))
    np.testing.assert_array_equal(f(np.array([1.0, 2.0])), [1.0, 2.0])
    np.testing.assert_array_equal(f(np.array([3.0, -1.0])), [3.0, -1.0])   # replayed
    assert f.tapes.records == 1
    assert dualtape.derivative(lambda t: t * dualtape.stop_gradient(t))(3.0) == 3.0
    np.testing.assert_array_equal(dualtape.stop_gradient([1.0, 2.0]), [1.0, 2.0])


def test_clear_errors():
    x = dualtape.attach_grad(np.arange(3.0))
    with dualtape.record():
        y = x * 2
        with pytest.raises(TypeError, match="plain NumPy array"):
            np.asarray(y)
    with pytest.raises(AttributeError, match="attach_grad"):
        y.grad
    with pytest.raises(TypeError, match="u = dualtape.attach_grad"):
        y.attach_grad()
    with pytest.raises(TypeError, match="attach_grad of a Dual"):
        dualtape.attach_grad(dualtape.Dual(np.ones(2), np.ones((2, 1))))
    with pytest.raises(TypeError, match="complex"):
        dualtape.attach_grad(np.ones(2) * 1j)


def test_docstring_examples():
    for mod in (imperative, dualtape.testing):
        res = doctest.testmod(mod, extraglobs={"np": np, "dualtape": dualtape},
                              optionflags=doctest.NORMALIZE_WHITESPACE)
        assert res.failed == 0


def test_several_arrays_first_used_at_different_points():
    """Input slots made between instruction results: the program moves them to the front."""
    a0, b0, c0 = np.array([0.3, 0.9]), np.array([[1.2, -0.4], [0.5, 2.0]]), np.array(0.7)

    def f(a, b, c):
        h = np.tanh(a * 3.0)
        k = np.concatenate([h, b @ h])
        return np.sum(k * c) + np.sum(np.exp(b) * c)

    a, b, c = (dualtape.attach_grad(v) for v in (a0, b0, c0))
    with dualtape.record():
        h = np.tanh(a * 3.0)          # b and c get their slots after these results
        k = np.concatenate([h, b @ h])
        y = np.sum(k * c) + np.sum(np.exp(b) * c)
    y.backward()
    for v, g in ((a, lambda t: f(t, b0, c0)), (b, lambda t: f(a0, t, c0)),
                 (c, lambda t: f(a0, b0, t))):
        np.testing.assert_allclose(v.grad, dualtape.numerical_diff(g, v.data, 1e-6),
                                   rtol=1e-8, atol=1e-9)


def test_layout_moves_the_given_slots_to_the_front():
    """Layout.map against a brute-force permutation of the work slots."""
    rng = np.random.default_rng(3)
    for _ in range(50):
        nwork = int(rng.integers(1, 40))
        cuts = np.sort(rng.choice(np.arange(1, nwork), size=min(nwork - 1, 6), replace=False))
        pieces = [(int(a), int(b - a)) for a, b in zip(np.r_[0, cuts], np.r_[cuts, nwork])]
        chosen = [pieces[i] for i in rng.permutation(len(pieces))[:rng.integers(0, 4)]]
        order = [p for off, ln in chosen for p in range(off, off + ln)]
        rest = [p for p in range(nwork) if p not in set(order)]
        expected = np.empty(nwork + 5, dtype=np.int64)
        expected[np.array(order + rest, dtype=np.int64)] = np.arange(nwork)
        expected[nwork:] = np.arange(nwork, nwork + 5)      # constants stay
        layout = imperative.Layout(chosen, nwork)
        np.testing.assert_array_equal(layout.map(np.arange(nwork + 5)), expected)
