"""Cross-checks of today's features together: hypothesis-generated programs that mix
sort/median/interp, cumsum/cumprod, the scipy.special rows, in-place writes, masks,
gathers, reductions and broadcasting, checked in every mode against each other and against
central differences (optimised tape == raw tape == loaded tape == Dual forward == finite
differences; sparse == dense; replay at a second point where sorts and masks choose
differently). Then targeted probes of the seams between the optimiser, the new opcodes and
the zero rule (DESIGN.md 2b).

Kept lean for CI: every program runs on the same few tape kernels (programs are data to
them), hypothesis examples are few, inputs have 6 elements.
"""
import numpy as np
import pytest
import scipy.special as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dualtape
from dualtape.api import forward_jacobian
from dualtape.tapes import GuardFlipped
from dualtape.testing import numerical_diff

N = 6
XP = np.array([-1.5, -0.5, 0.0, 0.7, 1.6])        # interp breakpoints
FP = np.array([0.3, -0.8, 0.5, 1.2, -0.4])
W = np.array([0.7, -1.1, 0.4, 1.3, -0.6, 0.9])     # fixed output weights
SAME = dict(rtol=1e-11, atol=1e-11)         # tape vs tape: the same arithmetic
CLOSE = dict(rtol=1e-9, atol=1e-9)          # mode vs mode: rounding differs
FD = dict(rtol=2e-5, atol=2e-6)


# ---------------------------------------------------------------------------- steps
# Each step maps the state v (shape (N,)) and the input x to a new state of shape (N,);
# all are smooth away from a null set (ties of a sort, kinks of interp and of the masks),
# which random points avoid.

def _inplace(v, x):
    b = v.copy()
    b[1:4] = x[:3] * v[3:]           # a scatter into a buffer read later
    b[0] *= 0.5
    return b


def _inplace_then_sort(v, x):
    b = np.zeros_like(v)
    b[::2] = v[::2] * x[1::2]        # writes into a fresh buffer ...
    b[1::2] = np.sin(v[1::2])
    s = np.sort(b)                   # ... that is then sorted
    return s + b * 0.5               # and the unsorted buffer read again


def _cse_across_scatter(v, x):
    b = v * 2.0
    c = v * 2.0                      # the same instruction as b, but b is written next
    b[2] = x[0]
    s = np.sort(b)
    return s + c


def _dead_scatter(v, x):
    buf = np.zeros_like(v)
    buf[1] = v[0] * x[2]             # a write into a buffer nobody reads
    return v + np.sin(x)


def _sort_in_place(v, x):
    b = v * x
    b.sort()
    return b + v


def _searchsorted_gather(v, x):
    s = np.sort(x)
    i = np.clip(np.searchsorted(s, v), 0, N - 1)
    return s[i] * v


