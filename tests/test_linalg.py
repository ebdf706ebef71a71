"""numpy.linalg and the matrix products: every mode against central differences and
analytic formulas, replay at a new point, stacked matrices, error paths."""
import numpy as np
import pytest

import dualtape
from dualtape.testing import check_grads, numerical_diff

N = 3
_rng = np.random.default_rng(7)
_M = _rng.normal(size=(N, N))
SPD = _M @ _M.T + N * np.eye(N)          # symmetric positive definite, distinct eigenvalues
GEN = _rng.normal(size=(N, N)) + 2 * np.eye(N)
VEC = _rng.normal(size=N)
RHS = _rng.normal(size=(N, 2))
TALL = _rng.normal(size=(5, N))
STACK = np.stack([SPD, SPD + np.diag([1.0, 2.0, 3.0])])


def mat(x):
    return x.reshape(N, N)


# scalar-valued f(x), a point, and a second point for the replay
CASES = {
    "solve": (lambda x: np.sum(np.linalg.solve(mat(x), VEC) ** 2), GEN),
    "solve_matrix": (lambda x: np.sum(np.sin(np.linalg.solve(mat(x), RHS))), GEN),
    "b_solve_b": (lambda x: VEC @ np.linalg.solve(mat(x), VEC), GEN),
    "inv": (lambda x: np.sum(np.cos(np.linalg.inv(mat(x)))), GEN),
    "det": (lambda x: np.linalg.det(mat(x)), GEN),
    "slogdet": (lambda x: np.linalg.slogdet(mat(x))[1], GEN),
    "cholesky": (lambda x: np.sum(np.linalg.cholesky(mat(x)) ** 3), SPD),
    "cholesky_upper": (lambda x: np.sum(np.sin(np.linalg.cholesky(mat(x), upper=True))), SPD),
    "eigh_values": (lambda x: np.sum(np.linalg.eigh(mat(x))[0] ** 3), SPD),
    "eigh_vectors": (lambda x: np.sum(np.linalg.eigh(mat(x))[1][:, 1:] ** 4), SPD),
    "eigh_upper": (lambda x: np.sum(np.linalg.eigh(mat(x), UPLO="U")[1][0] ** 4), SPD),
    "eigvalsh": (lambda x: np.linalg.eigvalsh(mat(x))[-1], SPD),
    "qr": (lambda x: np.sum(np.linalg.qr(x.reshape(5, N))[0] ** 3) +
           np.sum(np.sin(np.linalg.qr(x.reshape(5, N))[1])), TALL),
    "qr_square_r": (lambda x: np.sum(np.linalg.qr(mat(x), mode="r") ** 2) +
                    np.sum(np.linalg.qr(x.reshape(1, N, N))[0][0] ** 3), GEN),
    "lstsq": (lambda x: np.sum(np.linalg.lstsq(x.reshape(5, N), VEC[:2] @ np.ones((2, 5)),
                                               rcond=None)[0] ** 2), TALL),
    "lstsq_residuals_s": (lambda x: np.sum(np.linalg.lstsq(x.reshape(5, N), np.arange(5.0))[1])
                          + np.sum(np.linalg.lstsq(x.reshape(5, N), np.arange(5.0))[3]), TALL),
    "matrix_power": (lambda x: np.sum(np.linalg.matrix_power(mat(x), 3)), GEN),
    "matrix_power_neg": (lambda x: np.sum(np.linalg.matrix_power(mat(x), -2)), GEN),
    "multi_dot": (lambda x: np.linalg.multi_dot([VEC, mat(x), mat(x).T, VEC]), GEN),
    "kron": (lambda x: np.sum(np.kron(mat(x), mat(x)[:2]) ** 2), GEN),
    "cross": (lambda x: np.sum(np.cross(mat(x), mat(x)[::-1]) ** 2), GEN),
    "einsum_ellipsis": (lambda x: np.sum(np.einsum("...ij,...jk->...ik", x.reshape(1, N, N),
                                                   mat(x)) ** 2), GEN),
    "einsum_implicit": (lambda x: np.sum(np.einsum("...i,i", mat(x), VEC) ** 3), GEN),
    "trace_tril": (lambda x: np.trace(np.tril(mat(x)) @ np.triu(mat(x), 1).T) +
                   np.sum(np.diagonal(mat(x)) ** 2), GEN),
    "norm_vec_p": (lambda x: np.linalg.norm(x, 3) + np.linalg.norm(mat(x), 1.5, axis=1).sum(),
                   GEN),
    "norm_mat": (lambda x: np.linalg.norm(mat(x), 1) + np.linalg.norm(mat(x), -np.inf)
                 + np.linalg.norm(mat(x), "fro"), GEN),
    "batched": (lambda x: np.sum(np.linalg.slogdet(x.reshape(2, N, N))[1]) +
                np.sum(np.linalg.solve(x.reshape(2, N, N), VEC) ** 2) +
                np.sum(np.linalg.cholesky(x.reshape(2, N, N)) ** 2) +
                np.sum(np.linalg.eigh(x.reshape(2, N, N))[1][..., 0] ** 4), STACK),
}
FIRST_ORDER_ONLY = {"norm_vec_p", "norm_mat"}   # kinks in abs/max: Hessians not compared


