"""asv benchmarks: gradients and Hessians through numpy.linalg (a Gaussian negative
log-likelihood with a log-determinant and a solve), against NumPy's value alone.

    OPENBLAS_NUM_THREADS=1 asv run --python=same --quick --bench Linalg
"""
import numpy as np

import dualtape


def nll(a, b):
    return 0.5 * b @ np.linalg.solve(a, b) + 0.5 * np.linalg.slogdet(a)[1]


class LinalgGradient:
    """grad and hessian of nll with respect to an (n, n) covariance."""
    params = [10, 50]
    param_names = ["n"]
    timeout = 300

    def setup(self, n):
        rng = np.random.default_rng(0)
        m = rng.normal(size=(n, n))
        self.a = m @ m.T + n * np.eye(n)
        self.b = rng.normal(size=n)
        self.g = dualtape.grad(nll)
        self.g(self.a, self.b)
        self.logdet = dualtape.grad(lambda a: np.linalg.slogdet(a)[1])
        self.logdet(self.a)
        if n <= 10:
            self.h = dualtape.hessian(nll)
            self.h(self.a, self.b)

    def time_numpy_value(self, n):
        nll(self.a, self.b)

    def time_grad(self, n):
        self.g(self.a, self.b)

    def time_grad_slogdet(self, n):
        self.logdet(self.a)

    def time_hessian(self, n):
        if n <= 10:
            self.h(self.a, self.b)
