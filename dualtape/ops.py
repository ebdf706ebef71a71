"""The primitive table: the one place where the math of every elementwise operation lives.

Each row gives an operation's value, its first partials and its second partials as
expressions in the operands ``x``, ``y``, ``z`` and the already computed value ``o``.
The same strings drive every mode:

* ``Dual`` (forward mode) evaluates them on NumPy arrays through :func:`numpy_fn`;
* the tape recorder evaluates the value on NumPy arrays while tracing;
* ``python -m dualtape.gen`` writes them, as scalar code, into the generated region of
  ``dualtape/kernels.py``, where the Numba sweeps run them element by element.
  ``tests/test_ops.py`` fails when that region is out of date.

Expressions may call ``np.*`` functions that exist both in NumPy and, on scalars, in Numba,
and the helper ``sel(c, a, b)`` (select ``a`` where ``c`` is true), which has a NumPy and a
scalar implementation. Conventions at kinks are part of the table and hold in every mode:
``abs'(0) = 0``; ``maximum`` and ``minimum`` split a tie evenly; ``clip`` passes the
derivative to ``x`` on the closed interval ``[lo, hi]``.
"""
import math
import sys
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Primitive:
    """One elementwise operation.

    ``d`` holds one first-partial expression per operand (``None``: the operand gets no
    derivative, as the condition of a select). ``d2`` maps ``(i, j)`` with ``i <= j`` to the
    second partial; missing pairs are zero. ``diff=False`` marks operations whose derivative
    is zero everywhere it exists (comparisons, ``floor``, ``sign``): their results carry no
    derivative at all, and on a tape they are data, not differentiable values.
    """

    name: str
    arity: int
    value: str
    d: tuple = ()
    d2: dict = field(default_factory=dict)
    ufuncs: tuple = ()
    diff: bool = True
    boolean: bool = False  # result is a truth value (comparisons, logical ops, isnan)
    scipy: str = ""        # the scipy.special ufunc of that name (registered on first use)

    @property
    def code(self):
        return OPCODES[self.name]


LN2 = "0.6931471805599453"
LN10 = "2.302585092994046"
PI = repr(math.pi)
TWO_OVER_SQRT_PI = repr(2.0 / math.sqrt(math.pi))
INV_SQRT_2PI = repr(1.0 / math.sqrt(2.0 * math.pi))


def _horner(coefs, var):
    """c0 + var * (c1 + var * (...)) as an expression string."""
    out = repr(coefs[-1])
    for c in reversed(coefs[:-1]):
        out = f"{c!r} + {var} * ({out})"
    return out


# Taylor series of sinc' / x and sinc'' in x * x, to the x**10 term (|x| < 0.1: < 1e-16)
_SINC_D = _horner([(-1) ** k * 2 * k * math.pi ** (2 * k) / math.factorial(2 * k + 1)
                   for k in range(1, 7)], "(x * x)")
_SINC_D2 = _horner([(-1) ** k * 2 * k * (2 * k - 1) * math.pi ** (2 * k)
                    / math.factorial(2 * k + 1) for k in range(1, 7)], "(x * x)")

