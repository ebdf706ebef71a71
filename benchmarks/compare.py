"""dualtape against its peers on the design brief's benchmark problems, in one run.

    python -m dualtape.bench [--quick] [--only rosen,mlp] [--no-fresh] [--out FILE]
                             [--json FILE] [--plot FILE] [--compiled]
    (or python benchmarks/compare.py with the same options)

For each problem and size, every method is warmed up (JIT compilation, tape recording and
Numba kernel loading excluded), then timed interleaved: round after round, each method runs
a batch of calls in turn (order rotated each round), so a change of machine load hits all
of them alike. A cell is the median per-call time over the rounds (``time.perf_counter``,
garbage collector off) and, in brackets, its RATIO to dualtape's time on the same row
(peer time / dualtape time: above 1 means dualtape is faster).

Methods, all float64, NumPy arrays in and out:
  dualtape   ``dualtape.grad(f)(x)`` (a cached tape, replayed), or
             ``dualtape.jacobian(f, mode="forward"|"reverse")(x)``
  numpy f    f(x) alone, no derivative (the brief's yardstick)
  jax        ``jax.jit(jax.grad(f))`` (``jacfwd`` / ``jacrev``), x64, ``block_until_ready``
  autograd   HIPS ``autograd.grad`` (``autograd.jacobian`` in the reverse Jacobian rows)
  torch      ``backward()`` on a float64 tensor from ``torch.from_numpy``
             (``torch.func.jacfwd`` / ``jacrev`` for Jacobians)
  casadi     a CasADi Function of the gradient (or Jacobian), SX where its build is cheap,
             MX otherwise (see the notes), called through ``Function.buffer()`` into a new
             NumPy array; the Jacobian rows give a dense array, the ``casadi sparse``
             column the nonzeros alone (CasADi's native sparse output)
  fd         central finite differences (2n evaluations of f), when that takes < ~0.3 s
Peers are optional: a peer that does not import is skipped and named in the output.
Threads: see THREAD_ENV below (idle-spinning pools would distort an interleaved run).

``--compiled`` runs the compiled tier's table instead (``compiled_section``): the
interpreter against ``grad(f, compile=True)`` on 1 and 2 threads, a hand-written ``@njit``
gradient and ``jax.jit``, plus compile time per structure and the cache hit in a fresh
process.

Also reported: dualtape's record time (``dualtape.tape(f, x)``), tape size, and the first
call in a fresh process (``python -c``: import + record + first gradient, Numba cache
warm), for dualtape and the peers.
"""
import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time

# Thread pools that spin while idle steal the 2 cores from whichever method runs next in an
# interleaved run (measured here: NumPy's 64x300 @ 300x330 went from 0.3 ms to 14 ms right
# after a torch backward, torch's Rosenbrock gradient at 10^5 from 2 ms to 57-256 ms).
# So, unless set by the caller: OpenBLAS single-threaded (NumPy f, SciPy, and dualtape's
# BLAS calls alike) and OpenMP threads (torch) sleeping when idle. JAX and torch keep their
# default thread counts. Set before NumPy is imported.
THREAD_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
for _k, _v in THREAD_ENV.items():
    os.environ.setdefault(_k, _v)

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import problems as P  # noqa: E402

PEERS = ["jax", "autograd", "torch", "casadi"]
COLUMNS = ["dualtape", "numpy f", "jax", "autograd", "torch", "casadi", "casadi sparse", "fd"]

# CasADi: build the SX graph only where it is cheap; MX (matrix graph) elsewhere.
CASADI_SX_MAX = {"rosen": 10_000, "mlp": 1000, "scalar_loop": 10**9, "logistic": 0,
                 "brusselator": 10**9}
CASADI_MAX = {"rosen": 1_000_000, "mlp": 100_000, "scalar_loop": 10**9, "logistic": 10**9,
              "brusselator": 10_000}
FD_BUDGET = 0.3          # seconds per finite-difference gradient, estimated from f's time


