"""Functions over the Rust core: subspace recovery, teachers, network files."""

import json
import os

import numpy as np
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_array, check_X_y

from . import _core

_METHODS = ("filtered", "paper", "phd", "sir", "save")
_BACKENDS = ("auto", "cpu", "gpu")


def _seed(random_state):
    """A 64-bit seed from an int, a RandomState or None (sklearn's convention)."""
    if isinstance(random_state, (int, np.integer)) and not isinstance(random_state, bool):
        if random_state < 0:
            raise ValueError(f"random_state={random_state}: expected an int >= 0, a RandomState or None")
        return int(random_state)
    return int(check_random_state(random_state).randint(0, 2**31 - 1))


def _float32_samples(X, y):
    """X as C-contiguous float32 (no copy when it already is), y as float32."""
    X, y = check_X_y(X, y, dtype=np.float32, order="C", y_numeric=True)
    return X, _float32_labels(y)


def _float32_labels(y):
    with np.errstate(over="ignore"):
        y32 = np.ascontiguousarray(y, dtype=np.float32)
    if not np.all(np.isfinite(y32)):
        raise ValueError("y has values that float32 cannot hold (|y| > 3.4e38): rescale y")
    return y32


def find_subspace(X, y, method="filtered", dim=None, max_dim=32, refine_steps=3,
                  backend="auto", random_state=None):
    """Recover the span of the first-layer weights of y = F(x).

    Parameters
    ----------
    X : array-like of shape (n_samples, n_features)
        Inputs, ideally x ~ N(0, I) (the method's assumption).
    y : array-like of shape (n_samples,)
    method : {"filtered", "paper", "phd", "sir", "save"}, default="filtered"
        Filtered PCA finds the dimension itself (``"paper"``: the paper's label rounds alone,
        each after the first conditioned on cells of every direction found so far, without
        whitening, refine steps or residual rounds); pHd, SIR and SAVE need ``dim``.
    dim : int or None
        Number of directions (baselines); for filtered PCA a tighter bound than ``max_dim``.
    max_dim : int, default=32
        Largest dimension filtered PCA may find (a bound, not a limit of the method).
    refine_steps : int, default=3
        Gauss-Newton steps sharpening the filtered-PCA basis (one pass each); with
        ``method="paper"``, at most this many refine sweeps, each direction found again by
        the paper's round conditioned on the others, its filters' estimate or a cell SIR
        (one pass per direction, two in the first sweep where the cell SIR, read first,
        does not settle it).
    backend : {"auto", "cpu", "gpu"}, default="auto"
    random_state : int, RandomState or None

    Returns
    -------
    basis : ndarray of shape (r, n_features)
        Orthonormal rows (r = 0 when nothing clears the null).
    report : dict
        Per-round scores, eigenvalues, null maxima and bars (label rounds, then residual
        rounds), the whitening (filtered PCA), refine steps, samples read.
    """
    if method not in _METHODS:
        raise ValueError(f"method={method!r}: expected one of {_METHODS}")
    if backend not in _BACKENDS:
        raise ValueError(f"backend={backend!r}: expected one of {_BACKENDS}")
    X, y = _float32_samples(X, y)
    basis, report = _core.find_subspace(
        X, y, method=method, dim=None if dim is None else int(dim), max_dim=int(max_dim),
        refine_steps=int(refine_steps), seed=_seed(random_state), backend=backend,
    )
    return basis, json.loads(report)


def make_teacher(kind="parity", d=32, n=10000, k=None, m=None, widths=(4, 4), bias=False,
                 noise=0.0, seed=0):
    """Samples of a built-in teacher network: x ~ N(0, I_d), y = F(x) (+ noise).

    Parameters
    ----------
    kind : {"random", "parity", "fan", "deep-parity", "composite"}
        ``random``: a random deep network with hidden ``widths`` whose first layer spans a
        random ``k``-dim subspace (``bias`` adds biases); ``parity`` (even ``k``, default 4):
        every Hermite moment of degree < k vanishes; ``fan`` (even ``m`` >= 4): an alternating
        fan in a plane; ``deep-parity`` (``k``, default 3); ``composite``: a fan plane plus an
        orthogonal ReLU (relevant dimension 3). Every teacher is scaled to Var(y) about 1.
    d : int
        Input dimension.
    n : int
        Number of samples.
    noise : float
        Standard deviation of Gaussian label noise.
    seed : int
        Seeds the teacher and the samples: the same seed gives the same arrays.

    Returns
    -------
    X : ndarray of shape (n, d), float32
    y : ndarray of shape (n,), float32
    teacher : Network
    """
    return _core.make_teacher(
        kind, d=int(d), n=int(n), k=None if k is None else int(k),
        m=None if m is None else int(m), widths=[int(w) for w in widths], bias=bool(bias),
        noise=float(noise), seed=int(seed),
    )


def load(path):
    """Read a relu-fpt/network JSON file (as written by ``Network.save`` or ``relu-fpt learn``)."""
    return _core.Network.load(os.fspath(path))


def _predict(network, X):
    """Predictions of a network for array-like X, as float64."""
    X = check_array(X, dtype=np.float32, order="C")
    return network.predict(X).astype(np.float64)