_ROWS = [
    # ---- arithmetic
    Primitive("add", 2, "x + y", ("1.0", "1.0"), {}, (np.add,)),
    Primitive("sub", 2, "x - y", ("1.0", "-1.0"), {}, (np.subtract,)),
    Primitive("mul", 2, "x * y", ("y", "x"), {(0, 1): "1.0"}, (np.multiply,)),
    Primitive("div", 2, "x / y", ("1.0 / y", "-o / y"),
              {(0, 1): "-1.0 / (y * y)", (1, 1): "2.0 * o / (y * y)"},
              (np.divide,)),
    Primitive("neg", 1, "-x", ("-1.0",), {}, (np.negative,)),
    # a fresh copy (np.copy, x.copy(), the fill of zeros_like and full_like)
    Primitive("copy", 1, "x", ("1.0",), {}, ()),
    # A guarded partial keeps its formula where the formula is finite (y * x**(y - 1) at
    # y == 0, x / y at x == 0): nested Duals differentiate the partial itself, and a
    # constant 0.0 there would drop the mixed second derivative.
    Primitive("pow", 2, "np.power(x, y)",
              ("sel((y == 0.0) & ((x == 0.0) | (x != x)), 0.0, y * np.power(x, y - 1.0))",
               "sel(o == 0.0, 0.0, o * np.log(x))"),
              {(0, 0): "sel(y * (y - 1.0) == 0.0, 0.0, y * (y - 1.0) * np.power(x, y - 2.0))",
               (0, 1): "sel(x == 0.0, 0.0, np.power(x, y - 1.0) * (1.0 + y * np.log(x)))",
               (1, 1): "sel(o == 0.0, 0.0, o * np.log(x) * np.log(x))"},
              (np.power, np.float_power)),
    Primitive("square", 1, "x * x", ("2.0 * x",), {(0, 0): "2.0"}, (np.square,)),
    Primitive("sqrt", 1, "np.sqrt(x)", ("0.5 / o",), {(0, 0): "-0.25 / (o * o * o)"},
              (np.sqrt,)),
    Primitive("cbrt", 1, "np.cbrt(x)", ("1.0 / (3.0 * o * o)",),
              {(0, 0): "-2.0 / (9.0 * o * o * o * o * o)"}, (np.cbrt,)),
    Primitive("reciprocal", 1, "1.0 / x", ("-o * o",), {(0, 0): "2.0 * o * o * o"},
              (np.reciprocal,)),
    Primitive("mod", 2, "np.remainder(x, y)", ("1.0", "-np.floor(x / y)"), {},
              (np.remainder, np.mod)),
    # ---- exponentials and logarithms
    Primitive("exp", 1, "np.exp(x)", ("o",), {(0, 0): "o"}, (np.exp,)),
    Primitive("exp2", 1, "np.exp2(x)", ("o * " + LN2,), {(0, 0): f"o * {LN2} * {LN2}"},
              (np.exp2,)),
    Primitive("expm1", 1, "np.expm1(x)", ("o + 1.0",), {(0, 0): "o + 1.0"}, (np.expm1,)),
    Primitive("log", 1, "np.log(x)", ("1.0 / x",), {(0, 0): "-1.0 / (x * x)"}, (np.log,)),
    Primitive("log1p", 1, "np.log1p(x)", ("1.0 / (1.0 + x)",),
              {(0, 0): "-1.0 / ((1.0 + x) * (1.0 + x))"}, (np.log1p,)),
    Primitive("log2", 1, "np.log2(x)", (f"1.0 / (x * {LN2})",),
              {(0, 0): f"-1.0 / (x * x * {LN2})"}, (np.log2,)),
    Primitive("log10", 1, "np.log10(x)", (f"1.0 / (x * {LN10})",),
              {(0, 0): f"-1.0 / (x * x * {LN10})"}, (np.log10,)),
    Primitive("logaddexp", 2, "np.logaddexp(x, y)", ("np.exp(x - o)", "np.exp(y - o)"),
              {(0, 0): "np.exp(x - o) * (1.0 - np.exp(x - o))",
               (0, 1): "-np.exp(x - o) * np.exp(y - o)",
               (1, 1): "np.exp(y - o) * (1.0 - np.exp(y - o))"},
              (np.logaddexp,)),
    # ---- trigonometric
    Primitive("sin", 1, "np.sin(x)", ("np.cos(x)",), {(0, 0): "-o"}, (np.sin,)),
    Primitive("cos", 1, "np.cos(x)", ("-np.sin(x)",), {(0, 0): "-o"}, (np.cos,)),
    Primitive("tan", 1, "np.tan(x)", ("1.0 + o * o",), {(0, 0): "2.0 * o * (1.0 + o * o)"},
              (np.tan,)),
    Primitive("arcsin", 1, "np.arcsin(x)", ("1.0 / np.sqrt(1.0 - x * x)",),
              {(0, 0): "x / ((1.0 - x * x) * np.sqrt(1.0 - x * x))"}, (np.arcsin,)),
    Primitive("arccos", 1, "np.arccos(x)", ("-1.0 / np.sqrt(1.0 - x * x)",),
              {(0, 0): "-x / ((1.0 - x * x) * np.sqrt(1.0 - x * x))"}, (np.arccos,)),
    Primitive("arctan", 1, "np.arctan(x)", ("1.0 / (1.0 + x * x)",),
              {(0, 0): "-2.0 * x / ((1.0 + x * x) * (1.0 + x * x))"}, (np.arctan,)),
    Primitive("arctan2", 2, "np.arctan2(x, y)",
              ("y / (x * x + y * y)", "-x / (x * x + y * y)"),
              {(0, 0): "-2.0 * x * y / ((x * x + y * y) * (x * x + y * y))",
               (0, 1): "(x * x - y * y) / ((x * x + y * y) * (x * x + y * y))",
               (1, 1): "2.0 * x * y / ((x * x + y * y) * (x * x + y * y))"},
              (np.arctan2,)),
    Primitive("hypot", 2, "np.hypot(x, y)", ("x / o", "y / o"),
              {(0, 0): "y * y / (o * o * o)", (0, 1): "-x * y / (o * o * o)",
               (1, 1): "x * x / (o * o * o)"},
              (np.hypot,)),
    # ---- hyperbolic
    Primitive("sinh", 1, "np.sinh(x)", ("np.cosh(x)",), {(0, 0): "o"}, (np.sinh,)),
    Primitive("cosh", 1, "np.cosh(x)", ("np.sinh(x)",), {(0, 0): "o"}, (np.cosh,)),
    Primitive("tanh", 1, "np.tanh(x)", ("1.0 - o * o",), {(0, 0): "-2.0 * o * (1.0 - o * o)"},
              (np.tanh,)),
    Primitive("arcsinh", 1, "np.arcsinh(x)", ("1.0 / np.sqrt(x * x + 1.0)",),
              {(0, 0): "-x / ((x * x + 1.0) * np.sqrt(x * x + 1.0))"}, (np.arcsinh,)),
    Primitive("arccosh", 1, "np.arccosh(x)", ("1.0 / np.sqrt(x * x - 1.0)",),
              {(0, 0): "-x / ((x * x - 1.0) * np.sqrt(x * x - 1.0))"}, (np.arccosh,)),
    Primitive("arctanh", 1, "np.arctanh(x)", ("1.0 / (1.0 - x * x)",),
              {(0, 0): "2.0 * x / ((1.0 - x * x) * (1.0 - x * x))"}, (np.arctanh,)),
    # ---- kinks and selections
    Primitive("abs", 1, "np.abs(x)", ("np.sign(x)",), {}, (np.absolute, np.fabs)),
    Primitive("maximum", 2, "np.maximum(x, y)",
              ("(x > y) + 0.5 * (x == y)", "(x < y) + 0.5 * (x == y)"), {},
              (np.maximum,)),
    Primitive("minimum", 2, "np.minimum(x, y)",
              ("(x < y) + 0.5 * (x == y)", "(x > y) + 0.5 * (x == y)"), {},
              (np.minimum,)),
    # fmax / fmin ignore a NaN operand: the other one gets the whole derivative
    Primitive("fmax", 2, "np.fmax(x, y)",
              ("(x > y) + 0.5 * (x == y) + (y != y) * (x == x)",
               "(x < y) + 0.5 * (x == y) + (x != x) * (y == y)"), {}, (np.fmax,)),
    Primitive("fmin", 2, "np.fmin(x, y)",
              ("(x < y) + 0.5 * (x == y) + (y != y) * (x == x)",
               "(x > y) + 0.5 * (x == y) + (x != x) * (y == y)"), {}, (np.fmin,)),
    # written with selects, not maximum/minimum, so that a tie at a bound keeps x's
    # derivative at every nesting level; NaN bounds propagate as in np.clip
    Primitive("clip", 3, "sel((sel((x < y) | (y != y), y, x) > z) | (z != z), z, "
                         "sel((x < y) | (y != y), y, x))",
              ("((x >= y) & (x <= z)) * 1.0", "(x < y) * 1.0", "(x > z) * (x >= y) * 1.0"),
              {}),
    Primitive("select", 3, "sel(x != 0.0, y, z)", (None, "(x != 0.0) * 1.0", "(x == 0.0) * 1.0"),
              {}),
    # ---- piecewise constant: zero derivative, results carry none
    Primitive("sign", 1, "np.sign(x)", diff=False, ufuncs=(np.sign,)),
    Primitive("floor", 1, "np.floor(x)", diff=False, ufuncs=(np.floor,)),
    Primitive("ceil", 1, "np.ceil(x)", diff=False, ufuncs=(np.ceil,)),
    Primitive("rint", 1, "np.rint(x)", diff=False, ufuncs=(np.rint,)),
    Primitive("trunc", 1, "np.trunc(x)", diff=False, ufuncs=(np.trunc,)),
    Primitive("floor_divide", 2,
              # NumPy's (and Python's) rule, exact where floor(x / y) rounds wrongly
              "sel(y == 0.0, x / y, np.rint((x - np.fmod(x, y)) / y"
              " - ((np.fmod(x, y) != 0) & ((y < 0) != (np.fmod(x, y) < 0)))))", diff=False, ufuncs=(np.floor_divide,)),
    # ---- comparisons and logic: truth values, stored as 0.0 / 1.0 on a tape
    Primitive("less", 2, "x < y", diff=False, boolean=True, ufuncs=(np.less,)),
    Primitive("less_equal", 2, "x <= y", diff=False, boolean=True, ufuncs=(np.less_equal,)),
    Primitive("greater", 2, "x > y", diff=False, boolean=True, ufuncs=(np.greater,)),
    Primitive("greater_equal", 2, "x >= y", diff=False, boolean=True,
              ufuncs=(np.greater_equal,)),
    Primitive("equal", 2, "x == y", diff=False, boolean=True, ufuncs=(np.equal,)),
    Primitive("not_equal", 2, "x != y", diff=False, boolean=True, ufuncs=(np.not_equal,)),
    Primitive("logical_and", 2, "(x != 0) & (y != 0)", diff=False, boolean=True,
              ufuncs=(np.logical_and, np.bitwise_and)),
    Primitive("logical_or", 2, "(x != 0) | (y != 0)", diff=False, boolean=True,
              ufuncs=(np.logical_or, np.bitwise_or)),
    Primitive("logical_xor", 2, "(x != 0) ^ (y != 0)", diff=False, boolean=True,
              ufuncs=(np.logical_xor, np.bitwise_xor)),
    Primitive("logical_not", 1, "x == 0", diff=False, boolean=True,
              ufuncs=(np.logical_not, np.invert)),
    Primitive("isnan", 1, "np.isnan(x)", diff=False, boolean=True, ufuncs=(np.isnan,)),
    Primitive("isinf", 1, "np.isinf(x)", diff=False, boolean=True, ufuncs=(np.isinf,)),
    Primitive("isfinite", 1, "np.isfinite(x)", diff=False, boolean=True,
              ufuncs=(np.isfinite,)),
    # ---- appended rows (a saved tape's opcodes keep their meaning: new rows go last)
    Primitive("logaddexp2", 2, "np.logaddexp2(x, y)",
              ("np.exp2(x - o)", "np.exp2(y - o)"),
              {(0, 0): f"{LN2} * np.exp2(x - o) * (1.0 - np.exp2(x - o))",
               (0, 1): f"-{LN2} * np.exp2(x - o) * np.exp2(y - o)",
               (1, 1): f"{LN2} * np.exp2(y - o) * (1.0 - np.exp2(y - o))"},
              (np.logaddexp2,)),
    # fmod(x, y) = x - trunc(x / y) * y (the sign of x, as C's fmod)
    Primitive("fmod", 2, "np.fmod(x, y)", ("1.0", "-np.trunc(x / y)"), {}, (np.fmod,)),
    # sin(pi x) / (pi x) (np.sinc, a function rather than a ufunc); near 0 the quotient
    # forms cancel, so a Taylor series takes over
    Primitive("sinc", 1, "np.sinc(x)",
              (f"sel(np.abs(x) < 0.1, x * ({_SINC_D}), (np.cos({PI} * x) - o) / x)",),
              {(0, 0): f"sel(np.abs(x) < 0.1, {_SINC_D2}, "
                       f"-{PI} * {PI} * o - 2.0 * (np.cos({PI} * x) - o) / (x * x))"}),
    # the step has derivative zero where it exists (it jumps at 0): no derivative at all
    Primitive("heaviside", 2, "sel(x != x, x, sel(x < 0.0, 0.0, sel(x > 0.0, 1.0, y)))",
              diff=False, ufuncs=(np.heaviside,)),
    # ---- scipy.special (the helpers below have NumPy forms here, Numba forms in kernels.py)
    Primitive("expit", 1, "expit(x)", ("o * expit(-x)",),
              {(0, 0): "o * expit(-x) * (expit(-x) - o)"}, scipy="expit"),
    Primitive("logit", 1, "logit(x)", ("1.0 / (x * (1.0 - x))",),
              {(0, 0): "(2.0 * x - 1.0) / (x * x * (1.0 - x) * (1.0 - x))"}, scipy="logit"),
    Primitive("log_expit", 1, "log_expit(x)", ("expit(-x)",),
              {(0, 0): "-expit(x) * expit(-x)"}, scipy="log_expit"),
    Primitive("erf", 1, "erf(x)", (f"{TWO_OVER_SQRT_PI} * np.exp(-x * x)",),
              {(0, 0): f"-2.0 * x * {TWO_OVER_SQRT_PI} * np.exp(-x * x)"}, scipy="erf"),
    Primitive("erfc", 1, "erfc(x)", (f"-{TWO_OVER_SQRT_PI} * np.exp(-x * x)",),
              {(0, 0): f"2.0 * x * {TWO_OVER_SQRT_PI} * np.exp(-x * x)"}, scipy="erfc"),
    Primitive("gammaln", 1, "gammaln(x)", ("digamma(x)",), {(0, 0): "trigamma(x)"},
              scipy="gammaln"),
    Primitive("digamma", 1, "digamma(x)", ("trigamma(x)",), {(0, 0): "tetragamma(x)"},
              scipy="psi"),
    # x * log(y), 0 where x == 0 (unless y is NaN), as scipy.special.xlogy
    Primitive("xlogy", 2, "sel((x == 0.0) & (y == y), 0.0, x * np.log(y))",
              ("np.log(y)", "x / sel((x == 0.0) & ((y == 0.0) | (y != y)), 1.0, y)"),
              {(0, 1): "1.0 / y", (1, 1): "sel(x == 0.0, 0.0, -x / (y * y))"},
              scipy="xlogy"),
    Primitive("xlog1py", 2, "sel((x == 0.0) & (y == y), 0.0, x * np.log1p(y))",
              ("np.log1p(y)", "x / sel((x == 0.0) & ((y == -1.0) | (y != y)), 1.0, 1.0 + y)"),
              {(0, 1): "1.0 / (1.0 + y)",
               (1, 1): "sel(x == 0.0, 0.0, -x / ((1.0 + y) * (1.0 + y)))"},
              scipy="xlog1py"),
    Primitive("ndtr", 1, "ndtr(x)", (f"{INV_SQRT_2PI} * np.exp(-0.5 * x * x)",),
              {(0, 0): f"-x * {INV_SQRT_2PI} * np.exp(-0.5 * x * x)"}, scipy="ndtr"),
    # log Phi(x), stable for very negative x; its derivative phi / Phi is a helper too
    Primitive("log_ndtr", 1, "log_ndtr(x)", ("dlog_ndtr(x)",),
              {(0, 0): "-dlog_ndtr(x) * (x + dlog_ndtr(x))"}, scipy="log_ndtr"),
]

