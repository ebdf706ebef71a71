"""Recording: run f on tracers and append one instruction per operation to flat arrays.

A ``Tracer`` stands for an array while ``f`` runs. It carries the value at the recording
point (so that ``if``/``while`` can be answered and shapes are known) and its slot in the
tape's value buffer. Every operation evaluates with NumPy, exactly as ``f`` would, and
appends an instruction to the ``Recorder``'s growable arrays (amortised doubling: no Python
object per element). Contiguous slices and reshapes are views: a new offset into the same
slot, no instruction.

What depends on a traced value stays traced: comparisons give traced truth values, argmax
gives a traced index, a mask or an index used to select is recomputed at replay (gathers
whose positions live in the value buffer), and ``bool()`` of a traced value records a
guard that the replay checks (``kernels.forward`` stops at the first flip).
"""
import threading

import numpy as np

from . import kernels as K
from . import ops
from .numpy_api import ADArray, positions

CONST_BASE = 1 << 40     # slot offsets at or above this are constants until finalize
_state = threading.local()


class Grow:
    """A NumPy array with amortised doubling (rows of ``width`` or a flat vector)."""

    def __init__(self, dtype, width=None, capacity=64):
        shape = (capacity,) if width is None else (capacity, width)
        self.data = np.zeros(shape, dtype=dtype)
        self.n = 0

    def _reserve(self, extra):
        need = self.n + extra
        if need > self.data.shape[0]:
            cap = max(need, 2 * self.data.shape[0])
            new = np.zeros((cap,) + self.data.shape[1:], dtype=self.data.dtype)
            new[:self.n] = self.data[:self.n]
            self.data = new

    def append(self, row):
        self._reserve(1)
        self.data[self.n] = row
        self.n += 1
        return self.n - 1

    def extend(self, values):
        values = np.asarray(values).ravel()
        self._reserve(values.size)
        self.data[self.n:self.n + values.size] = values
        self.n += values.size
        return self.n - values.size

    def view(self):
        return self.data[:self.n]


class Recorder:
    """The growable tape being written."""

    def __init__(self):
        self.code = Grow(np.int64, K.NCOL)
        self.ints = Grow(np.int64)
        self.ints.extend(np.zeros(K.HEADER, dtype=np.int64))
        self.consts = Grow(np.float64)
        self.nwork = 0
        self._const_ids = {}       # id(array) -> (array, offset)
        self._scalars = {}         # float bits -> offset
        self.slot_refs = []        # positions in ints that hold slot offsets

    def alloc(self, n):
        off = self.nwork
        self.nwork += n
        return off

    def emit(self, op, out, n, a=0, na=0, b=0, nb=0, c=0, nc=0, aux=0, flags=0):
        return self.code.append((op, out, n, a, na, b, nb, c, nc, aux, flags))

    def add_ints(self, values):
        return self.ints.extend(np.asarray(values, dtype=np.int64))

    def const(self, arr):
        """Slot of a constant array (deduplicated by identity, scalars by value)."""
        arr = np.asarray(arr)
        if arr.size == 1:
            v = float(arr.reshape(-1)[0])
            key = np.float64(v).tobytes()
            if key not in self._scalars:
                self._scalars[key] = CONST_BASE + self.consts.extend([v])
            return self._scalars[key]
        hit = self._const_ids.get(id(arr))
        if hit is not None and hit[0] is arr:
            return hit[1]
        off = CONST_BASE + self.consts.extend(np.ascontiguousarray(arr, dtype=np.float64))
        self._const_ids[id(arr)] = (arr, off)
        return off

    def input(self, value, active):
        value = np.asarray(value, dtype=np.float64)
        return Tracer(self, self.alloc(value.size), value.shape, value, active)

    # ------------------------------------------------------------------ finalize
    def finish(self, out):
        """The program and constant arrays, constants moved behind the work slots."""
        if isinstance(out, Tracer):
            out_off, out_n = out.off, out.size
        else:
            arr = np.asarray(out, dtype=np.float64)
            out_off, out_n = self.const(arr if arr.size != 1 else arr.copy()), arr.size
        cs = self.nwork
        code = self.code.view().copy()
        for col in (K.A, K.B, K.C):
            mask = code[:, col] >= CONST_BASE
            code[mask, col] += cs - CONST_BASE
        ints = self.ints.view().copy()
        for p in self.slot_refs:
            if ints[p] >= CONST_BASE:
                ints[p] += cs - CONST_BASE
        if out_off >= CONST_BASE:
            out_off += cs - CONST_BASE
        consts = self.consts.view().copy()
        ints[K.H_TOTAL] = cs + consts.size
        ints[K.H_CONST] = cs
        ints[K.H_OUT] = out_off
        ints[K.H_NOUT] = out_n
        ints[K.H_OUTACT] = int(isinstance(out, Tracer) and out.active)
        ints[K.H_CODE] = ints.size
        ints[K.H_NCODE] = code.shape[0]
        return np.concatenate([ints, code.ravel()]), consts


