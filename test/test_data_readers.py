"""Dataset readers on small fixtures written in each benchmark's published layout and
file formats (PFM of both endiannesses, KITTI uint16 PNG, Middlebury/ETH3D calib.txt),
plus the Motorcycle pair and dataset specs."""
from __future__ import annotations

import struct
from pathlib import Path

import cv2
import numpy as np
import pytest

from madis_core.data import (ETH3DDataset, FolderDataset, KittiDataset, MiddleburyDataset, SceneFlowDataset,
                             build_dataset, load_motorcycle, lr_consistency_noc, parse_spec, read_disparity)
from madis_core.data.calib import CalibrationError, parse_middlebury_calib

H, W = 12, 20
RNG = np.random.default_rng(7)


# --- fixture writers (byte level, independent of madis_core.io) ------------------------------
def pfm_bytes(arr: np.ndarray, little: bool, scale: float = 1.0) -> bytes:
    """PFM as published: header, 'W H', scale whose sign is the endianness
    (negative = little), rows stored bottom to top."""
    arr = np.asarray(arr, np.float32)
    header = b"PF" if arr.ndim == 3 else b"Pf"
    s = -abs(scale) if little else abs(scale)
    body = np.flipud(arr).astype("<f4" if little else ">f4").tobytes()
    return header + b"\n" + f"{arr.shape[1]} {arr.shape[0]}\n{s}\n".encode() + body


def write_pfm_file(path: Path, arr, little=True, scale=1.0):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pfm_bytes(arr, little, scale))