#: name -> Primitive, in opcode order. Opcodes 1.. are elementwise, in row order (new rows
#: go at the end, so a saved tape's opcodes keep their meaning); the structural opcodes
#: (gather, reductions, matrix product, guards) start at ``STRUCTURAL_BASE``.
TABLE = {p.name: p for p in _ROWS}
OPCODES = {name: i + 1 for i, name in enumerate(TABLE)}
STRUCTURAL_BASE = 128
assert len(TABLE) < STRUCTURAL_BASE

#: Instructions that are not elementwise; each is a special case in the sweeps. New ones go
#: at the end of this tuple.
STRUCTURAL = ("gather", "gather_dyn", "concat", "reduce_sum", "reduce_prod", "reduce_max",
              "reduce_min", "argmax", "argmin", "matmul", "nonzero", "guard", "scatter",
              "callback",   # a custom rule: the sweeps stop and Python runs it (custom.py)
               "argsort",    # stable order along an axis: index data, recomputed at replay
               "searchsorted",   # insertion positions in a sorted vector: index data
               "cumsum",     # running sums along one axis, (outer, r, inner) as a reduction
               "cumprod",    # running products, the same format
              "linalg")     # a matrix function (solve, slogdet, cholesky, eigh): kernels.la_*
for _i, _name in enumerate(STRUCTURAL):
    OPCODES[_name] = STRUCTURAL_BASE + _i
