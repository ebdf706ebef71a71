"""Custom derivative rules: functions dualtape does not look into.

Two ways to write one:

* a ``Function`` subclass (DeZero's and ``torch.autograd.Function``'s style): ``forward``
  on NumPy arrays, ``backward`` from the output's gradient to the inputs', and optionally
  ``jvp`` from the inputs' tangents to the output's;
* the ``custom_vjp`` / ``custom_jvp`` decorators (JAX's style) on a plain function, with
  ``f.defvjp(fwd, bwd)`` and/or ``f.defjvp(jvp)``.

A rule works in every mode. Forward mode (``Dual``: ``derivative``, ``check_grads``'s
``"fwd"``; a tape's tangent sweep: ``jvp``, forward ``jacobian``) uses the jvp; a rule with
only a vjp raises ``TypeError`` there. Reverse mode uses the vjp; a rule with only a jvp
gets one by the jvp of each input element (``n`` calls for ``n`` input elements). On a tape
a rule is one ``CALLBACK`` instruction (``kernels.py``): the compiled sweeps stop at it and
return to Python, which runs the rule and resumes the sweep after it. That costs a Python
call of the rule and a re-entry into the kernels per callback and sweep (some
microseconds), and such a tape cannot run where Python cannot be called: inside ``@njit``
code, in a batched ``prange`` replay or as a compiled tape (``Tape.has_callbacks``; those
paths refuse it with an error naming the rule). Second derivatives through a rule
(``hvp``, ``hessian``) are not supported.
"""
import copy

import numpy as np

from . import kernels as K
from . import ops
from .dual import Dual
from .numpy_api import ADArray, lead, lift
from .trace import Tracer

__all__ = ["Function", "custom_jvp", "custom_vjp"]

CALLBACK = ops.OPCODES["callback"]


# ---------------------------------------------------------------------------- rules

class Rule:
    """What a callback runs. ``fwd(*xs) -> (y, saved)``, ``bwd(saved, g) -> grads``,
    ``jvp(xs, ts) -> (y, ty)``; at least one of ``bwd`` and ``jvp``."""

    def __init__(self, name, fwd, bwd=None, jvp=None):
        self.name, self.fwd, self.bwd, self.jvp = name, fwd, bwd, jvp

    def _check_defined(self):
        if self.bwd is None and self.jvp is None:
            raise TypeError(f"the custom rule {self.name} has no derivative yet: define a "
                            "vjp (defvjp) or a jvp (defjvp)")

    def value(self, xs):
        """(y, saved) at plain inputs."""
        self._check_defined()
        y, saved = self.fwd(*xs)
        return _real(y, self, "value"), (list(xs) if self.bwd is None else saved)

    def jvp_pair(self, xs, ts):
        if self.jvp is None:
            raise TypeError(
                f"the custom rule {self.name} defines only a vjp, and forward mode (Dual "
                "numbers: derivative, check_grads 'fwd'; a tape's tangent sweep: jvp, "
                "jacobian(mode='forward')) needs its jvp: give it one (f.defjvp(...), or "
                "Function.jvp), or use reverse mode (grad, vjp, jacobian(mode='reverse'))")
        return self.jvp(list(xs), list(ts))

    def vjp(self, saved, g, shapes):
        """One gradient per input, checked against the input shapes."""
        if self.bwd is None:        # from the jvp: the Jacobian's columns, one per element
            xs = saved
            cols = []
            for i, shape in enumerate(shapes):
                gi = np.zeros(shape)
                for j in np.ndindex(shape):
                    ts = [np.zeros(s) for s in shapes]
                    ts[i][j] = 1.0
                    gi[j] = np.sum(g * _real(self.jvp_pair(xs, ts)[1], self, "jvp"))
                cols.append(gi)
            return cols
        grads = self.bwd(saved, g)
        if not isinstance(grads, (tuple, list)):
            grads = (grads,)
        if len(grads) != len(shapes):
            raise ValueError(f"the vjp of custom rule {self.name} returned {len(grads)} "
                             f"gradients for {len(shapes)} inputs")
        out = []
        for k, (gk, shape) in enumerate(zip(grads, shapes)):
            gk = np.zeros(shape) if gk is None else _real(gk, self, "vjp")
            if gk.shape != shape:
                if gk.size != 1 or int(np.prod(shape)) != 1:
                    raise ValueError(f"the vjp of custom rule {self.name} returned shape "
                                     f"{gk.shape} for input {k} of shape {shape}")
                gk = gk.reshape(shape)
            out.append(gk)
        return out


