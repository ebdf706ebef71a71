"""asv benchmarks: sparse Jacobians and Hessians by compressed sweeps, beside dense ones.

Brusselator Jacobian (n = 10^2 .. 10^4) and Rosenbrock Hessian (n = 10^3 .. 10^5),
``sparse=True`` (a CSR matrix) interpreted and with ``compile=True`` (the compiled tier's
fused tangent and forward-over-reverse sweeps), and dense where it fits (Jacobians
n <= 10^4, Hessians n <= 10^3). ``setup`` records the tape, detects and colors the pattern
and compiles the kernels (the compiled tier's module comes from the disk cache after the
first run); ``time_detect`` times the one-time detection and coloring on a fresh tape. The
peer comparison (CasADi, JAX) is ``benchmarks/sparse_compare.py``."""
import dualtape
from dualtape import sparse as S

try:
    from . import problems as P
except ImportError:                # imported as a top-level module
    import problems as P


class _Sparse:
    problem, what = None, None
    dense_max = 0
    timeout = 600

    def setup(self, n):
        p = P.make(self.problem, n)
        self.f, self.x = p.f, p.x0.copy()
        make = dualtape.hessian if self.what == "hessian" else dualtape.jacobian
        self.sparse = make(self.f, sparse=True)
        self.sparse(self.x)
        self.compiled = make(self.f, sparse=True, compile=True)
        self.compiled(self.x)
        self.dense = make(self.f) if n <= self.dense_max else None
        if self.dense is not None:
            self.dense(self.x)

    def time_sparse(self, n):
        self.sparse(self.x)

    def time_sparse_compiled(self, n):
        self.compiled(self.x)

    def time_dense(self, n):
        if self.dense is None:
            raise NotImplementedError("dense does not fit at this size")
        self.dense(self.x)

    def time_detect(self, n):
        tp = dualtape.tape(self.f, self.x)
        S.hessian_plan(tp) if self.what == "hessian" else S.jacobian_plan(tp)


class BrusselatorJacobian(_Sparse):
    problem, what, dense_max = "brusselator", "jacobian", 10_000
    params = [100, 1000, 10_000]
    param_names = ["n"]


class RosenbrockHessian(_Sparse):
    problem, what, dense_max = "rosen", "hessian", 1000
    params = [1000, 10_000, 100_000]
    param_names = ["n"]