del _i, _name

#: ufunc -> Primitive, for ``__array_ufunc__``. The scipy.special ufuncs join on first use
#: (``row_of``): importing scipy.special costs ~0.2 s, which a user who calls it has paid.
BY_UFUNC = {u: p for p in _ROWS for u in p.ufuncs}
SCIPY_ROWS = {p.scipy: p for p in _ROWS if p.scipy}
SCIPY_ALIASES = {"digamma": "psi"}   # scipy.special.digamma is the ufunc psi


def row_of(ufunc):
    """The Primitive implementing ``ufunc`` (a NumPy or scipy.special ufunc), or None."""
    prim = BY_UFUNC.get(ufunc)
    if prim is None and ufunc.__name__ in SCIPY_ROWS:
        special = sys.modules.get("scipy.special")
        if special is not None and getattr(special, ufunc.__name__, None) is ufunc:
            prim = BY_UFUNC[ufunc] = SCIPY_ROWS[ufunc.__name__]
    return prim
#: ufuncs that are the identity on real float64 values.
IDENTITY_UFUNCS = (np.positive, np.conjugate)


# ---------------------------------------------------------------------------- NumPy side

def sel(c, a, b):
    """Select ``a`` where ``c`` holds, else ``b``."""
    return np.where(c, a, b)