def _real(a, rule, what):
    if isinstance(a, ADArray):
        return a
    arr = np.asarray(a)
    if arr.dtype.kind not in "fiub":
        raise TypeError(f"the {what} of custom rule {rule.name} must be a real array, got "
                        f"{type(a).__name__} of dtype {arr.dtype}")
    return arr.astype(np.float64)


class CustomFunction:
    """A function with custom derivative rules (``custom_vjp`` / ``custom_jvp``)."""

    def __init__(self, f):
        self.f = f
        self.__name__ = getattr(f, "__name__", "f")
        self.__doc__ = getattr(f, "__doc__", None)
        self.rule = Rule(self.__name__, lambda *xs: (f(*xs), None))

    def defvjp(self, fwd, bwd):
        """``fwd(*xs) -> (y, residuals)``; ``bwd(residuals, g) -> (gradient per input)``."""
        self.rule.fwd, self.rule.bwd = fwd, bwd
        return self

    def defjvp(self, jvp):
        """``jvp(primals, tangents) -> (y, tangent of y)``, primals and tangents lists with
        one array per input. Usable as a decorator."""
        self.rule.jvp = jvp
        return jvp

    def __call__(self, *args):
        return apply(self.rule, args)


def custom_vjp(f):
    """Give ``f`` a reverse-mode rule: ``f.defvjp(fwd, bwd)``.

    ``f`` takes arrays (all its positional arguments are differentiated; pass constants by
    closure) and returns one array. ``fwd(*xs)`` returns ``(f(*xs), residuals)``;
    ``bwd(residuals, g)`` returns one gradient per input (a single array for one input;
    ``None`` for zero). Add ``f.defjvp(...)`` for forward mode.

    >>> @dualtape.custom_vjp
    ... def clip_grad(x):
    ...     return x
    >>> clip_grad.defvjp(lambda x: (x, None), lambda res, g: np.clip(g, -1.0, 1.0))
    <...>
    >>> dualtape.grad(lambda x: np.sum(clip_grad(x) * 5.0))(np.ones(2))
    array([1., 1.])
    """
    return CustomFunction(f)


def custom_jvp(f):
    """Give ``f`` a forward-mode rule: ``@f.defjvp`` on ``jvp(primals, tangents)`` returning
    ``(f(*primals), tangent of the output)``. Reverse mode then takes the jvp of each input
    element (fine for small inputs); add ``f.defvjp(...)`` for a cheaper reverse mode.

    >>> @dualtape.custom_jvp
    ... def softplus(x):
    ...     return np.logaddexp(0.0, x)
    >>> @softplus.defjvp
    ... def softplus_jvp(primals, tangents):
    ...     (x,), (t,) = primals, tangents
    ...     return softplus(x), t / (1.0 + np.exp(-x))
    >>> dualtape.derivative(softplus)(0.0)
    array(0.5)
    """
    return CustomFunction(f)


