"""The compiled tier (``Tape.compile``, ``grad(f, compile=True)``): compiled and interpreted
sweeps agree to 1e-12 relative, and both match central differences.

Each compiled structure costs seconds of Numba compilation, so the default suite compiles
a handful: Rosenbrock (a final sum: the one-pass gradient; views receiving adjoints at two
offsets: the two-phase parallel loop), ``mixed`` and its other branch (structural
instructions between runs, a guard, a parameter, an active broadcast operand, stored
values, the zero rule at a kink), ``elementwise_mix`` (many table rows, a vector output),
matrix products in every BLAS case, and a final sum after a product. Sizes above
``compiled.PAR_MIN`` run the parallel entries; tapes below it never compile a parallel
loop (``DUALTAPE_COMPILE_PARALLEL=0`` keeps the larger ones serial too). ``pytest -m
slow_compile`` adds every shared fixture, scatters and masks, and hypothesis-generated
programs.
"""
import os
import subprocess
import sys

import numba
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

import dualtape
from dualtape import compiled
from dualtape import embed
from dualtape import kernels
from fixtures import FUNCTIONS, elementwise_mix, rosen
from test_properties import cases, make_f, usable

RTOL = 1e-12
BIG = compiled.PAR_MIN + 2 * compiled.CHUNK + 7    # parallel, with a partial last chunk


def close(a, b, rtol=RTOL):
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    scale = max(1.0, float(np.max(np.abs(b))) if b.size else 1.0)
    np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * scale)


def central(f, x, v, eps=1e-6):
    return (f(x + eps * v) - f(x - eps * v)) / (2 * eps)


def mixed(x, p):
    fx = np.flip(x)                                          # a gather between runs
    s = np.where(x > 0, np.sqrt(np.abs(x)), 0.0)             # infinite partial at 0, unselected
    y = np.exp(0.1 * x) * np.sin(x) + x * x[0] + s * p + fx * np.tanh(x)
    return np.sum(y * y) / x.size


def branchy(x):
    if x[0] > 0:
        return np.sum(x * x)
    return np.sum(np.sin(x))


def agree(tp, ct, x, *params):
    """Value, gradient (or reverse Jacobian) of the compiled tape equal the interpreter's."""
    close(ct(x, *params), tp(x, *params))
    if tp.out_size == 1:
        v0, g0 = tp.value_and_gradient(x, *params)
        v1, g1 = ct.value_and_gradient(x, *params)
        close(v1, v0)
        close(g1, g0)
        close(ct.vjp(x, *params, np.stack([np.ones(()), 2.0 * np.ones(())])),
              tp.vjp(x, *params, np.stack([np.ones(()), 2.0 * np.ones(())])))
        return g1
    J = ct.jacobian(x, *params)
    close(J, tp.jacobian(x, *params))
    return J


# ---------------------------------------------------------------------------- default suite

def test_rosenbrock_every_size_one_module():
    x = np.linspace(-1.2, 1.3, 7)
    tp = dualtape.tape(rosen, x)
    ct = tp.compile()
    assert isinstance(ct, compiled.CompiledTape) and ct.compile() is ct
    g = agree(tp, ct, x)
    a, b = x[:-1], x[1:]
    exact = np.zeros_like(x)
    exact[:-1] = -400.0 * a * (b - a * a) - 2.0 * (1.0 - a)
    exact[1:] += 200.0 * (b - a * a)
    close(g, exact)
    # grad() does not add up the value it does not return; batches run the interpreter
    close(dualtape.grad(rosen, compile=True)(x), exact)
    X = np.stack([x, x[::-1]])
    values, grads = ct.gradient_batch(X)
    close(grads, np.stack([tp.gradient(x), tp.gradient(x[::-1].copy())]))
    # one compiled module serves every size of the structure: here the parallel loops
    xb = np.cos(np.arange(BIG) * 0.37) * 1.1
    big = dualtape.tape(rosen, xb)
    cb = big.compile()
    assert cb.module is ct.module
    agree(big, cb, xb)
    # replay at a new point
    agree(big, cb, xb[::-1].copy())


def tail(x):
    return np.sum((x[2:] - 1.0) ** 2)


def stencil(x):
    return np.sum((x[2:] - 2.0 * x[1:-1] + x[:-2]) ** 2 + 0.1 * np.cos(x[1:-1]) * x[2:])


@pytest.mark.parametrize("f", [rosen, stencil, tail])
def test_one_pass_gradient_writes_every_element(f):
    """The one-pass gradient writes the caller's result array, NaN in it beforehand or
    not: in gather form, each element once from the views' adjoints carried in registers
    (Rosenbrock: views at offsets 0 and 1; ``stencil``: 0, 1 and 2), chunk by chunk and
    over threads; else (``tail``: x[:2] has no view) cleared by the entry, then added to."""
    for n in (7, compiled.CHUNK + 1, BIG):
        x = np.cos(np.arange(n) * 0.37) * 1.1
        tp = dualtape.tape(f, x)
        ct = tp.compile()
        g = tp.gradient(x)
        for threads in (1, numba.config.NUMBA_NUM_THREADS):
            numba.set_num_threads(threads)
            out = np.full(1 + x.size, np.nan)
            status = ct.mod_grad(ct.prog, x, out, ct.workspace(), ct.partials(), False)
            assert status == kernels.OK
            close(out[1:], g)
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    with open(ct.module.__file__) as fh:      # the form generated (registers r<q>_<m>)
        assert ("_1 = a" in fh.read()) == (f is not tail)
    if f is stencil:
        v = np.sin(np.arange(x.size) * 0.3)
        close(g @ v, central(f, x, v), rtol=1e-6)
        return
    exact = np.zeros_like(x)
    a, b = x[:-1], x[1:]
    if f is rosen:
        exact[:-1] = -400.0 * a * (b - a * a) - 2.0 * (1.0 - a)
        exact[1:] += 200.0 * (b - a * a)
    else:
        exact[2:] = 2.0 * (x[2:] - 1.0)
    close(g, exact)


