"""The NumPy dispatch layer: which NumPy function maps to which primitives.

``ADArray`` is the common base of ``Dual`` (forward mode) and the tape's tracer. It
implements the NumPy surface once (``__array_ufunc__``, ``__array_function__``,
operators, indexing, methods) on top of a handful of primitives each subclass provides:

=====================  =====================================================
``_ew(prim, args)``    an elementwise table entry, NumPy broadcasting
``_take(pos)``         gather by flat positions (an int array, any shape)
``_view(shape)``       reshape without moving data
``_reduce(kind, ax)``  sum / prod / max / min over one axis or all
``_argreduce(k, ax)``  argmax / argmin
``_argsort(ax)``       stable sorting positions along one axis
``_searchsorted(a, v, side)``  insertion positions of v in the sorted vector a
``_constant(arr)``     a plain array as an operand a traced index can select from
``_cumulative(k, ax)`` running sums / products along one axis (``NotImplemented``:
                       compose them)
``_matmul(a, b)``      2-D matrix product
``_concat(items)``     flat concatenation
``_truth()``           ``bool()`` of a size-1 value
``_index_traced(key)`` indexing with a traced key (tracer only)
``_copy()``            a fresh copy
``_fill(shape, v)``    a new array of ``shape`` filled with ``v``
``_write(key, v)``     ``self[key] = v`` in place (a new version of the buffer)
``_become(other)``     rebind this object to another result (``x += y`` unaliased)
=====================  =====================================================

Every shape operation (transpose, flip, roll, tile, repeat, diag, basic and fancy
indexing, concatenation, broadcasting) is the same NumPy function applied to an array of
*positions*, followed by one gather: NumPy does the index arithmetic and the tape records a
single gather whose adjoint is a scatter-add. A gather whose positions form a contiguous
run is a view: no copy, no instruction.

In-place updates (``x[key] = v``, ``x += v``) follow NumPy: contiguous views share their
base's memory (on a tape, its slot), so they see every later write and writes through them
reach the base. Where NumPy would return a view but dualtape had to copy (a transpose, a
strided slice), the copy remembers the version of its base's ``Buffer``: using it after the
base was modified, or writing into it, raises instead of giving a stale value.
"""
import math
import operator
import sys

import numpy as np

from . import ops

HANDLED = {}        # NumPy function -> implementation
UNSUPPORTED = {}    # NumPy function -> reason (raises NotImplementedError)

SUPPORTED_DOC = "docs/supported.md"


def implements(*funcs):
    def deco(impl):
        for f in funcs:
            HANDLED[f] = impl
        return impl
    return deco


def unsupported_error(name, detail=""):
    msg = (f"dualtape does not support {name}{detail}; the supported NumPy surface is listed in "
           f"{SUPPORTED_DOC}")
    return TypeError(msg)


class Buffer:
    """What an array and its contiguous views share: a version, bumped by every write, and
    the array that owns the memory (on a tape its slot). ``members`` are the tracers that
    must become differentiable when a differentiable value is written into an
    inactive buffer."""

    __slots__ = ("version", "root", "members")

    def __init__(self, root):
        self.version = 0
        self.root = root
        self.members = [root]


STALE_VIEW = ("this array was taken from another with a transpose, a strided slice or a "
              "similar view, and that array was modified in place afterwards. NumPy's view "
              "would show the modification; dualtape's copy would not, so it refuses to be "
              "used: take the view after the update, or .copy() it before")
VIEW_WRITE = ("writing into a {kind} that NumPy would make a view of another array (a "
              "transpose, a strided slice, x[:, j] ...) is not supported: index the base "
              "array instead (x[rows, j] = v), or .copy() the view first")


#: marks the result of ``view += y`` on a copy standing for a view: Python then stores it
#: with ``base[key] = result`` (``b[::2] += y``); used any other way it is stale (``v += y``
#: for a transpose ``v`` would not reach its base as NumPy's would)
_PENDING = Buffer(None)
_PENDING.version = -1


def current(a):
    """a, after checking that a copy standing for a NumPy view is not stale."""
    if isinstance(a, ADArray) and a.src is not None:
        a._check_current()
    return a


class ADArray:
    """Base of the arrays that carry derivatives (``Dual``, the tape tracer)."""

    __slots__ = ()
    __array_priority__ = 1000.0
    _kind = "array"   # words for error messages

    # ------------------------------------------------------------------ identity
    @property
    def ndim(self):
        return len(self.shape)

    @property
    def size(self):
        return math.prod(self.shape)   # math.prod: ~20x cheaper than np.prod on a tuple

    @property
    def T(self):
        return transpose(self)

    @property
    def mT(self):
        return swapaxes(self, -1, -2)

    def __len__(self):
        if not self.shape:
            raise TypeError("len() of unsized object")
        return self.shape[0]

    def __iter__(self):
        if not self.shape:
            raise TypeError("iteration over a 0-d array")
        for i in range(self.shape[0]):
            yield self[i]

    # ------------------------------------------------------------------ NumPy protocols
    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        name = f"numpy.{ufunc.__name__}"   # (_ufunc_name, which knows SciPy's, on errors)
        if method != "__call__":
            red = _UFUNC_REDUCE.get(ufunc)
            if method == "reduce" and red is not None:
                _reject_kwargs(f"{name}.reduce", kwargs, ("axis", "keepdims"))
                return _reduce_axes(inputs[0], red, kwargs.get("axis", 0),
                                    kwargs.get("keepdims", False))
            raise unsupported_error(f"{_ufunc_name(ufunc)}.{method}")
        if "out" in kwargs and kwargs["out"] is not None:
            raise TypeError(
                f"{name}(..., out=...) (or an augmented assignment such as buf += y) would "
                "write a derivative-carrying result into a plain array and drop its "
                f"derivative; assign the result instead (y = np.{ufunc.__name__}(...)), or "
                "make the buffer from a traced array with np.zeros_like(x) / "
                "np.empty_like(x)")
        _reject_kwargs(name, kwargs, ())
        if ufunc in ops.IDENTITY_UFUNCS:
            return inputs[0]._copy()
        if ufunc in _UFUNC_FUNCTIONS:
            return _UFUNC_FUNCTIONS[ufunc](*inputs, **kwargs)
        prim = ops.row_of(ufunc)
        if prim is None:
            raise unsupported_error(_ufunc_name(ufunc))
        return elementwise(prim, *inputs)

    def __array_function__(self, func, types, args, kwargs):
        impl = HANDLED.get(func)
        if impl is None:
            name = f"{func.__module__}.{func.__name__}".replace("numpy.linalg._linalg", "numpy.linalg")
            reason = UNSUPPORTED.get(func)
            if reason:
                raise NotImplementedError(f"{name} is not supported yet: {reason}")
            raise unsupported_error(name)
        return impl(*args, **kwargs)

    def __array__(self, dtype=None, copy=None):
        # A 0-d value may be collected into a list and turned into an object array, as in
        # ``np.array([y[1], -y[0]])``; the API stacks such arrays at the function boundary.
        if not self.shape and (dtype is None or np.dtype(dtype) == object):
            out = np.empty((), dtype=object)
            out[()] = self
            return out
        raise TypeError(
            f"{_scipy_caller()}cannot convert a {self._kind} to a plain NumPy array: its "
            "derivative would be lost. Build arrays with np.stack / np.concatenate instead of "
            "np.array / np.asarray, fill buffers made by np.zeros_like(x) / np.empty_like(x) "
            "of a traced x instead of np.zeros(n), and leave inputs as they are (no "
            "np.asarray(x) inside f).")

    # ------------------------------------------------------------------ Python numbers
    def _conversion_error(self, what):
        fn = _math_caller()
        use = (f"{_MATH_AS.get(fn, 'np.' + fn)} instead of math.{fn}" if fn else
               "np.sin instead of math.sin (the np. function of the same name for math.*)")
        return TypeError(
            f"{what}() of a {self._kind} would drop its derivative. Use x.item() for a value "
            f"to compare (it stays differentiable, and its comparisons are recorded), {use}, "
            "and np.stack / np.concatenate, or a buffer made by np.zeros_like(x) / "
            "np.empty_like(x) of a traced x, instead of writing into a plain array such as "
            "np.zeros(3).")

    def __float__(self):
        raise self._conversion_error("float")

    def __int__(self):
        raise self._conversion_error("int")

    def __index__(self):
        raise self._conversion_error("operator.index (an integer index)")

    def __complex__(self):
        raise self._conversion_error("complex")

    def __bool__(self):
        if self.size != 1:
            raise ValueError("The truth value of an array with more than one element is "
                             "ambiguous. Use a.any() or a.all()")
        return self._truth()

    def item(self, *args):
        if args:
            return self[args if len(args) > 1 else args[0]].item()
        if self.size != 1:
            raise ValueError("can only convert an array of size 1 to a Python scalar")
        return self._view(())

    asscalar = item

    def tolist(self):
        raise self._conversion_error("tolist")

    # ------------------------------------------------------------------ mutation
    def _buffer(self):
        """The Buffer this array shares with its contiguous views (made on first need:
        the owner's arrays become private, contiguous and writable then)."""
        b = self.buf
        if b is None:
            self._own()
            b = self.buf = Buffer(self)
        return b

    def _check_current(self):
        """Refuse a copy standing for a NumPy view whose base has been modified since."""
        for b, version in self.src:
            if b.version != version:
                raise ValueError(STALE_VIEW)

    def __setitem__(self, key, value):
        if self.src is not None:
            self._check_current()
            raise NotImplementedError(VIEW_WRITE.format(kind=self._kind))
        if isinstance(key, list) and _has_ad(key):
            key = lift(key)
        if isinstance(value, ADArray) and value.src and value.src[0][0] is _PENDING:
            value.src = None
        self._write(key, lift(value))
        self._buffer().version += 1

    def _inplace(self, ufunc, other):
        if self.src is not None:
            self._check_current()
            result = ufunc(self, other)
            result.src = ((_PENDING, 0),)
            return result
        result = ufunc(self, other)
        if np.shape(result) != self.shape:
            raise ValueError(f"non-broadcastable output operand with shape {self.shape} "
                             f"doesn't match the broadcast shape {np.shape(result)}")
        if self.buf is None and self.src is None:
            self._become(result)     # nothing else sees this memory: rebind, no copy
        else:
            self[...] = result
        return self

    # ------------------------------------------------------------------ indexing
    def __getitem__(self, key):
        return getitem(self, key)

    # ------------------------------------------------------------------ methods
    def reshape(self, *shape, order="C"):
        if len(shape) == 1 and not isinstance(shape[0], (int, np.integer)):
            shape = tuple(shape[0])
        return reshape(self, shape, order=order)

    def ravel(self, order="C"):
        return ravel(self, order)

    flatten = ravel

    def transpose(self, *axes):
        if len(axes) == 1 and (axes[0] is None or not isinstance(axes[0], int)):
            axes = axes[0]
        return transpose(self, axes or None)

    def swapaxes(self, a, b):
        return swapaxes(self, a, b)

    def squeeze(self, axis=None):
        return squeeze(self, axis)

    def sum(self, axis=None, dtype=None, out=None, keepdims=False):
        return sum_(self, axis, dtype, out, keepdims)

    def mean(self, axis=None, dtype=None, out=None, keepdims=False):
        return mean(self, axis, dtype, out, keepdims)

    def prod(self, axis=None, dtype=None, out=None, keepdims=False):
        return prod(self, axis, dtype, out, keepdims)

    def max(self, axis=None, out=None, keepdims=False):
        return amax(self, axis, out, keepdims)

    def min(self, axis=None, out=None, keepdims=False):
        return amin(self, axis, out, keepdims)

    def argmax(self, axis=None, out=None, keepdims=False):
        return argmax(self, axis, out, keepdims=keepdims)

    def argmin(self, axis=None, out=None, keepdims=False):
        return argmin(self, axis, out, keepdims=keepdims)

    def argsort(self, axis=-1, kind=None, order=None, *, stable=None):
        return argsort(self, axis, kind, order, stable=stable)

    def sort(self, axis=-1, kind=None, order=None, *, stable=None):
        """In place, as ndarray.sort: a write of the sorted values (a new version)."""
        if axis is None:
            raise TypeError("'NoneType' object cannot be interpreted as an integer")
        self[...] = sort(self, axis, kind, order, stable=stable)

    def nonzero(self):
        return nonzero(self)

    def searchsorted(self, v, side="left", sorter=None):
        return searchsorted(self, v, side, sorter)

    def dot(self, other):
        return dot(self, other)

    def clip(self, a_min=None, a_max=None):
        return clip(self, a_min, a_max)

    def copy(self, order="C"):
        return copy(self)

    def astype(self, dtype, copy=True):
        if np.dtype(dtype).kind != "f":
            raise TypeError(f"astype({dtype}) of a {self._kind}: only float dtypes keep a "
                            "derivative")
        return self._copy() if copy else self

    def diagonal(self, offset=0, axis1=0, axis2=1):
        return diagonal(self, offset, axis1, axis2)

    def trace(self, offset=0, axis1=0, axis2=1):
        return trace(self, offset, axis1, axis2)

    def cumsum(self, axis=None, dtype=None, out=None):
        return np.cumsum(self, axis=axis, dtype=dtype, out=out)

    def cumprod(self, axis=None, dtype=None, out=None):
        return np.cumprod(self, axis=axis, dtype=dtype, out=out)

    def var(self, axis=None, dtype=None, out=None, ddof=0, keepdims=False):
        return np.var(self, axis=axis, dtype=dtype, out=out, ddof=ddof, keepdims=keepdims)

    def std(self, axis=None, dtype=None, out=None, ddof=0, keepdims=False):
        return np.std(self, axis=axis, dtype=dtype, out=out, ddof=ddof, keepdims=keepdims)

    def take(self, indices, axis=None, out=None, mode="raise"):
        return np.take(self, indices, axis=axis, out=out, mode=mode)

    def all(self, axis=None, keepdims=False):
        return all_(self, axis, keepdims=keepdims)

    def any(self, axis=None, keepdims=False):
        return any_(self, axis, keepdims=keepdims)


