"""The imperative API (MXNet's ``autograd``, PyTorch's ``backward``) on the flat tape.

::

    x = dualtape.attach_grad(np.arange(4.0))
    with dualtape.record():
        y = 2 * np.dot(x, x)
    y.backward()
    x.grad                     # array([ 0.,  4.,  8., 12.])

Three kinds of values take part:

* a ``Variable`` (what ``attach_grad`` returns) wraps a float64 NumPy array and owns its
  gradient ``.grad``. Inside ``record()`` it is an input slot of the recording (its value
  is copied when the recording first uses it); anywhere else it is a plain NumPy array:
  every NumPy function and operator gives plain NumPy results, and in-place updates
  (``w -= lr * w.grad``, ``w[:] = 0``) change its data.
* a ``Recorded`` value is a tracer of the recording (``trace.Tracer``): the result of an
  operation inside ``record()``, carrying its value. ``y.backward()`` runs the reverse
  sweep of the kernels over the instructions that produced ``y``. Outside its recording
  (after the block, or under ``pause()``) it is a plain array too.
* everything else (NumPy arrays, numbers) is a constant.

A recording is a ``trace.Recorder`` like the one behind ``dualtape.tape``: the same
instructions, the same sweeps. ``backward`` finishes it into a program (cached while the
recording does not grow), moves the slots of the attached arrays to the front so that they
are the program's inputs, and calls ``kernels.vjp`` with the head gradient as the seed,
over the instructions up to the one that produced the output. The tape is never consumed:
``backward`` may be called again on any output, which is why ``retain_graph`` changes
nothing.

Why a wrapper and not a flag on the array (MXNet's ``x.attach_grad()``): a NumPy array
cannot hold a gradient, and an array that is not an ``ADArray`` would be taken for a
constant by the recording, silently. The wrapper is routed through the same NumPy layer as
the tracers, so it is an input whenever a recording is open and a plain array otherwise.
"""
import contextlib
import threading

import numpy as np

from . import kernels as K
from .dual import Dual
from .numpy_api import ADArray, lead, lift
from .ops import numpy_fn
from .tapes import as_float_array
from .trace import Recorder, Tracer, _state as _trace_state

__all__ = ["Variable", "attach_grad", "is_recording", "is_training", "no_grad", "pause",
           "predict_mode", "record", "stop_gradient", "train_mode"]

GRAD_REQS = ("write", "add")
_LEAD = (3, 0)    # above Dual's (1, tag) and Tracer's (0, 0): see _route
_local = threading.local()


# ---------------------------------------------------------------------------- scopes

def _scope():
    st = _local.__dict__
    if "recording" not in st:
        st.update(recording=None, on=False, training=False)
    return st


def active():
    """The recording that operations are appended to now, or None: the thread's open
    ``record()`` block, unless it is paused or a functional recording (``grad``, ``tape``)
    runs inside it (there, attached and recorded values are constants, as closures are)."""
    st = _scope()
    if st["on"] and getattr(_trace_state, "recorder", None) is None:
        return st["recording"]
    return None


@contextlib.contextmanager
def _set(recording, on, training):
    st = _scope()
    saved = (st["recording"], st["on"], st["training"])
    st.update(recording=recording, on=on, training=training)
    try:
        yield
    finally:
        st["recording"], st["on"], st["training"] = saved


def record(train_mode=True):
    """Record the operations on attached arrays (and on values computed from them) inside
    the ``with`` block, so that ``y.backward()`` can differentiate them.

    The outermost block starts a new recording; nested ``record()`` blocks (also inside
    ``pause()``) add to the same one. ``train_mode`` sets what ``is_training()`` returns
    inside the block (for code that behaves differently when training, such as dropout).
    Values recorded in one block cannot be used in a later block (their history is on the
    earlier tape): compute them in one block, or use ``y.detach()`` as a constant."""
    st = _scope()
    return _set(st["recording"] or Recording(), True, bool(train_mode))


