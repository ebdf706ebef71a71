"""Sparse derivatives: pattern detection on tapes, colorings, compressed sweeps.

Sparse results are compared with dense ones computed by other sweeps (reverse Jacobians,
forward-over-reverse Hessians of the whole identity) or with SciPy's ``rosen_hess``;
patterns are checked to cover every nonzero of dense derivatives at random points, and
colorings against their defining properties, never against their own output.
"""
import gc
import weakref
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import rosen_hess

import dualtape
from dualtape import sparse as S
from fixtures import brusselator, elementwise_mix, rosen

RNG = np.random.default_rng(14)


def dense_jacobian(f, x):
    tp = dualtape.tape(f, x)
    return tp.jacobian(x).reshape(tp.out_size, -1)


def dense_hessian(f, x):
    return dualtape.tape(f, x).hessian(x).reshape(x.size, x.size)


def assert_sparse_equals(M, D, rtol=1e-12):
    assert sp.issparse(M) and M.format == "csr"
    M.check_format(full_check=True)
    np.testing.assert_allclose(M.toarray(), D, rtol=rtol, atol=rtol * max(1.0, abs(D).max()))


def covers(pattern, D):
    """Every nonzero of D lies in the pattern."""
    return not np.any((D != 0) & ~pattern.toarray())


# ============================================================================ random problems

def random_problem(rng, n):
    """A sparse f: R^n -> R^m from random constant-index gathers and elementwise math."""
    i1, i2, i3 = (rng.integers(0, n, n + 3) for _ in range(3))
    c = rng.uniform(0.5, 1.5, n + 3)

    def f(x):
        a, b, d = x[i1], x[i2], x[i3]
        return np.sin(a) * b + c * np.exp(0.1 * d) - a * a * d + np.tanh(b - d)
    return f


@pytest.mark.parametrize("seed", range(4))
def test_random_jacobians_and_hessians(seed):
    rng = np.random.default_rng(seed)
    n = 30
    f = random_problem(rng, n)
    x = rng.uniform(-1, 1, n)
    for mode in ("auto", "forward", "reverse"):
        assert_sparse_equals(dualtape.jacobian(f, sparse=True, mode=mode)(x),
                             dense_jacobian(f, x))

    def g(x):
        return np.sum(f(x) ** 2)
    H = dualtape.hessian(g, sparse=True)
    assert_sparse_equals(H(x), dense_hessian(g, x), rtol=1e-10)
    x2 = rng.uniform(-1, 1, n)            # replay at a new point: same tape, same plan
    assert_sparse_equals(H(x2), dense_hessian(g, x2), rtol=1e-10)
    assert H.tapes.records == 1


def test_brusselator_jacobian():
    for n in (10, 200):
        x = RNG.uniform(0.5, 1.5, n)
        jac = dualtape.jacobian(brusselator, sparse=True)
        J = jac(x)
        assert_sparse_equals(J, dense_jacobian(brusselator, x))
        assert J.nnz == 4 * n
        s = dualtape.sparsity(brusselator, x)
        assert s.jacobian_colors[1] <= 5 and s.hessian is None


def test_rosenbrock_hessian_against_scipy():
    for n in (2, 3, 50):
        x = RNG.uniform(-1.2, 1.2, n)
        H = dualtape.hessian(rosen, sparse=True)(x)
        assert_sparse_equals(H, rosen_hess(x), rtol=1e-12)
        assert dualtape.sparsity(rosen, x).hessian_colors <= 3


def test_output_shapes_flatten():
    f = lambda X: np.sin(X) * X[::-1]          # noqa: E731  (2, 3) -> (2, 3)
    x = RNG.uniform(-1, 1, (2, 3))
    J = dualtape.jacobian(f, sparse=True)(x)
    assert J.shape == (6, 6)
    assert_sparse_equals(J, dense_jacobian(f, x))


def test_fresh_outputs():
    jac = dualtape.jacobian(brusselator, sparse=True)
    x = RNG.uniform(0.5, 1.5, 20)
    J1, J2 = jac(x), jac(x)
    assert J1.data is not J2.data and J1.indices is not J2.indices
    J1.data[:] = 0.0
    J1.indices[:] = 0
    assert_sparse_equals(jac(x), dense_jacobian(brusselator, x))


# ============================================================================ instruction kinds

