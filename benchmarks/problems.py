"""The benchmark problems of the design brief (section 5), defined once.

Each problem is written against a small array namespace ``xp`` so that the *same* definition
runs on NumPy (what dualtape records and what "NumPy f alone" times), JAX, HIPS autograd,
PyTorch and CasADi. ``NUMPY`` is plain NumPy: the dualtape versions of the problems are
ordinary NumPy code (``np.sum``, ``np.roll``, ``np.stack(...).ravel()``, ``@``), nothing
dualtape-specific.

A problem is built by ``make(name, n, xp=NUMPY)`` and returns a :class:`Problem`: the
function ``f``, a fixed input ``x0`` (float64, seeded) and what is differentiated
(``kind`` = "grad" for a scalar f, "jac" for f: R^n -> R^n).

Used by ``benchmarks/bench_reverse.py`` (asv) and ``benchmarks/compare.py``.
"""
import types

import numpy as np

SEED = 0


# ---------------------------------------------------------------------------- namespaces

def _numpy_ns():
    return types.SimpleNamespace(
        name="numpy", asarray=np.asarray, sum=np.sum, mean=np.mean, sin=np.sin,
        tanh=np.tanh, logaddexp=np.logaddexp, roll=np.roll,
        interleave=lambda a, b: np.stack([a, b], axis=1).ravel(),
        reshape=lambda a, shape: a.reshape(shape),
        matmul=lambda a, b: a @ b, addrow=lambda a, b: a + b)


NUMPY = _numpy_ns()


def jax_ns():
    import jax.numpy as jnp
    return types.SimpleNamespace(
        name="jax", asarray=jnp.asarray, sum=jnp.sum, mean=jnp.mean, sin=jnp.sin,
        tanh=jnp.tanh, logaddexp=jnp.logaddexp, roll=jnp.roll,
        interleave=lambda a, b: jnp.stack([a, b], axis=1).ravel(),
        reshape=lambda a, shape: a.reshape(shape),
        matmul=lambda a, b: a @ b, addrow=lambda a, b: a + b)


def autograd_ns():
    import autograd.numpy as anp
    return types.SimpleNamespace(
        name="autograd", asarray=anp.asarray, sum=anp.sum, mean=anp.mean, sin=anp.sin,
        tanh=anp.tanh, logaddexp=anp.logaddexp, roll=anp.roll,
        interleave=lambda a, b: anp.ravel(anp.stack([a, b], axis=1)),
        reshape=lambda a, shape: anp.reshape(a, shape),
        matmul=lambda a, b: anp.dot(a, b), addrow=lambda a, b: a + b)


def torch_ns():
    import torch

    def asarray(a):
        return torch.as_tensor(np.asarray(a), dtype=torch.float64)

    def logaddexp(a, b):
        if not isinstance(a, torch.Tensor):
            a = torch.full_like(b, float(a))
        return torch.logaddexp(a, b)

    return types.SimpleNamespace(
        name="torch", asarray=asarray, sum=torch.sum, mean=torch.mean, sin=torch.sin,
        tanh=torch.tanh, logaddexp=logaddexp, roll=lambda a, s: torch.roll(a, s),
        interleave=lambda a, b: torch.stack([a, b], dim=1).reshape(-1),
        reshape=lambda a, shape: a.reshape(shape),
        matmul=lambda a, b: a @ b, addrow=lambda a, b: a + b)


def casadi_ns():
    """CasADi SX/DM: column vectors, column-major reshape (matched to NumPy's row-major)."""
    import casadi as ca

    def reshape(a, shape):
        r, c = shape
        return ca.reshape(a, c, r).T          # row-major fill, as NumPy's reshape

    def roll(a, s):
        if s == 1:
            return ca.vertcat(a[-1], a[:-1])
        if s == -1:
            return ca.vertcat(a[1:], a[0])
        raise NotImplementedError(s)

    def logaddexp(a, b):                       # only logaddexp(0, z) is used
        assert a == 0
        return ca.fmax(b, 0) + ca.log1p(ca.exp(-ca.fabs(b)))

    def mean(a):
        return ca.sum1(ca.sum2(a)) / (a.shape[0] * a.shape[1])

    return types.SimpleNamespace(
        name="casadi", asarray=lambda a: ca.DM(np.asarray(a)),
        sum=lambda a: ca.sum1(ca.sum2(a)), mean=mean, sin=ca.sin, tanh=ca.tanh,
        logaddexp=logaddexp, roll=roll,
        interleave=lambda a, b: ca.reshape(ca.horzcat(a, b).T, -1, 1),
        reshape=reshape, matmul=ca.mtimes,
        addrow=lambda a, b: a + ca.repmat(b, a.shape[0], 1))   # no broadcasting in CasADi


# ---------------------------------------------------------------------------- problems

class Problem:
    def __init__(self, name, n, f, x0, kind="grad", label=None):
        self.name, self.n, self.f, self.x0, self.kind = name, n, f, x0, kind
        self.label = label or f"{name} n={n}"

    def __repr__(self):
        return f"<Problem {self.label} ({self.kind}, {self.x0.size} inputs)>"


def rosen(n, xp=NUMPY):
    """1. Chained Rosenbrock, f: R^n -> R."""
    def f(x):
        return xp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)
    x0 = np.random.default_rng(SEED).uniform(-1.2, 1.2, n)
    return Problem("rosen", n, f, x0)


