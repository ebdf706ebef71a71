"""The Tape: a thin Python shell over the recorded arrays, and the recording entry point.

``record(f, args, argnums)`` runs ``f`` on tracers. Positional arguments are of three
kinds: the differentiated ones (``argnums``), *parameters* (other float arrays and Python
floats: traced, new values at every replay, no derivative) and *static* ones (ints, bools,
strings, integer arrays, anything else: fixed, part of the cache key, as ``jax.jit``'s
static arguments).
"""
import functools
import threading

import numpy as np

from . import kernels as K
from . import ops
from .numpy_api import ADArray, check_single_output, lift
from .numpy_api import call as call_f
from .optimize import optimize as optimize_tape
from .trace import Recorder, _state

_NO_PARAMS = np.zeros(0)
_PER_K = ("jvp", "hvp")     # the entries whose workspaces depend on the directions
_ONE = np.ones((1, 1))      # the seed of a gradient


class GuardFlipped(RuntimeError):
    """A replay reached a branch, mask count or loop exit that differs from the recording."""


DIFF, PARAM, STATIC = "diff", "param", "static"


def classify(a, differentiated):
    """The kind of one positional argument and its normalised value."""
    if differentiated:
        return DIFF, as_float_array(a, "a differentiated argument")
    if isinstance(a, ADArray):
        raise TypeError("a traced or Dual value was passed as a non-differentiated argument "
                        "of a taped function; nested differentiation through grad/tape is "
                        "not supported: use dualtape.hessian or dualtape.hvp for second "
                        "derivatives")
    if isinstance(a, (bool, np.bool_, int, np.integer, str, type(None))) or callable(a):
        return STATIC, a
    if isinstance(a, (float, np.floating)):
        return PARAM, np.float64(a)
    if isinstance(a, np.ndarray):
        if a.dtype.kind == "f":
            return PARAM, np.asarray(a, dtype=np.float64)
        if a.dtype.kind == "c":
            raise TypeError("complex arguments are not supported by dualtape yet")
        return STATIC, a
    return STATIC, a


def as_float_array(x, what):
    if isinstance(x, ADArray):
        raise TypeError(
            f"{what} is a traced or Dual value: differentiating a function that itself "
            "calls grad/jacobian/tape is not supported; use dualtape.hessian or "
            "dualtape.hvp for second derivatives")
    arr = np.asarray(x)
    if arr.dtype.kind == "c":
        raise TypeError(f"complex input is not supported by dualtape yet (got dtype "
                        f"{arr.dtype}); split it into real and imaginary parts")
    if arr.dtype.kind not in "fiub":
        raise TypeError(f"{what} must be a real number or array of real numbers, got "
                        f"{type(x).__name__} of dtype {arr.dtype}")
    arr = np.asarray(arr, dtype=np.float64)
    return arr if arr.flags.c_contiguous else arr.copy()


class Uncacheable(Exception):
    """A static argument whose value cannot be compared (a dict, an arbitrary object)."""


def static_key(a):
    """A hashable key that equals for equal static values."""
    if isinstance(a, np.ndarray):
        return ("array", a.dtype.str, a.shape, a.tobytes())
    if isinstance(a, (list, tuple)):
        return (type(a).__name__,) + tuple(static_key(e) for e in a)
    if callable(a):
        return ("callable", id(a))
    try:
        hash(a)
    except TypeError:
        raise Uncacheable(type(a).__name__) from None
    return ("value", type(a).__name__, a)


def _key_or_id(a):
    try:
        return static_key(a)
    except Uncacheable:
        return ("object", id(a))


