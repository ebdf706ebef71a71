"""Saved tapes: ``Tape.save(path)`` writes a ``.npz``, ``dualtape.load(path)`` reads it back.

A file holds three arrays and no pickled object: ``prog`` (int64), ``consts`` (float64)
and ``meta`` (UTF-8 JSON: format name and version, argument kinds and shapes, output
shape, f's name). Loading trusts nothing in it. ``validate`` walks the program once
before any kernel can see it and checks what the Numba sweeps take for granted (they do
not bounds-check): the header against the array sizes, every opcode, every operand slot
inside the value buffer with the length its opcode requires, every side table inside
``prog`` with its entries in range, no instruction writing into the inputs or the
constants, every operand written before it is read, and the index slot of a dynamic
gather never overwritten after the gather (the reverse and tangent sweeps read it again
without checking). ``RULES`` maps each opcode to its operand rule, so a new opcode is one
entry. A file that breaks any rule raises ``ValueError`` saying which.
"""
import json

import numpy as np

from . import kernels as K
from . import ops
from .tapes import DIFF, PARAM, STATIC, Tape

FORMAT = "dualtape.tape"
VERSION = 2   # 2: structural opcodes start at ops.STRUCTURAL_BASE
#: values larger than this in a header or a size are refused (no int64 overflow in the
#: kernels' offset arithmetic, no absurd allocations)
LIMIT = 1 << 40
#: static argument values a file can hold: type name -> Python type of the JSON value
_STATIC_TYPES = {"int": int, "bool": bool, "str": str, "NoneType": type(None)}
_STATIC_TYPES.update({np.dtype(c).type.__name__: int for c in np.typecodes["AllInteger"]})
_STATIC_TYPES[np.bool_.__name__] = bool


# ---------------------------------------------------------------------------- save

def save(tape, path):
    """Write ``tape`` to ``path`` (a ``.npz`` file; NumPy appends the suffix if missing)."""
    if tape.has_callbacks:
        raise ValueError(f"the tape of {tape.name} calls Python functions (custom rules) and "
                         "cannot be saved: a file holds arrays only")
    kinds = []
    for i, (kind, spec) in enumerate(tape.kinds):
        if kind != STATIC:
            kinds.append([kind, [int(d) for d in spec]])
            continue
        if (spec[0] != "value" or spec[1] not in _STATIC_TYPES
                or not isinstance(spec[2], (bool, int, str, type(None), np.integer, np.bool_))):
            what = spec[1] if spec[0] == "value" else spec[0]
            raise ValueError(f"the tape of {tape.name} cannot be saved: its static argument "
                             f"{i} is a {what}, and only ints, bools, strings and None can "
                             "be stored; make it a parameter (a float array) or fix it "
                             "inside f")
        value = spec[2].item() if isinstance(spec[2], np.generic) else spec[2]
        kinds.append([STATIC, spec[1], value])
    meta = {"format": FORMAT, "version": VERSION, "name": str(tape.name),
            "argnums": [int(i) for i in tape.argnums], "kinds": kinds,
            "out_shape": [int(d) for d in tape.out_shape]}
    np.savez(path, prog=tape.prog, consts=tape.consts,
             meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8))


# ---------------------------------------------------------------------------- load