def pause(train_mode=False):
    """Stop recording inside the block: attached arrays and recorded values are plain
    NumPy arrays there, and nothing is appended to the recording."""
    return _set(_scope()["recording"], False, bool(train_mode))


def no_grad():
    """PyTorch's name for ``pause()``; it keeps the training mode as it is."""
    return pause(train_mode=is_training())


def train_mode():
    """``is_training()`` is True inside the block; recording is unchanged."""
    st = _scope()
    return _set(st["recording"], st["on"], True)


def predict_mode():
    """``is_training()`` is False inside the block; recording is unchanged."""
    st = _scope()
    return _set(st["recording"], st["on"], False)


def is_recording():
    """True inside ``record()`` (and not inside ``pause()`` / ``no_grad()``)."""
    return active() is not None


def is_training():
    """True inside ``record()`` (unless ``train_mode=False``) and ``train_mode()``."""
    return _scope()["training"]


# ---------------------------------------------------------------------------- routing

def _resolve(a, rec):
    """What a value is in the recording ``rec`` (None: no recording is open)."""
    if isinstance(a, Variable):
        return a._data if rec is None else a._input(rec)
    if isinstance(a, Recorded):
        if a.rec is rec:
            return a
        if rec is not None:
            raise TypeError(
                "a value recorded in an earlier record() block was used in a new one; its "
                "history is on the earlier tape. Compute it inside the same record() "
                "block, or use y.detach() to take it as a constant")
        return a.value
    if type(a) in (list, tuple):
        return type(a)(_resolve(e, rec) for e in a)
    return a


def _plain(a):
    """a with every attached or recorded value replaced by its NumPy array."""
    if type(a) is dict:
        return {k: _plain(v) for k, v in a.items()}
    return _resolve(a, None)


_REDUCE = {"sum": np.sum, "prod": np.prod, "max": np.max, "min": np.min}
# the dispatch layer's primitives (numpy_api's table) evaluated on plain arrays
_PLAIN = {
    "_ew": lambda me, prim, args: np.asarray(numpy_fn(prim, "value")(*args)),
    "_take": lambda me, pos: me.reshape(-1)[pos],
    "_take_range": lambda me, start, shape: me.reshape(-1)[
        start:start + int(np.prod(shape, dtype=np.int64))].reshape(shape),
    "_view": lambda me, shape: me.reshape(shape),
    "_reduce": lambda me, kind, axis: np.asarray(_REDUCE[kind](me, axis=axis)),
    "_argreduce": lambda me, kind, axis: np.asarray(getattr(np, kind)(me, axis=axis)),
    "_cumulative": lambda me, kind, axis: getattr(np, kind)(me, axis=axis),
    "_matmul": lambda me, a, b: np.asarray(a, dtype=np.float64) @ np.asarray(b, np.float64),
    "_linalg": lambda me, sub, a, b, dims: K.la_eval(
        sub, *dims, np.ravel(np.asarray(a, dtype=np.float64)),
        np.ravel(np.asarray(b if b is not None else (), dtype=np.float64)))[0],
    "_concat": lambda me, items: np.concatenate(
        [np.asarray(a, dtype=np.float64).reshape(-1) for a in items]),
    "_truth": lambda me: bool(me),
    "_nonzero": lambda me: np.nonzero(me),
    "_argsort": lambda me, axis: np.argsort(me, axis=axis, kind="stable"),
    "_searchsorted": lambda me, a, v, side: np.searchsorted(a, v, side=side),
    "_constant": lambda me, arr: arr,
    "_index_traced": lambda me, key: me[key],
}
# the operands among which the leading one runs the primitive (the others: self)
_OPERANDS = {"_ew": lambda me, args: args[1], "_matmul": lambda me, args: args,
             "_searchsorted": lambda me, args: args[:2],
             "_linalg": lambda me, args: [a for a in args[1:3] if a is not None],
             "_concat": lambda me, args: list(args[0]) + [me]}


