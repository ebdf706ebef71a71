"""The compiled tier: a tape's instructions turned into fused, tiled, parallel Numba source.

``Tape.compile()`` (and ``grad(f, compile=True)``) generates a Python module from the tape's
program, writes it to a cache directory, imports it and compiles it with Numba
(``cache=True``). What is generated:

* every *run* of consecutive elementwise instructions over the same element count becomes
  one loop over the run's elements, chunk by chunk (``CHUNK`` elements): the forward loop
  computes all of a chunk's values in registers and stores only those read later (by an
  instruction outside the run, or as the output) or costly to recompute (``CHEAP``); the
  reverse loop recomputes the cheap values of its chunk, loads the stored ones and carries
  the adjoints in registers, so a run costs one pass over memory per sweep instead of one
  per instruction. A full ``reduce_sum`` right after the run, of one of its results, is
  fused too (one partial sum per chunk, added in chunk order, so the result does not depend
  on the number of threads);
* chunks run in parallel (``numba.prange``, one loop per entry over the tiles it runs)
  from ``PAR_MIN`` elements on, in the parallel entries (``grad_par``, ``vjp_par``,
  ``evaluate_par``), which only a tape with a run of ``PAR_MIN`` elements or more calls:
  the others (``grad``, ``vjp``, ``evaluate``) run the chunks one after the other and
  never compile a parallel loop; adjoints of
  broadcast (size-1) operands and fused sums go through per-chunk partials; when two views
  of one slot at different offsets both receive adjoints (``x[1:]`` and ``x[:-1]``), even
  and odd chunks run in two phases so that no two threads write the same element;
* when the output is the fused sum of the last run (a loss ``np.sum(...)``), ``grad`` runs
  that run forward and backward in one pass (its adjoint is the seed), and skips adding up
  the value when the caller does not return it (``dualtape.grad``, ``Tape.gradient``);
  that pass multiplies plainly and scans what it wrote for NaN: a NaN product (0 * inf)
  sends the call to the interpreter (``RETRY``), which applies the zero rule per product.
  When that run's only adjoints are views of the inputs that cover the gradient at small
  offsets (``x[:-1]`` and ``x[1:]``), the pass takes the gather form (``_gather_tile``):
  every gradient element is written once, no clearing and no read-modify-write, so the
  loop vectorises;
* when only fused runs read the inputs, the runs read them in the caller's array and add
  the gradient straight into the output array (no copy into the workspace or out of it);
* every other instruction is a call into the interpreter's kernels: guards inline,
  gathers and reductions through their helpers, matrix products through ``matmul_step``
  here, anything else (scatters, opcodes this file does not know) through
  ``kernels.forward`` on its one-row slice of the program and ``kernels.reverse_one``.

Compile time: the module is flat (tile functions, a parallel loop per parallel entry, the
entries with every sweep written inline): Numba optimises a callee's code again in each
caller that links it, so layers of small functions would multiply compile time. No call
passes a literal (Numba compiles a callee once per literal argument value: ``zero + i``,
``yes``/``no`` are data); tiles and parallel loops have no Python wrapper; the helpers
every module calls (``matmul_step``, ``copy_range``, ``clear``) are compiled once per
machine here, and call BLAS directly rather than through ``np.dot``, whose code each
caller would link and optimise again (seconds per structure with a matrix product).

The elementwise math is the table's (``ops.TABLE`` strings, as ``gen.py`` writes them into
the interpreter); slot offsets and lengths are read from the program at run time and
constants and parameters live in the workspace, so one compiled module serves every tape of
the same *structure* (opcodes, operand kinds, the runs and what they store), whatever the
sizes. The module's name is a hash of its source, of the dualtape files it depends on and of
the Numba version; it lives in ``$DUALTAPE_CACHE_DIR`` (default
``~/.cache/dualtape/compiled``) with Numba's cache beside it, so a fresh process that
compiled the structure once only loads it.

The same module holds the tangent and second-order entries ``jvp`` and ``hvp`` (K
directions at once, K a run-time size; see "tangents and second order" below; ``jvp``
reads static gathers inside its runs through their index tables, ``_forward_plan``, and
its twin ``jvp_nz`` writes only a sparse pattern's nonzeros), each
compiled on its first call: ``Tape.jvp``, forward ``jacobian``, ``hvp``, ``hessian`` and the
sparse compressed sweeps of a compiled tape run them. Batches and the ``@njit`` entry points
of ``embed.py`` run the interpreter's kernels on the same arrays.
"""
import bisect
import hashlib
import importlib.util
import os
import pathlib
import re
import sys
import threading

import numba
import numpy as np

from . import kernels as K
from . import ops
from .tapes import _PER_K, Tape, _fresh_after_error

#: elements per chunk of a fused loop (and per parallel task)
CHUNK = 4096
#: element count from which a run's chunks are spread over threads
PAR_MIN = 1 << 15


def parallel():
    """Whether tapes with a run of PAR_MIN elements or more use the parallel entries:
    yes unless the environment sets DUALTAPE_COMPILE_PARALLEL=0 (one thread, and no
    parallel loop to compile: a second or more less per structure)."""
    return os.environ.get("DUALTAPE_COMPILE_PARALLEL", "1") != "0"

#: table rows recomputed by the reverse loop rather than stored by the forward loop:
#: a few cycles each, against 16 bytes of memory traffic per stored element
CHEAP = frozenset((
    "add", "sub", "mul", "div", "neg", "copy", "square", "sqrt", "reciprocal", "abs",
    "maximum", "minimum", "fmax", "fmin", "clip", "select", "sign", "floor", "ceil", "rint",
    "trunc", "less", "less_equal", "greater", "greater_equal", "equal", "not_equal",
    "logical_and", "logical_or", "logical_xor", "logical_not", "isnan", "isinf", "isfinite"))

_ROWS = list(ops.TABLE.values())          # row r has opcode r + 1
_OPERAND_READS = {ops.OPCODES[n] for n in (
    "gather", "gather_dyn", "reduce_sum", "reduce_prod", "reduce_max", "reduce_min",
    "argmax", "argmin", "matmul", "nonzero", "guard", "scatter")}
_VARS = ("x", "y", "z")
_F64 = np.dtype(np.float64)


def cache_dir():
    """Where generated modules and their Numba cache live: ``$DUALTAPE_CACHE_DIR`` or
    ``~/.cache/dualtape/compiled``."""
    env = os.environ.get("DUALTAPE_CACHE_DIR")
    if env:
        return pathlib.Path(env)
    return pathlib.Path.home() / ".cache" / "dualtape" / "compiled"


# ---------------------------------------------------------------------------- helpers
# Called by every generated module; compiled once per machine (cached beside this file)
# rather than once per structure in each generated module (a second for the matrix product).

_jit = numba.njit(cache=True, nogil=True, error_model="numpy")
_leaf = numba.njit(cache=True, nogil=True, error_model="numpy", _nrt=False)

@_jit
def matmul_step(code, ints, w, i, total, da, db):
    """Matrix product i: its value (total < 0), or the adjoints of a (da) and b (db) from
    its result's adjoint, which is then cleared (kernels.reverse_one's product rule)."""
    p = code[i, K.AUX]
    m, k, q = ints[p], ints[p + 1], ints[p + 2]
    a, b, o = code[i, K.A], code[i, K.B], code[i, K.OUT]
    A_ = w[a:a + m * k].reshape((m, k))
    B_ = w[b:b + k * q].reshape((k, q))
    if total < 0:
        out = w[o:o + m * q].reshape((m, q))
        out[:, :] = 0.0
        K.matmul_acc(A_, B_, out, False, False)
        return
    g = w[total + o:total + o + m * q].reshape((m, q))
    if da:
        K.matmul_acc(g, B_, w[total + a:total + a + m * k].reshape((m, k)), False, True)
    if db:
        K.matmul_acc(A_, g, w[total + b:total + b + k * q].reshape((k, q)), True, False)
    g[:, :] = 0.0


@_leaf
def clear(w, o, n):
    """w[o:o + n] = 0 (a plain loop, as ``copy_range``)."""
    v = w[o:o + n]
    for j in range(n):
        v[j] = 0.0


@_leaf
def copy_range(dst, do, src, so, n, clear):
    """dst[do:do + n] = src[so:so + n] (a plain loop: Numba compiles slice assignment
    slowly); clear zeroes the source as it goes."""
    d = dst[do:do + n]
    s = src[so:so + n]
    for j in range(n):
        d[j] = s[j]
    if clear:
        for j in range(n):
            s[j] = 0.0


# ---------------------------------------------------------------------------- analysis

class _Run:
    """Consecutive elementwise instructions over one element count."""

    def __init__(self, index, first):
        self.index = index
        self.members = [first]
        self.sum = None          # a fused full reduce_sum instruction
        self.sum_of = None       # the member it sums
        self.gather = None       # one-pass in gather form: {view: offset from the first}
        self.place = {}          # member: where its result is stored, if not its slot


def _code(prog):
    c, n = int(prog[K.H_CODE]), int(prog[K.H_NCODE])
    return prog[c:c + n * K.NCOL].reshape(n, K.NCOL)


def _overlaps(a, na, b, nb):
    return na > 0 and nb > 0 and a < b + nb and b < a + na


def _segments(prog, inline=()):
    """The program split into runs and spans of structural instructions; the gathers in
    ``inline`` are left out (the runs that read them read through their index tables)."""
    code = _code(prog)
    segs, run = [], None
    for i, row in enumerate(code):
        op = int(row[K.OP])
        if i in inline:
            continue
        if op <= K.N_ELEMENTWISE:
            n = int(row[K.N])
            ext = [(int(row[K.A + 2 * k]), int(row[K.NA + 2 * k])) for k in range(3)]
            # a member's operand is another member's whole result, or disjoint from them
            # all (no view of a result the fused loop has not finished), and it does not
            # write where a member reads
            joins = run is not None and int(code[run.members[0], K.N]) == n and not any(
                _overlaps(a, na, int(code[m, K.OUT]), n) and (a, na) != (int(code[m, K.OUT]), n)
                for m in run.members for a, na in ext) and not any(
                _overlaps(int(row[K.OUT]), n, int(code[m, K.A + 2 * k]), int(code[m, K.NA + 2 * k]))
                for m in run.members for k in range(3))
            if joins:
                run.members.append(i)
            else:
                run = _Run(len([s for s in segs if isinstance(s, _Run)]), i)
                segs.append(run)
            continue
        if (run is not None and segs[-1] is run and run.sum is None
                and op == ops.OPCODES["reduce_sum"]):
            p = int(row[K.AUX])
            n = int(code[run.members[0], K.N])
            shape = tuple(int(v) for v in prog[p:p + 3])
            for m in run.members:
                if (int(row[K.A]), int(row[K.NA])) == (int(code[m, K.OUT]), n) and \
                        shape == (1, n, 1):
                    run.sum, run.sum_of = i, m
                    break
            if run.sum is not None:
                # the sum is added up after the run's loop: nothing in the run may read it
                run = None
                continue
        run = None
        if segs and isinstance(segs[-1], list):
            segs[-1].append(i)
        else:
            segs.append([i])
    return code, segs


def _inlinable(prog, code, refuse):
    """The gathers (static index tables) whose results the runs may read through their
    tables instead of from memory: every reader is an elementwise instruction of the
    gather's length reading its whole result, or another such gather reading within it (a
    chain: ``np.roll`` of ``y[0::2]``), and the result is not the output. Not on a tape
    with scatters (a write may land in a gather's source between the gather and its
    readers). ``refuse``: gathers to keep."""
    if int(prog[K.H_FLAGS]) & K.HAS_SCATTER:
        return set()
    gathers = sorted((int(code[i, K.OUT]), int(code[i, K.N]), i) for i in range(len(code))
                     if int(code[i, K.OP]) == K.GATHER and int(code[i, K.N]) > 0)
    if not gathers:
        return set()
    starts = [g[0] for g in gathers]
    ok = {i: i not in refuse for _, _, i in gathers}
    chains = []      # (reading gather, gather read)

    def hit(a, na):
        j = max(bisect.bisect_right(starts, a) - 1, 0)
        while j < len(gathers) and gathers[j][0] < a + na:
            if _overlaps(a, na, gathers[j][0], gathers[j][1]):
                yield gathers[j]
            j += 1

    o, no = int(prog[K.H_OUT]), int(prog[K.H_NOUT])
    for g in hit(o, no):
        ok[g[2]] = False
    for i, row in enumerate(code):
        op = int(row[K.OP])
        reads = _row_reads(prog, row)
        if reads is None:
            return set()
        for a, na in reads:
            for out, n, g in hit(a, na):
                if op <= K.N_ELEMENTWISE and (a, na) == (out, n) and int(row[K.N]) == n:
                    continue
                if op == K.GATHER and i in ok and out <= a and a + na <= out + n:
                    chains.append((i, g))
                    continue
                ok[g] = False
    changed = True
    while changed:       # a gather read by one that stays must stay
        changed = False
        for i, g in chains:
            if ok[g] and not ok[i]:
                ok[g], changed = False, True
    return {i for i, v in ok.items() if v}


