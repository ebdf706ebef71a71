"""The primitive table (``dualtape/ops.py``), row by row, against independent references.

For every row of ``ops.TABLE``:

* the value (``ops.numpy_fn(prim, "value")``) equals NumPy's own ufunc;
* every first partial equals a central difference of the value, and every second partial a
  central difference of the first partial, at points inside the primitive's domain (edges
  included: sqrt near 0+, arccosh just above 1, arcsin inside (-1, 1), pow with a negative
  base and an integer exponent, ...);
* the generated Numba loops (``kernels.ew_value`` / ``ew_partial`` / ``ew_partial2``) and
  their scalar versions (``ew_value1`` / ``ew_partial1``, instructions of one element)
  compute the same numbers as the NumPy functions, including at infinities, NaNs, zeros
  and poles (IEEE results, as NumPy gives them);
* forward mode (``jvp`` and ``jacobian(mode="forward")`` on Dual numbers) and reverse mode
  (a recorded tape, also replayed at a second point) give the same Jacobian.

Every row needs a domain sampler in ``SAMPLERS`` below: a new row of the table makes these
tests fail until one is added. The conventions at kinks (abs, maximum/minimum ties, clip
bounds, a select guarding a sqrt at 0) and the zero derivative of the piecewise-constant
and boolean rows are checked in both modes.
"""
import inspect
import itertools
import zlib

import numpy as np
import pytest

import dualtape
from dualtape import kernels, ops
from dualtape.api import dual_jvp, forward_jacobian

ROWS = list(ops.TABLE.values())
IDS = [p.name for p in ROWS]
DIFF_ROWS = [p for p in ROWS if p.diff]
NONDIFF_ROWS = [p for p in ROWS if not p.diff]

N = 12                      # points per sample
EPS = np.finfo(float).eps
FD_RTOL = 1e-6              # truncation allowance of the five-point central difference
KERNEL_RTOL = 1e-12         # Numba loops against the NumPy functions
MODE_RTOL = 1e-12           # forward mode against reverse mode


# ---------------------------------------------------------------------------- domain samplers
# name -> sampler(rng) -> tuple of ``arity`` float arrays of length N, every point strictly
# inside the primitive's domain and away from kinks, ties and discontinuities by much more
# than the finite-difference step (a few 1e-6 relative), so central differences are valid.

def _fill(rng, fixed, draw):
    """The fixed points, then random ones from ``draw(rng, k)`` up to N."""
    fixed = np.asarray(fixed, dtype=float)
    return np.concatenate([fixed, draw(rng, N - fixed.size)])


def _uniform(lo, hi):
    return lambda rng, k: rng.uniform(lo, hi, k)


def _signed(lo, hi):
    return lambda rng, k: rng.choice([-1.0, 1.0], k) * rng.uniform(lo, hi, k)


def _logspace(lo, hi):
    return lambda rng, k: np.exp(rng.uniform(np.log(lo), np.log(hi), k))


def _any(rng):
    return _fill(rng, [0.0], _uniform(-3.0, 3.0))


def _binary_any(rng):
    return _fill(rng, [0.0], _uniform(-3.0, 3.0)), _uniform(-3.0, 3.0)(rng, N)


def _div(rng):
    return _uniform(-3.0, 3.0)(rng, N), _fill(rng, [1e-2, -1e-2], _signed(0.2, 3.0))


def _pow(rng):
    half = N // 2
    # positive base, real exponent (base near 0+ included)
    xp = _fill(rng, [1e-3, 1.0], _uniform(0.2, 4.0))[:half]
    yp = rng.uniform(-2.5, 2.5, half)
    # negative base, integer exponent
    xn = -rng.uniform(0.3, 3.0, N - half)
    yn = rng.permutation(np.array([-3.0, -2.0, -1.0, 0.0, 2.0, 3.0, 4.0, 1.0]))[:N - half]
    return np.concatenate([xp, xn]), np.concatenate([yp, yn])


def _away_from_integer_ratio(rng):
    """(x, y) with x / y at least 0.1 from any integer (mod, floor_divide)."""
    y = _signed(0.5, 3.0)(rng, N)
    q = rng.integers(-4, 5, N) + rng.uniform(0.1, 0.9, N)
    return q * y, y


def _logaddexp(rng):
    x = _fill(rng, [0.0, 30.0, -30.0, 2.0], _uniform(-5.0, 5.0))
    y = _fill(rng, [0.0, -30.0, 30.0, 2.0], _uniform(-5.0, 5.0))
    return x, y


def _arctan2(rng):
    # y == 0 with x != 0 and x == 0 with y > 0 are smooth points; the branch cut
    # (x == 0, y < 0) is avoided by keeping |x| >= 0.1 elsewhere
    x = _fill(rng, [1.0, -1.0, 0.0, 1e-3], _signed(0.1, 3.0))
    y = _fill(rng, [0.0, 0.0, 1.0, 1e-3], _uniform(-3.0, 3.0))
    return x, y


