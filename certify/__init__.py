"""hypercert.certify: certified robustness on top of :mod:`intervals`.

Reference architectures (:mod:`certify.models`) from the certified-training literature as plain
``nn.Sequential`` builders, usable unchanged on tensors and on :class:`intervals.Interval` boxes.
"""

from .models import MODELS, build_model

__all__ = ["MODELS", "build_model"]