def record(f, args, argnums=(0,), optimize=True):
    """Record f at ``args`` into a Tape (see the module docstring for argument kinds);
    ``optimize`` runs the tape optimiser (``dualtape.optimize``) on the recording."""
    kinds = [classify(a, i in argnums) for i, a in enumerate(args)]
    rec = Recorder()
    call = [v for _, v in kinds]
    for i in argnums:
        call[i] = rec.input(kinds[i][1], active=True)
    nx = rec.nwork
    for i, (kind, v) in enumerate(kinds):
        if kind == PARAM:
            call[i] = rec.input(v, active=False)
    nin = rec.nwork
    outer = getattr(_state, "recorder", None)
    _state.recorder = rec
    try:
        y = lift(check_single_output(call_f(f, *call)))
    finally:
        _state.recorder = outer
    if isinstance(y, ADArray) and not hasattr(y, "rec"):
        raise TypeError(f"f returned a {y._kind}, which cannot be recorded")
    if not isinstance(y, ADArray):
        y = as_float_array(y, "f's result")
    prog, consts = rec.finish(y)
    prog[K.H_NIN] = nin
    prog[K.H_NX] = nx
    calls = getattr(rec, "callbacks", None)
    if calls:     # custom derivative rules (custom.py): the sweeps return to Python
        prog[K.H_NCALL] = len(calls)
    stats = None
    if optimize:
        prog, consts, stats = optimize_tape(prog, consts)
    tp = Tape(prog, consts, argnums, [(k, np.shape(v) if k != STATIC else _key_or_id(v))
                                      for k, v in kinds],
              tuple(np.shape(y)), getattr(f, "__name__", "f"))
    tp.f = f
    tp.optimized = stats
    if calls:
        tp.callbacks = calls
    return tp


def _fresh_after_error(run):
    """A sweep that raised (LinAlgError from a matrix function at a singular point) leaves
    its workspace half swept: drop it, so the next call starts from a clean one."""
    @functools.wraps(run)
    def wrapped(self, *args):
        try:
            return run(self, *args)
        except Exception:
            self.drop_workspaces()
            raise
    return wrapped