@pytest.mark.parametrize("name,f,n", [
    ("matmul constant banded", lambda x: (np.eye(6) + np.eye(6, k=1)) @ np.sin(x), 6),
    ("matmul both active", lambda x: (x.reshape(2, 3) @ x.reshape(3, 2)).ravel(), 6),
    ("matmul constant right", lambda x: np.tanh(x.reshape(3, 2) @ np.array([[1.0, 0.0, 2.0],
                                                                          [0.0, 0.0, 1.0]])).ravel(), 6),
    ("sum axis", lambda x: np.sum(np.exp(x.reshape(2, 3)) * x.reshape(2, 3), axis=0), 6),
    ("prod", lambda x: np.concatenate([np.prod(x[:3], keepdims=True), x[3:] ** 3]), 6),
    ("max", lambda x: np.max(x.reshape(3, 2) ** 2, axis=1), 6),
    ("concat with constant", lambda x: np.concatenate([x[:2] ** 2, np.ones(2), x[3:] * x[0]]), 5),
    ("where", lambda x: np.where(x > 0, np.sqrt(np.abs(x)), x * x[0]), 5),
    ("broadcast scalar", lambda x: x * np.sum(x[:2]) + np.cos(x[-1]), 5),
    ("reversed", lambda x: np.flip(x ** 2) * np.repeat(x[::-2], 2)[:5], 5),
    ("cumsum axis", lambda x: np.cumsum(x.reshape(2, 3) ** 2, axis=0).ravel() * x[0], 6),
    ("cumprod axis", lambda x: np.cumprod(x.reshape(2, 3), axis=1).ravel(), 6),
])
def test_instruction_kinds(name, f, n):
    for _ in range(2):
        x = RNG.uniform(-1, 1, n)
        J = dualtape.jacobian(f, sparse=True)(x)
        assert_sparse_equals(J, dense_jacobian(f, x))

        def g(z):
            return np.sum(f(z) * np.linspace(1.0, 2.0, f(x).size))
        assert_sparse_equals(dualtape.hessian(g, sparse=True)(x), dense_hessian(g, x),
                             rtol=1e-10)


def test_exact_patterns():
    n = 7
    # constant tridiagonal matrix: zeros of a constant operand are skipped
    A = np.diag(np.full(n, -2.0)) + np.eye(n, k=1) + np.eye(n, k=-1)
    s = dualtape.sparsity(lambda x: A @ x, np.ones(n))
    assert (s.jacobian.toarray() == (A != 0)).all()
    # a linear function has an empty Hessian; x*y only its off-diagonal pair
    s = dualtape.sparsity(lambda x: np.sum(3.0 * x) + x[0] * x[1], np.ones(3))
    assert s.hessian.toarray().tolist() == [[False, True, False], [True, False, False],
                                            [False, False, False]]
    # an intermediate that reaches the output only through argmax adds no Hessian pairs
    s = dualtape.sparsity(lambda x: np.sum(x) * 2.0 + x[np.argmax(x ** 2)], np.arange(4.0))
    assert s.hessian.nnz == 0
    # running sums: lower triangular, along the chosen axis only
    s = dualtape.sparsity(lambda x: np.cumsum(x), np.ones(n))
    assert (s.jacobian.toarray() == np.tri(n, dtype=bool)).all()
    s = dualtape.sparsity(lambda x: np.cumsum(x.reshape(2, 3), axis=1).ravel(), np.ones(6))
    assert (s.jacobian.toarray() == np.kron(np.eye(2), np.tri(3)).astype(bool)).all()
    # running products: x_i x_j pairs up to the last result used
    s = dualtape.sparsity(lambda x: np.cumprod(x)[2], np.ones(n))
    want = np.zeros((n, n), bool)
    want[:3, :3] = ~np.eye(3, dtype=bool)
    assert (s.hessian.toarray() == want).all()
    # comparisons and argmax carry no derivative
    s = dualtape.sparsity(lambda x: (x > 0) * 1.0 + np.argmax(x) + x[:1], np.ones(3))
    assert s.jacobian.toarray()[:, 1:].sum() == 0


# ============================================================================ data-dependent gathers

def test_data_dependent_gather_replayed_where_indices_change():
    def f(x):
        return x * x[np.argmax(x)] + np.sin(x[np.argmin(x)])

    def g(x):
        return np.sum(f(x) ** 2)
    jac = dualtape.jacobian(f, sparse=True)
    hess = dualtape.hessian(g, sparse=True)
    n = 8
    for k in range(n):       # the maximum moves to every position
        x = RNG.uniform(-1, 1, n)
        x[k] = 2.0
        x[(k + 3) % n] = -2.0
        assert_sparse_equals(jac(x), dense_jacobian(f, x))
        assert_sparse_equals(hess(x), dense_hessian(g, x), rtol=1e-10)
    assert jac.tapes.records == 1 and hess.tapes.records == 1


