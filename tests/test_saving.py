"""Saved tapes: round trips, and a loader that refuses every malformed or hostile file.

Each validation rule has a corruption here that only it catches; a hypothesis test mutates
saved arrays at random and replays whatever still validates (it must never crash).
"""
import io
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dualtape
from dualtape import kernels as K
from dualtape import saving
from dualtape.tapes import GuardFlipped

from fixtures import rosen


def mixed(x, p, scale):
    """Touches every structural opcode: mask, dynamic and static gathers, concat,
    reductions, argmax, matmul and a guard."""
    pos = x[x > 0]
    z = np.concatenate([x[::-1], pos * p])
    m = x[:4].reshape(2, 2) @ x[2:6].reshape(2, 2)
    s = np.sum(z ** 2) + np.max(x) - np.min(x) + x[np.argmax(x)] * np.prod(m)
    if s > 0:
        s = s * 2.0
    return s * scale


X = np.array([1.0, -2.0, 3.0, 0.5, -1.0, 2.0])
X2 = np.array([1.5, -1.0, 2.5, 0.25, -0.5, 1.0])   # same signs and argmax: same branch


@pytest.fixture(scope="module")
def tp():
    return dualtape.tape(mixed, X, 1.5, 3)


def arrays_of(tape):
    buf = io.BytesIO()
    tape.save(buf)
    buf.seek(0)
    with np.load(buf) as z:
        return {"prog": z["prog"].copy(), "consts": z["consts"].copy(),
                "meta": json.loads(z["meta"].tobytes())}


def write(arrays):
    buf = io.BytesIO()
    meta = arrays["meta"]
    if not isinstance(meta, np.ndarray):
        meta = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez(buf, prog=arrays["prog"], consts=arrays["consts"], meta=meta)
    buf.seek(0)
    return buf


# ---------------------------------------------------------------------------- round trips

def test_round_trip_replays_every_sweep(tp, tmp_path):
    path = tmp_path / "mixed.npz"
    tp.save(path)
    lt = dualtape.load(path)
    assert lt.out_shape == tp.out_shape and lt.name == "mixed" and len(lt) == len(tp)
    args = (X2, 0.7, 3)
    assert lt(*args) == mixed(*args)
    np.testing.assert_allclose(lt.gradient(*args), tp.gradient(*args), rtol=1e-14)
    eps = 1e-6
    fd = np.array([(mixed(X2 + eps * e, 0.7, 3) - mixed(X2 - eps * e, 0.7, 3)) / (2 * eps)
                   for e in np.eye(6)])
    np.testing.assert_allclose(lt.gradient(*args), fd, rtol=1e-6)
    np.testing.assert_allclose(lt.hessian(*args), tp.hessian(*args), rtol=1e-14)


def test_round_trip_vector_output_and_two_arguments(tmp_path):
    def f(a, b):
        return np.sin(a) * b[:2]
    from dualtape.tapes import record
    tp = record(f, (np.zeros(2), np.ones(3)), (1, 0))
    tp.save(tmp_path / "f")                         # NumPy appends .npz
    lt = dualtape.load(tmp_path / "f.npz")
    a, b = np.array([0.3, 0.4]), np.array([2.0, 3.0, 4.0])
    jb, ja = lt.jacobian(a, b)                      # in argnums order
    np.testing.assert_allclose(ja, np.diag(np.cos(a) * b[:2]))
    np.testing.assert_allclose(jb, np.hstack([np.diag(np.sin(a)), np.zeros((2, 1))]))


def test_loaded_tape_cannot_record_again(tp, tmp_path):
    tp.save(tmp_path / "t.npz")
    lt = dualtape.load(tmp_path / "t.npz")
    with pytest.raises(GuardFlipped, match="loaded from .*t.npz.*cannot record again"):
        lt.gradient(-np.abs(X) - 1.0, 1.5, 3)       # no positive element: nonzero flips


def test_static_argument_checked_after_loading(tp, tmp_path):
    tp.save(tmp_path / "t.npz")
    lt = dualtape.load(tmp_path / "t.npz")
    with pytest.raises(ValueError, match="static"):
        lt(X, 1.5, 4)


@pytest.mark.parametrize("static, what", [([1, 2], "tuple|list"),
                                          (np.arange(3), "array"),
                                          (len, "callable")])
def test_unsaveable_static_arguments(static, what, tmp_path):
    tp = dualtape.tape(lambda x, s: np.sum(x), np.ones(2), static)
    with pytest.raises(ValueError, match=f"static argument 1 is a ({what})"):
        tp.save(tmp_path / "t.npz")