def _chain(code, inline, q_slot):
    """The inlined gathers from the one whose result is slot ``q_slot`` to the one that
    reads memory (outermost first)."""
    by_out = {int(code[g, K.OUT]): g for g in inline}
    g = by_out[q_slot]
    chain = [g]
    while True:
        a = int(code[g, K.A])
        nxt = [h for h in inline if int(code[h, K.OUT]) <= a < int(code[h, K.OUT]) +
               int(code[h, K.N])]
        if not nxt:
            return chain
        g = nxt[0]
        chain.append(g)


def _ext_range(code, run, q):
    """(offset, length) of what external q of a run reads in memory."""
    i, k = run.ext[q]
    if q in run.chain:
        g = run.chain[q][-1]
        return int(code[g, K.A]), int(code[g, K.NA])
    return int(code[i, K.A + 2 * k]), int(code[run.members[0], K.N])


def _inline_segments(prog):
    """(code, segs, inline) of the forward tangent sweep with the gathers ``inline`` read
    inside the runs (none: the usual segments): the runs between such gathers join (the
    Brusselator's strided views and rolls and its 17 elementwise instructions become one
    loop). A gather whose memory a run reading it also writes stays an instruction (the
    run computes that memory chunk by chunk; the gather reads anywhere in it)."""
    refuse = set()
    code = _code(prog)
    while True:
        inline = _inlinable(prog, code, refuse)
        code, segs = _segments(prog, inline)
        bad = set()
        for run in (s for s in segs if isinstance(s, _Run)):
            _classify(code, run, inline)
            n = int(code[run.members[0], K.N])
            for q in run.chain:
                a, na = _ext_range(code, run, q)
                if any(_overlaps(a, na, int(code[m, K.OUT]), n) for m in run.members):
                    bad.add(run.chain[q][0])
        if not bad:
            return code, segs, inline
        refuse |= bad


def _row_reads(prog, row):
    """Slot ranges an instruction reads (None: unknown, anything)."""
    op = int(row[K.OP])
    if op <= K.N_ELEMENTWISE or op in _OPERAND_READS:
        return [(int(row[K.A + 2 * k]), int(row[K.NA + 2 * k])) for k in range(3)]
    if op == ops.OPCODES["concat"]:
        p = int(row[K.AUX])
        return [(int(prog[p + 1 + 3 * q]), int(prog[p + 2 + 3 * q]))
                for q in range(int(prog[p]))]
    return None


def _reads(prog, code, skip):
    """Slot ranges read by instructions outside ``skip`` (None: unknown, read anything)."""
    reads = [(int(prog[K.H_OUT]), int(prog[K.H_NOUT]))]
    for i, row in enumerate(code):
        if i in skip:
            continue
        more = _row_reads(prog, row)
        if more is None:
            return None
        reads += more
    return reads


def _classify(code, run, inline=()):
    """Operand kinds of each member: ("m", member), ("e", external index), ("s", scalar
    index); externals are deduplicated by slot. An external that is the result of a gather
    in ``inline`` is read through the chain of gathers ``run.chain[q]``."""
    n = int(code[run.members[0], K.N])
    outs = {(int(code[m, K.OUT]), n): m for m in run.members}
    gathered = {(int(code[g, K.OUT]), int(code[g, K.N])) for g in inline}
    run.kinds, run.ext, run.scal, run.chain = {}, [], [], {}
    seen_e, seen_s = {}, {}
    for i in run.members:
        row = code[i]
        for k in range(_ROWS[int(row[K.OP]) - 1].arity):
            slot = (int(row[K.A + 2 * k]), int(row[K.NA + 2 * k]))
            if slot in outs and outs[slot] < i:
                run.kinds[i, k] = ("m", outs[slot])
            elif slot[1] == n:
                if slot not in seen_e:
                    seen_e[slot] = len(run.ext)
                    if slot in gathered:
                        run.chain[len(run.ext)] = _chain(code, inline, slot[0])
                    run.ext.append((i, k))
                run.kinds[i, k] = ("e", seen_e[slot])
            else:
                if slot not in seen_s:
                    seen_s[slot] = len(run.scal)
                    run.scal.append((i, k))
                run.kinds[i, k] = ("s", seen_s[slot])


def _active(code, i, k, prim):
    return (int(code[i, K.FLAGS]) >> k) & 1 and prim.diff and prim.d[k] is not None


def _uses(expr, var):
    return re.search(rf"\b{var}\b", expr) is not None


def _plan(code, run, reads):
    """Which members the forward loop stores (``store``) and which receive adjoints from
    memory (``outside``); which externals receive adjoints."""
    n = int(code[run.members[0], K.N])
    run.outside = set(run.members) if reads is None else {
        m for m in run.members if any(_overlaps(a, na, int(code[m, K.OUT]), n)
                                      for a, na in reads)}
    need = set()
    for i in run.members:
        prim = _ROWS[int(code[i, K.OP]) - 1]
        if not code[i, K.FLAGS]:
            continue
        for k in range(prim.arity):
            if not _active(code, i, k, prim):
                continue
            expr = prim.d[k]
            if _uses(expr, "o"):
                need.add(i)
            for kk in range(prim.arity):
                kind = run.kinds[i, kk]
                if kind[0] == "m" and _uses(expr, _VARS[kk]):
                    need.add(kind[1])
    run.store = set()
    for i in reversed(run.members):
        prim = _ROWS[int(code[i, K.OP]) - 1]
        if i in run.outside or (i in need and prim.name not in CHEAP):
            run.store.add(i)
        elif i in need:
            for kk in range(prim.arity):
                if run.kinds[i, kk][0] == "m":
                    need.add(run.kinds[i, kk][1])
    run.need = need
    run.ext_act = sorted({run.kinds[i, k][1] for i in run.members for k in range(3)
                          if (i, k) in run.kinds and run.kinds[i, k][0] == "e"
                          and _active(code, i, k, _ROWS[int(code[i, K.OP]) - 1])})
    run.scal_act = sorted({run.kinds[i, k][1] for i in run.members for k in range(3)
                           if (i, k) in run.kinds and run.kinds[i, k][0] == "s"
                           and _active(code, i, k, _ROWS[int(code[i, K.OP]) - 1])})
    run.sum_act = run.sum is not None and bool(code[run.sum, K.FLAGS])


def _direct(prog, code, runs, inline=()):
    """Mark the externals of each run that read the inputs (``run.inp``) when only fused
    runs read them: the entries then read the caller's input array and write the gradient
    into the caller's output array, with no copy into the workspace or out of it. Anything
    else that reads the inputs (a structural instruction, a broadcast scalar operand, the
    output itself, a scatter) keeps the copies. Returns whether that holds."""
    nin, nx = int(prog[K.H_NIN]), int(prog[K.H_NX])
    for run in runs:
        run.inp = set()
    if int(prog[K.H_FLAGS]) & K.HAS_SCATTER or nin == 0:
        return False
    skip = set(inline)
    for run in runs:
        skip |= set(run.members) | ({run.sum} - {None})
    reads = _reads(prog, code, skip)
    if reads is None or any(_overlaps(a, na, 0, nin) for a, na in reads):
        return False
    for run in runs:
        for q in range(len(run.ext)):
            a, n = _ext_range(code, run, q)
            if a + n <= nin:
                # an adjoint lands in the gradient, which holds the differentiated inputs
                if q in run.ext_act and a + n > nx:
                    return False
                run.inp.add(q)
            elif a < nin:
                return False
        for i, k in run.scal:
            if int(code[i, K.A + 2 * k]) < nin:
                return False
    return True


# ---------------------------------------------------------------------------- source

def _value_lines(code, run, i, pad):
    """v{i} = the table's value of member i (operands bound to x, y, z)."""
    prim = _ROWS[int(code[i, K.OP]) - 1]
    lines = _bind(run, i, prim, prim.value, pad)
    expr = prim.value
    if prim.boolean:
        expr = f"1.0 if {expr} else 0.0"
    lines.append(f"{pad}v{i} = {expr}")
    return lines


def _operand(run, i, k):
    kind, idx = run.kinds[i, k]
    return {"m": "v", "e": "e", "s": "s"}[kind] + str(idx)


def _bind(run, i, prim, expr, pad, with_o=False):
    out = [f"{pad}{v} = {_operand(run, i, k)}" for k, v in enumerate(_VARS[:prim.arity])
           if _uses(expr, v)]
    if with_o and _uses(expr, "o"):
        out.append(f"{pad}o = v{i}")
    return out


def _loads(run, pad):
    """e{q} = external q at element j; through its gathers' tables when it has them
    (x{q}: the position read)."""
    out = []
    for q in range(len(run.ext)):
        if q not in run.chain:
            out.append(f"{pad}e{q} = E{q}[j]")
            continue
        # unsigned positions: no wrap-around test per access (static tables hold none)
        pos = f"QS{q} + np.uint64(j)"
        for level in range(1, len(run.chain[q])):
            pos = f"np.uint64(F{q}_{level} + ints[{pos}])"
            pos = f"Q{q}_{level} + {pos}"
        out += [f"{pad}x{q} = np.uint64(R{q} + ints[{pos}])", f"{pad}e{q} = E{q}[x{q}]"]
    return out


def _compute(code, run, pad, load_stored):
    lines = []
    for i in run.members:
        if load_stored and i in run.store:
            lines.append(f"{pad}v{i} = V{i}[j]")
        else:
            lines += _value_lines(code, run, i, pad)
    return lines


def _adjoint_lines(code, run, pad, gsum, check=True):
    """The reverse of a run's members for one element, adjoints in registers.

    Products of an adjoint and a partial are plain multiplications; an element where one of
    them turned out NaN (0 * inf, or a NaN operand) must be swept with the rule that a
    zero factor contributes zero even times inf or NaN, as the interpreter does
    (``np.where(x > 0, np.sqrt(x), 0.0)`` at 0). NaN propagates through every sum and
    product, so a NaN product shows in the element's results unless it meets no operand.
    Checked (the default): such an element is swept again with the rule at once.
    Unchecked (``check=False``): the results are added as they are; the one-pass tile then
    looks for NaN in what it wrote, and the gradient is taken by the interpreter instead.
    Measured on Rosenbrock: a branch per element costs a third of the fused loop, a flag
    set per element a fifth, the scan of the chunk's results after the loop a tenth."""
    act = [i for i in run.members if code[i, K.FLAGS]]
    lines = []
    for i in act:
        if i in run.outside:
            lines += [f"{pad}h{i} = G{i}[j]", f"{pad}G{i}[j] = 0.0"]
    fast, results = _sweep_lines(code, run, act, pad, gsum, exact=False)
    if not results:
        return lines
    total = " + ".join(results)
    if not check:
        lines += fast
    else:
        lines += fast + [f"{pad}if {total} != {total}:"]
        lines += _sweep_lines(code, run, act, pad + "    ", gsum, exact=True)[0]
    lines += [f"{pad}GE{q}[j] += a{q}" for q in run.ext_act if f"a{q}" in results]
    lines += [f"{pad}b{q} += bb{q}" for q in run.scal_act if f"bb{q}" in results]
    return lines


def _sweep_lines(code, run, act, pad, gsum, exact):
    """(lines, results): the adjoint sweep of one element, and the names of the external
    adjoints it produced. An adjoint that receives nothing stays a known zero: its products
    are left out (as the zero rule would make them zero)."""
    lines, has = [], set()

    def add(target, term):
        lines.append(f"{pad}{target} {'+=' if target in has else '='} {term}")
        has.add(target)

    for i in act:
        if i in run.outside:
            add(f"g{i}", f"h{i}")
        if run.sum_act and run.sum_of == i:
            add(f"g{i}", gsum)
    for i in reversed(act):
        if f"g{i}" not in has:
            continue
        prim = _ROWS[int(code[i, K.OP]) - 1]
        for k in range(prim.arity):
            if not _active(code, i, k, prim):
                continue
            kind, idx = run.kinds[i, k]
            if kind == "m" and not code[idx, K.FLAGS]:
                continue        # an inactive result: nothing flows through it
            target = {"m": "g", "e": "a", "s": "bb"}[kind] + str(idx)
            form, c = _form(prim.d[k])
            if form == "const":
                add(target, f"g{i}" if c == 1.0 else (f"-g{i}" if c == -1.0 else
                                                       f"{c!r} * g{i}"))
                continue
            lines += _bind(run, i, prim, prim.d[k], pad, with_o=True)
            lines.append(f"{pad}d = {prim.d[k]}")
            add(target, f"g{i} * d if g{i} != 0.0 and d != 0.0 else 0.0" if exact else
                f"g{i} * d")
    results = [f"a{q}" for q in run.ext_act if f"a{q}" in has]
    return lines, results + [f"bb{q}" for q in run.scal_act if f"bb{q}" in has]


def _form(expr):
    try:
        return "const", float(expr)
    except ValueError:
        return "expr", 0.0


#: tile kinds: forward, reverse, forward and reverse in one pass (flagging NaN results)
_KINDS = ("f", "r", "fr")
#: status of the gradient entry when a one-pass chunk flagged a NaN result: the
#: interpreter's gradient is taken instead (``CompiledTape.run_grad``)
RETRY = -(1 << 50)