# ---------------------------------------------------------------------------- peers

def load_peers(wanted):
    mods, absent = {}, {}
    for name in wanted:
        try:
            if name == "jax":
                import jax
                jax.config.update("jax_enable_x64", True)
                mods[name] = jax
            elif name == "autograd":
                import autograd
                mods[name] = autograd
            elif name == "torch":
                import torch
                mods[name] = torch
            elif name == "casadi":
                import casadi
                mods[name] = casadi
        except Exception as e:      # ImportError, or a broken install
            absent[name] = f"{type(e).__name__}: {e}".splitlines()[0][:100]
    return mods, absent


def fmt_time(t):
    if t is None:
        return "-"
    if t < 1e-3:
        return f"{t * 1e6:.3g} us"
    if t < 1:
        return f"{t * 1e3:.3g} ms"
    return f"{t:.3g} s"


# ---------------------------------------------------------------------------- timing

def calibrate(fn, target):
    """Calls per timed batch so that a batch lasts about ``target`` seconds."""
    t0 = time.perf_counter()
    fn()
    t = time.perf_counter() - t0
    if t < target / 10:
        k = 10
        t0 = time.perf_counter()
        for _ in range(k):
            fn()
        t = (time.perf_counter() - t0) / k
    return max(1, min(100_000, int(target / max(t, 1e-9)))), t


