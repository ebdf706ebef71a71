"""Forward (Dual), reverse (tape) and replay agree with each other and with central
differences on the shared fixtures."""
import numpy as np
import pytest

import dualtape
from dualtape.testing import check_grads
from fixtures import FUNCTIONS, central_jacobian

IDS = [name for name, _, _ in FUNCTIONS]


@pytest.mark.parametrize("name,f,x", FUNCTIONS, ids=IDS)
def test_forward_and_reverse_jacobians_match_central_differences(name, f, x):
    fd = central_jacobian(f, x)
    fwd = dualtape.jacobian(f, mode="forward")(x)
    rev = dualtape.jacobian(f, mode="reverse")(x)
    np.testing.assert_allclose(fwd, fd, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(rev, fwd, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name,f,x", FUNCTIONS, ids=IDS)
def test_replay_at_new_point_equals_fresh_recording(name, f, x):
    jac = dualtape.jacobian(f, mode="reverse")
    jac(x)
    x2 = x * 1.01 + 0.003
    replayed = jac(x2)
    fresh = dualtape.tape(f, x2).jacobian(x2)
    np.testing.assert_allclose(replayed, fresh, rtol=1e-13, atol=1e-13)
    assert jac.tapes.records == 1


@pytest.mark.parametrize("name,f,x", FUNCTIONS, ids=IDS)
def test_check_grads_both_modes(name, f, x):
    check_grads(f, x, modes=("fwd", "rev"), order=1)


def test_tape_value_matches_numpy():
    for name, f, x in FUNCTIONS:
        tp = dualtape.tape(f, x)
        np.testing.assert_allclose(tp(x * 0.9), f(x * 0.9), rtol=1e-13, err_msg=name)
