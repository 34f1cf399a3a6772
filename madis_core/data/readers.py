"""Readers for the public stereo benchmarks in their published layouts, and a plain
folder format for users' own data. Each returns a lazily loaded ``StereoDataset`` of
sample dicts (see ``madis_core.data.sample``).

Layouts (ROOT is what the user passes):

SceneFlow (FlyingThings3D, Monkaa, Driving; any of them under ROOT, or ROOT itself)::

    ROOT/FlyingThings3D/frames_cleanpass/TRAIN/A/0000/{left,right}/0006.png
    ROOT/FlyingThings3D/disparity/TRAIN/A/0000/{left,right}/0006.pfm
    ROOT/Monkaa/frames_finalpass/<scene>/{left,right}/0000.png
    ROOT/Driving/frames_cleanpass/15mm_focallength/scene_forwards/fast/left/0001.png
    (or as the archives unpack: ROOT/flyingthings3d__frames_cleanpass/frames_cleanpass/...
     with ROOT/flyingthings3d__disparity/disparity/...)

KITTI 2015 / 2012 (ROOT contains ``training/``, or is it)::

    2015: training/image_2/000000_10.png  image_3/  disp_occ_0/  disp_noc_0/  calib_cam_to_cam/000000.txt
    2012: training/colored_0/000000_10.png  colored_1/  (or image_0/ image_1/)  disp_occ/  disp_noc/  calib/000000.txt

    Disparity PNGs are uint16, value / 256 px, 0 = no ground truth.

Middlebury 2014 / 2021 / MiddEval3 (every folder below ROOT with calib.txt + im0.png)::

    Motorcycle-perfect/{im0.png, im1.png, im1E.png, im1L.png, disp0.pfm, disp1.pfm, calib.txt}
    trainingH/Adirondack/{im0.png, im1.png, disp0GT.pfm, mask0nocc.png, calib.txt}

    ``right=im1E`` / ``im1L`` picks the 2014 right images with changed exposure /
    lighting; ``rectification=imperfect`` keeps only the ``-imperfect`` scenes. Invalid
    disparities are inf. mask0nocc.png: 255 non-occluded, 128 occluded, 0 no ground truth.

ETH3D two-view::

    ROOT/<scene>/{im0.png, im1.png, calib.txt}  and ground truth either beside them or in
    ROOT_gt/<scene>/ (e.g. two_view_training_gt/) as {disp0GT.pfm, mask0nocc.png}

Folder (users' own data)::

    ROOT/left/NAME.png  ROOT/right/NAME.png  [ROOT/disp/NAME.{pfm,png,npy}]  [ROOT/calib.txt]

    Disparity PNGs use the KITTI convention; calib.txt (optional) the Middlebury one.
    Without disp/ the samples have no ground truth (for distillation from a teacher).
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Tuple

import cv2
import numpy as np

from madis_core.data.calib import kitti_camera, middlebury_camera, parse_kitti_calib, parse_middlebury_calib
from madis_core.data.sample import Sample, StereoDataset, lr_consistency_noc, make_sample
from madis_core.io import read_disparity_png, read_image, read_pfm

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".tif", ".tiff", ".webp")


def _require_dir(root: Path, what: str) -> Path:
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"{what}: dataset root {root} is not a directory")
    return root


def _no_samples(what: str, root: Path, layout: str) -> FileNotFoundError:
    return FileNotFoundError(f"{what}: no samples found under {root}; expected the layout {layout}")


def read_mask(path: Path, threshold: int = 255) -> np.ndarray:
    """A mask PNG -> bool (pixels >= threshold)."""
    m = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if m is None:
        raise ValueError(f"cannot read mask {path}")
    if m.ndim == 3:
        m = m[:, :, 0]
    return m >= threshold


def read_disparity(path: Path) -> np.ndarray:
    """Disparity file by extension: .pfm (float, inf = invalid), .png (KITTI uint16 / 256,
    0 = invalid), .npy (float). Invalid values become NaN."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".pfm":
        d = read_pfm(path)
        if d.ndim == 3:
            d = d[:, :, 0]
    elif suffix == ".png":
        d = read_disparity_png(path)
    elif suffix == ".npy":
        d = np.load(path).astype(np.float32)
    else:
        raise ValueError(f"{path}: unsupported disparity format {suffix!r} (use .pfm, .png or .npy)")
    d = np.array(d, dtype=np.float32)
    d[~np.isfinite(d)] = np.nan
    return d