def test_index_computed_from_x():
    def f(x):
        return np.sum(x[x > 0.0] ** 2) * x + x[np.argmax(x[::-1] * x)]
    jac = dualtape.jacobian(f, sparse=True)
    for _ in range(5):
        x = RNG.uniform(-1, 1, 6)
        assert_sparse_equals(jac(x), dense_jacobian(f, x))


# ============================================================================ colorings

def tridiagonal(n):
    return sp.csr_matrix(np.eye(n, dtype=bool) | np.eye(n, k=1, dtype=bool)
                         | np.eye(n, k=-1, dtype=bool))


def test_tridiagonal_needs_three_colors():
    for n in (3, 10, 101):
        P = tridiagonal(n)
        assert S.color_columns(P).max() + 1 <= 3
        assert S.color_rows(P).max() + 1 <= 3
        assert S.star_coloring(P).max() + 1 <= 3

    def f(x):       # a tridiagonal Jacobian, detected on a tape
        return np.concatenate([x[:1], x[:-2] - 2.0 * np.sin(x[1:-1]) + x[2:], x[-1:]])
    s = dualtape.sparsity(f, np.ones(50))
    assert s.jacobian.nnz == 3 * 48 + 2 and s.jacobian_colors[1] <= 3


def test_banded_hessian_colors_grow_with_bandwidth():
    for b in (1, 2, 4):
        def f(x, b=b):
            return np.sum(np.sin(x[b:] * x[:-b]))
        s = dualtape.sparsity(f, np.ones(200))
        assert s.hessian_colors <= 2 * b + 2


def test_coloring_keeps_the_best_of_several_orders():
    # the periodic Brusselator at n = 100: greedy in natural order needs 8 colors, the best
    # of the orders tried 6, iterated greedy then 5 (the lower bound: u_j, u_j+1, v_j,
    # v_j+1 share rows)
    jac = dualtape.sparsity(brusselator, np.ones(100)).jacobian
    Q = jac.tocsc()
    natural = S._greedy_columns(jac.indptr.astype(np.int64), jac.indices.astype(np.int64),
                                Q.indptr.astype(np.int64), Q.indices.astype(np.int64),
                                np.arange(100))
    c = S.color_columns(jac)
    assert natural.max() + 1 == 8 and c.max() + 1 == 5
    D = jac.toarray()
    for color in np.unique(c):
        assert D[:, c == color].sum(axis=1).max() <= 1


def random_pattern(rng, m, n, density):
    return sp.csr_matrix(rng.random((m, n)) < density)


def test_column_and_row_colorings_are_valid():
    rng = np.random.default_rng(3)
    for _ in range(20):
        P = random_pattern(rng, 15, 12, 0.2)
        D = P.toarray()
        c = S.color_columns(P)
        for color in np.unique(c):
            assert D[:, c == color].sum(axis=1).max(initial=0) <= 1
        r = S.color_rows(P)
        for color in np.unique(r):
            assert D[r == color].sum(axis=0).max(initial=0) <= 1


def test_star_coloring_recovers_random_symmetric_matrices():
    rng = np.random.default_rng(4)
    for _ in range(20):
        n = 14
        U = np.triu(rng.random((n, n)) < 0.2)
        P = U | U.T | np.eye(n, dtype=bool)
        H = np.where(P, rng.standard_normal((n, n)), 0.0)
        H = H + H.T
        Pc = sp.csr_matrix(P)
        colors = S.star_coloring(Pc)
        k = colors.max() + 1
        for i, j in zip(*np.nonzero(P)):            # a proper distance-1 coloring
            assert i == j or colors[i] != colors[j]
        V = np.zeros((n, k))
        V[np.arange(n), colors] = 1.0
        pos = S._star_positions(Pc.indptr.astype(np.int64), Pc.indices.astype(np.int64),
                                colors, k)
        rec = np.zeros((n, n))
        rows = np.repeat(np.arange(n), np.diff(Pc.indptr))
        rec[rows, Pc.indices] = (H @ V).ravel()[pos]
        np.testing.assert_allclose(rec, H, rtol=1e-14, atol=1e-14)