class Function:
    """Base class of an operation with its own derivative (DeZero, ``torch.autograd.Function``).

    Define ``forward(self, *xs)`` on float64 NumPy arrays, returning one array, and
    ``backward(self, gy)`` returning one gradient per input (a single array for one input).
    ``forward`` may keep what ``backward`` needs on ``self`` (``self.x = x``, or
    ``self.save_for_backward(x)`` and ``self.saved_tensors``): each call works on a fresh
    shallow copy of the instance, so a recorded tape replayed at a new point does not mix
    up its calls. Define ``jvp(self, *txs)`` (after ``forward`` ran on the copy) for forward
    mode. Call an instance (``Square()(x)``) or the class's ``apply`` (``Square.apply(x)``).

    >>> class Square(dualtape.Function):
    ...     def forward(self, x):
    ...         self.x = x
    ...         return x ** 2
    ...     def backward(self, gy):
    ...         return 2 * self.x * gy
    >>> dualtape.grad(lambda x: np.sum(Square.apply(x)))(np.array([1.0, 3.0]))
    array([2., 6.])
    """

    def forward(self, *xs):
        raise NotImplementedError(f"{type(self).__name__}.forward is not defined")

    def backward(self, gy):
        raise NotImplementedError(f"{type(self).__name__}.backward is not defined")

    def jvp(self, *txs):
        raise NotImplementedError(f"{type(self).__name__}.jvp is not defined")

    def save_for_backward(self, *arrays):
        self.saved_tensors = arrays

    def _rule(self):
        cls = type(self)
        name = cls.__name__

        def fwd(*xs):
            ctx = copy.copy(self)
            return ctx.forward(*xs), ctx

        def jvp(xs, ts):
            ctx = copy.copy(self)
            return ctx.forward(*xs), ctx.jvp(*ts)
        has_bwd = cls.backward is not Function.backward
        has_jvp = cls.jvp is not Function.jvp
        return Rule(name, fwd, (lambda ctx, g: ctx.backward(g)) if has_bwd else None,
                    jvp if has_jvp else None)

    def __call__(self, *args):
        return apply(self._rule(), args)

    @classmethod
    def apply(cls, *args):
        return cls()(*args)


# ---------------------------------------------------------------------------- dispatch

def apply(rule, args):
    """Run a rule on its arguments in whichever mode they are in."""
    from . import imperative
    if not args:
        raise TypeError(f"custom rule {rule.name} called without arguments")
    args = [lift(a) for a in args]
    if any(isinstance(a, imperative._Routed) for a in args):
        args = imperative._resolve(args, imperative.active())
    head = lead(args)
    if head is None:
        return rule.value([np.asarray(a, dtype=np.float64) for a in args])[0]
    if isinstance(head, Dual):
        return _dual(rule, head, args)
    if isinstance(head, Tracer):
        return _record(rule, head, args)
    raise TypeError(f"custom rule {rule.name} called on a {head._kind}")


def _dual(rule, head, args):
    vals, tans = zip(*(head._split(a) for a in args))
    vals = [v if isinstance(v, ADArray) else np.asarray(v, dtype=np.float64) for v in vals]
    y, cols = None, []
    for q in range(head.k):
        ts = [np.zeros(np.shape(v)) if t is None else t[..., q] for v, t in zip(vals, tans)]
        y, ty = rule.jvp_pair(vals, ts)
        cols.append(ty)
    if y is None:
        y = rule.value(vals)[0]
        return Dual(y, np.zeros(np.shape(y) + (0,)), head.tag)
    return Dual(_real(y, rule, "value"), np.stack(cols, axis=-1), head.tag)


def _record(rule, head, args):
    vals = [a.value if isinstance(a, Tracer) else np.asarray(a, dtype=np.float64)
            for a in args]
    y, _ = rule.value(vals)
    if len(args) == 1 and isinstance(args[0], Tracer):
        inp = args[0]
    else:
        inp = head._concat([a.reshape(-1) if isinstance(a, ADArray) else
                            np.asarray(a, dtype=np.float64).reshape(-1) for a in args])
    out = head._new(y.size, y.shape, y, inp.active)
    calls = head.rec.__dict__.setdefault("callbacks", [])
    calls.append(Callback(rule, [np.shape(v) for v in vals], y.shape))
    head.rec.emit(CALLBACK, out.off, y.size, inp.off, inp.size, aux=len(calls) - 1,
                  flags=int(inp.active))
    return out


class Callback:
    """One recorded use of a rule: the rule and the shapes of its inputs and output."""

    def __init__(self, rule, shapes, out_shape):
        self.rule, self.shapes, self.out_shape = rule, [tuple(s) for s in shapes], out_shape
        self.sizes = [int(np.prod(s, dtype=np.int64)) for s in self.shapes]

    def split(self, flat):
        parts, start = [], 0
        for shape, size in zip(self.shapes, self.sizes):
            parts.append(flat[start:start + size].reshape(shape).copy())
            start += size
        return parts


