"""More of the everyday NumPy surface, composed from the dispatch layer's functions.

Padding, statistics, polynomials, convolution, ``take_along_axis``, ``linspace`` and
``meshgrid`` are gathers (NumPy's own function applied to an array of positions),
reductions, matrix products and table rows, so every mode and the replay get them for
free. ``numpy_api`` imports this module at its end, which registers the functions.

Cumulative sums and products are the exception: the primitive ``_cumulative`` (on a tape
one ``cumsum`` / ``cumprod`` instruction, O(n) in every sweep; ``docs/design.md`` gives
the measurement). Where it returns ``NotImplemented`` (``cumprod`` of Dual numbers) the
product is a log-depth scan (Hillis and Steele): ``ceil(log2 n)`` steps of "multiply by
the array shifted by 1, 2, 4, ...", with no division, so exact through zeros.
"""
import numpy as np

from .numpy_api import (ADArray, _has_ad, _norm_axes, _norm_axis, broadcast_to, concatenate,
                        const, elementwise, getitem, implements, lift, positions, ravel, reshape,
                        sum_, take, unsupported_error, where)
from .numpy_api import mean as mean_
from . import ops


def _plain(*args):
    """Whether no argument carries a derivative (then NumPy itself does the work)."""
    return not any(isinstance(lift(a), ADArray) for a in args)


# ---------------------------------------------------------------------------- scans

def _shift(a, s, axis, fill):
    """a moved by s places along axis (toward higher indices), the gap filled with fill."""
    n = a.shape[axis]
    head = [slice(None)] * a.ndim
    head[axis] = slice(0, n - s)
    gap = list(a.shape)
    gap[axis] = s
    return concatenate([np.full(gap, fill), a[tuple(head)]], axis=axis)


def _scan(name, a, axis, dtype, out):
    if out is not None:
        raise unsupported_error(f"numpy.{name}", " with out=")
    if dtype is not None and np.dtype(dtype).kind != "f":
        raise unsupported_error(f"numpy.{name}", f" with dtype={dtype}")
    a = const(a)
    if not isinstance(a, ADArray):
        return getattr(np, name)(a, axis=axis, dtype=dtype)
    if axis is None:
        a, axis = ravel(a), 0
    axis = _norm_axis(axis, a.ndim)
    out = a._cumulative(name, axis)
    if out is not NotImplemented:
        return out
    ufunc, fill = np.multiply, 1.0
    s = 1
    while s < a.shape[axis]:
        a = ufunc(a, _shift(a, s, axis, fill))
        s *= 2
    return a if s > 1 else a._copy()


@implements(np.cumsum)
def cumsum(a, axis=None, dtype=None, out=None):
    """Cumulative sum along axis (flattened when None): one ``cumsum`` instruction."""
    return _scan("cumsum", a, axis, dtype, out)


@implements(np.cumprod)
def cumprod(a, axis=None, dtype=None, out=None):
    """Cumulative product: one ``cumprod`` instruction (a scan of multiplies on Dual
    numbers); derivatives exact through zeros."""
    return _scan("cumprod", a, axis, dtype, out)


@implements(np.ediff1d)
def ediff1d(ary, to_end=None, to_begin=None):
    ary = ravel(const(ary))
    parts = [ravel(const(to_begin))] if to_begin is not None else []
    parts.append(ary[1:] - ary[:-1])
    if to_end is not None:
        parts.append(ravel(const(to_end)))
    return concatenate(parts) if len(parts) > 1 else parts[0]


# ---------------------------------------------------------------------------- rearrangements

#: np.pad modes that only rearrange elements: np.pad of the positions says where each goes
_PAD_GATHER = ("edge", "reflect", "symmetric", "wrap")


