"""The Numba sweeps over a tape: plain loops over flat arrays, compiled once per type.

A tape is three arrays (``docs/design.md`` describes every field):

* ``prog``   int64: a header (``H_*``), side tables (gather positions, reduction shapes,
  concatenation lists), then the instructions, ``NCOL`` integers each (``program`` views
  them as ``code``, shape ``(n_instr, NCOL)``): opcode, result slot ``(OUT, N)``, operand
  slots ``(A, NA)``, ``(B, NB)``, ``(C, NC)``, ``AUX`` (an offset into ``prog``, a guard's
  recorded outcome, a gather's wrap flag or a searchsorted's side) and ``FLAGS`` (bit k:
  operand k needs an adjoint). One array, so that a call passes one argument for the whole program;
* ``consts`` float64: the constants (copied into the workspace once).

A sweep works in one float64 *workspace* ``w``: the value buffer ``w[:T]`` (inputs, then
parameters, then one slot per instruction result, then the constants), the adjoint buffer
``w[T:2T]``, four tiles of ``TILE`` values for broadcast operands, and room for one
partial (``work_size``). Truth values and indices are stored as floats. The caller keeps
one workspace per tape and thread with the constants in place, so a replay allocates
nothing; the reverse sweep leaves the adjoint buffer all zero again (each slot's adjoint is
cleared as soon as its producer has been swept).

The forward sweep is the one place that switches on elementwise opcodes; an elementwise
instruction runs over whole slices, or tile by tile when an operand is a size-1 value
broadcast over the others (it is copied into a filled tile), so every inner loop is a plain
loop over slices; a run of elementwise instructions over more than ``STRIP`` elements
runs strip by strip (``forward_strips``). The per-instruction helpers take the workspace and offsets rather than
array views, and are compiled without reference counting (``leaf``): passing views to a
separately compiled function costs ~30x more than the loop itself at small n.

Return codes: ``OK`` (-1) success; ``i >= 0`` the guard of instruction ``i`` flipped (the
branch recorded is not the branch taken at this point); ``ERR_INDEX - i`` an index computed
at replay by instruction ``i`` was out of bounds; ``CALL_STOP + i``: instruction ``i`` is a
``CALLBACK`` (a custom derivative rule, ``H_NCALL`` of them) or a ``LINALG`` (a matrix
function, ``HAS_LINALG`` in ``H_FLAGS``): the sweep stopped there, for Python to run the
rule (for LINALG the jitted ``la_*`` functions, compiled only when a tape has one) and
resume after it (``custom.py``). ``reverse``, ``tangent`` and ``reverse2`` likewise return
the index of an active callback or LINALG they reach (else -1); such a tape cannot run in
the all-compiled entries.
"""
import functools
import math

import numba
import numpy as np
from numba.core import registry, types


class Dispatcher(registry.CPUDispatcher):
    """A jitted function compiled once per argument *type*, whoever calls it.

    Called from another jitted function with a constant (``f(x, 0, True)``, a module
    constant such as ``STRIP``, an omitted default), Numba would compile a separate copy of
    ``f`` specialised on that value (``Literal[int](0)``, ``Literal[bool](True)``,
    ``omitted(default=False)``), and each copy is a full compile, linked into every caller
    again: the main cost of the cold start (docs/design.md, "Compile policy"). Typing each
    call on plain types (int64, bool) makes one compiled function serve every caller, Python
    ones included; the values still arrive at run time, so results are unchanged."""

    def get_call_template(self, args, kws):
        _, args = self._compiler.fold_argument_types(args, kws)
        plain = tuple(numba.typeof(a.value) if isinstance(a, types.Omitted)
                      else types.unliteral(a) for a in args)
        return super().get_call_template(plain, {})


def jit(fn=None, **options):
    """``numba.njit(cache=True, nogil=True, error_model="numpy", **options)`` as a
    ``Dispatcher`` (no specialisation on constant arguments). error_model="numpy":
    1.0 / 0.0 is inf and 0.0 / 0.0 is NaN, as in NumPy."""
    if fn is None:
        return functools.partial(jit, **options)
    if numba.config.DISABLE_JIT:
        return fn
    opts = dict(nopython=True, boundscheck=None, nogil=True, error_model="numpy")
    disp = Dispatcher(py_func=fn, locals={}, targetoptions=dict(opts, **options))
    disp.enable_caching()
    return disp


#: helpers that never allocate: no reference counting on their array arguments
leaf = functools.partial(jit, _nrt=False)

# instruction columns
OP, OUT, N, A, NA, B, NB, C, NC, AUX, FLAGS = range(11)
NCOL = 11
# header of ``ints``
(H_TOTAL, H_CONST, H_NIN, H_NX, H_OUT, H_NOUT, H_OUTACT, H_CODE, H_NCODE, H_FLAGS,
 H_NCALL) = range(11)
HEADER = 11
HAS_SCATTER = 1       # bit of ints[H_FLAGS]: some instruction writes into an existing slot
HAS_LINALG = 2        # bit of ints[H_FLAGS]: a LINALG instruction (the sweeps stop there)

TILE = 512            # chunk of elementwise loops in the reverse sweep, and of broadcasts
#: strip of a run of elementwise instructions over the same element count, run tile by
#: tile so that intermediates stay in cache (measured: docs/design.md, "Strip-mining");
#: a multiple of TILE. Runs are strip-mined when their element count exceeds one strip.
STRIP = 32768
PARTIAL_EXPR, PARTIAL_CONST, PARTIAL_OPERAND = range(3)
OK = -1
ERR_INDEX = -2
CALL_STOP = 1 << 40  # forward status CALL_STOP + i: instruction i is a callback (custom rule)
MATMUL_BLAS = 4096   # m * k * n above which matrix products call BLAS

# ---- scalar special functions the table calls (their NumPy forms are in ops.py)

SQRT_HALF = 0.7071067811865476
INV_SQRT_2PI = 0.3989422804014327
# asymptotic series of Phi below -20 (ops.NDTR_TAIL: (-1)**(k+1) (2k+1)!!)
NDTR_TAIL = (-1.0, 3.0, -15.0, 105.0, -945.0, 10395.0, -135135.0, 2027025.0, -34459425.0,
             654729075.0)


@leaf
def expit(x):
    if x >= 0.0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


@leaf
def log_expit(x):
    if x >= 0.0:
        return -math.log1p(math.exp(-x))
    return x - math.log1p(math.exp(x))


@leaf
def logit(x):
    if 0.3 < x < 0.65:    # x / (1 - x) near 1: log1p keeps the digits
        return math.log1p((2.0 * x - 1.0) / (1.0 - x))
    return math.log(x / (1.0 - x))


@leaf
def erf(x):
    return math.erf(x)


@leaf
def erfc(x):
    return math.erfc(x)


@leaf
def ndtr(x):
    z = x * SQRT_HALF
    if abs(z) < SQRT_HALF:
        return 0.5 + 0.5 * math.erf(z)
    if z > 0.0:
        return 1.0 - 0.5 * math.erfc(z)
    return 0.5 * math.erfc(-z)


@leaf
def ndtr_tail(x):
    """1 + sum_k NDTR_TAIL[k] / x**(2k + 2): Phi(x) = phi(x) / (-x) times this (x <= -20)."""
    r = 1.0 / (x * x)
    s = 0.0
    for k in range(len(NDTR_TAIL) - 1, -1, -1):
        s = (s + NDTR_TAIL[k]) * r
    return 1.0 + s


@leaf
def log_ndtr(x):
    if x > -1.0:
        return math.log1p(-0.5 * math.erfc(x * SQRT_HALF))
    if x > -20.0:
        return math.log(0.5 * math.erfc(-x * SQRT_HALF))
    return -0.5 * x * x - math.log(-x) - 0.9189385332046728 + math.log(ndtr_tail(x))


@leaf
def dlog_ndtr(x):
    """phi(x) / Phi(x), the derivative of log_ndtr."""
    if x <= -20.0:
        return -x / ndtr_tail(x)
    return math.exp(-0.5 * x * x - log_ndtr(x)) * INV_SQRT_2PI


@leaf
def gammaln(x):
    if x <= 0.0 and x == math.floor(x):   # poles; -inf as SciPy gives it
        return -math.inf if x == -math.inf else math.inf
    return math.lgamma(x)


@leaf
def pole(x):
    """Whether x is 0 or a negative integer (or -inf): a pole of the polygamma functions."""
    return x <= 0.0 and x == math.floor(x)


@leaf
def cot_pi(x):
    """1 / tan(pi x), reduced to |r| <= 1/2 first so large |x| keeps its digits."""
    r = x - math.floor(x + 0.5)
    return 1.0 / math.tan(math.pi * r)


@leaf
def digamma(x):
    """psi(x): the recurrence psi(x) = psi(x + 1) - 1 / x up to x >= 10, then the
    asymptotic series; the reflection formula for x < 0."""
    if x != x:
        return x
    if pole(x):
        if x == 0.0:        # SciPy: -inf at +0, +inf at -0
            return -math.inf if math.copysign(1.0, x) > 0.0 else math.inf
        return math.nan
    acc = 0.0
    if x < 0.0:
        acc = -math.pi * cot_pi(x)
        x = 1.0 - x
    while x < 10.0:
        acc -= 1.0 / x
        x += 1.0
    f = 1.0 / (x * x)
    t = f * (-1.0 / 12.0 + f * (1.0 / 120.0 + f * (-1.0 / 252.0 + f * (
        1.0 / 240.0 + f * (-1.0 / 132.0 + f * (691.0 / 32760.0 + f * (-1.0 / 12.0)))))))
    return acc + math.log(x) - 0.5 / x + t


@leaf
def trigamma(x):
    """psi'(x), as digamma: recurrence, asymptotic series, reflection."""
    if x != x:
        return x
    if pole(x):
        return math.inf
    acc, sign = 0.0, 1.0
    if x < 0.0:      # reflection: psi'(x) = pi^2 / sin^2(pi x) - psi'(1 - x)
        s = math.sin(math.pi * (x - math.floor(x + 0.5)))
        acc, sign = math.pi * math.pi / (s * s), -1.0
        x = 1.0 - x
    while x < 10.0:
        acc += sign / (x * x)
        x += 1.0
    r = 1.0 / x
    f = r * r
    t = 1.0 / 6.0 + f * (-1.0 / 30.0 + f * (1.0 / 42.0 + f * (-1.0 / 30.0 + f * (
        5.0 / 66.0 + f * (-691.0 / 2730.0 + f * (7.0 / 6.0))))))
    return acc + sign * (r + 0.5 * f + r * f * t)


@leaf
def tetragamma(x):
    """psi''(x), as digamma: recurrence, asymptotic series, reflection."""
    if x != x:
        return x
    if pole(x):
        return -math.inf     # SciPy's value at every pole (the sign differs by side)
    acc = 0.0
    if x < 0.0:      # reflection: psi''(x) = psi''(1 - x) - 2 pi^3 cos(pi x) / sin^3(pi x)
        r = x - math.floor(x + 0.5)
        s = math.sin(math.pi * r)
        acc = -2.0 * math.pi ** 3 * math.cos(math.pi * r) / (s * s * s)
        x = 1.0 - x
    while x < 10.0:
        acc -= 2.0 / (x * x * x)
        x += 1.0
    f = 1.0 / (x * x)
    t = -0.5 + f * (1.0 / 6.0 + f * (-1.0 / 6.0 + f * (3.0 / 10.0 + f * (
        -5.0 / 6.0 + f * (691.0 / 210.0 + f * (-35.0 / 2.0))))))
    return acc - f - f / x + f * f * t


# ---- BEGIN GENERATED by `python -m dualtape.gen` from ops.TABLE; do not edit ----

ADD = 1
SUB = 2
MUL = 3
DIV = 4
NEG = 5
COPY = 6
POW = 7
SQUARE = 8
SQRT = 9
CBRT = 10
RECIPROCAL = 11
MOD = 12
EXP = 13
EXP2 = 14
EXPM1 = 15
LOG = 16
LOG1P = 17
LOG2 = 18
LOG10 = 19
LOGADDEXP = 20
SIN = 21
COS = 22
TAN = 23
ARCSIN = 24
ARCCOS = 25
ARCTAN = 26
ARCTAN2 = 27
HYPOT = 28
SINH = 29
COSH = 30
TANH = 31
ARCSINH = 32
ARCCOSH = 33
ARCTANH = 34
ABS = 35
MAXIMUM = 36
MINIMUM = 37
FMAX = 38
FMIN = 39
CLIP = 40
SELECT = 41
SIGN = 42
FLOOR = 43
CEIL = 44
RINT = 45
TRUNC = 46
FLOOR_DIVIDE = 47
LESS = 48
LESS_EQUAL = 49
GREATER = 50
GREATER_EQUAL = 51
EQUAL = 52
NOT_EQUAL = 53
LOGICAL_AND = 54
LOGICAL_OR = 55
LOGICAL_XOR = 56
LOGICAL_NOT = 57
ISNAN = 58
ISINF = 59
ISFINITE = 60
LOGADDEXP2 = 61
FMOD = 62
SINC = 63
HEAVISIDE = 64
EXPIT = 65
LOGIT = 66
LOG_EXPIT = 67
ERF = 68
ERFC = 69
GAMMALN = 70
DIGAMMA = 71
XLOGY = 72
XLOG1PY = 73
NDTR = 74
LOG_NDTR = 75
GATHER = 128
GATHER_DYN = 129
CONCAT = 130
REDUCE_SUM = 131
REDUCE_PROD = 132
REDUCE_MAX = 133
REDUCE_MIN = 134
ARGMAX = 135
ARGMIN = 136
MATMUL = 137
NONZERO = 138
GUARD = 139
SCATTER = 140
CALLBACK = 141
ARGSORT = 142
SEARCHSORTED = 143
CUMSUM = 144
CUMPROD = 145
LINALG = 146
N_ELEMENTWISE = 75


@leaf
def sel(c, a, b):
    return a if c else b