class Tape:
    """A recorded function: replay it at new inputs for values, gradients, VJPs and
    reverse-mode Jacobians, without running the Python function again.

    Arguments are passed as to the recorded function: differentiated ones, then the rest
    (float arrays and floats are parameters with new values each call; anything else must
    equal what was recorded). A replay whose guard flips (a branch, a loop exit or a mask
    count differs from the recording) raises ``GuardFlipped``: a Tape never re-records by
    itself (``dualtape.grad`` does).
    """

    def __init__(self, prog, consts, argnums, kinds, out_shape, name="f"):
        self.prog, self.consts = prog, consts
        c, n = int(prog[K.H_CODE]), int(prog[K.H_NCODE])
        self.code = prog[c:c + n * K.NCOL].reshape(n, K.NCOL)
        self.argnums = tuple(argnums)
        self.kinds = kinds
        self.out_shape = out_shape
        self.out_size = int(np.prod(out_shape, dtype=np.int64))
        self.name = name
        self.nx = int(prog[K.H_NX])
        self.nin = int(prog[K.H_NIN])
        self._simple = len(kinds) == 1 and argnums == (0,)
        self._local = threading.local()
        self.loaded_from = None     # the file of a tape made by dualtape.load
        self.f = None               # the recorded function (batches record flipped points)
        self.callbacks = ()         # the custom rules its CALLBACK instructions run (custom.py)
        self.optimized = None       # optimize.Stats when the optimiser ran on the recording
        # matrix functions: the sweeps stop at them and custom.py's drivers run their rules
        self.has_linalg = bool(int(prog[K.H_FLAGS]) & K.HAS_LINALG)

    @property
    def plain_grad(self):
        """Whether ``kernels.grad`` alone computes the gradient: a scalar output and no
        custom rules or matrix functions (which return to Python)."""
        return self.out_size == 1 and not self.callbacks and not self.has_linalg

    def nopython(self, chunk=None):
        """The tape's arrays with fresh buffers in one ``NopythonTape``, for the ``@njit``
        entry points of ``dualtape.embed`` (one per thread; ``chunk``: directions per
        forward-Jacobian sweep)."""
        from .embed import make
        return make(self, chunk)

    def compile(self):
        """A ``CompiledTape`` of this tape: the same methods, with value, gradient, vjp,
        reverse and forward Jacobians, jvp, hvp and Hessian run by Numba code generated for
        this tape's structure (fused loops, parallel over chunks; ``docs/performance.md``). Compiling a structure takes
        a few seconds once; the result is cached on disk (``$DUALTAPE_CACHE_DIR``, default
        ``~/.cache/dualtape/compiled``), so a tape of the same structure, in this process
        or a later one, only loads it; each kind of sweep compiles on its first use.
        A tape that calls a custom rule's Python callback raises ``TypeError``.

        >>> tp = dualtape.tape(lambda x: np.sum(np.sin(x) ** 2), np.ones(10 ** 5)).compile()
        >>> g = tp.gradient(np.zeros(10 ** 5))
        """
        from .compiled import compile_tape
        return compile_tape(self)

    def save(self, path):
        """Write the tape to ``path`` (``.npz``, no pickle); ``dualtape.load`` reads it."""
        from .saving import save
        save(self, path)

    @property
    def has_callbacks(self):
        """True if the tape calls custom derivative rules back in Python: it cannot run in
        ``@njit`` code, a batched replay or as a compiled tape."""
        return bool(self.prog[K.H_NCALL])

    def refuse_callbacks(self, where):
        """Raise the error for a path that cannot call Python (njit, batch, compiled)."""
        if self.has_linalg:
            raise NotImplementedError(
                f"the tape of {self.name} uses numpy.linalg, whose rules run from Python "
                f"between pieces of the compiled sweeps, so it cannot run {where} yet; replay "
                "it with the Tape methods or dualtape.grad/jacobian/hessian")
        if self.has_callbacks:
            from .custom import names
            raise TypeError(f"the tape of {self.name} calls the custom derivative rule(s) "
                            f"{names(self.callbacks)} back in Python, so it cannot run {where}; "
                            "replay it with the Tape methods or dualtape.grad/jacobian")

    def workspace(self):
        """This thread's sweep workspace (values, adjoints, scratch), constants in place."""
        work = getattr(self._local, "work", None)
        if work is None:
            work = np.zeros(K.work_size(self.prog))
            cs = int(self.prog[K.H_CONST])
            work[cs:cs + self.consts.size] = self.consts
            self._local.work = work
        return work

    # ------------------------------------------------------------------ packing
    def pack(self, args):
        """The flat input vector (differentiated args, then parameters)."""
        if self._simple and len(args) == 1:
            x = args[0]
            if type(x) is np.ndarray and x.dtype == np.float64 and x.shape == self.kinds[0][1]:
                return x.reshape(-1) if x.flags.c_contiguous else np.ascontiguousarray(x).ravel()
        if len(args) != len(self.kinds):
            raise TypeError(f"the tape of {self.name} takes {len(self.kinds)} positional "
                            f"arguments, got {len(args)}")
        parts = [None] * len(args)
        for i in self.argnums:
            parts[i] = as_float_array(args[i], "a differentiated argument")
        for i, ((kind, shape), a) in enumerate(zip(self.kinds, args)):
            if kind == STATIC:
                if _key_or_id(a) != shape:
                    raise ValueError(f"argument {i} is static (recorded as {shape[-1]!r}); "
                                     "a tape cannot replay with a different static value")
                continue
            if kind == PARAM:
                parts[i] = as_float_array(a, "a parameter")
            if parts[i].shape != shape:
                raise ValueError(f"argument {i} has shape {parts[i].shape}, the tape was "
                                 f"recorded with shape {shape}")
        flat = [parts[i].reshape(-1) for i in self.argnums]
        flat += [parts[i].reshape(-1) for i, (k, _) in enumerate(self.kinds) if k == PARAM]
        return np.concatenate(flat) if len(flat) > 1 else flat[0]

    def check(self, status):
        if status == K.OK:
            return
        if status >= K.CALL_STOP:
            self.refuse_callbacks("in a compiled entry")
        if status >= 0:
            op = _OPNAMES.get(int(self.code[status, K.OP]), "?")
            if self.loaded_from is not None:
                raise GuardFlipped(
                    f"replay of the tape of {self.name} loaded from {self.loaded_from}: "
                    f"instruction {status} ({op}) takes another branch than the recording "
                    "did; a loaded tape cannot record again: record f at this point with "
                    "dualtape.tape (and save that tape too)")
            raise GuardFlipped(
                f"replay of the tape of {self.name}: instruction {status} ({op}) takes another "
                "branch than the recording did (an if/while on a traced value, or a mask "
                "with another count); re-record with dualtape.tape at this point, or use "
                "dualtape.grad / jacobian, which re-record automatically")
        i = K.ERR_INDEX - status
        raise IndexError(f"replay of the tape of {self.name}: an index computed at this point "
                         f"by instruction {i} is out of bounds")

    def _unpack_grad(self, g):
        """Split a flat gradient row block (..., nx) into per-argument arrays."""
        if len(self.argnums) == 1:
            return g.reshape(g.shape[:-1] + self.kinds[self.argnums[0]][1])
        lead = g.shape[:-1]
        out, start = [], 0
        for i in self.argnums:
            shape = self.kinds[i][1]
            size = int(np.prod(shape, dtype=np.int64))
            out.append(g[..., start:start + size].reshape(lead + shape))
            start += size
        return tuple(out)

    # ------------------------------------------------------------------ evaluation
    @_fresh_after_error
    def run_vjp(self, xin, seeds):
        """Raw status, value and gradient rows for flat inputs (used by the API)."""
        out = np.empty(self.out_size + seeds.shape[0] * self.nx)
        status = self.sweep("vjp", xin, seeds, out)
        return status, out[:self.out_size], out[self.out_size:].reshape(seeds.shape[0],
                                                                         self.nx)

    def run_grad(self, xin, value=True):
        """Raw status and [value, gradient...] for a scalar output (``value=False``: the
        caller does not use the value, which a compiled tape may then skip)."""
        out = np.empty(1 + self.nx)
        if self.callbacks or self.has_linalg:
            from . import custom
            return custom.vjp(self.prog, xin, _ONE, out, self.workspace(), self.callbacks), out
        try:     # zero-cost when nothing raises (the hot path); see _fresh_after_error
            return K.grad(self.prog, xin, out, self.workspace()), out
        except Exception:
            self.drop_workspaces()
            raise

    def tangent_workspace(self, k):
        """This thread's (tangents, adjoint tangents) for k directions."""
        cache = getattr(self._local, "tangents", None)
        if cache is None:
            cache = self._local.tangents = {}
        if k not in cache:
            size = int(self.prog[K.H_TOTAL]) * k
            cache[k] = (np.zeros(size), np.zeros(size))
        return cache[k]

    def drop_workspaces(self):
        """Forget this thread's workspaces and the entries bound to them (after a sweep
        raised, leaving them half swept): the next call starts from clean ones."""
        self._local.work = None
        self._local.tangents = None
        self._local.bound = None

    def bound(self):
        """This thread's dict of sweep entries bound to its workspaces (``entry``) and of
        the sparse runners built on them (``sparse.py``), dropped with the workspaces."""
        b = getattr(self._local, "bound", None)
        if b is None:
            b = self._local.bound = {}
        return b

    def entry(self, kind, k=1):
        """``(fn, tail)``: ``fn(prog, xin, V, out, *tail)`` runs this thread's sweep of
        ``kind`` with k directions V and returns its status (then ``settle`` it):

        * "jvp": V (nx, k) tangents; out = [value (out_size), J V (out_size, k)]
        * "vjp": V (k, out_size) adjoint seeds; out = [value (out_size), V J (k, nx)]
        * "hvp": V (nx, k); out = [value, gradient (nx), H V (nx, k)]
        * "hvp_columns": V (nx, k); out = H V as k blocks of nx (``kernels.hvp_columns``)

        Kept per thread: a call costs one dictionary lookup."""
        b = self.bound()
        e = b.get((kind, k))
        if e is None:
            e = b[(kind, k)] = self._entry(kind, k)
        return e

    def _entry(self, kind, k):
        """The interpreter's entries (``entry``); custom rules and matrix functions run
        custom.py's drivers."""
        w = self.workspace()
        py = self.callbacks or self.has_linalg
        if kind == "vjp":
            if py:
                from . import custom
                return custom.vjp, (w, self.callbacks)
            return K.vjp, (w,)
        if kind == "hvp_columns":
            return K.hvp_columns, (w,) + self.tangent_workspace(1)
        wt, at = self.tangent_workspace(k)
        if kind == "jvp":
            if py:
                from . import custom
                return custom.jvp, (w, wt, self.callbacks)
            return K.jvp, (w, wt)
        if kind == "hvp":
            if self.has_linalg:
                from . import custom
                return custom.hvp, (w, wt, at)
            return K.hvp, (w, wt, at)
        raise ValueError(f"no sweep entry {kind!r}")

    def settle(self, kind, status, xin, V, out):
        """The final status of a sweep of ``entry(kind)`` that returned ``status``: the
        interpreter's is final (a compiled tape reruns some on the interpreter)."""
        return status

    def sweep(self, kind, xin, V, out):
        """Run ``entry(kind, k)`` with directions V into out; its settled status."""
        fn, tail = self.entry(kind, V.shape[1] if kind in _PER_K else 1)
        status = fn(self.prog, xin, V, out, *tail)
        return status if status == K.OK else self.settle(kind, status, xin, V, out)

    @_fresh_after_error
    def run_jvp(self, xin, V):
        """Raw status, value and J V (out_size, k) for V of shape (nx, k)."""
        k = V.shape[1]
        V = np.ascontiguousarray(V, dtype=np.float64)    # compiled entries read it flat
        out = np.empty(self.out_size * (1 + k))
        status = self.sweep("jvp", xin, V, out)
        return status, out[:self.out_size], out[self.out_size:].reshape(self.out_size, k)

    @_fresh_after_error
    def run_hvp(self, xin, V):
        """Raw status and [value, gradient (nx), H V (nx, k) row-major] for V (nx, k)."""
        k = V.shape[1]
        if self.callbacks:
            from .custom import names
            raise NotImplementedError(
                f"second derivatives (hvp, hessian) through the custom derivative rule(s) "
                f"{names(self.callbacks)} are not supported")
        V = np.ascontiguousarray(V, dtype=np.float64)
        out = np.empty(1 + self.nx * (1 + k))
        return self.sweep("hvp", xin, V, out), out

    @_fresh_after_error
    def run_value(self, xin):
        y = np.empty(self.out_size)
        if self.callbacks or self.has_linalg:
            from . import custom
            return custom.evaluate(self.prog, xin, y, self.workspace(), self.callbacks), y
        return K.evaluate(self.prog, xin, y, self.workspace()), y

    def shape_value(self, y):
        return y[0] if self.out_shape == () else y.reshape(self.out_shape)

    def __call__(self, *args):
        """f's value at new arguments."""
        status, y = self.run_value(self.pack(args))
        self.check(status)
        return self.shape_value(y)

    def _scalar_output(self, what):
        if self.out_size != 1:
            hint = ("use jacobian or vjp" if what == "grad" else
                    "take the Hessian of each output (a function returning f(x)[i])")
            raise ValueError(f"{what} needs a scalar output, but {self.name} returns shape "
                             f"{self.out_shape}; {hint}")

    def value_and_gradient(self, *args, value=True):
        self._scalar_output("grad")
        status, out = self.run_grad(self.pack(args), value)
        self.check(status)
        return out[0], self._unpack_grad(out[1:])

    def gradient(self, *args):
        """The gradient of a scalar output with respect to the differentiated arguments."""
        return self.value_and_gradient(*args, value=False)[1]

    def vjp(self, *args_and_v):
        """``v @ J``: pass the arguments, then ``v`` of the output's shape (or a stack of
        several such ``v`` along a leading axis, for several products in one sweep)."""
        *args, v = args_and_v
        v = np.asarray(v, dtype=np.float64)
        if v.shape == self.out_shape:
            seeds, lead = v.reshape(1, -1), ()
        elif v.shape[1:] == self.out_shape:
            seeds, lead = v.reshape(v.shape[0], -1), v.shape[:1]
        else:
            raise ValueError(f"vjp: v has shape {v.shape}, expected the output shape "
                             f"{self.out_shape}")
        status, _, g = self.run_vjp(self.pack(args), np.ascontiguousarray(seeds))
        self.check(status)
        return self._unpack_grad(g.reshape(lead + (self.nx,)))

    def _single_input(self, what):
        if len(self.argnums) != 1:
            raise NotImplementedError(f"{what} of a tape with several differentiated "
                                      "arguments is not supported yet")
        return self.kinds[self.argnums[0]][1]

    def _directions(self, v, what):
        """(V as (nx, k), leading shape) from v of the input shape or (k,) + input shape."""
        shape = self._single_input(what)
        v = np.asarray(v, dtype=np.float64)
        if v.shape == shape:
            return np.ascontiguousarray(v.reshape(-1, 1)), ()
        if v.shape[1:] == shape:
            if v.shape[0] == 0:
                raise ValueError(f"{what}: v has shape {v.shape}: no directions; pass at "
                                 f"least one (shape {shape} or (k,) + {shape}, k >= 1)")
            return np.ascontiguousarray(v.reshape(v.shape[0], -1).T), v.shape[:1]
        raise ValueError(f"{what}: v has shape {v.shape}, expected the input shape {shape} "
                         f"(or a leading axis of several directions)")

    def jvp(self, *args_and_v):
        """``J v`` by the tangent sweep: pass the arguments, then ``v`` of the input's shape
        (or a stack of k such directions along a leading axis, all in one sweep)."""
        *args, v = args_and_v
        V, lead = self._directions(v, "jvp")
        status, _, jv = self.run_jvp(self.pack(args), V)
        self.check(status)
        return np.ascontiguousarray(jv.T).reshape(lead + self.out_shape) if lead else \
            jv.reshape(self.out_shape)

    def jacobian(self, *args, mode="reverse", chunk=None):
        """Dense Jacobian of shape ``out_shape + in_shape``: ``mode="reverse"`` sweeps one
        adjoint per output element, ``"forward"`` one tangent per input element, ``chunk``
        (default: up to 128, within ~32 MB of tangents) directions per sweep."""
        xin = self.pack(args)
        if mode == "forward":
            shape = self._single_input("forward jacobian")
            status, J = columns(self, xin, self.nx, chunk, self.run_jvp, lambda r: r[2])
            self.check(status)
            return J.reshape(self.out_shape + shape)
        if mode != "reverse":
            raise ValueError(f"mode must be 'forward' or 'reverse', got {mode!r}")
        status, _, g = self.run_vjp(xin, identity(self.out_size))
        self.check(status)
        return self._unpack_grad(g.reshape(self.out_shape + (self.nx,)))

    def hvp(self, *args_and_v):
        """Hessian-vector product ``H v`` of a scalar output (forward-over-reverse): pass the
        arguments, then ``v`` of the input's shape (or k of them along a leading axis)."""
        *args, v = args_and_v
        self._scalar_output("hvp")
        V, lead = self._directions(v, "hvp")
        status, out = self.run_hvp(self.pack(args), V)
        self.check(status)
        hv = out[1 + self.nx:].reshape(self.nx, V.shape[1])
        shape = self.kinds[self.argnums[0]][1]
        return np.ascontiguousarray(hv.T).reshape(lead + shape) if lead else hv.reshape(shape)

    def hessian(self, *args, chunk=None):
        """Dense Hessian of a scalar output, of shape ``in_shape + in_shape``, by
        forward-over-reverse in chunks of ``chunk`` (by default up to 128) directions. Symmetric to
        rounding; not symmetrised."""
        self._scalar_output("hessian")
        shape = self._single_input("hessian")
        nx = self.nx
        status, H = columns(self, self.pack(args), nx, chunk, self.run_hvp,
                            lambda r: r[1][1 + nx:].reshape(nx, -1))
        self.check(status)
        return H.reshape(shape + shape)

    # ------------------------------------------------------------------ batches
    def value_batch(self, X, *params):
        """f at each of p points ``X`` (shape ``(p,) + x.shape``), in parallel over
        threads; the parameters are shared. Returns shape ``(p,) + out_shape``. Points
        whose guards flip are recorded again from Python (a loaded tape raises
        ``GuardFlipped``)."""
        from . import batch
        y = batch.run(self, batch.VALUE, X, params, self.out_size)
        return y.reshape((len(y),) + self.out_shape)

    def gradient_batch(self, X, *params):
        """``(values, gradients)`` of a scalar f at each of p points ``X``: shapes
        ``(p,)`` and ``(p,) + x.shape``; parallel, as ``value_batch``."""
        from . import batch
        self._scalar_output("grad")
        out = batch.run(self, batch.GRADIENT, X, params, 1 + self.nx)
        return out[:, 0], out[:, 1:].reshape(np.shape(X))

    def jvp_batch(self, X, V, *params):
        """``(values, J v)`` at each of p points ``X`` with one direction per point,
        ``V`` of the same shape as ``X``: shapes ``(p,) + out_shape`` twice; parallel, as
        ``value_batch``."""
        from . import batch
        V = np.ascontiguousarray(V, dtype=np.float64)
        if V.shape != np.shape(X):
            raise ValueError(f"jvp_batch: V has shape {V.shape}, expected the points' shape "
                             f"{np.shape(X)}")
        m = self.out_size
        out = batch.run(self, batch.JVP, X, params, 2 * m, V.reshape(len(V), -1))
        lead = (len(out),) + self.out_shape
        return out[:, :m].reshape(lead), out[:, m:].reshape(lead)

    # ------------------------------------------------------------------ inspection
    def __len__(self):
        return int(self.code.shape[0])

    @property
    def nbytes(self):
        """Bytes of the tape arrays plus the value buffer a replay allocates."""
        return int(self.prog.nbytes + self.consts.nbytes + 8 * K.work_size(self.prog))

    @property
    def arrays(self):
        """(prog, consts): all a Numba sweep needs."""
        return self.prog, self.consts

    def __repr__(self):
        return (f"<Tape of {self.name}: {len(self)} instruction{'s' * (len(self) != 1)}, "
                f"{int(self.prog[K.H_TOTAL])} values, {self.nx} inputs, "
                f"output shape {self.out_shape}, {self.nbytes} bytes>")

    def summary(self, limit=200):
        """A readable listing of the instructions; the first line says what the optimiser
        did (instructions recorded -> kept, and per pass)."""
        lines = [repr(self)]
        if self.optimized is not None:      # instruction counts before and after
            lines[0] += f"; optimised: {self.optimized!r}"
        names = "abc"
        for i, row in enumerate(self.code[:limit]):
            op = _OPNAMES.get(int(row[K.OP]), "?")
            if op == "guard":
                lines.append(f"{i:5d}  guard     [{row[K.A]}] is {bool(row[K.AUX])}")
                continue
            args = []
            for k in range(3):
                off, ln = row[K.A + 2 * k], row[K.NA + 2 * k]
                if ln:
                    act = "*" if (row[K.FLAGS] >> k) & 1 else ""
                    args.append(f"{names[k]}=[{off}:+{ln}]{act}")
            lines.append(f"{i:5d}  {op:<12s} [{row[K.OUT]}:+{row[K.N]}] <- {' '.join(args)}")
        if len(self) > limit:
            lines.append(f"  ... {len(self) - limit} more")
        return "\n".join(lines)


