"""rosbag2 tools for pip users who have no ``ros2 bag`` (``madis-bag``, see ``madis_ros.bag_tool``).

Modules: ``files`` (reading and writing mcap/sqlite3 with rosbags, recorded QoS, BagError),
``topics`` (stereo and ground-truth topic detection, ground truth as disparity),
``frames`` (a bag's frames through the node's synchroniser and calibration cache), and one
module per subcommand: ``info``, ``evaluate`` (``eval``), ``play``, ``sample``
(``record-sample``). Only ``play`` imports rclpy.
"""
