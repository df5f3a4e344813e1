"""The scikit-learn estimator."""

import json
import numbers
import os

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from . import _core
from ._api import _BACKENDS, _float32_labels, _seed


class ReluNetRegressor(RegressorMixin, BaseEstimator):
    """Learn a deep ReLU network y = F(x) by filtered PCA and a search on the projection.

    ``fit`` holds out the last ``validation_fraction`` of the rows, runs filtered PCA on the
    rest (on whitened inputs) to find the subspace the first layer reads (its dimension r is
    found, at most ``max_dim``), fits a small ReLU network on z = B x (enumerate-and-test over
    ``budget`` candidates and a sphere-net ridge fit, keeping the better), trains it further on
    z (and a deeper network from a random start, kept when it validates better), and polishes
    network and basis together (the polish may add a few rows to B and keeps
    them only when the validation error says they help). The model is the compact network
    x -> small(B x), so ``predict`` costs d r plus the small network per row. Every stage
    streams over all training rows with bounded memory.

    ``method="paper"`` runs the paper's algorithm as written instead: filtered PCA's label
    rounds (each after the first conditioned on cells of every direction found so far; no
    whitening, refine steps or residual rounds), then enumerate-and-test over the product net
    of bias-free networks of widths ``hidden`` (give the architecture to enumerate, e.g.
    ``hidden=(16,)`` for a 16-unit teacher) as the final model: no sphere-net fit and no
    gradient stage, so the stage parameters below do not apply.

    The method assumes Gaussian inputs x ~ N(0, I); on other data it still runs. When
    filtered PCA finds no direction above its calibrated null (or there are fewer than 10
    rows), the model is a ridge regression on x (penalty by generalised cross-validation),
    and ``report_["fallback"]`` says so and why.

    Each parameter means what the library's options model says (``LearnOptions`` in the Rust
    crate; the texts below are its doc comments), and ``relu-fpt learn`` has a flag for each
    (``--polish-epochs`` for ``polish_epochs``, ``--validation`` for ``validation_fraction``,
    ``--no-polish``, ``--no-whiten``, ``--seed`` for an int ``random_state``): the same options
    give the same model.

    Parameters
    ----------
    hidden : tuple of int, default=(4,)
        Hidden widths of the candidate networks enumerate-and-test evaluates (each at least 1).
    max_dim : int, default=32
        Largest subspace dimension filtered PCA may report, and the most basis rows the model
        may have, spare rows included: a bound, not a limit of the method (the dimension itself
        is found).
    budget : int or None, default=None
        Most candidate networks enumerate-and-test evaluates, at least 1 (none given: 512, or
        1,000,000 with method ``paper``, a cap its sweeps rarely reach).
    polish : bool, default=True
        Refine the network and the basis jointly (Adam on all weights and on B) after the
        search; off: no polish.
    polish_epochs : int or None, default=None
        Most passes of the polish over the training rows, at least 1 (none given: 30, fewer on
        more than 160,000 rows: at most 4.8 million row reads in all, at least one pass; a
        number given is not cut to a number of row reads). Like every trainer stage it ends
        sooner when its validation error stops improving.
    descent_epochs : int or None, default=None
        Most passes of the descent on z = B x with B fixed, from the search's network; 0: no
        descent, and no deep-net stage unless ``deep_epochs`` is given (none given: 30, fewer
        on more than 50,000 rows: at most 1.5 million row reads, at least two passes; a number
        given is not cut to a number of row reads). Like every trainer stage it ends sooner
        when its validation error stops improving.
    deep_widths : tuple of int or None, default=None
        Hidden widths of a second network on z, trained from a random start by the same descent
        (the deep-net stage) and kept when it validates better; a one-hidden-layer fit
        approximates a deep teacher poorly. It runs when the descent's residual shows structure
        on z, or for as long as it keeps ahead of the descent after as many row reads (the
        report's deep_net_decision says which). Widths of 0 are dropped; none left: no deep-net
        stage. None given: [32, 32, 32] trains a pilot of 500,000 row reads (at most an eighth
        of the stage's), then [32, 32] is trained and goes on past as many row reads unless that
        pilot validates at least 20% better, when [32, 32, 32] is trained instead (without a
        time budget; with one, [32, 32] and no pilot).
    deep_epochs : int or None, default=None
        Most passes of the deep-net stage; 0: no deep-net stage (none given: as
        ``descent_epochs`` when that is given, else 60, fewer on more than about 170,000 rows:
        at most 10 million row reads, at least three passes; a number given is not cut to a
        number of row reads).
    refine_steps : int, default=3
        Gauss-Newton steps on the filtered-PCA basis after its rounds, one pass over the data
        each (0: none). With method ``paper``: at most this many refine sweeps, each finding
        every direction again by the paper's round conditioned on the others (its filters'
        estimate or the cell SIR of its bin means, whichever predicts the smaller angle), one
        pass per direction (two in the first sweep where the cell SIR, read first, does not
        settle it; 0: none, the paper's rounds alone).
    time_budget : float or None, default=None
        Wall-clock seconds the learning may take: the stages are planned to end within it and
        the best model found is returned when it runs out (the report's budget_notes say what
        the budget cut). A budgeted run depends on the machine's speed and load, so it is not
        reproducible across machines. None given: no limit; every trainer stage ends when its
        validation error stops improving, or after its passes.
    target_error : float or None, default=None
        Validation MSE/Var at which learning stops, strictly between 0 and 1: a trainer stage
        ends at its first check at or below it, and the stages after the one whose model
        reached it do not run (the report's target_note says which). For a user who needs a
        given accuracy rather than the best the data supports. None given: no target. Applies
        to the default method.
    validation_fraction : float, default=0.2
        Fraction of the rows (the last ones) held out for validation, strictly between 0 and 1.
    backend : {"auto", "cpu", "gpu"}, default="auto"
        ``auto``: a hardware GPU when there is one, else all CPU cores. ``gpu`` also accepts
        a software adapter (lavapipe). ``predict`` always runs on the CPU.
    random_state : int, RandomState instance or None, default=None
        Seeds every random choice; the same seed and data give the same model.
    method : {"default", "paper"}, default="default"
        The pipeline. ``default``: filtered PCA with its additions (whitening, refine steps,
        residual rounds), enumerate-and-test and the sphere-net fit, then the gradient stages
        (descent, deep net, polish). ``paper``: the paper's algorithm as written (filtered PCA's
        label rounds, each after the first conditioned on cells of every direction found so far,
        then enumerate-and-test over the product net of bias-free networks of widths ``hidden``
        as the final model); no sphere-net fit and no gradient stage, so ``whiten``,
        ``descent_epochs``, ``deep_widths``, ``deep_epochs``, ``polish``, ``polish_epochs`` and
        ``spare_rows`` do not apply, and ``refine_steps`` counts refine sweeps (an addition: the
        paper's round again on each direction, conditioned on the others, with a cell SIR
        beside its filters). Give ``hidden`` the
        architecture to enumerate (e.g. 16 for a 16-unit teacher).
    spare_rows : int or None, default=None
        Spare basis rows the polish may grow into, each kept only when it lowers the validation
        error (at most ``max_dim`` rows in all; none given: 2, or r for r > 4 directions from
        the subspace stage).
    max_train_rows : int or None, default=None
        The stages that fit the network on z = B x (enumerate-and-test, the sphere-net fit, the
        descent, the deep net and the polish) read at most this many training rows (the first
        ones); none given: every row. Filtered PCA reads every training row either way.
    whiten : bool, default=True
        Learn on the whitened inputs Sigma^(-1/2) (x - mu) rather than on the raw x (the model
        always reads the raw x); off: learn on the raw x.

    Attributes
    ----------
    model_ : Network
        The learned network (``model_.save(path)``, ``model_.to_onnx(path)``).
    subspace_ : ndarray of shape (r, n_features)
        Orthonormal rows spanning the subspace filtered PCA found (r = 0 for the fallback).
        The model reads ``model_.projection``, which spans it plus any rows the polish added.
    dimension_ : int
        r.
    n_features_in_ : int
    feature_names_in_ : ndarray of str
        Only when X has string column names.
    report_ : dict
        What the learner reported: ``stages`` (one entry per stage: ``stage``, ``device``,
        ``rows``, ``row_reads``, ``seconds``, ``validation_mse``), ``final_stage`` (the stage
        whose result is the model), filtered PCA's rounds, whitening and refine steps
        (``subspace``), validation errors (``validation_mse``, ``validation_var``,
        ``enumerate_mse``, ``sphere_net_mse``, ``descent_mse``, ``deep_net_mse``,
        ``polished_mse``),
        ``dimension`` and ``model_dimension`` (rows of B before and after the polish),
        ``backend``, ``fallback`` (None, or the fallback model, the reason and what filtered
        PCA saw) and ``x_copied`` (whether X had to be copied to be read).
    """

    def __init__(self, hidden=(4,), max_dim=32, budget=None, polish=True, polish_epochs=None,
                 descent_epochs=None, deep_widths=None, deep_epochs=None, refine_steps=3,
                 validation_fraction=0.2, backend="auto", random_state=None, method="default",
                 time_budget=None, target_error=None, spare_rows=None, max_train_rows=None,
                 whiten=True):
        self.hidden = hidden
        self.max_dim = max_dim
        self.budget = budget
        self.polish = polish
        self.polish_epochs = polish_epochs
        self.descent_epochs = descent_epochs
        self.deep_widths = deep_widths
        self.deep_epochs = deep_epochs
        self.refine_steps = refine_steps
        self.validation_fraction = validation_fraction
        self.backend = backend
        self.random_state = random_state
        self.method = method
        self.time_budget = time_budget
        self.target_error = target_error
        self.spare_rows = spare_rows
        self.max_train_rows = max_train_rows
        self.whiten = whiten

    def _check_params(self):
        """Validated copies of the parameters (fit never modifies them)."""
        def count(name, low):
            v = getattr(self, name)
            if not isinstance(v, numbers.Integral) or isinstance(v, bool) or v < low:
                raise ValueError(f"{name}={v!r}: expected an int >= {low}")
            return int(v)

        def count_or_none(name, low):
            v = getattr(self, name)
            if v is None:
                return None
            if not isinstance(v, numbers.Integral) or isinstance(v, bool) or v < low:
                raise ValueError(f"{name}={v!r}: expected None or an int >= {low}")
            return int(v)

        def widths(name, allow_empty):
            v = getattr(self, name)
            if isinstance(v, numbers.Integral) and not isinstance(v, bool):
                v = (v,)
            try:
                v = [int(w) for w in v]
            except TypeError:
                raise ValueError(f"{name}={getattr(self, name)!r}: expected a tuple of ints >= 1") from None
            if (not v and not allow_empty) or (v and min(v) < 1):
                raise ValueError(
                    f"{name}={getattr(self, name)!r}: expected a "
                    f"{'' if allow_empty else 'non-empty '}tuple of ints >= 1"
                )
            return v

        hidden = widths("hidden", allow_empty=False)
        deep_widths = None if self.deep_widths is None else widths("deep_widths", allow_empty=True)
        vf = self.validation_fraction
        if not isinstance(vf, numbers.Real) or not 0.0 < vf < 1.0:
            raise ValueError(f"validation_fraction={vf!r}: expected a float in (0, 1)")
        if self.backend not in _BACKENDS:
            raise ValueError(f"backend={self.backend!r}: expected one of {_BACKENDS}")
        if self.method not in _LEARN_METHODS:
            raise ValueError(f"method={self.method!r}: expected one of {_LEARN_METHODS}")
        for name in ("polish", "whiten"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise ValueError(f"{name}={getattr(self, name)!r}: expected True or False")
        max_dim = count("max_dim", 1)
        tb = self.time_budget
        if tb is not None and (
            not isinstance(tb, numbers.Real) or isinstance(tb, bool) or not 0.0 < tb < float("inf")
        ):
            raise ValueError(f"time_budget={tb!r}: expected None or a positive number of seconds")
        te = self.target_error
        if te is not None and (
            not isinstance(te, numbers.Real) or isinstance(te, bool) or not 0.0 < te < 1.0
        ):
            raise ValueError(f"target_error={te!r}: expected None or a float in (0, 1)")
        return dict(
            hidden=hidden, budget=None if self.budget is None else count("budget", 1),
            max_dim=max_dim, polish=bool(self.polish), method=self.method,
            polish_epochs=count_or_none("polish_epochs", 0),
            descent_epochs=count_or_none("descent_epochs", 0),
            deep_widths=deep_widths, deep_epochs=count_or_none("deep_epochs", 0),
            spare_rows=count_or_none("spare_rows", 0),
            max_train_rows=count_or_none("max_train_rows", 1), whiten=bool(self.whiten),
            refine_steps=count("refine_steps", 0), validation_fraction=float(vf),
            backend=self.backend, time_budget=None if tb is None else float(tb),
            target_error=None if te is None else float(te),
        )

    def fit(self, X, y):
        """Learn the network from X (n_samples, n_features) and y (n_samples,).

        float32 C-contiguous X is read in place; other dtypes and orders are converted.
        The GIL is released while the learner runs.
        """
        params = self._check_params()
        X, y = validate_data(self, X, y, dtype=np.float32, order="C", y_numeric=True)
        y = _float32_labels(y)
        model, report, basis = _core.learn(X, y, seed=_seed(self.random_state), **params)
        self.model_ = model
        self.report_ = json.loads(report)
        self.subspace_ = basis
        self.dimension_ = int(basis.shape[0])
        return self

    def predict(self, X):
        """Predictions (float64) for X (n_samples, n_features); computed in float32 input
        precision with f64 arithmetic on all CPU cores."""
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float32, order="C", reset=False)
        return self.model_.predict(X).astype(np.float64)

    def save(self, path):
        """Write the fitted network as relu-fpt/network JSON (``relu_fpt.load`` reads it)."""
        check_is_fitted(self)
        self.model_.save(os.fspath(path))

    def to_onnx(self, path):
        """Write the fitted network as an ONNX model: float32 input ``x`` (N, n_features),
        output ``y`` (N, 1), opset 17."""
        check_is_fitted(self)
        self.model_.to_onnx(os.fspath(path))

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        # float32 is the working precision; float64 is converted.
        tags.input_tags.allow_nan = False
        return tags

    @staticmethod
    def expected_failed_checks():
        """Checks of ``sklearn.utils.estimator_checks.check_estimator`` this estimator is
        known to fail, with the reason for each (pass as ``expected_failed_checks``)."""
        return dict(_EXPECTED_FAILED_CHECKS)


_LEARN_METHODS = ("default", "paper")

# scikit-learn >= 1.6 takes expected failures as an argument of check_estimator rather than
# as a tag; this is the list to pass.
_EXPECTED_FAILED_CHECKS = {}
