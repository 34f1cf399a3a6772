"""sensor_msgs/Image <-> numpy: every encoding, padded rows, big-endian, malformed messages.

Messages go through real CDR serialisation (rclpy.serialization) and, for the bag
tools, through rosbags' deserialiser, whose ``data`` is a numpy array.
"""
import numpy as np
import pytest
from rclpy.serialization import deserialize_message, serialize_message
from sensor_msgs.msg import Image

from madis_ros import image_conversion as ic
from madis_ros.image_conversion import (SUPPORTED_ENCODINGS, ImageConversionError, UnsupportedEncodingError,
                                        encoding_info, image_to_estimator_input, image_to_numpy, numpy_to_image)

H, W = 7, 11  # odd sizes catch stride mistakes


def random_image(encoding, seed=0):
    rng = np.random.default_rng(seed)
    dtype, ch = encoding_info(encoding)
    shape = (H, W) if ch == 1 else (H, W, ch)
    if dtype == np.float32:
        a = rng.normal(size=shape).astype(np.float32)
        a.flat[3] = np.nan
        return a
    return rng.integers(0, np.iinfo(dtype).max + 1, size=shape, dtype=np.uint64).astype(dtype)


def cdr_round_trip(msg):
    return deserialize_message(serialize_message(msg), Image)


@pytest.mark.parametrize("encoding", SUPPORTED_ENCODINGS)
@pytest.mark.parametrize("layout", ["packed", "padded", "bigendian"])
def test_every_encoding_round_trips(encoding, layout):
    a = random_image(encoding)
    dtype, ch = encoding_info(encoding)
    row = W * ch * dtype.itemsize
    step = row + 13 if layout == "padded" else None
    msg = numpy_to_image(a, encoding, frame_id="cam", step=step, is_bigendian=(layout == "bigendian"))
    assert msg.step == (row + 13 if layout == "padded" else row)
    assert len(msg.data) == msg.step * H
    back = image_to_numpy(cdr_round_trip(msg))
    assert back.dtype == dtype and back.dtype.isnative
    assert back.shape == a.shape
    np.testing.assert_array_equal(back, a)  # NaN positions compare equal in assert_array_equal


def test_big_endian_mono16_bytes_decode_by_value():
    # Build the bytes by hand: 0x0102 and 0xA0B0 big-endian, row padded with 3 junk bytes.
    vals = np.array([[0x0102, 0xA0B0], [0xFFFF, 0x0001]], dtype=">u2")
    rows = [vals[r].tobytes() + b"\xee\xee\xee" for r in range(2)]
    msg = Image(height=2, width=2, encoding="mono16", is_bigendian=1, step=7)
    msg.data = b"".join(rows)
    out = image_to_numpy(cdr_round_trip(msg))
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, [[0x0102, 0xA0B0], [0xFFFF, 0x0001]])


def test_padded_rgb8_bytes_decode_by_value():
    msg = Image(height=2, width=1, encoding="rgb8", is_bigendian=0, step=5)
    msg.data = bytes([1, 2, 3, 99, 99, 4, 5, 6, 99, 99])
    np.testing.assert_array_equal(image_to_numpy(msg), [[[1, 2, 3]], [[4, 5, 6]]])


def test_estimator_input_is_rgb_without_alpha():
    rgb = random_image("rgb8")
    rgba = np.concatenate([rgb, np.full((H, W, 1), 7, np.uint8)], axis=2)
    cases = {"rgb8": rgb, "bgr8": rgb[..., ::-1], "rgba8": rgba, "bgra8": rgba[..., [2, 1, 0, 3]]}
    for enc, arr in cases.items():
        out = image_to_estimator_input(numpy_to_image(np.ascontiguousarray(arr), enc))
        np.testing.assert_array_equal(out, rgb, err_msg=enc)
    m16 = random_image("mono16")
    out = image_to_estimator_input(numpy_to_image(m16, "mono16", is_bigendian=True))
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, m16)
    # the message lists only what a stereo input can be (issue 15: it listed 32FC1)
    with pytest.raises(UnsupportedEncodingError, match=r"encoding '32FC1' for a stereo input; supported: mono8, .*bgra16 "
                                                       r"\(8/16-bit camera images\)$") as e:
        image_to_estimator_input(numpy_to_image(random_image("32FC1"), "32FC1"))
    assert "32FC1" not in str(e.value).split("supported:")[1]


def test_rosbags_messages_decode_identically():
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.ROS2_JAZZY)
    for enc in ("mono16", "bgra8", "32FC1"):
        a = random_image(enc, seed=3)
        msg = numpy_to_image(a, enc, step=None if enc == "32FC1" else W * 8 + 4, is_bigendian=(enc == "mono16"))
        bag_msg = ts.deserialize_cdr(bytes(serialize_message(msg)), "sensor_msgs/msg/Image")
        assert isinstance(bag_msg.data, np.ndarray)
        np.testing.assert_array_equal(image_to_numpy(bag_msg), a)


@pytest.mark.parametrize("mutate, match", [
    (lambda m: setattr(m, "data", bytes(m.data)[: m.step * m.height - 1]), r"expected step\*height"),
    (lambda m: setattr(m, "step", W * 3 - 1), "smaller than one row"),
    (lambda m: setattr(m, "encoding", "yuv422"), "unsupported image encoding 'yuv422'"),
    (lambda m: setattr(m, "height", 0), "empty"),
])
def test_malformed_messages_raise_clear_errors(mutate, match):
    msg = numpy_to_image(random_image("rgb8"), "rgb8")
    mutate(msg)
    with pytest.raises(ImageConversionError, match=match):
        image_to_numpy(msg)


def test_unsupported_encoding_is_its_own_error_type():
    msg = numpy_to_image(random_image("mono8"), "mono8")
    msg.encoding = "bayer_rggb8"
    with pytest.raises(UnsupportedEncodingError):
        image_to_estimator_input(msg)


def test_numpy_to_image_refuses_mismatched_arrays():
    with pytest.raises(ImageConversionError, match="does not match encoding"):
        numpy_to_image(np.zeros((2, 2), np.float64), "32FC1")
    with pytest.raises(ImageConversionError, match="does not fit encoding"):
        numpy_to_image(np.zeros((2, 2), np.uint8), "rgb8")


@pytest.mark.skipif(ic._BRIDGE is None, reason="cv_bridge is not importable here (it is on real ROS installs)")
def test_cv_bridge_and_numpy_paths_agree():  # pragma: no cover - needs a ROS install
    for enc in SUPPORTED_ENCODINGS:
        a = random_image(enc)
        msg = numpy_to_image(a, enc)
        ic.USE_CV_BRIDGE = True
        with_bridge = image_to_numpy(msg)
        ic.USE_CV_BRIDGE = False
        try:
            without = image_to_numpy(msg)
        finally:
            ic.USE_CV_BRIDGE = True
        np.testing.assert_array_equal(with_bridge, without)
