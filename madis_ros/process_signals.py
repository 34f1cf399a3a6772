"""SIGINT/SIGTERM as a flag from the first moment of a node process.

Python's default SIGINT handler raises KeyboardInterrupt wherever the process is, and
during start-up that is inside an import (rclpy, torch: seconds) or the model load, which
ends in a traceback and exit status 1. A node installs ``install()`` before its heavy
imports (``python -m madis_ros.stereo_node`` at the top of the module, the console script
``madis_stereo_node`` in ``node_entry``); its ``main()`` then checks ``STOP`` and ends with
status 0 at the next safe point. No ROS import here.

``end_process(code)``: once ``main()`` returned (outputs published, participant destroyed,
rclpy shut down) nothing is left for Python's own finalisation to do but unload modules, and
with torch loaded that takes 0.5-2 s on a busy CPU (measured here); the process ends at once.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from typing import Any, Dict

#: set by SIGINT or SIGTERM once ``install()`` ran
STOP = threading.Event()
SIGNALS = (signal.SIGINT, signal.SIGTERM)


def install() -> Dict[int, Any]:
    """Make SIGINT and SIGTERM set ``STOP``; returns the previous handlers (to restore at exit)."""
    return {sig: signal.signal(sig, lambda *_: STOP.set()) for sig in SIGNALS}


def end_process(code: int) -> None:
    """Flush what was written and end the process with ``code`` without Python's finalisation."""
    logging.shutdown()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):  # a closed stream: nothing more to write
        pass
    os._exit(code)