def test_tape_with_callbacks_cannot_be_saved(monkeypatch, tmp_path):
    tp = dualtape.tape(rosen, np.ones(3))
    monkeypatch.setattr(type(tp), "has_callbacks", property(lambda self: True))
    with pytest.raises(ValueError, match="custom rules"):
        tp.save(tmp_path / "t.npz")


# ---------------------------------------------------------------------------- corruptions

def op_row(prog, name, nth=0):
    """Offset in prog of the nth instruction with opcode ``name``."""
    code = prog[prog[K.H_CODE]:].reshape(-1, K.NCOL)
    rows = np.flatnonzero(code[:, K.OP] == dualtape.ops.OPCODES[name])
    return int(prog[K.H_CODE]) + K.NCOL * int(rows[nth])


def set_field(name, col, value, nth=0):
    def mutate(a):
        a["prog"][op_row(a["prog"], name, nth) + col] = value(a["prog"]) if callable(value) \
            else value
    return mutate


def set_table(name, k, value):
    def mutate(a):
        p = a["prog"][op_row(a["prog"], name) + K.AUX]
        a["prog"][p + k] = value
    return mutate


def set_header(field, value):
    def mutate(a):
        a["prog"][field] = value(a["prog"]) if callable(value) else value
    return mutate


def grow_work(a):
    a["prog"][K.H_CONST] += 1000
    a["prog"][K.H_TOTAL] += 1000


def hole_at_output(a):
    """The last instruction writes over an earlier result, so its own slot stays empty."""
    p = a["prog"]
    last = p.size - K.NCOL
    p[K.H_OUT] = p[last + K.OUT]
    p[last + K.OUT] = p[last + K.A]


def scatter_index(a):
    """A later instruction writes over the positions a dynamic gather reads."""
    p = a["prog"]
    src = op_row(p, "gather_dyn")
    p[op_row(p, "mul") + K.OUT] = p[src + K.B]


def meta_set(key, value):
    def mutate(a):
        a["meta"][key] = value
    return mutate