STEPS = {
    "sort": lambda v, x: np.sort(v) * x,
    "argsort_gather": lambda v, x: v[np.argsort(x)] + x,
    "take_along": lambda v, x: np.take_along_axis(v, np.argsort(np.sin(3.0 * v) + 0.5 * x), axis=0),
    "median": lambda v, x: v - np.median(v) + 0.3 * np.quantile(x * v, 0.3),
    "interp": lambda v, x: np.interp(np.tanh(v) * 1.8, XP, FP) + x,
    "cumsum": lambda v, x: np.cumsum(v) * 0.4 + x,
    "cumprod": lambda v, x: np.cumprod(np.tanh(v) + 0.2),
    "special1": lambda v, x: sp.expit(v) + sp.erf(x) * sp.log_ndtr(v),
    "special2": lambda v, x: sp.gammaln(v * v + 0.5) - np.sinc(0.3 * v) * x,
    "special3": lambda v, x: np.logaddexp2(v, x) + sp.xlogy(x * x, v * v + 1.0),
    "mask": lambda v, x: np.where(v > 0.1, v * x, np.tanh(v)),
    "inplace": _inplace,
    "inplace_sort": _inplace_then_sort,
    "reduce": lambda v, x: v * (np.sum(v * v) / N) - np.max(v) + np.mean(x),
    "broadcast": lambda v, x: (v[:, None] * x[None, :3]).sum(axis=1) * 0.3,
    "square": lambda v, x: v ** 2 * 0.3 + x * 1.0 + 0.0,   # x ** 2 -> square; x * 1, + 0
    "convolve": lambda v, x: np.convolve(v, x[:3], mode="same"),
    "cse_scatter": _cse_across_scatter,
    "dead_scatter": _dead_scatter,
    "sort_in_place": _sort_in_place,
    "searchsorted": _searchsorted_gather,
    "cumprod_zeros": lambda v, x: np.cumprod(v * np.array([1.0, 0.0, 1.0, 1.0, 0.0, 1.0]) * 1.0
                                             + 0.0) + np.cumprod(np.where(v > 0.2, v, 0.0)),
    "zero_rule": lambda v, x: (np.where(v > 0, sp.xlogy(v, v), 0.0)
                               + np.where((v > 0) & (v < 1), sp.logit(v), 0.0)
                               + np.where(v > 0, sp.gammaln(v), 0.0) + x),
    "interp_traced": lambda v, x: np.interp(v, np.sort(x), np.cos(x)),
    "nanmedian": lambda v, x: v * np.nanmedian(x * v) + np.nanquantile(v, 0.6),
    "std": lambda v, x: (v - np.mean(v)) / (np.std(v) + 0.5) + np.var(x),
}


def program(names):
    def f(x):
        v = x * 1.0
        for name in names:
            v = STEPS[name](v, x)
        return v
    f.__name__ = "+".join(names)
    return f


def scalar(f):
    def g(x):
        return np.sum(f(x) * W) + 0.1 * np.sum(x * x)
    g.__name__ = f"sum({f.__name__})"
    return g


# ---------------------------------------------------------------------------- checks

def _tapes(f, x, tmp_path):
    raw = dualtape.tape(f, x, optimize=False)
    opt = dualtape.tape(f, x)
    path = tmp_path / f"cross{abs(hash(f.__name__)) % 10 ** 8}.npz"
    opt.save(path)
    return {"raw": raw, "opt": opt, "loaded": dualtape.load(path)}


def _outcome(fn):
    try:
        return fn()
    except GuardFlipped:
        return GuardFlipped


def _same(a, b, what):
    if a is GuardFlipped or b is GuardFlipped:
        assert a is b, what
        return
    np.testing.assert_allclose(a, b, err_msg=what, **SAME)


def _near(a, b, what, tol=CLOSE):
    np.testing.assert_allclose(a, b, err_msg=what, **tol)


def check_vector(f, x, x2, tmp_path):
    """Values and Jacobians of a vector program in every mode, at x and x2."""
    tapes = _tapes(f, x, tmp_path)
    jac_auto = dualtape.jacobian(f)
    jac_fwd = dualtape.jacobian(f, mode="forward")
    jac_sparse = dualtape.jacobian(f, sparse=True)
    for p in (x, x2):
        y = f(p)
        _, J = forward_jacobian(f, p)                      # Dual forward mode
        _near(J, numerical_diff(f, p, 1e-6), f"Dual vs FD of {f.__name__}", FD)
        _near(jac_auto(p), J, f"reverse jacobian of {f.__name__}")
        _near(jac_fwd(p), J, f"forward jacobian of {f.__name__}")
        _near(jac_sparse(p).toarray(), J, f"sparse jacobian of {f.__name__}")
        ref = tapes["raw"]
        for name, tp in tapes.items():
            _same(_outcome(lambda: tp(p)), _outcome(lambda: ref(p)), f"{name} value")
            jr = _outcome(lambda: tp.jacobian(p, mode="reverse"))
            jf = _outcome(lambda: tp.jacobian(p, mode="forward"))
            _same(jr, _outcome(lambda: ref.jacobian(p, mode="reverse")), f"{name} jac rev")
            _same(jf, _outcome(lambda: ref.jacobian(p, mode="forward")), f"{name} jac fwd")
            if p is x:      # at the recording point no guard can flip
                _near(tp(p), y, f"{name} tape value of {f.__name__}")
                _near(jr, J, f"{name} reverse jacobian of {f.__name__}")
                _near(jf, J, f"{name} forward jacobian of {f.__name__}")


