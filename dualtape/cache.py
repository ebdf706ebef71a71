"""The tape cache behind ``grad``, ``value_and_grad`` and ``jacobian``.

Tapes are kept per call signature (shapes of the traced arguments, values of the static
ones), several per signature with their guard outcomes, most recently used first and
bounded, so code alternating between two branches does not re-record at every call and a
sweep over many shapes does not grow without limit. A replay whose guard flips moves on to
the next tape of the signature and, when none fits, records a new one at this point.

Captured values are checked at every call: the arrays and numbers ``f`` reaches through its
closure cells, the module globals it names and its default arguments (not those of the
functions it calls). What is compared: the identity of each object, and for an array its
shape, dtype and values (all of them up to 64 elements, 64 evenly spread ones beyond).
A change drops the tapes and records again. Data that changes between calls belongs in the
arguments; ``cache=False`` records at every call (random draws inside f, for example).
"""
import collections
import types

import numpy as np

from . import kernels as K
from .tapes import STATIC, Uncacheable, classify, columns, identity, record, static_key

MAX_SIGNATURES = 32
TAPES_PER_SIGNATURE = 8
#: compiled tier (``compile=``): structures compiled per function at most; with "auto", a
#: tape tiers up at its AUTO_CALLS-th replay when it holds at least AUTO_VALUES values
MAX_COMPILED = 8
AUTO_CALLS = 20
AUTO_VALUES = 1 << 16
_SAMPLE = 64
_WATCHED = (np.ndarray, float, int, complex, np.number)


_F64 = np.dtype(np.float64)
_MISSING = object()

_DEPTH = 4   # how deep to follow the Python functions f calls through its captures


def _captured(f, depth=_DEPTH, seen=None):
    """(function, where, object) for the values f captures that could go stale on a tape,
    following the plain Python functions it captures (helpers it calls) a few levels."""
    seen = set() if seen is None else seen
    if id(f) in seen or depth < 0:
        return []
    seen.add(id(f))
    found = []
    for j, cell in enumerate(getattr(f, "__closure__", None) or ()):
        try:
            found.append((("cell", j), cell.cell_contents))
        except ValueError:
            pass
    code = getattr(f, "__code__", None)
    glb = getattr(f, "__globals__", None) or {}
    if code is not None:
        found += [(("global", name), glb[name]) for name in code.co_names if name in glb]
    for j, d in enumerate(getattr(f, "__defaults__", None) or ()):
        found.append((("default", j), d))
    out = []
    for where, obj in found:
        if isinstance(obj, _WATCHED) and not isinstance(obj, bool):
            out.append((f, where, obj))
        elif isinstance(obj, types.FunctionType):
            out.append((f, where, obj))     # a rebound helper is a change too
            out += _captured(obj, depth - 1, seen)
    return out


def _positions(obj):
    """The flat positions sampled from a captured array (all of a small one)."""
    if obj.size <= _SAMPLE:
        return None
    return np.linspace(0, obj.size - 1, _SAMPLE).astype(np.int64)


def _sample(obj, pos):
    if not isinstance(obj, np.ndarray):
        return obj
    vals = obj.reshape(-1) if pos is None else np.take(obj, pos)
    return (obj.shape, obj.dtype.str, vals.tobytes())


class Fingerprint:
    """What f captured at recording, checked cheaply before each replay: the captured
    objects themselves (so an identity cannot be reused), split by where they live, so a
    check is one identity test per capture (numbers and functions are immutable or
    compared by identity) plus the sampled values of arrays."""

    def __init__(self, f):
        self.cells, self.globals, self.defaults, self.arrays = [], [], [], []
        for fn, (kind, key), obj in _captured(f):
            if kind == "cell":
                self.cells.append((fn.__closure__[key], obj))
            elif kind == "global":
                self.globals.append((fn.__globals__, key, obj))
            else:
                self.defaults.append((fn, key, obj))
            if isinstance(obj, np.ndarray):
                pos = _positions(obj)
                self.arrays.append((obj, pos, _sample(obj, pos)))
        self.empty = not (self.cells or self.globals or self.defaults)   # nothing to check
        # the common capture is closure cells alone: the other loops are then skipped
        self._rest = bool(self.globals or self.defaults or self.arrays)

    def unchanged(self):
        for cell, obj in self.cells:
            try:
                if cell.cell_contents is not obj:
                    return False
            except ValueError:      # the cell was emptied (del of a nonlocal)
                return False
        return self._rest_unchanged() if self._rest else True

    def _rest_unchanged(self):
        for glb, name, obj in self.globals:
            if glb.get(name, _MISSING) is not obj:
                return False
        for fn, j, obj in self.defaults:
            d = fn.__defaults__
            if d is None or j >= len(d) or d[j] is not obj:
                return False
        for obj, pos, sample in self.arrays:
            if obj.shape != sample[0] or _sample(obj, pos) != sample:
                return False
        return True


