"""Numerical tools for users and for dualtape's own tests: ``numerical_diff`` (a Jacobian by
central differences) and ``check_grads`` (as autograd's and JAX's: exact directional
derivatives against central differences)."""
import numpy as np

from .api import dual_jvp as jvp
from .api import vjp

MODES = ("fwd", "rev")


def _directional_fd(f, x, v, eps):
    return (np.asarray(f(x + eps * v), dtype=float) -
            np.asarray(f(x - eps * v), dtype=float)) / (2.0 * eps)


def numerical_diff(f, x, eps=1e-4):
    """The Jacobian of ``f`` at ``x`` by central differences, of shape
    ``f(x).shape + x.shape`` (output axes first; a scalar for scalar ``f`` and ``x``).

    Entry ``[..., i]`` is ``(f(x + eps e_i) - f(x - eps e_i)) / (2 eps)``, taken over the
    step that is representable at ``x_i``. ``f`` is called ``2 * x.size`` times with float64
    arrays of ``x``'s shape (a NumPy float when ``x`` is a number).

    Its error is the sum of two parts. Truncation: about ``eps**2 / 6`` times the third
    derivative, so it falls a hundredfold when ``eps`` shrinks tenfold. Rounding: ``f``'s
    values carry relative errors near 1e-16, which the division by ``2 eps`` magnifies to
    about ``1e-16 * |f| / eps``, growing as ``eps`` shrinks. In float64 the sum is smallest
    near ``eps = 1e-5`` (about ``(1e-16)**(1/3)`` times the scale of ``x``), with some
    ten correct digits at best; the default ``1e-4`` trades a little accuracy for safety
    with noisy ``f``. Exact derivatives (``grad``, ``jacobian``) have neither error.

    Raises ``ValueError`` if ``eps`` is not a positive finite number, ``TypeError`` for
    complex or non-numeric ``x`` or outputs. NaN or inf in ``f``'s values near ``x``
    propagate into the result, as in NumPy, without an exception.

    >>> numerical_diff(np.sin, 0.0)
    np.float64(0.9999999983333334)
    """
    eps = float(eps)
    if not (np.isfinite(eps) and eps > 0):
        raise ValueError(f"eps must be a positive finite number, got {eps}")
    scalar = np.ndim(x) == 0 and not isinstance(x, np.ndarray)
    x = _real_array(x, "x")
    y = _real_array(f(np.float64(x) if scalar else x.copy()), "f's value")
    J = np.empty(y.shape + (x.size,))
    flat = x.reshape(-1)
    for i in range(x.size):
        up, down = flat.copy(), flat.copy()
        up[i] += eps
        down[i] -= eps
        step = up[i] - down[i]
        fu = _real_array(f(up.reshape(x.shape)[()] if scalar else up.reshape(x.shape)),
                         "f's value")
        fd = _real_array(f(down.reshape(x.shape)[()] if scalar else down.reshape(x.shape)),
                         "f's value")
        if fu.shape != y.shape or fd.shape != y.shape:
            raise ValueError(f"f returned shapes {fu.shape} and {fd.shape} near x, "
                             f"{y.shape} at x")
        J[..., i] = (fu - fd) / step
    J = J.reshape(y.shape + x.shape)
    return J[()] if J.ndim == 0 else J


def _real_array(a, what):
    arr = np.asarray(a)
    if arr.dtype.kind == "c":
        raise TypeError(f"numerical_diff: {what} is complex; split it into real and "
                        "imaginary parts")
    if arr.dtype.kind not in "fiub":
        raise TypeError(f"numerical_diff: {what} must be real numbers, got dtype {arr.dtype}")
    return arr.astype(np.float64)


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