@leaf
def ew_value(op, t, w, xo, yo, zo, oo):
    """w[oo:oo+t] = op(x, y, z) elementwise, operands at offsets of w."""
    X, Y, Z, O = w[xo:xo + t], w[yo:yo + t], w[zo:zo + t], w[oo:oo + t]
    if op == ADD:
        for j in range(t):
            x = X[j]
            y = Y[j]
            O[j] = x + y
    elif op == SUB:
        for j in range(t):
            x = X[j]
            y = Y[j]
            O[j] = x - y
    elif op == MUL:
        for j in range(t):
            x = X[j]
            y = Y[j]
            O[j] = x * y
    elif op == DIV:
        for j in range(t):
            x = X[j]
            y = Y[j]
            O[j] = x / y
    elif op == NEG:
        for j in range(t):
            x = X[j]
            O[j] = -x
    elif op == COPY:
        for j in range(t):
            x = X[j]
            O[j] = x
    elif op == POW:
        for j in range(t):
            x = X[j]
            y = Y[j]
            O[j] = np.power(x, y)
    elif op == SQUARE:
        for j in range(t):
            x = X[j]
            O[j] = x * x
    elif op == SQRT:
        for j in range(t):
            x = X[j]
            O[j] = np.sqrt(x)
    elif op == CBRT:
        for j in range(t):
            x = X[j]
            O[j] = np.cbrt(x)
    elif op == RECIPROCAL:
        for j in range(t):
            x = X[j]
            O[j] = 1.0 / x
    elif op == MOD:
        for j in range(t):
            x = X[j]
            y = Y[j]
            O[j] = np.remainder(x, y)
    elif op == EXP:
        for j in range(t):
            x = X[j]
            O[j] = np.exp(x)
    elif op == EXP2:
        for j in range(t):
            x = X[j]
            O[j] = np.exp2(x)
    elif op == EXPM1:
        for j in range(t):
            x = X[j]
            O[j] = np.expm1(x)
    elif op == LOG:
        for j in range(t):
            x = X[j]
            O[j] = np.log(x)
    elif op == LOG1P:
        for j in range(t):
            x = X[j]
            O[j] = np.log1p(x)
    elif op == LOG2:
        for j in range(t):
            x = X[j]
            O[j] = np.log2(x)
    elif op == LOG10:
        for j in range(t):
            x = X[j]
            O[j] = np.log10(x)
    elif op == LOGADDEXP:
        for j in range(t):
            x = X[j]
            y = Y[j]
            O[j] = np.logaddexp(x, y)
    elif op == SIN:
        for j in range(t):
            x = X[j]
            O[j] = np.sin(x)
    elif op == COS:
        for j in range(t):
            x = X[j]
            O[j] = np.cos(x)
    elif op == TAN:
        for j in range(t):
            x = X[j]
            O[j] = np.tan(x)
    elif op == ARCSIN:
        for j in range(t):
            x = X[j]
            O[j] = np.arcsin(x)
    elif op == ARCCOS:
        for j in range(t):
            x = X[j]
            O[j] = np.arccos(x)
    elif op == ARCTAN:
        for j in range(t):
            x = X[j]
            O[j] = np.arctan(x)
    elif op == ARCTAN2:
        for j in range(t):
            x = X[j]
            y = Y[j]
            O[j] = np.arctan2(x, y)
    elif op == HYPOT:
        for j in range(t):
            x = X[j]
            y = Y[j]
            O[j] = np.hypot(x, y)
    elif op == SINH:
        for j in range(t):
            x = X[j]
            O[j] = np.sinh(x)
    elif op == COSH:
        for j in range(t):
            x = X[j]
            O[j] = np.cosh(x)
    elif op == TANH:
        for j in range(t):
            x = X[j]
            O[j] = np.tanh(x)
    elif op == ARCSINH:
        for j in range(t):
            x = X[j]
            O[j] = np.arcsinh(x)
    elif op == ARCCOSH:
        for j in range(t):
            x = X[j]
            O[j] = np.arccosh(x)
    elif op == ARCTANH:
        for j in range(t):
            x = X[j]
            O[j] = np.arctanh(x)
    elif op == ABS:
        for j in range(t):
            x = X[j]
            O[j] = np.abs(x)
    elif op == MAXIMUM:
        for j in range(t):
            x = X[j]
            y = Y[j]
            O[j] = np.maximum(x, y)
    elif op == MINIMUM:
        for j in range(t):
            x = X[j]
            y = Y[j]
            O[j] = np.minimum(x, y)
    elif op == FMAX:
        for j in range(t):
            x = X[j]
            y = Y[j]
            O[j] = np.fmax(x, y)
    elif op == FMIN:
        for j in range(t):
            x = X[j]
            y = Y[j]
            O[j] = np.fmin(x, y)
    elif op == CLIP:
        for j in range(t):
            x = X[j]
            y = Y[j]
            z = Z[j]
            O[j] = sel((sel((x < y) | (y != y), y, x) > z) | (z != z), z, sel((x < y) | (y != y), y, x))
    elif op == SELECT:
        for j in range(t):
            x = X[j]
            y = Y[j]
            z = Z[j]
            O[j] = sel(x != 0.0, y, z)
    elif op == SIGN:
        for j in range(t):
            x = X[j]
            O[j] = np.sign(x)
    elif op == FLOOR:
        for j in range(t):
            x = X[j]
            O[j] = np.floor(x)
    elif op == CEIL:
        for j in range(t):
            x = X[j]
            O[j] = np.ceil(x)
    elif op == RINT:
        for j in range(t):
            x = X[j]
            O[j] = np.rint(x)
    elif op == TRUNC:
        for j in range(t):
            x = X[j]
            O[j] = np.trunc(x)
    elif op == FLOOR_DIVIDE:
        for j in range(t):
            x = X[j]
            y = Y[j]
            O[j] = sel(y == 0.0, x / y, np.rint((x - np.fmod(x, y)) / y - ((np.fmod(x, y) != 0) & ((y < 0) != (np.fmod(x, y) < 0)))))
    elif op == LESS:
        for j in range(t):
            x = X[j]
            y = Y[j]
            O[j] = x < y
    elif op == LESS_EQUAL:
        for j in range(t):
            x = X[j]
            y = Y[j]
            O[j] = x <= y
    elif op == GREATER:
        for j in range(t):
            x = X[j]
            y = Y[j]
            O[j] = x > y
    elif op == GREATER_EQUAL:
        for j in range(t):
            x = X[j]
            y = Y[j]
            O[j] = x >= y
    elif op == EQUAL:
        for j in range(t):
            x = X[j]
            y = Y[j]
            O[j] = x == y
    elif op == NOT_EQUAL:
        for j in range(t):
            x = X[j]
            y = Y[j]
            O[j] = x != y
    elif op == LOGICAL_AND:
        for j in range(t):
            x = X[j]
            y = Y[j]
            O[j] = (x != 0) & (y != 0)
    elif op == LOGICAL_OR:
        for j in range(t):
            x = X[j]
            y = Y[j]
            O[j] = (x != 0) | (y != 0)
    elif op == LOGICAL_XOR:
        for j in range(t):
            x = X[j]
            y = Y[j]
            O[j] = (x != 0) ^ (y != 0)
    elif op == LOGICAL_NOT:
        for j in range(t):
            x = X[j]
            O[j] = x == 0
    elif op == ISNAN:
        for j in range(t):
            x = X[j]
            O[j] = np.isnan(x)
    elif op == ISINF:
        for j in range(t):
            x = X[j]
            O[j] = np.isinf(x)
    elif op == ISFINITE:
        for j in range(t):
            x = X[j]
            O[j] = np.isfinite(x)
    elif op == LOGADDEXP2:
        for j in range(t):
            x = X[j]
            y = Y[j]
            O[j] = np.logaddexp2(x, y)
    elif op == FMOD:
        for j in range(t):
            x = X[j]
            y = Y[j]
            O[j] = np.fmod(x, y)
    elif op == SINC:
        for j in range(t):
            x = X[j]
            O[j] = np.sinc(x)
    elif op == HEAVISIDE:
        for j in range(t):
            x = X[j]
            y = Y[j]
            O[j] = sel(x != x, x, sel(x < 0.0, 0.0, sel(x > 0.0, 1.0, y)))
    elif op == EXPIT:
        for j in range(t):
            x = X[j]
            O[j] = expit(x)
    elif op == LOGIT:
        for j in range(t):
            x = X[j]
            O[j] = logit(x)
    elif op == LOG_EXPIT:
        for j in range(t):
            x = X[j]
            O[j] = log_expit(x)
    elif op == ERF:
        for j in range(t):
            x = X[j]
            O[j] = erf(x)
    elif op == ERFC:
        for j in range(t):
            x = X[j]
            O[j] = erfc(x)
    elif op == GAMMALN:
        for j in range(t):
            x = X[j]
            O[j] = gammaln(x)
    elif op == DIGAMMA:
        for j in range(t):
            x = X[j]
            O[j] = digamma(x)
    elif op == XLOGY:
        for j in range(t):
            x = X[j]
            y = Y[j]
            O[j] = sel((x == 0.0) & (y == y), 0.0, x * np.log(y))
    elif op == XLOG1PY:
        for j in range(t):
            x = X[j]
            y = Y[j]
            O[j] = sel((x == 0.0) & (y == y), 0.0, x * np.log1p(y))
    elif op == NDTR:
        for j in range(t):
            x = X[j]
            O[j] = ndtr(x)
    elif op == LOG_NDTR:
        for j in range(t):
            x = X[j]
            O[j] = log_ndtr(x)


@leaf
def ew_value1(op, x, y, z):
    """op(x, y, z) on scalars: the value of an elementwise instruction of one
    element."""
    if op < FMAX:
        if op < LOG10:
            if op < CBRT:
                if op < NEG:
                    if op < MUL:
                        if op == ADD:
                            return x + y
                        if op == SUB:
                            return x - y
                    else:
                        if op == MUL:
                            return x * y
                        if op == DIV:
                            return x / y
                else:
                    if op < POW:
                        if op == NEG:
                            return -x
                        if op == COPY:
                            return x
                    else:
                        if op < SQUARE:
                            if op == POW:
                                return np.power(x, y)
                        else:
                            if op == SQUARE:
                                return x * x
                            if op == SQRT:
                                return np.sqrt(x)
            else:
                if op < EXP2:
                    if op < MOD:
                        if op == CBRT:
                            return np.cbrt(x)
                        if op == RECIPROCAL:
                            return 1.0 / x
                    else:
                        if op == MOD:
                            return np.remainder(x, y)
                        if op == EXP:
                            return np.exp(x)
                else:
                    if op < LOG:
                        if op == EXP2:
                            return np.exp2(x)
                        if op == EXPM1:
                            return np.expm1(x)
                    else:
                        if op < LOG1P:
                            if op == LOG:
                                return np.log(x)
                        else:
                            if op == LOG1P:
                                return np.log1p(x)
                            if op == LOG2:
                                return np.log2(x)
        else:
            if op < HYPOT:
                if op < TAN:
                    if op < SIN:
                        if op == LOG10:
                            return np.log10(x)
                        if op == LOGADDEXP:
                            return np.logaddexp(x, y)
                    else:
                        if op == SIN:
                            return np.sin(x)
                        if op == COS:
                            return np.cos(x)
                else:
                    if op < ARCCOS:
                        if op == TAN:
                            return np.tan(x)
                        if op == ARCSIN:
                            return np.arcsin(x)
                    else:
                        if op < ARCTAN:
                            if op == ARCCOS:
                                return np.arccos(x)
                        else:
                            if op == ARCTAN:
                                return np.arctan(x)
                            if op == ARCTAN2:
                                return np.arctan2(x, y)
            else:
                if op < ARCCOSH:
                    if op < COSH:
                        if op == HYPOT:
                            return np.hypot(x, y)
                        if op == SINH:
                            return np.sinh(x)
                    else:
                        if op < TANH:
                            if op == COSH:
                                return np.cosh(x)
                        else:
                            if op == TANH:
                                return np.tanh(x)
                            if op == ARCSINH:
                                return np.arcsinh(x)
                else:
                    if op < ABS:
                        if op == ARCCOSH:
                            return np.arccosh(x)
                        if op == ARCTANH:
                            return np.arctanh(x)
                    else:
                        if op < MAXIMUM:
                            if op == ABS:
                                return np.abs(x)
                        else:
                            if op == MAXIMUM:
                                return np.maximum(x, y)
                            if op == MINIMUM:
                                return np.minimum(x, y)
    else:
        if op < LOGICAL_NOT:
            if op < FLOOR_DIVIDE:
                if op < SIGN:
                    if op < CLIP:
                        if op == FMAX:
                            return np.fmax(x, y)
                        if op == FMIN:
                            return np.fmin(x, y)
                    else:
                        if op == CLIP:
                            return sel((sel((x < y) | (y != y), y, x) > z) | (z != z), z, sel((x < y) | (y != y), y, x))
                        if op == SELECT:
                            return sel(x != 0.0, y, z)
                else:
                    if op < CEIL:
                        if op == SIGN:
                            return np.sign(x)
                        if op == FLOOR:
                            return np.floor(x)
                    else:
                        if op < RINT:
                            if op == CEIL:
                                return np.ceil(x)
                        else:
                            if op == RINT:
                                return np.rint(x)
                            if op == TRUNC:
                                return np.trunc(x)
            else:
                if op < EQUAL:
                    if op < LESS_EQUAL:
                        if op == FLOOR_DIVIDE:
                            return sel(y == 0.0, x / y, np.rint((x - np.fmod(x, y)) / y - ((np.fmod(x, y) != 0) & ((y < 0) != (np.fmod(x, y) < 0)))))
                        if op == LESS:
                            return 1.0 if x < y else 0.0
                    else:
                        if op < GREATER:
                            if op == LESS_EQUAL:
                                return 1.0 if x <= y else 0.0
                        else:
                            if op == GREATER:
                                return 1.0 if x > y else 0.0
                            if op == GREATER_EQUAL:
                                return 1.0 if x >= y else 0.0
                else:
                    if op < LOGICAL_AND:
                        if op == EQUAL:
                            return 1.0 if x == y else 0.0
                        if op == NOT_EQUAL:
                            return 1.0 if x != y else 0.0
                    else:
                        if op < LOGICAL_OR:
                            if op == LOGICAL_AND:
                                return 1.0 if (x != 0) & (y != 0) else 0.0
                        else:
                            if op == LOGICAL_OR:
                                return 1.0 if (x != 0) | (y != 0) else 0.0
                            if op == LOGICAL_XOR:
                                return 1.0 if (x != 0) ^ (y != 0) else 0.0
        else:
            if op < LOGIT:
                if op < LOGADDEXP2:
                    if op < ISINF:
                        if op == LOGICAL_NOT:
                            return 1.0 if x == 0 else 0.0
                        if op == ISNAN:
                            return 1.0 if np.isnan(x) else 0.0
                    else:
                        if op == ISINF:
                            return 1.0 if np.isinf(x) else 0.0
                        if op == ISFINITE:
                            return 1.0 if np.isfinite(x) else 0.0
                else:
                    if op < SINC:
                        if op == LOGADDEXP2:
                            return np.logaddexp2(x, y)
                        if op == FMOD:
                            return np.fmod(x, y)
                    else:
                        if op < HEAVISIDE:
                            if op == SINC:
                                return np.sinc(x)
                        else:
                            if op == HEAVISIDE:
                                return sel(x != x, x, sel(x < 0.0, 0.0, sel(x > 0.0, 1.0, y)))
                            if op == EXPIT:
                                return expit(x)
            else:
                if op < DIGAMMA:
                    if op < ERF:
                        if op == LOGIT:
                            return logit(x)
                        if op == LOG_EXPIT:
                            return log_expit(x)
                    else:
                        if op < ERFC:
                            if op == ERF:
                                return erf(x)
                        else:
                            if op == ERFC:
                                return erfc(x)
                            if op == GAMMALN:
                                return gammaln(x)
                else:
                    if op < XLOG1PY:
                        if op == DIGAMMA:
                            return digamma(x)
                        if op == XLOGY:
                            return sel((x == 0.0) & (y == y), 0.0, x * np.log(y))
                    else:
                        if op < NDTR:
                            if op == XLOG1PY:
                                return sel((x == 0.0) & (y == y), 0.0, x * np.log1p(y))
                        else:
                            if op == NDTR:
                                return ndtr(x)
                            if op == LOG_NDTR:
                                return log_ndtr(x)
    return 0.0


@leaf
def ew_partial1(op, k, x, y, z, o):
    """Partial k of op at scalars (o the value); 0.0 where there is none."""
    if op < HYPOT:
        if op < EXP2:
            if op < POW:
                if op < DIV:
                    if op < SUB:
                        if op == ADD:
                            if k == 0:
                                return 1.0
                            if k == 1:
                                return 1.0
                            return 0.0
                    else:
                        if op == SUB:
                            if k == 0:
                                return 1.0
                            if k == 1:
                                return -1.0
                            return 0.0
                        if op == MUL:
                            if k == 0:
                                return y
                            if k == 1:
                                return x
                            return 0.0
                else:
                    if op < NEG:
                        if op == DIV:
                            if k == 0:
                                return 1.0 / y
                            if k == 1:
                                return -o / y
                            return 0.0
                    else:
                        if op == NEG:
                            if k == 0:
                                return -1.0
                            return 0.0
                        if op == COPY:
                            if k == 0:
                                return 1.0
                            return 0.0
            else:
                if op < CBRT:
                    if op < SQUARE:
                        if op == POW:
                            if k == 0:
                                return sel((y == 0.0) & ((x == 0.0) | (x != x)), 0.0, y * np.power(x, y - 1.0))
                            if k == 1:
                                return sel(o == 0.0, 0.0, o * np.log(x))
                            return 0.0
                    else:
                        if op == SQUARE:
                            if k == 0:
                                return 2.0 * x
                            return 0.0
                        if op == SQRT:
                            if k == 0:
                                return 0.5 / o
                            return 0.0
                else:
                    if op < MOD:
                        if op == CBRT:
                            if k == 0:
                                return 1.0 / (3.0 * o * o)
                            return 0.0
                        if op == RECIPROCAL:
                            if k == 0:
                                return -o * o
                            return 0.0
                    else:
                        if op == MOD:
                            if k == 0:
                                return 1.0
                            if k == 1:
                                return -np.floor(x / y)
                            return 0.0
                        if op == EXP:
                            if k == 0:
                                return o
                            return 0.0
        else:
            if op < SIN:
                if op < LOG1P:
                    if op < EXPM1:
                        if op == EXP2:
                            if k == 0:
                                return o * 0.6931471805599453
                            return 0.0
                    else:
                        if op == EXPM1:
                            if k == 0:
                                return o + 1.0
                            return 0.0
                        if op == LOG:
                            if k == 0:
                                return 1.0 / x
                            return 0.0
                else:
                    if op < LOG10:
                        if op == LOG1P:
                            if k == 0:
                                return 1.0 / (1.0 + x)
                            return 0.0
                        if op == LOG2:
                            if k == 0:
                                return 1.0 / (x * 0.6931471805599453)
                            return 0.0
                    else:
                        if op == LOG10:
                            if k == 0:
                                return 1.0 / (x * 2.302585092994046)
                            return 0.0
                        if op == LOGADDEXP:
                            if k == 0:
                                return np.exp(x - o)
                            if k == 1:
                                return np.exp(y - o)
                            return 0.0
            else:
                if op < ARCSIN:
                    if op < COS:
                        if op == SIN:
                            if k == 0:
                                return np.cos(x)
                            return 0.0
                    else:
                        if op == COS:
                            if k == 0:
                                return -np.sin(x)
                            return 0.0
                        if op == TAN:
                            if k == 0:
                                return 1.0 + o * o
                            return 0.0
                else:
                    if op < ARCTAN:
                        if op == ARCSIN:
                            if k == 0:
                                return 1.0 / np.sqrt(1.0 - x * x)
                            return 0.0
                        if op == ARCCOS:
                            if k == 0:
                                return -1.0 / np.sqrt(1.0 - x * x)
                            return 0.0
                    else:
                        if op == ARCTAN:
                            if k == 0:
                                return 1.0 / (1.0 + x * x)
                            return 0.0
                        if op == ARCTAN2:
                            if k == 0:
                                return y / (x * x + y * y)
                            if k == 1:
                                return -x / (x * x + y * y)
                            return 0.0
    else:
        if op < LOGADDEXP2:
            if op < ABS:
                if op < TANH:
                    if op < SINH:
                        if op == HYPOT:
                            if k == 0:
                                return x / o
                            if k == 1:
                                return y / o
                            return 0.0
                    else:
                        if op == SINH:
                            if k == 0:
                                return np.cosh(x)
                            return 0.0
                        if op == COSH:
                            if k == 0:
                                return np.sinh(x)
                            return 0.0
                else:
                    if op < ARCCOSH:
                        if op == TANH:
                            if k == 0:
                                return 1.0 - o * o
                            return 0.0
                        if op == ARCSINH:
                            if k == 0:
                                return 1.0 / np.sqrt(x * x + 1.0)
                            return 0.0
                    else:
                        if op == ARCCOSH:
                            if k == 0:
                                return 1.0 / np.sqrt(x * x - 1.0)
                            return 0.0
                        if op == ARCTANH:
                            if k == 0:
                                return 1.0 / (1.0 - x * x)
                            return 0.0
            else:
                if op < FMAX:
                    if op < MAXIMUM:
                        if op == ABS:
                            if k == 0:
                                return np.sign(x)
                            return 0.0
                    else:
                        if op == MAXIMUM:
                            if k == 0:
                                return (x > y) + 0.5 * (x == y)
                            if k == 1:
                                return (x < y) + 0.5 * (x == y)
                            return 0.0
                        if op == MINIMUM:
                            if k == 0:
                                return (x < y) + 0.5 * (x == y)
                            if k == 1:
                                return (x > y) + 0.5 * (x == y)
                            return 0.0
                else:
                    if op < CLIP:
                        if op == FMAX:
                            if k == 0:
                                return (x > y) + 0.5 * (x == y) + (y != y) * (x == x)
                            if k == 1:
                                return (x < y) + 0.5 * (x == y) + (x != x) * (y == y)
                            return 0.0
                        if op == FMIN:
                            if k == 0:
                                return (x < y) + 0.5 * (x == y) + (y != y) * (x == x)
                            if k == 1:
                                return (x > y) + 0.5 * (x == y) + (x != x) * (y == y)
                            return 0.0
                    else:
                        if op == CLIP:
                            if k == 0:
                                return ((x >= y) & (x <= z)) * 1.0
                            if k == 1:
                                return (x < y) * 1.0
                            if k == 2:
                                return (x > z) * (x >= y) * 1.0
                            return 0.0
                        if op == SELECT:
                            if k == 1:
                                return (x != 0.0) * 1.0
                            if k == 2:
                                return (x == 0.0) * 1.0
                            return 0.0
        else:
            if op < ERFC:
                if op < EXPIT:
                    if op < FMOD:
                        if op == LOGADDEXP2:
                            if k == 0:
                                return np.exp2(x - o)
                            if k == 1:
                                return np.exp2(y - o)
                            return 0.0
                    else:
                        if op == FMOD:
                            if k == 0:
                                return 1.0
                            if k == 1:
                                return -np.trunc(x / y)
                            return 0.0
                        if op == SINC:
                            if k == 0:
                                return sel(np.abs(x) < 0.1, x * (-3.289868133696453 + (x * x) * (3.246969701133414 + (x * x) * (-1.144510944732505 + (x * x) * (0.20918278254123832 + (x * x) * (-0.023460810354558225 + (x * x) * (0.001781145516372851)))))), (np.cos(3.141592653589793 * x) - o) / x)
                            return 0.0
                else:
                    if op < LOG_EXPIT:
                        if op == EXPIT:
                            if k == 0:
                                return o * expit(-x)
                            return 0.0
                        if op == LOGIT:
                            if k == 0:
                                return 1.0 / (x * (1.0 - x))
                            return 0.0
                    else:
                        if op == LOG_EXPIT:
                            if k == 0:
                                return expit(-x)
                            return 0.0
                        if op == ERF:
                            if k == 0:
                                return 1.1283791670955126 * np.exp(-x * x)
                            return 0.0
            else:
                if op < XLOGY:
                    if op < GAMMALN:
                        if op == ERFC:
                            if k == 0:
                                return -1.1283791670955126 * np.exp(-x * x)
                            return 0.0
                    else:
                        if op == GAMMALN:
                            if k == 0:
                                return digamma(x)
                            return 0.0
                        if op == DIGAMMA:
                            if k == 0:
                                return trigamma(x)
                            return 0.0
                else:
                    if op < NDTR:
                        if op == XLOGY:
                            if k == 0:
                                return np.log(y)
                            if k == 1:
                                return x / sel((x == 0.0) & ((y == 0.0) | (y != y)), 1.0, y)
                            return 0.0
                        if op == XLOG1PY:
                            if k == 0:
                                return np.log1p(y)
                            if k == 1:
                                return x / sel((x == 0.0) & ((y == -1.0) | (y != y)), 1.0, 1.0 + y)
                            return 0.0
                    else:
                        if op == NDTR:
                            if k == 0:
                                return 0.3989422804014327 * np.exp(-0.5 * x * x)
                            return 0.0
                        if op == LOG_NDTR:
                            if k == 0:
                                return dlog_ndtr(x)
                            return 0.0
    return 0.0