def _binop(ufunc):
    def fwd(self, other):
        return ufunc(self, other)

    def rev(self, other):
        return ufunc(other, self)
    return fwd, rev


for _name, _uf in [("add", np.add), ("sub", np.subtract), ("mul", np.multiply),
                   ("truediv", np.true_divide), ("pow", np.power), ("mod", np.remainder),
                   ("floordiv", np.floor_divide), ("matmul", np.matmul),
                   ("and", np.logical_and), ("or", np.logical_or), ("xor", np.logical_xor)]:
    _f, _r = _binop(_uf)
    setattr(ADArray, f"__{_name}__", _f)
    setattr(ADArray, f"__r{_name}__", _r)
for _name, _uf in [("add", np.add), ("sub", np.subtract), ("mul", np.multiply),
                   ("truediv", np.true_divide), ("pow", np.power), ("mod", np.remainder),
                   ("floordiv", np.floor_divide)]:
    setattr(ADArray, f"__i{_name}__", (lambda uf: lambda self, other: self._inplace(uf, other))(_uf))
for _name, _uf in [("lt", np.less), ("le", np.less_equal), ("gt", np.greater),
                   ("ge", np.greater_equal), ("eq", np.equal), ("ne", np.not_equal)]:
    setattr(ADArray, f"__{_name}__", _binop(_uf)[0])
# NumPy's object-dtype ufunc loops call a method of the element's name: an object array of
# traced or dual scalars (``np.sin(np.array([y[0], y[1]]))``) then stays differentiable.
for _p in ops.TABLE.values():
    for _uf in _p.ufuncs:
        if _uf.nin == 1 and not hasattr(ADArray, _uf.__name__):
            setattr(ADArray, _uf.__name__, (lambda uf: lambda self: uf(self))(_uf))
ADArray.__neg__ = lambda self: np.negative(self)
ADArray.__pos__ = lambda self: self._copy()
ADArray.__abs__ = lambda self: np.absolute(self)
ADArray.__invert__ = lambda self: np.logical_not(self)
ADArray.__hash__ = None
del _name, _uf, _f, _r, _p


#: math functions whose NumPy counterpart has another name
_MATH_AS = {"fabs": "np.abs", "pow": "np.power", "asin": "np.arcsin", "acos": "np.arccos",
            "atan": "np.arctan", "atan2": "np.arctan2", "asinh": "np.arcsinh",
            "acosh": "np.arccosh", "atanh": "np.arctanh", "fsum": "np.sum",
            "lgamma": "scipy.special.gammaln", "erf": "scipy.special.erf",
            "erfc": "scipy.special.erfc", "fmod": "np.fmod", "isclose": "np.isclose",
            "dist": "np.linalg.norm", "prod": "np.prod"}
_DUALTAPE = __name__.rsplit(".", 1)[0] + "."


def _user_frame():
    """The innermost frame outside dualtape (only on error paths: it walks the stack)."""
    f = sys._getframe(1)
    while f is not None and f.f_globals.get("__name__", "").startswith(_DUALTAPE):
        f = f.f_back
    return f


def _math_caller():
    """The name of the math function whose call converts a traced or dual value to float
    (math.sin(x) calls x.__float__), read from the calling line; '' if there is none."""
    import linecache
    import re
    f = _user_frame()
    if f is None:
        return ""
    line = linecache.getline(f.f_code.co_filename, f.f_lineno)
    m = re.search(r"\bmath\.(\w+)\s*\(", line)
    return m.group(1) if m else ""


def _scipy_caller():
    """'scipy.special.logsumexp converts ...' when SciPy code is the caller of np.asarray.

    The function is found by its code object among the public functions of the SciPy
    subpackage on the stack (decorators unwrapped), so a wrapper around it (SciPy's array
    API layers) does not hide its name; the outermost SciPy frame's own name is the
    fallback."""
    f = _user_frame()
    if f is None or not f.f_globals.get("__name__", "").startswith("scipy"):
        return ""
    public = ""
    while True:
        mod = f.f_globals["__name__"]
        public = _scipy_public(mod).get(f.f_code, public)
        if f.f_back is None or not f.f_back.f_globals.get("__name__", "").startswith("scipy"):
            break
        f = f.f_back      # outwards, to the SciPy function the user called
    if not public:
        package = ".".join(mod.split(".")[:2])
        public = f"{package}.{f.f_code.co_name}"
    hint = (f" dualtape.special.{public.rsplit('.', 1)[1]} is a drop-in replacement that "
            "works in every mode." if public in ("scipy.special.logsumexp",
                                                 "scipy.special.softmax",
                                                 "scipy.special.log_softmax") else "")
    return f"{public} converts its input with np.asarray.{hint} "


_SCIPY_PUBLIC = {}


def _scipy_public(mod):
    """{code object: 'scipy.sub.name'} of the public Python functions of mod's SciPy
    subpackage (built once per subpackage)."""
    import inspect
    package = ".".join(mod.split(".")[:2])
    if package not in _SCIPY_PUBLIC:
        codes = {}
        for name in getattr(sys.modules.get(package), "__all__", ()):
            fn = getattr(sys.modules[package], name, None)
            try:
                code = inspect.unwrap(fn).__code__
            except (AttributeError, ValueError):
                continue      # a ufunc, a class or a wrapper loop: not a Python function
            codes.setdefault(code, f"{package}.{name}")
        _SCIPY_PUBLIC[package] = codes
    return _SCIPY_PUBLIC[package]


