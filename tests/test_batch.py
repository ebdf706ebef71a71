"""Batched replay over many points (Tape.value_batch / gradient_batch / jvp_batch)."""
import numpy as np
import pytest
from scipy.optimize import rosen_der

import dualtape
from dualtape import batch
from dualtape import kernels as K
from fixtures import rosen

RNG = np.random.default_rng(7)
X = RNG.normal(size=(37, 6))          # not a multiple of the thread count


def test_gradient_batch_matches_analytic():
    tp = dualtape.tape(rosen, np.ones(6))
    values, grads = tp.gradient_batch(X)
    assert values.shape == (37,) and grads.shape == (37, 6)
    np.testing.assert_allclose(values, [rosen(x) for x in X], rtol=1e-14)
    np.testing.assert_allclose(grads, [rosen_der(x) for x in X], rtol=1e-12)


def test_value_and_jvp_batch_vector_output_with_parameter():
    def f(x, p):
        return p * np.sin(x) * x[::-1]
    tp = dualtape.tape(f, np.ones(6), 1.0)
    V = RNG.normal(size=X.shape)
    np.testing.assert_allclose(tp.value_batch(X, 2.5), [f(x, 2.5) for x in X], rtol=1e-14)
    values, jv = tp.jvp_batch(X, V, 2.5)
    expect = [2.5 * (np.cos(x) * v * x[::-1] + np.sin(x) * v[::-1]) for x, v in zip(X, V)]
    np.testing.assert_allclose(values, [f(x, 2.5) for x in X], rtol=1e-14)
    np.testing.assert_allclose(jv, expect, rtol=1e-12, atol=1e-14)


def branchy(x):
    if x[0] > 0:
        return np.sum(x ** 2)
    return np.sum(x ** 3)


def test_flipped_points_are_recorded_again():
    tp = dualtape.tape(branchy, np.ones(6))
    values, grads = tp.gradient_batch(X)
    pos = X[:, 0] > 0
    assert 0 < pos.sum() < len(X)
    expect = np.where(pos[:, None], 2.0 * X, 3.0 * X ** 2)
    np.testing.assert_allclose(grads, expect, rtol=1e-14)
    np.testing.assert_allclose(values, [branchy(x) for x in X], rtol=1e-14)


def test_statuses_from_the_kernel():
    """The kernels report per point (what nopython callers see), writing nothing on a
    flip."""
    tp = dualtape.tape(branchy, np.ones(3))
    pts = np.array([[1.0, 2.0, 3.0], [-1.0, 2.0, 3.0], [2.0, 0.0, 1.0]])
    out = np.full((3, 4), np.nan)
    status = np.zeros(3, dtype=np.int64)
    batch.sweep(tp.prog, tp.consts, batch.GRADIENT, pts, np.zeros((3, 0)), out, status, 2)
    assert status[0] == status[2] == K.OK and status[1] >= 0
    assert np.isnan(out[1]).all()
    np.testing.assert_allclose(out[[0, 2], 1:], 2.0 * pts[[0, 2]])


def test_loaded_tape_raises_on_a_flip(tmp_path):
    dualtape.tape(branchy, np.ones(6)).save(tmp_path / "b.npz")
    lt = dualtape.load(tmp_path / "b.npz")
    with pytest.raises(dualtape.GuardFlipped, match="loaded"):
        lt.gradient_batch(X)
    ok = np.abs(X)
    np.testing.assert_allclose(lt.gradient_batch(ok)[1], 2.0 * ok)


def test_index_error_is_raised():
    tp = dualtape.tape(lambda x: x[np.argmax(x) + 1], np.array([0.5, 3.0, 1.0]))
    with pytest.raises(IndexError, match="out of bounds"):
        tp.value_batch(np.array([[0.5, 3.0, 1.0], [0.5, 1.0, 3.0]]))


def test_shapes_are_checked():
    tp = dualtape.tape(rosen, np.ones(6))
    with pytest.raises(ValueError, match="points must have shape"):
        tp.gradient_batch(np.ones((4, 5)))
    with pytest.raises(ValueError, match="V has shape"):
        tp.jvp_batch(X, np.ones((3, 6)))
    with pytest.raises(ValueError, match="scalar output"):
        dualtape.tape(np.sin, np.ones(6)).gradient_batch(X)