@leaf
def ew_partial(op, k, t, w, xo, yo, zo, oo, do):
    """w[do:do+t] = the partial of op with respect to operand k."""
    X, Y, Z, O = w[xo:xo + t], w[yo:yo + t], w[zo:zo + t], w[oo:oo + t]
    D = w[do:do + t]
    if op == ADD:
        if k == 0:
            for j in range(t):
                D[j] = 1.0
        elif k == 1:
            for j in range(t):
                D[j] = 1.0
    elif op == SUB:
        if k == 0:
            for j in range(t):
                D[j] = 1.0
        elif k == 1:
            for j in range(t):
                D[j] = -1.0
    elif op == MUL:
        if k == 0:
            for j in range(t):
                y = Y[j]
                D[j] = y
        elif k == 1:
            for j in range(t):
                x = X[j]
                D[j] = x
    elif op == DIV:
        if k == 0:
            for j in range(t):
                y = Y[j]
                D[j] = 1.0 / y
        elif k == 1:
            for j in range(t):
                y = Y[j]
                o = O[j]
                D[j] = -o / y
    elif op == NEG:
        if k == 0:
            for j in range(t):
                D[j] = -1.0
    elif op == COPY:
        if k == 0:
            for j in range(t):
                D[j] = 1.0
    elif op == POW:
        if k == 0:
            for j in range(t):
                x = X[j]
                y = Y[j]
                D[j] = sel((y == 0.0) & ((x == 0.0) | (x != x)), 0.0, y * np.power(x, y - 1.0))
        elif k == 1:
            for j in range(t):
                x = X[j]
                o = O[j]
                D[j] = sel(o == 0.0, 0.0, o * np.log(x))
    elif op == SQUARE:
        if k == 0:
            for j in range(t):
                x = X[j]
                D[j] = 2.0 * x
    elif op == SQRT:
        if k == 0:
            for j in range(t):
                o = O[j]
                D[j] = 0.5 / o
    elif op == CBRT:
        if k == 0:
            for j in range(t):
                o = O[j]
                D[j] = 1.0 / (3.0 * o * o)
    elif op == RECIPROCAL:
        if k == 0:
            for j in range(t):
                o = O[j]
                D[j] = -o * o
    elif op == MOD:
        if k == 0:
            for j in range(t):
                D[j] = 1.0
        elif k == 1:
            for j in range(t):
                x = X[j]
                y = Y[j]
                D[j] = -np.floor(x / y)
    elif op == EXP:
        if k == 0:
            for j in range(t):
                o = O[j]
                D[j] = o
    elif op == EXP2:
        if k == 0:
            for j in range(t):
                o = O[j]
                D[j] = o * 0.6931471805599453
    elif op == EXPM1:
        if k == 0:
            for j in range(t):
                o = O[j]
                D[j] = o + 1.0
    elif op == LOG:
        if k == 0:
            for j in range(t):
                x = X[j]
                D[j] = 1.0 / x
    elif op == LOG1P:
        if k == 0:
            for j in range(t):
                x = X[j]
                D[j] = 1.0 / (1.0 + x)
    elif op == LOG2:
        if k == 0:
            for j in range(t):
                x = X[j]
                D[j] = 1.0 / (x * 0.6931471805599453)
    elif op == LOG10:
        if k == 0:
            for j in range(t):
                x = X[j]
                D[j] = 1.0 / (x * 2.302585092994046)
    elif op == LOGADDEXP:
        if k == 0:
            for j in range(t):
                x = X[j]
                o = O[j]
                D[j] = np.exp(x - o)
        elif k == 1:
            for j in range(t):
                y = Y[j]
                o = O[j]
                D[j] = np.exp(y - o)
    elif op == SIN:
        if k == 0:
            for j in range(t):
                x = X[j]
                D[j] = np.cos(x)
    elif op == COS:
        if k == 0:
            for j in range(t):
                x = X[j]
                D[j] = -np.sin(x)
    elif op == TAN:
        if k == 0:
            for j in range(t):
                o = O[j]
                D[j] = 1.0 + o * o
    elif op == ARCSIN:
        if k == 0:
            for j in range(t):
                x = X[j]
                D[j] = 1.0 / np.sqrt(1.0 - x * x)
    elif op == ARCCOS:
        if k == 0:
            for j in range(t):
                x = X[j]
                D[j] = -1.0 / np.sqrt(1.0 - x * x)
    elif op == ARCTAN:
        if k == 0:
            for j in range(t):
                x = X[j]
                D[j] = 1.0 / (1.0 + x * x)
    elif op == ARCTAN2:
        if k == 0:
            for j in range(t):
                x = X[j]
                y = Y[j]
                D[j] = y / (x * x + y * y)
        elif k == 1:
            for j in range(t):
                x = X[j]
                y = Y[j]
                D[j] = -x / (x * x + y * y)
    elif op == HYPOT:
        if k == 0:
            for j in range(t):
                x = X[j]
                o = O[j]
                D[j] = x / o
        elif k == 1:
            for j in range(t):
                y = Y[j]
                o = O[j]
                D[j] = y / o
    elif op == SINH:
        if k == 0:
            for j in range(t):
                x = X[j]
                D[j] = np.cosh(x)
    elif op == COSH:
        if k == 0:
            for j in range(t):
                x = X[j]
                D[j] = np.sinh(x)
    elif op == TANH:
        if k == 0:
            for j in range(t):
                o = O[j]
                D[j] = 1.0 - o * o
    elif op == ARCSINH:
        if k == 0:
            for j in range(t):
                x = X[j]
                D[j] = 1.0 / np.sqrt(x * x + 1.0)
    elif op == ARCCOSH:
        if k == 0:
            for j in range(t):
                x = X[j]
                D[j] = 1.0 / np.sqrt(x * x - 1.0)
    elif op == ARCTANH:
        if k == 0:
            for j in range(t):
                x = X[j]
                D[j] = 1.0 / (1.0 - x * x)
    elif op == ABS:
        if k == 0:
            for j in range(t):
                x = X[j]
                D[j] = np.sign(x)
    elif op == MAXIMUM:
        if k == 0:
            for j in range(t):
                x = X[j]
                y = Y[j]
                D[j] = (x > y) + 0.5 * (x == y)
        elif k == 1:
            for j in range(t):
                x = X[j]
                y = Y[j]
                D[j] = (x < y) + 0.5 * (x == y)
    elif op == MINIMUM:
        if k == 0:
            for j in range(t):
                x = X[j]
                y = Y[j]
                D[j] = (x < y) + 0.5 * (x == y)
        elif k == 1:
            for j in range(t):
                x = X[j]
                y = Y[j]
                D[j] = (x > y) + 0.5 * (x == y)
    elif op == FMAX:
        if k == 0:
            for j in range(t):
                x = X[j]
                y = Y[j]
                D[j] = (x > y) + 0.5 * (x == y) + (y != y) * (x == x)
        elif k == 1:
            for j in range(t):
                x = X[j]
                y = Y[j]
                D[j] = (x < y) + 0.5 * (x == y) + (x != x) * (y == y)
    elif op == FMIN:
        if k == 0:
            for j in range(t):
                x = X[j]
                y = Y[j]
                D[j] = (x < y) + 0.5 * (x == y) + (y != y) * (x == x)
        elif k == 1:
            for j in range(t):
                x = X[j]
                y = Y[j]
                D[j] = (x > y) + 0.5 * (x == y) + (x != x) * (y == y)
    elif op == CLIP:
        if k == 0:
            for j in range(t):
                x = X[j]
                y = Y[j]
                z = Z[j]
                D[j] = ((x >= y) & (x <= z)) * 1.0
        elif k == 1:
            for j in range(t):
                x = X[j]
                y = Y[j]
                D[j] = (x < y) * 1.0
        elif k == 2:
            for j in range(t):
                x = X[j]
                y = Y[j]
                z = Z[j]
                D[j] = (x > z) * (x >= y) * 1.0
    elif op == SELECT:
        if k == 1:
            for j in range(t):
                x = X[j]
                D[j] = (x != 0.0) * 1.0
        elif k == 2:
            for j in range(t):
                x = X[j]
                D[j] = (x == 0.0) * 1.0
    elif op == LOGADDEXP2:
        if k == 0:
            for j in range(t):
                x = X[j]
                o = O[j]
                D[j] = np.exp2(x - o)
        elif k == 1:
            for j in range(t):
                y = Y[j]
                o = O[j]
                D[j] = np.exp2(y - o)
    elif op == FMOD:
        if k == 0:
            for j in range(t):
                D[j] = 1.0
        elif k == 1:
            for j in range(t):
                x = X[j]
                y = Y[j]
                D[j] = -np.trunc(x / y)
    elif op == SINC:
        if k == 0:
            for j in range(t):
                x = X[j]
                o = O[j]
                D[j] = sel(np.abs(x) < 0.1, x * (-3.289868133696453 + (x * x) * (3.246969701133414 + (x * x) * (-1.144510944732505 + (x * x) * (0.20918278254123832 + (x * x) * (-0.023460810354558225 + (x * x) * (0.001781145516372851)))))), (np.cos(3.141592653589793 * x) - o) / x)
    elif op == EXPIT:
        if k == 0:
            for j in range(t):
                x = X[j]
                o = O[j]
                D[j] = o * expit(-x)
    elif op == LOGIT:
        if k == 0:
            for j in range(t):
                x = X[j]
                D[j] = 1.0 / (x * (1.0 - x))
    elif op == LOG_EXPIT:
        if k == 0:
            for j in range(t):
                x = X[j]
                D[j] = expit(-x)
    elif op == ERF:
        if k == 0:
            for j in range(t):
                x = X[j]
                D[j] = 1.1283791670955126 * np.exp(-x * x)
    elif op == ERFC:
        if k == 0:
            for j in range(t):
                x = X[j]
                D[j] = -1.1283791670955126 * np.exp(-x * x)
    elif op == GAMMALN:
        if k == 0:
            for j in range(t):
                x = X[j]
                D[j] = digamma(x)
    elif op == DIGAMMA:
        if k == 0:
            for j in range(t):
                x = X[j]
                D[j] = trigamma(x)
    elif op == XLOGY:
        if k == 0:
            for j in range(t):
                y = Y[j]
                D[j] = np.log(y)
        elif k == 1:
            for j in range(t):
                x = X[j]
                y = Y[j]
                D[j] = x / sel((x == 0.0) & ((y == 0.0) | (y != y)), 1.0, y)
    elif op == XLOG1PY:
        if k == 0:
            for j in range(t):
                y = Y[j]
                D[j] = np.log1p(y)
        elif k == 1:
            for j in range(t):
                x = X[j]
                y = Y[j]
                D[j] = x / sel((x == 0.0) & ((y == -1.0) | (y != y)), 1.0, 1.0 + y)
    elif op == NDTR:
        if k == 0:
            for j in range(t):
                x = X[j]
                D[j] = 0.3989422804014327 * np.exp(-0.5 * x * x)
    elif op == LOG_NDTR:
        if k == 0:
            for j in range(t):
                x = X[j]
                D[j] = dlog_ndtr(x)


@leaf
def partial_form(op, k):
    """How the reverse sweep finds partial k of op: (PARTIAL_CONST, value),
    (PARTIAL_OPERAND, operand index; 3 is the result) or (PARTIAL_EXPR, 0.0)."""
    if op == ADD:
        if k == 0:
            return PARTIAL_CONST, 1.0
        if k == 1:
            return PARTIAL_CONST, 1.0
    elif op == SUB:
        if k == 0:
            return PARTIAL_CONST, 1.0
        if k == 1:
            return PARTIAL_CONST, -1.0
    elif op == MUL:
        if k == 0:
            return PARTIAL_OPERAND, 1.0
        if k == 1:
            return PARTIAL_OPERAND, 0.0
    elif op == NEG:
        if k == 0:
            return PARTIAL_CONST, -1.0
    elif op == COPY:
        if k == 0:
            return PARTIAL_CONST, 1.0
    elif op == MOD:
        if k == 0:
            return PARTIAL_CONST, 1.0
    elif op == EXP:
        if k == 0:
            return PARTIAL_OPERAND, 3.0
    elif op == FMOD:
        if k == 0:
            return PARTIAL_CONST, 1.0
    return PARTIAL_EXPR, 0.0


@leaf
def has_second_partials(op):
    """Whether op has any nonzero second partial (linear ops have none)."""
    return op == MUL or op == DIV or op == POW or op == SQUARE or op == SQRT or op == CBRT or op == RECIPROCAL or op == EXP or op == EXP2 or op == EXPM1 or op == LOG or op == LOG1P or op == LOG2 or op == LOG10 or op == LOGADDEXP or op == SIN or op == COS or op == TAN or op == ARCSIN or op == ARCCOS or op == ARCTAN or op == ARCTAN2 or op == HYPOT or op == SINH or op == COSH or op == TANH or op == ARCSINH or op == ARCCOSH or op == ARCTANH or op == LOGADDEXP2 or op == SINC or op == EXPIT or op == LOGIT or op == LOG_EXPIT or op == ERF or op == ERFC or op == GAMMALN or op == DIGAMMA or op == XLOGY or op == XLOG1PY or op == NDTR or op == LOG_NDTR