def _tile(code, run, kind):
    """A function running chunk c of a run (offsets read from the program): kind "f"
    forward, "r" reverse, "fr" forward and reverse in one pass (gradient of a final sum)
    flagging a NaN result in ``part[c, 1 + len(run.scal)]``."""
    if kind == "fr" and run.gather:
        return _gather_tile(code, run)
    r = run.index
    fwd, rev = "f" in kind, "r" in kind
    extra = ", want" if kind == "fr" else ""
    body = ["@leaf", f"def run{r}_{kind}(code, ints, xin, w, gw, go, part, gs, c{extra}):",
            "    total = ints[H_TOTAL]", f"    s = c * CHUNK",
            f"    t = min(CHUNK, code[{run.members[0]}, N] - s)"]
    for q, (i, k) in enumerate(run.ext):
        # an input is read where the caller keeps it and its adjoint goes straight into
        # the caller's gradient array (gw, from offset go): no copies in or out
        src, g, go = ("xin", "gw", "go") if q in run.inp else ("w", "w", "total")
        body += [f"    p = code[{i}, A + {2 * k}]", f"    E{q} = {src}[p + s:p + s + t]"]
        if q in run.ext_act and rev:
            body.append(f"    GE{q} = {g}[{go} + p + s:{go} + p + s + t]")
    body += [f"    s{q} = w[code[{i}, A + {2 * k}]]" for q, (i, k) in enumerate(run.scal)]
    for i in run.members:
        if i in run.store or (rev and i in run.outside and code[i, K.FLAGS]):
            body.append(f"    p = code[{i}, OUT]")
        if i in run.store:
            body.append(f"    V{i} = w[p + s:p + s + t]")
        if rev and i in run.outside and code[i, K.FLAGS]:
            body.append(f"    G{i} = w[total + p + s:total + p + s + t]")
    if rev:
        body += [f"    b{q} = 0.0" for q in run.scal_act]
    if fwd and run.sum is not None:
        body.append("    acc = 0.0")
    body.append("    for j in range(t):")
    body += _loads(run, " " * 8)
    body += _compute(code, run, " " * 8, load_stored=not fwd)
    if fwd and not rev:
        body += [f"        V{i}[j] = v{i}" for i in sorted(run.store)]
    if fwd and run.sum is not None and rev:    # grad() does not want the value
        body += ["        if want:", f"            acc += v{run.sum_of}"]
    elif fwd and run.sum is not None:
        body.append(f"        acc += v{run.sum_of}")
    if rev:
        # the one-pass tile's seed is 1 (the gradient of the final sum): a literal, so
        # that the products by it fold away (exact: 1.0 * d == d; 4% of the loop)
        body += _adjoint_lines(code, run, " " * 8, "1.0" if kind == "fr" else "gs",
                               check=kind != "fr")
        body += [f"    part[c, {1 + q}] = b{q}" for q in run.scal_act]
    if kind == "fr":
        # a NaN result stays NaN where it was added (the adjoints here are the first
        # to reach these slots); a NaN already there only costs the interpreter's sweep
        body += ["    bad = False"] + _scan_lines(code, run)
        body += [f"    bad |= b{q} != b{q}" for q in run.scal_act]
        body.append(f"    part[c, {1 + len(run.scal)}] = 1.0 if bad else 0.0")
    if fwd and run.sum is not None:
        body.append("    part[c, 0] = acc")
    return body


#: largest offset between views of the inputs (``x[2:]``, ``x[:-2]``: 2) for which the
#: one-pass gradient takes the gather form
GATHER_MAX = 4


def _plan_gather(prog, code, runs, last):
    """Whether the one-pass run ``last`` can write the gradient in gather form, and with
    which offsets (``last.gather``): every active operand is a view of the inputs read in
    place, no other run adds to the gradient, no scalar operand receives an adjoint, and
    the views are n elements of the gradient at offsets 0..D (D <= GATHER_MAX) that cover
    it (Rosenbrock: ``x[:-1]`` at 0 and ``x[1:]`` at 1). The offsets are written into the
    source (so they are part of the structure); the entry checks them at run time."""
    views = {q: int(code[i, K.A + 2 * k]) for q, (i, k) in enumerate(last.ext)
             if q in last.ext_act and q in last.inp}
    if (not views or len(views) != len(last.ext_act) or last.scal_act
            or any(q in run.inp for run in runs if run is not last for q in run.ext_act)):
        return
    lo, hi, n = min(views.values()), max(views.values()), int(code[last.members[0], K.N])
    if lo == 0 and hi <= GATHER_MAX and hi + n == int(prog[K.H_NX]) and n > 0:
        last.gather = {q: p - lo for q, p in views.items()}


def _gather_tile(code, run):
    """The one-pass tile in gather form: each gradient element is written once, the sum
    of the views' adjoints that land on it, instead of cleared and then added to through
    each view (``x[1:]``, ``x[:-1]``). The adjoint of view q at element j lands on
    gradient element j + d_q: the loop carries the last d_q of them in registers
    (``r{q}_1`` the newest), so its stores do not depend on its loads and it vectorises
    (on Rosenbrock 3x faster than the hand-written ``@njit`` loop, which adds into g[i]
    and g[i + 1]). A chunk first recomputes the D elements before it (``u`` of them,
    their adjoints only), so chunks are independent; the last one writes the D elements
    past the loop from its registers."""
    # (the gradient's D elements past a chunk are the next chunk's first: written there)
    r, gather = run.index, run.gather
    D = max(gather.values())
    first = code[run.members[0]]
    act = [i for i in run.members if code[i, K.FLAGS]]
    sweep, results = _sweep_lines(code, run, act, " " * 8, "1.0", exact=False)
    qs = sorted((q for q in gather if f"a{q}" in results), key=lambda q: (-gather[q], q))
    (i0, k0), = [run.ext[q] for q in gather if gather[q] == 0]
    body = ["@leaf", f"def run{r}_fr(code, ints, xin, w, gw, go, part, gs, c, want):",
            "    total = ints[H_TOTAL]", "    s = c * CHUNK",
            f"    n = code[{run.members[0]}, N]", "    t = min(CHUNK, n - s)",
            f"    j0 = max(0, s - {D})"]
    # separate views for the elements before the chunk (W) and the chunk's (E): loops
    # from 0, whose indices Numba and LLVM know are not negative (a loop from u did not
    # vectorise: 5x slower)
    for q, (i, k) in enumerate(run.ext):
        src = "xin" if q in run.inp else "w"
        body += [f"    p = code[{i}, A + {2 * k}]", f"    W{q} = {src}[p + j0:p + s]",
                 f"    E{q} = {src}[p + s:p + s + t]"]
    body += [f"    s{q} = w[code[{i}, A + {2 * k}]]" for q, (i, k) in enumerate(run.scal)]
    # element j of G is gradient element s + j
    body += [f"    p = go + code[{i0}, A + {2 * k0}]", f"    G = gw[p + s:p + s + t + {D}]"]
    body += [f"    r{q}_{m} = 0.0" for q in qs for m in range(1, gather[q] + 1)]
    body.append("    acc = 0.0")
    shift = []
    for q in qs:
        shift += [f"        r{q}_{m} = r{q}_{m - 1}" for m in range(gather[q], 1, -1)]
        if gather[q]:
            shift.append(f"        r{q}_1 = a{q}")
    terms = [f"a{q}" if gather[q] == 0 else f"r{q}_{gather[q]}" for q in qs]
    body.append("    for j in range(s - j0):")
    body += [f"        e{q} = W{q}[j]" for q in range(len(run.ext))]
    body += _compute(code, run, " " * 8, False) + sweep + shift
    body.append("    for j in range(t):")
    body += _loads(run, " " * 8) + _compute(code, run, " " * 8, False)
    body += ["        if want:", f"            acc += v{run.sum_of}"] if run.sum is not None \
        else []
    body += sweep + [f"        G[j] = {' + '.join(terms) or '0.0'}"] + shift
    body += ["    e = t", "    if s + t == n:"]
    for m in range(D):
        tail = [f"r{q}_{gather[q] - m}" for q in qs if gather[q] > m]
        body.append(f"        G[e + {m}] = {' + '.join(tail) or '0.0'}")
    body += [f"        e += {D}"] if D else ["        pass"]
    body += ["    bad = False", "    for j in range(e):", "        bad |= G[j] != G[j]",
             f"    part[c, {1 + len(run.scal)}] = 1.0 if bad else 0.0"]
    if run.sum is not None:
        body.append("    part[c, 0] = acc")
    return body


def _scan_lines(code, run):
    """The NaN scan of a one-pass chunk's adjoints. Views of one array that overlap
    (``x[1:]`` and ``x[:-1]``) are scanned once over their hull, not once each: the hull
    holds every element they wrote, so no NaN is missed, and what else it holds was zero
    before the pass or only costs a retry (about 5% of the Rosenbrock loop saved)."""
    groups = {}
    for q in run.ext_act:
        g, go = ("gw", "go") if q in run.inp else ("w", "total")
        groups.setdefault((g, go), []).append(q)
    lines = []
    for (g, go), qs in groups.items():
        each = ["for j in range(t):"] + [f"    bad |= GE{q}[j] != GE{q}[j]" for q in qs]
        if len(qs) == 1:
            lines += each
            continue
        starts = ", ".join(f"code[{run.ext[q][0]}, A + {2 * run.ext[q][1]}]" for q in qs)
        lines += [f"lo = min({starts})", f"hi = max({starts}) + t",
                  f"if hi - lo < {len(qs)} * t:",
                  f"    G = {g}[{go} + s + lo:{go} + s + hi]",
                  "    for j in range(hi - lo):", "        bad |= G[j] != G[j]",
                  "else:"] + ["    " + line for line in each]
    return ["    " + line for line in lines]


def _driver(run, kind, pad, gs, par=True):
    """The inline driver of a run: its chunks one after the other, or spread over threads
    by ``_parallel`` (in two phases when views of one slot receive adjoints at different
    offsets); then the per-chunk partials combined in chunk order. Inline, not a function:
    Numba optimises a callee's code again in every caller that links it, so the generated
    module keeps its call graph flat (tiles, one parallel loop, the entries). ``par``
    False: the chunks one after the other only (the serial entries)."""
    r = run.index
    fwd, rev = "f" in kind, "r" in kind
    lines = [f"# run {r} ({kind}): instructions {run.members[0]}..{run.members[-1]}",
             f"n = code[{run.members[0]}, N]", "nch = (n + CHUNK - 1) // CHUNK", "spread = 0",
             f"gs = {gs}"]
    if rev and run.sum_act and kind == "r":
        lines += [f"so = total + code[{run.sum}, OUT]", "gs = w[so]", "w[so] = 0.0"]
    if rev and par and not (kind == "fr" and run.gather):
        act = [run.ext[q] for q in run.ext_act]
        for x in range(len(act)):
            for y in range(x + 1, len(act)):
                (i1, k1), (i2, k2) = act[x], act[y]
                lines += [f"d = abs(code[{i1}, A + {2 * k1}] - code[{i2}, A + {2 * k2}])",
                          "if d < n and d > spread:", "    spread = d"]
    lines += _chunks(r, kind, par)
    if kind == "fr":
        # a chunk flagged a NaN result: what the pass added is cleared (it added to zero
        # adjoints) and the caller takes the interpreter's gradient, which applies the rule
        # product by product (rare: NaN or inf on the way; no checked tile to compile)
        lines += ["bad = False", "for c in range(nch):",
                  f"    if part[c, {1 + len(run.scal)}] != 0.0:", "        bad = True",
                  "if bad:"]
        for q in run.ext_act:
            i, k = run.ext[q]
            g, go = ("gw", "go") if q in run.inp else ("w", "total")
            lines.append(f"    _clear({g}, {go} + code[{i}, A + {2 * k}], n)")
        lines.append("    return RETRY")
    if fwd and run.sum is not None:
        lines += ["acc = 0.0", "for c in range(nch):", "    acc += part[c, 0]",
                  f"w[code[{run.sum}, OUT]] = acc"]
    if rev:
        for q in run.scal_act:
            i, k = run.scal[q]
            lines += ["acc = 0.0", "for c in range(nch):", f"    acc += part[c, {1 + q}]",
                      f"w[total + code[{i}, A + {2 * k}]] += acc"]
    return [pad + line for line in lines]


def _chunks(r, kind, par=True):
    """Run r's chunks of tile ``kind``: one after the other, or by the entry's parallel
    loop (``_parallel`` names it); ``par`` False: one after the other only."""
    want = "want" if kind == "fr" else "yes"
    which = len(_KINDS) * r + _KINDS.index(kind)
    serial = ["for c in range(nch):",
              f"    run{r}_{kind}(code, ints, xin, w, gw, go, part, gs, c"
              f"{', want' if want == 'want' else ''})"]
    if not par:
        return serial
    return ["if n < PAR_MIN or spread > CHUNK:"] + ["    " + line for line in serial] + [
            "else:",
            "    step = 1 if spread == 0 else 2",
            "    for ph in range(step):",
            f"        _parallel(code, ints, xin, w, gw, go, part, gs, zero + {which}, nch, "
            f"zero + step, ph, {want})"]