def _hypot(rng):
    x = _fill(rng, [0.0, 1.0, -2.0, 3.0], _uniform(-3.0, 3.0))
    y = _fill(rng, [1.0, 0.0, 0.0, -4.0], _signed(0.1, 3.0))
    return x, y


def _untied(rng):
    """(x, y) with |x - y| >= 0.1 (maximum, minimum, comparisons)."""
    x = _uniform(-3.0, 3.0)(rng, N)
    return x, x + _signed(0.1, 2.0)(rng, N)


def _clip(rng):
    lo = rng.uniform(-2.0, 0.0, N)
    hi = lo + rng.uniform(0.5, 3.0, N)
    where = rng.permutation(np.arange(N) % 3)          # below, inside, above
    below = lo - rng.uniform(0.1, 1.0, N)
    inside = lo + (hi - lo) * rng.uniform(0.1, 0.9, N)
    above = hi + rng.uniform(0.1, 1.0, N)
    return np.choose(where, [below, inside, above]), lo, hi


def _select(rng):
    cond = np.resize([0.0, 1.0, -2.5, 0.5], N)
    return cond, _uniform(-3.0, 3.0)(rng, N), _uniform(-3.0, 3.0)(rng, N)


def _off_integers(lo_frac, hi_frac):
    def draw(rng):
        return rng.integers(-4, 5, N) + rng.uniform(lo_frac, hi_frac, N)
    return draw


def _rint(rng):
    frac = np.where(rng.random(N) < 0.5, rng.uniform(0.1, 0.4, N), rng.uniform(0.6, 0.9, N))
    return rng.integers(-4, 5, N) + frac


def _truth_values(rng):
    return rng.choice([0.0, 1.0, -2.5, 0.5], N)


def _unary(fn):
    return lambda rng: (fn(rng),)


