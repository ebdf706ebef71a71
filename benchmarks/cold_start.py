"""Cold start: what the first calls cost with an empty Numba cache (fresh venv, CI, container).

    python benchmarks/cold_start.py [--src DIR] [--n N] [--json FILE]

Copies the ``dualtape`` package (from ``--src``, by default this checkout) into a temporary
directory without any ``__pycache__`` (no ``*.pyc``, ``*.nbi``, ``*.nbc``), points
``NUMBA_CACHE_DIR`` at an empty temporary directory and, in a fresh subprocess, times one
after the other:

* ``import numba`` and ``import dualtape``;
* the first ``dualtape.grad(rosen)(x)`` (record + compile the first-order sweeps);
* the first ``dualtape.hessian(rosen)(x)`` after it (the second-order sweeps);
* the first forward ``dualtape.jacobian(f, mode="forward")(x)`` after that (the tangent sweep).

Each stage reports wall time (``perf_counter``) and CPU time (``process_time``): on a shared
machine the CPU time is the steadier figure. A ``numba.core.event`` listener on
``"numba:compile"`` counts the compilations per function and their self time (a compile
triggered inside another one is subtracted from its caller's), prints the package's
functions compiled more than once with their argument types (each copy is a full compile:
plain ``numba.njit`` specialises a callee on a constant argument such as ``f(..., 0, True)``;
``kernels.jit`` does not, docs/design.md "Compile policy"), the Numba library functions
compiled (np.empty, np.dot, string formatting ...) by the function that needed them, the
costliest compiles, and which second-order sweeps the first gradient compiled (it must
compile none).

Not an asv benchmark: asv runs with a warm cache. ``--src`` measures another checkout;
compare two versions by running both at the same time (one machine state): on the shared
machine one function's compile time moved by 20-40 % between runs, a stage's by ~10 %.
``--json`` writes the figures to a file.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

#: sweeps that only second-order calls may compile (checked on the first gradient)
SECOND_ORDER = ("hvp", "hvp_columns", "reverse2", "ew_reverse2", "ew_partial2",
                "reduce_reverse2", "matmul_reverse2", "scatter_reverse2", "cumprod_reverse2",
                "la_reverse2", "la_qr_reverse2")

CHILD = textwrap.dedent("""
    import json, sys, time
    clock = lambda: (time.perf_counter(), time.process_time())
    stages, compiles, stack, current = [], [], [], ["import"]

    def stage(name, fn):
        current[0] = name
        w0, c0 = clock()
        fn()
        w1, c1 = clock()
        stages.append((name, w1 - w0, c1 - c0))

    stage("import numba", lambda: __import__("numba"))
    from numba.core import event

    class Count(event.Listener):
        def on_start(self, ev):
            stack.append([time.process_time(), 0.0, ev.data["dispatcher"].py_func.__name__])

        def on_end(self, ev):
            t0, inner, name = stack.pop()
            total = time.process_time() - t0
            if stack:
                stack[-1][1] += total
            compiles.append(dict(name=name, stage=current[0],
                                 module=ev.data["dispatcher"].py_func.__module__,
                                 caller=stack[-1][2] if stack else "",
                                 args=[str(a) for a in ev.data["args"]],
                                 self_cpu=total - inner))

    event.register("numba:compile", Count())
    stage("import dualtape", lambda: __import__("dualtape"))
    import numpy as np
    import dualtape

    def rosen(x):
        return np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)

    def field(x):
        return np.sin(x) * x[::-1] + x ** 2

    n = int(sys.argv[1])
    x = np.linspace(-1.0, 1.5, n)
    out = {}
    stage("first grad", lambda: out.setdefault("g", dualtape.grad(rosen)(x)))
    stage("first hessian", lambda: out.setdefault("h", dualtape.hessian(rosen)(x)))
    jac = dualtape.jacobian(field, mode="forward")
    stage("first forward jacobian", lambda: out.setdefault("j", jac(x)))
    assert jac.last_mode == "forward", jac.last_mode
    print(json.dumps(dict(stages=stages, compiles=compiles)))