def _gather_check(code, last):
    """The gradient entry's start when the inputs are read in place: the gradient array
    cleared, or for the gather form (which writes every element) the views' offsets
    checked against the ones in the source (RETRY, the interpreter, if they differ)."""
    if last is None or not getattr(last, "gather", None):
        return ["    _clear(out, zero + 1, prog[H_NX])"]
    gather = last.gather
    (i0, k0), = [last.ext[q] for q in gather if gather[q] == 0]
    base = f"code[{i0}, A + {2 * k0}]"
    conds = [f"{base} == 0", f"code[{last.members[0]}, N] > 0",
             f"{base} + code[{last.members[0]}, N] + {max(gather.values())} == prog[H_NX]"]
    conds += [f"code[{i}, A + {2 * k}] - {base} == {gather[q]}"
              for q, (i, k) in enumerate(last.ext) if q in gather and gather[q]]
    return ["    if not (" + " and ".join(conds) + "):", "        return RETRY"]


def _forward_text(code, segs, pad, par=True):
    """The forward sweep, inline. Structural instructions call the interpreter's helpers:
    guards, gathers and reductions directly, anything else through ``kernels.forward`` on
    its slice of the program (linking that big function costs seconds of compilation)."""
    lines = []
    for seg in segs:
        if isinstance(seg, _Run):
            lines += _driver(seg, "f", pad, "0.0", par)
            continue
        for i in seg:
            op = int(code[i, K.OP])
            args = f"code[{i}, OUT], code[{i}, A], ints, code[{i}, AUX]"
            if op == K.GUARD:
                lines += [f"{pad}if (w[code[{i}, A]] != 0.0) != (code[{i}, AUX] != 0):",
                          f"{pad}    return {i}"]
            elif op == K.GATHER:
                lines.append(f"{pad}_gather(w, code[{i}, OUT], code[{i}, N], code[{i}, A], "
                             f"ints, code[{i}, AUX])")
            elif K.REDUCE_SUM <= op <= K.REDUCE_MIN:
                lines.append(f"{pad}_reduce_forward(code[{i}, OP], w, {args})")
            elif op == K.MATMUL:
                lines.append(f"{pad}_matmul(code, ints, w, zero + {i}, zero - 1, no, no)")
            else:   # kernels.forward on [i, i + 1); its status renumbered
                lines += [f"{pad}st = _forward(code[{i}:{i + 1}], ints, w)",
                          f"{pad}if st != OK:",
                          f"{pad}    return st + {i} if st >= 0 else "
                          f"(st - {i} if st <= ERR_INDEX else st)"]
    return lines


def _reverse_text(code, segs, pad, par=True):
    """The reverse sweep, inline: fused runs, and ``kernels.reverse_one`` for the active
    structural instructions (a gather's scatter-add directly)."""
    lines = []
    for seg in reversed(segs):
        if isinstance(seg, _Run):
            lines += _driver(seg, "r", pad, "0.0", par)
            continue
        for i in reversed(seg):
            op = int(code[i, K.OP])
            if code[i, K.FLAGS] and op == K.GATHER:
                lines += [f"{pad}_scatter_add(w, total + code[{i}, OUT], code[{i}, N], "
                          f"total + code[{i}, A], ints, code[{i}, AUX])",
                          f"{pad}_clear(w, total + code[{i}, OUT], code[{i}, N])"]
            elif code[i, K.FLAGS] and op == K.MATMUL:
                flags = int(code[i, K.FLAGS])
                lines.append(f"{pad}_matmul(code, ints, w, zero + {i}, total, {'yes' if flags & 1 else 'no'}, "
                             f"{'yes' if flags & 2 else 'no'})")
            elif code[i, K.FLAGS]:
                lines.append(f"{pad}_reverse_one(code, ints, w, zero + {i})")
            elif op == K.SCATTER:
                lines.append(f"{pad}_scatter_swap(code, zero + {i}, ints, w, w, zero, yes)")
    return lines


def _parallel(entry, lines):
    """An entry's lines calling its own parallel loop, and that loop: chunks ph, ph + step,
    ... of the tile function ``which``, among the tiles the entry calls. One loop per entry
    (Numba's parfor costs about a second of compilation each; a loop dispatching to every
    tile of the module would compile tiles the entry never runs: the gradient of a final
    sum uses only the one-pass tile of its last run)."""
    body = "\n".join(lines)
    tiles = sorted(set(re.findall(r"\brun(\d+)_(fr|f|r)\(", body)),
                   key=lambda t: (int(t[0]), _KINDS.index(t[1])))
    loop = ["@pjit",
            f"def _parallel_{entry}(code, ints, xin, w, gw, go, part, gs, which, nch, step, ph, "
            "want):",
            "    for q in prange((nch - ph + step - 1) // step):",
            "        c = ph + q * step"]
    for n, (r, kind) in enumerate(tiles):
        which = len(_KINDS) * int(r) + _KINDS.index(kind)
        loop += [f"        {'elif' if n else 'if'} which == {which}:",
                 f"            run{r}_{kind}(code, ints, xin, w, gw, go, part, gs, c"
                 f"{', want' if kind == 'fr' else ''})"]
    if not tiles:
        loop.append("        pass")
    return [line.replace("_parallel(", f"_parallel_{entry}(") for line in lines], loop


_TEMPLATE_HEAD = '''\
"""Generated by dualtape.compiled from a tape's structure {key}; do not edit."""
import numba
import numpy as np
from numba import prange

from dualtape.kernels import (A, AUX, B, ERR_INDEX, FLAGS, H_NOUT, H_NX, H_OUT, H_TOTAL,
                              N, OK, OP, OUT, SCATTER, program, sel)
from dualtape.kernels import forward as _forward
from dualtape.kernels import gather as _gather
from dualtape.kernels import reduce_forward as _reduce_forward
from dualtape.kernels import scatter_add as _scatter_add
from dualtape.kernels import replay_scatters as _replay_scatters
from dualtape.kernels import reverse_one as _reverse_one
from dualtape.kernels import scatter_swap as _scatter_swap
from dualtape.compiled import clear as _clear
from dualtape.compiled import copy_range as _copy
from dualtape.compiled import matmul_step as _matmul

CHUNK = {chunk}
PAR_MIN = {par_min}
RETRY = {retry}
PARALLEL = {parallel}

jit = numba.njit(cache=True, nogil=True, error_model="numpy")
# tiles and parallel loops are called from the entries only: no Python wrapper to compile
leaf = numba.njit(cache=True, nogil=True, error_model="numpy", _nrt=False,
                  no_cpython_wrapper=True)
pjit = numba.njit(cache=True, nogil=True, error_model="numpy", parallel=PARALLEL,
                  no_cpython_wrapper=True)


'''


#: the first lines of every generated entry (gradient, value, vjp, jvp, hvp): the program's
#: arrays, and ``zero``, ``yes``, ``no`` as data rather than literals, which the calls into
#: helpers and parallel loops pass so that each is compiled once, not once per literal
_ENTRY_START = ("    code = program(prog)", "    ints = prog", "    total = prog[H_TOTAL]",
                "    zero = total - total", "    yes, no = zero == 0, zero != 0",
                "    o = prog[H_OUT]")


def generate(prog, kk=None):
    """(source, number of partials per chunk) of the compiled module for a program; with
    kk, the module of its tangent entries for kk directions only (``_second_order``)."""
    code, segs = _segments(prog)
    runs = [s for s in segs if isinstance(s, _Run)]
    for run in runs:
        _classify(code, run)
    for run in runs:
        # reads from outside this run: every other instruction, and the fused sums of others
        _plan(code, run, _reads(prog, code, set(run.members) | ({run.sum} - {None})))
    last = segs[-1] if segs else None
    one_pass = (isinstance(last, _Run) and last.sum is not None
                and int(prog[K.H_NOUT]) == 1 and not last.outside
                and int(code[last.sum, K.OUT]) == int(prog[K.H_OUT]))
    direct = _direct(prog, code, runs)
    if one_pass and direct:
        _plan_gather(prog, code, runs, last)
    width = 2 + max([len(r.scal) for r in runs] + [0])
    fwd = _forward_plan(prog)
    if kk is not None:
        return _TEMPLATE_HEAD.format(key="{key}", chunk=CHUNK, par_min=PAR_MIN, retry=RETRY,
                                     parallel=True) + _second_order(
            prog, code, segs, runs, one_pass, direct, fwd, kk), width
    out = []
    for run in runs:
        for kind in (_KINDS if one_pass and run is last else ("f", "r")):
            out += ["", ""] + _tile(code, run, kind)
    tiles = len(out)
    p = " " * 4
    head = segs[:-1] if one_pass else segs
    # leave the values as the forward sweep left them (scatters swapped back on the way)
    replay = ["_replay_scatters(code, ints, w, w, zero, no)"] if any(
        int(op) == K.SCATTER for op in code[:, K.OP]) else []
    start = list(_ENTRY_START)
    if not direct:
        start.append("    _copy(w, zero, xin, zero, xin.shape[0], no)")
    gw = ["    gw = w", "    go = total"]
    done = out[:tiles]
    # the entries twice: serial (``grad``, ...) and with parallel loops (``grad_par``, ...),
    # each compiled on its first call, so a tape whose runs are all below PAR_MIN never
    # compiles a parallel loop (a second or more per structure)
    for par in (False, True):
        sfx = "_par" if par else ""
        fw = _forward_text(code, segs, p, par)
        out = []
        entries = [len(out)]
        out += ["", "", "@jit", f"def evaluate{sfx}(prog, xin, y, w, part):",
                '    """kernels.evaluate on the fused sweeps."""'] + start + gw + fw
        out += ["    _copy(y, zero, w, o, prog[H_NOUT], no)", "    return OK"]
        entries.append(len(out))
        out += ["", "", "@jit", f"def vjp{sfx}(prog, xin, seeds, out, w, part):",
                '    """kernels.vjp on the fused sweeps."""'] + start + gw + fw
        out += ["    m, nx = prog[H_NOUT], prog[H_NX]", "    _copy(out, zero, w, o, m, no)",
                "    for r in range(seeds.shape[0]):", "        for j in range(m):",
                "            w[total + o + j] += seeds[r, j]"]
        if direct:      # the fused runs add the input adjoints into row r of out
            out += ["        gw = out", "        go = m + r * nx", "        _clear(out, go, nx)"]
        out += _reverse_text(code, segs, p * 2, par) + [p * 2 + line for line in replay]
        if not direct:
            out.append("        _copy(out, m + r * nx, w, total, nx, yes)")
        out += ["        for j in range(m):", "            w[total + o + j] = 0.0",
                "    return OK"]
        entries.append(len(out))
        out += ["", "", "@jit", f"def grad{sfx}(prog, xin, out, w, part, want):",
                '    """kernels.grad on the fused sweeps; out[0] is NaN when the value is not',
                '    wanted and a final fused sum would have to add it up only for it."""']
        out += start + (["    gw = out", "    go = zero + 1"] + _gather_check(code, last)
                        if direct else gw)
        out += _forward_text(code, head, p, par)
        if one_pass:     # the output is the last run's sum: forward and reverse in one pass
            out += _driver(last, "fr", p, "1.0", par)
        else:
            out.append("    w[total + o] += 1.0")
        out += _reverse_text(code, head, p, par) + [p + line for line in replay]
        out.append("    out[0] = w[o] if want or not ONE_PASS else np.nan")
        if not direct:
            out.append("    _copy(out, zero + 1, w, total, prog[H_NX], yes)")
        out += ["    w[total + o] = 0.0", "    return OK"]
        entries.append(len(out))
        for name, a, b in zip(("evaluate", "vjp", "grad"), entries, entries[1:]):
            if par:     # each parallel entry with its own parallel loop, placed before it
                lines, loop = _parallel(name, out[a:b])
                done += ["", ""] + loop + lines
            else:
                done += out[a:b]
    out = done + ["", "", f"ONE_PASS = {bool(one_pass)}"]
    # per chunk (width): the fused sum, the scalar operands' adjoints, the NaN flag of a
    # one-pass tile
    text = _TEMPLATE_HEAD.format(key="{key}", chunk=CHUNK, par_min=PAR_MIN, retry=RETRY,
                                 parallel=True)
    text += "\n".join(out) + "\n"
    return text + _second_order(prog, code, segs, runs, one_pass, direct, fwd), width


def _only_reader(prog, code, c, runs, members):
    """Whether instruction c is the only one reading the results of ``members`` from
    memory (members of their run read them in registers)."""
    kinds = {i: run.kinds for run in runs for i in run.members}
    slots = [(int(code[m, K.OUT]), int(code[m, K.N])) for m in members]
    reads = [(None, None, (int(prog[K.H_OUT]), int(prog[K.H_NOUT])))]    # the output
    for i, row in enumerate(code):
        if i == c:
            continue
        more = _row_reads(prog, row)
        if more is None:
            return False
        reads += [(i, k, ak) for k, ak in enumerate(more)]
    for i, k, (a, na) in reads:
        for m, (off, ln) in zip(members, slots):
            if _overlaps(a, na, off, ln) and not (
                    i in kinds and kinds[i].get((i, k)) == ("m", m)):     # in registers
                return False
    return True