CORRUPTIONS = {
    "short prog": (lambda a: a.update(prog=a["prog"][:5]), "fewer than"),
    "negative header": (set_header(K.H_OUT, -1), "negative or too large"),
    "huge header": (set_header(K.H_TOTAL, 1 << 50), "negative or too large"),
    "input count": (set_header(K.H_NX, 5), "differentiated inputs"),
    "constants count": (lambda a: a.update(consts=a["consts"][:-1]), "does not hold"),
    "constants before inputs": (set_header(K.H_CONST, 3), "does not hold"),
    "code length": (set_header(K.H_NCODE, lambda p: p[K.H_NCODE] + 1), "do not end"),
    "code start": (set_header(K.H_CODE, 2), "do not end"),
    "output length": (set_header(K.H_NOUT, 2), "output slot"),
    "output outside": (set_header(K.H_OUT, lambda p: p[K.H_TOTAL]), "output slot"),
    "output activity": (set_header(K.H_OUTACT, 2), "activity"),
    "work larger than written": (grow_work, "work slots"),
    "huge instruction value": (set_field("square", K.AUX, 1 << 45), "limit"),
    "unknown opcode": (set_field("square", K.OP, 999), "unknown opcode 999"),
    "opcode zero": (set_field("square", K.OP, 0), "unknown opcode 0"),
    "flags of a comparison": (set_field("greater", K.FLAGS, 1), "FLAGS"),
    "negative flags": (set_field("square", K.FLAGS, -1), "FLAGS"),
    "operand length": (set_field("mul", K.NB, 3), "expected 1 or"),
    "unused operand": (set_field("square", K.NB, 1), "must be empty"),
    "operand outside": (set_field("square", K.A, lambda p: p[K.H_TOTAL] - 1),
                        "outside the value buffer"),
    "negative operand": (set_field("square", K.A, -3), "outside the value buffer"),
    "write into input": (set_field("square", K.OUT, 0), "overwrite inputs"),
    "write into constants": (set_field("reduce_sum", K.OUT, lambda p: p[K.H_CONST]),
                             "overwrite inputs or constants"),
    "read before written": (set_field("square", K.A,
                                      lambda p: p[op_row(p, "square") + K.OUT]),
                            "read before it is written"),
    "gather position": (set_table("gather", 0, 6), "gather position"),
    "gather table outside": (set_field("gather", K.AUX, lambda p: p[K.H_CODE] - 2),
                             "side table"),
    "gather table in header": (set_field("gather", K.AUX, 2), "side table"),
    "dynamic gather lengths": (set_field("gather_dyn", K.NB, 2), "positions for"),
    "dynamic gather wrap": (set_field("gather_dyn", K.AUX, 2), "wrap flag"),
    "index overwritten": (scatter_index, "dynamic gather reads"),
    "concat count": (set_table("concat", 0, 1000), "side table"),
    "negative concat count": (set_table("concat", 0, -1), "side table"),
    "concat piece outside": (set_table("concat", 1, 1 << 39), "outside the value buffer"),
    "concat activity": (set_table("concat", 3, 5), "activity"),
    "concat total": (set_table("concat", 2, 1), "add up"),
    "reduction shape": (set_table("reduce_sum", 1, 11), "does not map"),
    "negative reduction shape": (set_table("reduce_prod", 0, -1), "out of range"),
    "max of empty axis": (lambda a: [set_field("reduce_max", K.NA, 0)(a),
                                     set_table("reduce_max", 1, 0)(a)], "empty axis"),
    "argmax shape": (set_table("argmax", 2, 2), "does not map"),
    "matmul shape": (set_table("matmul", 1, 3), "do not match"),
    "matmul range": (set_table("matmul", 1, -2), "out of range"),
    "nonzero count": (set_field("nonzero", K.N, 7), "positions of nonzeros"),
    "guard length": (set_field("guard", K.NA, 2), "one value"),
    "guard outcome": (set_field("guard", K.AUX, 3), "recorded outcome"),
    "output never written": (hole_at_output, "never written"),
    "meta format": (meta_set("format", "npz"), "not a saved dualtape tape"),
    "meta version": (meta_set("version", 1), "version 1 is not supported"),
    "meta name": (meta_set("name", 3), "name"),
    "meta kinds": (meta_set("kinds", {"a": 1}), "kinds must be a list"),
    "meta kind": (meta_set("kinds", [["diff", [6]], ["other", []], ["static", "int", 3]]),
                  "not a valid argument kind"),
    "meta shape": (meta_set("kinds", [["diff", [-6]], ["param", []], ["static", "int", 3]]),
                   "non-negative ints"),
    "meta static": (meta_set("kinds", [["diff", [6]], ["param", []], ["static", "int", "3"]]),
                    "storable static value"),
    "meta argnums": (meta_set("argnums", [1]), "argnums"),
    "meta out_shape": (meta_set("out_shape", [2]), "output slot"),
    "meta sizes": (meta_set("kinds", [["diff", [5]], ["param", []], ["static", "int", 3]]),
                   "kinds say"),
    "meta not json": (lambda a: a.update(meta=np.frombuffer(b"{no", np.uint8)), "JSON"),
    "meta dtype": (lambda a: a.update(meta=np.zeros(3)), "uint8"),
    "prog dtype": (lambda a: a.update(prog=a["prog"].astype(np.float64)), "1-D int64"),
    "consts shape": (lambda a: a.update(consts=a["consts"].reshape(1, -1)), "1-D float64"),
    "missing array": (lambda a: a.pop("consts"), "no array"),
}


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_corrupted_file_is_refused(tp, name):
    mutate, message = CORRUPTIONS[name]
    arrays = arrays_of(tp)
    mutate(arrays)
    buf = io.BytesIO()
    np.savez(buf, **{k: (np.frombuffer(json.dumps(v).encode(), np.uint8) if k == "meta"
                         and not isinstance(v, np.ndarray) else v)
                     for k, v in arrays.items()})
    buf.seek(0)
    with pytest.raises(ValueError, match=message):
        dualtape.load(buf)


def test_the_unmutated_file_loads(tp):
    # the corruptions above start from a valid file
    assert dualtape.load(write(arrays_of(tp)))(X, 1.5, 3) == mixed(X, 1.5, 3)


def test_not_an_npz_file(tmp_path):
    (tmp_path / "t.npz").write_bytes(b"PK\x03\x04 garbage")
    with pytest.raises(ValueError, match="not a readable"):
        dualtape.load(tmp_path / "t.npz")


def test_pickled_objects_are_refused(tmp_path):
    np.savez(tmp_path / "t.npz", prog=np.array([object()]), consts=np.zeros(1),
             meta=np.zeros(1, np.uint8))
    with pytest.raises(ValueError, match="not a readable"):
        dualtape.load(tmp_path / "t.npz")


# ---------------------------------------------------------------------------- scatter rule
# The in-place update's rule, on hand-built programs.

SCATTER_OP = K.SCATTER