# ============================================================================ property

UNARY = [np.sin, np.exp, np.tanh, lambda v: v * v, np.abs, lambda v: 1.0 / (2.0 + v)]
BINARY = [np.add, np.multiply, np.subtract, np.maximum, lambda a, b: a / (3.0 + b)]


@st.composite
def expressions(draw):
    """A random f: R^n -> R^m as a list of steps over a stack of gathered vectors."""
    n = draw(st.integers(2, 7))
    m = draw(st.integers(1, 6))
    steps = []
    for _ in range(draw(st.integers(1, 5))):
        kind = draw(st.sampled_from(["unary", "binary", "sum", "gather_dyn"]))
        steps.append((kind, draw(st.integers(0, len(UNARY) - 1)),
                      draw(st.integers(0, len(BINARY) - 1)),
                      np.array(draw(st.lists(st.integers(0, n - 1), min_size=m, max_size=m)))))
    return n, m, steps


def build(n, m, steps):
    def f(x):
        v = x[np.arange(m) % n]
        for kind, u, b, idx in steps:
            if kind == "unary":
                v = UNARY[u](v)
            elif kind == "binary":
                v = BINARY[b](v, x[idx])
            elif kind == "sum":
                v = v + np.sum(v[: 1 + u % m]) * x[idx]
            else:
                v = v * v[np.argmax(v + x[idx])]
        return v
    return f


@settings(max_examples=40, deadline=None)
@given(expressions(), st.integers(0, 2**31 - 1))
def test_pattern_never_misses_a_nonzero(expr, seed):
    n, m, steps = expr
    f = build(n, m, steps)
    rng = np.random.default_rng(seed)
    x0 = rng.uniform(-1, 1, n)
    s = dualtape.sparsity(f, x0)

    def g(x):
        return np.sum(f(x) * np.linspace(1.0, 2.0, m))
    h = dualtape.sparsity(g, x0).hessian
    jac = dualtape.jacobian(f, sparse=True)
    jac(x0)
    for _ in range(3):       # no guards here: the tape recorded at x0 holds everywhere
        x = rng.uniform(-1, 1, n)
        D = dense_jacobian(f, x)
        assert covers(s.jacobian, D)
        assert covers(h, dense_hessian(g, x))
        assert_sparse_equals(jac(x), D)
    assert jac.tapes.records == 1


# ============================================================================ SCATTER (issue 15)

def scatter_program(dynamic):
    """sin(x) (4 values) then, as the coming SCATTER row, buf[[1, 1, 3]] = x[0:3] (static)
    or buf[p] = x[0:3] with positions p in a slot (dynamic); output: buf. The opcode is not
    in ops yet: the test maps a spare opcode to the scatter kind."""
    from dualtape import kernels as K
    tp = dualtape.tape(np.sin, np.ones(4))
    prog = tp.prog
    head = prog[:prog[K.H_CODE]].copy()
    code = tp.code.copy()
    buf = int(code[0, K.OUT])
    aux = head.size
    head = np.concatenate([head, [0, 1, 1, 3]])          # step 0: a table of positions
    save = int(head[K.H_TOTAL])
    row = np.zeros(K.NCOL, np.int64)
    row[[K.OP, K.OUT, K.N, K.A, K.NA, K.B, K.NB, K.AUX, K.FLAGS]] = \
        [999, save, 3, buf, 4, 0, 3, aux, 3]
    if dynamic:
        row[K.C], row[K.NC] = 1, 3      # any slot: positions are not known to the analysis
    head[K.H_TOTAL] += 3
    head[K.H_CONST] += 3
    head[K.H_OUT], head[K.H_NOUT], head[K.H_OUTACT] = buf, 4, 1
    head[K.H_NCODE] = 2
    head[K.H_CODE] = head.size
    prog = np.concatenate([head, code.ravel(), row])
    kind, dpat, d2pat = S.tables()
    kind = np.concatenate([kind, np.zeros(1000 - kind.size, np.int64)])
    kind[999] = S.KIND_SCATTER
    pad = np.zeros((1000 - dpat.shape[0],) + dpat.shape[1:], bool)
    return prog, tp.consts, kind, np.concatenate([dpat, pad]), \
        np.concatenate([d2pat, np.zeros((pad.shape[0], 3, 3), bool)])


