"""Cross-checks of the compiled tier against the interpreter, Dual numbers and central
differences, aimed at the cases most likely to break: the gather form of the one-pass
gradient (views at offsets 0..4 of different lengths, a view that does not start at 0, an
input also read by a structural instruction, n smaller than the stencil, the CHUNK and
PAR_MIN boundaries, 2-D inputs, two differentiated arguments), the zero rule through the
fused loops (masked sqrt and x log x at 0, masked inf, NaN and -0.0 inputs), guards
flipping and parameters changing between calls, one module serving two sizes, K = 1
against K > 1 directions, and the compile policy (``kernels.Dispatcher``): interpreted
gradients, Jacobians and Hessians of every shared fixture against Dual numbers.

The default suite compiles three structures (``masked_stencil`` and both branches of
``branchy``, all serial) and checks every generated module statically (no Numba);
``pytest -m slow_compile`` adds the rest.
"""
import ast
import builtins

import numpy as np
import pytest

import dualtape
from dualtape import compiled, kernels
from dualtape.api import dual_jvp, forward_jacobian
from fixtures import FUNCTIONS, central_jacobian, rosen
from test_compiled import data_dependent, in_place, mixed, stencil

CHUNK, PAR_MIN = compiled.CHUNK, compiled.PAR_MIN
RTOL = 1e-12


def close(a, b, rtol=RTOL):
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    scale = max(1.0, float(np.max(np.abs(b))) if b.size else 1.0)
    np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * scale)


def same_nonfinite(a, b):
    """a equals b: bit for bit where b is not finite, to RTOL elsewhere."""
    a, b = np.asarray(a), np.asarray(b)
    fin = np.isfinite(b)
    np.testing.assert_array_equal(a[~fin], b[~fin])
    close(a[fin], b[fin])


def central(f, x, v, eps=1e-6):
    return (f(x + eps * v) - f(x - eps * v)) / (2 * eps)


def point(n, phase=0.0):
    return np.cos(np.arange(n) * 0.37 + phase) * 1.1


def cross(f, x, *params, dense=None, fd=None):
    """Every compiled entry of f's tape at x equals the interpreter's: value, gradient (the
    general path and the one-pass entry writing a NaN-filled array), jvp and hvp with one
    and three directions (the K = 1 column equal to the K = 3 one), and for small n the
    dense and sparse Hessians (symmetric) through the functional API; the gradient and hvp
    also against Dual numbers and central differences where finite."""
    n = x.size
    dense = n <= 40 if dense is None else dense
    fd = dense if fd is None else fd
    tp = dualtape.tape(f, x, *params)
    ct = tp.compile()
    assert isinstance(ct, compiled.CompiledTape)
    v = np.sin(np.arange(n) + 1.0).reshape(x.shape)
    vs = np.stack([v, np.cos(v), np.ones_like(v)])
    v0, g0 = tp.value_and_gradient(x, *params)
    v1, g1 = ct.value_and_gradient(x, *params)
    close(v1, v0)
    same_nonfinite(g1, g0)
    same_nonfinite(ct.gradient(x, *params), g0)
    same_nonfinite(dualtape.grad(f, compile=True)(x, *params), g0)
    if not params:
        out = np.full(1 + n, np.nan)
        status = ct.mod_grad(ct.prog, np.ascontiguousarray(x).reshape(-1), out,
                             ct.workspace(), ct.partials(), False)
        if status == kernels.OK:          # RETRY: a NaN on the way, the interpreter's
            same_nonfinite(out[1:], g0.reshape(-1))
    same_nonfinite(ct.jvp(x, *params, v), tp.jvp(x, *params, v))
    same_nonfinite(ct.jvp(x, *params, vs), tp.jvp(x, *params, vs))
    h1, h3 = ct.hvp(x, *params, v), ct.hvp(x, *params, vs)
    same_nonfinite(h1, tp.hvp(x, *params, v))
    same_nonfinite(h3, tp.hvp(x, *params, vs))
    same_nonfinite(h3[0], h1)
    if np.all(np.isfinite(g0)):
        close(dual_jvp(f, x, v, *params)[1], np.sum(g0 * v), rtol=1e-11)
    if fd and np.all(np.isfinite(g0)):
        close(np.sum(g1 * v), central(lambda z: f(z, *params), x, v), rtol=1e-6)
        close(h1, central(lambda z: tp.gradient(z, *params), x, v), rtol=1e-5)
    if dense:
        H0 = tp.hessian(x, *params)
        H1 = dualtape.hessian(f, compile=True)(x, *params)
        same_nonfinite(H1, H0)
        if np.all(np.isfinite(H0)):
            Hm = H1.reshape(n, n)
            close(Hm, Hm.T, rtol=1e-10)
            close(dualtape.hessian(f, sparse=True, compile=True)(x, *params).toarray(), Hm)
    return tp, ct


