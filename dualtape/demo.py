"""A two-minute tour: ``python -m dualtape.demo``.

Differentiates real solver code: the chained Rosenbrock function (gradient by reverse
mode on a replayed tape, checked against SciPy's hand-written derivative and used by
SciPy's optimizer), the Brusselator right-hand side (Jacobian, forward mode) and a
second derivative by nested dual numbers.
"""
import time

import numpy as np
from scipy.optimize import minimize, rosen_der

import dualtape


def rosen(x):
    return np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


def brusselator(y, a=1.0, b=3.0, alpha=0.02):
    """1-D Brusselator: u and v interleaved, periodic diffusion."""
    u, v = y[0::2], y[1::2]
    lap_u = np.roll(u, 1) - 2.0 * u + np.roll(u, -1)
    lap_v = np.roll(v, 1) - 2.0 * v + np.roll(v, -1)
    du = a + u * u * v - (b + 1.0) * u + alpha * lap_u
    dv = b * u - u * u * v + alpha * lap_v
    return np.stack([du, dv], axis=1).ravel()


def main():
    print(f"dualtape {dualtape.__version__}\n")
    x0 = np.linspace(-1.2, 1.2, 10)

    grad = dualtape.grad(rosen)
    t0 = time.perf_counter()
    g = grad(x0)                                   # records the tape, then sweeps it
    first = time.perf_counter() - t0
    print("Rosenbrock gradient (reverse mode, recorded once):")
    print("  ", np.array2string(g, precision=4))
    print(f"   max |dualtape - scipy.optimize.rosen_der| = {np.abs(g - rosen_der(x0)).max():.1e}")
    t0 = time.perf_counter()
    for _ in range(1000):
        grad(x0 + 0.001)
    per_call = (time.perf_counter() - t0) / 1000
    print(f"   first call {first * 1e3:.0f} ms (record + compile or load kernels), "
          f"replayed {per_call * 1e6:.1f} us per gradient")

    res = minimize(rosen, x0, jac=grad, method="BFGS")
    print(f"   scipy BFGS with jac=dualtape.grad(rosen): converged={res.success}, "
          f"f={res.fun:.2e} after {res.nit} iterations, tape recorded "
          f"{grad.tapes.records} time(s)\n")

    y0 = np.random.default_rng(0).random(8)
    jac = dualtape.jacobian(brusselator, mode="forward")
    J = jac(y0)
    print(f"Brusselator Jacobian (forward mode, shape {J.shape}):")
    print(np.array2string(J[:4, :6], precision=3, suppress_small=True))
    eps = 1e-6
    fd = (brusselator(y0 + eps * np.eye(8)[2]) - brusselator(y0 - eps * np.eye(8)[2])) / (2 * eps)
    print(f"   column 2 vs central difference: max error {np.abs(J[:, 2] - fd).max():.1e}\n")

    def f(t):
        return np.exp(np.sin(t)) * t
    d2 = dualtape.derivative(dualtape.derivative(f))(0.7)
    t = 0.7
    exact = np.exp(np.sin(t)) * ((np.cos(t) ** 2 - np.sin(t)) * t + 2 * np.cos(t))
    print(f"Second derivative of exp(sin t) * t at t = 0.7 by nested duals: {float(d2):.12f}")
    print(f"   analytic: {exact:.12f}")


if __name__ == "__main__":
    main()
