"""Property tests: random compositions of primitives and shape steps on random arrays.

A program is an expression tree over ``x`` (unary and binary elementwise primitives,
shape-preserving rearrangements of ``x`` at the leaves) followed by a few shape steps
(sum, mean, reshape, transpose, slices, broadcasting against a reduction). For each
program and input:

* forward mode (Dual numbers) and reverse mode (a recorded tape) give the same Jacobian;
* both agree with central differences;
* a tape recorded at one point and replayed at a second point gives the same values and
  Jacobian as a tape recorded afresh at the second point.

Inputs at which the program is not differentiable (an ``abs`` argument or a ``maximum``
tie within 1e-3, ``hypot`` near the origin) or overflows are rejected with ``assume``.
"""
import numpy as np
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import dualtape
from dualtape.api import forward_jacobian
from fixtures import central_jacobian

KINK_MARGIN = 1e-3
MAX_VALUE = 1e4


# ---------------------------------------------------------------------------- programs

UNARY = {
    "exp": np.exp,
    "sin": np.sin,
    "cos": np.cos,
    "tanh": np.tanh,
    "arctan": np.arctan,
    "square": np.square,
    "pow2": lambda a: a ** 2,
    "sqrt_abs1": lambda a: np.sqrt(np.abs(a) + 1.0),
    "log1p_abs": lambda a: np.log1p(np.abs(a)),
}
ABS_BASED = {"sqrt_abs1", "log1p_abs"}

BINARY = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: np.subtract(a, b),
    "mul": lambda a, b: a * b,
    "div": lambda a, b: a / (1.0 + np.square(b)),
    "maximum": np.maximum,
    "hypot": np.hypot,
}

LEAVES = {
    "x": lambda x: x,
    "flip": lambda x: np.flip(x),
    "roll": lambda x: np.roll(x, 1),
    "neg_step": lambda x: x[::-1] if np.ndim(x) else x,
}

leaf = st.tuples(st.just("leaf"), st.sampled_from(sorted(LEAVES)))
small = st.floats(-2.0, 2.0, allow_nan=False, allow_infinity=False, allow_subnormal=False)


def trees(depth):
    if depth == 0:
        return leaf
    sub = trees(depth - 1)
    return st.one_of(
        leaf,
        st.tuples(st.just("unary"), st.sampled_from(sorted(UNARY)), sub),
        st.tuples(st.just("binary"), st.sampled_from(sorted(BINARY)), sub, sub),
        st.tuples(st.just("const"), st.sampled_from(["add", "mul", "rsub", "rdiv"]), small,
                  sub),
    )


STEP = st.one_of(
    st.tuples(st.just("sum"), st.integers(-3, 3)),
    st.tuples(st.just("sum_all")),
    st.tuples(st.just("mean"), st.integers(-3, 3)),
    st.tuples(st.just("mean_keep"), st.integers(-3, 3)),
    st.tuples(st.just("reshape")),
    st.tuples(st.just("reshape_F")),
    st.tuples(st.just("transpose")),
    st.tuples(st.just("slice"), st.integers(0, 3), st.sampled_from([1, 2, 3, -1, -2])),
    st.tuples(st.just("slice_last"), st.integers(0, 3), st.sampled_from([1, 2, -1])),
    st.tuples(st.just("normalize"), st.integers(-3, 3)),
    st.tuples(st.just("unary"), st.sampled_from(sorted(UNARY))),
)

programs = st.tuples(trees(3), st.lists(STEP, max_size=3).map(tuple))


def _margin(monitor, values):
    if monitor is not None and np.size(values):
        monitor.append(float(np.min(values)))


def ev(node, x, monitor=None):
    kind = node[0]
    if kind == "leaf":
        return LEAVES[node[1]](x)
    if kind == "unary":
        a = ev(node[2], x, monitor)
        if node[1] in ABS_BASED:
            _margin(monitor, np.abs(a))
        return UNARY[node[1]](a)
    if kind == "binary":
        a, b = ev(node[2], x, monitor), ev(node[3], x, monitor)
        if node[1] == "maximum" and node[2] != node[3]:
            _margin(monitor, np.abs(np.subtract(a, b)))
        if node[1] == "hypot":
            _margin(monitor, np.hypot(a, b))
        return BINARY[node[1]](a, b)
    if kind == "const":
        op, c, a = node[1], node[2], ev(node[3], x, monitor)
        if op == "add":
            return a + c
        if op == "mul":
            return c * a
        if op == "rsub":
            return c - a
        return c / (1.0 + a * a)
    raise ValueError(node)