def dual_hessian(f, x):
    """The Hessian by nested Dual numbers (forward over forward): no tape at all."""
    return forward_jacobian(lambda z: forward_jacobian(f, z)[1], x)[1]


# ---------------------------------------------------------------------------- default suite

def masked_stencil(x):
    """Views at offsets 0, 1 and 2 of two lengths' worth of stencil (gather form), a
    masked sqrt (infinite partial at 0, NaN below, unselected) and x log x masked at 0."""
    m = x[1:-1]
    root = np.where(m > 0, np.sqrt(m), 0.0)
    xlx = np.where(x[2:] > 0, x[2:] * np.log(x[2:]), 0.0)
    return np.sum(root * x[:-2] + xlx + 0.5 * (x[2:] - x[:-2]) ** 2)


def masked_stencil_grad(x):
    g = np.zeros_like(x)
    m, a, b = x[1:-1], x[:-2], x[2:]
    pos = m > 0
    g[1:-1] += np.where(pos, 0.5 / np.sqrt(np.where(pos, m, 1.0)), 0.0) * a
    g[:-2] += np.where(pos, np.sqrt(np.where(pos, m, 1.0)), 0.0) - (b - a)
    g[2:] += np.where(b > 0, np.log(np.where(b > 0, b, 1.0)) + 1.0, 0.0) + (b - a)
    return g


def test_gather_form_sizes_zero_rule_and_one_module(monkeypatch):
    """One structure (serial entries) at the CHUNK boundary and over several chunks: one
    module serves them all; zeros, -0.0 and negative values under the masks, NaN and a
    masked inf at chunk edges, against the exact gradient."""
    monkeypatch.setenv("DUALTAPE_COMPILE_PARALLEL", "0")
    modules = set()
    with np.errstate(invalid="ignore", divide="ignore"):
        for n in (9, CHUNK + 1, 2 * CHUNK + 3):     # below the stencil: slow_compile
            x = point(n)
            x[::5] = 0.0
            x[1::7] = -0.0
            tp, ct = cross(masked_stencil, x, fd=False)     # kinks: no central differences
            modules.add(ct.module)
            close(ct.gradient(x), masked_stencil_grad(x))
            cross(masked_stencil, np.abs(x) + 0.25)
            if n > 3:      # the gather form writes every element (no RETRY at a point > 0)
                y = np.abs(x) + 0.25
                out = np.full(1 + n, np.nan)
                assert ct.mod_grad(ct.prog, y, out, ct.workspace(), ct.partials(),
                                   False) == kernels.OK
                close(out[1:], masked_stencil_grad(y))
        assert len(modules) == 1
        with open(ct.module.__file__) as fh:      # the gather form's registers r<q>_<m>
            assert "_1 = a" in fh.read()
        # NaN propagates as in the interpreter; an inf the mask leaves out (x[1:-1] < 0
        # selects 0.0 but sqrt(-inf) is NaN) does not poison the other elements
        for bad in (np.nan, np.inf, -np.inf):
            for where in ([0], [CHUNK - 1], [CHUNK], [CHUNK + 2], [x.size - 1]):
                y = np.abs(x) + 0.25
                y[where] = bad
                g0 = tp.gradient(y)
                same_nonfinite(ct.gradient(y), g0)
                same_nonfinite(ct.hvp(y, y * 0 + 1.0), tp.hvp(y, y * 0 + 1.0))
                if bad == -np.inf:      # j - 1 is masked: root(j) = 0
                    j = where[0]
                    assert np.isfinite(np.delete(g0, [k for k in (j - 2, j, j + 1, j + 2)
                                                      if 0 <= k < y.size])).all()
        close(ct.gradient(np.abs(x) + 0.25), masked_stencil_grad(np.abs(x) + 0.25))


def branchy(x, p):
    if x[0] > 0:
        return np.sum(p * x[1:] * x[:-1]) + np.sum(np.sin(x))
    return np.sum(np.cos(p * x[2:]) * x[:-2])


