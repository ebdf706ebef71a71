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
