"""``logsumexp``, ``softmax`` and ``log_softmax`` that carry derivatives.

SciPy's versions (``scipy.special.logsumexp`` ...) are Python functions, not ufuncs, and
convert their input with ``np.asarray``, which no NumPy protocol lets dualtape intercept:
on a traced or dual value they raise (dualtape's error names these replacements). These
take the same arguments, give SciPy's values on plain arrays (they call SciPy there) and
work in every mode: Dual numbers, tapes, replay, Hessians.

The elementwise scipy.special functions (``expit``, ``logit``, ``log_expit``, ``erf``,
``erfc``, ``gammaln``, ``digamma``, ``xlogy``, ``xlog1py``, ``ndtr``, ``log_ndtr``) are
ufuncs and rows of the primitive table: call SciPy's own.
"""
import numpy as np

from .imperative import stop_gradient
from .numpy_api import ADArray, amax, const, sum_

__all__ = ["logsumexp", "softmax", "log_softmax"]


def _lse(a, axis, b, keepdims, return_sign):
    # the shift by the maximum keeps exp from overflowing; it cancels from the value's
    # derivative, so it carries none (and is recomputed at every replay)
    m = stop_gradient(amax(a, axis=axis, keepdims=True))
    m = np.where(np.isfinite(m), m, 0.0)
    e = np.exp(a - m)
    s = sum_(e if b is None else e * b, axis=axis, keepdims=True)
    if return_sign:
        sign = np.sign(s)
        out = np.log(np.abs(s)) + m
    else:
        sign = None
        out = np.log(s) + m
    if not keepdims:
        axes = tuple(range(np.ndim(a))) if axis is None else axis
        out = np.squeeze(out, axis=axes)
        sign = None if sign is None else np.squeeze(sign, axis=axes)
    return out, sign


def logsumexp(a, axis=None, b=None, keepdims=False, return_sign=False):
    """log(sum(b * exp(a))) over ``axis`` (all axes when None), computed stably.

    Same signature and values as ``scipy.special.logsumexp`` (real inputs). Shapes: ``a``
    any; ``b`` broadcastable to ``a``; the result drops the summed axes unless
    ``keepdims``. Every mode; the derivative with respect to ``a`` is the softmax
    (weighted by ``b``), and ``b`` may be traced too. With ``return_sign`` the result is
    ``(log|s|, sign(s))``, the sign without derivative.

    >>> import dualtape
    >>> from dualtape.special import logsumexp
    >>> dualtape.grad(logsumexp)(np.array([0.0, np.log(3.0)]))
    array([0.25, 0.75])
    """
    a, b = const(a), None if b is None else const(b)
    if not isinstance(a, ADArray) and not isinstance(b, ADArray):
        import scipy.special
        return scipy.special.logsumexp(a, axis=axis, b=b, keepdims=keepdims,
                                       return_sign=return_sign)
    out, sign = _lse(a, axis, b, keepdims, return_sign)
    return (out, sign) if return_sign else out


def softmax(x, axis=None):
    """exp(x) / sum(exp(x)) over ``axis`` (all axes when None), computed stably; the
    shape of ``x``. Same as ``scipy.special.softmax``, in every mode.

    >>> from dualtape.special import softmax
    >>> softmax(np.array([0.0, np.log(3.0)]))
    array([0.25, 0.75])
    """
    x = const(x)
    if not isinstance(x, ADArray):
        import scipy.special
        return scipy.special.softmax(x, axis=axis)
    return np.exp(x - _lse(x, axis, None, True, False)[0])


def log_softmax(x, axis=None):
    """x - logsumexp(x) over ``axis`` (all axes when None), computed stably; the shape of
    ``x``. Same as ``scipy.special.log_softmax``, in every mode.

    >>> from dualtape.special import log_softmax
    >>> log_softmax(np.array([0.0, 0.0]))
    array([-0.69314718, -0.69314718])
    """
    x = const(x)
    if not isinstance(x, ADArray):
        import scipy.special
        return scipy.special.log_softmax(x, axis=axis)
    return x - _lse(x, axis, None, True, False)[0]
