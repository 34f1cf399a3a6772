"""madis_core: stereo depth models (MaDis matching transformer, CroCo-style ViT, distilled
CNN student, OpenCV SGBM), data, training, metrics, the frame pipeline and inference.
No ROS imports anywhere in this package.

Modules, lowest layer first (a module imports only from its own layer or below;
``test/test_import_graph.py`` checks it):
- ``runtime`` (the thread policy, applied first, on import), ``inference_threads`` (the
  per-call thread count);
- ``registry`` (the registry helper), ``camera`` (rectified geometry), ``io`` (PFM, PNG,
  PLY), ``metrics``, ``rectify`` (rectification maps from a calibration), ``command``;
- ``models`` (registry with ``ModelMeta``, networks, SGBM entries), ``data`` (datasets,
  synthetic generator, training stream);
- ``checkpoint`` (weights files, shipped weights, loading), ``export`` (ONNX, TorchScript);
- ``backends`` (``base``: the backend contract; sgbm, torch, onnxruntime);
- ``estimator`` (``build_estimator``: a user's model string -> ``StereoEstimator``);
- ``pipeline`` (the per-frame pipeline), ``output_files`` (one writer for a frame's files);
- ``evaluate``, ``predict``, ``training`` (engine, tasks, ``madis train``/``distill``);
- ``cli`` (the ``madis`` command).
"""
# First, before anything here imports torch or onnxruntime: the thread policy for a
# shared CPU (OMP_WAIT_POLICY=PASSIVE unless the user's environment says otherwise).
from madis_core.runtime import apply_thread_policy as _apply_thread_policy

_apply_thread_policy()
from madis_core.camera import StereoCamera  # noqa: E402
from madis_core.estimator import StereoEstimator, StereoResult, build_estimator, list_backends  # noqa: E402
from madis_core.metrics import aggregate_metrics, compute_metrics  # noqa: E402

__version__ = "0.1.0"
__all__ = ["StereoCamera", "StereoEstimator", "StereoResult", "aggregate_metrics", "build_estimator",
           "compute_metrics", "list_backends"]
