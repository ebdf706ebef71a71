"""asv benchmarks of the wider NumPy surface: gradients through running sums and
products (one ``cumsum`` / ``cumprod`` instruction each) and NumPy alone.

    OPENBLAS_NUM_THREADS=1 asv run --python=same --quick --bench Cumulative
"""
import numpy as np

import dualtape


def _cumsum_loss(x):
    return np.sum(np.cumsum(x) ** 2)


def _cumprod_loss(x):
    return np.sum(np.cumprod(1.0 + 1e-3 * x))


class Cumulative:
    """Gradient of sum(cumsum(x)**2) and sum(cumprod(1 + x/1000)); NumPy f alone."""
    params = [10, 1_000, 100_000]
    param_names = ["n"]
    timeout = 300

    def setup(self, n):
        self.x = np.random.default_rng(0).normal(size=n)
        self.gs = dualtape.grad(_cumsum_loss)
        self.gp = dualtape.grad(_cumprod_loss)
        self.gs(self.x)
        self.gp(self.x)

    def time_grad_cumsum(self, n):
        self.gs(self.x)

    def time_grad_cumprod(self, n):
        self.gp(self.x)

    def time_numpy_cumsum_f(self, n):
        _cumsum_loss(self.x)
