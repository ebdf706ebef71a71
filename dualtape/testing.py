"""Derivative checks for users and for dualtape's own tests (as autograd's and JAX's
``check_grads``): exact directional derivatives against central differences."""
import numpy as np

from .api import dual_jvp as jvp
from .api import vjp

MODES = ("fwd", "rev")


def _directional_fd(f, x, v, eps):
    return (np.asarray(f(x + eps * v), dtype=float) -
            np.asarray(f(x - eps * v), dtype=float)) / (2.0 * eps)


def check_grads(f, x, modes=MODES, order=1, *, eps=1e-6, rtol=1e-5, atol=1e-7, seed=0):
    """Check f's derivatives at x along random directions; raise AssertionError if off.

    For each mode in ``modes`` (``"fwd"``: a Jacobian-vector product on Dual numbers;
    ``"rev"``: ``vjp`` on a recorded tape) the exact directional derivative ``J v`` (forward) or ``u . J v``
    (reverse, for a random output weight ``u``) is compared with a central difference of
    step ``eps``. ``order=2`` also checks the derivative of the directional derivative
    (nested Duals for forward; the reverse directional derivative differentiated again).

    >>> check_grads(np.sin, np.array([0.3, 1.2]), order=2)
    """
    x = np.asarray(x, dtype=np.float64)
    rng = np.random.default_rng(seed)
    v = rng.standard_normal(x.shape)
    fd = _directional_fd(f, x, v, eps)
    y = np.asarray(f(x), dtype=float)
    u = rng.standard_normal(y.shape)
    for mode in modes:
        if mode == "fwd":
            exact = np.asarray(jvp(f, x, v)[1], dtype=float)
            _close(exact, fd, rtol, atol, f"forward-mode directional derivative of {_name(f)}")
        elif mode == "rev":
            _, back = vjp(f, x)
            exact = float(np.sum(np.asarray(back(u)) * v))
            _close(exact, float(np.sum(u * fd)), rtol, atol,
                   f"reverse-mode u . J v of {_name(f)}")
        else:
            raise ValueError(f"unknown mode {mode!r}; use 'fwd' or 'rev'")
    if order >= 2:
        def first(xx):
            return jvp(f, xx, v)[1]
        check_grads(first, x, ("fwd",), order - 1, eps=eps, rtol=rtol * 10, atol=atol * 10,
                    seed=seed + 1)
        if "rev" in modes:
            def first_rev(xx):
                return np.sum(np.asarray(vjp(f, xx)[1](u)) * v)
            w = rng.standard_normal(x.shape)
            fd2 = _directional_fd(first_rev, x, w, eps)
            exact2 = np.sum(u * np.asarray(jvp(lambda z: jvp(f, z, v)[1], x, w)[1]))
            _close(exact2, fd2, rtol * 10, atol * 10,
                   f"second directional derivative of {_name(f)} (reverse vs forward)")


def _name(f):
    return getattr(f, "__name__", repr(f))


def _close(a, b, rtol, atol, what):
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    scale = np.maximum(np.abs(a), np.abs(b))
    bad = ~(np.abs(a - b) <= atol + rtol * scale) & ~(np.isnan(a) & np.isnan(b))
    if np.any(bad):
        raise AssertionError(f"{what}: exact {a} differs from central difference {b} "
                             f"(max abs error {np.max(np.abs(a - b))})")