# --- SceneFlow ----------------------------------------------------------------------------
def _sceneflow_disparity_root(frames: Path) -> Path:
    """``disparity/`` beside ``frames_*pass/``, or, as the archives unpack
    (``flyingthings3d__frames_cleanpass/frames_cleanpass``), in a sibling
    ``*disparity*/disparity`` folder."""
    beside = frames.parent / "disparity"
    if beside.is_dir():
        return beside
    for sibling in sorted(frames.parent.parent.glob("*disparity*")):
        if (sibling / "disparity").is_dir():
            return sibling / "disparity"
    return beside

class SceneFlowDataset(StereoDataset):
    """FlyingThings3D / Monkaa / Driving: PNG frames, PFM disparity for both views.
    ``noc`` comes from a left-right consistency check of the two disparity maps."""

    def __init__(self, root, passes: str = "clean", subset: Optional[str] = None, split: Optional[str] = None):
        root = _require_dir(root, "sceneflow")
        if passes not in ("clean", "final"):
            raise ValueError(f"sceneflow: pass must be 'clean' or 'final', got {passes!r}")
        frames_dir = f"frames_{passes}pass"
        entries = []
        for frames in sorted(p for p in [root, *root.rglob(frames_dir)] if p.name == frames_dir and p.is_dir()):
            for left in sorted(frames.rglob("left/*.png")):
                rel = left.relative_to(frames)
                parts = left.parts
                if subset and subset.lower() not in (s.lower() for s in parts):
                    continue
                if split and split.upper() not in parts:
                    continue
                disp_root = _sceneflow_disparity_root(frames)
                right = frames / rel.parent.parent / "right" / left.name
                dl = disp_root / rel.with_suffix(".pfm")
                dr = disp_root / rel.parent.parent / "right" / (left.stem + ".pfm")
                if right.is_file() and dl.is_file():
                    entries.append((left, right, dl, dr if dr.is_file() else None, str(left.relative_to(root))))
        if not entries:
            raise _no_samples("sceneflow", root, "<subset>/frames_cleanpass/.../left/NNNN.png + <subset>/disparity/.../left/NNNN.pfm")
        super().__init__(f"sceneflow:{root}", entries, max_disparity=256.0)

    def load(self, entry) -> Sample:
        left, right, dl, dr, name = entry
        disp = read_disparity(dl)
        disp_right = read_disparity(dr) if dr is not None else None
        noc = lr_consistency_noc(disp, disp_right) if disp_right is not None else None
        return make_sample(read_image(left), read_image(right), disp, name, noc=noc, disparity_right=disp_right)


# --- KITTI --------------------------------------------------------------------------------
_KITTI = {
    2015: {"left": ("image_2",), "right": ("image_3",), "occ": "disp_occ_0", "noc": "disp_noc_0",
           "calib": ("calib_cam_to_cam", "P_rect_02", "P_rect_03")},
    2012: {"left": ("colored_0", "image_0"), "right": ("colored_1", "image_1"), "occ": "disp_occ", "noc": "disp_noc",
           "calib": ("calib", "P2", "P3")},
}


