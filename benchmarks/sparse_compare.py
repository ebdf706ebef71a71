"""Sparse derivatives against dense ones and the peers, in one run.

    python benchmarks/sparse_compare.py [--quick]

Rows: the Brusselator Jacobian (n = 10^2 .. 10^4) and the Rosenbrock Hessian
(n = 10^3 .. 10^5). Columns (median per call, interleaved rounds as in compare.py; the
ratio in brackets is the column's time over ``dualtape sparse``: above 1, dualtape is
faster):

  dualtape sparse   ``dualtape.jacobian(f, sparse=True)`` / ``hessian(f, sparse=True)``: a
                    scipy.sparse CSR matrix
  dualtape sparse compiled   the same with ``compile=True``: the compiled tangent and
                    forward-over-reverse sweeps (``Tape.compile``), all colors in one sweep
  dualtape dense    ``dualtape.jacobian(f)`` / ``hessian(f)`` (n <= 10^4 / 10^3)
  casadi sparse     a CasADi SX Function of the sparse Jacobian / Hessian, the nonzeros
                    into a new NumPy array (``Function.buffer()``)
  jax               ``jax.jit(jax.hessian(f))`` (Hessian, n <= 10^3) / ``jax.jit(jax.jacfwd(f))``
                    (Jacobian, n <= 10^3), x64

Also printed: dualtape's one-time cost per tape (record, detection, coloring) and the
colors used. ``--overhead`` adds the kernel call alone of each dualtape sparse column
("... kernel": the sweep entry on its bound arguments, ``sparse.runner``'s ``sweep``) and
prints the time outside it (the Python of the call: cache lookup, gather of the nonzeros,
the CSR matrix).
"""
import argparse
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

sys.path.insert(0, os.path.dirname(HERE))   # this checkout's dualtape
import compare as C  # noqa: E402  (sets the thread environment before NumPy is used)
import problems as P  # noqa: E402


def row(name, n, mods, target, budget, overhead=False):
    import dualtape
    from dualtape import sparse as S
    p = P.make(name, n)
    f, x = p.f, p.x0.copy()
    hess = name == "rosen"
    t0 = time.perf_counter()
    tp = dualtape.tape(f, x)
    t1 = time.perf_counter()
    plan = S.hessian_plan(tp) if hess else S.jacobian_plan(tp)
    t2 = time.perf_counter()
    d = dualtape.hessian(f, sparse=True) if hess else dualtape.jacobian(f, sparse=True)
    methods = {"dualtape sparse": lambda: d(x)}
    ref = d(x)
    dc = (dualtape.hessian(f, sparse=True, compile=True) if hess else
          dualtape.jacobian(f, sparse=True, compile=True))
    t3 = time.perf_counter()
    assert abs(dc(x) - ref).max() <= 1e-12 * max(1.0, abs(ref).max())
    t_compile = time.perf_counter() - t3
    methods["dualtape sparse compiled"] = lambda: dc(x)
    if n <= (1000 if hess else 10_000):
        dd = dualtape.hessian(f) if hess else dualtape.jacobian(f)
        methods["dualtape dense"] = lambda: dd(x)
        assert np.allclose(dd(x), ref.toarray(), rtol=1e-10, atol=1e-8)
    if "casadi" in mods:
        ca = mods["casadi"]
        pc = P.make(name, n, P.casadi_ns())
        xs = ca.SX.sym("x", n)
        e = pc.f(xs)
        M = ca.hessian(e, xs)[0] if hess else ca.jacobian(e, xs)
        G = ca.Function("G", [xs], [M])
        G(x)
        methods["casadi sparse"] = C.casadi_call(G, x, G.sparsity_out(0).nnz())
        if n <= 10_000:
            assert np.allclose(G(x).full(), ref.toarray(), rtol=1e-10, atol=1e-8)
    if "jax" in mods and n <= 1000:
        jax = mods["jax"]
        pj = P.make(name, n, P.jax_ns())
        jf = jax.jit(jax.hessian(pj.f) if hess else jax.jacfwd(pj.f))
        methods["jax"] = lambda: np.asarray(jf(x).block_until_ready())
    if overhead:
        for key, ds in (("dualtape sparse", d), ("dualtape sparse compiled", dc)):
            tp = ds.tapes.tapes[(x.shape,)][0]
            sweep = S.runner(tp, "hessian" if hess else "auto").sweep
            if sweep is not None:
                methods[key + " kernel"] = lambda sweep=sweep: sweep(x)
    med, _ = C.interleaved_medians(methods, 15, target, budget)
    base = med["dualtape sparse"]
    cells = [f"{k} {C.fmt_time(v)}" + ("" if k == "dualtape sparse" else f" [{v / base:.2g}]")
             for k, v in med.items()]
    what = "Hessian" if hess else "Jacobian"
    print(f"{name} {what} n={n}: " + ", ".join(cells))
    print(f"    once per tape: record {C.fmt_time(t1 - t0)}, detect + color "
          f"{C.fmt_time(t2 - t1)}; {plan.ncolors} {plan.mode} colors, nnz {ref.nnz}; "
          f"first compiled call {C.fmt_time(t_compile)}")
    for key in ("dualtape sparse", "dualtape sparse compiled"):
        if key + " kernel" in med:
            print(f"    {key}: {C.fmt_time(med[key] - med[key + ' kernel'])} outside the "
                  "kernel call")
    return med


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--overhead", action="store_true",
                    help="also time the kernel calls alone (the Python around them)")
    args = ap.parse_args(argv)
    mods, absent = C.load_peers(["jax", "casadi"])
    if absent:
        print("not installed:", ", ".join(absent))
    target, budget = (0.01, 0.3) if args.quick else (0.03, 2.0)
    for n in (100, 1000, 10_000):
        row("brusselator", n, mods, target, budget, args.overhead)
    for n in (1000, 10_000, 100_000):
        row("rosen", n, mods, target, budget, args.overhead)


if __name__ == "__main__":
    main()
