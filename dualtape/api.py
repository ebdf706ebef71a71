"""The functional API: grad, jacobian, jvp, derivative, ... and the mode choice.

Everything but ``derivative`` records ``f`` once into a ``Tape`` and replays its sweeps
(``cache.py`` keeps the tapes): reverse for ``grad``/``vjp``, tangents for ``jvp`` and forward
``jacobian``, forward-over-reverse for ``hvp``/``hessian``. ``Dual`` numbers run ``f``
directly: ``derivative``, nested differentiation, and ``dual_jvp``/``forward_jacobian``.
"""
import weakref

import numpy as np

from .dual import Dual, new_tag
from .numpy_api import ADArray, call, check_single_output, lift
from .tapes import as_float_array

#: Tangent directions per pass of ``forward_jacobian`` on Duals.
DEFAULT_CHUNK = 64


# ---------------------------------------------------------------------------- inputs

def as_input(x, what="input"):
    """A float64 array (or an ADArray of an outer differentiation) from user input."""
    if isinstance(x, ADArray):
        return x
    arr = np.asarray(x)
    if arr.dtype == object:
        lifted = lift(arr)
        if isinstance(lifted, ADArray):
            return lifted
        arr = np.asarray(lifted)
    return as_float_array(arr, what)


def as_output(y):
    """f's result as an ADArray or float array; lists and object arrays are stacked."""
    y = lift(check_single_output(y))
    if isinstance(y, ADArray):
        return y
    arr = np.asarray(y)
    if arr.dtype.kind == "c":
        raise TypeError("f returned a complex value; dualtape supports real outputs")
    if arr.dtype.kind not in "fiub":
        raise TypeError(f"f must return a real array, got {type(y).__name__}")
    return arr.astype(np.float64)


def _dual_parts(y, tag, k):
    """(value, tangent) of f's output at level ``tag``; a constant output has zero tangent."""
    if isinstance(y, Dual) and y.tag == tag:
        return y.value, y.tangent
    return y, np.zeros(np.shape(y) + (k,))


# ---------------------------------------------------------------------------- forward mode

def jvp(f, x, v, *args):
    """Forward-mode Jacobian-vector product: ``(f(x), J(x) @ v)``.

    ``x`` and ``v`` have the same shape; ``J v`` has f's output shape. Extra ``args`` are
    passed to f (float ones as tape parameters). The first call records f into a tape kept
    with f (weakly); later calls with the same shapes replay its tangent sweep. Inside
    another differentiation (x a Dual) it runs f on Dual numbers instead.

    >>> dualtape.jvp(np.sin, 0.0, 1.0)
    (np.float64(0.0), array(1.))
    """
    if isinstance(x, ADArray) or isinstance(v, ADArray):
        return dual_jvp(f, x, v, *args)
    return _weak_cache(f).jvp((x,) + args, as_input(v, "tangent"))


_WEAK_CACHES = weakref.WeakKeyDictionary()


def _weak_cache(f):
    """The tape cache kept with f for the one-shot functions (jvp, vjp)."""
    from .cache import TapeCache
    try:
        tc = _WEAK_CACHES.get(f)
        if tc is None:
            tc = _WEAK_CACHES[f] = TapeCache(f, (0,))
        return tc
    except TypeError:          # f cannot be weakly referenced: no caching
        return TapeCache(f, (0,))


def dual_jvp(f, x, v, *args):
    """``jvp`` by running f once on Dual numbers (no tape): nests inside other
    differentiations and suits one-off evaluation."""
    x = as_input(x)
    v = as_input(v, "tangent")
    if np.shape(v) != np.shape(x):
        raise ValueError(f"jvp: the tangent has shape {np.shape(v)}, expected the input "
                         f"shape {np.shape(x)}")
    tag = new_tag()
    y = as_output(call(f, Dual(x, v[..., None], tag), *args))
    value, tangent = _dual_parts(y, tag, 1)
    return value, tangent[..., 0]


def derivative(f):
    """The derivative of a scalar function of a scalar: ``derivative(f)(x) = f'(x)``.

    For a vector-valued ``f`` of a scalar it returns the vector of derivatives. Nests:
    ``derivative(derivative(f))`` is the second derivative.

    >>> dualtape.derivative(np.sin)(0.0)
    array(1.)
    """
    def df(x, *args):
        x = as_input(x)
        if np.ndim(x) != 0:
            raise ValueError(f"derivative: x must be a scalar, got shape {np.shape(x)}; "
                             "use jacobian or jvp for arrays")
        one = np.ones(()) if not isinstance(x, ADArray) else x * 0.0 + 1.0
        return dual_jvp(f, x, one, *args)[1]
    df.__name__ = f"derivative({getattr(f, '__name__', 'f')})"
    return df


