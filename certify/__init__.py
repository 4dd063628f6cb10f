"""hypercert.certify: certified robustness on top of :mod:`intervals`.

* :mod:`certify.bounds`: output and margin bounds over L-inf boxes (interval bound propagation),
  with the specification folded into the last layer, and the certificate built on them.
* :mod:`certify.models`: reference architectures from the certified-training literature as plain
  ``nn.Sequential`` builders, usable unchanged on tensors and on :class:`intervals.Interval` boxes.
* :mod:`certify.crown`: CROWN (Zhang et al. 2018) linear bound propagation for ``nn.Sequential``
  models, behind ``method="crown"`` and ``method="crown-ibp"``.
"""

from .bounds import METHODS, certified, compute_bounds, margin_bounds
from .crown import UnsupportedLayer, crown_bounds
from .models import MODELS, build_model

__all__ = [
    "METHODS",
    "MODELS",
    "UnsupportedLayer",
    "build_model",
    "certified",
    "compute_bounds",
    "crown_bounds",
    "margin_bounds",
]
