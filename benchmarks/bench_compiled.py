"""asv benchmarks: the compiled tier (``Tape.compile``, ``grad(f, compile=True)``) against
the interpreter and a hand-written ``@njit`` Rosenbrock gradient, on 1 thread and on all.

Every ``setup`` compiles (or loads from the disk cache) and runs the derivative once, so
compilation is excluded from the ``time_*``. ``benchmarks/compare.py --compiled`` measures
the same rows interleaved in one run, with JAX, and reports compile and cache-load times.

    OPENBLAS_NUM_THREADS=1 asv run --python=same --bench Compiled
"""
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numba  # noqa: E402
import numpy as np  # noqa: E402

import dualtape  # noqa: E402

try:
    from . import problems as P
except ImportError:                # imported as a top-level module
    import problems as P

ALL = numba.config.NUMBA_NUM_THREADS


class _Compiled:
    problem = None
    what = "grad"
    timeout = 600

    def setup(self, n):
        self.p = P.make(self.problem, n)
        self.x = self.p.x0.copy()
        self.v = np.cos(np.arange(self.x.size))
        if self.what == "grad":
            self.interp = dualtape.grad(self.p.f)
            self.comp = dualtape.grad(self.p.f, compile=True)
            self.args = (self.x,)
        elif self.what == "hessian":
            self.interp = dualtape.hessian(self.p.f)
            self.comp = dualtape.hessian(self.p.f, compile=True)
            self.args = (self.x,)
        elif self.what == "sparse_hessian":
            self.interp = dualtape.hessian(self.p.f, sparse=True)
            self.comp = dualtape.hessian(self.p.f, sparse=True, compile=True)
            self.args = (self.x,)
        else:
            self.interp = dualtape.hvp(self.p.f)
            self.comp = dualtape.hvp(self.p.f, compile=True)
            self.args = (self.x, self.v)
        self.interp(*self.args)
        self.comp(*self.args)

    def teardown(self, n):
        numba.set_num_threads(ALL)

    def time_interpreter(self, n):
        self.interp(*self.args)

    def time_compiled_1_thread(self, n):
        numba.set_num_threads(1)
        self.comp(*self.args)

    def time_compiled_all_threads(self, n):
        numba.set_num_threads(ALL)
        self.comp(*self.args)


class RosenbrockCompiledGrad(_Compiled):
    problem = "rosen"
    params = [1000, 10_000, 100_000, 1_000_000]
    param_names = ["n"]

    def setup(self, n):
        super().setup(n)
        self.hand = P.rosen_grad_numba()
        self.hand(self.x)

    def time_hand_numba(self, n):
        self.hand(self.x)


class MLPCompiledGrad(_Compiled):
    problem = "mlp"
    params = [100_000]
    param_names = ["n"]


class LogisticCompiledGrad(_Compiled):
    problem = "logistic"
    params = [P.LOGISTIC_FEATURES]
    param_names = ["features"]


class RosenbrockCompiledHvp(_Compiled):
    problem = "rosen"
    what = "hvp"
    params = [1000, 100_000]
    param_names = ["n"]


class LogisticCompiledHessian(LogisticCompiledGrad):
    what = "hessian"


class RosenbrockCompiledSparseHessian(RosenbrockCompiledHvp):
    what = "sparse_hessian"


_COMPILE_SCRIPT = """
import sys, time
sys.path.insert(0, {here!r})
import numpy as np, dualtape
import problems as P
p = P.make({name!r}, {n})
tp = dualtape.tape(p.f, p.x0)
tp.gradient(p.x0)               # Numba's one-time setup and the interpreter's kernels
t = time.perf_counter()
tp.compile().gradient(p.x0)
print(time.perf_counter() - t)
"""


class CompileTime:
    """Seconds from ``tp.compile()`` to the first compiled gradient, in a fresh process:
    with an empty cache directory (generating and compiling the structure), and again
    from that directory (loading it). Sizes from 32768 on add the parallel entry."""
    params = [["rosen-1000", "rosen-100000", "mlp-100000", "logistic-100"]]
    param_names = ["structure"]
    unit = "seconds"
    timeout = 600
    number = repeat = 1

    def _run(self, structure, cache):
        import subprocess
        import sys
        name, n = structure.split("-")
        here = os.path.dirname(os.path.abspath(__file__))
        env = dict(os.environ, DUALTAPE_CACHE_DIR=cache)
        out = subprocess.run([sys.executable, "-c", _COMPILE_SCRIPT.format(
            here=here, name=name, n=int(n))], env=env, capture_output=True, text=True,
            check=True)
        return float(out.stdout.split()[-1])

    def track_compile(self, structure):
        import tempfile
        with tempfile.TemporaryDirectory() as cache:
            return self._run(structure, cache)

    def track_cache_load(self, structure):
        import tempfile
        with tempfile.TemporaryDirectory() as cache:
            self._run(structure, cache)
            return self._run(structure, cache)