class KittiDataset(StereoDataset):
    """KITTI 2012 / 2015 training pairs (frame _10 has ground truth). Ground truth is
    sparse: ``valid`` marks the LiDAR pixels, ``noc`` those also visible in the right view."""

    def __init__(self, root, year: int = 2015):
        if year not in _KITTI:
            raise ValueError(f"kitti: year must be 2012 or 2015, got {year}")
        root = _require_dir(root, f"kitti{year}")
        base = root / "training" if (root / "training").is_dir() else root
        lay = _KITTI[year]
        left_dir = next((base / d for d in lay["left"] if (base / d).is_dir()), None)
        right_dir = next((base / d for d in lay["right"] if (base / d).is_dir()), None)
        occ_dir = base / lay["occ"]
        if left_dir is None or right_dir is None or not occ_dir.is_dir():
            raise _no_samples(f"kitti{year}", root,
                              f"training/{{{'|'.join(lay['left'])}}}/NNNNNN_10.png, "
                              f"training/{{{'|'.join(lay['right'])}}}/, training/{lay['occ']}/")
        self.year = year
        self.gray = left_dir.name.startswith("image_") and year == 2012
        entries = []
        for occ in sorted(occ_dir.glob("*_10.png")):
            left, right = left_dir / occ.name, right_dir / occ.name
            if left.is_file() and right.is_file():
                entries.append((left, right, occ, base / lay["noc"] / occ.name, base, occ.stem))
        if not entries:
            raise _no_samples(f"kitti{year}", root, f"training/{lay['occ']}/NNNNNN_10.png with matching images")
        super().__init__(f"kitti{year}:{root}", entries, max_disparity=256.0)

    def _camera(self, base: Path, stem: str, width: int, height: int):
        calib_dir, lkey, rkey = _KITTI[self.year]["calib"]
        if self.gray:
            lkey, rkey = "P0", "P1"
        path = base / calib_dir / (stem.split("_")[0] + ".txt")
        if not path.is_file():
            return None
        return kitti_camera(parse_kitti_calib(path), lkey, rkey, width, height, path)

    def load(self, entry) -> Sample:
        left, right, occ, noc_path, base, name = entry
        disp = read_disparity_png(occ)
        noc = np.isfinite(read_disparity_png(noc_path)) if noc_path.is_file() else None
        li, ri = read_image(left), read_image(right)
        cam = self._camera(base, name, li.shape[1], li.shape[0])
        return make_sample(li, ri, disp, name, noc=noc, camera=cam)


# --- Middlebury -----------------------------------------------------------------------------
class MiddleburyDataset(StereoDataset):
    """Middlebury 2014 (perfect/imperfect, im1E/im1L), 2021 and MiddEval3 scenes."""

    RIGHT_CHOICES = ("im1", "im1E", "im1L")

    def __init__(self, root, right: str = "im1", rectification: str = "any"):
        root = _require_dir(root, "middlebury")
        if right not in self.RIGHT_CHOICES:
            raise ValueError(f"middlebury: right must be one of {self.RIGHT_CHOICES}, got {right!r}")
        if rectification not in ("any", "perfect", "imperfect"):
            raise ValueError(f"middlebury: rectification must be any, perfect or imperfect, got {rectification!r}")
        entries, ndisp = [], []
        for calib in sorted(root.rglob("calib.txt")):
            scene = calib.parent
            if rectification != "any" and not scene.name.endswith("-" + rectification):
                continue
            left, right_img = scene / "im0.png", scene / f"{right}.png"
            disp = next((scene / n for n in ("disp0GT.pfm", "disp0.pfm") if (scene / n).is_file()), None)
            if not (left.is_file() and right_img.is_file() and disp is not None):
                continue
            cal = parse_middlebury_calib(calib)
            ndisp.append(float(cal.get("ndisp", 0)))
            entries.append((left, right_img, disp, scene, cal, str(scene.relative_to(root)) or scene.name))
        if not entries:
            raise _no_samples("middlebury", root, f"<scene>/{{im0.png, {right}.png, disp0.pfm|disp0GT.pfm, calib.txt}}")
        super().__init__(f"middlebury:{root}", entries, max_disparity=max(ndisp) or None)

    def load(self, entry) -> Sample:
        left, right, disp_path, scene, cal, name = entry
        li, ri = read_image(left), read_image(right)
        if ri.shape != li.shape:  # some 2014 im1E/im1L files differ by a pixel; never silently crop
            raise ValueError(f"{scene}: {left.name} {li.shape} and {right.name} {ri.shape} differ in size")
        disp = read_disparity(disp_path)
        noc = None
        if (scene / "mask0nocc.png").is_file():
            noc = read_mask(scene / "mask0nocc.png", 255)
        elif (scene / "disp1.pfm").is_file():
            noc = lr_consistency_noc(disp, read_disparity(scene / "disp1.pfm"))
        cam = middlebury_camera(cal, li.shape[1], li.shape[0])
        return make_sample(li, ri, disp, name, noc=noc, camera=cam)