SAMPLERS = {
    "add": _binary_any,
    "sub": _binary_any,
    "mul": _binary_any,
    "div": _div,
    "neg": _unary(_any),
    "copy": _unary(_any),
    "pow": _pow,
    "square": _unary(_any),
    "sqrt": _unary(lambda rng: _fill(rng, [1e-3, 1e-2], _logspace(0.1, 100.0))),
    "cbrt": _unary(lambda rng: _fill(rng, [1e-3, -1e-3, 1e-2], _signed(0.1, 10.0))),
    "reciprocal": _unary(lambda rng: _fill(rng, [1e-2, -1e-2], _signed(0.1, 10.0))),
    "mod": _away_from_integer_ratio,
    "exp": _unary(lambda rng: _fill(rng, [0.0], _uniform(-5.0, 5.0))),
    "exp2": _unary(lambda rng: _fill(rng, [0.0], _uniform(-5.0, 5.0))),
    "expm1": _unary(lambda rng: _fill(rng, [0.0, 1e-8, -1e-8], _uniform(-5.0, 5.0))),
    "log": _unary(lambda rng: _fill(rng, [1e-3, 1e-2, 1.0], _logspace(0.1, 1e3))),
    "log1p": _unary(lambda rng: _fill(rng, [-0.999, -0.5, 0.0, 1e-6], _uniform(0.0, 100.0))),
    "log2": _unary(lambda rng: _fill(rng, [1e-3, 1e-2, 1.0], _logspace(0.1, 1e3))),
    "log10": _unary(lambda rng: _fill(rng, [1e-3, 1e-2, 1.0], _logspace(0.1, 1e3))),
    "logaddexp": _logaddexp,
    "sin": _unary(lambda rng: _fill(rng, [0.0], _uniform(-6.0, 6.0))),
    "cos": _unary(lambda rng: _fill(rng, [0.0], _uniform(-6.0, 6.0))),
    "tan": _unary(lambda rng: _fill(rng, [0.0], _uniform(-1.4, 1.4))),
    "arcsin": _unary(lambda rng: _fill(rng, [0.999, -0.999, 0.0], _uniform(-0.95, 0.95))),
    "arccos": _unary(lambda rng: _fill(rng, [0.999, -0.999, 0.0], _uniform(-0.95, 0.95))),
    "arctan": _unary(lambda rng: _fill(rng, [0.0], _uniform(-10.0, 10.0))),
    "arctan2": _arctan2,
    "hypot": _hypot,
    "sinh": _unary(lambda rng: _fill(rng, [0.0], _uniform(-5.0, 5.0))),
    "cosh": _unary(lambda rng: _fill(rng, [0.0], _uniform(-5.0, 5.0))),
    "tanh": _unary(lambda rng: _fill(rng, [0.0], _uniform(-5.0, 5.0))),
    "arcsinh": _unary(lambda rng: _fill(rng, [0.0], _uniform(-10.0, 10.0))),
    "arccosh": _unary(lambda rng: _fill(rng, [1.0001, 1.001, 1.01], _uniform(1.1, 50.0))),
    "arctanh": _unary(lambda rng: _fill(rng, [0.999, -0.999, 0.0], _uniform(-0.95, 0.95))),
    "abs": _unary(lambda rng: _fill(rng, [1e-3, -1e-3], _signed(0.1, 5.0))),
    "maximum": _untied,
    "minimum": _untied,
    "fmax": _untied,
    "fmin": _untied,
    "clip": _clip,
    "select": _select,
    "sign": _unary(lambda rng: _signed(0.1, 5.0)(rng, N)),
    "floor": _unary(_off_integers(0.1, 0.9)),
    "ceil": _unary(_off_integers(0.1, 0.9)),
    "rint": _unary(_rint),
    "trunc": _unary(_off_integers(0.1, 0.9)),
    "floor_divide": _away_from_integer_ratio,
    "less": _untied,
    "less_equal": _untied,
    "greater": _untied,
    "greater_equal": _untied,
    "equal": _untied,
    "not_equal": _untied,
    "logical_and": lambda rng: (_truth_values(rng), _truth_values(rng)),
    "logical_or": lambda rng: (_truth_values(rng), _truth_values(rng)),
    "logical_xor": lambda rng: (_truth_values(rng), _truth_values(rng)),
    "logical_not": _unary(_truth_values),
    "isnan": _unary(lambda rng: _fill(rng, [np.nan, np.inf, -np.inf, 0.0], _uniform(-3, 3))),
    "isinf": _unary(lambda rng: _fill(rng, [np.nan, np.inf, -np.inf, 0.0], _uniform(-3, 3))),
    "isfinite": _unary(lambda rng: _fill(rng, [np.nan, np.inf, -np.inf, 0.0], _uniform(-3, 3))),
    "logaddexp2": _logaddexp,
    "fmod": _away_from_integer_ratio,
    # the Taylor branch (|x| < 0.1) and the quotient branch, integers included
    "sinc": _unary(lambda rng: _fill(rng, [0.0, 1e-3, 0.05, -0.09, 0.11, 1.0, -2.0],
                                     _uniform(-4.0, 4.0))),
    "heaviside": lambda rng: (_signed(0.1, 3.0)(rng, N), _uniform(-1.0, 2.0)(rng, N)),
    "expit": _unary(lambda rng: _fill(rng, [0.0, 30.0, -30.0], _uniform(-10.0, 10.0))),
    "logit": _unary(lambda rng: _fill(rng, [0.5, 1e-3, 0.999, 0.31, 0.64],
                                      _uniform(0.01, 0.99))),
    "log_expit": _unary(lambda rng: _fill(rng, [0.0, 30.0, -30.0], _uniform(-10.0, 10.0))),
    "erf": _unary(lambda rng: _fill(rng, [0.0, 3.0, -3.0], _uniform(-4.0, 4.0))),
    "erfc": _unary(lambda rng: _fill(rng, [0.0, 3.0, -3.0], _uniform(-4.0, 4.0))),
    # away from the zeros of gammaln (1, 2, -2.457..) and of digamma (1.4616..), where a
    # relative comparison of two implementations means nothing; negative non-integers too
    "gammaln": _unary(lambda rng: _fill(rng, [0.05, 0.5, 3.5, 30.0, -0.5, -1.5, -3.3],
                                        _uniform(2.2, 20.0))),
    "digamma": _unary(lambda rng: _fill(rng, [0.05, 0.5, 1.0, 2.5, 30.0, -0.5, -1.3, -2.7],
                                        _uniform(2.0, 20.0))),
    "xlogy": lambda rng: (_fill(rng, [0.0, 0.0], _uniform(-3.0, 3.0)),
                          _fill(rng, [1e-2, 1.0], _logspace(0.1, 10.0))),
    "xlog1py": lambda rng: (_fill(rng, [0.0, 0.0], _uniform(-3.0, 3.0)),
                            _fill(rng, [-0.99, 0.0], _uniform(-0.9, 5.0))),
    "ndtr": _unary(lambda rng: _fill(rng, [0.0, -5.0, 5.0, -0.9, 0.9], _uniform(-6.0, 6.0))),
    # every branch of the NumPy and Numba forms: x > -1, -20 < x <= -1, the tail below -20;
    # not in (-20, -8), where the second partial -h (x + h) cancels (relative error ~ x**2
    # eps, so the two forms differ by more than 1e-12 there)
    "log_ndtr": _unary(lambda rng: _fill(rng, [-30.0, -20.5, -5.0, -1.0, 0.0, 5.0],
                                         lambda rng, k: np.where(rng.random(k) < 0.5,
                                                                 rng.uniform(-40.0, -20.5, k),
                                                                 rng.uniform(-8.0, 10.0, k)))),
}


def reference(prim):
    """The NumPy or SciPy function a row implements (what user code calls)."""
    if prim.scipy:
        import scipy.special
        return getattr(scipy.special, prim.scipy)
    if prim.name == "sinc":
        return np.sinc
    assert prim.ufuncs, f"{prim.name}: say in tests/test_ops.py how user code calls it"
    return prim.ufuncs[0]


