"""Fast DDS transport settings for same-host image traffic, without the TCP channel.

Why: Fast DDS's default transports lose most large best-effort images between processes
(its shared-memory segments are 512 KiB, smaller than one 640x480 image), and the usual
fix, ``FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA``, carries data over TCP, whose participant
teardown can deadlock in Fast DDS 3.2.x (a mutex in ``TCPChannelResourceBasic::disconnect``;
fixed upstream by eProsima/Fast-DDS PR 6066, not in the 3.2.3 wheels). For processes on
one machine, UDPv4 discovery plus shared memory with large segments carries the same
images with no TCP at all (``benchmarks/dds_transports.py`` measures both).

    env.update(shared_memory_env())        # for a child process
    apply_shared_memory_env()              # this process, before rclpy.init()

The profile is an XML file written once per user under the system's temp directory
(``FASTDDS_DEFAULT_PROFILES_FILE`` points at it); ``FASTDDS_BUILTIN_TRANSPORTS`` is
removed, since it would replace the profile's transports.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Dict

SEGMENT_BYTES = 64 * 1024 * 1024   # room for several 4K rgb8 images (25 MB each) in flight
PORT_QUEUE = 4096                  # fragment descriptors a reader's port can queue

_PROFILE = """<?xml version="1.0" encoding="UTF-8"?>
<!-- madis-stereo: UDPv4 discovery + large shared-memory segments, no TCP (madis_ros/transport.py) -->
<dds xmlns="http://www.eprosima.com">
  <profiles>
    <transport_descriptors>
      <transport_descriptor>
        <transport_id>madis_shm</transport_id>
        <type>SHM</type>
        <segment_size>{segment}</segment_size>
        <port_queue_capacity>{queue}</port_queue_capacity>
      </transport_descriptor>
      <transport_descriptor>
        <transport_id>madis_udp</transport_id>
        <type>UDPv4</type>
      </transport_descriptor>
    </transport_descriptors>
    <participant profile_name="madis_same_host" is_default_profile="true">
      <rtps>
        <useBuiltinTransports>false</useBuiltinTransports>
        <userTransports>
          <transport_id>madis_shm</transport_id>
          <transport_id>madis_udp</transport_id>
        </userTransports>
      </rtps>
    </participant>
  </profiles>
</dds>
"""


def profile_path() -> Path:
    """The profile file, written (atomically) if missing or different."""
    text = _PROFILE.format(segment=SEGMENT_BYTES, queue=PORT_QUEUE)
    path = Path(tempfile.gettempdir()) / f"madis_fastdds_same_host_{os.getuid()}.xml"
    try:
        if path.read_text() == text:
            return path
    except OSError:
        pass
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def shared_memory_env() -> Dict[str, str]:
    """Environment entries selecting the same-host profile (add them to a child's environment,
    and drop ``FASTDDS_BUILTIN_TRANSPORTS`` from it)."""
    return {"FASTDDS_DEFAULT_PROFILES_FILE": str(profile_path())}


def apply_shared_memory_env() -> None:
    """Select the same-host profile for this process (call before ``rclpy.init``)."""
    os.environ.pop("FASTDDS_BUILTIN_TRANSPORTS", None)
    os.environ.update(shared_memory_env())


def default_to_shared_memory() -> None:
    """Select the same-host profile for this process (and the children it starts with its
    environment) unless the user already chose a transport."""
    if "FASTDDS_BUILTIN_TRANSPORTS" not in os.environ and "FASTDDS_DEFAULT_PROFILES_FILE" not in os.environ:
        apply_shared_memory_env()


def uses_tcp_transport(env=None) -> bool:
    """Whether this process's participants carry data over Fast DDS's TCP transport
    (``FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA``, or a profile file that declares TCP)."""
    env = os.environ if env is None else env
    if "LARGE_DATA" in env.get("FASTDDS_BUILTIN_TRANSPORTS", "").upper():
        return True
    for var in ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE"):
        path = env.get(var)
        if path:
            try:
                text = Path(path).read_text(errors="replace")
            except OSError:
                continue
            if "<type>TCPv4</type>" in text.replace(" ", "") or "<type>TCPv6</type>" in text.replace(" ", ""):
                return True
    return False


def main(argv=None) -> int:
    """``python -m madis_ros.transport``: print the same-host profile's path (written if missing), e.g.
    ``export FASTDDS_DEFAULT_PROFILES_FILE=$(python -m madis_ros.transport)``."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in ("-h", "--help"):
        print(main.__doc__)
        return 0
    print(profile_path())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
