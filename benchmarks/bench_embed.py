"""asv benchmarks: batched replay over many points, the @njit entry points called from
Python, and loading a saved tape (the validator's cost).

    OPENBLAS_NUM_THREADS=1 asv run --python=same --quick --bench Batch
"""
import os
import tempfile

import numpy as np

import dualtape
from dualtape import embed

try:
    from . import problems as P
except ImportError:                # imported as a top-level module (python -m, pytest)
    import problems as P

POINTS = 64


class BatchGradient:
    """Rosenbrock gradient at 64 points: one parallel batch against a Python loop."""
    params = [100, 10_000]
    param_names = ["n"]
    timeout = 300

    def setup(self, n):
        p = P.make("rosen", n)
        self.tp = dualtape.tape(p.f, p.x0)
        self.X = np.random.default_rng(0).normal(size=(POINTS, n))
        self.tp.gradient_batch(self.X)
        self.tp.gradient(self.X[0])

    def time_gradient_batch(self, n):
        self.tp.gradient_batch(self.X)

    def time_gradient_loop(self, n):
        for x in self.X:
            self.tp.gradient(x)

    def peakmem_gradient_batch(self, n):
        self.tp.gradient_batch(self.X)

    def track_loop_over_batch(self, n):
        import time
        best = {}
        for name, fn in (("batch", self.time_gradient_batch), ("loop", self.time_gradient_loop)):
            ts = []
            for _ in range(9):
                t0 = time.perf_counter()
                fn(n)
                ts.append(time.perf_counter() - t0)
            best[name] = np.median(ts)
        return float(best["loop"] / best["batch"])
    track_loop_over_batch.unit = "ratio"


class NopythonGradient:
    """embed.gradient called from Python (the call path of the @njit entry points)."""
    params = [10, 1000]
    param_names = ["n"]

    def setup(self, n):
        p = P.make("rosen", n)
        self.ntp = dualtape.tape(p.f, p.x0).nopython()
        self.x, self.g = p.x0.copy(), np.empty(n)
        embed.gradient(self.ntp, self.x, self.g)

    def time_embed_gradient(self, n):
        embed.gradient(self.ntp, self.x, self.g)


class LoadTape:
    """dualtape.load: reading and validating a saved tape (before any kernel runs)."""
    params = ["rosen 1000", "mlp 1000", "scalar_loop 4", "brusselator 1000"]
    param_names = ["problem"]

    def setup(self, case):
        name, n = case.split()
        p = P.make(name, int(n))
        self.dir = tempfile.mkdtemp()
        self.path = os.path.join(self.dir, "t.npz")
        dualtape.tape(p.f, p.x0).save(self.path)

    def time_load(self, case):
        dualtape.load(self.path)