# Special functions the table calls. Each has this NumPy form (SciPy's ufunc, imported on
# first use) and a scalar Numba form of the same name in kernels.py; tests/test_ops.py
# checks that the two agree.

def _special():
    import scipy.special
    return scipy.special


def _scipy(name, *front):
    def fn(x):
        if front and not isinstance(x, (np.ndarray, float, int)):
            # scipy.special.polygamma converts x with np.asarray: a Dual of an enclosing
            # differentiation (a third derivative of gammaln by nesting) cannot pass
            raise NotImplementedError(
                "third and higher derivatives of scipy.special.gammaln / digamma by nested "
                "differentiation are not supported (they need polygamma)")
        return getattr(_special(), name)(*front, x)
    fn.__name__ = name
    return fn


def dlog_ndtr(x):
    """d/dx log Phi(x) = phi(x) / Phi(x); below -20 from the asymptotic series of Phi.
    Written with ufuncs, so that nested Dual numbers pass through it."""
    with np.errstate(all="ignore"):
        body = np.exp(-0.5 * x * x - _special().log_ndtr(x)) * float(INV_SQRT_2PI)
        r = 1.0 / (x * x)
        tail = -x / (1.0 + r * np.polyval(NDTR_TAIL[::-1], r))
    return np.where(x <= -20.0, tail, body)


