"""Forward mode: vector dual numbers.

A ``Dual`` holds a value of any shape and a tangent with one extra trailing axis of ``k``
directions, so one evaluation of ``f`` gives ``k`` directional derivatives. The partials
come from the primitive table (``ops``); the NumPy surface comes from ``numpy_api``.

Nesting: the value and the tangent of a ``Dual`` may themselves be ``Dual``s of an outer
differentiation. Each differentiation gets a fresh *tag*; an operation is run by its
operand with the newest tag, and every other operand is a constant at that level. This is
what keeps ``derivative(lambda x: x * derivative(lambda y: x * y)(1.0))`` right
(perturbation confusion, as ForwardDiff.jl's tags prevent it).
"""
import itertools
import math

import numpy as np

from . import kernels as K
from . import ops
from .numpy_api import ADArray, current

_TAGS = itertools.count(1)


def new_tag():
    return next(_TAGS)


class Dual(ADArray):
    """value: array of shape S (or a Dual of an outer level); tangent: shape S + (k,)."""

    __slots__ = ("value", "tangent", "tag", "buf", "src")
    _kind = "Dual"

    def __init__(self, value, tangent, tag=None, buf=None, src=None):
        self.value = value
        self.tangent = tangent
        self.tag = new_tag() if tag is None else tag   # a fresh level unless nesting
        self.buf = buf     # numpy_api.Buffer shared with contiguous views (None: not yet)
        self.src = src     # ((Buffer, version), ...) when standing for a NumPy view

    @property
    def shape(self):
        return self.value.shape

    @property
    def dtype(self):
        return np.dtype(np.float64)

    @property
    def _order(self):
        return (1, self.tag)

    def __repr__(self):
        return f"Dual(value={self.value!r}, tangent={self.tangent!r})"

    # ---------------------------------------------------------------- operands
    def _split(self, a):
        """(value, tangent or None) of operand a at this Dual's level."""
        current(a)
        if isinstance(a, Dual) and a.tag == self.tag:
            return a.value, a.tangent
        return a, None

    @property
    def k(self):
        return self.tangent.shape[-1]

    # ---------------------------------------------------------------- primitives
    def _ew(self, prim, args):
        vals, tans = zip(*(self._split(a) for a in args))
        o = ops.numpy_fn(prim, "value")(*vals)
        if not prim.diff:
            return o
        tangent = None
        with np.errstate(all="ignore"):
            for i, t in enumerate(tans):
                if t is None or prim.d[i] is None:
                    continue
                d = ops.numpy_fn(prim, ("d", i))(*vals, o)
                contrib = scale(d, t)
                tangent = contrib if tangent is None else tangent + contrib
        if tangent is None:    # only non-differentiable operands (a select's condition)
            return o
        shape = np.shape(o) + (self.k,)
        if tangent.shape != shape:
            tangent = np.array(np.broadcast_to(tangent, shape))   # writable, as NumPy's
        return Dual(o, tangent, self.tag)

    def _take(self, pos):
        current(self)
        k = self.k
        return Dual(self.value.reshape(-1)[pos], self.tangent.reshape(-1, k)[pos], self.tag)

    def _take_range(self, start, shape):
        n = math.prod(shape)
        k = self.k
        b = self._buffer()     # contiguous arrays: the slices below are views
        return Dual(self.value.reshape(-1)[start:start + n].reshape(shape),
                    self.tangent.reshape(-1, k)[start:start + n].reshape(shape + (k,)),
                    self.tag, b, self.src)

    def _view(self, shape):
        b = self._buffer()
        return Dual(self.value.reshape(shape), self.tangent.reshape(shape + (self.k,)),
                    self.tag, b, self.src)

    # ---------------------------------------------------------------- in place
    def _own(self):
        current(self)
        # private, contiguous, writable (a value or tangent may be the caller's array or a
        # cached seed); a nested level's Dual manages its own memory
        if not isinstance(self.value, ADArray):
            self.value = np.array(self.value, dtype=np.float64)
        if not isinstance(self.tangent, ADArray):
            self.tangent = np.array(self.tangent, dtype=np.float64)

    def _copy(self):
        current(self)
        v, t = self.value, self.tangent
        return Dual(v._copy() if isinstance(v, ADArray) else np.array(v),
                    t._copy() if isinstance(t, ADArray) else np.array(t), self.tag)

    def _fill(self, shape, v):
        vv, vt = self._split(v)
        k = self.k
        value = (self.value._fill(shape, vv) if isinstance(self.value, ADArray)
                 else np.full(shape, vv, dtype=np.float64))
        if vt is not None:
            tangent = np.array(np.broadcast_to(vt, shape + (k,)))
        elif isinstance(self.tangent, ADArray):
            tangent = self.tangent._fill(shape + (k,), 0.0)
        else:
            tangent = np.zeros(shape + (k,))
        return Dual(value, tangent, self.tag)

    def _become(self, other):
        if not isinstance(other, Dual):
            raise TypeError(f"cannot update a Dual in place with a {type(other)}")
        self.value, self.tangent, self.tag = other.value, other.tangent, other.tag
        self.buf, self.src = other.buf, other.src

    def _write(self, key, value):
        self._buffer()
        if isinstance(key, ADArray):
            raise TypeError("a Dual cannot be indexed by a traced or dual value")
        vv, vt = self._split(value)
        if isinstance(vv, Dual) and not isinstance(self.value, ADArray):
            raise TypeError("cannot write a Dual of an enclosing differentiation into a "
                            "Dual of an inner one in place; build the array with np.stack")
        self.value[key] = vv
        # the tangent's extra axis is last: an Ellipsis in the key must not swallow it
        keys = key if isinstance(key, tuple) else (key,)
        tkey = keys + (slice(None),) if any(k is Ellipsis for k in keys) else key
        self.tangent[tkey] = 0.0 if vt is None else vt

    def _concat(self, items):
        vals, tans = [], []
        for a in items:
            v, t = self._split(a)
            size = int(np.size(v)) if not isinstance(v, ADArray) else v.size
            vals.append(v.reshape(-1) if isinstance(v, (np.ndarray, ADArray))
                        else np.reshape(v, -1))
            tans.append(np.zeros((size, self.k)) if t is None else t.reshape(size, self.k))
        return Dual(np.concatenate(vals), np.concatenate(tans), self.tag)

    def _cumulative(self, kind, axis):
        current(self)
        if kind == "cumprod":
            return NotImplemented   # numpy_api composes it (a scan of products)
        return Dual(np.cumsum(self.value, axis=axis), np.cumsum(self.tangent, axis=axis),
                    self.tag)

    def _reduce(self, kind, axis):
        current(self)
        v, t = self.value, self.tangent
        tax = tuple(range(v.ndim)) if axis is None else axis
        if kind == "sum":
            return Dual(np.sum(v, axis=axis), np.sum(t, axis=tax), self.tag)
        if kind in ("max", "min"):
            # the derivative of a max is the derivative of its first maximal element
            arg = self._argreduce("argmax" if kind == "max" else "argmin",
                                  0 if axis is None else axis, flat=axis is None)
            pos = _positions_along(v.shape, axis, arg)
            return self._take(pos)
        if kind == "prod":
            if isinstance(v, ADArray):   # nested: multiply the slices one by one
                flat = np.reshape(self, (-1,)) if axis is None else np.moveaxis(self, axis, 0)
                out = flat[0]
                for e in range(1, flat.shape[0]):
                    out = out * flat[e]
                return out
            ax = -1 if axis is None else axis
            vv = v.reshape(-1) if axis is None else v
            tt = t.reshape(-1, self.k) if axis is None else t
            excl = _exclusive_products(vv, ax)
            return Dual(np.prod(vv, axis=ax), np.sum(excl[..., None] * tt, axis=ax % vv.ndim),
                        self.tag)
        raise ValueError(kind)

    def _argreduce(self, kind, axis, flat=False):
        current(self)
        v = self.value.reshape(-1) if flat else self.value
        return getattr(np, kind)(v, axis=axis)

    def _argsort(self, axis):
        current(self)
        return np.argsort(self.value, axis=axis, kind="stable")

    def _searchsorted(self, a, v, side):
        return np.searchsorted(self._split(a)[0], self._split(v)[0], side=side)

    def _constant(self, arr):
        return arr

    def _matmul(self, a, b):
        av, at = self._split(a)
        bv, bt = self._split(b)
        value = np.matmul(av, bv)
        m, n = value.shape
        k = self.k
        tangent = None
        if at is not None:   # (m, p, k): contract p against bv
            tangent = np.moveaxis(np.matmul(np.moveaxis(at, -1, 0), bv), 0, -1)
        if bt is not None:   # (p, n, k)
            part = np.reshape(np.matmul(av, np.reshape(bt, (bt.shape[0], n * k))), (m, n, k))
            tangent = part if tangent is None else tangent + part
        return Dual(value, tangent, self.tag)

    def _linalg(self, sub, a, b, dims):
        """A matrix function (kernels.LA_*) by the kernels' own value and tangent rules."""
        nb, n, r = dims
        av, at = self._split(a)
        bv, bt = self._split(b) if b is not None else (np.zeros(0), None)
        if isinstance(av, ADArray) or isinstance(bv, ADArray):
            raise NotImplementedError(
                f"nested forward mode through numpy.linalg ({K.LA_NAMES[sub]}) is not "
                "supported: use dualtape.hessian / hvp for second derivatives")
        k = self.k
        value, tangent = K.la_eval(
            sub, nb, n, r, np.ravel(np.asarray(av, dtype=np.float64)),
            np.ravel(np.asarray(bv, dtype=np.float64)),
            None if at is None else np.reshape(at, (-1, k)),
            None if bt is None else np.reshape(bt, (-1, k)))
        return value if tangent is None else Dual(value, tangent, self.tag)

    def _truth(self):
        current(self)
        return bool(self.value)

    def _nonzero(self):
        current(self)
        return np.nonzero(self.value)

    def _index_traced(self, key):
        raise TypeError("a Dual cannot be indexed by a traced value")

    # ---------------------------------------------------------------- Python numbers
    def _tangent_is_zero(self):
        return not np.any(self.tangent != 0)

    def __float__(self):
        if self._tangent_is_zero():
            return float(self.value)
        raise self._conversion_error("float")

    def __int__(self):
        if self._tangent_is_zero():
            return int(self.value)
        raise self._conversion_error("int")