def test_guard_flips_and_parameters_through_every_compiled_entry(monkeypatch):
    """Alternating branches and parameter values through the compiled grad, hvp, dense and
    sparse Hessian and jvp: each equals a fresh interpreted recording at that point."""
    monkeypatch.setenv("DUALTAPE_COMPILE_PARALLEL", "0")
    x = point(9) + 0.5
    low = x.copy()
    low[0] = -1.0
    G = dualtape.grad(branchy, compile=True)
    H = dualtape.hessian(branchy, compile=True)
    S = dualtape.hessian(branchy, sparse=True, compile=True)
    hv = dualtape.hvp(branchy, compile=True)
    for y, p in ((x, 0.7), (low, 0.7), (x, -1.3), (low * 1.1, 2.0), (x * 0.9, 0.7)):
        fresh = dualtape.tape(branchy, y, p)
        close(G(y, p), fresh.gradient(y, p))
        Hy = H(y, p)
        close(Hy, fresh.hessian(y, p))
        close(Hy, Hy.T, rtol=1e-10)
        close(S(y, p).toarray(), Hy)
        close(hv(y, y, p), Hy @ y)
        close(dualtape.jvp(branchy, y, y, p)[1], dual_jvp(branchy, y, y, p)[1])
        v = np.cos(np.arange(9.0))
        close(G(y, p) @ v, central(lambda z: branchy(z, p), y, v), rtol=1e-7)
    assert len(G.tapes.compiled) == 2 and G.tapes.records == 2


def unbound_names(source):
    """Names a top-level function of ``source`` reads that neither it nor the module binds
    (Numba reports them only when that function is first compiled)."""
    tree = ast.parse(source)
    top = set(dir(builtins))
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            top.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            top |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, ast.Assign):
            top |= {n.id for t in node.targets for n in ast.walk(t) if isinstance(n, ast.Name)}
    bad = set()
    for fn in (n for n in tree.body if isinstance(n, ast.FunctionDef)):
        names = [n for n in ast.walk(fn) if isinstance(n, ast.Name)]
        local = {a.arg for a in ast.walk(fn) if isinstance(a, ast.arg)}
        local |= {n.id for n in names if isinstance(n.ctx, ast.Store)}
        bad |= {f"{fn.name}: {n.id}" for n in names
                if isinstance(n.ctx, ast.Load) and n.id not in local | top}
    return bad


@pytest.mark.parametrize("f,x", [(c[1], c[2]) for c in FUNCTIONS] + [
    (lambda x: mixed(x, 0.7), np.linspace(-1.0, 1.0, 9)), (stencil, np.linspace(-1, 1, 9)),
    (in_place, np.linspace(-0.8, 1.1, 9)), (data_dependent, np.linspace(-0.8, 1.1, 9))])
def test_generated_functions_bind_every_name(f, x):
    """Every function of a generated module (entries compile lazily, so a gradient test
    never types the jvp or hvp entry) reads only names it or the module binds. The
    tangent entries read ``no`` and ``_matmul_acc``, which the module no longer bound after
    two of today's branches were merged; no Numba needed."""
    with np.errstate(all="ignore"):
        tp = dualtape.tape(f, x)
    assert unbound_names(compiled.generate(tp.prog)[0]) == set()


@pytest.mark.slow_compile
def test_compiled_tangents_through_matrix_products(monkeypatch):
    """Regression: the compiled jvp and hvp entries of a tape with a matrix product did not
    compile (NameError: ``no`` and ``_matmul_acc`` undefined in the generated module, a
    merge of the compile policy with the tangent entries); logistic regression's jvp, hvp
    (K = 1 and 3) and Hessian against nested Dual numbers."""
    monkeypatch.setenv("DUALTAPE_COMPILE_PARALLEL", "0")
    x = dict((c[0], c[2]) for c in FUNCTIONS)["logistic"]
    f = dict((c[0], c[1]) for c in FUNCTIONS)["logistic"]
    tp = dualtape.tape(f, x)
    ct = tp.compile()
    Hd = dual_hessian(f, x)
    vs = np.stack([np.cos(np.arange(3.0)), np.ones(3), np.array([0.5, -2.0, 1.0])])
    close(ct.jvp(x, vs), forward_jacobian(f, x)[1] @ vs.T)
    close(ct.jvp(x, vs[0]), tp.jvp(x, vs[0]))
    h3 = ct.hvp(x, vs)
    close(h3, vs @ Hd, rtol=1e-10)
    close(ct.hvp(x, vs[0]), h3[0])
    close(ct.hessian(x), Hd, rtol=1e-10)
    close(dualtape.hessian(f, sparse=True, compile=True)(x).toarray(), Hd, rtol=1e-10)