@implements(np.pad)
def pad(array, pad_width, mode="constant", **kwargs):
    """np.pad for modes 'constant' (traced or constant values), 'edge', 'reflect',
    'symmetric' and 'wrap'; one gather."""
    array = const(array)
    if _plain(array, kwargs.get("constant_values", 0.0)):
        return np.pad(array, pad_width, mode, **kwargs)
    if not isinstance(mode, str) or mode not in ("constant",) + _PAD_GATHER:
        raise NotImplementedError(
            f"numpy.pad with mode={mode!r} is not supported: dualtape pads with mode "
            f"'constant' or {', '.join(repr(m) for m in _PAD_GATHER)}")
    if mode != "constant":
        return take(array, np.pad(positions(array), pad_width, mode, **kwargs))
    extra = set(kwargs) - {"constant_values"}
    if extra:
        raise TypeError(f"numpy.pad(mode='constant') got unexpected arguments {sorted(extra)}")
    # the constant values, one per axis and side as NumPy broadcasts them, are appended to
    # the array; np.pad of the positions then puts each where NumPy would (corners too)
    nd = array.ndim
    cv = broadcast_to(const(kwargs.get("constant_values", 0.0)), (nd, 2))
    where_cv = array.size + np.arange(2 * nd, dtype=np.int64).reshape(nd, 2)
    pos = np.pad(positions(array), pad_width, "constant", constant_values=where_cv)
    return take(concatenate([ravel(array), ravel(cv)]), pos)


@implements(np.take)
def take_(a, indices, axis=None, out=None, mode="raise"):
    """np.take: a gather; traced indices are recomputed at replay (mode 'raise' only)."""
    if out is not None:
        raise unsupported_error("numpy.take", " with out=")
    a = const(a)
    if isinstance(indices, list) and _has_ad(indices):
        indices = lift(indices)
    if not isinstance(a, ADArray) and not isinstance(indices, ADArray):
        return np.take(a, indices, axis=axis, mode=mode)
    if isinstance(indices, ADArray):
        if mode != "raise":
            raise NotImplementedError(f"numpy.take with a traced index and mode={mode!r} "
                                      "is not supported: use mode='raise'")
        if not isinstance(a, ADArray):
            raise TypeError("numpy.take of a plain array at traced indices: make the "
                            "array traced (or index it as a[idx])")
        if axis is None:
            return getitem(ravel(a), indices)
        axis = _norm_axis(axis, a.ndim)
        return getitem(a, (slice(None),) * axis + (indices,))
    return take(a, np.take(positions(a), indices, axis=axis, mode=mode))


@implements(np.take_along_axis)
def take_along_axis(arr, indices, axis=-1):
    """np.take_along_axis: a gather; traced indices (from argsort, argmax with
    keepdims=True) are turned into traced flat positions, recomputed at replay."""
    arr = const(arr)
    if not isinstance(indices, ADArray):
        if not isinstance(arr, ADArray):
            return np.take_along_axis(arr, indices, axis=axis)
        return take(arr, np.take_along_axis(positions(arr), np.asarray(indices), axis=axis))
    if not isinstance(arr, ADArray):
        raise TypeError("numpy.take_along_axis of a plain array at traced indices: make the "
                        "array traced")
    if axis is None:
        arr, axis = ravel(arr), 0
    axis = _norm_axis(axis, arr.ndim)
    if indices.ndim != arr.ndim:
        raise ValueError("`indices` and `arr` must have the same number of dimensions")
    n = arr.shape[axis]
    stride = int(np.prod(arr.shape[axis + 1:], dtype=np.int64))
    # flat position = index * stride + the position of the other coordinates
    shape = np.broadcast_shapes(tuple(1 if d == axis else s for d, s in enumerate(arr.shape)),
                                tuple(1 if d == axis else s for d, s in enumerate(indices.shape)))
    grids = np.indices(shape, sparse=True)
    base = sum(int(np.prod(arr.shape[d + 1:], dtype=np.int64)) * g
               for d, g in enumerate(grids) if d != axis)
    idx = where(indices < 0, indices + n, indices)
    flat = idx * stride + base
    return getitem(ravel(arr), ravel(flat)).reshape(np.broadcast_shapes(flat.shape))


