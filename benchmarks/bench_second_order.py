"""asv benchmarks: second derivatives on cached tapes (forward-over-reverse).

Dense Hessians of the chained Rosenbrock function (n = 10, 100, 1000) and of the logistic
regression negative log-likelihood (100 features), and Hessian-vector products of
Rosenbrock (n = 10^3, 10^5). ``setup`` records the tape and compiles the kernels."""
import numpy as np

import dualtape

try:
    from . import problems as P
except ImportError:                # imported as a top-level module
    import problems as P


class RosenbrockHessian:
    params = [10, 100, 1000]
    param_names = ["n"]
    timeout = 300

    def setup(self, n):
        self.x = P.make("rosen", n).x0.copy()
        self.h = dualtape.hessian(P.make("rosen", n).f)
        self.h(self.x)

    def time_hessian(self, n):
        self.h(self.x)


class RosenbrockHvp:
    params = [1000, 100000]
    param_names = ["n"]
    timeout = 300

    def setup(self, n):
        p = P.make("rosen", n)
        self.x = p.x0.copy()
        self.v = np.linspace(-1.0, 1.0, n)
        self.hv = dualtape.hvp(p.f)
        self.hv(self.x, self.v)

    def time_hvp(self, n):
        self.hv(self.x, self.v)


class LogisticHessian:
    timeout = 300

    def setup(self):
        p = P.make("logistic", P.LOGISTIC_FEATURES)
        self.x = p.x0.copy()
        self.h = dualtape.hessian(p.f)
        self.h(self.x)

    def time_hessian(self):
        self.h(self.x)
