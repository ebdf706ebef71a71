"""Sparse Jacobians and Hessians: sparsity detection on a tape, coloring, compressed sweeps.

Three steps, each done once per tape and kept with it (``tape.sparse_plans``):

1. **Detection** (``patterns``): one forward pass over the program gives every element of
   the value buffer the set of differentiated inputs it depends on (its *index domain*);
   the sets of the output elements are the rows of the Jacobian pattern. For the Hessian a
   reverse pass first marks the elements whose adjoint can be nonzero ("live"); then every
   live result of a nonlinear instruction adds the pairs ``S_k x S_l`` of the operands
   ``k, l`` whose second partial is not identically zero (``H = sum_e adj_e J_e^T
   d2(op_e) J_e``). Which partials vanish comes from the primitive table (``ops.TABLE``):
   exact for elementwise code, constant-index gathers, concatenation and reductions;
   ``max``/``min`` reductions take every element (the choice is data-dependent); matrix
   products take the union over the summed index, skipping only zeros of *constant*
   operands; data-dependent gathers take their whole source, so the pattern holds at every
   point the tape replays at; ``argmax``/``nonzero``/``argsort``/``searchsorted`` results
   carry no derivative.
2. **Coloring** (``color_columns``, ``color_rows``, ``star_coloring``): greedy colorings so
   that one tangent (adjoint) direction per color recovers every nonzero; a tridiagonal
   Jacobian needs 3 colors, a banded Hessian O(bandwidth).
3. **Compressed sweeps** (``jacobian_sweep``, ``hessian_sweep``): the tape's tangent,
   adjoint or forward-over-reverse sweeps with the seed matrix of the coloring, then a
   gather of the nonzeros into a CSR matrix.

Sets are kept compactly: a pool of ``int32`` input indices and, per buffer element, an
offset and a count into it. Elements share segments whenever their sets are equal (a unary
operation, a gather, a broadcast, a union equal to one of its operands), so most
instructions write no new indices; a set holding every input is stored as a count of -1.
"""
import numpy as np
import scipy.sparse as sp

from . import kernels as K
from . import ops
from .kernels import A, AUX, B, C, FLAGS, N, NA, NB, NC, OP, OUT, jit

# ---------------------------------------------------------------------------- the table
# Instruction kinds seen by the analysis. The opcode -> kind table is built here from the
# opcode names and passed to the kernel as data, so a new opcode (or renumbering) never
# leaves a stale compiled kernel behind.
(KIND_NONE, KIND_EW, KIND_GATHER, KIND_GATHER_DYN, KIND_CONCAT, KIND_SUM, KIND_PROD,
 KIND_EXTREME, KIND_MATMUL, KIND_SCATTER, KIND_CUMSUM, KIND_CUMPROD,
 KIND_DENSE) = range(13)

_STRUCTURAL_KINDS = {"gather": KIND_GATHER, "gather_dyn": KIND_GATHER_DYN,
                     "concat": KIND_CONCAT, "reduce_sum": KIND_SUM, "reduce_prod": KIND_PROD,
                     "reduce_max": KIND_EXTREME, "reduce_min": KIND_EXTREME,
                     "matmul": KIND_MATMUL, "scatter": KIND_SCATTER, "cumsum": KIND_CUMSUM,
                     "cumprod": KIND_CUMPROD,
                     "linalg": KIND_DENSE}   # conservative: every result on every operand
ALL = -1        # the count of a set that holds every input


def _zero(expr):
    return expr is None or expr.replace(" ", "") in ("0", "0.0", "-0.0")


def tables():
    """(kind, dpat, d2pat) indexed by opcode: the instruction kind, whether first partial k
    can be nonzero, and whether the second partial (k, l) can be nonzero."""
    top = max(ops.OPCODES.values()) + 1
    kind = np.zeros(top, np.int64)
    dpat = np.zeros((top, 3), np.bool_)
    d2pat = np.zeros((top, 3, 3), np.bool_)
    for name, code in ops.OPCODES.items():
        prim = ops.TABLE.get(name)
        if prim is None:
            kind[code] = _STRUCTURAL_KINDS.get(name, KIND_NONE)
            continue
        kind[code] = KIND_EW
        if not prim.diff:
            continue
        for k, expr in enumerate(prim.d):
            dpat[code, k] = not _zero(expr)
        for (k, l), expr in prim.d2.items():
            d2pat[code, k, l] = d2pat[code, l, k] = not _zero(expr)
    return kind, dpat, d2pat


_TABLES = tables()

POOL_LIMIT = 1 << 26     # indices in the pool before new unions are taken as "all inputs"
PAIR_LIMIT = 1 << 24     # Hessian pairs before the pattern becomes dense over the inputs seen
MEMO = 4096              # direct-mapped memo of (segment, segment) pairs already emitted


# ---------------------------------------------------------------------------- sets

@jit
def _grow(arr, need):
    if need <= arr.shape[0]:
        return arr
    new = np.empty(max(need, 2 * arr.shape[0]), arr.dtype)
    new[:arr.shape[0]] = arr
    return new


@jit
def _append(pool, used, p, c, mark, stamp):
    """Append the members of segment (p, c) not yet marked with stamp; -1 if c is ALL."""
    if c == ALL:
        return pool, -1
    pool = _grow(pool, used + c)
    for e in range(p, p + c):
        v = pool[e]
        if mark[v] != stamp:
            mark[v] = stamp
            pool[used] = v
            used += 1
    return pool, used


@jit
def _union_begin(state):
    state[1] += 1
    return state[0]


@jit
def _union_add(pool, state, mark, p, c, best):
    """Add segment (p, c) to the union under way; best = [ptr, cnt] of its largest part."""
    if state[0] < 0:
        return pool
    if c == ALL:
        state[0] = -1
        return pool
    if c == 0:
        return pool
    if c > best[1]:
        best[0], best[1] = p, c
    pool, used = _append(pool, state[0], p, c, mark, state[1])
    state[0] = used
    return pool