class TapeCache:
    def __init__(self, f, argnums, enabled=True, compile=False):
        if any(i < 0 for i in argnums):
            raise ValueError(f"argnums={argnums}: use non-negative argument positions")
        if compile not in (False, True, "auto"):
            raise ValueError(f"compile must be False, True or 'auto', got {compile!r}")
        self.compile = compile
        self.compiled = set()                     # structures compiled for f (module names)
        self.f = f
        self.argnums = argnums
        self.enabled = enabled
        self.tapes = collections.OrderedDict()   # signature -> [Tape, ...] (MRU first)
        self.fingerprint = None
        self.records = 0                          # how many times f was recorded
        self.last_mode = None                     # mode of the last jacobian
        self._plain = argnums == (0,)

    def signature(self, args):
        sig = []
        for i, a in enumerate(args):
            if type(a) is np.ndarray and a.dtype.kind == "f":
                sig.append(a.shape)
            elif isinstance(a, float) and i not in self.argnums:
                sig.append(())
            else:
                kind, v = classify(a, i in self.argnums)
                sig.append(np.shape(v) if kind != STATIC else static_key(v))
        return tuple(sig)

    def _candidates(self, args):
        """(signature, cached tapes or None) for args; drops stale tapes. The signature is
        None when a static argument cannot be compared: such calls are not cached."""
        try:
            sig = self.signature(args)
        except Uncacheable:
            return None, None
        tapes = self.tapes.get(sig) if self.enabled else None
        if tapes and not self.fingerprint.unchanged():
            self.tapes.clear()
            tapes = None
        return sig, tapes

    def _tier(self, tp):
        """tp compiled (``compile=True``, or "auto" once tp is hot), unless f already
        compiled MAX_COMPILED structures: then it stays interpreted."""
        if hasattr(tp, "interpreted"):
            return tp
        if self.compile == "auto" and (tp.has_callbacks or tp.has_linalg):
            return tp
        if len(self.compiled) >= MAX_COMPILED:
            return tp
        from .compiled import compile_tape
        ctp = compile_tape(tp)
        self.compiled.add(ctp.module.__name__)
        return ctp

    def _hot(self, tapes, j):
        """Count a replay of tapes[j]; with compile="auto", tier it up when it is hot."""
        tp = tapes[j]
        tp.replays = getattr(tp, "replays", 0) + 1
        if tp.replays == AUTO_CALLS and int(tp.prog[K.H_TOTAL]) >= AUTO_VALUES:
            tapes[j] = tp = self._tier(tp)
        return tp

    def _record(self, args, sig):
        tp = record(self.f, args, self.argnums)
        if self.compile is True:
            tp = self._tier(tp)
        self.records += 1
        if self.enabled and sig is not None:
            if not self.tapes:
                self.fingerprint = Fingerprint(self.f)
            tapes = self.tapes.setdefault(sig, [])
            tapes.insert(0, tp)
            del tapes[TAPES_PER_SIGNATURE:]
            self.tapes.move_to_end(sig)
            while len(self.tapes) > MAX_SIGNATURES:
                self.tapes.popitem(last=False)
        return tp

    def _replay(self, args, sweep):
        """(tape, result of sweep) at args: the first cached tape whose guards hold, or a
        new recording. ``sweep(tape, xin)`` returns (status, result)."""
        if max(self.argnums) >= len(args):
            raise ValueError(f"argnums={self.argnums} but f was called with {len(args)} "
                             "positional arguments")
        sig, tapes = self._candidates(args)
        if tapes:
            xin = tapes[0].pack(args)
            for j, tp in enumerate(tapes):
                if self.compile == "auto":
                    tp = self._hot(tapes, j)
                status, res = sweep(tp, xin)
                if status == K.OK:
                    if j:
                        tapes.insert(0, tapes.pop(j))
                        self.tapes.move_to_end(sig)
                    return tp, res
                if status < K.OK:
                    tp.check(status)
        tp = self._record(args, sig)
        status, res = sweep(tp, tp.pack(args))
        tp.check(status)   # a fresh recording replays its own branch
        return tp, res

    def _recent(self, args):
        """The fast path of the common call, one C-contiguous float64 array: the most
        recently used tape of its shape, when nothing captured changed; else None (then
        ``_replay`` decides). Its guards are checked by the sweep."""
        if self._plain and len(args) == 1 and self.fingerprint is not None:
            x = args[0]
            # ``is``: a dtype equal to float64 but another object takes the general path
            if type(x) is np.ndarray and x.dtype is _F64 and x.flags.c_contiguous:
                tapes = self.tapes.get((x.shape,))
                if tapes and (self.fingerprint.empty or self.fingerprint.unchanged()):
                    return self._hot(tapes, 0) if self.compile == "auto" else tapes[0]
        return None

    def _fast_grad(self, args, value=True):
        """[value, gradient...] by the fast path (``_recent``), or None; ``value=False``:
        the value is not used, and a compiled tape may skip adding it up (NaN then)."""
        tp = self._recent(args)
        if tp is None:
            return None
        x = args[0]
        xin = x if x.ndim == 1 else x.reshape(-1)
        if hasattr(tp, "interpreted"):     # a compiled tape runs its own gradient
            if tp.out_size != 1:
                return None
            status, out = tp.run_grad(xin, value)
            return out if status == K.OK else None
        if tp.plain_grad:
            out = np.empty(1 + tp.nx)
            if K.grad(tp.prog, xin, out, tp.workspace()) == K.OK:
                return out
        return None

    def value_and_grad(self, args):
        out = self._fast_grad(args)
        if out is not None:
            x = args[0]
            return out[0], out[1:] if x.ndim == 1 else out[1:].reshape(x.shape)
        tp, out = self._replay(args, _grad_sweep)
        return out[0], tp._unpack_grad(out[1:])

    def grad(self, args):
        """The gradient alone (``value_and_grad`` without building the value)."""
        out = self._fast_grad(args, False)
        if out is not None:
            x = args[0]
            return out[1:] if x.ndim == 1 else out[1:].reshape(x.shape)
        tp, out = self._replay(args, _gradient_sweep)
        return tp._unpack_grad(out[1:])

    def jacobian(self, args, mode="auto", chunk=None):
        """Dense Jacobian; mode "auto" goes forward when inputs <= outputs (reverse when a
        custom rule has no jvp). Sets ``last_mode``."""
        def sweep(tp, xin):
            use = mode
            if use == "auto":
                use = "forward" if tp.nx <= tp.out_size else "reverse"
                if any(cb.rule.jvp is None for cb in tp.callbacks):
                    use = "reverse"     # a custom rule with only a vjp (custom.py)
            self.last_mode = use
            if use == "forward":
                return columns(tp, xin, tp.nx, chunk, tp.run_jvp, lambda r: r[2])
            status, y, g = tp.run_vjp(xin, identity(tp.out_size))
            return status, g
        tp, J = self._replay(args, sweep)
        if self.last_mode == "forward":
            return J.reshape(tp.out_shape + tp.kinds[tp.argnums[0]][1])
        return tp._unpack_grad(J.reshape(tp.out_shape + (tp.nx,)))

    def jvp(self, args, v):
        """(f, J v) for v of the input's shape, or k directions along a leading axis."""
        def sweep(tp, xin):
            V, lead = tp._directions(v, "jvp")
            status, y, jv = tp.run_jvp(xin, V)
            return status, (y, jv, lead)
        tp, (y, jv, lead) = self._replay(args, sweep)
        if lead:
            return tp.shape_value(y), np.ascontiguousarray(jv.T).reshape(lead + tp.out_shape)
        return tp.shape_value(y), jv.reshape(tp.out_shape)

    def hvp(self, args, v):
        def sweep(tp, xin):
            tp._scalar_output("hvp")
            V, lead = tp._directions(v, "hvp")
            status, out = tp.run_hvp(xin, V)
            return status, (out, V.shape[1], lead)
        tp, (out, k, lead) = self._replay(args, sweep)
        hv = out[1 + tp.nx:].reshape(tp.nx, k)
        shape = tp.kinds[tp.argnums[0]][1]
        return np.ascontiguousarray(hv.T).reshape(lead + shape) if lead else hv.reshape(shape)

    def hessian(self, args, chunk=None):
        def sweep(tp, xin):
            tp._scalar_output("hessian")
            tp._single_input("hessian")
            nx = tp.nx
            return columns(tp, xin, nx, chunk, tp.run_hvp,
                            lambda r: r[1][1 + nx:].reshape(nx, -1))
        tp, H = self._replay(args, sweep)
        shape = tp.kinds[tp.argnums[0]][1]
        return H.reshape(shape + shape)

    def sparse_jacobian(self, args, mode="auto"):
        """CSR Jacobian (outputs x inputs, flattened) by compressed sweeps; sets
        ``last_mode``."""
        sparse = _SPARSE or _load_sparse()
        tp = self._recent(args)
        if tp is not None:      # the common call: straight to this thread's runner
            x = args[0]
            run = sparse.runner(tp, mode)
            status, J = run(tp, x if x.ndim == 1 else x.reshape(-1))
            if status == K.OK:
                self.last_mode = run.mode
                return J

        def sweep(tp, xin):
            run = sparse.runner(tp, mode)
            self.last_mode = run.mode
            return run(tp, xin)
        return self._replay(args, sweep)[1]

    def sparse_hessian(self, args):
        """CSR Hessian (inputs x inputs, flattened) by compressed forward-over-reverse."""
        sparse = _SPARSE or _load_sparse()
        tp = self._recent(args)
        if tp is not None:
            x = args[0]
            run = sparse.runner(tp, "hessian")
            status, H = run(tp, x if x.ndim == 1 else x.reshape(-1))
            if status == K.OK:
                return H
        return self._replay(args, sparse.hessian_sweep)[1]


_SPARSE = None


def _load_sparse():
    """dualtape.sparse, imported on the first sparse derivative (it loads scipy.sparse,
    which ``import dualtape`` does not need)."""
    global _SPARSE
    from . import sparse
    _SPARSE = sparse
    return sparse


def _grad_sweep(tp, xin):
    tp._scalar_output("grad")
    return tp.run_grad(xin)


def _gradient_sweep(tp, xin):
    tp._scalar_output("grad")
    return tp.run_grad(xin, False)
