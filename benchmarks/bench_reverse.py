"""asv benchmarks: dualtape's reverse mode (and the Brusselator Jacobian in both modes) on
the design brief's problems (``benchmarks/problems.py``).

Every ``setup`` records the tape and runs the derivative once, so recording, Numba
compilation and kernel loading are excluded from the ``time_*`` of replayed derivatives;
``time_record`` times the recording alone. ``time_numpy_f`` times f alone (plain NumPy, no
derivative), the yardstick of the brief's ratios. ``track_*`` report tape size.

    OPENBLAS_NUM_THREADS=1 asv run --python=same --quick   # check that the suite runs
    OPENBLAS_NUM_THREADS=1 asv run --python=same           # measure (results under .asv/)

BLAS is made single-threaded: on a 2-core machine OpenBLAS's idle-spinning threads make
NumPy's f and dualtape's matrix products jump by 10x and more from run to run (see
``compare.py``). asv's runner has loaded NumPy before this module, so setting
OPENBLAS_NUM_THREADS here is too late: run ``OPENBLAS_NUM_THREADS=1 asv run ...``, or have
``threadpoolctl`` installed, which this module then uses.
"""
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")   # effective only if NumPy is not loaded

import numpy as np  # noqa: E402

import dualtape  # noqa: E402

try:
    from threadpoolctl import threadpool_limits
    threadpool_limits(1, user_api="blas")
except ImportError:
    pass

try:
    from . import problems as P
except ImportError:                # imported as a top-level module (python -m, pytest)
    import problems as P


def _tape(p):
    tp = dualtape.tape(p.f, p.x0)
    if p.kind == "grad":
        tp.gradient(p.x0)
    else:
        tp.jacobian(p.x0)
    return tp


class _Grad:
    """Shared body: a scalar problem's gradient by the cached tape, f alone, recording."""
    problem = None
    timeout = 300

    def setup(self, n):
        self.p = P.make(self.problem, n)
        self.x = self.p.x0.copy()
        self.g = dualtape.grad(self.p.f)
        self.g(self.x)                 # records the tape and loads/compiles the kernels
        self.g(self.x)                 # the replay path
        self.tp = _tape(self.p)

    def time_grad(self, n):
        """Replayed gradient through ``dualtape.grad`` (cached tape)."""
        self.g(self.x)

    def time_tape_gradient(self, n):
        """Replayed gradient through ``Tape.gradient``."""
        self.tp.gradient(self.x)

    def time_numpy_f(self, n):
        """f alone, plain NumPy."""
        self.p.f(self.x)

    def time_record(self, n):
        """``dualtape.tape(f, x)``: recording alone."""
        dualtape.tape(self.p.f, self.x)

    def peakmem_grad(self, n):
        self.g(self.x)

    def track_bytes_per_element(self, n):
        """Tape bytes (arrays + value buffer) per input element."""
        return self.tp.nbytes / self.x.size
    track_bytes_per_element.unit = "bytes"

    def track_instructions(self, n):
        return len(self.tp)
    track_instructions.unit = "instructions"


class RosenbrockGrad(_Grad):
    """1. Chained Rosenbrock gradient, n = 10 .. 10^6."""
    problem = "rosen"
    params = P.SIZES["rosen"]
    param_names = ["n"]


class MLPGrad(_Grad):
    """2. Two-layer tanh MLP loss, ~10^3 and ~10^5 parameters (batch 64)."""
    problem = "mlp"
    params = P.SIZES["mlp"]
    param_names = ["params"]


class ScalarLoopGrad(_Grad):
    """4. The 50-step scalar recurrence ``s = s * x[i % n] + np.sin(s)``."""
    problem = "scalar_loop"
    params = P.SIZES["scalar_loop"]
    param_names = ["n"]


class LogisticGrad(_Grad):
    """5. Logistic regression NLL, 10^4 samples x 100 features."""
    problem = "logistic"
    params = P.SIZES["logistic"]
    param_names = ["features"]