@leaf
def ew_partial2(op, k, l, t, w, xo, yo, zo, oo, do):
    """w[do:do+t] = the second partial of op with respect to operands k <= l."""
    X, Y, Z, O = w[xo:xo + t], w[yo:yo + t], w[zo:zo + t], w[oo:oo + t]
    D = w[do:do + t]
    if op == MUL:
        if k == 0 and l == 1:
            for j in range(t):
                D[j] = 1.0
        else:
            D[:t] = 0.0
    elif op == DIV:
        if k == 0 and l == 1:
            for j in range(t):
                y = Y[j]
                D[j] = -1.0 / (y * y)
        elif k == 1 and l == 1:
            for j in range(t):
                y = Y[j]
                o = O[j]
                D[j] = 2.0 * o / (y * y)
        else:
            D[:t] = 0.0
    elif op == POW:
        if k == 0 and l == 0:
            for j in range(t):
                x = X[j]
                y = Y[j]
                D[j] = sel(y * (y - 1.0) == 0.0, 0.0, y * (y - 1.0) * np.power(x, y - 2.0))
        elif k == 0 and l == 1:
            for j in range(t):
                x = X[j]
                y = Y[j]
                D[j] = sel(x == 0.0, 0.0, np.power(x, y - 1.0) * (1.0 + y * np.log(x)))
        elif k == 1 and l == 1:
            for j in range(t):
                x = X[j]
                o = O[j]
                D[j] = sel(o == 0.0, 0.0, o * np.log(x) * np.log(x))
        else:
            D[:t] = 0.0
    elif op == SQUARE:
        if k == 0 and l == 0:
            for j in range(t):
                D[j] = 2.0
        else:
            D[:t] = 0.0
    elif op == SQRT:
        if k == 0 and l == 0:
            for j in range(t):
                o = O[j]
                D[j] = -0.25 / (o * o * o)
        else:
            D[:t] = 0.0
    elif op == CBRT:
        if k == 0 and l == 0:
            for j in range(t):
                o = O[j]
                D[j] = -2.0 / (9.0 * o * o * o * o * o)
        else:
            D[:t] = 0.0
    elif op == RECIPROCAL:
        if k == 0 and l == 0:
            for j in range(t):
                o = O[j]
                D[j] = 2.0 * o * o * o
        else:
            D[:t] = 0.0
    elif op == EXP:
        if k == 0 and l == 0:
            for j in range(t):
                o = O[j]
                D[j] = o
        else:
            D[:t] = 0.0
    elif op == EXP2:
        if k == 0 and l == 0:
            for j in range(t):
                o = O[j]
                D[j] = o * 0.6931471805599453 * 0.6931471805599453
        else:
            D[:t] = 0.0
    elif op == EXPM1:
        if k == 0 and l == 0:
            for j in range(t):
                o = O[j]
                D[j] = o + 1.0
        else:
            D[:t] = 0.0
    elif op == LOG:
        if k == 0 and l == 0:
            for j in range(t):
                x = X[j]
                D[j] = -1.0 / (x * x)
        else:
            D[:t] = 0.0
    elif op == LOG1P:
        if k == 0 and l == 0:
            for j in range(t):
                x = X[j]
                D[j] = -1.0 / ((1.0 + x) * (1.0 + x))
        else:
            D[:t] = 0.0
    elif op == LOG2:
        if k == 0 and l == 0:
            for j in range(t):
                x = X[j]
                D[j] = -1.0 / (x * x * 0.6931471805599453)
        else:
            D[:t] = 0.0
    elif op == LOG10:
        if k == 0 and l == 0:
            for j in range(t):
                x = X[j]
                D[j] = -1.0 / (x * x * 2.302585092994046)
        else:
            D[:t] = 0.0
    elif op == LOGADDEXP:
        if k == 0 and l == 0:
            for j in range(t):
                x = X[j]
                o = O[j]
                D[j] = np.exp(x - o) * (1.0 - np.exp(x - o))
        elif k == 0 and l == 1:
            for j in range(t):
                x = X[j]
                y = Y[j]
                o = O[j]
                D[j] = -np.exp(x - o) * np.exp(y - o)
        elif k == 1 and l == 1:
            for j in range(t):
                y = Y[j]
                o = O[j]
                D[j] = np.exp(y - o) * (1.0 - np.exp(y - o))
        else:
            D[:t] = 0.0
    elif op == SIN:
        if k == 0 and l == 0:
            for j in range(t):
                o = O[j]
                D[j] = -o
        else:
            D[:t] = 0.0
    elif op == COS:
        if k == 0 and l == 0:
            for j in range(t):
                o = O[j]
                D[j] = -o
        else:
            D[:t] = 0.0
    elif op == TAN:
        if k == 0 and l == 0:
            for j in range(t):
                o = O[j]
                D[j] = 2.0 * o * (1.0 + o * o)
        else:
            D[:t] = 0.0
    elif op == ARCSIN:
        if k == 0 and l == 0:
            for j in range(t):
                x = X[j]
                D[j] = x / ((1.0 - x * x) * np.sqrt(1.0 - x * x))
        else:
            D[:t] = 0.0
    elif op == ARCCOS:
        if k == 0 and l == 0:
            for j in range(t):
                x = X[j]
                D[j] = -x / ((1.0 - x * x) * np.sqrt(1.0 - x * x))
        else:
            D[:t] = 0.0
    elif op == ARCTAN:
        if k == 0 and l == 0:
            for j in range(t):
                x = X[j]
                D[j] = -2.0 * x / ((1.0 + x * x) * (1.0 + x * x))
        else:
            D[:t] = 0.0
    elif op == ARCTAN2:
        if k == 0 and l == 0:
            for j in range(t):
                x = X[j]
                y = Y[j]
                D[j] = -2.0 * x * y / ((x * x + y * y) * (x * x + y * y))
        elif k == 0 and l == 1:
            for j in range(t):
                x = X[j]
                y = Y[j]
                D[j] = (x * x - y * y) / ((x * x + y * y) * (x * x + y * y))
        elif k == 1 and l == 1:
            for j in range(t):
                x = X[j]
                y = Y[j]
                D[j] = 2.0 * x * y / ((x * x + y * y) * (x * x + y * y))
        else:
            D[:t] = 0.0
    elif op == HYPOT:
        if k == 0 and l == 0:
            for j in range(t):
                y = Y[j]
                o = O[j]
                D[j] = y * y / (o * o * o)
        elif k == 0 and l == 1:
            for j in range(t):
                x = X[j]
                y = Y[j]
                o = O[j]
                D[j] = -x * y / (o * o * o)
        elif k == 1 and l == 1:
            for j in range(t):
                x = X[j]
                o = O[j]
                D[j] = x * x / (o * o * o)
        else:
            D[:t] = 0.0
    elif op == SINH:
        if k == 0 and l == 0:
            for j in range(t):
                o = O[j]
                D[j] = o
        else:
            D[:t] = 0.0
    elif op == COSH:
        if k == 0 and l == 0:
            for j in range(t):
                o = O[j]
                D[j] = o
        else:
            D[:t] = 0.0
    elif op == TANH:
        if k == 0 and l == 0:
            for j in range(t):
                o = O[j]
                D[j] = -2.0 * o * (1.0 - o * o)
        else:
            D[:t] = 0.0
    elif op == ARCSINH:
        if k == 0 and l == 0:
            for j in range(t):
                x = X[j]
                D[j] = -x / ((x * x + 1.0) * np.sqrt(x * x + 1.0))
        else:
            D[:t] = 0.0
    elif op == ARCCOSH:
        if k == 0 and l == 0:
            for j in range(t):
                x = X[j]
                D[j] = -x / ((x * x - 1.0) * np.sqrt(x * x - 1.0))
        else:
            D[:t] = 0.0
    elif op == ARCTANH:
        if k == 0 and l == 0:
            for j in range(t):
                x = X[j]
                D[j] = 2.0 * x / ((1.0 - x * x) * (1.0 - x * x))
        else:
            D[:t] = 0.0
    elif op == LOGADDEXP2:
        if k == 0 and l == 0:
            for j in range(t):
                x = X[j]
                o = O[j]
                D[j] = 0.6931471805599453 * np.exp2(x - o) * (1.0 - np.exp2(x - o))
        elif k == 0 and l == 1:
            for j in range(t):
                x = X[j]
                y = Y[j]
                o = O[j]
                D[j] = -0.6931471805599453 * np.exp2(x - o) * np.exp2(y - o)
        elif k == 1 and l == 1:
            for j in range(t):
                y = Y[j]
                o = O[j]
                D[j] = 0.6931471805599453 * np.exp2(y - o) * (1.0 - np.exp2(y - o))
        else:
            D[:t] = 0.0
    elif op == SINC:
        if k == 0 and l == 0:
            for j in range(t):
                x = X[j]
                o = O[j]
                D[j] = sel(np.abs(x) < 0.1, -3.289868133696453 + (x * x) * (9.740909103400242 + (x * x) * (-5.722554723662526 + (x * x) * (1.4642794777886683 + (x * x) * (-0.21114729319102404 + (x * x) * (0.019592600680101362))))), -3.141592653589793 * 3.141592653589793 * o - 2.0 * (np.cos(3.141592653589793 * x) - o) / (x * x))
        else:
            D[:t] = 0.0
    elif op == EXPIT:
        if k == 0 and l == 0:
            for j in range(t):
                x = X[j]
                o = O[j]
                D[j] = o * expit(-x) * (expit(-x) - o)
        else:
            D[:t] = 0.0
    elif op == LOGIT:
        if k == 0 and l == 0:
            for j in range(t):
                x = X[j]
                D[j] = (2.0 * x - 1.0) / (x * x * (1.0 - x) * (1.0 - x))
        else:
            D[:t] = 0.0
    elif op == LOG_EXPIT:
        if k == 0 and l == 0:
            for j in range(t):
                x = X[j]
                D[j] = -expit(x) * expit(-x)
        else:
            D[:t] = 0.0
    elif op == ERF:
        if k == 0 and l == 0:
            for j in range(t):
                x = X[j]
                D[j] = -2.0 * x * 1.1283791670955126 * np.exp(-x * x)
        else:
            D[:t] = 0.0
    elif op == ERFC:
        if k == 0 and l == 0:
            for j in range(t):
                x = X[j]
                D[j] = 2.0 * x * 1.1283791670955126 * np.exp(-x * x)
        else:
            D[:t] = 0.0
    elif op == GAMMALN:
        if k == 0 and l == 0:
            for j in range(t):
                x = X[j]
                D[j] = trigamma(x)
        else:
            D[:t] = 0.0
    elif op == DIGAMMA:
        if k == 0 and l == 0:
            for j in range(t):
                x = X[j]
                D[j] = tetragamma(x)
        else:
            D[:t] = 0.0
    elif op == XLOGY:
        if k == 0 and l == 1:
            for j in range(t):
                y = Y[j]
                D[j] = 1.0 / y
        elif k == 1 and l == 1:
            for j in range(t):
                x = X[j]
                y = Y[j]
                D[j] = sel(x == 0.0, 0.0, -x / (y * y))
        else:
            D[:t] = 0.0
    elif op == XLOG1PY:
        if k == 0 and l == 1:
            for j in range(t):
                y = Y[j]
                D[j] = 1.0 / (1.0 + y)
        elif k == 1 and l == 1:
            for j in range(t):
                x = X[j]
                y = Y[j]
                D[j] = sel(x == 0.0, 0.0, -x / ((1.0 + y) * (1.0 + y)))
        else:
            D[:t] = 0.0
    elif op == NDTR:
        if k == 0 and l == 0:
            for j in range(t):
                x = X[j]
                D[j] = -x * 0.3989422804014327 * np.exp(-0.5 * x * x)
        else:
            D[:t] = 0.0
    elif op == LOG_NDTR:
        if k == 0 and l == 0:
            for j in range(t):
                x = X[j]
                D[j] = -dlog_ndtr(x) * (x + dlog_ndtr(x))
        else:
            D[:t] = 0.0
    else:
        D[:t] = 0.0


# ---- END GENERATED ----


def work_size(ints):
    """Length of the workspace of a tape: values, adjoints, 4 operand tiles, 2 partials."""
    return 2 * int(ints[H_TOTAL]) + 6 * TILE


# ---------------------------------------------------------------------------- helpers

@leaf
def fill_tiles(code, i, w, tiles):
    """Fill the tiles of size-1 operands of elementwise instruction i; returns the chunk
    length to run with (n when no operand is broadcast: whole slices)."""
    n = code[i, N]
    t = min(n, TILE)
    tiled = False
    for row in range(3):
        if code[i, NA + 2 * row] == 1 and n != 1:
            tiled = True
            v = w[code[i, A + 2 * row]]
            base = tiles + row * TILE
            for j in range(t):
                w[base + j] = v
    return TILE if tiled else max(n, 1)


@leaf
def operand(code, i, row, s, tiles):
    """Offset in w of chunk s of operand ``row``: in its slot, or in its filled tile."""
    if code[i, NA + 2 * row] == code[i, N]:
        return code[i, A + 2 * row] + s
    return tiles + row * TILE


@leaf
def to_index(v, n, wrap):
    """A float index computed at replay (wrapped like NumPy's if wrap); -1 when out of
    bounds."""
    i = int(v)
    if i < 0 and wrap:
        i += n
    if i < 0 or i >= n or v != np.floor(v):
        return -1
    return i


# ---------------------------------------------------------------------------- forward

@leaf
def run_end(code, i, n):
    """End of the run of elementwise instructions over n elements that starts at i."""
    e = i + 1
    while e < code.shape[0] and code[e, OP] <= N_ELEMENTWISE and code[e, N] == n:
        e += 1
    return e


@leaf(inline="always")   # no compile of its own: see "Compile policy" in docs/design.md
def ew_forward(code, i, w, tiles, s, t):
    """Values of elementwise instruction i on elements [s, s + t)."""
    op, o = code[i, OP], code[i, OUT]
    chunk = max(min(fill_tiles(code, i, w, tiles), t), 1)
    for c in range(s, s + t, chunk):
        ew_value(op, min(chunk, s + t - c), w, operand(code, i, 0, c, tiles),
                 operand(code, i, 1, c, tiles), operand(code, i, 2, c, tiles), o + c)


@jit   # compiled for Python and the compiled tier only (the entries inline forward_strips)
def forward(code, ints, w):
    """Values of every instruction; stops at the first guard that flips."""
    return forward_strips(code, ints, w, STRIP)


@jit(inline="always")    # inlined into the entries: no compiled copy of its own
def forward_strips(code, ints, w, strip):
    """``forward`` with runs of elementwise instructions over the same count n > strip run
    strip by strip (all the run's instructions on one strip, then the next), so that their
    intermediates stay in cache; strip = 0 runs every instruction over whole arrays.
    Valid because an elementwise operand of length n is a whole slot: element j of the
    result reads element j of each operand, computed earlier in the same strip."""
    total = ints[H_TOTAL]
    tiles = 2 * total
    i = 0
    ncode = code.shape[0]
    while i < ncode:
        op = code[i, OP]
        o = code[i, OUT]
        n = code[i, N]
        a = code[i, A]
        if op <= N_ELEMENTWISE:
            if n == 1:      # one element: scalars, no slices, tiles or chunk loop
                x, y, z = operands1(code, i, w)
                w[o] = ew_value1(op, x, y, z)
                i += 1
                continue
            e = run_end(code, i, n) if 0 < strip < n else i + 1
            if e > i + 1:
                for s in range(0, n, strip):
                    t = min(strip, n - s)
                    for r in range(i, e):
                        ew_forward(code, r, w, tiles, s, t)
                i = e
                continue
            ew_forward(code, i, w, tiles, 0, n)
        elif op == GATHER:
            gather(w, o, n, a, ints, code[i, AUX])
        elif op == GATHER_DYN:
            na = code[i, NA]
            b = code[i, B]
            for j in range(n):
                k = to_index(w[b + j], na, code[i, AUX])
                if k < 0:
                    return ERR_INDEX - i
                w[o + j] = w[a + k]
        elif op == CONCAT:
            p = code[i, AUX]
            pos = o
            for q in range(ints[p]):
                off, ln = ints[p + 1 + 3 * q], ints[p + 2 + 3 * q]
                w[pos:pos + ln] = w[off:off + ln]
                pos += ln
        elif op <= REDUCE_MIN:
            reduce_forward(op, w, o, a, ints, code[i, AUX])
        elif op <= ARGMIN:
            argreduce_forward(op, w, o, a, ints, code[i, AUX])
        elif op == MATMUL:
            p = code[i, AUX]
            m, k, q = ints[p], ints[p + 1], ints[p + 2]
            b = code[i, B]
            out = w[o:o + m * q].reshape((m, q))
            out[:, :] = 0.0
            matmul_acc(w[a:a + m * k].reshape((m, k)), w[b:b + k * q].reshape((k, q)), out,
                       False, False)
        elif op == NONZERO:
            cnt = 0
            na = code[i, NA]
            for j in range(na):
                if w[a + j] != 0.0:
                    if cnt < n:
                        w[o + cnt] = j
                    cnt += 1
            if cnt != n:
                return i
        elif op == GUARD:
            if (w[a] != 0.0) != (code[i, AUX] != 0):
                return i
        elif op == SCATTER:
            if not scatter_forward(code, i, ints, w):
                return ERR_INDEX - i
        elif op == CALLBACK or op == LINALG:
            return CALL_STOP + i
        elif op == ARGSORT:
            argsort_forward(w, o, a, ints, code[i, AUX])
        elif op == SEARCHSORTED:
            searchsorted_forward(w, o, n, a, code[i, NA], code[i, B], code[i, AUX])
        elif op == CUMSUM:
            p = code[i, AUX]
            scan_lines(w, a, o, ints[p], ints[p + 1], ints[p + 2], 1, False, False)
        elif op == CUMPROD:
            p = code[i, AUX]
            outer, r, inner = ints[p], ints[p + 1], ints[p + 2]
            for u in range(outer):
                for v in range(inner):
                    acc = 1.0
                    for e in range(u * r * inner + v, (u + 1) * r * inner, inner):
                        acc *= w[a + e]
                        w[o + e] = acc
        i += 1
    return OK