@pytest.mark.parametrize("name,f,x", FUNCTIONS, ids=[c[0] for c in FUNCTIONS])
def test_dispatcher_interpreter_matches_duals_and_fresh_recordings(name, f, x):
    """The interpreter's kernels (compiled under the one-copy-per-type policy) give the
    Jacobian, gradient and Hessian of every shared fixture that Dual numbers give, at the
    recording point and replayed at a second point (equal to a fresh recording there)."""
    for y in (x, x * 0.9 + 0.01):
        _, Jd = forward_jacobian(f, y)
        tp = dualtape.tape(f, x)
        fresh = dualtape.tape(f, y)
        J = dualtape.jacobian(f)(y)
        close(J, Jd, rtol=1e-11)
        close(tp.jacobian(y, mode="forward"), Jd, rtol=1e-11)
        close(tp.jacobian(y), fresh.jacobian(y))
        close(J, central_jacobian(f, y), rtol=1e-6)
        if tp.out_size == 1:
            close(dualtape.grad(f)(y), Jd, rtol=1e-11)
            H = dualtape.hessian(f)(y)
            close(H, dual_hessian(f, y), rtol=1e-10)
            close(tp.hessian(y), fresh.hessian(y))


# ---------------------------------------------------------------------------- wide sweep

def view_sum(lo_hi):
    """sum over the views x[a:len - b] (same length n - D) of a product chain."""
    def f(x):
        N = x.shape[0]
        views = [x[a:N - b] for a, b in lo_hi]
        out = np.sin(views[0])
        for k, v in enumerate(views[1:]):
            out = out * v + np.cos(v) if k % 2 else out - v * v
        return np.sum(out)
    f.__name__ = "view_sum_" + "_".join(f"{a}{b}" for a, b in lo_hi)
    return f


STENCILS = [
    [(2, 0), (0, 2)],                     # x[2:] * x[:-2]: offsets 0 and 2, no view at 1
    [(1, 1), (0, 2), (2, 0)],             # x[1:-1] with both neighbours
    [(4, 0), (0, 4)],                     # GATHER_MAX
    [(5, 0), (0, 5)],                     # beyond: the adding loop
    [(1, 0)],                             # a view that does not start at 0
    [(1, 1), (2, 0)],                     # x[0] receives no adjoint
    [(0, 0), (0, 0)],                     # one view twice
]


@pytest.mark.slow_compile
@pytest.mark.parametrize("lo_hi", STENCILS,
                         ids=lambda s: "-".join(f"{lo}_{hi}" for lo, hi in s))
def test_stencil_offsets_and_boundaries(lo_hi):
    """Gather form (offsets 0..4) or not, at sizes below the stencil, around CHUNK and
    PAR_MIN (the run's length n - D at PAR_MIN - 1, PAR_MIN, PAR_MIN + 1 and one past a
    chunk), replayed at a second point; every compiled entry against the interpreter."""
    f = view_sum(lo_hi)
    D = max(a + b for a, b in lo_hi)
    for n in (D, D + 1, D + 3, 11, CHUNK - 1 + D, CHUNK + D, CHUNK + 1 + D,
              PAR_MIN - 1 + D, PAR_MIN + D, PAR_MIN + 1 + D, PAR_MIN + CHUNK + 1 + D):
        tp, ct = cross(f, point(n))
        same_nonfinite(ct.gradient(point(n, 1.0)), tp.gradient(point(n, 1.0)))


def in_view_and_structural(x):
    return np.sum(x[1:] * x[:-1]) + np.sum(np.cumsum(x) * np.flip(x)) * 0.1


def broadcast_element(x):
    return np.sum(x[1:] * x[:-1] * x[0])


def rows(x):
    return np.sum((x[1:] - x[:-1] ** 2) ** 2)


def columns(x):
    return np.sum((x[:, 1:] - x[:, :-1] ** 2) ** 2)


def capped(x):
    return np.sum(np.where(x < 10.0, x * x, 1.0) * x[::-1])


