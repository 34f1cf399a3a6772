"""Ending a ROS process in bounded time, even when Fast DDS's teardown would block.

Fast DDS 3.2.x (the 3.2.3 wheels this project installs) can deadlock while destroying a
participant that uses the TCP transport (``FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA``): a
mutex in ``TCPChannelResourceBasic::disconnect`` (fixed upstream by eProsima/Fast-DDS
PR 6066, "Solve TCP disconnect while incomplete read deadlock"). The stuck call holds the
GIL, so no Python thread or signal handler can rescue the process. Hence:

- with the TCP transport in use, ``finish`` does not destroy the participant: after the
  node's own shutdown (worker stopped, the pair in flight published) it logs a warning
  naming the cause and ends the process with ``os._exit(code)``. The kernel closes the
  sockets; peers drop the participant when its lease expires;
- otherwise it destroys the node and shuts rclpy down normally, with a C-level watchdog
  (``faulthandler``) that, should the teardown still block for ``TEARDOWN_LIMIT_S``,
  prints every thread's stack and ends the process (exit status 1).
"""
from __future__ import annotations

import faulthandler
import logging
import os
import sys
from typing import Any, Optional

from madis_ros.transport import uses_tcp_transport

TEARDOWN_LIMIT_S = 10.0
UPSTREAM_FIX = "eProsima/Fast-DDS PR 6066"


def finish(node: Optional[Any], code: int, logger: Any = None, context: Any = None) -> int:
    """Destroy ``node`` and shut rclpy (``context``: its context, default the global one) down,
    or, with the TCP transport, end the process right away; returns ``code`` when it returns."""
    import rclpy

    log = logger or logging.getLogger(__name__)
    if uses_tcp_transport():
        log.warning(f"exiting without destroying the DDS participant: with FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA "
                    f"(TCP) Fast DDS 3.2 can deadlock in its TCP teardown ({UPSTREAM_FIX}); "
                    f"the operating system releases the process's sockets")
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)
    faulthandler.dump_traceback_later(TEARDOWN_LIMIT_S, exit=True)
    try:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown(context=context)
    finally:
        faulthandler.cancel_dump_traceback_later()
    return code