def check_scalar(f, x, x2, tmp_path):
    """Gradient and Hessian of a scalar program in every mode, at x and x2."""
    tapes = _tapes(f, x, tmp_path)
    grad, hess = dualtape.grad(f), dualtape.hessian(f)
    hess_sparse = dualtape.hessian(f, sparse=True)
    hvp = dualtape.hvp(f)

    def dual_grad(z):
        return forward_jacobian(f, z)[1]
    for p in (x, x2):
        g = dual_grad(p)
        _near(g, numerical_diff(f, p, 1e-6), f"Dual gradient vs FD of {f.__name__}", FD)
        H_fd = numerical_diff(dual_grad, p, 1e-6)
        H = hess(p)
        _near(grad(p), g, f"gradient of {f.__name__}")
        _near(H, H_fd, f"hessian vs FD of the Dual gradient of {f.__name__}", FD)
        _near(hess_sparse(p).toarray(), H, f"sparse hessian of {f.__name__}")
        V = np.stack([W, W[::-1]])
        _near(hvp(p, V), V @ H, f"hvp of {f.__name__}")
        ref = tapes["raw"]
        for name, tp in tapes.items():
            _same(_outcome(lambda: tp.gradient(p)), _outcome(lambda: ref.gradient(p)),
                  f"{name} gradient")
            _same(_outcome(lambda: tp.hessian(p)), _outcome(lambda: ref.hessian(p)),
                  f"{name} hessian")
            if p is x:
                _near(tp.gradient(p), g, f"{name} gradient of {f.__name__}")
                _near(tp.hessian(p), H, f"{name} hessian of {f.__name__}")


def _points(seed):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1.2, 1.2, N)
    x2 = rng.permutation(x) + rng.uniform(-0.3, 0.3, N)   # sorts and masks choose anew
    return x, x2


PROGRAMS = st.lists(st.sampled_from(sorted(STEPS)), min_size=2, max_size=4)
import os
SETTINGS = settings(max_examples=int(os.environ.get("CROSS_EXAMPLES", 12)), deadline=None,
                    derandomize=not os.environ.get("CROSS_EXAMPLES"),
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])


@SETTINGS
@given(names=PROGRAMS, seed=st.integers(0, 2 ** 16))
def test_vector_programs(names, seed, tmp_path):
    x, x2 = _points(seed)
    check_vector(program(names), x, x2, tmp_path)


@SETTINGS
@given(names=PROGRAMS, seed=st.integers(0, 2 ** 16))
def test_scalar_programs(names, seed, tmp_path):
    x, x2 = _points(seed)
    check_scalar(scalar(program(names)), x, x2, tmp_path)


@pytest.mark.parametrize("name", sorted(STEPS))
def test_each_step(name, tmp_path):
    """Every step alone, so a failure of the generated programs has a short twin."""
    x, x2 = _points(7)
    f = program([name, "cumsum"])
    check_vector(f, x, x2, tmp_path)
    check_scalar(scalar(f), x, x2, tmp_path)


# ---------------------------------------------------------------------------- seams

def _nested_hessian(f, x):
    """The Hessian by forward mode over forward mode on Dual numbers (no tape)."""
    return forward_jacobian(lambda z: forward_jacobian(f, z)[1], x)[1]


def _hessian_on_tape_of_duals(f, x):
    """The Hessian by jvp of Dual jvps recorded on a tape (Duals carrying traced values)."""
    E = np.eye(x.size)
    return np.array([[dualtape.jvp(lambda z: dualtape.jvp(f, z, a)[1], x, b)[1] for b in E]
                     for a in E])


