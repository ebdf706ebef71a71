"""In-place updates (``x[key] = v``, ``x += v``) in every mode and on replay.

Each function below is ordinary NumPy code that fills or modifies arrays in place; it runs
unchanged on plain arrays, which gives the reference values and the central differences.
For each one the tape (reverse and forward sweeps, several VJP seeds after one forward
sweep, replay of one cached ``grad`` / ``jacobian`` at new points), Dual numbers and, for
scalar functions, the forward-over-reverse Hessian must agree with each other, with
central differences and, where there is one, with an analytic formula.
"""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dualtape
from dualtape.api import forward_jacobian
from fixtures import central_jacobian

RTOL = ATOL = 1e-6          # against central differences
EXACT = 1e-12               # between modes


def check_modes(f, x, hessian=True):
    """All modes agree with each other and with central differences at x; x unchanged."""
    x = np.asarray(x, dtype=float)
    keep = x.copy()
    expected = np.asarray(f(x.copy()), dtype=float)
    fd = central_jacobian(lambda z: f(z.copy()), x)     # f may write into its input
    rev = dualtape.jacobian(f, mode="reverse")(x)
    fwd = dualtape.jacobian(f, mode="forward")(x)
    value, dual = forward_jacobian(f, x)
    np.testing.assert_allclose(rev, fd, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(fwd, rev, rtol=EXACT, atol=EXACT)
    np.testing.assert_allclose(dual, rev, rtol=EXACT, atol=EXACT)
    np.testing.assert_allclose(value, expected, rtol=EXACT, atol=EXACT)
    np.testing.assert_allclose(dualtape.tape(f, x)(x), expected, rtol=EXACT, atol=EXACT)

    # several reverse sweeps after one forward sweep
    y, vjp_fn = dualtape.vjp(f, x)
    np.testing.assert_allclose(y, expected, rtol=EXACT, atol=EXACT)
    seeds = np.random.default_rng(0).normal(size=(3,) + expected.shape)
    J2 = rev.reshape(expected.size, x.size)
    for v in seeds:
        np.testing.assert_allclose(vjp_fn(v).reshape(-1), v.reshape(-1) @ J2,
                                   rtol=EXACT, atol=EXACT)
    np.testing.assert_allclose(vjp_fn(seeds).reshape(3, -1), seeds.reshape(3, -1) @ J2,
                               rtol=EXACT, atol=EXACT)

    if expected.size == 1 and expected.ndim == 0:
        g = dualtape.grad(f)(x)
        np.testing.assert_allclose(g, rev, rtol=EXACT, atol=EXACT)
        if hessian:
            H = dualtape.hessian(f)(x)
            H_fd = central_jacobian(lambda z: forward_jacobian(f, z)[1], x)
            np.testing.assert_allclose(H, H_fd, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(x, keep)    # no mode modified the caller's array
    return rev


def check_replay(f, points, records=None):
    """One cached reverse Jacobian replayed at each point equals a fresh recording and
    central differences; ``records`` is the expected number of recordings."""
    jac = dualtape.jacobian(f, mode="reverse")
    for p in points:
        p = np.asarray(p, dtype=float)
        J = jac(p)
        np.testing.assert_allclose(J, dualtape.tape(f, p).jacobian(p), rtol=EXACT, atol=EXACT)
        np.testing.assert_allclose(J, central_jacobian(lambda z: f(z.copy()), p), rtol=RTOL,
                                   atol=ATOL)
    if records is not None:
        assert jac.tapes.records == records
    return jac


# ---------------------------------------------------------------------------- keys

def keys_1d(x):
    b = np.zeros_like(x)
    b[0] = x[1] * x[2]                  # integer
    b[-1] = np.sin(x[0])                # negative integer
    b[1:5:2] = x[2:4] ** 2              # slice with a step
    b[4:0:-3] = x[:2] + 1.0             # negative step
    b[[2, 2, 3]] = x[[0, 1, 5]]         # integer array, repeated: the last write wins
    b[[0, 0]] += x[3]                   # repeated index: adds once
    b[np.array([False, True, False, False, True, False])] += 0.5 * x[4]   # constant mask
    return b * x + np.cos(b)


X6 = np.array([0.3, -0.7, 1.1, 0.45, -1.3, 0.8])


def test_keys_1d():
    check_modes(keys_1d, X6)


def test_keys_1d_replay():
    check_replay(keys_1d, [X6, X6[::-1] * 1.3, X6 + 0.2], records=1)


def test_repeated_index_adds_once():
    def f(x):
        c = x.copy()
        c[[0, 0]] += x[1]
        return c
    x = np.array([1.0, 2.0, 3.0])
    expected = np.eye(3)
    expected[0, 1] = 1.0
    np.testing.assert_allclose(check_modes(f, x), expected, rtol=EXACT, atol=EXACT)
    np.testing.assert_allclose(dualtape.tape(f, x)(x), [3.0, 2.0, 3.0])


def test_repeated_index_last_write_wins():
    def f(x):
        c = np.zeros_like(x)
        c[[0, 0]] = [x[1], x[2]]
        c[[1, 1]] = x[1:3] * 2.0
        return c
    x = np.array([1.0, 2.0, 3.0])
    expected = np.zeros((3, 3))
    expected[0, 2] = 1.0
    expected[1, 2] = 2.0
    np.testing.assert_allclose(check_modes(f, x), expected, rtol=EXACT, atol=EXACT)
    np.testing.assert_allclose(dualtape.tape(f, x)(x), [3.0, 6.0, 0.0])


# ---------------------------------------------------------------------------- masks and indices

def relu_masks(x):
    y = x.copy()
    y[y < 0] = 0.0                               # traced mask, constant value
    y[y > 1] = np.sqrt(y[y > 1]) * x[0]          # traced mask, traced values
    y[np.array([True, False] * 3)] *= 2.0        # constant mask, augmented
    return y * x + y


def test_traced_mask():
    check_modes(relu_masks, X6)


def test_traced_mask_replay_recomputes_positions_and_guards_count():
    # same counts (2 negatives, 1 above one) at other positions: replayed, not re-recorded
    same = np.array([-0.3, 0.7, 0.2, 1.45, 0.5, -0.8])
    jac = check_replay(relu_masks, [X6, same], records=1)
    # another count: the guard flips and grad/jacobian record again
    other = np.array([0.3, 0.7, -0.2, -0.45, -1.3, 0.8])
    check_replay(relu_masks, [X6, same, other], records=2)
    assert jac.tapes.records == 1
    g = dualtape.grad(relu_loss)
    for p in (X6, same, other, same):
        np.testing.assert_allclose(g(p), forward_jacobian(relu_loss, p)[1], rtol=EXACT,
                                   atol=EXACT)
        np.testing.assert_allclose(g(p), central_jacobian(relu_loss, p), rtol=RTOL,
                                   atol=ATOL)
    assert g.tapes.records == 2


def relu_loss(x):
    return np.sum(relu_masks(x) ** 2 * x)


def test_traced_mask_scalar_hessian():
    check_modes(relu_loss, X6)


def argmax_write(x):
    buf = np.zeros_like(x)
    buf[np.argmax(x)] = x[0] ** 2 + x[1]
    buf[np.argmin(x)] += np.sum(x * x)
    buf[np.argmax(x * np.arange(6.0))] *= np.cos(x[2])
    return np.sum(buf * np.sin(x)) + np.sum(buf ** 2)


def test_traced_index():
    check_modes(argmax_write, X6)


def test_traced_index_replay():
    points = [X6, X6[::-1], np.roll(X6, 2) * 0.9, X6 - 2.0]
    check_replay(argmax_write, points, records=1)
    g = dualtape.grad(argmax_write)
    for p in points:
        np.testing.assert_allclose(g(p), forward_jacobian(argmax_write, p)[1], rtol=EXACT,
                                   atol=EXACT)
    assert g.tapes.records == 1


# ---------------------------------------------------------------------------- several axes

def fill_2d(x):
    J = np.zeros_like(x, shape=(3, 3))
    for i in range(3):
        for j in range(3):
            J[i, j] = x[i] * x[j] + i - j
    J[1] = np.sin(x)                    # a row
    J[:, 0] = np.cos(x) * x[2]          # a column
    J[0, 1:] += x[1:]                   # part of a row, augmented
    J[[0, 2], [2, 0]] = x[:2] ** 3      # pairs of indices
    J[np.eye(3, dtype=bool)] -= 1.0     # constant 2-D mask
    K = np.ones_like(x, shape=(2, 3))
    K[1] = np.full_like(x, 2.0) * x
    E = np.empty_like(J)
    E[...] = J.T @ J
    F = np.full_like(x, 0.5, shape=(2,))
    F[1] *= x[0]
    return np.concatenate([J @ x, K.ravel(), E[1], F])


def test_multidimensional_keys_and_buffers():
    check_modes(fill_2d, X6[:3])


# ---------------------------------------------------------------------------- augmented

def augmented(x):
    y = np.copy(x)
    y += 1.0
    y *= x
    y -= 0.5 * x[0]
    y /= 1.0 + x ** 2
    y **= 2
    y[1:-1] += y[2:] * x[:-2]           # reads what it overwrites
    y[:3] **= 1.5
    y[2:4] /= x[2:4] + 3.0
    y[-2:] -= np.exp(x[:2])
    return y


def test_augmented_assignment():
    check_modes(augmented, X6)


def test_augmented_scalar_hessian():
    check_modes(lambda x: np.sum(augmented(x) * x), X6)


def test_augmented_on_unaliased_array_rebinds_without_a_copy():
    def inplace(x):
        y = x * 2.0
        y += x
        y *= x
        return y

    def functional(x):
        y = x * 2.0
        y = y + x
        y = y * x
        return y
    assert len(dualtape.tape(inplace, X6)) == len(dualtape.tape(functional, X6))


def test_augmented_assignment_reaches_views():
    def f(x):
        y = x.copy()
        v = y[1:4]
        y *= 2.0              # y is aliased: a write into the shared memory
        v += x[:3]            # and through the view into y
        return np.concatenate([y, v])
    check_modes(f, X6)


def test_augmented_on_strided_slice():
    def f(x):
        b = x.copy()
        b[::2] *= x[1::2]
        b[:, None][::3] += 1.0
        return b
    check_modes(f, X6)


# ---------------------------------------------------------------------------- ODE, recurrence

def rhs_inplace(y, alpha=0.1):
    """Lotka-Volterra chain with diffusion, filled element by element."""
    n = y.shape[0]
    dy = np.empty_like(y)
    dy[0] = y[0] * (1.0 - y[1])
    for i in range(1, n - 1):
        dy[i] = y[i] * (y[i - 1] - y[i + 1])
    dy[n - 1] = y[n - 1] * (y[n - 2] - 1.0)
    dy[1:-1] += alpha * (y[:-2] - 2.0 * y[1:-1] + y[2:])
    return dy


def rhs_vectorized(y, alpha=0.1):
    lap = np.concatenate([[0.0], y[:-2] - 2.0 * y[1:-1] + y[2:], [0.0]])
    return y * np.concatenate([[1.0 - y[1]], y[:-2] - y[2:], [y[-2] - 1.0]]) + alpha * lap


Y7 = np.linspace(0.4, 1.6, 7)


def test_ode_rhs():
    J = check_modes(rhs_inplace, Y7)
    np.testing.assert_allclose(rhs_inplace(Y7), rhs_vectorized(Y7), rtol=1e-14)
    np.testing.assert_allclose(J, dualtape.jacobian(rhs_vectorized)(Y7), rtol=EXACT,
                               atol=EXACT)


def test_ode_rhs_replay():
    check_replay(rhs_inplace, [Y7, Y7[::-1] * 1.5, Y7 - 1.0], records=1)


def recurrence(x, c=0.9):
    out = np.zeros_like(x)
    out[0] = x[0]
    for i in range(1, x.shape[0]):
        out[i] = out[i - 1] * c + x[i]
    return out


def test_recurrence_matches_analytic_jacobian():
    n = 8
    i, j = np.indices((n, n))
    expected = np.where(j <= i, 0.9 ** (i - j).astype(float), 0.0)
    J = check_modes(recurrence, np.linspace(-1, 1, n))
    np.testing.assert_allclose(J, expected, rtol=EXACT, atol=EXACT)


def test_recurrence_scalar_hessian():
    check_modes(lambda x: np.sum(np.sin(recurrence(x)) * x), np.linspace(-1, 1, 6))


def test_recurrence_tape_grows_linearly():
    lengths = [len(dualtape.tape(recurrence, np.ones(n))) for n in (50, 100, 200)]
    assert lengths[2] - lengths[1] == 2 * (lengths[1] - lengths[0])
    assert lengths[1] - lengths[0] <= 4 * 50     # a few instructions per update
    sizes = [dualtape.tape(recurrence, np.ones(n)).nbytes for n in (50, 100, 200)]
    assert sizes[2] - sizes[1] == 2 * (sizes[1] - sizes[0])


# ---------------------------------------------------------------------------- aliasing

def writes_input(x):
    x[0] = x[1] * 2.0
    x[1:] *= 3.0
    x += 1.0
    return x * x[0]


def test_writing_into_the_input_leaves_the_caller_array():
    x = X6.copy()
    check_modes(writes_input, x)          # checks x is unchanged after every mode
    check_replay(writes_input, [x, x * 2.0], records=1)
    np.testing.assert_array_equal(x, X6)


def shift(x):
    y = x.copy()
    y[1:] = y[:-1]            # overlapping: NumPy copies first
    y[:-2] = y[2:] * x[:-2]
    x[1:] = x[:-1]            # into the input
    return y + x


def test_overlapping_writes():
    J = check_modes(shift, X6)
    x = X6
    y = np.concatenate([[x[0]], x[:-1]])
    y[:-2] = y[2:] * x[:-2]
    np.testing.assert_allclose(shift(X6.copy()), y + np.concatenate([[x[0]], x[:-1]]))
    assert J.shape == (6, 6)


def contiguous_views(x):
    buf = np.zeros_like(x)
    v = buf[1:3]
    v[0] = x[0] * 5.0          # reaches buf[1]
    buf[2] = x[1] ** 2         # seen by v[1]
    m = buf.reshape(2, 3)
    m[1, 0] = np.sin(x[2])     # buf[3]
    row = m[1]
    row += x[3:]               # buf[3:] through a row view
    r = buf[4]
    return np.concatenate([buf, v * 2.0, m[0], np.atleast_1d(r) * x[5]])


def test_writes_through_contiguous_views():
    check_modes(contiguous_views, X6)
    check_replay(contiguous_views, [X6, X6 * 1.7], records=1)


def empty_views(x):
    b = x.copy()
    b[:0] += 1.0
    v = b[1:1]
    v[...] = 2.0
    b[3:3] = x[:0]
    return b


def test_write_into_an_empty_view():
    check_modes(empty_views, X6[:3])


# ---------------------------------------------------------------------------- errors

def stale_transpose(x):
    M = np.zeros_like(x, shape=(2, 2))
    t = M.T
    M[0, 1] = x[0]
    return t + 1.0


def stale_strided(x):
    buf = x.copy()
    s = buf[::2]
    buf[0] = x[1]
    return np.sum(s)


def stale_column(x):
    M = np.ones_like(x, shape=(2, 3))
    c = M[:, 1]
    M[1, 1] = x[0]
    return c * x[0]


def write_into_strided(x):
    buf = x.copy()
    s = buf[::2]
    s[0] = x[1]
    return buf


def write_into_transpose(x):
    M = np.zeros_like(x, shape=(2, 3))
    M.T[0, 1] = x[0]
    return M


RUNNERS = {
    "tape": lambda f, x: dualtape.tape(f, x),
    "grad": lambda f, x: dualtape.jacobian(f)(x),
    "dual": lambda f, x: forward_jacobian(f, x),
}


@pytest.mark.parametrize("mode", sorted(RUNNERS))
@pytest.mark.parametrize("f", [stale_transpose, stale_strided, stale_column],
                         ids=lambda f: f.__name__)
def test_stale_view_raises(f, mode):
    with pytest.raises(ValueError, match="modified in place"):
        RUNNERS[mode](f, X6[:4])


@pytest.mark.parametrize("mode", sorted(RUNNERS))
@pytest.mark.parametrize("f", [write_into_strided, write_into_transpose],
                         ids=lambda f: f.__name__)
def test_write_into_view_raises(f, mode):
    with pytest.raises(NotImplementedError, match="view"):
        RUNNERS[mode](f, X6[:4])


def test_view_taken_before_a_write_but_used_only_before_it_is_fine():
    def f(x):
        M = np.zeros_like(x, shape=(2, 2))
        M[0] = x[:2]
        early = M.T * 2.0          # used before the write
        M[1, 0] = x[2]
        late = M[:, 0]             # taken after the write
        return np.concatenate([early.ravel(), late, M.ravel()])
    check_modes(f, X6[:3])


def plain_buffer(x):
    b = np.zeros(x.shape[0])
    b[:2] = x[:2]
    return b


def plain_element(x):
    b = np.zeros(x.shape[0])
    b[0] = x[0]
    return b


def plain_augmented(x):
    b = np.zeros(x.shape[0])
    b += x
    return b


@pytest.mark.parametrize("mode", sorted(RUNNERS))
@pytest.mark.parametrize("f", [
    plain_buffer, plain_augmented, plain_element],
    ids=lambda f: f.__name__)
def test_writing_into_a_plain_array_raises(f, mode):
    with pytest.raises(TypeError, match=r"np\.zeros_like") as info:
        RUNNERS[mode](f, X6[:3])
    assert "np.empty_like" in str(info.value)


# ---------------------------------------------------------------------------- nested forward

def scalar_buffer(s):
    buf = np.zeros_like(s, shape=(3,))
    buf[0] = s
    buf[1] = s * s
    buf[2] = buf[0] * buf[1]        # s**3
    buf[[0, 0]] += 1.0              # s + 1
    return np.sum(buf)              # 1 + s + s**2 + s**3


def test_nested_derivative_through_a_buffer():
    for s in (-0.7, 0.0, 1.3):
        assert dualtape.derivative(scalar_buffer)(s) == pytest.approx(1 + 2 * s + 3 * s * s)
        assert dualtape.derivative(dualtape.derivative(scalar_buffer))(s) == \
            pytest.approx(2 + 6 * s)
    H = dualtape.hessian(lambda x: scalar_buffer(x[0]) * x[1])(np.array([1.3, 2.0]))
    np.testing.assert_allclose(H, [[(2 + 6 * 1.3) * 2.0, 1 + 2 * 1.3 + 3 * 1.3 ** 2],
                                   [1 + 2 * 1.3 + 3 * 1.3 ** 2, 0.0]], rtol=EXACT)


# ---------------------------------------------------------------------------- random programs

N = 5
# inputs: distinct values 0.1 apart, so that the masks x > x[k] + 0.05 and the argmax are
# far from their switching points at the central-difference steps
POOL = np.round(np.linspace(-1.5, 1.5, 31), 10)

KEYS = st.one_of(
    st.integers(-N, N - 1),
    st.builds(slice, st.integers(-N, N - 1) | st.none(), st.integers(-N, N) | st.none(),
              st.sampled_from([None, 1, 2, -1, -2, 3])),
    st.lists(st.integers(-N, N - 1), min_size=1, max_size=6),
    st.lists(st.booleans(), min_size=N, max_size=N).map(np.array),
    st.just("traced_mask"),
    st.just("argmax"),
)
KINDS = ["set", "set_scalar", "add", "mul", "imul", "sub", "map"]
STEP = st.tuples(st.sampled_from(KINDS), KEYS, st.integers(0, N - 1),
                 st.sampled_from([np.sin, np.tanh, np.exp, np.cos]))


def make_program(init, steps):
    def f(x):
        b = np.zeros_like(x) if init == "zeros" else x.copy()
        for kind, key, k, u in steps:
            if kind == "map":
                b = u(b) * x[k] + b
                continue
            if isinstance(key, str):
                key = (x > x[k] + 0.05) if key == "traced_mask" \
                    else np.argmax(x * np.cos(x[k]))
            if isinstance(key, list):
                key = np.array(key)
            if kind == "set_scalar":
                b[key] = u(x[k])
                continue
            target = b[key]
            v = u(x * 0.5 + target.sum() * 0.1)[k]
            if kind == "set":
                b[key] = u(target) + v
            elif kind == "add":
                b[key] += v * x[k]
            elif kind == "sub":
                b[key] = target - u(target)          # the view form, strided keys included
            elif kind == "mul":
                b[key] = target * (0.5 + 0.1 * v)
            else:
                b[key] *= 0.5 + 0.1 * v
        return b * x + b
    return f


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(init=st.sampled_from(["zeros", "copy"]), steps=st.lists(STEP, min_size=1, max_size=5),
       idx=st.lists(st.integers(0, len(POOL) - 1), min_size=N, max_size=N, unique=True))
def test_random_programs(init, steps, idx):
    f = make_program(init, steps)
    x = POOL[np.array(idx)]
    x = x + 0.0
    expected = f(x.copy())
    fd = central_jacobian(f, x)
    tp = dualtape.tape(f, x)
    rev = tp.jacobian(x, mode="reverse")
    fwd = tp.jacobian(x, mode="forward")
    value, dual = forward_jacobian(f, x)
    scale = 1.0 + np.abs(fd).max()
    np.testing.assert_allclose(tp(x), expected, rtol=EXACT, atol=EXACT)
    np.testing.assert_allclose(value, expected, rtol=EXACT, atol=EXACT)
    np.testing.assert_allclose(rev, fd, rtol=RTOL, atol=ATOL * scale)
    np.testing.assert_allclose(fwd, rev, rtol=EXACT, atol=EXACT * scale)
    np.testing.assert_allclose(dual, rev, rtol=EXACT, atol=EXACT * scale)