@implements(np.meshgrid)
def meshgrid(*xi, copy=True, sparse=False, indexing="xy"):
    xs = [ravel(const(x)) for x in xi]
    if _plain(*xs):
        return np.meshgrid(*xs, copy=copy, sparse=sparse, indexing=indexing)
    grids = np.meshgrid(*[positions(x) for x in xs], sparse=sparse, indexing=indexing)
    out = [take(x, g) if isinstance(x, ADArray) else x[g] for x, g in zip(xs, grids)]
    return tuple(out) if isinstance(grids, tuple) else out


# ---------------------------------------------------------------------------- polynomials, convolution

@implements(np.polyval)
def polyval(p, x):
    """p[0] * x**(n-1) + ... + p[n-1] by Horner's rule (as NumPy evaluates it)."""
    p, x = const(p), const(x)
    if _plain(p, x):
        return np.polyval(p, x)
    if isinstance(p, np.poly1d):
        p = np.asarray(p.coeffs)
    y = np.zeros(np.shape(x))
    for i in range(p.shape[0]):
        y = y * x + p[i]
    return y


@implements(np.convolve)
def convolve(a, v, mode="full"):
    """1-D discrete convolution, modes 'full', 'same', 'valid': one gather of the longer
    operand into a banded (n + m - 1, m) matrix, then one matrix product (O(n m) memory)."""
    a, v = const(a), const(v)
    if _plain(a, v):
        return np.convolve(a, v, mode)
    a, v = ravel(a), ravel(v)
    if a.shape[0] == 0 or v.shape[0] == 0:
        raise ValueError("v cannot be empty" if v.shape[0] == 0 else "a cannot be empty")
    if v.shape[0] > a.shape[0]:
        a, v = v, a
    n, m = a.shape[0], v.shape[0]
    k = np.arange(n + m - 1)[:, None] - np.arange(m)[None, :]     # out[k] = sum_j a[k-j] v[j]
    band = np.where((k >= 0) & (k < n), k, -1)
    if isinstance(a, ADArray):
        full = take(a, band) @ v
    else:
        full = np.where(band >= 0, np.asarray(a)[np.clip(band, 0, n - 1)], 0.0) @ v
    if mode == "full":
        return full
    if mode == "same":
        start = (m - 1) // 2
        return full[start:start + n]
    if mode == "valid":
        return full[m - 1:n]
    raise ValueError(f"mode must be one of 'full', 'same', or 'valid' (got {mode!r})")


# ---------------------------------------------------------------------------- statistics

@implements(np.average)
def average(a, axis=None, weights=None, returned=False, *, keepdims=False):
    a = const(a)
    if _plain(a, weights):
        return np.average(a, axis=axis, weights=weights, returned=returned,
                          keepdims=keepdims)
    if weights is None:
        avg = mean_(a, axis=axis, keepdims=keepdims)
        scl = np.broadcast_to(np.float64(a.size / max(np.size(avg), 1)), np.shape(avg))
    else:
        w = const(weights)
        if w.shape != a.shape:
            if axis is None:
                raise TypeError("Axis must be specified when shapes of a and weights differ.")
            if w.ndim != 1 or w.shape[0] != a.shape[axis if isinstance(axis, int) else 0]:
                raise ValueError("Shape of weights must be consistent with shape of a "
                                 "along specified axis.")
            ax = _norm_axis(axis, a.ndim)
            w = reshape(w, tuple(-1 if d == ax else 1 for d in range(a.ndim)))
            w = w * np.ones(a.shape)
        scl = sum_(w, axis=axis, keepdims=keepdims)
        avg = sum_(a * w, axis=axis, keepdims=keepdims) / scl
    if returned:
        if np.shape(scl) != np.shape(avg):
            scl = scl * np.ones(np.shape(avg))
        return avg, scl
    return avg