def test_zero_rule_keeps_outer_tangents_under_nesting():
    """sum(x log x) at [0, 1]: the inf partial at 0 must not erase x = 1's second
    derivative (the zero rule once zeroed every product where a factor's *value* was 0,
    and log(1) is 0 while its outer tangent is 1)."""
    def f(x):
        return np.sum(x * np.log(x))
    x = np.array([0.0, 1.0, 0.5])
    with np.errstate(all="ignore"):
        for H in (_nested_hessian(f, x), _hessian_on_tape_of_duals(f, x),
                  dualtape.hessian(f)(x)):
            np.testing.assert_allclose(np.diag(H)[1:], 1.0 / x[1:], rtol=1e-14)
            assert np.isposinf(H[0, 0])
            np.testing.assert_array_equal(H[~np.eye(3, dtype=bool)], 0.0)


@pytest.mark.parametrize("f, x, y, exact", [
    (lambda x, y: x ** y, 2.0, 0.0, 0.5),          # x**(y-1) (1 + y log x) at y = 0
    (sp.xlogy, 0.0, 2.0, 0.5),                     # 1 / y
    (sp.xlog1py, 0.0, 1.0, 0.5),                   # 1 / (1 + y)
])
def test_guarded_partials_keep_mixed_derivatives(f, x, y, exact):
    """A partial guarded by a select (d/dx x**y at y == 0, d/dy xlogy at x == 0) must
    still differentiate: nested Duals once gave 0 for one order of the mixed derivative."""
    D = dualtape.derivative
    g = lambda z: f(z[0], z[1])
    p = np.array([x, y])
    assert D(lambda b: D(lambda a: f(a, b))(x))(y) == pytest.approx(exact, rel=1e-14)
    assert D(lambda a: D(lambda b: f(a, b))(y))(x) == pytest.approx(exact, rel=1e-14)
    for H in (_nested_hessian(g, p), _hessian_on_tape_of_duals(g, p),
              dualtape.hessian(g)(p)):
        np.testing.assert_allclose([H[0, 1], H[1, 0]], exact, rtol=1e-14)


BOUNDARY = {
    # name: (f, point on the boundary of the select, expected dense Jacobian diagonal)
    "logit": (lambda x: np.where((x > 0) & (x < 1), sp.logit(x), 0.0) * x,
              [0.0, 1.0, 0.25, 0.0, 0.5], lambda x: np.where(
                  (x > 0) & (x < 1), sp.logit(x) + 1.0 / (1.0 - x), 0.0)),
    "log_ndtr": (lambda x: np.where(x > -1e200, sp.log_ndtr(x), 0.0) * x,
                 [-np.inf, -1e300, 0.3, -40.0, 1.0], None),
    "gammaln": (lambda x: np.where(x > 0, sp.gammaln(x), 0.0) * x,
                [0.0, -1.0, 0.5, 0.0, 2.0], lambda x: np.where(
                    x > 0, sp.gammaln(np.abs(x)) + x * sp.digamma(np.abs(x)), 0.0)),
    "xlogy": (lambda x: np.where(x > 0, sp.xlogy(x, x), 0.0) + sp.xlogy(0.0 * x, x),
              [0.0, 0.0, 0.5, 1.0, 2.0], lambda x: np.where(x > 0, np.log(x) + 1.0, 0.0)),
    "xlog1py": (lambda x: np.where(x > -1, sp.xlog1py(x, x), 0.0),
                [-1.0, 0.0, 0.5, -1.0, 2.0], None),
    "sorted_logit": (lambda x: np.cumsum(np.sort(np.where((x > 0) & (x < 1), sp.logit(x),
                                                          0.0))),
                     [0.0, 1.0, 0.3, 0.6, 0.9], None),
}