#: tile numbers of the runs of the forward tangent sweep with gathers read inside them
#: start here (``_forward_plan``)
_INLINE_BASE = 1000


def _forward_plan(prog):
    """(segs, runs, direct, placed) of the ``jvp`` entry when gathers are read inside its
    runs (``_inline_segments``) or runs write their results in a concatenation's slot
    (``placed``: member -> (concatenation, part)), else None; the runs' tiles are numbered
    from ``_INLINE_BASE``. Only the forward tangent sweep: a reverse sweep through an
    index table would add into memory at positions two chunks may share."""
    code, segs, inline = _inline_segments(prog)
    runs = [s for s in segs if isinstance(s, _Run)]
    for run in runs:
        run.index += _INLINE_BASE
        _plan(code, run, _reads(prog, code, set(run.members) | ({run.sum} - {None})))
    direct = _direct(prog, code, runs, inline)
    # a concatenation of active run results read by nothing else: the runs write them in
    # its slot, and it is not executed (one pass over values and K tangents less)
    placed = {}
    for seg in segs:
        if isinstance(seg, _Run):
            continue
        for c in seg:
            if int(code[c, K.OP]) != K.CONCAT:
                continue
            p = int(code[c, K.AUX])
            parts = [tuple(int(v) for v in prog[p + 1 + 3 * e:p + 4 + 3 * e])
                     for e in range(int(prog[p]))]
            found = {}
            for e, (off, ln, act) in enumerate(parts):
                for run in runs:
                    for m in run.outside:
                        if (int(code[m, K.OUT]), int(code[m, K.N])) == (off, ln) and act and \
                                code[m, K.FLAGS] and m not in placed:
                            found[e] = (run, m)
            if len(found) != len(parts) or not parts or not _only_reader(
                    prog, code, c, runs, [m for _, m in found.values()]):
                continue
            for e, (run, m) in found.items():
                before = "".join(f" + ints[code[{c}, AUX] + {2 + 3 * q}]" for q in range(e))
                run.place[m] = f"code[{c}, OUT]{before}"
                placed[m] = (c, e)
    return (segs, runs, direct, placed) if inline or placed else None


# ---------------------------------------------------------------------------- tangents and
# second order
#
# The entries ``jvp`` and ``hvp`` of a module: K tangent directions at once (K a run-time
# size), a run's values and its K tangents per element in registers and in small per-chunk
# vectors (rows of ``sc``), and forward-over-reverse with the adjoints and their K tangents.
# Tangent slot o, element j, direction q is at (o + j) * K + q (the interpreter's layout).
# Products are plain; a tile flags a chunk that wrote a NaN derivative (0 * inf, a NaN
# partial, a NaN already there) and the entry returns RETRY: the tape then takes the
# interpreter's sweep, which applies the zero rule product by product.

#: tile kinds: values and tangents forward ("t"), adjoints and adjoint tangents ("u"),
#: both in one pass when the output is the final sum of the last run ("tu")
_KINDS2 = ("t", "u", "tu")
#: numbers of directions with tangent entries of their own (K a literal, the loop over the
#: directions written out): Rosenbrock jvp at 10^5, 2 / 4 / 6 directions 2.6x / 1.5x / 1.0x
#: faster than with K at run time (whose loop LLVM vectorises over the directions; 8
#: written out were 1.8x slower), the Brusselator jvp at 10^4 with 6 directions 1.4x
SMALL_K = range(2, 7)
_IMPORTS2 = '''

from dualtape.kernels import H_OUTACT, REDUCE_SUM
from dualtape.kernels import matmul_acc as _matmul_acc
from dualtape.kernels import reduce_reverse2 as _reduce_reverse2
from dualtape.kernels import reduce_tangent as _reduce_tangent
from dualtape.kernels import reverse2 as _reverse2
from dualtape.kernels import tangent as _tangent


@leaf
def _gather_t(wt, o, n, a, ints, p, K, clear):
    """Tangents of gather o[j] = a[ints[p + j]] (clear: the reverse, adjoint tangents
    added back to a and cleared at o). Unsigned indices: no wrap-around test per access."""
    uK = np.uint64(K)
    for j in range(n):
        s = np.uint64((a + ints[p + j]) * K)
        d = np.uint64((o + j) * K)
        if clear:
            for u in range(uK):
                wt[s + u] += wt[d + u]
                wt[d + u] = 0.0
        else:
            for u in range(uK):
                wt[d + u] = wt[s + u]


@leaf
def _nz_out(out, wt, base, m, ints, p, through, K, act, nz):
    """The output's tangents at the (row, direction) pairs of ``nz`` (row pointers, m + 1,
    then a direction per entry: a CSR pattern's nonzeros, in its order), into ``out``; row
    r is slot base + r, or base + ints[p + r] through a final gather's table. A
    compressed Jacobian's nonzeros without the (m, K) result and its pick."""
    uK = np.uint64(K)
    ub, up, ud = np.uint64(base), np.uint64(p), np.uint64(m + 1)
    for r in range(m):
        q = ub + (np.uint64(ints[up + np.uint64(r)]) if through else np.uint64(r))
        if act:
            src = q * uK
            for i in range(nz[r], nz[r + 1]):
                out[i] = wt[src + np.uint64(nz[ud + np.uint64(i)])]
        else:
            for i in range(nz[r], nz[r + 1]):
                out[i] = 0.0


@leaf
def _sum4(v, t):
    """v[0] + ... + v[t - 1] in four interleaved partial sums (one chain of dependent
    additions costs 3-4 cycles per element: as much as the rest of a fused element)."""
    l0 = l1 = l2 = l3 = 0.0
    j = 0
    while j + 4 <= t:
        l0 += v[j]
        l1 += v[j + 1]
        l2 += v[j + 2]
        l3 += v[j + 3]
        j += 4
    while j < t:
        l0 += v[j]
        j += 1
    return (l0 + l1) + (l2 + l3)


@leaf
def _has_nan(v, o, n):
    bad = False
    for j in range(n):
        bad |= v[o + j] != v[o + j]
    return bad


@jit
def _matmul_t(w, wt, K, o, a, b, m, k, n, flags):
    """Tangents of C = A B (A m x k, B k x n) by matrix products (BLAS when large):
    C' = A B' + A' B. The K directions of an element are contiguous, so A B' is one
    product with B' as (k, n K), and A' B one (n, K) block per row of A. Plain products:
    returns whether a tangent is NaN (the entry then returns RETRY, and the interpreter's
    sweep applies the zero rule)."""
    for j in range(o * K, (o + m * n) * K):
        wt[j] = 0.0
    Ct = wt[o * K:(o + m * n) * K].reshape((m, n * K))
    A = w[a:a + m * k].reshape((m, k))
    B = w[b:b + k * n].reshape((k, n))
    if flags & 2:
        _matmul_acc(A, wt[b * K:(b + k * n) * K].reshape((k, n * K)), Ct, False, False)
    if flags & 1:
        At = wt[a * K:(a + m * k) * K].reshape((m, k * K))
        for i in range(m):
            _matmul_acc(B, At[i].reshape((k, K)), Ct[i].reshape((n, K)), True, False)
    return _has_nan(wt, o * K, m * n * K)


@jit
def _matmul_u(w, wt, at, K, total, o, a, b, m, k, n, flags):
    """Adjoint tangents of C = A B (``_matmul_t``'s layout): B^ += A^T C^' + A'^T Cbar,
    A^ += C^' B^T + Cbar B'^T. Returns whether one is NaN (RETRY)."""
    A = w[a:a + m * k].reshape((m, k))
    B = w[b:b + k * n].reshape((k, n))
    G = w[total + o:total + o + m * n].reshape((m, n))
    Cat = at[o * K:(o + m * n) * K].reshape((m, n * K))
    bad = False
    if flags & 2:
        Bat = at[b * K:(b + k * n) * K].reshape((k, n * K))
        _matmul_acc(A, Cat, Bat, True, False)
        if flags & 1:       # A'^T Cbar, one column of Cbar at a time
            At = wt[a * K:(a + m * k) * K].reshape((m, k * K))
            for j in range(n):
                col = np.dot(At.T, G[:, j].copy())
                for p in range(k):
                    for q in range(K):
                        Bat[p, j * K + q] += col[p * K + q]
        bad |= _has_nan(at, b * K, k * n * K)
    if flags & 1:
        Aat = at[a * K:(a + m * k) * K].reshape((m, k * K))
        for i in range(m):
            Ai = Aat[i].reshape((k, K))
            _matmul_acc(B, Cat[i].reshape((n, K)), Ai, False, False)
            if flags & 2:   # Cbar B'^T
                Bt = wt[b * K:(b + k * n) * K].reshape((k, n * K))
                for j in range(n):
                    g = G[i, j]
                    for p in range(k):
                        for q in range(K):
                            Ai[p, q] += g * Bt[p, j * K + q]
        bad |= _has_nan(at, a * K, m * k * K)
    return bad


@leaf
def _concat_t(wt, o, ints, p, K, clear):
    """Tangents of a concatenation at o (clear: the reverse, as _gather_t)."""
    pos = o * K
    for e in range(ints[p]):
        off, ln, act = ints[p + 1 + 3 * e] * K, ints[p + 2 + 3 * e] * K, ints[p + 3 + 3 * e]
        v = wt[pos:pos + ln]
        src = wt[off:off + ln]
        for j in range(ln):
            if clear:
                if act:
                    src[j] += v[j]
                v[j] = 0.0
            else:
                v[j] = src[j] if act else 0.0
        pos += ln
'''


def _derivative_ops(code, run, i):
    """(k, kind, idx) of the operands of member i that receive a derivative."""
    prim = _ROWS[int(code[i, K.OP]) - 1]
    out = []
    for k in range(prim.arity):
        kind, idx = run.kinds[i, k]
        if _active(code, i, k, prim) and not (kind == "m" and not code[idx, K.FLAGS]):
            out.append((k, kind, idx))
    return out


def _blocks2(code, run):
    """The K-vectors per chunk of a run (block index in a row of ``sc``): the fused sum's
    tangent (0) and the scalar operands' adjoint tangents."""
    run.act2 = [i for i in run.members if code[i, K.FLAGS]]
    return 1 + len(run.scal)


def _tan(run, kind, idx):
    """Tangent u (the K loop's index) of an operand at element j (jk = j * K)."""
    if kind == "m":
        return f"tn{idx}"
    if kind == "e" and idx in run.chain:
        return f"{'vt' if idx in run.inp2 else 'wt'}[tx{idx} + u]"
    if kind == "e":
        return f"{'vt' if idx in run.inp2 else 'wt'}[te{idx} + jk + u]"
    return f"wt[ts{idx} + u]"


def _times(coef, term):
    return term if coef == "1.0" else (f"-{term}" if coef == "-1.0" else f"{coef} * {term}")


def _partials2(code, run, pad):
    """d{i}_{k} = the first partials of the active members (constants stay literals: the
    returned map gives each (i, k) its coefficient)."""
    lines, coef = [], {}
    for i in run.act2:
        prim = _ROWS[int(code[i, K.OP]) - 1]
        for k, _, _ in _derivative_ops(code, run, i):
            form, c = _form(prim.d[k])
            if form == "const":
                coef[i, k] = repr(c)
                continue
            lines += _bind(run, i, prim, prim.d[k], pad, with_o=True)
            lines.append(f"{pad}d{i}_{k} = {prim.d[k]}")
            coef[i, k] = f"d{i}_{k}"
    return lines, coef


def _tangent_lines(code, run, coef, fwd, pad):
    """Tangent u of the active members, tn{i}: the sum of partial times operand tangent
    in operand order, as the interpreter adds them. The reverse-only tile loads those the
    forward pass stored (read outside the run) instead."""
    lines = []
    for i in run.act2:
        if not fwd and i in run.outside:
            lines.append(f"{pad}tn{i} = wt[to{i} + jk + u]")
            continue
        terms = [_times(coef[i, k], _tan(run, kind, idx))
                 for k, kind, idx in _derivative_ops(code, run, i)]
        lines.append(f"{pad}tn{i} = {' + '.join(terms) if terms else '0.0'}")
        if fwd and i in run.outside:
            lines.append(f"{pad}wt[to{i} + jk + u] = tn{i}")
    return lines