def write_png(path: Path, arr: np.ndarray):
    """RGB (converted to OpenCV's BGR), grey or uint16 PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR) if arr.ndim == 3 else arr
    assert cv2.imwrite(str(path), img)


def kitti_png(disp: np.ndarray) -> np.ndarray:
    """KITTI encoding: uint16 = round(d * 256), 0 = no ground truth."""
    raw = np.zeros(disp.shape, np.uint16)
    ok = np.isfinite(disp) & (disp > 0)
    raw[ok] = np.round(disp[ok] * 256).astype(np.uint16)
    return raw


def rgb(h=H, w=W):
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


MOTORCYCLE_CALIB = """cam0=[3979.911 0 1244.772; 0 3979.911 1019.507; 0 0 1]
cam1=[3979.911 0 1369.115; 0 3979.911 1019.507; 0 0 1]
doffs=124.343
baseline=193.001
width=2964
height=2000
ndisp=270
isint=0
vmin=23
vmax=245
dyavg=0
dymax=0
"""


# --- PFM ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("little", [True, False])
def test_pfm_endianness_scale_sign_and_row_order(tmp_path, little):
    d = np.arange(H * W, dtype=np.float32).reshape(H, W) / 7.0
    d[0, 0] = np.inf  # Middlebury / ETH3D mark missing ground truth with inf
    write_pfm_file(tmp_path / "d.pfm", d, little=little, scale=1.0)
    raw = (tmp_path / "d.pfm").read_bytes()
    assert raw.split(b"\n")[2].startswith(b"-") == little
    # the first stored value is the bottom-left pixel
    first = struct.unpack("<f" if little else ">f", raw[len(raw) - H * W * 4:][:4])[0]
    assert first == pytest.approx(d[-1, 0])
    out = read_disparity(tmp_path / "d.pfm")
    assert out.dtype == np.float32 and out.shape == (H, W)
    assert np.isnan(out[0, 0])
    np.testing.assert_array_equal(out[1:], d[1:])


def test_pfm_colour_disparity_takes_first_channel(tmp_path):
    d = RNG.uniform(1, 50, (H, W)).astype(np.float32)
    write_pfm_file(tmp_path / "c.pfm", np.stack([d, d * 0, d * 0], axis=2), little=False, scale=2.5)
    np.testing.assert_array_equal(read_disparity(tmp_path / "c.pfm"), d)


# --- KITTI ----------------------------------------------------------------------------------------
KITTI15_CALIB = """calib_time: 09-Jan-2012 13:57:47
corner_dist: 9.950000e-02
S_rect_02: 1.242000e+03 3.750000e+02
P_rect_02: 7.215377e+02 0.000000e+00 6.095593e+02 4.485728e+01 0.000000e+00 7.215377e+02 1.728540e+02 2.163791e-01 0.000000e+00 0.000000e+00 1.000000e+00 2.745884e-03
S_rect_03: 1.242000e+03 3.750000e+02
P_rect_03: 7.215377e+02 0.000000e+00 6.095593e+02 -3.395242e+02 0.000000e+00 7.215377e+02 1.728540e+02 2.199936e+00 0.000000e+00 0.000000e+00 1.000000e+00 2.729905e-03
"""
KITTI12_CALIB = """P0: 7.070912e+02 0.000000e+00 6.018873e+02 0.000000e+00 0.000000e+00 7.070912e+02 1.831104e+02 0.000000e+00 0.000000e+00 0.000000e+00 1.000000e+00 0.000000e+00
P1: 7.070912e+02 0.000000e+00 6.018873e+02 -3.798145e+02 0.000000e+00 7.070912e+02 1.831104e+02 0.000000e+00 0.000000e+00 0.000000e+00 1.000000e+00 0.000000e+00
P2: 7.070912e+02 0.000000e+00 6.018873e+02 4.688783e+01 0.000000e+00 7.070912e+02 1.831104e+02 1.178601e-01 0.000000e+00 0.000000e+00 1.000000e+00 6.203223e-03
P3: 7.070912e+02 0.000000e+00 6.018873e+02 -3.334597e+02 0.000000e+00 7.070912e+02 1.831104e+02 1.930130e+00 0.000000e+00 0.000000e+00 1.000000e+00 3.318498e-03
"""


def _kitti_disp():
    d = RNG.uniform(1, 120, (H, W)).astype(np.float32)
    d = np.round(d * 256) / 256  # representable
    d[RNG.random((H, W)) < 0.4] = np.nan  # sparse LiDAR ground truth
    noc = d.copy()
    noc[:, :4] = np.nan  # occluded strip left out of disp_noc
    return d, noc


def test_kitti2015_layout(tmp_path):
    t = tmp_path / "kitti15" / "training"
    d, noc = _kitti_disp()
    left, right = rgb(), rgb()
    write_png(t / "image_2" / "000000_10.png", left)
    write_png(t / "image_3" / "000000_10.png", right)
    write_png(t / "image_2" / "000000_11.png", rgb())  # next frame: no ground truth, not a sample
    write_png(t / "disp_occ_0" / "000000_10.png", kitti_png(d))
    write_png(t / "disp_noc_0" / "000000_10.png", kitti_png(noc))
    (t / "calib_cam_to_cam").mkdir()
    (t / "calib_cam_to_cam" / "000000.txt").write_text(KITTI15_CALIB)
    ds = build_dataset(f"kitti2015:{tmp_path / 'kitti15'}")
    assert isinstance(ds, KittiDataset) and len(ds) == 1
    s = ds[0]
    assert s["name"] == "000000_10"
    np.testing.assert_array_equal(s["left"], left)
    np.testing.assert_array_equal(s["right"], right)
    np.testing.assert_array_equal(np.isnan(s["disparity"]), np.isnan(d))
    np.testing.assert_allclose(s["disparity"][s["valid"]], d[np.isfinite(d)], atol=1 / 512)
    assert not s["valid"][np.isnan(d)].any()
    np.testing.assert_array_equal(s["noc"], np.isfinite(noc))
    cam = s["camera"]
    assert (cam.width, cam.height) == (W, H)
    # the 2-3 baseline from P_rect (both carry an offset relative to camera 0): ~0.532 m
    assert cam.baseline == pytest.approx((44.85728 + 339.5242) / 721.5377, rel=1e-6)
    assert cam.fx == pytest.approx(721.5377) and cam.doffs == pytest.approx(0.0)


def test_kitti2012_layout_colour_and_grey(tmp_path):
    t = tmp_path / "training"  # root may also be the training folder itself
    d, noc = _kitti_disp()
    for name in ("000003_10.png", "000001_10.png"):
        write_png(t / "colored_0" / name, rgb())
        write_png(t / "colored_1" / name, rgb())
        write_png(t / "disp_occ" / name, kitti_png(d))
        write_png(t / "disp_noc" / name, kitti_png(noc))
    (t / "calib").mkdir()
    for stem in ("000001", "000003"):
        (t / "calib" / f"{stem}.txt").write_text(KITTI12_CALIB)
    ds = build_dataset(f"kitti2012:{t}")
    assert [ds[i]["name"] for i in range(len(ds))] == ["000001_10", "000003_10"]
    cam = ds[0]["camera"]
    assert cam.baseline == pytest.approx((46.88783 + 333.4597) / 707.0912, rel=1e-6)
    # grey images only: image_0/image_1 with P0/P1
    t2 = tmp_path / "grey" / "training"
    g0 = RNG.integers(0, 256, (H, W), dtype=np.uint8)
    write_png(t2 / "image_0" / "000000_10.png", g0)
    write_png(t2 / "image_1" / "000000_10.png", g0)
    write_png(t2 / "disp_occ" / "000000_10.png", kitti_png(d))
    (t2 / "calib").mkdir()
    (t2 / "calib" / "000000.txt").write_text(KITTI12_CALIB)
    s = KittiDataset(tmp_path / "grey", year=2012)[0]
    assert s["left"].shape == (H, W, 3) and (s["left"][..., 0] == g0).all()
    assert s["camera"].baseline == pytest.approx(379.8145 / 707.0912, rel=1e-6)
    assert "noc" not in s  # no disp_noc folder


def test_kitti_missing_layout_is_a_clear_error(tmp_path):
    (tmp_path / "training" / "image_2").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="disp_occ_0"):
        build_dataset(f"kitti2015:{tmp_path}")


# --- Middlebury -------------------------------------------------------------------------------------
def test_middlebury_calib_parsing(tmp_path):
    (tmp_path / "calib.txt").write_text(MOTORCYCLE_CALIB)
    c = parse_middlebury_calib(tmp_path / "calib.txt")
    assert c["cam0"].shape == (3, 3) and c["cam0"][0, 0] == 3979.911 and c["cam1"][0, 2] == 1369.115
    assert c["doffs"] == 124.343 and c["baseline"] == 193.001 and c["ndisp"] == 270 and c["vmax"] == 245
    (tmp_path / "bad.txt").write_text("cam0=[1 0 2; 0 1 2]\ncam1=[1 0 2; 0 1 2; 0 0 1]\nbaseline=1\n")
    with pytest.raises(CalibrationError, match="3x3"):
        parse_middlebury_calib(tmp_path / "bad.txt")
    (tmp_path / "nobase.txt").write_text("cam0=[1 0 2; 0 1 2; 0 0 1]\ncam1=[1 0 2; 0 1 2; 0 0 1]\n")
    with pytest.raises(CalibrationError, match="baseline"):
        parse_middlebury_calib(tmp_path / "nobase.txt")


def _middlebury_scene(scene: Path, d0: np.ndarray, d1: np.ndarray, little=True):
    scene.mkdir(parents=True)
    for name in ("im0", "im1", "im1E", "im1L"):
        write_png(scene / f"{name}.png", rgb(H, W))
    write_pfm_file(scene / "disp0.pfm", d0, little=little)
    write_pfm_file(scene / "disp1.pfm", d1, little=not little)
    (scene / "calib.txt").write_text(MOTORCYCLE_CALIB)


def _consistent_pair():
    """Left/right disparities of a fronto-parallel square (d=8) over a plane (d=3):
    left pixels just left of the square are occluded in the right view."""
    dl = np.full((H, W), 3.0, np.float32)
    dl[3:9, 10:16] = 8.0
    dr = np.full((H, W), 3.0, np.float32)
    dr[3:9, 2:8] = 8.0
    return dl, dr


def test_middlebury_2014_layout_variants_and_noc(tmp_path):
    dl, dr = _consistent_pair()
    dl_inf = dl.copy()
    dl_inf[0, :3] = np.inf
    _middlebury_scene(tmp_path / "Motorcycle-perfect", dl_inf, dr)
    _middlebury_scene(tmp_path / "Motorcycle-imperfect", dl_inf, dr, little=False)
    ds = build_dataset(f"middlebury:{tmp_path}")
    assert len(ds) == 2 and ds.max_disparity == 270
    s = ds[1]
    assert s["name"] == "Motorcycle-perfect"
    assert np.isnan(s["disparity"][0, :3]).all() and not s["valid"][0, :3].any()
    np.testing.assert_array_equal(s["disparity"][1:], dl[1:])
    # noc from the left-right check of disp0/disp1: the strip uncovered by the square
    expected_occ = np.zeros((H, W), bool)
    expected_occ[3:9, 5:10] = True  # x - 3 falls on the square (d=8) in the right view
    expected_occ[:, :3] = True  # x - 3 < 0: outside the right image
    np.testing.assert_array_equal(s["noc"], ~expected_occ & s["valid"])
    cam = s["camera"]  # calibration at 2964x2000 scaled to the 20x12 fixture
    assert cam.fx == pytest.approx(3979.911 * W / 2964) and cam.fy == pytest.approx(3979.911 * H / 2000)
    assert cam.baseline == pytest.approx(0.193001) and cam.doffs == pytest.approx(124.343 * W / 2964)
    # right-image variants and the rectification filter
    im1e = cv2.cvtColor(cv2.imread(str(tmp_path / "Motorcycle-imperfect" / "im1E.png")), cv2.COLOR_BGR2RGB)
    s_e = build_dataset(f"middlebury:{tmp_path}?right=im1E&rectification=imperfect")
    assert len(s_e) == 1
    np.testing.assert_array_equal(s_e[0]["right"], im1e)
    with pytest.raises(ValueError, match="unknown options"):
        build_dataset(f"middlebury:{tmp_path}?exposure=E")
    with pytest.raises(ValueError, match="right must be"):
        MiddleburyDataset(tmp_path, right="im2")


def test_middeval3_layout_with_nonocclusion_mask(tmp_path):
    scene = tmp_path / "trainingQ" / "Adirondack"
    scene.mkdir(parents=True)
    write_png(scene / "im0.png", rgb())
    write_png(scene / "im1.png", rgb())
    d = RNG.uniform(5, 40, (H, W)).astype(np.float32)
    d[2, 2] = np.inf
    write_pfm_file(scene / "disp0GT.pfm", d, little=True)
    mask = np.full((H, W), 255, np.uint8)
    mask[:, :5] = 128  # occluded
    mask[2, 2] = 0  # no ground truth
    write_png(scene / "mask0nocc.png", mask)
    (scene / "calib.txt").write_text(MOTORCYCLE_CALIB.replace("width=2964", f"width={W}").replace("height=2000", f"height={H}"))
    (tmp_path / "testQ" / "Australia").mkdir(parents=True)  # test split: no ground truth, skipped
    s = build_dataset(f"middlebury:{tmp_path}")[0]
    assert s["name"] == "trainingQ/Adirondack"
    assert s["valid"].sum() == H * W - 1
    np.testing.assert_array_equal(s["noc"], mask == 255)
    assert s["camera"].fx == pytest.approx(3979.911)  # calib already at image size: unscaled


# --- ETH3D ----------------------------------------------------------------------------------------------
def test_eth3d_two_view_layout_with_separate_ground_truth(tmp_path):
    root = tmp_path / "two_view_training"
    gt = tmp_path / "two_view_training_gt"
    for scene in ("delivery_area_1l", "playground_1s"):
        (root / scene).mkdir(parents=True)
        grey = RNG.integers(0, 256, (H, W), dtype=np.uint8)
        write_png(root / scene / "im0.png", grey)
        write_png(root / scene / "im1.png", grey)
        (root / scene / "calib.txt").write_text(
            f"cam0=[541.764 0 553.869; 0 541.764 232.396; 0 0 1]\ncam1=[541.764 0 553.869; 0 541.764 232.396; 0 0 1]\n"
            f"doffs=0\nbaseline=59.8\nwidth={W}\nheight={H}\nndisp=64\nisint=0\nvmin=1\nvmax=30\n")
        d = RNG.uniform(1, 30, (H, W)).astype(np.float32)
        d[0] = np.inf
        write_pfm_file(gt / scene / "disp0GT.pfm", d, little=True)
        mask = np.full((H, W), 255, np.uint8)
        mask[:, -3:] = 128
        write_png(gt / scene / "mask0nocc.png", mask)
    (root / "no_gt_scene").mkdir()
    write_png(root / "no_gt_scene" / "im0.png", rgb())
    ds = build_dataset(f"eth3d:{root}")
    assert isinstance(ds, ETH3DDataset) and len(ds) == 2
    s = ds[0]
    assert s["name"] == "delivery_area_1l" and s["left"].shape == (H, W, 3)
    assert not s["valid"][0].any() and s["valid"][1:].all()
    assert s["noc"][:, -3:].sum() == 0 and s["noc"][1:, :-3].all()
    assert s["camera"].baseline == pytest.approx(0.0598) and s["camera"].doffs == 0


# --- SceneFlow ----------------------------------------------------------------------------------------------
def test_sceneflow_layouts_both_views(tmp_path):
    dl, dr = _consistent_pair()
    rels = [Path("FlyingThings3D") / "{kind}" / "TRAIN" / "A" / "0000" / "{view}" / "0006",
            Path("FlyingThings3D") / "{kind}" / "TEST" / "B" / "0001" / "{view}" / "0007",
            Path("Monkaa") / "{kind}" / "a_rain_of_stones_x2" / "{view}" / "0000",
            Path("Driving") / "{kind}" / "15mm_focallength" / "scene_forwards" / "fast" / "{view}" / "0001"]
    for rel in rels:
        for view, d in (("left", dl), ("right", dr)):
            for kind in ("frames_cleanpass", "frames_finalpass"):
                write_png(tmp_path / (str(rel).format(kind=kind, view=view) + ".png"), rgb())
            write_pfm_file(tmp_path / (str(rel).format(kind="disparity", view=view) + ".pfm"), d, little=True)
    ds = build_dataset(f"sceneflow:{tmp_path}")
    assert isinstance(ds, SceneFlowDataset) and len(ds) == 4
    names = sorted(ds[i]["name"] for i in range(len(ds)))
    assert names[0] == "Driving/frames_cleanpass/15mm_focallength/scene_forwards/fast/left/0001.png"
    s = ds[0]
    np.testing.assert_array_equal(s["disparity"], dl)
    np.testing.assert_array_equal(s["disparity_right"], dr)
    np.testing.assert_array_equal(s["noc"], lr_consistency_noc(dl, dr))
    assert s["noc"].sum() < s["valid"].sum()
    final = build_dataset(f"sceneflow:{tmp_path}?pass=final&subset=FlyingThings3D&split=TEST")
    assert len(final) == 1 and "frames_finalpass/TEST/B/0001/left/0007.png" in final[0]["name"]
    # a single subset folder as root works too
    assert len(SceneFlowDataset(tmp_path / "Monkaa")) == 1
    # the layout the archives unpack to: <x>__frames_cleanpass/frames_cleanpass + <x>__disparity/disparity
    arch = tmp_path / "archives"
    for view, d in (("left", dl), ("right", dr)):
        write_png(arch / "monkaa__frames_cleanpass" / "frames_cleanpass" / "treeflight_x2" / view / "0003.png", rgb())
        write_pfm_file(arch / "monkaa__disparity" / "disparity" / "treeflight_x2" / view / "0003.pfm", d, little=False)
    s = SceneFlowDataset(arch)[0]
    np.testing.assert_array_equal(s["disparity"], dl)
    with pytest.raises(ValueError, match="pass must be"):
        SceneFlowDataset(tmp_path, passes="dirty")


# --- plain folder --------------------------------------------------------------------------------------------------
def test_folder_layout_formats_and_errors(tmp_path):
    d = RNG.uniform(1, 60, (H, W)).astype(np.float32)
    d_q = np.round(d * 256) / 256
    for name in ("a", "b", "c"):
        write_png(tmp_path / "left" / f"{name}.png", rgb())
        write_png(tmp_path / "right" / f"{name}.png", rgb())
    (tmp_path / "disp").mkdir()
    write_pfm_file(tmp_path / "disp" / "a.pfm", d, little=False)
    write_png(tmp_path / "disp" / "b.png", kitti_png(d_q))
    np.save(tmp_path / "disp" / "c.npy", d)
    (tmp_path / "calib.txt").write_text(MOTORCYCLE_CALIB)
    ds = build_dataset(f"folder:{tmp_path}")
    assert isinstance(ds, FolderDataset) and len(ds) == 3 and ds.max_disparity == 270
    np.testing.assert_array_equal(ds[0]["disparity"], d)
    np.testing.assert_allclose(ds[1]["disparity"], d_q, atol=1e-6)
    np.testing.assert_array_equal(ds[2]["disparity"], d)
    assert ds[-1]["name"] == "c" and ds[0]["camera"].baseline == pytest.approx(0.193001)
    assert [s["name"] for s in ds[0:2]] == ["a", "b"]
    with pytest.raises(IndexError):
        ds[3]
    # a disparity missing for one image is an error naming the file
    (tmp_path / "disp" / "c.npy").unlink()
    with pytest.raises(FileNotFoundError, match="c.pfm"):
        FolderDataset(tmp_path)
    # no disp/ at all: pairs without ground truth
    import shutil

    shutil.rmtree(tmp_path / "disp")
    s = FolderDataset(tmp_path)[0]
    assert np.isnan(s["disparity"]).all() and not s["valid"].any()
    (tmp_path / "right" / "b.png").unlink()
    with pytest.raises(FileNotFoundError, match="no matching right image"):
        FolderDataset(tmp_path)


# --- Motorcycle and specs -------------------------------------------------------------------------------------------------
def test_motorcycle_sample_and_calibration():
    s = load_motorcycle()
    assert s["left"].shape == (500, 741, 3) and s["left"].dtype == np.uint8 and s["right"].shape == (500, 741, 3)
    d = s["disparity"]
    assert d.dtype == np.float32 and not np.isinf(d).any()
    frac_missing = np.isnan(d).mean()
    assert 0.03 < frac_missing < 0.15  # skimage stores missing ground truth as inf (~7 %)
    assert s["valid"].sum() == np.isfinite(d).sum()
    assert 5 < np.nanmin(d) and np.nanmax(d) < 68  # within Middlebury ndisp 270 / 4
    cam = s["camera"]
    assert (cam.width, cam.height) == (741, 500)
    # same depth as the full-resolution Middlebury calibration at 4x the disparity
    z_quarter = cam.disparity_to_depth(np.array([[40.0]], np.float32))[0, 0]
    z_full = 3979.911 * 0.193001 / (4 * 40.0 + 124.343)
    assert z_quarter == pytest.approx(z_full, rel=1e-4)
    # the calibration is consistent with the images: the ground truth warps right onto left
    ys, xs = np.nonzero(s["valid"])
    xr = np.rint(xs - d[ys, xs]).astype(int)
    ok = xr >= 0
    err = np.abs(s["left"][ys[ok], xs[ok]].astype(float) - s["right"][ys[ok], xr[ok]].astype(float)).mean()
    shuffled = np.abs(s["left"][ys[ok], xs[ok]].astype(float) - s["right"][ys[ok], np.clip(xr[ok] + 15, 0, 740)].astype(float)).mean()
    assert err < 0.5 * shuffled


def test_spec_parsing_and_errors():
    assert parse_spec("sceneflow:/data/sf?pass=final&split=TEST") == ("sceneflow", "/data/sf", {"pass": "final", "split": "TEST"})
    assert parse_spec("motorcycle") == ("motorcycle", "", {})
    ds = build_dataset("motorcycle")
    assert len(ds) == 1 and ds[0]["name"] == "motorcycle"
    with pytest.raises(ValueError, match="unknown dataset kind"):
        build_dataset("nyu:/x")
    with pytest.raises(ValueError, match="needs a root"):
        build_dataset("kitti2015")
    with pytest.raises(FileNotFoundError, match="not a directory"):
        build_dataset("middlebury:/nonexistent/dir")
    with pytest.raises(ValueError, match="integer"):
        build_dataset("synthetic-test:many")
    with pytest.raises(ValueError, match="key=value"):
        parse_spec("folder:/x?oops")
