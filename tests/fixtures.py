"""Functions shared by the tests of every mode: (name, f, input) triples."""
import numpy as np

A = np.array([[1.0, 2.0, -1.0], [0.5, -0.3, 2.0]])


def rosen(x):
    return np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


def brusselator(y, a=1.0, b=3.0, alpha=0.02):
    u, v = y[0::2], y[1::2]
    lap_u = np.roll(u, 1) - 2.0 * u + np.roll(u, -1)
    lap_v = np.roll(v, 1) - 2.0 * v + np.roll(v, -1)
    du = a + u * u * v - (b + 1.0) * u + alpha * lap_u
    dv = b * u - u * u * v + alpha * lap_v
    return np.stack([du, dv], axis=1).ravel()


def mlp(w):
    x = np.linspace(-1, 1, 12).reshape(4, 3)
    W1 = w[:6].reshape(3, 2)
    W2 = w[6:8].reshape(2, 1)
    h = np.tanh(x @ W1)
    return np.mean((h @ W2 - 1.0) ** 2)


def scalar_loop(x):
    s = x[0]
    for i in range(50):
        s = s * x[i % x.shape[0]] * 0.5 + np.sin(s)
    return s


def logistic(w):
    X = np.linspace(-1, 1, 30).reshape(10, 3)
    y = (np.arange(10) % 2).astype(float)
    z = X @ w
    return np.sum(np.logaddexp(0.0, z) - y * z)


def shapes(x):
    m = x.reshape(2, 3)
    t = np.concatenate([m.T.ravel(), np.flip(x), np.roll(x, 2), np.tile(x[:2], 2)])
    return t * np.repeat(x[:3], 5)[:t.size // 5 * 5].sum() + np.diag(m[:, :2]).sum()


def products(x):
    m = x.reshape(2, 3)
    return np.concatenate([
        (A @ x[:3]), np.dot(m, m.T).ravel(), np.outer(x[:2], x[3:5]).ravel(),
        np.atleast_1d(np.inner(x[:3], x[3:])), np.atleast_1d(np.trace(m @ m.T)),
        np.einsum("ij,kj->ik", m, A).ravel(), np.tensordot(m, A, axes=([1], [1])).ravel()])


def reductions(x):
    m = x.reshape(2, 3)
    return np.stack([np.sum(m), np.mean(m), np.prod(x), np.max(x), np.min(m),
                     np.sum(np.max(m, axis=0)), np.sum(np.prod(m, axis=1, keepdims=True)),
                     np.linalg.norm(x), np.linalg.norm(m), np.linalg.norm(x, 1)])


def elementwise_mix(x):
    return (np.exp(x) * np.sin(x) + np.sqrt(np.abs(x) + 1.0) / (1.0 + x * x)
            + np.arctan2(x, 2.0) + np.hypot(x, 1.5) + np.maximum(x, 0.1) + np.clip(x, -0.5, 0.5)
            + np.where(x > 0, np.log1p(np.abs(x)), np.tanh(x)) + x ** 3 + 2.0 ** x)


FUNCTIONS = [
    ("rosen", rosen, np.linspace(-1.2, 1.3, 7)),
    ("brusselator", brusselator, np.linspace(0.2, 1.7, 8)),
    ("mlp", mlp, np.linspace(-0.7, 0.9, 8)),
    ("scalar_loop", scalar_loop, np.array([0.9, 0.8, 1.1, 0.7])),
    ("logistic", logistic, np.array([0.3, -0.2, 0.5])),
    ("shapes", shapes, np.linspace(-1, 1, 6) + 0.05),
    ("products", products, np.linspace(-1, 1, 6) + 0.05),
    ("reductions", reductions, np.array([0.3, -1.2, 2.5, 0.7, -0.4, 1.9])),
    ("elementwise_mix", elementwise_mix, np.array([0.3, -1.2, 2.5, 0.7, -0.4, 1.9])),
]


def central_jacobian(f, x, eps=1e-6):
    x = np.asarray(x, dtype=float)
    y = np.asarray(f(x))
    J = np.zeros(y.shape + x.shape)
    for i in np.ndindex(x.shape):
        e = np.zeros_like(x)
        e[i] = eps
        J[(Ellipsis,) + i] = (np.asarray(f(x + e)) - np.asarray(f(x - e))) / (2 * eps)
    return J