def _ufunc_name(ufunc):
    """numpy.sin, or scipy.special.gamma for a SciPy ufunc (its __name__ alone is 'gamma')."""
    special = sys.modules.get("scipy.special")
    if special is not None and getattr(special, ufunc.__name__, None) is ufunc \
            and getattr(np, ufunc.__name__, None) is not ufunc:
        return f"scipy.special.{ufunc.__name__}"
    return f"numpy.{ufunc.__name__}"


def _reject_kwargs(name, kwargs, allowed):
    for key, val in kwargs.items():
        if key in allowed:
            continue
        if key == "dtype" and (val is None or np.dtype(val).kind == "f"):
            continue
        if key in ("casting", "order", "subok") and val in ("same_kind", "K", True):
            continue
        if key == "where" and val is True:
            continue
        if val is None:
            continue
        raise unsupported_error(name, f" with the argument {key}={val!r}")


# ---------------------------------------------------------------------------- helpers

def lead(args):
    """The operand whose type runs the operation: the innermost-nesting-last ADArray."""
    best = None
    for a in args:
        if isinstance(a, ADArray) and (best is None or a._order > best._order):
            best = a
    return best


def call(f, *args):
    """f(*args), with the error of writing a 0-d traced or dual value into a plain array
    made plain: NumPy reports it as "setting an array element with a sequence" and keeps
    dualtape's explanation (name np.zeros_like) only as the cause."""
    try:
        return f(*args)
    except ValueError as e:
        cause = e.__cause__
        if isinstance(cause, TypeError) and "would drop its derivative" in str(cause):
            raise TypeError(f"writing into a plain NumPy array: {cause}") from e
        raise


def check_single_output(y):
    """f must return one array: a tuple or dict of outputs is refused by every mode."""
    if isinstance(y, (tuple, dict)):
        raise TypeError(f"f returned a {type(y).__name__}; dualtape differentiates functions "
                        "that return one array: concatenate the outputs (a list of scalars "
                        "is stacked into a vector)")
    return y


def lift(a):
    """Object arrays of ADArrays (``np.array([y[1], -y[0]])``) become one ADArray."""
    if isinstance(a, np.ndarray) and a.dtype == object:
        items = [lift(e) for e in a.ravel()]
        if not any(isinstance(e, ADArray) for e in items):
            return np.array(items, dtype=float).reshape(a.shape)
        return reshape(stack(items), a.shape + np.shape(items[0]))
    if isinstance(a, (list, tuple)):
        return lift(np.array(a, dtype=object)) if _has_ad(a) else np.asarray(a, dtype=float)
    return a


def _has_ad(seq):
    return any(isinstance(e, ADArray) or (isinstance(e, (list, tuple)) and _has_ad(e))
               for e in seq)


def const(a):
    """Plain operand as a float (or bool) NumPy array."""
    a = lift(a)
    if isinstance(a, ADArray):
        return a
    arr = np.asarray(a)
    if arr.dtype.kind == "c":
        raise TypeError("complex values are not supported by dualtape yet")
    if arr.dtype.kind not in "fbiu":
        arr = arr.astype(np.float64)
    return arr


def positions(x):
    """Flat positions of x's elements, shaped like x: apply a NumPy shape function to it."""
    return np.arange(x.size, dtype=np.int64).reshape(x.shape)


def _norm_axis(axis, ndim):
    if axis < -ndim or axis >= ndim:
        raise np.exceptions.AxisError(axis, ndim)
    return axis % ndim


def _norm_axes(axis, ndim):
    if axis is None:
        return tuple(range(ndim))
    if isinstance(axis, (tuple, list)):
        return tuple(sorted({_norm_axis(a, ndim) for a in axis}))
    return (_norm_axis(operator.index(axis), ndim),)


#: x ** c for these constant exponents is a cheaper primitive (same values, same partials)
_POW_AS = {2.0: "square", 0.5: "sqrt", -1.0: "reciprocal"}


def elementwise(prim, *args):
    args = [const(a) for a in args]
    if prim.name == "pow" and not isinstance(args[1], ADArray) and args[1].size == 1:
        c = float(args[1].reshape(-1)[0])
        if c == 1.0 and isinstance(args[0], ADArray):
            return args[0]._copy()
        if c in _POW_AS:
            prim, args = ops.TABLE[_POW_AS[c]], args[:1]
    head = lead(args)
    if head is None:
        raise TypeError("elementwise called without an ADArray operand")
    return head._ew(prim, args)


def take(x, pos, view=False):
    """Gather x's elements at flat positions ``pos``; negative positions give 0.0.
    ``view``: NumPy would return a view here (a copy then remembers x's version)."""
    pos = np.asarray(pos, dtype=np.int64)
    if pos.size and pos.min() < 0:
        x = x._concat([x, np.zeros(1)])
        pos = np.where(pos < 0, x.size - 1, pos)
    if pos.size == 0:
        return x._take(pos)
    flat = pos.ravel()
    start = int(flat[0])
    if flat.size == x.size and start == 0 and (flat.size == 1 or (np.diff(flat) == 1).all()):
        return x._view(pos.shape) if pos.shape != x.shape else x
    if flat.size == 1 or (np.diff(flat) == 1).all():
        return x._take_range(start, pos.shape)
    out = x._take(pos)
    if view:
        b = x._buffer()
        out.src = ((b, b.version),) + (x.src or ())
    return out


def take_positions(x, np_fn, *args, **kwargs):
    """x rearranged as np_fn rearranges an array of positions of x's shape."""
    p0 = positions(x)
    pos = np_fn(p0, *args, **kwargs)
    return take(x, pos, view=isinstance(pos, np.ndarray) and np.may_share_memory(pos, p0))


def _shape_fn(np_fn):
    """A single-array shape function, implemented by applying np_fn to positions."""
    def impl(a, *args, **kwargs):
        a = const(a)
        if not isinstance(a, ADArray):
            return np_fn(a, *args, **kwargs)
        return take_positions(a, np_fn, *args, **kwargs)
    return impl


def basic_range(shape, key):
    """(start, shape, step) of the flat elements that an int or slice key (or a tuple of
    ints, optionally ending in a slice) selects, when they form an arithmetic run; None
    otherwise. Keeps x[i], x[i, j] and out[i] = v in loops O(1) instead of O(x.size)."""
    keys = key if isinstance(key, tuple) else (key,)
    if len(keys) > len(shape) or not keys:
        return None
    start = 0
    for d, k in enumerate(keys):
        n = shape[d]
        stride = math.prod(shape[d + 1:])
        if isinstance(k, (int, np.integer)) and not isinstance(k, (bool, np.bool_)):
            i = int(k)
            if not -n <= i < n:
                raise IndexError(f"index {i} is out of bounds for axis {d} with size {n}")
            start += (i % n) * stride
        elif isinstance(k, slice) and d == len(keys) - 1:
            lo, hi, step = k.indices(n)
            count = len(range(lo, hi, step))
            if step != 1 and stride != 1:
                return None
            rest = tuple(shape[d + 1:])
            return start + lo * stride, (count,) + rest, step
        else:
            return None
    return start, tuple(shape[len(keys):]), 1


# ---------------------------------------------------------------------------- indexing

def has_traced_index(key):
    keys = key if isinstance(key, tuple) else (key,)
    return any(isinstance(k, ADArray) or (isinstance(k, (list, np.ndarray)) and _has_ad(
        np.ravel(np.asarray(k, dtype=object)))) for k in keys)


def getitem(x, key):
    if has_traced_index(key):
        return x._index_traced(key)
    # fast path for the index patterns of scalar loops, rows and 1-D slices
    run = basic_range(x.shape, key)
    if run is not None and run[2] == 1:
        start, shape, _ = run
        return x._take_range(start, shape)
    return take_positions(x, operator.getitem, key)


# ---------------------------------------------------------------------------- shape functions