def _route(self, name, args):
    """Run primitive ``name`` of an attached or recorded value: on the open recording's
    tracers, on plain arrays when none is open, or on another ADArray (a Dual) that leads."""
    rec = active()
    me = _resolve(self, rec)
    args = _resolve(args, rec)
    pick = _OPERANDS.get(name)
    head = lead(pick(me, args)) if pick else (me if isinstance(me, ADArray) else None)
    if head is None:
        return _PLAIN[name](me, *args)
    if isinstance(head, Recorded):
        return getattr(Tracer, name)(head, *args)
    return getattr(head, name)(*args)


def _routed(name):
    def primitive(self, *args):
        return _route(self, name, args)
    primitive.__name__ = name
    return primitive


class _Routed:
    """What attached and recorded values share: primitives routed by ``_route``, and
    plain NumPy behaviour where no recording is open."""

    __slots__ = ()

    def _open(self):
        raise NotImplementedError

    def _array(self):
        raise NotImplementedError

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        if self._open():
            return ADArray.__array_ufunc__(self, ufunc, method, *inputs, **kwargs)
        return getattr(ufunc, method)(*_plain(inputs), **_plain(kwargs))

    def __array_function__(self, func, types, args, kwargs):
        if self._open():
            return ADArray.__array_function__(self, func, types, args, kwargs)
        return func(*_plain(args), **_plain(kwargs))

    def __array__(self, dtype=None, copy=None):
        if self._open():
            return ADArray.__array__(self, dtype, copy)
        arr = self._array()
        if dtype is not None:
            arr = arr.astype(dtype, copy=False)
        return arr.copy() if copy else arr

    def __float__(self):
        return ADArray.__float__(self) if self._open() else float(self._array())

    def __int__(self):
        return ADArray.__int__(self) if self._open() else int(self._array())

    def item(self, *args):
        return ADArray.item(self, *args) if self._open() else self._array().item(*args)

    def tolist(self):
        return ADArray.tolist(self) if self._open() else self._array().tolist()

    def copy(self):
        return _resolve(self, active()) if self._open() else self._array().copy()

    def astype(self, dtype, copy=True):
        if self._open():
            return ADArray.astype(self, dtype, copy)
        return self._array().astype(dtype, copy=copy)

    def asnumpy(self):
        """A NumPy copy of the value (MXNet's name)."""
        return np.array(self._array(), dtype=np.float64)

    def detach(self):
        """The same value without derivative (``stop_gradient``)."""
        return stop_gradient(self)


for _name in _PLAIN:
    setattr(_Routed, _name, _routed(_name))


# ---------------------------------------------------------------------------- values

class Recorded(_Routed, Tracer):
    """A value computed inside ``record()``: a tracer of the recording, with its value.
    ``backward()`` differentiates it; outside its recording it is a plain array."""

    __slots__ = ()
    _kind = "recorded value"

    def _open(self):
        return active() is not None

    def _array(self):
        return self.value

    @property
    def _order(self):
        return (0, 0) if self.rec is active() else _LEAD

    def __repr__(self):
        return f"Recorded({self.value!r})"

    def backward(self, head_gradient=None, retain_graph=None):
        """Gradients of this value into every attached array recorded before it.

        ``head_gradient`` (default: ones, that is the gradient of the sum of the elements)
        has this value's shape; the attached arrays receive ``head_gradient @ J``, written
        into their ``.grad`` (``grad_req="write"``) or added to it (``"add"``). Arrays
        attached before this value was computed that it does not depend on receive zero
        (written) or nothing (added). May be called again, on this or any other value of
        the recording: the tape is kept. ``retain_graph`` is accepted for PyTorch code and
        changes nothing.
        """
        self.rec.backward(self, _head(head_gradient, self.shape))

    @property
    def grad(self):
        raise AttributeError(
            "a recorded value has no .grad: only attached arrays keep gradients. Attach "
            "it inside the recording (u = dualtape.attach_grad(u)), which makes it a new "
            "input, to get its gradient")

    def attach_grad(self, grad_req="write"):
        raise TypeError("attach_grad returns a new array: write u = dualtape.attach_grad(u) "
                        "(a method cannot turn a recorded value into an input in place)")


