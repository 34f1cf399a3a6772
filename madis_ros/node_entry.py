"""The ``madis_stereo_node`` console script (``ros2 run madis_ros madis_stereo_node``): SIGINT and
SIGTERM become a flag before the node's heavy imports (``process_signals``), then
``madis_ros.stereo_node.main`` runs, and the process ends as soon as it returns
(``process_signals.end_process``)."""
from __future__ import annotations

from madis_ros import process_signals


def main() -> None:
    process_signals.install()
    from madis_ros.stereo_node import main as node_main

    process_signals.end_process(node_main())


if __name__ == "__main__":
    main()
