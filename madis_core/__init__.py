"""madis_core: stereo depth models (MaDis-Stereo transformer, distilled CNN student),
data, training, metrics and inference. No ROS imports anywhere in this package."""
from madis_core.camera import StereoCamera
from madis_core.estimator import StereoEstimator, StereoResult, list_backends
from madis_core.metrics import aggregate_metrics, compute_metrics

__version__ = "0.1.0"
__all__ = ["StereoCamera", "StereoEstimator", "StereoResult", "aggregate_metrics", "compute_metrics", "list_backends"]
