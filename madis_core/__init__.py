"""madis_core: stereo depth models (MaDis-Stereo transformer, distilled CNN student),
data, training, metrics and inference. No ROS imports anywhere in this package."""
# First, before anything here imports torch or onnxruntime: the thread policy for a
# shared CPU (OMP_WAIT_POLICY=PASSIVE unless the user's environment says otherwise).
from madis_core.runtime import apply_thread_policy as _apply_thread_policy

_apply_thread_policy()
from madis_core.camera import StereoCamera
from madis_core.estimator import StereoEstimator, StereoResult, list_backends
from madis_core.metrics import aggregate_metrics, compute_metrics

__version__ = "0.1.0"
__all__ = ["StereoCamera", "StereoEstimator", "StereoResult", "aggregate_metrics", "compute_metrics", "list_backends"]
