"""The package builds with colcon as an ament_python package and installs what
`ros2 run` / `ros2 launch` look for."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
COLCON = Path(sys.executable).with_name("colcon")


def _copy_sources(dst: Path) -> None:
    """Copy the tracked + untracked-not-ignored files (what a clone would hold)."""
    try:
        files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, check=True,
                               capture_output=True, text=True).stdout.split("\n")
    except (OSError, subprocess.CalledProcessError):
        shutil.copytree(REPO, dst, ignore=shutil.ignore_patterns(".venv", ".git", "build", "install", "log", "demo_out"))
        return
    for rel in filter(None, files):
        src = REPO / rel
        if src.is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)


@pytest.mark.skipif(not COLCON.exists(), reason="colcon is not installed in this environment")
def test_colcon_build_installs_executables_launch_and_config(tmp_path):
    pkg = tmp_path / "ws" / "src" / "madis_ros"
    pkg.mkdir(parents=True)
    _copy_sources(pkg)
    ws = tmp_path / "ws"
    proc = subprocess.run([str(COLCON), "build", "--base-paths", "src"], cwd=ws, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "COLCON_HOME": str(tmp_path / "colcon_home")})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    prefix = ws / "install" / "madis_ros"
    for exe in ("madis_stereo_node", "madis", "madis-bag"):
        path = prefix / "lib" / "madis_ros" / exe
        assert path.is_file() and os.access(path, os.X_OK), f"missing executable {path}"
    share = prefix / "share" / "madis_ros"
    assert (share / "package.xml").is_file()
    assert (share / "launch" / "madis_stereo.launch.py").is_file()
    assert (share / "launch" / "bag_replay.launch.py").is_file()
    assert (share / "config" / "madis_stereo.yaml").is_file()
    assert (share / "config" / "madis_stereo.rviz").is_file()
    assert (prefix / "share" / "ament_index" / "resource_index" / "packages" / "madis_ros").is_file()
    site = list((prefix / "lib").glob("python3*/site-packages/madis_core/__init__.py"))
    assert site, "madis_core was not installed into the workspace"
    # the installed node's code is importable from the install space alone
    env = {**os.environ, "PYTHONPATH": str(site[0].parents[1])}
    probe = subprocess.run([sys.executable, "-I", "-c", "import sys; sys.path.insert(0, sys.argv[1]); import madis_core, madis_ros; "
                            "print(madis_core.__file__)", str(site[0].parents[1])],
                           capture_output=True, text=True, env=env, timeout=60)
    assert probe.returncode == 0 and str(prefix) in probe.stdout, probe.stderr