# ---------------------------------------------------------------------------- sweeps
# The compiled sweeps run between the instructions they hand back to Python: callbacks,
# which Python runs, and LINALG instructions (matrix functions), whose jitted rules
# (kernels.la_*) Python calls, so that they are compiled only when a tape has one. A slice
# of the rows is a valid program (instructions address slots), so a sweep resumes on the
# rows after (or before) the stop. In-place writes (scatters) are undone by the backward
# sweeps as they pass them and redone at their end; the drivers keep that bookkeeping
# whole across the pieces (``_redo``).

def code_of(prog):
    c = int(prog[K.H_CODE])
    return prog[c:c + int(prog[K.H_NCODE]) * K.NCOL].reshape(-1, K.NCOL)


def _linalg(code, i):
    """(side table, result, operand A, operand B, flags) of LINALG instruction i."""
    return code[i, K.AUX], code[i, K.OUT], code[i, K.A], code[i, K.B], code[i, K.FLAGS]


def _redo(prog, code, low, w, wt, k):
    """Redo the writes of rows low.. that a backward sweep stopped in front of left
    undone (the last piece redid those before it)."""
    if low < code.shape[0] and int(prog[K.H_FLAGS]) & K.HAS_SCATTER:
        K.replay_scatters(code[low:], prog, w, wt, k, False)


def forward(prog, code, w, calls, saved):
    """Values of every instruction, callbacks run in Python (their saved data in
    ``saved``). Returns a kernel status for the whole program."""
    s = 0
    while True:
        st = K.forward(code[s:], prog, w)
        if st == K.OK:
            return K.OK
        if st < K.CALL_STOP:
            return s + st if st >= 0 else st - s
        i = s + st - K.CALL_STOP
        s = i + 1
        if code[i, K.OP] == K.LINALG:
            p, o, a, b, _ = _linalg(code, i)
            K.la_forward(prog, p, w, o, a, b)
            continue
        o, n, a, na = code[i, K.OUT], code[i, K.N], code[i, K.A], code[i, K.NA]
        cb = calls[code[i, K.AUX]]
        y, saved[i] = cb.rule.value(cb.split(w[a:a + na]))
        if y.shape != cb.out_shape:
            raise ValueError(f"custom rule {cb.rule.name} returned shape {y.shape}; it was "
                             f"recorded with shape {cb.out_shape}")
        w[o:o + n] = y.reshape(-1)


def reverse(prog, code, w, calls, saved):
    """Adjoints from the output's adjoint in place, callbacks' vjps run in Python."""
    total = int(prog[K.H_TOTAL])
    stop = code.shape[0]
    while stop > 0:
        i = K.reverse(code[:stop], prog, w)
        if i < 0:
            break
        o, n, a, na = code[i, K.OUT], code[i, K.N], code[i, K.A], code[i, K.NA]
        g = w[total + o:total + o + n]
        if code[i, K.OP] == K.LINALG:
            p, o, a, b, flags = _linalg(code, i)
            K.la_reverse(prog, p, w, total, o, a, b, flags)
        elif g.any():
            cb = calls[code[i, K.AUX]]
            grads = cb.rule.vjp(saved[i], g.reshape(cb.out_shape).copy(), cb.shapes)
            w[total + a:total + a + na] += np.concatenate([gk.reshape(-1) for gk in grads])
        g[:] = 0.0
        stop = i
    _redo(prog, code, stop, w, w, 0)


def tangent(prog, code, w, wt, k, calls):
    """Tangents of k directions, callbacks' jvps run in Python."""
    s = 0
    while True:
        if s:   # the sweep starts by undoing the writes of its rows: they are undone
            _redo(prog, code, s, w, wt, 0)
        c = K.tangent(code[s:], prog, w, wt, k)
        if c < 0:
            return
        i = s + c
        s = i + 1
        o, n, a, na = code[i, K.OUT], code[i, K.N], code[i, K.A], code[i, K.NA]
        if code[i, K.OP] == K.LINALG:
            p, o, a, b, flags = _linalg(code, i)
            K.la_tangent(prog, p, w, wt, k, o, a, b, flags)
            continue
        cb = calls[code[i, K.AUX]]
        xs = cb.split(w[a:a + na])
        tin = wt[a * k:(a + na) * k].reshape(na, k)
        tout = wt[o * k:(o + n) * k].reshape(n, k)
        for q in range(k):
            ty = _real(cb.rule.jvp_pair(xs, cb.split(tin[:, q]))[1], cb.rule, "jvp")
            tout[:, q] = np.broadcast_to(ty, cb.out_shape).reshape(-1)