@jit
def _union_end(pool, state, begin, best, nx):
    """(ptr, cnt) of the union begun at ``begin``: a part it equals, ALL, or new indices."""
    if state[0] < 0:
        state[0] = begin
        return -1, ALL
    c = state[0] - begin
    if c == best[1]:           # equal to its largest part: share that segment
        state[0] = begin
        return best[0], best[1]
    if c >= nx or state[0] > POOL_LIMIT:
        state[0] = begin
        return -1, ALL
    return begin, c


# ---------------------------------------------------------------------------- Hessian pairs

@jit
def _emit(hr, hc, hstate, memo, seen, pool, pa, ca, pb, cb, nx):
    """Record the pairs S_a x S_b (as (min, max)); mark their inputs in ``seen``.
    hstate = [pairs, overflow, all inputs seen]."""
    if ca == 0 or cb == 0:
        return hr, hc
    key = (pa + 2) * 4294967296 + (pb + 2)
    slot = (key * 2654435761) % MEMO
    if memo[slot] == key:
        return hr, hc
    memo[slot] = key
    for pp, cc in ((pa, ca), (pb, cb)):
        if cc == ALL:
            hstate[2] = 1
        else:
            for e in range(pp, pp + cc):
                seen[pool[e]] = True
    na = nx if ca == ALL else ca
    nb = nx if cb == ALL else cb
    if hstate[1] or hstate[0] + na * nb > PAIR_LIMIT:
        hstate[1] = 1
        return hr, hc
    need = hstate[0] + na * nb
    hr = _grow(hr, need)
    hc = _grow(hc, need)
    q = hstate[0]
    for s in range(na):
        i = s if ca == ALL else pool[pa + s]
        for t in range(nb):
            j = t if cb == ALL else pool[pb + t]
            hr[q] = min(i, j)
            hc[q] = max(i, j)
            q += 1
    hstate[0] = q
    return hr, hc


# ---------------------------------------------------------------------------- scatter

@jit
def _scatter_position(code, ints, i, j):
    """Static position j of scatter instruction i (relative to its buffer)."""
    p = code[i, AUX]
    step = ints[p]
    if step != 0:
        return ints[p + 1] + j * step
    return ints[p + 1 + j]


# ---------------------------------------------------------------------------- liveness

@jit
def _liveness(code, ints, consts, kind, dpat, live):
    """live[e]: the adjoint of buffer element e may be nonzero (reverse pass)."""
    cs = ints[K.H_CONST]
    stamp = np.zeros(live.shape[0], np.int64)
    for i in range(code.shape[0] - 1, -1, -1):
        op, o, n, a, flags = code[i, OP], code[i, OUT], code[i, N], code[i, A], code[i, FLAGS]
        kd = kind[op]
        if kd == KIND_SCATTER:
            na, b, nb = code[i, NA], code[i, B], code[i, NB]
            if code[i, NC] > 0:    # dynamic positions: any element may take any value
                anyl = False
                for e in range(na):
                    anyl = anyl or live[a + e]
                if anyl and flags & 2:
                    for j in range(nb):
                        live[b + j] = True
                continue
            for j in range(n - 1, -1, -1):     # the last write of a position wins
                pos = a + _scatter_position(code, ints, i, j)
                if stamp[pos] == i + 1:
                    continue
                stamp[pos] = i + 1
                if live[pos] and flags & 2:
                    live[b + (j if nb == n else 0)] = True
                live[pos] = False
            continue
        if flags == 0:
            continue
        if kd == KIND_EW:
            for k in range(3):
                if not ((flags >> k) & 1 and dpat[op, k]):
                    continue
                ak, nk = code[i, A + 2 * k], code[i, NA + 2 * k]
                for j in range(n):
                    if live[o + j]:
                        live[ak + (j if nk == n else 0)] = True
        elif kd == KIND_GATHER:
            p = code[i, AUX]
            for j in range(n):
                if live[o + j]:
                    live[a + ints[p + j]] = True
        elif kd == KIND_GATHER_DYN:
            anyl = False
            for j in range(n):
                anyl = anyl or live[o + j]
            if anyl:
                live[a:a + code[i, NA]] = True
        elif kd == KIND_CONCAT:
            p = code[i, AUX]
            pos = o
            for q in range(ints[p]):
                off, ln = ints[p + 1 + 3 * q], ints[p + 2 + 3 * q]
                if ints[p + 3 + 3 * q]:
                    for j in range(ln):
                        if live[pos + j]:
                            live[off + j] = True
                pos += ln
        elif kd == KIND_SUM or kd == KIND_PROD or kd == KIND_EXTREME:
            p = code[i, AUX]
            outer, r, inner = ints[p], ints[p + 1], ints[p + 2]
            for u in range(outer):
                for v in range(inner):
                    if live[o + u * inner + v]:
                        for q in range(r):
                            live[a + u * r * inner + q * inner + v] = True
        elif kd == KIND_CUMSUM or kd == KIND_CUMPROD:    # x_e feeds every result >= e
            p = code[i, AUX]
            outer, r, inner = ints[p], ints[p + 1], ints[p + 2]
            for u in range(outer):
                for v in range(inner):
                    later = False
                    for q in range(r - 1, -1, -1):
                        e = u * r * inner + q * inner + v
                        later = later or live[o + e]
                        if later:
                            live[a + e] = True
        elif kd == KIND_DENSE:
            anyl = False
            for j in range(n):
                anyl = anyl or live[o + j]
            if anyl:
                for k in range(2):
                    if (flags >> k) & 1:
                        ak, nk = code[i, A + 2 * k], code[i, NA + 2 * k]
                        live[ak:ak + nk] = True
        elif kd == KIND_MATMUL:
            p = code[i, AUX]
            m, kk, nn = ints[p], ints[p + 1], ints[p + 2]
            b = code[i, B]
            for r in range(m):
                for c in range(nn):
                    if not live[o + r * nn + c]:
                        continue
                    for q in range(kk):
                        ea, eb = a + r * kk + q, b + q * nn + c
                        if flags & 1 and _maybe_nonzero(consts, cs, eb):
                            live[ea] = True
                        if flags & 2 and _maybe_nonzero(consts, cs, ea):
                            live[eb] = True


@jit
def _maybe_nonzero(consts, cs, e):
    """Whether buffer element e can be nonzero (only constants are known)."""
    return e < cs or consts[e - cs] != 0.0


# ---------------------------------------------------------------------------- detection