@leaf
def zmul(p, q):
    """p * q by the zero rule: 0 when either is 0, even if the other is inf or NaN (a zero
    adjoint or tangent times an infinite running product contributes nothing)."""
    return p * q if p != 0.0 and q != 0.0 else 0.0


@leaf
def cumprod_reverse(w, total, o, a, outer, r, inner):
    """Adjoints of running products y_e = x_0 ... x_e without division (exact where some
    x are zero): x_e gets y_{e-1} S_e, S_e = g_e + x_{e+1} S_{e+1} (g: y's adjoints)."""
    for u in range(outer):
        for v in range(inner):
            first = u * r * inner + v
            s = 0.0
            for t in range(r):
                e = first + (r - 1 - t) * inner
                if t > 0:
                    s = zmul(s, w[a + e + inner])
                s += w[total + o + e]
                w[total + a + e] += zmul(s, w[o + e - inner]) if e != first else s


@leaf
def cumprod_tangent(w, wt, K, o, a, outer, r, inner):
    """y'_e = y'_{e-1} x_e + y_{e-1} x'_e."""
    for u in range(outer):
        for v in range(inner):
            first = u * r * inner + v
            for e in range(first, (u + 1) * r * inner, inner):
                for q in range(K):
                    if e == first:
                        wt[(o + e) * K + q] = wt[(a + e) * K + q]
                    else:
                        wt[(o + e) * K + q] = (zmul(wt[(o + e - inner) * K + q], w[a + e])
                                               + zmul(w[o + e - inner], wt[(a + e) * K + q]))


@leaf
def cumprod_reverse2(w, wt, at, K, total, o, a, outer, r, inner):
    """Tangents of cumprod_reverse's adjoints: x_e gets y'_{e-1} S_e + y_{e-1} S'_e, with
    S'_e = g'_e + x'_{e+1} S_{e+1} + x_{e+1} S'_{e+1} (g': the adjoint tangents of y)."""
    for u in range(outer):
        for v in range(inner):
            first = u * r * inner + v
            for q in range(K):
                s = 0.0
                ds = 0.0
                for t in range(r):
                    e = first + (r - 1 - t) * inner
                    if t > 0:
                        nxt = a + e + inner
                        ds = zmul(ds, w[nxt]) + zmul(s, wt[nxt * K + q])
                        s = zmul(s, w[nxt])
                    s += w[total + o + e]
                    ds += at[(o + e) * K + q]
                    if e == first:
                        at[(a + e) * K + q] += ds
                    else:
                        prev = o + e - inner
                        at[(a + e) * K + q] += (zmul(wt[prev * K + q], s)
                                                + zmul(w[prev], ds))


@leaf
def scan_lines(x, src, dst, outer, r, inner, K, backward, acc):
    """Running sums along the middle axis of (outer, r, inner) blocks of x, K values per
    element: x[dst + e] = (or +=, with acc) the sum of x[src + e'] for e' <= e along the
    axis (e' >= e when backward: the adjoint of a running sum)."""
    for u in range(outer):
        for v in range(inner):
            base = u * r * inner + v
            for q in range(K):
                s = 0.0
                for t in range(r):
                    e = base + (r - 1 - t if backward else t) * inner
                    s += x[(src + e) * K + q]
                    if acc:
                        x[(dst + e) * K + q] += s
                    else:
                        x[(dst + e) * K + q] = s


@leaf
def scatter_pos(code, i, ints, w, j):
    """Position in the written buffer of element j of scatter i; -1 when a position
    computed at replay is out of bounds. Static positions are a range (ints[p] = step,
    ints[p + 1] = start) or a table (step 0); dynamic ones live in slot C, relative to a
    window (ints[p] = start, ints[p + 1] = length, ints[p + 2] = wrap negatives)."""
    p = code[i, AUX]
    if code[i, NC] > 0:
        k = to_index(w[code[i, C] + j], ints[p + 1], ints[p + 2])
        return k if k < 0 else ints[p] + k
    step = ints[p]
    if step != 0:
        return ints[p + 1] + j * step
    return ints[p + 1 + j]


@leaf
def scatter_forward(code, i, ints, w):
    """buf[pos] = value, the overwritten values saved in the result slot (the reverse sweep
    swaps them back). Element by element, so repeated positions keep the last write."""
    n, o, a, b = code[i, N], code[i, OUT], code[i, A], code[i, B]
    bstep = 1 if code[i, NB] == n else 0
    for j in range(n):
        k = scatter_pos(code, i, ints, w, j)
        if k < 0:
            return False
        w[o + j] = w[a + k]
        w[a + k] = w[b + j * bstep]
    return True


@leaf
def scatter_swap(code, i, ints, w, wt, K, backward):
    """Exchange the written elements with the saved ones: backward undoes the write (the
    reverse sweeps), forward redoes it. Tangents too when K > 0 and the write is active."""
    n, o, a = code[i, N], code[i, OUT], code[i, A]
    kk = K if code[i, FLAGS] != 0 else 0
    for jj in range(n):
        j = n - 1 - jj if backward else jj
        k = scatter_pos(code, i, ints, w, j)
        t = w[a + k]
        w[a + k] = w[o + j]
        w[o + j] = t
        for q in range(kk):
            t = wt[(a + k) * kk + q]
            wt[(a + k) * kk + q] = wt[(o + j) * kk + q]
            wt[(o + j) * kk + q] = t


@leaf
def replay_scatters(code, ints, w, wt, K, backward):
    """Swap every scatter of the program, in program order or backwards."""
    if not ints[H_FLAGS] & HAS_SCATTER:
        return
    m = code.shape[0]
    for ii in range(m):
        i = m - 1 - ii if backward else ii
        if code[i, OP] == SCATTER:
            scatter_swap(code, i, ints, w, wt, K, backward)


@leaf
def gather(w, o, n, a, ints, p):
    for j in range(n):
        w[o + j] = w[a + ints[p + j]]


@leaf
def reduce_forward(op, w, o, a, ints, p):
    outer, r, inner = ints[p], ints[p + 1], ints[p + 2]
    for u in range(outer):
        for v in range(inner):
            base = a + u * r * inner + v
            if op == REDUCE_SUM:
                acc = 0.0
                for q in range(r):
                    acc += w[base + q * inner]
            elif op == REDUCE_PROD:
                acc = 1.0
                for q in range(r):
                    acc *= w[base + q * inner]
            else:
                acc = w[base]
                for q in range(1, r):
                    x = w[base + q * inner]
                    if acc != acc:
                        break
                    if x != x or (x > acc if op == REDUCE_MAX else x < acc):
                        acc = x
            w[o + u * inner + v] = acc


@leaf
def argreduce_forward(op, w, o, a, ints, p):
    """Index of the first maximum (minimum) along the axis; NaN counts as the extreme."""
    outer, r, inner = ints[p], ints[p + 1], ints[p + 2]
    for u in range(outer):
        for v in range(inner):
            base = a + u * r * inner + v
            best = 0
            acc = w[base]
            for q in range(1, r):
                x = w[base + q * inner]
                if acc != acc:
                    break
                if x != x or (x > acc if op == ARGMAX else x < acc):
                    acc = x
                    best = q
            w[o + u * inner + v] = best


@leaf(inline="always")
def sorts_before(x, y):
    """x < y in NumPy's sort order, where NaN comes after every number."""
    return x < y or (y != y and x == x)


RUN = 16   # argsort: runs sorted by insertion before the merges


@jit
def argsort_forward(w, o, a, ints, p):
    """Positions that sort each lane (outer, r, inner) of operand a, stably: ties keep
    their order and NaN goes last, as np.argsort(kind="stable"). The keys are copied next
    to their positions (merges then stream through memory instead of reading the keys
    through the positions): insertion sort of short runs, then bottom-up merges between
    two scratch pairs allocated per instruction; a merge of runs already in order copies."""
    outer, r, inner = ints[p], ints[p + 1], ints[p + 2]
    ka = np.empty(r)
    kb = np.empty(r)
    ia = np.empty(r, np.int64)
    ib = np.empty(r, np.int64)
    for u in range(outer):
        for v in range(inner):
            base = a + u * r * inner + v
            for s in range(0, r, RUN):
                for q in range(s, min(s + RUN, r)):
                    key = w[base + q * inner]
                    j = q - 1
                    while j >= s and sorts_before(key, ka[j]):
                        ka[j + 1] = ka[j]
                        ia[j + 1] = ia[j]
                        j -= 1
                    ka[j + 1] = key
                    ia[j + 1] = q
            sk, si, dk, di = ka, ia, kb, ib
            width = RUN
            while width < r:
                for s in range(0, r, 2 * width):
                    m = min(s + width, r)
                    e = min(s + 2 * width, r)
                    if m >= e or not sorts_before(sk[m], sk[m - 1]):
                        dk[s:e] = sk[s:e]
                        di[s:e] = si[s:e]
                        continue
                    i1 = s
                    i2 = m
                    for q in range(s, e):
                        if i1 < m and (i2 >= e or not sorts_before(sk[i2], sk[i1])):
                            dk[q] = sk[i1]
                            di[q] = si[i1]
                            i1 += 1
                        else:
                            dk[q] = sk[i2]
                            di[q] = si[i2]
                            i2 += 1
                sk, dk = dk, sk
                si, di = di, si
                width *= 2
            out = o + u * r * inner + v
            for q in range(r):
                w[out + q * inner] = si[q]


@leaf
def searchsorted_forward(w, o, n, a, na, b, right):
    """For each of the n values at b, its insertion position in the sorted na values at a:
    the first position whose element is not before it (left) or comes after it (right),
    in NumPy's order (NaN last). Ranges over 0..na; whatever indexes with it is checked."""
    for j in range(n):
        x = w[b + j]
        lo = 0
        hi = na
        while lo < hi:
            mid = (lo + hi) >> 1
            y = w[a + mid]
            if sorts_before(x, y) if right else not sorts_before(y, x):
                hi = mid
            else:
                lo = mid + 1
        w[o + j] = lo


#: BLAS as Numba's own ``np.dot`` calls it (its C helpers, which find SciPy's BLAS), called
#: directly: a caller of ``np.dot`` links and optimises again the whole of Numba's ``np.dot``
#: (checks, copies, the four cases below), measured at 2-3 s of compilation for the three
#: products of ``matmul_step``, against a fraction of a second for these calls
_P = types.CPointer(types.float64)
_C, _I = types.char, types.intp
_XXGEMM = types.ExternalFunction("numba_xxgemm", types.intc(
    _C, _C, _C, _I, _I, _I, _P, _P, _I, _P, _I, _P, _P, _I))
_XXGEMV = types.ExternalFunction("numba_xxgemv", types.intc(
    _C, _C, _I, _I, _P, _P, _I, _P, _P, _P))
_XXDOT = types.ExternalFunction("numba_xxdot", types.intc(_C, _C, _I, _P, _P, _P))
_D, _N, _T = ord("d"), ord("n"), ord("t")


@jit
def matmul_acc(a, b, out, trans_a, trans_b):
    """out += op(a) @ op(b), op transposing where asked; a, b, out C-contiguous. Loops
    skipping zero factors below ``MATMUL_BLAS``; above it the product into a new array by
    the BLAS call, with the arguments, that Numba's ``np.dot`` makes for these layouts
    (op(a) and op(b) are C, or F when transposed: no copy of a large matrix), then added:
    the results of ``out += np.dot(op(a), op(b))`` to the bit."""
    m, n = out.shape
    k = a.shape[0] if trans_a else a.shape[1]
    if m * k * n >= MATMUL_BLAS:
        tmp = np.empty((m, n))
        one_zero = np.array((1.0, 0.0))
        alpha, beta = one_zero.ctypes, one_zero[1:].ctypes
        if m == 1 and n == 1:
            st = _XXDOT(_D, 0, k, a.ctypes, b.ctypes, tmp.ctypes)
        elif n == 1:        # matrix times vector
            if trans_a:
                st = _XXGEMV(_D, _N, m, k, alpha, a.ctypes, m, b.ctypes, beta, tmp.ctypes)
            else:
                st = _XXGEMV(_D, _T, k, m, alpha, a.ctypes, k, b.ctypes, beta, tmp.ctypes)
        elif m == 1:        # vector times matrix
            if trans_b:
                st = _XXGEMV(_D, _T, k, n, alpha, b.ctypes, k, a.ctypes, beta, tmp.ctypes)
            else:
                st = _XXGEMV(_D, _N, n, k, alpha, b.ctypes, n, a.ctypes, beta, tmp.ctypes)
        else:               # row-major tmp is column-major tmp^T = op(b)^T op(a)^T
            st = _XXGEMM(_D, _T if trans_b else _N, _T if trans_a else _N, n, m, k, alpha,
                         b.ctypes, b.shape[1], a.ctypes, a.shape[1], beta, tmp.ctypes, n)
        if st != 0 or one_zero[0] != 1.0:    # (the second keeps one_zero alive till here)
            raise RuntimeError("BLAS failed (SciPy's BLAS is needed)")
        for i in range(m):
            for j in range(n):
                out[i, j] += tmp[i, j]
        return
    for i in range(m):
        for p in range(k):
            aip = a[p, i] if trans_a else a[i, p]
            if aip == 0.0:
                continue
            if trans_b:
                for j in range(n):
                    out[i, j] += aip * b[j, p]
            else:
                for j in range(n):
                    out[i, j] += aip * b[p, j]


# ---------------------------------------------------------------------------- reverse

@leaf
def accumulate(w, go, do, ao, t):
    """w[ao:] += g * d, where a zero factor makes the product zero even when the other is
    infinite or NaN (``np.where(x > 0, np.sqrt(x), 0.0)`` at x = 0)."""
    g, d, ga = w[go:go + t], w[do:do + t], w[ao:ao + t]
    for j in range(t):
        v = g[j] * d[j]
        ga[j] += v if g[j] != 0.0 and d[j] != 0.0 else 0.0


@leaf
def accumulate_scalar(w, go, do, t):
    g, d = w[go:go + t], w[do:do + t]
    acc = 0.0
    for j in range(t):
        v = g[j] * d[j]
        acc += v if g[j] != 0.0 and d[j] != 0.0 else 0.0
    return acc


@jit(inline="always")    # inlined into grad and vjp; compiled on its own for Python
def reverse(code, ints, w):
    """Adjoints of every slot from the adjoint of the output (already in place); stops at an
    active callback and returns its index (else -1). Instruction by instruction: sweeping
    runs strip by strip, as ``forward_strips`` does, measured slower here (docs/design.md,
    "Strip-mining")."""
    total = ints[H_TOTAL]
    for i in range(code.shape[0] - 1, -1, -1):
        flags = code[i, FLAGS]
        if flags != 0:
            op = code[i, OP]
            if op <= N_ELEMENTWISE:   # not through reverse_one: that one counts references
                if code[i, N] == 1:
                    ew_reverse1(code, i, w, total, flags)
                else:
                    ew_reverse(code, i, w, total, flags)
            elif op == CALLBACK or op == LINALG:
                return i
            else:
                reverse_structural(code, ints, w, i)
        elif code[i, OP] == SCATTER:
            scatter_swap(code, i, ints, w, w, 0, True)
    replay_scatters(code, ints, w, w, 0, False)   # leave the values as the forward left them
    return -1


@jit
def reverse_one(code, ints, w, i):
    """Adjoints of the operands of instruction i; clears the adjoint of its result."""
    if code[i, OP] <= N_ELEMENTWISE:
        ew_reverse(code, i, w, ints[H_TOTAL], code[i, FLAGS])
    else:
        reverse_structural(code, ints, w, i)


@jit
def reverse_structural(code, ints, w, i):
    """``reverse_one`` for a structural instruction i. The sweeps call this one, so that
    their compiled code holds the elementwise reverse once (not again in reverse_one's)."""
    total = ints[H_TOTAL]
    flags = code[i, FLAGS]
    op = code[i, OP]
    o = code[i, OUT]
    n = code[i, N]
    a = code[i, A]
    if op == GATHER:
        scatter_add(w, total + o, n, total + a, ints, code[i, AUX])
    elif op == GATHER_DYN:
        na = code[i, NA]
        b = code[i, B]
        for j in range(n):
            w[total + a + to_index(w[b + j], na, code[i, AUX])] += w[total + o + j]
    elif op == CONCAT:
        p = code[i, AUX]
        pos = total + o
        for q in range(ints[p]):
            off, ln, act = ints[p + 1 + 3 * q], ints[p + 2 + 3 * q], ints[p + 3 + 3 * q]
            if act:
                for j in range(ln):
                    w[total + off + j] += w[pos + j]
            pos += ln
    elif op <= REDUCE_MIN:
        reduce_reverse(op, w, total, o, a, ints, code[i, AUX])
    elif op == SCATTER:
        scatter_reverse(code, i, ints, w, total)
    elif op == CUMSUM:
        p = code[i, AUX]
        scan_lines(w, total + o, total + a, ints[p], ints[p + 1], ints[p + 2], 1, True, True)
    elif op == CUMPROD:
        p = code[i, AUX]
        cumprod_reverse(w, total, o, a, ints[p], ints[p + 1], ints[p + 2])
    elif op == MATMUL:
        p = code[i, AUX]
        m, k, q = ints[p], ints[p + 1], ints[p + 2]
        b = code[i, B]
        g = w[total + o:total + o + m * q].reshape((m, q))
        if flags & 1:
            matmul_acc(g, w[b:b + k * q].reshape((k, q)),
                       w[total + a:total + a + m * k].reshape((m, k)), False, True)
        if flags & 2:
            matmul_acc(w[a:a + m * k].reshape((m, k)), g,
                       w[total + b:total + b + k * q].reshape((k, q)), True, False)
    w[total + o:total + o + n] = 0.0   # swept: nothing reads this adjoint again