def _resolve_shape(size, shape):
    shape = tuple(int(s) for s in (shape if isinstance(shape, (tuple, list)) else (shape,)))
    if -1 in shape:
        known = int(np.prod([s for s in shape if s != -1], dtype=np.int64))
        shape = tuple(size // known if s == -1 else s for s in shape)
    if int(np.prod(shape, dtype=np.int64)) != size:
        raise ValueError(f"cannot reshape array of size {size} into shape {shape}")
    return shape


@implements(np.reshape)
def reshape(a, shape=None, order="C", *, newshape=None, copy=None):
    a = const(a)
    shape = newshape if shape is None else shape
    if not isinstance(a, ADArray):
        return np.reshape(a, shape, order=order)
    if order == "C":
        shape = _resolve_shape(a.size, shape)
        return a if shape == a.shape else a._view(shape)
    return take_positions(a, np.reshape, shape, order=order)


@implements(np.ravel)
def ravel(a, order="C"):
    return reshape(a, (-1,), order=order)


@implements(np.transpose)
def transpose(a, axes=None):
    return _shape_fn(np.transpose)(a, axes)


implements(np.swapaxes)(swapaxes := _shape_fn(np.swapaxes))
implements(np.moveaxis)(_shape_fn(np.moveaxis))
implements(np.flip)(_shape_fn(np.flip))
implements(np.fliplr)(_shape_fn(np.fliplr))
implements(np.flipud)(_shape_fn(np.flipud))
implements(np.roll)(_shape_fn(np.roll))
implements(np.tile)(_shape_fn(np.tile))
implements(np.repeat)(_shape_fn(np.repeat))
implements(np.rot90)(_shape_fn(np.rot90))
implements(np.diagonal)(diagonal := _shape_fn(np.diagonal))
implements(np.triu)(_shape_fn(lambda p, k=0: np.where(np.triu(np.ones(p.shape, bool), k), p, -1)))
implements(np.tril)(_shape_fn(lambda p, k=0: np.where(np.tril(np.ones(p.shape, bool), k), p, -1)))


@implements(np.diag)
def diag(v, k=0):
    v = const(v)
    if isinstance(v, ADArray) and v.ndim == 1:
        return take(v, np.diag(positions(v) + 1, k) - 1)   # off-diagonal -> -1 -> zero
    return _shape_fn(np.diag)(v, k)


@implements(np.squeeze)
def squeeze(a, axis=None):
    a = const(a)
    return reshape(a, np.squeeze(np.empty(a.shape, dtype=bool), axis).shape)


@implements(np.expand_dims)
def expand_dims(a, axis):
    a = const(a)
    return reshape(a, np.expand_dims(np.empty(a.shape, dtype=bool), axis).shape)


@implements(np.atleast_1d)
def atleast_1d(*arys):
    res = [reshape(const(a), (1,)) if np.ndim(a) == 0 else const(a) for a in arys]
    return res[0] if len(res) == 1 else res


@implements(np.atleast_2d)
def atleast_2d(*arys):
    res = []
    for a in arys:
        a = const(a)
        res.append(reshape(a, (1, 1)) if a.ndim == 0 else reshape(a, (1,) + a.shape)
                   if a.ndim == 1 else a)
    return res[0] if len(res) == 1 else res


@implements(np.broadcast_to)
def broadcast_to(a, shape, subok=False):
    a = const(a)
    shape = tuple(shape) if isinstance(shape, (tuple, list)) else (shape,)
    if not isinstance(a, ADArray):
        return np.broadcast_to(a, shape)
    if a.shape == shape:
        return a
    if a.size == int(np.prod(shape, dtype=np.int64)):
        np.broadcast_shapes(a.shape, shape)   # raises as NumPy does
        return reshape(a, shape)
    return take(a, np.broadcast_to(positions(a), shape))


@implements(np.broadcast_arrays)
def broadcast_arrays(*args, subok=False):
    shape = np.broadcast_shapes(*(np.shape(a) for a in args))
    return [broadcast_to(a, shape) for a in args]


@implements(np.concatenate)
def concatenate(arrays, axis=0, out=None, dtype=None, casting="same_kind"):
    if out is not None:
        raise unsupported_error("numpy.concatenate", " with out=")
    arrays = [const(a) for a in arrays]
    head = lead(arrays)
    if head is None:
        return np.concatenate(arrays, axis=axis)
    if axis is None:
        arrays, axis = [ravel(a) for a in arrays], 0
    pos, offset = [], 0
    for a in arrays:
        pos.append(np.arange(offset, offset + a.size, dtype=np.int64).reshape(np.shape(a)))
        offset += a.size
    return take(head._concat(arrays), np.concatenate(pos, axis=axis))


@implements(np.stack)
def stack(arrays, axis=0, out=None, dtype=None, casting="same_kind"):
    arrays = [const(a) for a in arrays]
    if not arrays:
        raise ValueError("need at least one array to stack")
    shapes = {np.shape(a) for a in arrays}
    if len(shapes) != 1:
        raise ValueError("all input arrays must have the same shape")
    axis = _norm_axis(axis, len(shapes.pop()) + 1)
    return concatenate([expand_dims(a, axis) for a in arrays], axis=axis, out=out)


@implements(np.hstack)
def hstack(tup, dtype=None, casting="same_kind"):
    arrs = [atleast_1d(a) for a in tup]
    return concatenate(arrs, axis=0 if arrs[0].ndim == 1 else 1)


@implements(np.vstack)
def vstack(tup, dtype=None, casting="same_kind"):
    return concatenate([atleast_2d(a) for a in tup], axis=0)


@implements(np.column_stack)
def column_stack(tup):
    return concatenate([reshape(const(a), (-1, 1)) if np.ndim(a) < 2 else const(a)
                        for a in tup], axis=1)


@implements(np.append)
def append(arr, values, axis=None):
    if axis is None:
        return concatenate([ravel(const(arr)), ravel(const(values))])
    return concatenate([arr, values], axis=axis)


@implements(np.split)
def split(ary, indices_or_sections, axis=0):
    ary = const(ary)
    return [take(ary, p) for p in np.split(positions(ary), indices_or_sections, axis)]


@implements(np.array_split)
def array_split(ary, indices_or_sections, axis=0):
    ary = const(ary)
    return [take(ary, p) for p in np.array_split(positions(ary), indices_or_sections, axis)]


@implements(np.copy)
def copy(a, order="K", subok=False):
    a = const(a)
    return a._copy() if isinstance(a, ADArray) else np.copy(a, order=order)


@implements(np.shape)
def shape(a):
    return a.shape


@implements(np.ndim)
def ndim(a):
    return a.ndim


@implements(np.size)
def size(a, axis=None):
    return a.size if axis is None else a.shape[axis]


def _like(fill):
    """zeros_like and friends: a buffer that can receive traced or dual values (a plain
    array for an integer or boolean dtype, which cannot hold a derivative)."""
    def impl(a, *args, dtype=None, order="K", subok=True, shape=None):
        fill_value = fill if fill is not None else args[0]
        if args[fill is None:]:
            dtype = args[fill is None]
        shape = np.shape(a) if shape is None else (
            tuple(shape) if isinstance(shape, (tuple, list)) else (int(shape),))
        kind = np.dtype(dtype).kind if dtype is not None else "f"
        if not isinstance(a, ADArray) or kind not in "f":
            out = np.empty(shape, dtype=dtype if dtype is not None else np.float64)
            out[...] = fill_value
            return out
        fill_value = lift(fill_value)
        if isinstance(fill_value, ADArray) or np.ndim(fill_value):
            return a._fill(shape, 0.0) + broadcast_to(fill_value, shape)
        return a._fill(shape, float(fill_value))
    return impl


implements(np.zeros_like)(_like(0.0))
implements(np.ones_like)(_like(1.0))
implements(np.empty_like)(_like(0.0))
implements(np.full_like)(_like(None))


# ---------------------------------------------------------------------------- elementwise

@implements(np.where)
def where(condition, x=None, y=None):
    if x is None and y is None:
        return nonzero(condition)
    return elementwise(ops.TABLE["select"], condition, x, y)


@implements(np.clip)
def clip(a, a_min=None, a_max=None, out=None, **kwargs):
    if out is not None:
        raise unsupported_error("numpy.clip", " with out=")
    a_min = -np.inf if a_min is None else a_min
    a_max = np.inf if a_max is None else a_max
    return elementwise(ops.TABLE["clip"], a, a_min, a_max)


@implements(np.nonzero)
def nonzero(a):
    a = const(a)
    if isinstance(a, ADArray):
        return a._nonzero()
    return np.nonzero(a)


@implements(np.diff)
def diff(a, n=1, axis=-1, prepend=None, append=None):
    a = const(a)
    axis = _norm_axis(axis, a.ndim)
    if prepend is not None or append is not None:
        edge = tuple(1 if d == axis else s for d, s in enumerate(a.shape))
        ends = [broadcast_to(v, edge) if v is not None and np.ndim(v) == 0 else v
                for v in (prepend, append)]
        a = concatenate([v for v in (ends[0], a, ends[1]) if v is not None], axis=axis)
    for _ in range(n):
        hi = tuple(slice(1, None) if d == axis else slice(None) for d in range(a.ndim))
        lo = tuple(slice(None, -1) if d == axis else slice(None) for d in range(a.ndim))
        a = a[hi] - a[lo]
    return a


# ---------------------------------------------------------------------------- reductions

_UFUNC_REDUCE = {np.add: "sum", np.multiply: "prod", np.maximum: "max", np.minimum: "min"}


def _reduce_axes(a, kind, axis, keepdims):
    a = const(a)
    if not isinstance(a, ADArray):
        return getattr(np, {"max": "amax", "min": "amin"}.get(kind, kind))(
            a, axis=axis, keepdims=keepdims)
    axes = _norm_axes(axis, a.ndim)
    if not axes and axis is not None:
        return a
    if axes == tuple(range(a.ndim)):
        out = a._reduce(kind, None)
        return reshape(out, (1,) * a.ndim) if keepdims else out
    out = a
    for ax in reversed(axes):
        out = out._reduce(kind, ax)
    if keepdims:
        out = reshape(out, tuple(1 if d in axes else s for d, s in enumerate(a.shape)))
    return out


def _check_reduce_args(name, dtype=None, out=None, initial=None, where=None):
    if out is not None:
        raise unsupported_error(f"numpy.{name}", " with out=")
    if initial is not None and initial is not np._NoValue:
        raise unsupported_error(f"numpy.{name}", " with initial=")
    if where is not None and where is not np._NoValue and where is not True:
        raise unsupported_error(f"numpy.{name}", " with where=")
    if dtype is not None and np.dtype(dtype).kind != "f":
        raise unsupported_error(f"numpy.{name}", f" with dtype={dtype}")


@implements(np.sum)
def sum_(a, axis=None, dtype=None, out=None, keepdims=False, initial=None, where=None):
    _check_reduce_args("sum", dtype, out, initial, where)
    return _reduce_axes(a, "sum", axis, keepdims)


@implements(np.prod)
def prod(a, axis=None, dtype=None, out=None, keepdims=False, initial=None, where=None):
    _check_reduce_args("prod", dtype, out, initial, where)
    return _reduce_axes(a, "prod", axis, keepdims)


@implements(np.max, np.amax)
def amax(a, axis=None, out=None, keepdims=False, initial=None, where=None):
    _check_reduce_args("max", None, out, initial, where)
    return _reduce_axes(a, "max", axis, keepdims)


@implements(np.min, np.amin)
def amin(a, axis=None, out=None, keepdims=False, initial=None, where=None):
    _check_reduce_args("min", None, out, initial, where)
    return _reduce_axes(a, "min", axis, keepdims)


@implements(np.mean)
def mean(a, axis=None, dtype=None, out=None, keepdims=False, where=None):
    _check_reduce_args("mean", dtype, out, None, where)
    a = const(a)
    axes = _norm_axes(axis, a.ndim)
    count = int(np.prod([a.shape[d] for d in axes], dtype=np.int64))
    return _reduce_axes(a, "sum", axis, keepdims) * (1.0 / count) if count else \
        _reduce_axes(a, "sum", axis, keepdims) * np.nan


@implements(np.argmax)
def argmax(a, axis=None, out=None, *, keepdims=False):
    return _argreduce(a, "argmax", axis, out, keepdims)


@implements(np.argmin)
def argmin(a, axis=None, out=None, *, keepdims=False):
    return _argreduce(a, "argmin", axis, out, keepdims)


def _argreduce(a, kind, axis, out, keepdims):
    if out is not None:
        raise unsupported_error(f"numpy.{kind}", " with out=")
    a = const(a)
    if axis is None:
        res = ravel(a)._argreduce(kind, 0)
        return reshape(res, (1,) * a.ndim) if keepdims else res
    axis = _norm_axis(axis, a.ndim)
    res = a._argreduce(kind, axis)
    return expand_dims(res, axis) if keepdims else res


# ---------------------------------------------------------------------------- sorting

# Sorting, searching and what is built on them keep their indices traced (DESIGN.md 2b):
# an ARGSORT or SEARCHSORTED instruction recomputes them at replay, and the values are
# picked by a gather whose positions are read at replay (its adjoint scatters through
# them). Ties keep their original order (a stable sort, whatever ``kind`` asks for), so
# every mode picks the same element, and a derivative at a tie follows that order.

def _sort_args(name, a, axis, kind, order):
    """(a, axis) checked; for a traced or dual a, axis=None (and argsort's 0-d a) sorts
    the flat array."""
    if order is not None:
        raise unsupported_error(f"numpy.{name}", " with order= (structured arrays)")
    if kind not in (None, "quicksort", "mergesort", "heapsort", "stable"):
        raise ValueError(f"{name} kind must be one of 'quicksort', 'heapsort', 'stable' "
                         f"(got {kind!r})")
    a = const(a)
    if isinstance(a, ADArray):
        if axis is None or (a.ndim == 0 and name == "argsort"):
            a, axis = ravel(a), 0
        axis = _norm_axis(axis, a.ndim)
    return a, axis


@implements(np.argsort)
def argsort(a, axis=-1, kind=None, order=None, *, stable=None):
    a, axis = _sort_args("argsort", a, axis, kind, order)
    if not isinstance(a, ADArray):
        return np.argsort(a, axis=axis, kind="stable")
    return a._argsort(axis)


@implements(np.sort)
def sort(a, axis=-1, kind=None, order=None, *, stable=None):
    a, axis = _sort_args("sort", a, axis, kind, order)
    if not isinstance(a, ADArray):
        return np.sort(a, axis=axis, kind="stable")
    return take_along(a, a._argsort(axis), axis)


def take_along(x, idx, axis):
    """``np.take_along_axis(x, idx, axis)`` for indices that may be traced (then a gather
    whose positions are computed at replay); x may be a plain array."""
    inner = math.prod(x.shape[axis + 1:])
    base = np.arange(x.size, dtype=np.int64).reshape(x.shape)[
        tuple(slice(0, 1) if d == axis else slice(None) for d in range(x.ndim))]
    flat = idx * inner if inner != 1 else idx
    if base.any():
        flat = flat + base
    return gather_at(x, flat)


def gather_at(src, idx):
    """``src.ravel()[idx]`` for a traced or plain integer index ``idx``; a plain ``src``
    indexed by a traced index becomes a constant of the tape."""
    if isinstance(idx, ADArray) and not isinstance(src, ADArray):
        src = idx._constant(np.asarray(src, dtype=np.float64))
    return ravel(src)[idx]


@implements(np.searchsorted)
def searchsorted(a, v, side="left", sorter=None):
    """Insertion positions (traced: an index computed at replay, which may equal len(a),
    so a gather with it is bounds-checked at replay)."""
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right' (got {side!r})")
    a, v = const(a), const(v)
    if sorter is not None:
        a = gather_at(a, sorter if isinstance(sorter, ADArray) else np.asarray(sorter))
    head = lead([a, v])
    if head is None:
        return np.searchsorted(a, v, side=side)
    if a.ndim != 1:
        raise ValueError("object too deep for desired array: searchsorted needs a 1-D a")
    return head._searchsorted(a, v, side)


@implements(np.interp)
def interp(x, xp, fp, left=None, right=None, period=None):
    """Piecewise linear interpolation, differentiable in x, xp, fp, left and right. The
    interval of each x is found at replay (searchsorted). At a breakpoint xp[j] the
    derivative is that of the piece to its right; at xp[-1] the value is fp[-1] and the
    derivative in x is the one beyond it (zero, or right's)."""
    if period is not None:
        raise NotImplementedError("numpy.interp with period= is not supported yet")
    x, xp, fp = const(x), const(xp), const(fp)
    if lead([x, xp, fp, left, right]) is None:
        return np.interp(x, xp, fp, left, right)
    if np.ndim(xp) != 1 or np.ndim(fp) != 1 or xp.shape != fp.shape:
        raise ValueError("fp and xp are not of the same length.")
    n = xp.shape[0]
    if n == 0:
        raise ValueError("array of sample points is empty")
    left = fp[0] if left is None else left
    right = fp[n - 1] if right is None else right
    if n == 1:
        return np.where(x < xp[0], left, np.where(x > xp[0], right, fp[0]))
    i = np.clip(searchsorted(xp, x, side="right") - 1, 0, n - 2)
    x0, x1 = gather_at(xp, i), gather_at(xp, i + 1)
    f0, f1 = gather_at(fp, i), gather_at(fp, i + 1)
    y = (f1 - f0) / (x1 - x0) * (x - x0) + f0        # NumPy's formula: exact at x == x0
    last = xp[n - 1]
    return np.where(x < xp[0], left, np.where(x > last, right,
                                              np.where(x == last, fp[n - 1], y)))


def _lanes(a, axis):
    """a with the reduced axes moved last and merged: (array of shape kept + (r,), the
    shape with keepdims)."""
    axes = _norm_axes(axis, a.ndim)
    if a.ndim == 0:
        return reshape(a, (1,)), ()
    keep = [d for d in range(a.ndim) if d not in axes]
    kept = tuple(a.shape[d] for d in keep)
    kshape = tuple(1 if d in axes else a.shape[d] for d in range(a.ndim))
    if list(axes) != list(range(a.ndim - len(axes), a.ndim)):
        a = transpose(a, keep + list(axes))
    return reshape(a, kept + (-1,)), kshape


def _order_statistics(name, a, axis, keepdims, pick):
    """Sort the lanes of a (the reduced axes), let ``pick(s, r)`` combine the sorted lane s
    of length r, and propagate NaN as NumPy does (a lane with a NaN gives NaN)."""
    lanes, kshape = _lanes(const(a), axis)
    r = lanes.shape[-1]
    if r == 0:
        raise ValueError(f"numpy.{name} of an empty array")
    s = sort(lanes, axis=-1)
    last = s[..., r - 1]
    out = pick(s, r)
    out = np.where(np.isnan(last), last, out)
    if keepdims:
        out = reshape(out, np.shape(out)[:np.ndim(out) - len(last.shape)] + kshape)
    return out


@implements(np.median)
def median(a, axis=None, out=None, overwrite_input=False, keepdims=False):
    """The middle element of the sorted lanes (the mean of the two middle ones for an even
    count), selected at replay."""
    if out is not None:
        raise unsupported_error("numpy.median", " with out=")

    def pick(s, r):
        h = r // 2
        return s[..., h] if r % 2 else (s[..., h - 1] + s[..., h]) * 0.5
    return _order_statistics("median", a, axis, keepdims, pick)


@implements(np.quantile)
def quantile(a, q, axis=None, out=None, overwrite_input=False, method="linear",
             keepdims=False, *, weights=None, interpolation=None):
    """Quantiles by NumPy's default method ("linear"): a weighted sum of two elements of
    the sorted lanes, chosen at replay. Only constant q; the result has shape
    q.shape + the reduced shape, as NumPy's."""
    return _quantile("quantile", a, q, axis, out, method, keepdims, weights, interpolation,
                     1.0)


@implements(np.percentile)
def percentile(a, q, axis=None, out=None, overwrite_input=False, method="linear",
               keepdims=False, *, weights=None, interpolation=None):
    """``quantile(a, q / 100)``."""
    return _quantile("percentile", a, q, axis, out, method, keepdims, weights,
                     interpolation, 100.0)


def _quantile(name, a, q, axis, out, method, keepdims, weights, interpolation, scale):
    q = _quantile_args(name, q, out, method, weights, interpolation, scale)

    def pick(s, r):
        parts = []
        for qq in q.reshape(-1):
            # NumPy's linear method: virtual index (r - 1) q, then its _lerp
            vi = (r - 1) * qq
            lo = int(np.floor(vi))
            hi = lo + 1
            if vi >= r - 1:
                lo = hi = r - 1
            gamma = vi - (lo if vi < r - 1 else -1)
            x0, x1 = s[..., lo], s[..., hi]
            d = x1 - x0
            parts.append(x1 - d * (1.0 - gamma) if gamma >= 0.5 else x0 + d * gamma)
        if q.ndim == 0:
            return parts[0]
        return reshape(stack(parts), q.shape + np.shape(parts[0]))
    return _order_statistics(name, a, axis, keepdims, pick)


def _quantile_args(name, q, out, method, weights, interpolation, scale):
    """The checked quantile levels of quantile and friends (percentiles divided by 100)."""
    if out is not None:
        raise unsupported_error(f"numpy.{name}", " with out=")
    if weights is not None:
        raise unsupported_error(f"numpy.{name}", " with weights=")
    if interpolation is not None:
        method = interpolation
    if method != "linear":
        raise NotImplementedError(f"numpy.{name} with method={method!r} is not supported "
                                  "yet; dualtape implements the default method='linear'")
    if isinstance(q, ADArray) or (isinstance(q, (list, tuple)) and _has_ad(q)):
        raise TypeError(f"numpy.{name} with a traced or dual q is not supported: its "
                        "positions would depend on q; pass q as a constant")
    q = np.true_divide(np.asarray(q, dtype=np.float64), scale)
    if not np.all((q >= 0) & (q <= 1)):
        raise ValueError(f"{'Quantiles' if scale == 1.0 else 'Percentiles'} must be in the "
                         f"range [0, {1 if scale == 1.0 else 100}]")
    return q


@implements(np.nanmedian)
def nanmedian(a, axis=None, out=None, overwrite_input=False, keepdims=False):
    """The median of each lane's non-NaN values (NaN for a lane of NaN only); how many
    there are is data, computed at replay, and so are the ranks picked."""
    if out is not None:
        raise unsupported_error("numpy.nanmedian", " with out=")
    return _nan_order_statistics("nanmedian", a, axis, keepdims, None)


@implements(np.nanquantile)
def nanquantile(a, q, axis=None, out=None, overwrite_input=False, method="linear",
                keepdims=False, *, weights=None, interpolation=None):
    """``quantile`` of each lane's non-NaN values."""
    q = _quantile_args("nanquantile", q, out, method, weights, interpolation, 1.0)
    return _nan_order_statistics("nanquantile", a, axis, keepdims, q)


@implements(np.nanpercentile)
def nanpercentile(a, q, axis=None, out=None, overwrite_input=False, method="linear",
                  keepdims=False, *, weights=None, interpolation=None):
    """``nanquantile(a, q / 100)``."""
    q = _quantile_args("nanpercentile", q, out, method, weights, interpolation, 100.0)
    return _nan_order_statistics("nanpercentile", a, axis, keepdims, q)


def _integral(t):
    """An integer-valued traced result (floor, floor_divide, a select of them) usable as
    an index: its recorded value becomes an integer array (the tape holds floats anyway)."""
    if isinstance(t, ADArray):
        t.value = np.asarray(t.value).astype(np.int64)
        return t
    return np.asarray(t).astype(np.int64)


def _nan_order_statistics(name, a, axis, keepdims, q):
    """Sort the lanes (NaN last), count their non-NaN values, and pick the median
    (``q is None``) or NumPy's linear quantiles at ranks computed from that count."""
    lanes, kshape = _lanes(const(a), axis)
    if lanes.shape[-1] == 0:
        raise ValueError(f"numpy.{name} of an empty array")
    s = sort(lanes, axis=-1)
    c = sum_(np.logical_not(np.isnan(lanes)), axis=-1)

    def rank(k):      # s[..., k] for a count-dependent k per lane (at least 0)
        k = _integral(np.maximum(k, 0))
        return reshape(take_along(s, reshape(k, np.shape(k) + (1,)), s.ndim - 1),
                       np.shape(k))

    if q is None:
        lo, hi = (c - 1) // 2, c // 2
        x0 = rank(lo)
        out = np.where(lo == hi, x0, (x0 + rank(hi)) * 0.5)
    else:
        parts = []
        for qq in q.reshape(-1):
            vi = (c - 1) * qq
            lo = np.floor(vi)
            above = vi >= c - 1          # NumPy's ranks past the end: the last value
            x0 = rank(np.where(above, c - 1, lo))
            x1 = rank(np.where(above, c - 1, lo + 1))
            gamma = vi - np.where(above, -1, lo)
            d = x1 - x0
            parts.append(np.where(gamma >= 0.5, x1 - d * (1.0 - gamma), x0 + d * gamma))
        out = parts[0] if q.ndim == 0 else reshape(stack(parts), q.shape + np.shape(parts[0]))
    if keepdims:
        out = reshape(out, np.shape(out)[:np.ndim(out) - np.ndim(c)] + kshape)
    return out


@implements(np.flatnonzero)
def flatnonzero(a):
    return nonzero(ravel(const(a)))[0]


@implements(np.argwhere)
def argwhere(a):
    a = const(a)
    if not isinstance(a, ADArray):
        return np.argwhere(a)
    if a.ndim == 0:     # NumPy's shape (0 or 1, 0): the count is the recorded guard
        return np.zeros((nonzero(reshape(a, (1,)))[0].shape[0], 0), dtype=np.intp)
    return stack(nonzero(a), axis=1)


@implements(np.all)
def all_(a, axis=None, out=None, keepdims=False, *, where=None):
    return amin(np.not_equal(a, 0.0), axis=axis, keepdims=keepdims)


@implements(np.any)
def any_(a, axis=None, out=None, keepdims=False, *, where=None):
    return amax(np.not_equal(a, 0.0), axis=axis, keepdims=keepdims)


@implements(np.count_nonzero)
def count_nonzero(a, axis=None, *, keepdims=False):
    return sum_(np.not_equal(a, 0.0), axis=axis, keepdims=keepdims)


# ---------------------------------------------------------------------------- products

def _mm2(a, b):
    head = lead([a, b])
    return head._matmul(a, b) if head is not None else np.matmul(a, b)


@implements(np.tensordot)
def tensordot(a, b, axes=2):
    a, b = const(a), const(b)
    if isinstance(axes, int):
        ax_a, ax_b = list(range(a.ndim - axes, a.ndim)), list(range(axes))
    else:
        ax_a, ax_b = axes
        ax_a = [ax_a] if isinstance(ax_a, int) else list(ax_a)
        ax_b = [ax_b] if isinstance(ax_b, int) else list(ax_b)
    ax_a = [_norm_axis(i, a.ndim) for i in ax_a]
    ax_b = [_norm_axis(i, b.ndim) for i in ax_b]
    if [a.shape[i] for i in ax_a] != [b.shape[i] for i in ax_b]:
        raise ValueError("shape-mismatch for sum")
    free_a = [i for i in range(a.ndim) if i not in ax_a]
    free_b = [i for i in range(b.ndim) if i not in ax_b]
    m = int(np.prod([a.shape[i] for i in free_a], dtype=np.int64))
    k = int(np.prod([a.shape[i] for i in ax_a], dtype=np.int64))
    n = int(np.prod([b.shape[i] for i in free_b], dtype=np.int64))
    a2 = reshape(transpose(a, free_a + ax_a), (m, k))
    b2 = reshape(transpose(b, ax_b + free_b), (k, n))
    return reshape(_mm2(a2, b2), tuple(a.shape[i] for i in free_a) +
                   tuple(b.shape[i] for i in free_b))


@implements(np.dot)
def dot(a, b, out=None):
    if out is not None:
        raise unsupported_error("numpy.dot", " with out=")
    a, b = const(a), const(b)
    if a.ndim == 0 or b.ndim == 0:
        return a * b
    return tensordot(a, b, ([a.ndim - 1], [max(b.ndim - 2, 0)]))


@implements(np.matmul)
def matmul(a, b, out=None, **kwargs):
    if out is not None:
        raise unsupported_error("numpy.matmul", " with out=")
    a, b = const(a), const(b)
    if a.ndim == 0 or b.ndim == 0:
        raise ValueError("matmul: Input operand does not have enough dimensions")
    if a.ndim <= 2 and b.ndim <= 2:
        return dot(a, b)
    # batched: broadcast the batch axes and contract by multiply-and-sum
    a2 = reshape(a, (1,) + a.shape) if a.ndim == 1 else a
    b2 = reshape(b, b.shape + (1,)) if b.ndim == 1 else b
    prod_ = expand_dims(a2, -1) * expand_dims(b2, -3)
    out = sum_(prod_, axis=-2)
    if a.ndim == 1:
        out = squeeze(out, -2)
    if b.ndim == 1:
        out = squeeze(out, -1)
    return out


@implements(np.inner)
def inner(a, b):
    a, b = const(a), const(b)
    if a.ndim == 0 or b.ndim == 0:
        return a * b
    return tensordot(a, b, ([-1], [-1]))


@implements(np.vdot)
def vdot(a, b):
    return dot(ravel(const(a)), ravel(const(b)))


@implements(np.outer)
def outer(a, b, out=None):
    if out is not None:
        raise unsupported_error("numpy.outer", " with out=")
    return reshape(ravel(const(a)), (-1, 1)) * reshape(ravel(const(b)), (1, -1))


@implements(np.trace)
def trace(a, offset=0, axis1=0, axis2=1, dtype=None, out=None):
    _check_reduce_args("trace", dtype, out)
    return sum_(diagonal(a, offset, axis1, axis2), axis=-1)


@implements(np.einsum)
def einsum(subscripts, *operands, out=None, optimize=False, **kwargs):
    """Einsum: contractions of two operands go through tensordot (one matrix product);
    batch indices and single operands use gathers and sums. An ellipsis becomes letters
    of its own (right-aligned and broadcast as NumPy's)."""
    if out is not None:
        raise unsupported_error("numpy.einsum", " with out=")
    if not isinstance(subscripts, str):
        raise NotImplementedError("numpy.einsum is supported with a subscripts string "
                                  "(not the interleaved operand, sublist form)")
    subscripts = subscripts.replace(" ", "")
    if "..." in subscripts:
        subscripts = _expand_ellipsis(subscripts, [np.ndim(o) for o in operands])
    if "->" in subscripts:
        ins, out_sub = subscripts.split("->")
    else:
        ins = subscripts
        letters = ins.replace(",", "")
        out_sub = "".join(sorted(c for c in set(letters) if letters.count(c) == 1))
    in_subs = ins.split(",")
    if len(in_subs) != len(operands):
        raise ValueError("einsum: number of subscripts does not match number of operands")
    ops_ = [const(o) for o in operands]
    # reduce each operand: take diagonals of repeated letters, sum letters used nowhere else
    terms = []
    for idx, (sub, x) in enumerate(zip(in_subs, ops_)):
        if len(sub) != x.ndim:
            raise ValueError(f"einsum: operand {idx} has {x.ndim} dimensions, subscripts "
                             f"'{sub}' name {len(sub)}")
        while len(set(sub)) < len(sub):
            c = next(c for c in sub if sub.count(c) > 1)
            i, j = sub.index(c), sub.index(c, sub.index(c) + 1)
            x = diagonal(x, 0, i, j)
            sub = "".join(s for t, s in enumerate(sub) if t not in (i, j)) + c
        others = "".join(s for t, s in enumerate(in_subs) if t != idx) + out_sub
        drop = tuple(i for i, c in enumerate(sub) if c not in others)
        if drop:
            x = sum_(x, axis=drop)
            sub = "".join(c for i, c in enumerate(sub) if i not in drop)
        terms.append((sub, x))
    while len(terms) > 1:
        (sa, a), (sb, b) = terms[0], terms[1]
        rest = "".join(s for s, _ in terms[2:]) + out_sub
        shared = [c for c in sa if c in sb]
        batch = [c for c in shared if c in rest]
        if not batch:
            contracted = shared
            res = tensordot(a, b, ([sa.index(c) for c in contracted],
                                   [sb.index(c) for c in contracted]))
            sub = "".join(c for c in sa if c not in contracted) + \
                "".join(c for c in sb if c not in contracted)
        else:
            sub = "".join(dict.fromkeys(sa + sb))
            res = _align(a, sa, sub) * _align(b, sb, sub)
            drop = tuple(i for i, c in enumerate(sub) if c not in rest)
            if drop:
                res = sum_(res, axis=drop)
                sub = "".join(c for i, c in enumerate(sub) if i not in drop)
        terms = [(sub, res)] + terms[2:]
    sub, res = terms[0]
    return transpose(res, [sub.index(c) for c in out_sub]) if sub != out_sub else res


def _expand_ellipsis(subscripts, ndims):
    """Subscripts with each '...' spelled out in unused letters, right-aligned across the
    operands; the implicit output puts them first, as NumPy does."""
    ins, arrow, out_sub = subscripts.partition("->")
    in_subs = ins.split(",")
    if len(in_subs) != len(ndims):
        raise ValueError("einsum: number of subscripts does not match number of operands")
    counts = [nd - len(sub.replace("...", "")) if "..." in sub else 0
              for sub, nd in zip(in_subs, ndims)]
    if min(counts) < 0:
        raise ValueError("einsum: an operand has fewer dimensions than its subscripts")
    free = [c for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
            if c not in subscripts]
    width = max(counts)
    letters = "".join(free[:width])
    in_subs = [sub.replace("...", letters[width - c:]) for sub, c in zip(in_subs, counts)]
    if arrow:
        out_sub = out_sub.replace("...", letters)
    else:
        joined = "".join(in_subs)
        out_sub = letters + "".join(sorted(c for c in set(joined)
                                           if joined.count(c) == 1 and c not in letters))
    return ",".join(in_subs) + "->" + out_sub


def _align(x, sub, full):
    """Transpose x (labelled ``sub``) into ``full`` order, with size-1 axes for missing ones."""
    order = [c for c in full if c in sub]
    x = transpose(x, [sub.index(c) for c in order]) if order != list(sub) else x
    shape, it = [], iter(x.shape)
    for c in full:
        shape.append(next(it) if c in sub else 1)
    return reshape(x, tuple(shape))


# ---------------------------------------------------------------------------- linalg

@implements(np.linalg.norm)
def norm(x, ord=None, axis=None, keepdims=False):
    x = const(x)
    if axis is None and x.ndim == 2 and ord not in (None, "fro"):
        ax = (0, 1)
    elif axis is None:
        if ord is None or ord == "fro" or (ord == 2 and x.ndim == 1):
            return sqrt_(sum_(x * x, axis=None, keepdims=keepdims))
        if x.ndim != 1:
            raise NotImplementedError(f"numpy.linalg.norm with ord={ord!r} on a "
                                      f"{x.ndim}-d array is not supported yet")
        ax = (0,)
    else:
        ax = (axis,) if isinstance(axis, int) else tuple(axis)
    if len(ax) == 1:
        a = np.abs(x)
        if ord is None or ord == 2:
            return sqrt_(sum_(x * x, axis=ax, keepdims=keepdims))
        if ord == np.inf:
            return amax(a, axis=ax, keepdims=keepdims)
        if ord == -np.inf:
            return amin(a, axis=ax, keepdims=keepdims)
        if ord == 1:
            return sum_(a, axis=ax, keepdims=keepdims)
        if ord == 0:
            raise NotImplementedError("numpy.linalg.norm with ord=0 counts nonzeros and has "
                                      "no derivative")
        return np.power(sum_(np.power(a, float(ord)), axis=ax, keepdims=keepdims),
                        1.0 / float(ord))
    r, c = (_norm_axis(a_, x.ndim) for a_ in ax)
    if ord in (None, "fro"):
        return sqrt_(sum_(x * x, axis=(r, c), keepdims=keepdims))
    a = np.abs(x)
    if ord == 1:
        return amax(sum_(a, axis=r, keepdims=True), axis=(r, c), keepdims=keepdims)
    if ord == np.inf:
        return amax(sum_(a, axis=c, keepdims=True), axis=(r, c), keepdims=keepdims)
    if ord == -1:
        return amin(sum_(a, axis=r, keepdims=True), axis=(r, c), keepdims=keepdims)
    if ord == -np.inf:
        return amin(sum_(a, axis=c, keepdims=True), axis=(r, c), keepdims=keepdims)
    if ord in (2, -2, "nuc"):
        raise NotImplementedError(f"numpy.linalg.norm with ord={ord!r} for matrices needs "
                                  "singular values, which dualtape does not differentiate "
                                  "yet (numpy.linalg.svd)")
    raise ValueError(f"Invalid norm order {ord!r} for matrices.")


def sqrt_(x):
    return np.sqrt(x)


# Matrix functions: one primitive ``_linalg(sub, a, b, (nb, n, r))`` runs a function of a
# stack of nb square (n, n) matrices (solve also takes a stack of (n, r) right-hand sides)
# and returns its flat result; the layouts and the rules are in kernels.la_*. Everything
# else is composed from it and the other primitives.
_LA_SOLVE, _LA_SLOGDET, _LA_CHOLESKY, _LA_EIGH, _LA_QR = range(5)     # kernels.LA_*
_linalg_results = getattr(np.linalg, "_linalg", None)
SlogdetResult = getattr(_linalg_results, "SlogdetResult", tuple)
QRResult = getattr(_linalg_results, "QRResult", tuple)
EighResult = getattr(_linalg_results, "EighResult", tuple)


def _square(a, name):
    a = const(a)
    if a.ndim < 2:
        raise np.linalg.LinAlgError(f"{a.ndim}-dimensional array given. Array must be at "
                                    "least two-dimensional")
    if a.shape[-1] != a.shape[-2]:
        raise np.linalg.LinAlgError("Last 2 dimensions of the array must be square")
    if not isinstance(a, ADArray) and a.dtype.kind not in "fiub":
        raise TypeError(f"numpy.linalg.{name}: dualtape supports real float arrays only")
    return a


def _la(sub, a, b=None, r=0):
    """The flat result of matrix function ``sub`` on the stack a (..., n, n)."""
    n = a.shape[-1]
    nb = math.prod(a.shape[:-2])
    head = lead([a, b])
    return head._linalg(sub, a, b, (nb, n, r))


def _plain_value(x):
    """The NumPy value of an ADArray (at the recording point, or a Dual's value)."""
    while isinstance(x, ADArray):
        x = x.value
    return np.asarray(x, dtype=np.float64)


def _wrap_result(cls, *parts):
    return cls(*parts) if cls is not tuple else tuple(parts)


@implements(np.linalg.solve)
def solve(a, b):
    """x with a @ x = b: stacks of matrices broadcast; b is a vector when 1-D (NumPy 2)."""
    a = _square(a, "solve")
    b = const(b)
    n = a.shape[-1]
    vector = b.ndim == 1
    b2 = reshape(b, b.shape + (1,)) if vector else b
    if b2.ndim < 2 or b2.shape[-2] != n:
        raise ValueError(f"solve: the right-hand side of shape {b.shape} does not match the "
                         f"matrix of shape {a.shape}")
    r = b2.shape[-1]
    batch = np.broadcast_shapes(a.shape[:-2], b2.shape[:-2])
    if a.shape[:-2] != batch:
        a = broadcast_to(a, batch + (n, n))
    if b2.shape[:-2] != batch:
        b2 = broadcast_to(b2, batch + (n, r))
    if not isinstance(b2, ADArray) and not isinstance(a, ADArray):
        return np.linalg.solve(a, b)
    x = reshape(_la(_LA_SOLVE, a, b2, r), batch + (n, r))
    return reshape(x, batch + (n,)) if vector else x


@implements(np.linalg.inv)
def inv(a):
    """The inverse: a solve with the identity."""
    a = _square(a, "inv")
    return solve(a, np.broadcast_to(np.eye(a.shape[-1]), a.shape))


@implements(np.linalg.slogdet)
def slogdet(a):
    """(sign, log|det a|); the sign carries no derivative."""
    a = _square(a, "slogdet")
    nb, batch = math.prod(a.shape[:-2]), a.shape[:-2]
    flat = _la(_LA_SLOGDET, a)
    return _wrap_result(SlogdetResult, reshape(flat[:nb], batch), reshape(flat[nb:], batch))


@implements(np.linalg.det)
def det(a):
    """sign * exp(log|det a|). At an exactly singular matrix the value is 0 and its
    derivative raises LinAlgError (the rule needs the inverse)."""
    sign, logdet = slogdet(a)
    return sign * np.exp(logdet)


@implements(np.linalg.cholesky)
def cholesky(a, /, *, upper=False):
    """The lower Cholesky factor, from the lower triangle of a (as NumPy); ``upper=True``
    gives its transpose, from the upper triangle."""
    a = _square(a, "cholesky")
    if upper:
        return swapaxes(cholesky(swapaxes(a, -1, -2)), -1, -2)
    return reshape(_la(_LA_CHOLESKY, a), a.shape)


@implements(np.linalg.eigh)
def eigh(a, UPLO="L"):
    """Eigenvalues (ascending) and eigenvectors of symmetric matrices, from the lower (or
    upper) triangle. The eigenvectors' derivative is undefined at repeated eigenvalues:
    there it is inf/NaN where the adjoint (or tangent) couples the repeated pair
    (docs/guide.md); the eigenvalues' derivative is finite."""
    a = _square(a, "eigh")
    if UPLO not in ("L", "U"):
        raise ValueError("UPLO argument must be 'L' or 'U'")
    if UPLO == "U":
        a = swapaxes(a, -1, -2)
    n, batch = a.shape[-1], a.shape[:-2]
    m = math.prod(batch) * n
    flat = _la(_LA_EIGH, a)
    return _wrap_result(EighResult, reshape(flat[:m], batch + (n,)),
                        reshape(flat[m:], batch + (n, n)))


@implements(np.linalg.eigvalsh)
def eigvalsh(a, UPLO="L"):
    return eigh(a, UPLO)[0]


@implements(np.linalg.qr)
def qr(a, mode="reduced"):
    """Reduced QR of (..., m, n) matrices with m >= n (Householder, LAPACK's signs); mode
    "r" gives R only. The derivative needs full column rank (R invertible)."""
    a = const(a)
    if a.ndim < 2:
        raise np.linalg.LinAlgError(f"{a.ndim}-dimensional array given. Array must be at "
                                    "least two-dimensional")
    m, n = a.shape[-2:]
    if mode == "complete" and m == n:
        mode = "reduced"
    if mode not in ("reduced", "r") or m < n:
        raise NotImplementedError(
            f"numpy.linalg.qr with mode={mode!r} of a {m}x{n} matrix is not supported: "
            "dualtape differentiates the reduced QR of matrices with m >= n")
    batch = a.shape[:-2]
    nb = math.prod(batch)
    head = lead([a])
    flat = head._linalg(_LA_QR, a, None, (nb, n, m))
    r = reshape(flat[nb * m * n:], batch + (n, n))
    if mode == "r":
        return r
    return _wrap_result(QRResult, reshape(flat[:nb * m * n], batch + (m, n)), r)


@implements(np.linalg.lstsq)
def lstsq(a, b, rcond=None):
    """Least squares for a full-column-rank a (m >= n): x = R^-1 Q^T b from the reduced QR
    (as accurate as NumPy's SVD route for full-rank a). Returns (x, residuals, rank, s) as
    NumPy does; the singular values s are the square roots of the eigenvalues of R^T R,
    accurate relative to the largest one (small ones lose digits, as cond(a) ** 2). The
    rank is decided at the recording point by NumPy's rule; a rank-deficient a raises
    LinAlgError."""
    a, b = const(a), const(b)
    if a.ndim != 2 or b.ndim not in (1, 2):
        raise np.linalg.LinAlgError("lstsq: a must be 2-D and b 1-D or 2-D")
    m, n = a.shape
    if b.shape[0] != m:
        raise np.linalg.LinAlgError("Incompatible dimensions")
    rank = int(np.linalg.lstsq(_plain_value(a), _plain_value(b), rcond=rcond)[2])
    if m < n or rank < n:
        raise np.linalg.LinAlgError(
            f"numpy.linalg.lstsq: dualtape differentiates the full-column-rank case only "
            f"(a is {m}x{n} with rank {rank}); the minimum-norm solution of a rank-deficient "
            "problem is not supported")
    q, r = qr(a)
    x = solve(r, matmul(swapaxes(q, 0, 1), b))
    if m > n:
        res = b - matmul(a, x)
        residuals = reshape(sum_(res * res, axis=0), (-1,))
    else:
        residuals = np.empty(0)
    s = flip(np.sqrt(eigvalsh(matmul(swapaxes(r, 0, 1), r))))
    return x, residuals, rank, s


@implements(np.linalg.matrix_power)
def matrix_power(a, n):
    """a ** n by repeated squaring; a negative n inverts first."""
    a = _square(a, "matrix_power")
    n = operator.index(n)
    if n == 0:
        return np.broadcast_to(np.eye(a.shape[-1]), a.shape).copy()
    if n < 0:
        a, n = inv(a), -n
    result, base = None, a
    while n:
        if n & 1:
            result = base if result is None else matmul(result, base)
        n >>= 1
        if n:
            base = matmul(base, base)
    return result


@implements(np.linalg.multi_dot)
def multi_dot(arrays, *, out=None):
    """dot of a chain, left to right (NumPy picks the cheapest order; the values agree to
    rounding)."""
    if out is not None:
        raise unsupported_error("numpy.linalg.multi_dot", " with out=")
    arrays = [const(x) for x in arrays]
    if len(arrays) < 2:
        raise ValueError("Expecting at least two arrays.")
    result = arrays[0]
    for x in arrays[1:]:
        result = dot(result, x)
    return result


@implements(np.kron)
def kron(a, b):
    """Kronecker product: an outer product with interleaved axes, reshaped."""
    a, b = const(a), const(b)
    nd = max(a.ndim, b.ndim)
    sa = (1,) * (nd - a.ndim) + a.shape
    sb = (1,) * (nd - b.ndim) + b.shape
    a2 = reshape(a, tuple(v for d in sa for v in (d, 1)))
    b2 = reshape(b, tuple(v for d in sb for v in (1, d)))
    return reshape(a2 * b2, tuple(x * y for x, y in zip(sa, sb)))


@implements(np.cross)
def cross(a, b, axisa=-1, axisb=-1, axisc=-1, axis=None):
    """Cross product of 3-vectors (or the z component of 2-vectors) along an axis."""
    if axis is not None:
        axisa = axisb = axisc = axis
    a = moveaxis(const(a), axisa, -1)
    b = moveaxis(const(b), axisb, -1)
    if a.shape[-1] not in (2, 3) or b.shape[-1] not in (2, 3):
        raise ValueError("incompatible dimensions for cross product\n(dimension must be 2 "
                         "or 3)")
    if a.shape[-1] == 2 and b.shape[-1] == 2:
        return a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]
    if a.shape[-1] == 2 or b.shape[-1] == 2:
        raise NotImplementedError("numpy.cross of a 2-vector with a 3-vector is not "
                                  "supported; pad the 2-vector with a zero")
    a0, a1, a2 = a[..., 0], a[..., 1], a[..., 2]
    b0, b1, b2 = b[..., 0], b[..., 1], b[..., 2]
    c = stack([a1 * b2 - a2 * b1, a2 * b0 - a0 * b2, a0 * b1 - a1 * b0], axis=-1)
    return moveaxis(c, -1, axisc) if c.ndim > 1 else c