def _reverse2_lines(code, run, coef, pad, seed_tangent):
    """(scalar lines, K-loop lines, names): the reverse of a run's members for one element
    and the names of what it sends out of the run (outside the K loop and in it).
    Adjoints g{i} (in registers, outside the K loop) take g_k += g_i d_k; adjoint tangents
    an{i} (inside it) at_k += at_i d_k + g_i sum_l d2_kl t_l (``kernels.ew_reverse2``). An
    adjoint (tangent) that receives nothing is a known zero and its products are left
    out."""
    lines, loop, has = [], [], set()
    pu = pad + "    "

    def put(name, value):
        first = name not in has
        has.add(name)
        return f"{name} {'=' if first else '+='} {value}"

    for i in run.act2:
        if i in run.outside:
            lines += [f"{pad}g{i} = G{i}[j]", f"{pad}G{i}[j] = 0.0"]
            loop += [f"{pu}an{i} = at[to{i} + jk + u]", f"{pu}at[to{i} + jk + u] = 0.0"]
            has |= {f"g{i}", f"an{i}"}
        if run.sum_act and run.sum_of == i:
            lines.append(pad + put(f"g{i}", "gs"))
            if seed_tangent:
                loop.append(pu + put(f"an{i}", "gst[u]"))
    for i in reversed(run.act2):
        live_g, live_a = f"g{i}" in has, f"an{i}" in has
        if not (live_g or live_a):
            continue
        prim = _ROWS[int(code[i, K.OP]) - 1]
        ops_ = _derivative_ops(code, run, i)
        pairs = {(min(k, l), max(k, l)) for k, _, _ in ops_ for l, _, _ in ops_
                 if prim.d2.get((min(k, l), max(k, l))) is not None} if live_g else set()
        for k, l in sorted(pairs):      # g_i times each second partial, once per pair
            expr = prim.d2[k, l]
            form, c = _form(expr)
            if form == "expr":
                lines += _bind(run, i, prim, expr, pad, with_o=True)
            lines.append(f"{pad}gd{i}_{k}{l} = g{i} * {expr if form == 'expr' else repr(c)}")
        for k, kind, idx in ops_:
            if live_g:
                g = {"m": f"g{idx}", "e": f"a{idx}", "s": f"bb{idx}"}[kind]
                if kind == "s":
                    has.add(g)        # a per-chunk sum, 0.0 before the loop
                lines.append(pad + put(g, _times(coef[i, k], f"g{i}")))
            terms = [_times(coef[i, k], f"an{i}")] if live_a else []
            terms += [f"gd{i}_{min(k, l)}{max(k, l)} * {_tan(run, lk, li)}"
                      for l, lk, li in ops_ if (min(k, l), max(k, l)) in pairs]
            if not terms:
                continue
            value = " + ".join(terms)
            if kind == "m":
                loop.append(pu + put(f"an{idx}", value))
            elif kind == "e":       # one addition into memory per element and direction
                loop.append(pu + put(f"ae{idx}", value))
            else:
                loop.append(f"{pu}BT{idx}[u] += {value}")
    out = [q for q in run.ext_act if f"ae{q}" in has]
    loop += [f"{pu}{'gout[ta' if q in run.inp2 else 'at[te'}{q} + jk + u] += ae{q}"
             for q in out]
    lines += [f"{pad}GE{q}[j] += a{q}" for q in run.ext_act if f"a{q}" in has]
    return lines, loop, [f"a{q}" for q in run.ext_act if f"a{q}" in has], \
        [f"ae{q}" for q in out]


def _flag(pad, names):
    """Flag a NaN among the derivatives an element sends out of the run (NaN propagates
    through the sum; an infinite one may flag too, which only costs the interpreter's
    sweep): one test per element and direction, not a scan of what was written."""
    if not names:
        return []
    return [f"{pad}z = {' + '.join(names)}", f"{pad}bad |= z != z"]


def _tile2(code, run, kind, kk=None):
    """Chunk c of a run for the tangent and second-order entries (kinds ``_KINDS2``):
    per element, the values and partials in registers, then one loop over the K
    directions with the tangents (and adjoint tangents) of every member in registers.
    kk: K is that literal (the argument is ignored) and the loop over the directions is
    written out (``_unroll``), its fused sums stored (``_sums_k``)."""
    r = run.index
    fwd, rev = kind in ("t", "tu"), kind in ("u", "tu")
    body = ["@jit", f"def run{r}_{kind}(code, ints, xin, vt, w, wt, at, gout, sc, gs, gst, "
            f"{'K' if kk is None else 'K_'}, c):"]
    if kk is not None:
        body.append(f"    K = {kk}")
    body += ["    total = ints[H_TOTAL]", "    s = c * CHUNK",
            f"    t = min(CHUNK, code[{run.members[0]}, N] - s)", "    row = sc[c]",
            "    bad = False"]
    for q, (i, k) in enumerate(run.ext):
        # an input is read in the caller's arrays (xin, and V flat as vt) and its
        # derivatives go straight into the result (gout: gradient from 1, H V after it)
        src, g = ("xin", "gout[1 + p + s:1 + p + s + t]") if q in run.inp2 else (
            "w", "w[total + p + s:total + p + s + t]")
        if q in run.chain:      # read through gathers' tables (forward tiles only)
            assert not rev
            chain = run.chain[q]
            body += [f"    E{q} = {src}", f"    R{q} = code[{chain[-1]}, A]",
                     f"    QS{q} = np.uint64(code[{chain[0]}, AUX] + s)"]
            body += [f"    Q{q}_{m} = np.uint64(code[{g}, AUX])" for m, g in enumerate(chain)
                     if m]
            body += [f"    F{q}_{m} = code[{chain[m - 1]}, A] - code[{chain[m]}, OUT]"
                     for m in range(1, len(chain))]
            continue
        body += [f"    p = code[{i}, A + {2 * k}]", f"    E{q} = {src}[p + s:p + s + t]"]
        if q in run.ext_act:
            body += [f"    ie{q} = (p + s) * K", f"    te{q} = np.uint64(ie{q})"]
            if rev:
                body.append(f"    GE{q} = {g}")
            if rev and q in run.inp2:
                body += [f"    ia{q} = 1 + ints[H_NX] + ie{q}", f"    ta{q} = np.uint64(ia{q})"]
    for q, (i, k) in enumerate(run.scal):
        body += [f"    p = code[{i}, A + {2 * k}]", f"    s{q} = w[p]",
                 f"    ts{q} = np.uint64(p * K)"]
    for i in run.members:
        out_act = i in run.outside and code[i, K.FLAGS]
        if i in run.store or out_act:
            body.append(f"    p = {run.place.get(i, f'code[{i}, OUT]')}")
        if i in run.store:
            body.append(f"    V{i} = w[p + s:p + s + t]")
        if out_act:
            body += [f"    io{i} = (p + s) * K", f"    to{i} = np.uint64(io{i})"]
            if rev:
                body.append(f"    G{i} = w[total + p + s:total + p + s + t]")
    sum_t = kind == "t" and run.sum_act
    if sum_t:
        body += ["    ST = row[SC0:SC0 + K]", "    for u in range(K):", "        ST[u] = 0.0"]
    if fwd and run.sum is not None:
        body.append("    acc = 0.0")
    if rev:
        for q in run.scal_act:
            body += [f"    bb{q} = 0.0", f"    BT{q} = row[SC0 + {1 + q} * K:SC0 + {2 + q} * K]",
                     "    for u in range(K):", f"        BT{q}[u] = 0.0"]
    p12, p16 = " " * 12, " " * 16
    elem = _loads(run, p12) + [f"{p12}tx{q} = x{q} * uK" for q in run.chain
                               if q in run.ext_act]
    elem += _compute(code, run, p12, load_stored=not fwd)
    if kind == "t":
        elem += [f"{p12}V{i}[j] = v{i}" for i in sorted(run.store)]
    if fwd and run.sum is not None:
        elem.append(f"{p12}acc += v{run.sum_of}")
    partials, coef = _partials2(code, run, p12)
    scalar, loop, sent, sent_k = (_reverse2_lines(code, run, coef, p12, kind == "u") if rev
                                  else ([], [], [], []))
    if fwd:         # the tangents read outside the run
        sent_k = sent_k + [f"tn{i}" for i in run.act2 if i in run.outside]
    elem += partials + scalar
    loop = _tangent_lines(code, run, coef, fwd, p16) + (
        [f"{p16}ST[u] += tn{run.sum_of}"] if sum_t else []) + loop
    # one direction (hvp, a Hessian column): no loop of one trip per element, which costs
    # as much again as the rest of the element (measured on Rosenbrock at 10^5)
    # indices unsigned: no test for a negative index (wrap-around) on every access
    # (what the reverse sends out is tested where the buffers are added back)
    k1 = elem + [f"{p12}u = np.uint64(0)"] + [line[4:] for line in loop]
    body += ["    uK = np.uint64(K)"]
    body += ["    if K == 1:"] + _k1(run, kind, k1 + _flag(p12, [] if rev else sent_k)) + [
        "    else:"] if kk is None else ["    if True:"]
    loop = loop + _flag(p16, sent_k) or [f"{p16}pass"]
    post = []
    if kk is not None:
        elem, loop, pre, post = _sums_k(elem, loop)
        body += pre
    body += ["        for j in range(t):", f"{p12}jk = np.uint64(j) * uK"] + elem
    body += _flag(p12, sent) + ([f"{p12}for u in range(uK):"] + loop if kk is None else
                                _unroll(loop, kk)) + post
    if rev:
        body += [f"    row[{2 + q}] = bb{q}" for q in run.scal_act]
        # a NaN derivative sent out by this chunk: the entry returns RETRY
        for q in run.scal_act:
            body += [f"    bad |= bb{q} != bb{q}", "    for u in range(K):",
                     f"        bad |= BT{q}[u] != BT{q}[u]"]
    if sum_t:
        body += ["    for u in range(K):", "        bad |= ST[u] != ST[u]"]
    body.append("    row[1] = 1.0 if bad else 0.0")
    if fwd and run.sum is not None:
        body.append("    row[0] = acc")
    return body


def _unroll(loop, kk):
    """The loop over the directions written out kk times (u{q} the unsigned literal q,
    the names it assigns suffixed _q), a level less indented: no loop for LLVM to keep
    (a loop of 8 trips stayed one, with alias checks, slower than K at run time)."""
    local = sorted({m.group(1) for line in loop
                    for m in [re.match(r"\s*([A-Za-z_]\w*) \+?= ", line)] if m}, key=len,
                   reverse=True)
    pat = re.compile(r"\b(" + "|".join(local + ["u"]) + r")\b")
    out = [" " * 12 + f"u{q} = np.uint64({q})" for q in range(kk)]
    for q in range(kk):
        out += [pat.sub(lambda m: f"u{q}" if m.group(1) == "u" else f"{m.group(1)}_{q}",
                        line[4:]) for line in loop]
    return out


def _sums_k(elem, loop):
    """(elem, loop, lines before, lines after the element loop) for K a literal: the fused
    sum and its K tangents stored per element and added after the loop in four partial
    sums (``_sum4``), as ``_k1`` does: one chain of dependent additions through memory
    (``ST[u] +=``) cost 9 cycles an element, more than the rest of the 4-direction
    Rosenbrock jvp (K sums in registers instead: no faster)."""
    elem = [re.sub(r"^(\s*)acc \+= (v\d+)$", r"\1Sv[j] = \2", line) for line in elem]
    pre, post = [], []
    loop = [re.sub(r"^(\s*)ST\[u\] \+= (tn\d+)$", r"\1St[u * ut + jk0] = \2", line)
            for line in loop]
    if any("Sv[j]" in line for line in elem):
        pre.append("        Sv = np.empty(t)")
        post.append("        acc += _sum4(Sv, t)")
    if any("St[u" in line for line in loop):
        pre += ["        St = np.empty(K * t)", "        ut = np.uint64(t)"]
        elem = [" " * 12 + "jk0 = np.uint64(j)"] + elem
        post += ["        for u in range(K):", "            ST[u] += _sum4(St[u * t:], t)"]
    return elem, loop, pre, post


def _k1(run, kind, elem):
    """The element loop for one direction (K = 1), written so that LLVM vectorises it:
    contiguous views of the tangents instead of index arithmetic, and nothing carried from
    one element to the next. What an element adds into memory where another element may
    add too (views of one slot at two offsets) goes into per-chunk buffers, added after the
    loop with the NaN test; sums are stored and added in four partial sums (``_sum4``).
    Measured on the Rosenbrock hvp at 10^5, one thread: 350 -> 190 us."""
    rev = kind in ("u", "tu")
    ext = [q for q in run.ext_act if q not in run.chain]
    outs = [i for i in run.act2 if i in run.outside]
    pre = [f"        T{q} = {'vt' if q in run.inp2 else 'wt'}[ie{q}:ie{q} + t]" for q in ext]
    pre += [f"        TO{i} = wt[io{i}:io{i} + t]" for i in outs]
    if rev:
        pre += [f"        AO{i} = at[io{i}:io{i} + t]" for i in outs]
    text = "\n".join(elem)
    text = re.sub(r"\b(?:vt|wt)\[te(\d+) \+ jk \+ u\]", r"T\1[j]", text)
    text = re.sub(r"\bwt\[to(\d+) \+ jk \+ u\]", r"TO\1[j]", text)
    text = re.sub(r"\bat\[to(\d+) \+ jk \+ u\]", r"AO\1[j]", text)
    bufs = []
    if rev:
        for name, pat in (("Bg", r"\bGE(\d+)\[j\] \+= a\1\b"),
                          ("Bh", r"\b(?:gout\[ta|at\[te)(\d+) \+ jk \+ u\] \+= ae\1\b")):
            for q in sorted({int(m) for m in re.findall(pat, text)}):
                bufs.append((name, q))
            text = re.sub(pat, lambda m, b=name: f"{b}{m.group(1)}[j] = "
                          f"{'a' if b == 'Bg' else 'ae'}{m.group(1)}", text)
    sums = []
    for var, buf in (("acc", "Sv"), ("ST[u]", "St")):
        pat = re.escape(var) + r" \+= (tn\d+|v\d+)\b"
        if re.search(pat, text):
            sums.append((var, buf))
            text = re.sub(pat, lambda m, b=buf: f"{b}[j] = {m.group(1)}", text)
    text = text.replace("bad |= z != z", "nb += z != z")
    pre += [f"        {b}{q} = np.empty(t)" for b, q in bufs]
    pre += [f"        {buf} = np.empty(t)" for _, buf in sums]
    post = []
    for b, q in bufs:
        dst = f"GE{q}" if b == "Bg" else (f"gout[ia{q}:ia{q} + t]" if q in run.inp2 else
                                          f"at[ie{q}:ie{q} + t]")
        post += [f"        D = {dst}", "        for j in range(t):", f"            y = {b}{q}[j]",
                 "            nb += y != y", "            D[j] += y"]
    post += [f"        {var.replace('[u]', '[0]')} += _sum4({buf}, t)" for var, buf in sums]
    return (pre + ["        nb = 0", "        for j in range(t):", "            jk = np.uint64(j)"]
            + text.split("\n")
            + post + ["        bad = nb > 0"])


