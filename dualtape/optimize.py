"""The tape optimiser: a recorded ``(prog, consts)`` in, a shorter valid one out.

Run once per recording (``tapes.record``), in plain Python over the instruction rows, so
its cost is linear in the number of instructions and independent of the element count
(except for comparing gather tables and folding constants, which touch their data once).
The passes, in one forward walk and one backward walk:

* forward: operands are rewritten to the slots that replace removed results; then each
  instruction is *folded* (an elementwise instruction on constants becomes a constant),
  *simplified* (``x * 1``, ``x + 0``, ``x - 0``, ``x / 1``, ``x ** 1``, ``--x`` and a
  copy become ``x``; ``x ** 2`` becomes ``square``) or *merged* with an earlier identical
  instruction (common subexpressions: same opcode, operand slots, side table and AUX);
* backward: *dead instructions* are dropped: what reaches neither the output, a guard, a
  ``nonzero`` count guard, a dynamic gather or scatter (their bounds checks report errors),
  a scatter into a live buffer, nor a callback;
* compaction: the surviving results and the constants still read are renumbered into a
  shorter value buffer; the side tables are rebuilt for the surviving instructions.

In-place writes make some slots not pure values: a slot a scatter writes into (its whole
buffer) is *mutable*; a mutable result is never folded, merged or replaced, and an
instruction reading a mutable slot is never merged (two reads may straddle a write).

``PROPS`` lists what each opcode allows. An opcode not in it (a structural opcode added
after this file) is unknown: the tape is returned unchanged, since the passes cannot know
which slots or side tables such an instruction reads.
"""
from bisect import bisect_right
from itertools import chain

import numpy as np

from . import kernels as K
from . import ops

# ---------------------------------------------------------------------------- properties
# kind: PURE (a function of its operands and side table: may be merged or dropped when
# dead), KEEP (pure but never dropped: an error it reports at replay must stay), EFFECT
# (never merged, never dropped; scatters are dropped only when their buffer is dead).
PURE, KEEP, EFFECT = "pure", "keep", "effect"


def _fixed(n):
    return lambda row, prog: n


def _concat_len(row, prog):
    return 1 + 3 * int(prog[row[K.AUX]])


def _scatter_len(row, prog):
    if row[K.NC] > 0:
        return 3                      # a window (start, length, wrap)
    return 2 if prog[row[K.AUX]] != 0 else 1 + row[K.N]   # a range, or a position table


_NONE = _fixed(0)
#: opcode -> (kind, length of its side table at AUX (0: AUX is a plain value))
PROPS = {code: (PURE, _NONE) for code in range(1, len(ops.TABLE) + 1)}
PROPS.update({
    K.GATHER: (PURE, lambda row, prog: row[K.N]),
    K.GATHER_DYN: (KEEP, _NONE),
    K.CONCAT: (PURE, _concat_len),
    K.REDUCE_SUM: (PURE, _fixed(3)),
    K.REDUCE_PROD: (PURE, _fixed(3)),
    K.REDUCE_MAX: (PURE, _fixed(3)),
    K.REDUCE_MIN: (PURE, _fixed(3)),
    K.ARGMAX: (PURE, _fixed(3)),
    K.ARGMIN: (PURE, _fixed(3)),
    K.MATMUL: (PURE, _fixed(3)),
    K.NONZERO: (EFFECT, _NONE),
    K.GUARD: (EFFECT, _NONE),
    K.SCATTER: (EFFECT, _scatter_len),
    K.CALLBACK: (EFFECT, _NONE),
    K.ARGSORT: (PURE, _fixed(3)),
    K.SEARCHSORTED: (PURE, _NONE),     # AUX is the side flag
    K.CUMSUM: (PURE, _fixed(3)),
    K.CUMPROD: (PURE, _fixed(3)),
    K.LINALG: (KEEP, _fixed(4)),       # kept: a singular matrix raises at replay, as in f
})
_PRIMS = {p.code: p for p in ops.TABLE.values()}
_SLOTS = (K.A, K.B, K.C)
_INPUTS, _CONSTS = -1, -2      # owners of offsets outside the instruction results


class Stats:
    """Instruction counts of one optimisation: ``before``, ``after`` and per pass."""

    def __init__(self, before):
        self.before = before
        self.after = before
        self.folded = self.simplified = self.merged = self.dead = 0
        self.skipped = None     # why the tape was left as recorded

    def __repr__(self):
        if self.skipped:
            return f"{self.before} instructions, not optimised ({self.skipped})"
        return (f"{self.before} -> {self.after} instructions ({self.folded} folded, "
                f"{self.simplified} simplified, {self.merged} merged, {self.dead} dead)")


