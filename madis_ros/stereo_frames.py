"""One stereo frame from its four synchronised messages to the pipeline's result, or a drop with its
reason (no ROS imports). The node's worker and ``madis-bag eval`` both run frames through
``MessageFrameProcessor``, so they decode, rectify, validate and compute the same way and count
drops under the same reasons.

    frames = MessageFrameProcessor(StereoFrameProcessor(estimator, settings), topics, rectify="auto")
    try:
        frame = frames.process(left, right, left_info, right_info, compute_points=True)
        frame.result, frame.notes      # FrameResult; [(key, text)] worth a (rate-limited) warning
    except FrameDropped as drop:
        drop.reason, drop.text, drop.level      # e.g. "bad_camera_info", the warning text, "warning"

Images are ``sensor_msgs/Image`` or ``CompressedImage`` (jpeg/png). The calibration of each
frame is its own camera_info pair (the synchroniser pairs all four); its stereo camera and,
for raw images, its rectification maps are built once per calibration (``calibration``).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from madis_core.pipeline import FrameResult, InputTooSmallError, StereoFrameProcessor, inference_size
from madis_ros.calibration import CalibrationCache, StereoCalibration
from madis_ros.camera_info import CameraInfoError
from madis_ros.frame_sync import LEFT, LEFT_INFO, RIGHT, RIGHT_INFO
from madis_ros.image_conversion import ImageConversionError, UnsupportedEncodingError, image_to_estimator_input

#: every reason a synchronised frame can be dropped for, in the order /diagnostics lists them
DROP_REASONS = ("superseded", "bad_camera_info", "unsupported_encoding", "malformed_image", "mismatched_pair",
                "input_too_small", "inference_oom", "inference_error")
DEFAULT_TOPICS = {LEFT: "left/image_rect", RIGHT: "right/image_rect", LEFT_INFO: "left/camera_info",
                  RIGHT_INFO: "right/camera_info"}


class FrameDropped(Exception):
    """A frame that produced no output: ``reason`` (one of DROP_REASONS), ``text`` (what to tell
    the user) and ``level`` ("warning", or "error" for failures of the model itself)."""

    def __init__(self, reason: str, text: str, level: str = "warning"):
        super().__init__(f"{reason}: {text}")
        self.reason, self.text, self.level = reason, text, level


@dataclass
class Frame:
    result: FrameResult
    calibration: StereoCalibration
    #: (key, text) for things worth a warning that do not stop the frame (frame_id problems,
    #: the first use of a calibration: rectifying raw images)
    notes: List[Tuple[str, str]] = field(default_factory=list)
    #: the left and right images as decoded and rectified, before the pipeline's resize
    images: Optional[Tuple[np.ndarray, np.ndarray]] = None


def is_out_of_memory(e: BaseException) -> bool:
    """CUDA OOM (torch.cuda.OutOfMemoryError) or a failed host allocation (MemoryError, torch's
    DefaultCPUAllocator 'can't allocate memory')."""
    text = str(e).lower()
    return (isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError" or "out of memory" in text
            or "can't allocate memory" in text)


class MessageFrameProcessor:
    def __init__(self, processor: Optional[StereoFrameProcessor], topics: Optional[Dict[str, str]] = None,
                 rectify: str = "auto", frame_id: str = ""):
        """``processor``: the pipeline (None: ``decode`` only); ``topics``: role -> topic name used in
        the texts (default: the node's relative names);
        ``rectify``: auto, true or false (``calibration.RECTIFY_MODES``); ``frame_id``: the node's
        output frame parameter (empty: the left image's, which must then not be empty)."""
        self.processor = processor
        self.topics = {**DEFAULT_TOPICS, **(topics or {})}
        self.calibrations = CalibrationCache(rectify)
        self.frame_id = frame_id

    @property
    def estimator(self) -> Any:
        return self.processor.estimator

    def reset(self) -> None:
        """A new stream (stamps went back): forget what was measured from the old one."""
        self.processor.reset()

    def process(self, left: Any, right: Any, left_info: Any, right_info: Any,
                compute_points: Optional[bool] = None) -> Frame:
        """The frame's result; raises FrameDropped for bad input or a failed inference."""
        limg, rimg, cal = self.decode(left, right, left_info, right_info)
        notes = self._notes(left, right, left_info, right_info, cal)
        try:
            valid = cal.rectifier.valid[0] if cal.rectifier is not None else None
            result = self.processor.process(limg, rimg, cal.camera, compute_points=compute_points, valid=valid)
        except InputTooSmallError as e:
            raise FrameDropped("input_too_small", str(e)) from None
        except Exception as e:
            raise self._inference_failure(e, limg.shape[1], limg.shape[0]) from None
        return Frame(result, cal, notes, (limg, rimg))

    def decode(self, left: Any, right: Any, left_info: Any, right_info: Any
               ) -> Tuple[np.ndarray, np.ndarray, StereoCalibration]:
        """The frame's images as the model sees them (decoded, checked, rectified when raw) and its
        calibration; raises FrameDropped for bad input. ``process`` starts here, and so does
        adaptation from a bag (``madis_ros.bag.pair_source``)."""
        try:
            limg = image_to_estimator_input(left)
            rimg = image_to_estimator_input(right)
        except UnsupportedEncodingError as e:
            raise FrameDropped("unsupported_encoding", str(e)) from None
        except ImageConversionError as e:
            raise FrameDropped("malformed_image", str(e)) from None
        if limg.shape[:2] != rimg.shape[:2] or limg.dtype != rimg.dtype or limg.ndim != rimg.ndim:
            raise FrameDropped("mismatched_pair", f"left is {_describe(left, limg)}, right is {_describe(right, rimg)}; "
                               "both must have the same size and format")
        try:
            cal = self.calibrations.get(left_info, right_info, (limg.shape[1], limg.shape[0]))
            if cal.rectifier is not None:
                limg, rimg = cal.rectifier(limg, rimg)
        except (CameraInfoError, ValueError) as e:
            raise FrameDropped("bad_camera_info", f"{e} (topics {self.topics[LEFT_INFO]}, {self.topics[RIGHT_INFO]})"
                               ) from None
        return limg, rimg, cal

    def _notes(self, left: Any, right: Any, left_info: Any, right_info: Any, cal: StereoCalibration
               ) -> List[Tuple[str, str]]:
        notes = []
        if cal.first_use and cal.rectifier is not None:
            notes.append(("rectify", f"rectifying the input images with their camera_info ({cal.describe})"))
        elif cal.first_use and cal.raw:
            notes.append(("raw_not_rectified", f"camera_info says the images are raw ({cal.describe}) but rectify is "
                                               "false: they are used as they are and depth will be wrong; set "
                                               "rectify:=auto"))
        for side, img, info in (("left", left, left_info), ("right", right, right_info)):
            if img.header.frame_id != info.header.frame_id:
                notes.append((f"frame_id_{side}", f"{side} image frame_id {img.header.frame_id!r} differs from its "
                                                  f"camera_info's {info.header.frame_id!r}"))
        if not self.frame_id and not left.header.frame_id:
            notes.append(("frame_id_empty", "the left image has an empty frame_id, so the outputs have none (RViz and "
                                            "tf cannot place them); set the frame_id parameter"))
        return notes

    def _inference_failure(self, e: Exception, w: int, h: int) -> FrameDropped:
        est = self.estimator
        if is_out_of_memory(e):
            torch = sys.modules.get("torch")
            if torch is not None and torch.cuda.is_available():
                torch.cuda.empty_cache()
            wi, hi = inference_size(w, h, self.processor.settings)
            return FrameDropped("inference_oom", f"out of memory running {est.name} on {est.device} at {wi}x{hi} "
                                f"(input {w}x{h}): frame dropped, processing continues; lower inference_scale or "
                                "use a smaller model", "error")
        return FrameDropped("inference_error", f"inference failed on {w}x{h} input: {type(e).__name__}: {e}", "error")


def _describe(msg: Any, img: Any) -> str:
    kind = getattr(msg, "encoding", None) or f"compressed {getattr(msg, 'format', '?')}"
    return f"{img.shape[1]}x{img.shape[0]} {kind}"