def _driver2(code, run, kind, pad, gs):
    """The inline driver of a run's tangent or second-order tile (``_driver``'s twin):
    chunks in order or by the entry's parallel loop, a flagged chunk returning RETRY, then
    the per-chunk partials added in chunk order."""
    r = run.index
    fwd, rev = kind in ("t", "tu"), kind in ("u", "tu")
    lines = [f"# run {r} ({kind}): instructions {run.members[0]}..{run.members[-1]}",
             f"n = code[{run.members[0]}, N]", "nch = (n + CHUNK - 1) // CHUNK", "spread = 0",
             f"gs = {gs}"]
    if kind == "u" and run.sum_act:
        lines += [f"so = code[{run.sum}, OUT]", "gs = w[total + so]", "w[total + so] = 0.0",
                  "for u in range(K):", "    gst[u] = at[so * K + u]",
                  "    at[so * K + u] = 0.0"]
    if rev:
        lines += _spread(code, run)
    which = len(_KINDS2) * r + _KINDS2.index(kind)
    lines += ["if n < PAR_MIN or spread > CHUNK:", "    for c in range(nch):",
              f"        run{r}_{kind}(code, ints, xin, vt, w, wt, at, gout, sc, gs, gst, K, c)",
              "else:", "    step = 1 if spread == 0 else 2", "    for ph in range(step):",
              "        _parallel2(code, ints, xin, vt, w, wt, at, gout, sc, gs, gst, K, "
              f"zero + {which}, nch, zero + step, ph)",
              "for c in range(nch):", "    if sc[c, 1] != 0.0:", "        return RETRY"]
    if fwd and run.sum is not None:
        lines += _chunk_sum("0", f"w[code[{run.sum}, OUT]] = acc")
    if kind == "t" and run.sum_act:
        lines += [f"so = code[{run.sum}, OUT] * K", "for u in range(K):"]
        lines += ["    " + line for line in _chunk_sum("SC0 + u", "wt[so + u] = acc")]
    if rev:
        for q in run.scal_act:
            i, k = run.scal[q]
            lines += _chunk_sum(str(2 + q), f"p = code[{i}, A + {2 * k}]")
            lines += ["w[total + p] += acc", "for u in range(K):"]
            lines += ["    " + line for line in _chunk_sum(f"SC0 + {1 + q} * K + u",
                                                          "at[p * K + u] += acc")]
    return [pad + line for line in lines]


def _chunk_sum(col, then):
    """acc = the per-chunk partials in column col of sc, added in chunk order; then."""
    return ["acc = 0.0", "for c in range(nch):", f"    acc += sc[c, {col}]", then]


def _spread(code, run):
    """Lines setting ``spread``: the largest distance below n between the offsets of two
    active external operands (views of one slot: chunks then run in two phases)."""
    n_act = [run.ext[q] for q in run.ext_act]
    lines = []
    for x in range(len(n_act)):
        for y in range(x + 1, len(n_act)):
            (i1, k1), (i2, k2) = n_act[x], n_act[y]
            lines += [f"d = abs(code[{i1}, A + {2 * k1}] - code[{i2}, A + {2 * k2}])",
                      "if d < n and d > spread:", "    spread = d"]
    return lines


def _struct_tangent(code, i, pad):
    """Value and then tangent of structural instruction i (interpreter helpers)."""
    lines = _forward_text(code, [[i]], pad)
    if not code[i, K.FLAGS]:
        return lines
    op = int(code[i, K.OP])
    o, a, p = f"code[{i}, OUT]", f"code[{i}, A]", f"code[{i}, AUX]"
    if op == K.GATHER:
        body = [f"_gather_t(wt, {o}, code[{i}, N], {a}, ints, {p}, K, False)"]
    elif op == K.CONCAT:
        body = [f"_concat_t(wt, {o}, ints, {p}, K, False)"]
    elif K.REDUCE_SUM <= op <= K.REDUCE_MIN:
        body = [f"_reduce_tangent(code[{i}, OP], w, wt, K, {o}, {a}, ints, {p})"]
    elif op == K.MATMUL:
        body = [f"p = {p}", f"if _matmul_t(w, wt, K, {o}, {a}, code[{i}, B], ints[p], "
                f"ints[p + 1], ints[p + 2], code[{i}, FLAGS]):", "    return RETRY"]
    else:
        body = [f"_tangent(code[{i}:{i + 1}], ints, w, wt, K)"]
    return lines + [pad + line for line in body]


def _struct_reverse2(code, i, pad):
    """Adjoint tangents, then adjoints, of active structural instruction i."""
    op = int(code[i, K.OP])
    o, a, p = f"code[{i}, OUT]", f"code[{i}, A]", f"code[{i}, AUX]"
    clear = [f"for j in range({o} * K, ({o} + code[{i}, N]) * K):", "    at[j] = 0.0"]
    if op == K.GATHER:
        body = [f"_gather_t(at, {o}, code[{i}, N], {a}, ints, {p}, K, True)",
                f"_scatter_add(w, total + {o}, code[{i}, N], total + {a}, ints, {p})",
                f"_clear(w, total + {o}, code[{i}, N])"]
    elif op == K.CONCAT:
        body = [f"_concat_t(at, {o}, ints, {p}, K, True)", f"_reverse_one(code, ints, w, {i})"]
    elif K.REDUCE_SUM <= op <= K.REDUCE_MIN:
        body = [f"_reduce_reverse2(code[{i}, OP], w, wt, at, K, total, {o}, {a}, ints, {p}, "
                "scr)"] + clear + [f"_reverse_one(code, ints, w, {i})"]
    elif op == K.MATMUL:
        flags = int(code[i, K.FLAGS])
        body = [f"p = {p}", f"if _matmul_u(w, wt, at, K, total, {o}, {a}, code[{i}, B], "
                f"ints[p], ints[p + 1], ints[p + 2], code[{i}, FLAGS]):", "    return RETRY"]
        body += clear
        body.append(f"_matmul(code, ints, w, {i}, total, {bool(flags & 1)}, {bool(flags & 2)})")
    else:
        body = [f"_reverse2(code[{i}:{i + 1}], ints, w, wt, at, K)"]
    return [pad + line for line in body]


def _tangent_text(code, segs, pad):
    lines = []
    for seg in segs:
        if isinstance(seg, _Run):
            lines += _driver2(code, seg, "t", pad, "0.0")
        else:
            for i in seg:
                lines += _struct_tangent(code, i, pad)
    return lines


def _reverse2_text(code, segs, pad):
    lines = []
    for seg in reversed(segs):
        if isinstance(seg, _Run):
            lines += _driver2(code, seg, "u", pad, "0.0")
        else:
            lines += [line for i in reversed(seg) if code[i, K.FLAGS]
                      for line in _struct_reverse2(code, i, pad)]
    return lines


def _parallel2(entry, lines):
    """``_parallel`` for the tangent and second-order tiles."""
    body = "\n".join(lines)
    tiles = sorted(set(re.findall(r"\brun(\d+)_(tu|t|u)\(", body)),
                   key=lambda t: (int(t[0]), _KINDS2.index(t[1])))
    loop = ["@pjit2", f"def _parallel2_{entry}(code, ints, xin, vt, w, wt, at, gout, sc, gs, "
            "gst, K, which, nch, step, ph):",
            "    for q in prange((nch - ph + step - 1) // step):",
            "        c = ph + q * step"]
    for n, (r, kind) in enumerate(tiles):
        loop += [f"        {'elif' if n else 'if'} which == "
                 f"{len(_KINDS2) * int(r) + _KINDS2.index(kind)}:",
                 f"            run{r}_{kind}(code, ints, xin, vt, w, wt, at, gout, sc, gs, "
                 "gst, K, c)"]
    if not tiles:
        loop.append("        pass")
    return [line.replace("_parallel2(", f"_parallel2_{entry}(") for line in lines], loop


def _gather_out(last):
    """Entry lines: the output is the final gather ``last``: its values and K tangents
    written straight into the jvp's result, inline so that in a K-literal module the
    direction loop is unrolled (a helper with K at run time was 2x slower at 10^4);
    unsigned positions."""
    return ["        m = prog[H_NOUT]", "        um = np.uint64(m)", "        uK = np.uint64(K)",
            f"        ua = np.uint64(code[{last}, A])",
            f"        up = np.uint64(code[{last}, AUX])", "        act = prog[H_OUTACT] != 0",
            "        for j in range(m):",
            "            q = ua + np.uint64(ints[up + np.uint64(j)])",
            "            out[j] = w[q]",
            "            src = q * uK",
            "            dst = um + np.uint64(j) * uK",
            "            for u in range(uK):",
            "                out[dst + u] = wt[src + u] if act else 0.0"]