@leaf
def ew_reverse(code, i, w, total, flags):
    """Adjoints of the operands of elementwise instruction i, chunk by chunk so that the
    partials stay in cache; constant partials (add, sub, neg) and partials that are an
    operand (mul) are not materialised. Clears the result's adjoint as it goes."""
    n, o, op = code[i, N], code[i, OUT], code[i, OP]
    tiles = 2 * total
    dpart = tiles + 4 * TILE
    fill_tiles(code, i, w, tiles)
    acc0 = 0.0
    acc1 = 0.0
    acc2 = 0.0
    for s in range(0, n, TILE):
        t = min(TILE, n - s)
        go = total + o + s
        for k in range(3):
            if not (flags >> k) & 1:
                continue
            kind, c, do = partial_at(code, i, k, s, t, w, tiles, dpart)
            if code[i, NA + 2 * k] == n:
                ao = total + code[i, A + 2 * k] + s
                if kind == PARTIAL_CONST:
                    accumulate_const(w, go, c, ao, t)
                else:
                    accumulate(w, go, do, ao, t)
            else:
                if kind == PARTIAL_CONST:
                    v = c * chunk_sum(w, go, t)
                else:
                    v = accumulate_scalar(w, go, do, t)
                if k == 0:
                    acc0 += v
                elif k == 1:
                    acc1 += v
                else:
                    acc2 += v
        w[go:go + t] = 0.0
    for k, acc in ((0, acc0), (1, acc1), (2, acc2)):
        if (flags >> k) & 1 and code[i, NA + 2 * k] != n:
            w[total + code[i, A + 2 * k]] += acc


@leaf
def operands1(code, i, w):
    """The operand values of an elementwise instruction of one element (0.0 for absent
    operands, whose offsets are not read)."""
    return (w[code[i, A]], w[code[i, B]] if code[i, NB] else 0.0,
            w[code[i, C]] if code[i, NC] else 0.0)


@leaf
def ew_reverse1(code, i, w, total, flags):
    """``ew_reverse`` for one element: partials as scalars, no slices, tiles or chunks. A
    zero adjoint contributes nothing (and needs no clearing); a zero partial contributes
    zero even times an infinite or NaN adjoint (the zero rule of ``accumulate``)."""
    go = total + code[i, OUT]
    g = w[go]
    if g == 0.0:
        return
    op = code[i, OP]
    x, y, z = operands1(code, i, w)
    v = w[code[i, OUT]]
    for k in range(3):
        if (flags >> k) & 1:
            d = ew_partial1(op, k, x, y, z, v)
            if d != 0.0:
                w[total + code[i, A + 2 * k]] += g * d
    w[go] = 0.0


@leaf(inline="always")   # no compile of its own: see "Compile policy" in docs/design.md
def partial_at(code, i, k, s, t, w, tiles, dpart):
    """Partial k of elementwise instruction i on chunk [s, s + t): (PARTIAL_CONST, value,
    -) or (kind, -, offset in w of the t partials), computed into dpart only when it is
    neither a constant nor an operand."""
    op = code[i, OP]
    kind, c = partial_form(op, k)
    do = dpart
    if kind == PARTIAL_EXPR:
        ew_partial(op, k, t, w, operand(code, i, 0, s, tiles), operand(code, i, 1, s, tiles),
                   operand(code, i, 2, s, tiles), code[i, OUT] + s, dpart)
    elif kind == PARTIAL_OPERAND:
        r = int(c)
        if r < 3 and code[i, NA + 2 * r] != code[i, N]:
            # a broadcast scalar (x * 2.0): one coefficient for every element, so the
            # sweeps scale instead of multiplying elementwise; finite and nonzero only,
            # as the zero rule needs no select then
            v = w[code[i, A + 2 * r]]
            if v != 0.0 and math.isfinite(v):
                return PARTIAL_CONST, v, do
        do = code[i, OUT] + s if r == 3 else operand(code, i, r, s, tiles)
    return kind, c, do


@leaf
def accumulate_const(w, go, c, ao, t):
    g, ga = w[go:go + t], w[ao:ao + t]
    for j in range(t):
        ga[j] += c * g[j]


@leaf
def chunk_sum(w, go, t):
    acc = 0.0
    for j in range(go, go + t):
        acc += w[j]
    return acc


@leaf
def scatter_add(w, go, n, ao, ints, p):
    for j in range(n):
        w[ao + ints[p + j]] += w[go + j]


@leaf
def scatter_reverse(code, i, ints, w, total):
    """The written elements' adjoints go to the value and are zeroed (the old version did
    not reach the output there); the old values are swapped back in."""
    n, o, a, b, na, flags = (code[i, N], code[i, OUT], code[i, A], code[i, B], code[i, NA],
                             code[i, FLAGS])
    bstep = 1 if code[i, NB] == n else 0
    for jj in range(n):
        j = n - 1 - jj
        k = scatter_pos(code, i, ints, w, j)
        g = w[total + a + k]
        w[total + a + k] = 0.0
        if flags & 2:
            w[total + b + j * bstep] += g
    if not flags & 1:    # the buffer was not differentiable before: nothing flows on
        w[total + a:total + a + na] = 0.0
    scatter_swap(code, i, ints, w, w, 0, True)


@leaf
def scatter_tangent(code, i, ints, w, wt, K):
    """Redo the write of values, and write the value's tangents (saving the old ones)."""
    n, o, a, b, na, flags = (code[i, N], code[i, OUT], code[i, A], code[i, B], code[i, NA],
                             code[i, FLAGS])
    bstep = 1 if code[i, NB] == n else 0
    scatter_swap(code, i, ints, w, wt, 0, False)
    if flags == 0:
        return
    if not flags & 1:
        wt[a * K:(a + na) * K] = 0.0
    for j in range(n):
        k = scatter_pos(code, i, ints, w, j)
        for q in range(K):
            wt[(o + j) * K + q] = wt[(a + k) * K + q]
            wt[(a + k) * K + q] = wt[(b + j * bstep) * K + q] if flags & 2 else 0.0


@leaf
def scatter_reverse2(code, i, ints, w, wt, at, K):
    """Adjoint tangents of a scatter (linear, as its adjoints) and the old tangents back."""
    n, o, a, b, na, flags = (code[i, N], code[i, OUT], code[i, A], code[i, B], code[i, NA],
                             code[i, FLAGS])
    if flags == 0:
        return
    bstep = 1 if code[i, NB] == n else 0
    for jj in range(n):
        j = n - 1 - jj
        k = scatter_pos(code, i, ints, w, j)
        for q in range(K):
            g = at[(a + k) * K + q]
            at[(a + k) * K + q] = 0.0
            if flags & 2:
                at[(b + j * bstep) * K + q] += g
            t = wt[(a + k) * K + q]
            wt[(a + k) * K + q] = wt[(o + j) * K + q]
            wt[(o + j) * K + q] = t
    if not flags & 1:
        at[a * K:(a + na) * K] = 0.0


@leaf
def reduce_reverse(op, w, total, o, a, ints, p):
    outer, r, inner = ints[p], ints[p + 1], ints[p + 2]
    for u in range(outer):
        for v in range(inner):
            base = a + u * r * inner + v
            g = w[total + o + u * inner + v]
            if g == 0.0:
                continue
            if op == REDUCE_SUM:
                for q in range(r):
                    w[total + base + q * inner] += g
            elif op == REDUCE_PROD:
                # exclusive products, exact when some factors are zero
                left = 1.0
                for q in range(r):
                    right = 1.0
                    for q2 in range(q + 1, r):
                        right *= w[base + q2 * inner]
                    w[total + base + q * inner] += g * left * right
                    left *= w[base + q * inner]
            else:
                # the whole adjoint goes to the first extreme element (NaN included)
                best = w[o + u * inner + v]
                for q in range(r):
                    x = w[base + q * inner]
                    if x == best or (x != x and best != best):
                        w[total + base + q * inner] += g
                        break


# ---------------------------------------------------------------------------- linear algebra
# A LINALG instruction applies one matrix function to a stack of ``nb`` matrices: operand A
# (nb, n, n), for a solve also B (nb, n, r), result Y. Its side table at AUX holds
# (sub-op, nb, n, r). Result layouts: solve X (nb, n, r); slogdet the nb signs then the nb
# log-determinants; cholesky L (nb, n, n); eigh the eigenvalues (nb, n) then the
# eigenvectors (nb, n, n); qr (reduced, of nb (m, n) matrices, m = r >= n: the one
# rectangular operand) Q (nb, m, n) then R (nb, n, n). cholesky and eigh read the lower
# triangle only, as NumPy does.
# Each rule is written once here, on matrices. The sweeps stop at a LINALG instruction and
# the Python drivers (custom.py) call these functions, so that they are compiled only when
# a tape uses them; ``Dual`` and the recorder run la_forward and la_tangent (``la_eval``)
# on a small workspace of their own.
LA_SOLVE, LA_SLOGDET, LA_CHOLESKY, LA_EIGH, LA_QR = range(5)
LA_NAMES = ("solve", "slogdet", "cholesky", "eigh", "qr")


@jit
def la_out_size(sub, nb, n, r):
    """Length of the result of a LINALG instruction."""
    return nb * (n * r if sub == LA_SOLVE else 2 if sub == LA_SLOGDET else
                 n * n if sub == LA_CHOLESKY else n + n * n if sub == LA_EIGH else
                 r * n + n * n)


@jit
def la_mat(v, off, n, m):
    """Rows-major (n, m) matrix at element offset ``off`` of v (a view)."""
    return v[off:off + n * m].reshape((n, m))


@jit
def la_dir(v, off, n, m, K, q):
    """Direction q of the tangents (K per element) of the (n, m) matrix at ``off``, as a
    contiguous copy."""
    cols = v[off * K:(off + n * m) * K].reshape((n * m, K))
    return np.ascontiguousarray(cols[:, q]).reshape((n, m))


@jit
def la_add_dir(v, off, K, q, X, scale):
    """Tangents (K per element) at ``off``, direction q, += scale * X."""
    d = v[off * K:(off + X.size) * K].reshape((X.size, K))
    x = X.ravel()
    for j in range(X.size):
        d[j, q] += scale * x[j]


@jit
def la_mm(X, Y, tx, ty):
    """op(X) @ op(Y) for C-contiguous matrices, op transposing where asked (one compiled
    product for every rule: fewer specialisations, less compile time)."""
    m = X.shape[1] if tx else X.shape[0]
    n = Y.shape[0] if ty else Y.shape[1]
    out = np.zeros((m, n))
    matmul_acc(X, Y, out, tx, ty)
    return out


@jit
def la_mm3(X, Y, Z, tx, tz):
    """op(X) @ Y @ op(Z)."""
    return la_mm(la_mm(X, Y, tx, False), Z, False, tz)


@jit
def la_solve(A, B, ta):
    """op(A)^-1 B, op transposing when ta; C-ordered (LAPACK's result is Fortran-ordered,
    and a reshape must see C order)."""
    if ta:
        return np.ascontiguousarray(np.linalg.solve(np.ascontiguousarray(A.T), B))
    return np.ascontiguousarray(np.linalg.solve(A, B))


@jit
def la_inv(A):
    return la_solve(A, np.eye(A.shape[0]), False)


@jit
def la_sym_lower(M):
    """The symmetric matrix a function of the lower triangle sees: tril(M) + tril(M, -1).T."""
    n = M.shape[0]
    S = np.empty((n, n))
    for i in range(n):
        for j in range(i + 1):
            S[i, j] = M[i, j]
            S[j, i] = M[i, j]
    return S


@jit
def la_lower_adjoint(Sb, v, off, K, q):
    """Adjoint of la_sym_lower added to the matrix at ``off`` of v (direction q of K, or
    the plain adjoint when K == 0): the lower triangle gets Sb + Sb.T (the diagonal once)."""
    n = Sb.shape[0]
    for i in range(n):
        for j in range(i + 1):
            g = Sb[i, j] + Sb[j, i] if i != j else Sb[i, i]
            if K == 0:
                v[off + i * n + j] += g
            else:
                v[(off + i * n + j) * K + q] += g


@jit
def la_phi(X):
    """The lower triangle of X with its diagonal halved (the Cholesky rules' projection)."""
    n = X.shape[0]
    P = np.zeros((n, n))
    for i in range(n):
        for j in range(i):
            P[i, j] = X[i, j]
        P[i, i] = 0.5 * X[i, i]
    return P


@jit
def la_coupling(w, G):
    """F o G, F[i, j] = 1 / (w[j] - w[i]) off the diagonal: the eigenvector rules. An all
    zero G (the eigenvectors unused) gives zero; otherwise an exactly repeated eigenvalue
    pair gives NaN: the eigenvectors' derivative is undefined there (docs/guide.md)."""
    n = w.shape[0]
    R = np.zeros((n, n))
    used = False
    for i in range(n):
        for j in range(n):
            used = used or G[i, j] != 0.0
    if not used:
        return R
    for i in range(n):
        for j in range(n):
            if i != j:
                R[i, j] = G[i, j] / (w[j] - w[i]) if w[j] != w[i] else np.nan
    return R


@jit
def la_forward(ints, p, w, o, a, b):
    """Values of LINALG instruction with side table p (raises LinAlgError as NumPy)."""
    sub, nb, n, r = ints[p], ints[p + 1], ints[p + 2], ints[p + 3]
    if sub == LA_QR:
        la_qr_forward(nb, n, r, w, o, a)
        return
    for t in range(nb):
        A = la_mat(w, a + t * n * n, n, n)
        if sub == LA_SOLVE:
            la_mat(w, o + t * n * r, n, r)[:, :] = la_solve(A, la_mat(w, b + t * n * r, n, r),
                                                            False)
        elif sub == LA_SLOGDET:
            s, l = np.linalg.slogdet(A)
            w[o + t] = s
            w[o + nb + t] = l
        elif sub == LA_CHOLESKY:
            la_mat(w, o + t * n * n, n, n)[:, :] = np.linalg.cholesky(A)
        else:
            ev, V = np.linalg.eigh(A)
            w[o + t * n:o + (t + 1) * n] = ev
            la_mat(w, o + nb * n + t * n * n, n, n)[:, :] = V


@jit
def la_tangent(ints, p, w, wt, K, o, a, b, flags):
    """Tangents (K directions) of the result of a LINALG instruction."""
    sub, nb, n, r = ints[p], ints[p + 1], ints[p + 2], ints[p + 3]
    if sub == LA_QR:
        la_qr_tangent(nb, n, r, w, wt, K, o, a)
        return
    wt[o * K:(o + la_out_size(sub, nb, n, r)) * K] = 0.0
    for t in range(nb):
        oa = a + t * n * n
        A = la_mat(w, oa, n, n)
        if sub == LA_SOLVE:
            # X' = A^-1 (B' - A' X), every direction in one solve
            ob, ox = b + t * n * r, o + t * n * r
            X = la_mat(w, ox, n, r)
            R = np.zeros((n, r * K))
            R3 = R.reshape((n, r, K))
            for q in range(K):
                Rq = np.zeros((n, r))
                if flags & 2:
                    Rq += la_dir(wt, ob, n, r, K, q)
                if flags & 1:
                    Rq -= la_mm(la_dir(wt, oa, n, n, K, q), X, False, False)
                R3[:, :, q] = Rq
            wt[ox * K:(ox + n * r) * K] = la_solve(A, R, False).ravel()
            continue
        Ai = L = Li = V = np.empty((0, 0))
        ev = np.empty(0)
        if sub == LA_SLOGDET:
            Ai = np.ascontiguousarray(la_inv(A).T)
        elif sub == LA_CHOLESKY:
            L = la_mat(w, o + t * n * n, n, n)
            Li = la_inv(L)
        else:
            ev = w[o + t * n:o + (t + 1) * n]
            V = la_mat(w, o + nb * n + t * n * n, n, n)
        for q in range(K):
            At = la_dir(wt, oa, n, n, K, q)
            if sub == LA_SLOGDET:
                # log|det A|' = tr(A^-1 A')
                wt[(o + nb + t) * K + q] = np.sum(Ai * At)
            elif sub == LA_CHOLESKY:
                # L' = L phi(L^-1 S' L^-T)
                M = la_mm3(Li, la_sym_lower(At), Li, False, True)
                la_add_dir(wt, o + t * n * n, K, q, la_mm(L, la_phi(M), False, False), 1.0)
            else:
                # M = V^T S' V: w' = diag(M), V' = V (F o M)
                M = la_mm3(V, la_sym_lower(At), V, True, False)
                for i in range(n):
                    wt[(o + t * n + i) * K + q] = M[i, i]
                la_add_dir(wt, o + nb * n + t * n * n, K, q,
                           la_mm(V, la_coupling(ev, M), False, False), 1.0)