def apply_step(step, y, monitor=None):
    kind, nd = step[0], np.ndim(y)
    if kind == "sum":
        return np.sum(y, axis=step[1] % nd) if nd else y
    if kind == "sum_all":
        return y.sum()
    if kind == "mean":
        return np.mean(y, axis=step[1] % nd) if nd else y
    if kind == "mean_keep":
        return y.mean(axis=step[1] % nd, keepdims=True) if nd else y
    if kind == "reshape":
        size = int(np.size(y))
        return y.reshape(2, -1) if size % 2 == 0 and size > 0 else np.reshape(y, -1)
    if kind == "reshape_F":
        size = int(np.size(y))
        return np.reshape(y, (-1, 2) if size % 2 == 0 and size else (size,), order="F")
    if kind == "transpose":
        return y.T
    if kind == "slice":
        if not nd:
            return y
        n = np.shape(y)[0]
        start, step_ = step[1] % n, step[2]
        return y[start::step_]
    if kind == "slice_last":
        if not nd:
            return y
        n = np.shape(y)[-1]
        return y[..., step[1] % n::step[2]]
    if kind == "normalize":
        if not nd:
            return y / (1.0 + y * y)
        s = np.sum(y, axis=step[1] % nd, keepdims=True)
        return y / (1.0 + np.square(s))
    if kind == "unary":
        if step[1] in ABS_BASED:
            _margin(monitor, np.abs(y))
        return UNARY[step[1]](y)
    raise ValueError(step)


def run(program, x, monitor=None):
    tree, steps = program
    y = ev(tree, x, monitor)
    for step in steps:
        y = apply_step(step, y, monitor)
    return y


def make_f(program):
    def f(x):
        return run(program, x)
    f.__name__ = "program"
    return f


# ---------------------------------------------------------------------------- inputs

shapes = st.one_of(
    st.tuples(st.integers(1, 4)),
    st.tuples(st.integers(1, 3), st.integers(1, 4)),
)


@st.composite
def points(draw, shape):
    raw = draw(arrays(np.float64, shape, elements=small))
    # a fixed, distinct jitter per element keeps hypothesis' favourite inputs (all zeros,
    # all equal) away from the kinks without changing the distribution much
    jitter = 0.0137 * (1.0 + np.arange(raw.size)).reshape(shape) * np.sqrt(2.0)
    return raw + jitter


@st.composite
def cases(draw, shape_strategy=shapes):
    program = draw(programs)
    shape = draw(shape_strategy)
    return program, draw(points(shape)), draw(points(shape))


def usable(program, x):
    """Finite, moderate values away from every kink (and so differentiable at x)."""
    monitor = []
    with np.errstate(all="ignore"):
        y = np.asarray(run(program, x, monitor), dtype=float)
    return (np.all(np.isfinite(y)) and np.all(np.abs(y) < MAX_VALUE)
            and all(m > KINK_MARGIN for m in monitor))


def scale_of(*arrs):
    return max([1.0] + [float(np.max(np.abs(a))) for a in arrs if np.size(a)])


