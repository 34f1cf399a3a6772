"""ROS 2 side of madis-stereo: the stereo node, the rosbag2 tools and the demo.

Modules, lowest layer first (``test/test_import_graph.py`` checks that none imports upward;
the ones marked * import no ROS at module level and work on any object with the right
attributes, e.g. rosbags' deserialised messages):

- ``transport`` *, ``shutdown``: Fast DDS same-host profile; ending a ROS process in bounded time
- ``process_signals`` *: SIGINT/SIGTERM as a flag from a node process's first line
- ``msgkit`` *: rclpy's and rosbags' message classes behind one interface (``RCLPY``, ``ROSBAGS``)
- ``image_conversion`` *: sensor_msgs/Image <-> numpy (cv_bridge when importable)
- ``camera_info`` *: CameraInfo pair -> ``madis_core.camera.StereoCamera``, one CameraInfo ->
  ``madis_core.rectify.CameraCalibration`` (validated)
- ``sync`` *: exact / approximate time synchroniser (message_filters when importable)
- ``worker`` *: the newest-pair mailbox and worker, frame statistics, rate-limited warnings
- ``messages`` *: the one message layer: builders (either kit) and decoders of the outputs
- ``frame_sync`` *: both images and both camera_infos synchronised, shared by the node and
  ``madis-bag eval``; ``calibration`` *: stereo camera and rectification maps per calibration
- ``stereo_frames`` *: a frame's messages -> ``madis_core.pipeline`` result, or a drop reason
- ``params`` *: every node parameter declared once, with ranges, validated
- ``node_runtime``, ``diagnostics``: estimator loading, QoS, memory tuning; /diagnostics
- ``bag`` * (package): rosbag2 files, topics, frames, one module per ``madis-bag`` subcommand
- ``stereo_node``: the node, a thin ROS adapter; ``node_entry``: the ``madis_stereo_node`` script
- ``bag_tool``: the ``madis-bag`` command; ``demo``, ``demo_processes``: ``make demo``

``madis_core`` never imports ROS; this package may import ``madis_core``.
"""
# madis_core first: its import applies the thread policy (madis_core/runtime.py) before
# any madis_ros module or entry point (node, madis-bag, demo) loads torch's OpenMP.
import madis_core  # noqa: E402,F401