@jit
def patterns(prog, consts, kind, dpat, d2pat, hessian):
    """Index domains of every buffer element and, with ``hessian``, the Hessian pairs.

    Returns (ptr, cnt, pool, hr, hc, hstate, seen): element e depends on the inputs
    ``pool[ptr[e]:ptr[e] + cnt[e]]`` (every input when cnt[e] == -1); the Hessian pattern
    holds the pairs (hr[q], hc[q]) and their mirror images for q < hstate[0], or, when
    hstate[1] is set (too many pairs), every pair of the inputs marked in ``seen`` (all of
    them when hstate[2] is set)."""
    code = K.program(prog)
    total, nx, cs = prog[K.H_TOTAL], prog[K.H_NX], prog[K.H_CONST]
    ptr = np.zeros(total, np.int64)
    cnt = np.zeros(total, np.int64)
    pool = np.empty(max(2 * nx, 64), np.int32)
    for e in range(nx):
        pool[e] = e
        ptr[e] = e
        cnt[e] = 1
    state = np.array([nx, 0])            # [pool entries used, union stamp]
    mark = np.zeros(max(nx, 1), np.int64)
    best = np.zeros(2, np.int64)
    live = np.zeros(total, np.bool_)
    if hessian:
        if prog[K.H_OUTACT]:
            live[prog[K.H_OUT]:prog[K.H_OUT] + prog[K.H_NOUT]] = True
        _liveness(code, prog, consts, kind, dpat, live)
    hr = np.empty(64, np.int32)
    hc = np.empty(64, np.int32)
    hstate = np.zeros(3, np.int64)
    memo = np.full(MEMO, -1, np.int64)
    seen = np.zeros(max(nx, 1), np.bool_)
    ks = np.zeros(3, np.int64)         # the operands with a nonzero partial
    srcs = np.zeros(3, np.int64)       # their elements
    for i in range(code.shape[0]):
        op, o, n, a, flags = code[i, OP], code[i, OUT], code[i, N], code[i, A], code[i, FLAGS]
        kd = kind[op]
        if kd == KIND_SCATTER:
            na, b, nb = code[i, NA], code[i, B], code[i, NB]
            cnt[o:o + n] = 0               # the save slot: old values, no derivative path
            if code[i, NC] > 0:            # dynamic positions: each element keeps its set
                begin = _union_begin(state)     # or takes any written value's
                best[:] = 0
                for j in range(nb):
                    pool = _union_add(pool, state, mark, ptr[b + j], cnt[b + j], best)
                pu, cu = _union_end(pool, state, begin, best, nx)
                for e in range(a, a + na):
                    begin = _union_begin(state)
                    best[:] = 0
                    pool = _union_add(pool, state, mark, ptr[e], cnt[e], best)
                    pool = _union_add(pool, state, mark, pu, cu, best)
                    ptr[e], cnt[e] = _union_end(pool, state, begin, best, nx)
                continue
            for j in range(n):
                pos = a + _scatter_position(code, prog, i, j)
                src = b + (j if nb == n else 0)
                ptr[pos], cnt[pos] = ptr[src], cnt[src]
            continue
        if flags == 0:
            cnt[o:o + n] = 0
            continue
        if kd == KIND_EW:
            nk = 0
            for k in range(3):
                if (flags >> k) & 1 and dpat[op, k]:
                    ks[nk] = k
                    nk += 1
            second = False
            for k in range(nk):
                for l in range(nk):
                    second = second or d2pat[op, ks[k], ks[l]]
            for j in range(n):
                for q in range(nk):
                    k = ks[q]
                    srcs[q] = code[i, A + 2 * k] + (j if code[i, NA + 2 * k] == n else 0)
                if nk == 0:
                    cnt[o + j] = 0
                elif nk == 1 or (nk == 2 and ptr[srcs[0]] == ptr[srcs[1]]
                                 and cnt[srcs[0]] == cnt[srcs[1]]):
                    ptr[o + j], cnt[o + j] = ptr[srcs[0]], cnt[srcs[0]]
                else:
                    begin = _union_begin(state)
                    best[:] = 0
                    for q in range(nk):
                        pool = _union_add(pool, state, mark, ptr[srcs[q]], cnt[srcs[q]], best)
                    ptr[o + j], cnt[o + j] = _union_end(pool, state, begin, best, nx)
                if second and live[o + j]:
                    for q in range(nk):
                        for r in range(q, nk):
                            if d2pat[op, ks[q], ks[r]]:
                                sq, sr = srcs[q], srcs[r]
                                hr, hc = _emit(hr, hc, hstate, memo, seen, pool, ptr[sq],
                                               cnt[sq], ptr[sr], cnt[sr], nx)
        elif kd == KIND_GATHER:
            p = code[i, AUX]
            for j in range(n):
                ptr[o + j], cnt[o + j] = ptr[a + prog[p + j]], cnt[a + prog[p + j]]
        elif kd == KIND_GATHER_DYN:
            begin = _union_begin(state)
            best[:] = 0
            for e in range(a, a + code[i, NA]):
                pool = _union_add(pool, state, mark, ptr[e], cnt[e], best)
            pu, cu = _union_end(pool, state, begin, best, nx)
            ptr[o:o + n] = pu
            cnt[o:o + n] = cu
        elif kd == KIND_CONCAT:
            p = code[i, AUX]
            pos = o
            for q in range(prog[p]):
                off, ln = prog[p + 1 + 3 * q], prog[p + 2 + 3 * q]
                if prog[p + 3 + 3 * q]:
                    ptr[pos:pos + ln] = ptr[off:off + ln]
                    cnt[pos:pos + ln] = cnt[off:off + ln]
                else:
                    cnt[pos:pos + ln] = 0
                pos += ln
        elif kd == KIND_SUM or kd == KIND_PROD or kd == KIND_EXTREME:
            p = code[i, AUX]
            outer, r, inner = prog[p], prog[p + 1], prog[p + 2]
            for u in range(outer):
                for v in range(inner):
                    base = a + u * r * inner + v
                    begin = _union_begin(state)
                    best[:] = 0
                    for q in range(r):
                        e = base + q * inner
                        pool = _union_add(pool, state, mark, ptr[e], cnt[e], best)
                    oe = o + u * inner + v
                    ptr[oe], cnt[oe] = _union_end(pool, state, begin, best, nx)
                    if kd == KIND_PROD and live[oe]:
                        for q in range(r):
                            for q2 in range(q + 1, r):
                                e, e2 = base + q * inner, base + q2 * inner
                                hr, hc = _emit(hr, hc, hstate, memo, seen, pool, ptr[e],
                                               cnt[e], ptr[e2], cnt[e2], nx)
                                if hstate[1]:
                                    break
        elif kd == KIND_MATMUL:
            p = code[i, AUX]
            m, kk, nn = prog[p], prog[p + 1], prog[p + 2]
            b = code[i, B]
            for r in range(m):
                for c in range(nn):
                    begin = _union_begin(state)
                    best[:] = 0
                    oe = o + r * nn + c
                    for q in range(kk):
                        ea, eb = a + r * kk + q, b + q * nn + c
                        if flags & 1 and _maybe_nonzero(consts, cs, eb):
                            pool = _union_add(pool, state, mark, ptr[ea], cnt[ea], best)
                        if flags & 2 and _maybe_nonzero(consts, cs, ea):
                            pool = _union_add(pool, state, mark, ptr[eb], cnt[eb], best)
                    ptr[oe], cnt[oe] = _union_end(pool, state, begin, best, nx)
                    if flags == 3 and live[oe]:
                        for q in range(kk):
                            ea, eb = a + r * kk + q, b + q * nn + c
                            hr, hc = _emit(hr, hc, hstate, memo, seen, pool, ptr[ea],
                                           cnt[ea], ptr[eb], cnt[eb], nx)
        elif kd == KIND_CUMSUM or kd == KIND_CUMPROD:
            # result e: the union of results e - 1 and operand e; a running product has
            # the Hessian pairs of its factors (distinct ones) up to its last live result
            p = code[i, AUX]
            outer, r, inner = prog[p], prog[p + 1], prog[p + 2]
            for u in range(outer):
                for v in range(inner):
                    if kd == KIND_CUMPROD:
                        last = -1
                        for q in range(r):
                            if live[o + u * r * inner + q * inner + v]:
                                last = q
                        for q in range(last + 1):
                            for q2 in range(q + 1, last + 1):
                                e, e2 = a + u * r * inner + q * inner + v, \
                                    a + u * r * inner + q2 * inner + v
                                hr, hc = _emit(hr, hc, hstate, memo, seen, pool, ptr[e],
                                               cnt[e], ptr[e2], cnt[e2], nx)
                                if hstate[1]:
                                    break
                    for q in range(r):
                        e = u * r * inner + q * inner + v
                        if q == 0:
                            ptr[o + e], cnt[o + e] = ptr[a + e], cnt[a + e]
                            continue
                        begin = _union_begin(state)
                        best[:] = 0
                        pool = _union_add(pool, state, mark, ptr[o + e - inner],
                                          cnt[o + e - inner], best)
                        pool = _union_add(pool, state, mark, ptr[a + e], cnt[a + e], best)
                        ptr[o + e], cnt[o + e] = _union_end(pool, state, begin, best, nx)
        elif kd == KIND_DENSE:      # every result depends on every active operand element
            begin = _union_begin(state)
            best[:] = 0
            for k in range(2):
                if (flags >> k) & 1:
                    ak, nk = code[i, A + 2 * k], code[i, NA + 2 * k]
                    for e in range(ak, ak + nk):
                        pool = _union_add(pool, state, mark, ptr[e], cnt[e], best)
            pu, cu = _union_end(pool, state, begin, best, nx)
            ptr[o:o + n] = pu
            cnt[o:o + n] = cu
            anyl = False
            for j in range(n):
                anyl = anyl or live[o + j]
            if anyl:                # nonlinear in everything it reads
                hr, hc = _emit(hr, hc, hstate, memo, seen, pool, pu, cu, pu, cu, nx)
        else:           # argmax, argmin, nonzero, argsort, searchsorted, guards: indices
            cnt[o:o + n] = 0
    return ptr, cnt, pool, hr, hc, hstate, seen


