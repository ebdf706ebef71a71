"""The tape optimiser (``dualtape/optimize.py``): an optimised tape and the raw recording
give the same values and derivatives in every mode, at the recording point and at new
points (guards flipping, in-place updates, data-dependent gathers), on the shared fixtures
and on hypothesis-generated programs; the passes shorten the tapes they should; a saved
optimised tape loads and validates.
"""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dualtape
from dualtape import kernels as K
from dualtape.optimize import optimize
from dualtape.saving import validate
from dualtape.tapes import GuardFlipped
from fixtures import FUNCTIONS, central_jacobian

EXACT = 1e-12


def outcome(fn):
    """fn()'s result, or the type of the exception it raised."""
    try:
        return fn()
    except (GuardFlipped, IndexError) as e:
        return type(e)


def same(a, b):
    if isinstance(a, type) or isinstance(b, type):
        assert a is b, (a, b)
        return
    if isinstance(a, tuple):
        for u, v in zip(a, b):
            same(u, v)
        return
    np.testing.assert_allclose(a, b, rtol=EXACT, atol=EXACT)


def agree(f, x, points=(), hessian=True):
    """The optimised and the raw tape of f at x agree at x and at each point; returns the
    optimised tape."""
    raw = dualtape.tape(f, x, optimize=False)
    opt = dualtape.tape(f, x)
    assert raw.optimized is None and opt.optimized.before == len(raw)
    assert len(opt) == opt.optimized.after <= len(raw)
    validate(opt.prog, opt.consts, opt.nin, opt.nx, opt.out_size)
    scalar = raw.out_size == 1 and raw.out_shape == ()
    rng = np.random.default_rng(1)
    for p in (x,) + tuple(points):
        p = np.asarray(p, dtype=float)
        same(outcome(lambda: raw(p)), outcome(lambda: opt(p)))
        same(outcome(lambda: raw.jacobian(p)), outcome(lambda: opt.jacobian(p)))
        same(outcome(lambda: raw.jacobian(p, mode="forward")),
             outcome(lambda: opt.jacobian(p, mode="forward")))
        v = rng.standard_normal((2,) + raw.out_shape)
        same(outcome(lambda: raw.vjp(p, v)), outcome(lambda: opt.vjp(p, v)))
        if scalar:
            same(outcome(lambda: raw.value_and_gradient(p)),
                 outcome(lambda: opt.value_and_gradient(p)))
            if hessian:
                same(outcome(lambda: raw.hessian(p)), outcome(lambda: opt.hessian(p)))
    return opt