@implements(np.var)
def var(a, axis=None, dtype=None, out=None, ddof=0, keepdims=False, *, where=None,
        mean=None, correction=None):
    """Mean squared deviation from the mean, divided by N - ddof."""
    if out is not None or mean is not None or not (where is None or where is True
                                                    or where is np._NoValue):
        raise unsupported_error("numpy.var", " with out=, where= or mean=")
    if correction is not None:
        ddof = correction
    a = const(a)
    if not isinstance(a, ADArray):
        return np.var(a, axis=axis, dtype=dtype, ddof=ddof, keepdims=keepdims)
    d = a - mean_(a, axis=axis, keepdims=True)
    count = int(np.prod([a.shape[i] for i in _norm_axes(axis, a.ndim)], dtype=np.int64))
    with np.errstate(divide="ignore"):
        scale = np.divide(1.0, max(count - ddof, 0))
    return sum_(d * d, axis=axis, keepdims=keepdims) * scale


@implements(np.std)
def std(a, axis=None, dtype=None, out=None, ddof=0, keepdims=False, *, where=None,
        mean=None, correction=None):
    """sqrt(var): at a zero variance the derivative is zero (the zero rule of 0 * inf)."""
    a = const(a)
    if not isinstance(a, ADArray):
        return np.std(a, axis=axis, dtype=dtype, ddof=ddof, keepdims=keepdims,
                      **({} if correction is None else {"correction": correction}))
    return np.sqrt(var(a, axis, dtype, out, ddof, keepdims, where=where, mean=mean,
                       correction=correction))


@implements(np.nan_to_num)
def nan_to_num(x, copy=True, nan=0.0, posinf=None, neginf=None):
    x = const(x)
    if _plain(x, nan, posinf, neginf):
        return np.nan_to_num(x, copy=copy, nan=nan, posinf=posinf, neginf=neginf)
    big = np.finfo(np.float64).max
    posinf = big if posinf is None else posinf
    neginf = -big if neginf is None else neginf
    # derivative 1 where x is finite, the replacement's (0 for constants) elsewhere
    out = where(x == np.inf, posinf, where(x == -np.inf, neginf, x))
    return where(np.isnan(x), nan, out)


# ---------------------------------------------------------------------------- constructors

@implements(np.linspace)
def linspace(start, stop, num=50, endpoint=True, retstep=False, dtype=None, axis=0,
             *, device=None):
    """np.linspace with traced start / stop: start + i * step, the last point stop itself
    (as NumPy sets it)."""
    start, stop = const(start), const(stop)
    if _plain(start, stop):
        return np.linspace(start, stop, num, endpoint, retstep, dtype, axis)
    if dtype is not None and np.dtype(dtype).kind != "f":
        raise unsupported_error("numpy.linspace", f" with dtype={dtype}")
    num = int(num)
    if num < 0:
        raise ValueError(f"Number of samples, {num}, must be non-negative.")
    div = (num - 1) if endpoint else num
    shape = np.broadcast_shapes(np.shape(start), np.shape(stop))
    delta = stop - start
    i = np.arange(num, dtype=np.float64).reshape((-1,) + (1,) * len(shape))
    step = delta / div if div > 0 else delta * np.nan
    y = (i * step if div > 0 else i * delta) + start
    if endpoint and num > 1:
        y = concatenate([y[:-1], reshape(stop + np.zeros(shape), (1,) + shape)])
    if axis != 0:
        y = np.moveaxis(y, 0, axis)
    return (y, step) if retstep else y


# ---------------------------------------------------------------------------- sinc

@implements(np.sinc)
def sinc(x):
    """sin(pi x) / (pi x), a row of the table (np.sinc is a function, not a ufunc)."""
    x = const(x)
    if not isinstance(x, ADArray):
        return np.sinc(x)
    return elementwise(ops.TABLE["sinc"], x)