""")


def fresh_copy(src, dst):
    """Copy the package at ``src`` to ``dst`` without compiled files of any kind."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(
        "__pycache__", "*.pyc", "*.nbi", "*.nbc"))


def measure(src, n):
    """Run the child in a fresh process on a cache-free copy; return its figures."""
    with tempfile.TemporaryDirectory(prefix="dualtape-cold-") as tmp:
        fresh_copy(os.path.join(src, "dualtape"), os.path.join(tmp, "pkg", "dualtape"))
        cache = os.path.join(tmp, "numba-cache")
        os.mkdir(cache)
        env = dict(os.environ, NUMBA_CACHE_DIR=cache, PYTHONPATH=os.path.join(tmp, "pkg"),
                   PYTHONDONTWRITEBYTECODE="1")
        res = subprocess.run([sys.executable, "-c", CHILD, str(n)], env=env, cwd=tmp,
                             capture_output=True, text=True)
        if res.returncode:
            sys.exit(f"child failed:\n{res.stderr}")
        return json.loads(res.stdout.strip().splitlines()[-1])


def report(fig):
    """Print the stage times, the duplicated compiles and the costliest ones."""
    print(f"{'stage':<24} {'wall s':>8} {'cpu s':>8} {'compiles':>9} {'compile cpu s':>14}")
    for name, wall, cpu in fig["stages"]:
        cs = [c for c in fig["compiles"] if c["stage"] == name]
        print(f"{name:<24} {wall:8.2f} {cpu:8.2f} {len(cs):9d} "
              f"{sum(c['self_cpu'] for c in cs):14.2f}")
    total = [sum(s[i] for s in fig["stages"]) for i in (1, 2)]
    print(f"{'total':<24} {total[0]:8.2f} {total[1]:8.2f} {len(fig['compiles']):9d}")

    ours = [c for c in fig["compiles"] if c["module"].startswith("dualtape")]
    by_name = {}
    for c in ours:
        by_name.setdefault(c["name"], []).append(c)
    dup = {k: v for k, v in by_name.items() if len(v) > 1}
    print(f"\ndualtape functions compiled more than once: {len(dup)}")
    for name, cs in sorted(dup.items(), key=lambda kv: -len(kv[1])):
        print(f"  {name} x{len(cs)} ({sum(c['self_cpu'] for c in cs):.2f} s)")
        for c in cs:
            print(f"      ({', '.join(c['args'])})")

    # Numba's own overloads (np.empty, np.dot, ...) compiled as part of our functions
    lib = {}
    for c in fig["compiles"]:
        if not c["module"].startswith("dualtape"):
            n, t = lib.get(c["caller"], (0, 0.0))
            lib[c["caller"]] = (n + 1, t + c["self_cpu"])
    print(f"\nNumba library functions compiled: {sum(n for n, _ in lib.values())} "
          f"({sum(t for _, t in lib.values()):.2f} s), for: " + ", ".join(
              f"{k or '-'} {n} ({t:.2f} s)" for k, (n, t) in
              sorted(lib.items(), key=lambda kv: -kv[1][1])))

    print("\ncostliest compiles (self CPU time):")
    for c in sorted(fig["compiles"], key=lambda c: -c["self_cpu"])[:15]:
        print(f"  {c['self_cpu']:6.2f} s  {c['name']:<20} [{c['stage']}]")

    early = sorted({c["name"] for c in fig["compiles"]
                    if c["stage"] in ("import dualtape", "first grad")
                    and c["name"] in SECOND_ORDER})
    print("\nsecond-order sweeps compiled by the first gradient:", ", ".join(early) or "none")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", default=ROOT, help="checkout whose dualtape/ is measured")
    ap.add_argument("--n", type=int, default=100, help="Rosenbrock size")
    ap.add_argument("--json", help="write the figures to this file")
    args = ap.parse_args()
    fig = measure(os.path.abspath(args.src), args.n)
    report(fig)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(fig, fh, indent=1)


if __name__ == "__main__":
    main()
