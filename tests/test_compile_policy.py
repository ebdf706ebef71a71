"""The compile policy of the kernels (docs/design.md, "Compile policy"): a jitted helper is
compiled once per argument type, whatever constants its callers pass, and a gradient
compiles (or loads) no second-order sweep."""
import os
import subprocess
import sys
import textwrap

import numpy as np
from numba.core import types

import dualtape
from dualtape import kernels as K

ARR = types.Array(types.float64, 1, "C")


@K.leaf
def _pick(x, k, negate):
    return -x[k] if negate else x[k]


@K.leaf
def _scaled(x, k, put=False):
    return 2.0 * x[k] if put else x[k]


@K.jit
def _calls(x):
    # constants, a module constant and run-time values: one compiled _pick serves them all
    return (_pick(x, 0, True) + _pick(x, 1, False) + _pick(x, K.A, x[0] > 0.0)
            + _scaled(x, 0) + _scaled(x, 1, True))


def test_constant_arguments_type_as_plain_values():
    for args in [(ARR, types.literal(0), types.literal(True)),
                 (ARR, types.literal(2), types.literal(False)),
                 (ARR, types.int64, types.boolean)]:
        _, _, typed, _ = _pick.get_call_template(args, {})
        assert tuple(typed) == (ARR, types.int64, types.boolean)
    assert [tuple(s) for s in _pick.signatures] == [(ARR, types.int64, types.boolean)]
    # an omitted default is typed as its value's type, not as omitted(default=False)
    _, _, typed, _ = _scaled.get_call_template((ARR, types.literal(0)), {})
    assert tuple(typed) == (ARR, types.int64, types.boolean)


def test_constant_arguments_keep_their_values():
    # the values arrive at run time: each branch as the constants say (K.A == 3)
    x = np.array([1.0, 2.0, 3.0, 4.0])
    assert _calls(x) == -1.0 + 2.0 + (-4.0) + 1.0 + 4.0
    x[0] = -1.0
    assert _calls(x) == 1.0 + 2.0 + 4.0 + (-1.0) + 4.0


def test_gradient_compiles_no_second_order_sweep():
    # the parent compiles (or loads) the gradient's kernels, so that the child only loads
    # them; the child then checks that no second-order or tangent sweep was typed
    def f(x):
        return np.sum(np.sin(x) * x[::-1])
    x = np.linspace(0.1, 1.0, 5)
    g = dualtape.grad(f)(x)
    np.testing.assert_allclose(g, np.cos(x) * x[::-1] + np.sin(x[::-1]), rtol=1e-14)
    script = textwrap.dedent("""
        import numpy as np
        import dualtape
        from dualtape import kernels as K
        dualtape.grad(lambda x: np.sum(np.sin(x) * x[::-1]))(np.linspace(0.1, 1.0, 5))
        print(",".join(name for name in ("tangent", "reverse2", "jvp", "hvp", "hvp_columns",
                                          "ew_tangent", "ew_reverse2", "ew_partial2")
                       if getattr(K, name).signatures))
    """)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == ""