@pytest.mark.parametrize("name,f,x", FUNCTIONS, ids=[t[0] for t in FUNCTIONS])
def test_fixtures_agree(name, f, x):
    opt = agree(f, x, [x * 0.9 + 0.05], hessian=name in ("rosen", "logistic", "mlp"))
    J = opt.jacobian(x)
    np.testing.assert_allclose(J, central_jacobian(f, x), rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------- passes

def clean(x):
    return np.sum(x * x)


def with_dead_branch(x):
    unused = np.exp(x) * np.sin(x) + np.sum(x[::2])
    np.tanh(unused @ x[:unused.size])
    return np.sum(x * x)


def test_dead_branch_records_as_without_it():
    x = np.linspace(-1, 1, 6)
    raw = dualtape.tape(with_dead_branch, x, optimize=False)
    opt = agree(with_dead_branch, x, [x + 0.3])
    assert len(raw) > len(opt) == len(dualtape.tape(clean, x, optimize=False))
    assert opt.optimized.dead == len(raw) - len(opt)
    np.testing.assert_allclose(opt.gradient(x), 2 * x, rtol=EXACT)
    # the value buffer shrinks with the dead results
    assert opt.prog[K.H_TOTAL] == dualtape.tape(clean, x).prog[K.H_TOTAL]


def repeated(x):
    return np.sum(np.sin(x) * np.cos(x) + np.sin(x) * np.cos(x)) + np.sum(np.sin(x))


def test_repeated_subexpressions_merge():
    x = np.linspace(-1, 1, 5)
    opt = agree(repeated, x, [x * 2])
    # sin, cos, mul, add, sum, sum, add: the second sin, cos, mul and sin(x) are merged
    assert opt.optimized.merged == 4 and len(opt) == 7
    g = 2 * np.cos(2 * x) + np.cos(x)
    np.testing.assert_allclose(opt.gradient(x), g, rtol=1e-12, atol=1e-12)


def trivial(x):
    # x + 0.0 is not an identity (-0.0 + 0.0 is +0.0); x + (-0.0) and x - 0.0 are
    y = (x * 1.0 + (-0.0) - 0.0) / 1.0
    y = 1.0 * np.power(y, 1.0) + (-0.0)
    return np.sum(-(-np.power(y, 2.0)))


def test_trivial_algebra():
    x = np.linspace(-1, 1, 5)
    opt = agree(trivial, x, [x - 0.2])
    # all that is left: square, sum
    ops = [int(op) for op in opt.code[:, K.OP]]
    assert ops == [K.SQUARE, K.REDUCE_SUM]
    np.testing.assert_allclose(opt.gradient(x), 2 * x, rtol=EXACT)


def test_output_replaced_by_an_input():
    # every instruction simplified away: the output is the input slot itself
    x = np.array([0.3, -1.2, 2.5])
    opt = agree(lambda z: z * 1.0 - 0.0, x, [x * 2])
    assert len(opt) == 0 and opt.prog[K.H_OUT] == 0
    np.testing.assert_array_equal(opt.jacobian(x), np.eye(3))
    opt = agree(lambda z: z[1] * 1.0, x, [x * 2])
    np.testing.assert_array_equal(opt.gradient(x), [0.0, 1.0, 0.0])
    np.testing.assert_array_equal(opt.hessian(x), np.zeros((3, 3)))


def folding(x):
    one = np.zeros_like(x[0]) + 1.0      # a constant built from recorded instructions
    return np.sum(x * one) + np.sum(x * (one * 3.0))


def test_constant_folding_cascades_into_algebra():
    x = np.linspace(-1, 1, 4)
    opt = agree(folding, x, [x + 1])
    assert opt.optimized.folded == 3        # the fill, + 1.0, * 3.0
    assert opt.optimized.simplified == 1    # then x * 1
    np.testing.assert_allclose(opt.gradient(x), np.full(4, 4.0), rtol=EXACT)


def test_summary_shows_counts():
    opt = dualtape.tape(with_dead_branch, np.ones(4))
    assert f"{opt.optimized.before} -> {len(opt)} instructions" in opt.summary()
    assert "optimised" not in dualtape.tape(clean, np.ones(4), optimize=False).summary()


def test_grad_caches_optimised_tapes():
    g = dualtape.grad(with_dead_branch)
    x = np.linspace(-1, 1, 6)
    np.testing.assert_allclose(g(x), 2 * x, rtol=EXACT)
    (tp,) = next(iter(g.tapes.tapes.values()))
    assert tp.optimized is not None and len(tp) == 2


def test_unknown_opcode_leaves_the_tape_as_recorded():
    tp = dualtape.tape(with_dead_branch, np.ones(4), optimize=False)
    prog = tp.prog.copy()
    prog[int(prog[K.H_CODE]) + K.OP] = 250          # an opcode this optimiser never saw
    out, consts, stats = optimize(prog, tp.consts)
    assert out is prog and consts is tp.consts and "unknown opcode 250" in repr(stats)


# ---------------------------------------------------------------------------- replay

def branchy(x):
    s = np.sum(x)
    if s > 0:
        return np.sum(x ** 3) + np.sum(x ** 3) * 0.0
    return np.sum(np.sin(x) * 1.0)


def test_guards_flip_the_same_way():
    x = np.array([0.5, 0.2, -0.1])
    agree(branchy, x, [x * 2, -x, x - 0.3])
    g = dualtape.grad(branchy)
    for p in (x, -x, x):
        want = 3 * p ** 2 if p.sum() > 0 else np.cos(p)
        np.testing.assert_allclose(g(p), want, rtol=EXACT)


def inplace(x):
    b = np.zeros_like(x)
    b[0] = x[1] * 2.0
    before = np.sum(b * 1.0)          # reads the buffer between two writes: not merged
    b[1:] += x[:-1] ** 2
    after = np.sum(b * 1.0)
    dead = np.zeros_like(x)
    dead[1] = x[0]                    # a write into a buffer nothing reads
    return after + before * 3.0 + np.sum(x[:-1] ** 2)


def test_inplace_updates():
    x = np.array([0.3, -1.2, 2.5, 0.7])
    opt = agree(inplace, x, [x[::-1] * 1.3])
    raw = dualtape.tape(inplace, x, optimize=False)
    assert sum(opt.code[:, K.OP] == K.SCATTER) == 2 < sum(raw.code[:, K.OP] == K.SCATTER)
    # the reads of b around its write stay two, x[:-1] ** 2 is computed once
    assert opt.optimized.merged == 1
    np.testing.assert_allclose(opt.jacobian(x), central_jacobian(inplace, x), rtol=1e-6,
                               atol=1e-6)


def dynamic(x):
    i = np.argmax(x)
    y = x[x > 0]
    unused = x[np.argmin(x)]           # a dead dynamic gather: kept for its bounds check
    return x[i] * 2.0 + np.sum(y ** 2) + np.sum(y ** 2) + unused * 0.0


def test_data_dependent_gathers():
    x = np.array([0.3, -1.2, 2.5, 0.7])
    opt = agree(dynamic, x, [x[::-1].copy(), x + 0.5, -x])
    assert opt.optimized.merged >= 2
    assert sum(opt.code[:, K.OP] == K.GATHER_DYN) == 3


def test_saved_optimised_tape_loads(tmp_path):
    x = np.array([0.3, -1.2, 2.5, 0.7])
    for f in (inplace, dynamic, with_dead_branch):
        tp = dualtape.tape(f, x)
        tp.save(tmp_path / "t.npz")
        back = dualtape.load(tmp_path / "t.npz")
        assert len(back) == len(tp)
        same(back.jacobian(x * 1.1), tp.jacobian(x * 1.1))


def test_custom_rule_with_dead_code():
    @dualtape.custom_vjp
    def clipped(x):
        return x

    clipped.defvjp(lambda x: (x, None), lambda res, g: np.clip(g, -1.0, 1.0))

    def f(x):
        np.exp(x) * 3.0                 # dead
        return np.sum(clipped(x * 1.0) * 5.0)

    tp = dualtape.tape(f, np.ones(3))
    assert len(tp) == 3                 # callback, mul, sum
    np.testing.assert_allclose(tp.gradient(np.ones(3)), np.ones(3))


# ---------------------------------------------------------------------------- programs

UNARY = [np.sin, np.exp, np.tanh, lambda a: a * 1.0, lambda a: -(-a), lambda a: a + 0.0,
         lambda a: a ** 2, np.cos]
BINARY = [np.add, np.multiply, np.subtract, lambda a, b: a / (1.5 + b * b),
          lambda a, b: np.where(a > b, a, b * 2.0)]
STEP = st.one_of(
    st.tuples(st.just("u"), st.integers(0, len(UNARY) - 1), st.integers(0, 20)),
    st.tuples(st.just("b"), st.integers(0, len(BINARY) - 1), st.integers(0, 20),
              st.integers(0, 20)),
    st.tuples(st.just("sum"), st.integers(0, 20)),
    st.tuples(st.just("write"), st.integers(0, 20), st.integers(0, 2)),
    st.tuples(st.just("guard"), st.integers(0, 20)))


def make_program(steps, used):
    """A function of x from steps over a pool of values (x, then each step's result);
    only the pool entries in ``used`` reach the output, the rest is dead code."""
    def f(x):
        pool = [x, np.cos(x)]
        for s in steps:
            pick = pool[s[-1] % len(pool)] if s[0] != "b" else None
            if s[0] == "u":
                pool.append(UNARY[s[1]](pick))
            elif s[0] == "b":
                pool.append(BINARY[s[1]](pool[s[2] % len(pool)], pool[s[3] % len(pool)]))
            elif s[0] == "sum":
                pool.append(np.sum(pick) * np.ones_like(x) + pick)
            elif s[0] == "write":
                buf = np.zeros_like(x)
                buf[s[2]] = pool[s[1] % len(pool)][s[2]]
                buf[1:] += pool[-1][:-1]
                pool.append(buf)
            elif s[0] == "guard":
                pool.append(pick * 2.0 if np.sum(pick) > 0 else pick - 1.0)
        return sum(np.sum(pool[u % len(pool)]) for u in used)
    return f


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(STEP, min_size=1, max_size=8),
       used=st.lists(st.integers(0, 20), min_size=1, max_size=3))