def scatter_program(a, na, nb, nc=0, c=0, table=(1, 0)):
    """inputs x (3 values) and positions/values at slots 3..5, save slot 6..7; one scatter
    of 2 values into x[a:a+na] with positions from ``table`` (step, start or list)."""
    ints = np.zeros(K.HEADER, np.int64)
    side = np.array(table, np.int64)
    code = np.array([[SCATTER_OP, 6, 2, a, na, 3, nb, c, nc, K.HEADER, 3]], np.int64)
    ints[[K.H_TOTAL, K.H_CONST, K.H_NIN, K.H_NX, K.H_OUT, K.H_NOUT]] = (8, 8, 6, 3, 0, 1)
    ints[K.H_CODE] = K.HEADER + side.size
    ints[K.H_NCODE] = 1
    return np.concatenate([ints, side, code.ravel()])


@pytest.mark.parametrize("args, message", [
    (dict(a=0, na=3, nb=1), None),
    (dict(a=0, na=3, nb=2, table=(0, 2, 0)), None),
    (dict(a=0, na=3, nb=1, nc=2, c=4, table=(0, 3, 1)), None),
    (dict(a=0, na=3, nb=1, nc=2, c=4, table=(1, 3, 0)), "window"),
    (dict(a=0, na=3, nb=3), "value operand"),
    (dict(a=0, na=3, nb=1, table=(2, 2)), "written position"),
    (dict(a=0, na=3, nb=1, table=(0, 2, 3)), "written position"),
    (dict(a=0, na=3, nb=1, table=(0, 2)), "side table"),
    (dict(a=0, na=3, nb=1, nc=1, c=4, table=(0, 3, 1)), "positions for"),
    (dict(a=6, na=3, nb=1), "read before|outside"),
])
def test_scatter_rule(monkeypatch, args, message):
    monkeypatch.setitem(saving.RULES, SCATTER_OP, (3, saving._scatter))
    prog = scatter_program(**args)
    if message is None:
        saving.validate(prog, np.zeros(0), 6, 3, 1)
    else:
        with pytest.raises(ValueError, match=message):
            saving.validate(prog, np.zeros(0), 6, 3, 1)


def test_scatter_never_into_constants(monkeypatch):
    monkeypatch.setitem(saving.RULES, SCATTER_OP, (3, saving._scatter))
    prog = scatter_program(a=8, na=1, nb=1)
    prog[K.H_TOTAL] = 9                       # one constant at slot 8
    with pytest.raises(ValueError, match="overlaps the constants"):
        saving.validate(prog, np.zeros(1), 6, 3, 1)


# ---------------------------------------------------------------------------- fuzzing

def replay_everything(lt):
    """Every sweep of a loaded tape; statuses may say guard flipped or bad index."""
    for call in (lambda: lt(X2, 0.7, 3), lambda: lt.gradient(X2, 0.7, 3),
                 lambda: lt.jvp(X2, 0.7, 3, np.ones(6)),
                 lambda: lt.hvp(X2, 0.7, 3, np.ones(6)),
                 lambda: lt.jacobian(X2, 0.7, 3, mode="forward")):
        try:
            call()
        except (GuardFlipped, IndexError):
            pass


EXTREMES = st.sampled_from([0, 1, 2, -1, 6, 7, 11, 64, 1 << 31, 1 << 40, -(1 << 62),
                            (1 << 63) - 1])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fuzzed_tapes_load_or_refuse_and_never_crash(tp, data):
    arrays = arrays_of(tp)
    arrays["meta"] = np.frombuffer(json.dumps(arrays["meta"]).encode(), np.uint8).copy()
    for _ in range(data.draw(st.integers(1, 3))):
        name = data.draw(st.sampled_from(["prog", "prog", "prog", "consts", "meta"]))
        arr = arrays[name]
        i = data.draw(st.integers(0, arr.size - 1))
        if name == "prog":
            arr[i] = data.draw(st.one_of(EXTREMES, st.integers(-3, 3).map(
                lambda d, v=int(arr[i]): min(max(v + d, -(1 << 63)), (1 << 63) - 1))))
        elif name == "consts":
            arr[i] = data.draw(st.floats(allow_nan=True, allow_infinity=True))
        else:
            arr[i] = data.draw(st.integers(0, 255))
    try:
        lt = dualtape.load(write(arrays))
    except ValueError:
        return
    replay_everything(lt)


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_fuzzed_file_bytes(tp, data):
    buf = io.BytesIO()
    tp.save(buf)
    raw = bytearray(buf.getvalue())
    for _ in range(data.draw(st.integers(1, 4))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    try:
        lt = dualtape.load(io.BytesIO(bytes(raw)))
    except ValueError:
        return
    replay_everything(lt)