def forward_jacobian(f, x, args=(), chunk=None):
    """Dense Jacobian by forward mode on Duals, ``chunk`` directions per pass."""
    x = as_input(x)
    n = int(np.size(x))
    chunk = chunk or min(max(n, 1), DEFAULT_CHUNK)
    blocks, out_shape, value = [], None, None
    for start in range(0, max(n, 1), chunk):
        stop = min(start + chunk, n)
        seed = np.zeros((n, stop - start))
        seed[np.arange(start, stop), np.arange(stop - start)] = 1.0
        tag = new_tag()
        y = as_output(call(f, Dual(x, seed.reshape(np.shape(x) + (stop - start,)), tag),
                                 *args))
        value, tangent = _dual_parts(y, tag, stop - start)
        out_shape = np.shape(value)
        blocks.append(tangent)
        if n == 0:
            break
    jac = np.concatenate(blocks, axis=-1) if len(blocks) > 1 else blocks[0]
    return value, jac.reshape(out_shape + np.shape(x))


# ---------------------------------------------------------------------------- reverse mode

def tape(f, x, *params, optimize=True):
    """Record ``f(x, *params)`` into a :class:`~dualtape.Tape`.

    ``x`` is differentiated; float ``params`` are traced parameters (new values at each
    replay, no derivative); other arguments are static. The Tape replays without running
    ``f`` again: ``tp(x)``, ``tp.gradient(x)``, ``tp.vjp(x, v)``, ``tp.jacobian(x)``.
    ``optimize=False`` keeps the raw recording instead of the optimised tape (dead code
    dropped, common subexpressions merged, constants folded; ``tp.summary()`` shows the
    instruction counts before and after).

    >>> tp = dualtape.tape(lambda x: np.sum(x ** 2), np.ones(3))
    >>> tp.gradient(np.arange(3.0))
    array([0., 2., 4.])
    """
    from .tapes import record
    return record(f, (x,) + params, (0,), optimize=optimize)


def _reverse_fn(f, argnums, cache, what, compile=False):
    from .cache import TapeCache
    nums = (argnums,) if isinstance(argnums, int) else tuple(argnums)
    if not nums:
        raise ValueError(f"{what}: argnums must name at least one argument")
    return TapeCache(f, nums, enabled=cache, compile=compile)


def value_and_grad(f, argnums=0, *, cache=True, compile=False):
    """``value_and_grad(f)(x, *args) -> (f(x), gradient)`` by reverse mode on a cached tape.

    f must return a scalar. The tape is recorded at the first call and replayed at later
    calls with the same argument shapes and static arguments; a flipped branch re-records.
    With a tuple ``argnums`` the gradient is a tuple. ``cache=False`` records at every call
    (for functions that are not pure).

    ``compile=True`` replays compiled tapes (``Tape.compile``: fused, parallel Numba code
    generated per tape structure, a few seconds once per structure, cached on disk), worth
    it from ~10^4 elements on; ``compile="auto"`` compiles a tape at its 20th replay when it
    holds at least 65536 values (docs/performance.md). A re-recording after a guard flip
    compiles the new structure, up to 8 structures per function (then they stay
    interpreted). A tape with a custom rule's callback cannot be compiled: ``TypeError``
    with ``compile=True``, interpreted with "auto".
    """
    tc = _reverse_fn(f, argnums, cache, "value_and_grad", compile)

    def vg(*args):
        return tc.value_and_grad(args)
    vg.tapes = tc
    vg.__name__ = f"value_and_grad({getattr(f, '__name__', 'f')})"
    vg.__doc__ = f.__doc__
    return vg


def grad(f, argnums=0, *, cache=True, compile=False):
    """The gradient of a scalar function by reverse mode: ``grad(f)(x, *args)``.

    Returns an array shaped like ``x`` (a tuple for a tuple ``argnums``), fresh at every
    call. Arguments not differentiated are parameters (floats and float arrays: traced, new
    values without re-recording) or static (everything else: part of the cache key). See
    ``value_and_grad`` for the cache and for ``compile=`` (the compiled tier).

    >>> dualtape.grad(lambda x: np.sum(np.sin(x)))(np.zeros(2))
    array([1., 1.])
    """
    tc = _reverse_fn(f, argnums, cache, "grad", compile)

    def g(*args):
        return tc.grad(args)
    g.tapes = tc
    g.__name__ = f"grad({getattr(f, '__name__', 'f')})"
    g.__doc__ = f.__doc__
    return g


def vjp(f, x, *args):
    """``(f(x), vjp_fn)`` where ``vjp_fn(v)`` is ``v @ J(x)`` (reverse mode on a tape).

    ``v`` has f's output shape, or a leading axis of several such vectors, all swept in
    one call.
    """
    from .tapes import record
    tp = record(f, (x,) + args, (0,))
    xin = tp.pack((x,) + args)
    status, y = tp.run_value(xin)
    tp.check(status)

    def vjp_fn(v):
        return tp.vjp(x, *args, v)
    return tp.shape_value(y), vjp_fn


