"""ament_python package madis_ros: the madis_core library plus the ROS 2 node and tools."""
from glob import glob

from setuptools import find_packages, setup

package_name = "madis_ros"

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(include=["madis_core", "madis_core.*", "madis_ros", "madis_ros.*"]),
    package_data={"madis_core": ["weights/*.safetensors", "weights/*.json", "weights/*.yaml", "weights/*.md"]},
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
        ("share/" + package_name + "/launch", glob("launch/*.launch.py")),
        ("share/" + package_name + "/config", glob("config/*.yaml") + glob("config/*.rviz")),
        ("share/" + package_name + "/config/train", glob("config/train/*.yaml")),
    ],
    install_requires=["setuptools"],
    zip_safe=False,
    maintainer="madis-stereo team",
    maintainer_email="madis-stereo@example.org",
    description="MaDis-Stereo transformer and a distilled real-time student for ROS 2 stereo depth",
    license="Apache-2.0",
    tests_require=["pytest"],
    entry_points={
        "console_scripts": [
            "madis_stereo_node = madis_ros.node_entry:main",
            "madis = madis_core.cli:main",
            "madis-bag = madis_ros.bag_tool:main",
        ],
        # data sources for `madis adapt --data` that madis_core finds without importing madis_ros
        "madis_core.pair_sources": ["rosbag2 = madis_ros.bag.pair_source:BagPairSource"],
    },
)
