"""ROS 2 side of madis-stereo: the stereo node and the helpers it shares with the bag tools.

Modules (each with one job; the ones marked * import no ROS at module level and work on
any object with the right attributes, e.g. rosbags' deserialised messages):

- ``image_conversion`` *  sensor_msgs/Image <-> numpy (cv_bridge when importable)
- ``camera_info``       *  CameraInfo pair -> ``madis_core.camera.StereoCamera`` (validated)
- ``processing``        *  the per-frame pipeline: images + camera -> disparity/depth/points
- ``outputs``              numpy -> DisparityImage, depth/confidence/colour Image, PointCloud2
- ``sync``              *  exact / approximate time synchroniser (message_filters when importable)
- ``params``               every node parameter declared in one place, validated
- ``stereo_node``          the node (``madis_stereo_node``)

``madis_core`` never imports ROS; this package may import ``madis_core``.
"""
# madis_core first: its import applies the thread policy (madis_core/runtime.py) before
# any madis_ros module or entry point (node, madis-bag, demo) loads torch's OpenMP.
import madis_core  # noqa: E402,F401
