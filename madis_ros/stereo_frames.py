"""One stereo frame from its four messages to the pipeline's result, or a drop with its reason
(no ROS imports). The node's worker and ``madis-bag eval`` both run frames through
``MessageFrameProcessor``, so they decode, validate and compute the same way and count
drops under the same reasons.

    frames = MessageFrameProcessor(StereoFrameProcessor(estimator, settings), topics)
    try:
        res = frames.process(left, right, left_info, right_info, compute_points=True)
    except FrameDropped as drop:
        drop.reason, drop.text, drop.level      # e.g. "bad_camera_info", the warning text, "warning"
"""
from __future__ import annotations

import sys
from typing import Any, Dict, Optional

from madis_core.pipeline import FrameResult, StereoFrameProcessor, inference_size
from madis_ros.camera_info import CameraInfoError, stereo_camera_from_infos
from madis_ros.frame_sync import LEFT, LEFT_INFO, RIGHT, RIGHT_INFO
from madis_ros.image_conversion import ImageConversionError, UnsupportedEncodingError, image_to_estimator_input

#: every reason a synchronised pair can be dropped for, in the order /diagnostics lists them
DROP_REASONS = ("superseded", "no_camera_info", "bad_camera_info", "unsupported_encoding", "malformed_image",
                "mismatched_pair", "inference_oom", "inference_error")
DEFAULT_TOPICS = {LEFT: "left/image_rect", RIGHT: "right/image_rect", LEFT_INFO: "left/camera_info",
                  RIGHT_INFO: "right/camera_info"}


class FrameDropped(Exception):
    """A frame that produced no output: ``reason`` (one of DROP_REASONS), ``text`` (what to tell
    the user) and ``level`` ("warning", or "error" for failures of the model itself)."""

    def __init__(self, reason: str, text: str, level: str = "warning"):
        super().__init__(f"{reason}: {text}")
        self.reason, self.text, self.level = reason, text, level


def is_out_of_memory(e: BaseException) -> bool:
    """CUDA OOM (torch.cuda.OutOfMemoryError) or a failed host allocation (MemoryError, torch's
    DefaultCPUAllocator 'can't allocate memory')."""
    text = str(e).lower()
    return (isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError" or "out of memory" in text
            or "can't allocate memory" in text)


class MessageFrameProcessor:
    def __init__(self, processor: StereoFrameProcessor, topics: Optional[Dict[str, str]] = None,
                 calibration_hint: str = ""):
        """``topics``: role -> topic name used in the drop texts (default: the node's relative names);
        ``calibration_hint``: appended to the no-camera_info text (the node names its QoS)."""
        self.processor = processor
        self.topics = {**DEFAULT_TOPICS, **(topics or {})}
        self.calibration_hint = calibration_hint

    @property
    def estimator(self) -> Any:
        return self.processor.estimator

    def process(self, left: Any, right: Any, left_info: Any, right_info: Any,
                compute_points: Optional[bool] = None) -> FrameResult:
        """The frame's result; raises FrameDropped for bad input or a failed inference."""
        if left_info is None or right_info is None:
            missing = [self.topics[r] for r, m in ((LEFT_INFO, left_info), (RIGHT_INFO, right_info)) if m is None]
            raise FrameDropped("no_camera_info", f"no camera_info received yet on {', '.join(missing)}"
                               f"{self.calibration_hint}; depth needs the calibration")
        try:
            limg = image_to_estimator_input(left)
            rimg = image_to_estimator_input(right)
        except UnsupportedEncodingError as e:
            raise FrameDropped("unsupported_encoding", str(e)) from None
        except ImageConversionError as e:
            raise FrameDropped("malformed_image", str(e)) from None
        if limg.shape[:2] != rimg.shape[:2] or limg.dtype != rimg.dtype or limg.ndim != rimg.ndim:
            raise FrameDropped("mismatched_pair", f"left is {left.width}x{left.height} {left.encoding}, right is "
                               f"{right.width}x{right.height} {right.encoding}; both must have the same size and format")
        try:
            camera = stereo_camera_from_infos(left_info, right_info, image_size=(limg.shape[1], limg.shape[0]))
        except (CameraInfoError, ValueError) as e:
            raise FrameDropped("bad_camera_info", f"{e} (topics {self.topics[LEFT_INFO]}, {self.topics[RIGHT_INFO]})"
                               ) from None
        try:
            return self.processor.process(limg, rimg, camera, compute_points=compute_points)
        except Exception as e:
            est = self.estimator
            if is_out_of_memory(e):
                torch = sys.modules.get("torch")
                if torch is not None and torch.cuda.is_available():
                    torch.cuda.empty_cache()
                wi, hi = inference_size(limg.shape[1], limg.shape[0], self.processor.settings)
                raise FrameDropped("inference_oom", f"out of memory running {est.name} on {est.device} at {wi}x{hi} "
                                   f"(input {limg.shape[1]}x{limg.shape[0]}): frame dropped, processing continues; "
                                   "lower inference_scale or use a smaller model", "error") from None
            raise FrameDropped("inference_error", f"inference failed on {limg.shape[1]}x{limg.shape[0]} input: "
                               f"{type(e).__name__}: {e}", "error") from None
