"""asv benchmarks: data-dependent values (sort, median, interp) replayed by a cached
``grad``, against the function alone in plain NumPy.

``setup`` records and runs the gradient once (recording and compilation excluded). The
random input changes the sort order from the recording point's, so the replay really
recomputes it.

    OPENBLAS_NUM_THREADS=1 asv run --python=same --bench bench_datadep
"""
import numpy as np

import dualtape

XP = np.linspace(-3.0, 3.0, 64)
FP = np.sin(XP)


def sorted_weights(x):
    return np.sum(np.sort(x) * np.linspace(0.0, 1.0, x.size))


def median_loss(x):
    return np.median(x) * np.sum(x)


def interp_loss(x):
    return np.sum(np.interp(x, XP, FP) ** 2)


class Datadep:
    params = ([sorted_weights, median_loss, interp_loss], [10, 1000, 100000])
    param_names = ["f", "n"]
    timeout = 300

    def setup(self, f, n):
        self.x = np.random.default_rng(0).normal(size=n)
        self.g = dualtape.grad(f)
        self.g(np.random.default_rng(1).normal(size=n))     # record at another order
        self.g(self.x)

    def time_grad(self, f, n):
        self.g(self.x)

    def time_numpy_f(self, f, n):
        f(self.x)