MLP_BATCH = 64
MLP_SHAPES = {            # parameters -> (inputs d, hidden h); params = d*h + h + h + 1
    1000: (30, 30),       # 30*30 + 30 + 30 + 1 = 961
    100000: (300, 330),   # 300*330 + 330 + 330 + 1 = 99661
}


def mlp(n, xp=NUMPY):
    """2. Two-layer tanh MLP, mean squared loss, weights as one flat vector of ~n entries.

    ``n`` is 1000 or 100000 (the nominal size); the exact parameter count is ``x0.size``.
    """
    d, h = MLP_SHAPES[n]
    rng = np.random.default_rng(SEED)
    X = rng.standard_normal((MLP_BATCH, d))
    t = np.sin(X[:, :1] * 2.0) + 0.1 * rng.standard_normal((MLP_BATCH, 1))
    Xc, tc = xp.asarray(X), xp.asarray(t)
    i1, i2, i3 = d * h, d * h + h, d * h + 2 * h

    def f(w):
        W1 = xp.reshape(w[:i1], (d, h))
        b1 = xp.reshape(w[i1:i2], (1, h))
        W2 = xp.reshape(w[i2:i3], (h, 1))
        b2 = w[i3:]
        hid = xp.tanh(xp.addrow(xp.matmul(Xc, W1), b1))   # NumPy: X @ W1 + b1
        out = xp.matmul(hid, W2) + b2
        return xp.mean((out - tc) ** 2)
    w0 = rng.standard_normal(i3 + 1) / np.sqrt(d)
    return Problem("mlp", n, f, w0, label=f"mlp ~{n} params ({w0.size})")


LOOP_STEPS = 50


def scalar_loop(n=4, xp=NUMPY):
    """4. A 50-step scalar recurrence s = s * x[i % n] + sin(s): gradient w.r.t. x."""
    def f(x):
        s = x[0]
        for i in range(LOOP_STEPS):
            s = s * x[i % n] + xp.sin(s)
        return s
    x0 = np.random.default_rng(SEED).uniform(0.3, 0.9, n)
    return Problem("scalar_loop", n, f, x0, label=f"scalar loop 50 steps, n={n}")


LOGISTIC_SAMPLES, LOGISTIC_FEATURES = 10_000, 100


def logistic(n=LOGISTIC_FEATURES, xp=NUMPY):
    """5. Logistic regression negative log-likelihood, 10^4 samples x n (=100) features."""
    rng = np.random.default_rng(SEED)
    X = rng.standard_normal((LOGISTIC_SAMPLES, n))
    w_true = rng.standard_normal(n) / np.sqrt(n)
    y = (rng.random(LOGISTIC_SAMPLES) < 1.0 / (1.0 + np.exp(-X @ w_true))).astype(float)
    Xc, yc = xp.asarray(X), xp.asarray(y)

    def f(w):
        z = xp.matmul(Xc, w)
        return xp.sum(xp.logaddexp(0.0, z) - yc * z)
    w0 = 0.1 * rng.standard_normal(n)
    return Problem("logistic", n, f, w0,
                   label=f"logistic {LOGISTIC_SAMPLES}x{n}")


def brusselator(n, xp=NUMPY):
    """3. 1-D Brusselator right-hand side F: R^n -> R^n (u, v interleaved, periodic)."""
    a, b, alpha = 1.0, 3.0, 0.02

    def f(y):
        u, v = y[0::2], y[1::2]
        lap_u = xp.roll(u, 1) - 2.0 * u + xp.roll(u, -1)
        lap_v = xp.roll(v, 1) - 2.0 * v + xp.roll(v, -1)
        du = a + u * u * v - (b + 1.0) * u + alpha * lap_u
        dv = b * u - u * u * v + alpha * lap_v
        return xp.interleave(du, dv)
    y0 = np.random.default_rng(SEED).uniform(0.5, 1.5, n)
    return Problem("brusselator", n, f, y0, kind="jac")


MAKERS = {"rosen": rosen, "mlp": mlp, "scalar_loop": scalar_loop, "logistic": logistic,
          "brusselator": brusselator}

#: Sizes of each problem (the design brief's table).
SIZES = {
    "rosen": [10, 100, 1000, 10_000, 100_000, 1_000_000],
    "mlp": [1000, 100_000],
    "scalar_loop": [4],
    "logistic": [LOGISTIC_FEATURES],
    "brusselator": [100, 1000],
}


def make(name, n, xp=NUMPY):
    return MAKERS[name](n, xp)


# ---------------------------------------------------------------------------- hand-written

def rosen_grad_numba():
    """A hand-fused ``@njit`` Rosenbrock gradient (one loop, value and gradient): the
    yardstick of the compiled tier. Returns ``grad(x) -> new array``."""
    import numba

    @numba.njit(cache=True, error_model="numpy")
    def fill(x, g):
        g[:] = 0.0
        for i in range(x.shape[0] - 1):
            a = x[i]
            t = x[i + 1] - a * a
            g[i] += -400.0 * t * a - 2.0 * (1.0 - a)
            g[i + 1] += 200.0 * t

    def grad(x):
        g = np.empty_like(x)
        fill(x, g)
        return g
    return grad