def interleaved_medians(methods, repeats, target, budget):
    """{name: median seconds per call}; methods timed round-robin, warm-up excluded."""
    number, single = {}, {}
    for name, fn in methods.items():
        for _ in range(2):
            fn()                                 # warm-up: compile, record, load kernels
        number[name], single[name] = calibrate(fn, target)
    per_round = sum(number[k] * single[k] for k in methods)
    rounds = max(3, min(repeats, int(budget / max(per_round, 1e-9))))
    samples = {k: [] for k in methods}
    names = list(methods)
    gc_was = gc.isenabled()
    gc.disable()
    try:
        for r in range(rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            for name in order:
                fn, k = methods[name], number[name]
                t0 = time.perf_counter()
                for _ in range(k):
                    fn()
                samples[name].append((time.perf_counter() - t0) / k)
    finally:
        if gc_was:
            gc.enable()
    return {k: statistics.median(v) for k, v in samples.items()}, rounds


# ---------------------------------------------------------------------------- methods

def central_fd_grad(f, x, h=1e-6):
    g = np.empty_like(x)
    xp = x.copy()
    for i in range(x.size):
        hi = h * max(1.0, abs(x[i]))
        xp[i] = x[i] + hi
        fp = f(xp)
        xp[i] = x[i] - hi
        fm = f(xp)
        xp[i] = x[i]
        g[i] = (fp - fm) / (2 * hi)
    return g


def central_fd_jac(f, x, h=1e-6):
    cols = []
    xp = x.copy()
    for i in range(x.size):
        hi = h * max(1.0, abs(x[i]))
        xp[i] = x[i] + hi
        fp = f(xp)
        xp[i] = x[i] - hi
        fm = f(xp)
        xp[i] = x[i]
        cols.append((fp - fm) / (2 * hi))
    return np.stack(cols, axis=-1)


def casadi_call(G, x, shape):
    """CasADi's fast call path: ``Function.buffer()`` evaluates straight from x into a new
    NumPy array (the plain ``G(x)`` call costs ~25 us more through DM conversion). A
    matrix output comes column-major: returned as a transposed (row-major) view."""
    buf, trigger = G.buffer()
    size = int(np.prod(shape))

    def call():
        out = np.empty(size)
        buf.set_arg(0, memoryview(x))
        buf.set_res(0, memoryview(out))
        trigger()
        return out if isinstance(shape, int) else out.reshape(shape[::-1]).T
    return call


def build_methods(name, n, mode, mods, notes, checkers):
    """{column: zero-argument callable} for one row; ``checkers`` gets the callables whose
    result to compare instead (where a method's output is not the dense derivative)."""
    import dualtape
    p = P.make(name, n)
    f, x = p.f, p.x0.copy()
    methods = {}
    if p.kind == "grad":
        g = dualtape.grad(f)
        methods["dualtape"] = lambda: g(x)
    else:
        jac = dualtape.jacobian(f, mode=mode)
        methods["dualtape"] = lambda: jac(x)
    methods["numpy f"] = lambda: f(x)

    if "jax" in mods:
        jax = mods["jax"]
        pj = P.make(name, n, P.jax_ns())
        tr = jax.grad if p.kind == "grad" else (jax.jacfwd if mode == "forward" else jax.jacrev)
        jf = jax.jit(tr(pj.f))
        methods["jax"] = lambda: np.asarray(jf(x).block_until_ready())

    if "autograd" in mods and not (p.kind == "jac" and mode == "forward"):
        ag = mods["autograd"]
        pa = P.make(name, n, P.autograd_ns())
        af = ag.grad(pa.f) if p.kind == "grad" else ag.jacobian(pa.f)
        methods["autograd"] = lambda: af(x)

    if "torch" in mods:
        torch = mods["torch"]
        pt = P.make(name, n, P.torch_ns())
        if p.kind == "grad":
            def tgrad():
                xt = torch.from_numpy(x).requires_grad_(True)
                pt.f(xt).backward()
                return xt.grad.numpy()
            methods["torch"] = tgrad
        else:
            tj = (torch.func.jacfwd if mode == "forward" else torch.func.jacrev)(pt.f)
            methods["torch"] = lambda: tj(torch.from_numpy(x)).numpy()

    if "casadi" in mods and n <= CASADI_MAX[name]:
        ca = mods["casadi"]
        pc = P.make(name, n, P.casadi_ns())
        sym = ca.SX if n <= CASADI_SX_MAX[name] else ca.MX
        t0 = time.perf_counter()
        xs = sym.sym("x", x.size)
        expr = pc.f(xs)
        if p.kind == "grad":
            G = ca.Function("g", [xs], [ca.gradient(expr, xs)])
        else:
            Js = ca.jacobian(expr, xs)
            G = ca.Function("J", [xs], [ca.densify(Js)])
            Gs = ca.Function("Js", [xs], [Js])
            Gs(x)
        G(x)
        build = time.perf_counter() - t0
        notes.append(f"{p.label}{' ' + mode if p.kind == 'jac' else ''}: casadi "
                     f"{sym.__name__}, build (graph + derivative + Function + first call) "
                     f"{fmt_time(build)}")
        methods["casadi"] = casadi_call(G, x, x.size if p.kind == "grad" else (x.size, x.size))
        if p.kind == "jac":
            nnz = Gs.sparsity_out(0).nnz()
            methods["casadi sparse"] = casadi_call(Gs, x, nnz)
            checkers["casadi sparse"] = lambda: Gs(x).full()

    t_f = min(timeit_once(methods["numpy f"]) for _ in range(3))
    est = 2 * x.size * (t_f + 2e-6)
    if est < FD_BUDGET:
        methods["fd"] = ((lambda: central_fd_grad(f, x)) if p.kind == "grad"
                         else (lambda: central_fd_jac(f, x)))
    return p, methods


def timeit_once(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def check(p, methods, checkers):
    """Max relative difference of each method's derivative to dualtape's."""
    ref = np.asarray(methods["dualtape"]())
    scale = max(1.0, float(np.abs(ref).max()))
    out = {}
    for k, fn in methods.items():
        if k in ("dualtape", "numpy f"):
            continue
        v = checkers.get(k, fn)()
        v = np.asarray(v).reshape(ref.shape)
        out[k] = float(np.abs(v - ref).max()) / scale
    return out


# ---------------------------------------------------------------------------- dualtape detail

def tape_detail(p, repeats):
    """Record time, Tape.gradient replay time, instructions and bytes for one problem."""
    import dualtape
    f, x = p.f, p.x0
    tp = dualtape.tape(f, x)
    if p.kind == "grad":
        replay = lambda: tp.gradient(x)       # noqa: E731
    else:
        replay = lambda: tp.jacobian(x)       # noqa: E731
    med, _ = interleaved_medians({"record": lambda: dualtape.tape(f, x), "replay": replay},
                              repeats, target=2e-3, budget=3.0)
    return {"record": med["record"], "replay": med["replay"], "len": len(tp),
            "nbytes": tp.nbytes, "per_elem": tp.nbytes / x.size}


# ---------------------------------------------------------------------------- fresh process

FRESH_DUALTAPE = """
import sys, time
t0 = time.perf_counter()
import numpy as np, dualtape
t1 = time.perf_counter()
sys.path.insert(0, {here!r})
import problems as P
p = P.make({name!r}, {n})
t2 = time.perf_counter()
d = dualtape.grad(p.f) if p.kind == "grad" else dualtape.jacobian(p.f, mode="reverse")
d(p.x0)
t3 = time.perf_counter()
print(t1 - t0, t3 - t2)
"""

FRESH_PEER = {
    "jax": """
import sys, time
t0 = time.perf_counter()
import numpy as np, jax
jax.config.update("jax_enable_x64", True)
t1 = time.perf_counter()
sys.path.insert(0, {here!r})
import problems as P
p = P.make({name!r}, {n}, P.jax_ns())
t2 = time.perf_counter()
np.asarray(jax.jit(jax.grad(p.f))(p.x0).block_until_ready())
t3 = time.perf_counter()
print(t1 - t0, t3 - t2)
""",
    "torch": """
import sys, time
t0 = time.perf_counter()
import numpy as np, torch
t1 = time.perf_counter()
sys.path.insert(0, {here!r})
import problems as P
p = P.make({name!r}, {n}, P.torch_ns())
t2 = time.perf_counter()
xt = torch.from_numpy(p.x0).requires_grad_(True)
p.f(xt).backward()
xt.grad.numpy()
t3 = time.perf_counter()
print(t1 - t0, t3 - t2)
""",
    "autograd": """
import sys, time
t0 = time.perf_counter()
import numpy as np, autograd
t1 = time.perf_counter()
sys.path.insert(0, {here!r})
import problems as P
p = P.make({name!r}, {n}, P.autograd_ns())
t2 = time.perf_counter()
autograd.grad(p.f)(p.x0)
t3 = time.perf_counter()
print(t1 - t0, t3 - t2)
""",
    "casadi": """
import sys, time
t0 = time.perf_counter()
import numpy as np, casadi as ca
t1 = time.perf_counter()
sys.path.insert(0, {here!r})
import problems as P
p = P.make({name!r}, {n}, P.casadi_ns())
t2 = time.perf_counter()
xs = ca.SX.sym("x", p.x0.size)
G = ca.Function("g", [xs], [ca.gradient(p.f(xs), xs)])
G(p.x0).full()
t3 = time.perf_counter()
print(t1 - t0, t3 - t2)
""",
}


def fresh(code, runs):
    """Median over ``runs`` fresh processes of (import, first derivative, whole process)."""
    res = []
    for _ in range(runs):
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             cwd=HERE, timeout=600,   # not the repo root: "" on sys.path
                             env=dict(os.environ, PYTHONPATH=ROOT))  # this dualtape
        wall = time.perf_counter() - t0
        if out.returncode != 0:
            return None, out.stderr.strip().splitlines()[-1][:200]
        imp, first = map(float, out.stdout.split()[-2:])
        res.append((imp, first, wall))
    return tuple(statistics.median(r[i] for r in res) for i in range(3)), None


# ---------------------------------------------------------------------------- main

def rows_for(quick, only):
    sizes = dict(P.SIZES)
    if quick:
        sizes = {"rosen": [10, 1000, 100_000], "mlp": [1000], "scalar_loop": [4],
                 "logistic": [P.LOGISTIC_FEATURES], "brusselator": [100]}
    rows = []
    for name, ns in sizes.items():
        if only and name not in only:
            continue
        for n in ns:
            if name == "brusselator":
                rows += [(name, n, "forward"), (name, n, "reverse")]
            else:
                rows.append((name, n, None))
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer sizes and rounds")
    ap.add_argument("--only", default="", help="comma-separated problem names")
    ap.add_argument("--peers", default=",".join(PEERS), help="comma-separated peers to try")
    ap.add_argument("--no-fresh", action="store_true", help="skip the fresh-process runs")
    ap.add_argument("--out", default="", help="also write the Markdown report to this file")
    ap.add_argument("--json", default="", help="also write the results as JSON to this file")
    ap.add_argument("--compiled", action="store_true",
                    help="the compiled tier's table (interpreter, compiled on 1 and 2 threads, "
                    "hand-written Numba, jax) instead of the peer comparison")
    ap.add_argument("--plot", default="", help="draw the ratios into this image (matplotlib, "
                    "the optional extra 'plot'), e.g. docs/img/compare.png")
    args = ap.parse_args(argv)
    only = [s for s in args.only.split(",") if s]
    repeats = 7 if args.quick else 21
    target = 1e-3 if args.quick else 2e-3
    budget = 2.0 if args.quick else 8.0

    import dualtape
    import numba
    mods, absent = load_peers([s for s in args.peers.split(",") if s])
    lines = []

    def emit(s=""):
        print(s, flush=True)
        lines.append(s)

    versions = [f"dualtape {dualtape.__version__}", f"numpy {np.__version__}",
                f"numba {numba.__version__}", f"python {sys.version.split()[0]}"]
    for k, m in mods.items():
        try:
            from importlib.metadata import version
            versions.append(f"{k} {version(k)}")
        except Exception:
            versions.append(f"{k} {getattr(m, '__version__', '?')}")
    emit("# dualtape vs peers (one run, interleaved; median per call; "
         "[ratio] = peer time / dualtape time)")
    emit()
    emit(f"dualtape from {os.path.dirname(dualtape.__file__)}.")
    threads = ", ".join(f"{k}={os.environ.get(k)}" for k in THREAD_ENV)
    if "torch" in mods:
        threads += f", torch threads {mods['torch'].get_num_threads()}"
    emit(f"Threads: {threads}; dualtape's sweeps are single-threaded.")
    emit(f"Versions: {', '.join(versions)}. Cores: {os.cpu_count()}. "
         f"Load average at start: {', '.join(f'{v:.2f}' for v in os.getloadavg())}.")
    emit("Peers run: " + (", ".join(mods) or "none")
         + ("; absent: " + "; ".join(f"{k} ({v})" for k, v in absent.items())
            if absent else ""))
    emit()

    if args.compiled:
        compiled_section(mods, args.quick, repeats, target, budget, emit)
        if args.out:
            with open(args.out, "w") as fh:
                fh.write("\n".join(lines) + "\n")
        return 0

    notes, checks, results, details = [], [], [], []
    for name, n, mode in rows_for(args.quick, only):
        try:
            checkers = {}
            p, methods = build_methods(name, n, mode, mods, notes, checkers)
        except Exception as e:
            emit(f"<!-- {name} n={n}: setup failed: {type(e).__name__}: {e} -->")
            results.append((f"{name} n={n}", None, str(e)))
            continue
        label = p.label + (f" jac {mode}" if p.kind == "jac" else " grad")
        try:
            checks.append((label, check(p, methods, checkers)))
            med, rounds = interleaved_medians(methods, repeats, target, budget)
        except Exception as e:
            results.append((label, None, f"{type(e).__name__}: {e}"))
            print(f"{label}: FAILED {type(e).__name__}: {e}", flush=True)
            continue
        results.append((label, med, rounds))
        print(f"{label}: " + ", ".join(f"{k} {fmt_time(v)}" for k, v in med.items())
              + f" ({rounds} rounds)", flush=True)
        if mode != "forward":
            try:
                details.append((label, tape_detail(p, repeats)))
            except Exception as e:
                details.append((label, f"{type(e).__name__}: {e}"))

    emit()
    emit("## Derivative time: median per call [peer / dualtape]")
    emit()
    emit("| problem | " + " | ".join(COLUMNS) + " | rounds |")
    emit("|---" * (len(COLUMNS) + 2) + "|")
    for label, med, rounds in results:
        if med is None:
            emit(f"| {label} | FAILED: {rounds} |" + " |" * len(COLUMNS))
            continue
        ref = med["dualtape"]
        cells = []
        for c in COLUMNS:
            if c not in med:
                cells.append("-")
            elif c == "dualtape":
                cells.append(f"**{fmt_time(med[c])}**")
            else:
                cells.append(f"{fmt_time(med[c])} [{med[c] / ref:.2f}]")
        emit(f"| {label} | " + " | ".join(cells) + f" | {rounds} |")
    emit()
    emit("`numpy f` is f alone (no derivative): its ratio below 1 says how many times f's "
         "cost the derivative takes (dualtape / numpy f = 1 / ratio).")
    emit("`-`: not run (peer absent, no such mode, CasADi build too costly, finite "
         "differences slower than ~0.3 s).")

    emit()
    emit("## dualtape: record time, replay through the Tape, tape size")
    emit()
    emit("| problem | record `dualtape.tape(f, x)` | replay `tp.gradient` / `tp.jacobian` "
         "| instructions | tape bytes | bytes per input element |")
    emit("|---|---|---|---|---|---|")
    for label, d in details:
        if isinstance(d, str):
            emit(f"| {label} | FAILED: {d} | | | | |")
        else:
            emit(f"| {label} | {fmt_time(d['record'])} | {fmt_time(d['replay'])} | {d['len']} "
                 f"| {d['nbytes']:,} | {d['per_elem']:.1f} |")

    emit()
    emit("## Agreement with dualtape (max |peer - dualtape| / max(1, max |dualtape|))")
    emit()
    for label, c in checks:
        emit(f"- {label}: " + ", ".join(f"{k} {v:.1e}" for k, v in c.items()))
    if notes:
        emit()
        emit("## CasADi builds")
        emit()
        for s in notes:
            emit(f"- {s}")

    if not args.no_fresh:
        emit()
        emit("## First call in a fresh process (median of 3 `python -c` runs after one "
             "warm-up run; Numba cache warm)")
        emit()
        emit("| problem | tool | import | first derivative (record + sweep / trace + "
             "compile) | import + first | whole process (incl. interpreter start) |")
        emit("|---|---|---|---|---|---|")
        fresh_rows = [("rosen", 1000)]
        if not args.quick:
            fresh_rows += [("rosen", 10), ("mlp", 1000), ("scalar_loop", 4),
                           ("logistic", P.LOGISTIC_FEATURES), ("brusselator", 1000)]
        fresh_rows = [r for r in fresh_rows if not only or r[0] in only]
        for name, n in fresh_rows:
            tools = [("dualtape", FRESH_DUALTAPE)]
            if (name, n) == ("rosen", 1000):
                tools += [(k, FRESH_PEER[k]) for k in PEERS if k in mods]
            for tool, code in tools:
                code = code.format(here=HERE, name=name, n=n)
                if tool == "dualtape":
                    fresh(code, 1)          # warm the Numba cache for this problem
                r, err = fresh(code, 3)
                label = P.make(name, n).label if name != "logistic" else "logistic"
                if r is None:
                    emit(f"| {label} | {tool} | FAILED: {err} | | | |")
                else:
                    emit(f"| {label} | {tool} | {fmt_time(r[0])} | {fmt_time(r[1])} | "
                         f"{fmt_time(r[0] + r[1])} | {fmt_time(r[2])} |")
    if args.out:
        with open(args.out, "w") as fh:
            fh.write("\n".join(lines) + "\n")
    machine = {"cores": os.cpu_count(), "platform": platform.platform(),
               "processor": platform.processor() or platform.machine(),
               "versions": versions, "threads": threads}
    if args.json:
        write_json(args.json, machine, results, details)
    if args.plot:
        plot(args.plot, results, machine)
    return 0


# ---------------------------------------------------------------------------- compiled tier

COMPILED_ROWS = [("rosen", 1000, "grad"), ("rosen", 10_000, "grad"), ("rosen", 100_000, "grad"),
                 ("rosen", 1_000_000, "grad"), ("mlp", 100_000, "grad"),
                 ("logistic", P.LOGISTIC_FEATURES, "grad"), ("rosen", 100_000, "hvp")]
COMPILED_COLUMNS = ["interpreter", "compiled 1 thread", "compiled 2 threads", "hand @njit",
                    "jax"]

FRESH_COMPILED = """
import sys, time
t0 = time.perf_counter()
import numba
t1 = time.perf_counter()
import numpy as np, dualtape
sys.path.insert(0, {here!r})
import problems as P
p = P.make("rosen", 1000)
tp = dualtape.tape(p.f, p.x0)
t2 = time.perf_counter()
tp.gradient(p.x0)           # Numba's one-time setup and the interpreter's kernels
t3 = time.perf_counter()
ct = tp.compile()
ct.gradient(p.x0)
t4 = time.perf_counter()
print(t1 - t0, t3 - t2, t4 - t3)
"""


def compiled_section(mods, quick, repeats, target, budget, emit):
    """The compiled tier against the interpreter, a hand-written Numba gradient and JAX."""
    import tempfile

    import numba

    import dualtape
    rows = COMPILED_ROWS[:3] + COMPILED_ROWS[-1:] if quick else COMPILED_ROWS
    hand = P.rosen_grad_numba()
    emit("## The compiled tier: median per call [time / compiled on 2 threads]")
    emit()
    emit(f"Numba threading layer: {numba.config.THREADING_LAYER}, "
         f"{numba.config.NUMBA_NUM_THREADS} threads available.")
    emit()
    emit("| problem | " + " | ".join(COMPILED_COLUMNS) + " | compile (first call) |")
    emit("|---" * (len(COMPILED_COLUMNS) + 2) + "|")
    full = numba.config.NUMBA_NUM_THREADS

    def threads(k, fn):
        def call():
            numba.set_num_threads(k)
            return fn()
        return call

    for name, n, what in rows:
        p = P.make(name, n)
        x = p.x0.copy()
        v = np.cos(np.arange(x.size))
        if what == "grad":
            interp = dualtape.grad(p.f)
            comp = dualtape.grad(p.f, compile=True)
            ref = lambda: interp(x)               # noqa: E731
            run = lambda: comp(x)                 # noqa: E731
        else:
            interp = dualtape.hvp(p.f)
            comp = dualtape.hvp(p.f, compile=True)
            ref = lambda: interp(x, v)            # noqa: E731
            run = lambda: comp(x, v)              # noqa: E731
        t0 = time.perf_counter()
        run()
        first = time.perf_counter() - t0
        methods = {"interpreter": ref, "compiled 1 thread": threads(1, run),
                   "compiled 2 threads": threads(full, run)}
        if name == "rosen" and what == "grad":
            methods["hand @njit"] = lambda: hand(x)
        if "jax" in mods:
            jax = mods["jax"]
            pj = P.make(name, n, P.jax_ns())
            if what == "grad":
                jf = jax.jit(jax.grad(pj.f))
                methods["jax"] = lambda: np.asarray(jf(x).block_until_ready())
            else:
                jh = jax.jit(lambda a, b: jax.jvp(jax.grad(pj.f), (a,), (b,))[1])
                methods["jax"] = lambda: np.asarray(jh(x, v).block_until_ready())
        scale = max(1.0, float(np.abs(ref()).max()))
        errs = {k: float(np.abs(np.asarray(fn()) - ref()).max()) / scale
                for k, fn in methods.items()}
        med, rounds = interleaved_medians(methods, repeats, target, budget)
        numba.set_num_threads(full)
        base = med["compiled 2 threads"]
        cells = [f"{fmt_time(med[c])} [{med[c] / base:.2f}]" if c in med else "-"
                 for c in COMPILED_COLUMNS]
        label = f"{p.label} {what}"
        emit(f"| {label} | " + " | ".join(cells) + f" | {fmt_time(first)} |")
        print(f"  {label}: max relative difference to the interpreter "
              + ", ".join(f"{k} {e:.1e}" for k, e in errs.items()), flush=True)
    emit()
    emit("compile (first call): recording + generating + Numba compiling the structure's "
         "gradient entry (a warm disk cache makes it a load).")
    # the cache hit in a fresh process, against a cold cache directory
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, PYTHONPATH=ROOT, DUALTAPE_CACHE_DIR=cache)
        res = []
        for _ in range(3):
            out = subprocess.run([sys.executable, "-c", FRESH_COMPILED.format(here=HERE)],
                                 capture_output=True, text=True, cwd=HERE, env=env,
                                 timeout=600)
            if out.returncode != 0:
                emit(f"fresh process: FAILED {out.stderr.strip().splitlines()[-1][:200]}")
                return
            res.append(tuple(map(float, out.stdout.split()[-3:])))
    emit()
    emit(f"Fresh process, Rosenbrock n = 1000: `import numba` {fmt_time(res[0][0])}; first "
         f"interpreted gradient (Numba's one-time setup, kernels from their cache) "
         f"{fmt_time(res[1][1])}; then `tp.compile()` + first compiled gradient: "
         f"{fmt_time(res[0][2])} with an empty cache, {fmt_time(res[1][2])} and "
         f"{fmt_time(res[2][2])} from the cache.")


