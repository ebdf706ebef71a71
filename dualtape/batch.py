"""Batched replay: one tape at many points in parallel (``numba.prange``).

One kernel, ``sweep``, splits the points into one chunk per thread; a chunk allocates
its own workspace (constants copied in) and runs an ordinary entry (``kernels.evaluate``,
``grad``, ``jvp``) point after point, writing a status per point. It is a plain ``@njit``
function of arrays, callable from nopython code too; ``Tape.value_batch``,
``gradient_batch`` and ``jvp_batch`` are its Python front ends, which record again at
points whose guards flip (a loaded tape raises instead).
"""
import numba
import numpy as np

from . import kernels as K
from .tapes import record

pjit = numba.njit(cache=True, nogil=True, parallel=True, error_model="numpy")


VALUE, GRADIENT, JVP = range(3)


@pjit
def sweep(prog, consts, kind, X, V, out, status, threads):
    """For each row X[i] (flat inputs, then parameters): ``kind`` VALUE: out[i] = f;
    GRADIENT: out[i] = [f, gradient]; JVP: out[i] = [f, J V[i]] (one direction per
    point; V is ignored otherwise). status[i] is the entry's status (OK, a flipped guard,
    an index error); the row of a failed point is not written. ``threads`` chunks
    (``numba.get_num_threads()``: read inside, it would keep Numba from caching)."""
    p = X.shape[0]
    chunks = min(p, threads)
    nx = V.shape[1]
    for c in numba.prange(chunks):
        w = np.zeros(2 * prog[K.H_TOTAL] + 6 * K.TILE)
        cs = prog[K.H_CONST]
        w[cs:cs + consts.shape[0]] = consts
        wt = np.zeros(prog[K.H_TOTAL] if kind == JVP else 0)
        for i in range(c * p // chunks, (c + 1) * p // chunks):
            if kind == VALUE:
                status[i] = K.evaluate(prog, X[i], out[i], w)
            elif kind == GRADIENT:
                status[i] = K.grad(prog, X[i], out[i], w)
            else:
                status[i] = K.jvp(prog, X[i], V[i].reshape((nx, 1)), out[i], w, wt)


# ---------------------------------------------------------------------------- Python side

def run(tape, kind, X, params, width, V=None):
    """The out rows of ``sweep`` of ``kind`` over the points X (shape (p,) + input shape) with
    shared parameters; points whose guards flip are recorded again (grouped: one new
    tape per branch met) unless the tape was loaded."""
    if tape.has_linalg:
        tape.refuse_callbacks("as a batched replay")
    if tape.has_callbacks:
        raise ValueError(f"the tape of {tape.name} calls Python functions (custom rules): "
                         "no batched replay")
    shape = tape._single_input("batched replay")
    X = np.asarray(X, dtype=np.float64)
    if X.shape[1:] != shape or X.ndim != len(shape) + 1:
        raise ValueError(f"points must have shape (p,) + {shape}, got {X.shape}")
    p = X.shape[0]
    tail = tape.pack((np.zeros(shape),) + tuple(params))[tape.nx:]
    if tail.size:
        xin = np.empty((p, tape.nin))
        xin[:, :tape.nx] = X.reshape(p, -1)
        xin[:, tape.nx:] = tail
    else:       # no parameters: the points are the inputs (no copy)
        xin = np.ascontiguousarray(X.reshape(p, -1))
    out = np.empty((p, width))
    status = np.empty(p, dtype=np.int64)
    threads = numba.get_num_threads()
    V = np.zeros((p, 0)) if V is None else V
    sweep(tape.prog, tape.consts, kind, xin, V, out, status, threads)
    pending = np.flatnonzero(status != K.OK)
    tp = tape
    while pending.size:
        first = pending[0]
        if status[first] < K.OK or tape.f is None:
            tp.check(status[first])      # an index error, or a tape that cannot record
        tp = record(tape.f, (X[first],) + tuple(params), tape.argnums)
        sub = np.empty((pending.size, width))
        st = np.empty(pending.size, dtype=np.int64)
        sweep(tp.prog, tp.consts, kind, xin[pending], V[pending], sub, st, threads)
        done = st == K.OK
        out[pending[done]] = sub[done]
        status[pending] = st
        if not done[0]:
            tp.check(st[0])                          # a fresh recording replays its own
        pending = pending[~done]
    return out
