"""rosbag2 tooling: bags written here with rosbags (mcap and sqlite3), read back, evaluated
offline with ``madis-bag eval`` (compared with ``madis_core.evaluate``), broken on
purpose, and replayed over real DDS into the real stereo node.

ROS_DOMAIN_ID from ``rosutil.free_domain()``.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from madis_core.camera import StereoCamera
from madis_ros.bag import files as bagfiles
from madis_ros.bag.files import BagError
from madis_ros.bag.frames import iter_stereo_frames
from madis_ros.bag.topics import detect_stereo_topics, ground_truth_disparity
from madis_ros.camera_info import stereo_camera_from_infos
from madis_ros.image_conversion import image_to_numpy
from madis_ros.messages import (camera_info_msgs, disparity_from_msg, make_depth_image, make_disparity_image,
                                make_pointcloud2, pointcloud2_to_numpy)
from madis_ros.msgkit import ROSBAGS, stamp_ns

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bagutil import NS, T0, hdr, image, infos, synthetic_frames, write_stereo_bag  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------
# writing and reading
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_round_trip_every_message_type(tmp_path, storage):
    rng = np.random.default_rng(0)
    cam = StereoCamera(40, 30, 50.0, 51.0, 19.5, 14.5, 0.12, 1.5)
    rgb = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    mono16 = rng.integers(0, 65536, (30, 40), dtype=np.uint16)
    disp = rng.uniform(1, 20, (30, 40)).astype(np.float32)
    disp[3:7, 5:9] = np.nan
    pts = cam.disparity_to_points(disp)
    path = tmp_path / "bag"
    with bagfiles.BagWriter(path, storage=storage) as w:
        w.add_topic("/a/left/image_rect", bagfiles.IMAGE, reliability="best_effort")
        w.write("/a/left/image_rect", image(rgb, T0, "l"), T0)
        w.write("/a/mono16", image(mono16, T0 + 5, "l"), T0 + 5)
        li, ri = infos(cam, T0, "l", "r")
        w.write("/a/left/camera_info", li, T0)
        w.write("/a/right/camera_info", ri, T0)
        w.write("/a/disparity", make_disparity_image(disp, cam, hdr(T0, "l"), 0.5, 64.0, 0.25, kit=ROSBAGS), T0)
        w.write("/a/points2", make_pointcloud2(pts, hdr(T0, "l"), rgb, kit=ROSBAGS), T0)
    with pytest.raises(BagError, match="exists already"):
        bagfiles.BagWriter(path, storage=storage)

    with bagfiles.BagReader(path) as bag:
        assert bag.storage == storage
        topics = bag.topics
        assert topics["/a/left/image_rect"].reliability == "best_effort"
        assert topics["/a/mono16"].reliability == "reliable"
        assert topics["/a/points2"].msgtype == bagfiles.POINTCLOUD2 and topics["/a/points2"].count == 1
        msgs = {c.topic: (t, bagfiles.deserialize(raw, c.msgtype)) for c, t, raw in bag.messages()}
    assert msgs["/a/mono16"][0] == T0 + 5
    assert stamp_ns(msgs["/a/mono16"][1]) == T0 + 5
    np.testing.assert_array_equal(image_to_numpy(msgs["/a/left/image_rect"][1]), rgb)
    np.testing.assert_array_equal(image_to_numpy(msgs["/a/mono16"][1]), mono16)
    assert stereo_camera_from_infos(msgs["/a/left/camera_info"][1], msgs["/a/right/camera_info"][1]) == cam
    dmsg = msgs["/a/disparity"][1]
    assert (dmsg.f, dmsg.min_disparity, dmsg.max_disparity, dmsg.delta_d) == (50.0, 0.5, 64.0, 0.25)
    assert dmsg.t == pytest.approx(0.12)
    np.testing.assert_array_equal(disparity_from_msg(dmsg), disp)  # NaN where NaN
    p2, c2 = pointcloud2_to_numpy(msgs["/a/points2"][1])
    np.testing.assert_array_equal(p2, pts)
    np.testing.assert_array_equal(c2, rgb)
    assert not msgs["/a/points2"][1].is_dense


def test_builders_match_what_the_node_publishes():
    """One message layer: the same builder with the rosbags kit (what a bag stores) and the
    rclpy kit (what the node publishes) serialises to messages rclpy decodes as equal."""
    import rclpy.serialization as rs
    from sensor_msgs.msg import CameraInfo, Image, PointCloud2
    from std_msgs.msg import Header
    from stereo_msgs.msg import DisparityImage

    from madis_ros.msgkit import RCLPY

    rng = np.random.default_rng(1)
    cam = StereoCamera(48, 32, 60.0, 60.0, 23.5, 15.5, 0.1, 2.0)
    disp = rng.uniform(-1, 30, (32, 48)).astype(np.float32)
    disp[disp < 4] = np.nan
    disp[:, :3] = np.nan
    depth = cam.disparity_to_depth(disp)
    pts, cols = cam.depth_to_points(depth), rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)
    ns = 12_000_000_345
    h = Header(frame_id="left")
    h.stamp.sec, h.stamp.nanosec = 12, 345

    def same(build, cls):
        ours, theirs = build(ROSBAGS, hdr(ns, "left")), build(RCLPY, h)
        assert isinstance(theirs, cls) and not isinstance(ours, cls)
        # CDR padding bytes differ, so compare the decoded messages (both through CDR, so that
        # float32 fields are rounded alike)
        mine = rs.deserialize_message(bagfiles.serialize(ours), cls)
        assert mine == rs.deserialize_message(rs.serialize_message(theirs), cls), f"{cls.__name__} differs"

    same(lambda kit, hd: make_disparity_image(disp, cam, hd, 0.0, 96.0, 1 / 16, kit=kit), DisparityImage)
    same(lambda kit, hd: make_depth_image(depth, hd, kit=kit), Image)
    same(lambda kit, hd: make_depth_image(depth, hd, "16UC1", kit=kit), Image)
    same(lambda kit, hd: make_pointcloud2(pts, hd, cols, kit=kit), PointCloud2)
    same(lambda kit, hd: camera_info_msgs(cam, hd, hd, kit=kit)[1], CameraInfo)


def test_topic_detection_and_pairing(tmp_path):
    rng = np.random.default_rng(2)
    cam = StereoCamera(40, 30, 50.0, 50.0, 19.5, 14.5, 0.1)
    img = lambda: rng.integers(0, 256, (30, 40), dtype=np.uint8)  # noqa: E731
    path = tmp_path / "bag"

    def side(w, name, s, with_info=True):
        if with_info:
            w.write(f"/s/{name}/camera_info", infos(cam, s, "l", "r")[0 if name == "left" else 1], s)
        w.write(f"/s/{name}/image_rect", image(img(), s, name[0]), s)

    with bagfiles.BagWriter(path, storage="mcap") as w:
        w.write("/s/disparity", make_disparity_image(np.ones((30, 40), np.float32), cam, hdr(T0, "l"), 0.0, 192.0, 1 / 16, kit=ROSBAGS), T0)
        for i in range(4):
            s = T0 + i * 100_000_000
            if i != 2:  # frame 2 has no right image
                side(w, "right", s)  # right before left
            side(w, "left", s)
        s = T0 + 4 * 100_000_000  # frame 4: right 3 ms late (approximate sync)
        side(w, "left", s)
        side(w, "right", s + 3_000_000)
        side(w, "left", T0 + 5 * 100_000_000, with_info=False)  # frame 5: no camera_info at all
        side(w, "right", T0 + 5 * 100_000_000, with_info=False)
        w.write("/s/left/image_raw", image(img(), s, "l"), s)
    with bagfiles.BagReader(path) as bag:
        st = detect_stereo_topics(bag.topics)
        # image_rect wins over image_raw; a DisparityImage not named ground truth is not taken as it
        assert (st.left, st.right, st.left_info, st.right_info, st.gt) == (
            "/s/left/image_rect", "/s/right/image_rect", "/s/left/camera_info", "/s/right/camera_info", None)
        frames, stats = iter_stereo_frames(bag, st)
        got = [f.stamp_ns for f in frames]
        assert got == [T0, T0 + 100_000_000, T0 + 300_000_000]
        assert (stats.left_in, stats.right_in, stats.pairs, stats.dropped_left, stats.dropped_right) == (6, 5, 3, 3, 2)
        frames, stats = iter_stereo_frames(bag, st, approximate=True, slop=0.005)
        frames = list(frames)
        assert [f.stamp_ns for f in frames] == [T0 + i * 100_000_000 for i in (0, 1, 3, 4)]
        assert stats.dropped_left == 2 and stats.dropped_left_info == 1  # frames 2 and 5; frame 2's camera_info
        # every frame carries the camera_info of its own stamps (never the latest of another frame)
        assert all(stamp_ns(f.left_info) == stamp_ns(f.left) and stamp_ns(f.right_info) == stamp_ns(f.right)
                   for f in frames)
        with pytest.raises(BagError, match="--gt-topic"):
            detect_stereo_topics(bag.topics, gt="/s/nope")
        assert detect_stereo_topics(bag.topics, gt="/s/disparity").gt_type == bagfiles.DISPARITY
        assert detect_stereo_topics(bag.topics, left="/s/left/image_raw").left == "/s/left/image_raw"
    topics = {t: bagfiles.TopicInfo(t, bagfiles.IMAGE, 1, None) for t in ("/a/left/image", "/b/left/image",
                                                                      "/a/right/image")}
    with pytest.raises(BagError, match="several candidate left image topics .*--left-topic"):
        detect_stereo_topics(topics)


# ---------------------------------------------------------------------------------------------
# madis-bag eval
# ---------------------------------------------------------------------------------------------
def test_eval_reproduces_madis_evaluate_and_writes_output_bag(tmp_path):
    from madis_core.data.sample import make_sample
    from madis_core.estimator import StereoEstimator
    from madis_core.evaluate import evaluate
    from madis_ros.bag_tool import main

    frames = synthetic_frames()
    cam = StereoCamera(352, 160, 200.0, 200.0, 175.5, 79.5, 0.1, 0.0)
    bag = tmp_path / "in_bag"
    stamps = write_stereo_bag(bag, frames, cam, "mcap")
    out_json, out_bag = tmp_path / "eval.json", tmp_path / "out_bag"
    assert main(["eval", str(bag), "--model", "sgbm", "--json", str(out_json), "--output-bag", str(out_bag),
                 "--output-storage", "sqlite3"]) == 0
    s = json.loads(out_json.read_text())
    assert s["topics"]["gt"] == f"{NS}/gt/disparity"
    assert s["frames"]["left_in"] == 3 and s["frames"]["processed"] == 3 and s["frames"]["pairs"] == 3
    assert set(s["latency_ms"]) >= {"p50", "p90", "p95", "p99", "max", "mean"}

    est = StereoEstimator.from_pretrained("sgbm")
    ref = evaluate(est, [make_sample(l, r, d, f"f{i}") for i, (l, r, d) in enumerate(frames)], warmup=False)
    for k in ("epe", "bad_0.5", "bad_1", "bad_2", "bad_3", "bad_4", "d1", "density", "n"):
        assert s["metrics"][k] == pytest.approx(ref[k], rel=1e-9, abs=1e-9), k
    assert 0 < s["metrics"]["density"] < 100

    with bagfiles.BagReader(out_bag) as ob:
        assert ob.storage == "sqlite3"
        t = ob.topics
        assert {f"{NS}/disparity", f"{NS}/depth", f"{NS}/points2"} <= set(t)
        assert all(t[k].count == 3 for k in (f"{NS}/disparity", f"{NS}/depth", f"{NS}/points2", f"{NS}/gt/disparity"))
        first = {}
        for c, _, raw in ob.messages([f"{NS}/disparity", f"{NS}/depth", f"{NS}/points2"]):
            m = bagfiles.deserialize(raw, c.msgtype)
            if stamp_ns(m) == stamps[0]:
                first[c.topic.rsplit("/", 1)[1]] = m
    pred = est.predict(frames[0][0], frames[0][1]).disparity
    got = disparity_from_msg(first["disparity"])
    np.testing.assert_array_equal(np.isnan(got), ~np.isfinite(pred) | (pred < est.meta.min_disparity))
    np.testing.assert_allclose(got[np.isfinite(got)], pred[np.isfinite(got)])
    np.testing.assert_allclose(image_to_numpy(first["depth"]), cam.disparity_to_depth(got), rtol=1e-6)
    pts, cols = pointcloud2_to_numpy(first["points2"])
    assert pts.shape == (160, 352, 3) and cols is not None
    np.testing.assert_array_equal(cols, frames[0][0])


def test_eval_sqlite3_cli_without_rclpy_and_with_depth_ground_truth(tmp_path):
    """The console entry point on a sqlite3 bag whose ground truth is a 16UC1 depth image,
    in a Python where rclpy cannot be imported (pip users without ROS)."""
    frames = synthetic_frames(n=2, seed=5)
    cam = StereoCamera(352, 160, 200.0, 200.0, 175.5, 79.5, 0.1, 0.0)
    bag = tmp_path / "bag"
    stamps = write_stereo_bag(bag, frames, cam, "sqlite3", gt=False)
    # a second bag with the ground truth as depth in millimetres (what a simulator might record)
    bag2 = tmp_path / "bag2"
    with bagfiles.BagReader(bag) as src, bagfiles.BagWriter(bag2, storage="sqlite3") as w:
        for c in src.connections:
            w.copy_topic(c)
        for c, t, raw in src.messages():
            w.write_raw(c.topic, raw, t)
        for (_, _, d), s in zip(frames, stamps):
            mm = np.where(np.isfinite(d), np.rint(cam.disparity_to_depth(d) * 1000), 0).astype(np.uint16)
            w.write(f"{NS}/ground_truth/depth", image(mm, s, "cam_left", "16UC1"), s)
    code = ("import sys; sys.modules['rclpy'] = None\n"
            "from madis_ros.bag_tool import main\n"
            f"sys.exit(main(['eval', {str(bag2)!r}, '--model', 'sgbm', '--json', {str(tmp_path / 'e.json')!r}]))")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "metrics vs ground truth (2 frames" in r.stdout
    s = json.loads((tmp_path / "e.json").read_text())
    assert s["per_frame"][0]["gt_kind"] == "depth"
    # depth quantised to 1 mm at 4-10 m is ~0.02 px of disparity: close to the disparity ground truth
    from madis_core.estimator import StereoEstimator
    from madis_core.metrics import aggregate_metrics, compute_metrics

    est = StereoEstimator.from_pretrained("sgbm")
    ref = aggregate_metrics([compute_metrics(est.predict(l, r_).disparity, d) for l, r_, d in frames])
    assert s["metrics"]["bad_2"] == pytest.approx(ref["bad_2"], abs=0.5)
    assert s["metrics"]["epe"] == pytest.approx(ref["epe"], abs=0.05)

    r = subprocess.run([sys.executable, "-m", "madis_ros.bag_tool", "eval", str(bag), "--model", "sgbm"],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "no ground truth" in r.stdout, r.stdout + r.stderr


def test_broken_bags_give_clear_errors_and_never_hang(tmp_path, capsys):
    from madis_ros.bag_tool import main

    frames = synthetic_frames(n=2, seed=7)
    cam = StereoCamera(352, 160, 200.0, 200.0, 175.5, 79.5, 0.1, 0.0)
    good = tmp_path / "good"
    write_stereo_bag(good, frames, cam, "mcap")
    mcap_file = next(good.glob("*.mcap"))

    truncated = tmp_path / "truncated"
    truncated.mkdir()
    (truncated / "metadata.yaml").write_bytes((good / "metadata.yaml").read_bytes())
    (truncated / mcap_file.name).write_bytes(mcap_file.read_bytes()[: mcap_file.stat().st_size * 6 // 10])

    scrambled = tmp_path / "scrambled"  # footer intact, chunks overwritten
    scrambled.mkdir()
    data = bytearray(mcap_file.read_bytes())
    n = len(data)
    data[n // 5: n // 2] = np.random.default_rng(0).integers(0, 256, n // 2 - n // 5, dtype=np.uint8).tobytes()
    (scrambled / "metadata.yaml").write_bytes((good / "metadata.yaml").read_bytes())
    (scrambled / mcap_file.name).write_bytes(bytes(data))

    db = tmp_path / "db"
    write_stereo_bag(db, frames, cam, "sqlite3")
    db_file = next(db.glob("*.db3"))
    raw = bytearray(db_file.read_bytes())
    raw[len(raw) // 4: len(raw) // 2] = b"\xff" * (len(raw) // 2 - len(raw) // 4)
    db_file.write_bytes(bytes(raw))

    # the console script, in its own process: an interrupted recording fails fast and clearly
    t0 = time.monotonic()
    exe = Path(sys.executable).with_name("madis-bag")
    argv = [str(exe)] if exe.exists() else [sys.executable, "-m", "madis_ros.bag_tool"]
    r = subprocess.run(argv + ["eval", str(truncated), "--model", "sgbm"], cwd=REPO, capture_output=True,
                       text=True, timeout=90)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "madis-bag: error: cannot open" in r.stderr and "footer" in r.stderr and "Traceback" not in r.stderr
    assert time.monotonic() - t0 < 60

    cases = {scrambled: "truncated or corrupt|not a complete", db: "malformed|not a complete|corrupt",
             tmp_path: "no metadata.yaml", tmp_path / "missing": "no such bag",
             mcap_file.with_suffix(".txt"): "no such bag"}
    for path, pattern in cases.items():
        assert main(["eval", str(path), "--model", "sgbm"]) == 2, path
        err = capsys.readouterr().err
        assert "madis-bag: error:" in err and re.search(pattern, err), (pattern, err)
    assert main(["play", str(truncated)]) == 2  # play refuses it before touching DDS
    assert "footer" in capsys.readouterr().err
    # the good bag still evaluates (the failures above are about the damage, not the tool)
    assert main(["eval", str(good), "--model", "sgbm"]) == 0


def test_record_sample_writes_motorcycle_with_its_calibration(tmp_path, capsys):
    from madis_core.data import MOTORCYCLE_CAMERA, load_motorcycle
    from madis_ros.bag_tool import main

    out = tmp_path / "sample"
    assert main(["record-sample", str(out), "--synthetic-frames", "1", "--storage", "sqlite3",
                 "--qos", "best_effort", "--rate", "4"]) == 0
    assert main(["info", str(out)]) == 0
    assert "stereo topics: left=/stereo/left/image_rect" in capsys.readouterr().out
    moto = load_motorcycle()
    with bagfiles.BagReader(out) as bag:
        assert bag.storage == "sqlite3"
        topics = bag.topics
        assert all(i.count == 2 and i.reliability == "best_effort" for i in topics.values()), topics
        st = detect_stereo_topics(topics)
        assert st.gt == "/stereo/ground_truth/disparity"
        frames = list(iter_stereo_frames(bag, st)[0])
    assert [f.stamp_ns - frames[0].stamp_ns for f in frames] == [0, 250_000_000]
    last = frames[-1]  # Motorcycle comes last
    np.testing.assert_array_equal(image_to_numpy(last.left), moto["left"])
    np.testing.assert_array_equal(image_to_numpy(last.right), moto["right"])
    assert last.left.encoding == "rgb8" and last.left.header.frame_id == "stereo_left_optical_frame"
    p_right = np.asarray(last.right_info.p).reshape(3, 4)
    assert p_right[0, 0] == pytest.approx(994.978) and p_right[0, 2] == pytest.approx(311.193 + 31.086)
    assert p_right[0, 3] == pytest.approx(-994.978 * 0.193001)
    cam = stereo_camera_from_infos(last.left_info, last.right_info)
    for k in ("width", "height", "fx", "fy", "cx", "cy", "baseline", "doffs"):
        assert getattr(cam, k) == pytest.approx(getattr(MOTORCYCLE_CAMERA, k), rel=1e-12), k
    gt, kind = ground_truth_disparity(last.gt, st.gt, MOTORCYCLE_CAMERA)
    assert kind == "disparity"
    np.testing.assert_array_equal(gt, moto["disparity"])
    synth = image_to_numpy(frames[0].left)
    assert synth.shape == (500, 741, 3) and synth.std() > 10


def test_eval_takes_the_node_params_file(tmp_path):
    """``--params-file`` gives eval the node's exact settings; command-line options win."""
    import yaml

    from madis_core.estimator import build_estimator
    from madis_ros.bag.evaluate import node_settings

    f = tmp_path / "params.yaml"
    f.write_text(yaml.safe_dump({"madis_stereo": {"ros__parameters": {"model": "sgbm", "max_disparity": 64,
                                                                         "inference_scale": 0.5}}}))
    s = node_settings(params_file=str(f), overrides={"inference_scale": None})
    assert (s.model, s.max_disparity, s.inference_scale) == ("sgbm", 64.0, 0.5)
    assert build_estimator(**s.estimator_kwargs()).meta.max_disparity <= 64
    assert node_settings(params_file=str(f), overrides={"inference_scale": 1.0}).inference_scale == 1.0
    f.write_text("model: sgbm\n")
    with pytest.raises(BagError, match="ros__parameters"):
        node_settings(params_file=str(f))
    with pytest.raises(ValueError, match="inference_scale"):
        node_settings(overrides={"model": "sgbm", "inference_scale": -1.0})