def sample(prim, which=0):
    """Operand arrays for ``prim`` (``which`` picks an independent second sample), the
    points jointly shuffled so that fixed edge points move between samples."""
    sampler = SAMPLERS.get(prim.name)
    assert sampler is not None, (
        f"the table has a row {prim.name!r} without a domain sampler: add one to SAMPLERS "
        "in tests/test_ops.py")
    rng = np.random.default_rng([zlib.crc32(prim.name.encode()), which])
    args = tuple(np.asarray(a, dtype=np.float64) for a in sampler(rng))
    assert len(args) == prim.arity and all(a.shape == (N,) for a in args), prim.name
    perm = rng.permutation(N)
    return tuple(np.ascontiguousarray(a[perm]) for a in args)


def test_every_row_has_a_sampler_and_no_stale_ones():
    missing = sorted(set(ops.TABLE) - set(SAMPLERS))
    stale = sorted(set(SAMPLERS) - set(ops.TABLE))
    assert not missing, f"rows without a domain sampler in tests/test_ops.py: {missing}"
    assert not stale, f"samplers for rows that are no longer in the table: {stale}"


# ---------------------------------------------------------------------------- helpers

# Values for the value and kernel checks: infinities, NaN, signed zeros, ties, points where
# a floating-point quotient rounds onto an integer (1.0 / 0.1), poles (0, +-1).
SPECIAL = [0.0, -0.0, 1.0, -1.0, 0.1, 0.3, 0.5, -0.4, 2.5, -3.0, 1e-3, 7.0,
           np.inf, -np.inf, np.nan]
POLES = (0.0, 1.0, -1.0)   # division by zero (or 1 - x * x == 0) for some row


def special_grid(arity, include_poles):
    vals = [v for v in SPECIAL if include_poles or v not in POLES]
    grid = np.array(list(itertools.product(vals, repeat=arity)), dtype=np.float64).T
    return tuple(np.ascontiguousarray(g) for g in grid)


def value(prim, args):
    with np.errstate(all="ignore"):
        return np.asarray(ops.numpy_fn(prim, "value")(*args), dtype=np.float64) \
            * np.ones(args[0].shape)


def partial(prim, k, args, o=None):
    """First partial k from the table (None: no derivative for that operand)."""
    fn = ops.numpy_fn(prim, ("d", k))
    if fn is None:
        return None
    o = value(prim, args) if o is None else o
    with np.errstate(all="ignore"):
        return np.asarray(fn(*args, o), dtype=np.float64) * np.ones(args[0].shape)


def partial2(prim, i, j, args, o=None):
    """Second partial (i, j) from the table; a missing entry is zero."""
    fn = ops.numpy_fn(prim, ("d2", i, j))
    if fn is None:
        return np.zeros(args[0].shape)
    o = value(prim, args) if o is None else o
    with np.errstate(all="ignore"):
        return np.asarray(fn(*args, o), dtype=np.float64) * np.ones(args[0].shape)


def step(x):
    return 1e-6 * np.maximum(np.abs(x), 1e-2)


def central_difference(fn, args, k):
    """Five-point central difference of fn(*args) along operand k, and the largest
    magnitude of fn seen (for the rounding allowance)."""
    h = step(args[k])
    vals = {}
    for s in (-2, -1, 1, 2):
        moved = list(args)
        moved[k] = args[k] + s * h
        vals[s] = fn(moved)
    fd = (vals[-2] - 8.0 * vals[-1] + 8.0 * vals[1] - vals[2]) / (12.0 * h)
    with np.errstate(invalid="ignore"):
        scale = np.max(np.abs(np.stack(list(vals.values()))), axis=0)
    return fd, scale, h


def assert_matches_fd(exact, fd, scale, h, what, args):
    exact = np.broadcast_to(exact, fd.shape)
    nan_e, nan_f = np.isnan(exact), np.isnan(fd)
    where = np.flatnonzero(nan_e != nan_f)
    assert where.size == 0, (
        f"{what}: NaN where the central difference is {'not ' if nan_e[where[0]] else ''}"
        f"NaN, at operands {[float(a[where[0]]) for a in args]}: exact "
        f"{exact[where[0]]}, central difference {fd[where[0]]}")
    ok = ~nan_e
    tol = FD_RTOL * np.abs(fd) + 50.0 * EPS * scale / h + 1e-12
    bad = np.flatnonzero(ok & ~(np.abs(exact - fd) <= tol))
    assert bad.size == 0, (
        f"{what} at operands {[float(a[bad[0]]) for a in args]}: table gives "
        f"{exact[bad[0]]!r}, central difference {fd[bad[0]]!r} "
        f"({bad.size} of {fd.size} points off)")