def sets_of(prog, res):
    ptr, cnt, pool = res[:3]
    from dualtape import kernels as K
    o = int(prog[K.H_OUT])
    return [sorted(pool[ptr[e]:ptr[e] + cnt[e]].tolist()) if cnt[e] >= 0 else "all"
            for e in range(o, o + 4)]


def test_scatter_case_static_and_dynamic():
    prog, consts, kind, dpat, d2pat = scatter_program(dynamic=False)
    res = S.patterns(prog, consts, kind, dpat, d2pat, True)
    assert sets_of(prog, res) == [[0], [1], [2], [2]]    # the last write wins
    pairs = {(int(i), int(j)) for i, j in zip(res[3][:res[5][0]], res[4][:res[5][0]])}
    assert pairs == {(0, 0), (2, 2)}        # sin of elements 1 and 3 is overwritten
    prog, consts, kind, dpat, d2pat = scatter_program(dynamic=True)
    res = S.patterns(prog, consts, kind, dpat, d2pat, True)
    assert sets_of(prog, res) == [[0, 1, 2], [0, 1, 2], [0, 1, 2], "all"]   # 4 of 4 inputs
    pairs = {(int(i), int(j)) for i, j in zip(res[3][:res[5][0]], res[4][:res[5][0]])}
    assert pairs == {(0, 0), (1, 1), (2, 2), (3, 3)}   # any sin value may survive


# ============================================================================ the per-call path

def central_jacobian(f, x, h=1e-6):
    cols = [(f(x + h * e) - f(x - h * e)) / (2 * h) for e in np.eye(x.size)]
    return np.stack(cols, axis=1)


def rosen_hessian(x):
    """The Rosenbrock Hessian written out (tridiagonal)."""
    n = x.size
    H = np.zeros((n, n))
    i = np.arange(n - 1)
    H[i, i] += 1200.0 * x[:-1] ** 2 - 400.0 * x[1:] + 2.0
    H[i + 1, i + 1] += 200.0
    H[i, i + 1] = H[i + 1, i] = -400.0 * x[:-1]
    return H


def general(tp, mode, x):
    """The sparse derivative by the tape's run_* methods (``sparse._general``), not the
    bound runner of the fast path."""
    plan = S.hessian_plan(tp) if mode == "hessian" else S.jacobian_plan(tp, mode)
    status, M = S._general(tp, plan, x.reshape(-1))
    assert status == dualtape.kernels.OK
    return M


@pytest.mark.parametrize("compile", [False, True])
def test_fast_path_equals_general_path_and_dense(compile):
    """The bound runner (``sparse.runner``) at one C-contiguous float64 array equals the
    chunked general path, the dense derivative and central differences, in every mode, at
    the recorded point and at new ones (interpreted and compiled tapes)."""
    x = np.array([0.3, -1.2, 2.5, 0.7, -0.4, 1.9])
    for mode in ("auto", "forward", "reverse"):
        jac = dualtape.jacobian(elementwise_mix, sparse=True, mode=mode, compile=compile)
        for y in (x, x * 0.9 + 0.1, -x):
            J = jac(y)
            tp = jac.tapes.tapes[(y.shape,)][0]
            assert_sparse_equals(J, general(tp, mode, y).toarray())
            assert_sparse_equals(J, dense_jacobian(elementwise_mix, y))
            np.testing.assert_allclose(J.toarray(), central_jacobian(elementwise_mix, y),
                                       rtol=1e-6, atol=1e-6)
        assert jac.last_mode == ("reverse" if mode == "reverse" else "forward")
        assert jac.tapes.records == 1 and (compile is False or hasattr(tp, "interpreted"))
    if not compile:         # several colors each way (compiled: tests/test_compiled_cross)
        for mode in ("forward", "reverse"):
            jac = dualtape.jacobian(brusselator, sparse=True, mode=mode)
            for y in (RNG.uniform(0.5, 1.5, 20), RNG.uniform(0.5, 1.5, 20)):
                J = jac(y)
                tp = jac.tapes.tapes[(y.shape,)][0]
                assert_sparse_equals(J, general(tp, mode, y).toarray())
                assert_sparse_equals(J, dense_jacobian(brusselator, y))
            assert S.jacobian_plan(tp, mode).ncolors > 2
    hess = dualtape.hessian(rosen, sparse=True, compile=compile)
    for y in (np.linspace(-1.2, 1.3, 7), np.cos(np.arange(7.0))):
        H = hess(y)
        tp = hess.tapes.tapes[(y.shape,)][0]
        assert_sparse_equals(H, rosen_hessian(y))
        assert_sparse_equals(H, general(tp, "hessian", y).toarray())
        assert_sparse_equals(H, dense_hessian(rosen, y), rtol=1e-10)
    assert hess.tapes.records == 1