def reverse2(prog, code, w, wt, at, k):
    """Adjoints and adjoint tangents (forward-over-reverse), LINALG rules run from Python
    (second order through custom rules is refused before this)."""
    total = int(prog[K.H_TOTAL])
    stop = code.shape[0]
    while stop > 0:
        i = K.reverse2(code[:stop], prog, w, wt, at, k)
        if i < 0:
            break
        p, o, a, b, flags = _linalg(code, i)
        n = code[i, K.N]
        K.la_reverse2(prog, p, w, wt, at, k, total, o, a, b, flags)
        at[o * k:(o + n) * k] = 0.0
        K.la_reverse(prog, p, w, total, o, a, b, flags)
        w[total + o:total + o + n] = 0.0
        stop = i
    _redo(prog, code, stop, w, wt, k)


def hvp(prog, xin, V, out, w, wt, at):
    """``kernels.hvp`` for a program with LINALG instructions."""
    code = code_of(prog)
    w[:xin.shape[0]] = xin
    st = forward(prog, code, w, (), {})
    if st != K.OK:
        return st
    k = V.shape[1]
    total = int(prog[K.H_TOTAL])
    o, nx = int(prog[K.H_OUT]), int(prog[K.H_NX])
    out[0] = w[o]
    wt[:nx * k] = V.ravel()
    tangent(prog, code, w, wt, k, ())
    w[total + o] += 1.0
    reverse2(prog, code, w, wt, at, k)
    out[1:1 + nx] = w[total:total + nx]
    out[1 + nx:1 + nx + nx * k] = at[:nx * k]
    w[total:total + nx] = 0.0
    w[total + o] = 0.0
    at[:nx * k] = 0.0
    at[o * k:(o + 1) * k] = 0.0
    return K.OK


def vjp(prog, xin, seeds, out, w, calls):
    """``kernels.vjp`` for a program with callbacks."""
    code = code_of(prog)
    w[:xin.shape[0]] = xin
    saved = {}
    st = forward(prog, code, w, calls, saved)
    if st != K.OK:
        return st
    total = int(prog[K.H_TOTAL])
    o, m, nx = int(prog[K.H_OUT]), int(prog[K.H_NOUT]), int(prog[K.H_NX])
    out[:m] = w[o:o + m]
    for r in range(seeds.shape[0]):
        w[total + o:total + o + m] += seeds[r]
        reverse(prog, code, w, calls, saved)
        out[m + r * nx:m + (r + 1) * nx] = w[total:total + nx]
        w[total:total + nx] = 0.0
        w[total + o:total + o + m] = 0.0
    return K.OK


def jvp(prog, xin, V, out, w, wt, calls):
    """``kernels.jvp`` for a program with callbacks."""
    code = code_of(prog)
    w[:xin.shape[0]] = xin
    st = forward(prog, code, w, calls, {})
    if st != K.OK:
        return st
    k = V.shape[1]
    o, m, nx = int(prog[K.H_OUT]), int(prog[K.H_NOUT]), int(prog[K.H_NX])
    out[:m] = w[o:o + m]
    wt[:nx * k] = V.ravel()
    tangent(prog, code, w, wt, k, calls)
    out[m:m + m * k] = wt[o * k:(o + m) * k] if prog[K.H_OUTACT] else 0.0
    return K.OK


def evaluate(prog, xin, y, w, calls):
    code = code_of(prog)
    w[:xin.shape[0]] = xin
    st = forward(prog, code, w, calls, {})
    if st == K.OK:
        o = int(prog[K.H_OUT])
        y[:] = w[o:o + int(prog[K.H_NOUT])]
    return st


def names(calls):
    return ", ".join(sorted({cb.rule.name for cb in calls}))
