"""Launch files and the RViz config.

The launch files need launch/launch_ros, which exist on ROS installs but not on PyPI:
the tests that execute them skip with that reason here. What can be checked without
them is checked always: the files compile, declare the documented arguments, set the
large-data transport, and the RViz config shows the three things it should.
"""
import ast
import importlib.util
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch"
NODE_ARGS = {"namespace", "params_file", "model", "device", "use_sim_time", "rviz", "frame",
             "left_image", "right_image", "left_info", "right_info"}


def _declared_args(path):
    tree = ast.parse(path.read_text(), str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "DeclareLaunchArgument":
            if node.args and isinstance(node.args[0], ast.Constant):
                names.add(node.args[0].value)
    return tree, names


def test_launch_files_compile_and_declare_their_arguments():
    tree, names = _declared_args(LAUNCH / "madis_stereo.launch.py")
    assert {f.name for f in tree.body if isinstance(f, ast.FunctionDef)} >= {"generate_launch_description"}
    src = (LAUNCH / "madis_stereo.launch.py").read_text()
    assert '("left_image", "left/image_rect")' in src and '("right_info", "right/camera_info")' in src
    assert names >= NODE_ARGS - {"left_image", "right_image", "left_info", "right_info"}
    _, bag_names = _declared_args(LAUNCH / "bag_replay.launch.py")
    assert {"bag", "rate", "loop"} <= bag_names
    bag_src = (LAUNCH / "bag_replay.launch.py").read_text()
    assert '"--clock"' in bag_src and '("use_sim_time", "true")' in bag_src
    for f in ("madis_stereo.launch.py", "bag_replay.launch.py"):
        text = (LAUNCH / f).read_text()
        assert 'SetEnvironmentVariable("FASTDDS_BUILTIN_TRANSPORTS"' in text and '"LARGE_DATA"' in text, f


def test_rviz_config_shows_image_disparity_and_cloud_in_the_optical_frame():
    text = (REPO / "config" / "madis_stereo.rviz").read_text()
    cfg = yaml.safe_load(text)
    vm = cfg["Visualization Manager"]
    shown = {(d["Class"], d.get("Topic", {}).get("Value")) for d in vm["Displays"]}
    assert ("rviz_default_plugins/Image", "/left/image_rect") in shown
    assert ("rviz_default_plugins/Image", "/disparity/color") in shown
    assert ("rviz_default_plugins/PointCloud2", "/points2") in shown
    cloud = next(d for d in vm["Displays"] if d["Class"] == "rviz_default_plugins/PointCloud2")
    assert cloud["Color Transformer"] == "RGB8"
    assert vm["Global Options"]["Fixed Frame"] == "stereo_left_optical_frame"
    # the launch file rewrites exactly these strings for namespaces and remaps
    for topic in ("/left/image_rect", "/disparity/color", "/points2"):
        assert f"Value: {topic}\n" in text
    assert "Fixed Frame: stereo_left_optical_frame" in text


def _launch_ros_or_skip():
    if importlib.util.find_spec("launch_ros") is None or importlib.util.find_spec("launch") is None:
        pytest.skip("launch_ros is not installed (it is not on PyPI; it comes with a ROS 2 install)")


def _load(path):
    spec = importlib.util.spec_from_file_location(path.stem.replace(".", "_"), path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_madis_stereo_launch_builds_the_node_with_remaps():  # pragma: no cover - needs launch_ros
    _launch_ros_or_skip()
    from launch import LaunchContext
    from launch.actions import DeclareLaunchArgument

    mod = _load(LAUNCH / "madis_stereo.launch.py")
    ld = mod.generate_launch_description()
    declared = {e.name for e in ld.entities if isinstance(e, DeclareLaunchArgument)}
    assert declared == NODE_ARGS
    ctx = LaunchContext()
    ctx.launch_configurations.update({"namespace": "stereo", "params_file": str(REPO / "config" / "madis_stereo.yaml"),
                                      "model": "sgbm", "device": "", "use_sim_time": "true", "rviz": "false",
                                      "frame": "f", "left_image": "/cam/left", "right_image": "right/image_rect",
                                      "left_info": "left/camera_info", "right_info": "/cam/right_info"})
    node = mod._launch_setup(ctx)[0]
    assert node.node_executable == "madis_stereo_node" and node.node_package == "madis_ros"
    from launch.utilities import perform_substitutions

    remaps = {perform_substitutions(ctx, k): perform_substitutions(ctx, v) for k, v in node._Node__remappings}
    assert remaps == {"left/image_rect": "/cam/left", "right/camera_info": "/cam/right_info"}


def test_bag_replay_launch_declares_player_and_node():  # pragma: no cover - needs launch_ros
    _launch_ros_or_skip()
    from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription

    mod = _load(LAUNCH / "bag_replay.launch.py")
    ld = mod.generate_launch_description()
    declared = {e.name for e in ld.entities if isinstance(e, DeclareLaunchArgument)}
    assert {"bag", "rate", "loop"} | (NODE_ARGS - {"use_sim_time"}) <= declared
    assert any(isinstance(e, IncludeLaunchDescription) for e in ld.entities)