_OPNAMES = {code: name for name, code in ops.OPCODES.items()}


#: directions per tangent sweep of a dense forward Jacobian or Hessian (default policy):
#: more directions amortise the per-instruction work (n = 100 Rosenbrock Hessian: 165 us
#: with 32, 112 us with 128), bounded by the tangent memory, TANGENT_BUDGET values
MAX_CHUNK = 128
TANGENT_BUDGET = 1 << 22


_EYES = {}


def identity(m):
    """The m x m identity, the adjoint seeds of a reverse Jacobian (small ones kept)."""
    eye = _EYES.get(m)
    if eye is None:
        eye = np.eye(m)
        if m <= 1024:
            _EYES[m] = eye
    return eye


def columns(tp, xin, n, chunk, run, pick):
    """(status, matrix) whose columns come from sweeps of ``chunk`` identity directions
    (``run(xin, V)``; ``pick`` takes the block from its result); on failure, the status of
    the first sweep that failed and None."""
    if not chunk:   # as many directions as fit in ~32 MB of tangents, up to MAX_CHUNK
        chunk = max(8, min(MAX_CHUNK, TANGENT_BUDGET // max(int(tp.prog[K.H_TOTAL]), 1)))
    chunk = max(1, min(chunk, max(n, 1)))
    cols = []
    for start in range(0, n, chunk):
        k = min(chunk, n - start)
        V = np.zeros((n, k))
        V[np.arange(start, start + k), np.arange(k)] = 1.0
        res = run(xin, V)
        if res[0] != K.OK:
            return res[0], None
        cols.append(pick(res))
    if not cols:
        return K.OK, np.zeros((tp.out_size, 0))
    return K.OK, np.concatenate(cols, axis=1) if len(cols) > 1 else cols[0]