class BrusselatorJacobian:
    """3. Brusselator right-hand side R^n -> R^n: dense Jacobian through
    ``dualtape.jacobian(f, mode=...)``, forward, reverse and ``"auto"`` (which one auto picks
    is part of its cost)."""
    params = (P.SIZES["brusselator"], ["forward", "reverse", "auto"])
    param_names = ["n", "mode"]
    timeout = 300

    def setup(self, n, mode):
        self.p = P.make("brusselator", n)
        self.x = self.p.x0.copy()
        self.jac = dualtape.jacobian(self.p.f, mode=mode)
        self.jac(self.x)
        self.jac(self.x)
        self.tp = _tape(self.p)

    def time_jacobian(self, n, mode):
        self.jac(self.x)

    def time_numpy_f(self, n, mode):
        self.p.f(self.x)

    def time_record(self, n, mode):
        dualtape.tape(self.p.f, self.x)

    def peakmem_jacobian(self, n, mode):
        self.jac(self.x)

    def track_bytes_per_element(self, n, mode):
        return self.tp.nbytes / self.x.size
    track_bytes_per_element.unit = "bytes"

    def track_instructions(self, n, mode):
        return len(self.tp)
    track_instructions.unit = "instructions"


class GradOverF:
    """The brief's ratio, measured in one process: replayed gradient time / f time
    (medians of interleaved batches). Below 3 is the bar for Rosenbrock at 10^3 and 10^5."""
    params = ["rosen 1000", "rosen 100000", "mlp 1000", "mlp 100000", "logistic 100"]
    param_names = ["problem"]
    timeout = 300

    def setup(self, case):
        name, n = case.split()
        self.p = P.make(name, int(n))
        self.x = self.p.x0.copy()
        self.g = dualtape.grad(self.p.f)
        self.g(self.x)

    def track_grad_over_f(self, case):
        import time
        f, g, x = self.p.f, self.g, self.x
        k = 1
        while True:                       # batches of about 5 ms
            t0 = time.perf_counter()
            for _ in range(k):
                f(x)
            if time.perf_counter() - t0 > 5e-3 or k > 10**5:
                break
            k *= 2
        tg, tf = [], []
        for _ in range(11):
            t0 = time.perf_counter()
            for _ in range(k):
                g(x)
            t1 = time.perf_counter()
            for _ in range(k):
                f(x)
            t2 = time.perf_counter()
            tg.append(t1 - t0)
            tf.append(t2 - t1)
        return float(np.median(tg) / np.median(tf))
    track_grad_over_f.unit = "ratio"


class Sweeps:
    """One kernel sweep alone over a recorded tape (no Python wrapper): the interpreter's
    per-instruction cost where instructions are short. Divide by ``track_instructions`` for
    the time per instruction; the scalar loop's instructions have one element (the scalar
    path of the sweeps), Brusselator's 50."""
    params = (["scalar_loop 4", "rosen 10", "brusselator 100"],
              ["forward", "reverse", "tangent"])
    param_names = ["problem", "sweep"]

    def setup(self, case, sweep):
        name, n = case.split()
        p = P.make(name, int(n))
        self.tp = tp = dualtape.tape(p.f, p.x0)
        K = dualtape.kernels
        self.code, self.prog, self.w = K.program(tp.prog), tp.prog, tp.workspace()
        self.w[:tp.nx] = p.x0
        self.wt = tp.tangent_workspace(1)[0]
        self.wt[:tp.nx] = 1.0
        self.adj = int(tp.prog[K.H_TOTAL] + tp.prog[K.H_OUT])
        K.forward(self.code, self.prog, self.w)
        self.time_sweep(case, sweep)

    def time_sweep(self, case, sweep):
        K = dualtape.kernels
        if sweep == "forward":
            K.forward(self.code, self.prog, self.w)
        elif sweep == "reverse":
            self.w[self.adj:self.adj + self.tp.out_size] = 1.0
            K.reverse(self.code, self.prog, self.w)
        else:
            K.tangent(self.code, self.prog, self.w, self.wt, 1)

    def track_instructions(self, case, sweep):
        return len(self.tp)


class BrusselatorSparseJacobian:
    """``jacobian(f, sparse=True)`` replayed: compressed tangent sweeps and the CSR build."""
    params = P.SIZES["brusselator"]
    param_names = ["n"]

    def setup(self, n):
        p = P.make("brusselator", n)
        self.x = p.x0
        self.jac = dualtape.jacobian(p.f, sparse=True)
        self.jac(self.x)

    def time_sparse_jacobian(self, n):
        self.jac(self.x)