class Variable(_Routed, ADArray):
    """An array with an attached gradient (``attach_grad``). Inside ``record()`` it is an
    input of the recording; elsewhere a plain NumPy array whose data may be updated in
    place. ``.grad`` has its shape; ``grad_req`` is ``"write"`` (each ``backward``
    overwrites it, MXNet's default) or ``"add"`` (each ``backward`` adds to it, as
    PyTorch does; clear it with ``zero_grad()``)."""

    __slots__ = ("_data", "grad", "grad_req")
    buf = src = None    # never a view of a traced array (numpy_api's in-place bookkeeping)

    def _buffer(self):
        return _resolve(self, active())._buffer()   # the recording's slot of this array
    _kind = "attached array"
    _order = _LEAD

    def __init__(self, data, grad_req="write"):
        if grad_req not in GRAD_REQS:
            raise ValueError(f"grad_req must be one of {GRAD_REQS}, got {grad_req!r}")
        self._data = np.array(as_float_array(data, "an attached array"), dtype=np.float64)
        self.grad = np.zeros_like(self._data)
        self.grad_req = grad_req

    @property
    def data(self):
        """The array itself (changing it changes the attached array)."""
        return self._data

    @property
    def shape(self):
        return self._data.shape

    @property
    def dtype(self):
        return self._data.dtype

    def _open(self):
        return active() is not None

    def _array(self):
        return self._data

    def _input(self, rec):
        """This array's input slot in the recording (made on first use, value copied)."""
        hit = rec.inputs.get(id(self))
        if hit is None:
            tracer = rec.input(self._data.copy(), active=True)
            hit = rec.inputs[id(self)] = (self, tracer, rec.code.n)
            rec.attached.append(hit)
        return hit[1]

    def __repr__(self):
        return f"Variable({self._data!r}, grad_req={self.grad_req!r})"

    def zero_grad(self):
        """Set the gradient to zero (in place)."""
        if self.grad is None:
            self.grad = np.zeros_like(self._data)
        else:
            self.grad[...] = 0.0

    def receive(self, g):
        if self.grad is None or self.grad.shape != self._data.shape:
            self.grad = np.zeros_like(self._data)
        if self.grad_req == "add":
            self.grad += g
        else:
            self.grad[...] = g

    def backward(self, head_gradient=None, retain_graph=None):
        """The gradient of this array with respect to itself: ``head_gradient`` (ones)."""
        self.receive(_head(head_gradient, self.shape))

    # ------------------------------------------------------------- in-place updates
    def _mutable(self, what):
        if active() is not None:
            raise TypeError(
                f"{what} of an attached array inside record() would change an input of the "
                "recording; update it outside the block or under dualtape.pause() "
                "(e.g. with dualtape.pause(): w -= lr * w.grad)")

    def __setitem__(self, key, value):
        self._mutable("x[...] = v")
        self._data[_plain(key)] = _plain(value)

    def _inplace(ufunc, sign):
        def op(self, other):
            self._mutable(f"x {sign} v")
            ufunc(self._data, _plain(other), out=self._data)
            return self
        return op

    __iadd__ = _inplace(np.add, "+=")
    __isub__ = _inplace(np.subtract, "-=")
    __imul__ = _inplace(np.multiply, "*=")
    __itruediv__ = _inplace(np.divide, "/=")
    __ipow__ = _inplace(np.power, "**=")
    del _inplace


def _head(h, shape):
    """The head gradient as a flat float64 array for an output of ``shape``."""
    if h is None:
        return np.ones(shape)
    h = np.asarray(_plain(h), dtype=np.float64)
    if h.shape != tuple(shape) and not (h.size == 1 and int(np.prod(shape)) == 1):
        raise ValueError(f"head_gradient has shape {h.shape}, expected the output's shape "
                         f"{tuple(shape)}")
    return h.reshape(shape)


