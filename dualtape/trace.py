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
import math
import threading

import numpy as np

from . import kernels as K
from . import ops
from .numpy_api import ADArray, basic_range, current, has_traced_index, lift, positions

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
        self.flags = 0             # header flags (kernels.HAS_SCATTER)

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
        value = np.array(value, dtype=np.float64)   # a copy: f may write into its input
        return Tracer(self, self.alloc(value.size), value.shape, value, active)

    # ------------------------------------------------------------------ finalize
    def finish(self, out):
        """The program and constant arrays, constants moved behind the work slots."""
        if isinstance(out, Tracer):
            current(out)
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
        ints[K.H_FLAGS] = self.flags
        if self.flags & K.HAS_SCATTER and getattr(self, "callbacks", None):
            raise NotImplementedError(
                "a function with both a custom derivative rule and an in-place update "
                "(x[key] = v, x += v on an aliased array) cannot be recorded yet; build the "
                "array with np.where / np.concatenate, or apply the rule to a copy")
        return np.concatenate([ints, code.ravel()]), consts


def _flags(*bits):
    return sum(1 << k for k, b in enumerate(bits) if b)


class Tracer(ADArray):
    """An array being recorded: a slot (offset into the value buffer), a shape, the value
    at the recording point, and whether it depends on a differentiated input."""

    __slots__ = ("rec", "off", "shape", "value", "active", "buf", "src")
    _kind = "traced value"
    _order = (0, 0)

    # -- hook for dualtape.imperative: a recorder chooses the class of its tracers (the
    # imperative API's recorded values know whether their recording is still open)
    def __new__(cls, rec, *args):
        return object.__new__(rec.tracer_type)

    def __init__(self, rec, off, shape, value, active, buf=None, src=None):
        self.rec = rec
        self.off = off
        self.shape = tuple(shape)
        self.value = value
        self.active = active
        self.buf = buf     # numpy_api.Buffer shared with contiguous views (None: not yet)
        self.src = src     # ((Buffer, version), ...) when standing for a NumPy view

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
            current(a)
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

    def _shared(self, off, shape, value):
        """A contiguous view: same Buffer, same slot memory."""
        current(self)
        b = self._buffer()
        out = Tracer(self.rec, off, shape, value, self.active, b, self.src)
        if not self.active:
            b.members.append(out)     # turns differentiable with its buffer
        return out

    def _take(self, pos):
        current(self)
        pos = np.asarray(pos, dtype=np.int64)
        value = self.value.reshape(-1)[pos]
        out = self._new(pos.size, pos.shape, value, self.active)
        p = self.rec.add_ints(pos)
        self.rec.emit(ops.OPCODES["gather"], out.off, pos.size, self.off, self.size, aux=p,
                      flags=int(self.active))
        return out

    def _take_range(self, start, shape):
        n = math.prod(shape)
        self._buffer()
        value = self.value.reshape(-1)[start:start + n].reshape(shape)
        return self._shared(self.off + start, shape, value)

    def _view(self, shape):
        self._buffer()
        return self._shared(self.off, shape, self.value.reshape(shape))

    # ------------------------------------------------------------------ in place
    def _own(self):
        self.value = np.array(self.value)    # private, contiguous, writable

    def _copy(self):
        current(self)
        out = self._new(self.size, self.shape, np.array(self.value), self.active)
        if self.size:
            self.rec.emit(ops.OPCODES["copy"], out.off, self.size, self.off, self.size,
                          flags=int(self.active))
        return out

    def _fill(self, shape, v):
        n = math.prod(shape)
        if isinstance(v, Tracer):
            off, active, value = v.off, v.active, v.value.reshape(())
        else:
            off, active, value = self.rec.const(np.float64(v)), False, v
        out = self._new(n, shape, np.full(shape, value, dtype=np.float64), active)
        if n:
            self.rec.emit(ops.OPCODES["copy"], out.off, n, off, 1, flags=int(active))
        return out

    def _become(self, other):
        if not isinstance(other, Tracer) or other.rec is not self.rec:
            raise TypeError(f"cannot update a traced value in place with a {type(other)}")
        self.off, self.value, self.active = other.off, other.value, other.active
        self.buf, self.src = other.buf, other.src
        if other.buf is not None:
            other.buf.members.append(self)

    def _write(self, key, value):
        """self[key] = value: one SCATTER into the buffer's slot (see kernels)."""
        b = self._buffer()
        root = b.root
        if root.value.dtype.kind != "f":
            raise NotImplementedError(
                f"in-place update of a traced {root.value.dtype} array (a mask or an index) is "
                "not supported: build it with np.where, or make a float buffer")
        base = self.off - root.off
        dyn = None
        if has_traced_index(key):
            dyn, wrap, tshape = self._traced_positions(key)
            flat = base + np.asarray(dyn.value, dtype=np.int64).reshape(-1)
            if wrap:
                flat = np.where(flat < base, flat + self.size, flat)
        else:
            run = basic_range(self.shape, key)
            if run is not None:
                start, tshape, step = run
                flat = base + start + step * np.arange(math.prod(tshape), dtype=np.int64)
            else:
                pos = positions(self)[key]
                tshape, flat = pos.shape, base + pos.reshape(-1)
        n = flat.size
        v, vshape = value, np.shape(value)
        while len(vshape) > len(tshape) and vshape[0] == 1:
            vshape = vshape[1:]
        if isinstance(v, ADArray) and not isinstance(v, Tracer):
            raise TypeError(f"cannot write a {v._kind} into a traced value")
        if isinstance(v, Tracer):
            if v.rec is not self.rec:
                self._slot(v, (), 1)   # raises the other-recording error
            current(v)
            bpos = np.broadcast_to(np.arange(v.size).reshape(vshape), tshape)
            if v.size not in (1, n):
                v = v._take(bpos)
            if (dyn is None and v.buf is b and v.off - root.off == (flat[0] if n else 0)
                    and v.size == n and (n < 2 or (np.diff(flat) == 1).all())):
                return            # x[k] = x[k], as in the last step of x[k] += y
            if root.off < v.off + v.size and v.off < root.off + root.size:
                v = v._copy()     # the value reads the buffer it overwrites (x[1:] = x[:-1])
            voff, nb, vact, vval = v.off, v.size, v.active, np.broadcast_to(
                v.value.reshape(vshape), tshape)
        else:
            arr = np.asarray(v)
            if arr.dtype.kind == "c":
                raise TypeError("complex values are not supported by dualtape yet")
            vval = np.broadcast_to(arr.astype(np.float64).reshape(vshape), tshape)
            nb = 1 if arr.size == 1 else n
            voff = self.rec.const(vval if nb == n else vval.reshape(-1)[:1])
            vact = False
        root.value.reshape(-1)[flat] = vval.reshape(-1) if n else vval
        if n == 0:
            return
        rec = self.rec
        if dyn is not None:
            if root.off < dyn.off + dyn.size and dyn.off < root.off + root.size:
                dyn = dyn._copy()
            p = rec.add_ints((base, self.size, int(wrap)))
            c = dyn.off
        else:
            c = 0
            step = int(flat[1] - flat[0]) if n > 1 else 1
            if step != 0 and (n < 3 or (np.diff(flat) == step).all()):
                p = rec.add_ints((step, int(flat[0])))
            else:
                p = rec.add_ints(np.concatenate([[0], flat]))
        rec.emit(ops.OPCODES["scatter"], rec.alloc(n), n, root.off, root.size, voff, nb, c,
                 n if dyn is not None else 0, aux=p, flags=_flags(root.active, vact))
        rec.flags |= K.HAS_SCATTER
        if vact and not root.active:
            for m in b.members:
                m.active = True
            b.members = []

    def _concat(self, items):
        entries, values, active = [], [], False
        for a in items:
            if isinstance(a, Tracer):
                current(a)
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
        current(self)
        np_fn = {"sum": np.sum, "prod": np.prod, "max": np.max, "min": np.min}[kind]
        value = np.asarray(np_fn(self.value, axis=axis))
        out = self._new(value.size, value.shape, value, self.active)
        p = self.rec.add_ints(self._shape3(axis))
        self.rec.emit(ops.OPCODES["reduce_" + kind], out.off, value.size, self.off, self.size,
                      aux=p, flags=int(self.active))
        return out

    def _cumulative(self, kind, axis):
        current(self)
        value = getattr(np, kind)(self.value, axis=axis)
        out = self._new(value.size, value.shape, value, self.active)
        p = self.rec.add_ints(self._shape3(axis))
        self.rec.emit(ops.OPCODES[kind], out.off, value.size, self.off, self.size, aux=p,
                      flags=int(self.active))
        return out

    def _argreduce(self, kind, axis):
        current(self)
        value = np.asarray(getattr(np, kind)(self.value, axis=axis))
        out = self._new(value.size, value.shape, value, False)
        p = self.rec.add_ints(self._shape3(axis))
        self.rec.emit(ops.OPCODES[kind], out.off, value.size, self.off, self.size, aux=p)
        return out

    def _argsort(self, axis):
        """ARGSORT: stable sorting positions along axis, recomputed at replay."""
        current(self)
        value = np.argsort(self.value, axis=axis, kind="stable")
        out = self._new(value.size, value.shape, value, False)
        p = self.rec.add_ints(self._shape3(axis))
        self.rec.emit(ops.OPCODES["argsort"], out.off, value.size, self.off, self.size, aux=p)
        return out

    def _searchsorted(self, a, v, side):
        """SEARCHSORTED: insertion positions of v in the sorted vector a (either traced)."""
        va, vv = (x.value if isinstance(x, Tracer) else x for x in (a, v))
        value = np.asarray(np.searchsorted(va, vv, side=side))
        (oa, na, _), (ov, nv, _) = self._slot_2d(a), self._slot_2d(v)
        out = self._new(value.size, value.shape, value, False)
        self.rec.emit(ops.OPCODES["searchsorted"], out.off, value.size, oa, na, ov, nv,
                      aux=int(side == "right"))
        return out

    def _constant(self, arr):
        """A plain array as an inactive tracer of a constant slot (an operand that a
        dynamic gather can read)."""
        arr = np.asarray(arr)
        return Tracer(self.rec, self.rec.const(arr), arr.shape, arr, False)

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

    def _linalg(self, sub, a, b, dims):
        """One LINALG instruction (kernels.la_*): a matrix function of a stack of matrices,
        evaluated by the kernels' own code so that recording and replay agree."""
        nb, n, r = dims
        (oa, na, act_a) = self._slot_2d(a)
        (ob, nbb, act_b) = self._slot_2d(b) if b is not None else (0, 0, False)
        va = a.value if isinstance(a, Tracer) else np.asarray(a, dtype=np.float64)
        vb = (b.value if isinstance(b, Tracer) else np.asarray(b, dtype=np.float64)) \
            if b is not None else np.zeros(0)
        value, _ = K.la_eval(sub, nb, n, r, np.ravel(va), np.ravel(vb))
        out = self._new(value.size, value.shape, value, act_a or act_b)
        p = self.rec.add_ints((sub, nb, n, r))
        self.rec.emit(ops.OPCODES["linalg"], out.off, value.size, oa, na, ob, nbb, aux=p,
                      flags=_flags(act_a, act_b))
        self.rec.flags |= K.HAS_LINALG
        return out

    def _slot_2d(self, a):
        if isinstance(a, Tracer):
            current(a)
            return a.off, a.size, a.active
        arr = np.ascontiguousarray(a, dtype=np.float64)
        return self.rec.const(arr), arr.size, False

    def _truth(self):
        current(self)
        outcome = bool(self.value)
        self.rec.emit(ops.OPCODES["guard"], 0, 0, self.off, 1, aux=int(outcome))
        return outcome

    def _nonzero(self):
        current(self)
        flat = self.value.reshape(-1)
        idx = np.flatnonzero(flat)
        out = self._new(idx.size, idx.shape, idx, False)
        self.rec.emit(ops.OPCODES["nonzero"], out.off, idx.size, self.off, self.size)
        if self.ndim <= 1:
            return (out,)
        coords, stride = [], 1
        for dim in reversed(self.shape):
            c = np.remainder(np.floor_divide(out, stride), dim)
            c.value = c.value.astype(np.int64)   # exact integers: usable as an index
            coords.append(c)
            stride *= dim
        return tuple(reversed(coords))

    def _gather_dyn(self, idx, wrap):
        """self.ravel()[idx] with positions computed at replay."""
        current(self)
        pos = idx.value.astype(np.int64)
        value = self.value.reshape(-1)[pos]
        out = self._new(pos.size, pos.shape, value, self.active)
        self.rec.emit(ops.OPCODES["gather_dyn"], out.off, pos.size, self.off, self.size,
                      idx.off, idx.size, aux=int(wrap), flags=int(self.active))
        return out

    def _index_traced(self, key):
        flat, wrap, shape = self._traced_positions(key)
        return self.reshape(-1)._gather_dyn(flat, wrap).reshape(shape)

    def _traced_positions(self, key):
        """(flat positions in self as a traced vector, whether negatives wrap, shape of the
        selection) for a key holding a traced index or mask."""
        current(self)
        keys = key if isinstance(key, tuple) else (key,)
        if len(keys) != 1:
            return self._traced_multi(keys)
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
            rest = self.shape[k.ndim:]
        elif kind in "iu":
            rest = self.shape[1:]
            if not rest:
                return k.reshape(-1), True, k.shape
            n0 = self.shape[0]
            rows = np.where(k < 0, k + n0, k)
        else:
            raise IndexError("arrays used as indices must be of integer (or boolean) type")
        size = math.prod(rest)
        flat = rows if size == 1 else rows.reshape(rows.shape + (1,)) * size + np.arange(size)
        return flat.reshape(-1), False, rows.shape + tuple(rest)

    def _traced_multi(self, keys):
        """_traced_positions for a tuple of integer indices (arrays or ints, some traced)
        on the leading axes, as NumPy's advanced indexing: broadcast together, the
        trailing axes taken whole. Each traced index is wrapped and bounds-checked against
        its own axis at replay by a gather from arange(n) (an index out of bounds on one
        axis must not land on a valid flat position)."""
        m = len(keys)
        if m > self.ndim:
            raise IndexError(f"too many indices for array: array is {self.ndim}-dimensional, "
                             f"but {m} were indexed")
        lin, shapes = None, []
        for d, k in enumerate(keys):
            n = self.shape[d]
            if isinstance(k, ADArray) and not isinstance(k, Tracer):
                raise TypeError(f"cannot index a traced value with a {k._kind}")
            if not isinstance(k, Tracer):
                k = lift(np.asarray(k, dtype=object)) if isinstance(k, list) else k
            if isinstance(k, Tracer):
                if k.value.dtype.kind not in "iu":
                    raise NotImplementedError(
                        "indexing with a traced mask combined with other indices is not "
                        "supported yet; use x[mask] on the leading axes, or np.nonzero(mask)")
                axis = self._constant(np.arange(n, dtype=np.int64))
                kk = axis._gather_dyn(k.reshape(-1), True).reshape(k.shape)
            else:
                k = np.asarray(k)
                if k.dtype.kind not in "iu":
                    raise NotImplementedError(
                        "indexing with a traced index combined with slices, masks or "
                        "newaxis is not supported yet; index with integer arrays on the "
                        "leading axes (x[i, j]), or one axis at a time")
                if k.size and (k.min() < -n or k.max() >= n):
                    raise IndexError(f"index out of bounds for axis {d} with size {n}")
                kk = np.where(k < 0, k + n, k)
            stride = math.prod(self.shape[d + 1:m])
            term = kk * stride if stride != 1 else kk
            lin = term if lin is None else lin + term
            shapes.append(np.shape(k))
        shape = np.broadcast_shapes(*shapes)
        lin = np.broadcast_to(lin, shape)
        size = math.prod(self.shape[m:])
        flat = lin if size == 1 else lin.reshape(shape + (1,)) * size + np.arange(size)
        return flat.reshape(-1), False, shape + self.shape[m:]


Recorder.tracer_type = Tracer   # see Tracer.__new__ (imperative API hook)
