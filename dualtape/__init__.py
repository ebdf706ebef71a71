"""dualtape: exact derivatives of NumPy code.

Forward mode by vector dual numbers (``Dual``), reverse mode on a flat tape recorded once
and replayed by Numba kernels (``tape``, ``grad``), one API that picks the mode
(``jacobian``), and the imperative API of MXNet and PyTorch on the same tape
(``attach_grad``, ``record``, ``y.backward()``). See docs/index.md and docs/tutorial.md.
"""
from .api import (derivative, grad, hessian, hvp, jacobian, jvp, tape, value_and_grad,
                  vjp)
from .custom import Function, custom_jvp, custom_vjp
from .dual import Dual
from .saving import load
from . import special
from .imperative import (Variable, attach_grad, is_recording, is_training, no_grad, pause,
                         predict_mode, record, stop_gradient, train_mode)
from .tapes import GuardFlipped, Tape
from .testing import check_grads, numerical_diff

__version__ = "0.1.0"
__all__ = ["Dual", "GuardFlipped", "Sparsity", "Tape", "derivative", "grad", "hessian", "hvp",
           "jacobian", "jvp", "load", "sparsity", "tape", "value_and_grad", "vjp",
           # imperative API (imperative.py)
           "Variable", "attach_grad", "is_recording", "is_training", "no_grad", "pause",
           "predict_mode", "record", "stop_gradient", "train_mode",
           # numerical tools (testing.py)
           "check_grads", "numerical_diff",
           # custom derivative rules (custom.py)
           "Function", "custom_jvp", "custom_vjp",
           # logsumexp, softmax, log_softmax (special.py)
           "special"]


def __getattr__(name):
    # the sparse module (and scipy.sparse, ~0.1 s) loads on first use, not at import
    if name in ("sparsity", "Sparsity"):
        from . import sparse
        return getattr(sparse, name)
    raise AttributeError(f"module 'dualtape' has no attribute {name!r}")
