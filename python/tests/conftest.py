"""Shared settings: small, fast learner settings and a small teacher problem."""

import os

import numpy as np
import pytest

import relu_fpt

# Small enough that a fit takes well under a second on two cores, large enough to learn the
# small teacher below.
FAST = dict(budget=64, polish_epochs=5, descent_epochs=10, backend="cpu")


def principal_angle(a, b):
    """Largest principal angle (radians) between the row spaces of a and b."""
    qa, _ = np.linalg.qr(np.asarray(a, dtype=np.float64).T)
    qb, _ = np.linalg.qr(np.asarray(b, dtype=np.float64).T)
    s = np.linalg.svd(qa.T @ qb, compute_uv=False)
    if qa.shape[1] != qb.shape[1]:
        return np.pi / 2
    return float(np.arccos(np.clip(s.min(), -1.0, 1.0)))


@pytest.fixture(scope="session")
def teacher_data():
    """A random [4]-unit ReLU teacher on a 2-dim subspace of R^12: train and test samples."""
    X, y, teacher = relu_fpt.make_teacher("random", d=12, k=2, widths=(4,), n=24000, seed=3)
    return X[:20000], y[:20000], X[20000:], y[20000:], teacher


@pytest.fixture(scope="session")
def fitted(teacher_data):
    X, y, _, _, _ = teacher_data
    return relu_fpt.ReluNetRegressor(random_state=0, **FAST).fit(X, y)


def in_ci():
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")
