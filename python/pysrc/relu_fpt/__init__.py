"""relu-fpt: learn deep ReLU networks from Gaussian samples.

Filtered PCA finds the span of the first-layer weights from second moments of x filtered by
the label; a small ReLU network is then fitted on the projection z = B x and polished
together with B. The computations run in Rust (all CPU cores, or a GPU through wgpu).

- :class:`ReluNetRegressor`: the scikit-learn estimator.
- :func:`find_subspace`: the relevant subspace alone (filtered PCA, or pHd / SIR / SAVE).
- :func:`make_teacher`: samples of the built-in teacher networks.
- :func:`load` / :meth:`Network.save`: relu-fpt/network JSON files;
  :meth:`Network.to_onnx`: ONNX export.
"""

from ._api import find_subspace, load, make_teacher
from ._core import Network, __version__
from ._estimator import ReluNetRegressor

__all__ = [
    "Network",
    "ReluNetRegressor",
    "__version__",
    "find_subspace",
    "load",
    "make_teacher",
]