def attach_grad(x, grad_req="write"):
    """An array with an attached gradient: a ``Variable`` holding a float64 copy of ``x``.

    Inside ``record()``, attaching a recorded value makes a new input with its value: its
    history is cut, so a later ``backward`` stops there and puts the gradient in its
    ``.grad``. Attaching a ``Variable`` again returns it with ``grad_req`` set and its
    gradient cleared.

    >>> x = dualtape.attach_grad(np.arange(4.0))
    >>> with dualtape.record():
    ...     y = 2 * np.dot(x, x)
    >>> y.backward()
    >>> x.grad
    array([ 0.,  4.,  8., 12.])
    """
    if isinstance(x, Variable):
        if grad_req not in GRAD_REQS:
            raise ValueError(f"grad_req must be one of {GRAD_REQS}, got {grad_req!r}")
        x.grad_req = grad_req
        x.grad = np.zeros_like(x._data)
        return x
    if isinstance(x, Recorded):
        return Variable(x.value, grad_req)
    if isinstance(x, ADArray):
        raise TypeError(f"attach_grad of a {x._kind}: only NumPy arrays and values recorded "
                        "by record() can be attached")
    return Variable(x, grad_req)


def stop_gradient(x):
    """x's value, with no derivative flowing through it, in every mode.

    On a tape (``record()``, ``grad``, ``tape``) the result reads the same slot as ``x`` but
    is marked constant, so a replay at a new point still computes it from the new inputs;
    on Dual numbers it is the value without tangents; on plain arrays it is the array.
    """
    x = lift(x)
    while isinstance(x, Dual):
        x = x.value
    rec = active()
    if isinstance(x, Variable):
        if rec is None:
            return x._data.copy()
        x = x._input(rec)
    elif isinstance(x, Recorded) and x.rec is not rec:
        return x.value.copy()
    if isinstance(x, Tracer):
        return Tracer(x.rec, x.off, x.shape, x.value, False)
    if isinstance(x, ADArray):
        raise TypeError(f"stop_gradient of a {x._kind} is not supported")
    return x


# ---------------------------------------------------------------------------- recording

class Recording(Recorder):
    """A ``record()`` block's tape: a Recorder whose tracers are ``Recorded`` values and
    whose inputs are the attached arrays, in order of first use."""

    tracer_type = Recorded

    def __init__(self):
        super().__init__()
        self.inputs = {}       # id(variable) -> (variable, tracer, instructions before it)
        self.attached = []     # the same, in order of first use
        self._program = None   # (key, prog, consts, layout, xin) while the tape is unchanged

    def program(self, y):
        """(prog, consts, layout, xin): the tape as a program whose inputs are the attached
        arrays' slots, moved to the front."""
        key = (self.code.n, self.ints.n, self.consts.n, self.nwork, len(self.attached))
        if self._program is None or self._program[0] != key:
            prog, consts = self.finish(y)
            slots = [(t.off, t.size) for _, t, _ in self.attached]
            layout = Layout(slots, int(prog[K.H_CONST]))
            layout.relocate(prog, self.slot_refs)
            xin = np.concatenate([t.value.reshape(-1) for _, t, _ in self.attached] +
                                 [np.zeros(0)])
            prog[K.H_NCALL] = len(getattr(self, "callbacks", ()))
            self._program = (key, prog, consts, layout, xin)
        return self._program[1:]

    def backward(self, y, head):
        prog, consts, layout, xin = self.program(y)
        prog = prog.copy()
        o = int(layout.map(np.array([y.off]))[0])
        last = last_writer(prog[prog[K.H_CODE]:].reshape(-1, K.NCOL), o)
        if last >= 0:
            cut = last + 1
            receivers = [(v, t) for v, t, at in self.attached if at < cut]
        else:     # y is (a view of) an attached array's slot: nothing to sweep
            cut = 0
            receivers = [(v, t) for v, t, _ in self.attached if t.off <= y.off < t.off + t.size]
        prog[K.H_NCODE] = cut
        prog[K.H_OUT], prog[K.H_NOUT] = o, y.size
        nx = xin.size
        prog[K.H_NIN] = prog[K.H_NX] = nx
        w = np.zeros(K.work_size(prog))
        cs = int(prog[K.H_CONST])
        w[cs:cs + consts.size] = consts
        out = np.empty(y.size + nx)
        seeds = np.ascontiguousarray(head.reshape(1, -1))
        calls = getattr(self, "callbacks", None)
        if calls or int(prog[K.H_FLAGS]) & K.HAS_LINALG:   # the sweeps return to Python
            from . import custom
            status = custom.vjp(prog, xin, seeds, out, w, calls)
        else:
            status = K.vjp(prog, xin, seeds, out, w)
        if status != K.OK:   # the values are those of the recording: no guard can flip
            raise RuntimeError(f"internal error: the sweep of a recording failed ({status})")
        g = out[y.size:]
        starts = layout.map(np.array([t.off for _, t in receivers], dtype=np.int64))
        for (v, t), s in zip(receivers, starts):
            v.receive(g[s:s + t.size].reshape(t.shape))