@pytest.mark.parametrize("name", sorted(BOUNDARY))
def test_zero_rule_at_k_directions(name):
    """np.where(cond, special(x), 0) exactly where special's partial is infinite, with
    K > 1 directions in one sweep (forward jacobian, hessian, sparse), in every mode."""
    f, x, diag = BOUNDARY[name]
    x = np.array(x)
    w = np.arange(1.0, 1.0 + x.size)

    def fs(z):
        return np.sum(f(z) * w)
    with np.errstate(all="ignore"):
        J = forward_jacobian(f, x)[1]
        H = _nested_hessian(fs, x) if name not in ("gammaln",) else None
        assert np.all(np.isfinite(J))
        if diag is not None:
            np.testing.assert_allclose(np.diag(J), diag(x), rtol=1e-13, atol=1e-300)
        for opt in (True, False):
            tp, ts = dualtape.tape(f, x, optimize=opt), dualtape.tape(fs, x, optimize=opt)
            _near(tp.jacobian(x, mode="forward"), J, f"{name} forward jacobian")
            _near(tp.jacobian(x, mode="reverse"), J, f"{name} reverse jacobian")
            Ht = ts.hessian(x)
            assert np.all(np.isfinite(Ht)), f"{name} hessian {Ht}"
            _near(Ht, Ht.T, f"{name} hessian symmetry")
            _near(np.array([ts.hvp(x, e) for e in np.eye(x.size)]), Ht, f"{name} hvp")
            if H is not None:
                _near(Ht, H, f"{name} tape vs nested Dual hessian")
        _near(dualtape.jacobian(f, sparse=True)(x).toarray(), J, f"{name} sparse jacobian")
        _near(dualtape.hessian(fs, sparse=True)(x).toarray(), ts.hessian(x),
              f"{name} sparse hessian")


NONFINITE = np.array([np.nan, np.inf, -np.inf, 0.5, -0.3, 2.0])
PROPAGATING = {
    "gammaln": sp.gammaln, "digamma": sp.digamma, "erf": sp.erf, "erfc": sp.erfc,
    "log_ndtr": sp.log_ndtr, "ndtr": sp.ndtr, "expit": sp.expit, "log_expit": sp.log_expit,
    "logit": sp.logit, "sinc": np.sinc,
    "logaddexp2": lambda x: np.logaddexp2(x, x[::-1]), "fmod": lambda x: np.fmod(x, 0.7),
    "fmod_divisor": lambda x: np.fmod(1.3, x), "heaviside": lambda x: np.heaviside(x, 0.5) * x,
    "xlogy": lambda x: sp.xlogy(x, x[::-1]), "xlog1py": lambda x: sp.xlog1py(x, x),
    "sort": np.sort, "median": lambda x: np.median(x) * x,
    "nanmedian": lambda x: np.nanmedian(x) * x, "cumsum": np.cumsum, "cumprod": np.cumprod,
    "interp": lambda x: np.interp(x, [0.0, 1.0, 2.0], [1.0, 3.0, 2.0]),
    "nanquantile": lambda x: np.nanquantile(x, 0.4) + x,
}


@pytest.mark.parametrize("name", sorted(PROPAGATING))
def test_nan_inf_propagate_alike_in_every_mode(name):
    """NaN and inf inputs: the tape's values are NumPy's, and the Jacobians of the raw and
    optimised tapes (forward and reverse) equal the Dual one, NaN for NaN."""
    f = PROPAGATING[name]
    x = NONFINITE
    with np.errstate(all="ignore"):
        y = f(x)
        J = forward_jacobian(f, x)[1]
        for opt in (True, False):
            tp = dualtape.tape(f, x, optimize=opt)
            np.testing.assert_allclose(tp(x), y, rtol=1e-13, equal_nan=True)
            for mode in ("forward", "reverse"):
                np.testing.assert_allclose(tp.jacobian(x, mode=mode), J, rtol=1e-12,
                                           equal_nan=True, err_msg=f"{name} {mode} {opt}")


@pytest.mark.parametrize("x, f, grad, hess_row0", [
    # the running product reaches inf (or starts with NaN) after the outputs used:
    # their derivatives stay finite (a zero adjoint times inf contributes nothing)
    ([2.0, 3.0, np.inf], lambda x: np.sum(np.cumprod(x)[:2]), [4.0, 2.0, 0.0], [0, 1, 0]),
    ([1e200, 1e200, 1e200], lambda x: np.cumprod(x)[0], [1.0, 0.0, 0.0], [0, 0, 0]),
    ([3.0, np.nan, 2.0], lambda x: np.cumprod(x)[0], [1.0, 0.0, 0.0], [0, 0, 0]),
])
def test_cumprod_zero_adjoints_through_inf(x, f, grad, hess_row0):
    x = np.array(x)
    with np.errstate(all="ignore"):
        np.testing.assert_array_equal(forward_jacobian(f, x)[1], grad)
        for opt in (True, False):
            tp = dualtape.tape(f, x, optimize=opt)
            np.testing.assert_array_equal(tp.gradient(x), grad)
            np.testing.assert_array_equal(tp.jacobian(x, mode="forward"), grad)
            np.testing.assert_array_equal(tp.hessian(x)[0], hess_row0)