@pytest.mark.parametrize("compile", [False, True])
def test_results_are_fresh_and_modifiable(compile):
    """Each call returns a new CSR matrix: its data, indices and pointers belong to it
    alone, so changing one in place (values, structure, eliminate_zeros) leaves the next
    call's result right; SciPy accepts it as a well-formed CSR matrix."""
    x = np.linspace(-1.2, 1.3, 7)
    for d, want in ((dualtape.jacobian(elementwise_mix, sparse=True, compile=compile),
                     lambda y: dense_jacobian(elementwise_mix, y)),
                    (dualtape.hessian(rosen, sparse=True, compile=compile), rosen_hessian)):
        M1, M2 = d(x), d(x)
        for a in ("data", "indices", "indptr"):
            assert not np.shares_memory(getattr(M1, a), getattr(M2, a))
        assert type(M1) is sp.csr_matrix and M1.has_sorted_indices
        M1.data[:] = 0.0
        M1.eliminate_zeros()                   # rewrites indices and indptr in place
        assert M1.nnz == 0
        M2.indices[:] = 0
        M2.indptr[1:] = M2.indptr[-1]
        y = x[::-1].copy()
        M3 = d(y)
        assert_sparse_equals(M3, want(y))
        v = np.arange(7.0)
        np.testing.assert_allclose(M3 @ v, want(y) @ v, rtol=1e-12)
        np.testing.assert_allclose((M3 + M3.T).toarray(), want(y) + want(y).T, rtol=1e-12)


def test_csr_from_the_constructor_when_the_shortcut_is_off(monkeypatch):
    """Plans made when ``_fast_csr`` says no build their results with SciPy's
    constructor: the same matrices."""
    x = RNG.uniform(0.5, 1.5, 12)
    J0 = dualtape.jacobian(brusselator, sparse=True)(x)
    monkeypatch.setattr(S, "_FAST_CSR", [False])
    J1 = dualtape.jacobian(brusselator, sparse=True)(x)
    assert type(J1) is sp.csr_matrix and J1.data is not J0.data
    assert_sparse_equals(J1, J0.toarray(), rtol=0)
    np.testing.assert_array_equal(J1.indices, J0.indices)


def test_other_inputs_take_the_general_path():
    """Inputs the fast path does not take (another dtype, a non-contiguous view, a list,
    2-D, another shape) give the same results or the same errors as before."""
    x = RNG.uniform(0.5, 1.5, 10)
    jac = dualtape.jacobian(brusselator, sparse=True)
    J = jac(x).toarray()
    for y in (list(x), np.stack([x, x], axis=1)[:, 0], x.reshape(1, -1)[0]):
        assert_sparse_equals(jac(y), J)
    assert jac.tapes.records == 1
    xf = x.astype(np.float32)       # float32: converted, same tape
    assert_sparse_equals(jac(xf), dense_jacobian(brusselator, xf.astype(np.float64)))
    y = RNG.uniform(0.5, 1.5, 14)    # another shape: another tape
    assert_sparse_equals(jac(y), dense_jacobian(brusselator, y))
    X = RNG.uniform(0.5, 1.5, (3, 4))
    g = dualtape.jacobian(lambda z: np.sin(z) * z[::-1], sparse=True)
    assert g(X).shape == (12, 12)
    assert_sparse_equals(g(X), dense_jacobian(lambda z: np.sin(z) * z[::-1], X))
    with pytest.raises(TypeError, match="complex"):
        jac(x + 1j)
    with pytest.raises(TypeError, match="real"):
        jac(np.array(["a", "b"]))
    with pytest.raises(ValueError, match="scalar output"):
        dualtape.hessian(brusselator, sparse=True)(x)


def branch_jac(x):
    if x[0] > 0:
        return x[1:] * x[:-1]
    return np.sin(x[1:]) + x[0]


def branch_hess(x):
    c = 2.0 if x[0] > 0 else 3.0       # one structure: a compiled module serves both
    return c * np.sum(x * x * x)