moveaxis = HANDLED[np.moveaxis]
flip = HANDLED[np.flip]

for _f, _why in [(np.linalg.eig, "eigenvalues of non-symmetric matrices"),
                 (np.linalg.eigvals, "eigenvalues of non-symmetric matrices"),
                 (np.linalg.svd, "singular values"),
                 (getattr(np.linalg, "svdvals", np.linalg.svd), "singular values"),
                 (np.linalg.pinv, "pseudo-inverses"),
                 (np.linalg.matrix_rank, "the rank, which has no derivative"),
                 (np.linalg.tensorsolve, "tensor solves"), (np.linalg.tensorinv, "tensor "
                                                                           "inverses")]:
    UNSUPPORTED[_f] = f"dualtape has no derivative rule for {_why} yet"
del _f, _why


def supported_functions():
    """Sorted names of the NumPy functions and ufuncs the dispatch layer handles (and the
    scipy.special ufuncs of the table)."""
    names = {f"numpy.{u.__name__}" for p in ops.TABLE.values() for u in p.ufuncs} | \
        {f"numpy.{u.__name__}" for u in ops.IDENTITY_UFUNCS} | \
        {f"scipy.special.{n}" for n in ops.SCIPY_ROWS} | \
        {f"scipy.special.{a}" for a in ops.SCIPY_ALIASES}
    for f in HANDLED:
        mod = "numpy.linalg" if "linalg" in f.__module__ else "numpy"
        names.add(f"{mod}.{f.__name__}")
    return sorted(names)


def unsupported_functions():
    return sorted(("numpy.linalg." if "linalg" in f.__module__ else "numpy.") + f.__name__
                  for f in UNSUPPORTED)


#: ufuncs that are not elementwise (NumPy 2 made matmul a gufunc).
_UFUNC_FUNCTIONS = {np.matmul: matmul}
for _name in ("vecdot", "matvec", "vecmat"):
    if hasattr(np, _name):
        UNSUPPORTED[getattr(np, _name)] = "use np.matmul or np.einsum"


from . import surface  # noqa: E402,F401 - registers the functions composed there