def test_cumprod_with_exact_zeros_and_trivial_algebra():
    """cumprod(x * 1 - 0) at points with one and two exact zeros: gradient and Hessian
    against the products written out, optimised (x * 1, - 0 simplified away) and raw."""
    def f(x):
        return np.sum(np.cumprod(x * 1.0 - 0.0) * W[:5])

    def exact_grad(x):
        return np.array([sum(W[k] * np.prod(np.delete(x[:k + 1], j)) for k in range(j, 5))
                         for j in range(5)])

    def exact_hess(x):
        return np.array([[0.0 if i == j else
                          sum(W[k] * np.prod(np.delete(x[:k + 1], [i, j]))
                              for k in range(max(i, j), 5)) for j in range(5)]
                         for i in range(5)])
    raw0 = dualtape.tape(f, np.ones(5), optimize=False)
    opt0 = dualtape.tape(f, np.ones(5))
    assert opt0.optimized.simplified >= 2
    for x in ([1.5, 0.0, -2.0, 0.7, 1.1], [0.0, 2.0, 0.0, -1.0, 3.0], [0.9, 1.2, -0.5, 2.0, 0.0]):
        x = np.array(x)
        for tp in (raw0, opt0):
            np.testing.assert_allclose(tp.gradient(x), exact_grad(x), rtol=1e-14, atol=0)
            np.testing.assert_allclose(tp.hessian(x), exact_hess(x), rtol=1e-14, atol=0)
        np.testing.assert_allclose(forward_jacobian(f, x)[1], exact_grad(x), rtol=1e-14)


def test_interp_at_breakpoints_in_every_mode():
    """interp exactly at its breakpoints: every mode takes the slope of the segment to the
    right (0 past the last point), also when the tape was recorded between breakpoints."""
    xp = np.array([0.0, 1.0, 2.0, 3.0])
    fp = np.array([1.0, 3.0, 2.0, 5.0])
    slopes = np.array([2.0, -1.0, 3.0, 0.0])

    def f(x):
        return np.interp(x, xp, fp) * 1.0

    def fs(x):
        return np.sum(np.interp(x, xp, fp) ** 2)
    elsewhere = np.array([0.5, 1.5, 2.5, 3.5])
    raw = dualtape.tape(f, elsewhere, optimize=False)
    opt = dualtape.tape(f, elsewhere)
    sraw = dualtape.tape(fs, elsewhere, optimize=False)
    sopt = dualtape.tape(fs, elsewhere)
    x = xp.copy()
    np.testing.assert_array_equal(np.diag(forward_jacobian(f, x)[1]), slopes)
    for tp in (raw, opt):
        np.testing.assert_array_equal(tp(x), fp)
        for mode in ("forward", "reverse"):
            np.testing.assert_array_equal(tp.jacobian(x, mode=mode), np.diag(slopes))
    for tp in (sraw, sopt):
        np.testing.assert_array_equal(tp.gradient(x), 2.0 * fp * slopes)
        np.testing.assert_array_equal(tp.hessian(x), np.diag(2.0 * slopes ** 2))
    np.testing.assert_array_equal(dualtape.jacobian(f, sparse=True)(x).toarray(),
                                  np.diag(slopes))