@pytest.mark.parametrize("compile", [False, True])
def test_guard_flip_records_again_through_the_fast_path(compile):
    """A flipped branch at a C-contiguous float64 input (the fast path) records the other
    branch, then both tapes serve their points without recording again (the compiled
    tier: the Hessian only, whose entries compile fastest; the Jacobian's fast path
    falls back the same way)."""
    x = np.linspace(0.5, 1.5, 6)
    low = x.copy()
    low[0] = -0.5
    jac = dualtape.jacobian(branch_jac, sparse=True)
    hess = dualtape.hessian(branch_hess, sparse=True, compile=compile)
    for y in (x, low, x * 1.1, low * 0.9, x):
        if not compile:
            assert_sparse_equals(jac(y), dense_jacobian(branch_jac, y))
        assert_sparse_equals(hess(y), np.diag((12.0 if y[0] > 0 else 18.0) * y))
    assert hess.tapes.records == 2 and jac.tapes.records == (0 if compile else 2)
    assert len(hess.tapes.compiled) == (1 if compile else 0)


def test_nan_derivative_retried_by_the_interpreter(monkeypatch):
    """A NaN input sends the compiled tangent and forward-over-reverse sweeps to the
    interpreter (RETRY; the adjoints cleared first): the sparse Jacobian and Hessian equal
    the interpreter's bit for bit where they are not finite, and the next call at a finite
    point is right."""
    from dualtape import compiled
    retried = []
    settle = compiled.CompiledTape.settle

    def spy(self, kind, status, *rest):
        retried.append(kind if status == compiled.RETRY else None)
        return settle(self, kind, status, *rest)
    monkeypatch.setattr(compiled.CompiledTape, "settle", spy)
    x = np.linspace(-1.2, 1.3, 7)
    hess = dualtape.hessian(rosen, sparse=True, compile=True)
    jac = dualtape.jacobian(elementwise_mix, sparse=True, compile=True)
    for d, f, plain in ((hess, rosen, dualtape.hessian(rosen, sparse=True)),
                        (jac, elementwise_mix, dualtape.jacobian(elementwise_mix, sparse=True))):
        d(x)
        for bad in (np.nan, np.inf):
            y = x.copy()
            y[3] = bad
            with np.errstate(invalid="ignore", over="ignore"):
                got, want = d(y).toarray(), plain(y).toarray()
            fin = np.isfinite(want)
            np.testing.assert_array_equal(got[~fin], want[~fin])
            np.testing.assert_allclose(got[fin], want[fin], rtol=1e-12)
            assert_sparse_equals(d(x), plain(x).toarray())
    assert "hvp" in retried and "jvp" in retried


@pytest.mark.parametrize("compile", [False, True])
def test_threads_get_their_own_workspaces(compile):
    """Two threads calling one sparse Jacobian and one sparse Hessian at different points
    each get their own points' derivatives (per-thread workspaces and runners)."""
    jac = dualtape.jacobian(elementwise_mix, sparse=True, compile=compile)
    hess = dualtape.hessian(rosen, sparse=True, compile=compile)
    points = [np.cos(np.arange(7.0) * 0.3 + t) for t in range(8)]
    want = [(dense_jacobian(elementwise_mix, y), rosen_hessian(y)) for y in points]
    jac(points[0]), hess(points[0])          # recorded (and compiled) once, here

    def work(t):
        ok = True
        for _ in range(25):
            for y, (J, H) in zip(points[t::2], want[t::2]):
                ok &= np.allclose(jac(y).toarray(), J, rtol=1e-12, atol=1e-12)
                ok &= np.allclose(hess(y).toarray(), H, rtol=1e-12, atol=1e-10)
        return ok
    with ThreadPoolExecutor(2) as ex:
        assert all(ex.map(work, range(2)))
    assert jac.tapes.records == 1 and hess.tapes.records == 1


def test_runners_keep_no_reference_cycle():
    """A tape whose thread holds sparse runners and bound entries is freed as soon as the
    last reference goes (no cycle through its thread-local dict for the cyclic collector
    to find later: tapes hold large workspaces)."""
    x = np.linspace(-1.2, 1.3, 8)
    gc.disable()
    try:
        for f in (brusselator, rosen):
            tp = dualtape.tape(f, x)
            assert S.jacobian_sweep(tp, x)[0] == dualtape.kernels.OK
            if f is rosen:
                assert S.hessian_sweep(tp, x)[0] == dualtape.kernels.OK
            assert tp.bound()
            ref = weakref.ref(tp)
            del tp
            assert ref() is None
    finally:
        gc.enable()