@pytest.mark.parametrize("name", sorted(CASES))
def test_modes_against_central_differences(name):
    f, point = CASES[name]
    x = point.ravel().copy()
    check_grads(f, x, modes=("fwd", "rev"), rtol=1e-5, atol=1e-7)   # Duals and the tape
    # tape tangents (forward Jacobian) and reverse agree with central differences
    num = numerical_diff(f, x, eps=1e-6)
    np.testing.assert_allclose(dualtape.jacobian(f, mode="forward")(x), num, rtol=1e-5,
                               atol=1e-6)
    g = dualtape.grad(f)
    np.testing.assert_allclose(g(x), num, rtol=1e-5, atol=1e-6)
    # replay of the same tape at a new point
    x2 = x + 0.01 * np.random.default_rng(1).normal(size=x.size)
    if name.startswith(("cholesky", "eigh", "eigvalsh", "batched")):
        x2 = (x2.reshape(point.shape) + np.swapaxes(x2.reshape(point.shape), -1, -2)).ravel() / 2
    np.testing.assert_allclose(g(x2), numerical_diff(f, x2, eps=1e-6), rtol=1e-5, atol=1e-6)
    if name in FIRST_ORDER_ONLY:
        return
    H = dualtape.hessian(f)(x2)
    Hn = numerical_diff(g, x2, eps=1e-6)
    np.testing.assert_allclose(H, Hn, rtol=1e-4, atol=1e-5 * max(1.0, np.abs(Hn).max()))


def _filled(x):
    """A matrix filled in place, solved, and the solution written into again."""
    a = np.zeros_like(x, shape=(N, N))
    a[0] = x
    a[1] = x ** 2
    a[2, :] = 1.0 + x
    a += 4.0 * np.eye(N)
    y = np.linalg.solve(a, x)
    y[0] = y[1] * y[2]
    return y


def test_with_in_place_updates():
    x = VEC.copy()
    num = numerical_diff(_filled, x, eps=1e-6)
    for mode in ("forward", "reverse"):     # several seeds over the writes' bookkeeping
        jac = dualtape.jacobian(_filled, mode=mode)
        np.testing.assert_allclose(jac(x), num, rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(jac(x + 0.1), numerical_diff(_filled, x + 0.1, eps=1e-6),
                                   rtol=1e-6, atol=1e-8)
    f = lambda x: np.sum(_filled(x) ** 3)     # noqa: E731
    np.testing.assert_allclose(dualtape.hessian(f)(x), numerical_diff(dualtape.grad(f), x,
                                                                      eps=1e-6),
                               rtol=1e-5, atol=1e-7)
    with pytest.raises(NotImplementedError, match="linalg"):
        dualtape.tape(f, x).nopython()


def test_imperative_record_and_backward():
    a = dualtape.attach_grad(GEN)
    with dualtape.record():
        y = np.linalg.slogdet(a)[1] + np.sum(np.linalg.solve(a, VEC))
    y.backward()
    f = lambda m: np.linalg.slogdet(m)[1] + np.sum(np.linalg.solve(m, VEC))   # noqa: E731
    np.testing.assert_allclose(a.grad, dualtape.grad(f)(GEN), rtol=1e-12)


def test_analytic_derivatives():
    A = GEN
    Ai = np.linalg.inv(A)
    # d log|det A| / dA = inv(A).T, d det A / dA = det(A) inv(A).T
    np.testing.assert_allclose(dualtape.grad(lambda a: np.linalg.slogdet(a)[1])(A), Ai.T,
                               rtol=1e-12)
    np.testing.assert_allclose(dualtape.grad(np.linalg.det)(A), np.linalg.det(A) * Ai.T,
                               rtol=1e-12)
    # d inv(A)[dA] = -inv(A) dA inv(A), in forward and reverse
    dA = np.arange(N * N, dtype=float).reshape(N, N)
    want = -Ai @ dA @ Ai
    got = dualtape.jvp(np.linalg.inv, A, dA)[1]
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)
    J = dualtape.jacobian(np.linalg.inv, mode="reverse")(A)
    np.testing.assert_allclose(np.tensordot(J, dA, 2), want, rtol=1e-12, atol=1e-14)
    # symmetric functions of the eigenvalues: d tr(A^2) = 2 A (lower triangle doubled)
    S = SPD
    g = dualtape.grad(lambda a: np.sum(np.linalg.eigvalsh(a) ** 2))(S)
    np.testing.assert_allclose(g, np.tril(2 * S) + np.tril(2 * S, -1), rtol=1e-10)