@jit
def la_reverse(ints, p, w, total, o, a, b, flags):
    """Adjoints of the operands of a LINALG instruction from its result's adjoint."""
    sub, nb, n, r = ints[p], ints[p + 1], ints[p + 2], ints[p + 3]
    if sub == LA_QR:
        la_qr_reverse(nb, n, r, w, total, o, a)
        return
    for t in range(nb):
        oa = a + t * n * n
        A = la_mat(w, oa, n, n)
        if sub == LA_SOLVE:
            # Bb = A^-T Xb, Ab = -Bb X^T
            X = la_mat(w, o + t * n * r, n, r)
            Bb = la_solve(A, la_mat(w, total + o + t * n * r, n, r), True)
            if flags & 2:
                la_mat(w, total + b + t * n * r, n, r)[:, :] += Bb
            if flags & 1:
                la_mat(w, total + oa, n, n)[:, :] -= la_mm(Bb, X, False, True)
        elif sub == LA_SLOGDET:
            # Ab = g A^-T
            la_mat(w, total + oa, n, n)[:, :] += w[total + o + nb + t] * la_inv(A).T
        elif sub == LA_CHOLESKY:
            # Sb = L^-T phi(L^T Lb) L^-1
            L = la_mat(w, o + t * n * n, n, n)
            Li = la_inv(L)
            P = la_phi(la_mm(L, la_mat(w, total + o + t * n * n, n, n), True, False))
            la_lower_adjoint(la_mm3(Li, P, Li, True, False), w, total + oa, 0, 0)
        else:
            # Sb = V (diag(wb) + F o (V^T Vb)) V^T
            ev = w[o + t * n:o + (t + 1) * n]
            V = la_mat(w, o + nb * n + t * n * n, n, n)
            G = la_mm(V, la_mat(w, total + o + nb * n + t * n * n, n, n), True, False)
            Mb = la_coupling(ev, G)
            for i in range(n):
                Mb[i, i] += w[total + o + t * n + i]
            la_lower_adjoint(la_mm3(V, Mb, V, False, True), w, total + oa, 0, 0)


@jit
def la_reverse2(ints, p, w, wt, at, K, total, o, a, b, flags):
    """Adjoint tangents of the operands of a LINALG instruction (forward-over-reverse): the
    tangent, along the forward tangents in wt, of la_reverse's rules, plus those rules
    applied to the result's adjoint tangents in at."""
    sub, nb, n, r = ints[p], ints[p + 1], ints[p + 2], ints[p + 3]
    if sub == LA_QR:
        la_qr_reverse2(nb, n, r, w, wt, at, K, total, o, a)
        return
    for t in range(nb):
        oa = a + t * n * n
        A = la_mat(w, oa, n, n)
        if sub == LA_SOLVE:
            # Bb' = A^-T (Xb' - A'^T Bb), Ab' = -(Bb' X^T + Bb X'^T)
            ob, ox = b + t * n * r, o + t * n * r
            X = la_mat(w, ox, n, r)
            Bb = la_solve(A, la_mat(w, total + ox, n, r), True)
            R = np.zeros((n, r * K))
            R3 = R.reshape((n, r, K))
            for q in range(K):
                Rq = la_dir(at, ox, n, r, K, q)
                if flags & 1:
                    Rq -= la_mm(la_dir(wt, oa, n, n, K, q), Bb, True, False)
                R3[:, :, q] = Rq
            Bbt = la_solve(A, R, True).reshape((n, r, K))
            for q in range(K):
                Bq = np.ascontiguousarray(Bbt[:, :, q])
                if flags & 2:
                    la_add_dir(at, ob, K, q, Bq, 1.0)
                if flags & 1:
                    la_add_dir(at, oa, K, q, la_mm(Bq, X, False, True) +
                               la_mm(Bb, la_dir(wt, ox, n, r, K, q), False, True), -1.0)
        elif sub == LA_SLOGDET:
            # Ab' = g' A^-T - g (A^-1 A' A^-1)^T
            Ai = la_inv(A)
            AiT = np.ascontiguousarray(Ai.T)
            g = w[total + o + nb + t]
            for q in range(K):
                gt = at[(o + nb + t) * K + q]
                At = la_dir(wt, oa, n, n, K, q)
                AiAtAi = la_mm3(Ai, At, Ai, False, False)
                la_add_dir(at, oa, K, q, gt * AiT - g * np.ascontiguousarray(AiAtAi.T), 1.0)
        elif sub == LA_CHOLESKY:
            # Sb' = L^-T P' L^-1 - L^-T L'^T Sb - Sb L' L^-1, P' = phi(L'^T Lb + L^T Lb')
            ol = o + t * n * n
            L = la_mat(w, ol, n, n)
            Lb = la_mat(w, total + ol, n, n)
            Li = la_inv(L)
            Sb = la_mm3(Li, la_phi(la_mm(L, Lb, True, False)), Li, True, False)
            for q in range(K):
                Lt = la_dir(wt, ol, n, n, K, q)
                Pt = la_phi(la_mm(Lt, Lb, True, False) +
                            la_mm(L, la_dir(at, ol, n, n, K, q), True, False))
                Sbt = (la_mm3(Li, Pt, Li, True, False)
                       - la_mm(la_mm(Lt, Li, False, False), Sb, True, False)
                       - la_mm3(Sb, Lt, Li, False, False))
                la_lower_adjoint(Sbt, at, oa, K, q)
        else:
            # Sb' = V' Mb V^T + V Mb' V^T + V Mb V'^T, Mb' = diag(wb') + F' o G + F o G',
            # G' = V'^T Vb + V^T Vb', F'_ij = -(w'_j - w'_i) F_ij^2
            ow, ov = o + t * n, o + nb * n + t * n * n
            ev = w[ow:ow + n]
            V = la_mat(w, ov, n, n)
            Vb = la_mat(w, total + ov, n, n)
            FG = la_coupling(ev, la_mm(V, Vb, True, False))
            Mb = FG.copy()
            for i in range(n):
                Mb[i, i] += w[total + ow + i]
            for q in range(K):
                Vt = la_dir(wt, ov, n, n, K, q)
                Mbt = la_coupling(ev, la_mm(Vt, Vb, True, False) +
                                  la_mm(V, la_dir(at, ov, n, n, K, q), True, False))
                for i in range(n):
                    Mbt[i, i] += at[(ow + i) * K + q]
                    for j in range(n):
                        if i != j and FG[i, j] != 0.0:
                            Mbt[i, j] -= ((wt[(ow + j) * K + q] - wt[(ow + i) * K + q])
                                          * FG[i, j] / (ev[j] - ev[i]))
                Sbt = (la_mm3(Vt, Mb, V, False, True) + la_mm3(V, Mbt, V, False, True)
                       + la_mm3(V, Mb, Vt, False, True))
                la_lower_adjoint(Sbt, at, oa, K, q)


@jit
def la_qr_forward(nb, n, m, w, o, a):
    for t in range(nb):
        Q, R = np.linalg.qr(la_mat(w, a + t * m * n, m, n))
        la_mat(w, o + t * m * n, m, n)[:, :] = Q
        la_mat(w, o + nb * m * n + t * n * n, n, n)[:, :] = R


@jit
def la_qr_tangent(nb, n, m, w, wt, K, o, a):
    """X = Q^T A' R^-1, Omega = tril(X, -1) - tril(X, -1)^T: R' = (X - Omega) R,
    Q' = (A' - Q R') R^-1 (the signs of R's diagonal are locally constant)."""
    wt[o * K:(o + nb * (m * n + n * n)) * K] = 0.0
    for t in range(nb):
        oq, orr = o + t * m * n, o + nb * m * n + t * n * n
        Q, R = la_mat(w, oq, m, n), la_mat(w, orr, n, n)
        Ri = la_inv(R)
        for q in range(K):
            At = la_dir(wt, a + t * m * n, m, n, K, q)
            U = la_mm3(Q, At, Ri, True, False)
            for i in range(n):
                for j in range(i):
                    U[j, i] += U[i, j]
                    U[i, j] = 0.0
            Rt = la_mm(U, R, False, False)
            la_add_dir(wt, orr, K, q, Rt, 1.0)
            la_add_dir(wt, oq, K, q, la_mm(At - la_mm(Q, Rt, False, False), Ri, False, False),
                       1.0)


@jit
def la_qr_reverse(nb, n, m, w, total, o, a):
    """Ab = (Qb + Q sym_lower(M)) R^-T, M = R Rb^T - Qb^T Q."""
    for t in range(nb):
        oq, orr = o + t * m * n, o + nb * m * n + t * n * n
        Q, R = la_mat(w, oq, m, n), la_mat(w, orr, n, n)
        Qb, Rb = la_mat(w, total + oq, m, n), la_mat(w, total + orr, n, n)
        M = la_mm(R, Rb, False, True) - la_mm(Qb, Q, True, False)
        la_mat(w, total + a + t * m * n, m, n)[:, :] += la_mm(
            Qb + la_mm(Q, la_sym_lower(M), False, False), la_inv(R), False, True)


@jit
def la_qr_reverse2(nb, n, m, w, wt, at, K, total, o, a):
    """Ab' = (Qb' + Q' P + Q P' - Ab R'^T) R^-T, P = sym_lower(M),
    M' = R' Rb^T + R Rb'^T - Qb'^T Q - Qb^T Q'."""
    for t in range(nb):
        oq, orr = o + t * m * n, o + nb * m * n + t * n * n
        Q, R = la_mat(w, oq, m, n), la_mat(w, orr, n, n)
        Qb, Rb = la_mat(w, total + oq, m, n), la_mat(w, total + orr, n, n)
        Ri = la_inv(R)
        P = la_sym_lower(la_mm(R, Rb, False, True) - la_mm(Qb, Q, True, False))
        Ab = la_mm(Qb + la_mm(Q, P, False, False), Ri, False, True)
        for q in range(K):
            Qt, Rt = la_dir(wt, oq, m, n, K, q), la_dir(wt, orr, n, n, K, q)
            Qbt, Rbt = la_dir(at, oq, m, n, K, q), la_dir(at, orr, n, n, K, q)
            Mt = (la_mm(Rt, Rb, False, True) + la_mm(R, Rbt, False, True)
                  - la_mm(Qbt, Q, True, False) - la_mm(Qb, Qt, True, False))
            Y = (Qbt + la_mm(Qt, P, False, False) + la_mm(Q, la_sym_lower(Mt), False, False)
                 - la_mm(Ab, Rt, False, True))
            la_add_dir(at, a + t * m * n, K, q, la_mm(Y, Ri, False, True), 1.0)


def la_eval(sub, nb, n, r, A, B, At=None, Bt=None):
    """Value (and, given operand tangents of shape (size, K), the tangents (size, K)) of a
    matrix function on flat float64 operands: the kernels' own rules, run on a small
    workspace, for recording and for ``Dual``."""
    na = nb * n * (r if sub == LA_QR else n)
    nbb = nb * n * r if sub == LA_SOLVE else 0
    ny = la_out_size(sub, nb, n, r)
    w = np.zeros(na + nbb + ny)
    w[:na] = A
    w[na:na + nbb] = B
    ints = np.array([sub, nb, n, r], dtype=np.int64)
    la_forward(ints, 0, w, na + nbb, 0, na)
    y = w[na + nbb:].copy()
    if At is None and Bt is None:
        return y, None
    K = (At if At is not None else Bt).shape[1]
    wt = np.zeros(w.size * K)
    if At is not None:
        wt[:na * K] = At.ravel()
    if Bt is not None:
        wt[na * K:(na + nbb) * K] = Bt.ravel()
    la_tangent(ints, 0, w, wt, K, na + nbb, 0, na, int(At is not None) | 2 * int(Bt is not None))
    return y, wt[(na + nbb) * K:].reshape(ny, K)


# ---------------------------------------------------------------------------- entries

@jit
def program(prog):
    """The instructions of a program, as a (n_instr, NCOL) view."""
    c = prog[H_CODE]
    return prog[c:c + prog[H_NCODE] * NCOL].reshape((prog[H_NCODE], NCOL))


@jit
def evaluate(prog, xin, y, w):
    """f at new inputs: y[:] = value. Returns OK or the status of the failed sweep."""
    w[:xin.shape[0]] = xin
    st = forward_strips(program(prog), prog, w, STRIP)
    if st == OK:
        o = prog[H_OUT]
        y[:] = w[o:o + prog[H_NOUT]]
    return st


@jit
def vjp(prog, xin, seeds, out, w):
    """Value and vector-Jacobian products for k = len(seeds) rows of weights on the
    output: out[:m] = f, out[m + r * nx: m + (r + 1) * nx] = seeds[r] @ J."""
    code = program(prog)
    w[:xin.shape[0]] = xin
    st = forward_strips(code, prog, w, STRIP)
    if st != OK:
        return st
    total = prog[H_TOTAL]
    o, m, nx = prog[H_OUT], prog[H_NOUT], prog[H_NX]
    out[:m] = w[o:o + m]
    for r in range(seeds.shape[0]):
        w[total + o:total + o + m] += seeds[r]
        reverse(code, prog, w)
        out[m + r * nx:m + (r + 1) * nx] = w[total:total + nx]
        w[total:total + nx] = 0.0
        w[total + o:total + o + m] = 0.0
    return OK


@jit
def grad(prog, xin, out, w):
    """Value and gradient of a scalar output: out[0] = f, out[1:] = gradient."""
    code = program(prog)
    w[:xin.shape[0]] = xin
    st = forward_strips(code, prog, w, STRIP)
    if st != OK:
        return st
    total = prog[H_TOTAL]
    o, nx = prog[H_OUT], prog[H_NX]
    out[0] = w[o]
    w[total + o] += 1.0
    reverse(code, prog, w)
    out[1:1 + nx] = w[total:total + nx]
    w[total:total + nx] = 0.0
    w[total + o] = 0.0
    return OK


# ---------------------------------------------------------------------------- tangents
# Tangents of K directions at once live in ``wt`` and adjoint tangents in ``at``, both of
# length T * K: slot offset o, element j, direction q is at (o + j) * K + q.

@leaf
def ew_tangent(code, i, w, wt, K, total, scratch):
    """Tangent of elementwise instruction i: the sum over active operands of partial times
    operand tangent (a zero factor contributes zero)."""
    n, o, flags = code[i, N], code[i, OUT], code[i, FLAGS]
    tiles = 2 * total
    dpart = tiles + 4 * TILE
    fill_tiles(code, i, w, tiles)
    # the first active operand, when it spans the result, writes the tangent instead of
    # adding to a zeroed one (one pass less over K values per element)
    first = 0 if flags & 1 else (1 if flags & 2 else 2)
    assign = code[i, NA + 2 * first] == n
    if not assign:
        wt[o * K:(o + n) * K] = 0.0
    for s in range(0, n, TILE):
        t = min(TILE, n - s)
        for k in range(3):
            if not (flags >> k) & 1:
                continue
            kind, c, do = partial_at(code, i, k, s, t, w, tiles, dpart)
            ak = code[i, A + 2 * k]
            full = code[i, NA + 2 * k] == n
            put = assign and k == first
            if K == 1 and full:     # one direction: plain loops over the chunk
                if kind == PARTIAL_CONST:
                    scaled_add(wt, o + s, wt, ak + s, c, t, put)
                else:
                    multiply_add(wt, o + s, w, do, wt, ak + s, t, put)
                continue
            if full and kind == PARTIAL_CONST:     # one pass over the chunk's t * K values
                scaled_add(wt, (o + s) * K, wt, (ak + s) * K, c, t * K, put)
                continue
            if full:
                rows_multiply_add(wt, (o + s) * K, w, do, wt, (ak + s) * K, t, K, put, scratch)
                continue
            for j in range(t):
                d = c if kind == PARTIAL_CONST else w[do + j]
                src = (ak + s + j) * K if full else ak * K
                dst = (o + s + j) * K
                if d != 0.0 and math.isfinite(d):   # the common case, inline
                    if put:
                        for q in range(K):
                            wt[dst + q] = d * wt[src + q] + 0.0
                    else:
                        for q in range(K):
                            wt[dst + q] += d * wt[src + q]
                else:
                    scaled_add(wt, dst, wt, src, d, K, put)


@leaf
def ew_tangent1(code, i, w, wt, K):
    """``ew_tangent`` for one element: scalar partials, K directions each."""
    o, op, flags = code[i, OUT], code[i, OP], code[i, FLAGS]
    x, y, z = operands1(code, i, w)
    v = w[o]
    put = True
    for k in range(3):
        if (flags >> k) & 1:
            d = ew_partial1(op, k, x, y, z, v)
            scaled_add(wt, o * K, wt, code[i, A + 2 * k] * K, d, K, put)
            put = False


@leaf
def multiply_add(dst, do, a, ao, b, bo, t, put=False):
    """dst[do:do+t] += a[ao:ao+t] * b[bo:bo+t] (``=`` with put), a zero factor giving
    zero."""
    r, x, y = dst[do:do + t], a[ao:ao + t], b[bo:bo + t]
    if put:
        for j in range(t):
            v = x[j] * y[j] + 0.0
            r[j] = v if x[j] != 0.0 and y[j] != 0.0 else 0.0
    else:
        for j in range(t):
            v = x[j] * y[j]
            r[j] += v if x[j] != 0.0 and y[j] != 0.0 else 0.0


@leaf
def multiply_add3(dst, do, a, ao, b, bo, c, co, t):
    """dst[do:do+t] += a * b * c elementwise, a zero factor giving zero."""
    r, x, y, z = dst[do:do + t], a[ao:ao + t], b[bo:bo + t], c[co:co + t]
    for j in range(t):
        v = x[j] * y[j] * z[j]
        r[j] += v if x[j] != 0.0 and y[j] != 0.0 and z[j] != 0.0 else 0.0