def optimize(prog, consts):
    """``(prog, consts, stats)``: an equivalent shorter program (same inputs, parameters,
    output and guards; every sweep gives the same values and derivatives) and a
    :class:`Stats`. A program holding an opcode missing from ``PROPS`` comes back as is.
    """
    h = prog[:K.HEADER].tolist()
    c0, ncode = h[K.H_CODE], h[K.H_NCODE]
    rows = prog[c0:c0 + ncode * K.NCOL].reshape(ncode, K.NCOL).tolist()
    stats = Stats(ncode)
    for row in rows:
        if row[K.OP] not in PROPS:
            stats.skipped = f"unknown opcode {row[K.OP]}"
            return prog, consts, stats
    if not rows:
        return prog, consts, stats
    return _Pass(prog, consts, h, rows, stats).run()


class _Pass:
    """One optimisation. Offsets are in the old numbering until ``compact``; ``own[k][i]``
    is the owner of operand k of instruction i (an instruction index, _INPUTS or _CONSTS),
    kept canonical as replacements are made."""

    def __init__(self, prog, consts, h, rows, stats):
        self.prog, self.h, self.rows, self.stats = prog, h, rows, stats
        self.nin, self.cs, self.total = h[K.H_NIN], h[K.H_CONST], h[K.H_TOTAL]
        self.consts = consts
        # constants as Python floats for the scalar tests of the algebra (a NumPy scalar
        # compares ten times slower); large constant arrays are indexed instead
        self.scalars = consts.tolist() if consts.size <= 4096 else consts
        self.folded = []             # new constant arrays (start, values) from total on
        self.top = self.total        # end of the constants, old and new
        res = sorted((r[K.OUT], i) for i, r in enumerate(rows) if r[K.N] > 0)
        self.starts = [o for o, _ in res]
        self.producer = [i for _, i in res]
        self.own = [[self.owner(r[col]) if r[col + 1] > 0 else _INPUTS for r in rows]
                    for col in _SLOTS]
        self.outs = [r[K.OUT] for r in rows]
        self.repl = {}               # removed instruction -> canonical offset of its result
        self.repl_own = {}           # ... and the owner of that offset

    # ---------------------------------------------------------------- slots
    def owner(self, x):
        """The owner of offset x in the old numbering."""
        if x < self.nin:
            return _INPUTS
        if x >= self.cs:
            return _CONSTS
        return self.producer[bisect_right(self.starts, x) - 1]

    def canon(self, x):
        """(offset, owner) of offset x after the replacements made so far."""
        u = self.owner(x)
        base = self.repl.get(u)
        if base is None:
            return x, u
        return base + x - self.outs[u], self.repl_own[u]

    def const_values(self, x, n):
        if x < self.total:
            return self.consts[x - self.cs:x - self.cs + n]
        for start, arr in self.folded:
            if start <= x < start + arr.size:
                return arr[x - start:x - start + n]
        raise AssertionError(f"offset {x} is not a constant")

    def is_const(self, x, u, n, value):
        """Whether slot x holds constants all equal to value, the sign of a zero included
        (x + 0.0 is not x at x = -0.0; x + (-0.0) and x - 0.0 are)."""
        if u != _CONSTS or n == 0:
            return False
        v = self.scalars[x - self.cs] if n == 1 and x < self.total else self.const_values(x, n)
        return bool(np.all((v == value) & (np.signbit(v) == np.signbit(value))))

    def table(self, row):
        n = PROPS[row[K.OP]][1](row, self.prog)
        return self.prog[row[K.AUX]:row[K.AUX] + n]

    # ---------------------------------------------------------------- forward walk
    def run(self):
        rows, stats, own = self.rows, self.stats, self.own
        oa, ob, oc = own
        repl, repl_own, outs = self.repl, self.repl_own, self.outs
        mutable = {oa[i] for i, r in enumerate(rows) if r[K.OP] == K.SCATTER}
        self.mutable = mutable
        self.tables = {}             # instruction -> its side table (concat: rewritten)
        seen = {}
        n_ew = K.N_ELEMENTWISE
        for i, r in enumerate(rows):
            if repl:
                for k, col in enumerate(_SLOTS):
                    u = own[k][i]
                    if u >= 0 and u in repl:
                        r[col] = repl[u] + r[col] - outs[u]
                        own[k][i] = repl_own[u]
            op = r[K.OP]
            if op == K.CONCAT:
                t = self.table(r).copy()
                for q in range(int(t[0])):
                    if t[2 + 3 * q] > 0:
                        t[1 + 3 * q] = self.canon(int(t[1 + 3 * q]))[0]
                self.tables[i] = t
            if r[K.N] == 0 or PROPS[op][0] == EFFECT or i in mutable:
                continue
            if op <= n_ew:
                if oa[i] == _CONSTS and self.fold(i, r):
                    stats.folded += 1
                    continue
                if op in _SIMPLE and self.simplify(i, r):
                    stats.simplified += 1
                    continue
            if mutable and (oa[i] in mutable or ob[i] in mutable or oc[i] in mutable):
                continue
            t = self.tables.get(i)
            if t is None and PROPS[op][1] is not _NONE:
                t = self.table(r)
            if t is None:
                key = (op, r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10])
            else:
                if op == K.CONCAT and mutable and any(
                        t[2 + 3 * q] > 0 and self.owner(int(t[1 + 3 * q])) in mutable
                        for q in range(int(t[0]))):
                    continue
                key = (op, r[2], r[3], r[4], r[5], r[6], r[7], r[8], t.tobytes(), r[10])
            j = seen.get(key)
            if j is None:
                seen[key] = i
            else:
                repl[i] = outs[j]
                repl_own[i] = j
                stats.merged += 1
        if self.h[K.H_NOUT]:
            self.out, self.out_own = self.canon(self.h[K.H_OUT])
        else:
            self.out, self.out_own = 0, _INPUTS
        return self.compact(self.live())

    def fold(self, i, r):
        """An elementwise instruction whose operands are all constants: its value becomes a
        constant (not when it would broadcast a scalar into a longer constant)."""
        n = r[K.N]
        prim = _PRIMS[r[K.OP]]
        arity = prim.arity
        lens = [r[K.NA + 2 * k] for k in range(arity)]
        if max(lens) != n or any(self.own[k][i] != _CONSTS for k in range(arity)):
            return False
        # the kernel's own arithmetic, so the folded tape gives the raw tape's values to
        # the bit (SciPy's special functions differ from the kernels' in the last digits)
        w = np.empty((arity + 1) * n)
        for k in range(arity):
            w[k * n:(k + 1) * n] = self.const_values(r[K.A + 2 * k], lens[k])
        K.ew_value(r[K.OP], n, w, 0, n if arity > 1 else 0, 2 * n if arity > 2 else 0,
                   arity * n)
        v = w[arity * n:]
        self.folded.append((self.top, v))
        self.repl[i], self.repl_own[i] = self.top, _CONSTS
        self.top += n
        return True

    def simplify(self, i, r):
        """Replace instruction i's result by an operand it equals (x * 1 -> x, ...): True
        if it did. Rewrites ``x ** 2`` into ``square`` in place (and returns False)."""
        op, n = r[K.OP], r[K.N]
        a, na, b, nb = r[K.A], r[K.NA], r[K.B], r[K.NB]
        ua, ub = self.own[0][i], self.own[1][i]
        if op == K.POW and nb == 1 and self.is_const(b, ub, 1, 2.0):
            r[K.OP], r[K.B], r[K.NB], r[K.FLAGS] = K.SQUARE, 0, 0, r[K.FLAGS] & 1
            self.own[1][i] = _INPUTS
            return False
        cand = None
        if op == K.MUL or op == K.ADD:
            unit = 1.0 if op == K.MUL else -0.0
            if self.is_const(b, ub, nb, unit):
                cand = (a, na, ua)
            elif self.is_const(a, ua, na, unit):
                cand = (b, nb, ub)
        elif op == K.SUB or op == K.DIV or op == K.POW:
            unit = 0.0 if op == K.SUB else 1.0
            if self.is_const(b, ub, nb, unit):
                cand = (a, na, ua)
        elif op == K.COPY:
            cand = (a, na, ua)
        elif op == K.NEG and na == n and ua >= 0:
            inner = self.rows[ua]
            if (inner[K.OP] == K.NEG and a == inner[K.OUT] and inner[K.N] == n
                    and inner[K.NA] == n and ua not in self.mutable):
                cand = (inner[K.A], n, self.own[0][ua])
        if cand is None or cand[1] != n or cand[2] in self.mutable:
            return False
        self.repl[i], self.repl_own[i] = cand[0], cand[2]
        return True

    # ---------------------------------------------------------------- backward walk
    def live(self):
        """Which instructions survive: a backward walk from the output and the effects."""
        rows, (oa, ob, oc) = self.rows, self.own
        repl = self.repl
        live = {self.out_own} if self.h[K.H_NOUT] else set()
        keep = []
        for i in range(len(rows) - 1, -1, -1):
            if i in repl:
                continue
            r = rows[i]
            op = r[K.OP]
            if op == K.SCATTER:
                if r[K.NC] == 0 and oa[i] not in live:
                    continue
            elif i not in live and PROPS[op][0] == PURE:
                continue
            keep.append(i)
            live.add(oa[i])
            live.add(ob[i])
            live.add(oc[i])
            if op == K.CONCAT:
                t = self.tables[i]
                for q in range(int(t[0])):
                    if t[2 + 3 * q] > 0:
                        live.add(self.canon(int(t[1 + 3 * q]))[1])
        keep.reverse()
        self.stats.dead = len(rows) - len(repl) - len(keep)
        self.stats.after = len(keep)
        return keep

    # ---------------------------------------------------------------- compaction
    def compact(self, keep):
        rows, h, cs0, own = self.rows, self.h, self.cs, self.own
        # work slots: the kept results, in their old order
        new_out = {}
        pos = self.nin
        for i in sorted(keep, key=self.outs.__getitem__):
            n = rows[i][K.N]
            if n > 0:
                new_out[i] = pos
                pos += n
        cs = pos
        # constants: the union of the ranges still read
        ranges = []
        if h[K.H_NOUT] and self.out_own == _CONSTS:
            ranges.append((self.out, h[K.H_NOUT]))
        for i in keep:
            r = rows[i]
            for k, col in enumerate(_SLOTS):
                if own[k][i] == _CONSTS and r[col + 1] > 0:
                    ranges.append((r[col], r[col + 1]))
            if r[K.OP] == K.CONCAT:
                t = self.tables[i]
                for q in range(int(t[0])):
                    if t[2 + 3 * q] > 0 and t[1 + 3 * q] >= cs0:
                        ranges.append((int(t[1 + 3 * q]), int(t[2 + 3 * q])))
        ranges.sort()
        full = (np.concatenate([self.consts] + [v for _, v in self.folded])
                if self.folded and ranges else self.consts)
        cstart, cnew, pieces = [], [], []
        lo = hi = None
        for s, n in ranges + [(None, 0)]:
            if s is not None and hi is not None and s <= hi:
                hi = max(hi, s + n)
                continue
            if hi is not None:
                cstart.append(lo)
                cnew.append(pos)
                pieces.append(full[lo - cs0:hi - cs0])
                pos += hi - lo
            if s is not None:
                lo, hi = s, s + n
        if len(pieces) == 1 and pieces[0].size == self.consts.size and not self.folded:
            new_consts = self.consts        # all still read: no copy of large data
        else:
            new_consts = np.concatenate(pieces) if pieces else np.zeros(0)
        outs = self.outs

        def new(x, u):
            if u >= 0:
                return new_out[u] + x - outs[u]
            if u == _INPUTS:
                return x
            k = bisect_right(cstart, x) - 1
            return cnew[k] + x - cstart[k]

        tables, code = [], []
        at = K.HEADER
        for i in keep:
            r = list(rows[i])
            r[K.OUT] = new_out.get(i, 0)
            for k, col in enumerate(_SLOTS):
                r[col] = new(r[col], own[k][i]) if r[col + 1] > 0 else 0
            op = r[K.OP]
            t = self.tables.get(i)
            if op == K.CONCAT:
                t = t.copy()
                for q in range(int(t[0])):
                    if t[2 + 3 * q] > 0:
                        x, u = self.canon_new(int(t[1 + 3 * q]))
                        t[1 + 3 * q] = new(x, u)
                    else:
                        t[1 + 3 * q] = 0
            elif PROPS[op][1] is not _NONE:
                t = self.table(rows[i])
            if t is not None and t.size:
                tables.append(t)
                r[K.AUX] = at
                at += t.size
            code.append(r)
        head = np.array(h, dtype=np.int64)
        head[K.H_TOTAL] = cs + new_consts.size
        head[K.H_CONST] = cs
        head[K.H_OUT] = new(self.out, self.out_own) if h[K.H_NOUT] else 0
        head[K.H_CODE] = at
        head[K.H_NCODE] = len(code)
        if not any(r[K.OP] == K.SCATTER for r in code):
            head[K.H_FLAGS] &= ~K.HAS_SCATTER
        parts = [head] + tables
        parts.append(np.fromiter(chain.from_iterable(code), dtype=np.int64,
                                 count=len(code) * K.NCOL))
        return np.concatenate(parts), new_consts, self.stats

    def canon_new(self, x):
        """(offset, owner) of a canonical offset (one that replacements already rewrote)."""
        if x >= self.total:
            return x, _CONSTS
        return x, self.owner(x)


_SIMPLE = frozenset((K.MUL, K.ADD, K.SUB, K.DIV, K.POW, K.COPY, K.NEG))