def load(path):
    """The Tape saved in ``path``, checked entirely before it can run (``ValueError``
    when anything is inconsistent). A loaded tape replays like the original but cannot
    record again: a guard flip raises ``GuardFlipped``."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in ("prog", "consts", "meta")}
    except KeyError as e:
        raise ValueError(f"{path} is not a saved dualtape tape: no array {e}") from None
    except Exception as e:      # zipfile, zlib and NumPy's format errors, MemoryError
        raise ValueError(f"{path} is not a readable .npz file: {e!r}") from None
    meta = _meta(arrays["meta"])
    prog, consts = arrays["prog"], arrays["consts"]
    for name, arr, dtype in (("prog", prog, np.int64), ("consts", consts, np.float64)):
        if arr.dtype != dtype or arr.ndim != 1:
            raise ValueError(f"{name} must be a 1-D {np.dtype(dtype)} array, got "
                             f"{arr.ndim}-D {arr.dtype}")
    argnums, kinds, out_shape = _kinds(meta)
    nx = sum(_size(s) for k, s in kinds if k == DIFF)
    nin = nx + sum(_size(s) for k, s in kinds if k == PARAM)
    validate(prog, consts, nin, nx, _size(out_shape))
    tp = Tape(np.ascontiguousarray(prog), np.ascontiguousarray(consts), argnums, kinds,
              out_shape, meta["name"])
    tp.loaded_from = str(path)
    return tp


def _meta(raw):
    if raw.dtype != np.uint8 or raw.ndim != 1:
        raise ValueError("meta must be a 1-D uint8 array of UTF-8 JSON")
    try:
        meta = json.loads(raw.tobytes().decode())
    except (UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"meta is not valid UTF-8 JSON: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"not a saved dualtape tape (meta format must be {FORMAT!r})")
    if meta.get("version") != VERSION:
        raise ValueError(f"saved tape format version {meta.get('version')!r} is not "
                         f"supported by this dualtape (it reads version {VERSION})")
    if not isinstance(meta.get("name"), str):
        raise ValueError("meta name must be a string")
    return meta


def _shape(s, what):
    if not isinstance(s, list) or not all(type(d) is int and 0 <= d < LIMIT for d in s):
        raise ValueError(f"{what} must be a list of non-negative ints, got {s!r}")
    if _size(s) >= LIMIT:
        raise ValueError(f"{what} {s} is too large")
    return tuple(s)


def _size(shape):
    n = 1
    for d in shape:
        n *= d
    return n


def _kinds(meta):
    """(argnums, kinds, out_shape) from meta, checked."""
    raw = meta.get("kinds")
    if not isinstance(raw, list):
        raise ValueError("meta kinds must be a list")
    kinds = []
    for i, k in enumerate(raw):
        if isinstance(k, list) and len(k) == 2 and k[0] in (DIFF, PARAM):
            kinds.append((k[0], _shape(k[1], f"the shape of argument {i}")))
        elif isinstance(k, list) and len(k) == 3 and k[0] == STATIC:
            tname, value = k[1], k[2]
            if tname not in _STATIC_TYPES or type(value) is not _STATIC_TYPES[tname]:
                raise ValueError(f"static argument {i}: {tname!r} with value {value!r} is not "
                                 "a storable static value")
            kinds.append((STATIC, ("value", tname, value)))
        else:
            raise ValueError(f"meta kinds[{i}] = {k!r} is not a valid argument kind")
    argnums = meta.get("argnums")
    diff = [i for i, (k, _) in enumerate(kinds) if k == DIFF]
    if (not isinstance(argnums, list) or not all(type(i) is int for i in argnums)
            or sorted(argnums) != diff or not diff):
        raise ValueError(f"meta argnums {argnums!r} must list the differentiated arguments "
                         f"{diff} (at least one)")
    return tuple(argnums), kinds, _shape(meta.get("out_shape"), "out_shape")


# ---------------------------------------------------------------------------- validation

class Check:
    """The state of the validation walk: what is defined, what may not be written, and
    the accessors the opcode rules call for one instruction."""

    def __init__(self, prog, h):
        self.prog, self.h = prog, h
        self.defined = np.zeros(h[K.H_TOTAL], dtype=bool)
        self.defined[:h[K.H_NIN]] = True
        self.defined[h[K.H_CONST]:] = True
        self.index_slots = np.zeros(h[K.H_TOTAL], dtype=bool)
        self.i, self.name = -1, ""
        self.reads, self.writes, self.updates = [], [], []

    def fail(self, msg):
        raise ValueError(f"instruction {self.i} ({self.name}): {msg}")

    def _inside(self, off, n, what):
        if n < 0 or off < 0 or off + n > self.h[K.H_TOTAL]:
            self.fail(f"{what} [{off}:+{n}] is outside the value buffer of "
                      f"{self.h[K.H_TOTAL]} values")

    def read(self, off, n, what="operand"):
        self._inside(off, n, what)
        self.reads.append((off, n, what))

    def index(self, off, n):
        """A slot read as positions at replay: read here, and by later sweeps again."""
        self.read(off, n, "index operand")
        self.index_slots[off:off + n] = True

    def write(self, off, n):
        self._inside(off, n, "result")
        if n and (off < self.h[K.H_NIN] or off + n > self.h[K.H_CONST]):
            self.fail(f"result [{off}:+{n}] is not inside the work slots "
                      f"[{self.h[K.H_NIN]}, {self.h[K.H_CONST]}): it would overwrite "
                      "inputs or constants")
        self.writes.append((off, n))

    def update(self, off, n):
        """A buffer written in place (may be an input, never a constant)."""
        self.read(off, n, "updated buffer")
        if n and off + n > self.h[K.H_CONST]:
            self.fail(f"updated buffer [{off}:+{n}] overlaps the constants")
        self.updates.append((off, n))

    def table(self, p, n):
        """ints[p:p+n], a side table that must lie between the header and the code."""
        if n < 0 or p < K.HEADER or p + n > self.h[K.H_CODE]:
            self.fail(f"side table [{p}:+{n}] is outside the side-table region "
                      f"[{K.HEADER}, {self.h[K.H_CODE]})")
        return self.prog[p:p + n]

    def positions(self, pos, n, what="position"):
        """Static positions pos (an array) must all lie in [0, n)."""
        if pos.size and (pos.min() < 0 or pos.max() >= n):
            self.fail(f"a {what} is outside [0, {n})")

    def flag(self, value, what):
        if value not in (0, 1):
            self.fail(f"{what} must be 0 or 1, got {value}")

    def instruction(self, i, row):
        op = row[K.OP]
        rule = RULES.get(op)
        self.i, self.name = i, _NAMES.get(op, "?")
        if rule is None:
            self.fail(f"unknown opcode {op}")
        flags, allowed = row[K.FLAGS], rule[0]
        if flags < 0 or flags & ~allowed:
            self.fail(f"FLAGS {flags} marks operands this opcode does not differentiate "
                      f"(allowed bits {allowed:#b})")
        self.reads, self.writes, self.updates = [], [], []
        rule[1](self, row)
        for off, n, what in self.reads:
            if not self.defined[off:off + n].all():
                self.fail(f"{what} [{off}:+{n}] is read before it is written")
        for off, n in self.writes + self.updates:
            if self.index_slots[off:off + n].any():
                self.fail(f"writes [{off}:+{n}] over positions that a dynamic gather reads "
                          "again in the reverse and tangent sweeps")
        for off, n in self.writes:
            self.defined[off:off + n] = True


def validate(prog, consts, nin, nx, out_size):
    """Check a program against its constants and the argument sizes of its metadata;
    raise ValueError naming the first inconsistency."""
    if prog.size < K.HEADER:
        raise ValueError(f"prog has {prog.size} entries, fewer than the {K.HEADER} of the "
                         "header")
    h = [int(v) for v in prog[:K.HEADER]]
    if any(not 0 <= v < LIMIT for v in h):
        raise ValueError(f"header {h} holds a negative or too large value")
    if not nx == h[K.H_NX] <= h[K.H_NIN] == nin:
        raise ValueError(f"header says {h[K.H_NX]} differentiated inputs and {h[K.H_NIN]} "
                         f"inputs in all, the argument kinds say {nx} and {nin}")
    if not h[K.H_NIN] <= h[K.H_CONST] or h[K.H_TOTAL] != h[K.H_CONST] + consts.size:
        raise ValueError(f"header: value buffer of {h[K.H_TOTAL]} values with constants from "
                         f"{h[K.H_CONST]} does not hold {h[K.H_NIN]} inputs and "
                         f"{consts.size} constants")
    if h[K.H_CODE] < K.HEADER or h[K.H_CODE] + h[K.H_NCODE] * K.NCOL != prog.size:
        raise ValueError(f"header: {h[K.H_NCODE]} instructions from {h[K.H_CODE]} do not end "
                         f"at the end of prog ({prog.size} entries)")
    if h[K.H_NOUT] != out_size or h[K.H_OUT] + h[K.H_NOUT] > h[K.H_TOTAL]:
        raise ValueError(f"header: output slot [{h[K.H_OUT]}:+{h[K.H_NOUT]}] is not "
                         f"{out_size} values inside the value buffer")
    if h[K.H_OUTACT] not in (0, 1):
        raise ValueError(f"header: output activity must be 0 or 1, got {h[K.H_OUTACT]}")
    code = prog[h[K.H_CODE]:].reshape(h[K.H_NCODE], K.NCOL)
    # every work slot is some instruction's result: this also bounds the allocation
    written = int(np.maximum(code[:, K.N], 0).sum(dtype=np.float64)) if code.size else 0
    if h[K.H_CONST] - h[K.H_NIN] > written:
        raise ValueError(f"header: {h[K.H_CONST] - h[K.H_NIN]} work slots but the "
                         f"instructions write at most {written} values")
    if code.size and (code.min() <= -LIMIT or code.max() >= LIMIT):
        raise ValueError("an instruction holds a value beyond the format's limit")
    check = Check(prog, h)
    for i, row in enumerate(code.tolist()):
        check.instruction(i, row)
    o, m = h[K.H_OUT], h[K.H_NOUT]
    if not check.defined[o:o + m].all():
        raise ValueError(f"the output slot [{o}:+{m}] is never written")


# ---------------------------------------------------------------------------- opcode rules
# Each rule reads one instruction row and declares, through Check, the slots it reads and
# writes, its side tables and the lengths they must have. RULES[op] = (allowed FLAGS
# bits, rule).

def _elementwise(arity):
    def rule(c, row):
        n = row[K.N]
        for k in range(3):
            a, na = row[K.A + 2 * k], row[K.NA + 2 * k]
            if k >= arity:
                if na != 0:
                    c.fail(f"operand {k} of a {arity}-operand operation must be empty")
            elif na not in (1, n):
                c.fail(f"operand {k} has length {na}, expected 1 or {n}")
            else:
                c.read(a, na)
        c.write(row[K.OUT], n)
    return rule


def _gather(c, row):
    c.read(row[K.A], row[K.NA])
    c.positions(c.table(row[K.AUX], row[K.N]), row[K.NA], "gather position")
    c.write(row[K.OUT], row[K.N])


def _gather_dyn(c, row):
    c.read(row[K.A], row[K.NA])
    if row[K.NB] != row[K.N]:
        c.fail(f"{row[K.NB]} positions for {row[K.N]} results")
    c.index(row[K.B], row[K.NB])
    c.flag(row[K.AUX], "the wrap flag")
    c.write(row[K.OUT], row[K.N])


def _concat(c, row):
    p = row[K.AUX]
    count = int(c.table(p, 1)[0])
    entries = c.table(p + 1, 3 * count).reshape(-1, 3).tolist()
    for off, ln, act in entries:
        c.read(off, ln, "concatenated piece")
        c.flag(act, "a piece's activity")
    if sum(ln for _, ln, _ in entries) != row[K.N]:
        c.fail(f"pieces do not add up to the {row[K.N]} results")
    c.write(row[K.OUT], row[K.N])


def _shape3(c, row, nonempty):
    """(outer, r, inner) of a reduction along one axis, consistent with its slots."""
    outer, r, inner = (int(v) for v in c.table(row[K.AUX], 3))
    if min(outer, r, inner) < 0 or max(outer, r, inner) > 1 << 31:
        c.fail(f"reduction shape ({outer}, {r}, {inner}) out of range")
    if outer * r * inner != row[K.NA] or outer * inner != row[K.N]:
        c.fail(f"reduction shape ({outer}, {r}, {inner}) does not map {row[K.NA]} operand "
               f"values to {row[K.N]} results")
    if nonempty and row[K.N] and r == 0:
        c.fail("maximum, minimum or their position along an empty axis")
    c.read(row[K.A], row[K.NA])
    c.write(row[K.OUT], row[K.N])


def _running(c, row):
    """Running sums or products along one axis: (outer, r, inner) with the result as long
    as the operand."""
    outer, r, inner = (int(v) for v in c.table(row[K.AUX], 3))
    if min(outer, r, inner) < 0 or max(outer, r, inner) > 1 << 31:
        c.fail(f"running-sum shape ({outer}, {r}, {inner}) out of range")
    if outer * r * inner != row[K.NA] or row[K.N] != row[K.NA]:
        c.fail(f"running-sum shape ({outer}, {r}, {inner}) does not map {row[K.NA]} operand "
               f"values to {row[K.N]} results")
    c.read(row[K.A], row[K.NA])
    c.write(row[K.OUT], row[K.N])


def _reduce(nonempty):
    return lambda c, row: _shape3(c, row, nonempty)


def _matmul(c, row):
    m, k, n = (int(v) for v in c.table(row[K.AUX], 3))
    if min(m, k, n) < 0 or max(m, k, n) > 1 << 31:
        c.fail(f"matrix shape ({m}, {k}, {n}) out of range")
    if (row[K.NA], row[K.NB], row[K.N]) != (m * k, k * n, m * n):
        c.fail(f"operand and result lengths ({row[K.NA]}, {row[K.NB]}, {row[K.N]}) do not "
               f"match the shape ({m}, {k}) @ ({k}, {n})")
    c.read(row[K.A], row[K.NA])
    c.read(row[K.B], row[K.NB])
    c.write(row[K.OUT], row[K.N])


def _nonzero(c, row):
    if row[K.N] > row[K.NA]:
        c.fail(f"{row[K.N]} positions of nonzeros among {row[K.NA]} values")
    c.read(row[K.A], row[K.NA])
    c.write(row[K.OUT], row[K.N])


def _argsort(c, row):
    """Sorting positions along an axis: (outer, r, inner) maps NA values to N = NA."""
    outer, r, inner = (int(v) for v in c.table(row[K.AUX], 3))
    if min(outer, r, inner) < 0 or max(outer, r, inner) > 1 << 31:
        c.fail(f"sort shape ({outer}, {r}, {inner}) out of range")
    if not outer * r * inner == row[K.NA] == row[K.N]:
        c.fail(f"sort shape ({outer}, {r}, {inner}) does not map {row[K.NA]} values to "
               f"{row[K.N]} positions")
    c.read(row[K.A], row[K.NA])
    c.write(row[K.OUT], row[K.N])


def _searchsorted(c, row):
    if row[K.NB] != row[K.N]:
        c.fail(f"{row[K.NB]} values to search for {row[K.N]} results")
    c.read(row[K.A], row[K.NA])
    c.read(row[K.B], row[K.NB])
    c.flag(row[K.AUX], "the side flag (1: right)")
    c.write(row[K.OUT], row[K.N])


def _guard(c, row):
    if row[K.NA] != 1 or row[K.N] != 0:
        c.fail("a guard reads one value and writes none")
    c.read(row[K.A], 1)
    c.flag(row[K.AUX], "the recorded outcome")


def _scatter(c, row):
    """buf[p_j] = v_j in place (kernels.SCATTER, see docs/design.md): the old values are
    saved in the result slot."""
    n, na = row[K.N], row[K.NA]
    c.update(row[K.A], na)
    if row[K.NB] not in (1, n):
        c.fail(f"value operand has length {row[K.NB]}, expected 1 or {n}")
    c.read(row[K.B], row[K.NB])
    if row[K.NC] > 0:
        if row[K.NC] != n:
            c.fail(f"{row[K.NC]} positions for {n} written values")
        c.index(row[K.C], row[K.NC])
        start, length, wrap = (int(v) for v in c.table(row[K.AUX], 3))
        if start < 0 or length < 0 or start + length > na:
            c.fail(f"window [{start}, {start + length}) of replay positions outside the "
                   f"buffer of {na} values")
        c.flag(wrap, "the wrap flag")
    else:
        step = int(c.table(row[K.AUX], 1)[0])
        if step:
            start = int(c.table(row[K.AUX] + 1, 1)[0])
            c.positions(np.array([start, start + (n - 1) * step] if n else []), na,
                        "written position")
        else:
            c.positions(c.table(row[K.AUX] + 1, n), na, "written position")
    c.write(row[K.OUT], n)


def _linalg(c, row):
    """A matrix function of a stack of matrices (kernels.la_*): side table (sub-op, nb, n,
    r), operand lengths nb*n*n (qr: nb*r*n) and nb*n*r (a solve's right-hand sides; none
    otherwise)."""
    sub, nb, n, r = (int(v) for v in c.table(row[K.AUX], 4))
    if not 0 <= sub < len(K.LA_NAMES):
        c.fail(f"unknown matrix function {sub}")
    if (min(nb, n, r) < 0 or max(nb, n, r) > 1 << 31 or
            (sub not in (K.LA_SOLVE, K.LA_QR) and r != 0) or (sub == K.LA_QR and r < n)):
        c.fail(f"matrix stack ({nb}, {n}, {r}) out of range")
    na = nb * n * (r if sub == K.LA_QR else n)
    if (row[K.NA], row[K.NB], row[K.N]) != (na, nb * n * r if sub == K.LA_SOLVE else 0,
                                             K.la_out_size(sub, nb, n, r)):
        c.fail(f"operand and result lengths ({row[K.NA]}, {row[K.NB]}, {row[K.N]}) do not "
               f"match {K.LA_NAMES[sub]} of {nb} matrices of order {n}")
    c.read(row[K.A], row[K.NA])
    if row[K.NB]:
        c.read(row[K.B], row[K.NB])
    c.write(row[K.OUT], row[K.N])


def _ew_flags(prim):
    return sum(1 << k for k in range(prim.arity) if prim.diff and prim.d[k] is not None)


RULES = {prim.code: (_ew_flags(prim), _elementwise(prim.arity)) for prim in ops.TABLE.values()}
RULES.update({
    K.GATHER: (1, _gather),
    K.GATHER_DYN: (1, _gather_dyn),
    K.CONCAT: (1, _concat),
    K.REDUCE_SUM: (1, _reduce(False)),
    K.REDUCE_PROD: (1, _reduce(False)),
    K.REDUCE_MAX: (1, _reduce(True)),
    K.REDUCE_MIN: (1, _reduce(True)),
    K.ARGMAX: (0, _reduce(True)),
    K.ARGMIN: (0, _reduce(True)),
    K.MATMUL: (3, _matmul),
    K.NONZERO: (0, _nonzero),
    K.GUARD: (0, _guard),
})
RULES[K.SCATTER] = (3, _scatter)
RULES[K.ARGSORT] = (0, _argsort)
RULES[K.SEARCHSORTED] = (0, _searchsorted)
RULES[K.CUMSUM] = (1, _running)
RULES[K.CUMPROD] = (1, _running)
RULES[K.LINALG] = (3, _linalg)

_NAMES = {code: name for name, code in ops.OPCODES.items()}