@leaf
def rows_multiply_add(dst, do, c, co, src, so, t, K, put, scratch):
    """dst[do + j K + q] += c[co + j] * src[so + j K + q] for j < t and q < K (``=`` with
    put), a zero factor giving zero: one coefficient per element, K directions each.

    A loop over q inside a loop over j does not vectorise for a few directions, so for
    K < 16 the coefficients are first repeated K times into scratch and the product runs as
    one flat loop (measured 0.4-0.7 ns against 1.4-2.2 ns per element and direction at
    K = 2..8); from 16 directions on the nested loop vectorises over q (0.2 ns)."""
    if K >= 16:
        r, x = dst[do:do + t * K], src[so:so + t * K]
        for j in range(t):
            cj = c[co + j]
            for q in range(K):
                y = x[j * K + q]
                v = cj * y + 0.0
                v = v if cj != 0.0 and y != 0.0 else 0.0
                if put:
                    r[j * K + q] = v
                else:
                    r[j * K + q] += v
        return
    step = scratch.shape[0] // K
    for u0 in range(0, t, step):
        u = min(step, t - u0)
        for j in range(u):
            cj = c[co + u0 + j]
            for q in range(K):
                scratch[j * K + q] = cj
        multiply_add(dst, do + u0 * K, scratch, 0, src, so + u0 * K, u * K, put)


@leaf(inline="always")   # called per element in the K-direction loops
def scaled_add(dst, do, src, so, c, K, put=False):
    """dst[do:do+K] += c * src[so:so+K] (``=`` with put), where a zero factor contributes
    zero even when the other is infinite or NaN. The common finite case is a plain
    (vectorised) loop."""
    a, b = dst[do:do + K], src[so:so + K]
    if c == 0.0:
        if put:
            a[:] = 0.0
        return
    if math.isfinite(c):
        if put:
            for q in range(K):
                a[q] = c * b[q] + 0.0      # + 0.0: no -0.0 where a sum would give 0.0
        else:
            for q in range(K):
                a[q] += c * b[q]
    else:
        for q in range(K):
            v = c * b[q] if b[q] != 0.0 else 0.0
            if put:
                a[q] = v + 0.0
            else:
                a[q] += v


@leaf(inline="always")   # called per element in the K-direction loops
def copy_k(v, do, so, K):
    a, b = v[do:do + K], v[so:so + K]
    for q in range(K):
        a[q] = b[q]


@leaf
def extreme_position(op, w, o, base, r, inner):
    """Position of the first element equal to the recorded max/min (NaN matches NaN)."""
    best = w[o]
    for q in range(r):
        x = w[base + q * inner]
        if x == best or (x != x and best != best):
            return base + q * inner
    return base


@leaf
def reduce_tangent(op, w, wt, K, o, a, ints, p):
    outer, r, inner = ints[p], ints[p + 1], ints[p + 2]
    for u in range(outer):
        for v in range(inner):
            base = a + u * r * inner + v
            dst = (o + u * inner + v) * K
            for q in range(K):
                wt[dst + q] = 0.0
            if op == REDUCE_SUM and K == 1 and inner == 1:
                wt[dst] = chunk_sum(wt, base, r)
            elif op == REDUCE_SUM:
                for e in range(r):
                    scaled_add(wt, dst, wt, (base + e * inner) * K, 1.0, K)
            elif op == REDUCE_PROD:
                prod = 1.0      # (prod, tangent) of the running product
                for e in range(r):
                    x = w[base + e * inner]
                    src = (base + e * inner) * K
                    for q in range(K):
                        wt[dst + q] = wt[dst + q] * x + prod * wt[src + q]
                    prod *= x
            else:
                src = extreme_position(op, w, o + u * inner + v, base, r, inner) * K
                for q in range(K):
                    wt[dst + q] = wt[src + q]


@leaf
def matmul_tangent(w, wt, K, o, a, b, m, k, n, flags):
    """C' = A' B + A B' for C = A (m, k) @ B (k, n)."""
    wt[o * K:(o + m * n) * K] = 0.0
    for i in range(m):
        for p in range(k):
            for j in range(n):
                dst = (o + i * n + j) * K
                if flags & 1:
                    scaled_add(wt, dst, wt, (a + i * k + p) * K, w[b + p * n + j], K)
                if flags & 2:
                    scaled_add(wt, dst, wt, (b + p * n + j) * K, w[a + i * k + p], K)


@jit(inline="always")    # inlined into jvp, hvp, hvp_columns; compiled for Python
def tangent(code, ints, w, wt, K):
    """Forward tangents of every active slot from the input tangents (already in wt);
    stops at an active callback and returns its index (else -1)."""
    total = ints[H_TOTAL]
    scratch = np.empty(TILE)     # repeated coefficients of rows_multiply_add
    replay_scatters(code, ints, w, wt, 0, True)   # values as they were before each write
    for i in range(code.shape[0]):
        flags = code[i, FLAGS]
        op = code[i, OP]
        if op == SCATTER:
            scatter_tangent(code, i, ints, w, wt, K)
            continue
        if flags == 0:
            continue        # an inactive result: its tangent is never read
        o, n, a = code[i, OUT], code[i, N], code[i, A]
        if op == CALLBACK or op == LINALG:
            return i
        if op <= N_ELEMENTWISE:
            if n == 1:
                ew_tangent1(code, i, w, wt, K)
            else:
                ew_tangent(code, i, w, wt, K, total, scratch)
        elif op == GATHER or op == GATHER_DYN:
            p = code[i, AUX]
            for j in range(n):
                if op == GATHER:
                    src = a + ints[p + j]
                else:
                    src = a + to_index(w[code[i, B] + j], code[i, NA], p)
                copy_k(wt, (o + j) * K, src * K, K)
        elif op == CONCAT:
            p = code[i, AUX]
            pos = o
            for e in range(ints[p]):
                off, ln, act = ints[p + 1 + 3 * e], ints[p + 2 + 3 * e], ints[p + 3 + 3 * e]
                for j in range(ln * K):
                    wt[pos * K + j] = wt[off * K + j] if act else 0.0
                pos += ln
        elif op <= REDUCE_MIN:
            reduce_tangent(op, w, wt, K, o, a, ints, code[i, AUX])
        elif op == CUMSUM:
            p = code[i, AUX]
            scan_lines(wt, a, o, ints[p], ints[p + 1], ints[p + 2], K, False, False)
        elif op == CUMPROD:
            p = code[i, AUX]
            cumprod_tangent(w, wt, K, o, a, ints[p], ints[p + 1], ints[p + 2])
        elif op == MATMUL:
            p = code[i, AUX]
            matmul_tangent(w, wt, K, o, a, code[i, B], ints[p], ints[p + 1], ints[p + 2],
                           flags)
    return -1


# ---------------------------------------------------------------------------- second order

@leaf
def ew_reverse2(code, i, w, wt, at, K, total, flags, scratch):
    """Adjoint tangents of the operands of elementwise instruction i (forward-over-reverse):
    at_k += at_out * d_k + adj_out * sum_l d2_kl * wt_l. Run before ew_reverse, which
    consumes adj_out."""
    n, o, op = code[i, N], code[i, OUT], code[i, OP]
    tiles = 2 * total
    dpart = tiles + 4 * TILE
    d2part = dpart + TILE
    second = has_second_partials(op)
    fill_tiles(code, i, w, tiles)
    for s in range(0, n, TILE):
        t = min(TILE, n - s)
        for k in range(3):
            if not (flags >> k) & 1:
                continue
            kind, c, do = partial_at(code, i, k, s, t, w, tiles, dpart)
            ak = code[i, A + 2 * k]
            full_k = code[i, NA + 2 * k] == n
            fast = K == 1 and full_k     # one direction: plain loops over the chunk
            if fast and kind == PARTIAL_CONST:
                scaled_add(at, ak + s, at, o + s, c, t)
            elif fast:
                multiply_add(at, ak + s, at, o + s, w, do, t)
            elif full_k and kind == PARTIAL_CONST:     # one pass over t * K values
                scaled_add(at, (ak + s) * K, at, (o + s) * K, c, t * K)
            elif full_k:
                rows_multiply_add(at, (ak + s) * K, w, do, at, (o + s) * K, t, K, False,
                                  scratch)
            for j in range(0 if full_k else t):
                d = c if kind == PARTIAL_CONST else w[do + j]
                if d == 0.0:
                    continue
                dst = (ak + s + j) * K if full_k else ak * K
                src = (o + s + j) * K
                if math.isfinite(d):      # the common case, inline
                    for q in range(K):
                        at[dst + q] += d * at[src + q]
                else:
                    scaled_add(at, dst, at, src, d, K)
            if not second:
                continue
            for l in range(3):
                if not (flags >> l) & 1:
                    continue
                ew_partial2(op, min(k, l), max(k, l), t, w, operand(code, i, 0, s, tiles),
                            operand(code, i, 1, s, tiles), operand(code, i, 2, s, tiles),
                            o + s, d2part)
                al = code[i, A + 2 * l]
                full_l = code[i, NA + 2 * l] == n
                if fast and full_l:
                    multiply_add3(at, ak + s, w, total + o + s, w, d2part, wt, al + s, t)
                    continue
                if full_k and full_l:     # coefficient adjoint * d2, then K directions
                    for j in range(t):
                        g = w[total + o + s + j]
                        d2 = w[d2part + j]
                        w[d2part + j] = g * d2 if g != 0.0 and d2 != 0.0 else 0.0
                    rows_multiply_add(at, (ak + s) * K, w, d2part, wt, (al + s) * K, t, K,
                                      False, scratch)
                    continue
                for j in range(t):
                    g = w[total + o + s + j]
                    d2 = w[d2part + j]
                    if g == 0.0 or d2 == 0.0:
                        continue
                    dst = (ak + s + j) * K if full_k else ak * K
                    src = (al + s + j) * K if full_l else al * K
                    gd = g * d2
                    if math.isfinite(gd):
                        for q in range(K):
                            at[dst + q] += gd * wt[src + q]
                    else:
                        scaled_add(at, dst, wt, src, gd, K)
    at[o * K:(o + n) * K] = 0.0


@leaf
def reduce_reverse2(op, w, wt, at, K, total, o, a, ints, p, scratch):
    outer, r, inner = ints[p], ints[p + 1], ints[p + 2]
    for u in range(outer):
        for v in range(inner):
            base = a + u * r * inner + v
            src = (o + u * inner + v) * K
            if op == REDUCE_SUM and K == 1 and inner == 1:
                c = at[src]
                if c != 0.0:
                    seg = at[base:base + r]
                    for e in range(r):
                        seg[e] += c
            elif op == REDUCE_SUM:
                for e in range(r):
                    scaled_add(at, (base + e * inner) * K, at, src, 1.0, K)
            elif op == REDUCE_PROD:
                g = w[total + o + u * inner + v]
                for e in range(r):
                    # (P, P') of the product of all factors but e
                    prod = 1.0
                    for q in range(K):
                        scratch[q] = 0.0
                    for e2 in range(r):
                        if e2 == e:
                            continue
                        x = w[base + e2 * inner]
                        s2 = (base + e2 * inner) * K
                        for q in range(K):
                            scratch[q] = scratch[q] * x + prod * wt[s2 + q]
                        prod *= x
                    dst = (base + e * inner) * K
                    for q in range(K):
                        at[dst + q] += at[src + q] * prod + g * scratch[q]
            else:
                dst = extreme_position(op, w, o + u * inner + v, base, r, inner) * K
                for q in range(K):
                    at[dst + q] += at[src + q]


@leaf
def matmul_reverse2(w, wt, at, K, total, o, a, b, m, k, n, flags):
    """Adjoint tangents of C = A B: A^ += C^' B^T + Cbar B'^T, B^ += A'^T Cbar + A^T C^'."""
    for i in range(m):
        for p in range(k):
            for j in range(n):
                g = w[total + o + i * n + j]
                gt = (o + i * n + j) * K
                if flags & 1:
                    dst = (a + i * k + p) * K
                    scaled_add(at, dst, at, gt, w[b + p * n + j], K)
                    if flags & 2:
                        scaled_add(at, dst, wt, (b + p * n + j) * K, g, K)
                if flags & 2:
                    dst = (b + p * n + j) * K
                    scaled_add(at, dst, at, gt, w[a + i * k + p], K)
                    if flags & 1:
                        scaled_add(at, dst, wt, (a + i * k + p) * K, g, K)


@jit(inline="always")    # inlined into hvp, hvp_columns; compiled for Python
def reverse2(code, ints, w, wt, at, K):
    """Adjoints and their tangents (forward-over-reverse), from the output's adjoint and
    adjoint tangent already in place and the forward tangents in wt; stops at an active
    callback and returns its index (else -1)."""
    total = ints[H_TOTAL]
    scratch = np.empty(K)     # per-direction products of reduce_reverse2 (K may exceed TILE)
    tile = np.empty(TILE)     # repeated coefficients of rows_multiply_add
    for i in range(code.shape[0] - 1, -1, -1):
        flags = code[i, FLAGS]
        op = code[i, OP]
        if op == SCATTER:
            scatter_reverse2(code, i, ints, w, wt, at, K)
            if flags != 0:
                reverse_structural(code, ints, w, i)
            else:
                scatter_swap(code, i, ints, w, wt, 0, True)
            continue
        if flags == 0:
            continue
        if op == CALLBACK or op == LINALG:
            return i
        o, n, a = code[i, OUT], code[i, N], code[i, A]
        if op <= N_ELEMENTWISE:
            ew_reverse2(code, i, w, wt, at, K, total, flags, tile)
        else:
            if op == GATHER or op == GATHER_DYN:
                p = code[i, AUX]
                for j in range(n):
                    if op == GATHER:
                        dst = a + ints[p + j]
                    else:
                        dst = a + to_index(w[code[i, B] + j], code[i, NA], p)
                    scaled_add(at, dst * K, at, (o + j) * K, 1.0, K)
            elif op == CONCAT:
                p = code[i, AUX]
                pos = o
                for e in range(ints[p]):
                    off, ln, act = ints[p + 1 + 3 * e], ints[p + 2 + 3 * e], ints[p + 3 + 3 * e]
                    if act:
                        for j in range(ln * K):
                            at[off * K + j] += at[pos * K + j]
                    pos += ln
            elif op <= REDUCE_MIN:
                reduce_reverse2(op, w, wt, at, K, total, o, a, ints, code[i, AUX], scratch)
            elif op == CUMSUM:     # linear: the adjoint tangents take the adjoint's rule
                p = code[i, AUX]
                scan_lines(at, o, a, ints[p], ints[p + 1], ints[p + 2], K, True, True)
            elif op == CUMPROD:
                p = code[i, AUX]
                cumprod_reverse2(w, wt, at, K, total, o, a, ints[p], ints[p + 1], ints[p + 2])
            elif op == MATMUL:
                p = code[i, AUX]
                matmul_reverse2(w, wt, at, K, total, o, a, code[i, B], ints[p], ints[p + 1],
                                ints[p + 2], flags)
            at[o * K:(o + n) * K] = 0.0
        if op <= N_ELEMENTWISE:   # not through reverse_one: that one counts references
            if n == 1:
                ew_reverse1(code, i, w, total, flags)
            else:
                ew_reverse(code, i, w, total, flags)
        else:
            reverse_structural(code, ints, w, i)
    replay_scatters(code, ints, w, wt, K, False)
    return -1


@jit
def jvp(prog, xin, V, out, w, wt):
    """Value and K Jacobian-vector products: V is (nx, K); out[:m] = f and
    out[m:] = J V as (m, K), row-major."""
    code = program(prog)
    w[:xin.shape[0]] = xin
    st = forward_strips(code, prog, w, STRIP)
    if st != OK:
        return st
    K = V.shape[1]
    o, m, nx = prog[H_OUT], prog[H_NOUT], prog[H_NX]
    out[:m] = w[o:o + m]
    wt[:nx * K] = V.ravel()
    tangent(code, prog, w, wt, K)
    if prog[H_OUTACT]:
        out[m:m + m * K] = wt[o * K:(o + m) * K]
    else:
        out[m:m + m * K] = 0.0
    return OK


@jit
def hvp(prog, xin, V, out, w, wt, at):
    """Value, gradient and K Hessian-vector products of a scalar output: V is (nx, K);
    out[0] = f, out[1:1 + nx] = gradient, out[1 + nx:] = H V as (nx, K), row-major."""
    code = program(prog)
    w[:xin.shape[0]] = xin
    st = forward_strips(code, prog, w, STRIP)
    if st != OK:
        return st
    K = V.shape[1]
    total = prog[H_TOTAL]
    o, nx = prog[H_OUT], prog[H_NX]
    out[0] = w[o]
    wt[:nx * K] = V.ravel()
    tangent(code, prog, w, wt, K)
    w[total + o] += 1.0
    reverse2(code, prog, w, wt, at, K)
    out[1:1 + nx] = w[total:total + nx]
    out[1 + nx:1 + nx + nx * K] = at[:nx * K]
    w[total:total + nx] = 0.0
    w[total + o] = 0.0
    at[:nx * K] = 0.0
    at[o * K:(o + 1) * K] = 0.0
    return OK


# ---------------------------------------------------------------- compressed (sparse) sweeps

@jit
def hvp_columns(prog, xin, V, comp, w, wt, at):
    """One forward sweep, then one forward-over-reverse sweep per column c of V (nx, ncol):
    comp[c * nx:(c + 1) * nx] = H V[:, c] for a scalar output (a compressed Hessian)."""
    code = program(prog)
    w[:xin.shape[0]] = xin
    st = forward_strips(code, prog, w, STRIP)
    if st != OK:
        return st
    total = prog[H_TOTAL]
    o, nx = prog[H_OUT], prog[H_NX]
    for c in range(V.shape[1]):
        wt[:nx] = V[:, c]
        tangent(code, prog, w, wt, 1)
        w[total + o] += 1.0
        reverse2(code, prog, w, wt, at, 1)
        comp[c * nx:(c + 1) * nx] = at[:nx]
        w[total:total + nx] = 0.0
        w[total + o] = 0.0
        at[:nx] = 0.0
        at[o] = 0.0
    return OK