def jacobian(f, argnums=0, *, mode="auto", chunk=None, cache=True, sparse=False,
             compile=False):
    """The Jacobian ``J[i..., j...] = d f(x)[i...] / d x[j...]``, of shape
    ``out.shape + x.shape``.

    f is recorded into a tape at the first call and replayed after. ``mode="auto"`` sweeps
    forward (``chunk`` tangent directions at a time, by default up to 128) when x has no more
    elements than the output, reverse (one adjoint sweep per output element, all in one
    kernel call) otherwise; ``mode="forward"`` / ``"reverse"`` override. ``jac.last_mode``
    tells which mode the last call used.

    ``sparse=True`` returns a ``scipy.sparse.csr_matrix`` of shape (output size, input size)
    computed by compressed sweeps: the sparsity pattern is detected on the tape and colored
    once, then each call runs one tangent sweep per column color ("forward") or one adjoint
    sweep per row color ("reverse"), whichever needs fewer with ``mode="auto"``
    (docs/sparse.md).

    ``compile=`` as for ``value_and_grad``: reverse, forward and sparse Jacobians run the
    compiled adjoint or tangent sweeps (each compiled on its first use).

    >>> dualtape.jacobian(lambda x: x[::-1] * 2.0)(np.ones(2))
    array([[0., 2.],
           [2., 0.]])
    """
    if mode not in ("auto", "forward", "reverse"):
        raise ValueError(f"mode must be 'auto', 'forward' or 'reverse', got {mode!r}")
    if not isinstance(argnums, int):
        raise NotImplementedError("jacobian with a tuple argnums is not supported yet; "
                                  "concatenate the inputs")
    tc = _reverse_fn(f, argnums, cache, "jacobian", compile)

    def jac(*args):
        J = tc.sparse_jacobian(args, mode) if sparse else tc.jacobian(args, mode, chunk)
        jac.last_mode = tc.last_mode
        return J
    jac.last_mode = None
    jac.tapes = tc
    jac.__name__ = f"jacobian({getattr(f, '__name__', 'f')}{', sparse=True' * sparse})"
    return jac


# ---------------------------------------------------------------------------- second order

def hvp(f, *, cache=True, compile=False):
    """Hessian-vector products of a scalar function: ``hvp(f)(x, v, *args) = H(x) v``.

    Forward-over-reverse on a cached tape: one forward sweep with the tangent v, one
    reverse sweep carrying adjoints and their tangents. ``v`` has x's shape (or a leading
    axis of k directions, swept together). Extra ``args`` are tape parameters, so
    ``hessp=dualtape.hvp(f)`` works in ``scipy.optimize.minimize`` with ``args=``.
    ``compile=`` as for ``value_and_grad``: the compiled forward-over-reverse sweep (its
    entry compiles on the first call; a gradient never compiles it).
    """
    tc = _reverse_fn(f, 0, cache, "hvp", compile)

    def hv(x, v, *args):
        return tc.hvp((x,) + args, v)
    hv.tapes = tc
    hv.__name__ = f"hvp({getattr(f, '__name__', 'f')})"
    return hv


def hessian(f, argnums=0, *, chunk=None, cache=True, sparse=False, compile=False):
    """The dense Hessian of a scalar function, of shape ``x.shape + x.shape``.

    Forward-over-reverse on a cached tape, ``chunk`` directions (by default up to 128) per sweep;
    symmetric to rounding (not symmetrised). A vector-valued f raises ValueError: take the
    Hessian of each output, or the Jacobian of a gradient.

    ``sparse=True`` returns a ``scipy.sparse.csr_matrix`` of shape (input size, input size)
    from one Hessian-vector product per color of a star coloring of the Hessian's pattern,
    detected on the tape once (docs/sparse.md); ``chunk`` is then unused. ``compile=`` as
    for ``hvp`` (a sparse Hessian then sweeps all its colors in one compiled pass).

    >>> dualtape.hessian(lambda x: x[0] ** 2 * x[1])(np.array([1.0, 2.0]))
    array([[4., 2.],
           [2., 0.]])
    """
    if not isinstance(argnums, int):
        raise NotImplementedError("hessian with a tuple argnums is not supported yet")
    tc = _reverse_fn(f, argnums, cache, "hessian", compile)

    def h(*args):
        if sparse:
            return tc.sparse_hessian(args)
        return tc.hessian(args, chunk)
    h.tapes = tc
    h.__name__ = f"hessian({getattr(f, '__name__', 'f')})"
    return h