def test_mixed_structural_parameter_kink():
    x = np.linspace(-1.0, 1.0, 9)             # x[4] == 0: the masked sqrt's kink
    assert x[4] == 0.0
    tp = dualtape.tape(mixed, x, 0.7)
    ct = tp.compile()
    g = agree(tp, ct, x, 0.7)
    assert np.all(np.isfinite(g))
    agree(tp, ct, x, -1.3)                    # a new parameter value, no re-recording
    # central differences along a direction, away from the kink
    y = x + 0.05
    v = np.sin(np.arange(9.0) + 1.0)
    close(ct.gradient(y, 0.7) @ v, central(lambda z: ct(z, 0.7), y, v), rtol=1e-7)
    # the second-order and tangent sweeps run the interpreter on the same arrays
    close(ct.hvp(y, 0.7, v), tp.hvp(y, 0.7, v))
    close(ct.jvp(y, 0.7, v), tp.jvp(y, 0.7, v))
    # the parallel loops: chunks of an active broadcast operand's adjoint, two phases
    xb = np.linspace(-1.0, 1.0, BIG + (BIG + 1) % 2)
    big = dualtape.tape(mixed, xb, 0.7)
    cb = big.compile()
    assert cb.module is ct.module
    agree(big, cb, xb, 0.7)


def masked_root(x):
    return np.sum(np.where(x > 0, np.sqrt(x), 0.0) + 0.5 * x * x)


