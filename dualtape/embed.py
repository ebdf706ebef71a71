"""Tapes inside the user's own ``@numba.njit`` code: entry points that take one container.

``tape.nopython()`` packs what a sweep needs (the program, a workspace with the constants
in place, tangent buffers, sizes) into a ``NopythonTape`` named tuple. The entry points
below are ``@njit`` functions compiled once per type signature; every tape has the same
types, so a new tape never compiles anything (a closure over one tape's arrays would:
Numba freezes closed-over arrays into the compiled code).

Inputs are flat: ``x`` holds the differentiated inputs then the parameters
(``tape.pack(args)`` builds it from Python), ``tp.nin`` values in all; derivatives are
with respect to the first ``tp.nx``. Every entry returns a status: ``OK``, a guard flip
(``status >= 0``, the instruction whose branch differs from the recording: nothing is
written to ``out``) or an index out of bounds (``status <= ERR_INDEX``). nopython code
cannot record again: return the status to Python, record a new tape there at the point
reached (``dualtape.tape``) and continue (docs/api.md shows the pattern). After a
successful call, ``output(tp)`` is f's value at ``x`` (a view, overwritten by the next
call). A ``NopythonTape`` is one thread's: make one per thread.
"""
from typing import NamedTuple

import numpy as np

from . import kernels as K
from .kernels import ERR_INDEX, OK, jit

__all__ = ["NopythonTape", "OK", "ERR_INDEX", "value", "output", "gradient", "jacobian",
           "jvp", "hvp", "guard_flipped", "index_error"]

#: tangent directions per forward-Jacobian sweep (bounded by TANGENT_BUDGET values)
MAX_CHUNK = 128
TANGENT_BUDGET = 1 << 22


class NopythonTape(NamedTuple):
    """The arrays of one tape and one thread's buffers, for the ``@njit`` entry points."""
    prog: np.ndarray        # int64 program (header, side tables, instructions)
    work: np.ndarray        # workspace: values (constants in place), adjoints, tiles
    wt: np.ndarray          # tangents of up to ``chunk`` directions
    at: np.ndarray          # adjoint tangents of one direction
    scratch: np.ndarray     # results of one sweep before they are copied out
    nin: int                # inputs + parameters (the length of x)
    nx: int                 # differentiated inputs
    nout: int               # output elements
    chunk: int              # directions per forward-Jacobian sweep


def make(tape, chunk=None):
    """A NopythonTape with fresh buffers (``Tape.nopython`` calls this)."""
    if tape.has_linalg:
        tape.refuse_callbacks("in nopython code")
    if tape.has_callbacks:
        raise ValueError(f"the tape of {tape.name} calls Python functions (custom rules) and "
                         "cannot run in nopython code")
    total = int(tape.prog[K.H_TOTAL])
    nx, m = tape.nx, tape.out_size
    if not chunk:
        chunk = max(1, min(MAX_CHUNK, nx, TANGENT_BUDGET // max(total, 1)))
    work = np.zeros(K.work_size(tape.prog))
    cs = int(tape.prog[K.H_CONST])
    work[cs:cs + tape.consts.size] = tape.consts
    scratch = np.zeros(max(1 + 2 * nx, m * (1 + chunk)))
    return NopythonTape(tape.prog, work, np.zeros(total * chunk), np.zeros(total), scratch,
                        tape.nin, nx, m, int(chunk))


# ---------------------------------------------------------------------------- statuses

@jit
def guard_flipped(status):
    """Whether a status says a guard flipped (re-record at this point from Python)."""
    return status >= 0


@jit
def index_error(status):
    """Whether a status says an index computed at replay was out of bounds."""
    return status <= ERR_INDEX


# ---------------------------------------------------------------------------- entries

@jit
def _check_x(tp, x):
    if x.shape[0] != tp.nin:
        raise ValueError("x must hold the tape's nin values (inputs, then parameters)")


@jit
def output(tp):
    """f's value (flat, ``tp.nout`` values) from the last successful call: a view."""
    o = tp.prog[K.H_OUT]
    return tp.work[o:o + tp.nout]


@jit
def value(tp, x, y):
    """y[:] = f(x) (flat). Returns the status."""
    _check_x(tp, x)
    if y.shape[0] != tp.nout:
        raise ValueError("y must hold the tape's nout values")
    return K.evaluate(tp.prog, x, y, tp.work)


@jit
def gradient(tp, x, out):
    """out[:] = the gradient of a scalar f at x (``tp.nx`` values). Returns the status;
    f's value is ``output(tp)[0]``."""
    _check_x(tp, x)
    if tp.nout != 1:
        raise ValueError("gradient needs a scalar output; use jacobian")
    if out.shape[0] != tp.nx:
        raise ValueError("out must hold the tape's nx values")
    st = K.grad(tp.prog, x, tp.scratch, tp.work)
    if st == OK:
        out[:] = tp.scratch[1:1 + tp.nx]
    return st


@jit
def jacobian(tp, x, out):
    """out[:, :] = the Jacobian (``(tp.nout, tp.nx)``) at x: forward sweeps of up to
    ``tp.chunk`` directions when nx <= nout, else all adjoint seeds in one reverse call.
    Returns the status."""
    _check_x(tp, x)
    m, n = tp.nout, tp.nx
    if out.shape[0] != m or out.shape[1] != n:
        raise ValueError("out must have shape (nout, nx)")
    if n <= m:
        for start in range(0, n, tp.chunk):
            k = min(tp.chunk, n - start)
            V = np.zeros((n, k))
            for q in range(k):
                V[start + q, q] = 1.0
            st = K.jvp(tp.prog, x, V, tp.scratch, tp.work, tp.wt)
            if st != OK:
                return st
            out[:, start:start + k] = tp.scratch[m:m + m * k].reshape((m, k))
        if n == 0:
            return K.evaluate(tp.prog, x, tp.scratch[:m], tp.work)
        return OK
    res = np.empty(m + m * n)
    st = K.vjp(tp.prog, x, np.eye(m), res, tp.work)
    if st == OK:
        out[:, :] = res[m:].reshape((m, n))
    return st


@jit
def jvp(tp, x, v, out):
    """out[:] = J v for one direction v (``tp.nx`` values). Returns the status."""
    _check_x(tp, x)
    if v.shape[0] != tp.nx or out.shape[0] != tp.nout:
        raise ValueError("v must hold nx values and out nout values")
    m = tp.nout
    st = K.jvp(tp.prog, x, v.reshape((tp.nx, 1)), tp.scratch, tp.work, tp.wt)
    if st == OK:
        out[:] = tp.scratch[m:2 * m]
    return st


@jit
def hvp(tp, x, v, out):
    """out[:] = H v, the Hessian of a scalar f at x times v (``tp.nx`` values), by
    forward-over-reverse. Returns the status."""
    _check_x(tp, x)
    n = tp.nx
    if tp.nout != 1:
        raise ValueError("hvp needs a scalar output")
    if v.shape[0] != n or out.shape[0] != n:
        raise ValueError("v and out must hold nx values")
    st = K.hvp(tp.prog, x, v.reshape((n, 1)), tp.scratch, tp.work, tp.wt, tp.at)
    if st == OK:
        out[:] = tp.scratch[1 + n:1 + 2 * n]
    return st