@jit
def _rows_csr(rptr, rcnt, pool, nx):
    """CSR (indptr, indices) of rows given as segments (ALL: every column), sorted."""
    m = rptr.shape[0]
    indptr = np.zeros(m + 1, np.int64)
    for r in range(m):
        indptr[r + 1] = indptr[r] + (nx if rcnt[r] == ALL else rcnt[r])
    indices = np.empty(indptr[m], np.int32)
    for r in range(m):
        s = indptr[r]
        if rcnt[r] == ALL:
            for j in range(nx):
                indices[s + j] = j
        else:
            seg = pool[rptr[r]:rptr[r] + rcnt[r]].copy()
            seg.sort()
            indices[s:s + rcnt[r]] = seg
    return indptr, indices


@jit
def _pairs_csr(hr, hc, npairs, n):
    """Symmetric CSR (indptr, indices) of the pairs (hr, hc) and their mirrors, deduplicated
    and sorted."""
    count = np.zeros(n + 1, np.int64)
    for q in range(npairs):
        count[hr[q] + 1] += 1
        if hr[q] != hc[q]:
            count[hc[q] + 1] += 1
    for r in range(n):
        count[r + 1] += count[r]
    fill = count[:n].copy()
    cols = np.empty(count[n], np.int32)
    for q in range(npairs):
        i, j = hr[q], hc[q]
        cols[fill[i]] = j
        fill[i] += 1
        if i != j:
            cols[fill[j]] = i
            fill[j] += 1
    mark = np.full(n, -1, np.int64)
    indptr = np.zeros(n + 1, np.int64)
    k = 0
    for r in range(n):
        s = k
        for q in range(count[r], count[r + 1]):
            c = cols[q]
            if mark[c] != r:
                mark[c] = r
                cols[k] = c
                k += 1
        cols[s:k].sort()
        indptr[r + 1] = k
    return indptr, cols[:k].copy()


DENSE_LIMIT = 1 << 27    # entries of a pattern beyond which it is refused as too dense