def test_one_pass_nonfinite_chunks_fall_back_to_the_zero_rule(monkeypatch):
    """The one-pass gradient multiplies plainly and flags a chunk with a NaN result; the
    interpreter then takes the gradient, with the zero rule product by product."""
    monkeypatch.setenv("DUALTAPE_COMPILE_PARALLEL", "0")
    # sqrt's partial is inf at 0 and NaN below: unselected, the zero rule makes it 0
    x = np.linspace(-1.0, 1.0, BIG)
    x[[3, BIG // 2, BIG - 2]] = 0.0
    with np.errstate(invalid="ignore"):       # the recording evaluates sqrt everywhere
        tp = dualtape.tape(masked_root, x)
    ct = tp.compile()
    exact = x + np.where(x > 0, 0.5 / np.sqrt(np.where(x > 0, x, 1.0)), 0.0)
    with np.errstate(invalid="ignore"):
        g = dualtape.grad(masked_root, compile=True)(x)
    assert np.all(np.isfinite(g))
    close(g, exact)
    agree(tp, ct, x)
    # the chunks with x <= 0 were flagged (the last column of the per-chunk partials)
    close(ct.gradient(x), exact)
    flags = ct.partials()[:, -1]
    assert flags[0] == 1.0 and flags[8] == 0.0 and flags[BIG // compiled.CHUNK] == 1.0
    # nothing non-finite: the fast pass alone; then a replay that flags again
    y = np.abs(x) + 0.5
    close(ct.gradient(y), y + 0.5 / np.sqrt(y))
    assert not ct.partials()[:, -1].any()
    close(ct.gradient(x), exact)


def test_nonfinite_inputs_propagate_as_in_the_interpreter():
    """NaN and inf inputs in a few chunks of the parallel one-pass gradient (read in place,
    written straight into the result): the interpreter's NaNs, and nothing else changes."""
    xb = np.cos(np.arange(BIG) * 0.37) * 1.1
    tp = dualtape.tape(rosen, xb)
    ct = tp.compile()
    for bad in (np.nan, np.inf, -np.inf):
        y = xb.copy()
        y[[5, compiled.CHUNK, BIG - 1]] = bad
        g0 = tp.gradient(y)
        fin = np.isfinite(g0)
        assert not fin.all() and fin[100:compiled.CHUNK - 100].all()
        for g1 in (ct.gradient(y), dualtape.grad(rosen, compile=True)(y)):
            np.testing.assert_array_equal(g1[~fin], g0[~fin])
            close(g1[fin], g0[fin])
    agree(tp, ct, xb)                         # and finite again afterwards


def test_guard_flip_records_and_compiles_the_other_branch(monkeypatch):
    monkeypatch.setenv("DUALTAPE_COMPILE_PARALLEL", "0")    # small: no parallel loop needed
    x = np.array([0.5, -1.0, 2.0])
    low = -x
    ct = dualtape.tape(branchy, x).compile()
    with pytest.raises(dualtape.GuardFlipped):
        ct.gradient(low)
    g = dualtape.grad(branchy, compile=True)
    close(g(x), 2.0 * x)
    close(g(low), np.cos(low))
    close(g(x), 2.0 * x)                      # both branches cached, nothing recorded again
    assert len(g.tapes.compiled) == 2 and g.tapes.records == 2


def test_vector_output_jacobian_and_nopython(monkeypatch):
    monkeypatch.setenv("DUALTAPE_COMPILE_PARALLEL", "0")
    x = np.array([0.3, -1.2, 2.5, 0.7, -0.4, 1.9])
    tp = dualtape.tape(elementwise_mix, x)
    ct = tp.compile()
    J = agree(tp, ct, x)
    v = np.cos(np.arange(6.0))
    close(J @ v, central(elementwise_mix, x, v), rtol=1e-7)
    jac = dualtape.jacobian(elementwise_mix, mode="reverse", compile=True)
    close(jac(x), J)
    assert isinstance(jac.tapes.tapes[(x.shape,)][0], compiled.CompiledTape)
    # the @njit entry points take a compiled tape's arrays (interpreter kernels)
    nt = ct.nopython()
    out = np.empty((6, 6))
    assert embed.jacobian(nt, x, out) == embed.OK
    close(out, J)


def products(x, B):
    """Matrix products in every case of the compiled tier's BLAS calls, each above
    MATMUL_BLAS: matrix-matrix, matrix-vector, vector-matrix (and their transposed
    adjoints), vector-vector."""
    A = x[:5120].reshape(64, 80)
    v, u = x[5120:5200], x[5200:5264]
    p, q = x[5264:10264], x[10264:]
    return (np.sum(np.tanh(A @ B)) + np.sum(np.sin(A @ v)) + np.sum((u @ A) ** 2)
            + np.tanh(1e-3 * (p @ q)))


def test_matrix_products_call_blas_as_the_interpreter(monkeypatch):
    """kernels.matmul_acc calls BLAS directly (not through np.dot, which costs seconds
    of compilation per caller) with np.dot's arguments; compiled and interpreted
    gradients agree to the bit, and match central differences."""
    monkeypatch.setenv("DUALTAPE_COMPILE_PARALLEL", "0")
    rng = np.random.default_rng(3)
    x, B = rng.standard_normal(15264) * 0.3, rng.standard_normal((80, 70)) * 0.2
    tp = dualtape.tape(products, x, B)
    ct = tp.compile()
    g0, g1 = tp.gradient(x, B), ct.gradient(x, B)
    np.testing.assert_array_equal(g1, g0)
    close(ct(x, B), tp(x, B))
    # and the interpreter's against central differences along a direction
    d = np.cos(np.arange(x.size) * 0.7)
    close(g1 @ d, central(lambda z: products(z, B), x, d), rtol=1e-6)


def test_matrix_products_call_blas_as_numpy():
    """Each BLAS branch of kernels.matmul_acc (dot, gemv either way, gemm with either
    factor transposed) adds what NumPy's product gives."""
    from dualtape import kernels
    rng = np.random.default_rng(5)
    for m, k, n in ((1, 5000, 1), (80, 70, 1), (1, 70, 80), (40, 50, 60)):
        for ta, tb in ((False, False), (True, False), (False, True)):
            a = rng.standard_normal((k, m) if ta else (m, k))
            b = rng.standard_normal((n, k) if tb else (k, n))
            out = rng.standard_normal((m, n))
            want = out + (a.T if ta else a) @ (b.T if tb else b)
            kernels.matmul_acc(a, b, out, ta, tb)
            close(out, want, rtol=1e-13)


def test_one_pass_after_a_matrix_product(monkeypatch):
    """A final sum of a run that reads a matrix product, not the inputs (logistic
    regression's structure): the one-pass gradient without the in-place inputs, and the
    compiled jvp, hvp and Hessian (the products' tangents through BLAS) against the
    interpreter and the analytic Hessian M^T diag(s (1 - s)) M."""
    monkeypatch.setenv("DUALTAPE_COMPILE_PARALLEL", "0")
    M = np.sin(np.arange(60.0).reshape(20, 3))

    def loss(x):
        return np.sum(np.logaddexp(0.0, M @ x) - 0.5 * (M @ x))
    x = np.array([0.3, -0.2, 0.5])
    tp = dualtape.tape(loss, x)
    ct = tp.compile()
    g = agree(tp, ct, x)
    s = 1.0 / (1.0 + np.exp(-(M @ x)))
    close(g, M.T @ (s - 0.5))
    H = M.T @ ((s * (1 - s))[:, None] * M)
    close(ct.hessian(x), H)
    close(ct.hvp(x, np.array([1.0, -2.0, 0.5])), H @ np.array([1.0, -2.0, 0.5]))
    V = np.array([[1.0, 0.0, 2.0], [0.5, -1.0, 0.0]])
    close(ct.jvp(x, V)[1], tp.jvp(x, V)[1])


def test_custom_rule_refused():
    @dualtape.custom_vjp
    def twice(x):
        return 2.0 * x

    def fwd(x):
        return 2.0 * x, None

    def bwd(res, g):
        return (2.0 * g,)
    twice.defvjp(fwd, bwd)
    tp = dualtape.tape(lambda x: np.sum(twice(x)), np.ones(3))
    with pytest.raises(TypeError, match="custom derivative rule"):
        tp.compile()
    with pytest.raises(TypeError, match="custom derivative rule"):
        dualtape.grad(lambda x: np.sum(twice(x)), compile=True)(np.ones(3))
    # "auto" keeps such a tape interpreted
    g = dualtape.grad(lambda x: np.sum(twice(x)), compile="auto")
    for _ in range(3):
        close(g(np.ones(3)), 2.0 * np.ones(3))


def test_compile_argument_checked():
    with pytest.raises(ValueError, match="compile"):
        dualtape.grad(rosen, compile="yes")


def test_auto_tiers_up_large_hot_tapes(monkeypatch):
    from dualtape import cache
    monkeypatch.setattr(cache, "AUTO_CALLS", 3)
    monkeypatch.setattr(cache, "AUTO_VALUES", 1000)
    g = dualtape.grad(rosen, compile="auto")
    x = np.linspace(-1.0, 1.0, 2000)
    small = np.linspace(-1.0, 1.0, 20)
    exact = dualtape.tape(rosen, x).gradient(x)
    for _ in range(5):
        close(g(x), exact)
        g(small)
    assert isinstance(g.tapes.tapes[(x.shape,)][0], compiled.CompiledTape)
    assert not isinstance(g.tapes.tapes[(small.shape,)][0], compiled.CompiledTape)


def test_fresh_process_loads_from_cache(tmp_path):
    """A second process finds the generated module and Numba's cache: nothing compiles."""
    script = (
        "import numpy as np, dualtape, sys\n"
        "sys.path.insert(0, %r)\n"
        "from fixtures import rosen\n"
        "ct = dualtape.tape(rosen, np.linspace(-1, 1, 50)).compile()\n"
        "g = ct.gradient(np.linspace(-1, 1, 50))\n"
        "st = ct.module.grad.stats\n"
        "print(sum(st.cache_misses.values()), sum(st.cache_hits.values()))\n"
        % os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, DUALTAPE_CACHE_DIR=str(tmp_path), DUALTAPE_COMPILE_PARALLEL="0")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    first = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                           text=True, check=True)
    second = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                            text=True, check=True)
    assert first.stdout.split() == ["1", "0"]      # compiled once
    assert second.stdout.split() == ["0", "1"]     # loaded
    assert len(list(tmp_path.glob("dualtape_compiled_*.py"))) == 1


# ---------------------------------------------------------------------------- wide sweep

@pytest.mark.slow_compile
@pytest.mark.parametrize("name,f,x", FUNCTIONS, ids=[c[0] for c in FUNCTIONS])
def test_fixture(name, f, x):
    tp = dualtape.tape(f, x)
    ct = tp.compile()
    agree(tp, ct, x)
    agree(tp, ct, x * 0.9 + 0.01)
    tangents_agree(tp, ct, x, scalar=tp.out_size == 1)
    tangents_agree(tp, ct, x * 0.9 + 0.01, scalar=tp.out_size == 1)


@pytest.mark.slow_compile
@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(cases())
# a run after a fused sum that reads the sum (at n = 1): it must not join the summed run
@example(((("unary", "arctan", ("leaf", "flip")), (("normalize", 0),)), np.array([0.01937473]),
          np.array([0.01937473])))
def test_programs(case):
    program, x, x2 = case
    assume(usable(program, x) and usable(program, x2))
    f = make_f(program)
    tp = dualtape.tape(f, x)
    ct = tp.compile()
    close(ct.jacobian(x), tp.jacobian(x), rtol=1e-11)
    close(ct(x2), tp(x2))
    close(ct.jacobian(x2), tp.jacobian(x2), rtol=1e-11)


def in_place(x):
    y = np.zeros_like(x)
    y[1:] = x[:-1] * 2.0
    y[0] += np.sin(x[0])
    y[2:4] *= x[:2]
    z = np.exp(y) * x
    return np.sum(z * z)


def data_dependent(x):
    b = x * 1.0
    b[x > 0.5] = 0.0
    return np.sum(np.tanh(b) * x[np.argmax(x)]) + np.max(x) * np.prod(x[:3])


@pytest.mark.slow_compile
@pytest.mark.parametrize("f", [in_place, data_dependent])
def test_scatter_and_data_dependent_instructions(f):
    x = np.linspace(-0.8, 1.1, 9)
    tp = dualtape.tape(f, x)
    ct = tp.compile()
    for point in (x, x * 0.9 + 0.05):
        agree(tp, ct, point)
        close(ct.gradient(point), tp.gradient(point))
        tangents_agree(tp, ct, point)


# ---------------------------------------------------------------------------- tangent and
# second-order entries (jvp, forward jacobian, hvp, hessian, sparse)

def tangents_agree(tp, ct, x, *params, scalar=True):
    """jvp (one and seven directions), forward Jacobian, and for a scalar output hvp and
    the Hessian of the compiled tape equal the interpreter's. Seven: above
    ``compiled.SMALL_K``, the entries with K at run time (the K-literal ones, a module per
    K to compile, have a test of their own)."""
    n = x.size
    v = np.sin(np.arange(n) + 1.0).reshape(x.shape)
    vs = np.stack([v, np.cos(v), np.ones_like(v), v * v, np.sin(2.0 * v), -v, 0.5 * v])
    close(ct.jvp(x, *params, v), tp.jvp(x, *params, v))
    close(ct.jvp(x, *params, vs), tp.jvp(x, *params, vs))
    close(ct.jacobian(x, *params, mode="forward"), tp.jacobian(x, *params, mode="forward"))
    if scalar:
        close(ct.hvp(x, *params, v), tp.hvp(x, *params, v))
        close(ct.hvp(x, *params, vs), tp.hvp(x, *params, vs))
        if n <= 64:
            close(ct.hessian(x, *params), tp.hessian(x, *params))


def rosen_hessian(x):
    a, b = x[:-1], x[1:]
    H = np.zeros((x.size, x.size))
    i = np.arange(x.size - 1)
    H[i, i] += 1200.0 * a * a - 400.0 * b + 2.0
    H[i + 1, i + 1] += 200.0
    H[i, i + 1] = H[i + 1, i] = -400.0 * a
    return H


def test_compiled_tangents_rosenbrock():
    """The one-pass forward-over-reverse tile (the output is the final sum), K = 1 and
    K > 1, against the exact Hessian, central differences and the interpreter; the
    parallel loops and a replay at a new point at a size above PAR_MIN."""
    x = np.linspace(-1.2, 1.3, 7)
    tp = dualtape.tape(rosen, x)
    ct = tp.compile()
    tangents_agree(tp, ct, x)
    close(ct.hessian(x), rosen_hessian(x))
    v = np.cos(np.arange(7.0))
    close(ct.jvp(x, v), central(rosen, x, v), rtol=1e-7)
    close(ct.hvp(x, v), central(ct.gradient, x, v), rtol=1e-6)
    close(dualtape.hessian(rosen, compile=True)(x), rosen_hessian(x))
    close(dualtape.hvp(rosen, compile=True)(x, v), rosen_hessian(x) @ v)
    H = dualtape.hessian(rosen, sparse=True, compile=True)(x)
    close(H.toarray(), rosen_hessian(x))
    xb = np.cos(np.arange(BIG) * 0.37) * 1.1
    big = dualtape.tape(rosen, xb)
    cb = big.compile()
    assert cb.module is ct.module
    for point in (xb, xb[::-1].copy()):
        vb = np.sin(np.arange(BIG) * 0.1)
        vs = np.stack([vb, np.ones(BIG), np.cos(vb)])
        close(cb.hvp(point, vs), big.hvp(point, vs))
        close(cb.jvp(point, vs), big.jvp(point, vs))
    Hb = dualtape.hessian(rosen, sparse=True, compile=True)(xb)
    close(Hb[:50, :50].toarray(), rosen_hessian(xb[:51])[:50, :50])
    close(Hb @ vb, big.hvp(xb, vb))


def test_compiled_tangents_structural_parameter_kink():
    """Structural instructions between runs (gathers, reductions), a guard, a parameter,
    an active broadcast operand, stored values and the zero rule at a kink."""
    x = np.linspace(-1.0, 1.0, 9)             # x[4] == 0: the masked sqrt's kink
    tp = dualtape.tape(mixed, x, 0.7)
    ct = tp.compile()
    tangents_agree(tp, ct, x, 0.7)
    tangents_agree(tp, ct, x + 0.05, -1.3)    # a new point and parameter, no re-recording
    H = ct.hessian(x, 0.7)
    assert np.all(np.isfinite(H))
    y = x + 0.05
    v = np.sin(np.arange(9.0) + 1.0)
    close(ct.hvp(y, 0.7, v), central(lambda z: ct.gradient(z, 0.7), y, v), rtol=1e-6)
    xb = np.linspace(-1.0, 1.0, BIG + (BIG + 1) % 2)
    big = dualtape.tape(mixed, xb, 0.7)
    cb = big.compile()
    vb = np.sin(np.arange(xb.size) * 0.1)
    close(cb.hvp(xb, 0.7, vb), big.hvp(xb, 0.7, vb))
    close(cb.jvp(xb, 0.7, vb), big.jvp(xb, 0.7, vb))


def test_compiled_tangents_nonfinite_fall_back_to_the_zero_rule(monkeypatch):
    """A NaN product (0 * inf at the masked sqrt's zeros, NaN and inf inputs) flags its
    chunk; the interpreter's sweep is then taken, with the zero rule."""
    monkeypatch.setenv("DUALTAPE_COMPILE_PARALLEL", "0")    # the module of the test above
    x = np.linspace(-1.0, 1.0, 9)
    x[[2, 6]] = 0.0
    with np.errstate(invalid="ignore", divide="ignore"):
        tp = dualtape.tape(masked_root, x)
        ct = tp.compile()
        v = np.cos(np.arange(9.0))
        for point in (x, np.abs(x) + 0.5, x):
            tangents_agree(tp, ct, point)
        H = ct.hessian(x)
        assert np.all(np.isfinite(H))
        exact = np.diag(1.0 + np.where(x > 0, -0.25 / np.where(x > 0, x, 1.0) ** 1.5, 0.0))
        close(H, exact)
        for bad in (np.nan, np.inf):
            y = np.abs(x) + 0.5
            y[3] = bad
            h0, h1 = tp.hvp(y, v), ct.hvp(y, v)
            fin = np.isfinite(h0)
            np.testing.assert_array_equal(h1[~fin], h0[~fin])
            close(h1[fin], h0[fin])
            j0, j1 = tp.jvp(y, v), ct.jvp(y, v)
            np.testing.assert_array_equal(j0, j1)


def test_compiled_sparse_jacobian_and_vector_output(monkeypatch):
    monkeypatch.setenv("DUALTAPE_COMPILE_PARALLEL", "0")
    x = np.array([0.3, -1.2, 2.5, 0.7, -0.4, 1.9])
    tp = dualtape.tape(elementwise_mix, x)
    ct = tp.compile()
    tangents_agree(tp, ct, x, scalar=False)
    J = tp.jacobian(x)
    v = np.cos(np.arange(6.0))
    close(ct.jvp(x, v), central(elementwise_mix, x, v), rtol=1e-7)
    jac = dualtape.jacobian(elementwise_mix, sparse=True, mode="forward", compile=True)
    for point in (x, x * 0.9 + 0.1):
        close(jac(point).toarray(), tp.jacobian(point))
    assert jac.last_mode == "forward"
    close(jac(x).toarray(), J)


def test_generated_source_is_valid_python_for_every_fixture():
    """Every entry of a module is generated with it (Numba compiles each on first use): a
    structure whose tangent entries did not parse would break its gradient too. Python's
    own compile only, no Numba: cheap enough for every shared fixture."""
    x = np.linspace(-0.8, 1.1, 9)
    cases = [(f, x0) for _, f, x0 in FUNCTIONS] + [(in_place, x), (data_dependent, x),
                                                   (branchy, -x), (masked_root, x)]
    for f, x0 in cases:
        with np.errstate(invalid="ignore"):
            source, _ = compiled.generate(dualtape.tape(f, x0).prog)
        compile(source, f.__name__, "exec")


def test_compiled_tangents_small_k_literal_entries(monkeypatch):
    """K = 2..4 directions run the entries with K a literal (a module per K), K = 8 the
    tape's own (K at run time): jvp and hvp equal the interpreter's, at two points; a NaN
    input flags a chunk of the K-literal tiles (RETRY, the interpreter's zero rule)."""
    monkeypatch.setenv("DUALTAPE_COMPILE_PARALLEL", "0")    # the modules of the tests above
    x = np.linspace(-1.0, 1.0, 9)
    tp = dualtape.tape(mixed, x, 0.7)
    ct = tp.compile()
    for k in (2, 3, 4, 8):
        vs = np.stack([np.sin(np.arange(9.0) * (q + 1) + 1.0) for q in range(k)])
        for point, a in ((x, 0.7), (x + 0.05, -1.3)):
            close(ct.jvp(point, a, vs), tp.jvp(point, a, vs))
            close(ct.hvp(point, a, vs), tp.hvp(point, a, vs))
        assert (ct.module2(k) is ct.module) == (k not in compiled.SMALL_K)
    with np.errstate(invalid="ignore", divide="ignore"):
        y = np.abs(np.linspace(-1.0, 1.0, 9)) + 0.5
        y[3] = np.nan
        tq = dualtape.tape(masked_root, y)
        cq = tq.compile()
        vs = np.stack([np.cos(np.arange(9.0) * q) for q in range(1, 5)])
        h0, h1 = tq.hvp(y, vs), cq.hvp(y, vs)
        np.testing.assert_array_equal(np.isfinite(h0), np.isfinite(h1))
        close(h1[np.isfinite(h0)], h0[np.isfinite(h0)])
        np.testing.assert_array_equal(cq.jvp(y, vs), tq.jvp(y, vs))


# gathers read inside the runs of the forward tangent sweep (``compiled._forward_plan``)

def gathers_between_runs(x):
    u, v = x[0::2], x[1::2]             # gathers of the input, read by the runs directly
    a = u * v
    b = np.roll(a, 1) + a               # a gather of its own run's result: stays a gather
    s = np.sum(b)
    c = np.roll(u, -1) * s + np.sqrt(v)     # a chain (roll of a strided view)
    d = np.roll(a, 2) * c               # a gather of an earlier run's result
    e = np.roll(v[1:], 1) * x[:5]       # a chain through a view at an offset
    return np.concatenate([d, b, e])


def test_gathers_read_inside_the_runs_of_the_tangent_sweep(monkeypatch):
    """The jvp entry reads static gathers through their index tables inside its fused
    runs (a chain of two composed, one of an earlier run's stored result), keeps the
    gather of its own run's result, and gives the interpreter's tangents and the Dual
    Jacobian; a zero under the square root flags a NaN (RETRY: the interpreter's zero
    rule)."""
    monkeypatch.setenv("DUALTAPE_COMPILE_PARALLEL", "0")
    x = np.linspace(0.3, 1.7, 12)
    tp = dualtape.tape(gathers_between_runs, x)
    code = tp.code
    gathers = [i for i in range(len(code)) if code[i, kernels.OP] == kernels.GATHER]
    _, _, inline = compiled._inline_segments(tp.prog)
    kept = [i for i in gathers if i not in inline]
    assert len(gathers) == 6 and len(kept) == 1
    assert code[kept[0], kernels.A] == code[kept[0] - 1, kernels.OUT]   # roll of u * v
    segs, runs, direct, placed = compiled._forward_plan(tp.prog)
    assert direct and len(runs) == 4 and not placed     # b is also summed
    assert sorted(len(q) for r in runs for q in r.chain.values()) == [1, 1, 1, 1, 2, 2]
    ct = tp.compile()
    J = dualtape.jacobian(gathers_between_runs, mode="forward")(x)
    for k in (1, 3, 7):
        V = np.cos(np.arange(12.0)[:, None] * np.arange(1.0, k + 1.0))
        for point in (x, x[::-1] + 0.1):
            
            s0, y0, t0 = tp.run_jvp(point, V)
            s1, y1, t1 = ct.run_jvp(point, V)
            assert s0 == s1 == kernels.OK
            close(y1, y0)
            close(t1, t0)
        close(ct.run_jvp(x, V)[2], J @ V)
    close(ct.jacobian(x, mode="forward"), J)
    v = np.sin(np.arange(12.0))
    close(ct.jvp(x, v), central(gathers_between_runs, x, v), rtol=1e-7)
    # the input also read by a reduction: the runs read it through the tables in the
    # workspace's copy (not in place)
    def summed(y):
        return np.roll(y[::2], 1) * np.sum(y) + np.sin(y[1::2])
    tq = dualtape.tape(summed, x)
    assert compiled._forward_plan(tq.prog)[2] is False
    V = np.cos(np.arange(12.0)[:, None] * np.arange(1.0, 4.0))
    close(tq.compile().run_jvp(x, V)[2], dualtape.jacobian(summed, mode="forward")(x) @ V)
    z = x.copy()
    z[3] = 0.0          # v[1] = 0: an infinite partial of the square root
    with np.errstate(divide="ignore", invalid="ignore"):
        a, b = ct.jvp(z, v), tp.jvp(z, v)
    np.testing.assert_array_equal(np.isfinite(a), np.isfinite(b))
    close(a[np.isfinite(b)], b[np.isfinite(b)])


def concatenated(x):
    a = np.sin(x[::2])
    b = x[1::2] * a                     # a read in registers by the run, and concatenated
    return np.concatenate([a, b * b])


def concatenated_and_read(x):
    a = np.sin(x)
    b = a * np.cumsum(a)                # a read from memory by the cumulative sum
    return np.concatenate([a, b])


def test_final_gather_writes_the_jvp_result(monkeypatch):
    """The Brusselator's interleaving gather (``np.stack(...).ravel()``) is the output: the
    jvp entry writes values and tangents straight into its result; its runs read the
    strided views and rolls of the input through their tables (one fused loop) and write
    du and dv in the concatenation's slot, and the sparse Jacobian equals the
    interpreter's. A concatenation as the output is written in place too."""
    from fixtures import brusselator
    monkeypatch.setenv("DUALTAPE_COMPILE_PARALLEL", "0")
    x = 1.0 + 0.5 * np.sin(np.arange(40.0))
    tp = dualtape.tape(brusselator, x)
    segs, runs, _, placed = compiled._forward_plan(tp.prog)
    assert len(runs) == 1 and sum(len(q) == 2 for q in runs[0].chain.values()) == 4
    assert len(placed) == 2         # du and dv written in the concatenation's slot
    source, _ = compiled.generate(tp.prog)
    assert "ua = np.uint64(code[24, A])" in source      # the final gather, inline
    ct = tp.compile()
    for point in (x, x[::-1] * 1.1):
        J0 = dualtape.jacobian(brusselator, sparse=True)(point)
        J1 = dualtape.jacobian(brusselator, sparse=True, compile=True)(point)
        assert (J0 != J1).nnz == 0 or np.allclose(J0.toarray(), J1.toarray(), rtol=1e-13)
        close(J1.toarray(), dualtape.jacobian(brusselator, mode="forward")(point))
        for k in (1, 7):
            V = np.cos(np.arange(40.0)[:, None] * np.arange(1.0, k + 1.0))
            close(ct.run_jvp(point, V)[2], tp.run_jvp(point, V)[2])
    # the concatenation is the output: written in place by the run, not executed
    x = np.linspace(-1.0, 2.0, 10)
    tp = dualtape.tape(concatenated, x)
    assert len(compiled._forward_plan(tp.prog)[3]) == 2
    ct = tp.compile()
    J = dualtape.jacobian(concatenated, mode="forward")(x)
    for k in (1, 3, 7):
        V = np.sin(np.arange(10.0)[:, None] + np.arange(1.0, k + 1.0))
        y1, t1 = ct.run_jvp(x, V)[1:]
        close(y1, concatenated(x))
        close(t1, J @ V)
    tp = dualtape.tape(concatenated_and_read, x)
    assert compiled._forward_plan(tp.prog) is None      # nothing to place
    V = np.cos(np.arange(10.0)[:, None] * np.arange(1.0, 4.0))
    close(tp.compile().run_jvp(x, V)[2],
          dualtape.jacobian(concatenated_and_read, mode="forward")(x) @ V)


def nonzeros_of(J, colors):
    """``CompiledTape.run_jvp_nz``'s pattern argument for CSR matrix J and column colors."""
    return np.concatenate([J.indptr.astype(np.int64), colors[J.indices].astype(np.int64)])


def test_jvp_at_a_patterns_nonzeros(monkeypatch):
    """``run_jvp_nz`` gives the compressed Jacobian's nonzeros in CSR order, equal to the
    sparse Jacobian's, through a final gather (Brusselator) and without one; a NaN
    derivative (RETRY) and a tape whose tangents are not fused (a scatter) take the
    general sweep and the pick."""
    from fixtures import brusselator
    from dualtape import sparse
    monkeypatch.setenv("DUALTAPE_COMPILE_PARALLEL", "0")
    for f, x in ((brusselator, 1.0 + 0.5 * np.sin(np.arange(40.0))),
                 (concatenated, np.linspace(-1.0, 2.0, 10)),
                 (concatenated_and_read, np.linspace(-1.0, 2.0, 10))):
        ct = dualtape.tape(f, x).compile()
        plan = sparse.jacobian_plan(ct, "forward")
        J = dualtape.jacobian(f, sparse=True)(x)
        status, data = ct.run_jvp_nz(x, plan.seeds, nonzeros_of(J, plan.colors))
        assert status == kernels.OK
        close(data, J.data)
    with np.errstate(invalid="ignore", divide="ignore"):
        z = np.linspace(0.1, 1.0, 12)
        z[3] = 0.0                              # sqrt at 0: an infinite partial, RETRY
        ct = dualtape.tape(gathers_between_runs, z).compile()
        plan = sparse.jacobian_plan(ct, "forward")
        J = dualtape.tape(gathers_between_runs, z).jacobian(z, mode="forward")
        pat = dualtape.sparsity(gathers_between_runs, z).jacobian.tocsr()
        nz = nonzeros_of(pat, plan.colors)
        k = plan.seeds.shape[1]
        raw = ct.module2(k).jvp_nz(ct.prog, z, plan.seeds, np.empty(pat.nnz),
                                   ct.workspace(), ct.tangent_workspace(k)[0], ct.scratch2(k), nz)
        assert raw == compiled.RETRY
        status, data = ct.run_jvp_nz(z, plan.seeds, nz)
        rows = np.repeat(np.arange(pat.shape[0]), np.diff(pat.indptr))
        assert not np.isfinite(data).all()
        np.testing.assert_array_equal(data, J[rows, pat.indices])

    def scattered(x):
        y = x * x
        y[1:3] = np.sin(x[:2])
        return y
    x = np.linspace(0.5, 1.5, 6)
    ct = dualtape.tape(scattered, x).compile()
    assert not ct.fused_tangents
    plan = sparse.jacobian_plan(ct, "forward")
    J = dualtape.jacobian(scattered, sparse=True)(x)
    close(ct.run_jvp_nz(x, plan.seeds, nonzeros_of(J, plan.colors))[1], J.data)


def gather_program(seed):
    """A random right-hand side of strided views, flips and rolls (static gathers, some of
    gathers) mixed with elementwise instructions of one length, ending in a concatenation
    or an interleaving gather: the shapes the forward plan reads through index tables."""
    rng = np.random.default_rng(seed)
    steps = []
    for _ in range(rng.integers(4, 9)):
        kind = rng.choice(["roll", "flip", "mul", "sin", "axpy"])
        steps.append((kind, int(rng.integers(0, 99)), int(rng.integers(0, 99)),
                      int(rng.integers(-2, 3))))
    tail = rng.choice(["stack", "concat", "sum-and-stack"])

    def f(x):
        vals = [x[0::2], x[1::2]]
        for kind, i, j, shift in steps:
            a, b = vals[i % len(vals)], vals[j % len(vals)]
            if kind == "roll":
                vals.append(np.roll(a, shift))
            elif kind == "flip":
                vals.append(a[::-1])
            elif kind == "mul":
                vals.append(a * b)
            elif kind == "sin":
                vals.append(np.sin(a) + 0.5 * b)
            else:
                vals.append(1.5 * a - b)
        u, v = vals[-1], vals[-2]
        if tail == "stack":
            return np.stack([u, v], axis=1).ravel()
        if tail == "concat":
            return np.concatenate([u, v * v])
        return np.stack([u * np.sum(v), v], axis=1).ravel()
    return f


@pytest.mark.slow_compile
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 10_000))
def test_random_gathers_read_inside_the_runs(seed):
    """Random mixes of views, flips, rolls and elementwise instructions: the compiled jvp
    (gathers read through their tables where the plan allows) and the sparse Jacobian
    equal the interpreter's and the Dual Jacobian, at two points."""
    f = gather_program(seed)
    x = 0.5 + np.sin(np.arange(12.0) * 0.7) ** 2
    tp = dualtape.tape(f, x)
    ct = tp.compile()
    V = np.cos(np.arange(12.0)[:, None] * np.arange(1.0, 4.0))
    for point in (x, x[::-1] * 1.1):
        close(ct.run_jvp(point, V)[2], tp.run_jvp(point, V)[2])
        J = dualtape.jacobian(f, mode="forward")(point)
        close(ct.jacobian(point, mode="forward"), J)
        close(dualtape.jacobian(f, sparse=True, compile=True)(point).toarray(), J)