def assert_same(got, want, what, args=None, rtol=KERNEL_RTOL):
    """Equal up to rtol, infinities equal, NaN at the same positions."""
    got, want = np.asarray(got, dtype=float), np.broadcast_to(np.asarray(want, float),
                                                              np.shape(got))
    nan_g, nan_w = np.isnan(got), np.isnan(want)
    with np.errstate(invalid="ignore"):
        close = (got == want) | (np.abs(got - want) <= rtol * np.abs(want))
    bad = np.flatnonzero(~((nan_g & nan_w) | (~nan_g & ~nan_w & close)))
    if bad.size:
        i = bad[0]
        at = f" at operands {[float(a.reshape(-1)[i]) for a in args]}" if args else ""
        raise AssertionError(f"{what}{at}: got {got.reshape(-1)[i]!r}, expected "
                             f"{want.reshape(-1)[i]!r} ({bad.size} of {got.size} differ)")


# ---------------------------------------------------------------------------- 1. values

@pytest.mark.parametrize("prim", ROWS, ids=IDS)
def test_value_matches_numpy_ufunc(prim):
    args = sample(prim)
    grid = special_grid(prim.arity, include_poles=True)
    for pts in (args, grid):
        got = value(prim, pts)
        with np.errstate(all="ignore"):
            if prim.name == "clip":
                want = np.clip(*pts)
            elif prim.name == "select":
                want = np.where(*pts)
            elif prim.name == "copy":
                want = np.copy(pts[0])
            else:
                want = reference(prim)(*pts)
        if prim.name == "clip" and pts is grid:
            # np.clip with lo > hi is NumPy-version dependent; compare where lo <= hi
            keep = ~(pts[1] > pts[2])
            got, want, pts = got[keep], np.asarray(want)[keep], tuple(a[keep] for a in pts)
        # a SciPy row written as an expression may differ from SciPy's libm by an ulp
        assert_same(got, np.asarray(want, dtype=np.float64), f"value of {prim.name}", pts,
                    rtol=4 * EPS if prim.scipy else 0.0)
        if prim.boolean:
            assert np.asarray(want).dtype == bool


ALIASES = [(p, u) for p in ROWS for u in p.ufuncs[1:]]
# integer-only NumPy ufuncs the table routes to a logical row: compared on truth values
BOOL_ONLY = {np.bitwise_and, np.bitwise_or, np.bitwise_xor, np.invert}


@pytest.mark.parametrize("prim,ufunc", ALIASES,
                         ids=[f"{p.name}-{u.__name__}" for p, u in ALIASES])
def test_value_matches_every_ufunc_routed_to_the_row(prim, ufunc):
    """Every ufunc that ``ops.BY_UFUNC`` sends to this row computes the row's value."""
    assert ops.BY_UFUNC[ufunc] is prim
    for pts in (sample(prim), special_grid(prim.arity, include_poles=True)):
        if ufunc in BOOL_ONLY:
            pts = tuple(np.isfinite(a) & (a != 0) & (a > -1) for a in pts)
        with np.errstate(all="ignore"):
            want = np.asarray(ufunc(*pts), dtype=np.float64)
        got = value(prim, tuple(np.asarray(a, dtype=np.float64) for a in pts))
        assert_same(got, want, f"value of {prim.name} vs numpy.{ufunc.__name__}",
                    [np.asarray(a, dtype=float) for a in pts], rtol=4 * EPS)


# ---------------------------------------------------------------------------- 2. first partials

@pytest.mark.parametrize("prim", ROWS, ids=IDS)
def test_first_partials_match_central_differences(prim):
    args = sample(prim)
    if not prim.diff:
        # no derivative anywhere: the table must not claim one
        for k in range(prim.arity):
            assert ops.numpy_fn(prim, ("d", k)) is None
        return
    assert len(prim.d) == prim.arity, f"{prim.name}: one first partial per operand"
    checked = 0
    for k in range(prim.arity):
        exact = partial(prim, k, args)
        if exact is None:
            continue
        fd, scale, h = central_difference(lambda a: value(prim, a), args, k)
        assert_matches_fd(exact, fd, scale, h, f"d {prim.name} / d operand {k}", args)
        checked += 1
    assert checked, f"{prim.name} is differentiable but has no first partial"


# ---------------------------------------------------------------------------- 3. second partials

@pytest.mark.parametrize("prim", DIFF_ROWS, ids=[p.name for p in DIFF_ROWS])
def test_second_partials_match_central_differences_of_first(prim):
    args = sample(prim)
    for (i, j) in prim.d2:
        assert 0 <= i <= j < prim.arity, f"{prim.name}: d2 key {(i, j)} not i <= j"
    for i in range(prim.arity):
        if prim.d[i] is None:
            assert all(i not in key for key in prim.d2), prim.name
            continue
        for j in range(prim.arity):
            exact = partial2(prim, i, j, args)
            fd, scale, h = central_difference(lambda a: partial(prim, i, a), args, j)
            assert_matches_fd(exact, fd, scale, h,
                              f"d2 {prim.name} / d operand {i} d operand {j}", args)


# ---------------------------------------------------------------------------- 4. Numba kernels

