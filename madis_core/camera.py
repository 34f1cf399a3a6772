"""Rectified stereo camera geometry: disparity <-> depth <-> 3D points.

Conventions (REP 103 optical frame of the left camera: x right, y down, z forward):
    Z = fx * baseline / (d + doffs),  doffs = cx_right - cx_left (px, 0 for most rigs)
    X = (u - cx) * Z / fx,  Y = (v - cy) * Z / fy
Invalid disparities (non-finite, or d + doffs <= 0) give NaN depth and NaN points.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np


@dataclass(frozen=True)
class StereoCamera:
    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    baseline: float  # metres, positive
    doffs: float = 0.0  # cx_right - cx_left, pixels

    def __post_init__(self):
        for name in ("fx", "fy", "baseline"):
            v = float(getattr(self, name))
            if not np.isfinite(v) or v <= 0:
                raise ValueError(f"StereoCamera: {name} must be finite and > 0, got {v}")
        for name in ("cx", "cy", "doffs"):
            if not np.isfinite(float(getattr(self, name))):
                raise ValueError(f"StereoCamera: {name} must be finite, got {getattr(self, name)}")
        if int(self.width) <= 0 or int(self.height) <= 0:
            raise ValueError(f"StereoCamera: image size must be positive, got {self.width}x{self.height}")

    # --- construction -----------------------------------------------------------------
    @classmethod
    def from_projection(cls, p_left, p_right, width: int, height: int) -> "StereoCamera":
        """From the 3x4 projection matrices of a rectified pair (CameraInfo.p)."""
        pl = np.asarray(p_left, dtype=np.float64).reshape(3, 4)
        pr = np.asarray(p_right, dtype=np.float64).reshape(3, 4)
        if not (np.all(np.isfinite(pl)) and np.all(np.isfinite(pr))):
            raise ValueError("projection matrices contain NaN or inf")
        if pr[0, 0] <= 0 or pl[0, 0] <= 0 or pl[1, 1] <= 0:
            raise ValueError(f"focal length must be > 0 (P_left[0,0]={pl[0, 0]}, P_left[1,1]={pl[1, 1]}, P_right[0,0]={pr[0, 0]})")
        baseline = -pr[0, 3] / pr[0, 0]
        if baseline <= 0:
            raise ValueError(f"baseline must be > 0, got {baseline} (from P_right[0,3]={pr[0, 3]}); "
                             "is the right camera_info a rectified right camera with Tx = -fx * baseline?")
        return cls(int(width), int(height), pl[0, 0], pl[1, 1], pl[0, 2], pl[1, 2], baseline, pr[0, 2] - pl[0, 2])

    def projection_matrices(self) -> tuple[np.ndarray, np.ndarray]:
        """3x4 projection matrices (left, right) as CameraInfo.p expects them."""
        pl = np.array([[self.fx, 0, self.cx, 0], [0, self.fy, self.cy, 0], [0, 0, 1, 0]], dtype=np.float64)
        pr = pl.copy()
        pr[0, 2] = self.cx + self.doffs
        pr[0, 3] = -self.fx * self.baseline
        return pl, pr

    def scaled(self, width: int, height: int) -> "StereoCamera":
        """The same camera at another image resolution (disparities scale with sx)."""
        sx, sy = width / self.width, height / self.height
        return replace(self, width=int(width), height=int(height), fx=self.fx * sx, fy=self.fy * sy,
                       cx=self.cx * sx, cy=self.cy * sy, doffs=self.doffs * sx)

    # --- conversions --------------------------------------------------------------------
    @property
    def focal_baseline(self) -> float:
        return self.fx * self.baseline

    def disparity_to_depth(self, disparity: np.ndarray) -> np.ndarray:
        d = np.asarray(disparity, dtype=np.float32) + np.float32(self.doffs)
        with np.errstate(divide="ignore", invalid="ignore"):
            depth = np.float32(self.focal_baseline) / d
        depth[~(d > 0) | ~np.isfinite(d) | ~np.isfinite(depth)] = np.nan
        return depth

    def depth_to_disparity(self, depth: np.ndarray) -> np.ndarray:
        z = np.asarray(depth, dtype=np.float32)
        with np.errstate(divide="ignore", invalid="ignore"):
            d = np.float32(self.focal_baseline) / z - np.float32(self.doffs)
        d[~(z > 0) | ~np.isfinite(d)] = np.nan
        return d

    def depth_to_points(self, depth: np.ndarray) -> np.ndarray:
        """HxW depth (m) -> HxWx3 points in the left optical frame (NaN where depth is)."""
        z = np.asarray(depth, dtype=np.float32)
        h, w = z.shape
        u = (np.arange(w, dtype=np.float32) - np.float32(self.cx)) / np.float32(self.fx)
        v = (np.arange(h, dtype=np.float32) - np.float32(self.cy)) / np.float32(self.fy)
        pts = np.empty((h, w, 3), dtype=np.float32)
        np.multiply(z, u[None, :], out=pts[..., 0])
        np.multiply(z, v[:, None], out=pts[..., 1])
        pts[..., 2] = z
        return pts

    def disparity_to_points(self, disparity: np.ndarray) -> np.ndarray:
        return self.depth_to_points(self.disparity_to_depth(disparity))

    def points_to_disparity(self, points: np.ndarray) -> np.ndarray:
        """HxWx3 points -> HxW disparity (from z; NaN where invalid)."""
        return self.depth_to_disparity(np.asarray(points)[..., 2])

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Nx3 points -> (u, v, disparity) in the left image."""
        p = np.asarray(points, dtype=np.float64)
        z = p[:, 2]
        return self.fx * p[:, 0] / z + self.cx, self.fy * p[:, 1] / z + self.cy, self.focal_baseline / z - self.doffs