def last_writer(code, o):
    """Index of the last instruction that wrote value slot position ``o`` (as its result, or
    as an in-place write into the buffer holding it), or -1 for an input's slot."""
    hit = (code[:, K.OUT] <= o) & (o < code[:, K.OUT] + code[:, K.N])
    scatter = getattr(K, "SCATTER", None)     # in-place writes (issue 15): buffer at A, NA
    if scatter is not None:
        hit |= ((code[:, K.OP] == scatter) & (code[:, K.A] <= o) &
                (o < code[:, K.A] + code[:, K.NA]))
    found = np.flatnonzero(hit)
    return int(found[-1]) if found.size else -1


class Layout:
    """Moves the given slots (offset, length) of a program to the front of the value
    buffer, in the given order, and every other work slot behind them, order kept."""

    def __init__(self, slots, nwork):
        self.nwork = nwork
        order = sorted(range(len(slots)), key=lambda i: slots[i][0])
        sizes = np.array([s[1] for s in slots], dtype=np.int64)
        bases = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        self.starts = np.array([slots[i][0] for i in order], dtype=np.int64)
        self.sizes = sizes[order]
        self.bases = bases[order]
        self.moved = int(sizes.sum())
        # attached elements at or before each interval's end, for the shift of the others
        self.before = np.cumsum(self.sizes)

    def map(self, offs):
        offs = np.asarray(offs, dtype=np.int64)
        new = offs.copy()
        work = offs < self.nwork
        if not self.starts.size:
            return new
        k = np.searchsorted(self.starts, offs, side="right") - 1
        kk = np.maximum(k, 0)
        inside = work & (k >= 0) & (offs < self.starts[kk] + self.sizes[kk])
        new[inside] = self.bases[kk[inside]] + offs[inside] - self.starts[kk[inside]]
        other = work & ~inside
        # elements of moved slots that lie before offs: those of intervals ending at or
        # before it (k and below, since no interval contains it)
        passed = np.where(k >= 0, self.before[kk], 0)
        new[other] = offs[other] + self.moved - passed[other]
        return new

    def relocate(self, prog, slot_refs):
        """Rewrite every slot reference of a finished program (in place)."""
        c = int(prog[K.H_CODE])
        code = prog[c:].reshape(-1, K.NCOL)
        for col in (K.OUT, K.A, K.B, K.C):
            code[:, col] = self.map(code[:, col])
        refs = np.asarray(slot_refs, dtype=np.int64)
        if refs.size:
            prog[refs] = self.map(prog[refs])