def write_json(path, machine, results, details):
    """Medians (seconds) and ratios (peer / dualtape) per row, record times, machine."""
    rows = []
    for label, med, rounds in results:
        if med is None:
            rows.append({"problem": label, "failed": str(rounds)})
            continue
        rows.append({"problem": label, "median_s": med, "rounds": rounds,
                     "ratio": {k: v / med["dualtape"] for k, v in med.items()
                               if k != "dualtape"}})
    rec = {label: d for label, d in details if not isinstance(d, str)}
    with open(path, "w") as fh:
        json.dump({"machine": machine, "rows": rows, "dualtape_tapes": rec}, fh, indent=1)


def plot(path, results, machine):
    """Bars of peer time / dualtape time per problem (log scale; above 1: dualtape is
    faster)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("--plot needs matplotlib (pip install 'dualtape[plot]'); no plot drawn")
        return
    rows = [(label, med) for label, med, _ in results if med is not None]
    peers = [c for c in COLUMNS[1:] if any(c in med for _, med in rows)]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(rows)), 4.5))
    width = 0.8 / max(len(peers), 1)
    for j, peer in enumerate(peers):
        xs = [i + (j - (len(peers) - 1) / 2) * width for i, (_, med) in enumerate(rows)
              if peer in med]
        ys = [med[peer] / med["dualtape"] for _, med in rows if peer in med]
        ax.bar(xs, ys, width, label=peer)
    ax.axhline(1.0, color="black", lw=0.8)
    ax.set_yscale("log")
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([label for label, _ in rows], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("peer time / dualtape time (> 1: dualtape faster)")
    ax.set_title(f"dualtape vs peers, median per call ({machine['cores']} cores)",
                 fontsize=10)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"plot written to {path}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