def run_loop(fn, head, t, arrays, label=None):
    """Run a generated loop on float64 arrays ``X, Y, Z, O`` (and ``D``) of length t and
    return them after the call.

    Both calling conventions of the generated loops are supported: arrays,
    ``(op, [k, [l,]] t, X, Y, Z, O[, D])``, and one workspace with offsets,
    ``(op, [k, [l,]] t, w, xo, yo, zo, oo[, do])``, for which the arrays are laid out one
    after the other in ``w``. A ZeroDivisionError is reported with the first point that
    raises it.
    """
    params = list(inspect.signature(getattr(fn, "py_func", fn)).parameters)
    arrays = [np.array(a, dtype=np.float64) for a in arrays]
    try:
        if "w" in params:
            w = np.concatenate(arrays)
            offsets = [i * t for i in range(len(arrays))]
            fn(*head, t, w, *offsets)
            return [w[o:o + t].copy() for o in offsets]
        fn(*head, t, *arrays)
        return arrays
    except ZeroDivisionError:
        if t == 1:
            raise
        for j in range(t):       # name the first point that raises
            try:
                run_loop(fn, head, 1, [a[j:j + 1] for a in arrays])
            except ZeroDivisionError:
                raise LoopRaised(label or fn.__name__,
                                 [float(a[j]) for a in arrays[:3]]) from None
        raise


class LoopRaised(AssertionError):
    def __init__(self, label, operands):
        super().__init__(f"kernels.{label} raised "
                         f"ZeroDivisionError at (x, y, z) = {operands} (unused operands "
                         "are 1.0), where NumPy gives an IEEE inf / NaN")


def check_kernels(prim, pts):
    t = pts[0].size
    ones = np.ones(t)
    X, Y, Z = list(pts) + [ones] * (3 - prim.arity)
    want = value(prim, pts)
    O = run_loop(kernels.ew_value, (prim.code,), t, [X, Y, Z, np.full(t, -12345.0)],
                 f"ew_value({prim.name})")[3]
    assert_same(O, want, f"kernels.ew_value({prim.name})", pts)
    # the scalar versions the sweeps use for instructions of one element
    O1 = [kernels.ew_value1(prim.code, X[j], Y[j], Z[j]) for j in range(t)]
    assert_same(O1, want, f"kernels.ew_value1({prim.name})", pts)
    if prim.boolean:
        assert np.all((O == 0.0) | (O == 1.0)), f"{prim.name}: truth values not 0.0 / 1.0"
    if not prim.diff:
        for k in range(prim.arity):
            D1 = [kernels.ew_partial1(prim.code, k, X[j], Y[j], Z[j], want[j]) for j in range(t)]
            assert not np.any(D1), f"kernels.ew_partial1({prim.name}, {k}) is not zero"
        return
    for k in range(prim.arity):
        d = partial(prim, k, pts, want)
        D1 = [kernels.ew_partial1(prim.code, k, X[j], Y[j], Z[j], want[j]) for j in range(t)]
        assert_same(D1, 0.0 if d is None else d, f"kernels.ew_partial1({prim.name}, {k})",
                    pts)
        if d is None:
            continue
        D = run_loop(kernels.ew_partial, (prim.code, k), t,
                     [X, Y, Z, want, np.full(t, -12345.0)], f"ew_partial({prim.name}, {k})")[4]
        assert_same(D, d, f"kernels.ew_partial({prim.name}, {k})", pts)
    for k in range(prim.arity):
        for l in range(k, prim.arity):
            D = run_loop(kernels.ew_partial2, (prim.code, k, l), t,
                         [X, Y, Z, want, np.full(t, -12345.0)],
                         f"ew_partial2({prim.name}, {k}, {l})")[4]
            assert_same(D, partial2(prim, k, l, pts, want),
                        f"kernels.ew_partial2({prim.name}, {k}, {l})", pts)


@pytest.mark.parametrize("prim", ROWS, ids=IDS)
def test_kernels_match_numpy_functions(prim):
    """Domain samples plus infinities, NaN and out-of-domain points (no exact poles)."""
    args = sample(prim)
    grid = special_grid(prim.arity, include_poles=False)
    check_kernels(prim, tuple(np.concatenate([a, g]) for a, g in zip(args, grid)))


@pytest.mark.parametrize("prim", ROWS, ids=IDS)
def test_kernels_match_numpy_functions_at_zeros_and_poles(prim):
    """0, -0 and +-1 in every operand: a Numba loop must give NumPy's IEEE result (inf,
    NaN), as Dual numbers do, not raise (``x / 0.0`` raises ZeroDivisionError in a Numba
    function compiled with the default ``error_model='python'``)."""
    check_kernels(prim, special_grid(prim.arity, include_poles=True))


# ---------------------------------------------------------------------------- 5. modes agree

def apply(prim, args):
    """prim applied the way user code does: its ufunc, np.clip or np.where."""
    if prim.name == "clip":
        return np.clip(*args)
    if prim.name == "select":
        return np.where(*args)
    if prim.name == "copy":
        return np.copy(*args)
    return reference(prim)(*args)


def _with(args, k, x):
    args = list(args)
    args[k] = x
    return args


