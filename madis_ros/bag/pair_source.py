"""Unlabeled stereo pairs of a rosbag2 for ``madis adapt --data BAG``.

The bag is read as ``madis-bag eval`` reads it: the same topic detection (``bag.topics``), the
node's synchroniser over images and camera_infos (``bag.frames``), and the node's decoding,
checks and rectification of raw images (``stereo_frames.MessageFrameProcessor.decode``). A
ground-truth topic, if the bag has one, is left out of the topics: it is neither paired nor
decoded, so adaptation cannot see it. Frames that the node would drop (bad camera_info,
unsupported encoding, mismatched sizes) are skipped and counted in ``skipped``.

``madis_core`` finds this class through the ``madis_core.pair_sources`` entry point
(``setup.py``), so it never imports ``madis_ros``.
"""
from __future__ import annotations

import os
from collections import Counter
from typing import Iterator, Optional

from madis_core.adaptation.sources import UnlabeledPair, looks_like_rosbag2
from madis_ros.bag.files import BagReader
from madis_ros.bag.frames import iter_stereo_frames
from madis_ros.bag.topics import StereoTopics, detect_stereo_topics
from madis_ros.frame_sync import LEFT, LEFT_INFO, RIGHT, RIGHT_INFO
from madis_ros.stereo_frames import FrameDropped, MessageFrameProcessor


class BagPairSource:
    """Synchronised, decoded, rectified pairs of a rosbag2; no ground truth."""

    def __init__(self, path: str | os.PathLike,        # bag directory or .mcap/.db3 file
                 left: Optional[str] = None,           # left image topic (auto-detected when None)
                 right: Optional[str] = None,          # right image topic (auto-detected when None)
                 approximate: bool = False,            # approximate-time pairing (the node's approximate_sync)
                 slop: float = 0.01,                   # its tolerance in seconds
                 rectify: str = "auto",                # the node's rectify parameter: auto, true or false
                 every: int = 1):                      # keep every N-th pair (recordings are redundant)
        self.path = str(path)
        self.approximate, self.slop, self.rectify, self.every = approximate, slop, rectify, max(1, int(every))
        with BagReader(self.path) as bag:
            found = detect_stereo_topics(bag.topics, left, right)
        # the same topics minus ground truth: the synchroniser never waits for it, nobody decodes it
        self.topics = StereoTopics(found.left, found.right, found.left_info, found.right_info)
        self.skipped: Counter = Counter()  # drop reason -> frames skipped
        self.description = f"bag {self.path} ({self.topics.left}, {self.topics.right})"

    accepts = staticmethod(looks_like_rosbag2)  # the plugin test of madis_core.adaptation.sources

    def __iter__(self) -> Iterator[UnlabeledPair]:
        st = self.topics
        decoder = MessageFrameProcessor(None, {LEFT: st.left, RIGHT: st.right, LEFT_INFO: st.left_info,
                                               RIGHT_INFO: st.right_info}, self.rectify)
        with BagReader(self.path) as bag:
            frames, _ = iter_stereo_frames(bag, st, approximate=self.approximate, slop=self.slop)
            for i, frame in enumerate(frames):
                if i % self.every:
                    continue
                try:
                    left, right, _ = decoder.decode(frame.left, frame.right, frame.left_info, frame.right_info)
                except FrameDropped as drop:
                    self.skipped[drop.reason] += 1
                    continue
                yield UnlabeledPair(left, right, f"stamp_{frame.stamp_ns}")