def test_values_and_batching_follow_numpy():
    x = STACK
    tp = dualtape.tape(lambda a: np.concatenate([np.linalg.inv(a).ravel(),
                                                 np.linalg.eigvalsh(a).ravel(),
                                                 np.linalg.cholesky(a).ravel()]), x)
    want = np.concatenate([np.linalg.inv(x).ravel(), np.linalg.eigvalsh(x).ravel(),
                           np.linalg.cholesky(x).ravel()])
    np.testing.assert_allclose(tp(x), want, rtol=1e-12)
    np.testing.assert_allclose(tp(2 * x), np.concatenate(
        [np.linalg.inv(2 * x).ravel(), np.linalg.eigvalsh(2 * x).ravel(),
         np.linalg.cholesky(2 * x).ravel()]), rtol=1e-12)
    # broadcasting of a solve: one matrix, a stack of right-hand sides
    f = lambda a: np.linalg.solve(a, np.stack([RHS, 2 * RHS]))    # noqa: E731
    np.testing.assert_allclose(dualtape.tape(f, GEN)(GEN), np.linalg.solve(GEN, np.stack(
        [RHS, 2 * RHS])), rtol=1e-12)


def test_save_and_load(tmp_path):
    f = lambda a: np.linalg.slogdet(a)[1] + np.sum(np.linalg.solve(a, VEC))   # noqa: E731
    tp = dualtape.tape(f, GEN)
    path = tmp_path / "t.npz"
    tp.save(path)
    back = dualtape.load(path)
    np.testing.assert_allclose(back.gradient(GEN + 0.1), dualtape.grad(f)(GEN + 0.1),
                               rtol=1e-12)


def test_sparsity_is_conservative():
    f = lambda x: np.concatenate([np.linalg.solve(mat(x[:9]), x[9:]), x[9:] ** 2])  # noqa
    x = np.concatenate([GEN.ravel(), VEC])
    pattern = dualtape.sparsity(f, x).jacobian.toarray()
    assert pattern[:N].all() and not pattern[N:, :9].any()
    h = lambda x: np.linalg.slogdet(mat(x[:9]))[1] + np.sum(x[9:] ** 3)   # noqa: E731
    hp = dualtape.sparsity(h, x).hessian.toarray()
    assert hp[:9, :9].all() and not hp[:9, 9:].any()
    np.testing.assert_allclose(dualtape.hessian(h, sparse=True)(x).toarray(),
                               dualtape.hessian(h)(x), rtol=1e-12)


def test_repeated_eigenvalues():
    # eigenvalue derivatives stay finite; eigenvector derivatives that couple a repeated
    # pair are undefined and come out non-finite (documented), never a silent number
    A = np.diag([1.0, 1.0, 2.0])
    g = dualtape.grad(lambda a: np.sum(np.linalg.eigvalsh(a) ** 3))(A)
    np.testing.assert_allclose(g, np.diag([3.0, 3.0, 12.0]))
    gv = dualtape.grad(lambda a: np.linalg.eigh(a)[1][0, 0])(A)
    assert np.isnan(gv).any()
    gv = dualtape.grad(lambda a: np.linalg.eigh(a)[1][0, 0])(A + np.diag([0.0, 1e-3, 0.0]))
    assert np.isfinite(gv).all()


def test_errors():
    singular = np.ones((N, N))
    with pytest.raises(np.linalg.LinAlgError):
        dualtape.grad(lambda a: np.sum(np.linalg.solve(a, VEC)))(singular)
    g = dualtape.grad(lambda a: np.sum(np.linalg.inv(a)))
    g(GEN)
    with pytest.raises(np.linalg.LinAlgError):          # on replay too
        g(singular)
    np.testing.assert_allclose(g(GEN), numerical_diff(lambda a: np.sum(np.linalg.inv(a)),
                                                      GEN, eps=1e-6), rtol=1e-5)
    with pytest.raises(np.linalg.LinAlgError):
        dualtape.grad(lambda a: np.sum(np.linalg.cholesky(a)))(-SPD)
    with pytest.raises(np.linalg.LinAlgError, match="square"):
        dualtape.grad(lambda a: np.linalg.slogdet(a)[1])(np.ones((2, 3)))
    with pytest.raises(np.linalg.LinAlgError, match="rank"):
        dualtape.grad(lambda a: np.sum(np.linalg.lstsq(a, np.ones(5))[0]))(
            np.ones((5, N)))
    with pytest.raises(TypeError, match="complex"):
        dualtape.grad(lambda a: np.sum(np.linalg.solve(a, np.ones(N) * 1j)))(GEN)
    with pytest.raises(NotImplementedError, match="qr"):
        dualtape.grad(lambda a: np.sum(np.linalg.qr(a[:2])[0]))(GEN)
    for fn in (np.linalg.svd, np.linalg.eig):
        with pytest.raises(NotImplementedError, match=fn.__name__):
            dualtape.grad(lambda a: np.sum(fn(a)[0]))(GEN)
    with pytest.raises(NotImplementedError, match="nuc"):
        dualtape.grad(lambda a: np.linalg.norm(a, "nuc"))(GEN)
    with pytest.raises(NotImplementedError, match="nested"):
        dualtape.derivative(dualtape.derivative(lambda t: np.linalg.det(GEN * t)))(1.0)