def _flags(*bits):
    return sum(1 << k for k, b in enumerate(bits) if b)


class Tracer(ADArray):
    """An array being recorded: a slot (offset into the value buffer), a shape, the value
    at the recording point, and whether it depends on a differentiated input."""

    __slots__ = ("rec", "off", "shape", "value", "active")
    _kind = "traced value"
    _order = (0, 0)

    # -- hook for dualtape.imperative: a recorder chooses the class of its tracers (the
    # imperative API's recorded values know whether their recording is still open)
    def __new__(cls, rec, *args):
        return object.__new__(rec.tracer_type)

    def __init__(self, rec, off, shape, value, active):
        self.rec = rec
        self.off = off
        self.shape = tuple(shape)
        self.value = value
        self.active = active

    @property
    def dtype(self):
        return self.value.dtype

    def __repr__(self):
        return f"Tracer(shape={self.shape}, slot={self.off}, value={self.value!r})"

    def _new(self, n, shape, value, active):
        return Tracer(self.rec, self.rec.alloc(n), shape, np.asarray(value), active)

    def _slot(self, a, shape, n):
        """(offset, length, active) of an elementwise operand broadcast to ``shape``."""
        if isinstance(a, Tracer):
            if a.rec is not self.rec:
                raise TypeError(
                    "a traced value from another recording was used. Differentiating a "
                    "function that itself calls grad/jacobian/tape is not supported: use "
                    "dualtape.hessian or dualtape.hvp for second derivatives. (Or a traced "
                    "value escaped from f, e.g. into a global.)")
            if a.size not in (1, n):
                a = a._take(np.broadcast_to(positions(a), shape))
            return a.off, a.size, a.active
        if isinstance(a, ADArray):
            raise TypeError(f"cannot mix a {a._kind} into a recording")
        arr = np.asarray(a)
        if arr.size not in (1, n):
            arr = np.ascontiguousarray(np.broadcast_to(arr, shape))
        return self.rec.const(arr), arr.size, False

    # ------------------------------------------------------------------ primitives
    def _ew(self, prim, args):
        vals = [a.value if isinstance(a, Tracer) else a for a in args]
        value = np.asarray(ops.numpy_fn(prim, "value")(*vals))
        n = value.size
        slots = [self._slot(a, value.shape, n) for a in args]
        bits = [act and prim.diff and prim.d[k] is not None for k, (_, _, act) in
                enumerate(slots)]
        out = self._new(n, value.shape, value, any(bits))
        flat = [v for off, ln, _ in slots for v in (off, ln)]
        flat += [0] * (6 - len(flat))
        self.rec.emit(prim.code, out.off, n, *flat, flags=_flags(*bits))
        return out

    def _take(self, pos):
        pos = np.asarray(pos, dtype=np.int64)
        value = self.value.reshape(-1)[pos]
        out = self._new(pos.size, pos.shape, value, self.active)
        p = self.rec.add_ints(pos)
        self.rec.emit(ops.OPCODES["gather"], out.off, pos.size, self.off, self.size, aux=p,
                      flags=int(self.active))
        return out

    def _take_range(self, start, shape):
        n = int(np.prod(shape, dtype=np.int64))
        value = self.value.reshape(-1)[start:start + n].reshape(shape)
        return Tracer(self.rec, self.off + start, shape, value, self.active)

    def _view(self, shape):
        return Tracer(self.rec, self.off, shape, self.value.reshape(shape), self.active)

    def _concat(self, items):
        entries, values, active = [], [], False
        for a in items:
            if isinstance(a, Tracer):
                entries.append((a.off, a.size, int(a.active)))
                values.append(a.value.reshape(-1))
                active |= a.active
            else:
                arr = np.asarray(a, dtype=np.float64).reshape(-1)
                entries.append((self.rec.const(arr), arr.size, 0))
                values.append(arr)
        value = np.concatenate(values)
        out = self._new(value.size, value.shape, value, active)
        p = self.rec.add_ints([len(entries)] + [v for e in entries for v in e])
        self.rec.slot_refs.extend(p + 1 + 3 * q for q in range(len(entries)))
        self.rec.emit(ops.OPCODES["concat"], out.off, value.size, aux=p, flags=int(active))
        return out

    def _shape3(self, axis):
        if axis is None:
            return 1, self.size, 1
        s = self.shape
        return (int(np.prod(s[:axis], dtype=np.int64)), s[axis],
                int(np.prod(s[axis + 1:], dtype=np.int64)))

    def _reduce(self, kind, axis):
        np_fn = {"sum": np.sum, "prod": np.prod, "max": np.max, "min": np.min}[kind]
        value = np.asarray(np_fn(self.value, axis=axis))
        out = self._new(value.size, value.shape, value, self.active)
        p = self.rec.add_ints(self._shape3(axis))
        self.rec.emit(ops.OPCODES["reduce_" + kind], out.off, value.size, self.off, self.size,
                      aux=p, flags=int(self.active))
        return out

    def _argreduce(self, kind, axis):
        value = np.asarray(getattr(np, kind)(self.value, axis=axis))
        out = self._new(value.size, value.shape, value, False)
        p = self.rec.add_ints(self._shape3(axis))
        self.rec.emit(ops.OPCODES[kind], out.off, value.size, self.off, self.size, aux=p)
        return out

    def _matmul(self, a, b):
        (m, k), (k2, n) = np.shape(a), np.shape(b)
        va = a.value if isinstance(a, Tracer) else np.asarray(a, dtype=np.float64)
        vb = b.value if isinstance(b, Tracer) else np.asarray(b, dtype=np.float64)
        value = va @ vb
        (oa, _, act_a), (ob, _, act_b) = self._slot_2d(a), self._slot_2d(b)
        out = self._new(m * n, (m, n), value, act_a or act_b)
        p = self.rec.add_ints((m, k, n))
        self.rec.emit(ops.OPCODES["matmul"], out.off, m * n, oa, m * k, ob, k * n, aux=p,
                      flags=_flags(act_a, act_b))
        return out

    def _slot_2d(self, a):
        if isinstance(a, Tracer):
            return a.off, a.size, a.active
        arr = np.ascontiguousarray(a, dtype=np.float64)
        return self.rec.const(arr), arr.size, False

    def _truth(self):
        outcome = bool(self.value)
        self.rec.emit(ops.OPCODES["guard"], 0, 0, self.off, 1, aux=int(outcome))
        return outcome

    def _nonzero(self):
        flat = self.value.reshape(-1)
        idx = np.flatnonzero(flat)
        out = self._new(idx.size, idx.shape, idx, False)
        self.rec.emit(ops.OPCODES["nonzero"], out.off, idx.size, self.off, self.size)
        if self.ndim <= 1:
            return (out,)
        coords, stride = [], 1
        for dim in reversed(self.shape):
            coords.append(np.remainder(np.floor_divide(out, stride), dim))
            stride *= dim
        return tuple(reversed(coords))

    def _gather_dyn(self, idx, wrap):
        """self.ravel()[idx] with positions computed at replay."""
        pos = idx.value.astype(np.int64)
        value = self.value.reshape(-1)[pos]
        out = self._new(pos.size, pos.shape, value, self.active)
        self.rec.emit(ops.OPCODES["gather_dyn"], out.off, pos.size, self.off, self.size,
                      idx.off, idx.size, aux=int(wrap), flags=int(self.active))
        return out

    def _index_traced(self, key):
        keys = key if isinstance(key, tuple) else (key,)
        if len(keys) != 1:
            raise NotImplementedError(
                "indexing with a traced index combined with other indices is not supported "
                "yet; index one axis at a time (x[idx] selects along the first axis)")
        k = keys[0]
        if not isinstance(k, Tracer):
            from .numpy_api import lift
            k = lift(np.asarray(k, dtype=object))
        kind = k.value.dtype.kind
        if kind == "b":
            if k.shape != self.shape[:k.ndim]:
                raise IndexError(f"boolean index of shape {k.shape} does not match the "
                                 f"indexed array of shape {self.shape}")
            (rows,) = k.reshape(-1)._nonzero()
            return self._rows(rows, self.shape[k.ndim:], wrap=False)
        if kind in "iu":
            rest = self.shape[1:]
            if not rest:
                return self._gather_dyn(k, wrap=True)
            n0 = self.shape[0]
            rows = np.where(k < 0, k + n0, k)
            return self._rows(rows, rest, wrap=False)
        raise IndexError("arrays used as indices must be of integer (or boolean) type")

    def _rows(self, rows, rest, wrap):
        size = int(np.prod(rest, dtype=np.int64))
        flat_self = self.reshape(-1)
        if size == 1:
            out = flat_self._gather_dyn(rows.reshape(-1), wrap)
        else:
            flat = rows.reshape(rows.shape + (1,)) * size + np.arange(size)
            out = flat_self._gather_dyn(flat.reshape(-1), wrap)
        return out.reshape(rows.shape + tuple(rest))


Recorder.tracer_type = Tracer   # see Tracer.__new__ (imperative API hook)
