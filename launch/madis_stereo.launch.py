"""Launch madis_stereo_node (ROS 2 installs with launch_ros; pip users run the node directly:
    FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA python -m madis_ros.stereo_node --ros-args \
        --params-file config/madis_stereo.yaml -r __ns:=/stereo -r left/image_rect:=/cam/left/image ...)

Arguments (ros2 launch madis_ros madis_stereo.launch.py --show-args):
  namespace      node namespace; relative topics move with it           (default: empty)
  params_file    parameters YAML                                   (default: config/madis_stereo.yaml)
  model          overrides the params file's model when not empty       (default: empty)
  device         overrides the params file's device when not empty      (default: empty)
  use_sim_time   follow /clock (bag replay)                             (default: false)
  left_image, right_image, left_info, right_info
                 remaps of left/image_rect, right/image_rect, left/camera_info, right/camera_info
  rviz           start RViz with config/madis_stereo.rviz               (default: false)
  frame          RViz fixed frame: the left optical frame of your camera
                                                               (default: stereo_left_optical_frame)

Large images between processes need Fast DDS's large-data transport: this file sets
FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA unless the environment already sets it (the camera
driver or bag player must use it too; see the README).
"""
import os
import tempfile

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction, SetEnvironmentVariable
from launch.substitutions import EnvironmentVariable, LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

TOPICS = (("left_image", "left/image_rect"), ("right_image", "right/image_rect"),
          ("left_info", "left/camera_info"), ("right_info", "right/camera_info"))


def _resolve(ns: str, topic: str) -> str:
    if topic.startswith("/"):
        return topic
    ns = "/" + ns.strip("/") if ns.strip("/") else ""
    return f"{ns}/{topic}"


def _rviz_config(share: str, ns: str, left_image: str, frame: str) -> str:
    """config/madis_stereo.rviz with its topics and fixed frame moved to this launch's names."""
    text = open(os.path.join(share, "config", "madis_stereo.rviz")).read()
    for default, topic in (("/left/image_rect", _resolve(ns, left_image)),
                           ("/disparity/color", _resolve(ns, "disparity/color")), ("/points2", _resolve(ns, "points2"))):
        text = text.replace(f"Value: {default}\n", f"Value: {topic}\n")
    text = text.replace("Fixed Frame: stereo_left_optical_frame", f"Fixed Frame: {frame}")
    fd, path = tempfile.mkstemp(prefix="madis_stereo_", suffix=".rviz")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return path


def _launch_setup(context, *args, **kwargs):
    get = lambda name: LaunchConfiguration(name).perform(context)  # noqa: E731
    ns = get("namespace")
    sim = get("use_sim_time").lower() in ("true", "1", "yes")
    overrides = {"use_sim_time": sim}
    for name in ("model", "device"):
        if get(name):
            overrides[name] = get(name)
    remaps = [(topic, get(arg)) for arg, topic in TOPICS if get(arg) != topic]
    actions = [Node(package="madis_ros", executable="madis_stereo_node", name="madis_stereo", namespace=ns,
                    parameters=[get("params_file"), overrides], remappings=remaps, output="screen",
                    emulate_tty=True)]
    if get("rviz").lower() in ("true", "1", "yes"):
        share = FindPackageShare("madis_ros").perform(context)
        rviz = _rviz_config(share, ns, get("left_image"), get("frame"))
        actions.append(Node(package="rviz2", executable="rviz2", name="madis_stereo_rviz", arguments=["-d", rviz],
                            parameters=[{"use_sim_time": sim}], output="screen"))
    return actions


def generate_launch_description():
    share = FindPackageShare("madis_ros")
    args = [
        DeclareLaunchArgument("namespace", default_value="", description="node namespace"),
        DeclareLaunchArgument("params_file", default_value=[share, "/config/madis_stereo.yaml"],
                              description="parameters YAML"),
        DeclareLaunchArgument("model", default_value="", description="model override (empty: params file)"),
        DeclareLaunchArgument("device", default_value="", description="device override (empty: params file)"),
        DeclareLaunchArgument("use_sim_time", default_value="false", description="follow /clock"),
        DeclareLaunchArgument("rviz", default_value="false", description="start RViz"),
        DeclareLaunchArgument("frame", default_value="stereo_left_optical_frame", description="RViz fixed frame"),
    ] + [DeclareLaunchArgument(arg, default_value=topic, description=f"remap of {topic}") for arg, topic in TOPICS]
    return LaunchDescription(args + [
        SetEnvironmentVariable("FASTDDS_BUILTIN_TRANSPORTS",
                               EnvironmentVariable("FASTDDS_BUILTIN_TRANSPORTS", default_value="LARGE_DATA")),
        OpaqueFunction(function=_launch_setup),
    ])