#: Phi(x) = phi(x) / (-x) * (1 + sum_k NDTR_TAIL[k] / x**(2k + 2)) for x -> -inf:
#: the coefficients (-1)**k (2k + 1)!!; ten terms are exact to rounding below -20
NDTR_TAIL = tuple(float((-1) ** (k + 1) * math.prod(range(1, 2 * k + 2, 2)))
                  for k in range(10))

_NAMESPACE = {"np": np, "sel": sel, "dlog_ndtr": dlog_ndtr,
              "trigamma": _scipy("polygamma", 1), "tetragamma": _scipy("polygamma", 2),
              "digamma": _scipy("psi")}
_NAMESPACE.update({n: _scipy(n) for n in ("expit", "logit", "log_expit", "erf", "erfc",
                                          "gammaln", "ndtr", "log_ndtr")})
_ARGS = ("x", "y", "z")


def _compile(expr, arity, with_o):
    args = ", ".join(_ARGS[:arity] + (("o",) if with_o else ()))
    return eval(f"lambda {args}: {expr}", dict(_NAMESPACE))  # noqa: S307 - table strings only


_CACHE = {}


def numpy_fn(prim, which):
    """The table entry as a NumPy function.

    ``which`` is ``"value"`` (``f(x, y, z)``), ``("d", i)`` (``f(x, y, z, o)``) or
    ``("d2", i, j)``. Missing second partials give ``None``.
    """
    key = (prim.name, which)
    if key not in _CACHE:
        if which == "value":
            fn = _compile(prim.value, prim.arity, False)
        elif which[0] == "d":
            expr = prim.d[which[1]] if prim.diff else None
            fn = None if expr is None else _compile(expr, prim.arity, True)
        else:
            i, j = sorted(which[1:])
            expr = prim.d2.get((i, j))
            fn = None if expr is None else _compile(expr, prim.arity, True)
        _CACHE[key] = fn
    return _CACHE[key]
