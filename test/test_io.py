"""File formats: PFM (both endiannesses), KITTI 16-bit PNG, PLY, colourised disparity."""
import numpy as np
import pytest

from madis_core.io import (colorize_disparity, read_disparity_png, read_image, read_pfm, read_ply, write_disparity_png,
                           write_image, write_pfm, write_ply)


@pytest.mark.parametrize("little", [True, False])
@pytest.mark.parametrize("shape", [(5, 7), (4, 6, 3)])
def test_pfm_round_trip(tmp_path, little, shape):
    arr = np.random.default_rng(1).normal(size=shape).astype(np.float32)
    write_pfm(tmp_path / "a.pfm", arr, little_endian=little)
    raw = (tmp_path / "a.pfm").read_bytes()
    scale_line = raw.split(b"\n")[2]
    assert scale_line.startswith(b"-") == little
    np.testing.assert_array_equal(read_pfm(tmp_path / "a.pfm"), arr)


def test_pfm_bottom_row_first_on_disk(tmp_path):
    arr = np.array([[1.0, 2.0], [3.0, 4.0]], dtype=np.float32)
    write_pfm(tmp_path / "b.pfm", arr)
    data = np.frombuffer((tmp_path / "b.pfm").read_bytes()[-16:], dtype="<f4")
    assert list(data) == [3.0, 4.0, 1.0, 2.0]


def test_truncated_pfm_raises(tmp_path):
    write_pfm(tmp_path / "c.pfm", np.ones((10, 10), np.float32))
    p = tmp_path / "c.pfm"
    p.write_bytes(p.read_bytes()[:-8])
    with pytest.raises(ValueError, match="truncated"):
        read_pfm(p)


def test_kitti_png_encoding(tmp_path):
    disp = np.array([[0.0, 1.5, np.nan], [255.99, 12.25, 100.0]], dtype=np.float32)
    write_disparity_png(tmp_path / "d.png", disp)
    raw = read_image(tmp_path / "d.png")
    assert raw.dtype == np.uint16
    assert raw[0, 0] == 0 and raw[0, 2] == 0 and raw[0, 1] == 384 and raw[1, 1] == 3136
    back = read_disparity_png(tmp_path / "d.png")
    assert np.isnan(back[0, 0]) and np.isnan(back[0, 2])
    np.testing.assert_allclose(back[1], disp[1], atol=1 / 256)


def test_ply_round_trip_skips_nan(tmp_path):
    pts = np.random.default_rng(2).normal(size=(4, 5, 3)).astype(np.float32)
    pts[1, 2] = np.nan
    cols = np.random.default_rng(3).integers(0, 255, size=(4, 5, 3), dtype=np.uint8)
    n = write_ply(tmp_path / "p.ply", pts, cols)
    assert n == 19
    p, c = read_ply(tmp_path / "p.ply")
    keep = np.ones((4, 5), bool)
    keep[1, 2] = False
    np.testing.assert_array_equal(p, pts[keep])
    np.testing.assert_array_equal(c, cols[keep])


def test_colorize_marks_invalid_black_and_rgb_round_trip(tmp_path):
    disp = np.array([[np.nan, 0.0, 10.0, 50.0]], dtype=np.float32)
    rgb = colorize_disparity(disp, max_disparity=50.0)
    assert rgb.dtype == np.uint8 and rgb.shape == (1, 4, 3)
    assert rgb[0, 0].sum() == 0 and rgb[0, 1].sum() == 0 and rgb[0, 3].sum() > 0
    write_image(tmp_path / "c.png", rgb)
    np.testing.assert_array_equal(read_image(tmp_path / "c.png"), rgb)


def test_depth_millimetres_round_trip_and_invalid_zero():
    from madis_core.io import depth_to_millimetres, millimetres_to_depth

    z = np.array([[1.2344, 0.0, np.nan, -1.0, 70.0, 0.0004, 65.535]], dtype=np.float32)
    mm = depth_to_millimetres(z)
    assert mm.dtype == np.uint16
    assert mm.tolist() == [[1234, 0, 0, 0, 0, 0, 65535]]
    back = millimetres_to_depth(mm)
    assert back[0, 0] == pytest.approx(1.234) and np.isnan(back[0, 1:6]).all() and back[0, 6] == pytest.approx(65.535)