def scale(d, t):
    """d (broadcastable to the value shape) times the tangent t (shape S + (k,)).

    A zero factor makes the product zero even when the other is infinite or NaN, so
    ``np.where(x > 0, np.sqrt(x), 0.0)`` differentiates at ``x = 0`` (DESIGN.md 2b): the
    tangent of the unselected sqrt is NaN there, and the select's partial for it is 0.
    """
    if type(d) is float:   # a constant partial from the table (add, sub, neg)
        return t if d == 1.0 else -t if d == -1.0 else t * d
    dd = d[..., None] if np.ndim(d) else d
    prod = dd * t
    bad = ~np.isfinite(prod)
    if np.any(bad):
        # only the non-finite products: under nesting a factor whose value is 0 can still
        # carry an outer tangent, which a finite product must keep
        prod = _zero_values(bad & ((t == 0) | (dd == 0)), prod)
    return prod


def _zero_values(mask, prod):
    """prod with its values 0 where mask holds. A Dual of an outer level keeps its
    tangent: the outer level applied the zero rule to it already, and what it holds (the
    -inf second derivative of x * x * log(x * x) at 0) is that level's derivative."""
    if isinstance(prod, Dual):
        return Dual(_zero_values(mask, prod.value), prod.tangent, prod.tag)
    return np.where(mask, 0.0, prod)


def _exclusive_products(v, axis):
    """prod of all elements along axis but the one at each position (exact at zeros)."""
    v = np.moveaxis(v, axis, -1)
    ones = np.ones(v.shape[:-1] + (1,))
    left = np.cumprod(np.concatenate([ones, v[..., :-1]], axis=-1), axis=-1)
    right = np.cumprod(np.concatenate([ones, v[..., :0:-1]], axis=-1), axis=-1)[..., ::-1]
    return np.moveaxis(left * right, -1, axis)


def _positions_along(shape, axis, arg):
    """Flat positions of the elements picked by ``arg`` (an argmax along axis)."""
    if axis is None:
        return np.asarray(arg, dtype=np.int64)
    grids = list(np.indices(np.shape(arg)))
    grids.insert(axis, np.asarray(arg))
    return np.ravel_multi_index(tuple(grids), shape)