def jvp_jacobian(f, x, *params):
    """The Jacobian from n forward-mode jvp calls (one basis tangent each)."""
    cols = [np.asarray(dualtape.jvp(f, x, e, *params)[1], dtype=float)
            for e in np.eye(x.size)]
    return np.stack(cols, axis=-1)


def dual_jacobian(f, x, *params):
    """The Jacobian by forward mode on Dual numbers (no tape)."""
    return np.asarray(forward_jacobian(f, x, params)[1], dtype=float)


def assert_modes_agree(f, x, params, what):
    """jvp (tape tangents), jacobian(mode='forward') (tape tangents), Duals and a tape's
    reverse Jacobian agree; returns it."""
    J_jvp = jvp_jacobian(f, x, *params)
    J_fwd = np.asarray(dualtape.jacobian(f, mode="forward")(x, *params), dtype=float)
    J_dual = dual_jacobian(f, x, *params)
    J_rev = np.asarray(dualtape.tape(f, x, *params).jacobian(x, *params), dtype=float)
    assert J_jvp.shape == J_fwd.shape == J_rev.shape == (x.size, x.size), what
    assert_same(J_fwd, J_jvp, f"{what}: jacobian(mode='forward') vs jvp", rtol=MODE_RTOL)
    assert_same(J_dual, J_fwd, f"{what}: Dual vs tape tangent Jacobian", rtol=MODE_RTOL)
    assert_same(J_rev, J_fwd, f"{what}: reverse (tape) vs forward Jacobian",
                rtol=MODE_RTOL)
    return J_fwd


MODE_CASES = [(p, k) for p in ROWS for k in range(p.arity)]
MODE_IDS = [f"{p.name}-operand{k}" for p, k in MODE_CASES]


@pytest.mark.parametrize("prim,k", MODE_CASES, ids=MODE_IDS)
def test_forward_and_reverse_agree_and_replay(prim, k):
    args = sample(prim)
    x = args[k]
    others = [a for i, a in enumerate(args) if i != k]

    def f(x, *params):
        it = iter(params)
        return apply(prim, [x if i == k else next(it) for i in range(prim.arity)])

    def f_const(x):               # the other operands are constants baked into the tape
        return apply(prim, _with(args, k, x))

    what = f"{prim.name}, operand {k} varying"
    J = assert_modes_agree(f_const, x, (), what + " (constant operands)")
    J_p = assert_modes_agree(f, x, others, what + " (parameter operands)")
    assert_same(J_p, J, f"{what}: constants vs parameters", rtol=MODE_RTOL)

    # elementwise: the Jacobian is diagonal; its diagonal is the derivative, checked
    # against a central difference (zero for non-differentiable rows and operands)
    off = J[~np.eye(x.size, dtype=bool)]
    assert np.all(off == 0.0), f"{what}: off-diagonal Jacobian entries {off[off != 0]}"
    diag = np.diagonal(J)
    if prim.diff and prim.d[k] is not None:
        fd, scale, h = central_difference(lambda a: value(prim, a), args, k)
        assert_matches_fd(diag, fd, scale, h, f"{what}: Jacobian diagonal", args)
    else:
        assert np.all(diag == 0.0), f"{what}: nonzero derivative {diag}"

    # replay the same tape at a second point (all operands new): equals a fresh recording,
    # the Dual result there and NumPy's value
    args2 = sample(prim, which=1)
    x2 = args2[k]
    others2 = [a for i, a in enumerate(args2) if i != k]
    tp = dualtape.tape(f, x, *others)
    tp.jacobian(x, *others)
    replayed = tp.jacobian(x2, *others2)
    fresh = dualtape.tape(f, x2, *others2).jacobian(x2, *others2)
    dual = dual_jacobian(f, x2, *others2)
    assert_same(replayed, fresh, f"{what}: replayed tape vs fresh recording", rtol=0.0)
    assert_same(replayed, dual, f"{what}: replayed tape vs Dual at the second point",
                rtol=MODE_RTOL)
    with np.errstate(all="ignore"):
        want = np.asarray(apply(prim, args2), dtype=float)
    assert_same(tp(x2, *others2), want, f"{what}: replayed value vs NumPy", args2,
                rtol=MODE_RTOL)


# ---------------------------------------------------------------------------- 6. kinks

def assert_derivative(f, x, expected, what, rtol=0.0, equal_nan=False):
    """The derivative of the elementwise f at x is ``expected`` (the Jacobian is diagonal)
    in forward mode (jvp with v = 1, and jacobian(mode='forward')) and in reverse mode (a
    tape's Jacobian); every mode is run and every failure reported."""
    expected = np.asarray(expected, dtype=float)
    modes = [
        ("Dual jvp(f, x, ones)", lambda: dual_jvp(f, x, np.ones_like(x))[1], expected),
        ("forward jvp(f, x, ones)", lambda: dualtape.jvp(f, x, np.ones_like(x))[1],
         expected),
        ("jacobian(f, mode='forward')", lambda: dualtape.jacobian(f, mode="forward")(x),
         np.diag(expected)),
        ("reverse: tape(f, x).jacobian(x)", lambda: dualtape.tape(f, x).jacobian(x),
         np.diag(expected)),
    ]
    problems = []
    for mode, run, want in modes:
        try:
            with np.errstate(invalid="ignore"):
                got = np.asarray(run(), dtype=float)
        except Exception as e:   # noqa: BLE001 - reported below with the other modes
            problems.append(f"  {mode}: raised {type(e).__name__}: {e}")
            continue
        with np.errstate(invalid="ignore"):
            ok = got.shape == want.shape and np.allclose(got, want, rtol=rtol, atol=0.0,
                                                         equal_nan=equal_nan)
        if not ok:
            problems.append(f"  {mode}: got {got.tolist()}, expected {want.tolist()}")
    assert not problems, f"derivative of {what} at x = {x.tolist()}:\n" + "\n".join(problems)


