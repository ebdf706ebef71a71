"""dualtape: exact derivatives of NumPy code.

Forward mode by vector dual numbers (``Dual``), reverse mode on a flat tape recorded once
and replayed by Numba kernels (``tape``, ``grad``), one API that picks the mode
(``jacobian``). See docs/index.md.
"""
from .api import (derivative, grad, hessian, hvp, jacobian, jvp, tape, value_and_grad,
                  vjp)
from .dual import Dual
from .saving import load
from .tapes import GuardFlipped, Tape

__version__ = "0.1.0"
__all__ = ["Dual", "GuardFlipped", "Sparsity", "Tape", "derivative", "grad", "hessian", "hvp",
           "jacobian", "jvp", "load", "sparsity", "tape", "value_and_grad", "vjp"]


def __getattr__(name):
    # the sparse module (and scipy.sparse, ~0.1 s) loads on first use, not at import
    if name in ("sparsity", "Sparsity"):
        from . import sparse
        return getattr(sparse, name)
    raise AttributeError(f"module 'dualtape' has no attribute {name!r}")
