"""asv benchmarks: the tape optimiser (record and optimise times, instruction counts) and
the strip-mined forward sweep against whole-array instructions.

``time_record`` / ``time_optimize`` time a recording without the optimiser and the
optimiser alone on that recording; ``track_instructions_*`` report the counts before and
after. ``time_forward`` runs ``kernels.forward_strips`` on a Rosenbrock tape with
``strip = 0`` (every instruction over whole arrays) and ``kernels.STRIP`` (runs of
elementwise instructions strip by strip), the same compiled kernel, so the two differ in
nothing but the order of the loops.

    OPENBLAS_NUM_THREADS=1 asv run --python=same --bench bench_optimize
"""
import numpy as np

import dualtape
from dualtape import kernels as K
from dualtape.optimize import optimize
from dualtape.tapes import record

try:
    from . import problems as P
except ImportError:                # imported as a top-level module (python -m, pytest)
    import problems as P

_PROBLEMS = [("rosen", 1000), ("mlp", 1000), ("scalar_loop", 50), ("logistic", 100)]


class Optimize:
    """Recording (raw) and the optimiser pass on the benchmark problems' tapes."""
    params = [[name for name, _ in _PROBLEMS]]
    param_names = ["problem"]

    def setup(self, name):
        p = P.make(name, dict(_PROBLEMS)[name])
        self.p = p
        self.raw = record(p.f, (p.x0,), (0,), optimize=False)

    def time_record(self, name):
        record(self.p.f, (self.p.x0,), (0,), optimize=False)

    def time_optimize(self, name):
        optimize(self.raw.prog, self.raw.consts)

    def track_instructions_recorded(self, name):
        return len(self.raw)

    def track_instructions_optimised(self, name):
        return optimize(self.raw.prog, self.raw.consts)[2].after


class StripMining:
    """Rosenbrock's forward sweep: whole-array instructions vs strips, and the gradient."""
    params = [[1000, 10_000, 100_000, 1_000_000], [0, K.STRIP]]
    param_names = ["n", "strip"]
    timeout = 300

    def setup(self, n, strip):
        p = P.make("rosen", n)
        self.tp = dualtape.tape(p.f, p.x0)
        self.prog = self.tp.prog
        self.code = K.program(self.prog)
        self.w = self.tp.workspace()
        self.w[:n] = p.x0
        K.forward_strips(self.code, self.prog, self.w, strip)

    def time_forward(self, n, strip):
        K.forward_strips(self.code, self.prog, self.w, strip)