def test_abs_derivative_at_zero_is_zero():
    x = np.array([0.0, -0.0, 1.5, -2.0])
    assert_derivative(np.abs, x, [0.0, 0.0, 1.0, -1.0], "abs")
    assert_derivative(lambda x: abs(x), x, [0.0, 0.0, 1.0, -1.0], "abs via the operator")


@pytest.mark.parametrize("fn", [np.maximum, np.minimum], ids=["maximum", "minimum"])
def test_maximum_minimum_split_ties_evenly(fn):
    x = np.array([0.5, -1.0, 2.0, 3.0])
    c = np.array([0.5, -1.0, 1.0, 4.0])          # ties at 0 and 1
    wins = (x > c) if fn is np.maximum else (x < c)
    expected = np.where(x == c, 0.5, wins * 1.0)
    assert_derivative(lambda x: fn(x, c), x, expected, f"{fn.__name__}(x, c)")
    assert_derivative(lambda x: fn(c, x), x, expected, f"{fn.__name__}(c, x)")
    assert_derivative(lambda x: fn(x, x), x, np.ones(4), f"{fn.__name__}(x, x)")
    # a scalar constant (broadcast operand on the tape)
    z = np.array([0.0, 1.0, -1.0])
    expected = [0.5, 1.0, 0.0] if fn is np.maximum else [0.5, 0.0, 1.0]
    assert_derivative(lambda x: fn(x, 0.0), z, expected, f"{fn.__name__}(x, 0.0)")


def test_clip_passes_derivative_on_closed_interval():
    x = np.array([-1.0, 2.0, 0.5, -3.0, 5.0])
    expected = [1.0, 1.0, 1.0, 0.0, 0.0]
    assert_derivative(lambda x: np.clip(x, -1.0, 2.0), x, expected, "clip(x, -1, 2)")
    lo, hi = np.full(5, -1.0), np.full(5, 2.0)
    assert_derivative(lambda x: np.clip(x, lo, hi), x, expected, "clip(x, lo, hi)")
    assert_derivative(lambda x: x.clip(-1.0, 2.0), x, expected, "x.clip(-1, 2)")
    # the bounds get nothing at x == lo / x == hi (x takes it all), 1 where they bind
    X = x.copy()
    assert_derivative(lambda lo: np.clip(X, lo, hi), lo, [0.0, 0.0, 0.0, 1.0, 0.0],
                      "clip: d/d lo")
    assert_derivative(lambda hi: np.clip(X, lo, hi), hi, [0.0, 0.0, 0.0, 0.0, 1.0],
                      "clip: d/d hi")


def test_select_guarding_sqrt_at_zero_has_no_nan():
    x = np.array([0.0, 4.0])

    def f(x):
        return np.where(x > 0, np.sqrt(x), 0.0)
    assert_derivative(f, x, [0.0, 0.25], "np.where(x > 0, np.sqrt(x), 0.0)")


# ---------------------------------------------------------------------------- 7. zero derivative

NONDIFF_CASES = [(p, k) for p in NONDIFF_ROWS for k in range(p.arity)]


@pytest.mark.parametrize("prim,k", NONDIFF_CASES,
                         ids=[f"{p.name}-operand{k}" for p, k in NONDIFF_CASES])
def test_non_differentiable_rows_give_zero_derivatives(prim, k):
    args = sample(prim)
    x = args[k]

    def f(x):
        return apply(prim, _with(args, k, x))
    assert_derivative(f, x, np.zeros(x.size), f"{prim.name} (operand {k} varying)")
    # the tape still computes the value (truth values as 0.0 / 1.0)
    tp = dualtape.tape(f, x)
    x2 = sample(prim, which=1)[k]
    with np.errstate(all="ignore"):
        want = np.asarray(f(x2), dtype=float)
    assert_same(tp(x2), want, f"{prim.name}: replayed value", rtol=0.0)

    # and a non-differentiable result is a constant further down
    def g(x):
        return np.sin(x) + apply(prim, _with(args, k, x))
    with np.errstate(invalid="ignore"):
        cos = np.cos(x)
    assert_derivative(g, x, cos, f"sin(x) + {prim.name}(...)", rtol=1e-14, equal_nan=True)