def _check_size(entries, what):
    if entries > DENSE_LIMIT:
        raise ValueError(f"the {what} pattern has {entries} entries, too dense for a sparse "
                         f"derivative; use the dense dualtape.{what.split()[0].lower()} "
                         "(or hvp / jvp products) instead")


def _bool_csr(indptr, indices, shape):
    return sp.csr_matrix((np.ones(indices.size, np.bool_), indices, indptr), shape=shape)


def detect(tp, hessian=False):
    """(Jacobian pattern, Hessian pattern or None) of a tape, as boolean CSR matrices of
    shapes (outputs, inputs) and (inputs, inputs), both flattened. Computed once, kept on
    the tape."""
    plans = _plans(tp)
    key = ("patterns", bool(hessian))
    if key not in plans and not hessian and ("patterns", True) in plans:
        return plans[("patterns", True)][0], None
    if key in plans:
        return plans[key]
    kind, dpat, d2pat = _TABLES
    ptr, cnt, pool, hr, hc, hstate, seen = patterns(tp.prog, tp.consts, kind, dpat, d2pat,
                                                    bool(hessian))
    nx = tp.nx
    o, m = int(tp.prog[K.H_OUT]), int(tp.prog[K.H_NOUT])
    rcnt = cnt[o:o + m]
    _check_size(int(np.where(rcnt == ALL, nx, rcnt).sum()), "Jacobian")
    indptr, indices = _rows_csr(ptr[o:o + m], rcnt, pool, nx)
    jac = _bool_csr(indptr, indices, (m, nx))
    hess = None
    if hessian:
        if hstate[1]:        # too many pairs: dense over every input seen in a pair
            inputs = np.arange(nx) if hstate[2] else np.flatnonzero(seen)
            _check_size(inputs.size ** 2, "Hessian")
            cols = np.tile(inputs, inputs.size).astype(np.int32)
            counts = np.zeros(nx + 1, np.int64)
            counts[inputs + 1] = inputs.size
            hess = _bool_csr(np.cumsum(counts), cols, (nx, nx))
        else:
            hptr, hind = _pairs_csr(hr, hc, int(hstate[0]), nx)
            hess = _bool_csr(hptr, hind, (nx, nx))
    plans[key] = (jac, hess)
    return jac, hess


def _plans(tp):
    plans = tp.__dict__.get("sparse_plans")
    if plans is None:
        plans = tp.__dict__["sparse_plans"] = {}
    return plans


# ---------------------------------------------------------------------------- coloring

COLOR_BUDGET = 1 << 28   # greedy steps above which a coloring gives every column its own color


#: greedy steps up to which a coloring also tries ORDERS seeded random vertex orders
#: besides the natural and the reversed one, and keeps the fewest colors (periodic
#: Brusselator, n = 100: 8 colors in natural order, 6 at best of the orders)
TRY_BUDGET = 1 << 20
ORDERS = 6
#: rounds of iterated greedy (Culberson) after the orders, within TRY_BUDGET: the
#: vertices ordered by their color classes (reversed, largest first, or shuffled) and
#: colored again, which never needs more colors (a class stays independent) and often
#: fewer (periodic Brusselator, n = 100: 6 -> 5, the least a periodic 50-cycle allows)
ROUNDS = 100


def _orders(n, steps):
    """The vertex orders a greedy coloring tries: natural, reversed, then seeded random
    permutations while their total cost stays under TRY_BUDGET (deterministic)."""
    yield np.arange(n)
    yield np.arange(n)[::-1].copy()
    rng = np.random.default_rng(0)
    for _ in range(ORDERS if steps * (2 + ORDERS) <= TRY_BUDGET else 0):
        yield rng.permutation(n)


def _fewest(colorings):
    """The coloring with the fewest colors (the first on a tie)."""
    best = None
    for c in colorings:
        if best is None or _count(c) < _count(best):
            best = c
    return best


@jit
def _greedy_columns(indptr, indices, cptr, crows, order):
    """Distance-2 greedy coloring of the columns of a pattern (rows in CSR, columns in
    CSC) in the given order: two columns sharing a row never share a color."""
    n = order.shape[0]
    color = np.full(n, -1, np.int64)
    forbid = np.full(n + 1, -1, np.int64)
    for j in order:
        for q in range(cptr[j], cptr[j + 1]):
            r = crows[q]
            for t in range(indptr[r], indptr[r + 1]):
                c = color[indices[t]]
                if c >= 0:
                    forbid[c] = j
        color[j] = _smallest_free(forbid, j)
    return color


@jit
def _smallest_free(forbid, v):
    """The smallest color not forbidden for vertex v."""
    k = 0
    while forbid[k] == v:
        k += 1
    return k


