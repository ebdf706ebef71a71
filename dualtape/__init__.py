"""dualtape: exact derivatives of NumPy code.

Forward mode by vector dual numbers (``Dual``), reverse mode on a flat tape recorded once
and replayed by Numba kernels (``tape``, ``grad``), one API that picks the mode
(``jacobian``). See docs/index.md.
"""
from .api import (derivative, grad, hessian, hvp, jacobian, jvp, tape, value_and_grad,
                  vjp)
from .dual import Dual
from .sparse import Sparsity, sparsity
from .tapes import GuardFlipped, Tape

__version__ = "0.1.0"
__all__ = ["Dual", "GuardFlipped", "Sparsity", "Tape", "derivative", "grad", "hessian", "hvp", "jacobian",
           "jvp", "sparsity", "tape", "value_and_grad", "vjp"]