# --- ETH3D ----------------------------------------------------------------------------------
class ETH3DDataset(StereoDataset):
    """ETH3D two-view stereo (grey scenes, PFM ground truth + non-occlusion mask)."""

    def __init__(self, root, gt_root=None):
        root = _require_dir(root, "eth3d")
        candidates = [Path(gt_root).expanduser()] if gt_root else [root.parent / (root.name + "_gt"), root]
        entries = []
        for calib in sorted(root.rglob("calib.txt")):
            scene = calib.parent
            if not ((scene / "im0.png").is_file() and (scene / "im1.png").is_file()):
                continue
            rel = scene.relative_to(root)
            gt = next((c / rel for c in candidates if (c / rel / "disp0GT.pfm").is_file()), None)
            if gt is None:
                continue
            entries.append((scene, gt, str(rel)))
        if not entries:
            raise _no_samples("eth3d", root, "<scene>/{im0.png, im1.png, calib.txt} with <scene>/disp0GT.pfm "
                              "beside them or in <ROOT>_gt/<scene>/")
        super().__init__(f"eth3d:{root}", entries, max_disparity=64.0)

    def load(self, entry) -> Sample:
        scene, gt, name = entry
        li, ri = read_image(scene / "im0.png"), read_image(scene / "im1.png")
        disp = read_disparity(gt / "disp0GT.pfm")
        noc = read_mask(gt / "mask0nocc.png", 255) if (gt / "mask0nocc.png").is_file() else None
        cam = middlebury_camera(parse_middlebury_calib(scene / "calib.txt"), li.shape[1], li.shape[0])
        return make_sample(li, ri, disp, name, noc=noc, camera=cam)


# --- plain folder ---------------------------------------------------------------------------
class FolderDataset(StereoDataset):
    """``left/``, ``right/`` and optional ``disp/`` with matching file names."""

    DISP_EXTS = (".pfm", ".png", ".npy")

    def __init__(self, root, max_disparity: Optional[float] = None):
        root = _require_dir(root, "folder")
        left_dir, right_dir, disp_dir = root / "left", root / "right", root / "disp"
        if not left_dir.is_dir() or not right_dir.is_dir():
            raise _no_samples("folder", root, "left/NAME.png, right/NAME.png, optional disp/NAME.{pfm,png,npy}")
        rights: Dict[str, Path] = {p.stem: p for p in right_dir.iterdir() if p.suffix.lower() in IMAGE_EXTS}
        entries: List[Tuple[Path, Path, Optional[Path], str]] = []
        for left in sorted(p for p in left_dir.iterdir() if p.suffix.lower() in IMAGE_EXTS):
            if left.stem not in rights:
                raise FileNotFoundError(f"folder: {left} has no matching right image in {right_dir}")
            disp = None
            if disp_dir.is_dir():
                disp = next((disp_dir / (left.stem + e) for e in self.DISP_EXTS if (disp_dir / (left.stem + e)).is_file()), None)
                if disp is None:
                    raise FileNotFoundError(f"folder: {left} has no disparity in {disp_dir} (expected {left.stem}.pfm/.png/.npy)")
            entries.append((left, rights[left.stem], disp, left.stem))
        if not entries:
            raise _no_samples("folder", root, "left/NAME.png, right/NAME.png, optional disp/NAME.{pfm,png,npy}")
        calib = root / "calib.txt"
        self.calib = parse_middlebury_calib(calib) if calib.is_file() else None
        if max_disparity is None and self.calib is not None and self.calib.get("ndisp"):
            max_disparity = float(self.calib["ndisp"])
        super().__init__(f"folder:{root}", entries, max_disparity=max_disparity)

    def load(self, entry) -> Sample:
        left, right, disp, name = entry
        li, ri = read_image(left), read_image(right)
        d = read_disparity(disp) if disp is not None else None
        cam = middlebury_camera(self.calib, li.shape[1], li.shape[0]) if self.calib is not None else None
        return make_sample(li, ri, d, name, camera=cam)