def color_columns(pattern):
    """Colors of the columns of a Jacobian pattern (m x n) such that no row has two columns
    of one color: ``J @ V`` with ``V[j, color[j]] = 1`` holds every nonzero of J exactly
    once (forward compression). Greedy, the best of a few vertex orders (``_orders``),
    then rounds of iterated greedy (``ROUNDS``); a tridiagonal pattern gets 3."""
    P = sp.csr_matrix(pattern, dtype=np.bool_)
    n = P.shape[1]
    rowlen = np.diff(P.indptr)
    steps = int(np.dot(rowlen, rowlen))
    if steps > COLOR_BUDGET:
        return np.arange(n)
    Q = P.tocsc()
    args = (P.indptr.astype(np.int64), P.indices.astype(np.int64),
            Q.indptr.astype(np.int64), Q.indices.astype(np.int64))
    best = color = _fewest(_greedy_columns(*args, order) for order in _orders(n, steps))
    rounds = min(ROUNDS, TRY_BUDGET // max(steps, 1) - 2 - ORDERS)
    rng = np.random.default_rng(0)
    for r in range(max(rounds, 0)):
        k = _count(color)
        if k < _count(best):
            best = color        # kept only when fewer: a tie keeps the first coloring
        if k <= 1:
            break
        classes = np.arange(k)
        if r % 3 == 0:
            classes = classes[::-1]
        elif r % 3 == 1:      # largest class first (a stable order: deterministic)
            classes = np.argsort(-np.bincount(color, minlength=k), kind="stable")
        else:
            rng.shuffle(classes)
        order = np.argsort(np.argsort(classes)[color], kind="stable")
        color = _greedy_columns(*args, order)
    return color if _count(color) < _count(best) else best


def color_rows(pattern):
    """Colors of the rows of a Jacobian pattern such that no column has two rows of one
    color: ``S @ J`` with ``S[color[i], i] = 1`` holds every nonzero (reverse compression)."""
    return color_columns(sp.csr_matrix(pattern, dtype=np.bool_).T)


@jit
def _greedy_star(indptr, indices, order):
    """Greedy star coloring (Gebremedhin, Manne and Pothen 2005, the simple variant): a
    distance-1 coloring in which every path on four vertices uses at least three colors.
    Coloring v forbids its neighbours' colors, every color two steps away through an
    uncolored neighbour, and through a colored neighbour w the color of x when x already
    has another neighbour colored like w (else v-w-x-y would be a two-colored path).
    Vertices in the given order."""
    n = order.shape[0]
    color = np.full(n, -1, np.int64)
    forbid = np.full(n + 1, -1, np.int64)
    for v in order:
        for q in range(indptr[v], indptr[v + 1]):
            w = indices[q]
            if w == v:
                continue
            cw = color[w]
            if cw >= 0:
                forbid[cw] = v
            for t in range(indptr[w], indptr[w + 1]):
                x = indices[t]
                if x == v or x == w or color[x] < 0:
                    continue
                if cw < 0:
                    forbid[color[x]] = v
                    continue
                for s in range(indptr[x], indptr[x + 1]):
                    y = indices[s]
                    if y != w and y != x and y != v and color[y] == cw:
                        forbid[color[x]] = v
                        break
        color[v] = _smallest_free(forbid, v)
    return color


def star_coloring(pattern):
    """Colors of a symmetric (Hessian) pattern such that every nonzero H[i, j] can be read
    directly from ``H @ V`` (``V[j, color[j]] = 1``): at ``(i, color[j])`` or at
    ``(j, color[i])``. Banded patterns need O(bandwidth) colors (a tridiagonal one, 3)."""
    P = sp.csr_matrix(pattern, dtype=np.bool_)
    n = P.shape[0]
    deg = np.diff(P.indptr).astype(np.float64)
    steps = float(deg @ (P @ deg) if n else 0.0)
    if steps > COLOR_BUDGET:
        return np.arange(n)
    args = (P.indptr.astype(np.int64), P.indices.astype(np.int64))
    return _fewest(_greedy_star(*args, order) for order in _orders(n, int(steps)))


@jit
def _star_positions(indptr, indices, color, ncol):
    """For each nonzero (i, j) of a star-colored pattern, its flat position in H @ V, an
    (n, ncol) row-major array: (i, color[j]) when no other vertex in i's closed
    neighbourhood has color[j], else (j, color[i])."""
    n = indptr.shape[0] - 1
    seen = np.zeros(ncol, np.int64)
    stamp = np.full(ncol, -1, np.int64)
    pos = np.empty(indices.shape[0], np.int64)
    for i in range(n):
        for q in range(indptr[i], indptr[i + 1]):
            c = color[indices[q]]
            if stamp[c] != i:
                stamp[c] = i
                seen[c] = 0
            seen[c] += 1
        for q in range(indptr[i], indptr[i + 1]):
            j = indices[q]
            if seen[color[j]] == 1:
                pos[q] = i * ncol + color[j]
            else:
                pos[q] = j * ncol + color[i]
    return pos


# ---------------------------------------------------------------------------- plans and sweeps

#: colors up to which a compressed Hessian runs one direction at a time after one forward
#: sweep of the values (``kernels.hvp_columns``): Rosenbrock n = 10^4, 3 colors, 380 us
#: against 500 us for one sweep of 3 directions (n = 100: 10.1 against 8.9 us)
SINGLE_MAX = 16
CHUNK = 128


class Plan:
    """What a compressed sweep needs: the mode, the seed matrix (one column per color),
    where each nonzero sits in the compressed result, and the CSR structure of the result
    (``matrix``)."""

    def __init__(self, mode, colors, seeds, where, pattern):
        self.mode, self.colors = mode, colors
        self.ncolors = int(colors.max()) + 1 if colors.size else 0
        self.seeds, self.where = seeds, where
        template = sp.csr_matrix((np.zeros(pattern.nnz), pattern.indices.copy(),
                                  pattern.indptr.copy()), shape=pattern.shape)
        template.has_sorted_indices = True
        self.template = template
        #: ``matrix(data)``: a fresh CSR matrix with the pattern's structure and these
        #: values (taken as they are: pass an array of your own)
        self.matrix = _csr_maker(template)


def _csr_maker(template):
    """``matrix(data)`` for CSR matrices structured as template: its attributes with this
    data and copies of its index arrays, without the constructor's checks (~11 us at 400
    nonzeros, against 0.8 us) when ``_fast_csr`` found that this SciPy allows it, else by
    the documented constructor."""
    indptr, indices, shape = template.indptr, template.indices, template.shape
    if not _fast_csr():
        def matrix(data):
            return sp.csr_matrix((data, indices.copy(), indptr.copy()), shape=shape)
        return matrix
    state0, new, cls = template.__dict__, object.__new__, type(template)

    def matrix(data):
        m = new(cls)
        state = state0.copy()
        state["data"], state["indptr"], state["indices"] = data, indptr.copy(), indices.copy()
        m.__dict__ = state
        return m
    return matrix


_FAST_CSR = []


def _fast_csr():
    """Whether a CSR matrix can be made by copying a constructed one's attributes (its
    ``__dict__``) with other data, index and pointer arrays, and passes SciPy's full format
    check and arithmetic: tried once on a small matrix. Plans fall back to the documented
    constructor when not (another SciPy's layout, ``__slots__``)."""
    if not _FAST_CSR:
        ok = False
        try:
            t = sp.csr_matrix((np.zeros(3), np.array([0, 1, 1]), np.array([0, 2, 3])),
                              shape=(2, 2))
            state = dict(t.__dict__)
            if {"data", "indices", "indptr"} <= state.keys():
                m = object.__new__(sp.csr_matrix)
                state.update(data=np.array([1.0, 2.0, 3.0]),
                             indices=np.array([0, 1, 1], t.indices.dtype),
                             indptr=np.array([0, 2, 3], t.indptr.dtype))
                m.__dict__ = state
                m.check_format(full_check=True)
                ok = (type(m) is sp.csr_matrix and m.nnz == 3 and m.shape == (2, 2)
                      and np.array_equal(m.toarray(), [[1.0, 2.0], [0.0, 3.0]])
                      and np.array_equal((m @ np.ones(2)), [3.0, 3.0]))
        except Exception:      # any failure: the documented constructor
            ok = False
        _FAST_CSR.append(ok)
    return _FAST_CSR[0]


def _seed(colors, n, ncol):
    V = np.zeros((n, ncol))
    V[np.arange(n), colors] = 1.0
    return V


def jacobian_plan(tp, mode="auto"):
    """The compressed-Jacobian plan of a tape (kept on it): forward (column colors) or
    reverse (row colors), by ``mode`` or, with "auto", whichever needs fewer colors
    (forward on a tie)."""
    plans = _plans(tp)
    key = ("jacobian", mode)
    if key in plans:
        return plans[key]
    if mode not in ("auto", "forward", "reverse"):
        raise ValueError(f"mode must be 'auto', 'forward' or 'reverse', got {mode!r}")
    jac, _ = detect(tp)
    m, n = jac.shape
    P = jac.tocoo()
    rows, cols = P.row.astype(np.int64), P.col.astype(np.int64)
    if mode in ("auto", "forward"):
        cc = color_columns(jac)
    if mode in ("auto", "reverse"):
        rc = color_rows(jac)
    # ties go to forward: one tangent sweep of k directions after one forward sweep beats
    # k adjoint sweeps (Brusselator, 8 colors each way at n = 100: 9.8 against 25.5 us;
    # 4 colors at n = 10^4: 430 against 530 us)
    if mode == "forward" or (mode == "auto" and _count(cc) <= _count(rc)):
        k = _count(cc)
        # the tangent sweeps give J V as (m, k), row-major
        plan = Plan("forward", cc, _seed(cc, n, k), rows * k + cc[cols], jac)
    else:
        k = _count(rc)
        plan = Plan("reverse", rc, np.ascontiguousarray(_seed(rc, m, k).T), rc[rows] * n + cols,
                    jac)
    plans[key] = plan
    return plan


def _count(colors):
    return int(colors.max()) + 1 if colors.size else 0


def hessian_plan(tp):
    """The compressed-Hessian plan of a tape (kept on it), from a star coloring."""
    plans = _plans(tp)
    if "hessian" in plans:
        return plans["hessian"]
    _, hess = detect(tp, hessian=True)
    colors = star_coloring(hess)
    k = _count(colors)
    plan = Plan("hessian", colors, _seed(colors, hess.shape[0], k), None, hess)
    pos = _star_positions(hess.indptr.astype(np.int64), hess.indices.astype(np.int64),
                          colors, max(k, 1))
    plan.where_rows = pos     # in H V as (n, k), row-major (one sweep of every color)
    if k <= SINGLE_MAX:       # blocks of one color: position (row, color) at color * n + row
        pos = (pos % max(k, 1)) * hess.shape[0] + pos // max(k, 1)
    plan.where = pos
    plans["hessian"] = plan
    return plan


def _directions(plan, run, pick, xin):
    """(status, compressed result (rows, k) flattened) by sweeps of up to CHUNK directions."""
    k = plan.ncolors
    if 0 < k <= CHUNK and plan.seeds.flags.c_contiguous:   # one sweep: no copies, no list
        res = run(xin, plan.seeds)
        return res[0], (pick(res).reshape(-1) if res[0] == K.OK else None)
    parts = []
    for start in range(0, k, CHUNK):
        res = run(xin, np.ascontiguousarray(plan.seeds[:, start:start + CHUNK]))
        if res[0] != K.OK:
            return res[0], None
        parts.append(pick(res))
    return K.OK, np.concatenate(parts, axis=1).reshape(-1) if parts else np.zeros(0)


def jacobian_sweep(tp, xin, mode="auto"):
    """(status, CSR Jacobian of shape (outputs, inputs)) at the flat input xin (a
    C-contiguous float64 array: the differentiated inputs, then the parameters); the
    matrix is None when the status is not ``kernels.OK`` (a guard flipped)."""
    return runner(tp, mode)(tp, xin)


def hessian_sweep(tp, xin):
    """(status, CSR Hessian of shape (inputs, inputs)) of a scalar output at xin, as
    ``jacobian_sweep``."""
    return runner(tp, "hessian")(tp, xin)


def runner(tp, mode):
    """This thread's ``run(tp, xin) -> (status, CSR or None)`` for the sparse Jacobian of a
    tape in mode "auto", "forward" or "reverse" (``run.mode``: the mode its plan chose), or
    for its sparse Hessian with mode "hessian". Kept with the thread's workspaces
    (``Tape.bound``, under "sparse jacobian", mode / "sparse hessian"), made on the first
    call: everything that does not depend on x is bound once (the sweep entry and its
    workspaces, the seeds, an output buffer, the positions of the nonzeros in it), so a
    call is one kernel call, one gather of the nonzeros into a new array (none for a
    forward plan on a compiled tape: ``_nonzeros_runner``), and ``Plan.matrix``. (The tape is an argument, not captured: a runner kept in the tape's
    thread-local dict would otherwise hold the tape in a reference cycle, freed only by the
    cyclic garbage collector.)

    The one-call cases: a forward plan of up to CHUNK colors (one tangent sweep of every
    color), a reverse plan (one adjoint sweep of every color), a Hessian on a compiled
    tape with fused tangents (one forward-over-reverse sweep of up to CHUNK colors) or on
    the interpreter with up to SINGLE_MAX colors (``kernels.hvp_columns``: the values
    swept once, then one forward-over-reverse sweep per color). Anything else (more
    colors, custom rules or matrix functions in a Hessian) runs ``_general``."""
    key = "sparse hessian" if mode == "hessian" else ("sparse jacobian", mode)
    run = tp.bound().get(key)
    if run is not None:
        return run
    if mode == "hessian":
        tp._scalar_output("hessian")
        plan = hessian_plan(tp)
    else:
        plan = jacobian_plan(tp, mode)
    run = _runner(tp, plan)
    run.mode = plan.mode
    tp.bound()[key] = run
    return run


def _runner(tp, plan):
    """``runner``'s function for a plan."""
    k, nx, m = plan.ncolors, tp.nx, tp.out_size
    kind = None
    if plan.mode == "forward" and 0 < k <= CHUNK and getattr(tp, "fused_tangents", False):
        return _nonzeros_runner(tp, plan)
    if plan.mode == "forward" and 0 < k <= CHUNK:
        kind, k_entry, offset, where, size = "jvp", k, m, plan.where, m * (1 + k)
    elif plan.mode == "reverse" and k > 0:
        kind, k_entry, offset, where, size = "vjp", 1, m, plan.where, m + k * nx
    elif plan.mode == "hessian":
        if getattr(tp, "fused_tangents", False) and 0 < k <= CHUNK:
            # a compiled tape sweeps every color at once: its fused forward-over-reverse
            # pass carries the K directions in registers (K sweeps would read the tape K
            # times)
            kind, k_entry, offset, where, size = "hvp", k, 1 + nx, plan.where_rows, \
                1 + nx * (1 + k)
        elif k <= SINGLE_MAX and not (tp.callbacks or tp.has_linalg):
            kind, k_entry, offset, where, size = "hvp_columns", 1, 0, plan.where, k * nx
    if kind is None:
        def run(tp, xin):
            return _general(tp, plan, xin)
        run.sweep = None
        return run
    fn, tail = tp.entry(kind, k_entry)
    prog, V, matrix = tp.prog, plan.seeds, plan.matrix
    out = np.empty(size)          # this thread's: the nonzeros are copied out of it
    pick = np.ascontiguousarray(where + offset, dtype=np.intp)

    def run(tp, xin):
        try:
            status = fn(prog, xin, V, out, *tail)
            if status != K.OK:
                status = tp.settle(kind, status, xin, V, out)
                if status != K.OK:
                    return status, None
        except Exception:       # a sweep that raised left its workspaces half swept
            tp.drop_workspaces()
            raise
        return status, matrix(out.take(pick))
    run.sweep = lambda xin: fn(prog, xin, V, out, *tail)    # the kernel call alone (benchmarks)
    return run


def _nonzeros_runner(tp, plan):
    """``_runner`` for a forward plan on a compiled tape: its ``jvp_nz`` entry writes the
    nonzeros, in the pattern's order, straight into a fresh array that becomes the CSR
    matrix's data (no (m, K) result, no gather of the nonzeros: Brusselator at 10^4,
    108 -> 92 us per sweep). A status other than OK (a NaN derivative, a guard) takes
    ``_general``, which reports it or applies the interpreter's zero rule."""
    fn, (w, wt, sc) = tp.entry("jvp_nz", plan.ncolors)
    prog, V, matrix, empty, ok = tp.prog, plan.seeds, plan.matrix, np.empty, K.OK
    J = plan.template
    nz = np.concatenate([J.indptr, plan.colors[J.indices]]).astype(np.int64)
    size = J.nnz

    def run(tp, xin):
        data = empty(size)
        try:
            status = fn(prog, xin, V, data, w, wt, sc, nz)
        except Exception:       # a sweep that raised left its workspaces half swept
            tp.drop_workspaces()
            raise
        if status != ok:
            return _general(tp, plan, xin)
        return status, matrix(data)
    run.sweep = lambda xin: fn(prog, xin, V, empty(size), w, wt, sc, nz)
    return run


def _general(tp, plan, xin):
    """(status, CSR or None) by the tape's run_* methods, chunk by chunk (``_runner``'s
    cases that do not fit one call)."""
    nx = tp.nx
    if plan.mode == "forward":
        status, comp = _directions(plan, tp.run_jvp, lambda r: r[2], xin)
    elif plan.mode == "reverse":
        status, _, comp = tp.run_vjp(xin, plan.seeds)
    else:     # custom rules, matrix functions, many colors: hvp sweeps
        status, comp = _directions(plan, tp.run_hvp, lambda r: r[1][1 + nx:].reshape(nx, -1),
                                   xin)
        if status == K.OK and plan.ncolors <= SINGLE_MAX:   # (nx, k) -> blocks of one color
            comp = comp.reshape(nx, plan.ncolors).T.ravel()
    if status != K.OK:
        return status, None
    return K.OK, plan.matrix(comp.reshape(-1).take(plan.where))


# ---------------------------------------------------------------------------- inspection

class Sparsity:
    """The patterns of a recorded function: ``jacobian`` (outputs x inputs, flattened) and
    ``hessian`` (inputs x inputs; None for a vector output), boolean CSR matrices, with the
    colors of the compressed sweeps (``jacobian_colors``: mode and count;
    ``hessian_colors``)."""

    def __init__(self, tp):
        scalar = tp.out_size == 1
        self.jacobian, self.hessian = detect(tp, hessian=scalar)
        plan = jacobian_plan(tp)
        self.jacobian_colors = (plan.mode, plan.ncolors)
        self.hessian_colors = hessian_plan(tp).ncolors if scalar else None

    def __repr__(self):
        h = "" if self.hessian is None else (f", Hessian {self.hessian.shape} with "
                                             f"{self.hessian.nnz} nonzeros, "
                                             f"{self.hessian_colors} colors")
        return (f"<Sparsity: Jacobian {self.jacobian.shape} with {self.jacobian.nnz} "
                f"nonzeros, {self.jacobian_colors[1]} {self.jacobian_colors[0]} colors{h}>")


def sparsity(f, x, *args):
    """The sparsity of ``f`` at ``x``: a :class:`Sparsity` with the Jacobian pattern (and
    the Hessian pattern of a scalar f) as boolean CSR matrices over the flattened output
    and input. The patterns hold at every point where f takes the same branches (a
    data-dependent index reads every position it could).

    >>> s = dualtape.sparsity(lambda x: x[1:] * x[:-1], np.ones(4))
    >>> s.jacobian.toarray().astype(int)
    array([[1, 1, 0, 0],
           [0, 1, 1, 0],
           [0, 0, 1, 1]])
    """
    from .tapes import record
    return Sparsity(record(f, (x,) + args, (0,)))
