"""The compiled tangent and second-order sweeps against the interpreter and JAX, in one run.

    python benchmarks/compiled_second_order.py [--quick]

Rows: the Rosenbrock Hessian-vector product (n = 10^3, 10^5), the dense Hessian of
logistic regression (10^4 samples x 100 features) and the Rosenbrock forward Jacobian-vector
product with 1 and 4 directions at 10^5. Columns (median per call, interleaved rounds as in
compare.py; ``[x]`` = time / compiled on 1 thread):

  interpreter          ``dualtape.hvp(f)`` / ``hessian(f)`` / ``Tape.jvp``
  compiled 1 thread    the same with ``compile=True`` (``Tape.compile()``), one Numba thread
  compiled 2 threads   the same on every thread
  jax                  ``jax.jit`` of jvp-of-grad (hvp), ``jax.hessian``, ``jax.jvp`` (x64,
                       NumPy arrays in and out)

Then the compile time of each entry (first call after ``tape.compile()``, an empty cache
directory, in a fresh process): gradient, jvp, hvp.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)    # this checkout's dualtape
import compare as C  # noqa: E402  (sets the thread environment before NumPy is used)
import problems as P  # noqa: E402

ROWS = [("rosen", 1000, "hvp"), ("rosen", 100_000, "hvp"), ("logistic", P.LOGISTIC_FEATURES,
        "hessian"), ("rosen", 100_000, "jvp"), ("rosen", 100_000, "jvp4")]
COLUMNS = ["interpreter", "compiled 1 thread", "compiled 2 threads", "jax"]

COMPILE_TIMES = """
import sys, time
import numpy as np, dualtape
sys.path.insert(0, {here!r})
import problems as P
p = P.make({name!r}, {n})
x = p.x0
v = np.cos(np.arange(x.size))
ct = dualtape.tape(p.f, x).compile()
out = []
for what in {entries!r}:
    t0 = time.perf_counter()
    ct.gradient(x) if what == "gradient" else getattr(ct, what)(x, v)
    out.append(time.perf_counter() - t0)
print(*out)
"""


def methods_for(name, n, what, mods, full):
    import numba

    import dualtape
    p = P.make(name, n)
    x = p.x0.copy()
    v = np.cos(np.arange(x.size))
    V = np.stack([v, np.sin(v), np.ones_like(v), v * v])

    def threads(k, fn):
        def call():
            numba.set_num_threads(k)
            return fn()
        return call

    if what == "hvp":
        interp, comp = dualtape.hvp(p.f), dualtape.hvp(p.f, compile=True)
        ref, run = (lambda: interp(x, v)), (lambda: comp(x, v))
    elif what == "hessian":
        interp, comp = dualtape.hessian(p.f), dualtape.hessian(p.f, compile=True)
        ref, run = (lambda: interp(x)), (lambda: comp(x))
    else:
        tp = dualtape.tape(p.f, x)
        ct = tp.compile()
        d = v if what == "jvp" else V
        ref, run = (lambda: tp.jvp(x, d)), (lambda: ct.jvp(x, d))
    methods = {"interpreter": ref, "compiled 1 thread": threads(1, run),
               "compiled 2 threads": threads(full, run)}
    if "jax" in mods:
        jax = mods["jax"]
        f = P.make(name, n, P.jax_ns()).f
        if what == "hvp":
            jh = jax.jit(lambda a, b: jax.jvp(jax.grad(f), (a,), (b,))[1])
            methods["jax"] = lambda: np.asarray(jh(x, v).block_until_ready())
        elif what == "hessian":
            jh = jax.jit(jax.hessian(f))
            methods["jax"] = lambda: np.asarray(jh(x).block_until_ready())
        elif what == "jvp":
            jj = jax.jit(lambda a, b: jax.jvp(f, (a,), (b,))[1])
            methods["jax"] = lambda: np.asarray(jj(x, v).block_until_ready())
        else:
            jj = jax.jit(jax.vmap(lambda a, b: jax.jvp(f, (a,), (b,))[1], in_axes=(None, 0)))
            methods["jax"] = lambda: np.asarray(jj(x, V).block_until_ready())
    return p, ref, run, methods


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    import numba
    mods, absent = C.load_peers(["jax"])
    if absent:
        print("not installed:", ", ".join(absent))
    target, budget, repeats = (0.01, 0.5, 15) if args.quick else (0.03, 2.0, 31)
    full = numba.config.NUMBA_NUM_THREADS
    print(f"Numba threading layer {numba.config.THREADING_LAYER}, {full} threads; "
          f"load average {os.getloadavg()[0]:.1f}")
    print()
    print("| problem | " + " | ".join(COLUMNS) + " | first compiled call |")
    print("|---" * (len(COLUMNS) + 2) + "|")
    for name, n, what in ROWS:
        p, ref, run, methods = methods_for(name, n, what, mods, full)
        t0 = time.perf_counter()
        run()
        first = time.perf_counter() - t0
        r = np.asarray(ref())
        scale = max(1.0, float(np.abs(r).max()))
        errs = {k: float(np.abs(np.asarray(fn()) - r).max()) / scale
                for k, fn in methods.items()}
        med, _ = C.interleaved_medians(methods, repeats, target, budget)
        numba.set_num_threads(full)
        base = med["compiled 1 thread"]
        cells = [f"{C.fmt_time(med[c])} [{med[c] / base:.2f}]" if c in med else "-"
                 for c in COLUMNS]
        print(f"| {p.label} {what} | " + " | ".join(cells) + f" | {C.fmt_time(first)} |",
              flush=True)
        print("    max difference / max |result| against the interpreter: "
              + ", ".join(f"{k} {e:.1e}" for k, e in errs.items()), flush=True)
    print()
    print("Compile time per entry (fresh process, empty cache directory; the gradient first, "
          "then jvp and hvp, each compiling only its own entry):")
    full_set = ("gradient", "jvp", "hvp")
    for name, n, entries in (("rosen", 1000, full_set), ("logistic", P.LOGISTIC_FEATURES,
                                                          full_set),
                             ("brusselator", 1000, ("jvp",))):
        with tempfile.TemporaryDirectory() as cache:
            env = dict(os.environ, PYTHONPATH=ROOT, DUALTAPE_CACHE_DIR=cache)
            out = subprocess.run([sys.executable, "-c", COMPILE_TIMES.format(
                here=HERE, name=name, n=n, entries=entries)], capture_output=True, text=True,
                cwd=HERE, env=env, timeout=900)
            if out.returncode != 0:
                print(f"  {name}: FAILED {out.stderr.strip().splitlines()[-1][:200]}")
                continue
            times = map(float, out.stdout.split()[-len(entries):])
            print(f"  {name} n={n}: " + ", ".join(f"{e} {t:.1f} s"
                                                  for e, t in zip(entries, times)))


if __name__ == "__main__":
    main()
