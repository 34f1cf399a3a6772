"""Estimator backends; importing this package registers them."""
from madis_core.backends import sgbm, torch_backend  # noqa: F401

try:  # onnxruntime is optional at import time
    from madis_core.backends import onnx_backend  # noqa: F401
except ImportError:  # pragma: no cover - depends on the install
    pass