SETTINGS = settings(max_examples=250, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


# ---------------------------------------------------------------------------- properties

@SETTINGS
@given(cases())
def test_forward_equals_reverse(case):
    program, x, _ = case
    assume(usable(program, x))
    f = make_f(program)
    value, fwd = forward_jacobian(f, x)
    expected_value = np.asarray(f(x), dtype=float)
    np.testing.assert_allclose(value, expected_value, rtol=1e-13, atol=1e-13)
    rev = dualtape.jacobian(f, mode="reverse", cache=False)(x)
    assert fwd.shape == expected_value.shape + x.shape
    assert rev.shape == fwd.shape
    np.testing.assert_allclose(fwd, rev, rtol=1e-10, atol=1e-10 * scale_of(fwd))
    # the tape's own value at x is NumPy's value
    tp = dualtape.tape(f, x)
    np.testing.assert_allclose(tp(x), expected_value, rtol=1e-13, atol=1e-13)


@SETTINGS
@given(cases())
def test_both_modes_match_central_differences(case):
    program, x, _ = case
    assume(usable(program, x))
    f = make_f(program)
    fd = central_jacobian(f, x)
    fwd = dualtape.jacobian(f, mode="forward")(x)
    rev = dualtape.tape(f, x).jacobian(x)
    tol = 1e-5 * scale_of(fd, fwd)
    np.testing.assert_allclose(fwd, fd, rtol=1e-5, atol=tol)
    np.testing.assert_allclose(rev, fd, rtol=1e-5, atol=tol)


@SETTINGS
@given(cases())
def test_replay_at_second_point_equals_fresh_recording(case):
    program, x1, x2 = case
    # the recording point may be anywhere (even at a kink): the tape must not depend on it
    with np.errstate(all="ignore"):
        assume(np.all(np.isfinite(run(program, x1))))
    assume(usable(program, x2))
    f = make_f(program)
    with np.errstate(all="ignore"):
        tp = dualtape.tape(f, x1)
    fresh = dualtape.tape(f, x2)
    np.testing.assert_allclose(tp(x2), np.asarray(f(x2), dtype=float), rtol=1e-13,
                               atol=1e-13)
    np.testing.assert_allclose(tp(x2), fresh(x2), rtol=1e-14, atol=1e-14)
    J_replay = tp.jacobian(x2)
    np.testing.assert_allclose(J_replay, fresh.jacobian(x2), rtol=1e-13,
                               atol=1e-13 * scale_of(J_replay))
    # and the replayed Jacobian is the forward-mode one at x2
    np.testing.assert_allclose(J_replay, dualtape.jacobian(f, mode="forward")(x2),
                               rtol=1e-10, atol=1e-10 * scale_of(J_replay))
    # a cached reverse jacobian replays the first recording at later points
    jac = dualtape.jacobian(f, mode="reverse")
    with np.errstate(all="ignore"):
        jac(x1)
    np.testing.assert_allclose(jac(x2), J_replay, rtol=1e-13, atol=1e-13 * scale_of(J_replay))
    assert jac.tapes.records == 1


@SETTINGS
@given(cases(), st.integers(0, 2 ** 32 - 1))
def test_jvp_and_vjp_agree(case, seed):
    """u . (J v) from forward mode equals (u J) . v from reverse mode."""
    program, x, _ = case
    assume(usable(program, x))
    f = make_f(program)
    rng = np.random.default_rng(seed)
    v = rng.standard_normal(np.shape(x))
    y, Jv = dualtape.jvp(f, x, v)
    u = rng.standard_normal(np.shape(y))
    y2, back = dualtape.vjp(f, x)
    uJ = back(u)
    np.testing.assert_allclose(y2, y, rtol=1e-13, atol=1e-13)
    lhs, rhs = float(np.sum(u * Jv)), float(np.sum(uJ * v))
    np.testing.assert_allclose(lhs, rhs, rtol=1e-10,
                               atol=1e-10 * scale_of(Jv, uJ) * (1 + np.size(x) + np.size(y)))


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(cases(st.just(())))
def test_scalar_input(case):
    """A 0-d input: every mode keeps NumPy's shapes (value (), Jacobian out.shape)."""
    program, x, x2 = case
    assume(usable(program, x) and usable(program, x2))
    f = make_f(program)
    expected_value = np.asarray(f(x), dtype=float)
    fd = central_jacobian(f, x)
    fwd = dualtape.jacobian(f, mode="forward")(x)
    assert fwd.shape == expected_value.shape
    np.testing.assert_allclose(fwd, fd, rtol=1e-5, atol=1e-5 * scale_of(fd))
    tp = dualtape.tape(f, x)
    assert np.shape(tp(x)) == expected_value.shape
    rev = tp.jacobian(x)
    assert rev.shape == fwd.shape
    np.testing.assert_allclose(rev, fwd, rtol=1e-10, atol=1e-10 * scale_of(fwd))
    np.testing.assert_allclose(tp.jacobian(x2), dualtape.tape(f, x2).jacobian(x2),
                               rtol=1e-13, atol=1e-13)
