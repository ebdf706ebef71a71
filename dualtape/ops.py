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

    @property
    def code(self):
        return OPCODES[self.name]


LN2 = "0.6931471805599453"
LN10 = "2.302585092994046"

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
    Primitive("pow", 2, "np.power(x, y)",
              ("sel(y == 0.0, 0.0, y * np.power(x, y - 1.0))",
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
              "linalg")     # a matrix function (solve, slogdet, cholesky, eigh): kernels.la_*
for _i, _name in enumerate(STRUCTURAL):
    OPCODES[_name] = STRUCTURAL_BASE + _i
del _i, _name

#: ufunc -> Primitive, for ``__array_ufunc__``.
BY_UFUNC = {u: p for p in _ROWS for u in p.ufuncs}
#: ufuncs that are the identity on real float64 values.
IDENTITY_UFUNCS = (np.positive, np.conjugate)


# ---------------------------------------------------------------------------- NumPy side

def sel(c, a, b):
    """Select ``a`` where ``c`` holds, else ``b`` (the table's only helper)."""
    return np.where(c, a, b)


_NAMESPACE = {"np": np, "sel": sel}
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
