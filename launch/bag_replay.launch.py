"""Replay a rosbag2 into madis_stereo_node on simulated time (ROS 2 installs with ros2bag).

    ros2 launch madis_ros bag_replay.launch.py bag:=/path/to/bag [rate:=0.5] [loop:=true] \
        [left_image:=/cam/left/image_rect ...] [model:=student] [rviz:=true]

`ros2 bag play --clock` publishes /clock and the node runs with use_sim_time:=true, so
stamps and timers follow the recording. Pip users without ros2 bag: `madis-bag play BAG`
plus the node with `-p use_sim_time:=true`. The node subscribes best effort by default,
which receives both reliable and best-effort recordings.
All other arguments are those of madis_stereo.launch.py.
"""
from launch import LaunchDescription
from launch.actions import (DeclareLaunchArgument, ExecuteProcess, IncludeLaunchDescription, OpaqueFunction,
                            SetEnvironmentVariable)
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import EnvironmentVariable, LaunchConfiguration
from launch_ros.substitutions import FindPackageShare

PASS_THROUGH = ("namespace", "params_file", "model", "device", "rviz", "frame",
                "left_image", "right_image", "left_info", "right_info")


def _player(context, *args, **kwargs):
    get = lambda name: LaunchConfiguration(name).perform(context)  # noqa: E731
    cmd = ["ros2", "bag", "play", get("bag"), "--clock", "--rate", get("rate")]
    if get("loop").lower() in ("true", "1", "yes"):
        cmd.append("--loop")
    return [ExecuteProcess(cmd=cmd, output="screen")]


def generate_launch_description():
    share = FindPackageShare("madis_ros")
    node = IncludeLaunchDescription(
        PythonLaunchDescriptionSource([share, "/launch/madis_stereo.launch.py"]),
        launch_arguments=[("use_sim_time", "true")] + [(n, LaunchConfiguration(n)) for n in PASS_THROUGH])
    defaults = {"namespace": "", "params_file": [share, "/config/madis_stereo.yaml"], "model": "", "device": "",
                "rviz": "false", "frame": "stereo_left_optical_frame", "left_image": "left/image_rect",
                "right_image": "right/image_rect", "left_info": "left/camera_info", "right_info": "right/camera_info"}
    return LaunchDescription(
        [DeclareLaunchArgument("bag", description="rosbag2 folder or file to play"),
         DeclareLaunchArgument("rate", default_value="1.0", description="playback rate factor"),
         DeclareLaunchArgument("loop", default_value="false", description="loop the bag")]
        + [DeclareLaunchArgument(n, default_value=defaults[n]) for n in PASS_THROUGH]
        + [SetEnvironmentVariable("FASTDDS_BUILTIN_TRANSPORTS",
                                  EnvironmentVariable("FASTDDS_BUILTIN_TRANSPORTS", default_value="LARGE_DATA")),
           node, OpaqueFunction(function=_player)])