def test_random_programs(steps, used):
    f = make_program(steps, used)
    x = np.array([0.4, -0.7, 1.1])
    agree(f, x, [x * 1.3 - 0.2, -x], hessian=False)


# ---------------------------------------------------------------------------- strip-mining

def long_run(x, p):
    """A long run of elementwise instructions over one count, with broadcast scalars,
    a parameter, an inactive member and a member that is read twice."""
    a = x[1:] - x[:-1] ** 2
    c = np.sign(x[:-1]) + 2.0            # inactive
    b = 100.0 * a ** 2 + (1.0 - x[:-1]) ** 2 * c
    return np.sum(b * p + np.tanh(a) * b)


def test_strip_mined_sweeps_match_whole_arrays():
    n = 2 * K.STRIP + 7                  # two strips and a partial one
    x = np.linspace(-1.1, 1.3, n)
    tp = dualtape.tape(long_run, x, 0.7)
    prog, code = tp.prog, tp.code
    total = int(prog[K.H_TOTAL])
    results = []
    for strip in (0, K.TILE, K.STRIP):
        w = tp.workspace().copy()
        w[:n + 1] = np.append(x, 0.7)
        assert K.forward_strips(code, prog, w, strip) == K.OK
        results.append(w[:total].copy())
    for values in results[1:]:
        np.testing.assert_array_equal(values, results[0])
    # and through the entries, against the Dual-number gradient
    g = tp.gradient(x, 0.7)
    v = np.random.default_rng(0).standard_normal(n)
    _, jv = dualtape.api.dual_jvp(lambda z: long_run(z, 0.7), x, v)
    np.testing.assert_allclose(g @ v, jv, rtol=1e-10)