@pytest.mark.slow_compile
@pytest.mark.parametrize("f,shape", [(in_view_and_structural, (9,)),
                                     (in_view_and_structural, (2 * CHUNK + 3,)),
                                     (broadcast_element, (PAR_MIN + 5,)),
                                     (rows, (10, 3)), (rows, (10, 1)), (rows, (3000, 4)),
                                     (columns, (10, 3)), (capped, (9,))])
def test_inputs_read_elsewhere_2d_and_layouts(f, shape):
    """An input read by a view and a structural instruction (or as a broadcast element):
    no gather form; 2-D rows (offsets 0 and the row length) and columns; strided,
    reversed and Fortran-ordered arrays at the same tape; a masked inf."""
    n = int(np.prod(shape))
    x = point(n).reshape(shape)
    tp, ct = cross(f, x, dense=n <= 40)
    for y in (x[::-1], np.asfortranarray(x), np.repeat(x, 2, axis=0)[::2]):
        close(ct.gradient(y), tp.gradient(np.ascontiguousarray(y)))
        close(dualtape.grad(f, compile=True)(y), tp.gradient(np.ascontiguousarray(y)))
    if f is capped:
        y = x.copy()
        y[3] = np.inf
        with np.errstate(invalid="ignore"):
            cross(f, y)
            g = ct.gradient(y)
        assert np.isfinite(np.delete(g, [3, n - 4])).all()


def two_args(x, y):
    return np.sum(x * np.sin(y))


@pytest.mark.slow_compile
@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_two_differentiated_arguments(n):
    """Two inputs of n elements each: views at offsets 0 and n (the gather form while
    n <= GATHER_MAX)."""
    a, b = np.cos(np.arange(n) + 0.2), np.sin(np.arange(n) + 0.5)
    for vg in (dualtape.grad(two_args, argnums=(0, 1), compile=True)(a, b),
               dualtape.value_and_grad(two_args, argnums=(0, 1), compile=True)(a, b)[1]):
        close(vg[0], np.sin(b))
        close(vg[1], a * np.cos(b))


def vector_stencil(x):
    return x[1:] * x[:-1] - np.sin(x[1:]) * x[0]


@pytest.mark.slow_compile
@pytest.mark.parametrize("n", [6, 2 * CHUNK + 3])
def test_vector_output_sparse_jacobians(n):
    x = point(n)
    tp = dualtape.tape(vector_stencil, x)
    ct = tp.compile()
    J0 = dualtape.jacobian(vector_stencil, sparse=True)(x)
    for mode in ("forward", "reverse", "auto"):
        J1 = dualtape.jacobian(vector_stencil, sparse=True, mode=mode, compile=True)(x)
        close(J1.toarray(), J0.toarray())
    V = np.stack([np.sin(np.arange(n)), np.ones(n)])
    close(ct.jvp(x, V), tp.jvp(x, V))
    close(ct.jvp(x, V[0]), tp.jvp(x, V[0]))
    if n < 40:
        close(ct.jacobian(x, mode="forward"), central_jacobian(vector_stencil, x), rtol=1e-6)


@pytest.mark.slow_compile
@pytest.mark.parametrize("name,f,x", FUNCTIONS, ids=[c[0] for c in FUNCTIONS])
def test_fixture_compiled_api_against_duals(name, f, x):
    """The functional API with compile=True (grad, jacobian both modes, sparse Jacobian,
    hessian dense and sparse, hvp) against Dual numbers at two points."""
    for y in (x, x * 0.9 + 0.01):
        _, Jd = forward_jacobian(f, y)
        for mode in ("forward", "reverse"):
            close(dualtape.jacobian(f, mode=mode, compile=True)(y), Jd, rtol=1e-11)
        Js = dualtape.jacobian(f, sparse=True, compile=True)(y).toarray()
        close(Js, Jd.reshape(Js.shape), rtol=1e-11)
        if np.size(dualtape.tape(f, y)(y)) == 1:
            close(dualtape.grad(f, compile=True)(y), Jd, rtol=1e-11)
            Hd = dual_hessian(f, y)
            close(dualtape.hessian(f, compile=True)(y), Hd, rtol=1e-10)
            close(dualtape.hessian(f, sparse=True, compile=True)(y).toarray(), Hd,
                  rtol=1e-10)
            v = np.cos(np.arange(y.size) + 0.3)
            close(dualtape.hvp(f, compile=True)(y, v), Hd @ v, rtol=1e-10)