def _second_order(prog, code, segs, runs, one_pass, direct, fwd=None, kk=None):
    """Source of the tiles and the entries ``jvp`` (values and K tangents) and ``hvp``
    (value, gradient and K Hessian-vector products of a scalar output), appended to the
    module; each compiles on its first call only. fwd: the runs of ``jvp`` when they
    read gathers inside (``_forward_plan``). kk: for K = kk only (a module of its own,
    ``CompiledTape.module2``), K a literal in every tile."""
    fsegs, fruns, fdirect, placed = fwd if fwd is not None else (segs, [], direct, {})
    nblocks = max([_blocks2(code, run) for run in runs + fruns] + [1])
    for run in runs:     # inputs read in place only when nothing else reads them
        run.inp2 = run.inp if direct else set()
    for run in fruns:
        run.inp2 = run.inp if fdirect else set()
    # the tangent entries have no serial twin: their loops run in parallel unless
    # DUALTAPE_COMPILE_PARALLEL=0 (then the module differs, and so does its cache key)
    out = [_IMPORTS2, f"pjit2 = numba.njit(cache=True, nogil=True, error_model='numpy', "
           f"parallel={parallel()}, no_cpython_wrapper=True)",
           f"SC0 = {2 + max([len(r.scal) for r in runs + fruns] + [0])}",
           f"SC1 = {nblocks}"]
    for run in runs:
        for kind in (_KINDS2 if one_pass and run is segs[-1] else ("t", "u")):
            out += ["", ""] + _tile2(code, run, kind, kk)
    for run in fruns:
        out += ["", ""] + _tile2(code, run, "t", kk)
    p = " " * 4
    base = list(_ENTRY_START) + [
        "    nx = prog[H_NX]", f"    K = {'V.shape[1]' if kk is None else kk}",
        "    vt = V.reshape(nx * K)"]
    copies = ["    _copy(w, zero, xin, zero, xin.shape[0], no)",
              "    _copy(wt, zero, vt, zero, nx * K, no)"]
    start = base + ["    gst = np.zeros(K)", "    scr = np.empty(K)"] + (
        [] if direct else copies)
    # the forward tiles never read gst (the seed's adjoint tangents; any array of the
    # type will do) nor scr: no allocations for them (a tenth of a small call)
    jvp = ["@jit", "def jvp(prog, xin, V, out, w, wt, sc):",
           '    """kernels.jvp on fused sweeps; RETRY: a NaN derivative (take the',
           '    interpreter\'s)."""'] + base + ["    gst = vt"] + ([] if fdirect else copies)
    # a final gather of the output (``np.stack(...).ravel()``) writes the result directly
    last = fsegs[-1][-1] if fsegs and not isinstance(fsegs[-1], _Run) else None
    if last is not None and int(code[last, K.OP]) == K.GATHER and int(code[last, K.OUT]) == \
            int(prog[K.H_OUT]) and int(code[last, K.N]) == int(prog[K.H_NOUT]):
        fsegs = fsegs[:-1] + ([fsegs[-1][:-1]] if len(fsegs[-1]) > 1 else [])
    else:
        last = None
    # a concatenation the runs write in place (``placed``): its parts checked against the
    # results (another tape of this structure may differ: the interpreter's sweep then)
    concats = sorted({c for c, _ in placed.values()})
    for c in concats:
        conds = [f"ints[code[{c}, AUX]] != {sum(1 for cc, _ in placed.values() if cc == c)}"]
        for m, (cc, e) in sorted(placed.items()):
            if cc == c:
                conds += [f"ints[code[{c}, AUX] + {1 + 3 * e}] != code[{m}, OUT]",
                          f"ints[code[{c}, AUX] + {2 + 3 * e}] != code[{m}, N]"]
        jvp += [f"    if {' or '.join(conds)}:", "        return RETRY"]
    fsegs = [s if isinstance(s, _Run) else [i for i in s if i not in concats] for s in fsegs]
    fsegs = [s for s in fsegs if isinstance(s, _Run) or s]
    jvp += ["    at = wt", "    gout = wt"] + _tangent_text(code, fsegs, p)
    # jvp_nz: the same sweep, the result only at a sparsity pattern's nonzeros (``nz``)
    jvp_nz = ["@jit", "def jvp_nz(prog, xin, V, out, w, wt, sc, nz):",
              '    """jvp with out = the tangents at the (row, direction) pairs of nz',
              '    (``_nz_out``; no values)."""'] + jvp[4:]
    act = "prog[H_OUTACT] != 0"
    if last is not None:    # (the same structure with another output: the general path)
        test = f"    if o == code[{last}, OUT] and prog[H_NOUT] == code[{last}, N]:"
        jvp += [test] + _gather_out(last) + ["        return OK"]
        jvp_nz += [test, f"        _nz_out(out, wt, code[{last}, A], prog[H_NOUT], ints, "
                   f"code[{last}, AUX], yes, K, {act}, nz)", "        return OK"]
        jvp += _struct_tangent(code, last, p)
        jvp_nz += _struct_tangent(code, last, p)
    # slices and the test out of the loop: a copy that vectorises (4x faster at 10^4)
    jvp += ["    m = prog[H_NOUT]", "    for j in range(m):", "        out[j] = w[o + j]",
            "    OT = out[m:m + m * K]", "    if prog[H_OUTACT]:",
            "        WT = wt[o * K:(o + m) * K]", "        for j in range(m * K):",
            "            OT[j] = WT[j]", "    else:", "        for j in range(m * K):",
            "            OT[j] = 0.0", "    return OK"]
    jvp_nz += [f"    _nz_out(out, wt, o, prog[H_NOUT], ints, zero, no, K, {act}, nz)",
               "    return OK"]
    head = segs[:-1] if one_pass else segs
    hvp = ["@jit", "def hvp(prog, xin, V, out, w, wt, at, sc):",
           '    """kernels.hvp on fused sweeps; RETRY: a NaN derivative (the adjoints',
           '    are then cleared and the interpreter\'s sweep taken)."""'] + start
    hvp.append("    gout = out")
    if direct:      # the fused runs add the derivatives of the inputs into out
        hvp += ["    for j in range(1 + nx * (1 + K)):", "        out[j] = 0.0"]
    hvp += _tangent_text(code, head, p)
    if one_pass:     # the output is the last run's sum: both sweeps in one pass
        hvp += _driver2(code, segs[-1], "tu", p, "1.0")
    else:
        hvp.append("    w[total + o] += 1.0")
    hvp += _reverse2_text(code, head, p)
    if not direct:
        hvp += ["    _copy(out, 1, w, total, nx, True)",
                "    _copy(out, 1 + nx, at, 0, nx * K, True)"]
    hvp += ["    out[0] = w[o]", "    w[total + o] = 0.0",
            "    for u in range(K):", "        at[o * K + u] = 0.0", "    return OK"]
    for name, lines in (("jvp", jvp), ("jvp_nz", jvp_nz), ("hvp", hvp)):
        lines, loop = _parallel2(name, lines)
        out += ["", ""] + loop + ["", ""] + lines
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------- cache

_LOCK = threading.Lock()
_MODULES = {}


def _depends():
    """A digest of the files generated modules call into (Numba's cache only watches the
    generated file itself)."""
    h = hashlib.sha256()
    here = pathlib.Path(__file__).resolve().parent
    for name in ("kernels.py", "ops.py", "compiled.py"):
        h.update((here / name).read_bytes())
    from . import __version__
    h.update(f"{__version__} numba {numba.__version__}".encode())
    return h.hexdigest()


_DEPENDS = None


def load(prog, kk=None):
    """(module, partials per chunk) for a program (with kk: its tangent entries for kk
    directions): from this process, from the cache directory, or generated now."""
    global _DEPENDS
    if _DEPENDS is None:
        _DEPENDS = _depends()
    source, width = generate(prog, kk)
    key = hashlib.sha256((_DEPENDS + source).encode()).hexdigest()[:24]
    with _LOCK:
        mod = _MODULES.get(key)
        if mod is None:
            mod = _MODULES[key] = _import(key, source.replace("{key}", key, 1))
    return mod, width


def _import(key, source):
    folder = cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    name = f"dualtape_compiled_{key}"
    path = folder / f"{name}.py"
    # written once: rewriting would change the file's stamp and drop Numba's cache
    if not path.exists() or path.read_text() != source:
        tmp = folder / f".{name}.{os.getpid()}.tmp"
        tmp.write_text(source)
        os.replace(tmp, path)
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


# ---------------------------------------------------------------------------- the tape

class CompiledTape(Tape):
    """A tape whose value, gradient, vjp, jvp, hvp and the Jacobians and Hessians built on
    them run fused compiled sweeps (``Tape.compile``); batches run the interpreter on the
    same arrays."""

    def __init__(self, tape):
        super().__init__(tape.prog, tape.consts, tape.argnums, tape.kinds, tape.out_shape,
                         tape.name)
        self.f, self.loaded_from, self.callbacks = tape.f, tape.loaded_from, tape.callbacks
        self.interpreted = tape
        self.module, width = load(tape.prog)
        sizes = [int(r[K.N]) for r in self.code if int(r[K.OP]) <= K.N_ELEMENTWISE]
        self._part_shape = ((max(sizes + [0]) + CHUNK - 1) // CHUNK + 1, width)
        # the parallel entries only for a tape with a run that goes parallel: the others
        # never compile a parallel loop
        sfx = "_par" if parallel() and max(sizes + [0]) >= PAR_MIN else ""
        self.mod_grad = getattr(self.module, "grad" + sfx)
        self.mod_vjp = getattr(self.module, "vjp" + sfx)
        self.mod_evaluate = getattr(self.module, "evaluate" + sfx)
        # the shape of the one differentiated argument of a scalar function: gradients at
        # such an array take the short path (``_fast``)
        self._fast_shape = tape.kinds[0][1] if self._simple and self.out_size == 1 else None
        # whether jvp and hvp run the compiled tangent and second-order sweeps: not through
        # scatters (their tangents replay the writes over the whole tape) nor matrix
        # functions (custom.py's drivers); those run the interpreter's
        self.fused_tangents = not (int(self.prog[K.H_FLAGS]) & K.HAS_SCATTER
                                   or self.has_linalg)

    def compile(self):
        return self

    def _fast(self, args, value):
        """[value, gradient...] for one C-contiguous float64 array of the recorded shape,
        straight from the compiled entry (no packing, no status translation: about 2 us
        less per call than ``Tape.value_and_gradient``), or None: anything else, or a
        status other than OK, takes the general path, which runs the call again and
        reports it."""
        if len(args) != 1 or self._fast_shape is None:
            return None
        x = args[0]
        if not (type(x) is np.ndarray and x.dtype is _F64 and x.shape == self._fast_shape
                and x.flags.c_contiguous):
            return None
        buf = self._local.__dict__
        w, part = buf.get("work"), buf.get("part")
        if w is None or part is None:
            w, part = self.workspace(), self.partials()
        out = np.empty(1 + self.nx)
        status = self.mod_grad(self.prog, x if x.ndim == 1 else x.reshape(-1), out, w, part,
                               value)
        return out if status == K.OK else None

    def value_and_gradient(self, *args, value=True):
        out = self._fast(args, value)
        if out is None:
            return super().value_and_gradient(*args, value=value)
        g = out[1:]
        return out[0], g if len(self._fast_shape) == 1 else g.reshape(self._fast_shape)

    def gradient(self, *args):
        out = self._fast(args, False)
        if out is None:
            return super().gradient(*args)
        g = out[1:]
        return g if len(self._fast_shape) == 1 else g.reshape(self._fast_shape)

    def partials(self):
        """This thread's per-chunk partial sums."""
        part = getattr(self._local, "part", None)
        if part is None:
            part = self._local.part = np.zeros(self._part_shape)
        return part

    def run_grad(self, xin, value=True):
        out = np.empty(1 + self.nx)
        buf = self._local.__dict__
        w, part = buf.get("work"), buf.get("part")
        if w is None or part is None:
            w, part = self.workspace(), self.partials()
        status = self.mod_grad(self.prog, xin, out, w, part, value)
        if status == RETRY:      # NaN met a zero factor in the one-pass loop
            return super().run_grad(xin, value)
        return status, out

    def run_value(self, xin):
        y = np.empty(self.out_size)
        return self.mod_evaluate(self.prog, xin, y, self.workspace(), self.partials()), y

    def module2(self, k):
        """The module whose ``jvp`` and ``hvp`` run k directions: for k in ``SMALL_K`` one
        with k a literal (generated and imported on the first call with that k, its
        entries compiled on their first call), else the tape's own (any k)."""
        if k not in SMALL_K:
            return self.module
        mods = self.__dict__.setdefault("_modules2", {})
        if k not in mods:
            mods[k] = load(self.prog, k)[0]
        return mods[k]

    def scratch2(self, k):
        """This thread's per-chunk partials and K-vectors of the tangent sweeps."""
        cache = getattr(self._local, "scratch2", None)
        if cache is None:
            cache = self._local.scratch2 = {}
        if k not in cache:
            mod = self.module
            # rows apart by a cache line at least: threads write their chunk's rows
            cache[k] = np.zeros((self._part_shape[0], mod.SC0 + mod.SC1 * k + 8))
        return cache[k]

    def _entry(self, kind, k):
        """The compiled entries (``Tape.entry``): the adjoint sweep, and the fused tangent
        and forward-over-reverse sweeps (``module2``), unless ``fused_tangents`` is off."""
        if kind == "vjp":
            return self.mod_vjp, (self.workspace(), self.partials())
        if kind in ("jvp", "jvp_nz") and self.fused_tangents:
            return getattr(self.module2(k), kind), (self.workspace(),
                                                    self.tangent_workspace(k)[0],
                                                    self.scratch2(k))
        if kind == "hvp" and self.fused_tangents and not self.callbacks:
            return self.module2(k).hvp, (self.workspace(),) + self.tangent_workspace(k) + \
                (self.scratch2(k),)
        return super()._entry(kind, k)

    @_fresh_after_error
    def run_jvp_nz(self, xin, V, nz):
        """(status, tangents at a pattern's nonzeros): ``run_jvp``'s (m, K) result read only
        at the (row, direction) pairs of ``nz`` (int64: the m + 1 row pointers of a CSR
        pattern, then the direction of each nonzero, in its order), taken inside the
        ``jvp_nz`` entry (``entry("jvp_nz", k)``, called with nz after the workspaces) into
        a fresh array. Anything but OK from the entry (RETRY: a NaN derivative; a guard)
        takes ``run_jvp`` and a pick, whose status is returned."""
        m = self.out_size
        if self.fused_tangents:
            k = V.shape[1]
            V = np.ascontiguousarray(V, dtype=np.float64)
            out = np.empty(nz.shape[0] - m - 1)
            fn, tail = self.entry("jvp_nz", k)
            if fn(self.prog, xin, V, out, *tail, nz) == K.OK:
                return K.OK, out
        status, _, T = self.run_jvp(xin, V)     # the general sweep, then the pick
        if status != K.OK:
            return status, None
        rows = np.repeat(np.arange(m), np.diff(nz[:m + 1]))
        return status, T[rows, nz[m + 1:]]

    def settle(self, kind, status, xin, V, out):
        """RETRY (a NaN derivative the fused sweep cannot place): the interpreter's sweep
        into the same out, which applies the zero rule per product."""
        if status != RETRY:
            return status
        if kind == "hvp":     # adjoints left mid-sweep: cleared first
            total = int(self.prog[K.H_TOTAL])
            self.workspace()[total:2 * total] = 0.0
            self.tangent_workspace(V.shape[1])[1][:] = 0.0
        fn, tail = super()._entry(kind, V.shape[1] if kind in _PER_K else 1)
        return fn(self.prog, xin, V, out, *tail)

    def __repr__(self):
        return "<Compiled" + super().__repr__()[1:]


def compile_tape(tape):
    """The compiled version of ``tape`` (see ``Tape.compile``)."""
    if isinstance(tape, CompiledTape):
        return tape
    tape.refuse_callbacks("as a compiled tape")
    return CompiledTape(tape)