def test_square_rewrite_of_a_folded_exponent_in_a_hessian():
    """x ** c with c folded to 2.0 from recorded instructions becomes square: the Hessian
    of the optimised tape is the raw tape's and the analytic one (x = 0 included)."""
    def f(x):
        two = np.zeros_like(x[0]) + 2.0       # a constant only the optimiser sees
        return np.sum(W[:4] * x ** two) + np.sum(x[:2] ** 2.0 * x[2:])

    x = np.array([0.0, -1.5, 0.7, 2.0])
    raw, opt = dualtape.tape(f, x, optimize=False), dualtape.tape(f, x)
    assert opt.optimized.folded >= 2
    H = np.diag(2.0 * W[:4])
    H[0, 0] += 2.0 * x[2]
    H[1, 1] += 2.0 * x[3]
    H[0, 2] = H[2, 0] = 2.0 * x[0]
    H[1, 3] = H[3, 1] = 2.0 * x[1]
    for tp in (raw, opt):
        np.testing.assert_allclose(tp.hessian(x), H, rtol=1e-15)
    np.testing.assert_allclose(dualtape.hessian(f, sparse=True)(x).toarray(), H, rtol=1e-15)


FOLD_POINTS = np.array([0.5, 1e-3, 3.7, 20.0, 171.5, -1.0, 1.0, -2.5, 1e-300, -1e-310, 0.999999,
                        -40.0, 40.0, 0.0, np.inf, -np.inf, np.nan])
FOLD_SECOND = np.array([0.0, 0.0, 1.0, -1.0, 2.0, np.nan, 0.0, 3.0, np.inf, -0.5, 2.5, 0.0,
                        5.5, 1.0, 0.0, -np.inf, 0.0])
FOLDED = {"gammaln": sp.gammaln, "digamma": sp.digamma, "erf": sp.erf, "erfc": sp.erfc,
          "log_ndtr": sp.log_ndtr, "ndtr": sp.ndtr, "expit": sp.expit,
          "log_expit": sp.log_expit, "logit": sp.logit, "sinc": np.sinc,
          "xlogy": sp.xlogy, "xlog1py": sp.xlog1py, "logaddexp2": np.logaddexp2,
          "fmod": np.fmod, "heaviside": np.heaviside}


@pytest.mark.parametrize("name", sorted(FOLDED))
def test_constant_folding_gives_the_kernel_value(name):
    """A new row applied to constants built from recorded instructions is folded; the
    folded value is the raw tape's (the kernel's arithmetic) to the bit, not SciPy's."""
    fn = FOLDED[name]
    binary = name in ("xlogy", "xlog1py", "logaddexp2", "fmod", "heaviside")

    def f(x):
        c = np.zeros_like(x[0]) + FOLD_POINTS
        return x * (fn(c, np.zeros_like(x[0]) + FOLD_SECOND) if binary else fn(c))
    x = np.ones(FOLD_POINTS.size)
    with np.errstate(all="ignore"):
        raw, opt = dualtape.tape(f, x, optimize=False), dualtape.tape(f, x)
        assert opt.optimized.folded >= 2 and len(opt) == 1
        np.testing.assert_array_equal(opt(x), raw(x))
        np.testing.assert_array_equal(opt.jacobian(x), raw.jacobian(x))
        ref = fn(FOLD_POINTS, FOLD_SECOND) if binary else fn(FOLD_POINTS)
        np.testing.assert_allclose(opt(x)[FOLD_POINTS != -1e-310],
                                   ref[FOLD_POINTS != -1e-310], rtol=1e-12, atol=1e-15)


def test_nested_zero_rule_keeps_an_infinite_second_derivative():
    """x * x * log(x * x) at 0: the zero rule of the inner level zeroes the value of
    log(x * x) * (2 x t) (-inf * 0), not its outer tangent (-inf): nested Duals give the
    tape's second derivative, the true limit -inf (they once gave 0)."""
    def f(x):
        return np.sum(sp.xlogy(x * x, x * x))
    x = np.array([0.0, 1.0])
    with np.errstate(all="ignore"):
        tape_h = dualtape.hessian(f)(x)
        assert np.isneginf(tape_h[0, 0]) and tape_h[1, 1] == 6.0
        np.testing.assert_array_equal(_nested_hessian(f, x), tape_h)


def test_plus_zero_keeps_the_sign_of_zero():
    def f(x):
        return np.arctan2(x + 0.0, -1.0)
    x = np.array([-0.0, 1.0])
    np.testing.assert_array_equal(dualtape.tape(f, x, optimize=False)(x), f(x))
    np.testing.assert_array_equal(dualtape.tape(f, x)(x), f(x))
